#!/usr/bin/env bash
# test_encoding.sh -- issue 7, item 7: `migrate` refuses a database whose encoding is not UTF8,
# with a message that says so (and changes nothing there); a UTF8 database migrates, and the
# collector's connections use client_encoding UTF8 whatever PGCLIENTENCODING says.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

nt_start_pg
nt_psql postgres "CREATE DATABASE nt_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'
                  TEMPLATE template0" >/dev/null
latin1_url="host=127.0.0.1 port=$NT_PG_PORT user=postgres dbname=nt_latin1"

rc=0
"$NT_BIN" migrate --database-admin-url "$latin1_url" >"$NT_TMP/migrate-latin1.out" 2>&1 || rc=$?
nt_expect_eq "migrate into a LATIN1 database: exit status" 1 "$rc"
nt_expect_true "the message names the database, its encoding and UTF8" \
    grep -q 'cannot use database \\"nt_latin1\\": its encoding is LATIN1, and needletrace needs UTF8' \
    "$NT_TMP/migrate-latin1.out"
nt_expect_eq "nothing created in the LATIN1 database" 0 \
    "$(nt_psql nt_latin1 "SELECT count(*) FROM pg_namespace WHERE nspname = 'needletrace'")"

# The UTF8 database migrates even with a client encoding of LATIN1 in the environment.
PGCLIENTENCODING=LATIN1 nt_migrate
nt_expect_true "migrate into the UTF8 database with PGCLIENTENCODING=LATIN1" \
    test "$(nt_sql "SELECT count(*) FROM needletrace.schema_migrations")" -gt 0
nt_start_broker
PGCLIENTENCODING=LATIN1 nt_start_collector c1
nt_wait_collector_ready c1

# One session_started whose operator id is not ASCII: stored as the same UTF-8 bytes only if the
# collector's connection uses client_encoding UTF8 (with LATIN1, binary COPY would convert them).
# shellcheck source=lib/pub.sh
source "$NT_LIB_DIR/pub.sh"
nt_pub_setup
"$NT_PY" - "$NT_TMP/pb" "$NT_BROKER_PORT" <<'PY' || nt_fail "could not publish the UTF-8 message"
import sys, time
sys.path.insert(0, sys.argv[1])
from needletrace.v1 import telemetry_pb2 as pb
import paho.mqtt.client as mqtt
t = pb.Telemetry(device_serial="ENC-1", device_model="NP-300", firmware_version="1", boot_id=1)
e = t.events.add()
e.seq = 1
e.device_time_ms = int(time.time() * 1000)
e.session_started.session_id = "ENC-1-s1"
e.session_started.operator_id = "op-\u00e9-\u00fc"
e.session_started.patient_ref = "p1"
c = mqtt.Client(client_id="nt-encoding-test", protocol=mqtt.MQTTv311)
c.connect("127.0.0.1", int(sys.argv[2]), 30)
c.loop_start()
c.publish("clinics/enc-clinic/handpieces/ENC-1/telemetry", t.SerializeToString(), qos=1).wait_for_publish()
c.loop_stop()
c.disconnect()
PY
enc_stored() {
    test "$(nt_sql "SELECT count(*) FROM needletrace.events WHERE device_serial = 'ENC-1'")" -eq 1
}
nt_wait_for "the UTF-8 message stored" 60 enc_stored
nt_expect_eq "operator id bytes as sent (UTF-8 of op-é-ü)" 6f702dc3a92dc3bc \
    "$(nt_sql "SELECT encode(convert_to(operator_id, 'UTF8'), 'hex') FROM needletrace.events
               WHERE device_serial = 'ENC-1'")"
nt_finish
