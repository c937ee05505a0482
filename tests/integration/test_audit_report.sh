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

# ---- the figures: as SQL over the events computes them ------------------------------------------
# The report gathers its figures from the rows its verification reads; here they are computed by
# their plain definition (each event's device time as a local date of its clinic) and compared:
# for a period whose edges cut the clinics' days differently, with rows from before the ledger
# (an upgraded database), and with a row inserted outside any batch (the record tampered with:
# the report says so, and its figures still count the row).
figures_expected() { # figures_expected DIR FROM TO: the reference figures, in DIR
    local dir=$1 e
    mkdir -p "$dir"
    e="WITH e AS (SELECT e.* FROM needletrace.events e LEFT JOIN needletrace.clinics z
                   ON z.clinic_id = e.clinic_id WHERE (e.device_time AT TIME ZONE
                   coalesce(z.time_zone, 'UTC'))::date BETWEEN '$2' AND '$3'),
           n AS (SELECT *, coalesce(area, 'unspecified') AS a FROM e
                  WHERE kind IN ('needle_setting', 'needle_activity')),
           l AS (SELECT DISTINCT n.clinic_id, n.a, coalesce(pc.max_depth_um, dp.max_depth_um,
                        needletrace.depth_hard_max_um()) AS lim FROM n
                   LEFT JOIN needletrace.depth_policy_clinic pc ON pc.clinic_id = n.clinic_id
                    AND pc.area = n.a LEFT JOIN needletrace.depth_policy dp ON dp.area = n.a)"
    nt_sql "$e SELECT count(*), count(DISTINCT (clinic_id, device_serial)),
                count(DISTINCT clinic_id), count(*) FILTER (WHERE kind = 'session_started'),
                (SELECT count(*) FROM (SELECT DISTINCT gtin, cartridge_serial FROM e
                  WHERE kind = 'cartridge_mounted') k) FROM e" >"$dir/summary.txt"
    nt_sql "$e SELECT clinic_id, device_serial, count(*), count(DISTINCT boot_id),
                max(device_time - received_at), max(received_at - device_time)
              FROM e GROUP BY 1, 2" >"$dir/pens.txt"
    nt_sql "$e SELECT n.a, l.lim, (n.depth_um / 250) * 250, count(*) FROM n JOIN l
                USING (clinic_id, a) GROUP BY 1, 2, 3" >"$dir/depth.txt"
    nt_sql "$e, s AS (SELECT n.clinic_id, n.device_serial, n.session_id,
                        n.a || ' ' || max(n.depth_um) || '/' || l.lim || ' um' AS part
                   FROM n JOIN l USING (clinic_id, a) WHERE n.session_id IS NOT NULL
                  GROUP BY n.clinic_id, n.device_serial, n.session_id, n.a, l.lim)
            SELECT k.clinic_id, k.device_serial, k.session_id, coalesce((SELECT string_agg(
                     s.part, ', ' ORDER BY s.part COLLATE \"C\") FROM s WHERE s.clinic_id =
                     k.clinic_id AND s.device_serial = k.device_serial AND s.session_id =
                     k.session_id), '')
              FROM (SELECT DISTINCT clinic_id, device_serial, session_id FROM e
                     WHERE session_id IS NOT NULL) k" >"$dir/sessions.txt"
    nt_sql "$e SELECT clinic_id, device_serial, session_id FROM e
             WHERE kind = 'session_started' AND session_id IS NOT NULL" >"$dir/started.txt"
    # the sessions listed, in order: started in the period, or never started with events in it
    nt_sql "$e SELECT clinic_id, device_serial, session_id FROM e WHERE session_id IS NOT NULL
             GROUP BY 1, 2, 3 HAVING count(*) FILTER (WHERE kind = 'session_started') > 0
                 OR NOT EXISTS (SELECT 1 FROM needletrace.events y WHERE y.clinic_id = e.clinic_id
                     AND y.device_serial = e.device_serial AND y.session_id = e.session_id
                     AND y.kind = 'session_started')
             ORDER BY min(device_time) FILTER (WHERE kind = 'session_started') NULLS LAST,
                      clinic_id COLLATE \"C\", device_serial COLLATE \"C\",
                      session_id COLLATE \"C\"" >"$dir/listed.txt"
}
figures_match() { # figures_match WHAT JSON FROM TO
    figures_expected "$NT_TMP/want" "$3" "$4"
    nt_expect_true "$1: the report's figures are the database's" \
        /usr/bin/python3 "$NT_LIB_DIR/check_report_figures.py" "$2" "$NT_TMP/want"
}
figures_match "the whole period" "$NT_TMP/report.json" "$FROM" "$TO"
# 2025-01-01 on: New York's evening of 2024-12-31 (UTC's new year) is out, Berlin's night is in
FROM=2025-01-01
report json "$NT_TMP/report-edge.json"
nt_expect_true "the edge cuts New York's events (not all are in)" test \
    "$(j "$NT_TMP/report-edge.json" "d['summary'][0]['events']")" -lt \
    "$(j "$NT_TMP/report.json" "d['summary'][0]['events']")"
