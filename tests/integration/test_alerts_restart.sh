#!/usr/bin/env bash
# test_alerts_restart.sh -- issue 8, point 7: a graceful restart does not publish delivered
# alerts again. While a fleet with every kind of violation streams in and alerts are being
# published, the collector is stopped with SIGTERM three times (each time within 10 s, exit 0)
# and started again. The stop waits for the broker's PUBACKs of the alerts in flight and records
# them, so at the end every alert in the database reached the staff's subscriber exactly once:
# no alert missing, none published twice.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

nt_start_pg
nt_start_broker
nt_migrate
nt_sql "UPDATE needletrace.settings SET value = '3 seconds' WHERE key = 'sequence_gap_after'"
nt_start_alert_sub staff -c
nt_start_collector c1
nt_wait_collector_ready c1

# alert_ids: the alert ids the subscriber received, one line per delivery.
alert_ids() {
    grep -o '"alert_id":[0-9]*' "$NT_TMP/alerts-staff.out" 2>/dev/null | cut -d: -f2 || true
}
# shellcheck disable=SC2317 # invoked through nt_wait_for
more_alerts_than() {
    local n
    n=$(alert_ids | wc -l)
    echo "alerts received: $n"
    ((n > $1))
}

sims=()
for round in 1 2 3; do
    seen=$(alert_ids | wc -l)
    nt_simulate_bg "$NT_TMP/sim-$round.json" --clinics 2 --devices 5 --events 8000 \
        --events-per-message 4 --rate 500 --seed $((600 + round)) --clinic-prefix "r$round" \
        --reuse-rate 0.1 --expired-rate 0.05 --unsealed-rate 0.05 --too-deep-rate 0.05 \
        --no-cartridge-rate 0.05 --gap-rate 0.01 --skew-rate 0.01
    sims+=("$NT_TMP/sim-$round.json")
    nt_wait_for "alerts of round $round to flow" 60 more_alerts_than "$seen"
    nt_stop_collector c1 TERM 15
    nt_expect_eq "round $round: exit code after SIGTERM with alerts in flight" 0 "$NT_EXIT_CODE"
    nt_expect_true "round $round: exited within 10 s (${NT_EXIT_MS} ms)" test "$NT_EXIT_MS" -lt 10000
    nt_start_collector c1
    nt_wait_collector_ready c1
    nt_wait_simulate "$NT_TMP/sim-$round.json"
done
nt_wait_counts "${sims[@]}" -- 180
nt_wait_alerts_settled 1 120 || nt_fail "alerts did not settle: $NT_LAST"
db_alerts=$(nt_count alerts)
# shellcheck disable=SC2317
all_received() {
    local n
    n=$(alert_ids | sort -u | wc -l)
    echo "distinct alerts received: $n of $db_alerts"
    ((n >= db_alerts))
}
nt_wait_for "the subscriber to have every alert" 60 all_received
deliveries=$(alert_ids | wc -l)
distinct=$(alert_ids | sort -u | wc -l)
nt_log "alerts in the database: $db_alerts; deliveries: $deliveries ($distinct distinct)"
nt_expect_eq "every alert in the database reached the subscriber" "$db_alerts" "$distinct"
nt_expect_eq "no alert published twice (deliveries - distinct)" 0 $((deliveries - distinct))
nt_expect_eq "every alert has its delivery recorded" 0 \
    "$(nt_sql "SELECT count(*) FROM needletrace.alert_outbox")"
nt_check_no_duplicate_keys
nt_finish
