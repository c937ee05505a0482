#!/usr/bin/env bash
# test_mtls.sh -- the broker's mTLS listener and ACL, as deploy/certs.sh and
# deploy/mosquitto/mosquitto.conf set them up:
#   1. a fleet (through a gateway certificate) is collected over mutual TLS;
#   2. the broker restarts twice: each time the collector reconnects within 15 s of the broker
#      coming back, spending under 2 s of CPU over the outage and the reconnect (no busy loop
#      in the TLS handshake), and nothing is lost or doubled;
#   3. a client without a certificate, and one with a certificate of another CA, are refused;
#   4. a pen's certificate cannot publish as another pen, nor into another clinic.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=lib/pub.sh
source "$NT_LIB_DIR/pub.sh"
nt_setup "$@"
command -v openssl >/dev/null || nt_fail "openssl is not installed (tests/run.sh installs it)"
ROOT=$(cd "$NT_LIB_DIR/../../.." && pwd)
CERTS=$NT_TMP/certs

bash "$ROOT/deploy/certs.sh" "$CERTS" --pen CL-A/HP-A1 --pen CL-A/HP-A2 --pen CL-B/HP-B1 \
    --gateway fleet-sim/+ 2>>"$NT_TMP/certs.log" || nt_fail "deploy/certs.sh failed"
if ((EUID == 0)) && id mosquitto >/dev/null 2>&1; then
    chown -R mosquitto: "$CERTS" # the broker drops to user mosquitto before reading its key
fi

nt_start_pg
NT_BROKER_TLS_DIR=$CERTS nt_start_broker
nt_migrate
# The simulator publishes as the gateway; the collector gets its own identity below.
export NEEDLETRACE_MQTT_CA_FILE=$CERTS/ca.crt
export NEEDLETRACE_MQTT_CERT_FILE=$CERTS/gateways/fleet-sim.crt
export NEEDLETRACE_MQTT_KEY_FILE=$CERTS/gateways/fleet-sim.key
NT_LOG_LEVEL=debug nt_start_collector c1 NEEDLETRACE_MQTT_CERT_FILE="$CERTS/collector.crt" \
    NEEDLETRACE_MQTT_KEY_FILE="$CERTS/collector.key"
nt_wait_collector_ready c1
grep -q "TLS handshake with localhost:$NT_BROKER_PORT done" "$NT_TMP/collector-c1.log" ||
    nt_fail "the collector's log does not show a TLS handshake"

# ---- 1. collected over mTLS ---------------------------------------------------------------------
nt_simulate "$NT_TMP/simA.json" --clinics 2 --devices 6 --events 6000 --events-per-message 3 \
    --seed 1101
nt_wait_counts "$NT_TMP/simA.json" -- 120

