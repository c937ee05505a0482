#!/usr/bin/env bash
# run.sh -- the needletrace benchmark: broker drain rate, PostgreSQL COPY rate, the collector's
# publish->committed rate, publish->commit latency, event->alert-on-MQTT latency and peak RSS,
# all in one run on loopback.
#
# usage: tests/bench/run.sh [BUILD_DIR]        (default: ./build of the repository)
#
# Starts its own mosquitto and PostgreSQL (fsync on) in a temp dir, measures, prints the
# figures, the ratios and PASS/MISS against the targets of issues 2 and 3, and stops everything.
# Exit 0 whenever it could measure (a missed target is a figure, not a failure); non-zero only
# when something broke. See tests/bench/README.md for what each figure means.
#
# Knobs (environment):
#   BENCH_EVENTS_1=400000    events (= messages) in each 1-event-message run
#   BENCH_EVENTS_50=1500000  events in each 50-event-message run (and in the COPY runs)
#   BENCH_LAT_S=15           duration of the latency run at half the maximum rate
#   BENCH_ALERT_RATE=0.02    --too-deep-rate of the latency run: the share of needle settings
#                            that violate the depth policy (each raises one alert, measured (f))
#   BENCH_PGSS=1             load pg_stat_statements (track = all) and print the statements
#                            that took the most time during the latency run (costs a little
#                            throughput in every run, so off by default)
#   BENCH_CLINICS=10 BENCH_DEVICES=20   the simulated fleet (clinics x handpieces each)
#   BENCH_PERF=1             also sample the collector, its PostgreSQL backend and mosquitto
#                            with `perf record` during each (c) run and print the top symbols
#   BENCH_COLLECTOR_ENV="NEEDLETRACE_BATCH_MAX_DELAY_MS=10 ..."  extra collector settings
#                            (NEEDLETRACE_LOG_LEVEL=debug logs one line per commit)
#   NT_KEEP=1                keep the temp dir (logs, dumps, perf data)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/../.." && pwd)
BUILD=${1:-$ROOT/build}
BUILD=$(cd "$BUILD" 2>/dev/null && pwd) || {
    echo "bench: build directory not found: ${1:-$ROOT/build}" >&2
    exit 2
}

EVENTS_1=${BENCH_EVENTS_1:-400000}
EVENTS_50=${BENCH_EVENTS_50:-1500000}
LAT_S=${BENCH_LAT_S:-15}
ALERT_RATE=${BENCH_ALERT_RATE:-0.02}
CLINICS=${BENCH_CLINICS:-10}
DEVICES=${BENCH_DEVICES:-20}

export NT_TEST_NAME=bench
# shellcheck source=../integration/lib.sh
source "$ROOT/tests/integration/lib.sh"
nt_setup "$BUILD/needletrace"
command -v pkg-config >/dev/null 2>&1 || nt_fail "pkg-config is not installed"
if [[ ${BENCH_PERF:-0} == 1 ]]; then
    perf record -o /dev/null -- true >/dev/null 2>&1 ||
        nt_fail "BENCH_PERF=1 but perf record does not work here (see README.md: callgrind)"
fi

# ---- helpers ---------------------------------------------------------------------------------
# f EXPR: evaluates a floating-point awk expression, prints it with %.Nf (default 0 decimals).
f() {
    awk -v d="${2:-0}" "BEGIN { printf \"%.*f\", d, ($1) }"
}

# pct CPU_SECONDS_EXPR WALL: CPU use in percent of one core.
pct() {
    f "100 * ($1) / $2"
    printf '%%'
}

# others CPU_SECONDS_EXPR WALL: the CPU of everything but the measured processes (kernel
# threads, this script, other workloads), flagged when it is large enough to skew the run.
others() {
    local p
    p=$(f "100 * ($1) / $2")
    printf 'everything else %s%% (over %s s, of %s%%)' "$p" "$2" "$(($(nproc) * 100))"
    if ((p > 25)); then
        printf ' <- DISTURBED by other load'
    fi
}

# Succeeds when the awk condition holds.
cond() {
    awk "BEGIN { exit !($1) }"
}

now_s() {
    printf '%s\n' "${EPOCHREALTIME/,/.}"
}

# CPU seconds (user + system) used so far by the given pids (dead ones count 0).
cpu_s() {
    local pid total=0 t
    for pid in "$@"; do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null) || t=0
        total=$((total + ${t:-0}))
    done
    f "$total / $(getconf CLK_TCK)" 3
}

# CPU seconds the whole machine has been busy (all CPUs, every process and the kernel).
machine_busy_s() {
    awk '$1 == "cpu" { print ($2 + $3 + $4 + $7 + $8 + $9) / '"$(getconf CLK_TCK)"'; exit }' /proc/stat
}

# The postmaster and all its children (one per line).
pg_pids() {
    local pm
    pm=$(head -n 1 "$NT_PG_DIR/data/postmaster.pid")
    printf '%s\n' "$pm"
    pgrep -P "$pm" || true
}

# Reads the children's CPU time that `times` wrote into FILE (second line): seconds.
times_s() {
    awk 'NR == 2 { n = split($0, a, /[ms]+/); t = 0
                   for (i = 1; i + 1 <= n; i += 2) t += a[i] * 60 + a[i + 1]; print t }' "$1"
}

