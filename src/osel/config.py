"""osel configuration: the YAML model, loading, environment overrides and validation.

``load_settings()`` reads one YAML file (``-c``, then ``$OSEL_CONFIG``, then
``./osel.yaml``, then ``/etc/osel/osel.yaml``; none found: defaults), applies
``OSEL_<SECTION>__<KEY>`` environment overrides and validates everything at
once. Every problem is reported with its dotted key, its source (file:line or
environment variable) and what to do; ``ConfigError`` carries them all.

Secrets are ``SecretStr`` (``SecretUrl`` for URLs that carry a password). Each
secret key ``X`` may be given as ``X_file`` instead. No secret value appears in
an error, a repr or ``Settings.redacted()``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from osel.exposure import address_int

MASK = "********"
ENV_PREFIX = "OSEL_"
CONFIG_ENV = "OSEL_CONFIG"
DEFAULT_PATHS: tuple[str, ...] = ("osel.yaml", "/etc/osel/osel.yaml")
PRIORITIES = ("audit", "debug", "info", "warn", "warning", "error", "critical", "sample")
_AMQP_SCHEMES = ("rabbit", "amqp", "amqps")
_STORE_SCHEMES = ("sqlite", "sqlite+aiosqlite", "postgresql", "postgresql+psycopg")
_URL_RE = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<netloc>.*@[^/?#]*|[^/?#]*)(?P<rest>.*)$", re.S
)
_QUERY_SECRET_RE = re.compile(r"([?&][^=&#]*(?:pass|secret|token)[^=&#]*=)[^&#]*", re.I)

Loc = tuple[str | int, ...]


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    """One configuration mistake: dotted key, offending value (short, secrets masked),
    what is expected / what to do, and where it came from (file:line or env var)."""

    key: str
    value: str
    message: str
    source: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}: " if self.key else f"{self.source}: "
        got = f" (got {self.value})" if self.value else ""
        return f"{where}{self.message}{got}"


class ConfigError(Exception):
    """Raised by load_settings with every problem found, one per line in str()."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def _fatal(message: str, source: str) -> ConfigError:
    """A problem that stops loading (the file cannot be read or parsed)."""
    return ConfigError([Problem("", "", message, source)])


def _invalid(problems: Mapping[str | Loc, str]) -> PydanticCustomError:
    """A model-level error naming the offending field(s) (name or loc relative to the model)."""
    found = [((k,) if isinstance(k, str) else k, m) for k, m in problems.items()]
    return PydanticCustomError("osel_config", "; ".join(problems.values()), {"problems": found})


# --------------------------------------------------------------------------- URLs


def mask_url(url: str) -> str:
    """The URL with every password (oslo multi-host userinfo, secret query values) masked."""
    m = _URL_RE.match(url)
    if m is None:
        return MASK
    segs = m["netloc"].split("@")
    if len(segs) > 1:
        out = [_mask_userinfo(segs[0])]
        for seg in segs[1:-1]:
            host, comma, userinfo = seg.partition(",")
            out.append(f"{host},{_mask_userinfo(userinfo)}" if comma else MASK)
        segs = [*out, segs[-1]]
    rest = _QUERY_SECRET_RE.sub(lambda q: q.group(1) + MASK, m["rest"])
    return f"{m['scheme']}://{'@'.join(segs)}{rest}"


def _mask_userinfo(userinfo: str) -> str:
    user, colon, _ = userinfo.partition(":")
    return f"{user}:{MASK}" if colon else user


