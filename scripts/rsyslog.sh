#!/usr/bin/env bash
# A throwaway rsyslog of osel's own, for the syslog sink's integration tests.
# It is NOT the system rsyslog: its own configuration, pid file and work
# directory live under the state directory, it listens on 127.0.0.1 only, and
# it writes every message it receives to one file per listener, one JSON
# object a line (the raw message plus rsyslog's own RFC 5424 parse of it).
#
#   rsyslog.sh up      install rsyslog + rsyslog-gnutls from Debian (once), make
#                      the test CA and certificates (once), write the
#                      configuration, start it (quick when already up)
#   rsyslog.sh down    stop it (the state directory and received files are kept)
#   rsyslog.sh status  exits 0 when it runs and every listener answers
#   rsyslog.sh env     print the export lines the tests read
#
# Listeners (override the ports with the OSEL_RSYSLOG_*_PORT variables):
#   udp   127.0.0.1:15514   -> out/udp.jsonl
#   tcp   127.0.0.1:15601   -> out/tcp.jsonl   (octet counting and newline framing)
#   tls   127.0.0.1:16514   -> out/tls.jsonl   (server certificate from the test CA)
#   mtls  127.0.0.1:16515   -> out/mtls.jsonl  (TLS that requires a client certificate)
#
# State: ${OSEL_RSYSLOG_DIR:-$HOME/.cache/osel-rsyslog}: rsyslog.conf,
# rsyslog.pid, work/, log (rsyslog's own messages), out/, and ca/ with ca.pem,
# server.pem/.key and client.pem/.key (a test CA: never use it elsewhere).
set -euo pipefail

DIR="${OSEL_RSYSLOG_DIR:-${HOME:-/root}/.cache/osel-rsyslog}"
UDP_PORT="${OSEL_RSYSLOG_UDP_PORT:-15514}"
TCP_PORT="${OSEL_RSYSLOG_TCP_PORT:-15601}"
TLS_PORT="${OSEL_RSYSLOG_TLS_PORT:-16514}"
MTLS_PORT="${OSEL_RSYSLOG_MTLS_PORT:-16515}"
CONF="$DIR/rsyslog.conf"
PIDFILE="$DIR/rsyslog.pid"
CA="$DIR/ca"
OUT="$DIR/out"
WORK="$DIR/work"
GTLS_MODULE_GLOB="/usr/lib/*/rsyslog/lmnsd_gtls.so"

