#!/usr/bin/env bash
# test_db_dns.sh -- the database's host name is looked up off the loop and handed to libpq as
# hostaddr (the name stays the host):
#  (a) database.url names "localhost": the collector logs the address it found, connects over
#      TCP to it and commits everything;
#  (b) a name that does not resolve: a connection failure, logged once (not at every retry), the
#      collector stays up and not ready, and SIGTERM stops it within 10 s;
#  (c) a host list whose first name does not resolve: the next one is used;
#  (d) a lookup that hangs for 60 s (tests/fault/ntfault.c delays getaddrinfo of one name): the
#      loop goes on (/healthz, /readyz answer at once), and SIGTERM stops the collector within
#      10 s -- the lookup runs on a thread the loop does not wait for.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

BAD=nt-no-such-host.invalid # RFC 2606: never resolves
FAST=(NEEDLETRACE_MQTT_RECONNECT_MIN_MS=100 NEEDLETRACE_MQTT_RECONNECT_MAX_MS=300)

nt_start_pg
nt_start_broker
nt_migrate

# ---- (a) localhost ---------------------------------------------------------------------------
nt_start_collector c1 \
    NEEDLETRACE_DATABASE_URL="postgresql://nt_collector@localhost:$NT_PG_PORT/needletrace"
nt_wait_collector_ready c1
nt_expect_true "the address of localhost was looked up and logged" grep -qE \
    "database host addresses: localhost=(127\.0\.0\.1|::1)" "$NT_TMP/collector-c1.log"
nt_expect_eq "the collector's backend is reached over TCP from the loopback" 127.0.0.1 \
    "$(nt_sql "SELECT host(client_addr) FROM pg_stat_activity
                WHERE application_name = 'needletrace-it-c1' LIMIT 1")"
nt_simulate "$NT_TMP/sim1.json" --clinics 1 --devices 3 --events 600 --events-per-message 3 \
    --seed 951 --clinic-prefix dns1
nt_wait_counts "$NT_TMP/sim1.json" -- 120
nt_stop_collector c1 TERM
nt_expect_eq "exit code" 0 "$NT_EXIT_CODE"

# ---- (b) a name that does not resolve ----------------------------------------------------------
# lookup_failures: the warnings "could not connect ...: could not look up the database host "BAD""
lookup_failures() {
    grep -F "could not connect to the database: could not look up the database host" \
        "$NT_TMP/collector-c1.log" | grep -c -F "$BAD" || true
}
before=$(lookup_failures)
nt_start_collector c1 "${FAST[@]}" \
    NEEDLETRACE_DATABASE_URL="postgresql://nt_collector@$BAD:$NT_PG_PORT/needletrace"
# shellcheck disable=SC2317 # invoked through nt_wait_for
not_connected() {
    local r
    r=$(nt_readyz c1) || return 1
    echo "$r"
    [[ $r == "503 not ready: not connected to the database"* ]]
}
nt_wait_for "readyz says not connected" 30 not_connected
# shellcheck disable=SC2317 # invoked through nt_wait_for
retried() {
    local n
    n=$(nt_metric db_errors_total) || return 1
    echo "db_errors_total $n"
    ((n >= 5))
}
nt_wait_for "several attempts" 30 retried
nt_expect_eq "the failed lookup logged once" 1 "$(($(lookup_failures) - before))"
nt_stop_collector c1 TERM
nt_expect_eq "exit code after SIGTERM without a database" 0 "$NT_EXIT_CODE"
nt_expect_true "exited within 10 s (${NT_EXIT_MS} ms)" test "$NT_EXIT_MS" -le 10000

# ---- (c) a host list: the first name does not resolve ----------------------------------------
nt_start_collector c1 "${FAST[@]}" \
    NEEDLETRACE_DATABASE_URL="host=$BAD,localhost port=$NT_PG_PORT user=nt_collector dbname=needletrace"
nt_wait_collector_ready c1
nt_expect_true "the addresses line names the name that gave none" grep -qE \
    'database host addresses: localhost=[^;]*; could not look up \\?"'"$BAD" \
    "$NT_TMP/collector-c1.log"
nt_simulate "$NT_TMP/sim2.json" --clinics 1 --devices 3 --events 600 --events-per-message 3 \
    --seed 952 --clinic-prefix dns2
nt_wait_counts "$NT_TMP/sim1.json" "$NT_TMP/sim2.json" -- 120
nt_check_no_duplicate_keys
nt_stop_collector c1 TERM

# ---- (d) a lookup that hangs -----------------------------------------------------------------
SLOW=db.slow-dns.test
# (verify_asan_link_order=0: a gcc sanitizer build links libasan dynamically, and would refuse
# a preloaded library before it)
nt_start_collector c1 LD_PRELOAD="$(dirname "$NT_BIN")/libntfault.so" \
    ASAN_OPTIONS="$ASAN_OPTIONS:verify_asan_link_order=0" \
    NTFAULT_GETADDRINFO_HOST="$SLOW" NTFAULT_GETADDRINFO_DELAY_MS=60000 \
    NEEDLETRACE_DATABASE_URL="postgresql://nt_collector@$SLOW:$NT_PG_PORT/needletrace"
nt_wait_for "readyz says not connected while the lookup hangs" 10 not_connected
# shellcheck disable=SC2317 # invoked through nt_hold
answers_fast() {
    local t0 ms
    t0=$(nt_now_ms)
    nt_http c1 /healthz >/dev/null || return 1
    ms=$(($(nt_now_ms) - t0))
    echo "/healthz in $ms ms"
    ((ms < 1000))
}
nt_hold "the loop answers /healthz within 1 s while the lookup hangs" 5 answers_fast
nt_stop_collector c1 TERM
nt_expect_eq "exit code after SIGTERM during a hanging lookup" 0 "$NT_EXIT_CODE"
nt_expect_true "exited within 10 s (${NT_EXIT_MS} ms)" test "$NT_EXIT_MS" -le 10000
nt_finish
