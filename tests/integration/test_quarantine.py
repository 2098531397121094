"""Quarantine: reason, dead-letter copy, `osel quarantine list|retry` after a fix."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pika
import pytest
import yaml

from tests import messages as m
from tests.integration.osel_process import OselProcess

pytestmark = pytest.mark.integration
URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def osel_cli(config: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "osel", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_oversized_message_quarantined_then_retried_after_the_limit_is_raised(
    tmp_path: Path, store_url: str
):
    dlx, dead = f"osel-test-dlx-{uuid.uuid4().hex[:8]}", f"osel-test-dead-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    channel = conn.channel()
    channel.exchange_declare(dlx, "fanout", durable=True)
    channel.queue_declare(dead, durable=True)
    channel.queue_bind(dead, dlx)
    osel = OselProcess(
        tmp_path,
        store_url=store_url,
        extra={"service": {"max_message_bytes": 1024}, "amqp": {"dead_letter_exchange": dlx}},
    )
    try:
        osel.start()
        rule = m.rule(f"sg-{uuid.uuid4()}", rid=f"r-{uuid.uuid4()}")
        rule["description"] = "x" * 2000  # a legitimate, long rule description
        msg = m.notification("security_group_rule.create.end", {"security_group_rule": rule})
        channel.basic_publish("", osel.queue, m.envelope(msg))

        deadline, body = time.monotonic() + 30, None
        while body is None and time.monotonic() < deadline:
            _method, props, body = channel.basic_get(dead, auto_ack=True)
            time.sleep(0.2)
        assert body is not None, osel.tail()
        assert "over service.max_message_bytes=1024" in props.headers["x-osel-reason"]
        listing = osel_cli(osel.config, "quarantine", "list")
        assert "security_group_rule.create.end" in listing and "max_message_bytes" in listing
        row_id = listing.split()[0]

        assert osel.stop() == 0
        settings = yaml.safe_load(osel.config.read_text())
        settings["service"]["max_message_bytes"] = 1048576  # the fix
        osel.config.write_text(yaml.safe_dump(settings))
        osel.start()
        assert f"sent to queue {osel.queue}" in osel_cli(osel.config, "quarantine", "retry", row_id)
        (record,) = osel.wait_records(lambda r: r["message_id"] == msg["message_id"], 1)
        assert record["change_type"] == "sg_rule_add"
        assert "retried" in osel_cli(osel.config, "quarantine", "list")
        tail = [json.loads(x) for x in osel_cli(osel.config, "audit", "tail").splitlines()]
        assert any(r["message_id"] == msg["message_id"] for r in tail)
    finally:
        osel.close()
        channel.queue_delete(dead)
        channel.exchange_delete(dlx)
        conn.close()
