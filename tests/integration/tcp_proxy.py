"""A TCP proxy between osel and RabbitMQ, in a thread, to cut and refuse connections."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress


class TcpProxy:
    """Forwards 127.0.0.1:<port> to `target`. `cut()` drops every live connection;
    `refuse(True)` closes new ones at once (the broker looks down); `stall(True)` holds
    every byte, in live connections and new ones, until `stall(False)` (the server
    hangs: its connections stay open and nothing comes back)."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.refusing = False
        self.live: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.closed = False
        self.flowing = threading.Event()
        self.flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)  # the 5 s were for connecting; idle is not an error
            with self.lock:
                self.live.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                while not self.flowing.wait(0.1):
                    if self.closed:
                        return
                dst.sendall(data)
        for s in (src, dst):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
            with self.lock:
                self.live.discard(s)

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.live:
                    return True
            time.sleep(0.05)
        return False

    def cut(self) -> int:
        with self.lock:
            victims = list(self.live)
        for s in victims:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        return len(victims)

    def refuse(self, on: bool) -> None:
        self.refusing = on
        if on:
            self.cut()

    def stall(self, on: bool) -> None:
        if on:
            self.flowing.clear()
        else:
            self.flowing.set()

    def close(self) -> None:
        self.closed = True
        self.flowing.set()
        self.cut()
        self.listener.close()
