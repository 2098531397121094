#!/usr/bin/env bash
# A real Ceilometer 27.0.0 + Aodh 23.0.0 event-alarm chain on loopback, beside
# the Keystone + Neutron of stack.sh, for osel's Aodh webhook tests:
#
#   Neutron -> RabbitMQ -> ceilometer-agent-notification (event pipeline only,
#   osel's shipped deploy/aodh/event_definitions.yaml and event_pipeline.yaml,
#   publishing to notifier://?topic=alarm.all) -> aodh-listener ->
#   aodh-notifier -> the HTTP action of each matching alarm
#
#   aodh.sh up      install (once), configure, initialise (once), start, verify
#   aodh.sh down    stop the four services (venv, database and state are kept)
#   aodh.sh status  what runs; exits 1 unless all four run and the API answers
#
# Needs `stack.sh up` first (Keystone, MariaDB, RabbitMQ). Everything lives
# under ${OSEL_STACK_DIR:-$HOME/.cache/osel-stack}/aodh: venv/, etc/, log/
# (logs and pidfiles). Keystone gets a user aodh (aodh-secret; admin and
# service on project service) and the alarming service at
# http://127.0.0.1:8042; MariaDB a database aodh. aodh-api runs on a threading
# wsgiref server. For tests, aodh-listener does not cache alarms
# (event_alarm_cache_ttl = 0; production's default of 60 s means a new alarm
# can miss events for a minute).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
SHIPPED="$REPO_DIR/deploy/aodh"
STACK_DIR="${OSEL_STACK_DIR:-${HOME:-/root}/.cache/osel-stack}"
BASE="$STACK_DIR/aodh"
VENV="$BASE/venv"
ETC="$BASE/etc"
LOGDIR="$BASE/log"

HOST=127.0.0.1
KEYSTONE_URL="http://$HOST:5000/v3"
AODH_PORT=8042
AODH_URL="http://$HOST:$AODH_PORT"
REGION=RegionOne
ADMIN_PASSWORD=secret
AODH_PASSWORD=aodh-secret
DB_HOST=127.0.0.1
DB_PORT=3306
DB_USER=root
RABBIT_HOST=127.0.0.1
RABBIT_PORT=5672
TRANSPORT_URL="rabbit://guest:guest@$RABBIT_HOST:$RABBIT_PORT/"
REQUIREMENTS=("aodh==23.0.0" "ceilometer==27.0.0" "PyMySQL")
SERVICES=(aodh-api aodh-listener aodh-notifier ceilometer-notification)
START_TIMEOUT="${OSEL_AODH_START_TIMEOUT:-90}"

