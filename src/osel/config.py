"""osel configuration: the model of osel.yaml, its validation and its secrets.

Each section is a pydantic model; a mistake is a `Problem` naming its dotted key,
the value and what to do, and `ConfigError` carries them all. Reading the file
and the environment is `osel.config_load`; the reference tables are rendered
from these models by `osel.config_doc`.

Secrets are ``SecretStr`` (``SecretUrl`` for URLs that carry a password). Each
secret key ``X`` may be given as ``X_file`` instead. No secret value appears in
an error, a repr or ``Settings.redacted()``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from osel.exposure import address_int

MASK = "********"
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


def fatal_problem(message: str, source: str) -> ConfigError:
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
class FileProblem:
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
        data[f"{key}_file"] = FileProblem(path, f"give either {key} or {key}_file, not both")
        return
    try:
        secret = _read_secret_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        data[f"{key}_file"] = FileProblem(
            path,
            f"cannot read secret file {path!r}: {reason}; check the path and that osel may read it",
        )
        return
    if not secret:
        data[f"{key}_file"] = FileProblem(
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
    if isinstance(value, FileProblem):
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
    role: Literal["all", "intake", "worker"] = Field(
        "all",
        description="What this instance does: all; intake (takes in and commits "
        "notifications, leaves scans and audit delivery to a worker); worker (forms, "
        "launches and follows scans and delivers the audit trail; never consumes AMQP)",
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
    retention_days: float = Field(
        0,
        ge=0,
        description="Delete delivered audit records, ended scans and other history older "
        "than this (days); 0 keeps everything",
    )

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
        result = plain(self.model_dump(mode="python"))
        assert isinstance(result, dict)
        return result


def plain(value: Any) -> Any:
    if isinstance(value, SecretUrl):
        return mask_url(value.get_secret_value())
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, str):
        return mask_if_url(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)


def mask_if_url(text: str) -> str:
    return mask_url(text) if _URL_RE.match(text) else text


# --------------------------------------------------------------------------- model introspection


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds (one, or the variants of a tagged union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def variant_tag(model: type[BaseModel]) -> str:
    """The value of a union variant's `type` key (the sinks: file, syslog, splunk_hec)."""
    return str(model.model_fields["type"].default)
