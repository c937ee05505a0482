# shellcheck shell=bash
# shellcheck disable=SC2034 # FT_REPS, FT_LOSS_OK_CHUNKS... are read by measure.sh
# faults_process.sh -- faults of the collector's process: kill -9 at seeded moments, SIGTERM in
# every state, a blackholed broker at start-up. Sourced by tests/faults/row.sh.

# ---- kill -9 -----------------------------------------------------------------------------------
# Each moment sets up its state and returns with the collector to kill; FT_KILL_NOTE says where
# the kill landed.

# During ingest: a seeded 0.1-1.2 s into a chunk being published.
ft_kill9_at_ingest() {
    ft_rand 100 1200
    ft_sleep_ms "$FT_RAND"
    FT_KILL_NOTE="ingest+${FT_RAND}ms"
}

# During rule evaluation: boot_progress is locked, so the batch waits inside evaluate_rules.
ft_kill9_at_rules() {
    ft_lock boot_progress 60
    if nt__wait_quiet 10 ft__waiting_on_lock '%evaluate_rules%'; then
        FT_KILL_NOTE=rules
    else
        FT_KILL_NOTE=rules-missed
    fi
}

# During alert delivery: alert_deliveries is locked, so alerts are published but their delivery
# cannot be recorded (and the batch that records it waits).
ft_kill9_at_delivery() {
    ft_lock alert_deliveries 60
    if nt__wait_quiet 10 nt_sql_ge 1 "SELECT count(*) FROM needletrace.alert_outbox"; then
        FT_KILL_NOTE=delivery
    else
        FT_KILL_NOTE=delivery-missed
    fi
}

# During replay: commits are held (events locked) while the journal grows; killed, restarted,
# then killed again a seeded 0.1-1 s into the replay of that backlog.
ft_kill9_at_replay() {
    ft_lock events 60
    nt__wait_quiet 10 ft__waiting_on_lock '%' || true
    nt__wait_quiet 5 ft__journal_backlog_ge 20000 || true
    kill -KILL "$(nt_collector_pid c1)"
    nt_wait_collector_exit c1 30
    ft_unlock
    nt_start_collector c1
    ft_rand 100 1000
    ft_sleep_ms "$FT_RAND"
    FT_KILL_NOTE="replay+${FT_RAND}ms"
}

# Journal bytes not yet committed >= $1 (from /metrics).
ft__journal_backlog_ge() {
    local end cp
    end=$(ft_metric journal_end_position) || return 1
    cp=$(ft_metric journal_checkpoint_position) || return 1
    echo "backlog $((end - cp))"
    ((end - cp >= $1))
}

# fault_kill9: kill -9 at seeded moments (5 short, 100 long), each kind in turn chosen by the row's
# generator; a chunk is published for each, and the collector restarted after each.
fault_kill9() {
    local reps i kinds=(ingest rules delivery replay) kind landed=()
    reps=$(ft_pick 5 100)
    FT_REPS=$reps
    ft_begin
    ft_start_c1
    nt_wait_collector_ready c1
    for ((i = 0; i < reps; i++)); do
        ft_rand 0 3
        kind=${kinds[FT_RAND]}
        ft_sim_bg --events 1500 --rate 400
        "ft_kill9_at_$kind"
        kill -KILL "$(nt_collector_pid c1)"
        nt_wait_collector_exit c1 30
        ((NT_EXIT_CODE == 137)) || ft_fail "kill $i: exit code $NT_EXIT_CODE, not 137"
        if [[ $kind == rules || $kind == delivery ]]; then
            ft_unlock
        fi
        landed+=("$FT_KILL_NOTE")
        ft_start_c1
        nt__wait_quiet 60 nt__collector_ready c1 || ft_fail "kill $i: not ready 60 s after restart"
    done
    ft_fault_end
    ft_note "kills: ${landed[*]}"
    ft_settle 180
    ft_finish_row kill9
}

# ---- SIGTERM in every state --------------------------------------------------------------------
# Each state function sets the state up, leaves the collector (c1) in it, and puts back what it
# broke once ft__term has stopped the collector (FT_TERM_UNDO).

ft_term_at_connecting() {
    local port
    port=$(nt_free_port)
    ft_bg blackhole "$NT_PY" "$FT_FAULTLIB_DIR/ntblackhole.py" --port "$port"
    nt_wait_for "blackhole listening" 20 grep -qx ready "$NT_TMP/blackhole.out"
    FT_BH_PID=$FT_PID
    ft_start_c1 NEEDLETRACE_MQTT_URL="mqtt://127.0.0.1:$port"
    nt__wait_quiet 3 nt_http c1 /healthz || true
    FT_TERM_UNDO="nt__stop_pid $FT_BH_PID 2"
}

ft_term_at_broker_down() {
    nt_stop_broker
    ft_start_c1
    nt__wait_quiet 10 bash -c "curl -fsS --max-time 2 http://127.0.0.1:${NT_CHTTP[c1]}/metrics |
        grep -qx 'needletrace_mqtt_connected 0'" || true
    FT_TERM_UNDO=nt_start_broker
}

