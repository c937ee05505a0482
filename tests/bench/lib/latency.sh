# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # R, the figures, is an associative array declared in run.sh
# latency.sh -- (d) publish->commit latency and (f) event->alert-on-MQTT latency, in one run at
# half the 1-event maximum of (c): a small share of its needle settings is too deep, and a
# subscriber on clinics/+/alerts/# stamps every alert the collector publishes. Figures in R.
# Sourced by tests/bench/run.sh (after tests/integration/lib.sh, measure.sh and phases.sh).

# phase_latency: the (d)+(f) run, with the collector of phase_collector still running.
phase_latency() {
    local alerts_out=$NT_TMP/alerts.jsonl alerts_pid er0 sb0
    R[lat_rate]=$(f "${R[c1_msgs_s]} / 2")
    R[lat_events]=$((R[lat_rate] * LAT_S))
    if [[ $PGSS == 1 ]]; then
        nt_sql "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
        nt_sql "SELECT pg_stat_statements_reset()" >/dev/null
    fi
    "$TOOL" alerts --port "$NT_BROKER_PORT" --topic 'clinics/+/alerts/#' --timeout 900 \
        >"$alerts_out" 2>"$NT_TMP/alerts.err" &
    alerts_pid=$!
    NT_BG_PIDS+=("$alerts_pid")
    nt_wait_for "alert subscriber ready" 30 grep -qx ready "$alerts_out"
    read -r er0 <<<"$(fn_stats evaluate_rules)"
    read -r sb0 <<<"$(fn_stats settle_boots)"
    nt_log "(d)+(f) latency: ${R[lat_events]} 1-event messages at ${R[lat_rate]} messages/s, --too-deep-rate $ALERT_RATE"
    bench_collect d "${R[lat_events]}" 1 203 benchlat "${R[lat_rate]}" --too-deep-rate "$ALERT_RATE"
    R[f_expected]=$(jq -r '.expected.alerts' "$NT_TMP/sim-benchlat.json")
    R[f_raised]=$(nt_sql "SELECT count(*) FROM needletrace.alerts WHERE clinic_id LIKE 'benchlat-%'")
    latency__collect_alerts "$alerts_out" "$alerts_pid"
    latency__rule_figures "$er0" "$sb0"
    latency__alert_figures "$alerts_out"
    latency__txn_figures
    if [[ $PGSS == 1 ]]; then
        latency__pgss_top
    fi
    latency__commit_figures
}

# latency__collect_alerts ALERTS_OUT PID: every event is committed; the alerts leave right after
# each commit. Waits (at most 15 s) until the subscriber has every alert the run raised, then
# stops it.
latency__collect_alerts() {
    local out=$1 pid=$2 deadline
    deadline=$(f "$(now_s) + 15")
    while (($(latency__received "$out") < R[f_raised])) && cond "$(now_s) < $deadline"; do
        sleep 0.2
    done
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" || nt_fail "bench_tool alerts failed: $(cat "$NT_TMP/alerts.err")"
}

# latency__received ALERTS_OUT: how many distinct alerts of any clinic the subscriber has.
latency__received() {
    # Lines that are not (yet) whole JSON objects ("ready") are skipped.
    jq -rR 'fromjson? | select(.alert.clinic_id? != null) | .alert.alert_id' "$1" |
        sort -u | wc -l
}

