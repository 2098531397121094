from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from osel import config, config_load
from osel.config import (
    ConfigError,
    FileSink,
    ScopeSettings,
    Settings,
    SplunkHecSink,
    mask_url,
)
from osel.config_doc import settings_table
from osel.config_load import find_config_file, load_settings

MARKER = "MARKER-s3cr3t"
DRY = {"OSEL_SCAN__BACKEND": "dry-run"}


@pytest.fixture(autouse=True)
def _no_default_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config_load, "DEFAULT_PATHS", (str(tmp_path / "osel.yaml"),))


def write(tmp_path: Path, text: str, name: str = "osel.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def problems(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, config.Problem]:
    return {p.key: p for p in exc.value.problems}


FULL = """\
service:
  instance_name: osel-1
  log_level: debug
  log_format: json
  batch_size: 100
  batch_wait_ms: 10
  max_message_bytes: 2048
amqp:
  transport_url: rabbit://u:pw@h1:5672,u2:pw2@[::1]:5673/vh?ssl=1
  exchanges: [neutron, nova]
  topics: [notifications, versioned]
  queue: osel-prod
  queue_type: quorum
  exchange_durable: true
  prefetch: 50
  heartbeat: 30
  connect_timeout: 5
  ssl_ca_file: /etc/ssl/ca.pem
  ssl_verify: false
  dead_letter_exchange: osel.dlx
openstack:
  cloud: null
  auth:
    auth_url: https://keystone:5000/v3
    username: osel
    password: pw
    project_name: admin
  region_name: RegionOne
  interface: internal
  verify: false
  resync_minutes: 0
  timeout_seconds: 3
  max_concurrency: 8
scope:
  include_cidrs: [10.0.0.0/8, "2001:db8::/32"]
  exclude_cidrs: [10.1.0.0/16]
  ipv6: scan
  trigger: internet_exposed
scan:
  backend: qualys
  window_seconds: 0
  max_targets: 100
  scan_on_rule_delete: false
  cooldown_minutes: 5
qualys:
  api_url: https://qualysapi.qg2.apps.qualys.eu
  username: api
  password: pw
  option_id: 42
  scanner_name: scanner1
  proxy_url: http://proxy:3128
  min_remaining: 10
  follow: false
  poll_seconds: 30
  add_unknown_ips: true
  timeout_seconds: 20
  verify: true
audit:
  sinks:
    - {type: syslog, host: 127.0.0.1, port: 6514, protocol: tls, format: rfc5424}
    - {type: splunk_hec, url: "https://splunk:8088", token: tok, index: security, ack: true}
    - {type: file, path: /var/lib/osel/audit.jsonl}
store:
  url: postgresql+psycopg://osel:pw@db/osel
http:
  bind: "[::1]:9797"
  aodh_token: tok
  keystone_validate: true
  keystone_users: [admin]
  public_url: "trust+https://osel.example.com:9797"
"""


def test_defaults_with_no_file() -> None:
    settings = load_settings(env=DRY)
    assert settings.amqp.queue == "osel"
    assert settings.amqp.prefetch == 2000
    assert settings.amqp.transport_url.get_secret_value() == "rabbit://guest:guest@127.0.0.1:5672/"
    assert settings.openstack.cloud == "osel"
    assert settings.scan.window_seconds == 60
    assert settings.qualys.option_title == "Initial Options"
    assert settings.store.url.get_secret_value() == "sqlite:////var/lib/osel/osel.db"
    assert settings.store.backend == "sqlite"
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 9797)
    assert settings.service.instance
    assert settings.audit.sinks == []


def test_bare_defaults_ask_for_qualys_credentials() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env={})
    assert set(problems(exc)) == {"qualys.username", "qualys.password"}
    assert all(p.source == "defaults" for p in exc.value.problems)


