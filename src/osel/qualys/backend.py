"""`scan.backend: qualys`: launch Qualys VM scans and follow them to their end.

Implements the scheduler's `ScanBackend` on `QualysClient`:

- launch: one `action=launch` per batch (title = the batch id). When Qualys
  refuses the `ip` parameter, osel asks the subscription which of the batch's
  addresses it holds (`/asset/ip/ action=list`); with `add_unknown_ips` it
  adds the others first (`action=add`), otherwise (or when Qualys will not
  add them, e.g. IPv6 without the IPv6 option) they are recorded per address
  with Qualys's message and the rest is launched;
- find: a launch in doubt is looked up by its title (`action=list`,
  launched after the intent);
- status: `action=list` by `scan_ref` (several active scans: one list call
  since the oldest launch), Qualys's STATE mapped to osel's scan states;
- results: `action=fetch` (JSON) summarised per address and port.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx

from osel.backoff import BackoffPolicy
from osel.config import QualysSettings
from osel.faults import crash_point
from osel.qualys.budget import Budget
from osel.qualys.client import SCAN_API, QualysClient, QualysRejected, ScanInfo, summarise
from osel.scan_backend import (
    ERROR,
    FINISHED,
    LAUNCHED,
    RUNNING,
    LaunchResult,
    ScanBatch,
    ScanStatus,
    Unavailable,
)
from osel.store.store import Store

log = logging.getLogger(__name__)

_MENTIONS_IP = re.compile(r"\bips?\b", re.I)
STATES = {
    "Queued": LAUNCHED,
    "Loading": LAUNCHED,
    "Submitted": LAUNCHED,
    "Running": RUNNING,
    "Paused": RUNNING,
    "Interrupted": RUNNING,
    "Finished": FINISHED,
    "Error": ERROR,
    "Canceled": ERROR,
}


def scan_status(info: ScanInfo) -> ScanStatus:
    state = STATES.get(info.state, RUNNING)
    shown = f"{info.state}/{info.sub_state}" if info.sub_state else info.state
    error = ""
    if info.state == "Error":
        error = f"Qualys ended the scan in Error ({shown})"
    elif info.state == "Canceled":
        error = f"the scan was canceled in Qualys ({shown})"
    return ScanStatus(info.reference, state, shown, error)


class QualysBackend:
    name = "qualys"

    def __init__(
        self,
        settings: QualysSettings,
        store: Store,
        *,
        backoff: BackoffPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.budget = Budget(store, min_remaining=settings.min_remaining)
        self.client = QualysClient(settings, self.budget, backoff=backoff, transport=transport)
        self.follows = settings.follow
        self.lease_seconds = settings.timeout_seconds * 4 + 10

    async def launch_wait(self) -> float:
        return await self.budget.wait(SCAN_API, launch=True)

    async def launch(self, batch: ScanBatch) -> LaunchResult:
        addresses = list(batch.addresses)
        refused: dict[str, str] = {}
        checked = False
        while addresses:
            try:
                launched = await self.client.launch(batch.title, addresses)
            except QualysRejected as exc:
                if checked or not _MENTIONS_IP.search(exc.text or exc.reason):
                    raise
                checked = True
                refused.update(await self._refused(addresses, exc))
                if not refused:
                    raise
                addresses = [a for a in addresses if a not in refused]
                continue
            crash_point("after_launch_request")
            log.info(
                "Qualys scan %s launched for batch %s: %d address(es)",
                launched.reference,
                batch.id,
                len(addresses),
            )
            return LaunchResult(
                LAUNCHED,
                reference=launched.reference,
                scan_id=launched.scan_id,
                address_errors=refused,
            )
        return LaunchResult(
            ERROR,
            error=f"Qualys refused every address of the batch ({len(refused)})",
            address_errors=refused,
        )

    async def _refused(self, addresses: Sequence[str], exc: QualysRejected) -> dict[str, str]:
        """The addresses the subscription does not hold, with why they are not scanned;
        with add_unknown_ips, those Qualys would not add."""
        try:
            known = await self.client.list_ips(addresses)
            unknown = [a for a in addresses if a not in known]
            if not unknown:
                return {}
            if not self.settings.add_unknown_ips:
                hint = (
                    "not in the Qualys subscription; add it there or set "
                    "qualys.add_unknown_ips: true"
                )
                return {a: f"{exc.text or exc.reason} ({hint})" for a in unknown}
            refused: dict[str, str] = {}
            for version in (4, 6):
                group = [a for a in unknown if ipaddress.ip_address(a).version == version]
                if not group:
                    continue
                try:
                    said = await self.client.add_ips(group)
                except QualysRejected as added:
                    why = (
                        f"Qualys would not add it to the subscription: {added.text or added.reason}"
                    )
                    refused.update({a: why for a in group})
                    continue
                log.info(
                    "added %d address(es) to the Qualys subscription (qualys.add_unknown_ips): "
                    "%s%s",
                    len(group),
                    ", ".join(group),
                    f" ({said})" if said else "",
                )
            return refused
        except Unavailable as lost:
            # only the launch may be in doubt; these calls changed nothing worth reconciling
            raise Unavailable(lost.reason, maybe_done=False) from None

    async def find(self, batch: ScanBatch, since: datetime) -> ScanStatus | None:
        for info in await self.client.list_scans(launched_after=since, for_launch=True):
            if info.title == batch.title:
                return scan_status(info)
        return None

    async def status(self, scans: Sequence[tuple[str, datetime | None]]) -> dict[str, ScanStatus]:
        if not scans:
            return {}
        wanted = {ref for ref, _ in scans}
        if len(scans) == 1:
            infos = await self.client.list_scans(scan_ref=scans[0][0])
        else:
            stamps = [at for _, at in scans if at is not None]
            since = min(stamps) - timedelta(minutes=10) if stamps else None
            infos = await self.client.list_scans(launched_after=since)
        return {i.reference: scan_status(i) for i in infos if i.reference in wanted}

    async def results(self, reference: str) -> dict[str, Any]:
        return summarise(await self.client.fetch(reference))

    async def close(self) -> None:
        await self.client.close()
