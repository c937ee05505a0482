#!/usr/bin/env bash
# test_rules_policy.sh -- a depth policy change applied with SQL mid-stream takes effect for
# later events only, without a restart. A clean fleet streams at 200 messages/s (~20 s); once
# 6,000 events are committed, a per-clinic override lowers the cheeks limit of one clinic to
# 0.2 mm (every cheeks setting the simulator makes is 0.25 mm or deeper, so its normal traffic
# becomes too deep). The policy transaction records the boundary as transaction snapshots:
#   before = batches committed before the change (visible in the snapshot taken inside the
#            policy transaction): no DEPTH_OUT_OF_RANGE may point at one of their events;
#   after  = batches whose transaction id was assigned after the policy committed (>= xmax
#            of a snapshot taken after the commit): every (session, area, depth) they show
#            beyond 0.2 mm has exactly one alert;
#   batches in between (committed during the change) may go either way; they are counted.
# Every alert says limit_um 200 from limit_source "clinic"; the other clinic, the other areas
# and the other rules raise nothing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

SIM="$NT_TMP/sim.json"
CLINIC=policy-351-0 # --clinic-prefix policy --seed 351: clinics policy-351-0 and policy-351-1
AREA=cheeks
LIMIT=200

nt_start_pg
nt_start_broker
nt_migrate
nt_start_collector c1
nt_wait_collector_ready c1
pid=$(nt_collector_pid c1)

nt_simulate_bg "$SIM" --clinics 2 --devices 5 --events 20000 --events-per-message 5 --rate 200 \
    --seed 351 --clinic-prefix policy
nt_wait_for "6,000 events committed" 60 nt_sql_ge 6000 "SELECT count(*) FROM needletrace.events"
out=$(psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$NT_PG_PORT" -U postgres -d needletrace <<EOF
BEGIN;
SELECT 'S1 ' || txid_current_snapshot();
INSERT INTO needletrace.depth_policy_clinic (clinic_id, area, max_depth_um, note)
VALUES ('$CLINIC', '$AREA', $LIMIT, 'test_rules_policy: lowered mid-stream');
COMMIT;
SELECT 'S2 ' || txid_current_snapshot();
SELECT 'N ' || count(*) FROM needletrace.events;
EOF
) || nt_fail "the policy change failed: $out"
S1=$(sed -n 's/^S1 //p' <<<"$out")
S2=$(sed -n 's/^S2 //p' <<<"$out")
n_at_change=$(sed -n 's/^N //p' <<<"$out")
nt_log "policy changed: $CLINIC/$AREA limited to $LIMIT um with $n_at_change events committed;" \
    "snapshot in the policy transaction $S1, after its commit $S2"
nt_expect_true "the stream was still running when the policy changed" nt_pid_alive "$NT_SIM_PID"
nt_wait_simulate "$SIM" 120
nt_wait_counts "$SIM" -- 120
nt_wait_alerts_settled 0 30 || true

# Which side of the change each batch is on.
PHASE="CASE WHEN txid_visible_in_snapshot(e.tx, '$S1') THEN 'before'
            WHEN e.tx >= txid_snapshot_xmax('$S2') THEN 'after'
            ELSE 'during' END"
nt_log "events by side of the change: $(nt_sql "SELECT string_agg(p || '=' || n, ' ' ORDER BY p)
    FROM (SELECT $PHASE AS p, count(*) AS n FROM needletrace.events e GROUP BY 1) s");" \
    "$CLINIC/$AREA settings and activities: $(nt_sql "SELECT string_agg(p || '=' || n, ' ' ORDER BY p)
    FROM (SELECT $PHASE AS p, count(*) AS n FROM needletrace.events e
           WHERE e.clinic_id = '$CLINIC' AND e.area = '$AREA'
             AND e.kind IN ('needle_setting', 'needle_activity') GROUP BY 1) s")"
before_deep=$(nt_sql "SELECT count(*) FROM needletrace.events e
    WHERE e.clinic_id = '$CLINIC' AND e.area = '$AREA' AND e.depth_um > $LIMIT
      AND e.kind IN ('needle_setting', 'needle_activity') AND ($PHASE) = 'before'")
nt_expect_true "events before the change that the new limit would flag ($before_deep)" \
    test "$before_deep" -gt 0

# Alerts and the event each points at.
ALERTS="FROM needletrace.alerts a
        JOIN needletrace.events e ON e.clinic_id = a.clinic_id AND e.device_serial = a.device_serial
         AND e.boot_id = a.boot_id AND e.seq = a.seq
       WHERE a.rule = 'DEPTH_OUT_OF_RANGE'"
nt_log "DEPTH_OUT_OF_RANGE alerts by side of the change of their event:" \
    "$(nt_sql "SELECT coalesce(string_agg(p || '=' || n, ' ' ORDER BY p), 'none')
        FROM (SELECT $PHASE AS p, count(*) AS n $ALERTS GROUP BY 1) s")"
# Every (session, area, depth) shown beyond the limit after the change: exactly one alert.
nt_expect_eq "(session, area, depth) beyond the limit after the change without exactly one alert" 0 \
    "$(nt_sql "SELECT count(*) FROM (
        SELECT DISTINCT e.device_serial, e.session_id, e.depth_um FROM needletrace.events e
         WHERE e.clinic_id = '$CLINIC' AND e.area = '$AREA' AND e.depth_um > $LIMIT
           AND e.kind IN ('needle_setting', 'needle_activity') AND ($PHASE) = 'after') k
       WHERE (SELECT count(*) $ALERTS AND e.clinic_id = '$CLINIC' AND e.device_serial = k.device_serial
                 AND e.session_id = k.session_id AND e.area = '$AREA' AND e.depth_um = k.depth_um) <> 1")"
nt_expect_eq "alerts on events committed before the change" 0 \
    "$(nt_sql "SELECT count(*) $ALERTS AND ($PHASE) = 'before'")"
nt_expect_eq "alerts: clinic, area, limit, limit source, area limit source" \
    "$CLINIC $AREA $LIMIT clinic clinic" \
    "$(nt_sql "SELECT string_agg(DISTINCT concat_ws(' ', a.clinic_id, a.details->>'area',
                   a.details->>'limit_um', a.details->>'limit_source',
                   a.details->>'area_limit_source'), ' | ') $ALERTS")"
nt_expect_eq "alerts whose details disagree with their event or whose severity is wrong" 0 \
    "$(nt_sql "SELECT count(*) $ALERTS AND ((a.details->>'depth_um')::int <> e.depth_um
        OR a.details->>'area' <> e.area OR a.details->>'kind' <> e.kind
        OR a.severity <> CASE WHEN e.depth_um > $LIMIT + 250 THEN 'critical' ELSE 'warning' END)")"
n_depth=$(nt_sql "SELECT count(*) FROM needletrace.alerts WHERE rule = 'DEPTH_OUT_OF_RANGE'")
nt_expect_true "DEPTH_OUT_OF_RANGE alerts raised after the change ($n_depth)" test "$n_depth" -gt 0
nt_expect_eq "alerts by rule (the simulator's expectation plus the policy's DEPTH_OUT_OF_RANGE)" \
    "$(nt_expected_alerts_by_rule "$SIM" | sed "s/DEPTH_OUT_OF_RANGE=0/DEPTH_OUT_OF_RANGE=$n_depth/")" \
    "$(nt_alerts_by_rule)"
nt_expect_eq "collector pid unchanged (no restart)" "$pid" "$(nt_collector_pid c1)"
nt_expect_true "collector $pid alive" nt_pid_alive "$pid"
nt_finish
