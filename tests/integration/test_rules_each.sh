#!/usr/bin/env bash
# test_rules_each.sh -- every compliance rule of DESIGN §3 fires exactly as often as the
# simulator says: one simulation with every violation rate > 0 (plus malformed, spoofed and
# duplicated messages), the recalled lot in needletrace.recalled_lots and sequence_gap_after
# set to 3 s. Then: alerts by rule in the database == expected.alerts_by_rule for all 8 rules;
# every alert published once on clinics/{clinic}/alerts/{rule} (QoS 1) with the DESIGN §7
# JSON; alert_deliveries covers every alert; NOTIFY needletrace_alert sent once per alert.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

RECALLED_GTIN=07612345000121
RECALLED_LOT=RCL-IT-EACH
SIM="$NT_TMP/sim.json"

nt_start_pg
nt_start_broker
nt_migrate
nt_sql "INSERT INTO needletrace.recalled_lots (gtin, lot, reason)
        VALUES ('$RECALLED_GTIN', '$RECALLED_LOT', 'test_rules_each: recalled lot')"
nt_sql "UPDATE needletrace.settings SET value = '3 seconds' WHERE key = 'sequence_gap_after'"
nt_expect_eq "sequence_gap_after" "3 seconds" \
    "$(nt_sql "SELECT value FROM needletrace.settings WHERE key = 'sequence_gap_after'")"

# NOTIFY: a psql session LISTENing on needletrace_alert. psql prints the notifications it has
# received after each command it runs, so it is fed a cheap query every 0.3 s.
{
    printf "LISTEN needletrace_alert;\nSELECT 'listening';\n"
    while :; do
        printf 'SELECT 1;\n'
        sleep 0.3
    done
} | psql -X -q -At -h 127.0.0.1 -p "$NT_PG_PORT" -U postgres -d needletrace \
    >"$NT_TMP/notify.out" 2>"$NT_TMP/notify.log" &
LISTEN_PID=$!
NT_BG_PIDS+=("$LISTEN_PID")
nt_wait_for "psql LISTEN needletrace_alert" 30 grep -qx listening "$NT_TMP/notify.out"

nt_start_collector c1
nt_wait_collector_ready c1
nt_start_alert_sub each

nt_simulate "$SIM" --clinics 2 --devices 5 --events 20000 --events-per-message 10 --seed 301 \
    --reuse-rate 0.1 --expired-rate 0.05 --unsealed-rate 0.05 --recalled-rate 0.05 \
    --too-deep-rate 0.05 --no-cartridge-rate 0.05 --gap-rate 0.01 --skew-rate 0.01 \
    --malformed-rate 0.01 --spoof-rate 0.01 --duplicate-rate 0.05 \
    --recalled-gtin "$RECALLED_GTIN" --recalled-lot "$RECALLED_LOT"
nt_expect_eq "simulator's recalled lot" "$RECALLED_GTIN $RECALLED_LOT" \
    "$(jq -r '"\(.recalled_lot.gtin) \(.recalled_lot.lot)"' "$SIM")"
nt_log "expected alerts: $(jq -c '.expected | {alerts, alerts_by_rule}' "$SIM")"
expected_total=$(nt_json "$SIM" .expected.alerts)
# Every rule must be exercised, or "equal" would prove little.
for rule in "${NT_RULES[@]}"; do
    n=$(nt_json "$SIM" ".expected.alerts_by_rule.$rule // 0")
    nt_expect_true "the simulation injects $rule (expected $n)" test "$n" -gt 0
done
nt_expect_true "expected.alerts ($expected_total) is the sum of alerts_by_rule" \
    test "$expected_total" -eq "$(jq '[.expected.alerts_by_rule[]] | add' "$SIM")"

nt_wait_counts "$SIM" -- 180
# SEQUENCE_GAP is time-based (3 s after the later seq arrived, checked every ~5 s).
t0=$(nt_now_ms)
nt_wait_alerts_settled "$expected_total" 60 || true
nt_log "alerts settled $(($(nt_now_ms) - t0)) ms after the events (alerts, open boots: $NT_LAST)"
nt_check_alerts_by_rule "alerts by rule in the database" "$SIM"
nt_expect_eq "alerts in the database" "$expected_total" "$(nt_count alerts)"
nt_expect_eq "boots with an unsettled gap" 0 "$(nt_open_boots)"
nt_expect_eq "alerts twice for one (rule, event)" 0 "$(nt_sql "SELECT count(*) FROM (
    SELECT 1 FROM needletrace.alerts GROUP BY rule, clinic_id, device_serial, boot_id, seq
    HAVING count(*) > 1) d")"
# Each alert points at an event that is committed (except SEQUENCE_GAP: the missing seq).
nt_expect_eq "alerts without their triggering event" 0 "$(nt_sql "SELECT count(*)
    FROM needletrace.alerts a WHERE a.rule <> 'SEQUENCE_GAP' AND NOT EXISTS (
        SELECT 1 FROM needletrace.events e WHERE e.clinic_id = a.clinic_id
           AND e.device_serial = a.device_serial AND e.boot_id = a.boot_id AND e.seq = a.seq)")"
nt_expect_eq "severity by rule" \
    "CARTRIDGE_EXPIRED=critical CARTRIDGE_RECALLED=critical CARTRIDGE_REUSED=critical CLOCK_SKEW=warning DEPTH_OUT_OF_RANGE=critical,warning NEEDLING_WITHOUT_CARTRIDGE=critical SEQUENCE_GAP=warning STERILE_BARRIER_BROKEN=critical" \
    "$(nt_sql "SELECT string_agg(rule || '=' || sev, ' ' ORDER BY rule) FROM (
        SELECT rule, string_agg(DISTINCT severity, ',' ORDER BY severity) AS sev
          FROM needletrace.alerts GROUP BY rule) s")"
