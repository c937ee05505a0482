#!/usr/bin/env bash
# test_rules_late_first_use.sh -- CARTRIDGE_REUSED is judged by the pens' clocks, not by arrival
# (issue 7, item 4). One cartridge, four uses on four pens of four clinics, published one message
# at a time and each committed before the next:
#   1. pen B, session SB, at T+10 min  -- first to arrive: nothing to alert yet;
#   2. pen A, session SA, at T         -- earlier, arrives late: the alert goes to SB (the later
#      use, already stored), raised by A's transaction, details naming both uses;
#   3. pen C, session SC, at T+20 min  -- an ordinary later use: alert on SC naming SA;
#   4. pen D, session SD, at T exactly -- a tie with SA, broken by (clinic, device, boot, seq):
#      clinic "late-0" sorts before "late-a", so SD is first and the alert goes to SA.
# Then every message is published again (duplicates): nothing new. Each alert exists once, in the
# database and on MQTT, and cartridge_first_use names SD.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR/lib
source "$NT_LIB_DIR/pub.sh"
nt_setup "$@"
nt_pub_setup

GTIN=07612345000121
CART=LATE-CART-1
T=$(($(date +%s) * 1000 - 2 * 3600 * 1000)) # two hours ago, whole seconds
MIN=60000

nt_start_pg
nt_start_broker
nt_migrate
nt_start_collector c1
nt_wait_collector_ready c1
nt_start_alert_sub late

# use N CLINIC PEN TIME_MS: publishes the mount of the cartridge in session PEN-s1 (boot 1, seq 1)
# and waits until N mounts are stored.
use() {
    local n=$1 clinic=$2 pen=$3 t=$4
    nt_pub mount "$clinic" "$pen" 1 1 "$pen-s1" "$GTIN" "$CART" "$t" ||
        nt_fail "could not publish the mount of $pen"
    nt_wait_for "$n mounts stored" 30 nt_sql_ge "$n" \
        "SELECT count(*) FROM needletrace.events WHERE kind = 'cartridge_mounted'"
}
reused() {
    nt_sql "SELECT coalesce(string_agg(concat_ws(' ', device_serial, session_id,
                 details->'first_use'->>'session_id',
                 coalesce(details->>'first_use_arrived_late', 'false')), ', ' ORDER BY alert_id), 'none')
              FROM needletrace.alerts WHERE rule = 'CARTRIDGE_REUSED'"
}
iso() { date -u -d "@$(($1 / 1000))" +%Y-%m-%dT%H:%M:%S.000Z; }

use 1 late-b NP-LB-1 $((T + 10 * MIN))
nt_expect_eq "after the later use alone: CARTRIDGE_REUSED alerts" none "$(reused)"

use 2 late-a NP-LA-1 "$T"
nt_wait_for "the reuse alert of the later session" 30 nt_sql_ge 1 \
    "SELECT count(*) FROM needletrace.alerts WHERE rule = 'CARTRIDGE_REUSED'"
nt_expect_eq "after the earlier use arrived late: the alert names the later session SB, first use SA" \
    "NP-LB-1 NP-LB-1-s1 NP-LA-1-s1 true" "$(reused)"
nt_expect_eq "its details name both uses (clinic, pen, session, device time)" \
    "late-a NP-LA-1 NP-LA-1-s1 $(iso "$T") | late-b NP-LB-1 NP-LB-1-s1 $(iso $((T + 10 * MIN)))" \
    "$(nt_sql "SELECT concat_ws(' ', details->'first_use'->>'clinic_id',
                   details->'first_use'->>'device_serial', details->'first_use'->>'session_id',
                   details->'first_use'->>'device_time') || ' | ' ||
               concat_ws(' ', details->'reuse'->>'clinic_id', details->'reuse'->>'device_serial',
                   details->'reuse'->>'session_id', details->'reuse'->>'device_time')
              FROM needletrace.alerts WHERE rule = 'CARTRIDGE_REUSED'")"
nt_expect_eq "the alert was raised by the transaction that stored the earlier use" t \
    "$(nt_sql "SELECT a.xmin = e.xmin FROM needletrace.alerts a, needletrace.events e
                WHERE a.rule = 'CARTRIDGE_REUSED' AND e.device_serial = 'NP-LA-1'")"

