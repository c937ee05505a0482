#!/usr/bin/env bash
# test_alerts_cli.sh -- `needletrace alerts list` and `needletrace alerts ack` against a real
# PostgreSQL: newest first, the --open/--clinic/--rule/--since/--limit filters, --json lines
# (every column, the ack history), an acknowledgement recorded beside the alert (alert rows
# unchanged, acknowledging again adds a row), and the exit codes: 1 for an unknown alert or
# an unreachable database (named, password never shown), 2 for bad usage naming the value.
#
# Needs the `alerts` command wired into the binary and the rules migrations (collector/sql/)
# (needletrace.alert_acks, needletrace.alerts_open); it says so plainly when either is missing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

OUT=""
ERR=""
RC=0

# run_alerts ARGS...: runs `needletrace alerts ARGS`; stdout in OUT, stderr in ERR, exit code in
# RC. Both streams are also appended to alerts.log (sanitizer reports are looked for there).
run_alerts() {
    RC=0
    NEEDLETRACE_DATABASE_URL=${ALERTS_URL:-$(nt_db_url nt_staff)} \
        timeout 60 "$NT_BIN" alerts "$@" >"$NT_TMP/alerts.out" 2>"$NT_TMP/alerts.err" || RC=$?
    OUT=$(cat "$NT_TMP/alerts.out")
    ERR=$(cat "$NT_TMP/alerts.err")
    {
        printf '===== alerts %s (exit %s)\n' "$*" "$RC"
        cat "$NT_TMP/alerts.out" "$NT_TMP/alerts.err"
    } >>"$NT_TMP/alerts.log"
}

# expect_alerts LABEL CODE ARGS...: run_alerts ARGS and check the exit code.
expect_alerts() {
    local label=$1 want=$2
    shift 2
    run_alerts "$@"
    nt_expect_eq "$label: exit code" "$want" "$RC"
}

# expect_err LABEL PATTERN: the last stderr has a line matching PATTERN (extended, any case).
expect_err() {
    nt_expect_true "$1 ($(grep -m1 -iE -- "$2" <<<"$ERR" ||
        printf 'no line matching /%s/ in: %s' "$2" "${ERR:0:300}"))" grep -qiE -- "$2" <<<"$ERR"
}

# table_ids: the ALERT_ID column of the last table output, space separated.
table_ids() {
    awk 'NR > 1 { print $1 }' <<<"$OUT" | paste -sd' ' -
}

# json_ids: the alert_id of every JSON line of the last output, space separated.
json_ids() {
    jq -r '.alert_id' <<<"$OUT" | paste -sd' ' -
}

# json_true FILTER: FILTER, over the JSON lines of the last output as one array, is true.
# shellcheck disable=SC2317 # invoked through nt_expect_true
json_true() {
    jq -e -s "$1" >/dev/null <<<"$OUT"
}

# add_alert RULE SEVERITY CLINIC DEVICE SESSION_SQL SEQ RAISED_AT DETAILS_JSON: inserts one
# alert the way the rules would and prints its alert_id.
add_alert() {
    nt_sql "INSERT INTO needletrace.alerts
                (rule, severity, clinic_id, device_serial, session_id, boot_id, seq, details,
                 raised_at)
            VALUES ('$1', '$2', '$3', '$4', $5, 1, $6, '$8'::jsonb, '$7'::timestamptz)
            RETURNING alert_id"
}

# Every alert row, hashed: acknowledging must never change one.
alerts_digest() {
    nt_sql "SELECT count(*) || ' ' || coalesce(md5(string_agg(to_jsonb(a)::text, ','
                                                   ORDER BY a.alert_id)), '')
              FROM needletrace.alerts a"
}

acks_of() {
    nt_sql "SELECT count(*) FROM needletrace.alert_acks WHERE alert_id = $1"
}

# ---- preconditions ---------------------------------------------------------------------------
nt_start_pg
nt_migrate
if ! "$NT_BIN" alerts --help >"$NT_TMP/help.out" 2>&1; then
    nt_fail "this needletrace has no working 'alerts' command (is collector/cmd/alerts.c wired" \
        "into main.c?): $(head -c 300 "$NT_TMP/help.out")"
