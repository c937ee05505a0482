#!/usr/bin/env bash
# test_audit_report.sh -- `needletrace audit report` (issue 11, points 6 and 7): a fleet with
# violations of every rule in two clinics of different time zones, one alert acknowledged; the
# report as HTML, CSV and JSON carries the same numbers as the database; Debian's chromium
# renders the HTML headless to a PNG (kept as the test artifact report.png) without console
# errors, and its charts have drawn content (pixels of the bar colours).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

nt_start_pg
nt_start_broker
nt_migrate
nt_start_collector c1
nt_wait_collector_ready c1
nt_simulate "$NT_TMP/sim.json" --clinics 2 --devices 4 --events 6000 --events-per-message 5 \
    --seed 1501 --fixed-time-ms 1735689600000 --reuse-rate 0.1 --expired-rate 0.05 \
    --unsealed-rate 0.05 --too-deep-rate 0.05 --no-cartridge-rate 0.05 --malformed-rate 0.01
nt_wait_counts "$NT_TMP/sim.json" -- 120
nt_stop_collector c1 TERM
read -r C1 C2 <<<"$(nt_sql "SELECT string_agg(DISTINCT clinic_id, ' ') FROM needletrace.events")"
nt_sql "INSERT INTO needletrace.clinics (clinic_id, name, time_zone) VALUES
          ('$C1', 'Clinic one', 'Europe/Berlin'), ('$C2', 'Clinic two', 'America/New_York')" \
    >/dev/null
alert=$(nt_sql "SELECT min(alert_id) FROM needletrace.alerts WHERE clinic_id = '$C1'")
NEEDLETRACE_DATABASE_URL=$(nt_db_url nt_staff) "$NT_BIN" alerts ack "$alert" --by "Dr. Example" \
    --note "checked" >/dev/null
# The fleet's clock: 2025-01-01T00:00Z on; local dates span the new year in New York.
FROM=2024-12-31
TO=2025-01-31
AUDITOR=$(nt_db_url nt_auditor)
report() { # report FORMAT OUT [ARGS...]
    local fmt=$1 out=$2
    shift 2
    NEEDLETRACE_DATABASE_URL=$AUDITOR "$NT_BIN" audit report --from $FROM --to $TO \
        --format "$fmt" --out "$out" "$@" >>"$NT_TMP/report.log" 2>&1 ||
        nt_fail "audit report --format $fmt failed: $(tail -n 3 "$NT_TMP/report.log")"
}
report html "$NT_TMP/report.html"
report csv "$NT_TMP/report.csv"
report json "$NT_TMP/report.json"
report json "$NT_TMP/report-c1.json" --clinic "$C1"

# ---- the same numbers as the database, in every format ----------------------------------------------
want_alerts=$(nt_sql "SELECT count(*) FROM needletrace.alerts")
want_sessions=$(nt_sql "SELECT count(*) FROM needletrace.events WHERE kind = 'session_started'")
j() { /usr/bin/python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }
nt_expect_eq "JSON summary: exceptions = alerts" "$want_alerts" \
    "$(j "$NT_TMP/report.json" "d['summary'][0]['exceptions']")"
nt_expect_eq "JSON summary: sessions" "$want_sessions" \
    "$(j "$NT_TMP/report.json" "d['summary'][0]['sessions']")"
nt_expect_eq "JSON: every exception listed" "$want_alerts" \
    "$(j "$NT_TMP/report.json" "len(d['exceptions'])")"
nt_expect_eq "JSON: exceptions by rule sum up" "$want_alerts" \
    "$(j "$NT_TMP/report.json" "sum(int(r['alerts']) for r in d['exceptions_by_rule'])")"
nt_expect_eq "JSON: one acknowledged, with its role" "1 nt_staff" \
    "$(j "$NT_TMP/report.json" "str(d['summary'][0]['acknowledged']) + ' ' + \
        [e for e in d['exceptions'] if e['acknowledgement'] != 'open'][0]['acknowledgement'].split('(')[1].split(',')[0]")"
