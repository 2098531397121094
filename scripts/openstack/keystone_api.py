"""Keystone REST and MariaDB helpers shared by the helpers embedded in stack.sh
and aodh.sh (run with the stack's own virtualenv; no project imports)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from typing import Any

KS = os.environ["OSEL_KS_URL"]
LABEL = os.environ.get("OSEL_HELPER_LABEL", "stack")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Result = tuple[int, Message, Any]


class Fail(Exception):
    pass


def call(method: str, url: str, token: str | None = None, body: Any = None) -> Result:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("X-Auth-Token", token)
    try:
        with OPENER.open(req, timeout=60) as resp:
            raw = resp.read()
            return resp.status, resp.headers, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = raw.decode(errors="replace")[:300]
        return exc.code, exc.headers, payload


def must(expected: tuple[int, ...], result: Result, what: str) -> Any:
    status, _, payload = result
    if status not in expected:
        raise Fail(f"{what}: HTTP {status}: {payload}")
    return payload


def find_one(tok: str, collection: str, key: str, **params: str) -> Any:
    url = f"{KS}/{collection}?{urllib.parse.urlencode(params)}"
    items = must((200,), call("GET", url, tok), f"list {collection}")[key]
    return items[0] if items else None


def ensure(tok: str, collection: str, key: str, entity: dict[str, Any], **lookup: str) -> str:
    found = find_one(tok, collection, key, **lookup)
    if found:
        return str(found["id"])
    payload = must(
        (201,), call("POST", f"{KS}/{collection}", tok, {key[:-1]: entity}), f"create {collection}"
    )
    print(f"{LABEL}:   created {key[:-1]} {entity.get('name', entity)}")
    return str(payload[key[:-1]]["id"])


def db() -> Any:
    import pymysql  # type: ignore[import-untyped]  # in the stack's virtualenv

    return pymysql.connect(
        host=os.environ["OSEL_DB_HOST"],
        port=int(os.environ["OSEL_DB_PORT"]),
        user=os.environ["OSEL_DB_USER"],
        password="",
        autocommit=True,
    )