# perf_start NAME PID...: samples the pids (with call graphs) until perf_stop.
perf_start() {
    local name=$1 pids
    shift
    pids=$(
        IFS=,
        printf '%s' "$*"
    )
    perf record -F 499 -g -o "$NT_TMP/perf-$name.data" -p "$pids" >"$NT_TMP/perf-$name.log" 2>&1 &
    PERF_PID=$!
    NT_BG_PIDS+=("$PERF_PID")
    sleep 0.3 # perf attaches asynchronously
}

# perf_stop NAME: stops the sampling; writes the share of samples per process and the top
# symbols (self time) of each process to $NT_TMP/perf-NAME.top.
perf_stop() {
    local name=$1 data=$NT_TMP/perf-$1.data comm
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    {
        printf '  samples by process:'
        perf report -i "$data" --stdio --no-children -g none --sort comm 2>/dev/null |
            awk '!/^#/ && NF >= 2 { printf "  %s %s", $2, $1 } END { printf "\n" }'
        for comm in needletrace postgres mosquitto; do
            printf '  top symbols of %s (%% of its own samples):\n' "$comm"
            # comm must stay in the sort keys: without it perf merges the other processes'
            # samples of the same symbol into the filtered list.
            perf report -i "$data" --stdio --no-children -g none --comms "$comm" \
                --sort comm,dso,symbol --percentage relative 2>/dev/null |
                awk '!/^#/ && NF > 0' | head -n 10 |
                sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/^/    /'
        done
    } >"$NT_TMP/perf-$name.top" || true
}

# metric NAME: prints the collector's counter needletrace_NAME; fails when it cannot be read.
metric() {
    local v
    v=$(nt_http bench /metrics | awk -v n="needletrace_$1" '$1 == n { print $2; exit }') || return 1
    [[ $v =~ ^[0-9]+$ ]] || return 1
    printf '%s\n' "$v"
}

# ---- the measuring tool --------------------------------------------------------------------
TOOL=$BUILD/bench_tool
if [[ ! -x $TOOL ]]; then
    TOOL=$NT_TMP/bench_tool
    for lib in nt_batch nt_decoder nt_proto nt_common; do
        [[ -f $BUILD/lib$lib.a ]] || nt_fail "$BUILD/lib$lib.a not found: build the project first"
    done
    # shellcheck disable=SC2046 # pkg-config prints several words on purpose
    gcc -O2 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter \
        -I"$ROOT/include" -I"$BUILD/proto" $(pkg-config --cflags libpq libprotobuf-c) \
        "$BENCH_DIR/bench_tool.c" \
        "$BUILD/libnt_batch.a" "$BUILD/libnt_decoder.a" "$BUILD/libnt_proto.a" \
        "$BUILD/libnt_common.a" \
        $(pkg-config --libs libmosquitto libpq libprotobuf-c libcrypto) -o "$TOOL" \
        >"$NT_TMP/bench_tool-build.log" 2>&1 ||
        {
            cat "$NT_TMP/bench_tool-build.log" >&2
            nt_fail "could not build bench_tool"
        }
fi

# ---- broker: no persistence, no queue or in-flight limit -----------------------------------
bench_start_broker() {
    local dir=$NT_TMP/broker
    mkdir -p "$dir"
    NT_BROKER_PORT=$(nt_free_port)
    {
        printf 'listener %s 127.0.0.1\n' "$NT_BROKER_PORT"
        cat <<'EOF'
allow_anonymous true
persistence false
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 0
max_inflight_bytes 0
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
log_type subscribe
connection_messages true
EOF
        if ((EUID == 0)); then
            if id mosquitto >/dev/null 2>&1; then
                printf 'user mosquitto\n'
            else
                printf 'user root\n'
            fi
        fi
    } >"$dir/mosquitto.conf"
    mosquitto -c "$dir/mosquitto.conf" >>"$NT_TMP/broker.log" 2>&1 &
    NT_BROKER_PID=$! # stopped by the harness's exit trap
    nt_wait_for "mosquitto listening on 127.0.0.1:$NT_BROKER_PORT" 30 \
        bash -c ": </dev/tcp/127.0.0.1/$NT_BROKER_PORT"
    export NT_BROKER_PORT
    export NEEDLETRACE_MQTT_URL="mqtt://127.0.0.1:$NT_BROKER_PORT"
    nt_log "mosquitto $(mosquitto -h 2>/dev/null | awk 'NR == 1 { print $3 }') up on 127.0.0.1:$NT_BROKER_PORT (pid $NT_BROKER_PID)"
}

