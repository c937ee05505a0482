#!/usr/bin/env bash
# test_http_probes.sh -- /healthz and /readyz stay answerable however the listener is held:
# 200 idle TCP connections (each opened again 0.5 s after the collector closes it) and 4
# slow-loris clients trickling a request head that never ends. Each probe must answer 200
# within 1 s, over several header deadlines; the slow-loris connections are closed at the
# header deadline however they trickle; a request head over the bound gets 431. Then the same
# while a simulated fleet is ingested, whose counts must come out exact.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR/lib
source "$NT_LIB_DIR/pub.sh"
nt_setup "$@"

nt_find_python socket selectors
nt_start_pg
nt_start_broker
nt_migrate
nt_start_collector c1
nt_wait_collector_ready c1
PORT=${NT_CHTTP[c1]}

# probe PATH: one GET with a 2 s cap; prints "CODE SECONDS".
probe() {
    curl -s -o /dev/null --max-time 2 -w '%{http_code} %{time_total}\n' \
        "http://127.0.0.1:$PORT$1" || true
}

# probe_rounds LABEL ROUNDS: /healthz and /readyz ROUNDS times, 0.3 s apart; every answer must
# be 200 within 1 s. Prints the slowest.
probe_rounds() {
    local label=$1 rounds=$2 i path out code secs bad=0 worst=0
    for ((i = 0; i < rounds; i++)); do
        for path in /healthz /readyz; do
            out=$(probe "$path")
            read -r code secs <<<"${out:-000 9}"
            if [[ $code != 200 ]] || awk -v s="$secs" 'BEGIN { exit !(s >= 1.0) }'; then
                bad=$((bad + 1))
                nt_log "$label: $path answered $code after ${secs}s (round $i)"
            fi
            worst=$(awk -v a="$worst" -v b="$secs" 'BEGIN { print (b > a ? b : a) }')
        done
        sleep 0.3
    done
    nt_expect_eq "$label: probes not answered 200 within 1 s (of $((rounds * 2)), slowest ${worst}s)" \
        0 "$bad"
}

hog_field() {
    jq -r ".$1" "$HOG_STATUS" 2>/dev/null
}

# start_hog IDLE LORIS: the hog in the background (status in $HOG_STATUS); sets HOG_PID.
start_hog() {
    HOG_STATUS="$NT_TMP/hog-$1-$2.json"
    "$NT_PY" "$NT_LIB_DIR/http_hog.py" --port "$PORT" --idle "$1" --loris "$2" --trickle-s 0.2 \
        --status "$HOG_STATUS" >>"$NT_TMP/hog.log" 2>&1 &
    HOG_PID=$!
    NT_BG_PIDS+=("$HOG_PID")
}

# shellcheck disable=SC2317 # invoked through nt_wait_for
hog_holding() {
    local opened closed
    opened=$(hog_field opened) || return 1
    closed=$(hog_field closed_by_server) || return 1
    echo "opened $opened, closed by the collector $closed"
    ((opened >= 204 && closed >= 140))
}

# shellcheck disable=SC2317 # invoked through nt_wait_for
loris_closed() {
    local n
    n=$(hog_field loris_closed) || return 1
    echo "slow-loris connections closed: $n"
    ((n >= $1))
}

# ---- slow-loris: closed at the header deadline however they trickle --------------------------
start_hog 0 8
nt_wait_for "the slow-loris connections closed at the header deadline" 20 loris_closed 8
probe_rounds "slow-loris" 3
nt__stop_pid "$HOG_PID" 5
nt_log "hog: $(cat "$HOG_STATUS")"
life=$(hog_field loris_max_life_s)
nt_expect_true "a slow-loris connection lives about the 5 s header deadline: ${life}s" \
    awk -v s="$life" 'BEGIN { exit !(s >= 4.5 && s <= 6.0) }'
nt_expect_true "the slow-loris clients kept trickling ($(hog_field loris_bytes_max) bytes max)" \
    test "$(hog_field loris_bytes_max)" -gt 15
timed_out=$(nt_metric http_connections_timed_out_total)
nt_expect_true "connections closed at the header deadline ($timed_out)" test "$timed_out" -ge 8

# ---- 200 idle connections and 4 slow-loris clients -------------------------------------------
start_hog 200 4
nt_wait_for "the hog holding the listener's connections" 30 hog_holding
nt_log "hog: $(cat "$HOG_STATUS")"
probe_rounds "idle connections and slow-loris" 25

# A request head over the 4 KiB bound: 431, not a connection held or a crash.
big=$(head -c 6000 /dev/zero | tr '\0' 'a')
code=$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' -H "X-Big: $big" \
    "http://127.0.0.1:$PORT/healthz" || true)
nt_expect_eq "a 6 KB request head" 431 "$code"
evicted=$(nt_metric http_connections_evicted_total)
nt_log "connections evicted at the cap: $evicted"
nt_expect_true "idle connections were evicted to admit new ones ($evicted)" test "$evicted" -gt 0

# ---- the same while a fleet is ingested ------------------------------------------------------
SIM="$NT_TMP/sim.json"
nt_simulate_bg "$SIM" --clinics 2 --devices 5 --events 60000 --events-per-message 5 --rate 1000 \
    --seed 1010
# shellcheck disable=SC2317 # invoked through nt_wait_for
events_committed() {
    [[ $(nt_sql "SELECT count(*) > 0 FROM needletrace.events") == t ]]
}
nt_wait_for "the first events committed" 30 events_committed
probe_rounds "idle connections, slow-loris and ingest" 15
nt_expect_true "the simulation was still running after the probes" nt_pid_alive "$NT_SIM_PID"
nt_wait_simulate "$SIM" 120
nt__stop_pid "$HOG_PID" 5
nt_log "hog at the end: $(cat "$HOG_STATUS")"
nt_wait_counts "$SIM" -- 180
nt_check_no_duplicate_keys
probe_rounds "after the hog left" 3
nt_finish
