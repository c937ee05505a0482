# shellcheck shell=bash
# shellcheck disable=SC2034 # NT_EXIT_CODE, NT_EXIT_MS, NT_SIM_PID... are read by the tests
# lib.sh -- the integration-test harness: a real PostgreSQL and a real mosquitto on free
# loopback ports in a temp dir, the collector under test, polling helpers and assertions.
#
# Sourced by every tests/integration/test_*.sh (and by deploy/demo.sh), which is run as
#   bash tests/integration/test_X.sh /path/to/needletrace
# Typical use:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   nt_setup "$@"          # temp dir + EXIT trap that stops everything, pass or fail
#   nt_start_pg; nt_start_broker; nt_migrate
#   nt_start_collector c1; nt_wait_collector_ready c1
#   nt_simulate "$NT_TMP/sim.json" --clinics 2 --devices 3 --events 1000 --seed 7
#   nt_wait_counts "$NT_TMP/sim.json"      # waits for, then asserts, the exact counts
#   nt_finish
#
# Everything listens on 127.0.0.1 only. Synchronisation is always a polled condition with
# a deadline (nt_wait_for), never a bare sleep.
#
# Knobs (environment): NT_KEEP=1 keeps the temp dir; NT_LOG_LEVEL sets the collector's log
# level (default info); NT_PG_USER overrides the user PostgreSQL runs as when root.

# ---- globals ---------------------------------------------------------------------------------
NT_TMP=${NT_TMP:-}
NT_BIN=${NT_BIN:-}
NT_FAILS=0
NT_CHECKS=0
NT_LAST=""
NT_PG_PORT=${NT_PG_PORT:-}
NT_PG_BIN=""
NT_PG_DIR=${NT_PG_DIR:-}                  # default $NT_TMP/pg
NT_PG_USER=${NT_PG_USER:-}
NT_PG_STOP_MODE=${NT_PG_STOP_MODE:-immediate} # at cleanup; the demo uses fast
NT_BROKER_PORT=${NT_BROKER_PORT:-}
NT_BROKER_PID=""
NT_KEEP_DIR=${NT_KEEP_DIR:-0} # 1: never remove NT_TMP (the demo's .local/)
declare -gA NT_CPID=()         # collector name -> pid
declare -gA NT_CHTTP=()        # collector name -> http port
declare -ga NT_BG_PIDS=()       # other background processes (simulate)
NT_T0=$SECONDS

# ---- output ----------------------------------------------------------------------------------
nt_log() {
    printf '[%s +%ss] %s\n' "${NT_TEST_NAME:-nt}" "$((SECONDS - NT_T0))" "$*"
}

nt_dump_logs() {
    local f
    [[ -n $NT_TMP && -d $NT_TMP ]] || return 0
    while IFS= read -r f; do
        printf -- '----- last 40 lines of %s -----\n' "${f#"$NT_TMP"/}"
        tail -n 40 "$f" 2>/dev/null || true
    done < <(find "$NT_TMP" -maxdepth 2 -name '*.log' -type f 2>/dev/null | sort)
    printf -- '----- end of logs -----\n'
}

# Prints the message and the logs, then exits the test with status 1 (the trap cleans up).
nt_fail() {
    printf 'FAIL: %s\n' "$*" >&2
    nt_dump_logs >&2
    NT_LOGS_DUMPED=1
    exit 1
}

# ---- time, ports -----------------------------------------------------------------------------
# Milliseconds since the epoch (no fork; works whatever the locale's decimal separator).
nt_now_ms() {
    local t=${EPOCHREALTIME//[!0-9]/}
    printf '%s\n' "$((t / 1000))"
}

nt__port_in_use() {
    local p=$1
    if (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        return 0
    fi
    if command -v ss >/dev/null 2>&1; then
        [[ -n $(ss -Htan "( sport = :$p )" 2>/dev/null) ]] && return 0
    fi
    return 1
}

# Prints a TCP port on 127.0.0.1 that nothing listens on and that this test has not handed
# out before (remembered in $NT_TMP/ports, so it also works from a command substitution).
# Picks below the kernel's ephemeral range so outgoing connections do not collide.
nt_free_port() {
    local i p lo=20000 hi=32000 reg="$NT_TMP/ports"
    for ((i = 0; i < 200; i++)); do
        p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo)))
        if [[ -f $reg ]] && grep -qx "$p" "$reg"; then
            continue
        fi
        if nt__port_in_use "$p"; then
            continue
        fi
        printf '%s\n' "$p" >>"$reg"
        printf '%s\n' "$p"
        return 0
    done
    nt_fail "could not find a free loopback port"
}

