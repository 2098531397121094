#!/usr/bin/env python3
"""Serve Keystone or Neutron's WSGI application with a threading wsgiref server.

Used by scripts/openstack/stack.sh to run a real Keystone and Neutron API on
loopback for integration tests and demos. Run it with the Python of the
virtualenv that has neutron/keystone installed:

    serve_wsgi.py keystone --config-dir ETC/keystone --config-file keystone.conf
    serve_wsgi.py neutron --config-dir ETC/neutron \
        --config-file neutron.conf --config-file ml2_conf.ini

Good enough for tests (one thread per request, HTTP/1.0); not for production.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import socketserver
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

WSGIApp = Callable[..., Any]

DEFAULT_PORTS: dict[str, int] = {"keystone": 5000, "neutron": 9696}


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class QuietHandler(WSGIRequestHandler):
    """Logs one line per request to stderr, without reverse DNS look-ups."""

    def address_string(self) -> str:
        return str(self.client_address[0])


def load_app(name: str, config_dir: str, config_files: list[str]) -> WSGIApp:
    """Import NAME's WSGI entry point after pointing it at our config files."""
    if name not in DEFAULT_PORTS:
        raise ValueError(f"unknown app {name!r}")
    prefix = f"OS_{name.upper()}_CONFIG"
    os.environ[f"{prefix}_DIR"] = config_dir
    os.environ[f"{prefix}_FILES"] = ";".join(config_files)
    # Both apps parse sys.argv[1:] with oslo.config when they boot: hide ours.
    sys.argv = [sys.argv[0]]
    # keystone.wsgi.api / neutron.wsgi.api build the app at import time.
    app: WSGIApp | None = importlib.import_module(f"{name}.wsgi.api").application
    if app is None:
        raise RuntimeError(f"{name}.wsgi.api did not build an application")
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", choices=sorted(DEFAULT_PORTS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--config-dir", required=True)
    parser.add_argument(
        "--config-file",
        action="append",
        required=True,
        dest="config_files",
        help="file name relative to --config-dir; repeat for several",
    )
    parser.add_argument("--pidfile", default=None)
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else DEFAULT_PORTS[args.app]

    # Own process group, so that `kill -- -PID` stops the server and anything
    # it may have spawned.
    if os.getpgrp() != os.getpid():
        try:
            os.setsid()
        except OSError:
            os.setpgid(0, 0)
    if args.pidfile:
        with open(args.pidfile, "w", encoding="ascii") as fh:
            fh.write(f"{os.getpid()}\n")

    app = load_app(args.app, args.config_dir, args.config_files)
    server = make_server(
        args.host,
        port,
        app,
        server_class=ThreadingWSGIServer,
        handler_class=QuietHandler,
    )

    def stop(signum: int, _frame: FrameType | None) -> None:
        print(f"serve_wsgi: {args.app} got signal {signum}, stopping", file=sys.stderr, flush=True)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"serve_wsgi: {args.app} listening on http://{args.host}:{port}/ (pid {os.getpid()})",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        if args.pidfile:
            try:
                with open(args.pidfile, encoding="ascii") as fh:
                    mine = fh.read().strip() == str(os.getpid())
                if mine:
                    os.unlink(args.pidfile)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # oslo.messaging may leave non-daemon threads behind: do not wait for them.
    os._exit(code)