ft_term_at_db_down() {
    ft_start_c1
    nt_wait_collector_ready c1
    nt_stop_pg fast
    ft_sim_bg --events 1000 --rate 500
    nt__wait_quiet 10 bash -c "[[ \$(curl -fsS --max-time 2 http://127.0.0.1:${NT_CHTTP[c1]}/metrics |
        awk '\$1 == \"needletrace_mqtt_messages_received_total\" { print \$2 }') -gt 0 ]]" || true
    FT_TERM_UNDO=nt_start_pg
}

ft_term_at_journal_full() {
    ft_start_c1 NEEDLETRACE_JOURNAL_MAX_BYTES=128KiB NEEDLETRACE_JOURNAL_SEGMENT_BYTES=64KiB
    nt_wait_collector_ready c1
    nt_stop_pg fast
    ft_sim_bg --events 5000
    nt__wait_quiet 20 bash -c "curl -fsS --max-time 2 http://127.0.0.1:${NT_CHTTP[c1]}/metrics |
        grep -qx 'needletrace_backpressure 1'" || ft_note "journal_full: no backpressure seen"
    FT_TERM_UNDO=nt_start_pg
}

ft_term_at_mid_batch() {
    ft_start_c1
    nt_wait_collector_ready c1
    ft_lock events 60
    ft_sim_bg --events 1000 --rate 500
    nt__wait_quiet 10 ft__waiting_on_lock '%' || ft_note "mid_batch: no batch seen waiting"
    FT_TERM_UNDO=ft_unlock
}

ft_term_at_replay() {
    ft_start_c1
    nt_wait_collector_ready c1
    ft_lock events 60
    ft_sim_bg --events 3000 --rate 1000
    nt__wait_quiet 10 ft__journal_backlog_ge 20000 || true
    kill -KILL "$(nt_collector_pid c1)"
    nt_wait_collector_exit c1 30
    ft_unlock
    ft_start_c1
    nt__wait_quiet 5 nt_sql_ge 1 "SELECT count(*) FROM pg_stat_activity
        WHERE application_name <> 'ft-lock' AND state = 'active' AND query NOT LIKE '%pg_stat%'" ||
        true
    FT_TERM_UNDO=:
}

ft_term_at_alerts_in_flight() {
    ft_start_c1
    nt_wait_collector_ready c1
    ft_lock alert_deliveries 60
    ft_sim_bg --events 2000 --rate 1000 --unsealed-rate 0.2
    nt__wait_quiet 10 nt_sql_ge 1 "SELECT count(*) FROM needletrace.alert_outbox" ||
        ft_note "alerts_in_flight: no alert waiting for delivery seen"
    FT_TERM_UNDO=ft_unlock
}

# fault_sigterm: SIGTERM in each state; each exit within 10 s with code 0; then nothing lost.
fault_sigterm() {
    local states=(connecting broker_down db_down journal_full mid_batch replay alerts_in_flight)
    local s results=()
    FT_REPS=${#states[@]}
    ft_begin
    ft_start_c1
    nt_wait_collector_ready c1
    ft_term_c1 "after creating the session"
    for s in "${states[@]}"; do
        "ft_term_at_$s"
        ft_term_c1 "while $s"
        results+=("$s:${NT_EXIT_MS}ms/exit$NT_EXIT_CODE")
        $FT_TERM_UNDO
    done
    ft_note "SIGTERM: ${results[*]}"
    ft_start_c1
    ft_fault_end
    ft_settle 180
    ft_finish_row sigterm
}

# ---- a blackholed broker at start-up -----------------------------------------------------------
# fault_blackhole: the collector's session exists and a chunk waits for it at the broker; the
# collector starts against a port where connect() hangs: /healthz must answer and SIGTERM end it
# within 10 s; then, started against the broker, it gets the chunk.
fault_blackhole() {
    local port t0 ms
    ft_begin
    ft_start_c1
    nt_wait_collector_ready c1
    ft_term_c1 "after creating the session"
    ft_sim --events 2000
    port=$(nt_free_port)
    ft_bg blackhole "$NT_PY" "$FT_FAULTLIB_DIR/ntblackhole.py" --port "$port"
    nt_wait_for "blackhole listening" 20 grep -qx ready "$NT_TMP/blackhole.out"
    t0=$(nt_now_ms)
    ft_start_c1 NEEDLETRACE_MQTT_URL="mqtt://127.0.0.1:$port"
    if nt__wait_quiet 10 nt_http c1 /healthz; then
        ms=$(($(nt_now_ms) - t0))
        ft_note "/healthz answered ${ms} ms after the start"
    else
        ft_fail "/healthz did not answer within 10 s of the start (the loop is blocked)"
    fi
    ft_term_c1 "with the broker blackholed"
    ft_note "SIGTERM: exit code $NT_EXIT_CODE after ${NT_EXIT_MS} ms"
    ft_start_c1
    ft_fault_end
    ft_settle 120
    ft_finish_row blackhole
}