log() { printf 'aodh: %s\n' "$*"; }
die() { printf 'aodh: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# --------------------------------------------------------------------------
# Python helper (runs in the aodh venv; stdlib + PyMySQL only)
# --------------------------------------------------------------------------
HELPER_PY=$(cat <<'PYEOF'
import os
import sys

KS = os.environ["OSEL_KS_URL"]
AODH = os.environ["OSEL_AODH_URL"]
REGION = os.environ["OSEL_REGION"]
ADMIN_PW = os.environ["OSEL_ADMIN_PASSWORD"]
AODH_PW = os.environ["OSEL_AODH_PASSWORD"]
sys.path.insert(0, os.environ["OSEL_OPENSTACK_SCRIPTS"])
from keystone_api import Fail, call, db, ensure, find_one, must  # noqa: E402


def auth(user, password, project):
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
    status, headers, payload = call("POST", f"{KS}/auth/tokens", body=body)
    if status != 201:
        raise Fail(f"{user} cannot log in to project {project}: HTTP {status}: {payload}")
    return headers["X-Subject-Token"], payload["token"]


def provision():
    tok, _ = auth("admin", ADMIN_PW, "admin")
    service_pid = find_one(tok, "projects", "projects", name="service",
                           domain_id="default")
    if service_pid is None:
        raise Fail("project service is missing: run stack.sh up first")
    service_pid = service_pid["id"]
    uid = ensure(tok, "users", "users",
                 {"name": "aodh", "password": AODH_PW, "domain_id": "default",
                  "default_project_id": service_pid, "enabled": True},
                 name="aodh", domain_id="default")
    status, _, _ = call("POST", f"{KS}/auth/tokens", body={"auth": {"identity": {
        "methods": ["password"], "password": {"user": {
            "id": uid, "password": AODH_PW}}}}})
    if status != 201:
        must((200,), call("PATCH", f"{KS}/users/{uid}", tok,
                          {"user": {"password": AODH_PW, "enabled": True}}),
             "reset password of aodh")
        print("aodh:   reset password of user aodh")
    for role in ("admin", "service"):
        rid = ensure(tok, "roles", "roles", {"name": role}, name=role)
        must((204,), call("PUT", f"{KS}/projects/{service_pid}/users/{uid}/roles/{rid}",
                          tok), f"grant {role} to aodh")
    sid = ensure(tok, "services", "services",
                 {"name": "aodh", "type": "alarming", "enabled": True,
                  "description": "Alarming"}, type="alarming")
    for iface in ("public", "internal", "admin"):
        ep = find_one(tok, "endpoints", "endpoints", service_id=sid,
                      interface=iface, region_id=REGION)
        if ep is None:
            must((201,), call("POST", f"{KS}/endpoints", tok, {"endpoint": {
                "service_id": sid, "interface": iface, "url": AODH,
                "region_id": REGION, "enabled": True}}), "create endpoint")
            print(f"aodh:   created {iface} alarming endpoint {AODH}")
        elif ep["url"] != AODH:
            must((200,), call("PATCH", f"{KS}/endpoints/{ep['id']}", tok,
                              {"endpoint": {"url": AODH}}), "fix endpoint")


def verify():
    tok, info = auth("admin", ADMIN_PW, "admin")
    urls = [e["url"] for s in info.get("catalog", []) if s["type"] == "alarming"
            for e in s["endpoints"] if e["interface"] == "public"]
    if AODH not in urls:
        raise Fail(f"no public alarming endpoint {AODH} in the catalog: {urls}")
    alarms = must((200,), call("GET", f"{AODH}/v2/alarms", tok), "list alarms")
    print(f"aodh: verified: catalog, Aodh API lists {len(alarms)} alarm(s) through Keystone")


def dbstate():
    """Create the database when missing; print its number of tables."""
    with db() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS aodh CHARACTER SET utf8mb4")
        cur.execute("SELECT COUNT(*) FROM information_schema.tables"
                    " WHERE table_schema='aodh'")
        print(cur.fetchone()[0])


def consumers():
    """Exit 0 when every queue named in argv has a consumer."""
    import amqp
    conn = amqp.Connection(host=os.environ["OSEL_RABBIT"], userid="guest",
                           password="guest", connect_timeout=10)
    conn.connect()
    try:
        for queue in sys.argv[2:]:
            ch = conn.channel()
            try:
                _, _, count = ch.queue_declare(queue, passive=True)
            except amqp.exceptions.NotFound:
                sys.exit(1)
            if not count:
                sys.exit(1)
    finally:
        conn.close()


if __name__ == "__main__":
    try:
        {"provision": provision, "verify": verify, "dbstate": dbstate,
         "consumers": consumers}[sys.argv[1]]()
    except Fail as exc:
        print(f"aodh: ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        print(f"aodh: ERROR: {sys.argv[1]}: {exc}", file=sys.stderr)
        sys.exit(1)
PYEOF
)

helper() {
    OSEL_OPENSTACK_SCRIPTS="$SCRIPT_DIR" OSEL_HELPER_LABEL=aodh \
    OSEL_KS_URL="$KEYSTONE_URL" OSEL_AODH_URL="$AODH_URL" OSEL_REGION="$REGION" \
    OSEL_ADMIN_PASSWORD="$ADMIN_PASSWORD" OSEL_AODH_PASSWORD="$AODH_PASSWORD" \
    OSEL_DB_HOST="$DB_HOST" OSEL_DB_PORT="$DB_PORT" OSEL_DB_USER="$DB_USER" \
    OSEL_RABBIT="$RABBIT_HOST:$RABBIT_PORT" \
        "$VENV/bin/python" -c "$HELPER_PY" "$@"
}

http_ok() { curl -fsS --noproxy '*' -o /dev/null --max-time 5 "$1" 2>/dev/null; }
tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# --------------------------------------------------------------------------
# venv
# --------------------------------------------------------------------------
VENV_MARKER=.osel-aodh-requirements
# shellcheck source=scripts/openstack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# --------------------------------------------------------------------------
# configuration (each file rewritten only when its content changes)
# --------------------------------------------------------------------------
CHANGED_AODH=0
CHANGED_CEILOMETER=0

# put FILE < content: replace FILE if its content differs; status 0 if changed
put() {
    local tmp
    tmp="$(mktemp "$1.XXXXXX")"
    cat >"$tmp"
    if [[ -f "$1" ]] && cmp -s "$tmp" "$1"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$1"
    return 0
}

service_credentials() {
    cat <<EOF
[service_credentials]
auth_type = password
auth_url = $KEYSTONE_URL
project_domain_name = Default
user_domain_name = Default
project_name = service
username = aodh
password = $AODH_PASSWORD
region_name = $REGION
interface = public
EOF
}

write_aodh_conf() {
    put "$ETC/aodh.conf" <<EOF
# Generated by scripts/openstack/aodh.sh; edits are overwritten.
[DEFAULT]
transport_url = $TRANSPORT_URL
debug = false
# Tests create alarms and fire events at once: no per-project alarm cache.
event_alarm_cache_ttl = 0

[database]
connection = mysql+pymysql://$DB_USER@$DB_HOST:$DB_PORT/aodh?charset=utf8mb4

[api]
paste_config = $ETC/api-paste.ini
auth_mode = keystone
host = $HOST
port = $AODH_PORT

[keystone_authtoken]
www_authenticate_uri = http://$HOST:5000
auth_url = http://$HOST:5000
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = aodh
password = $AODH_PASSWORD
region_name = $REGION
memcached_servers =

$(service_credentials)

[oslo_messaging_notifications]
driver = messagingv2

[listener]
event_alarm_topic = alarm.all
EOF
}

# The stock api-paste.ini names oslo_config_project = aodh in the authtoken
# filter, so keystonemiddleware would read /etc/aodh/aodh.conf, not ours.
write_api_paste() {
    local stock="$VENV/lib/python3.11/site-packages/aodh/api/api-paste.ini"
    [[ -f "$stock" ]] || return 1
    sed -e "/^\[filter:authtoken\]/a oslo_config_file = $ETC/aodh.conf" "$stock" |
        put "$ETC/api-paste.ini"
}

write_ceilometer_conf() {
    put "$ETC/ceilometer.conf" <<EOF
# Generated by scripts/openstack/aodh.sh; edits are overwritten.
[DEFAULT]
transport_url = $TRANSPORT_URL
debug = false
event_pipeline_cfg_file = $ETC/event_pipeline.yaml

[notification]
pipelines = event
workers = 1
notification_control_exchanges = neutron

[event]
definitions_cfg_file = $ETC/event_definitions.yaml
drop_unmatched_notifications = true

[oslo_messaging_notifications]
topics = notifications

[publisher_notifier]
telemetry_driver = messagingv2

$(service_credentials)
EOF
}

write_api_server() {
    put "$ETC/aodh_api.py" <<EOF
# Generated by scripts/openstack/aodh.sh: aodh-api on a threading wsgiref server.
import os
import signal
import sys
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from aodh import service
from aodh.api import app


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class Quiet(WSGIRequestHandler):
    def address_string(self):
        return str(self.client_address[0])


conf = service.prepare_service(
    argv=["--config-file", "$ETC/aodh.conf"], with_gmr=False, prog="aodh-api"
)
server = make_server("$HOST", $AODH_PORT, app.load_app(conf), server_class=Server,
                     handler_class=Quiet)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
print("aodh-api listening on http://$HOST:$AODH_PORT/", file=sys.stderr, flush=True)
server.serve_forever(poll_interval=0.5)
os._exit(0)
EOF
}

write_configs() {
    mkdir -p "$ETC" "$LOGDIR"
    [[ -f "$SHIPPED/event_definitions.yaml" && -f "$SHIPPED/event_pipeline.yaml" ]] ||
        die "the shipped Ceilometer files are missing from $SHIPPED"
    if write_aodh_conf; then CHANGED_AODH=1; fi
    if write_api_paste; then CHANGED_AODH=1; fi
    if write_api_server; then CHANGED_AODH=1; fi
    if write_ceilometer_conf; then CHANGED_CEILOMETER=1; fi
    if put "$ETC/event_definitions.yaml" <"$SHIPPED/event_definitions.yaml"; then
        CHANGED_CEILOMETER=1
    fi
    if put "$ETC/event_pipeline.yaml" <"$SHIPPED/event_pipeline.yaml"; then
        CHANGED_CEILOMETER=1
    fi
}

# --------------------------------------------------------------------------
# services
# --------------------------------------------------------------------------
pidfile() { echo "$LOGDIR/$1.pid"; }
logfile() { echo "$LOGDIR/$1.log"; }

command_of() { # name -> the command line that runs it
    case "$1" in
        aodh-api) echo "$VENV/bin/python $ETC/aodh_api.py" ;;
        aodh-listener) echo "$VENV/bin/aodh-listener --config-file $ETC/aodh.conf" ;;
        aodh-notifier) echo "$VENV/bin/aodh-notifier --config-file $ETC/aodh.conf" ;;
        ceilometer-notification)
            echo "$VENV/bin/ceilometer-agent-notification --config-file $ETC/ceilometer.conf" ;;
    esac
}

