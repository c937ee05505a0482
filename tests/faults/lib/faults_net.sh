# shellcheck shell=bash
# shellcheck disable=SC2034 # FT_REPS, FT_LOSS_OK_CHUNKS... are read by measure.sh
# faults_net.sh -- faults of the network: the broker restarted during publishing, the links to
# the broker and to the database cut (a TCP proxy on loopback, tests/fault/ntproxy.py).
# Sourced by row.sh.

# fault_broker_restart: the broker (persistence on) restarts 2 times short, 10 long, a seeded
# 1-2.5 s apart, while the fleet publishes.
fault_broker_restart() {
    local n i
    n=$(ft_pick 2 10)
    FT_REPS=$n
    ft_begin
    ft_start_c1
    nt_wait_collector_ready c1
    ft_sim_bg --duration "$((n * 3 + 2))" --rate 100
    nt_wait_for "first events committed" 60 nt_sql_gt 0 "SELECT count(*) FROM needletrace.events"
    for ((i = 0; i < n; i++)); do
        ft_rand 1000 2500
        ft_sleep_ms "$FT_RAND"
        nt_restart_broker
    done
    ft_fault_end
    ft_settle 180
    ft_finish_row broker_restart
}

# ft__proxy NAME TARGET_PORT: a proxy to 127.0.0.1:TARGET_PORT, cut while $NT_TMP/cut-NAME
# exists; sets FT_PROXY_PORT.
ft__proxy() {
    FT_PROXY_PORT=$(nt_free_port)
    ft_bg "proxy-$1" "$NT_PY" "$FT_FAULTLIB_DIR/ntproxy.py" --listen "$FT_PROXY_PORT" \
        --target "$2" --control "$NT_TMP/cut-$1" --mode blackhole
    nt_wait_for "proxy $1 listening" 20 grep -qx ready "$NT_TMP/proxy-$1.out"
}

# fault_net_cut [broker|db|both]: the collector reaches the broker and the database through
# proxies; the chosen links are cut (connections dropped, new ones blackholed) for 8 s short,
# 30 s long, while the fleet publishes (straight to the broker), then restored.
ft__net_cut() {
    local which=$1 dur pid bport pport
    dur=$(ft_pick 8 30)
    ft_begin
    ft__proxy broker "$NT_BROKER_PORT"
    bport=$FT_PROXY_PORT
    ft__proxy db "$NT_PG_PORT"
    pport=$FT_PROXY_PORT
    ft_start_c1 NEEDLETRACE_MQTT_URL="mqtt://127.0.0.1:$bport" \
        NEEDLETRACE_DATABASE_URL="host=127.0.0.1 port=$pport user=nt_collector dbname=needletrace"
    nt_wait_collector_ready c1
    pid=$(nt_collector_pid c1)
    ft_sim_bg --duration "$dur" --rate 100
    nt_wait_for "first events committed" 60 nt_sql_gt 0 "SELECT count(*) FROM needletrace.events"
    [[ $which == db ]] || touch "$NT_TMP/cut-broker"
    [[ $which == broker ]] || touch "$NT_TMP/cut-db"
    FT_READYZ_SEEN=""
    ft_hold_alive "$dur" ft__watch_readyz
    rm -f "$NT_TMP/cut-broker" "$NT_TMP/cut-db"
    ft_fault_end
    ft_note "readyz during the cut:$FT_READYZ_SEEN"
    ft_settle 180
    [[ $(nt_collector_pid c1) == "$pid" ]] || ft_fail "the collector was restarted"
    ft_finish_row "net_cut_$which"
}

fault_net_cut_both() {
    ft__net_cut both
}

fault_net_cut_broker() {
    ft__net_cut broker
}

fault_net_cut_db() {
    ft__net_cut db
}