def test_full_example(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, FULL), env={})
    assert s.service.instance == "osel-1"
    assert s.amqp.exchanges == ["neutron", "nova"]
    assert s.amqp.transport_url.get_secret_value().endswith("@[::1]:5673/vh?ssl=1")
    assert s.openstack.cloud is None and s.openstack.auth is not None
    assert s.openstack.auth.password is not None
    assert s.openstack.auth.password.get_secret_value() == "pw"
    assert s.scope.classify("10.2.3.4") is None
    assert s.qualys.option_id == 42 and s.qualys.option_title is None
    assert [sink.sink_id for sink in s.audit.sinks] == [
        "syslog:127.0.0.1:6514",
        "splunk_hec:https://splunk:8088",
        "file:/var/lib/osel/audit.jsonl",
    ]
    assert isinstance(s.audit.sinks[1], SplunkHecSink) and s.audit.sinks[1].ack
    assert s.store.backend == "postgresql"
    assert (s.http.host, s.http.port) == ("::1", 9797)


def test_search_order(tmp_path: Path) -> None:
    local = write(tmp_path, "scan: {backend: dry-run}\n")
    assert find_config_file(env={}) == local
    other = write(tmp_path, "scan: {backend: dry-run}\namqp: {prefetch: 7}\n", "other.yaml")
    assert find_config_file(env={"OSEL_CONFIG": other}) == other
    assert load_settings(env={"OSEL_CONFIG": other}).amqp.prefetch == 7
    assert find_config_file("x.yaml", env={"OSEL_CONFIG": other}) == "x.yaml"


def test_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(str(tmp_path / "missing.yaml"), env=DRY)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(env={"OSEL_CONFIG": str(tmp_path / "missing.yaml"), **DRY})


def test_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "amqp: {prefetch: 10}\nopenstack: {cloud: null}\n")
    env = {
        **DRY,
        "OSEL_AMQP__PREFETCH": "100",
        "OSEL_AMQP__SSL_VERIFY": "false",
        "OSEL_AMQP__QUEUE": "007",
        "OSEL_SCOPE__INCLUDE_CIDRS": "[10.0.0.0/8, 192.168.0.0/16]",
        "OSEL_OPENSTACK__AUTH__AUTH_URL": "https://keystone:5000/v3",
        "osel_openstack__Auth__USERNAME": "x",
        "OSEL_OPENSTACK__AUTH__PASSWORD": "#not: yaml",
        "OSEL_CONFIG": path,
        "OSEL_UNRELATED": "ignored",
    }
    s = load_settings(env=env)
    assert s.amqp.prefetch == 100
    assert s.amqp.ssl_verify is False
    assert s.amqp.queue == "007"
    assert [str(n) for n in s.scope.include_cidrs] == ["10.0.0.0/8", "192.168.0.0/16"]
    assert s.openstack.auth is not None and s.openstack.auth.username == "x"
    assert s.openstack.auth.password is not None
    assert s.openstack.auth.password.get_secret_value() == "#not: yaml"


def test_env_unknown_key_names_the_variable() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env={**DRY, "OSEL_AMQP__PREFECH": "1", "OSEL_SCANN__X": "1"})
    found = problems(exc)
    assert found["amqp.prefech"].source == "OSEL_AMQP__PREFECH"
    assert "did you mean 'prefetch'" in found["amqp.prefech"].message
    assert found["scann"].source == "OSEL_SCANN__X"