# ---- 2. two broker restarts ---------------------------------------------------------------------
cpu_ticks() { # utime + stime of a process, in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}
failed_attempts() {
    grep -c "could not connect to broker" "$NT_TMP/collector-c1.log" || true
}
# shellcheck disable=SC2317 # called through nt_wait_for
attempts_more_than() {
    (($(failed_attempts) > $1))
}
# shellcheck disable=SC2317 # called through nt_wait_for
connects_more_than() {
    local n
    n=$(nt_metric mqtt_connects_total c1) || return 1
    [[ -n $n ]] && ((n > $1))
}
hz=$(getconf CLK_TCK)
pid=$(nt_collector_pid c1)
for round in 1 2; do
    ticks0=$(cpu_ticks "$pid")
    connects0=$(nt_metric mqtt_connects_total c1)
    nt_stop_broker
    # The outage lasts until the collector has failed to connect twice (each refused attempt
    # goes through the TLS path: the socket fails, the handshake must not spin).
    f0=$(failed_attempts)
    nt_wait_for "two failed connection attempts while the broker is down" 60 attempts_more_than \
        "$((f0 + 1))"
    t_up=$(nt_now_ms)
    NT_BROKER_TLS_DIR=$CERTS nt_start_broker
    nt_wait_for "the collector reconnected (round $round)" 60 connects_more_than "$connects0"
    took=$(($(nt_now_ms) - t_up))
    ticks=$(($(cpu_ticks "$pid") - ticks0))
    cpu_ms=$((ticks * 1000 / hz))
    nt_log "broker restart $round: reconnected ${took} ms after the broker came back;" \
        "collector CPU over the outage and reconnect ${cpu_ms} ms"
    nt_expect_true "reconnected within 15 s of the broker coming back (round $round: $took ms)" \
        test "$took" -le 15000
    nt_expect_true "collector CPU under 2 s over the outage (round $round: $cpu_ms ms)" \
        test "$cpu_ms" -lt 2000
done
nt_wait_collector_ready c1

nt_simulate "$NT_TMP/simB.json" --clinics 2 --devices 6 --events 4000 --events-per-message 5 \
    --seed 1102
nt_wait_counts "$NT_TMP/simA.json" "$NT_TMP/simB.json" -- 120
nt_check_no_duplicate_keys

# ---- 3. clients the broker refuses --------------------------------------------------------------
pub() { # pub CERT_BASE|none CA TOPIC FILE: one QoS 1 publish with mosquitto_pub (v5)
    local base=$1 ca=$2 topic=$3 file=$4 auth=()
    [[ $base == none ]] || auth=(--cert "$base.crt" --key "$base.key")
    timeout 20 mosquitto_pub -V mqttv5 -h localhost -p "$NT_BROKER_PORT" --cafile "$ca" \
        "${auth[@]}" -q 1 -i "nt-mtls-$RANDOM" -t "$topic" -f "$file" >>"$NT_TMP/pub.log" 2>&1
}
printf 'x' >"$NT_TMP/x.bin"
if pub none "$CERTS/ca.crt" clinics/CL-A/handpieces/HP-A1/telemetry "$NT_TMP/x.bin"; then
    nt_fail "a client without a certificate was let in"
fi
nt_log "a client without a certificate was refused: $(tail -n 1 "$NT_TMP/pub.log")"
bash "$ROOT/deploy/certs.sh" "$NT_TMP/rogue" --pen CL-A/HP-A1 2>>"$NT_TMP/certs.log"
if pub "$NT_TMP/rogue/pens/HP-A1" "$CERTS/ca.crt" clinics/CL-A/handpieces/HP-A1/telemetry \
    "$NT_TMP/x.bin"; then
    nt_fail "a client with a certificate of another CA was let in"
fi
nt_log "a certificate of another CA was refused: $(tail -n 1 "$NT_TMP/pub.log")"

# ---- 4. a pen publishes only as itself, into its own clinic -------------------------------------
nt_pub_setup
# msg SERIAL SEQ OUT: one device_status event of pen SERIAL (boot 77)
msg() {
    "$NT_PY" - "$NT_TMP/pb" "$1" "$2" "$3" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from needletrace.v1 import telemetry_pb2 as pb
t = pb.Telemetry(device_serial=sys.argv[2], device_model="NP-300", boot_id=77)
e = t.events.add(seq=int(sys.argv[3]), device_time_ms=1764000000000)
e.device_status.CopyFrom(pb.DeviceStatus(battery_pct=80))
open(sys.argv[4], "wb").write(t.SerializeToString())
PY
}
msg HP-A2 1 "$NT_TMP/as-a2.bin"
msg HP-A1 1 "$NT_TMP/a1.bin"
# As another pen of its clinic, and into another clinic under its own serial: the broker
# answers each with PUBACK reason 135 (not authorized), which mosquitto_pub reports.
for t in "clinics/CL-A/handpieces/HP-A2/telemetry $NT_TMP/as-a2.bin" \
    "clinics/CL-B/handpieces/HP-A1/telemetry $NT_TMP/a1.bin"; do
    : >"$NT_TMP/pub.log"
    pub "$CERTS/pens/HP-A1" "$CERTS/ca.crt" "${t% *}" "${t#* }" || true
    grep -q "Not authorized" "$NT_TMP/pub.log" ||
        nt_fail "the broker did not refuse pen HP-A1's publication to ${t% *}: $(cat "$NT_TMP/pub.log")"
    nt_log "pen HP-A1 -> ${t% *}: $(tr '\n' ' ' <"$NT_TMP/pub.log")"
done
pub "$CERTS/pens/HP-A1" "$CERTS/ca.crt" clinics/CL-A/handpieces/HP-A1/telemetry \
    "$NT_TMP/a1.bin" || nt_fail "pen HP-A1 could not publish to its own topic"
# Its own message arrives after the refused ones would have: none of them may be stored.
nt_wait_for "pen HP-A1's own message stored" 60 nt_sql_eq 1 \
    "SELECT count(*) FROM needletrace.events WHERE device_serial = 'HP-A1' AND boot_id = 77"
nt_expect_eq "rows of the message published as another pen" 0 "$(nt_sql \
    "SELECT count(*) FROM needletrace.events WHERE device_serial = 'HP-A2' AND boot_id = 77")"
nt_expect_eq "rows of the message published into another clinic" 0 "$(nt_sql \
    "SELECT count(*) FROM needletrace.events WHERE clinic_id = 'CL-B' AND boot_id = 77")"
nt_expect_eq "quarantined messages" 0 "$(nt_sql "SELECT count(*) FROM needletrace.quarantine")"
nt_finish
