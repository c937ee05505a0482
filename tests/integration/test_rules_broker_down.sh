#!/usr/bin/env bash
# test_rules_broker_down.sh -- alerts raised while the broker is down are published once it is
# back: delivery at least once, never silently dropped.
# Deterministic order of events: PostgreSQL is stopped, a simulation with every violation is
# published and journaled by the collector (nothing can be committed yet), the broker is
# stopped (SIGTERM: it saves its persistent sessions), PostgreSQL is started again: the
# collector commits the whole journal and raises every alert with no broker to publish to
# (checked: the alerts exist, none has a delivery row). Then the broker is started again: a
# subscriber with a persistent session (created before the outage, QoS 1) receives every alert
# and alert_deliveries covers every alert, each delivery recorded after the broker came back.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

RECALLED_GTIN=07612345000121
RECALLED_LOT=RCL-IT-BROKER
SIM="$NT_TMP/sim.json"

# metric NAME: the value of needletrace_NAME from c1's /metrics.
metric() {
    nt_http c1 /metrics | awk -v n="needletrace_$1" '$1 == n { print $2 }'
}
# shellcheck disable=SC2317 # invoked through nt_wait_for
metric_eq() {
    local v
    v=$(metric "$1") || return 1
    echo "needletrace_$1 $v"
    [[ $v == "$2" ]]
}

nt_start_pg
nt_start_broker
nt_migrate
nt_sql "INSERT INTO needletrace.recalled_lots (gtin, lot, reason)
        VALUES ('$RECALLED_GTIN', '$RECALLED_LOT', 'test_rules_broker_down')"
nt_sql "UPDATE needletrace.settings SET value = '3 seconds' WHERE key = 'sequence_gap_after'"
# The staff's subscriber: a persistent session (-c), so the broker keeps its subscription and
# queues its alerts while it is away.
nt_start_alert_sub staff -c
SUB_PID=$NT_SUB_PID
nt_start_collector c1
nt_wait_collector_ready c1
pid=$(nt_collector_pid c1)

# ---- journal a violating fleet while the database is down ---------------------------------------
nt_stop_pg fast
nt_log "PostgreSQL stopped"
# About 1,900 alerts: more than one page of the collector's undelivered-alerts query.
nt_simulate "$SIM" --clinics 2 --devices 5 --events 30000 --events-per-message 10 --seed 361 \
    --reuse-rate 0.3 --expired-rate 0.2 --unsealed-rate 0.2 --recalled-rate 0.2 \
    --too-deep-rate 0.05 --no-cartridge-rate 0.05 --gap-rate 0.01 --skew-rate 0.02 \
    --malformed-rate 0.01 --spoof-rate 0.01 --duplicate-rate 0.05 \
    --recalled-gtin "$RECALLED_GTIN" --recalled-lot "$RECALLED_LOT"
published=$(nt_json "$SIM" .messages_published)
expected_total=$(nt_json "$SIM" .expected.alerts)
nt_log "expected alerts: $(jq -c .expected.alerts_by_rule "$SIM")"
nt_wait_for "all $published messages journaled by the collector" 60 \
    metric_eq mqtt_messages_received_total "$published"
nt_expect_eq "committed while the database was down" 0 "$(metric db_messages_total)"

# ---- broker down, database back: the alerts are raised with nowhere to go -----------------------
nt__stop_pid "$SUB_PID" 5
nt_stop_broker
nt_wait_for "the collector noticed the broker is gone" 30 metric_eq mqtt_connected 0
nt_log "broker stopped"
nt_start_pg
nt_wait_counts "$SIM" -- 120
nt_wait_alerts_settled "$expected_total" 60 || true
nt_check_alerts_by_rule "alerts by rule, raised while the broker was down" "$SIM"
total=$(nt_count alerts)
nt_expect_true "more alerts waiting than one page of the undelivered query, 1000 ($total)" \
    test "$total" -gt 1000
nt_expect_eq "alerts with a delivery row while the broker is down" 0 "$(nt_count alert_deliveries)"
nt_expect_true "the collector says the alerts wait for the broker ($(grep -m1 -o 'msg="[0-9]* alerts wait for the broker[^"]*"' "$NT_TMP/collector-c1.log" || echo 'no such line'))" \
    grep -q 'alerts wait for the broker connection' "$NT_TMP/collector-c1.log"
nt_expect_eq "the broker is still down: needletrace_mqtt_connected" 0 "$(metric mqtt_connected)"

# ---- broker back ---------------------------------------------------------------------------------
t_back=$(nt_now_ms)
nt_start_broker
nt_start_alert_sub staff -c
# shellcheck disable=SC2317 # invoked through nt_wait_for
all_published() {
    local d m
    d=$(nt_count alert_deliveries) || return 1
    m=$(cut -d' ' -f2- "$NT_TMP/alerts-staff.out" | jq -r .alert_id | sort -u | wc -l)
    echo "deliveries $d, distinct alerts received $m, alerts $total"
    ((d >= total && m >= total))
}
# Not nt_wait_for: on a timeout the figures below say more than the timeout would.
if nt__wait_quiet 45 all_published; then
    nt_log "all $total alerts delivered $(($(nt_now_ms) - t_back)) ms after the broker was started again"
else
    nt_log "not every alert delivered 45 s after the broker was started again: $(all_published)"
fi
OUT="$NT_TMP/alerts-staff.out"
db_ids=$(nt_sql "SELECT string_agg(alert_id::text, ' ' ORDER BY alert_id) FROM needletrace.alerts")
nt_expect_true "every alert id received by the subscriber" \
    test "$db_ids" == "$(cut -d' ' -f2- "$OUT" | jq -r .alert_id | sort -nu | paste -sd' ' -)"
sort -u "$OUT" >"$NT_TMP/alerts-staff-distinct.out"
nt_expect_eq "alerts received by rule (distinct alerts, by topic)" "$(nt_alerts_by_rule)" \
    "$(nt_alert_sub_by_rule staff-distinct)"
nt_log "messages received: $(wc -l <"$OUT") for $total alerts (at least once;" \
    "$(($(wc -l <"$OUT") - total)) repeated)"
nt_expect_eq "alert_deliveries rows" "$total" "$(nt_count alert_deliveries)"
nt_expect_eq "deliveries recorded before the broker came back" 0 "$(nt_sql "SELECT count(*)
    FROM needletrace.alert_deliveries WHERE published_at < to_timestamp($t_back / 1000.0)")"
nt_expect_eq "collector pid unchanged" "$pid" "$(nt_collector_pid c1)"
nt_log "collector metrics: $(nt_http c1 /metrics |
    grep -E '^needletrace_(mqtt_connects|mqtt_connection_losses|db_connects)_total ' | tr '\n' ' ')"
nt_finish
