"""AMQP body -> `Notification`.

Two shapes reach osel: the oslo.messaging 2.0 envelope
(`{"oslo.version": "2.0", "oslo.message": "<JSON string>"}`) and the bare
1.0 message of older releases (the notification dict itself). Anything else
raises `BadMessage` with a reason fit for the quarantine.
"""

from __future__ import annotations

import json
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
