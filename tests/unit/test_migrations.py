"""The migrations build exactly the schema the code uses, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from osel.store.store import Store
from osel.store.tables import metadata


async def test_the_migrated_schema_is_the_schema_of_the_code(store: Store):
    def differences(conn: Any) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with store.engine.connect() as conn:
        diff = await conn.run_sync(differences)
    assert diff == []
