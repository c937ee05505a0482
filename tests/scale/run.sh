#!/usr/bin/env bash
# tests/scale/run.sh BINARY [EVENTS] -- the audit at scale (issue 11, point 8): EVENTS (default
# 10,000,000) events made directly in PostgreSQL, as the collector would have stored and sealed
# them (batches of 5,000 events = 100 messages of 50, each batch its own transaction sealed by
# needletrace.ledger_seal), over 20 clinics of 50 pens and a quarter of device time; then times
# `needletrace audit report` (one quarter, all clinics) and `needletrace audit verify` over them.
# Prints the timings. Not part of the suite (minutes to hours); the suite runs it small
# (ctest scale_smoke: 20,000 events). SCALE_VERIFY_ONLY=1: time verify only.
# SCALE_KEEP=DIR: the cluster lives in DIR and is kept; a later run with the same DIR and EVENTS
# reuses it (migrates it to the binary's schema, skips the fill) instead of filling again.
set -euo pipefail
if [[ -n ${SCALE_KEEP:-} ]]; then
    mkdir -p "$SCALE_KEEP"
    chmod 755 "$SCALE_KEEP"
    NT_TMP=$(cd "$SCALE_KEEP" && pwd)
    NT_KEEP_DIR=1
fi
# shellcheck source-path=SCRIPTDIR source=../integration/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../integration/lib.sh"
N=${2:-10000000}
nt_setup "$1"
nt_start_pg
nt_migrate
nt_sql "ALTER SYSTEM SET max_wal_size = '4GB'" >/dev/null
nt_sql "SELECT pg_reload_conf()" >/dev/null

nt_sql "CREATE OR REPLACE PROCEDURE public.nt_scale_fill(p_batches int) LANGUAGE plpgsql AS \$\$
DECLARE
    b int;
    t0 timestamptz := '2026-01-01 00:00:00+00';
BEGIN
    FOR b IN 0 .. p_batches - 1 LOOP
        INSERT INTO needletrace.raw_messages (clinic_id, device_serial, payload_sha256, received_at,
               topic, payload, boot_id, event_count, first_seq, last_seq, device_model,
               firmware_version, collector_id, journal_pos)
        SELECT 'CL-' || (p % 20), 'HP-' || p, sha256(int8send(b::bigint * 100 + m)),
               t0 + make_interval(secs => (b * 100 + m) * 3.9), 'clinics/CL-' || (p % 20) ||
               '/handpieces/HP-' || p || '/telemetry', decode(repeat('ab', 80), 'hex'), 1, 50,
               (b / 10) * 50 + 1, (b / 10) * 50 + 50, 'NP-300', '1.0.0', 'scale',
               (b::bigint * 100 + m) * 200
          FROM generate_series(0, 99) m, LATERAL (SELECT (b % 10) * 100 + m AS p) pp;
        INSERT INTO needletrace.events (clinic_id, device_serial, boot_id, seq, kind, device_time,
               received_at, session_id, payload_sha256, collector_id, operator_id, patient_ref,
               gtin, lot, cartridge_serial, expiry, depth_um, stroke_rate_hz, area, duration_ms,
               device_model)
        SELECT 'CL-' || (p % 20), 'HP-' || p, 1, s, k, ts, ts, 'S-' || p || '-' || (s / 50),
               sha256(int8send(b::bigint * 100 + m)), 'scale',
               CASE WHEN k = 'session_started' THEN 'op-' || (p % 7) END,
               CASE WHEN k = 'session_started' THEN 'pt-' || s END,
               CASE WHEN k = 'cartridge_mounted' THEN '09506000134352' END,
               CASE WHEN k = 'cartridge_mounted' THEN 'LOT-1' END,
               CASE WHEN k = 'cartridge_mounted' THEN 'C-' || p || '-' || (s / 50) END,
               CASE WHEN k = 'cartridge_mounted' THEN date '2027-12-31' END,
               CASE WHEN k = 'needle_activity' THEN 250 + ((s * 37) % 2000) END,
               CASE WHEN k = 'needle_activity' THEN 110 END,
               CASE WHEN k = 'needle_activity' THEN (ARRAY['forehead', 'cheeks', 'neck', 'chin',
                   'periorbital'])[1 + s % 5] END,
               CASE WHEN k = 'needle_activity' THEN 1000 END,
               CASE WHEN k = 'needle_activity' THEN 'NP-300' END
          FROM generate_series(0, 99) m, generate_series(1, 50) i,
               LATERAL (SELECT (b % 10) * 100 + m AS p, (b / 10) * 50 + i AS s) pp,
               LATERAL (SELECT CASE i WHEN 1 THEN 'session_started' WHEN 2 THEN
                   'cartridge_mounted' WHEN 50 THEN 'session_ended' ELSE 'needle_activity' END
                   AS k, t0 + make_interval(secs => (b * 100 + m) * 3.9 + i) AS ts) kk;
        PERFORM needletrace.ledger_seal('scale', 1, b::bigint * 20000, (b::bigint + 1) * 20000, 100);
        COMMIT;
    END LOOP;