# ---- waiting ---------------------------------------------------------------------------------
# nt_wait_for DESCRIPTION DEADLINE_S COMMAND...
# Runs COMMAND every 0.2 s until it exits 0 (its output is kept in NT_LAST). On timeout,
# prints the description, the command's last output and the logs, and fails the test.
nt_wait_for() {
    local desc=$1 deadline=$2 out="" end
    shift 2
    end=$(($(nt_now_ms) + deadline * 1000))
    while :; do
        if out=$("$@" 2>&1); then
            NT_LAST=$out
            return 0
        fi
        if (($(nt_now_ms) >= end)); then
            NT_LAST=$out
            nt_fail "timed out after ${deadline}s waiting for: $desc (last value: ${out:-<empty>})"
        fi
        nt__check_collectors "$desc"
        sleep 0.2
    done
}

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

# nt_hold DESCRIPTION DURATION_S COMMAND...: COMMAND must keep succeeding, checked every
# 0.2 s, for DURATION_S seconds (used to keep a fault in place while checking an invariant).
nt_hold() {
    local desc=$1 duration=$2 out="" end
    shift 2
    end=$(($(nt_now_ms) + duration * 1000))
    while (($(nt_now_ms) < end)); do
        if ! out=$("$@" 2>&1); then
            nt_fail "stopped holding: $desc (last value: ${out:-<empty>})"
        fi
        sleep 0.2
    done
}

# ---- assertions ------------------------------------------------------------------------------
# nt_expect_eq LABEL EXPECTED ACTUAL: prints the check with its figures; a mismatch is
# counted (the test goes on, so that every figure is printed) and fails the test at the end.
nt_expect_eq() {
    NT_CHECKS=$((NT_CHECKS + 1))
    if [[ "$2" == "$3" ]]; then
        printf 'ok   %s: %s\n' "$1" "$2"
    else
        NT_FAILS=$((NT_FAILS + 1))
        printf 'FAIL %s: expected %s, got %s\n' "$1" "$2" "$3"
    fi
}

# nt_expect_true LABEL COMMAND...: the command must succeed.
nt_expect_true() {
    local label=$1
    shift
    NT_CHECKS=$((NT_CHECKS + 1))
    if "$@"; then
        printf 'ok   %s\n' "$label"
    else
        NT_FAILS=$((NT_FAILS + 1))
        printf 'FAIL %s\n' "$label"
    fi
}

# nt_check_logs_clean: no sanitizer report in any log of this test.
nt_check_logs_clean() {
    local hits
    hits=$(grep -lE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|ThreadSanitizer' \
        "$NT_TMP"/*.log 2>/dev/null | xargs -r -n1 basename | tr '\n' ' ') || true
    hits=${hits% }
    nt_expect_eq "sanitizer reports in the logs" none "${hits:-none}"
}

# Ends the test: stops the collectors still running with SIGTERM (each must exit 0 within
# 10 s: the shutdown contract, and where the sanitizers report leaks), checks the logs for
# sanitizer reports, prints the tally and exits 1 if any check failed.
nt_finish() {
    local name
    for name in "${!NT_CPID[@]}"; do
        nt_stop_collector "$name" TERM 20
        nt_expect_eq "collector $name exit code after SIGTERM" 0 "$NT_EXIT_CODE"
        nt_expect_true "collector $name exited within 10 s (${NT_EXIT_MS} ms)" \
            test "$NT_EXIT_MS" -le 10000
    done
    nt_check_logs_clean
    if ((NT_FAILS > 0)); then
        nt_log "$NT_FAILS of $NT_CHECKS checks FAILED"
        exit 1
    fi
    nt_log "all $NT_CHECKS checks passed"
    exit 0
}

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

# Stops a process: SIGTERM, up to $2 seconds, then SIGKILL. Reaps it if it is our child.
nt__stop_pid() {
    local pid=$1 grace=${2:-10} end
    [[ -n $pid ]] || return 0
    kill -0 "$pid" 2>/dev/null || {
        wait "$pid" 2>/dev/null || true
        return 0
    }
    kill -TERM "$pid" 2>/dev/null || true
    end=$(($(nt_now_ms) + grace * 1000))
    while nt_pid_alive "$pid" && (($(nt_now_ms) < end)); do
        sleep 0.1
    done
    if nt_pid_alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
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

# Is the process alive (running, not a zombie)?
nt_pid_alive() {
    local pid=$1 state
    kill -0 "$pid" 2>/dev/null || return 1
    state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z && $state != X ]]
}

