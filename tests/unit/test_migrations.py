"""The migrations build exactly the schema the code uses, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sys
import time
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from osel.store.store import (
    MIGRATIONS,
    SCHEMA_REVISION,
    SchemaTooNew,
    Store,
    known_revisions,
    schema_revision,
)
from osel.store.tables import metadata


async def test_the_migrated_schema_is_the_schema_of_the_code(store: Store):
    def differences(conn: Any) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with store.engine.connect() as conn:
        diff = await conn.run_sync(differences)
    assert diff == []


def test_the_schema_revision_is_alembic_head():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_REVISION


async def test_a_current_store_is_not_migrated_again(store: Store):
    async with store.engine.connect() as conn:
        assert await conn.run_sync(schema_revision) == SCHEMA_REVISION
    # a second start on the same store: Alembic is not even imported
    probe = (
        "import asyncio, sys\n"
        "from osel.store.store import Store\n"
        "async def main():\n"
        "    s = Store(sys.argv[1])\n"
        "    await s.migrate()\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", probe, store.url, stdout=PIPE, stderr=PIPE
    )
    out, err = await child.communicate()
    assert child.returncode == 0, err.decode()
    assert out.decode().strip() == "[]"


async def test_an_empty_store_is_migrated_to_the_schema_revision(tmp_path: Path):
    s = Store(f"sqlite:///{tmp_path}/empty.db")
    try:
        async with s.engine.connect() as conn:
            assert await conn.run_sync(schema_revision) is None
        await s.migrate()
        async with s.engine.connect() as conn:
            assert await conn.run_sync(schema_revision) == SCHEMA_REVISION
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert set(metadata.tables) <= tables
    finally:
        await s.close()


def test_the_known_revisions_are_the_migrations_files():
    files = sorted(p.name[:4] for p in (Path(MIGRATIONS) / "versions").glob("[0-9]*.py"))
    assert sorted(known_revisions()) == files and SCHEMA_REVISION in files


async def test_a_store_a_newer_osel_migrated_is_refused_in_one_line(tmp_path: Path):
    from click.testing import CliRunner

    from osel.cli import main

    url = f"sqlite:///{tmp_path}/osel.db"
    store = Store(url)
    await store.migrate()
    async with store.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(SchemaTooNew) as caught:
        await store.migrate()
    await store.close()
    assert caught.value.revision == "0099"
    config = tmp_path / "osel.yaml"
    config.write_text(f"store:\n  url: {url}\nscan:\n  backend: dry-run\n")
    result = await asyncio.to_thread(CliRunner().invoke, main, ["db", "upgrade", "-c", str(config)])
    assert result.exit_code == 2
    (line,) = result.output.splitlines()
    assert line.startswith(f"osel: the store (store.url={url}) has schema revision 0099")
    assert f"its newest is {SCHEMA_REVISION}" in line and "restore the store's backup" in line


RACE = """
import asyncio, sys, time
from osel.store.store import Store

async def main(url: str, at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.time()))
    store = Store(url)
    try:
        await store.migrate()
    finally:
        await store.close()

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


async def test_processes_that_start_together_on_a_new_sqlite_file_migrate_it_once(
    tmp_path: Path,
):
    # an intake and a worker started at once by their service manager: each must find
    # the schema made, not fail on a table the other created (they did, 13 of 20 times)
    for round_ in range(3):
        url = f"sqlite:///{tmp_path}/new-{round_}.db"
        at = f"{time.time() + 1.0}"
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", RACE, url, at, stdout=PIPE, stderr=PIPE
            )
            for _ in range(4)
        ]
        for child in children:
            _out, err = await child.communicate()
            assert child.returncode == 0, err.decode()[-2000:]
        s = Store(url)
        try:
            async with s.engine.connect() as conn:
                assert await conn.run_sync(schema_revision) == SCHEMA_REVISION
                count = text("SELECT count(*) FROM alembic_version")
                versions = (await conn.execute(count)).scalar()
            assert versions == 1
        finally:
            await s.close()