# ---- PostgreSQL: the harness's cluster (fsync on), a production-sized buffer pool ----------
bench_start_pg() {
    nt_start_pg
    # track_commit_timestamp gives each row's real commit time (pg_xact_commit_timestamp(xmin))
    # for the end of each throughput run and the latency figures; it costs a few bytes per commit.
    nt_psql postgres "ALTER SYSTEM SET shared_buffers = '256MB'" >/dev/null
    nt_psql postgres "ALTER SYSTEM SET track_commit_timestamp = on" >/dev/null
    # Room for the whole run's WAL (~2 GB) between the explicit CHECKPOINTs before each phase,
    # as an ingest server is tuned; with the 1 GB default a checkpoint lands inside a phase.
    nt_psql postgres "ALTER SYSTEM SET max_wal_size = '4GB'" >/dev/null
    # Per-function call counts and times (pg_stat_user_functions): what evaluate_rules costs
    # per batch in the latency run. Only PL/pgSQL functions are timed; negligible overhead.
    nt_psql postgres "ALTER SYSTEM SET track_functions = 'pl'" >/dev/null
    if [[ ${BENCH_PGSS:-0} == 1 ]]; then
        nt_psql postgres "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" >/dev/null
    fi
    nt_restart_pg fast
    if [[ ${BENCH_PGSS:-0} == 1 ]]; then
        # Known only once the module is loaded; a reload is enough.
        nt_psql postgres "ALTER SYSTEM SET pg_stat_statements.track = 'all'" >/dev/null
        nt_psql postgres "SELECT pg_reload_conf()" >/dev/null
    fi
    nt_log "PostgreSQL settings: $(nt_psql postgres "SELECT string_agg(name || '=' ||
        current_setting(name), ' ' ORDER BY name) FROM pg_settings WHERE name IN ('fsync',
        'synchronous_commit', 'full_page_writes', 'wal_sync_method', 'shared_buffers',
        'max_wal_size', 'track_commit_timestamp', 'track_functions', 'shared_preload_libraries')")"
}

# createdb + migrate DB
bench_migrate_db() {
    local db=$1
    if [[ -z $(nt_psql postgres "SELECT 1 FROM pg_database WHERE datname = '$db'") ]]; then
        nt_psql postgres "CREATE DATABASE $db" >/dev/null
    fi
    NEEDLETRACE_DATABASE_URL="host=127.0.0.1 port=$NT_PG_PORT user=postgres dbname=$db" \
        "$NT_BIN" migrate >>"$NT_TMP/migrate.log" 2>&1 || nt_fail "needletrace migrate ($db) failed"
}

checkpoint() {
    nt_psql postgres "CHECKPOINT" >/dev/null
}

# ---- (a) broker drain ------------------------------------------------------------------------
# bench_drain EVENTS EPM SEED [DUMP]: sets DRAIN_MSGS_S DRAIN_EVENTS_S DRAIN_MSGS DRAIN_SPAN
bench_drain() {
    local events=$1 epm=$2 seed=$3 dump=${4:-}
    local out=$NT_TMP/drain-$2.json sim=$NT_TMP/sim-drain-$2.json n pid rc=0
    # simulate fills every message with epm events (checked against its summary below).
    n=$(((events + epm - 1) / epm))
    "$TOOL" count --port "$NT_BROKER_PORT" --count "$n" --timeout 300 >"$out" \
        2>"$NT_TMP/drain-$epm.err" &
    pid=$!
    NT_BG_PIDS+=("$pid")
    nt_wait_for "counting subscriber ready" 30 grep -qx ready "$out"
    local b0 m0 t0 wall
    b0=$(cpu_s "$NT_BROKER_PID")
    m0=$(machine_busy_s)
    t0=$(now_s)
    (
        rc=0
        "$NT_BIN" simulate --clinics "$CLINICS" --devices "$DEVICES" --events "$events" \
            --events-per-message "$epm" --rate 0 --seed "$seed" --clinic-prefix "drain$epm" \
            ${dump:+--dump "$dump"} >"$sim" 2>>"$NT_TMP/simulate.log" || rc=$?
        times >"$sim.times"
        exit "$rc"
    ) || nt_fail "needletrace simulate failed (exit $?)"
    [[ $(jq -r .messages_published "$sim") == "$n" ]] ||
        nt_fail "simulate published $(jq -r .messages_published "$sim") messages, expected $n"
    wait "$pid" || rc=$?
    ((rc == 0)) || nt_fail "bench_tool count failed: $(cat "$NT_TMP/drain-$epm.err")"
    local m1 c_sim c_mq c_sub
    m1=$(machine_busy_s)
    wall=$(f "$(now_s) - $t0" 3)
    c_sim=$(times_s "$sim.times")
    c_mq=$(f "$(cpu_s "$NT_BROKER_PID") - $b0" 3)
    c_sub=$(tail -n 1 "$out" | jq -r .cpu_s)
    DRAIN_CPU="simulate $(pct "$c_sim" "$wall"), mosquitto $(pct "$c_mq" "$wall"), subscriber $(pct "$c_sub" "$wall"); $(others "$m1 - $m0 - $c_sim - $c_mq - $c_sub" "$wall")"
    DRAIN_MSGS=$n
    DRAIN_MSGS_S=$(tail -n 1 "$out" | jq -r .msgs_per_s)
    DRAIN_SPAN=$(tail -n 1 "$out" | jq -r .first_to_last_s)
    DRAIN_EVENTS_S=$(f "$DRAIN_MSGS_S * $(jq -r .expected.events "$sim") / $n")
}