class SecretUrl(SecretStr):
    """A SecretStr whose str/repr show the URL with its passwords masked."""

    def _display(self) -> str:
        return mask_url(self.get_secret_value())


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port). Messages never echo the input."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("malformed [IPv6]:port")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
        if ":" in port_text:
            raise ValueError("write an IPv6 address in brackets, e.g. [::1]:9797")
    if not host:
        raise ValueError("missing host; expected host:port")
    if not port_text:
        if default_port is None:
            raise ValueError("missing port; expected host:port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("port must be a number from 1 to 65535")
    return host, int(port_text)


def _check_transport_url(url: str) -> None:
    """rabbit/amqp/amqps, at least one host, valid ports (oslo multi-host format).
    Parsing for connecting is osel.transport_url's job. Messages never echo the URL."""
    m = _URL_RE.match(url)
    if m is None:
        raise ValueError("not a URL; expected e.g. rabbit://user:password@rabbit1:5672/")
    if m["scheme"].lower() not in _AMQP_SCHEMES:
        raise ValueError("the scheme must be rabbit://, amqp:// or amqps://")
    for entry in m["netloc"].split(","):
        hostport = entry.rpartition("@")[2]
        if not hostport:
            raise ValueError("a broker host is missing; e.g. rabbit://user:password@rabbit1:5672/")
        split_host_port(hostport, 5672)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL, e.g. https://host:443")
    return value


# --------------------------------------------------------------------------- base model


@dataclass(frozen=True)
class _FileProblem:
    """Put in place of a bad ``X_file`` value by the before-validator; reported per field."""

    path: str
    message: str


def _read_secret_file(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")


def _resolve_secret_file(data: dict[str, Any], key: str) -> None:
    path = data.get(f"{key}_file")
    if not isinstance(path, str):
        return
    if data.get(key) is not None:
        data[f"{key}_file"] = _FileProblem(path, f"give either {key} or {key}_file, not both")
        return
    try:
        secret = _read_secret_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        data[f"{key}_file"] = _FileProblem(
            path,
            f"cannot read secret file {path!r}: {reason}; check the path and that osel may read it",
        )
        return
    if not secret:
        data[f"{key}_file"] = _FileProblem(
            path, f"secret file {path!r} is empty; put the {key} in it"
        )
        return
    data[key] = secret


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, coerce_numbers_to_str=True
    )
    secret_keys: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _load_secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls.secret_keys:
            return data
        data = dict(data)
        for key in cls.secret_keys:
            _resolve_secret_file(data, key)
        return data


def _desc(text: str) -> Any:
    """An optional field (default None) with its description."""
    return Field(None, description=text)


Name = Annotated[str, StringConstraints(min_length=1)]
OptPath = Name | None


def _report_file_problem(value: Any) -> Any:
    if isinstance(value, _FileProblem):
        raise ValueError(value.message)
    return value


SecretPath = Annotated[Name | None, BeforeValidator(_report_file_problem)]


def _network(value: Any) -> IPv4Network | IPv6Network:
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a CIDR such as 10.0.0.0/8 or 2001:db8::/32")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(value.strip(), strict=False)
            raise ValueError(f"{value} has host bits set; did you mean {fixed}?") from None
        raise ValueError("expected a CIDR such as 10.0.0.0/8 or 2001:db8::/32") from None


def _contains(net: IPv4Network | IPv6Network, version: int, value: int) -> bool:
    low, high = int(net.network_address), int(net.broadcast_address)
    return net.version == version and low <= value <= high


Network = Annotated[IPv4Network | IPv6Network, PlainValidator(_network), PlainSerializer(str)]


# --------------------------------------------------------------------------- sections


class ServiceSettings(_Model):
    """Process-wide settings."""

    instance_name: str | None = Field(
        None, description="This osel's name in audit records (osel_instance); null = host name"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")
    log_format: Literal["console", "json"] = Field("console", description="Log line format")
    batch_size: int = Field(
        1000,
        ge=1,
        le=10000,
        description="Messages per store commit (at most; amqp.prefetch should be larger)",
    )
    batch_wait_ms: int = Field(50, ge=0, le=5000, description="Longest wait to fill a batch (ms)")
    max_message_bytes: int = Field(
        1048576, ge=1024, description="Larger notification bodies are quarantined"
    )
    max_attempts: int = Field(
        3, ge=1, le=100, description="Failed handling attempts before a message is quarantined"
    )
    backoff_initial_seconds: float = Field(
        1.0, gt=0, le=60, description="First retry delay of every reconnect/retry (full jitter)"
    )
    backoff_cap_seconds: float = Field(
        60.0, ge=1, le=3600, description="Longest retry delay; also the outage log interval"
    )
    lease_seconds: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="Several instances: how long an audit sink's delivery lease outlives "
        "an instance that stopped renewing it",
    )

    @property
    def instance(self) -> str:
        """The effective instance name: instance_name or the host name."""
        return self.instance_name or socket.gethostname()


class AmqpSettings(_Model):
    """The notification bus. osel binds its own queue; it never reads the shared one."""

    secret_keys = ("transport_url",)

    enabled: bool = Field(
        True, description="Consume from RabbitMQ; false: only the Aodh webhook feeds osel"
    )
    transport_url: SecretUrl = Field(
        SecretUrl("rabbit://guest:guest@127.0.0.1:5672/"),
        description="oslo transport URL (secret); several hosts comma-separated; amqps or ?ssl=1",
    )
    transport_url_file: SecretPath = _desc("File holding transport_url")
    exchanges: list[Name] = Field(["neutron"], min_length=1, description="Exchanges to bind to")
    topics: list[Name] = Field(
        ["notifications"], min_length=1, description="Notification topics, bound as <topic>.info"
    )
    queue: Name = Field("osel", description="osel's own queue; never <topic>.<priority>")
    queue_type: Literal["classic", "quorum"] = Field("classic", description="Queue type")
    exchange_durable: bool = Field(
        False, description="Declare exchanges durable (as the cloud does)"
    )
    prefetch: int = Field(
        2000,
        ge=1,
        le=65535,
        description="Unacknowledged messages in flight; at least service.batch_size",
    )
    heartbeat: int = Field(60, ge=0, description="AMQP heartbeat (s); 0 disables")
    connect_timeout: float = Field(10, gt=0, description="Connection timeout (s)")
    ssl_ca_file: OptPath = _desc("CA bundle for amqps")
    ssl_cert_file: OptPath = _desc("Client certificate for amqps")
    ssl_key_file: OptPath = _desc("Client key for amqps")
    ssl_verify: bool = Field(True, description="Verify the broker certificate")
    dead_letter_exchange: str | None = Field(
        None, description="x-dead-letter-exchange of the queue"
    )

    @field_validator("transport_url")
    @classmethod
    def _check_url(cls, value: SecretUrl) -> SecretUrl:
        _check_transport_url(value.get_secret_value())
        return value

    @field_validator("queue")
    @classmethod
    def _not_shared_queue(cls, value: str, info: ValidationInfo) -> str:
        for topic in info.data.get("topics", ()):
            if value in {f"{topic}.{p}" for p in PRIORITIES}:
                raise ValueError(
                    f"{value!r} is the shared notification queue that other consumers "
                    "(Ceilometer) read; osel would steal their messages. "
                    "Use a queue of osel's own, e.g. 'osel'"
                )
        return value


class InlineAuth(_Model):
    """A keystoneauth password or application-credential block."""

    secret_keys = ("password", "application_credential_secret")

    auth_url: str = Field(description="Keystone URL, e.g. https://keystone:5000/v3")
    username: str | None = _desc("User name (or user_id)")
    user_id: str | None = _desc("User id (or username)")
    password: SecretStr | None = _desc("Password (secret)")
    password_file: SecretPath = _desc("File holding password")
    project_name: str | None = _desc("Project to scope to")
    project_id: str | None = _desc("Project id to scope to")
    user_domain_name: str = Field("Default", description="Domain of the user")
    project_domain_name: str = Field("Default", description="Domain of the project")
    application_credential_id: str | None = _desc("Application credential id")
    application_credential_secret: SecretStr | None = _desc("Application credential secret")
    application_credential_secret_file: SecretPath = _desc("File holding the credential secret")

    @field_validator("auth_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        if self.application_credential_id is not None:
            if self.application_credential_secret is None:
                what = "required with application_credential_id; set it or its _file"
                raise _invalid({"application_credential_secret": what})
            return self
        problems: dict[str | Loc, str] = {}
        if self.username is None and self.user_id is None:
            problems["username"] = "required: set username or user_id (or use an app credential)"
        if self.password is None:
            problems["password"] = "required: set password or password_file (or an app credential)"
        if problems:
            raise _invalid(problems)
        return self


class OpenStackSettings(_Model):
    """How osel reaches Keystone/Neutron: ``cloud`` (a clouds.yaml entry) or ``auth``.

    When ``auth`` is given it wins and ``cloud`` becomes None; setting ``cloud``
    explicitly as well is an error.
    """

    cloud: str | None = Field(
        "osel", description="clouds.yaml entry (OS_CLIENT_CONFIG_FILE honoured)"
    )
    auth: InlineAuth | None = _desc("Inline keystoneauth block instead of cloud")
    region_name: str | None = _desc("Region")
    interface: str = Field("public", description="Endpoint interface")
    verify: bool = Field(True, description="Verify TLS certificates")
    cacert: OptPath = _desc("CA bundle")
    resync_minutes: int = Field(15, ge=0, description="Full inventory sync period; 0 disables")
    timeout_seconds: float = Field(10, gt=0, description="API call timeout (s)")
    max_concurrency: int = Field(4, ge=1, le=64, description="Parallel API calls")

    @model_validator(mode="after")
    def _cloud_or_auth(self) -> Self:
        if self.auth is None:
            if self.cloud is None:
                raise _invalid({"cloud": "set cloud (a clouds.yaml entry) or an auth block"})
            return self
        if "cloud" in self.model_fields_set and self.cloud is not None:
            raise _invalid({"cloud": "give either cloud or auth, not both; remove cloud"})
        object.__setattr__(self, "cloud", None)
        return self


class ScopeSettings(_Model):
    """Which addresses osel scans."""

    include_cidrs: list[Network] = Field([], description="Scan only these; empty: every address")
    exclude_cidrs: list[Network] = Field([], description="Never scan these")
    ipv6: Literal["drop", "scan"] = Field("drop", description="What to do with IPv6 addresses")
    trigger: Literal["all_ingress", "internet_exposed"] = Field(
        "all_ingress", description="Which ingress rules trigger a scan"
    )

    def classify(self, address: str) -> str | None:
        """None when ``address`` is in scope, else a short reason why not."""
        plain = address_int(address)  # asked for every address of every change: no ipaddress
        if plain is None:
            try:
                ip = ipaddress.ip_address(address)  # what inet_pton refuses, e.g. scoped IPv6
            except ValueError:
                return f"not an IP address: {address!r}"
            plain = ip.version, int(ip)
        version, value = plain
        if version == 6 and self.ipv6 == "drop":
            return "IPv6 and scope.ipv6 is drop"
        for net in self.exclude_cidrs:
            if _contains(net, version, value):
                return f"excluded by scope.exclude_cidrs {net}"
        if self.include_cidrs and not any(
            _contains(net, version, value) for net in self.include_cidrs
        ):
            return "not in scope.include_cidrs"
        return None


class ScanSettings(_Model):
    """Scan scheduling."""

    backend: Literal["qualys", "dry-run"] = Field(
        "qualys", description="dry-run records what it would scan"
    )
    window_seconds: float = Field(60, ge=0, description="Coalesce targets; 0 = launch at once")
    max_targets: int = Field(500, ge=1, le=10000, description="Addresses per launched scan")
    scan_on_rule_delete: bool = Field(True, description="Scan again when an ingress rule goes")
    cooldown_minutes: float = Field(0, ge=0, description="Do not rescan an address sooner")


class QualysSettings(_Model):
    """Qualys VM API. username and password are required when scan.backend is qualys."""

    secret_keys = ("password",)

    api_url: str = Field("https://qualysapi.qualys.com", description="Qualys API server")
    username: str | None = _desc("API user")
    password: SecretStr | None = _desc("API password (secret)")
    password_file: SecretPath = _desc("File holding password")
    option_title: str | None = Field(
        "Initial Options", description="Option profile title (or option_id)"
    )
    option_id: int | None = Field(None, ge=1, description="Option profile id (or option_title)")
    scanner_name: str | None = _desc("iscanner_name; null = Qualys external scanners")
    priority: int = Field(
        0, ge=0, le=9, description="Scan processing priority: 0 none, 1 emergency ... 9 low"
    )
    proxy_url: SecretUrl | None = _desc("HTTP(S) proxy URL (may carry a password)")
    min_remaining: int = Field(5, ge=0, description="Stop launching while fewer API calls remain")
    follow: bool = Field(True, description="Poll scans to their end")
    poll_seconds: float = Field(60, gt=0, description="Scan status poll period (s)")
    missing_scan_hours: float = Field(
        24,
        gt=0,
        description="End a followed scan in error once Qualys has stopped listing it "
        "for this long (h)",
    )
    add_unknown_ips: bool = Field(False, description="Add addresses Qualys does not know yet")
    timeout_seconds: float = Field(30, gt=0, description="API call timeout (s)")
    verify: bool = Field(True, description="Verify TLS certificates")
    ca_file: OptPath = _desc("CA bundle")

    @field_validator("api_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("proxy_url")
    @classmethod
    def _check_proxy(cls, value: SecretUrl | None) -> SecretUrl | None:
        if value is not None:
            _http_url(value.get_secret_value())
        return value

    @model_validator(mode="before")
    @classmethod
    def _option_id_drops_title_default(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and data.get("option_id") is not None
            and "option_title" not in data
        ):
            return {**data, "option_title": None}
        return data

    @model_validator(mode="after")
    def _one_option(self) -> Self:
        if self.option_title is not None and self.option_id is not None:
            raise _invalid({"option_id": "give either option_title or option_id, not both"})
        if self.option_title is None and self.option_id is None:
            raise _invalid({"option_title": "set option_title or option_id (the option profile)"})
        return self


# fmt: off
Facility = Literal[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
]
# fmt: on


class _Sink(_Model):
    name: str | None = Field(None, min_length=1, description="Sink id (default derived from type)")

    @property
    def sink_id(self) -> str:
        """name, or a derived id such as file:/path, syslog:host:port, splunk_hec:url."""
        return self.name or self._derived_id()

    def _derived_id(self) -> str:
        raise NotImplementedError


class FileSink(_Sink):
    """Append audit records as JSON lines to a file."""

    type: Literal["file"] = Field("file", description="Sink type")
    path: Name = Field(description="JSONL file")
    fsync: bool = Field(True, description="fsync after each batch")

    def _derived_id(self) -> str:
        return f"file:{self.path}"


class SyslogSink(_Sink):
    """Send audit records to syslog. facility defaults to local4."""

    type: Literal["syslog"] = Field("syslog", description="Sink type")
    host: Name = Field(description="Syslog server")
    port: int = Field(6514, ge=1, le=65535, description="Port")
    protocol: Literal["udp", "tcp", "tls"] = Field("tls", description="Transport")
    format: Literal["rfc5424", "rfc3164"] = Field("rfc5424", description="Message format")
    framing: Literal["octet_counting", "newline"] = Field(
        "octet_counting", description="TCP/TLS framing"
    )
    facility: Facility = Field("local4", description="Syslog facility")
    ca_file: OptPath = _desc("CA bundle for tls")
    cert_file: OptPath = _desc("Client certificate for tls")
    key_file: OptPath = _desc("Client key for tls")
    verify: bool = Field(True, description="Verify the server certificate")
    app_name: Name = Field("osel", description="APP-NAME / tag")

    def _derived_id(self) -> str:
        return f"syslog:{self.host}:{self.port}"


class SplunkHecSink(_Sink):
    """Send audit records to a Splunk HTTP Event Collector."""

    secret_keys = ("token",)

    type: Literal["splunk_hec"] = Field("splunk_hec", description="Sink type")
    url: str = Field(description="HEC base URL, e.g. https://splunk:8088")
    token: SecretStr | None = _desc("HEC token (secret; this or token_file is required)")
    token_file: SecretPath = _desc("File holding token")
    index: str | None = _desc("Splunk index")
    sourcetype: str = Field("osel:audit", description="sourcetype")
    source: str = Field("osel", description="source")
    host: str | None = _desc("host field; null = osel's instance name")
    ack: bool = Field(False, description="Use HEC indexer acknowledgement")
    verify: bool = Field(True, description="Verify TLS certificates")
    ca_file: OptPath = _desc("CA bundle")
    max_batch_bytes: int = Field(1000000, ge=1024, description="Largest HEC request body")
    timeout_seconds: float = Field(10, gt=0, description="Request timeout (s)")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _token_required(self) -> Self:
        if self.token is None:
            raise _invalid({"token": "required: set token or token_file"})
        return self

    def _derived_id(self) -> str:
        return f"splunk_hec:{self.url}"


Sink = Annotated[FileSink | SyslogSink | SplunkHecSink, Field(discriminator="type")]


class AuditSettings(_Model):
    """Where audit records go."""

    sinks: list[Sink] = Field([], description="Audit sinks (file, syslog, splunk_hec)")

    @model_validator(mode="after")
    def _unique_ids(self) -> Self:
        seen: dict[str, int] = {}
        problems: dict[str | Loc, str] = {}
        for index, sink in enumerate(self.sinks):
            first = seen.setdefault(sink.sink_id, index)
            if first != index:
                problems[("sinks", index, "name")] = (
                    f"sink id {sink.sink_id!r} is already used by audit.sinks[{first}]; "
                    "give each sink a distinct name"
                )
        if problems:
            raise _invalid(problems)
        return self


class StoreSettings(_Model):
    """The database."""

    secret_keys = ("url",)

    url: SecretUrl = Field(
        SecretUrl("sqlite:////var/lib/osel/osel.db"),
        description="sqlite:///relative.db, sqlite:////abs/path.db or postgresql://... (secret)",
    )
    url_file: SecretPath = _desc("File holding url")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretUrl) -> SecretUrl:
        scheme, sep, rest = value.get_secret_value().partition("://")
        if not sep or scheme.lower() not in _STORE_SCHEMES:
            raise ValueError(
                "use sqlite:///relative.db, sqlite:////absolute/path.db or "
                "postgresql://user:password@host/dbname (postgresql+psycopg:// too)"
            )
        if scheme.lower().startswith("sqlite") and (
            not rest.startswith("/") or rest in ("/", "//")
        ):
            raise ValueError(
                "sqlite needs a file: sqlite:///relative.db or sqlite:////absolute/path.db"
            )
        if scheme.lower().startswith("postgresql") and not rest.strip("/"):
            raise ValueError("postgresql needs a database: postgresql://user:password@host/dbname")
        return value

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        """Which database the URL names."""
        scheme = self.url.get_secret_value().partition(":")[0].lower()
        return "sqlite" if scheme.startswith("sqlite") else "postgresql"


class HttpSettings(_Model):
    """The HTTP endpoint (/healthz /readyz /metrics /v1/... and the Aodh webhook)."""

    secret_keys = ("aodh_token",)

    bind: str = Field("127.0.0.1:9797", description="host:port, IPv6 as [::1]:9797")
    enabled: bool = Field(True, description="Serve HTTP")
    aodh_token: SecretStr | None = _desc(
        "Secret of the Aodh webhook: each project's alarms post to /v1/aodh/<token>, "
        "a token derived from it (osel aodh setup); null: no path token (secret)"
    )
    aodh_token_file: SecretPath = _desc("File holding aodh_token")
    keystone_validate: bool = Field(
        False, description="Aodh webhook: require an X-Auth-Token that Keystone validates"
    )
    keystone_users: list[Name] = Field(
        [],
        description="Keystone users (names or ids) whose tokens the Aodh webhook accepts; "
        "for trust+http(s) actions, the user that ran osel aodh setup",
    )
    public_url: str | None = _desc(
        "The URL Aodh reaches this endpoint at, e.g. https://osel.example.com:9797; "
        "trust+https://... makes Aodh send a Keystone token (osel aodh setup)"
    )
    aodh_alarm_prefix: Name = Field(
        "osel", description="Name prefix of the Aodh alarms osel aodh setup manages"
    )

    @field_validator("bind")
    @classmethod
    def _check_bind(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https", "trust+http", "trust+https") or not parts.netloc:
            raise ValueError(
                "must be an http://, https://, trust+http:// or trust+https:// URL, "
                "e.g. https://osel.example.com:9797"
            )
        if "@" in parts.netloc or parts.query or parts.fragment:
            raise ValueError("give scheme://host:port[/path] only: no user, query or fragment")
        return value

    @model_validator(mode="after")
    def _keystone_users(self) -> Self:
        if self.keystone_validate and not self.keystone_users:
            raise _invalid(
                {
                    "keystone_users": "required when keystone_validate is true: the Keystone "
                    "user(s) whose tokens Aodh sends (with trust+ actions, the user that "
                    "ran osel aodh setup)"
                }
            )
        return self

    @property
    def host(self) -> str:
        """The host part of bind (IPv6 without brackets)."""
        return split_host_port(self.bind)[0]

    @property
    def port(self) -> int:
        """The port part of bind."""
        return split_host_port(self.bind)[1]


class PolicySettings(_Model):
    """The exposure policy (docs/policy.md)."""

    file: OptPath = _desc(
        "Exposure policy file (YAML, docs/policy.md): exceptions and rules that decide what is "
        "scanned, only recorded, or scanned first; validated at start and by check-config, "
        "reloaded on SIGHUP; null: every opening is scanned"
    )


class Settings(_Model):
    """The whole configuration. Build it with load_settings(); constructing it directly
    skips the cross-section check (qualys credentials when scan.backend is qualys)."""

    service: ServiceSettings = Field(default_factory=ServiceSettings, description="Service")
    amqp: AmqpSettings = Field(default_factory=AmqpSettings, description="Notification bus")
    openstack: OpenStackSettings = Field(default_factory=OpenStackSettings, description="OpenStack")
    scope: ScopeSettings = Field(default_factory=ScopeSettings, description="Scan scope")
    scan: ScanSettings = Field(default_factory=ScanSettings, description="Scan scheduling")
    qualys: QualysSettings = Field(default_factory=QualysSettings, description="Qualys API")
    audit: AuditSettings = Field(default_factory=AuditSettings, description="Audit sinks")
    store: StoreSettings = Field(default_factory=StoreSettings, description="Database")
    http: HttpSettings = Field(default_factory=HttpSettings, description="HTTP endpoint")
    policy: PolicySettings = Field(default_factory=PolicySettings, description="Exposure policy")

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data, every secret masked."""
        result = _plain(self.model_dump(mode="python"))
        assert isinstance(result, dict)
        return result


def _plain(value: Any) -> Any:
    if isinstance(value, SecretUrl):
        return mask_url(value.get_secret_value())
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return _mask_if_url(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)


def _mask_if_url(text: str) -> str:
    return mask_url(text) if _URL_RE.match(text) else text


# --------------------------------------------------------------------------- model introspection


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _tag(model: type[BaseModel]) -> str:
    return str(model.model_fields["type"].default)


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model holding the keys at ``loc`` (pydantic loc, union tags included)."""
    model: type[BaseModel] = Settings
    options: dict[str, type[BaseModel]] = {}
    for part in loc:
        if isinstance(part, int):
            continue
        if options:
            found = options.get(part)
            if found is None:
                return None
            model, options = found, {}
            continue
        info = model.model_fields.get(part)
        subs = _models_in(info.annotation) if info is not None else []
        if not subs:
            return None
        if len(subs) == 1:
            model = subs[0]
        else:
            options = {_tag(s): s for s in subs}
    return None if options else model


def _all_fields() -> list[tuple[str, FieldInfo]]:
    out: list[tuple[str, FieldInfo]] = []
    todo: list[type[BaseModel]] = [Settings]
    while todo:
        model = todo.pop()
        for name, info in model.model_fields.items():
            out.append((name, info))
            todo.extend(_models_in(info.annotation))
    return out


def _is_secret_type(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, SecretStr):
        return True
    return any(_is_secret_type(a) for a in typing.get_args(annotation))


def _is_stringish(annotation: Any) -> bool:
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, SecretStr)):
        return True
    if typing.get_origin(annotation) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, Annotated):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (
            _is_stringish(args[0])
            if typing.get_origin(annotation) is Annotated
            else all(_is_stringish(a) for a in args)
        )
    return False


