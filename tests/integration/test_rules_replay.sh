#!/usr/bin/env bash
# test_rules_replay.sh -- a redelivered or replayed message raises nothing new.
# After two simulations with violations (A: byte-reproducible with --fixed-time-ms, every rule
# but CLOCK_SKEW; B: wall clock, with CLOCK_SKEW) have raised exactly the expected alerts:
#  (a) the collector is stopped, its checkpoint rewritten to journal position 0 and restarted:
#      the whole journal is replayed through the rules; events, alerts (row for row), rule
#      state, deliveries and MQTT stay the same, also after further sequence gap checks;
#  (b) simulation A is published again, byte for byte (same seed, prefix and device clock; the
#      two --dump files are compared): nothing new anywhere.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

RECALLED_GTIN=07612345000121
RECALLED_LOT=RCL-IT-REPLAY
FIXED_MS=1735689600000 # 2025-01-01T00:00:00Z: in the past, so no clock skew
VIOLATIONS=(--reuse-rate 0.1 --expired-rate 0.05 --unsealed-rate 0.05 --recalled-rate 0.05
    --too-deep-rate 0.05 --no-cartridge-rate 0.05 --gap-rate 0.01 --malformed-rate 0.01
    --spoof-rate 0.01 --duplicate-rate 0.05 --recalled-gtin "$RECALLED_GTIN"
    --recalled-lot "$RECALLED_LOT")
SIM_A=(--clinics 2 --devices 5 --events 10000 --events-per-message 10 --seed 311
    --clinic-prefix replay-a --fixed-time-ms "$FIXED_MS" "${VIOLATIONS[@]}")
SIM_B=(--clinics 1 --devices 5 --events 5000 --events-per-message 10 --seed 312
    --clinic-prefix replay-b --skew-rate 0.05 "${VIOLATIONS[@]}")

# metric NAME: the value of needletrace_NAME from c1's /metrics.
metric() {
    nt_http c1 /metrics | awk -v n="needletrace_$1" '$1 == n { print $2 }'
}
# shellcheck disable=SC2317 # invoked through nt_wait_for
caught_up() {
    local cp end
    cp=$(metric journal_checkpoint_position) || return 1
    end=$(metric journal_end_position) || return 1
    echo "checkpoint $cp, journal end $end"
    [[ -n $cp && $cp == "$end" && $cp -gt 0 ]]
}
# shellcheck disable=SC2317 # invoked through nt_wait_for
gap_checks() {
    nt_sql "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions
             WHERE schemaname = 'needletrace' AND funcname = 'check_sequence_gaps'"
}
# Two more sequence gap checks than now (pg_stat_user_functions, track_functions = pl).
wait_two_gap_checks() {
    local c0
    c0=$(gap_checks)
    nt_wait_for "two more sequence gap checks (calls so far: $c0)" 30 \
        nt_sql_ge "$((c0 + 2))" "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions
             WHERE schemaname = 'needletrace' AND funcname = 'check_sequence_gaps'"
}
# Everything that must not change, one line: row counts and an md5 of every alert row.
state() {
    nt_sql "SELECT concat_ws(' ',
        'events=' || (SELECT count(*) FROM needletrace.events),
        'raw=' || (SELECT count(*) FROM needletrace.raw_messages),
        'quarantine=' || (SELECT count(*) FROM needletrace.quarantine),
        'alerts=' || (SELECT count(*) FROM needletrace.alerts),
        'deliveries=' || (SELECT count(*) FROM needletrace.alert_deliveries),
        'first_use=' || (SELECT count(*) FROM needletrace.cartridge_first_use),
        'depth_seen=' || (SELECT count(*) FROM needletrace.depth_violations_seen),
        'skew=' || (SELECT count(*) FROM needletrace.clock_skew_alerted),
        'nocart=' || (SELECT count(*) FROM needletrace.no_cartridge_alerted),
        'gaps=' || (SELECT count(*) FROM needletrace.sequence_gaps_alerted),
        'boot_events=' || (SELECT coalesce(sum(n_events), 0) FROM needletrace.boot_progress),
        'alerts_md5=' || (SELECT md5(coalesce(string_agg(to_jsonb(a)::text, ',' ORDER BY alert_id), ''))
                            FROM needletrace.alerts a))"
}

nt_start_pg
nt_start_broker
nt_migrate
nt_sql "INSERT INTO needletrace.recalled_lots (gtin, lot, reason)
        VALUES ('$RECALLED_GTIN', '$RECALLED_LOT', 'test_rules_replay')"
nt_sql "UPDATE needletrace.settings SET value = '3 seconds' WHERE key = 'sequence_gap_after'"
nt_sql "ALTER DATABASE needletrace SET track_functions = 'pl'"
nt_start_collector c1
nt_wait_collector_ready c1
nt_start_alert_sub replay