fi
for rel in alert_acks alerts_open; do
    [[ -n $(nt_sql "SELECT to_regclass('needletrace.$rel')") ]] ||
        nt_fail "needletrace.$rel does not exist after migrate: rules migrations missing"
done

# ---- alerts, as the rules would have raised them ---------------------------------------------
# a1 and a5 share raised_at: the newer alert_id comes first. a4 carries terminal escapes in a
# device-supplied session id and in its details: the table must not pass them through.
a1=$(add_alert CARTRIDGE_REUSED critical clinic-a NP-0001 "'sess-1'" 10 '2025-03-01 08:00:00+00' \
    '{"gtin": "04012345678901", "serial": "SN123", "first_session": "sess-0"}')
a2=$(add_alert DEPTH_OUT_OF_RANGE warning clinic-a NP-0002 "'sess-2'" 11 '2025-03-01 09:00:00+00' \
    '{"depth_um": 1200, "limit_um": 750, "area": "forehead", "source": "default"}')
a3=$(add_alert CLOCK_SKEW warning clinic-b NP-0003 NULL 12 '2025-03-01 10:00:00+00' \
    '{"skew_ms": 600000}')
a4=$(add_alert CARTRIDGE_EXPIRED critical clinic-b NP-0004 "E'sess-\\x1b[2J4'" 13 \
    '2025-03-01 11:00:00+00' '{"expiry": "2025-01-31", "lot": "L7\u001b]0;x\u0007"}')
a5=$(add_alert SEQUENCE_GAP warning clinic-a NP-0001 "'sess-1'" 14 '2025-03-01 08:00:00+00' \
    '{"missing_from": 3, "missing_to": 4}')
nt_log "alerts inserted: a1=$a1 a2=$a2 a3=$a3 a4=$a4 a5=$a5"
all_ids="$a4 $a3 $a2 $a5 $a1"
digest=$(alerts_digest)

# ---- list ------------------------------------------------------------------------------------
expect_alerts "list" 0 list
nt_expect_eq "list: newest first (ties by alert_id)" "$all_ids" "$(table_ids)"
nt_expect_true "list: header names the columns ($(head -n 1 <<<"$OUT"))" \
    grep -qE '^ALERT_ID +RAISED_AT +SEVERITY +RULE +CLINIC +DEVICE +SESSION +STATE +DETAILS$' \
    <<<"$(head -n 1 <<<"$OUT")"
nt_expect_eq "list: every alert open" 5 "$(grep -cE '  open  ' <<<"$OUT")"
nt_expect_true "list: details summarised ($(grep -m1 "^$a2 " <<<"$OUT"))" \
    grep -qE "^$a2 .*DEPTH_OUT_OF_RANGE +clinic-a +NP-0002 +sess-2 +open +area=forehead depth_um=1200 limit_um=750 source=default$" \
    <<<"$OUT"
nt_expect_eq "list: no terminal escape passed through" 0 "$(grep -c $'\x1b' <<<"$OUT" || true)"

expect_alerts "list --json" 0 list --json
nt_expect_eq "list --json: one object per line, newest first" "$all_ids" "$(json_ids)"
nt_expect_true "list --json: every line is a JSON object" \
    json_true 'length == 5 and all(.[]; type == "object")'