nt_expect_eq "recalled alerts name the recalled lot" 0 "$(nt_sql "SELECT count(*)
    FROM needletrace.alerts WHERE rule = 'CARTRIDGE_RECALLED'
     AND (details->>'gtin' IS DISTINCT FROM '$RECALLED_GTIN'
          OR details->>'lot' IS DISTINCT FROM '$RECALLED_LOT')")"

# ---- MQTT: every alert published, once, with the DESIGN §7 JSON -------------------------------
total=$(nt_count alerts)
# shellcheck disable=SC2317 # invoked through nt_wait_for
all_published() {
    local d m
    d=$(nt_count alert_deliveries) || return 1
    m=$(wc -l <"$NT_TMP/alerts-each.out")
    echo "deliveries $d, mqtt messages $m, alerts $total"
    ((d >= total && m >= total))
}
nt_wait_for "every alert delivered and received on MQTT" 60 all_published
nt_log "$NT_LAST"
OUT="$NT_TMP/alerts-each.out"
nt_expect_eq "alerts received on MQTT by rule (topic)" "$(nt_alerts_by_rule)" \
    "$(nt_alert_sub_by_rule each)"
nt_expect_eq "MQTT messages" "$total" "$(wc -l <"$OUT")"
db_ids=$(nt_sql "SELECT string_agg(alert_id::text, ' ' ORDER BY alert_id) FROM needletrace.alerts")
mqtt_ids=$(cut -d' ' -f2- "$OUT" | jq -r '.alert_id' | sort -n | paste -sd' ' -)
nt_expect_true "MQTT alert ids == database alert ids (each once)" test "$db_ids" == "$mqtt_ids"
# Payload vs topic and vs the row; the fields of DESIGN §7.
bad=$(jq -R -r '
    capture("^(?<topic>[^ ]+) (?<payload>.*)$") | .topic as $topic | (.payload | fromjson)
    | select(($topic | split("/")) as $t
        | ($t[1] != .clinic_id) or ($t[3] != .rule)
          or (.severity | IN("warning", "critical") | not)
          or (.device_serial | type != "string")
          or (has("session_id") | not)
          or (.session_id != null and (.session_id | type != "string"))
          or (.raised_at | test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$") | not)
          or (.details | type != "object"))
    | "\($topic) \(.alert_id)"' "$OUT" 2>&1 | head -n 5)
nt_expect_eq "MQTT payloads not matching their topic or DESIGN §7 (first 5)" "" "$bad"
# The published JSON is the row: (alert_id, rule, severity, clinic, device, session, raised_at
# to the ms, details) of every alert, normalised by jq on both sides.
db_rows=$(nt_sql "SELECT jsonb_build_object('alert_id', alert_id, 'rule', rule, 'severity', severity,
                             'clinic_id', clinic_id, 'device_serial', device_serial,
                             'session_id', session_id, 'raised_at', needletrace.rfc3339(raised_at),
                             'details', details)
                    FROM needletrace.alerts ORDER BY alert_id" | jq -S -c . | md5sum | cut -d' ' -f1)
mqtt_rows=$(cut -d' ' -f2- "$OUT" |
    jq -s -S -c 'map({alert_id, rule, severity, clinic_id, device_serial, session_id, raised_at,
                      details}) | sort_by(.alert_id)[]' | md5sum | cut -d' ' -f1)
nt_expect_eq "MQTT payloads equal the alert rows (md5 over all)" "$db_rows" "$mqtt_rows"

nt_expect_eq "alert_deliveries rows" "$total" "$(nt_count alert_deliveries)"
nt_expect_eq "alerts without a delivery row" 0 "$(nt_sql "SELECT count(*) FROM needletrace.alerts a
    WHERE NOT EXISTS (SELECT 1 FROM needletrace.alert_deliveries d
                       WHERE d.clinic_id = a.clinic_id AND d.alert_id = a.alert_id)")"
nt_expect_eq "deliveries recorded before the alert was raised" 0 "$(nt_sql "SELECT count(*)
    FROM needletrace.alert_deliveries d JOIN needletrace.alerts a USING (clinic_id, alert_id)
    WHERE d.published_at < a.raised_at")"
nt_log "alert → delivery record: $(nt_sql "SELECT 'p50 ' || round(percentile_cont(0.5) WITHIN GROUP (ORDER BY x)) || ' ms, max ' || round(max(x)) || ' ms'
    FROM (SELECT extract(epoch FROM d.published_at - a.raised_at) * 1000 AS x
            FROM needletrace.alert_deliveries d JOIN needletrace.alerts a USING (clinic_id, alert_id)) s")"

# ---- NOTIFY ----------------------------------------------------------------------------------
# shellcheck disable=SC2317 # invoked through nt_wait_for
notified() {
    local n
    n=$(grep -c '^Asynchronous notification "needletrace_alert" with payload' "$NT_TMP/notify.out" ||
        true)
    echo "$n notifications"
    ((n >= total))
}
nt_wait_for "a NOTIFY per alert" 30 notified
notify_ids=$(sed -n 's/^Asynchronous notification "needletrace_alert" with payload "{"alert_id":\([0-9]*\),.*/\1/p' \
    "$NT_TMP/notify.out" | sort -n | paste -sd' ' -)
nt_expect_eq "NOTIFY needletrace_alert notifications" "$total" \
    "$(grep -c '^Asynchronous notification "needletrace_alert"' "$NT_TMP/notify.out" || true)"
nt_expect_true "NOTIFY alert ids == database alert ids (each once)" test "$db_ids" == "$notify_ids"
nt__stop_pid "$LISTEN_PID" 5

nt_check_no_duplicate_keys
nt_finish
