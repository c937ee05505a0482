#!/usr/bin/env bash
# test_cli.sh -- the command-line contract: check-config rejects unknown keys (file, env,
# flag) and bad values with exit 2 and a message naming the key; `run` exits 2 on bad config;
# `migrate` is safe to run twice and by two processes at once; the evidence tables refuse
# UPDATE, DELETE and TRUNCATE.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

# nt_expect_exit LABEL CODE PATTERN COMMAND...: exit code and an output line matching PATTERN.
nt_expect_exit() {
    local label=$1 want=$2 pattern=$3 rc=0 out
    shift 3
    if declare -F "$1" >/dev/null; then
        out=$("$@" 2>&1) || rc=$?
    else
        out=$(timeout 30 "$@" 2>&1) || rc=$?
    fi
    nt_expect_eq "$label: exit code" "$want" "$rc"
    if [[ -n $pattern ]]; then
        nt_expect_true "$label: message names it ($(printf '%s' "$out" | grep -m1 -iE "$pattern" ||
            printf '%s' "no line matching /$pattern/ in: ${out:0:300}"))" \
            grep -qiE "$pattern" <<<"$out"
    fi
}

# nt_expect_refused LABEL SQL: the statement fails with an error from the server.
nt_expect_refused() {
    local rc=0 out
    out=$(nt_sql "$2" 2>&1) || rc=$?
    nt_expect_true "$1 (psql exit $rc: $(head -n 1 <<<"$out"))" \
        test "$rc" -ne 0 -a -n "$(grep -m1 'ERROR' <<<"$out")"
}

# ---- configuration ---------------------------------------------------------------------------
good="$NT_TMP/good.conf"
printf '[mqtt]\nurl = mqtt://127.0.0.1:1883\n[journal]\nmax_bytes = 256MiB\n' >"$good"
nt_expect_exit "check-config, good file" 0 "" "$NT_BIN" check-config --config "$good"
printf '[journal]\nmax_bytes = 64MiB\n' >"$NT_TMP/small-journal.conf"
nt_expect_exit "check-config, journal bound below two segments" 2 'twice journal.segment_bytes' \
    "$NT_BIN" check-config --config "$NT_TMP/small-journal.conf"
nt_expect_exit "check-config, defaults" 0 "" "$NT_BIN" check-config

printf '[mqtt]\nurl = mqtt://127.0.0.1:1883\nbogus_option = 1\n' >"$NT_TMP/unknown.conf"
nt_expect_exit "check-config, unknown key in file" 2 'bogus_option' \
    "$NT_BIN" check-config --config "$NT_TMP/unknown.conf"
printf '[nosuchsection]\nkey = 1\n' >"$NT_TMP/section.conf"
nt_expect_exit "check-config, unknown section in file" 2 'nosuchsection' \
    "$NT_BIN" check-config --config "$NT_TMP/section.conf"
nt_expect_exit "check-config, unknown key in env" 2 'bogus_option' \
    env NEEDLETRACE_MQTT_BOGUS_OPTION=1 "$NT_BIN" check-config
nt_expect_exit "check-config, unknown flag" 2 'bogus' \
    "$NT_BIN" check-config --mqtt-bogus-option 1
nt_expect_exit "check-config, bad size in env" 2 'max_bytes' \
    env NEEDLETRACE_JOURNAL_MAX_BYTES=12x "$NT_BIN" check-config
printf '[log]\nlevel = loud\n' >"$NT_TMP/badvalue.conf"
nt_expect_exit "check-config, bad value in file" 2 'level' \
    "$NT_BIN" check-config --config "$NT_TMP/badvalue.conf"
nt_expect_exit "check-config, bad mqtt url" 2 'url' \
    env NEEDLETRACE_MQTT_URL=http://example.invalid "$NT_BIN" check-config
nt_expect_exit "run, bad value" 2 'level' \
    env NEEDLETRACE_LOG_LEVEL=loud "$NT_BIN" run

# ---- migrate ---------------------------------------------------------------------------------
nt_start_pg
nt_start_broker
nt_expect_exit "migrate, first run" 0 "" "$NT_BIN" migrate
nt_expect_exit "migrate, second run" 0 "" "$NT_BIN" migrate
nt_grant_logins # (nt_migrate does this: the test logins join their roles)
mig='SELECT count(*) FROM needletrace.schema_migrations'
applied=$(nt_sql "$mig")
nt_expect_true "migrations recorded ($applied)" test "$applied" -ge 1

nt_psql postgres "CREATE DATABASE needletrace_concurrent" >/dev/null
url2="host=127.0.0.1 port=$NT_PG_PORT user=postgres dbname=needletrace_concurrent"
NEEDLETRACE_DATABASE_ADMIN_URL=$url2 "$NT_BIN" migrate >"$NT_TMP/migrate-a.log" 2>&1 &
pa=$!
NEEDLETRACE_DATABASE_ADMIN_URL=$url2 "$NT_BIN" migrate >"$NT_TMP/migrate-b.log" 2>&1 &
pb=$!
NT_BG_PIDS+=("$pa" "$pb")
rca=0
rcb=0
wait "$pa" || rca=$?
wait "$pb" || rcb=$?
nt_expect_eq "concurrent migrate A exit code" 0 "$rca"
nt_expect_eq "concurrent migrate B exit code" 0 "$rcb"
nt_expect_eq "concurrent migrate: migrations recorded once" "$applied" \
    "$(nt_psql needletrace_concurrent "$mig")"
nt_expect_eq "concurrent migrate: relations present" "true true true true true true true" \
    "$(nt_psql needletrace_concurrent "SELECT string_agg((to_regclass('needletrace.' || r) IS NOT NULL)::text, ' ')
        FROM unnest(ARRAY['events', 'raw_messages', 'quarantine', 'collector_checkpoints',
                          'alerts', 'sessions', 'cartridge_mounts']) AS r")"

# ---- append-only evidence --------------------------------------------------------------------
nt_start_collector c1
nt_wait_collector_ready c1
nt_simulate "$NT_TMP/sim.json" --clinics 1 --devices 2 --events 200 --events-per-message 5 \
    --malformed-rate 0.1 --seed 909
nt_wait_counts "$NT_TMP/sim.json" -- 120
before=$(nt_counts)
for t in events raw_messages quarantine; do
    nt_expect_refused "UPDATE needletrace.$t refused" \
        "UPDATE needletrace.$t SET received_at = received_at"
    nt_expect_refused "DELETE FROM needletrace.$t refused" "DELETE FROM needletrace.$t"
    nt_expect_refused "TRUNCATE needletrace.$t refused" "TRUNCATE needletrace.$t"
done
nt_expect_eq "row counts unchanged (events raw quarantine)" "$before" "$(nt_counts)"
nt_finish
