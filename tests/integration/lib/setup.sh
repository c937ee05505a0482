# shellcheck shell=bash
# setup.sh -- nt_setup (tools, temp dir, common environment) and the one EXIT trap that
# stops everything the test started, pass or fail, and removes the temp dir.
# Part of tests/integration/lib.sh.

NT_KEEP_DIR=${NT_KEEP_DIR:-0} # 1: never remove NT_TMP (the demo's .local/)

# ---- setup and cleanup -----------------------------------------------------------------------
# Does user $1 reach (search permission on every component of) directory $2?
nt__user_can_traverse() {
    local user=$1 dir=$2
    runuser -u "$user" -- test -x "$dir" -a -r "$dir" 2>/dev/null
}

# nt_setup [NEEDLETRACE_BINARY]: checks tools, creates the temp dir, installs the trap.
nt_setup() {
    NT_TEST_NAME=${NT_TEST_NAME:-$(basename "${BASH_SOURCE[1]:-$0}" .sh)}
    NT_BIN=${1:-${NT_BIN:-}}
    if [[ -n $NT_BIN ]]; then
        [[ -x $NT_BIN ]] || nt_fail "needletrace binary not found or not executable: $NT_BIN"
        NT_BIN=$(cd "$(dirname "$NT_BIN")" && pwd)/$(basename "$NT_BIN")
    fi
    # Only the settings the harness chooses: none inherited from the caller's environment.
    local var
    for var in "${!NEEDLETRACE_@}"; do
        unset "$var"
    done
    local tool
    for tool in jq mosquitto curl; do
        command -v "$tool" >/dev/null 2>&1 ||
            nt_fail "$tool is not installed (tests/run.sh installs the dependencies)"
    done
    nt__find_pg_bin

    if [[ -z $NT_TMP ]]; then
        NT_TMP=$(mktemp -d "${TMPDIR:-/tmp}/nt-it.XXXXXX")
        chmod 755 "$NT_TMP"
        if ((EUID == 0)) && ! nt__user_can_traverse "$(nt__pg_user)" "$NT_TMP"; then
            # e.g. TMPDIR under /root: the unprivileged servers could not reach it
            rmdir "$NT_TMP"
            NT_TMP=$(mktemp -d /tmp/nt-it.XXXXXX)
            chmod 755 "$NT_TMP"
        fi
    else
        mkdir -p "$NT_TMP"
    fi
    export NT_TMP
    NT_PG_DIR=${NT_PG_DIR:-$NT_TMP/pg}
    trap nt__cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # Common environment of every needletrace command started by the tests.
    export NEEDLETRACE_LOG_FORMAT=text
    export NEEDLETRACE_HTTP_LISTEN=off
    export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    nt_log "temp dir $NT_TMP${NT_BIN:+, binary $NT_BIN}, running as $(id -un)"
}


nt__cleanup() {
    local rc=$? name pid
    set +e
    trap - EXIT INT TERM
    if ((rc == 0 && NT_FAILS > 0)); then
        rc=1
    fi
    if ((rc != 0)) && [[ ${NT_LOGS_DUMPED:-0} != 1 ]]; then
        nt_dump_logs
    fi
    for name in "${!NT_CPID[@]}"; do
        nt__stop_pid "${NT_CPID[$name]}" 10
    done
    for pid in "${NT_BG_PIDS[@]}"; do
        nt__stop_pid "$pid" 2
    done
    nt_stop_broker
    if [[ -n $NT_PG_BIN && -n $NT_PG_DIR && -f $NT_PG_DIR/data/postmaster.pid ]]; then
        nt_stop_pg "$NT_PG_STOP_MODE"
    fi
    if [[ -n $NT_TMP && -d $NT_TMP && ${NT_KEEP:-0} != 1 && $NT_KEEP_DIR != 1 ]]; then
        rm -rf "$NT_TMP"
    elif [[ -n $NT_TMP ]]; then
        nt_log "kept $NT_TMP"
    fi
    if ((rc == 0)); then
        nt_log "PASS"
    elif ((rc == 77)); then
        nt_log "SKIPPED"
    else
        nt_log "FAILED (exit $rc)"
    fi
    exit "$rc"
}
