#!/usr/bin/env bash
# test_metrics_scrape.sh -- /metrics against what the simulator says it sent: scraped every 0.5 s
# during a simulated load (every rule violated, malformed and spoofed messages), then once
# everything is committed and every alert delivered:
#   - events and messages committed, quarantined messages by reason (every reason of
#     NT_REASON_MAP, zeros included) = the simulator's expected counts;
#   - alerts raised and delivered by rule = expected.alerts_by_rule, and by (rule, severity) =
#     the alerts table;
#   - the histograms (events per batch, begin -> commit): cumulative buckets, +Inf = _count =
#     needletrace_db_batches_total, at every scrape; _sum of events = db_events_total;
#   - journal fill ratio = journal bytes / journal.max_bytes;
#   - reconnects by peer: 0, then 1 after a broker restart, and 1 after the database
#     terminated the collector's sessions.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

RECALLED_GTIN=07612345000121
RECALLED_LOT=RCL-IT-METRICS
SIM="$NT_TMP/sim.json"

nt_start_pg
nt_start_broker
nt_migrate
nt_sql "INSERT INTO needletrace.recalled_lots (gtin, lot, reason)
        VALUES ('$RECALLED_GTIN', '$RECALLED_LOT', 'test_metrics_scrape: recalled lot')"
nt_sql "UPDATE needletrace.settings SET value = '3 seconds' WHERE key = 'sequence_gap_after'"
nt_start_collector c1
nt_wait_collector_ready c1

# scrape FILE: /metrics of c1 into FILE.
scrape() {
    nt_http c1 /metrics >"$1"
}

# prom FILE SERIES: the value of the sample SERIES (name and labels as exposed), or "absent".
prom() {
    awk -v s="$2" '$1 == s { print $2; found = 1 } END { if (!found) print "absent" }' "$1"
}

# hist_problems FILE NAME: prints what is wrong with histogram NAME in FILE (nothing when it
# is fine): buckets not cumulative, no +Inf bucket last, +Inf != _count, _count != batches.
hist_problems() {
    awk -v n="needletrace_$2" '
        index($1, n "_bucket{le=\"") == 1 {
            if ($2 + 0 < prev) print "bucket " $1 " below the one before (" $2 " < " prev ")"
            prev = $2 + 0; last = $1; inf = $2 + 0
        }
        $1 == n "_count" { count = $2 + 0 }
        $1 == "needletrace_db_batches_total" { batches = $2 + 0 }
        END {
            if (last != n "_bucket{le=\"+Inf\"}") print "last bucket is " last ", not +Inf"
            if (inf != count) print "+Inf " inf " != _count " count
            if (count != batches) print "_count " count " != db_batches_total " batches
        }' "$1"
}

# reconnects FILE: "MQTT DATABASE", the reconnects by peer.
reconnects() {
    printf '%s %s\n' "$(prom "$1" 'needletrace_reconnects_total{peer="mqtt"}')" \
        "$(prom "$1" 'needletrace_reconnects_total{peer="database"}')"
}

# ---- scrapes during the load ---------------------------------------------------------------
scrape "$NT_TMP/before.prom"
nt_expect_eq "reconnects before anything (mqtt database)" "0 0" "$(reconnects "$NT_TMP/before.prom")"
nt_simulate_bg "$SIM" --clinics 2 --devices 5 --events 20000 --events-per-message 10 \
    --seed 1301 --rate 400 --reuse-rate 0.1 --expired-rate 0.05 --unsealed-rate 0.05 \
    --recalled-rate 0.05 --too-deep-rate 0.05 --no-cartridge-rate 0.05 --gap-rate 0.01 \
    --skew-rate 0.01 --malformed-rate 0.02 --spoof-rate 0.02 \
    --recalled-gtin "$RECALLED_GTIN" --recalled-lot "$RECALLED_LOT"
