#!/usr/bin/env bash
# test_rules_race.sh -- two collectors (c1, c2: own ids and journals) on one shared
# subscription ($share/g1/...) writing one database, and a fleet of 200 handpieces where half
# the mounts reuse a cartridge already mounted elsewhere (--reuse-rate 0.5) plus duplicated
# messages (the same event in two replicas' transactions). A reused cartridge's first mount and
# its reuse often land in the two replicas' concurrent transactions (right at the start every
# pen mounts within a few ms, from a pool of a handful of cartridges). Expected:
#  - CARTRIDGE_REUSED == the simulator's count, and == the count derived from the events alone
#    (per cartridge: sessions that mounted it - 1), exactly one alert per (cartridge, later
#    session), none on the session recorded as the first use; no other rule fires;
#  - no batch lost: events/raw/quarantine exact, both collectors alive and both committing, no
#    "could not commit" other than retried transient ones (40P01 deadlock / 40001), logged at
#    info.
# How much of the race really happened is measured and printed: alerts whose first use was
# committed by the other replica, and of those, how many in a transaction that overlapped the
# alert's (track_commit_timestamp), plus the lock waits on cartridge_first_use (log_lock_waits).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

SIM="$NT_TMP/sim.json"

nt_start_pg
# Commit times (to tell concurrent transactions apart) and lock waits longer than 1 ms in the
# server log. track_commit_timestamp needs a restart.
nt_psql postgres "ALTER SYSTEM SET track_commit_timestamp = on" >/dev/null
nt_psql postgres "ALTER SYSTEM SET log_lock_waits = on" >/dev/null
nt_psql postgres "ALTER SYSTEM SET deadlock_timeout = '1ms'" >/dev/null
nt_restart_pg fast
nt_expect_eq "track_commit_timestamp" on "$(nt_sql 'SHOW track_commit_timestamp')"
nt_start_broker
nt_migrate
nt_start_collector c1 NEEDLETRACE_MQTT_SHARE_GROUP=g1
nt_start_collector c2 NEEDLETRACE_MQTT_SHARE_GROUP=g1
nt_wait_collector_ready c1
nt_wait_collector_ready c2
nt_expect_true "both collectors subscribed through \$share/g1" \
    test "$(grep -cE "needletrace-it-c[12] 1 \\\$share/g1/clinics/" "$NT_TMP/broker.log")" -ge 2
pid1=$(nt_collector_pid c1)
pid2=$(nt_collector_pid c2)

# Thirty fleets of 10,000 pens with 400 events each, published one after the other: a pen
# sends at most one message or two, most of them "session started + cartridge mounted", and 95%
# of the mounts reuse one of the fleet's few cartridges. So the replicas' concurrent
# transactions rarely share a pen (whose boot_progress row would order them) but keep mounting
# the cartridge whose first use the other one has just inserted, often at the same device_time.
nt_log "publishing 30 fleets: simulate --clinics 10 --devices 1000 --events 400 --events-per-message 2" \
    "--seed 33xx --clinic-prefix raceN --reuse-rate 0.95 (N = 1..30)"
SIMS=()
for i in $(seq 1 30); do
    nt_simulate "$NT_TMP/sim$i.json" --clinics 10 --devices 1000 --events 400 --events-per-message 2 \
        --seed "$((3300 + i))" --clinic-prefix "race$i" --reuse-rate 0.95 >/dev/null
    SIMS+=("$NT_TMP/sim$i.json")
done
# Then a fleet whose messages are 30% duplicated: the same rows in both replicas' transactions
# (unique-index waits, possibly deadlocks that must be retried, never lost).
nt_simulate "$NT_TMP/sim-dup.json" --clinics 4 --devices 50 --events 20000 --events-per-message 2 \
    --seed 3399 --clinic-prefix racedup --reuse-rate 0.5 --duplicate-rate 0.3
SIMS+=("$NT_TMP/sim-dup.json")
jq -s '{expected: {events: (map(.expected.events) | add), raw_messages: (map(.expected.raw_messages) | add),
        quarantine: (map(.expected.quarantine) | add), alerts: (map(.expected.alerts) | add),
        alerts_by_rule: (map(.expected.alerts_by_rule | to_entries) | add | group_by(.key)
                         | map({key: .[0].key, value: (map(.value) | add)}) | from_entries)}}' \
    "${SIMS[@]}" >"$SIM"
nt_log "expected (31 fleets): $(jq -c '.expected | {events, raw_messages, quarantine, alerts_by_rule}' "$SIM")"
expected_reused=$(nt_json "$SIM" .expected.alerts_by_rule.CARTRIDGE_REUSED)
nt_expect_true "the simulation reuses cartridges (expected CARTRIDGE_REUSED $expected_reused)" \
    test "$expected_reused" -gt 100
nt_wait_counts "$SIM" -- 180
nt_wait_alerts_settled "$(nt_json "$SIM" .expected.alerts)" 60 || true

nt_check_alerts_by_rule "alerts by rule" "$SIM"
# The same count from the events alone: every session that mounted a cartridge after the
# first one did.
oracle=$(nt_sql "SELECT coalesce(sum(n - 1), 0) FROM (
    SELECT count(DISTINCT (clinic_id, device_serial, session_id)) AS n
      FROM needletrace.events WHERE kind = 'cartridge_mounted'
     GROUP BY gtin, cartridge_serial) c")
nt_expect_eq "CARTRIDGE_REUSED alerts == later sessions per cartridge (from the events)" "$oracle" \
    "$(nt_sql "SELECT count(*) FROM needletrace.alerts WHERE rule = 'CARTRIDGE_REUSED'")"
