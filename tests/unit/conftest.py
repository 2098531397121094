from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from osel.decide import Rules
from osel.inventory import Inventory
from osel.pipeline import Item, Pipeline, Stats
from osel.resolver import Resolver
from osel.store.store import Batch, Store
from tests.fakes import FakeNeutron
from tests.pg import postgres_database


class Harness:
    def __init__(self, store: Store, neutron: FakeNeutron, rules: Rules) -> None:
        self.store = store
        self.neutron = neutron
        self.inventory = Inventory()
        self.pipeline = Pipeline(
            store,
            self.inventory,
            Resolver(self.inventory, neutron),
            rules,
            instance="test-osel",
            max_message_bytes=1 << 20,
        )

    async def feed(self, *bodies: bytes, source: str = "amqp") -> Stats:
        batch = Batch()
        stats = await self.pipeline.process([Item(b, source, "broker-1") for b in bodies], batch)
        batch.dirty = self.inventory.take_dirty()
        await self.store.commit(batch)
        return stats

    async def records(self) -> list[dict[str, Any]]:
        return await self.store.tail(10_000)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path}/osel.db")
        await s.migrate()
        yield s
        await s.close()
        return
    with postgres_database() as url:
        s = Store(url)
        await s.migrate()
        yield s
        await s.close()


@pytest.fixture
def neutron() -> FakeNeutron:
    return FakeNeutron()


@pytest.fixture
def harness(store: Store, neutron: FakeNeutron) -> Harness:
    return Harness(store, neutron, Rules())
