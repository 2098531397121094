"""Parse an oslo.messaging ``transport_url`` into AMQP endpoints.

Format (oslo.messaging ``TransportURL``)::

    rabbit://[user:pass@]host[:port][,[user:pass@]host[:port]...]/[vhost][?ssl=1]

The semantics follow oslo.messaging's ``TransportURL.parse`` and its rabbit
driver (``impl_rabbit._transform_transport_url``):

- hosts are separated by commas; each may carry its own credentials and
  port. A host without credentials is *not* given the previous host's: it
  uses RabbitMQ's default ``guest``/``guest``, as oslo.messaging does (oslo
  logs a warning for such mixed URLs; so do we);
- user and password are URL-decoded; the user may contain ``@`` (the last
  ``@`` ends the credentials);
- a missing port is 5672 for ``rabbit://`` and ``amqp://``, even with
  ``?ssl=1`` (oslo does the same); ``amqps://`` means TLS and defaults to 5671;
- the path is the virtual host, URL-decoded; empty means ``/``
  (``rabbit://host//`` and ``rabbit://host/%2F`` also mean ``/``);
- ``?ssl=1|true|yes|on`` turns TLS on; other query options (oslo driver
  options such as ``heartbeat_in_pthread``) are ignored here;
- ``rabbit://`` with no host means ``localhost`` with guest/guest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["AmqpEndpoint", "parse_transport_url"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 5672
DEFAULT_TLS_PORT = 5671
_DEFAULT_CREDENTIAL = "guest"
_SCHEMES = {"rabbit": False, "amqp": False, "amqps": True}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class AmqpEndpoint:
    """One broker of a transport URL."""

    host: str
    port: int
    username: str
    password: str
    virtual_host: str = "/"
    ssl: bool = False

    def __repr__(self) -> str:
        return (
            f"AmqpEndpoint(host={self.host!r}, port={self.port}, username={self.username!r}, "
            f"password='***', virtual_host={self.virtual_host!r}, ssl={self.ssl})"
        )

    @property
    def label(self) -> str:
        """``host:port`` (IPv6 in brackets), safe for logs."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_transport_url(url: str) -> list[AmqpEndpoint]:
    """Parse ``url`` into endpoints, in the order given.

    Raises `ValueError` naming the problem; the message never contains the
    password (nor any other piece of the credentials).
    """
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        safe = scheme.replace("+", "").isalnum() and len(scheme) <= 20
        shown = repr(scheme) if sep and safe else "missing or invalid"
        raise ValueError(
            f"transport_url must start with rabbit://, amqp:// or amqps:// (scheme is {shown})"
        )
    try:
        parts = urlsplit(url)
    except ValueError:
        msg = "transport_url is not a valid URL (check brackets and characters)"
        raise ValueError(msg) from None
    ssl = _parse_ssl(scheme.lower(), parts.query)
    vhost = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    vhost = vhost or "/"
    port_default = DEFAULT_TLS_PORT if scheme.lower() == "amqps" else DEFAULT_PORT

    netlocs = [n for n in parts.netloc.split(",") if n]
    if not netlocs:
        return [
            AmqpEndpoint(
                "localhost", port_default, _DEFAULT_CREDENTIAL, _DEFAULT_CREDENTIAL, vhost, ssl
            )
        ]
    endpoints = [
        _parse_host(netloc, number, port_default, vhost, ssl)
        for number, netloc in enumerate(netlocs, start=1)
    ]
    without = [str(i) for i, n in enumerate(netlocs, start=1) if "@" not in n]
    if without and len(without) < len(netlocs):
        log.warning(
            "transport_url: host(s) #%s have no credentials and use guest/guest "
            "(as in oslo.messaging); give every host its user and password",
            ", #".join(without),
        )
    return endpoints


def _parse_ssl(scheme: str, query: str) -> bool:
    ssl = _SCHEMES[scheme]
    values = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "ssl"]
    if not values:
        return ssl
    value = values[-1].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        if ssl:
            raise ValueError("transport_url: amqps:// always uses TLS, but ssl is set to false")
        return False
    raise ValueError("transport_url: the ssl option is not a boolean (use ssl=1 or ssl=0)")


def _parse_host(netloc: str, number: int, port_default: int, vhost: str, ssl: bool) -> AmqpEndpoint:
    username = password = ""
    hostport = netloc
    if "@" in netloc:
        userinfo, hostport = netloc.rsplit("@", 1)
        user, _, pw = userinfo.partition(":")
        username, password = unquote(user), unquote(pw)
    host, port_text = _split_host_port(hostport, number)
    if not host:
        raise ValueError(f"transport_url: host #{number} has no host name")
    port = port_default
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(
                f"transport_url: the port of host #{number} ({host}) "
                "is not a number between 1 and 65535"
            )
        port = int(port_text)
    return AmqpEndpoint(
        host=host,
        port=port,
        username=username or _DEFAULT_CREDENTIAL,
        password=password or _DEFAULT_CREDENTIAL,
        virtual_host=vhost,
        ssl=ssl,
    )


def _split_host_port(hostport: str, number: int) -> tuple[str, str]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError(f"transport_url: host #{number} has an unclosed '[' (IPv6 address)")
        rest = hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"transport_url: unexpected text after ']' in host #{number}")
        return hostport[1:end], rest[1:]
    host, _, port = hostport.partition(":")
    return host, port