scrapes=0
bad=""
prev_batches=0
while nt_pid_alive "$NT_SIM_PID"; do
    f="$NT_TMP/during-$scrapes.prom"
    scrape "$f" || nt_fail "/metrics did not answer during the load"
    scrapes=$((scrapes + 1))
    for h in batch_events batch_commit_seconds; do
        p=$(hist_problems "$f" "$h")
        [[ -z $p ]] || bad+="scrape $scrapes, $h: $p; "
    done
    batches=$(prom "$f" needletrace_db_batches_total)
    ((batches >= prev_batches)) || bad+="scrape $scrapes: batches went back ($prev_batches -> $batches); "
    prev_batches=$batches
    sleep 0.5
done
nt_wait_simulate "$SIM" 120
nt_log "scraped $scrapes times during the load; last: $prev_batches batches committed"
nt_expect_true "at least 4 scrapes during the load ($scrapes)" test "$scrapes" -ge 4
nt_expect_eq "histogram problems in the scrapes during the load" "" "$bad"

# ---- settled -------------------------------------------------------------------------------
nt_wait_counts "$SIM" -- 180
expected_alerts=$(nt_json "$SIM" .expected.alerts)
nt_wait_alerts_settled "$expected_alerts" 60 || true
# shellcheck disable=SC2317 # invoked through nt_wait_for
all_delivered() {
    local a d
    a=$(nt_count alerts) || return 1
    d=$(nt_http c1 /metrics | awk '$1 ~ /^needletrace_alerts_delivered_total\{/ { s += $2 }
                                   END { print s + 0 }') || return 1
    echo "alerts $a, delivered $d"
    ((d >= a && a >= expected_alerts))
}
nt_wait_for "every alert delivered" 60 all_delivered
sleep 1 # a last commit of bookkeeping, nothing more to count
F="$NT_TMP/final.prom"
scrape "$F"

nt_expect_eq "needletrace_db_events_total = expected.events" "$(nt_json "$SIM" .expected.events)" \
    "$(prom "$F" needletrace_db_events_total)"
nt_expect_eq "needletrace_db_messages_total = expected raw_messages + quarantine" \
    $(($(nt_json "$SIM" .expected.raw_messages) + $(nt_json "$SIM" .expected.quarantine))) \
    "$(prom "$F" needletrace_db_messages_total)"
# Quarantined by reason: every reason the collector exposes, against expected (0 when absent).
want="" got=""
while read -r reason value; do
    want+="$reason=$(jq -r ".expected.quarantine_by_reason.$reason // 0" "$SIM") "
    got+="$reason=$value "
done < <(sed -n 's/^needletrace_db_quarantined_total{reason="\([a-z_0-9]*\)"} \([0-9]*\)$/\1 \2/p' "$F")
nt_expect_eq "quarantined by reason (every reason)" "$want" "$got"
nt_expect_true "every quarantine reason exposed (db_rejected, the last, included)" \
    grep -q '^needletrace_db_quarantined_total{reason="db_rejected"} ' "$F"
nt_expect_eq "quarantine rows by reason in the database" \
    "$(nt_sql "SELECT coalesce(string_agg(reason || '=' || n, ' ' ORDER BY reason), '')
               FROM (SELECT reason, count(*) AS n FROM needletrace.quarantine GROUP BY 1) q")" \
    "$(sed -n 's/^needletrace_db_quarantined_total{reason="\([a-z_0-9]*\)"} \([1-9][0-9]*\)$/\1=\2/p' "$F" |
        sort | paste -sd' ' -)"