nt_pid_dead() {
    ! nt_pid_alive "$1"
}

# ---- PostgreSQL ------------------------------------------------------------------------------
nt__find_pg_bin() {
    local d
    if [[ -n $NT_PG_BIN ]]; then
        return 0
    fi
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        NT_PG_BIN=$(dirname "$(readlink -f "$(command -v initdb)")")
    else
        # Debian keeps the server binaries out of PATH: take the newest version.
        d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
            sort -V | tail -n 1)
        [[ -n $d && -x $d/initdb ]] ||
            nt_fail "PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql"
        NT_PG_BIN=$d
    fi
    command -v psql >/dev/null 2>&1 || nt_fail "psql not found; install postgresql-client"
}

# The user PostgreSQL runs as: the current user, or when root an unprivileged system user.
nt__pg_user() {
    if [[ -n $NT_PG_USER ]]; then
        printf '%s\n' "$NT_PG_USER"
    elif ((EUID == 0)); then
        printf 'postgres\n'
    else
        id -un
    fi
}

# Runs a PostgreSQL server command as the PostgreSQL user, from a directory it can read.
nt__as_pg() {
    local user
    user=$(nt__pg_user)
    if [[ $user == "$(id -un)" ]]; then
        (cd "$NT_PG_DIR" && "$@")
    else
        (cd "$NT_PG_DIR" && runuser -u "$user" -- "$@")
    fi
}

nt__pg_ready() {
    "$NT_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$NT_PG_PORT" -U postgres -d postgres -t 2
}

nt__pg_not_running() {
    ! [[ -f $NT_PG_DIR/data/postmaster.pid ]]
}

# nt_start_pg: creates (first call) and starts a cluster in $NT_PG_DIR on a free port,
# creates database needletrace; exports NT_PG_PORT and NEEDLETRACE_DATABASE_URL.
# Later calls start the same cluster on the same port again.
nt_start_pg() {
    local user dir="$NT_PG_DIR" attempt
    nt__find_pg_bin
    user=$(nt__pg_user)
    if [[ ! -f $dir/data/PG_VERSION ]]; then
        id "$user" >/dev/null 2>&1 ||
            nt_fail "user $user does not exist (needed to run PostgreSQL unprivileged as root)"
        mkdir -p "$dir/sock"
        if ((EUID == 0)) && [[ $user != root ]]; then
            chown -R "$user:" "$dir"
            nt__user_can_traverse "$user" "$dir" ||
                nt_fail "user $user cannot reach $dir; use a TMPDIR every user can traverse"
        fi
        chmod 700 "$dir"
        nt__as_pg "$NT_PG_BIN/initdb" --auth=trust -U postgres -E UTF8 --locale=C \
            --no-sync --no-instructions -D "$dir/data" >"$NT_TMP/initdb.out" 2>&1 ||
            {
                cat "$NT_TMP/initdb.out" >&2
                nt_fail "initdb failed"
            }
    fi
    for attempt in 1 2 3; do
        if [[ -z $NT_PG_PORT || ${NT_PG_FRESH_PORT:-0} == 1 ]]; then
            NT_PG_PORT=$(nt_free_port)
        fi
        # The settings that matter for the tests; the last occurrence in the file wins.
        nt__as_pg tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF
# ---- needletrace test harness ----
listen_addresses = '127.0.0.1'
port = $NT_PG_PORT
unix_socket_directories = '$dir/sock'
fsync = on
synchronous_commit = on
full_page_writes = on
shared_buffers = 32MB
max_connections = 50
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
EOF
        nt__as_pg "$NT_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -W -s start ||
            nt_fail "pg_ctl start failed"
        if nt__wait_quiet 60 nt__pg_ready; then
            break
        fi
        # the port may have been taken between the check and the bind: try another one
        nt_log "PostgreSQL did not come up on port $NT_PG_PORT (attempt $attempt)"
        nt__as_pg "$NT_PG_BIN/pg_ctl" -D "$dir/data" -m immediate -s stop >/dev/null 2>&1 || true
        NT_PG_FRESH_PORT=1
        ((attempt < 3)) || nt_fail "PostgreSQL did not start"
    done
    NT_PG_FRESH_PORT=0
    export NT_PG_PORT
    export NEEDLETRACE_DATABASE_URL="host=127.0.0.1 port=$NT_PG_PORT user=postgres dbname=needletrace"
    if [[ -z $(nt_psql postgres "SELECT 1 FROM pg_database WHERE datname = 'needletrace'") ]]; then
        nt_psql postgres "CREATE DATABASE needletrace" >/dev/null || nt_fail "createdb failed"
    fi
    nt_log "PostgreSQL $(nt_psql postgres 'SHOW server_version') up on 127.0.0.1:$NT_PG_PORT as $user"
}

