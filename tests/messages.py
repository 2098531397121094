"""Build notification bodies the way oslo.messaging and Neutron do."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

# real notifications captured from Neutron 29 (one AMQP message body a line)
SAMPLES = str(Path(__file__).parent / "data" / "neutron-29" / "notifications.jsonl")


def notification(
    event_type: str,
    payload: dict[str, Any],
    *,
    project: str = "p1",
    message_id: str | None = None,
    icehouse: bool = False,
) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "message_id": message_id or str(uuid.uuid4()),
        "publisher_id": "network.test",
        "event_type": event_type,
        "priority": "INFO",
        "payload": payload,
        "timestamp": "2026-11-28 04:44:05.366061",
        "_unique_id": uuid.uuid4().hex,
        "_context_request_id": f"req-{uuid.uuid4()}",
        "_context_user_id": "u1",
        "_context_roles": ["member"],
    }
    if icehouse:
        msg["_context_tenant_id"] = project
        msg["_context_tenant_name"] = "BLURP"
    else:
        msg["_context_project_id"] = project
    return msg


def envelope(msg: dict[str, Any]) -> bytes:
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(msg)}).encode()


def bare(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg).encode()


def rule(
    sg: str,
    *,
    rid: str | None = None,
    direction: str = "ingress",
    proto: str | None = "tcp",
    low: int | None = 22,
    high: int | None = 22,
    remote: str | None = "0.0.0.0/0",
    ethertype: str = "IPv4",
    remote_group: str | None = None,
) -> dict[str, Any]:
    return {
        "id": rid or str(uuid.uuid4()),
        "security_group_id": sg,
        "direction": direction,
        "ethertype": ethertype,
        "protocol": proto,
        "port_range_min": low,
        "port_range_max": high,
        "remote_ip_prefix": remote,
        "remote_group_id": remote_group,
        "remote_address_group_id": None,
        "project_id": "p1",
        "tenant_id": "p1",
    }


def port(pid: str, ips: list[str], sgs: list[str], **extra: Any) -> dict[str, Any]:
    data = {
        "id": pid,
        "fixed_ips": [{"subnet_id": "s", "ip_address": ip} for ip in ips],
        "security_groups": sgs,
        "port_security_enabled": True,
        "device_owner": "compute:nova",
        "network_id": "n",
        "project_id": "p1",
        "allowed_address_pairs": [],
        "revision_number": 1,
    }
    data.update(extra)
    return data


def fip(fid: str, address: str, port_id: str | None, fixed: str | None = None) -> dict[str, Any]:
    return {
        "id": fid,
        "floating_ip_address": address,
        "port_id": port_id,
        "fixed_ip_address": fixed,
        "project_id": "p1",
        "revision_number": 0,
    }
