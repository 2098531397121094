"""What the scan scheduler needs from a scanner, and the dry-run scanner.

A backend launches a batch of addresses as one scan, finds a launch that may
have reached it unseen (by the batch's title), reports the state of its scans
and fetches their results. Its failures are `ScanProblem`s the scheduler knows
how to handle: throttled (wait), unavailable (retry, the launch maybe done),
authentication failed (block until fixed), rejected (hold the batch). The
Qualys backend is `osel.qualys.backend`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

log = logging.getLogger(__name__)

QUEUED = "queued"
LAUNCHING = "launching"
LAUNCHED = "launched"
RUNNING = "running"
FINISHED = "finished"
ERROR = "error"
SKIPPED = "skipped"
HELD = "held"
ACTIVE = (LAUNCHED, RUNNING)  # the states of a batch that has a scan to follow (scan_batches.state)


# --------------------------------------------------------------------------- backend interface


class ScanProblem(Exception):
    """A backend call that did not do what was asked. `reason` is for users: no secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Throttled(ScanProblem):
    """The backend asked to wait (rate or concurrency limit); nothing was done."""

    def __init__(self, reason: str, wait: float) -> None:
        super().__init__(reason)
        self.wait = max(0.0, wait)


class Unavailable(ScanProblem):
    """No usable answer (network error, timeout, 5xx). `maybe_done`: the request may have
    been carried out all the same (it left osel and no definite answer came back)."""

    def __init__(self, reason: str, *, maybe_done: bool = True) -> None:
        super().__init__(reason)
        self.maybe_done = maybe_done


class AuthFailed(ScanProblem):
    """The backend refuses osel's credentials or rights: nothing works until the
    configuration is fixed (and osel restarted)."""


class Rejected(ScanProblem):
    """The backend refused this request for good (a bad parameter, an unknown profile)."""


@dataclass(frozen=True, slots=True)
class ScanBatch:
    id: str
    title: str
    addresses: list[str]
    priority: int
    record_uuids: list[str]
    message_ids: list[str]
    members: tuple[tuple[str, str], ...] = ()  # (change record id, address)


@dataclass(frozen=True, slots=True)
class LaunchResult:
    state: str  # launched | error (nothing could be launched: every address was refused)
    reference: str = ""
    error: str = ""
    scan_id: str = ""
    address_errors: Mapping[str, str] = field(default_factory=dict)  # address -> why not


@dataclass(frozen=True, slots=True)
class ScanStatus:
    reference: str
    state: str  # launched | running | finished | error
    backend_state: str = ""  # the backend's own words, e.g. "Queued", "Finished/No_Vuln"
    error: str = ""


class ScanBackend(Protocol):
    name: str
    follows: bool  # launched scans have a life to follow (status, results)
    lease_seconds: float  # the longest a launch call can take

    async def launch_wait(self) -> float:
        """Seconds before a launch may be tried (0: now)."""
        ...

    async def launch(self, batch: ScanBatch) -> LaunchResult: ...

    async def find(self, batch: ScanBatch, since: datetime) -> ScanStatus | None:
        """The scan launched for `batch` (found by its title), or None if there is none."""
        ...

    async def status(self, scans: Sequence[tuple[str, datetime | None]]) -> dict[str, ScanStatus]:
        """The state of each (reference, launched_at); references not found are left out."""
        ...

    async def results(self, reference: str) -> dict[str, Any]:
        """Per address: {ip_status, open: ["tcp/22", ...], vulnerabilities: {severity: n},
        ports: {"tcp/22": {max_severity, vulnerabilities}}}."""
        ...

    async def close(self) -> None: ...


class DryRunBackend:
    """Records the batch it would launch; sends nothing anywhere."""

    name = "dry-run"
    follows = False
    lease_seconds = 5.0

    async def launch_wait(self) -> float:
        return 0.0

    async def launch(self, batch: ScanBatch) -> LaunchResult:
        log.info(
            "dry-run: would scan %d address(es) in batch %s: %s",
            len(batch.addresses),
            batch.id,
            ", ".join(batch.addresses),
        )
        return LaunchResult(LAUNCHED)

    async def find(self, batch: ScanBatch, since: datetime) -> ScanStatus | None:
        return None

    async def status(self, scans: Sequence[tuple[str, datetime | None]]) -> dict[str, ScanStatus]:
        return {}

    async def results(self, reference: str) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        return None
