# shellcheck shell=bash
# broker.sh -- mosquitto on a free loopback port (kept across restarts) with persistence in
# $NT_TMP/broker: started, stopped and restarted. With NT_BROKER_TLS_DIR (an OUTDIR of
# deploy/certs.sh), the listener is mTLS only, with that directory's ACL.
# Part of tests/integration/lib.sh.

NT_BROKER_PORT=${NT_BROKER_PORT:-}
NT_BROKER_PID=""

nt__broker_conf() {
    local dir=$1 port=$2 tls=${NT_BROKER_TLS_DIR:-}
    if [[ -n $tls ]]; then
        # mTLS as deploy/mosquitto/mosquitto.conf: certificates and ACL from deploy/certs.sh
        cat <<EOF
# needletrace test harness broker (mTLS, certificates and ACL from deploy/certs.sh)
listener $port 127.0.0.1
cafile $tls/ca.crt
certfile $tls/broker.crt
keyfile $tls/broker.key
tls_version tlsv1.2
require_certificate true
use_identity_as_username true
allow_anonymous false
acl_file $tls/acl
EOF
    else
        printf '# needletrace test harness broker\nlistener %s 127.0.0.1\nallow_anonymous true\n' \
            "$port"
    fi
    cat <<EOF
# Persistent sessions and their queued QoS 1 messages survive a restart: mosquitto saves
# its in-memory database on a clean shutdown (SIGTERM) and every autosave_interval seconds.
persistence true
persistence_location $dir/
persistence_file mosquitto.db
autosave_interval 30
# Never drop queued messages for an offline persistent session (the collector's).
max_queued_messages 0
max_queued_bytes 0
# The collector acknowledges a burst at a time, after one fdatasync: let enough be in flight.
max_inflight_messages 1000
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
log_type subscribe
log_type unsubscribe
connection_messages true
EOF
    if ((EUID == 0)); then
        if id mosquitto >/dev/null 2>&1; then
            printf 'user mosquitto\n'
        else
            printf 'user root\n'
        fi
    fi
}

nt__broker_ready() {
    if [[ -z ${NT_BROKER_TLS_DIR:-} ]] && command -v mosquitto_pub >/dev/null 2>&1; then
        timeout 5 mosquitto_pub -h 127.0.0.1 -p "$NT_BROKER_PORT" -q 1 \
            -t needletrace-harness/ping -m ping -i "nt-harness-ping-$$" >/dev/null 2>&1
    else
        (: <"/dev/tcp/127.0.0.1/$NT_BROKER_PORT") 2>/dev/null
    fi
}

# nt_start_broker: mosquitto on 127.0.0.1 (free port, kept across restarts) with persistence
# in $NT_TMP/broker; exports NT_BROKER_PORT and NEEDLETRACE_MQTT_URL.
nt_start_broker() {
    local dir="$NT_TMP/broker" attempt
    mkdir -p "$dir"
    for attempt in 1 2 3; do
        if [[ -z $NT_BROKER_PORT || ${NT_BROKER_FRESH_PORT:-0} == 1 ]]; then
            NT_BROKER_PORT=$(nt_free_port)
        fi
        nt__broker_conf "$dir" "$NT_BROKER_PORT" >"$dir/mosquitto.conf"
        if ((EUID == 0)) && id mosquitto >/dev/null 2>&1; then
            # mosquitto drops to user mosquitto: it must own its persistence directory
            chown mosquitto: "$dir"
            [[ ! -f $dir/mosquitto.db ]] || chown mosquitto: "$dir/mosquitto.db"
        fi
        mosquitto -c "$dir/mosquitto.conf" >>"$NT_TMP/broker.log" 2>&1 &
        NT_BROKER_PID=$!
        if nt__wait_quiet 30 nt__broker_ready; then
            break
        fi
        nt_log "mosquitto did not come up on port $NT_BROKER_PORT (attempt $attempt)"
        nt__stop_pid "$NT_BROKER_PID" 5
        NT_BROKER_PID=""
        NT_BROKER_FRESH_PORT=1
        ((attempt < 3)) || nt_fail "mosquitto did not start"
    done
    NT_BROKER_FRESH_PORT=0
    export NT_BROKER_PORT
    if [[ -n ${NT_BROKER_TLS_DIR:-} ]]; then
        export NEEDLETRACE_MQTT_URL="mqtts://localhost:$NT_BROKER_PORT"
    else
        export NEEDLETRACE_MQTT_URL="mqtt://127.0.0.1:$NT_BROKER_PORT"
    fi
    nt_log "mosquitto up on 127.0.0.1:$NT_BROKER_PORT (pid $NT_BROKER_PID)"
}

# nt_stop_broker: SIGTERM (mosquitto saves its database), wait for the exit, SIGKILL after 20 s.
nt_stop_broker() {
    [[ -n $NT_BROKER_PID ]] || return 0
    nt__stop_pid "$NT_BROKER_PID" 20
    NT_BROKER_PID=""
}

nt_restart_broker() {
    nt_stop_broker
    nt_start_broker
}