_FIELDS = _all_fields()
_SECRET_NAMES = frozenset(n for n, f in _FIELDS if _is_secret_type(f.annotation))
_STRING_NAMES = frozenset(n for n, _ in _FIELDS) - {
    n for n, f in _FIELDS if not _is_stringish(f.annotation)
}


# --------------------------------------------------------------------------- rendering problems


_MISSING = object()


def _secret_loc(loc: Loc) -> bool:
    name = loc[-1] if loc else ""
    if not isinstance(name, str):
        return False
    model = _model_at(loc[:-1])
    info = model.model_fields.get(name) if model is not None else None
    if info is not None:
        return _is_secret_type(info.annotation)
    lowered = name.lower()
    return any(w in lowered for w in ("pass", "secret", "token", "cred", "url", "key")) or bool(
        difflib.get_close_matches(lowered, list(_SECRET_NAMES), n=1, cutoff=0.6)
    )


def _redact_raw(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: MASK if _secret_loc((str(k),)) else _redact_raw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_raw(v) for v in value]
    if isinstance(value, str):
        return _mask_if_url(value)
    return value


def _show(loc: Loc, value: Any) -> str:
    if isinstance(value, _FileProblem):
        value = value.path
    if value is _MISSING:
        return ""
    if _secret_loc(loc):
        return repr(MASK)
    text = "null" if value is None else repr(_redact_raw(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _key(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _clean(loc: Loc) -> Loc:
    """Drop discriminator tags pydantic puts after a list index."""
    tags = {_tag(m) for m in _models_in(Sink)}
    return tuple(
        p for i, p in enumerate(loc) if not (i and isinstance(loc[i - 1], int) and p in tags)
    )


def _did_you_mean(loc: Loc) -> str:
    model = _model_at(loc[:-1])
    valid = list(model.model_fields) if model is not None else list(Settings.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return "unknown key; valid keys: " + ", ".join(valid)


def _message(err: Any, loc: Loc) -> str:
    kind, msg = err["type"], str(err["msg"])
    tags = ", ".join(_tag(m) for m in _models_in(Sink))
    fixed = {
        "extra_forbidden": _did_you_mean(loc) if loc else "unknown key",
        "missing": "required key is missing",
        "model_type": "expected a mapping (key: value)",
        "model_attributes_type": "expected a mapping (key: value)",
        "dict_type": "expected a mapping (key: value)",
        "list_type": "expected a list, e.g. [a, b]",
        "union_tag_invalid": f"unknown sink type; expected one of {tags}",
        "union_tag_not_found": f"missing 'type'; expected one of {tags}",
    }
    if kind in fixed:
        return fixed[kind]
    return msg.removeprefix("Value error, ").replace("Input should be ", "must be ", 1)


@dataclass(frozen=True)
class _Issue:
    loc: Loc
    value: str
    message: str


def _walk(data: Any, parts: Loc) -> Any:
    for part in parts:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return data


def _issues(exc: ValidationError, prefix: Loc) -> list[_Issue]:
    out: list[_Issue] = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        if err["type"] == "osel_config":
            for parts, message in err["ctx"]["problems"]:
                full = loc + tuple(parts)
                out.append(_Issue(_clean(full), _show(full, _walk(err["input"], parts)), message))
            continue
        value = _MISSING if err["type"] == "missing" else err["input"]
        out.append(_Issue(_clean(loc), _show(loc, value), _message(err, loc)))
    return out


# --------------------------------------------------------------------------- loading


@dataclass
class _Sources:
    file: str | None
    lines: dict[Loc, int] = field(default_factory=dict)
    env: dict[Loc, str] = field(default_factory=dict)

    def of(self, loc: Loc) -> str:
        for n in range(len(loc), 0, -1):
            prefix = loc[:n]
            if prefix in self.env:
                return self.env[prefix]
            if prefix in self.lines:
                return f"{self.file}:{self.lines[prefix]}"
            below = [name for path, name in self.env.items() if path[:n] == prefix]
            if below:
                return below[0]
        return self.file or "defaults"

    def problem(self, issue: _Issue) -> Problem:
        return Problem(_key(issue.loc), issue.value, issue.message, self.of(issue.loc))


def find_config_file(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> str | None:
    """The file load_settings would read: path, $OSEL_CONFIG, ./osel.yaml,
    /etc/osel/osel.yaml; None when none of the defaults exists. An explicitly named
    file (path or $OSEL_CONFIG) is returned even when it does not exist."""
    env = os.environ if env is None else env
    if path is not None:
        return os.fspath(path)
    if env.get(CONFIG_ENV):
        return env[CONFIG_ENV]
    return next((p for p in DEFAULT_PATHS if Path(p).is_file()), None)


def _line_map(node: yaml.Node, path: Loc, lines: dict[Loc, int], issues: list[_Issue]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.value == "<<":
                continue
            sub = (*path, key.value)
            if key.value in seen:
                issues.append(_Issue(sub, "", "duplicate key; the later value would silently win"))
            seen.add(key.value)
            lines[sub] = key.start_mark.line + 1
            _line_map(value, sub, lines, issues)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _line_map(item, (*path, index), lines, issues)


def _read_yaml(path: str, sources: _Sources) -> tuple[dict[str, Any], list[_Issue]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise _fatal(
            f"cannot read configuration file: {reason}; "
            "pass an existing, readable file with -c or $OSEL_CONFIG",
            path,
        ) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(path, exc)]) from None
    finally:
        loader.dispose()
    if data is None or node is None:
        return {}, []
    if not isinstance(data, dict):
        raise _fatal(
            "the top level must be a mapping of sections (amqp:, openstack:, scope:, ...)",
            f"{path}:1",
        )
    issues: list[_Issue] = []
    _line_map(node, (), sources.lines, issues)
    return data, issues


def _yaml_problem(path: str, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    what = " ".join(
        str(p) for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p
    )
    return Problem("", "", f"YAML syntax error: {what or 'cannot parse'}", where)


def _env_value(key: str, text: str) -> Any:
    """Secrets and string keys verbatim (null/~/empty -> None); others as YAML flow values."""
    if key in _SECRET_NAMES:
        return text or None
    if key in _STRING_NAMES:
        return None if text.strip() in ("", "null", "~") else text
    return yaml.safe_load(text) if text.strip() else None


def _set_path(root: dict[str, Any], path: Loc, value: Any, env_set: dict[Loc, str]) -> None:
    node: Any = root
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise LookupError(f"{_key(path[:depth])} has no entry {part}")
            if last:
                node[part] = value
            elif not isinstance(node[part], dict | list):
                node[part] = {}
            node = node[part]
            continue
        key = str(part)
        if last:
            node[key] = value
            _drop_file_sibling(node, path[:-1], key, env_set)
        elif not isinstance(node.get(key), dict | list):
            node[key] = {}
        node = node[key]


def _drop_file_sibling(
    node: dict[str, Any], parent: Loc, key: str, env_set: dict[Loc, str]
) -> None:
    """An override of X replaces the file's X_file (and the other way round)."""
    sibling = key.removesuffix("_file") if key.endswith("_file") else f"{key}_file"
    if sibling in node and (*parent, sibling) not in env_set:
        del node[sibling]


def _apply_env(raw: dict[str, Any], env: Mapping[str, str], sources: _Sources) -> list[Problem]:
    problems: list[Problem] = []
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        path: Loc = tuple(int(p) if p.isdigit() else p for p in parts)
        if not all(parts):
            problems.append(
                Problem(
                    _key(path),
                    "",
                    "malformed override; use OSEL_<SECTION>__<KEY>[__<KEY>...]",
                    name,
                )
            )
            continue
        try:
            value = _env_value(parts[-1], env[name])
            _set_path(raw, path, value, sources.env)
        except (yaml.YAMLError, LookupError) as exc:
            reason = "not a YAML value" if isinstance(exc, yaml.YAMLError) else str(exc)
            problems.append(
                Problem(
                    _key(path), _show(path, env[name]), f"cannot apply override: {reason}", name
                )
            )
            continue
        sources.env[path] = name
        sources.lines = {k: v for k, v in sources.lines.items() if k[: len(path)] != path}
    return problems


def _validate_sections(raw: dict[str, Any]) -> tuple[dict[str, BaseModel], list[_Issue]]:
    issues: list[_Issue] = []
    sections: dict[str, BaseModel] = {}
    for name, value in raw.items():
        if name not in Settings.model_fields:
            close = difflib.get_close_matches(str(name), list(Settings.model_fields), n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else "valid: " + ", ".join(Settings.model_fields)
            )
            issues.append(
                _Issue((str(name),), _show((str(name),), value), f"unknown section; {hint}")
            )
    for name, info in Settings.model_fields.items():
        model = _models_in(info.annotation)[0]
        try:
            sections[name] = model.model_validate({} if raw.get(name) is None else raw[name])
        except ValidationError as exc:
            issues.extend(_issues(exc, (name,)))
    return sections, issues


def _policy_problems(sections: dict[str, BaseModel], sources: _Sources) -> list[Problem]:
    """Every problem of the policy file policy.file names, with the policy's own keys."""
    section = sections.get("policy")
    if not isinstance(section, PolicySettings) or section.file is None:
        return []
    from osel.policy import PolicyError, load_policy

    try:
        load_policy(section.file)
    except PolicyError as exc:
        if not Path(section.file).is_file():
            return [
                Problem(
                    "policy.file",
                    repr(section.file),
                    "the policy file does not exist; give the path of a policy (docs/policy.md) "
                    "or null for none",
                    sources.of(("policy", "file")),
                )
            ]
        return [
            Problem(
                f"policy.file: {p.key}" if p.key else "policy.file",
                p.value,
                p.message,
                p.source,
            )
            for p in exc.problems
        ]
    return []


def _cross_issues(sections: dict[str, BaseModel]) -> list[_Issue]:
    scan, qualys = sections.get("scan"), sections.get("qualys")
    if not isinstance(scan, ScanSettings) or not isinstance(qualys, QualysSettings):
        return []
    if scan.backend != "qualys":
        return []
    issues: list[_Issue] = []
    if qualys.username is None:
        issues.append(
            _Issue(
                ("qualys", "username"),
                "",
                "required when scan.backend is qualys; "
                "set qualys.username (or use scan.backend: dry-run)",
            )
        )
    if qualys.password is None:
        issues.append(
            _Issue(
                ("qualys", "password"),
                "",
                "required when scan.backend is qualys; "
                "set qualys.password_file (or qualys.password)",
            )
        )
    return issues


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Load, override from the environment and validate; raise ConfigError with every
    problem. ``env`` defaults to os.environ."""
    env = os.environ if env is None else env
    file = find_config_file(path, env)
    if file is not None and not Path(file).exists():
        raise _fatal(
            "configuration file not found; pass an existing file "
            "with -c, or unset OSEL_CONFIG to use the defaults",
            file,
        )
    sources = _Sources(file)
    raw, issues = _read_yaml(file, sources) if file is not None else ({}, [])
    problems = _apply_env(raw, env, sources)
    sections, more = _validate_sections(raw)
    issues += more + _cross_issues(sections)
    problems += [sources.problem(i) for i in issues] + _policy_problems(sections, sources)
    if problems:
        raise ConfigError(problems)
    return Settings.model_validate(sections)


# --------------------------------------------------------------------------- documentation


def _type_text(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Network:
        return "CIDR"
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is Annotated:
        return _type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        names = ["null" if a is type(None) else _type_text(a) for a in args]
        return " | ".join(dict.fromkeys(names))
    if origin is list:
        return f"list[{_type_text(args[0])}]"
    if isinstance(annotation, type) and issubclass(annotation, SecretStr):
        return "secret"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "(required)"
    value = _plain(info.get_default(call_default_factory=True))
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def _table_rows(model: type[BaseModel], prefix: str, rows: list[tuple[str, str, str, str]]) -> None:
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        if prefix:
            rows.append(
                (key, _type_text(info.annotation), _default_text(info), info.description or "")
            )
        subs = _models_in(info.annotation)
        if len(subs) == 1:
            _table_rows(subs[0], f"{key}.", rows)
        for sub in subs if len(subs) > 1 else []:
            _table_rows(sub, f"{key}[type={_tag(sub)}].", rows)


def settings_table() -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every key, in model order."""
    rows: list[tuple[str, str, str, str]] = []
    _table_rows(Settings, "", rows)
    return rows
