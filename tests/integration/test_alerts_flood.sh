#!/usr/bin/env bash
# test_alerts_flood.sh -- alert budgets (issue 7, item 6): one message cannot flood the alert
# stream, the excess is folded into ONE summary alert that counts it exactly, nothing is dropped,
# and another clinic's critical alert still arrives promptly.
#   1. the budget settings are validated (alert_budget_per_batch, alert_budget_per_session);
#   2. pen NP-FL-1 of clinic flood-1 sends ONE message of 1,000 needle settings, each in its own
#      session and too deep (1,000 DEPTH_OUT_OF_RANGE candidates); right after it, pen NP-CA-1 of
#      clinic calm-1 mounts a cartridge with a broken sterile barrier (critical). Expected, with
#      the default budget of 50 per (rule, pen, batch): 50 alerts (the critical ones first) + 1
#      summary whose details say 950 folded; the 950 stored in alerts_folded under it; every one
#      of the 1,000 settings accounted for exactly once; calm-1's alert received on MQTT (its
#      delay from publication is printed);
#   3. the session budget (20 per rule and session) spans batches: pen NP-FL-2 sends 100 too-deep
#      settings in one session (20 alerts + a summary of 80), then 10 more in the same session in
#      another message (boot 2): no alert but a summary of 10.
# Finally every alert raised is delivered on MQTT once and the outbox is empty.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR/lib
source "$NT_LIB_DIR/pub.sh"
nt_setup "$@"
nt_pub_setup

T=$(($(date +%s) * 1000 - 3600 * 1000)) # an hour ago
OUT="$NT_TMP/flood.json"

nt_start_pg
nt_start_broker
nt_migrate

# ---- 1. settings ------------------------------------------------------------------------------
nt_expect_eq "budget settings (defaults)" "alert_budget_per_batch=50 alert_budget_per_session=20" \
    "$(nt_sql "SELECT string_agg(key || '=' || value, ' ' ORDER BY key) FROM needletrace.settings
                WHERE key LIKE 'alert_budget%'")"
for v in 0 -1 abc 1000001; do
    nt_expect_true "alert_budget_per_batch = '$v' refused" \
        bash -c "! psql -X -q -At -h 127.0.0.1 -p $NT_PG_PORT -U postgres -d needletrace \
            -c \"UPDATE needletrace.settings SET value = '$v' WHERE key = 'alert_budget_per_batch'\" 2>/dev/null"
done

nt_start_collector c1
nt_wait_collector_ready c1
nt_start_alert_sub flood

# ---- 2. one message, 1,000 violations -----------------------------------------------------------
nt_log "publishing one message of 1,000 too-deep settings from NP-FL-1, then calm-1's critical alert"
nt_pub flood flood-1 NP-FL-1 1000 "$T" "$OUT" calm-1 NP-CA-1 ||
    nt_fail "the critical alert of calm-1 did not arrive on MQTT: $(jq -c 'del(.alerts)' "$OUT" 2>/dev/null)"
nt_log "calm-1's critical alert arrived $(jq -r .critical_delay_ms "$OUT") ms after its publication" \
    "(the flood was published $(jq -r .flood_published_ms_before_critical "$OUT") ms before it;" \
    "alerts received by then: $(jq '[.alerts[] | select(.topic | endswith("/STERILE_BARRIER_BROKEN") | not)] | length' "$OUT")" \
    "of flood-1's)"
nt_expect_eq "calm-1's critical alert arrived" true "$(jq -r .critical_arrived "$OUT")"
nt_wait_for "1,001 events stored" 30 nt_sql_ge 1001 "SELECT count(*) FROM needletrace.events"

DEPTH1="FROM needletrace.alerts WHERE rule = 'DEPTH_OUT_OF_RANGE' AND device_serial = 'NP-FL-1'"
nt_expect_eq "NP-FL-1's DEPTH_OUT_OF_RANGE alerts: individual, summaries" "50 1" \
    "$(nt_sql "SELECT count(*) FILTER (WHERE NOT details ? 'summary') || ' ' ||
                      count(*) FILTER (WHERE details ? 'summary') $DEPTH1")"
nt_expect_eq "the individual alerts are the critical ones (depth > 750 um)" "50 critical" \
    "$(nt_sql "SELECT count(*) || ' ' || string_agg(DISTINCT severity, ',') $DEPTH1
                  AND NOT details ? 'summary' AND (details->>'depth_um')::int > 750")"
nt_expect_eq "the summary: severity, folded, by batch, by session, sessions, budget, sample size" \
    "critical 950 950 0 950 50 5" \
    "$(nt_sql "SELECT concat_ws(' ', severity, details->>'folded', details->'folded_by'->>'batch',
                   details->'folded_by'->>'session', details->>'sessions',
                   details->'budget'->>'per_batch', jsonb_array_length(details->'sample'))
                 $DEPTH1 AND details ? 'summary'")"
