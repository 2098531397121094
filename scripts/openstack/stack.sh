#!/usr/bin/env bash
# A real Keystone 30.0.0 + Neutron 29.0.0 on loopback, for osel's integration
# tests and demo. Both are served as plain WSGI apps (serve_wsgi.py beside this
# file) from their own virtualenv; MariaDB (127.0.0.1:3306, root, no password)
# and RabbitMQ (127.0.0.1:5672, guest/guest) are expected to run already (an
# attempt is made to start them if they do not answer).
#
#   stack.sh up      install (once), configure, initialise (once), start, verify
#   stack.sh down    stop both servers (venv, databases and state are kept)
#   stack.sh reset   down, drop both databases and the state, then up again
#   stack.sh status  what runs; exits 1 unless both servers answer
#   stack.sh env     print `export OS_CLIENT_CONFIG_FILE=...` (clouds.yaml)
#
# Everything lives under ${OSEL_STACK_DIR:-$HOME/.cache/osel-stack}: venv/,
# etc/, state/, log/ (logs and pidfiles) and clouds.yaml with the clouds
# osel-admin (admin/secret), osel (osel/osel-secret, reader on the admin
# project, reads every project's ports, security groups, rules, floating IPs
# and address groups) and osel-demo (demo/demo-secret, member of project demo).
#
# Keystone http://127.0.0.1:5000/v3, Neutron http://127.0.0.1:9696, region
# RegionOne. Neutron emits oslo notifications (messagingv2) on exchange
# `neutron`, routing key `notifications.info`.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STACK_DIR="${OSEL_STACK_DIR:-${HOME:-/root}/.cache/osel-stack}"
VENV="$STACK_DIR/venv"
ETC="$STACK_DIR/etc"
STATE="$STACK_DIR/state"
LOGDIR="$STACK_DIR/log"
CLOUDS="$STACK_DIR/clouds.yaml"

HOST=127.0.0.1
KEYSTONE_PORT=5000
NEUTRON_PORT=9696
KEYSTONE_URL="http://$HOST:$KEYSTONE_PORT/v3"
NEUTRON_URL="http://$HOST:$NEUTRON_PORT"
REGION=RegionOne
ADMIN_PASSWORD=secret
DB_HOST=127.0.0.1
DB_PORT=3306
DB_USER=root
RABBIT_HOST=127.0.0.1
RABBIT_PORT=5672
TRANSPORT_URL="rabbit://guest:guest@$RABBIT_HOST:$RABBIT_PORT/"
REQUIREMENTS=("neutron==29.0.0" "keystone==30.0.0" "PyMySQL")
KEYSTONE_TIMEOUT="${OSEL_STACK_KEYSTONE_TIMEOUT:-90}"
NEUTRON_TIMEOUT="${OSEL_STACK_NEUTRON_TIMEOUT:-180}"