# ---- (c) the collector -----------------------------------------------------------------------
# bench_collect EVENTS EPM SEED PREFIX [RATE]: runs simulate against the running collector and
# waits until all of its events are committed. The words of the array SIM_EXTRA (if any) are
# passed to simulate too (violation rates). Sets RUN_EVENTS RUN_MSGS RUN_S (simulate start to
# the commit of the run's last event), RUN_PUB_S, RUN_SIM_RATE and RUN_CPU (per process).
bench_collect() {
    local events=$1 epm=$2 seed=$3 prefix=$4 rate=${5:-0} sim=$NT_TMP/sim-$4.json
    local t0 base target="" v pid rc=0 deadline cpu0_c cpu0_b cpu0_p cpu1_c cpu1_b cpu1_p t1 row
    local cpid bpid pgp=() m0 m1 backend
    cpid=$(nt_collector_pid bench)
    bpid=$NT_BROKER_PID
    base=$(metric db_events_total) ||
        nt_fail "could not read needletrace_db_events_total from the collector's /metrics"
    checkpoint
    cpu0_c=$(cpu_s "$cpid")
    cpu0_b=$(cpu_s "$bpid")
    mapfile -t pgp < <(pg_pids)
    cpu0_p=$(cpu_s "${pgp[@]}")
    if [[ ${BENCH_PERF:-0} == 1 ]]; then
        backend=$(nt_sql "SELECT pid FROM pg_stat_activity WHERE datname = 'needletrace'
                            AND backend_type = 'client backend' AND pid <> pg_backend_pid()
                          LIMIT 1")
        perf_start "$prefix" "$cpid" "$bpid" ${backend:+"$backend"}
    fi
    m0=$(machine_busy_s)
    t0=$(now_s)
    (
        rc=0
        "$NT_BIN" simulate --clinics "$CLINICS" --devices "$DEVICES" --events "$events" \
            --events-per-message "$epm" --rate "$rate" --seed "$seed" --clinic-prefix "$prefix" \
            ${SIM_EXTRA[@]+"${SIM_EXTRA[@]}"} >"$sim" 2>>"$NT_TMP/simulate.log" || rc=$?
        times >"$sim.times"
        exit "$rc"
    ) &
    pid=$!
    NT_BG_PIDS+=("$pid")
    deadline=$(f "$t0 + 600")
    # Poll the collector's committed-events counter (cheap); the run's end time itself comes
    # from the commit timestamps below, so the poll interval does not blur the figure.
    while :; do
        if [[ -z $target ]] && nt_pid_dead "$pid"; then
            wait "$pid" || rc=$?
            ((rc == 0)) || nt_fail "needletrace simulate failed (exit $rc)"
            target=$((base + $(jq -r .expected.events "$sim")))
        fi
        v=$(metric db_events_total) || v=$base
        if [[ -n $target ]] && ((v >= target)); then
            break
        fi
        if cond "$(now_s) > $deadline"; then
            nt_fail "the collector committed $((v - base)) events of the $prefix run within 600 s"
        fi
        sleep 0.2
    done
    t1=$(now_s)
    cpu1_c=$(cpu_s "$cpid")
    cpu1_b=$(cpu_s "$bpid")
    cpu1_p=$(cpu_s "${pgp[@]}")
    m1=$(machine_busy_s)
    if [[ ${BENCH_PERF:-0} == 1 ]]; then
        perf_stop "$prefix"
    fi
    row=$(nt_sql "SELECT count(*), extract(epoch FROM max(pg_xact_commit_timestamp(xmin)))
                    FROM needletrace.events WHERE clinic_id LIKE '$prefix-%'")
    RUN_EVENTS=${row%%|*}
    [[ $RUN_EVENTS == "$(jq -r .expected.events "$sim")" ]] ||
        nt_fail "$prefix run: events table holds $RUN_EVENTS rows, simulate expected $(jq -r .expected.events "$sim")"
    RUN_S=$(f "${row##*|} - $t0" 3)
    RUN_MSGS=$(jq -r .messages_published "$sim")
    RUN_PUB_S=$(jq -r .elapsed_s "$sim")
    RUN_SIM_RATE=$(jq -r .rate_msgs_per_s "$sim")
    local wall c_sim
    wall=$(f "$t1 - $t0" 3)
    c_sim=$(times_s "$sim.times")
    RUN_CPU="simulate $(pct "$c_sim" "$wall"), collector $(pct "$cpu1_c - $cpu0_c" "$wall"), mosquitto $(pct "$cpu1_b - $cpu0_b" "$wall"), postgres $(pct "$cpu1_p - $cpu0_p" "$wall"); $(others "$m1 - $m0 - $c_sim - ($cpu1_c - $cpu0_c) - ($cpu1_b - $cpu0_b) - ($cpu1_p - $cpu0_p)" "$wall")"
}

# ---- run -------------------------------------------------------------------------------------
BENCH_T0=$SECONDS
IDLE0=$(machine_busy_s)
sleep 1
IDLE1=$(machine_busy_s)
BUSY_BEFORE=$(f "100 * ($IDLE1 - $IDLE0)")
nt_log "machine: $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), busy $BUSY_BEFORE% before the start"
if cond "$BUSY_BEFORE > 20"; then
    nt_log "WARNING: other processes use $BUSY_BEFORE% CPU: the figures will be low and noisy"
fi
FSYNC=$("$TOOL" fsync --dir "$NT_TMP" --count 200 --bytes 4096)
bench_start_broker
bench_start_pg

# (a)
nt_log "(a) broker drain: $EVENTS_1 1-event messages"
bench_drain "$EVENTS_1" 1 101
A1_MSGS_S=$DRAIN_MSGS_S A1_EVENTS_S=$DRAIN_EVENTS_S A1_MSGS=$DRAIN_MSGS A1_SPAN=$DRAIN_SPAN
A1_CPU=$DRAIN_CPU
nt_log "(a) broker drain: $EVENTS_50 events in 50-event messages (dumped for the COPY runs)"
bench_drain "$EVENTS_50" 50 102 "$NT_TMP/copy.dump"
A50_MSGS_S=$DRAIN_MSGS_S A50_EVENTS_S=$DRAIN_EVENTS_S A50_MSGS=$DRAIN_MSGS A50_SPAN=$DRAIN_SPAN
A50_CPU=$DRAIN_CPU

# (b)
nt_log "(b) binary COPY of the $EVENTS_50 dumped events into fresh databases"
bench_migrate_db bench_copy
bench_migrate_db bench_copy_batched
checkpoint
B1=$("$TOOL" copy --conninfo "host=127.0.0.1 port=$NT_PG_PORT user=postgres dbname=bench_copy" \
    --dump "$NT_TMP/copy.dump") || nt_fail "bench_tool copy failed"
checkpoint
B2=$("$TOOL" copy --conninfo "host=127.0.0.1 port=$NT_PG_PORT user=postgres dbname=bench_copy_batched" \
    --dump "$NT_TMP/copy.dump" --raw --batch-events 5000 --batch-bytes 1048576) ||
    nt_fail "bench_tool copy --raw --batch-events failed"
B_EVENTS_S=$(jq -r .events_per_s <<<"$B1")
rm -f "$NT_TMP/copy.dump"
nt_psql postgres "DROP DATABASE bench_copy" >/dev/null
nt_psql postgres "DROP DATABASE bench_copy_batched" >/dev/null

# (c)
nt_migrate
# shellcheck disable=SC2086 # BENCH_COLLECTOR_ENV is a list of VAR=VALUE words
nt_start_collector bench ${BENCH_COLLECTOR_ENV:-}
nt_wait_collector_ready bench 60
nt_log "(c) collector: $EVENTS_1 1-event messages"
bench_collect "$EVENTS_1" 1 201 bench1
C1_EVENTS=$RUN_EVENTS C1_MSGS=$RUN_MSGS C1_S=$RUN_S C1_PUB_S=$RUN_PUB_S C1_CPU=$RUN_CPU
C1_MSGS_S=$(f "$C1_MSGS / $C1_S") C1_EVENTS_S=$(f "$C1_EVENTS / $C1_S")
nt_log "(c) collector: $EVENTS_50 events in 50-event messages"
bench_collect "$EVENTS_50" 50 202 bench50
C50_EVENTS=$RUN_EVENTS C50_MSGS=$RUN_MSGS C50_S=$RUN_S C50_PUB_S=$RUN_PUB_S C50_CPU=$RUN_CPU
C50_MSGS_S=$(f "$C50_MSGS / $C50_S") C50_EVENTS_S=$(f "$C50_EVENTS / $C50_S")

# (d) + (f): one run at half the 1-event maximum; a small share of its needle settings is too
# deep, and a subscriber on clinics/+/alerts/# stamps every alert the collector publishes.
LAT_RATE=$(f "$C1_MSGS_S / 2")
LAT_EVENTS=$((LAT_RATE * LAT_S))
if [[ ${BENCH_PGSS:-0} == 1 ]]; then
    nt_sql "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
    nt_sql "SELECT pg_stat_statements_reset()" >/dev/null
fi
ALERTS_OUT=$NT_TMP/alerts.jsonl
"$TOOL" alerts --port "$NT_BROKER_PORT" --topic 'clinics/+/alerts/#' --timeout 900 \
    >"$ALERTS_OUT" 2>"$NT_TMP/alerts.err" &
ALERTS_PID=$!
NT_BG_PIDS+=("$ALERTS_PID")
nt_wait_for "alert subscriber ready" 30 grep -qx ready "$ALERTS_OUT"
# evaluate_rules calls and time so far (pg_stat_user_functions, ms), to subtract afterwards.
fn_stats() {
    nt_sql "SELECT coalesce(sum(calls), 0) || '|' || coalesce(sum(total_time), 0) || '|' ||
                   coalesce(sum(self_time), 0)
              FROM pg_stat_user_functions
             WHERE schemaname = 'needletrace' AND funcname = '$1'"
}
IFS='|' read -r ER_CALLS0 ER_TOTAL0 ER_SELF0 <<<"$(fn_stats evaluate_rules)"
IFS='|' read -r SB_CALLS0 SB_TOTAL0 _ <<<"$(fn_stats settle_boots)"
nt_log "(d)+(f) latency: $LAT_EVENTS 1-event messages at $LAT_RATE messages/s, --too-deep-rate $ALERT_RATE"
SIM_EXTRA=(--too-deep-rate "$ALERT_RATE")
bench_collect "$LAT_EVENTS" 1 203 benchlat "$LAT_RATE"
SIM_EXTRA=()
D_SIM_RATE=$RUN_SIM_RATE D_CPU=$RUN_CPU
F_EXPECTED=$(jq -r '.expected.alerts' "$NT_TMP/sim-benchlat.json")
# Every event is committed; the alerts leave right after each commit. Wait (at most 15 s) until
# the subscriber has every alert the run raised, then stop it.
F_RAISED=$(nt_sql "SELECT count(*) FROM needletrace.alerts WHERE clinic_id LIKE 'benchlat-%'")
f_received() {
    # Lines that are not (yet) whole JSON objects ("ready") are skipped.
    jq -rR 'fromjson? | select(.alert.clinic_id? != null) | .alert.alert_id' "$ALERTS_OUT" |
        sort -u | wc -l
}
deadline=$(f "$(now_s) + 15")
while (($(f_received) < F_RAISED)) && cond "$(now_s) < $deadline"; do
    sleep 0.2
done
kill -TERM "$ALERTS_PID" 2>/dev/null || true
wait "$ALERTS_PID" || nt_fail "bench_tool alerts failed: $(cat "$NT_TMP/alerts.err")"
IFS='|' read -r ER_CALLS1 ER_TOTAL1 ER_SELF1 <<<"$(fn_stats evaluate_rules)"
IFS='|' read -r SB_CALLS1 SB_TOTAL1 _ <<<"$(fn_stats settle_boots)"
ER_CALLS=$((ER_CALLS1 - ER_CALLS0))
ER_MEAN=$(f "($ER_TOTAL1 - $ER_TOTAL0) / ($ER_CALLS > 0 ? $ER_CALLS : 1)" 2)
ER_SELF_MEAN=$(f "($ER_SELF1 - $ER_SELF0) / ($ER_CALLS > 0 ? $ER_CALLS : 1)" 2)
SB_MEAN=$(f "($SB_TOTAL1 - $SB_TOTAL0) / ($((SB_CALLS1 - SB_CALLS0)) > 0 ? $((SB_CALLS1 - SB_CALLS0)) : 1)" 2)
# The lines go into PostgreSQL as they are and are parsed there: jq would round boot_id
# (64 bits) to a double. CSV with a quote and a delimiter that never occur: one line, one field.
grep '^{"recv_us":' "$ALERTS_OUT" >"$NT_TMP/alerts.lines" || true
# Per alert (its first arrival): receive time minus the triggering event's device_time, and the
# three legs: event -> start of its transaction (inserted_at = now()), transaction start ->
# commit (pg_xact_commit_timestamp), commit -> arrival at the subscriber.
F_ROW=$(psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$NT_PG_PORT" -U postgres \
    -d needletrace -f - <<SQL
CREATE TEMP TABLE rx_line (line text);
\copy rx_line FROM '$NT_TMP/alerts.lines' WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')
CREATE TEMP TABLE rx AS
SELECT (j ->> 'recv_us')::bigint AS recv_us, (j -> 'alert' ->> 'alert_id')::bigint AS alert_id,
       j -> 'alert' ->> 'rule' AS rule, j -> 'alert' ->> 'clinic_id' AS clinic_id,
       j -> 'alert' ->> 'device_serial' AS device_serial,
       (j -> 'alert' ->> 'boot_id')::bigint AS boot_id, (j -> 'alert' ->> 'seq')::bigint AS seq
  FROM (SELECT line::jsonb AS j FROM rx_line) l;
WITH first AS (
    SELECT DISTINCT ON (alert_id) * FROM rx WHERE clinic_id LIKE 'benchlat-%'
     ORDER BY alert_id, recv_us
), j AS (
    SELECT r.recv_us / 1000.0 - 1000 * extract(epoch FROM e.device_time) AS ms,
           1000 * extract(epoch FROM e.inserted_at - e.device_time) AS wait_ms,
           1000 * extract(epoch FROM pg_xact_commit_timestamp(e.xmin) - e.inserted_at) AS txn_ms,
           r.recv_us / 1000.0 - 1000 * extract(epoch FROM pg_xact_commit_timestamp(e.xmin)) AS out_ms
      FROM first r
      JOIN needletrace.events e USING (clinic_id, device_serial, boot_id, seq)
)
SELECT (SELECT count(*) FROM rx WHERE clinic_id LIKE 'benchlat-%') || '|' ||
       (SELECT count(*) FROM first) || '|' || count(*) || '|' ||
       coalesce(round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1)::text, '-') || '|' ||
       coalesce(round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1)::text, '-') || '|' ||
       coalesce(round(max(ms)::numeric, 1)::text, '-') || '|' ||
       coalesce(round(percentile_cont(0.5) WITHIN GROUP (ORDER BY wait_ms)::numeric, 1)::text, '-') || '|' ||
       coalesce(round(percentile_cont(0.99) WITHIN GROUP (ORDER BY wait_ms)::numeric, 1)::text, '-') || '|' ||
       coalesce(round(percentile_cont(0.5) WITHIN GROUP (ORDER BY txn_ms)::numeric, 1)::text, '-') || '|' ||
       coalesce(round(percentile_cont(0.99) WITHIN GROUP (ORDER BY txn_ms)::numeric, 1)::text, '-') || '|' ||
       coalesce(round(percentile_cont(0.5) WITHIN GROUP (ORDER BY out_ms)::numeric, 1)::text, '-') || '|' ||
       coalesce(round(percentile_cont(0.99) WITHIN GROUP (ORDER BY out_ms)::numeric, 1)::text, '-')
  FROM j;
SQL
) || nt_fail "could not join the received alerts with their events"
IFS='|' read -r F_RX F_DISTINCT F_JOINED F_P50 F_P99 F_MAX F_W50 F_W99 F_T50 F_T99 F_O50 F_O99 \
    <<<"$F_ROW"