# Exactly one alert per (cartridge, session) other than the recorded first use, none on it.
nt_expect_eq "cartridge mounts wrongly alerted or not alerted (first use alerted, later session not, or twice)" 0 \
    "$(nt_sql "WITH m AS (
        SELECT e.gtin, e.cartridge_serial, e.clinic_id, e.device_serial, e.session_id, e.boot_id,
               e.seq,
               (f.clinic_id, f.device_serial, f.session_id)
                   IS NOT DISTINCT FROM (e.clinic_id, e.device_serial, e.session_id) AS is_first,
               (SELECT count(*) FROM needletrace.alerts a
                 WHERE a.rule = 'CARTRIDGE_REUSED' AND a.clinic_id = e.clinic_id
                   AND a.device_serial = e.device_serial AND a.boot_id = e.boot_id
                   AND a.seq = e.seq) AS n_alerts
          FROM needletrace.events e
          JOIN needletrace.cartridge_first_use f
            ON f.gtin = e.gtin AND f.cartridge_serial = e.cartridge_serial
         WHERE e.kind = 'cartridge_mounted')
       SELECT count(*) FROM m WHERE n_alerts <> CASE WHEN is_first THEN 0 ELSE 1 END")"
nt_expect_eq "cartridges without a recorded first use" 0 "$(nt_sql "SELECT count(*) FROM (
    SELECT DISTINCT gtin, cartridge_serial FROM needletrace.events WHERE kind = 'cartridge_mounted'
    EXCEPT SELECT gtin, cartridge_serial FROM needletrace.cartridge_first_use) x")"

# ---- no batch lost -----------------------------------------------------------------------------
nt_expect_true "collector c1 (pid $pid1) never exited" nt_pid_alive "$pid1"
nt_expect_true "collector c2 (pid $pid2) never exited" nt_pid_alive "$pid2"
split=$(nt_sql "SELECT string_agg(collector_id || '=' || n, ' ' ORDER BY collector_id)
                  FROM (SELECT collector_id, count(*) AS n FROM needletrace.events GROUP BY 1) s")
nt_log "events committed per collector: $split"
nt_expect_true "both replicas committed events ($split)" test "$(wc -w <<<"$split")" -eq 2
retried=$(grep -hE 'level=info .*could not (commit a batch|run the alert bookkeeping)' \
    "$NT_TMP"/collector-c[12].log || true)
failed=$(grep -hE 'level=(warn|error) .*could not (commit|run)' "$NT_TMP"/collector-c[12].log || true)
nt_log "transient failures retried: $(grep -c . <<<"$retried" || true)" \
    "($(grep -oE 'could not[^:]*: [^;]*' <<<"$retried" | sed 's/.*: //' | sort | uniq -c | tr -s ' ' | paste -sd',' -))"
nt_expect_eq "non-transient commit failures in the logs" "" "$failed"
# With two database connections, the batch after one that a deadlock rolled back is refused by
# move_checkpoint (NT001, "the batch before it ... was not committed") and read again: a
# consequence of the deadlock, not an error of its own.
nt_expect_eq "SQL errors in the logs other than deadlocks and serialization failures" "" \
    "$(grep -hE 'level=(info|warn|error) .*could not' "$NT_TMP"/collector-c[12].log |
        grep -vE 'deadlock detected|could not serialize' |
        grep -vE 'level=info .*\(the batch before it, on the other connection, was not committed\)' |
        head -n 5 || true)"

# ---- how much of the race happened -------------------------------------------------------------
race=$(nt_sql "WITH r AS (
    SELECT a.alert_id, ae.collector_id AS alert_collector, fe.collector_id AS first_collector,
           ae.inserted_at AS a_start, pg_xact_commit_timestamp(ae.xmin) AS a_commit,
           fe.inserted_at AS f_start, pg_xact_commit_timestamp(fe.xmin) AS f_commit,
           ae.device_time = fe.device_time AS same_instant
      FROM needletrace.alerts a
      JOIN needletrace.events ae
        ON ae.clinic_id = a.clinic_id AND ae.device_serial = a.device_serial
       AND ae.boot_id = a.boot_id AND ae.seq = a.seq
      JOIN needletrace.cartridge_first_use f
        ON f.gtin = ae.gtin AND f.cartridge_serial = ae.cartridge_serial
      JOIN needletrace.events fe
        ON fe.clinic_id = f.clinic_id AND fe.device_serial = f.device_serial
       AND fe.boot_id = f.boot_id AND fe.seq = f.seq
     WHERE a.rule = 'CARTRIDGE_REUSED')
    SELECT count(*) || ' ' ||
           count(*) FILTER (WHERE alert_collector <> first_collector) || ' ' ||
           count(*) FILTER (WHERE alert_collector <> first_collector
                              AND a_start < f_commit AND f_start < a_commit) || ' ' ||
           count(*) FILTER (WHERE same_instant) FROM r")
read -r n_reused n_cross n_concurrent n_same <<<"$race"
waits=$(grep -c 'still waiting for' "$NT_PG_DIR/postgres.log" || true)
waits_first_use=$(grep -A2 'still waiting for' "$NT_PG_DIR/postgres.log" |
    grep -c 'in relation "cartridge_first_use"' || true)
nt_log "CARTRIDGE_REUSED alerts: $n_reused; first use committed by the other replica: $n_cross;" \
    "of those in a transaction concurrent with the alert's: $n_concurrent;" \
    "same device_time as the first use: $n_same"
nt_log "lock waits > 1 ms logged by PostgreSQL: $waits (context naming cartridge_first_use: $waits_first_use)"
nt_expect_true "the race was exercised: reuse alerts whose first use was in the other replica's concurrent transaction ($n_concurrent), transactions waiting for another's first use of a cartridge ($waits_first_use)" \
    test "$n_concurrent" -gt 0 -a "$waits_first_use" -gt 0
nt_check_no_duplicate_keys
nt_finish
