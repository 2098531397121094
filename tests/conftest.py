from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_osel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's OSEL_* variables must not leak into the tests' configurations."""
    for key in list(os.environ):
        if key.startswith("OSEL_") and key != "OSEL_STACK_DIR":
            monkeypatch.delenv(key)