# The latency run's transactions: how many, how big, how long (start -> commit).
F_TXN=$(nt_sql "SELECT count(*) || '|' || round(avg(n)::numeric, 1) || '|' ||
                       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) || '|' ||
                       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1) || '|' ||
                       round(max(ms)::numeric, 1)
                  FROM (SELECT count(*) AS n,
                               1000 * extract(epoch FROM max(pg_xact_commit_timestamp(xmin))
                                                         - min(inserted_at)) AS ms
                          FROM needletrace.events WHERE clinic_id LIKE 'benchlat-%'
                         GROUP BY tx) t")
IFS='|' read -r F_NTXN F_EV_TXN F_TXN50 F_TXN99 F_TXNMAX <<<"$F_TXN"
if [[ ${BENCH_PGSS:-0} == 1 ]]; then
    nt_sql "SELECT lpad(calls::text, 7) || ' calls  mean ' || lpad(round(mean_exec_time::numeric, 2)::text, 8)
                   || ' ms  max ' || lpad(round(max_exec_time::numeric, 1)::text, 7) || ' ms  total '
                   || lpad(round(total_exec_time::numeric)::text, 6) || ' ms  '
                   || left(regexp_replace(query, '\s+', ' ', 'g'), 90)
              FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'needletrace')
             ORDER BY total_exec_time DESC LIMIT 15" >"$NT_TMP/pgss.top" || true