END
\$\$" >/dev/null
batches=$(((N + 4999) / 5000))
if [[ -n ${SCALE_KEEP:-} && $(cat "$NT_TMP/scale-filled" 2>/dev/null) == "$batches" ]]; then
    nt_sql "VACUUM ANALYZE" >/dev/null # the migrations may have added or rebuilt something
    nt_log "reusing the $batches batches filled before in $NT_TMP"
else
    [[ $(nt_sql "SELECT count(*) FROM needletrace.events") == 0 ]] ||
        nt_fail "$NT_TMP holds another fill: remove it or use another SCALE_KEEP"
    t0=$(nt_now_ms)
    nt_sql "CALL public.nt_scale_fill($batches)" >/dev/null
    nt_sql "VACUUM ANALYZE" >/dev/null
    fill_ms=$(($(nt_now_ms) - t0))
    [[ -z ${SCALE_KEEP:-} ]] || echo "$batches" >"$NT_TMP/scale-filled"
    nt_log "made $batches sealed batches in $((fill_ms / 1000)) s"
fi
events=$(nt_sql "SELECT count(*) FROM needletrace.events")
nt_log "$events events ($(nt_sql "SELECT pg_size_pretty(pg_database_size('needletrace'))"))"

AUDITOR=$(nt_db_url nt_auditor)
timed() { # timed LABEL ARGS...: runs needletrace ARGS as the auditor; prints the time
    local label=$1 t rc=0
    shift
    t=$(nt_now_ms)
    NEEDLETRACE_DATABASE_URL=$AUDITOR "$NT_BIN" "$@" >"$NT_TMP/$label.out" 2>&1 || rc=$?
    t=$(($(nt_now_ms) - t))
    printf '%-40s %8.1f s  (exit %d) %s\n' "$label" "$(awk -v t="$t" 'BEGIN { print t / 1000 }')" "$rc" \
        "$(grep -m1 -E '^(OK|ledger|.*report written|.*finding)' "$NT_TMP/$label.out" || true)"
    ((rc == 0)) || { tail -n 5 "$NT_TMP/$label.out"; return 1; }
}
echo "scale: $events events, $batches batches, machine $(nproc) CPUs"
if [[ ${SCALE_VERIFY_ONLY:-0} != 1 ]]; then
    timed "audit report (html, all clinics, Q1)" audit report --from 2026-01-01 --to 2026-03-31 \
        --format html --out "$NT_TMP/report.html"
    timed "audit report (json, one clinic, Q1)" audit report --clinic CL-3 --from 2026-01-01 \
        --to 2026-03-31 --format json --out "$NT_TMP/report.json"
fi
timed "audit verify (whole record)" audit verify
nt_finish