nt_simulate "$NT_TMP/simA.json" "${SIM_A[@]}" --dump "$NT_TMP/simA.dump"
nt_simulate "$NT_TMP/simB.json" "${SIM_B[@]}"
expected_total=$(nt_json_sum .expected.alerts "$NT_TMP/simA.json" "$NT_TMP/simB.json")
nt_log "expected alerts: A $(jq -c .expected.alerts_by_rule "$NT_TMP/simA.json")," \
    "B $(jq -c .expected.alerts_by_rule "$NT_TMP/simB.json")"
nt_expect_true "the simulations inject CLOCK_SKEW and SEQUENCE_GAP" test \
    "$(nt_json_sum '.expected.alerts_by_rule.CLOCK_SKEW' "$NT_TMP/simB.json")" -gt 0 -a \
    "$(nt_json_sum '.expected.alerts_by_rule.SEQUENCE_GAP' "$NT_TMP/simA.json")" -gt 0
nt_wait_counts "$NT_TMP/simA.json" "$NT_TMP/simB.json" -- 180
nt_wait_alerts_settled "$expected_total" 60 || true
nt_check_alerts_by_rule "alerts by rule after the first delivery" "$NT_TMP/simA.json" "$NT_TMP/simB.json"
total=$(nt_count alerts)
# shellcheck disable=SC2317 # invoked through nt_wait_for
all_published() {
    local d m
    d=$(nt_count alert_deliveries) || return 1
    m=$(wc -l <"$NT_TMP/alerts-replay.out")
    echo "deliveries $d, MQTT messages $m, alerts $total"
    ((d >= total && m >= total))
}
nt_wait_for "every alert delivered and received on MQTT" 60 all_published
before=$(state)
mqtt_before=$(wc -l <"$NT_TMP/alerts-replay.out")
nt_log "state: $before; MQTT alert messages: $mqtt_before"

# ---- (a) replay the whole journal ---------------------------------------------------------------
journal_end=$(metric journal_end_position)
nt_stop_collector c1 TERM
nt_expect_eq "collector exit code after SIGTERM" 0 "$NT_EXIT_CODE"
nt_expect_eq "checkpoint before the rewrite == journal end" "$journal_end" \
    "$(nt_sql "SELECT journal_pos FROM needletrace.collector_checkpoints WHERE collector_id = 'it-c1'")"
nt_sql "UPDATE needletrace.collector_checkpoints SET journal_pos = 0 WHERE collector_id = 'it-c1'"
nt_start_collector c1
nt_wait_collector_ready c1
nt_wait_for "the collector replayed its journal up to the end" 120 caught_up
nt_log "replay: $(grep -o 'resuming at journal position [0-9]* ([0-9]* bytes to replay)' \
    "$NT_TMP/collector-c1.log" | tail -n 1); $(nt_http c1 /metrics |
    grep -E '^needletrace_db_(batches|batches_fallback|messages|events)_total ' | tr '\n' ' ')"
nt_expect_true "restarted at journal position 0 with the whole journal ($journal_end bytes) to replay" \
    grep -q "resuming at journal position 0 ($journal_end bytes to replay)" "$NT_TMP/collector-c1.log"
nt_expect_eq "messages committed again by the replay (raw + quarantine + duplicates)" \
    "$(nt_json_sum .messages_published "$NT_TMP/simA.json" "$NT_TMP/simB.json")" \
    "$(metric db_messages_total)"
wait_two_gap_checks
nt_expect_eq "state after the replay" "$before" "$(state)"
nt_check_alerts_by_rule "alerts by rule after the replay" "$NT_TMP/simA.json" "$NT_TMP/simB.json"
nt_expect_eq "MQTT alert messages after the replay" "$mqtt_before" "$(wc -l <"$NT_TMP/alerts-replay.out")"

# ---- (b) publish simulation A again, byte for byte ---------------------------------------------
received0=$(metric mqtt_messages_received_total)
nt_simulate "$NT_TMP/simA2.json" "${SIM_A[@]}" --dump "$NT_TMP/simA2.dump"
nt_expect_true "the second publish is byte-identical to the first ($(stat -c %s "$NT_TMP/simA.dump") bytes)" \
    cmp -s "$NT_TMP/simA.dump" "$NT_TMP/simA2.dump"
published=$(nt_json "$NT_TMP/simA2.json" .messages_published)
nt_wait_for "all $published messages received again" 60 \
    test "$(metric mqtt_messages_received_total)" -ge "$((received0 + published))"
nt_wait_for "and committed" 120 caught_up
nt_expect_eq "messages received again" "$((received0 + published))" "$(metric mqtt_messages_received_total)"
wait_two_gap_checks
nt_expect_eq "state after publishing A again" "$before" "$(state)"
nt_check_alerts_by_rule "alerts by rule after publishing A again" "$NT_TMP/simA.json" "$NT_TMP/simB.json"
nt_expect_eq "MQTT alert messages after publishing A again" "$mqtt_before" \
    "$(wc -l <"$NT_TMP/alerts-replay.out")"
nt_check_no_duplicate_keys
nt_finish