def test_secret_files(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("qualys-pw\n")
    (tmp_path / "tok").write_text("hec-token\n\n")
    (tmp_path / "url").write_text("rabbit://u:p@rabbit:5672/\n")
    path = write(
        tmp_path,
        f"""\
        amqp: {{transport_url_file: {tmp_path}/url}}
        qualys: {{username: u, password_file: {tmp_path}/pw}}
        audit:
          sinks: [{{type: splunk_hec, url: "https://s:8088", token_file: {tmp_path}/tok}}]
        """,
    )
    s = load_settings(path, env={})
    assert s.amqp.transport_url.get_secret_value() == "rabbit://u:p@rabbit:5672/"
    assert s.qualys.password is not None
    assert s.qualys.password.get_secret_value() == "qualys-pw"
    sink = s.audit.sinks[0]
    assert isinstance(sink, SplunkHecSink) and sink.token is not None
    assert sink.token.get_secret_value() == "hec-token\n"


def test_env_secret_replaces_file_secret(tmp_path: Path) -> None:
    path = write(tmp_path, "qualys: {username: u, password_file: /nonexistent}\n")
    s = load_settings(path, env={"OSEL_QUALYS__PASSWORD": "from-env"})
    assert s.qualys.password is not None
    assert s.qualys.password.get_secret_value() == "from-env"


def test_secret_and_file_both_or_unreadable(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(MARKER)
    path = write(
        tmp_path,
        f"""\
        qualys: {{username: u, password: {MARKER}, password_file: {tmp_path}/pw}}
        http: {{aodh_token_file: {tmp_path}/missing}}
        """,
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    found = problems(exc)
    assert set(found) == {"qualys.password_file", "http.aodh_token_file"}
    assert "not both" in found["qualys.password_file"].message
    missing = found["http.aodh_token_file"]
    assert f"{tmp_path}/missing" in missing.message and "No such file" in missing.message
    assert MARKER not in str(exc.value)


def test_three_mistakes_three_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        amqp:
          prefetch: -1
        scan:
          backend: dry-run
          windw_seconds: 3
        scope:
          ipv6: keep
        """,
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    found = problems(exc)
    assert set(found) == {"amqp.prefetch", "scan.windw_seconds", "scope.ipv6"}
    assert found["amqp.prefetch"].source == f"{path}:2"
    assert found["amqp.prefetch"].value == "-1"
    assert "did you mean 'window_seconds'" in found["scan.windw_seconds"].message
    assert "'drop' or 'scan'" in found["scope.ipv6"].message
    lines = str(exc.value).splitlines()
    assert len(lines) == 3
    assert f"{path}:7: scope.ipv6: " in str(exc.value)
    assert "(got 'keep')" in str(exc.value)


def test_yaml_syntax_error_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, "amqp:\n  prefetch: [1\n"), env={})
    assert len(exc.value.problems) == 1
    assert "YAML syntax error" in exc.value.problems[0].message
    assert exc.value.problems[0].source.count(":") == 2
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, "- a\n- b\n", "list.yaml"), env={})
    assert len(exc.value.problems) == 1 and "mapping" in str(exc.value)


def test_shared_queue_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env={**DRY, "OSEL_AMQP__QUEUE": "notifications.info"})
    problem = problems(exc)["amqp.queue"]
    assert "Ceilometer" in problem.message and "'osel'" in problem.message
    assert problem.source == "OSEL_AMQP__QUEUE"
    with pytest.raises(ConfigError):
        load_settings(
            env={**DRY, "OSEL_AMQP__TOPICS": "[versioned]", "OSEL_AMQP__QUEUE": "versioned.error"}
        )
    assert load_settings(env={**DRY, "OSEL_AMQP__QUEUE": "notifications"}).amqp.queue


def test_transport_url_validation() -> None:
    for bad in ("http://h/", "rabbit:///vhost", "rabbit://u:p@h:99999/", "nonsense"):
        with pytest.raises(ConfigError) as exc:
            load_settings(env={**DRY, "OSEL_AMQP__TRANSPORT_URL": bad})
        assert set(problems(exc)) == {"amqp.transport_url"}
    ok = "amqps://u:p@h1,h2:5000/"
    assert load_settings(env={**DRY, "OSEL_AMQP__TRANSPORT_URL": ok}).amqp.transport_url


def test_option_title_or_id(tmp_path: Path) -> None:
    s = load_settings(env={**DRY, "OSEL_QUALYS__OPTION_ID": "7"})
    assert (s.qualys.option_id, s.qualys.option_title) == (7, None)
    with pytest.raises(ConfigError) as exc:
        load_settings(
            write(tmp_path, "qualys: {option_title: X, option_id: 7}\n", "b.yaml"), env=DRY
        )
    assert set(problems(exc)) == {"qualys.option_id"}
    with pytest.raises(ConfigError) as exc:
        load_settings(env={**DRY, "OSEL_QUALYS__OPTION_TITLE": "null"})
    assert set(problems(exc)) == {"qualys.option_title"}


def test_qualys_credentials_only_for_qualys_backend() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env={"OSEL_QUALYS__USERNAME": "u"})
    assert set(problems(exc)) == {"qualys.password"}
    assert load_settings(env={"OSEL_QUALYS__USERNAME": "u", "OSEL_QUALYS__PASSWORD": "p"})
    assert load_settings(env=DRY).qualys.username is None


def test_openstack_auth_or_cloud(tmp_path: Path) -> None:
    both = "openstack: {cloud: other, auth: {auth_url: 'https://k/v3', username: u, password: p}}\n"
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, both), env=DRY)
    assert set(problems(exc)) == {"openstack.cloud"}
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, "openstack: {auth: {auth_url: 'https://k/v3'}}\n"), env=DRY)
    assert set(problems(exc)) == {"openstack.auth.username", "openstack.auth.password"}
    appcred = "openstack: {auth: {auth_url: 'https://k/v3', application_credential_id: i, application_credential_secret: s}}\n"  # noqa: E501
    assert load_settings(write(tmp_path, appcred), env=DRY).openstack.cloud is None


def test_marker_secrets_never_shown(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(MARKER)
    text = f"""\
    amqp: {{transport_url: "rabbit://u:{MARKER}@h1:5672,u2:{MARKER}@h2/", prefetch: 0}}
    openstack:
      cloud: null
      auth: {{auth_url: "https://k/v3", username: u, password: {MARKER}, bogus: 1}}
    qualys: {{username: u, password: {MARKER}, proxy_url: "http://p:{MARKER}@proxy:3128", bad: 1}}
    audit:
      sinks:
        - {{type: splunk_hec, url: "https://s:8088", token: {MARKER}, port: 1}}
        - {{type: splunk_hec, url: "https://t:8088", token_file: {tmp_path}/secret}}
    store: {{url: "postgresql://osel:{MARKER}@db/osel?password={MARKER}"}}
    http: {{aodh_token: {MARKER}, bind: nope}}
    """
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, text), env={})
    assert {p.key for p in exc.value.problems} == {
        "amqp.prefetch",
        "openstack.auth.bogus",
        "qualys.bad",
        "audit.sinks[0].port",
        "http.bind",
    }
    assert MARKER not in str(exc.value) and MARKER not in repr(exc.value.problems)

    fixed = text.replace(", prefetch: 0", "").replace(", bogus: 1", "").replace(", bad: 1", "")
    fixed = fixed.replace(", port: 1", "").replace(", bind: nope", "")
    settings = load_settings(write(tmp_path, fixed), env={})
    assert settings.store.url.get_secret_value().startswith("postgresql://osel:MARKER")
    for shown in (repr(settings), str(settings), str(settings.redacted()), str(settings_table())):
        assert MARKER not in shown
    redacted = settings.redacted()
    assert redacted["amqp"]["transport_url"] == "rabbit://u:********@h1:5672,u2:********@h2/"
    assert redacted["store"]["url"] == "postgresql://osel:********@db/osel?password=********"
    assert redacted["openstack"]["auth"]["password"] == "********"
    assert redacted["audit"]["sinks"][1]["token"] == "********"


def test_invalid_secret_values_masked() -> None:
    env = {
        **DRY,
        "OSEL_AMQP__TRANSPORT_URL": f"rabbit://u:{MARKER}/",
        "OSEL_STORE__URL": f"mysql://u:{MARKER}@h/db",
        "OSEL_QUALYS__PASWORD": MARKER,
        "OSEL_HTTP__AODH_TOKEN": f"[{MARKER}]",
    }
    with pytest.raises(ConfigError) as exc:
        load_settings(env=env)
    assert set(problems(exc)) == {"amqp.transport_url", "store.url", "qualys.pasword"}
    assert MARKER not in str(exc.value)
    assert all(p.value == "'********'" for p in exc.value.problems)


def test_sink_ids_unique(tmp_path: Path) -> None:
    dup = """\
    audit:
      sinks:
        - {type: file, path: /a.jsonl}
        - {type: file, path: /a.jsonl}
        - {type: file, path: /b.jsonl, name: x}
        - {type: syslog, host: h, name: x}
    """
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, dup), env=DRY)
    assert set(problems(exc)) == {"audit.sinks[1].name", "audit.sinks[3].name"}
    ok = dup.replace("path: /a.jsonl}", "path: /a.jsonl, name: a2}", 1).replace("name: x}\n", "}\n")
    sinks = load_settings(write(tmp_path, ok), env=DRY).audit.sinks
    assert [s.sink_id for s in sinks] == ["a2", "file:/a.jsonl", "file:/b.jsonl", "syslog:h:6514"]


def test_sink_errors_keyed_by_index(tmp_path: Path) -> None:
    text = """\
    audit:
      sinks:
        - {type: file, path: /a}
        - {type: syslog, host: h, port: 0}
        - {type: pigeon}
        - {type: splunk_hec, url: "https://s"}
    """
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, text), env=DRY)
    found = problems(exc)
    assert set(found) == {"audit.sinks[1].port", "audit.sinks[2]", "audit.sinks[3].token"}
    assert found["audit.sinks[1].port"].source.endswith(":4")
    assert FileSink(path="/x").sink_id == "file:/x"


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("sqlite:///relative.db", True),
        ("sqlite:////abs/path.db", True),
        ("postgresql://u:p@h/db", True),
        ("postgresql+psycopg://u:p@h:5432/db", True),
        ("sqlite://", False),
        ("mysql://u:p@h/db", False),
        ("postgresql://", False),
        ("/var/lib/osel.db", False),
    ],
)
def test_store_url(url: str, ok: bool) -> None:
    env = {**DRY, "OSEL_STORE__URL": url}
    if ok:
        assert load_settings(env=env).store.url.get_secret_value() == url
    else:
        with pytest.raises(ConfigError) as exc:
            load_settings(env=env)
        assert set(problems(exc)) == {"store.url"}


def test_http_bind() -> None:
    for bad in ("9797", "::1:9797", "host:0", "[::1:80"):
        with pytest.raises(ConfigError):
            load_settings(env={**DRY, "OSEL_HTTP__BIND": bad})
    assert load_settings(env={**DRY, "OSEL_HTTP__BIND": "0.0.0.0:80"}).http.port == 80


def test_scope_classify() -> None:
    scope = ScopeSettings.model_validate(
        {"include_cidrs": ["10.0.0.0/8", "2001:db8::/32"], "exclude_cidrs": ["10.1.0.0/16"]}
    )
    assert scope.classify("10.2.0.1") is None
    assert scope.classify("10.1.2.3") == "excluded by scope.exclude_cidrs 10.1.0.0/16"
    assert scope.classify("192.0.2.1") == "not in scope.include_cidrs"
    assert scope.classify("2001:db8::1") == "IPv6 and scope.ipv6 is drop"
    assert (
        ScopeSettings(ipv6="scan", include_cidrs=scope.include_cidrs).classify("2001:db8::1")
        is None
    )
    assert ScopeSettings().classify("8.8.8.8") is None
    assert ScopeSettings().classify("not-an-ip") is not None


def test_cidr_host_bits_rejected() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env={**DRY, "OSEL_SCOPE__EXCLUDE_CIDRS": "[10.0.0.1/8]"})
    problem = problems(exc)["scope.exclude_cidrs[0]"]
    assert "host bits" in problem.message and "10.0.0.0/8" in problem.message


def test_unknown_key_suggestion_and_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, "amqpp: {}\nscan: {backend: dry-run}\n"), env={})
    assert "did you mean 'amqp'" in problems(exc)["amqpp"].message


def test_mask_url() -> None:
    assert mask_url("rabbit://u:p,w@h1,u2:x@h2/") == "rabbit://u:********@h1,u2:********@h2/"
    assert mask_url("rabbit://u:p@w@h/") == "rabbit://u:********@********@h/"
    assert mask_url("rabbit://u:p/w@h/v") == "rabbit://u:********@h/v"
    assert mask_url("https://splunk:8088") == "https://splunk:8088"
    assert mask_url("not a url") == "********"


def test_settings_table_covers_every_key() -> None:
    rows = settings_table()
    keys = [row[0] for row in rows]
    assert "amqp.prefetch" in keys and "audit.sinks[type=syslog].port" in keys
    assert "openstack.auth.password_file" in keys
    assert all(row[3] for row in rows)
    assert dict((r[0], r[2]) for r in rows)["amqp.exchanges"] == "[neutron]"
    assert len(keys) == len(set(keys))


def test_settings_constructible_directly() -> None:
    settings = Settings()
    assert settings.scan.backend == "qualys"
    assert settings.model_copy() == settings
