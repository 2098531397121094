"""Alembic environment: migrations run on a plain (sync) connection."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, engine_from_config, pool, text

from osel.store.tables import metadata

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section) or {},
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as conn:
        _run(conn)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # several instances may start at once: one migrates, the others wait
            context.execute(text("SELECT pg_advisory_xact_lock(7061736)"))
        context.run_migrations()


run_migrations_online()
