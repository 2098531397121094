"""AMQP body -> `Notification`.

Two shapes reach osel: the oslo.messaging 2.0 envelope
(`{"oslo.version": "2.0", "oslo.message": "<JSON string>"}`) and the bare
1.0 message of older releases (the notification dict itself). Anything else
raises `BadMessage` with a reason fit for the quarantine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from osel.model import Context, Notification

SUPPORTED_ENVELOPES = ("2.0",)


class BadMessage(ValueError):
    """The body cannot be turned into a notification; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _loads(data: bytes | str, what: str) -> Any:
    try:
        return json.loads(data)
    except UnicodeDecodeError as exc:
        raise BadMessage(f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise BadMessage(f"{what} is not JSON: {exc.msg} at position {exc.pos}") from exc
    except RecursionError as exc:
        raise BadMessage(f"{what} is nested too deeply") from exc


def _unwrap(body: Any) -> tuple[dict[str, Any], str]:
    if not isinstance(body, dict):
        raise BadMessage(f"body is a JSON {type(body).__name__}, expected an object")
    if "oslo.message" not in body and "oslo.version" not in body:
        return body, "1.0"
    version = body.get("oslo.version")
    if version not in SUPPORTED_ENVELOPES:
        raise BadMessage(f"unknown oslo envelope version {version!r}")
    inner = body.get("oslo.message")
    if not isinstance(inner, str):
        raise BadMessage("oslo.message is missing or not a string")
    message = _loads(inner, "oslo.message")
    if not isinstance(message, dict):
        raise BadMessage(f"oslo.message is a JSON {type(message).__name__}, expected an object")
    return message, str(version)


def _ctx(message: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = message.get(f"_context_{key}")
        if value is not None and value != "":
            return str(value)
    return None


def _context(message: dict[str, Any]) -> Context:
    return Context(
        project_id=_ctx(message, "project_id", "tenant_id", "project", "tenant"),
        user_id=_ctx(message, "user_id", "user"),
        user_name=_ctx(message, "user_name"),
        project_name=_ctx(message, "project_name", "tenant_name"),
        request_id=_ctx(message, "request_id"),
        global_request_id=_ctx(message, "global_request_id"),
    )


def _required_str(message: dict[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value:
        raise BadMessage(f"{key} is missing or not a non-empty string")
    return value


# after the key `event_type`: `": "<name>"`, also as inside the envelope's escaped inner JSON
_EVENT_TYPE_VALUE = re.compile(rb'\\?"\s*:\s*\\?"([^"\\]{1,255})\\?"')
_KEY = b"event_type"
_QUOTE = ord('"')


class EventFilter:
    """Recognises, from the raw bytes, bodies that cannot be a message of the wanted event
    types, so that they are counted and acknowledged without being decoded.

    A message of a wanted type carries that type's name as its `event_type` string. The
    names are plain ASCII that JSON never needs to escape, so unless a body uses a
    ``\\u`` escape somewhere (then nothing is concluded), the name appears literally in
    the body, whether bare or inside the oslo 2.0 envelope's inner JSON string. A body
    in which no wanted name appears is therefore not a wanted message. `ignorable` also
    wants an `event_type` field to name the body by: anything else (not JSON, no event
    type, ...) goes through `decode`, which says what is wrong with it.
    """

    def __init__(self, wanted: Iterable[str]) -> None:
        by_tail: dict[bytes, list[bytes]] = {}
        for name in sorted({n.encode() for n in wanted}):
            by_tail.setdefault(name[-4:], []).append(name)
        if not by_tail:
            raise ValueError("EventFilter needs at least one wanted event type")
        # the names grouped by their last bytes: one quick find() per group over the body
        self._by_tail = {tail: tuple(names) for tail, names in by_tail.items()}

    def _may_be_wanted(self, raw: bytes) -> bool:
        for tail, names in self._by_tail.items():
            at = raw.find(tail)
            while at != -1:
                end = at + len(tail)
                if any(raw.endswith(name, 0, end) for name in names):
                    return True
                at = raw.find(tail, end)
        return False

    def ignorable(self, body: bytes | str, *, max_bytes: int | None = None) -> str | None:
        """The event type of a body that surely is not a wanted message, else None."""
        raw = body.encode(errors="surrogateescape") if isinstance(body, str) else body
        if max_bytes is not None and len(raw) > max_bytes:
            return None  # decode refuses it, with its reason
        if b"\\u" in raw or self._may_be_wanted(raw):
            return None
        at = raw.find(_KEY)
        while at != -1:
            if at > 0 and raw[at - 1] == _QUOTE:
                found = _EVENT_TYPE_VALUE.match(raw, at + len(_KEY))
                if found is not None:
                    return found.group(1).decode("ascii", "replace")
            at = raw.find(_KEY, at + len(_KEY))
        return None


def decode(body: bytes | str, *, max_bytes: int | None = None) -> Notification:
    """Decode one AMQP body; raise `BadMessage` for anything malformed."""
    size = len(body.encode() if isinstance(body, str) else body)
    if max_bytes is not None and size > max_bytes:
        raise BadMessage(f"body is {size} bytes, over service.max_message_bytes={max_bytes}")
    message, envelope = _unwrap(_loads(body, "body"))
    return from_dict(message, envelope=envelope)


def from_dict(message: dict[str, Any], *, envelope: str = "1.0") -> Notification:
    """Build a notification from an already decoded message dict."""
    payload = message.get("payload")
    if not isinstance(payload, dict):
        raise BadMessage("payload is missing or not an object")
    timestamp = message.get("timestamp")
    return Notification(
        message_id=_required_str(message, "message_id"),
        event_type=_required_str(message, "event_type"),
        payload=payload,
        timestamp=str(timestamp) if timestamp is not None else "",
        publisher_id=str(message.get("publisher_id") or ""),
        context=_context(message),
        envelope=envelope,
    )