# Waits quietly (no failure) for COMMAND to succeed; returns 1 on timeout.
nt__wait_quiet() {
    local deadline=$1 end
    shift
    end=$(($(nt_now_ms) + deadline * 1000))
    until "$@" >/dev/null 2>&1; do
        (($(nt_now_ms) < end)) || return 1
        sleep 0.2
    done
}

# nt_stop_pg [MODE]: stops PostgreSQL (fast by default: a clean shutdown; immediate = crash).
nt_stop_pg() {
    local mode=${1:-fast} pid
    [[ -f $NT_PG_DIR/data/postmaster.pid ]] || return 0
    pid=$(head -n 1 "$NT_PG_DIR/data/postmaster.pid" 2>/dev/null)
    nt__as_pg "$NT_PG_BIN/pg_ctl" -D "$NT_PG_DIR/data" -m "$mode" -s -t 60 stop >/dev/null 2>&1 ||
        true
    if [[ -n $pid ]] && nt_pid_alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    nt__wait_quiet 30 nt__pg_not_running || rm -f "$NT_PG_DIR/data/postmaster.pid"
}

nt_restart_pg() {
    nt_stop_pg "${1:-fast}"
    nt_start_pg
}

# nt_psql DB SQL: runs SQL against database DB, prints rows unaligned (fields | separated).
nt_psql() {
    psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$NT_PG_PORT" -U postgres -d "$1" -c "$2"
}

# nt_sql SQL: against database needletrace.
nt_sql() {
    nt_psql needletrace "$1"
}

# nt_sql_eq EXPECTED SQL: prints the value; succeeds when it equals EXPECTED (for nt_wait_for).
nt_sql_eq() {
    local v
    v=$(nt_sql "$2") || return 1
    printf '%s\n' "$v"
    [[ $v == "$1" ]]
}

# nt_sql_ge MIN SQL: prints the (integer) value; succeeds when it is >= MIN.
nt_sql_ge() {
    local v
    v=$(nt_sql "$2") || return 1
    printf '%s\n' "$v"
    [[ $v =~ ^[0-9]+$ ]] && ((v >= $1))
}

# nt_sql_gt MIN SQL: succeeds when the integer value is > MIN.
nt_sql_gt() {
    nt_sql_ge "$(($1 + 1))" "$2"
}

nt_count() {
    nt_sql "SELECT count(*) FROM needletrace.$1"
}

