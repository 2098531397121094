from __future__ import annotations

import logging

from osel import logs
from osel.config import Settings
from osel.redact import MASK, Redactor, secret_values


def test_secret_values_include_url_passwords_and_tokens():
    settings = Settings.model_validate(
        {
            "amqp": {"transport_url": "rabbit://a:pass-one@h1:5672,b:p%40ss-two@h2:5672/"},
            "qualys": {"username": "u", "password": "qualys-pw"},
            "audit": {
                "sinks": [{"type": "splunk_hec", "url": "https://s:8088", "token": "tok-1234"}]
            },
        }
    )
    found = secret_values(settings)
    assert {"pass-one", "p@ss-two", "p%40ss-two", "qualys-pw", "tok-1234"} <= found


def test_log_lines_are_scrubbed(capsys, monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    logs.setup("info", "console", {"hunter22"})
    logging.getLogger("osel.test").warning("connecting with hunter22 to %s", "x:hunter22@h")
    err = capsys.readouterr().err
    assert "hunter22" not in err and MASK in err


def test_longest_secret_wins():
    assert Redactor({"abcd", "abcdef"}).scrub("xabcdefx") == f"x{MASK}x"
