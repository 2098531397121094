"""what store.retention_days deletes can be found without reading whole tables

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 22:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exposure_windows", schema=None) as batch_op:
        batch_op.create_index("ix_exposure_windows_closed_record", ["closed_record"], unique=False)
    with op.batch_alter_table("seen_messages", schema=None) as batch_op:
        batch_op.create_index("ix_seen_messages_seen_at", ["seen_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("seen_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_seen_messages_seen_at")
    with op.batch_alter_table("exposure_windows", schema=None) as batch_op:
        batch_op.drop_index("ix_exposure_windows_closed_record")
