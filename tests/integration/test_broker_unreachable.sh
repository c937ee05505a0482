#!/usr/bin/env bash
# test_broker_unreachable.sh -- issue 8, point 6: the loop never blocks on the network. A broker
# whose address drops every SYN (a loopback listener with a full accept queue: connect() hangs)
# must not freeze the collector at start-up: /healthz answers throughout, /readyz says the broker
# is not connected, each attempt is abandoned after mqtt.connect_timeout_ms and retried, and
# SIGTERM ends it within 10 s with exit code 0. Then a broker named "localhost" (looked up with
# uv_getaddrinfo) is reached and a fleet ingested exactly.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/pub.sh"
nt_setup "$@"

nt_start_pg
nt_migrate
nt_find_python socket
hole=$(nt_free_port)
"$NT_PY" "$(dirname "${BASH_SOURCE[0]}")/../fault/ntblackhole.py" --port "$hole" \
    >"$NT_TMP/blackhole.log" 2>&1 &
hole_pid=$!
nt_wait_for "the blackhole listener to fill its queue" 10 grep -q ready "$NT_TMP/blackhole.log"
# shellcheck disable=SC2317 # invoked through nt_hold / nt_wait_for
hangs() {
    ! timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$hole" 2>/dev/null
}
nt_expect_true "a TCP connect to 127.0.0.1:$hole hangs (SYN dropped)" hangs

nt_start_collector c1 NEEDLETRACE_MQTT_URL="mqtt://127.0.0.1:$hole" \
    NEEDLETRACE_MQTT_CONNECT_TIMEOUT_MS=1500 NEEDLETRACE_MQTT_RECONNECT_MAX_MS=1000
# shellcheck disable=SC2317
healthz_fast() {
    curl -fsS --max-time 1 "http://127.0.0.1:${NT_CHTTP[c1]}/healthz" >/dev/null
}
nt_wait_for "/healthz to answer" 20 healthz_fast
nt_hold "/healthz answers within 1 s while the broker is unreachable" 6 healthz_fast
readyz=$(curl -sS --max-time 2 "http://127.0.0.1:${NT_CHTTP[c1]}/readyz" || true)
nt_expect_true "/readyz says the broker is not connected ($readyz)" \
    grep -q "not connected to the broker" <<<"$readyz"
attempts=$(grep -c "no answer within 1500 ms" "$NT_TMP/collector-c1.log" || true)
nt_log "connection attempts abandoned so far: $attempts (later ones log at debug level)"
nt_expect_true "the first attempt was abandoned after the connect timeout" test "$attempts" -ge 1
nt_stop_collector c1 TERM 15
nt_expect_eq "exit code after SIGTERM while connecting" 0 "$NT_EXIT_CODE"
nt_expect_true "exited within 10 s (${NT_EXIT_MS} ms)" test "$NT_EXIT_MS" -lt 10000
kill "$hole_pid" 2>/dev/null || true
wait "$hole_pid" 2>/dev/null || true

# A name lookup that hangs (a DNS server that never answers): it runs on libuv's thread pool and
# cannot be cancelled, so SIGTERM must not wait for it. Needs root (a mount namespace with its
# own /etc/resolv.conf pointing at a silent server on 127.0.0.1:53); skipped otherwise.
if [[ $(id -u) == 0 ]] && unshare -m true 2>/dev/null; then
    printf 'nameserver 127.0.0.1\noptions timeout:30 attempts:1\n' >"$NT_TMP/resolv.conf"
    "$NT_PY" -c 'import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
print("ready", flush=True)
while True:
    s.recv(4096)' >"$NT_TMP/silent-dns.log" 2>&1 &
    dns_pid=$!
    if nt_wait_for "the silent DNS server" 10 grep -q ready "$NT_TMP/silent-dns.log"; then
        cat >"$NT_TMP/in-ns.sh" <<WRAP
#!/usr/bin/env bash
exec unshare -m bash -c 'mount --bind "$NT_TMP/resolv.conf" /etc/resolv.conf && exec "\$0" "\$@"' "$NT_BIN" "\$@"
WRAP
        chmod +x "$NT_TMP/in-ns.sh"
        real_bin=$NT_BIN
        NT_BIN=$NT_TMP/in-ns.sh
        nt_start_collector c3 NEEDLETRACE_MQTT_URL="mqtt://broker.needletrace.test:1883"
        NT_BIN=$real_bin
        nt_wait_for "/healthz of c3" 20 curl -fsS --max-time 1 "http://127.0.0.1:${NT_CHTTP[c3]}/healthz"
        nt_hold "/healthz answers while the broker's name lookup hangs" 3 \
            curl -fsS --max-time 1 "http://127.0.0.1:${NT_CHTTP[c3]}/healthz"
        nt_stop_collector c3 TERM 40
        nt_expect_eq "exit code after SIGTERM during a hanging lookup" 0 "$NT_EXIT_CODE"
        nt_expect_true "exited within 10 s during a hanging lookup (${NT_EXIT_MS} ms)" \
            test "$NT_EXIT_MS" -lt 10000
    else
        nt_log "skipped the hanging-lookup case: could not bind 127.0.0.1:53"
    fi
    kill "$dns_pid" 2>/dev/null || true
    wait "$dns_pid" 2>/dev/null || true
else
    nt_log "skipped the hanging-lookup case: needs root and unshare -m"
fi

nt_start_broker
nt_start_collector c2 NEEDLETRACE_MQTT_URL="mqtt://localhost:$NT_BROKER_PORT"
nt_wait_collector_ready c2
nt_expect_true "connected by name (localhost)" \
    grep -q "connected to broker localhost:$NT_BROKER_PORT" "$NT_TMP/collector-c2.log"
nt_simulate "$NT_TMP/sim.json" --clinics 1 --devices 3 --events 1500 --events-per-message 5 \
    --seed 77
nt_wait_counts "$NT_TMP/sim.json" -- 120
nt_check_no_duplicate_keys
nt_finish