# ---- mosquitto -------------------------------------------------------------------------------
nt__broker_conf() {
    local dir=$1 port=$2
    cat <<EOF
# needletrace test harness broker
listener $port 127.0.0.1
allow_anonymous true
# Persistent sessions and their queued QoS 1 messages survive a restart: mosquitto saves
# its in-memory database on a clean shutdown (SIGTERM) and every autosave_interval seconds.
persistence true
persistence_location $dir/
persistence_file mosquitto.db
autosave_interval 30
# Never drop queued messages for an offline persistent session (the collector's).
max_queued_messages 0
max_queued_bytes 0
# The collector acknowledges a burst at a time, after one fdatasync: let enough be in flight.
max_inflight_messages 1000
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
log_type subscribe
log_type unsubscribe
connection_messages true
EOF
    if ((EUID == 0)); then
        if id mosquitto >/dev/null 2>&1; then
            printf 'user mosquitto\n'
        else
            printf 'user root\n'
        fi
    fi
}

nt__broker_ready() {
    if command -v mosquitto_pub >/dev/null 2>&1; then
        timeout 5 mosquitto_pub -h 127.0.0.1 -p "$NT_BROKER_PORT" -q 1 \
            -t needletrace-harness/ping -m ping -i "nt-harness-ping-$$" >/dev/null 2>&1
    else
        (: <"/dev/tcp/127.0.0.1/$NT_BROKER_PORT") 2>/dev/null
    fi
}

# nt_start_broker: mosquitto on 127.0.0.1 (free port, kept across restarts) with persistence
# in $NT_TMP/broker; exports NT_BROKER_PORT and NEEDLETRACE_MQTT_URL.
nt_start_broker() {
    local dir="$NT_TMP/broker" attempt
    mkdir -p "$dir"
    for attempt in 1 2 3; do
        if [[ -z $NT_BROKER_PORT || ${NT_BROKER_FRESH_PORT:-0} == 1 ]]; then
            NT_BROKER_PORT=$(nt_free_port)
        fi
        nt__broker_conf "$dir" "$NT_BROKER_PORT" >"$dir/mosquitto.conf"
        if ((EUID == 0)) && id mosquitto >/dev/null 2>&1; then
            # mosquitto drops to user mosquitto: it must own its persistence directory
            chown mosquitto: "$dir"
            [[ ! -f $dir/mosquitto.db ]] || chown mosquitto: "$dir/mosquitto.db"
        fi
        mosquitto -c "$dir/mosquitto.conf" >>"$NT_TMP/broker.log" 2>&1 &
        NT_BROKER_PID=$!
        if nt__wait_quiet 30 nt__broker_ready; then
            break
        fi
        nt_log "mosquitto did not come up on port $NT_BROKER_PORT (attempt $attempt)"
        nt__stop_pid "$NT_BROKER_PID" 5
        NT_BROKER_PID=""
        NT_BROKER_FRESH_PORT=1
        ((attempt < 3)) || nt_fail "mosquitto did not start"
    done
    NT_BROKER_FRESH_PORT=0
    export NT_BROKER_PORT
    export NEEDLETRACE_MQTT_URL="mqtt://127.0.0.1:$NT_BROKER_PORT"
    nt_log "mosquitto up on 127.0.0.1:$NT_BROKER_PORT (pid $NT_BROKER_PID)"
}

# nt_stop_broker: SIGTERM (mosquitto saves its database), wait for the exit, SIGKILL after 20 s.
nt_stop_broker() {
    [[ -n $NT_BROKER_PID ]] || return 0
    nt__stop_pid "$NT_BROKER_PID" 20
    NT_BROKER_PID=""
}

nt_restart_broker() {
    nt_stop_broker
    nt_start_broker
}

# ---- needletrace -----------------------------------------------------------------------------
nt_migrate() {
    "$NT_BIN" migrate >>"$NT_TMP/migrate.log" 2>&1 || nt_fail "needletrace migrate failed"
}

# nt_start_collector [NAME] [VAR=VALUE...]: starts `needletrace run` in the background with
# its own journal dir, client id and http port; stderr/stdout to $NT_TMP/collector-NAME.log.
# Extra VAR=VALUE arguments go into its environment (e.g. NT_TEST_KILL_BEFORE_JOURNAL=50).
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