# Alerts: by rule against the simulator, by (rule, severity) against the table.
by_rule() { # FILE METRIC: "RULE=n" in NT_RULES order, severities summed
    local rule out=""
    for rule in "${NT_RULES[@]}"; do
        out+="$rule=$(awk -v p="needletrace_$2{rule=\"$rule\"," 'index($1, p) == 1 { s += $2 }
                                                                END { print s + 0 }' "$1") "
    done
    printf '%s\n' "${out% }"
}
nt_expect_eq "alerts raised by rule = expected.alerts_by_rule" "$(nt_expected_alerts_by_rule "$SIM")" \
    "$(by_rule "$F" alerts_raised_total)"
nt_expect_eq "alerts delivered by rule = expected.alerts_by_rule" \
    "$(nt_expected_alerts_by_rule "$SIM")" "$(by_rule "$F" alerts_delivered_total)"
db_by_sev=$(nt_sql "SELECT string_agg(rule || '/' || severity || '=' || n, ' ' ORDER BY rule, severity)
                    FROM (SELECT rule, severity, count(*) AS n FROM needletrace.alerts GROUP BY 1, 2) a")
for metric in alerts_raised_total alerts_delivered_total; do
    nt_expect_eq "$metric by (rule, severity) = the alerts table" "$db_by_sev" \
        "$(sed -n "s/^needletrace_$metric{rule=\"\([A-Z_]*\)\",severity=\"\([a-z]*\)\"} \([1-9][0-9]*\)\$/\1\/\2=\3/p" "$F" |
            LC_ALL=C sort | paste -sd' ' -)"
done
nt_expect_eq "alerts of a rule outside the map" "" "$(grep 'rule="other"' "$F" || true)"

# Histograms.
batches=$(prom "$F" needletrace_db_batches_total)
nt_log "batches committed: $batches; commit seconds sum $(prom "$F" needletrace_batch_commit_seconds_sum)"
nt_expect_true "batches committed ($batches)" test "$batches" -gt 0
for h in batch_events batch_commit_seconds; do
    nt_expect_eq "$h: cumulative, +Inf = _count = db_batches_total" "" "$(hist_problems "$F" "$h")"
done
nt_expect_eq "batch_events_sum = db_events_total" "$(prom "$F" needletrace_db_events_total)" \
    "$(prom "$F" needletrace_batch_events_sum)"
nt_expect_eq "batch_commit_seconds_count = batch_events_count" \
    "$(prom "$F" needletrace_batch_events_count)" "$(prom "$F" needletrace_batch_commit_seconds_count)"

# Journal fill ratio (journal.max_bytes is 1 GiB by default).
nt_expect_eq "journal_fill_ratio = journal_bytes / 1 GiB" \
    "$(awk -v b="$(prom "$F" needletrace_journal_bytes)" 'BEGIN { printf "%.6f", b / 1073741824 }')" \
    "$(prom "$F" needletrace_journal_fill_ratio)"

# ---- reconnects ----------------------------------------------------------------------------
# shellcheck disable=SC2317 # invoked through nt_wait_for
readyz_ok() {
    nt_http c1 /readyz
}
nt_expect_eq "reconnects after the load (mqtt database)" "0 0" "$(reconnects "$F")"
# shellcheck disable=SC2317 # invoked through nt_wait_for
reconnects_reached() { # PEER N: needletrace_reconnects_total{peer=PEER} >= N
    local v
    v=$(nt_http c1 /metrics | awk -v s="needletrace_reconnects_total{peer=\"$1\"}" \
        '$1 == s { print $2 }') || return 1
    echo "reconnects{$1} ${v:-absent}"
    [[ -n $v ]] && ((v >= $2))
}
nt_restart_broker
nt_wait_for "the collector reconnected to the broker" 60 reconnects_reached mqtt 1
nt_log "terminated the collector's database sessions: $(nt_sql "SELECT count(pg_terminate_backend(pid))
    FROM pg_stat_activity WHERE application_name = 'needletrace-it-c1'")"
nt_wait_for "the collector reconnected to the database" 60 reconnects_reached database 1
nt_wait_for "the collector ready again" 60 readyz_ok
sleep 1
E="$NT_TMP/end.prom"
scrape "$E"
nt_expect_eq "reconnects after a broker restart and terminated sessions (mqtt database)" "1 1" \
    "$(reconnects "$E")"
nt_finish
