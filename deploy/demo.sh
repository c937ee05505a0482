#!/usr/bin/env bash
# deploy/demo.sh -- see needletrace work, in one command (README command 1).
#
# Installs what is missing, builds (gcc, build/), starts a private mosquitto and PostgreSQL
# under ./.local/ on free loopback ports, migrates, runs the collector, and lets a simulated
# fleet (3 clinics x 10 handpieces, with some malformed, duplicated and spoofed messages and
# a few compliance violations: reused, expired, unsealed, recalled cartridges, too-deep settings…)
# publish for about a minute. Then it waits until the database holds exactly what the fleet
# sent and every alert was raised and published, prints a summary (with the alerts by rule)
# and the psql command to look at the data, and stops everything.
# The data stays in ./.local/ (the next run starts afresh).
#
# Knobs: DEMO_DURATION (seconds of traffic, default 60), DEMO_RATE (messages/s, default 200),
# DEMO_SEED (default 42), DEMO_EVENTS_PER_MESSAGE (default 10).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL=$ROOT/.local
DURATION=${DEMO_DURATION:-60}
RATE=${DEMO_RATE:-200}
SEED=${DEMO_SEED:-42}
EPM=${DEMO_EVENTS_PER_MESSAGE:-10}
RECALLED_GTIN=07612345000121
RECALLED_LOT=RCL-DEMO-1

# The harness of the integration tests does the infrastructure work: .local/ is its
# directory, kept on exit; PostgreSQL gets a clean (fast) shutdown.
NT_TMP=$LOCAL
NT_KEEP_DIR=1
NT_PG_STOP_MODE=fast
NT_TEST_NAME=demo
# shellcheck source-path=SCRIPTDIR source=../tests/integration/lib.sh
source "$ROOT/tests/integration/lib.sh"

step() {
    printf '==> %s\n' "$*"
}

# shellcheck source-path=SCRIPTDIR source=packages.sh
source "$ROOT/deploy/packages.sh"

build() {
    local cached
    if [[ -f $ROOT/build/CMakeCache.txt ]]; then
        cached=$(sed -n 's/^CMAKE_C_COMPILER:[A-Z]*=//p' "$ROOT/build/CMakeCache.txt")
        if [[ -n $cached && $(basename "$cached") != gcc* ]]; then
            echo "build/ was configured with $cached; recreating it for gcc"
            rm -rf "$ROOT/build"
        fi
    fi
    if [[ ! -f $ROOT/build/CMakeCache.txt ]]; then
        CC=gcc cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_C_COMPILER=gcc \
            -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    fi
    cmake --build "$ROOT/build" --target needletrace --parallel "$(nproc 2>/dev/null || echo 2)" |
        grep -E 'error|warning|Built target needletrace' || true
    [[ -x $ROOT/build/needletrace ]]
}