# nt_simulate OUT_JSON ARGS...: runs `needletrace simulate ARGS` in the foreground; its JSON
# summary goes to OUT_JSON, its stderr to $NT_TMP/simulate.log.
nt_simulate() {
    local out=$1
    shift
    nt_log "simulate $*"
    "$NT_BIN" simulate "$@" >"$out" 2>>"$NT_TMP/simulate.log" ||
        nt_fail "needletrace simulate $* failed (exit $?)"
    jq -e . "$out" >/dev/null 2>&1 || nt_fail "simulate did not print a JSON object: $(head -c 500 "$out")"
    nt_log "simulate done: $(jq -c '{messages_published, duplicates_published, events_generated, elapsed_s, rate_msgs_per_s}' "$out")"
}

# nt_simulate_bg OUT_JSON ARGS...: the same in the background; sets NT_SIM_PID.
nt_simulate_bg() {
    local out=$1
    shift
    nt_log "simulate (background) $*"
    "$NT_BIN" simulate "$@" >"$out" 2>>"$NT_TMP/simulate.log" &
    NT_SIM_PID=$!
    NT_BG_PIDS+=("$NT_SIM_PID")
}

# nt_wait_simulate OUT_JSON [DEADLINE]: waits for the background simulate; checks its exit.
nt_wait_simulate() {
    local out=$1 deadline=${2:-300} rc=0
    nt_wait_for "simulate (pid $NT_SIM_PID) to finish" "$deadline" nt_pid_dead "$NT_SIM_PID"
    wait "$NT_SIM_PID" || rc=$?
    ((rc == 0)) || nt_fail "needletrace simulate failed (exit $rc)"
    jq -e . "$out" >/dev/null 2>&1 || nt_fail "simulate did not print a JSON object: $(head -c 500 "$out")"
    nt_log "simulate done: $(jq -c '{messages_published, duplicates_published, events_generated, elapsed_s, rate_msgs_per_s}' "$out")"
}

# nt_json FILE FILTER: one value from a simulate summary (jq -r).
nt_json() {
    jq -r "$2" "$1"
}

# nt_json_sum FILTER FILE...: the sum of an integer field over several summaries.
nt_json_sum() {
    local filter=$1
    shift
    jq -s "map($filter) | add" "$@"
}

# Prints events raw quarantine, space separated.
nt_counts() {
    nt_sql "SELECT (SELECT count(*) FROM needletrace.events) || ' ' ||
                   (SELECT count(*) FROM needletrace.raw_messages) || ' ' ||
                   (SELECT count(*) FROM needletrace.quarantine)"
}

# Succeeds when the counts are at least the targets and have stayed the same over the last
# six polls (about 1.2 s: the collector has drained); prints them. The state lives in a file
# because nt_wait_for runs the command in a subshell.
nt__counts_settled() {
    local e=$1 r=$2 q=$3 c prev="" streak=0 state="$NT_TMP/.counts_state" ce cr cq
    c=$(nt_counts) || return 1
    printf '%s\n' "$c"
    if [[ -f $state ]]; then
        IFS='|' read -r prev streak <"$state"
    fi
    if [[ $c == "$prev" ]]; then
        streak=$((streak + 1))
    else
        streak=0
    fi
    printf '%s|%s\n' "$c" "$streak" >"$state"
    read -r ce cr cq <<<"$c"
    ((ce >= e && cr >= r && cq >= q && streak >= 6))
}

# nt_wait_totals EVENTS RAW QUARANTINE [DEADLINE]: waits until the database holds at least
# these counts and they have stopped moving, then asserts they are exact.
nt_wait_totals() {
    local e=$1 r=$2 q=$3 deadline=${4:-300} ce cr cq
    rm -f "$NT_TMP/.counts_state"
    nt_wait_for "events >= $e, raw_messages >= $r, quarantine >= $q, then no change for 1.2 s" \
        "$deadline" nt__counts_settled "$e" "$r" "$q"
    read -r ce cr cq <<<"$NT_LAST"
    nt_expect_eq "events rows" "$e" "$ce"
    nt_expect_eq "raw_messages rows" "$r" "$cr"
    nt_expect_eq "quarantine rows" "$q" "$cq"
}