is_ours() { # pid name: its command line names our config and its program
    local cmd key
    cmd="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null)" || return 1
    case "$2" in
        aodh-api) key=aodh_api.py ;;
        ceilometer-notification) key=ceilometer-agent-notification ;;
        *) key=$2 ;;
    esac
    [[ "$cmd" == *"$ETC/"* && "$cmd" == *"$key"* ]]
}

service_pid() {
    local pid
    pid="$(cat "$(pidfile "$1")" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && is_ours "$pid" "$1" || return 1
    echo "$pid"
}

stop_service() {
    local name=$1 pid i
    if ! pid="$(service_pid "$name")"; then
        rm -f "$(pidfile "$name")"
        return 1
    fi
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$(pidfile "$name")"
    log "stopped $name (pid $pid)"
}

fail_service() { # name message
    {
        echo "aodh: ERROR: $2"
        echo "----- last lines of $(logfile "$1") -----"
        tail -n 40 "$(logfile "$1")" 2>/dev/null || true
        echo "-----"
    } >&2
    stop_service "$1" >/dev/null 2>&1 || true
    exit 1
}

# Each service is ready when it listens (the API) or consumes its queue.
queue_of() {
    case "$1" in
        aodh-listener) echo alarm.all.sample ;;
        aodh-notifier) echo alarming.sample ;;
        ceilometer-notification) echo notifications.info ;;
    esac
}

