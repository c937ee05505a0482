#!/usr/bin/env bash
# test_rules_clean.sh -- a clean fleet (no violation, no malformed or spoofed message) of
# 100,000 events raises no alert at all, for any rule, also after sequence gap checks have run
# with sequence_gap_after set short (2 s): nothing on MQTT either.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

SIM="$NT_TMP/sim.json"
GAP_AFTER_S=2

nt_start_pg
nt_start_broker
nt_migrate
nt_sql "UPDATE needletrace.settings SET value = '$GAP_AFTER_S seconds' WHERE key = 'sequence_gap_after'"
# Counts calls of the rule functions (pg_stat_user_functions): proof that the gap check ran.
nt_sql "ALTER DATABASE needletrace SET track_functions = 'pl'"
nt_start_collector c1
nt_wait_collector_ready c1
nt_start_alert_sub clean

nt_simulate "$SIM" --clinics 3 --devices 10 --events 100000 --events-per-message 10 --seed 401
nt_log "expected: $(jq -c '.expected | {events, raw_messages, quarantine, alerts, alerts_by_rule}' "$SIM")"
nt_expect_eq "events generated" 100000 "$(nt_json "$SIM" .events_generated)"
nt_expect_eq "simulator's expected alerts" 0 "$(nt_json "$SIM" .expected.alerts)"
nt_wait_counts "$SIM" -- 240

# Long enough for the time-based rule: a gap check that started after every event had been
# received more than sequence_gap_after ago (checks run every ~5 s), seen in the function
# call statistics (flushed by the collector's session within about a second).
# shellcheck disable=SC2317 # invoked through nt_wait_for
gap_checks() {
    nt_sql "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions
             WHERE schemaname = 'needletrace' AND funcname = 'check_sequence_gaps'"
}
due=$(nt_sql "SELECT extract(epoch FROM max(received_at) + interval '$GAP_AFTER_S seconds')::numeric
                FROM needletrace.events")
nt_wait_for "wall clock past the last event's received_at + ${GAP_AFTER_S}s" 30 \
    nt_sql_eq t "SELECT now() > to_timestamp($due)"
calls0=$(gap_checks)
nt_wait_for "two more sequence gap checks (calls so far: $calls0)" 30 \
    nt_sql_ge "$((calls0 + 2))" "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions
             WHERE schemaname = 'needletrace' AND funcname = 'check_sequence_gaps'"
nt_log "check_sequence_gaps calls: $calls0 when due, $NT_LAST now;" \
    "evaluate_rules calls: $(nt_sql "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions
        WHERE schemaname = 'needletrace' AND funcname = 'evaluate_rules'")"

nt_check_alerts_by_rule "alerts by rule (all zero)" "$SIM"
nt_expect_eq "alerts" 0 "$(nt_count alerts)"
nt_expect_eq "boots with an unsettled gap" 0 "$(nt_open_boots)"
nt_expect_eq "rule state: no depth violation, skew or missing cartridge recorded" "0 0 0 0" \
    "$(nt_sql "SELECT (SELECT count(*) FROM needletrace.depth_violations_seen) || ' ' ||
                      (SELECT count(*) FROM needletrace.clock_skew_alerted) || ' ' ||
                      (SELECT count(*) FROM needletrace.no_cartridge_alerted) || ' ' ||
                      (SELECT count(*) FROM needletrace.sequence_gaps_alerted)")"
nt_expect_eq "every mounted cartridge recorded once as first use" \
    "$(nt_sql "SELECT count(DISTINCT (gtin, cartridge_serial)) FROM needletrace.events
                WHERE kind = 'cartridge_mounted'")" "$(nt_count cartridge_first_use)"
mounts=$(nt_sql "SELECT count(*) FROM needletrace.events WHERE kind = 'cartridge_mounted'")
nt_expect_true "the fleet mounted cartridges and needled ($(nt_sql "SELECT string_agg(kind || '=' || n, ' ' ORDER BY kind) FROM (SELECT kind, count(*) AS n FROM needletrace.events GROUP BY kind) k"))" \
    test "$mounts" -gt 100
nt_expect_eq "alert messages on MQTT" 0 "$(wc -l <"$NT_TMP/alerts-clean.out")"
nt_check_no_duplicate_keys
nt_finish