# nt_wait_counts SUMMARY_JSON... [-- DEADLINE]: nt_wait_totals with the sums of the summaries'
# expected counts.
nt_wait_counts() {
    local deadline=300 files=()
    while (($#)); do
        if [[ $1 == -- ]]; then
            deadline=$2
            break
        fi
        files+=("$1")
        shift
    done
    nt_wait_totals "$(nt_json_sum .expected.events "${files[@]}")" \
        "$(nt_json_sum .expected.raw_messages "${files[@]}")" \
        "$(nt_json_sum .expected.quarantine "${files[@]}")" "$deadline"
}

# nt_check_no_duplicate_keys: no (clinic_id, device_serial, boot_id, seq) twice in events.
nt_check_no_duplicate_keys() {
    nt_expect_eq "duplicate event keys" 0 "$(nt_sql "SELECT count(*) FROM (
        SELECT 1 FROM needletrace.events GROUP BY clinic_id, device_serial, boot_id, seq
        HAVING count(*) > 1) d")"
}

# nt_check_breakdown LABEL JSON_FILTER SQL_COLUMN TABLE SUMMARY_JSON...: compares a
# key->count map of the summaries (summed) with SELECT col, count(*) GROUP BY col.
nt_check_breakdown() {
    local label=$1 filter=$2 col=$3 table=$4 want got
    shift 4
    want=$(jq -rs "map($filter // {} | to_entries) | add | group_by(.key)
                   | map({key: .[0].key, value: (map(.value) | add)}) | map(select(.value > 0))
                   | sort_by(.key) | map(\"\(.key)=\(.value)\") | join(\" \")" "$@")
    got=$(nt_sql "SELECT coalesce(string_agg(k || '=' || n, ' ' ORDER BY k COLLATE \"C\"), '')
                  FROM (SELECT $col::text AS k, count(*) AS n FROM needletrace.$table
                        GROUP BY 1) s")
    nt_expect_eq "$label" "$want" "$got"
}

# ---- compliance rules and alerts (used by test_rules_*.sh) -----------------------------------
# The rules of DESIGN §3, in that order.
NT_RULES=(CARTRIDGE_REUSED CARTRIDGE_EXPIRED STERILE_BARRIER_BROKEN CARTRIDGE_RECALLED
    DEPTH_OUT_OF_RANGE NEEDLING_WITHOUT_CARTRIDGE SEQUENCE_GAP CLOCK_SKEW)

# nt_alerts_by_rule: "RULE=n" for every rule (zeros included), in DESIGN order, then "other=n"
# when alerts with a rule name outside the list exist.
nt_alerts_by_rule() {
    local rules
    rules=$(printf "'%s'," "${NT_RULES[@]}")
    nt_sql "WITH a AS (SELECT rule, count(*) AS n FROM needletrace.alerts GROUP BY rule)
            SELECT concat_ws(' ',
                (SELECT string_agg(u.r || '=' || coalesce(a.n, 0), ' ' ORDER BY u.o)
                   FROM unnest(ARRAY[${rules%,}]) WITH ORDINALITY AS u(r, o)
                   LEFT JOIN a ON a.rule = u.r),
                (SELECT 'other=' || sum(a.n) FROM a WHERE a.rule <> ALL (ARRAY[${rules%,}])
                 HAVING sum(a.n) > 0))"
}

# nt_expected_alerts_by_rule SUMMARY_JSON...: the same, summed over simulate summaries'
# "expected"."alerts_by_rule" (a rule missing from a summary counts 0).
nt_expected_alerts_by_rule() {
    local rules
    rules=$(printf '"%s",' "${NT_RULES[@]}")
    jq -rs "[${rules%,}] as \$r | map(.expected.alerts_by_rule // {}) as \$s
            | \$r | map(. as \$k | \"\(\$k)=\(\$s | map(.[\$k] // 0) | add)\") | join(\" \")" "$@"
}

# Boots with a possible gap still open (settled_seq < max_seq): while any is open, the time-based
# SEQUENCE_GAP rule (and NEEDLING_WITHOUT_CARTRIDGE behind it) may still raise alerts.
nt_open_boots() {
    nt_sql "SELECT count(*) FROM needletrace.boot_progress WHERE settled_seq < max_seq"
}

# nt__alerts_settled MIN: every boot settled, at least MIN alerts, and the alert count unchanged
# over the last five polls; prints "alerts open_boots".
nt__alerts_settled() {
    local min=$1 v n open prev="" streak=0 state="$NT_TMP/.alerts_state"
    v=$(nt_sql "SELECT (SELECT count(*) FROM needletrace.alerts) || ' ' ||
                       (SELECT count(*) FROM needletrace.boot_progress WHERE settled_seq < max_seq)") ||
        return 1
    printf '%s\n' "$v"
    read -r n open <<<"$v"
    if [[ -f $state ]]; then
        IFS='|' read -r prev streak <"$state"
    fi
    if [[ $v == "$prev" ]]; then
        streak=$((streak + 1))
    else
        streak=0
    fi
    printf '%s|%s\n' "$v" "$streak" >"$state"
    ((open == 0 && n >= min && streak >= 5))
}

# nt_wait_alerts_settled MIN DEADLINE_S: waits until every boot is settled, at least MIN alerts
# exist and their count has stopped moving. Does not fail on timeout (the caller compares the
# figures, which says more than a timeout); returns 1 then. Sets NT_LAST to "alerts open_boots".
nt_wait_alerts_settled() {
    local min=$1 deadline=$2
    rm -f "$NT_TMP/.alerts_state"
    if nt__wait_quiet "$deadline" nt__alerts_settled "$min"; then
        NT_LAST=$(nt__alerts_settled "$min" 2>/dev/null | head -n 1)
        return 0
    fi
    NT_LAST=$(nt__alerts_settled "$min" 2>/dev/null | head -n 1)
    nt_log "alerts not settled after ${deadline}s (alerts, open boots: $NT_LAST; wanted >= $min alerts)"
    return 1
}

# nt_check_alerts_by_rule LABEL SUMMARY_JSON...: alerts per rule in the database (every rule,
# zeros included) equal the simulators' expected.alerts_by_rule summed.
nt_check_alerts_by_rule() {
    local label=$1
    shift
    nt_expect_eq "$label" "$(nt_expected_alerts_by_rule "$@")" "$(nt_alerts_by_rule)"
}

# nt_start_alert_sub NAME [mosquitto_sub options...]: subscribes to clinics/+/alerts/# at QoS 1
# (-v: "topic payload" lines to $NT_TMP/alerts-NAME.out) with client id nt-alerts-NAME and
# waits until the broker has logged the subscription. Extra options, e.g. -c for a persistent
# session. Sets NT_SUB_PID.
nt_start_alert_sub() {
    local name=$1
    shift
    mosquitto_sub -h 127.0.0.1 -p "$NT_BROKER_PORT" -q 1 -v -i "nt-alerts-$name" "$@" \
        -t 'clinics/+/alerts/#' >>"$NT_TMP/alerts-$name.out" 2>>"$NT_TMP/alerts-sub-$name.log" &
    NT_SUB_PID=$!
    NT_BG_PIDS+=("$NT_SUB_PID")
    nt_wait_for "alert subscriber nt-alerts-$name subscribed" 30 grep -qE \
        "^[0-9]+: nt-alerts-$name 1 clinics/\+/alerts/#" "$NT_TMP/broker.log"
    nt_log "alert subscriber nt-alerts-$name up (pid $NT_SUB_PID${*:+, $*})"
}

# nt_alert_sub_by_rule NAME: "RULE=n" per rule (zeros included) of the messages NAME received,
# counted by topic (clinics/{clinic}/alerts/{rule}); "other=n" for topics outside the rules.
nt_alert_sub_by_rule() {
    local rules
    rules=$(printf '%s ' "${NT_RULES[@]}")
    awk -v rules="${rules% }" '
        BEGIN { n = split(rules, r, " "); for (i = 1; i <= n; i++) c[r[i]] = 0 }
        { split($1, t, "/"); if (t[4] in c) c[t[4]]++; else other++ }
        END { s = ""; for (i = 1; i <= n; i++) s = s (i > 1 ? " " : "") r[i] "=" c[r[i]];
              if (other > 0) s = s " other=" other; print s }' "$NT_TMP/alerts-$1.out" 2>/dev/null
}
