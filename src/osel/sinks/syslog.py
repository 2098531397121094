"""The syslog sink: audit records as RFC 5424 (or RFC 3164) messages over UDP, TCP or TLS.

RFC 5424 message: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [osel@32473 ...] MSG``
with the change's time, osel's instance name, ``app_name`` (``osel``), the
process id, the ``change_type`` as MSGID, the key fields as structured data
and the JSON record, unchanged, as MSG. On TCP and TLS each message is framed
by octet counting (RFC 6587 3.4.1, the default) or ends with a newline.

Delivery. Syslog has no acknowledgement, so "delivered" means the receiver's
TCP acknowledged every byte of the batch (the kernel's send queue for the
connection is empty, ``SIOCOUTQ``) and the receiver did not reset the
connection within a short settle time after. A connection the receiver
closed or reset, or that does not drain in time, is dropped and re-opened, and
the batch that may have been cut is sent again on the new connection: a
record can then arrive twice, at most one batch per broken
connection; every record carries a unique ``record_id`` for de-duplication.
(When the receiver closed gracefully, everything it acknowledged was read, so
only the records after that point are resent.) What stays out of reach of any
plain syslog sender: a receiver that read a record and died before writing it
anywhere. UDP confirms nothing: a datagram can be lost without a trace (only a
receiver that answers "port unreachable" is noticed); prefer TCP or TLS for
the audit trail.

The socket work runs in a worker thread with blocking sockets and timeouts,
one batch at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import ssl
import struct
import termios
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from osel.backoff import describe_error
from osel.config import SyslogSink as SyslogSettings
from osel.outbox import PermanentSinkError

FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "local0": 16, "local1": 17, "local2": 18,
    "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip

SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
SEVERITY_INFO = 6

SD_ID = "osel@32473"  # 32473: the enterprise number RFC 5612 reserves for examples
SD_FIELDS = (
    "record_id",
    "record_type",
    "change_type",
    "event_type",
    "message_id",
    "project_id",
    "security_group_id",
    "port_id",
    "floating_ip_id",
    "affected_ip_address",
    "internet_exposed",
    "scan_state",
    "qualys_scan_id",
    "scan_batch_id",
    "policy_rule",
    "policy_action",
)
UDP_MAX_PAYLOAD = 65507  # the largest IPv4 UDP payload
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TCP_ESTABLISHED = 1
_TCP_CLOSE = 7
_TCP_CLOSE_WAIT = 8

Format = Literal["rfc5424", "rfc3164"]
Framing = Literal["octet_counting", "newline"]
Transport = Literal["udp", "tcp", "tls"]


class SyslogUnavailable(ConnectionError):
    """The receiver could not be reached or did not confirm a batch (retried with backoff)."""


# --------------------------------------------------------------------------- formatting


def _printable(text: str, limit: int) -> str:
    """PRINTUSASCII (33..126) only, at most ``limit`` characters; ``-`` when empty."""
    clean = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text)[:limit]
    return clean or "-"


def _sd_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, bool) else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def structured_data(record: Mapping[str, Any]) -> str:
    """``[osel@32473 key="value" ...]`` with the record's key fields (empty ones left out)."""
    params = [
        f'{name}="{_sd_value(record[name])}"'
        for name in SD_FIELDS
        if record.get(name) not in (None, "")
    ]
    return f"[{' '.join([SD_ID, *params])}]"


def record_time(record: Mapping[str, Any], now: Callable[[], datetime]) -> datetime:
    """The change's time (``timestamp``, else ``observed_at``), in UTC; now if neither parses."""
    for key in ("timestamp", "observed_at"):
        value = record.get(key)
        if isinstance(value, str) and value:
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
    return now()


def severity(record: Mapping[str, Any]) -> int:
    """warning for a scan that failed, notice for an internet-exposed change, else info."""
    if record.get("record_type") == "scan" and record.get("scan_state") == "error":
        return SEVERITY_WARNING
    if record.get("internet_exposed") is True:
        return SEVERITY_NOTICE
    return SEVERITY_INFO


