from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.neutron_fixtures import Cleanup, Connection, clouds_yaml, connect
from tests.integration.osel_process import OselProcess


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


@pytest.fixture
def osel(tmp_path: Path) -> Iterator[OselProcess]:
    proc = OselProcess(tmp_path)
    yield proc
    proc.close()