is_ready() {
    if [[ "$1" == aodh-api ]]; then http_ok "$AODH_URL/"; else helper consumers "$(queue_of "$1")" 2>/dev/null; fi
}

start_service() {
    local name=$1 pid start=$SECONDS lf
    lf="$(logfile "$name")"
    if [[ "$(stat -c %s "$lf" 2>/dev/null || echo 0)" -gt 50000000 ]]; then
        mv -f "$lf" "$lf.1"
    fi
    echo "===== $(date -u +%FT%TZ) aodh.sh starts $name" >>"$lf"
    # own session (kill -- -PID stops its workers too), no inherited stdio or lock fd
    # shellcheck disable=SC2046
    (cd "$ETC" && exec setsid $(command_of "$name")) </dev/null >>"$lf" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$(pidfile "$name")"
    local deadline=$((SECONDS + START_TIMEOUT))
    until is_ready "$name"; do
        kill -0 "$pid" 2>/dev/null || fail_service "$name" "$name exited during start-up"
        ((SECONDS < deadline)) ||
            fail_service "$name" "$name is not ready (listening or consuming) after ${START_TIMEOUT}s"
        sleep 0.5
    done
    log "started $name (pid $pid, $((SECONDS - start))s)"
}

# --------------------------------------------------------------------------
# subcommands
# --------------------------------------------------------------------------
lock() {
    mkdir -p "$BASE" "$LOGDIR"
    exec 9>"$BASE/.lock"
    flock -w 900 9 || die "another aodh.sh holds $BASE/.lock"
}