def rfc5424(
    body: str,
    record: Mapping[str, Any],
    *,
    facility: int,
    hostname: str,
    app_name: str,
    procid: int,
    when: datetime,
) -> bytes:
    """One RFC 5424 message; MSG is ``body`` (the JSON record) unchanged."""
    pri = facility * 8 + severity(record)
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    msgid = _printable(str(record.get("change_type") or ""), 32)
    header = (
        f"<{pri}>1 {stamp} {_printable(hostname, 255)} {_printable(app_name, 48)} "
        f"{procid} {msgid} {structured_data(record)} "
    )
    return header.encode("utf-8") + body.encode("utf-8")


def rfc3164(
    body: str,
    record: Mapping[str, Any],
    *,
    facility: int,
    hostname: str,
    app_name: str,
    procid: int,
    when: datetime,
) -> bytes:
    """One BSD syslog message (RFC 3164): ``<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG``, UTC."""
    pri = facility * 8 + severity(record)
    utc = when.astimezone(UTC)
    stamp = f"{_MONTHS[utc.month - 1]} {utc.day:2d} {utc:%H:%M:%S}"
    tag = "".join(c for c in app_name if c.isalnum() or c in "-_.")[:32] or "osel"
    header = f"<{pri}>{stamp} {_printable(hostname, 255)} {tag}[{procid}]: "
    return header.encode("utf-8") + body.encode("utf-8")


def frame(message: bytes, framing: Framing) -> bytes:
    """RFC 6587 framing for a stream: ``LEN SP MSG`` or ``MSG LF``."""
    if framing == "octet_counting":
        return b"%d " % len(message) + message
    return message.replace(b"\n", b" ") + b"\n"


# --------------------------------------------------------------------------- connections


class Connection(Protocol):
    """One open connection to the receiver (used from a worker thread)."""

    def usable(self) -> bool:
        """False when the receiver closed or reset it: open a new one."""
        ...

    def deliver(self, payloads: list[bytes], deadline: float) -> int:
        """Send the payloads in order and wait for the receiver's confirmation.

        Returns the number of payloads confirmed: all of them, or raises
        `PartialDelivery` saying how many were confirmed before the failure.
        """
        ...

    def close(self) -> None: ...


class Connector(Protocol):
    def open(self, deadline: float) -> Connection: ...


class PartialDelivery(Exception):
    """The connection failed after ``confirmed`` payloads were confirmed."""

    def __init__(self, confirmed: int, cause: BaseException) -> None:
        super().__init__(describe_error(cause))
        self.confirmed = confirmed
        self.cause = cause


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the receiver did not take the batch in time")
    return left