nt_expect_eq "alerts_folded rows under the summary" 950 \
    "$(nt_sql "SELECT count(*) FROM needletrace.alerts_folded z
                 JOIN needletrace.alerts s ON s.clinic_id = z.clinic_id AND s.alert_id = z.summary_alert_id
                WHERE z.device_serial = 'NP-FL-1' AND s.details ? 'summary'")"
nt_expect_eq "settings accounted for: distinct seqs alerted or folded, of 1..1000, twice" "1000 1000 0" \
    "$(nt_sql "WITH s AS (SELECT seq FROM needletrace.alerts WHERE rule = 'DEPTH_OUT_OF_RANGE'
                            AND device_serial = 'NP-FL-1' AND NOT details ? 'summary'
                          UNION ALL
                          SELECT seq FROM needletrace.alerts_folded WHERE device_serial = 'NP-FL-1')
               SELECT count(DISTINCT seq) || ' ' || count(*) FILTER (WHERE seq BETWEEN 1 AND 1000)
                      || ' ' || (count(*) - count(DISTINCT seq)) FROM s")"
nt_expect_eq "calm-1's alerts" "STERILE_BARRIER_BROKEN critical" \
    "$(nt_sql "SELECT string_agg(rule || ' ' || severity, ', ') FROM needletrace.alerts
                WHERE clinic_id = 'calm-1'")"

# ---- 3. the session budget spans batches ----------------------------------------------------------
nt_pub deep flood-1 NP-FL-2 1 100 "$T" --sessions 1 || nt_fail "could not publish NP-FL-2's first message"
nt_wait_for "NP-FL-2's summary" 30 nt_sql_ge 1 \
    "SELECT count(*) FROM needletrace.alerts WHERE device_serial = 'NP-FL-2' AND details ? 'summary'"
nt_pub deep flood-1 NP-FL-2 2 10 $((T + 600000)) --sessions 1 --depth0 1200 ||
    nt_fail "could not publish NP-FL-2's second message"
nt_wait_for "NP-FL-2's second summary" 30 nt_sql_ge 2 \
    "SELECT count(*) FROM needletrace.alerts WHERE device_serial = 'NP-FL-2' AND details ? 'summary'"
nt_expect_eq "NP-FL-2 per boot: alerts, summaries, folded (by session)" "1:20:1:80(80) 2:0:1:10(10)" \
    "$(nt_sql "SELECT string_agg(concat_ws(':', boot_id, n, s, f) || '(' || fs || ')', ' ' ORDER BY boot_id)
                 FROM (SELECT boot_id, count(*) FILTER (WHERE NOT details ? 'summary') AS n,
                              count(*) FILTER (WHERE details ? 'summary') AS s,
                              sum((details->>'folded')::int) AS f,
                              sum((details->'folded_by'->>'session')::int) AS fs
                         FROM needletrace.alerts WHERE device_serial = 'NP-FL-2' GROUP BY 1) x")"
nt_expect_eq "alert_budget_sessions of NP-FL-2: raised, folded" "20 90" \
    "$(nt_sql "SELECT raised || ' ' || folded FROM needletrace.alert_budget_sessions
                WHERE device_serial = 'NP-FL-2'")"

# ---- delivery ------------------------------------------------------------------------------------
total=$(nt_count alerts)
# shellcheck disable=SC2317 # invoked through nt_wait_for
all_delivered() {
    local v
    v=$(nt_sql "SELECT (SELECT count(*) FROM needletrace.alert_outbox) || ' ' ||
                       (SELECT count(*) FROM needletrace.alert_deliveries)") || return 1
    echo "outbox, deliveries: $v"
    [[ $v == "0 $total" ]]
}
nt_wait_for "all $total alerts delivered" 30 all_delivered
nt_wait_for "all $total alerts received on MQTT" 30 bash -c \
    "n=\$(wc -l <'$NT_TMP/alerts-flood.out'); echo \$n; ((n >= $total))"
nt_expect_eq "alerts received on MQTT (each once)" "$total $total" \
    "$(wc -l <"$NT_TMP/alerts-flood.out") $(cut -d' ' -f2- "$NT_TMP/alerts-flood.out" | jq -r .alert_id | sort -u | wc -l)"
nt_expect_eq "alerts by rule" "DEPTH_OUT_OF_RANGE=$((total - 1)) STERILE_BARRIER_BROKEN=1" \
    "$(nt_sql "SELECT string_agg(rule || '=' || n, ' ' ORDER BY rule)
                 FROM (SELECT rule, count(*) AS n FROM needletrace.alerts GROUP BY 1) x")"
nt_finish