log() { printf 'rsyslog: %s\n' "$*"; }
die() { printf 'rsyslog: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

install_packages() {
    # shellcheck disable=SC2086
    if command -v rsyslogd >/dev/null 2>&1 && compgen -G $GTLS_MODULE_GLOB >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "rsyslog and rsyslog-gnutls are missing; install them as root (apt-get install rsyslog rsyslog-gnutls)"
    log "installing rsyslog and rsyslog-gnutls from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends rsyslog rsyslog-gnutls >/dev/null
}

make_certificates() {
    [ -s "$CA/client.pem" ] && return
    command -v openssl >/dev/null 2>&1 || die "openssl is missing (apt-get install openssl)"
    log "making the test CA and certificates in $CA"
    rm -rf "$CA"
    mkdir -p "$CA"
    (
        cd "$CA"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=osel test CA" \
            -keyout ca.key -out ca.pem \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        for who in server client; do
            openssl req -newkey rsa:2048 -nodes -subj "/CN=osel test $who" \
                -keyout "$who.key" -out "$who.csr" 2>/dev/null
        done
        printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
            "extendedKeyUsage=serverAuth,clientAuth" "basicConstraints=CA:FALSE" >server.ext
        printf '%s\n' "extendedKeyUsage=clientAuth" "basicConstraints=CA:FALSE" >client.ext
        for who in server client; do
            openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
                -days 3650 -extfile "$who.ext" -out "$who.pem" 2>/dev/null
        done
        rm -f ./*.csr ./*.ext ca.srl
        chmod 600 ./*.key
    )
}

write_config() {
    mkdir -p "$OUT" "$WORK"
    local tmp="$CONF.tmp"
    cat >"$tmp" <<EOF
# Written by scripts/rsyslog.sh: osel's test rsyslog (not the system one).
global(
  workDirectory="$WORK"
  maxMessageSize="256k"
  defaultNetstreamDriverCAFile="$CA/ca.pem"
  defaultNetstreamDriverCertFile="$CA/server.pem"
  defaultNetstreamDriverKeyFile="$CA/server.key"
)
# One worker, no queueing: what arrives on a connection is written in order.
main_queue(queue.type="Direct")

template(name="osel_test" type="list") {
  constant(value="{")
  property(outname="input" name="inputname" format="jsonf") constant(value=",")
  property(outname="version" name="protocol-version" format="jsonf") constant(value=",")
  property(outname="pri" name="pri" format="jsonf") constant(value=",")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf") constant(value=",")
  property(outname="hostname" name="hostname" format="jsonf") constant(value=",")
  property(outname="app_name" name="app-name" format="jsonf") constant(value=",")
  property(outname="procid" name="procid" format="jsonf") constant(value=",")
  property(outname="msgid" name="msgid" format="jsonf") constant(value=",")
  property(outname="structured_data" name="structured-data" format="jsonf") constant(value=",")
  property(outname="msg" name="msg" format="jsonf") constant(value=",")
  property(outname="raw" name="rawmsg" format="jsonf")
  constant(value="}\n")
}

module(load="imudp")
module(load="imtcp" maxSessions="200")

ruleset(name="to_udp") { action(type="omfile" file="$OUT/udp.jsonl" template="osel_test" flushOnTXEnd="on" asyncWriting="off") }
ruleset(name="to_tcp") { action(type="omfile" file="$OUT/tcp.jsonl" template="osel_test" flushOnTXEnd="on" asyncWriting="off") }
ruleset(name="to_tls") { action(type="omfile" file="$OUT/tls.jsonl" template="osel_test" flushOnTXEnd="on" asyncWriting="off") }
ruleset(name="to_mtls") { action(type="omfile" file="$OUT/mtls.jsonl" template="osel_test" flushOnTXEnd="on" asyncWriting="off") }

input(type="imudp" address="127.0.0.1" port="$UDP_PORT" name="udp" ruleset="to_udp")
input(type="imtcp" address="127.0.0.1" port="$TCP_PORT" name="tcp" ruleset="to_tcp")
input(type="imtcp" address="127.0.0.1" port="$TLS_PORT" name="tls" ruleset="to_tls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp" address="127.0.0.1" port="$MTLS_PORT" name="mtls" ruleset="to_mtls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
EOF
    mv "$tmp" "$CONF"
}

running_pid() {
    [ -s "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    kill -0 "$pid" 2>/dev/null || return 1
    grep -q rsyslogd "/proc/$pid/cmdline" 2>/dev/null || return 1
    printf '%s\n' "$pid"
}

# Listeners are looked up in /proc/net (local address 127.0.0.1:port in hex)
# rather than probed: a probe would be an aborted TLS handshake in rsyslog's log.
tcp_listening() { grep -q "0100007F:$(printf '%04X' "$1") 00000000:0000 0A" /proc/net/tcp; }
udp_bound() { grep -q "0100007F:$(printf '%04X' "$1") " /proc/net/udp; }

listening() {
    tcp_listening "$TCP_PORT" && tcp_listening "$TLS_PORT" && tcp_listening "$MTLS_PORT" \
        && udp_bound "$UDP_PORT"
}

cmd_up() {
    if running_pid >/dev/null && listening; then
        return
    fi
    install_packages
    make_certificates
    write_config
    if pid="$(running_pid)"; then
        kill "$pid" 2>/dev/null || true
        wait_gone "$pid"
    fi
    rsyslogd -N1 -f "$CONF" >"$DIR/check.log" 2>&1 \
        || die "configuration rejected: $(tail -n 5 "$DIR/check.log")"
    rm -f "$PIDFILE"
    rsyslogd -f "$CONF" -i "$PIDFILE" >>"$DIR/log" 2>&1 || die "rsyslogd did not start: $(tail -n 5 "$DIR/log")"
    for _ in $(seq 1 100); do
        if running_pid >/dev/null && listening; then
            log "up: udp $UDP_PORT, tcp $TCP_PORT, tls $TLS_PORT, mtls $MTLS_PORT; files in $OUT"
            return
        fi
        sleep 0.1
    done
    die "rsyslogd did not listen within 10s; see $DIR/log"
}

wait_gone() {
    for _ in $(seq 1 100); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$1" 2>/dev/null || true
}

cmd_down() {
    local pid
    if pid="$(running_pid)"; then
        kill "$pid"
        wait_gone "$pid"
        log "down"
    fi
    rm -f "$PIDFILE"
}

cmd_status() {
    local pid
    if pid="$(running_pid)" && listening; then
        log "running (pid $pid): udp $UDP_PORT, tcp $TCP_PORT, tls $TLS_PORT, mtls $MTLS_PORT"
        return 0
    fi
    log "not running"
    return 1
}

cmd_env() {
    cat <<EOF
export OSEL_RSYSLOG_DIR=$DIR
export OSEL_RSYSLOG_UDP_PORT=$UDP_PORT
export OSEL_RSYSLOG_TCP_PORT=$TCP_PORT
export OSEL_RSYSLOG_TLS_PORT=$TLS_PORT
export OSEL_RSYSLOG_MTLS_PORT=$MTLS_PORT
EOF
}

mkdir -p "$DIR"
case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