fi
LAT=$(nt_sql "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) || '|' ||
                     round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1) || '|' ||
                     round(percentile_cont(0.5) WITHIN GROUP (ORDER BY cms)::numeric, 1) || '|' ||
                     round(percentile_cont(0.99) WITHIN GROUP (ORDER BY cms)::numeric, 1) || '|' ||
                     round(max(cms)::numeric, 1)
                FROM (SELECT 1000 * extract(epoch FROM inserted_at - device_time) AS ms,
                             1000 * extract(epoch FROM pg_xact_commit_timestamp(xmin)
                                                       - device_time) AS cms
                        FROM needletrace.events WHERE clinic_id LIKE 'benchlat-%') l")
IFS='|' read -r D_P50 D_P99 D_CP50 D_CP99 D_CMAX <<<"$LAT"

# (e)
CPID=$(nt_collector_pid bench)
RSS_KB=$(awk '/^VmHWM:/ { print $2 }' "/proc/$CPID/status")
RSS_NOW_KB=$(awk '/^VmRSS:/ { print $2 }' "/proc/$CPID/status")
SYNCS=$(metric journal_syncs_total)
BATCHES=$(metric db_batches_total)
RECEIVED=$(metric mqtt_messages_received_total)
COMMITTED_EVENTS=$(metric db_events_total)
nt_stop_collector bench TERM 30

