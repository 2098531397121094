"""oslo.messaging transport_url parsing."""

from __future__ import annotations

import logging
import ssl

import pytest

from osel.amqp import connection_parameters
from osel.transport_url import AmqpEndpoint, parse_transport_url

SECRET = "s3cr3t-Pa55"


def ep(
    host: str,
    port: int = 5672,
    user: str = "guest",
    pw: str = "guest",
    vhost: str = "/",
    ssl: bool = False,
) -> AmqpEndpoint:
    return AmqpEndpoint(host, port, user, pw, vhost, ssl)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "rabbit://user:pass@host1:5672,user2:pass2@host2:5673/vhost?ssl=1",
            [
                ep("host1", 5672, "user", "pass", "vhost", True),
                ep("host2", 5673, "user2", "pass2", "vhost", True),
            ],
            id="two-hosts-own-credentials-ssl",
        ),
        pytest.param("rabbit://guest:guest@127.0.0.1:5672/", [ep("127.0.0.1")], id="default-vhost"),
        pytest.param("rabbit://u:p@h//", [ep("h", user="u", pw="p")], id="double-slash-vhost"),
        pytest.param("rabbit://u:p@h/%2F", [ep("h", user="u", pw="p")], id="encoded-slash-vhost"),
        pytest.param("rabbit://u:p@h", [ep("h", user="u", pw="p")], id="no-path"),
        pytest.param(
            "rabbit://u:p@h/open%20stack",
            [ep("h", user="u", pw="p", vhost="open stack")],
            id="encoded-vhost",
        ),
        pytest.param(
            "rabbit://u%40corp:p%2F%3A%40w@h",
            [ep("h", user="u@corp", pw="p/:@w")],
            id="url-decoded-credentials",
        ),
        pytest.param(
            "rabbit://u@corp:p@ss@h",
            [ep("h", user="u@corp", pw="p@ss")],
            id="last-at-ends-credentials",
        ),
        pytest.param(
            "amqps://u:p@h", [ep("h", 5671, "u", "p", ssl=True)], id="amqps-default-port-5671"
        ),
        pytest.param(
            "rabbit://u:p@h?ssl=true",
            [ep("h", 5672, "u", "p", ssl=True)],
            id="ssl-query-keeps-oslo-port-5672",
        ),
        pytest.param("amqp://u:p@h:1234/?ssl=0", [ep("h", 1234, "u", "p")], id="amqp-ssl-off"),
        pytest.param(
            "rabbit://u:p@[::1]:5673,u:p@[fe80::1]/",
            [ep("::1", 5673, "u", "p"), ep("fe80::1", 5672, "u", "p")],
            id="ipv6",
        ),
        pytest.param("rabbit://", [ep("localhost")], id="no-host-is-localhost"),
        pytest.param(
            "rabbit://u:p@h1,,u:p@h2,",
            [ep("h1", user="u", pw="p"), ep("h2", user="u", pw="p")],
            id="empty-entries-skipped",
        ),
        pytest.param(
            "rabbit://h1:5672?heartbeat_in_pthread=false&ssl=on",
            [ep("h1", ssl=True)],
            id="other-query-options-ignored",
        ),
    ],
)
def test_parse(url: str, expected: list[AmqpEndpoint]) -> None:
    """The URL gives these endpoints, in order."""
    assert parse_transport_url(url) == expected


def test_host_without_credentials_uses_guest_like_oslo(caplog: pytest.LogCaptureFixture) -> None:
    """oslo.messaging does not carry credentials over to a later host: it
    uses guest/guest and warns. So do we."""
    caplog.set_level(logging.WARNING, "osel.transport_url")

    endpoints = parse_transport_url(f"rabbit://admin:{SECRET}@h1:5673,h2/")

    assert endpoints == [ep("h1", 5673, "admin", SECRET), ep("h2")]
    assert "#2" in caplog.text
    assert SECRET not in caplog.text


def test_user_without_password() -> None:
    """A user with no password gets the default password, as kombu does."""
    assert parse_transport_url("rabbit://bob@h") == [ep("h", user="bob", pw="guest")]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        pytest.param(f"http://u:{SECRET}@h/", "must start with", id="wrong-scheme"),
        pytest.param(f"u:{SECRET}@h/", "must start with", id="no-scheme"),
        pytest.param(f"rabbit://u:{SECRET}@h:notaport/", "port of host #1", id="bad-port"),
        pytest.param(f"rabbit://u:{SECRET}@h:70000/", "port of host #1", id="port-range"),
        pytest.param(f"rabbit://u:{SECRET}@/", "host #1 has no host name", id="no-host"),
        pytest.param(f"rabbit://u:{SECRET}@[::1/", "not a valid URL", id="unclosed-bracket"),
        pytest.param(f"rabbit://u:{SECRET}@h/?ssl=maybe", "not a boolean", id="ssl-not-bool"),
        pytest.param(f"amqps://u:{SECRET}@h/?ssl=0", "always uses TLS", id="amqps-ssl-off"),
        pytest.param(f"rabbit://u:{SECRET}@h1,u:{SECRET}@h2:x", "host #2", id="second-host"),
    ],
)
def test_errors_name_the_problem_not_the_password(url: str, problem: str) -> None:
    """Errors say what is wrong and never echo the password."""
    with pytest.raises(ValueError, match=problem) as info:
        parse_transport_url(url)

    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_password_with_unencoded_slash_does_not_leak() -> None:
    """A password with a raw '/' breaks the URL; the error hides its pieces."""
    with pytest.raises(ValueError) as info:
        parse_transport_url("rabbit://user:abc/def@h/")

    assert "abc" not in str(info.value)
    assert "def" not in str(info.value)


def test_repr_masks_password() -> None:
    """repr() and str() never show the password."""
    [endpoint] = parse_transport_url(f"rabbit://admin:{SECRET}@h/")

    assert SECRET not in repr(endpoint)
    assert SECRET not in str(endpoint)
    assert SECRET not in f"{[endpoint]}"
    assert "password='***'" in repr(endpoint)


def test_connection_parameters() -> None:
    """An endpoint maps onto pika's parameters: one attempt (osel's loop retries), TLS
    checked against the endpoint's host name."""
    [endpoint] = parse_transport_url("amqps://me:pw@broker:5999/nova")
    context = ssl.create_default_context()

    params = connection_parameters(
        endpoint, ssl_context=context, heartbeat=30, connect_timeout=4, name="osel@h"
    )

    assert (params.host, params.port, params.virtual_host) == ("broker", 5999, "nova")
    assert (params.credentials.username, params.credentials.password) == ("me", "pw")
    assert params.ssl_options is not None
    assert params.ssl_options.context is context
    assert params.ssl_options.server_hostname == "broker"
    assert (params.heartbeat, params.connection_attempts) == (30, 1)
    assert (params.socket_timeout, params.stack_timeout) == (4, 4)
    assert params.client_properties == {"connection_name": "osel@h"}
    [plain] = parse_transport_url("amqp://me:pw@broker/")
    assert (
        connection_parameters(
            plain, ssl_context=None, heartbeat=0, connect_timeout=1, name="x"
        ).ssl_options
        is None
    )
    assert endpoint.label == "broker:5999"
    assert ep("::1").label == "[::1]:5672"