# latency__rule_figures EVALUATE_RULES_BEFORE SETTLE_BOOTS_BEFORE (fn_stats lines): calls of
# evaluate_rules during the run and the mean time per call of it and of settle_boots.
latency__rule_figures() {
    local er_calls0 er_total0 er_self0 sb_calls0 sb_total0 er_calls1 er_total1 er_self1
    local sb_calls1 sb_total1 calls sb_calls
    IFS='|' read -r er_calls0 er_total0 er_self0 <<<"$1"
    IFS='|' read -r sb_calls0 sb_total0 _ <<<"$2"
    IFS='|' read -r er_calls1 er_total1 er_self1 <<<"$(fn_stats evaluate_rules)"
    IFS='|' read -r sb_calls1 sb_total1 _ <<<"$(fn_stats settle_boots)"
    calls=$((er_calls1 - er_calls0))
    sb_calls=$((sb_calls1 - sb_calls0))
    R[er_calls]=$calls
    R[er_mean]=$(f "($er_total1 - $er_total0) / ($calls > 0 ? $calls : 1)" 2)
    R[er_self_mean]=$(f "($er_self1 - $er_self0) / ($calls > 0 ? $calls : 1)" 2)
    R[sb_mean]=$(f "($sb_total1 - $sb_total0) / ($sb_calls > 0 ? $sb_calls : 1)" 2)
}

# latency__alert_figures ALERTS_OUT: joins each received alert with its triggering event.
latency__alert_figures() {
    local row
    # The lines go into PostgreSQL as they are and are parsed there: jq would round boot_id
    # (64 bits) to a double. CSV with a quote and a delimiter that never occur: one line, one field.
    grep '^{"recv_us":' "$1" >"$NT_TMP/alerts.lines" || true
    # Per alert (its first arrival): receive time minus the triggering event's device_time, and the
    # three legs: event -> start of its transaction (inserted_at = now()), transaction start ->
    # commit (pg_xact_commit_timestamp), commit -> arrival at the subscriber.
    row=$(psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$NT_PG_PORT" -U postgres \
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
    r_split "$row" f_rx f_distinct f_joined f_p50 f_p99 f_max f_w50 f_w99 f_t50 f_t99 f_o50 f_o99
}

# latency__txn_figures: the latency run's transactions: how many, how big, how long (start ->
# commit).
latency__txn_figures() {
    local row
    row=$(nt_sql "SELECT count(*) || '|' || round(avg(n)::numeric, 1) || '|' ||
                         round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) || '|' ||
                         round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1) || '|' ||
                         round(max(ms)::numeric, 1)
                    FROM (SELECT count(*) AS n,
                                 1000 * extract(epoch FROM max(pg_xact_commit_timestamp(xmin))
                                                           - min(inserted_at)) AS ms
                            FROM needletrace.events WHERE clinic_id LIKE 'benchlat-%'
                           GROUP BY tx) t")
    r_split "$row" f_ntxn f_ev_txn f_txn50 f_txn99 f_txnmax
}

# latency__pgss_top: the statements that took the most time (BENCH_PGSS=1), for the report.
latency__pgss_top() {
    nt_sql "SELECT lpad(calls::text, 7) || ' calls  mean ' || lpad(round(mean_exec_time::numeric, 2)::text, 8)
                   || ' ms  max ' || lpad(round(max_exec_time::numeric, 1)::text, 7) || ' ms  total '
                   || lpad(round(total_exec_time::numeric)::text, 6) || ' ms  '
                   || left(regexp_replace(query, '\s+', ' ', 'g'), 90)
              FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'needletrace')
             ORDER BY total_exec_time DESC LIMIT 15" >"$NT_TMP/pgss.top" || true
}

# latency__commit_figures: (d) percentiles of inserted_at and of the commit time, both minus
# device_time, over the run's events.
latency__commit_figures() {
    local row
    row=$(nt_sql "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) || '|' ||
                       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1) || '|' ||
                       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY cms)::numeric, 1) || '|' ||
                       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY cms)::numeric, 1) || '|' ||
                       round(max(cms)::numeric, 1)
                  FROM (SELECT 1000 * extract(epoch FROM inserted_at - device_time) AS ms,
                               1000 * extract(epoch FROM pg_xact_commit_timestamp(xmin)
                                                         - device_time) AS cms
                          FROM needletrace.events WHERE clinic_id LIKE 'benchlat-%') l")
    r_split "$row" d_p50 d_p99 d_cp50 d_cp99 d_cmax
}