# ---- report ----------------------------------------------------------------------------------
verdict() {
    if cond "$1"; then printf 'PASS'; else printf 'MISS'; fi
}
RATIO_CA=$(f "$C1_MSGS_S / $A1_MSGS_S" 2)
RATIO_CB=$(f "$C50_EVENTS_S / $B_EVENTS_S" 2)
RATIO_CB2=$(f "$C50_EVENTS_S / $(jq -r .events_per_s <<<"$B2")" 2)
RSS_MIB=$(f "$RSS_KB / 1024" 1)
# MISS as well when an alert the run raised never arrived (or could not be matched).
alert_verdict() {
    if [[ $F_P99 == - ]] || ((F_JOINED < F_RAISED)) || ((F_RAISED == 0)); then
        printf 'MISS (%s of %s raised alerts measured)' "$F_JOINED" "$F_RAISED"
    else
        verdict "$F_P99 < 500"
    fi
}

cat <<EOF

==================== needletrace benchmark ====================
machine     $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo); other processes used $BUSY_BEFORE% CPU just before the run
fleet       $CLINICS clinics x $DEVICES handpieces; publisher = needletrace simulate (QoS 1, 1000 in flight)
disk        write 4 KiB + fdatasync in the temp dir: p50 $(jq -r .p50_us <<<"$FSYNC") us, p99 $(jq -r .p99_us <<<"$FSYNC") us

(a) broker drain: mosquitto -> a QoS 1 subscriber that only counts (MQTT v5, receive-maximum 65535)
    1-event messages   $(f "$A1_MSGS_S") msgs/s = $(f "$A1_EVENTS_S") events/s   ($A1_MSGS messages, first->last ${A1_SPAN} s)
                       cpu: $A1_CPU
    50-event messages  $(f "$A50_MSGS_S") msgs/s = $(f "$A50_EVENTS_S") events/s   ($A50_MSGS messages, first->last ${A50_SPAN} s)
                       cpu: $A50_CPU

