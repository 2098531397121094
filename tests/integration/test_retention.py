"""store.retention_days in a real `osel run`: rows past it go when the daemon starts
and every 10 minutes after, what is young or still needed stays."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import sqlalchemy

from tests.integration import neutron_fixtures as nf
from tests.integration.osel_process import OselProcess, Record

pytestmark = pytest.mark.integration

AGED = {  # the tables whose rows have an age, and the column it is read from
    "audit_records": "created_at",
    "seen_messages": "seen_at",
    "scan_batches": "updated_at",
}


def age_by_two_days(store_url: str) -> None:
    """Move every row's time two days back, as if osel had written it then."""
    url = sqlalchemy.make_url(store_url)
    postgresql = url.get_backend_name() == "postgresql"
    if postgresql:
        url = url.set(drivername="postgresql+psycopg")
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as conn:
            for table, column in AGED.items():
                earlier = (
                    f"{column} - interval '2 days'"
                    if postgresql
                    else f"strftime('%Y-%m-%d %H:%M:%f', {column}, '-2 days')"
                )
                conn.execute(sqlalchemy.text(f"UPDATE {table} SET {column} = {earlier}"))
    finally:
        engine.dispose()


def counts(osel: OselProcess) -> dict[str, int]:
    return {
        table: osel.query(f"SELECT count(*) FROM {table}")[0][0]
        for table in (*AGED, "scan_targets", "exposure_windows")
    }


def rule_records(rule_id: str) -> Callable[[Record], bool]:
    def match(r: Record) -> bool:
        return (r.get("security_group_rule") or {}).get("id") == rule_id

    return match


def test_what_is_past_the_retention_goes_when_osel_starts(
    admin: nf.Connection, cleanup: nf.Cleanup, tmp_path: Path, store_url: str
) -> None:
    net, _ = nf.create_private_network(admin, cleanup)
    sg = nf.create_security_group(admin, cleanup)
    for _ in range(2):
        nf.create_port(admin, cleanup, network=net, security_groups=[sg.id])
    osel = OselProcess(
        tmp_path,
        store_url=store_url,
        window_seconds=0,
        http=True,
        extra={"store": {"retention_days": 1}},
    )
    try:
        osel.start()
        old = nf.add_rule(admin, cleanup, sg)
        osel.wait_records(rule_records(old.id), 2)  # one record per port
        osel.wait_records(lambda r: r["record_type"] == "scan", 2)  # queued, launched
        osel.stop()
        before = counts(osel)
        assert before["audit_records"] == 4 and before["exposure_windows"] == 2
        age_by_two_days(store_url)

        osel.start()
        osel.wait_for_log("deleted what is older than store.retention_days (1)")
        young = nf.add_rule(admin, cleanup, sg, port_range=(443, 443))
        osel.wait_records(rule_records(young.id), 2)  # in the audit file: delivered
        metrics = httpx.get(f"{osel.http_url}/metrics", timeout=10).text
    finally:
        osel.close()
    after = counts(osel)
    # gone: the old change's records and its dry-run batch (delivered to the file
    # sink, and nobody follows a dry-run scan), the batch's targets, the message id.
    # Kept: the newest record then (the batch's "launched"; the young change's records
    # must get higher ids, or the sink's cursor would pass them), both rules' exposure
    # windows (open: the ports are still exposed) and everything about the young change,
    # which was delivered.
    left = [r[0] for r in osel.query("SELECT body FROM audit_records")]
    assert all(old.id not in body for body in left) and len(left) >= 2
    assert after["exposure_windows"] == 4
    assert after["seen_messages"] == 1
    deleted = dict(re.findall(r'osel_store_deleted_rows_total\{table="(\w+)"\} (\d+)', metrics))
    assert deleted == {
        "audit_records": "3",
        "scan_batches": "1",
        "scan_targets": "2",
        "seen_messages": "1",
    }
    # the audit file, written before, still holds the old change: the trail's home
    assert len([r for r in osel.records() if rule_records(old.id)(r)]) == 2
