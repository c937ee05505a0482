# shellcheck shell=bash
# shellcheck disable=SC2034 # NT_EXIT_CODE, NT_EXIT_MS are read by the tests
# collector.sh -- the collector under test: migrate, start `needletrace run` by name, wait
# until it is ready, stop it with a signal and time its exit, read its HTTP endpoints; and
# the watch that fails a wait at once when a running collector has died.
# Part of tests/integration/lib.sh.

declare -gA NT_CPID=()         # collector name -> pid
declare -gA NT_CHTTP=()        # collector name -> http port

# Fails at once when a collector that should be running has died (rather than waiting for a
# deadline). nt_stop_collector and nt_wait_collector_exit turn this off while they wait.
NT_WATCH_COLLECTORS=1
nt__check_collectors() {
    local name pid rc
    [[ $NT_WATCH_COLLECTORS == 1 ]] || return 0
    for name in "${!NT_CPID[@]}"; do
        pid=${NT_CPID[$name]}
        if ! nt_pid_alive "$pid"; then
            rc=0
            wait "$pid" || rc=$?
            unset "NT_CPID[$name]"
            nt_fail "collector $name (pid $pid) died unexpectedly with exit code $rc while waiting for: $1"
        fi
    done
}


# nt_migrate: migrate as the owner (database.admin_url), then the test logins get their roles.
nt_migrate() {
    "$NT_BIN" migrate >>"$NT_TMP/migrate.log" 2>&1 || nt_fail "needletrace migrate failed"
    nt_grant_logins
}

# nt_start_collector [NAME] [VAR=VALUE...]: starts `needletrace run` in the background with
# its own journal dir, client id and http port; stderr/stdout to $NT_TMP/collector-NAME.log.
# Extra VAR=VALUE arguments go into its environment (e.g. LD_PRELOAD=... for fault injection).
nt_start_collector() {
    local name=${1:-c1} port pid
    shift || true
    if [[ -n ${NT_CPID[$name]:-} ]] && nt_pid_alive "${NT_CPID[$name]}"; then
        nt_fail "collector $name is already running"
    fi
    port=${NT_CHTTP[$name]:-$(nt_free_port)}
    NT_CHTTP[$name]=$port
    mkdir -p "$NT_TMP/journal-$name"
    printf '===== %s starting collector %s =====\n' "$(date -u +%FT%TZ)" "$name" \
        >>"$NT_TMP/collector-$name.log"
    env NEEDLETRACE_JOURNAL_DIR="$NT_TMP/journal-$name" \
        NEEDLETRACE_COLLECTOR_ID="it-$name" \
        NEEDLETRACE_MQTT_CLIENT_ID="$(nt_client_id "$name")" \
        NEEDLETRACE_HTTP_LISTEN="127.0.0.1:$port" \
        NEEDLETRACE_LOG_LEVEL="${NT_LOG_LEVEL:-info}" \
        "$@" "$NT_BIN" run >>"$NT_TMP/collector-$name.log" 2>&1 &
    pid=$!
    NT_CPID[$name]=$pid
    nt_log "collector $name started (pid $pid, http 127.0.0.1:$port${*:+, $*})"
}

nt_client_id() {
    printf 'needletrace-it-%s\n' "${1:-c1}"
}

nt_collector_pid() {
    printf '%s\n' "${NT_CPID[${1:-c1}]:-}"
}

# nt_http NAME PATH: prints the body, succeeds on HTTP 2xx.
nt_http() {
    curl -fsS --max-time 5 "http://127.0.0.1:${NT_CHTTP[$1]}$2"
}

nt__collector_subscribed() {
    grep -qE "^[0-9]+: $(nt_client_id "$1") [012] .*clinics/\+/handpieces/\+/telemetry" \
        "$NT_TMP/broker.log"
}

nt__collector_ready() {
    local name=$1
    nt_pid_alive "${NT_CPID[$name]}" || {
        echo "collector $name is not running"
        return 1
    }
    nt_http "$name" /readyz || return 1
    nt__collector_subscribed "$name" || {
        echo "readyz ok but no subscription from $(nt_client_id "$name") in the broker log"
        return 1
    }
}

# nt_wait_collector_ready [NAME] [DEADLINE]: /readyz answers 2xx and the broker has logged the
# collector's subscription (its persistent session exists, so the broker queues for it).
nt_wait_collector_ready() {
    local name=${1:-c1}
    nt_wait_for "collector $name ready (readyz and subscribed)" "${2:-60}" \
        nt__collector_ready "$name"
}

# nt_stop_collector [NAME] [SIGNAL] [DEADLINE]: signals it (TERM by default), waits for the
# exit and sets NT_EXIT_CODE and NT_EXIT_MS (time from the signal to the exit).
nt_stop_collector() {
    local name=${1:-c1} sig=${2:-TERM} deadline=${3:-30} pid t0 rc=0
    local NT_WATCH_COLLECTORS=0
    pid=${NT_CPID[$name]:-}
    [[ -n $pid ]] || nt_fail "collector $name was never started"
    t0=$(nt_now_ms)
    kill -s "$sig" "$pid" 2>/dev/null || true
    nt_wait_for "collector $name (pid $pid) to exit after SIG$sig" "$deadline" nt_pid_dead "$pid"
    NT_EXIT_MS=$(($(nt_now_ms) - t0))
    wait "$pid" || rc=$?
    NT_EXIT_CODE=$rc
    unset "NT_CPID[$name]"
    nt_log "collector $name exited with code $rc, ${NT_EXIT_MS} ms after SIG$sig"
}

# nt_wait_collector_exit [NAME] [DEADLINE]: for a collector that ends by itself (test hook).
nt_wait_collector_exit() {
    local name=${1:-c1} deadline=${2:-60} pid rc=0
    local NT_WATCH_COLLECTORS=0
    pid=${NT_CPID[$name]:-}
    nt_wait_for "collector $name (pid $pid) to exit" "$deadline" nt_pid_dead "$pid"
    wait "$pid" || rc=$?
    NT_EXIT_CODE=$rc
    unset "NT_CPID[$name]"
    nt_log "collector $name exited by itself with code $rc"
}

# nt_metric NAME [COLLECTOR]: the value of needletrace_NAME (unlabelled) from the collector's
# /metrics (c1 by default).
nt_metric() {
    nt_http "${2:-c1}" /metrics | awk -v n="needletrace_$1" '$1 == n { print $2 }'
}

# nt_readyz [COLLECTOR]: prints the HTTP status and the body of /readyz on one line ("503 not
# ready: ..."); succeeds when the listener answered at all.
nt_readyz() {
    local out
    out=$(curl -s --max-time 5 -w ' %{http_code}' "http://127.0.0.1:${NT_CHTTP[${1:-c1}]}/readyz") ||
        return 1
    out=${out//$'\n'/}
    printf '%s %s\n' "${out##* }" "${out% *}"
}
