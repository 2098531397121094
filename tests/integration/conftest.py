from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.integration import neutron_fixtures as nf
from tests.integration.neutron_fixtures import Cleanup, Connection, clouds_yaml, connect
from tests.integration.osel_process import OselProcess
from tests.pg import postgres_database


@pytest.fixture(scope="session")
def admin() -> Connection:
    if not clouds_yaml().exists():
        pytest.fail(f"{clouds_yaml()} is missing: run `bash scripts/openstack/stack.sh up` first")
    return connect("osel-admin")


@pytest.fixture
def cleanup() -> Iterator[Cleanup]:
    c = Cleanup()
    yield c
    c.run()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest) -> str:
    """Every test that uses a store runs on SQLite and on the machine's PostgreSQL."""
    return str(request.param)


@pytest.fixture
def new_store_url(store_backend: str) -> Iterator[Callable[[Path], str]]:
    """Makes an empty store: a SQLite file in the given directory, or a new database."""
    with ExitStack() as stack:

        def make(workdir: Path) -> str:
            if store_backend == "sqlite":
                workdir.mkdir(parents=True, exist_ok=True)
                return f"sqlite:///{workdir}/osel.db"
            return stack.enter_context(postgres_database())

        yield make


@pytest.fixture
def store_url(new_store_url: Callable[[Path], str], tmp_path: Path) -> str:
    return new_store_url(tmp_path)


@pytest.fixture
def osel(tmp_path: Path, store_url: str) -> Iterator[OselProcess]:
    proc = OselProcess(tmp_path, store_url=store_url)
    yield proc
    proc.close()


@pytest.fixture
def group(admin: Connection, cleanup: Cleanup) -> tuple[str, list[str]]:
    """A real group with two ports, so rule changes have addresses to scan."""
    net, _ = nf.create_private_network(admin, cleanup)
    sg = nf.create_security_group(admin, cleanup)
    ports = [nf.create_port(admin, cleanup, network=net, security_groups=[sg.id]) for _ in range(2)]
    return sg.id, [p.fixed_ips[0]["ip_address"] for p in ports]