all_running() {
    local name
    for name in "${SERVICES[@]}"; do
        service_pid "$name" >/dev/null || return 1
    done
    helper consumers alarm.all.sample alarming.sample notifications.info 2>/dev/null
}

cmd_up() {
    local start=$SECONDS name
    lock
    http_ok "$KEYSTONE_URL" || die "Keystone does not answer at $KEYSTONE_URL: run stack.sh up first"
    tcp_open "$DB_HOST" "$DB_PORT" || die "MariaDB does not answer on $DB_HOST:$DB_PORT"
    tcp_open "$RABBIT_HOST" "$RABBIT_PORT" || die "RabbitMQ does not answer on $RABBIT_HOST:$RABBIT_PORT"
    write_configs
    if venv_ok && [[ $CHANGED_AODH == 0 && $CHANGED_CEILOMETER == 0 ]] && all_running &&
       http_ok "$AODH_URL/" && helper verify >/dev/null 2>"$LOGDIR/verify.err"; then
        log "already running, nothing to do ($((SECONDS - start))s)"
        return 0
    fi
    ensure_venv
    write_configs # api-paste.ini comes from the venv
    local tables t
    tables="$(helper dbstate)" || die "cannot reach MariaDB on $DB_HOST:$DB_PORT as $DB_USER"
    if [[ "$tables" -eq 0 || ! -f "$BASE/.db-synced" ]]; then
        t=$SECONDS
        "$VENV/bin/aodh-dbsync" --config-file "$ETC/aodh.conf" >>"$LOGDIR/setup.log" 2>&1 ||
            { tail -n 25 "$LOGDIR/setup.log" >&2; die "aodh-dbsync failed (log: $LOGDIR/setup.log)"; }
        touch "$BASE/.db-synced"
        log "aodh-dbsync done ($((SECONDS - t))s)"
    fi
    helper provision || die "provisioning Keystone failed"
    if [[ $CHANGED_AODH == 1 ]]; then
        for name in aodh-api aodh-listener aodh-notifier; do stop_service "$name" || true; done
    fi
    if [[ $CHANGED_CEILOMETER == 1 ]]; then stop_service ceilometer-notification || true; fi
    for name in "${SERVICES[@]}"; do
        service_pid "$name" >/dev/null || start_service "$name"
    done
    helper verify || die "verification failed (logs: $LOGDIR)"
    log "up in $((SECONDS - start))s"
}

cmd_down() {
    local name
    lock
    for name in "${SERVICES[@]}"; do
        stop_service "$name" || log "$name was not running"
    done
}

cmd_status() {
    local name pid rc=0
    for name in "${SERVICES[@]}"; do
        if pid="$(service_pid "$name")"; then
            log "$name: running, pid $pid"
        else
            log "$name: down"
            rc=1
        fi
    done
    if http_ok "$AODH_URL/"; then
        log "Aodh API: $AODH_URL/ answers"
    else
        log "Aodh API: $AODH_URL/ does not answer"
        rc=1
    fi
    return $rc
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