use 3 late-c NP-LC-1 $((T + 20 * MIN))
nt_wait_for "the reuse alert of SC" 30 nt_sql_ge 2 \
    "SELECT count(*) FROM needletrace.alerts WHERE rule = 'CARTRIDGE_REUSED'"
use 4 late-0 NP-L0-1 "$T"
nt_wait_for "the reuse alert of SA (tie on device time)" 30 nt_sql_ge 3 \
    "SELECT count(*) FROM needletrace.alerts WHERE rule = 'CARTRIDGE_REUSED'"
nt_expect_eq "CARTRIDGE_REUSED alerts: pen, session, first use named, first use arrived late" \
    "NP-LB-1 NP-LB-1-s1 NP-LA-1-s1 true, NP-LC-1 NP-LC-1-s1 NP-LA-1-s1 false, NP-LA-1 NP-LA-1-s1 NP-L0-1-s1 true" \
    "$(reused)"
nt_expect_eq "cartridge_first_use: the earliest use (tie broken by clinic id), and the one it replaced" \
    "NP-L0-1-s1 NP-LA-1-s1" \
    "$(nt_sql "SELECT session_id || ' ' || prev_session_id FROM needletrace.cartridge_first_use")"

# ---- the same messages again: nothing new ------------------------------------------------------
for spec in "late-b NP-LB-1 $((T + 10 * MIN))" "late-a NP-LA-1 $T" "late-c NP-LC-1 $((T + 20 * MIN))" \
    "late-0 NP-L0-1 $T"; do
    read -r clinic pen t <<<"$spec"
    nt_pub mount "$clinic" "$pen" 1 1 "$pen-s1" "$GTIN" "$CART" "$t" || nt_fail "republish $pen"
done
# A sentinel from another pen, published last: once it is stored, the duplicates were handled.
nt_pub mount late-z NP-LZ-1 1 1 NP-LZ-1-s1 "$GTIN" LATE-CART-2 "$T" || nt_fail "sentinel"
nt_wait_for "the sentinel stored" 30 nt_sql_ge 5 \
    "SELECT count(*) FROM needletrace.events WHERE kind = 'cartridge_mounted'"
nt_expect_eq "after the duplicates: mounts stored, CARTRIDGE_REUSED alerts" "5 3" \
    "$(nt_sql "SELECT (SELECT count(*) FROM needletrace.events) || ' ' ||
                      (SELECT count(*) FROM needletrace.alerts WHERE rule = 'CARTRIDGE_REUSED')")"
nt_expect_eq "alerts per triggering event (rule, pen, boot, seq) other than 1" 0 \
    "$(nt_sql "SELECT count(*) FROM (SELECT 1 FROM needletrace.alerts
                GROUP BY rule, clinic_id, device_serial, boot_id, seq HAVING count(*) <> 1) x")"
nt_expect_eq "other alerts" 0 "$(nt_sql "SELECT count(*) FROM needletrace.alerts
                                          WHERE rule <> 'CARTRIDGE_REUSED'")"

# ---- on MQTT: each alert once, on its clinic's topic --------------------------------------------
# shellcheck disable=SC2317 # invoked through nt_wait_for
received() {
    local n
    n=$(grep -c '/alerts/CARTRIDGE_REUSED ' "$NT_TMP/alerts-late.out" || true)
    echo "$n"
    ((n >= 3))
}
# shellcheck disable=SC2317 # invoked through nt_wait_for
outbox_empty() {
    local n
    n=$(nt_count alert_outbox) || return 1
    echo "$n pending"
    ((n == 0))
}
nt_wait_for "3 CARTRIDGE_REUSED alerts on MQTT" 30 received
nt_wait_for "every alert delivered (outbox empty)" 30 outbox_empty
nt_expect_eq "CARTRIDGE_REUSED alerts received (topic, session)" \
    "clinics/late-a/alerts/CARTRIDGE_REUSED NP-LA-1-s1
clinics/late-b/alerts/CARTRIDGE_REUSED NP-LB-1-s1
clinics/late-c/alerts/CARTRIDGE_REUSED NP-LC-1-s1" \
    "$(awk '{ print $1 }' "$NT_TMP/alerts-late.out" | paste -d' ' - <(cut -d' ' -f2- "$NT_TMP/alerts-late.out" |
        jq -r .session_id) | sort)"
nt_expect_eq "alert_deliveries rows" 3 "$(nt_count alert_deliveries)"
nt_finish