log() { printf 'stack: %s\n' "$*"; }
die() { printf 'stack: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# --------------------------------------------------------------------------
# Python helper (runs in the stack's venv; stdlib + PyMySQL only)
# --------------------------------------------------------------------------
HELPER_PY=$(cat <<'PYEOF'
import os
import sys

KS = os.environ["OSEL_KS_URL"]
NT = os.environ["OSEL_NT_URL"]
REGION = os.environ["OSEL_REGION"]
ADMIN_PW = os.environ["OSEL_ADMIN_PASSWORD"]
sys.path.insert(0, os.environ["OSEL_OPENSTACK_SCRIPTS"])
from keystone_api import Fail, call, db, ensure, find_one, must  # noqa: E402
REQUIRED_EXTENSIONS = ("address-group", "port-security-groups-filtering",
                       "port-security", "security-group", "router",
                       "external-net")


def auth(user, password, project=None):
    ident = {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": password}}}
    body = {"auth": {"identity": ident}}
    if project:
        body["auth"]["scope"] = {"project": {
            "name": project, "domain": {"name": "Default"}}}
    status, headers, payload = call("POST", f"{KS}/auth/tokens", body=body)
    if status != 201:
        return None, payload
    return headers["X-Subject-Token"], payload["token"]


def admin_token():
    tok, info = auth("admin", ADMIN_PW, "admin")
    if not tok:
        raise Fail(f"admin cannot log in: {info}")
    return tok


def ensure_user(tok, name, password, project_id):
    uid = ensure(tok, "users", "users",
                 {"name": name, "password": password, "domain_id": "default",
                  "default_project_id": project_id, "enabled": True},
                 name=name, domain_id="default")
    ok, _ = auth(name, password)
    if not ok:
        must((200,), call("PATCH", f"{KS}/users/{uid}", tok,
                          {"user": {"password": password, "enabled": True}}),
             f"reset password of {name}")
        print(f"stack:   reset password of user {name}")
    return uid


def grant(tok, project_id, user_id, role_id):
    must((204,), call("PUT", f"{KS}/projects/{project_id}/users/{user_id}"
                      f"/roles/{role_id}", tok), "grant role")


def provision():
    tok = admin_token()
    roles = {r: ensure(tok, "roles", "roles", {"name": r}, name=r)
             for r in ("admin", "member", "reader")}
    admin_pid = find_one(tok, "projects", "projects", name="admin",
                         domain_id="default")["id"]
    service_pid = ensure(tok, "projects", "projects",
                         {"name": "service", "domain_id": "default",
                          "description": "OpenStack services"},
                         name="service", domain_id="default")
    demo_pid = ensure(tok, "projects", "projects",
                      {"name": "demo", "domain_id": "default",
                       "description": "osel test scenarios"},
                      name="demo", domain_id="default")
    grant(tok, service_pid,
          ensure_user(tok, "neutron", ADMIN_PW, service_pid), roles["admin"])
    grant(tok, admin_pid,
          ensure_user(tok, "osel", "osel-secret", admin_pid), roles["reader"])
    grant(tok, demo_pid,
          ensure_user(tok, "demo", "demo-secret", demo_pid), roles["member"])
    sid = ensure(tok, "services", "services",
                 {"name": "neutron", "type": "network", "enabled": True,
                  "description": "OpenStack Networking"}, type="network")
    url = NT + "/"
    for iface in ("public", "internal", "admin"):
        ep = find_one(tok, "endpoints", "endpoints", service_id=sid,
                      interface=iface, region_id=REGION)
        if ep is None:
            must((201,), call("POST", f"{KS}/endpoints", tok, {"endpoint": {
                "service_id": sid, "interface": iface, "url": url,
                "region_id": REGION, "enabled": True}}), "create endpoint")
            print(f"stack:   created {iface} network endpoint {url}")
        elif ep["url"] != url:
            must((200,), call("PATCH", f"{KS}/endpoints/{ep['id']}", tok,
                              {"endpoint": {"url": url}}), "fix endpoint")


def neutron_get(tok, path, what):
    return must((200,), call("GET", f"{NT}{path}", tok), what)


def verify():
    tok, info = auth("admin", ADMIN_PW, "admin")
    if not tok:
        raise Fail(f"admin cannot log in: {info}")
    urls = [e["url"] for s in info.get("catalog", []) if s["type"] == "network"
            for e in s["endpoints"] if e["interface"] == "public"]
    if NT + "/" not in urls:
        raise Fail(f"no public network endpoint {NT}/ in the catalog: {urls}")
    exts = {e["alias"] for e in
            neutron_get(tok, "/v2.0/extensions", "extensions")["extensions"]}
    missing = [e for e in REQUIRED_EXTENSIONS if e not in exts]
    if missing:
        raise Fail(f"Neutron lacks extensions {missing}")
    dtok, dinfo = auth("demo", "demo-secret", "demo")
    if not dtok:
        raise Fail(f"demo cannot log in: {dinfo}")
    demo_pid = dinfo["project"]["id"]
    # Listing as demo makes Neutron create demo's default security group.
    neutron_get(dtok, "/v2.0/security-groups?fields=id", "demo's SGs")
    otok, oinfo = auth("osel", "osel-secret", "admin")
    if not otok:
        raise Fail(f"osel cannot log in: {oinfo}")
    extra = {r["name"] for r in oinfo["roles"]} - {"reader"}
    if extra:
        raise Fail(f"user osel should only have role reader, has {extra}")
    sgs = neutron_get(otok, f"/v2.0/security-groups?project_id={demo_pid}",
                      "osel lists demo's SGs")["security_groups"]
    if not sgs:
        raise Fail("osel (reader on admin) cannot see project demo's "
                   "security groups: neutron policy.yaml not applied?")
    neutron_get(otok, f"/v2.0/ports?project_id={demo_pid}", "osel lists ports")
    # (No write probe here: Neutron emits *.create.start before it refuses.)
    print(f"stack: verified: catalog, {len(exts)} Neutron extensions incl. "
          "address-group, osel (reader) sees other projects")


def scalar(cur, sql, *args):
    cur.execute(sql, args)
    return cur.fetchone()[0]


def dbstate():
    """Create missing databases, print: keystone_tables admin_users alembic."""
    with db() as conn, conn.cursor() as cur:
        for name in ("keystone", "neutron"):
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {name}")
        def has(schema, table):
            return scalar(cur, "SELECT COUNT(*) FROM information_schema.tables"
                          " WHERE table_schema=%s AND table_name=%s",
                          schema, table) > 0
        ks_tables = scalar(cur, "SELECT COUNT(*) FROM information_schema."
                           "tables WHERE table_schema='keystone'")
        admins = (scalar(cur, "SELECT COUNT(*) FROM keystone.local_user "
                         "WHERE name='admin'")
                  if has("keystone", "local_user") else 0)
        heads = (scalar(cur, "SELECT COUNT(*) FROM neutron.alembic_version")
                 if has("neutron", "alembic_version") else 0)
        print(ks_tables, admins, heads)


def dbdrop():
    with db() as conn, conn.cursor() as cur:
        for name in ("keystone", "neutron"):
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
            cur.execute(f"CREATE DATABASE {name}")


def http_ok():
    status, _, _ = call("GET", sys.argv[2])
    sys.exit(0 if status == 200 else 1)


if __name__ == "__main__":
    try:
        {"provision": provision, "verify": verify, "dbstate": dbstate,
         "dbdrop": dbdrop, "http_ok": http_ok}[sys.argv[1]]()
    except Fail as exc:
        print(f"stack: ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        if sys.argv[1] == "http_ok":
            sys.exit(1)
        print(f"stack: ERROR: {sys.argv[1]}: {exc}", file=sys.stderr)
        sys.exit(1)
PYEOF
)

helper() {
    OSEL_OPENSTACK_SCRIPTS="$SCRIPT_DIR" OSEL_HELPER_LABEL=stack \
    OSEL_KS_URL="$KEYSTONE_URL" OSEL_NT_URL="$NEUTRON_URL" OSEL_REGION="$REGION" \
    OSEL_ADMIN_PASSWORD="$ADMIN_PASSWORD" OSEL_DB_HOST="$DB_HOST" \
    OSEL_DB_PORT="$DB_PORT" OSEL_DB_USER="$DB_USER" \
        "$VENV/bin/python" -c "$HELPER_PY" "$@"
}

http_ok() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --noproxy '*' -o /dev/null --max-time 5 "$1" 2>/dev/null
    else
        helper http_ok "$1"
    fi
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# --------------------------------------------------------------------------
# venv
# --------------------------------------------------------------------------
VENV_MARKER=.osel-stack-requirements
# shellcheck source=scripts/openstack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# --------------------------------------------------------------------------
# MariaDB and RabbitMQ (normally already running on this kind of machine)
# --------------------------------------------------------------------------
wait_tcp() { # name host port timeout
    local deadline=$((SECONDS + $4))
    until tcp_open "$2" "$3"; do
        ((SECONDS < deadline)) || die "$1 does not answer on $2:$3"
        sleep 1
    done
}

ensure_services() {
    if ! tcp_open "$DB_HOST" "$DB_PORT"; then
        log "MariaDB not answering on $DB_HOST:$DB_PORT, trying to start it"
        if command -v start-stop-daemon >/dev/null 2>&1 && [[ -x /usr/sbin/mariadbd ]]; then
            start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd ||
                true
        fi
        wait_tcp MariaDB "$DB_HOST" "$DB_PORT" 60
    fi
    if ! tcp_open "$RABBIT_HOST" "$RABBIT_PORT"; then
        log "RabbitMQ not answering on $RABBIT_HOST:$RABBIT_PORT, trying to start it"
        if command -v rabbitmq-server >/dev/null 2>&1; then
            rabbitmq-server -detached </dev/null >/dev/null 2>&1 || true
        fi
        wait_tcp RabbitMQ "$RABBIT_HOST" "$RABBIT_PORT" 90
    fi
}

# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------
CHANGED_KEYSTONE=0
CHANGED_NEUTRON=0

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

write_keystone_conf() {
    put "$ETC/keystone/keystone.conf" <<EOF
# Generated by scripts/openstack/stack.sh; edits are overwritten.
[DEFAULT]
debug = false

[database]
connection = mysql+pymysql://$DB_USER@$DB_HOST:$DB_PORT/keystone?charset=utf8

[token]
provider = fernet

[fernet_tokens]
key_repository = $STATE/keystone/fernet

[credential]
key_repository = $STATE/keystone/cred

[identity]
# Cheap bcrypt for a test stack: each password login costs ~1 ms, not ~250 ms.
password_hash_rounds = 4

[resource]
# Tokens scoped to this project carry is_admin_project=true; Neutron's
# policy.yaml (rule global_reader) turns "reader on the admin project" into a
# read-only view of every project.
admin_project_name = admin
admin_project_domain_name = Default
EOF
}

write_neutron_conf() {
    put "$ETC/neutron/neutron.conf" <<EOF
# Generated by scripts/openstack/stack.sh; edits are overwritten.
[DEFAULT]
debug = false
core_plugin = ml2
service_plugins = router
auth_strategy = keystone
transport_url = $TRANSPORT_URL
api_paste_config = $ETC/neutron/api-paste.ini
state_path = $STATE/neutron
allow_overlapping_ips = true
# No agents and no Nova here.
dhcp_agent_notification = false
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false

[database]
connection = mysql+pymysql://$DB_USER@$DB_HOST:$DB_PORT/neutron?charset=utf8

[oslo_messaging_notifications]
driver = messagingv2

[oslo_concurrency]
lock_path = $STATE/lock

[oslo_policy]
policy_file = $ETC/neutron/policy.yaml

[keystone_authtoken]
www_authenticate_uri = http://$HOST:$KEYSTONE_PORT
auth_url = http://$HOST:$KEYSTONE_PORT
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = neutron
password = $ADMIN_PASSWORD
region_name = $REGION

[quotas]
# Unlimited, so that tests never hit a default quota (10 security groups...).
default_quota = -1
quota_network = -1
quota_subnet = -1
quota_port = -1
quota_router = -1
quota_floatingip = -1
quota_security_group = -1
quota_security_group_rule = -1
quota_rbac_policy = -1
quota_router_route = -1
EOF
}

write_ml2_conf() {
    put "$ETC/neutron/ml2_conf.ini" <<'EOF'
# Generated by scripts/openstack/stack.sh; edits are overwritten.
[ml2]
type_drivers = flat,vlan,vxlan
project_network_types = vxlan
mechanism_drivers =
extension_drivers = port_security

[ml2_type_flat]
flat_networks = *

[ml2_type_vlan]
network_vlan_ranges = physnet1:100:199

[ml2_type_vxlan]
vni_ranges = 1:1000

[securitygroup]
enable_security_group = true
EOF
}

# Neutron's default policies only let `reader` read its own project. The
# documented way to give a read-only role a global view
# (docs.openstack.org/neutron/latest/configuration/custom_policy_roles.html)
# is `context_with_global_access` (unscoped SQL queries) plus an extra clause
# on every get_* rule. Each rule below is Neutron 29.0.0's default with
# `or rule:global_reader` appended.
write_neutron_policy() {
    put "$ETC/neutron/policy.yaml" <<'EOF'
# Generated by scripts/openstack/stack.sh; edits are overwritten.
"global_reader": "role:reader and is_admin_project:True"
"context_with_global_access": "rule:global_reader"
"get_port": "(rule:admin_only) or (rule:service_api) or role:reader and rule:network_owner or role:reader and project_id:%(project_id)s or rule:global_reader"
"get_port:tags": "rule:context_is_advsvc or (rule:admin_only) or (role:reader and rule:network_owner) or role:reader and project_id:%(project_id)s or rule:global_reader"
"get_security_group": "(rule:admin_only) or (role:reader and project_id:%(project_id)s) or rule:shared_security_group or rule:global_reader"
"get_security_group:tags": "(rule:admin_only) or (role:reader and project_id:%(project_id)s) or rule:shared_security_group or rule:global_reader"
"get_security_group_rule": "(rule:admin_only) or (role:reader and rule:sg_owner) or rule:global_reader"
"get_floatingip": "(rule:admin_only) or (role:reader and project_id:%(project_id)s) or rule:global_reader"
"get_floatingip:tags": "(rule:admin_only) or (role:reader and project_id:%(project_id)s) or rule:global_reader"
"get_address_group": "(rule:admin_only) or (role:reader and project_id:%(project_id)s) or rule:shared_address_groups or rule:global_reader"
"get_network": "(rule:admin_only) or (role:reader and project_id:%(project_id)s) or rule:service_api or rule:shared or rule:external or rule:context_is_advsvc or rule:global_reader"
"get_network:tags": "(rule:admin_only) or (role:reader and project_id:%(project_id)s) or rule:shared or rule:external or rule:context_is_advsvc or rule:global_reader"
"get_subnet": "role:reader and project_id:%(project_id)s or rule:shared or rule:external_network or (rule:admin_only) or (role:reader and rule:network_owner) or rule:service_api or rule:global_reader"
"get_subnet:tags": "role:reader and project_id:%(project_id)s or rule:shared or rule:external_network or (rule:admin_only) or (role:reader and rule:network_owner) or rule:global_reader"
"get_router": "(rule:admin_only) or (role:reader and project_id:%(project_id)s) or rule:global_reader"
"get_router:tags": "(rule:admin_only) or (role:reader and project_id:%(project_id)s) or rule:global_reader"
EOF
}

write_clouds_yaml() {
    local name user password project
    {
        echo "# Generated by scripts/openstack/stack.sh"
        echo "clouds:"
        for spec in "osel-admin admin $ADMIN_PASSWORD admin" \
                    "osel osel osel-secret admin" \
                    "osel-demo demo demo-secret demo"; do
            read -r name user password project <<<"$spec"
            cat <<EOF
  $name:
    auth:
      auth_url: $KEYSTONE_URL
      username: $user
      password: $password
      project_name: $project
      user_domain_name: Default
      project_domain_name: Default
    region_name: $REGION
    identity_api_version: 3
    interface: public
EOF
        done
    } | put "$CLOUDS" || true
}

write_configs() {
    mkdir -p "$ETC/keystone" "$ETC/neutron" "$STATE/keystone" "$STATE/neutron" \
             "$STATE/lock" "$LOGDIR"
    if write_keystone_conf; then CHANGED_KEYSTONE=1; fi
    if write_neutron_conf; then CHANGED_NEUTRON=1; fi
    if write_ml2_conf; then CHANGED_NEUTRON=1; fi
    if write_neutron_policy; then CHANGED_NEUTRON=1; fi
    if [[ -f "$VENV/etc/neutron/api-paste.ini" ]] &&
       put "$ETC/neutron/api-paste.ini" <"$VENV/etc/neutron/api-paste.ini"; then
        CHANGED_NEUTRON=1
    fi
    write_clouds_yaml
}

# --------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------
pidfile() { echo "$LOGDIR/$1.pid"; }
logfile() { echo "$LOGDIR/$1.log"; }
port_of() { if [[ "$1" == keystone ]]; then echo "$KEYSTONE_PORT"; else echo "$NEUTRON_PORT"; fi; }
url_of() { if [[ "$1" == keystone ]]; then echo "$KEYSTONE_URL"; else echo "$NEUTRON_URL/"; fi; }

is_our_server() { # pid name
    local cmd
    cmd="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null)" || return 1
    [[ "$cmd" == *"serve_wsgi.py $2 "* ]]
}

# prints the pid of our running server NAME (from its pidfile, else from
# whatever listens on its port if that is ours), or fails
server_pid() {
    local pid
    pid="$(cat "$(pidfile "$1")" 2>/dev/null)" || pid=""
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && is_our_server "$pid" "$1"; then
        echo "$pid"
        return 0
    fi
    pid="$(listener_pid "$(port_of "$1")")" && is_our_server "$pid" "$1" || return 1
    echo "$pid" >"$(pidfile "$1")" 2>/dev/null || true # re-create a lost pidfile
    echo "$pid"
}

# pid of whatever listens on 127.0.0.1:PORT (needs ss), or fails
listener_pid() {
    command -v ss >/dev/null 2>&1 || return 1
    ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2 |
        grep .
}

stop_server() {
    local name=$1 pid i
    if ! pid="$(server_pid "$name")"; then
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

fail_server() { # name message
    local lf
    lf="$(logfile "$1")"
    {
        echo "stack: ERROR: $2"
        echo "----- last lines of $lf -----"
        tail -n 40 "$lf" 2>/dev/null || true
        echo "-----"
    } >&2
    stop_server "$1" >/dev/null 2>&1 || true
    exit 1
}

start_server() { # name timeout config-files...
    local name=$1 timeout=$2 port url pid lp start=$SECONDS
    shift 2
    port="$(port_of "$name")"
    url="$(url_of "$name")"
    if tcp_open "$HOST" "$port"; then
        if lp="$(listener_pid "$port")" && is_our_server "$lp" "$name"; then
            echo "$lp" >"$(pidfile "$name")" # adopt a server whose pidfile was lost
            return 0
        fi
        die "$HOST:$port is taken by another process ($(ss -Hltnp "sport = :$port" 2>/dev/null || echo '?'))"
    fi
    local args=("$SCRIPT_DIR/serve_wsgi.py" "$name" --host "$HOST" --port "$port"
                --config-dir "$ETC/$name" --pidfile "$(pidfile "$name")")
    local f lf
    for f in "$@"; do args+=(--config-file "$f"); done
    lf="$(logfile "$name")"
    if [[ "$(stat -c %s "$lf" 2>/dev/null || echo 0)" -gt 50000000 ]]; then
        mv -f "$lf" "$lf.1" # keep at most ~100 MB of logs per server
    fi
    echo "===== $(date -u +%FT%TZ) stack.sh starts $name" >>"$(logfile "$name")"
    # New session (serve_wsgi.py calls setsid), no inherited stdio or lock fd.
    "$VENV/bin/python" "${args[@]}" </dev/null >>"$(logfile "$name")" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$(pidfile "$name")"
    local deadline=$((SECONDS + timeout))
    until http_ok "$url"; do
        kill -0 "$pid" 2>/dev/null || fail_server "$name" "$name exited during start-up"
        ((SECONDS < deadline)) ||
            fail_server "$name" "$name did not answer $url within ${timeout}s"
        sleep 0.5
    done
    log "started $name on $url (pid $pid, $((SECONDS - start))s)"
}

start_keystone() { start_server keystone "$KEYSTONE_TIMEOUT" keystone.conf; }
start_neutron() { start_server neutron "$NEUTRON_TIMEOUT" neutron.conf ml2_conf.ini; }

# --------------------------------------------------------------------------
# one-time initialisation (each step only when not done yet)
# --------------------------------------------------------------------------
kmanage() {
    echo "===== $(date -u +%FT%TZ) keystone-manage $*" >>"$LOGDIR/setup.log"
    "$VENV/bin/keystone-manage" --config-file "$ETC/keystone/keystone.conf" "$@" \
        >>"$LOGDIR/setup.log" 2>&1 ||
        { tail -n 25 "$LOGDIR/setup.log" >&2; die "keystone-manage $1 failed (log: $LOGDIR/setup.log)"; }
}

init_keystone() {
    local ks_tables=$1 admins=$2 marker="$STATE/keystone/.done" t
    local want="keystone==30.0.0 $KEYSTONE_URL"
    if [[ "$ks_tables" -eq 0 || ! -f "$marker" ]]; then
        t=$SECONDS
        kmanage db_sync
        log "keystone db_sync done ($((SECONDS - t))s)"
    fi
    if [[ ! -f "$STATE/keystone/fernet/0" ]]; then
        kmanage fernet_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)"
        log "keystone fernet keys created"
    fi
    if [[ ! -f "$STATE/keystone/cred/0" ]]; then
        kmanage credential_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)"
        log "keystone credential keys created"
    fi
    if [[ "$admins" -eq 0 || "$(cat "$marker" 2>/dev/null)" != "$want" ]]; then
        kmanage bootstrap --bootstrap-password "$ADMIN_PASSWORD" \
            --bootstrap-username admin --bootstrap-project-name admin \
            --bootstrap-role-name admin \
            --bootstrap-admin-url "$KEYSTONE_URL/" \
            --bootstrap-internal-url "$KEYSTONE_URL/" \
            --bootstrap-public-url "$KEYSTONE_URL/" \
            --bootstrap-region-id "$REGION"
        log "keystone bootstrap done (admin/$ADMIN_PASSWORD, $REGION)"
    fi
    echo "$want" >"$marker"
}

init_neutron() {
    local heads=$1 marker="$STATE/neutron/.db-upgraded" t
    if [[ "$heads" -eq 0 || "$(cat "$marker" 2>/dev/null)" != "neutron==29.0.0" ]]; then
        t=$SECONDS
        echo "===== $(date -u +%FT%TZ) neutron-db-manage upgrade heads" >>"$LOGDIR/setup.log"
        "$VENV/bin/neutron-db-manage" --config-file "$ETC/neutron/neutron.conf" \
            --config-file "$ETC/neutron/ml2_conf.ini" upgrade heads \
            >>"$LOGDIR/setup.log" 2>&1 ||
            { tail -n 25 "$LOGDIR/setup.log" >&2; die "neutron-db-manage failed (log: $LOGDIR/setup.log)"; }
        echo "neutron==29.0.0" >"$marker"
        log "neutron-db-manage upgrade heads done ($((SECONDS - t))s)"
    fi
}

# --------------------------------------------------------------------------
# subcommands
# --------------------------------------------------------------------------
lock() {
    mkdir -p "$STACK_DIR" "$LOGDIR"
    exec 9>"$STACK_DIR/.lock"
    flock -w 900 9 || die "another stack.sh holds $STACK_DIR/.lock"
}

summary() {
    log "up: keystone $KEYSTONE_URL (pid $(server_pid keystone)), neutron $NEUTRON_URL (pid $(server_pid neutron))"
    log "clouds: osel-admin, osel, osel-demo in $CLOUDS (eval \"\$(bash $0 env)\")"
}

cmd_up() {
    local start=$SECONDS
    lock
    write_configs
    if venv_ok && [[ $CHANGED_KEYSTONE == 0 && $CHANGED_NEUTRON == 0 ]] &&
       tcp_open "$DB_HOST" "$DB_PORT" && tcp_open "$RABBIT_HOST" "$RABBIT_PORT" &&
       server_pid keystone >/dev/null && server_pid neutron >/dev/null; then
        if http_ok "$KEYSTONE_URL" && http_ok "$NEUTRON_URL/" &&
           helper verify 2>"$LOGDIR/verify.err"; then
            summary
            log "already running, nothing to do ($((SECONDS - start))s)"
            return 0
        fi
        log "running but failing checks ($(tail -n1 "$LOGDIR/verify.err" 2>/dev/null)); repairing"
    fi
    ensure_venv
    write_configs # api-paste.ini comes from the venv
    ensure_services
    local ks_tables admins heads
    read -r ks_tables admins heads < <(helper dbstate) ||
        die "cannot reach MariaDB on $DB_HOST:$DB_PORT as $DB_USER"
    init_keystone "$ks_tables" "$admins"
    if [[ $CHANGED_KEYSTONE == 1 ]]; then stop_server keystone || true; fi
    server_pid keystone >/dev/null || start_keystone
    helper provision || die "provisioning Keystone failed"
    log "keystone users, projects, roles and network endpoints in place"
    init_neutron "$heads"
    if [[ $CHANGED_NEUTRON == 1 ]]; then stop_server neutron || true; fi
    server_pid neutron >/dev/null || start_neutron
    helper verify || die "verification failed (logs: $LOGDIR)"
    summary
    log "up in $((SECONDS - start))s"
}

cmd_down() {
    lock
    stop_server neutron || log "neutron was not running"
    stop_server keystone || log "keystone was not running"
}

cmd_reset() {
    cmd_down
    ensure_venv
    ensure_services
    helper dbdrop || die "cannot drop/create the databases"
    rm -rf "$STATE"
    log "dropped and re-created databases keystone, neutron; removed $STATE"
    cmd_up
}

cmd_status() {
    local name pid rc=0
    for name in keystone neutron; do
        if pid="$(server_pid "$name")"; then
            if http_ok "$(url_of "$name")"; then
                log "$name: running, pid $pid, $(url_of "$name") answers"
            else
                log "$name: pid $pid alive but $(url_of "$name") does not answer"
                rc=1
            fi
        else
            log "$name: down"
            rc=1
        fi
    done
    local what host port
    for what in "MariaDB $DB_HOST $DB_PORT" "RabbitMQ $RABBIT_HOST $RABBIT_PORT"; do
        read -r name host port <<<"$what"
        if tcp_open "$host" "$port"; then
            log "$name: $host:$port answers"
        else
            log "$name: $host:$port does not answer"
        fi
    done
    return $rc
}

cmd_env() {
    mkdir -p "$STACK_DIR"
    write_clouds_yaml
    printf 'export OS_CLIENT_CONFIG_FILE=%q\n' "$CLOUDS"
    printf 'export OSEL_STACK_DIR=%q\n' "$STACK_DIR"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    reset) cmd_reset ;;
    status) cmd_status ;;
    env) cmd_env ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