columns=$(nt_sql "SELECT string_agg(column_name, ' ' ORDER BY ordinal_position)
                    FROM information_schema.columns
                   WHERE table_schema = 'needletrace' AND table_name = 'alerts'")
missing=$(jq -r -s --arg cols "$columns open acks" \
    '[($cols | split(" "))[] as $c | select(any(.[]; has($c)) | not) | $c] | join(" ")' <<<"$OUT")
nt_expect_eq "list --json: every column of alerts, open and acks (missing)" "" "$missing"
nt_expect_eq "list --json: details kept as JSON" 750 \
    "$(jq -r "select(.alert_id == $a2) | .details.limit_um" <<<"$OUT")"
nt_expect_eq "list --json: a NULL session is null" null \
    "$(jq -r "select(.alert_id == $a3) | .session_id" <<<"$OUT")"
nt_expect_eq "list --json: the escape is kept, JSON-escaped" '"sess-\u001b[2J4"' \
    "$(jq -c "select(.alert_id == $a4) | .session_id" <<<"$OUT")"
nt_expect_eq "list --json: open and no acks" "true []" \
    "$(jq -r "select(.alert_id == $a1) | \"\(.open) \(.acks | tojson)\"" <<<"$OUT")"
nt_expect_true "list --json: raised_at is RFC 3339" \
    json_true 'all(.[]; .raised_at | test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+([+-][0-9:]+|Z)$"))'

expect_alerts "list --clinic clinic-a" 0 list --clinic clinic-a
nt_expect_eq "list --clinic clinic-a" "$a2 $a5 $a1" "$(table_ids)"
expect_alerts "list --rule CLOCK_SKEW" 0 list --rule CLOCK_SKEW
nt_expect_eq "list --rule CLOCK_SKEW" "$a3" "$(table_ids)"
expect_alerts "list --rule CLOCK_SKEW --clinic clinic-a" 0 list --rule CLOCK_SKEW --clinic clinic-a
nt_expect_eq "list --rule CLOCK_SKEW --clinic clinic-a: header only" 1 "$(wc -l <<<"$OUT")"
expect_alerts "list --since" 0 list --since '2025-03-01 09:30:00+00' --json
nt_expect_eq "list --since 09:30" "$a4 $a3" "$(json_ids)"
expect_alerts "list --limit 2" 0 list --limit 2
nt_expect_eq "list --limit 2: the newest two" "$a4 $a3" "$(table_ids)"
expect_err "list --limit 2: says more match" 'more alerts match'

# ---- ack -------------------------------------------------------------------------------------
expect_alerts "ack" 0 ack "$a2" --by "Dr. Müller" --note "called the operator; depth reset to 0.5 mm"
nt_expect_eq "ack: output" "alert $a2 acknowledged by Dr. Müller (database role nt_staff)" "$OUT"
nt_expect_eq "ack: one row in alert_acks" \
    "clinic-a|Dr. Müller|called the operator; depth reset to 0.5 mm|t" \
    "$(nt_sql "SELECT clinic_id, acked_by, note, acked_at IS NOT NULL
                 FROM needletrace.alert_acks WHERE alert_id = $a2")"
nt_expect_eq "ack: alert rows unchanged" "$digest" "$(alerts_digest)"
expect_alerts "list --open after ack" 0 list --open
nt_expect_eq "list --open: the acknowledged alert is gone" "$a4 $a3 $a5 $a1" "$(table_ids)"
expect_alerts "list after ack" 0 list
nt_expect_true "list: ack state shown ($(grep -m1 "^$a2 " <<<"$OUT"))" \
    grep -qE "^$a2 .* acked by Dr\. Müller at 20[0-9]{2}-" <<<"$OUT"

expect_alerts "ack again" 0 ack "$a2" --by nurse-2 --note="--checked the pen again"
nt_expect_eq "ack again: output" "alert $a2 acknowledged by nurse-2 (database role nt_staff)" "$OUT"
nt_expect_eq "ack again: recorded as another row" 2 "$(acks_of "$a2")"
nt_expect_eq "ack again: alert rows unchanged" "$digest" "$(alerts_digest)"
expect_alerts "list --json after two acks" 0 list --json --rule DEPTH_OUT_OF_RANGE
nt_expect_eq "list --json: the history shows both, oldest first" \
    'false ["Dr. Müller","nurse-2"] ["called the operator; depth reset to 0.5 mm","--checked the pen again"]' \
    "$(jq -r '"\(.open) \([.acks[].acked_by] | tojson) \([.acks[].note] | tojson)"' <<<"$OUT")"

