#!/usr/bin/env bash
# test_mqtt_max_packet.sh -- the collector tells the broker the largest packet it takes (MQTT v5
# maximum packet size in CONNECT: the 256 KiB payload bound, the longest topic and headroom).
# A broker without a max_packet_size of its own takes a 1 MiB message on the telemetry topic;
# mosquitto then drops it rather than send it to the collector, which neither dies nor reads
# it, and the messages after it arrive -- also when the 1 MiB message was queued while the
# collector was away. A message just over 256 KiB still fits the packet and is quarantined as
# payload_too_large, as before.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

command -v mosquitto_pub >/dev/null 2>&1 || nt_fail "mosquitto_pub is not installed"
nt_start_pg
nt_start_broker
nt_migrate
nt_start_collector c1
nt_wait_collector_ready c1

TOPIC=clinics/clinic-big/handpieces/pen-big/telemetry
head -c 1048576 /dev/urandom >"$NT_TMP/1mib.bin"
head -c $((256 * 1024 + 100)) /dev/urandom >"$NT_TMP/over.bin"

# pub FILE: one QoS 1 message with FILE as its payload on $TOPIC.
pub() {
    mosquitto_pub -h 127.0.0.1 -p "$NT_BROKER_PORT" -q 1 -i "nt-big-$$" -t "$TOPIC" -f "$1" ||
        nt_fail "mosquitto_pub of $1 failed"
}

# shellcheck disable=SC2317 # invoked through nt_wait_for
# dropped N: the broker has logged N drops of a too large PUBLISH for the collector.
dropped() {
    local n
    n=$(grep -c "Dropping too large outgoing PUBLISH for $(nt_client_id c1) " "$NT_TMP/broker.log" ||
        true)
    echo "$n drops logged"
    ((n >= $1))
}

# ---- while connected -------------------------------------------------------------------------
pub "$NT_TMP/1mib.bin"
nt_wait_for "the broker dropping the 1 MiB message for the collector" 30 dropped 1
nt_log "broker: $(grep 'Dropping too large' "$NT_TMP/broker.log" | tail -n 1)"
pub "$NT_TMP/over.bin"
nt_simulate "$NT_TMP/sim1.json" --clinics 1 --devices 2 --events 200 --events-per-message 5 \
    --seed 1101
nt_wait_totals "$(nt_json "$NT_TMP/sim1.json" .expected.events)" \
    "$(nt_json "$NT_TMP/sim1.json" .expected.raw_messages)" 1 120
nt_expect_eq "the message just over 256 KiB: quarantined as" payload_too_large \
    "$(nt_sql "SELECT string_agg(reason || ' ' || octet_length(payload), ',')
               FROM needletrace.quarantine WHERE topic = '$TOPIC'" | cut -d' ' -f1)"
nt_expect_eq "bytes kept of it (256 KiB + 1)" $((256 * 1024 + 1)) \
    "$(nt_sql "SELECT octet_length(payload) FROM needletrace.quarantine WHERE topic = '$TOPIC'")"
received=$(nt_metric mqtt_messages_received_total)
bytes=$(nt_metric mqtt_bytes_received_total)
nt_expect_eq "messages the collector received (simulated + the one over 256 KiB)" \
    $(($(nt_json "$NT_TMP/sim1.json" .messages_published) + 1)) "$received"
nt_expect_true "payload bytes received ($bytes) stay below the 1 MiB message" \
    test "$bytes" -lt 1048576

# ---- queued while the collector is away ------------------------------------------------------
nt_stop_collector c1
nt_expect_eq "collector exit code" 0 "$NT_EXIT_CODE"
pub "$NT_TMP/1mib.bin"
nt_start_collector c1
nt_wait_collector_ready c1
nt_wait_for "the broker dropping the queued 1 MiB message" 30 dropped 2
nt_simulate "$NT_TMP/sim2.json" --clinics 1 --devices 2 --events 200 --events-per-message 5 \
    --seed 1102 --clinic-prefix second
nt_wait_totals "$(nt_json_sum .expected.events "$NT_TMP"/sim[12].json)" \
    "$(nt_json_sum .expected.raw_messages "$NT_TMP"/sim[12].json)" 1 120
nt_expect_eq "messages received since the restart" \
    "$(nt_json "$NT_TMP/sim2.json" .messages_published)" "$(nt_metric mqtt_messages_received_total)"
nt_expect_true "the collector is still running" nt_pid_alive "$(nt_collector_pid c1)"
nt_finish