# Stops what a previous, interrupted demo may have left running in .local/.
stop_leftovers() {
    local pid
    if [[ -f $LOCAL/pg/data/postmaster.pid ]]; then
        pid=$(head -n 1 "$LOCAL/pg/data/postmaster.pid")
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            echo "stopping the PostgreSQL (pid $pid) of an earlier demo"
            kill -INT "$pid" 2>/dev/null || true
            local i
            for ((i = 0; i < 100; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.2
            done
        fi
    fi
    if [[ -f $LOCAL/broker.pid ]]; then
        pid=$(cat "$LOCAL/broker.pid")
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null &&
            grep -q mosquitto "/proc/$pid/cmdline" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    fi
}

# After the trap has stopped everything: how to look at the data again.
demo_epilogue() {
    local pgctl="$NT_PG_BIN/pg_ctl -D $NT_PG_DIR/data -l $NT_PG_DIR/postgres.log"
    if [[ $(nt__pg_user) != "$(id -un)" ]]; then
        pgctl="runuser -u $(nt__pg_user) -- $pgctl"
    fi
    cat <<EOF

The collector, broker and PostgreSQL are stopped; the data is kept in $LOCAL/.
To look at it again:
  $pgctl start
  psql "host=127.0.0.1 port=$NT_PG_PORT user=postgres dbname=needletrace"
  $pgctl stop
Run deploy/demo.sh again for a fresh demo.
EOF
}

# demo_infra_start [BINARY]: a fresh .local/ with PostgreSQL (as an unprivileged user when
# root) and mosquitto on free loopback ports; the EXIT trap stops them.
demo_infra_start() {
    stop_leftovers
    local old
    if [[ -L $LOCAL/pg ]]; then
        old=$(readlink "$LOCAL/pg")
        [[ $old != /tmp/needletrace-demo-pg.* ]] || rm -rf "$old"
    fi
    rm -rf "$LOCAL"
    mkdir -p "$LOCAL"
    chmod 755 "$LOCAL"
    if ((EUID == 0)) && ! nt__user_can_traverse "$(nt__pg_user)" "$LOCAL"; then
        # PostgreSQL runs as an unprivileged user, who cannot reach this checkout
        NT_PG_DIR=$(mktemp -d /tmp/needletrace-demo-pg.XXXXXX)
        chmod 755 "$NT_PG_DIR"
        ln -s "$NT_PG_DIR" "$LOCAL/pg"
        echo "note: $(nt__pg_user) cannot reach $LOCAL; the database lives in $NT_PG_DIR"
    fi
    nt_setup "$@"
    trap demo_cleanup EXIT
    step "starting PostgreSQL and mosquitto in $LOCAL"
    nt_start_pg
    nt_start_broker
    printf '%s\n' "$NT_BROKER_PID" >"$LOCAL/broker.pid"
}

main() {
    cd "$ROOT"
    step "checking dependencies"
    nt_install_missing "${NT_PACKAGES_RUN[@]}"
    step "building needletrace (gcc, build/)"
    build || {
        echo "error: the build failed" >&2
        exit 1
    }

    demo_infra_start "$ROOT/build/needletrace"
    step "migrating"
    nt_migrate
    # The demo fleet injects violations: its recalled cartridges' lot is recalled, and gaps
    # are declared after 5 s instead of 10 minutes so that they show within the demo.
    nt_sql "INSERT INTO needletrace.recalled_lots (gtin, lot, reason)
            VALUES ('$RECALLED_GTIN', '$RECALLED_LOT', 'demo recall') ON CONFLICT DO NOTHING;
            UPDATE needletrace.settings SET value = '5 seconds' WHERE key = 'sequence_gap_after'" \
        >/dev/null
    step "starting the collector"
    nt_start_collector demo
    nt_wait_collector_ready demo
    (mosquitto_sub -h 127.0.0.1 -p "$NT_BROKER_PORT" -q 1 -v -t 'clinics/+/alerts/#' \
        >"$LOCAL/alerts.mqtt" 2>>"$LOCAL/alerts.mqtt.log" &
        echo $! >"$LOCAL/alerts-sub.pid")
    NT_BG_PIDS+=("$(cat "$LOCAL/alerts-sub.pid")")

    step "simulating 3 clinics x 10 handpieces for ${DURATION} s at $RATE messages/s"
    local t0 t1 last=0 now ev
    t0=$(nt_now_ms)
    nt_simulate_bg "$LOCAL/simulate.json" --clinics 3 --devices 10 --duration "$DURATION" \
        --events-per-message "$EPM" --rate "$RATE" --seed "$SEED" \
        --malformed-rate 0.01 --duplicate-rate 0.02 --spoof-rate 0.01 \
        --reuse-rate 0.01 --expired-rate 0.005 --unsealed-rate 0.005 --recalled-rate 0.005 \
        --too-deep-rate 0.01 --no-cartridge-rate 0.005 --gap-rate 0.002 --skew-rate 0.001 \
        --recalled-gtin "$RECALLED_GTIN" --recalled-lot "$RECALLED_LOT"
    while nt_pid_alive "$NT_SIM_PID"; do
        now=$(nt_now_ms)
        if ((now - last >= 5000)); then
            ev=$(nt_sql 'SELECT count(*) FROM needletrace.events' 2>/dev/null || echo '?')
            printf '    %3ss: %s events committed\n' "$(((now - t0) / 1000))" "$ev"
            last=$now
        fi
        if ((now - t0 > (DURATION + 120) * 1000)); then
            nt_fail "simulate did not finish within $((DURATION + 120)) s"
        fi
        sleep 0.5
    done
    nt_wait_simulate "$LOCAL/simulate.json" 10
    step "waiting for the database to hold what the fleet sent"
    nt_wait_counts "$LOCAL/simulate.json" -- 180
    t1=$(nt_now_ms)
    step "waiting for every alert (sequence gaps are declared 5 s after they appear)"
    nt_wait_for "alerts raised" 60 nt_sql_ge "$(nt_json "$LOCAL/simulate.json" .expected.alerts)" \
        'SELECT count(*) FROM needletrace.alerts'
    nt_wait_for "alerts published on MQTT" 30 demo_alerts_published

    summary "$t0" "$t1"
    if ((NT_FAILS > 0)); then
        echo "the database does NOT hold exactly what the fleet sent (see FAIL lines above)"
        exit 1
    fi
}

# The EXIT trap: clean shutdowns (the data stays), then how to look at the data again.
demo_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if ((rc != 0)) && [[ ${NT_LOGS_DUMPED:-0} != 1 ]]; then
        nt_dump_logs
    fi
    demo_stop_all
    if [[ -f $NT_PG_DIR/data/PG_VERSION && -n $NT_PG_PORT ]]; then
        demo_epilogue
    fi
    exit "$rc"
}

# Stops the collector, the broker and PostgreSQL (clean shutdowns; data kept).
demo_stop_all() {
    local name
    for name in "${!NT_CPID[@]}"; do
        nt__stop_pid "${NT_CPID[$name]}" 15
    done
    for name in "${NT_BG_PIDS[@]}"; do
        nt__stop_pid "$name" 5
    done
    nt_stop_broker
    nt_stop_pg fast
    rm -f "$LOCAL/broker.pid"
    step "stopped the collector, mosquitto and PostgreSQL"
}

# Succeeds when the MQTT subscriber received as many alerts as the database holds.
demo_alerts_published() {
    local got want
    got=$(wc -l <"$LOCAL/alerts.mqtt")
    want=$(nt_sql 'SELECT count(*) FROM needletrace.alerts')
    echo "$got of $want alerts received on clinics/+/alerts/#"
    ((got >= want))
}

summary() {
    local t0=$1 t1=$2 sim="$LOCAL/simulate.json" events raw wall
    events=$(nt_json "$sim" .expected.events)
    raw=$(nt_json "$sim" .expected.raw_messages)
    wall=$(((t1 - t0) / 1000))
    echo
    echo "================ needletrace demo: summary ================"
    printf 'fleet: %s clinics x %s handpieces, seed %s; published %s messages (%s duplicates) in %ss\n' \
        "$(nt_json "$sim" .clinics)" "$(($(nt_json "$sim" .devices) / $(nt_json "$sim" .clinics)))" \
        "$SEED" "$(nt_json "$sim" .messages_published)" "$(nt_json "$sim" .duplicates_published)" \
        "$(nt_json "$sim" .elapsed_s)"
    printf 'database: %s events from %s accepted messages, %s quarantined (exactly as expected: %s)\n' \
        "$(nt_count events)" "$(nt_count raw_messages)" "$(nt_count quarantine)" \
        "$( ((NT_FAILS == 0)) && echo yes || echo NO)"
    echo
    echo "events per clinic:"
    nt_sql "SELECT '  ' || rpad(clinic_id, 16) || lpad(count(*)::text, 8)
            FROM needletrace.events GROUP BY clinic_id ORDER BY clinic_id"
    echo "events per kind:"
    nt_sql "SELECT '  ' || rpad(kind, 22) || lpad(count(*)::text, 8)
            FROM needletrace.events GROUP BY kind ORDER BY count(*) DESC"
    echo "quarantined by reason:"
    nt_sql "SELECT '  ' || rpad(reason, 22) || lpad(count(*)::text, 8)
            FROM needletrace.quarantine GROUP BY reason ORDER BY reason"
    echo "alerts by rule (database / published on MQTT / the simulator's expectation):"
    local rule
    for rule in CARTRIDGE_REUSED CARTRIDGE_EXPIRED STERILE_BARRIER_BROKEN CARTRIDGE_RECALLED \
        DEPTH_OUT_OF_RANGE NEEDLING_WITHOUT_CARTRIDGE SEQUENCE_GAP CLOCK_SKEW; do
        printf '  %-28s %6s %6s %6s\n' "$rule" \
            "$(nt_sql "SELECT count(*) FROM needletrace.alerts WHERE rule = '$rule'")" \
            "$(grep -c "/alerts/$rule " "$LOCAL/alerts.mqtt" || true)" \
            "$(nt_json "$sim" ".expected.alerts_by_rule.$rule")"
    done
    echo "a recent alert as published:"
    tail -n 1 "$LOCAL/alerts.mqtt" | cut -c 1-400 | sed 's/^/  /'
    echo
    printf 'throughput: %s events in %ss from first publish to all committed = %s events/s\n' \
        "$events" "$wall" "$((events / (wall > 0 ? wall : 1)))"
    printf '            (bounded by the fleet: %s messages/s x %s events/message, %s accepted messages;\n' \
        "$RATE" "$EPM" "$raw"
    printf '             raise DEMO_RATE to push harder, tests/bench/ measures the maximum)\n'
    nt_sql "SELECT 'latency receive -> commit: p50 ' ||
                   round(percentile_cont(0.5) WITHIN GROUP (ORDER BY d) * 1000) || ' ms, p99 ' ||
                   round(percentile_cont(0.99) WITHIN GROUP (ORDER BY d) * 1000) || ' ms'
            FROM (SELECT extract(epoch FROM inserted_at - received_at) AS d
                  FROM needletrace.raw_messages) s" 2>/dev/null || true
    echo
    echo "look at the data (while the demo runs, or after starting PostgreSQL again, see below):"
    echo "  psql \"host=127.0.0.1 port=$NT_PG_PORT user=postgres dbname=needletrace\""
    echo "  e.g.  SELECT kind, count(*) FROM needletrace.events GROUP BY 1;"
    echo "        SELECT reason, topic, octet_length(payload) FROM needletrace.quarantine LIMIT 5;"
    echo "        SELECT * FROM needletrace.sessions LIMIT 5;"
    echo "        SELECT rule, severity, clinic_id, details FROM needletrace.alerts_open LIMIT 5;"
    echo "  alerts: NEEDLETRACE_DATABASE_URL=\"host=127.0.0.1 port=$NT_PG_PORT user=nt_staff dbname=needletrace\" build/needletrace alerts list --open"
    echo "  pens:   NEEDLETRACE_DATABASE_URL=\"host=127.0.0.1 port=$NT_PG_PORT user=nt_registrar dbname=needletrace\" build/needletrace devices list"
    echo "  (the collector ran as login nt_collector, a member of needletrace_collector: it cannot"
    echo "   update or delete evidence; see README, Security model)"
    echo "logs: $LOCAL/collector-demo.log, $LOCAL/broker.log, $NT_PG_DIR/postgres.log"
    echo "==========================================================="
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