acks_before=$(nt_count alert_acks)
expect_alerts "ack of a missing alert" 1 ack 999999999 --by x --note y
expect_err "ack of a missing alert: message" '^needletrace: alert 999999999 does not exist$'
expect_alerts "ack in the wrong clinic" 1 ack "$a1" --clinic clinic-b --by x --note y
expect_err "ack in the wrong clinic: message" "alert $a1 does not exist"

# ---- bad usage: exit 2, the message names the value or option --------------------------------
expect_alerts "list --rule NOT_A_RULE" 2 list --rule NOT_A_RULE
expect_err "list --rule NOT_A_RULE: names it" 'NOT_A_RULE.*--rule'
expect_alerts "ack without --by" 2 ack "$a1" --note y
expect_err "ack without --by: names it" '\-\-by'
expect_alerts "ack without --note" 2 ack "$a1" --by x
expect_err "ack without --note: names it" '\-\-note'
expect_alerts "ack with an empty --by" 2 ack "$a1" --by "" --note y
expect_err "ack with an empty --by: names it" '\-\-by'
expect_alerts "ack with a 129-character --by" 2 ack "$a1" --by "$(printf 'n%.0s' {1..129})" --note y
expect_err "ack with a 129-character --by: names it" '\-\-by.*128'
expect_alerts "ack with a 128-character --by (multi-byte)" 0 ack "$a1" \
    --by "$(printf 'ü%.0s' {1..128})" --note y
expect_alerts "ack with a 2001-character --note" 2 ack "$a1" --by x --note "$(printf 'n%.0s' {1..2001})"
expect_err "ack with a 2001-character --note: names it" '\-\-note.*2000'
expect_alerts "ack with a newline in --note" 2 ack "$a1" --by x --note $'line 1\nline 2'
expect_err "ack with a newline in --note: names it" '\-\-note.*control'
expect_alerts "ack with invalid UTF-8 in --by" 2 ack "$a1" --by $'bad\xff' --note y
expect_err "ack with invalid UTF-8 in --by: names it" '\-\-by.*UTF-8'
expect_alerts "ack with a non-numeric ALERT_ID" 2 ack abc --by x --note y
expect_err "ack with a non-numeric ALERT_ID: names it" 'ALERT_ID "abc"'
expect_alerts "list --limit 0" 2 list --limit 0
expect_err "list --limit 0: names it" '\-\-limit'
expect_alerts "list --since garbage" 2 list --since not-a-time
expect_err "list --since garbage: names it" '\-\-since'
expect_alerts "list --clinic with a quote" 2 list --clinic "clinic-a' OR '1'='1"
expect_err "list --clinic with a quote: names it" '\-\-clinic'
nt_expect_eq "no acknowledgement recorded by the failures" "$((acks_before + 1))" \
    "$(nt_count alert_acks)"
expect_alerts "unknown subcommand" 2 frobnicate
expect_err "unknown subcommand: usage on stderr" '^usage: needletrace alerts'
expect_alerts "unknown option" 2 list --bogus
expect_err "unknown option: named, usage on stderr" '"--bogus"'
expect_err "unknown option: usage on stderr" '^usage: needletrace alerts'
expect_alerts "no subcommand" 2
expect_alerts "--help" 0 --help
nt_expect_true "--help: usage on stdout" grep -q '^usage: needletrace alerts' <<<"$OUT"

# ---- database unreachable: exit 1, the target named, the password not ------------------------
dead_port=$(nt_free_port)
ALERTS_URL="host=127.0.0.1 port=$dead_port user=auditor password=pw-s3cret dbname=needletrace" \
    expect_alerts "database unreachable" 1 list
expect_err "database unreachable: names the target" "127\.0\.0\.1:$dead_port"
nt_expect_eq "database unreachable: password not shown" 0 \
    "$(grep -c 'pw-s3cret' <<<"$OUT$ERR" || true)"

nt_expect_eq "alert rows unchanged at the end" "$digest" "$(alerts_digest)"
nt_finish