figures_match "from the new year" "$NT_TMP/report-edge.json" "$FROM" "$TO"
FROM=2024-12-31

# An upgraded database: rows from before the ledger (a transaction id below its genesis, which
# counts them), made here by the superuser: copies of events under new sequence numbers, the
# genesis entry rewritten to count them (consistently: verify without digests passes).
events_untrigger() {
    nt_sql "ALTER TABLE needletrace.events DISABLE TRIGGER append_only;
            ALTER TABLE needletrace.events DISABLE TRIGGER event_keys;
            ALTER TABLE needletrace.ledger DISABLE TRIGGER append_only" >/dev/null
}
events_retrigger() {
    nt_sql "ALTER TABLE needletrace.events ENABLE ALWAYS TRIGGER append_only;
            ALTER TABLE needletrace.events ENABLE ALWAYS TRIGGER event_keys;
            ALTER TABLE needletrace.ledger ENABLE ALWAYS TRIGGER append_only" >/dev/null
}
events_untrigger
nt_sql "CREATE TABLE public.old AS SELECT * FROM needletrace.events
          WHERE kind IN ('needle_activity', 'session_started') ORDER BY device_time LIMIT 40;
        UPDATE public.old SET seq = seq + 1000000, tx = 1;
        UPDATE public.old SET session_id = 'never-started' WHERE ctid = (SELECT min(ctid)
          FROM public.old WHERE kind = 'needle_activity');
        INSERT INTO needletrace.events SELECT * FROM public.old;
        UPDATE needletrace.ledger SET n_events = n_events + 40 WHERE collector_id = '(genesis)';
        UPDATE needletrace.ledger l SET entry_hash = sha256(convert_to(
                 needletrace.ledger_entry_text(l), 'UTF8')) WHERE collector_id = '(genesis)'" \
    >/dev/null
events_retrigger
NEEDLETRACE_DATABASE_URL=$AUDITOR "$NT_BIN" audit verify >"$NT_TMP/verify-old.out" 2>&1 || true
nt_expect_true "rows from before the ledger: the record verifies" \
    grep -q '^OK' "$NT_TMP/verify-old.out"
report json "$NT_TMP/report-old.json"
figures_match "with rows from before the ledger" "$NT_TMP/report-old.json" "$FROM" "$TO"

# A row inserted outside any batch: the report is written and says the record did not verify;
# its figures count the row all the same (nothing hidden).
events_untrigger
nt_sql "UPDATE public.old SET seq = seq + 1000000, tx = (SELECT max(tx) + 1000 FROM
          needletrace.ledger) WHERE seq = (SELECT min(seq) FROM public.old);
        INSERT INTO needletrace.events SELECT * FROM public.old WHERE seq > 2000000" >/dev/null
events_retrigger
unverified() { # unverified WHAT NAME LABEL PATTERN: the report of a record that does not verify
    local rc=0
    NEEDLETRACE_DATABASE_URL=$AUDITOR "$NT_BIN" audit report --from $FROM --to $TO \
        --format json --out "$NT_TMP/report-$2.json" >"$NT_TMP/report-$2.out" 2>&1 || rc=$?
    nt_expect_eq "$1: the report is written, exit code" 1 "$rc"
    nt_expect_true "... and says the record did NOT verify" \
        grep -q "did NOT verify" "$NT_TMP/report-$2.out"
    nt_expect_true "... $3" grep -q "$4" "$NT_TMP/report-$2.json"
}
unverified "a tampered record" bad "the row outside any batch named in it" \
    "inserted outside any sealed batch"
figures_match "with a row outside any batch" "$NT_TMP/report-bad.json" "$FROM" "$TO"

# A forged ledger entry naming a batch's transaction too (tx's uniqueness dropped by hand; its
# counts large enough to be read in a piece of its own, apart from the batch's): the report does
# not verify, and the batch's rows, read twice, are counted once.
nt_sql "ALTER TABLE needletrace.ledger DROP CONSTRAINT ledger_tx_key;
        CREATE TABLE public.forged AS SELECT * FROM needletrace.ledger
          WHERE collector_id <> '(genesis)' ORDER BY seq LIMIT 1;
        UPDATE public.forged SET collector_id = 'forged', n_events = 300000; -- a piece of its own
        INSERT INTO needletrace.ledger SELECT * FROM public.forged" >/dev/null
unverified "a forged entry sharing a batch's tx" forged "and names the forged entry" \
    "ledger entry forged#"
figures_match "with a forged entry sharing a tx" "$NT_TMP/report-forged.json" "$FROM" "$TO"

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
