"""`osel` with every HTTP request it sends counted by host:port.

    python -m bench.counted COUNTS.json run -c osel.yaml

Wraps `requests.Session.send` (what keystoneauth and so openstacksdk send
through) before osel starts, then runs the ordinary `osel` command line. The
counts are written to COUNTS.json twice a second and at exit.
"""

from __future__ import annotations

import atexit
import json
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

_counts: Counter[str] = Counter()
_lock = threading.Lock()


def _install() -> None:
    original = requests.Session.send

    def send(self: requests.Session, request: Any, **kwargs: Any) -> Any:
        parts = urlsplit(str(request.url))
        with _lock:
            _counts[f"{parts.hostname}:{parts.port}"] += 1
        return original(self, request, **kwargs)

    requests.Session.send = send  # type: ignore[method-assign]


def _write(path: Path) -> None:
    with _lock:
        data = dict(_counts)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _writer(path: Path) -> None:
    while True:
        _write(path)
        threading.Event().wait(0.5)


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: python -m bench.counted COUNTS.json OSEL-ARGS...")
    path = Path(sys.argv[1])
    _install()
    atexit.register(_write, path)
    threading.Thread(target=_writer, args=(path,), daemon=True, name="counts").start()
    from osel.cli import main as osel_main

    sys.argv = ["osel", *sys.argv[2:]]
    osel_main()


if __name__ == "__main__":
    main()
