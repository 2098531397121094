# Shared by stack.sh and aodh.sh (sourced, not run). The caller defines log, die,
# VENV, LOGDIR, REQUIREMENTS and VENV_MARKER (the file that records what the
# virtualenv was built with).

find_python() {
    local c
    for c in "${OSEL_STACK_PYTHON:-}" python3.11 \
             "${PYENV_ROOT:-/root/.pyenv}"/versions/3.11*/bin/python3.11 \
             /usr/local/bin/python3.11 /usr/bin/python3.11; do
        [[ -n "$c" ]] || continue
        if command -v "$c" >/dev/null 2>&1 &&
           "$c" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' \
               >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

venv_ok() {
    [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c '' >/dev/null 2>&1 &&
        [[ "$(cat "$VENV/$VENV_MARKER" 2>/dev/null)" == "${REQUIREMENTS[*]}" ]]
}

ensure_venv() {
    venv_ok && return 0
    local py start=$SECONDS
    py="$(find_python)" || die "no usable python3.11 found (set OSEL_STACK_PYTHON)"
    if ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
        rm -rf "$VENV"
        "$py" -m venv "$VENV"
    fi
    log "installing ${REQUIREMENTS[*]} into $VENV (log: $LOGDIR/pip.log)"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check \
            --no-input "${REQUIREMENTS[@]}" >"$LOGDIR/pip.log" 2>&1; then
        tail -n 25 "$LOGDIR/pip.log" >&2
        die "pip install failed (full log: $LOGDIR/pip.log)"
    fi
    printf '%s\n' "${REQUIREMENTS[*]}" >"$VENV/$VENV_MARKER"
    log "venv ready in $((SECONDS - start))s"
}
