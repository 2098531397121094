"""decode -> classify -> resolve -> decide, for a batch of message bodies.

`Pipeline.process` fills a `Batch` for one store transaction; the caller
commits it and only then acknowledges the messages. Messages are handled in
order, one at a time, because each may change what the next one sees. Bodies
that surely are of an event type osel ignores (most of them) are recognised
from their bytes (`EventFilter`) and counted without being decoded.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from osel.decide import Rules, decide
from osel.decode import BadMessage, EventFilter, decode
from osel.handlers import HANDLERS, Change
from osel.inventory import Inventory
from osel.model import Notification
from osel.neutron import NeutronUnavailable
from osel.resolver import Resolver
from osel.store.store import Batch, Store

log = logging.getLogger(__name__)


class HandlingFailed(Exception):
    """A handler raised something unexpected; the batch must not be committed."""

    def __init__(self, message_id: str, event_type: str, attempt: int, error: str) -> None:
        super().__init__(f"{event_type} {message_id}: attempt {attempt} failed: {error}")
        self.message_id = message_id


class Item(NamedTuple):
    """One message body and where it came from (a named tuple: one is made for every
    message, and it builds in less than half the time of a frozen dataclass)."""

    body: bytes
    source: str = "amqp"  # amqp | replay | aodh | deferred
    broker: str = ""
    deferred_id: int | None = None
    ignored: str | None = None  # event type, when the source recognised it as ignored


@dataclass(frozen=True, slots=True)
class Unhandled:
    """A body that `EventFilter` showed to be of an event type osel does not handle."""

    event_type: str


@dataclass(slots=True)
class Stats:
    """What a batch did, for logs and metrics."""

    outcomes: Counter[str] = field(default_factory=Counter)
    by_event: Counter[tuple[str, str]] = field(default_factory=Counter)  # (event_type, outcome)
    changes: Counter[str] = field(default_factory=Counter)
    addresses: Counter[str] = field(default_factory=Counter)  # change records with an address
    records: int = 0
    targets: int = 0
    change_times: list[float] = field(default_factory=list)  # epoch of each recorded change

    def add(self, other: Stats) -> None:
        self.outcomes.update(other.outcomes)
        self.by_event.update(other.by_event)
        self.changes.update(other.changes)
        self.addresses.update(other.addresses)
        self.records += other.records
        self.targets += other.targets
        self.change_times += other.change_times

    @property
    def latencies(self) -> list[float]:
        now = time.time()
        return [max(0.0, now - t) for t in self.change_times]


class Pipeline:
    def __init__(
        self,
        store: Store,
        inventory: Inventory,
        resolver: Resolver,
        rules: Rules,
        *,
        instance: str,
        max_message_bytes: int | None = None,
        max_attempts: int = 3,
    ) -> None:
        self.store = store
        self.inventory = inventory
        self.resolver = resolver
        self.rules = rules
        self.instance = instance
        self.max_message_bytes = max_message_bytes
        self.deferring = False  # while True, relevant messages queue up behind the deferred ones
        self.max_attempts = max_attempts
        self.failures: dict[str, tuple[int, str]] = {}  # message id -> (attempts, last error)
        self.filter = EventFilter(HANDLERS)

    def recognise(self, body: bytes) -> str | None:
        """The event type of a body osel surely ignores (see `EventFilter`), else None."""
        return self.filter.ignorable(body, max_bytes=self.max_message_bytes)

    def _decode(self, item: Item) -> Notification | BadMessage | Unhandled:
        # most of a cloud's notifications are of types osel ignores: those are recognised
        # from the bytes, without decoding the envelope and the inner message (the AMQP
        # source does that on arrival; `process` counts those items without coming here)
        event_type = self.recognise(item.body)
        if event_type is not None:
            return Unhandled(event_type)
        try:
            return decode(item.body, max_bytes=self.max_message_bytes)
        except BadMessage as exc:
            return exc

    async def process(self, items: list[Item], batch: Batch) -> Stats:
        stats = Stats()
        # what the source recognised as ignored is only counted, in bulk: most of a
        # batch, and neither its order nor its body matters
        recognised = Counter(i.ignored for i in items if i.ignored is not None)
        if recognised:
            stats.outcomes["ignored"] = recognised.total()
            stats.by_event.update({(e, "ignored"): n for e, n in recognised.items()})
            items = [i for i in items if i.ignored is None]
        decoded = [self._decode(i) for i in items]
        ids = [
            n.message_id
            for n in decoded
            if isinstance(n, Notification) and n.event_type in HANDLERS
        ]
        seen = await self.store.seen(ids)
        for item, n in zip(items, decoded, strict=True):
            outcome = await self._one(item, n, batch, seen, stats)
            stats.outcomes[outcome] += 1
            stats.by_event[(n.event_type if not isinstance(n, BadMessage) else "", outcome)] += 1
        return stats

    async def _one(
        self,
        item: Item,
        n: Notification | BadMessage | Unhandled,
        batch: Batch,
        seen: set[str],
        stats: Stats,
    ) -> str:
        if isinstance(n, Unhandled):
            return "ignored"
        if isinstance(n, BadMessage):
            self._quarantine(item, n.reason, batch, None)
            return "quarantined"
        if n.event_type not in HANDLERS:
            return "ignored"
        if n.message_id in seen:
            if item.deferred_id is not None:
                batch.undeferred.append(item.deferred_id)
            return "duplicate"
        if self.deferring and item.deferred_id is None:
            self._defer(item, "waiting behind earlier changes that need Neutron", batch)
            return "deferred"
        outcome = await self._handle(item, n, batch)
        if isinstance(outcome, str):
            return outcome
        seen.add(n.message_id)
        self._record(item, n, outcome, batch, stats)
        return "recorded" if outcome else "no_change"

    async def _handle(self, item: Item, n: Notification, batch: Batch) -> list[Change] | str:
        """The handler's changes, or the outcome that replaced them."""
        attempts, last_error = self.failures.get(n.message_id, (0, ""))
        if attempts >= self.max_attempts:
            self._quarantine(item, f"handling failed {attempts} times: {last_error}", batch, n)
            del self.failures[n.message_id]
            return "quarantined"
        try:
            return await HANDLERS[n.event_type](n, self.inventory, self.resolver)
        except NeutronUnavailable as exc:
            if item.deferred_id is None:
                self._defer(item, str(exc), batch)
            self.deferring = True
            return "deferred"
        except BadMessage as exc:
            self._quarantine(item, exc.reason, batch, n)
            return "quarantined"
        except Exception as exc:
            # a bug or a shape nobody foresaw: fail the batch (nothing is committed, the
            # messages come back), and quarantine this one after max_attempts tries
            error = f"{type(exc).__name__}: {exc}"[:500]
            self.failures[n.message_id] = (attempts + 1, error)
            raise HandlingFailed(n.message_id, n.event_type, attempts + 1, error) from exc

    def _record(
        self, item: Item, n: Notification, changes: list[Change], batch: Batch, stats: Stats
    ) -> None:
        batch.message_ids.append((n.message_id, n.event_type))
        if item.deferred_id is not None:
            batch.undeferred.append(item.deferred_id)
        for change in changes:
            decision = decide(change, self.rules, instance=self.instance, broker=item.broker)
            batch.decisions.append(decision)
            stats.changes[change.change_type] += 1
            stats.addresses[change.change_type] += sum(
                1 for r in decision.records if r["affected_ip_address"]
            )
            stats.records += len(decision.records)
            stats.targets += len(decision.targets)
        if changes:
            stats.change_times.append(epoch(n.timestamp))

    def _quarantine(self, item: Item, reason: str, batch: Batch, n: Notification | None) -> None:
        log.warning("quarantined a message from %s: %s", item.source, reason)
        batch.quarantined.append(
            {
                "source": item.source,
                "reason": reason,
                "body": item.body,
                "event_type": n.event_type if n else _peek(item.body, "event_type"),
                "message_id": n.message_id if n else _peek(item.body, "message_id"),
            }
        )
        if item.deferred_id is not None:
            batch.undeferred.append(item.deferred_id)

    def _defer(self, item: Item, reason: str, batch: Batch) -> None:
        if not self.deferring:
            log.warning(
                "Neutron is needed and unavailable (%s): keeping changes in the store "
                "until it answers",
                reason,
            )
        batch.deferred.append(
            {"source": item.source, "broker": item.broker, "reason": reason, "body": item.body}
        )


def epoch(oslo_time: str) -> float:
    """The notification's timestamp (UTC, no zone) as epoch seconds; now if unreadable."""
    try:
        parsed = datetime.fromisoformat(oslo_time.strip().replace(" ", "T").removesuffix("Z"))
    except ValueError:
        return time.time()
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _peek(body: bytes, key: str) -> str | None:
    """Best-effort id of a message that failed to decode, for the quarantine list."""
    try:
        data: Any = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("oslo.message"), str):
            data = json.loads(data["oslo.message"])
        value = data.get(key) if isinstance(data, dict) else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return str(value)[:255] if value is not None else None