nt_expect_eq "JSON: one session row per session" "$want_sessions" \
    "$(j "$NT_TMP/report.json" "len([s for s in d['sessions'] if s['started']])")"
nt_expect_eq "JSON: the verification found the record intact" "OK" \
    "$(j "$NT_TMP/report.json" "[l for l in d['verification'].split(chr(10)) if l.startswith('OK')][0][:2]")"
nt_expect_eq "JSON: counts are numbers, absent values null, names strings" "True True True True" \
    "$(j "$NT_TMP/report.json" "' '.join(str(x) for x in [
        isinstance(d['summary'][0]['sessions'], int) and isinstance(d['depth'][0]['samples'], int),
        all(isinstance(r['alerts'], int) for r in d['exceptions_by_rule']),
        any(e['limit_um'] is None for e in d['exceptions']) and all(e['limit_um'] is None
            or isinstance(e['limit_um'], int) for e in d['exceptions']),
        all(isinstance(p['pen'], str) and isinstance(p['events'], int) for p in d['pens'])])")"
nt_expect_eq "JSON --clinic: only that clinic's exceptions" \
    "$(nt_sql "SELECT count(*) FROM needletrace.alerts WHERE clinic_id = '$C1'")" \
    "$(j "$NT_TMP/report-c1.json" "len(d['exceptions'])")"
nt_expect_eq "CSV: the exceptions section has as many rows" "$want_alerts" \
    "$(grep -c '^exceptions,' "$NT_TMP/report.csv")"
nt_expect_true "the report states the time zones" \
    grep -q "$C1: Europe/Berlin" "$NT_TMP/report.html"
berlin=$(nt_sql "SELECT to_char(raised_at AT TIME ZONE 'Europe/Berlin', 'YYYY-MM-DD HH24:MI')
                   FROM needletrace.alerts WHERE alert_id = $alert")
nt_expect_true "times in the clinic's zone ($berlin)" grep -q "$berlin" "$NT_TMP/report.html"
nt_expect_true "HTML: self-contained (no http reference, no script)" \
    bash -c "! grep -qiE 'https?://[^\"]*\"|<script|<link' '$NT_TMP/report.html' ||
             ! grep -iE 'src=|href=|<script|<link' '$NT_TMP/report.html' | grep -v 'xmlns' | grep -q ."

# ---- a person's look: chromium renders it ---------------------------------------------------------
CHROMIUM=$(command -v chromium || true)
if [[ -z $CHROMIUM ]]; then
    nt_fail "chromium is not installed (tests/run.sh installs Debian's chromium)"
fi
shot="$NT_TMP/report.png"
timeout 120 "$CHROMIUM" --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1200,2400 --enable-logging=stderr --v=0 --screenshot="$shot" \
    "file://$NT_TMP/report.html" >"$NT_TMP/chromium.out" 2>&1 ||
    nt_fail "chromium could not render the report: $(tail -n 5 "$NT_TMP/chromium.out")"
nt_expect_true "chromium wrote the screenshot" test -s "$shot"
nt_expect_eq "console errors while loading" 0 \
    "$(grep -ciE 'CONSOLE.*(error|uncaught)|Uncaught' "$NT_TMP/chromium.out" || true)"
pixels=$(/usr/bin/python3 "$NT_LIB_DIR/png_colors.py" "$shot" 4a78b8 c44444 cc0000)
nt_log "pixels of the bar, over-limit bar and limit-line colours: $pixels"
read -r blue _ line <<<"$pixels"
nt_expect_true "the charts drew bars ($blue px)" test "$blue" -gt 500
nt_expect_true "the depth charts drew limit lines ($line px)" test "$line" -gt 50
# The artifact outlives the temp dir: ctest runs in the build directory.
ARTIFACTS=${NT_ARTIFACTS:-$PWD/artifacts}
mkdir -p "$ARTIFACTS"
cp "$shot" "$ARTIFACTS/report.png"
cp "$NT_TMP/report.html" "$ARTIFACTS/report.html"
nt_log "screenshot kept: $ARTIFACTS/report.png (and report.html)"
nt_finish
