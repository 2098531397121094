"""Run the HTTP app with uvicorn inside the daemon's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave SIGTERM and SIGINT to osel: uvicorn's own handlers would stop the
        server ahead of the daemon, which then saw it end as a failure (an error with a
        traceback on every stop). osel stops it through `HttpServer.run`'s event."""
        yield


class HttpServer:
    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
        )
        self.server = _Server(config)
        self.host = host
        self.port = port

    def _socket(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise RuntimeError(
                f"http.bind {self.host}:{self.port}: cannot listen there "
                f"({exc.strerror}); choose another address or port"
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        return sock

    async def run(self, stop: asyncio.Event) -> None:
        sock = self._socket()
        self.port = sock.getsockname()[1]
        task = asyncio.create_task(self.server.serve(sockets=[sock]))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            stopper.cancel()
            task.result()  # a bind failure surfaces here
            raise RuntimeError(f"http.bind {self.host}:{self.port}: the HTTP server stopped")
        self.server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(task, timeout=5)

    @property
    def started(self) -> bool:
        return bool(self.server.started)