def _tcp_state(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return int(info[0])


def _state_name(state: int) -> str:
    return {_TCP_CLOSE: "reset", _TCP_CLOSE_WAIT: "closed"}.get(state, f"in TCP state {state}")


def _unacknowledged(sock: socket.socket) -> int:
    """Bytes in the kernel's send queue not yet acknowledged by the receiver (Linux SIOCOUTQ)."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", buf)[0])


class StreamConnection:
    """TCP or TLS. A batch is confirmed when the kernel's send queue is empty (every byte
    acknowledged by the receiver's TCP) and the receiver did not reset the connection
    within ``settle`` seconds after: a receiver that closes with data it has not read
    resets the connection (RST) rather than closing it (FIN), so a reset means "resend"."""

    def __init__(self, sock: socket.socket, *, tls: bool, settle: float = 0.05) -> None:
        self.sock = sock
        self.tls = tls
        self.settle = settle

    def usable(self) -> bool:
        try:
            return _tcp_state(self.sock) == _TCP_ESTABLISHED
        except OSError:
            return False

    def deliver(self, payloads: list[bytes], deadline: float) -> int:
        ends: list[int] = []
        total = 0
        for p in payloads:
            total += len(p)
            ends.append(total)
        data = memoryview(b"".join(payloads))
        sent = 0
        read = 0  # bytes the receiver provably read (known only once it closed gracefully)
        try:
            while sent < total:
                self.sock.settimeout(_remaining(deadline))
                sent += self.sock.send(data[sent : sent + 65536])
                read = self._read(sent, read)
            pause = 0.0005
            while True:
                state = _tcp_state(self.sock)
                if state not in (_TCP_ESTABLISHED, _TCP_CLOSE_WAIT):
                    raise ConnectionResetError(f"connection {_state_name(state)} by the receiver")
                if _unacknowledged(self.sock) == 0:
                    break
                if state == _TCP_CLOSE_WAIT:
                    read = self._read(sent, read)
                    raise ConnectionResetError("the receiver closed the connection")
                _remaining(deadline)
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
            if state == _TCP_ESTABLISHED and self.settle > 0:
                time.sleep(self.settle)
                state = _tcp_state(self.sock)
                if state not in (_TCP_ESTABLISHED, _TCP_CLOSE_WAIT):
                    raise ConnectionResetError(
                        f"connection {_state_name(state)} by the receiver right after the batch"
                    )
            return len(payloads)
        except (OSError, TimeoutError) as exc:
            done = sum(1 for end in ends if end <= read)
            raise PartialDelivery(done, exc) from exc

    def _read(self, sent: int, previous: int) -> int:
        """After the receiver's FIN every byte it acknowledged was read by it (a receiver
        closing with unread data resets instead); before, or with TLS, nothing is known."""
        if self.tls:
            return previous
        try:
            if _tcp_state(self.sock) != _TCP_CLOSE_WAIT:
                return previous
            return max(previous, sent - _unacknowledged(self.sock))
        except OSError:
            return previous

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class DatagramConnection:
    """UDP: one datagram a message; nothing is confirmed, an ICMP refusal is noticed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def usable(self) -> bool:
        return True

    def deliver(self, payloads: list[bytes], deadline: float) -> int:
        done = 0
        try:
            for p in payloads:
                self.sock.settimeout(_remaining(deadline))
                self.sock.send(p)
                done += 1
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
        except (OSError, TimeoutError) as exc:
            # A refusal reported now may be about any datagram of the batch: resend it all.
            raise PartialDelivery(0, exc) from exc
        return done

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class SocketConnector:
    """Opens real sockets. ``tls`` makes the client context (once, at the first TLS connect)."""

    host: str
    port: int
    protocol: Transport
    tls: Callable[[], ssl.SSLContext] | None = None
    _context: ssl.SSLContext | None = None

    def open(self, deadline: float) -> Connection:
        if self.protocol == "udp":
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_DGRAM
            )[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.connect(address)
            except OSError:
                sock.close()
                raise
            return DatagramConnection(sock)
        raw = socket.create_connection((self.host, self.port), timeout=_remaining(deadline))
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.protocol == "tls":
                if self._context is None:
                    assert self.tls is not None
                    self._context = self.tls()
                raw.settimeout(_remaining(deadline))
                tls = self._context.wrap_socket(raw, server_hostname=self.host)
                return StreamConnection(tls, tls=True)
        except BaseException:
            raw.close()
            raise
        return StreamConnection(raw, tls=False)


def tls_context(
    sink_id: str,
    *,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    verify: bool,
) -> ssl.SSLContext:
    """The client context; a file that cannot be loaded is a PermanentSinkError naming its key."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise PermanentSinkError(
            f"audit sink {sink_id}: cannot load ca_file {ca_file!r} ({describe_error(exc)}); "
            "fix audit.sinks[].ca_file and restart osel"
        ) from None
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise PermanentSinkError(
                f"audit sink {sink_id}: cannot load cert_file {cert_file!r} / key_file "
                f"{key_file!r} ({describe_error(exc)}); fix them and restart osel"
            ) from None
    return ctx


# --------------------------------------------------------------------------- the sink


class SyslogSink:
    """Delivers audit records to a syslog receiver, in order, resending on a broken connection."""

    def __init__(
        self,
        *,
        sink_id: str,
        protocol: Transport,
        framing: Framing = "octet_counting",
        format: Format = "rfc5424",
        facility: str = "local4",
        hostname: str,
        app_name: str = "osel",
        connector: Connector,
        timeout: float = 30.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sink_id = sink_id
        self.protocol = protocol
        self.framing = framing
        self.format = format
        self.facility = FACILITIES[facility]
        self.hostname = hostname
        self.app_name = app_name
        self.connector = connector
        self.timeout = timeout
        self.now = now
        self.procid = os.getpid()
        self._conn: Connection | None = None
        # Records of a failed call that the receiver confirmed: not sent again on the retry.
        self._delivered_through = 0
        self.connections_opened = 0

    @classmethod
    def from_settings(cls, cfg: SyslogSettings, *, hostname: str) -> SyslogSink:
        """The sink for one ``audit.sinks`` entry of type syslog."""

        def context() -> ssl.SSLContext:
            return tls_context(
                cfg.sink_id,
                ca_file=cfg.ca_file,
                cert_file=cfg.cert_file,
                key_file=cfg.key_file,
                verify=cfg.verify,
            )

        return cls(
            sink_id=cfg.sink_id,
            protocol=cfg.protocol,
            framing=cfg.framing,
            format=cfg.format,
            facility=cfg.facility,
            hostname=hostname,
            app_name=cfg.app_name,
            connector=SocketConnector(cfg.host, cfg.port, cfg.protocol, context),
        )

    def message(self, body: str) -> bytes:
        """The syslog message for one stored record (its JSON body)."""
        try:
            record = json.loads(body)
        except ValueError:
            record = {}
        if not isinstance(record, dict):
            record = {}
        render = rfc5424 if self.format == "rfc5424" else rfc3164
        return render(
            body,
            record,
            facility=self.facility,
            hostname=self.hostname,
            app_name=self.app_name,
            procid=self.procid,
            when=record_time(record, self.now),
        )

    def payloads(self, records: Iterable[tuple[int, str]]) -> list[bytes]:
        out = []
        for record_id, body in records:
            msg = self.message(body)
            if self.protocol == "udp":
                if len(msg) > UDP_MAX_PAYLOAD:
                    raise PermanentSinkError(
                        f"audit sink {self.sink_id}: record {record_id} is {len(msg)} bytes, "
                        f"more than a UDP datagram carries ({UDP_MAX_PAYLOAD}); set protocol: "
                        "tcp or tls for this sink and restart osel"
                    )
                out.append(msg)
            else:
                out.append(frame(msg, self.framing))
        return out

    async def send(self, records: list[tuple[int, str]]) -> None:
        todo = [r for r in records if r[0] > self._delivered_through]
        if not todo:
            return
        payloads = self.payloads(todo)
        try:
            await asyncio.to_thread(self._deliver, payloads)
        except PartialDelivery as exc:
            if exc.confirmed:
                self._delivered_through = todo[exc.confirmed - 1][0]
            self._drop()
            raise SyslogUnavailable(
                f"{self.protocol} syslog to {self._where()}: {exc}; "
                f"{len(todo) - exc.confirmed} record(s) unconfirmed, they will be sent again"
            ) from exc.cause
        except (OSError, TimeoutError) as exc:
            self._drop()
            raise SyslogUnavailable(
                f"{self.protocol} syslog to {self._where()}: {describe_error(exc)}"
            ) from exc
        self._delivered_through = todo[-1][0]

    def _deliver(self, payloads: list[bytes]) -> None:
        deadline = time.monotonic() + self.timeout
        conn = self._conn
        if conn is not None and not conn.usable():
            conn.close()
            conn = self._conn = None
        if conn is None:
            conn = self._conn = self.connector.open(deadline)
            self.connections_opened += 1
        conn.deliver(payloads, deadline)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _where(self) -> str:
        c = self.connector
        if isinstance(c, SocketConnector):
            return f"{c.host}:{c.port}"
        return self.sink_id

    async def close(self) -> None:
        self._drop()