(b) PostgreSQL binary COPY into a freshly migrated needletrace.events (fsync on, synchronous_commit on)
    one COPY, one txn  $(f "$B_EVENTS_S") events/s   ($(jq -r .events <<<"$B1") events, $(jq -r .seconds <<<"$B1") s, $(f "$(jq -r .stream_bytes <<<"$B1") / 1048576" 1) MiB of COPY data)
    collector-shaped   $(f "$(jq -r .events_per_s <<<"$B2")") events/s   (raw_messages + events, $(jq -r .transactions <<<"$B2") txns of <= 5000 events / 1 MiB, $(jq -r .seconds <<<"$B2") s)
    decode + encode    $(jq -r .build_us_per_event <<<"$B1") us/event with nt_batch (CPU the collector spends per event, not timed above)

(c) collector publish->committed (simulate start -> commit of the run's last event)
    1-event messages   $C1_MSGS_S msgs/s = $C1_EVENTS_S events/s   ($C1_EVENTS events in $C1_S s; simulate done after $C1_PUB_S s)
                       cpu: $C1_CPU
    50-event messages  $C50_MSGS_S msgs/s = $C50_EVENTS_S events/s   ($C50_EVENTS events in $C50_S s; simulate done after $C50_PUB_S s)
                       cpu: $C50_CPU
    collector totals   $RECEIVED messages received, $SYNCS journal fdatasyncs ($(f "$RECEIVED / ($SYNCS > 0 ? $SYNCS : 1)" 1) msgs/sync), $BATCHES db transactions ($(f "$COMMITTED_EVENTS / ($BATCHES > 0 ? $BATCHES : 1)" 1) events/txn)

(d) publish->commit latency at half the 1-event maximum: target $LAT_RATE msgs/s, achieved $D_SIM_RATE msgs/s, $LAT_EVENTS events
    by inserted_at     p50 $D_P50 ms, p99 $D_P99 ms
    by commit time     p50 $D_CP50 ms, p99 $D_CP99 ms, max $D_CMAX ms
                       cpu: $D_CPU
    inserted_at defaults to now(), the start of the committing transaction, so the first line
    leaves out the COPY and COMMIT (WAL fdatasync) and slightly understates; the second uses
    pg_xact_commit_timestamp(xmin), the real commit time (track_commit_timestamp = on).
    device_time is the wall clock in whole ms when simulate generated the event (just before publishing).

(f) event->alert-on-MQTT latency, same run as (d) (--too-deep-rate $ALERT_RATE): a QoS 1 subscriber on clinics/+/alerts/#
    alerts             $F_EXPECTED expected by simulate, $F_RAISED raised, $F_DISTINCT received ($F_RX deliveries), $F_JOINED joined with their event
    event->alert       p50 $F_P50 ms, p99 $F_P99 ms, max $F_MAX ms   (alert receive time - triggering event's device_time)
    legs p50 / p99     event->txn start $F_W50 / $F_W99 ms, txn start->commit $F_T50 / $F_T99 ms, commit->received $F_O50 / $F_O99 ms
    transactions       $F_NTXN in the run, $F_EV_TXN events/txn, start->commit p50 $F_TXN50 ms, p99 $F_TXN99 ms, max $F_TXNMAX ms
    evaluate_rules     $ER_CALLS calls, mean $ER_MEAN ms/call ($ER_SELF_MEAN ms outside the functions it calls; settle_boots mean $SB_MEAN ms)
    The legs: inserted_at (now() = the start of the event's transaction), the commit timestamp,
    the subscriber's wall clock on arrival. The alert is raised in the event's own transaction.

(e) collector peak RSS (VmHWM at the end)  $RSS_MIB MiB   (VmRSS now $(f "$RSS_NOW_KB / 1024" 1) MiB)

ratios and targets (issue 2, item 9)
    c/a 1-event msgs/s vs broker drain    $RATIO_CA   target >= 0.80         $(verdict "$RATIO_CA >= 0.8")
    c/b 50-event events/s vs one COPY     $RATIO_CB   (no target)
    c/b 50-event vs collector-shaped COPY $RATIO_CB2   (no target)
    50-event events/s committed           $C50_EVENTS_S   target >= 80000     $(verdict "$C50_EVENTS_S >= 80000")
    collector peak RSS                    $RSS_MIB MiB   target <= 64 MiB   $(verdict "$RSS_KB <= 65536")
ratios and targets (issue 3, item 8)
    event->alert-on-MQTT p99 at half load $F_P99 ms   target < 500 ms   $(alert_verdict)
===============================================================
EOF
printf 'whole benchmark: %s s\n' "$((SECONDS - BENCH_T0))"
if [[ ${BENCH_PGSS:-0} == 1 ]]; then
    printf '\npg_stat_statements during the latency run (d)+(f), by total time (track = all)\n'
    sed 's/^/  /' "$NT_TMP/pgss.top" 2>/dev/null || true
fi
if [[ ${BENCH_PERF:-0} == 1 ]]; then
    for run in bench1 bench50 benchlat; do
        printf '\nperf: self time during the %s run (collector, its backend, mosquitto)\n' "$run"
        cat "$NT_TMP/perf-$run.top" 2>/dev/null || true
    done
fi
exit 0
