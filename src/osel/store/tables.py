"""The store's schema (SQLAlchemy Core). Changes go through Alembic migrations."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# An autoincrementing 64-bit key that SQLite also treats as its rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Stamp = DateTime(timezone=True)

seen_messages = Table(
    "seen_messages",
    metadata,
    Column("message_id", String(255), primary_key=True),
    Column("event_type", String(255), nullable=False),
    Column("seen_at", Stamp, nullable=False, index=True),
)

audit_records = Table(
    "audit_records",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("record_uuid", String(36), nullable=False, unique=True),
    Column("record_type", String(16), nullable=False),
    Column("change_type", String(32), nullable=False),
    Column("message_id", String(255), nullable=False, index=True),
    Column("address", String(64), nullable=False, index=True),
    Column("project_id", String(64), nullable=False, index=True),
    Column("internet_exposed", Boolean, nullable=False),
    Column("scan_state", String(16), nullable=False),
    Column("scan_batch_id", String(36), nullable=True, index=True),
    Column("created_at", Stamp, nullable=False, index=True),
    Column("body", Text, nullable=False),
    # what a change record learns after it was committed (its body is never rewritten):
    # the scan reference once launched, and the scan's outcome for its address (JSON)
    Column("qualys_scan_id", String(64), nullable=True, index=True),
    Column("scan_result", Text, nullable=True),
)

sink_cursors = Table(
    "sink_cursors",
    metadata,
    Column("sink", String(255), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", Stamp, nullable=False),
    # the instance delivering to this sink, until when (several instances on one store)
    Column("owner", String(255), nullable=True),
    Column("lease_until", Stamp, nullable=True),
)

scan_targets = Table(
    "scan_targets",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("record_uuid", String(36), nullable=False),
    Column("message_id", String(255), nullable=False),
    Column("address", String(64), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("internet_exposed", Boolean, nullable=False),
    Column("created_at", Stamp, nullable=False),
    Column("batch_id", String(36), nullable=True),
    Index("ix_scan_targets_pending", "batch_id", "created_at"),
)

scan_batches = Table(
    "scan_batches",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("created_at", Stamp, nullable=False),
    Column("updated_at", Stamp, nullable=False),
    Column("backend", String(16), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("title", String(2000), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("addresses", Text, nullable=False),
    Column("reference", String(64), nullable=True, index=True),
    Column("error", Text, nullable=True),
    Column("summary", Text, nullable=True),
    # the launch: when the next step is due (a retry, the end of a launch lease), failures
    # in a row, launch requests sent, and whether one may have reached the backend unseen
    Column("due_at", Stamp, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("launch_attempts", Integer, nullable=False, server_default="0"),
    Column("in_doubt", Boolean, nullable=False, server_default=false()),
    Column("owner", String(255), nullable=True),
    Column("launched_at", Stamp, nullable=True),
    Column("finished_at", Stamp, nullable=True),
    Column("qualys_id", String(32), nullable=True),
    Column("qualys_state", String(64), nullable=True),
    Column("address_errors", Text, nullable=True),  # JSON {address: why it is not scanned}
    # since when the backend no longer lists the launched scan (qualys.missing_scan_hours)
    Column("missing_since", Stamp, nullable=True),
)

# The Qualys API budget, shared by every instance on the store: the newest rate-limit and
# concurrency headers seen per API, and the calls osel made (to know when they age out of
# the sliding window).
qualys_budget = Table(
    "qualys_budget",
    metadata,
    Column("api", String(64), primary_key=True),
    Column("observed_at", Stamp, nullable=False),
    Column("rate_limit", Integer, nullable=True),
    Column("window_seconds", Integer, nullable=True),
    Column("remaining", Integer, nullable=True),
    Column("wait_until", Stamp, nullable=True),
    Column("concurrency_limit", Integer, nullable=True),
    Column("concurrency_running", Integer, nullable=True),
)

qualys_calls = Table(
    "qualys_calls",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("api", String(64), nullable=False),
    Column("at", Stamp, nullable=False),
    Index("ix_qualys_calls_api_at", "api", "at"),
)

exposure_windows = Table(
    "exposure_windows",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("address", String(64), nullable=False),
    Column("protocol", String(16), nullable=False),
    Column("port_min", Integer, nullable=False),
    Column("port_max", Integer, nullable=False),
    Column("remote", String(255), nullable=False),
    Column("internet_exposed", Boolean, nullable=False),
    Column("rule_id", String(64), nullable=True),
    Column("security_group_id", String(64), nullable=True),
    Column("opened_at", String(40), nullable=False),
    Column("opened_record", String(36), nullable=False),
    Column("closed_at", String(40), nullable=True),
    # the record that closed the window: the window goes with it (store.retention_days)
    Column("closed_record", String(36), nullable=True, index=True),
    Index("ix_exposure_windows_open", "address", "closed_at"),
)


def _inventory(name: str, *extra: Column[object]) -> Table:
    return Table(
        name,
        metadata,
        Column("id", String(64), primary_key=True),
        *extra,
        Column("data", Text, nullable=False),
    )


# Which inventory rows each commit changed, in commit order: how an instance learns what
# the others changed (kind: group, rule, port, fip, address_group; "*" = everything).
inventory_log = Table(
    "inventory_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("resource_id", String(64), nullable=False),
)

inv_groups = _inventory("inv_groups", Column("loaded", Boolean, nullable=False))
inv_rules = _inventory("inv_rules")
inv_ports = _inventory("inv_ports")
inv_fips = _inventory("inv_fips")
inv_address_groups = _inventory("inv_address_groups")

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("received_at", Stamp, nullable=False),
    Column("source", String(255), nullable=False),
    Column("reason", Text, nullable=False),
    Column("event_type", String(255), nullable=True),
    Column("message_id", String(255), nullable=True),
    Column("body", LargeBinary, nullable=False),
    Column("retried_at", Stamp, nullable=True),
)

deferred = Table(
    "deferred",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("received_at", Stamp, nullable=False),
    Column("source", String(255), nullable=False),
    Column("broker", String(255), nullable=False),
    Column("reason", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
