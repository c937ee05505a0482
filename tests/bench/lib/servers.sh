# shellcheck shell=bash
# servers.sh -- what the benchmark runs against: the bench_tool binary (built here when the
# build has none), mosquitto without limits, and the harness's PostgreSQL cluster (fsync on)
# with a production-sized buffer pool; plus fresh databases and checkpoints.
# Sourced by tests/bench/run.sh (after tests/integration/lib.sh).

# bench_check_tools: pkg-config, mosquitto_pub, perf when BENCH_PERF=1, and a python3 with
# paho-mqtt for (h) (sets NT_PY) unless BENCH_LOSSY_PENS=0.
bench_check_tools() {
    command -v pkg-config >/dev/null 2>&1 || nt_fail "pkg-config is not installed"
    command -v mosquitto_pub >/dev/null 2>&1 || nt_fail "mosquitto_pub is not installed (mosquitto-clients)"
    if ((LOSSY_PENS > 0)); then
        nt_find_python paho.mqtt.client
    fi
    if [[ $PERF == 1 ]]; then
        perf record -o /dev/null -- true >/dev/null 2>&1 ||
            nt_fail "BENCH_PERF=1 but perf record does not work here (see README.md: callgrind)"
    fi
}

# bench_build_tool: sets TOOL to the build's bench_tool, or compiles bench_tool.c into the temp
# dir against every libnt_*.a of the build (in one link group: their order does not matter).
bench_build_tool() {
    local libs
    TOOL=$BUILD/bench_tool
    [[ -x $TOOL ]] && return 0
    TOOL=$NT_TMP/bench_tool
    libs=("$BUILD"/libnt_*.a)
    [[ -f ${libs[0]} ]] || nt_fail "$BUILD/libnt_*.a not found: build the project first"
    # shellcheck disable=SC2046 # pkg-config prints several words on purpose
    gcc -O2 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter \
        -I"$ROOT/include" -I"$BUILD/proto" $(pkg-config --cflags libpq libprotobuf-c) \
        "$BENCH_DIR/bench_tool.c" -Wl,--start-group "${libs[@]}" -Wl,--end-group \
        $(pkg-config --libs libmosquitto libpq libprotobuf-c libcrypto) -o "$TOOL" \
        >"$NT_TMP/bench_tool-build.log" 2>&1 ||
        {
            cat "$NT_TMP/bench_tool-build.log" >&2
            nt_fail "could not build bench_tool"
        }
}

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
    if [[ $PGSS == 1 ]]; then
        nt_psql postgres "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" >/dev/null
    fi
    nt_restart_pg fast
    if [[ $PGSS == 1 ]]; then
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
    NEEDLETRACE_DATABASE_ADMIN_URL="host=127.0.0.1 port=$NT_PG_PORT user=postgres dbname=$db" \
        "$NT_BIN" migrate >>"$NT_TMP/migrate.log" 2>&1 || nt_fail "needletrace migrate ($db) failed"
}

checkpoint() {
    nt_psql postgres "CHECKPOINT" >/dev/null
}

# bench_stop_collector NAME: stops the collector (SIGTERM, 30 s), then drops its persistent
# session at the broker (a clean-start connect with its client id): an offline session would
# keep queueing every message of the phases after it (and, in a share group, take its share),
# which costs the broker and, in (i), loses a replica's share to a replica that is gone.
bench_stop_collector() {
    nt_stop_collector "$1" TERM 30
    mosquitto_pub -h 127.0.0.1 -p "$NT_BROKER_PORT" -V 5 -i "$(nt_client_id "$1")" \
        -t "bench/forget-session" -n -q 0 >>"$NT_TMP/broker-clients.log" 2>&1 ||
        nt_fail "could not drop the broker session of collector $1 (mosquitto_pub)"
}

# bench_fresh_db: drops database needletrace (everything the phases before stored: their figures
# are in R already) and migrates a new one, so that the next phase starts from an empty schema.
# No collector may be running.
bench_fresh_db() {
    nt_psql postgres "DROP DATABASE IF EXISTS needletrace WITH (FORCE)" >/dev/null ||
        nt_fail "could not drop database needletrace"
    nt_psql postgres "CREATE DATABASE needletrace" >/dev/null ||
        nt_fail "could not create database needletrace"
    nt_migrate
}
