"""qualys scanning: launch intent and follow-up of scan batches, what change records
learn afterwards, the shared Qualys API budget

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 05:47:44.644354
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "qualys_budget",
        sa.Column("api", sa.String(length=64), nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rate_limit", sa.Integer(), nullable=True),
        sa.Column("window_seconds", sa.Integer(), nullable=True),
        sa.Column("remaining", sa.Integer(), nullable=True),
        sa.Column("wait_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("concurrency_limit", sa.Integer(), nullable=True),
        sa.Column("concurrency_running", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("api", name=op.f("pk_qualys_budget")),
    )
    op.create_table(
        "qualys_calls",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("api", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_qualys_calls")),
    )
    with op.batch_alter_table("qualys_calls", schema=None) as batch_op:
        batch_op.create_index("ix_qualys_calls_api_at", ["api", "at"], unique=False)

    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("qualys_scan_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("scan_result", sa.Text(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_audit_records_qualys_scan_id"), ["qualys_scan_id"], unique=False
        )

    with op.batch_alter_table("scan_batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column("launch_attempts", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("in_doubt", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("owner", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("launched_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("qualys_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("qualys_state", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("address_errors", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scan_batches", schema=None) as batch_op:
        for column in (
            "address_errors",
            "qualys_state",
            "qualys_id",
            "finished_at",
            "launched_at",
            "owner",
            "in_doubt",
            "launch_attempts",
            "attempts",
            "due_at",
        ):
            batch_op.drop_column(column)

    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_records_qualys_scan_id"))
        batch_op.drop_column("scan_result")
        batch_op.drop_column("qualys_scan_id")

    with op.batch_alter_table("qualys_calls", schema=None) as batch_op:
        batch_op.drop_index("ix_qualys_calls_api_at")

    op.drop_table("qualys_calls")
    op.drop_table("qualys_budget")
