#!/usr/bin/env bash
# test_roles.sh -- least privilege in PostgreSQL (README, Security model):
#   1. the collector runs as a login of needletrace_collector (as in every test: lib/db.sh),
#      and that role cannot UPDATE, DELETE, TRUNCATE, disable triggers, alter or drop the
#      evidence, acknowledge alerts or change the device registry;
#   2. the auditor only reads; staff acknowledge as themselves (acked_role, whatever --by says);
#   3. `needletrace run` as a superuser, as the evidence tables' owner, or as a member of the
#      owner's role refuses to start (exit 2, naming database.allow_privileged), and starts
#      with database.allow_privileged = 1, saying so.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

nt_start_pg
nt_start_broker
nt_migrate

# ---- 1. the collector's role --------------------------------------------------------------------
nt_start_collector c1
nt_wait_collector_ready c1
nt_simulate "$NT_TMP/sim.json" --clinics 2 --devices 4 --events 2000 --seed 1301 \
    --unsealed-rate 0.2
nt_wait_counts "$NT_TMP/sim.json" -- 120
nt_expect_eq "database roles of the collector's sessions" "nt_collector" "$(nt_sql \
    "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity
      WHERE backend_type = 'client backend' AND application_name LIKE '%it-c1%'")"

# as ROLE SQL: runs SQL as the login ROLE; prints the SQLSTATE-bearing error, if any.
as() {
    psql -X -q -At -v ON_ERROR_STOP=1 -v VERBOSITY=verbose -h 127.0.0.1 -p "$NT_PG_PORT" \
        -U "$1" -d needletrace -c "$2" 2>&1
}
# refused ROLE WHAT SQL: SQL as ROLE must fail for lack of privilege (42501).
refused() {
    local out
    if out=$(as "$1" "$3"); then
        nt_fail "$1 could $2: $out"
    fi
    if [[ $out != *42501* ]]; then
        nt_fail "$1: $2 failed, but not for lack of privilege: $out"
    fi
    nt_expect_true "$1 cannot $2 ($(grep -o 'ERROR: *42501: [^.]*' <<<"$out" | head -n 1))" true
}
ev="needletrace.events"
refused nt_collector "UPDATE events" "UPDATE $ev SET device_time = now()"
refused nt_collector "DELETE events" "DELETE FROM $ev"
refused nt_collector "TRUNCATE events" "TRUNCATE $ev"
refused nt_collector "disable the append-only trigger" "ALTER TABLE $ev DISABLE TRIGGER append_only"
refused nt_collector "disable all triggers of raw_messages" \
    "ALTER TABLE needletrace.raw_messages DISABLE TRIGGER ALL"
refused nt_collector "DROP quarantine" "DROP TABLE needletrace.quarantine"
refused nt_collector "UPDATE alerts" "UPDATE needletrace.alerts SET severity = 'info'"
refused nt_collector "DELETE raw_messages" "DELETE FROM needletrace.raw_messages"
refused nt_collector "acknowledge an alert" "INSERT INTO needletrace.alert_acks
    (clinic_id, alert_id, acked_by) SELECT clinic_id, alert_id, 'x' FROM needletrace.alerts LIMIT 1"
refused nt_collector "move a pen" "UPDATE needletrace.devices SET clinic_id = 'elsewhere'"
refused nt_collector "register a pen by hand" "INSERT INTO needletrace.devices
    (device_serial, clinic_id, registered_by) VALUES ('HP-FORGED', 'CL-X', 'nt_registrar')"
refused nt_collector "write the registry's history" "INSERT INTO needletrace.device_changes
    (device_serial, clinic_id, status, changed_by) VALUES ('HP-F', 'CL-X', 'active', 'x')"
refused nt_collector "create a table in the schema" "CREATE TABLE needletrace.x (i int)"
refused nt_collector "choose a row's ledger transaction" "INSERT INTO needletrace.quarantine
    (clinic_id, message_key, received_at, topic, payload, payload_sha256, reason, collector_id,
     journal_pos, tx) VALUES ('c', sha256('x'), now(), 't', 'p', sha256('p'), 'r', 'c', 1, 1)"
refused nt_collector "write the ledger" "INSERT INTO needletrace.ledger SELECT * FROM
    needletrace.ledger LIMIT 1"
refused nt_collector "change a rule setting" \
    "UPDATE needletrace.settings SET value = 'register' WHERE key = 'unknown_devices'"

# ---- 2. auditor and staff -----------------------------------------------------------------------
nt_expect_eq "the auditor reads the events" "$(nt_count events)" "$(as nt_auditor \
    "SELECT count(*) FROM $ev")"
refused nt_auditor "INSERT events" "INSERT INTO $ev SELECT * FROM $ev LIMIT 1"
refused nt_auditor "UPDATE devices" "UPDATE needletrace.devices SET status = 'retired'"
refused nt_staff "UPDATE alerts" "UPDATE needletrace.alerts SET severity = 'info'"
refused nt_staff "DELETE events" "DELETE FROM $ev"
alert=$(nt_sql "SELECT min(alert_id) FROM needletrace.alerts")
[[ -n $alert ]] || nt_fail "the simulated fleet raised no alert to acknowledge"
NEEDLETRACE_DATABASE_URL=$(nt_db_url nt_staff) "$NT_BIN" alerts ack "$alert" --by "Dr. Someone" \
    --note "seen" | tee "$NT_TMP/ack.txt"
grep -q "database role nt_staff" "$NT_TMP/ack.txt" || nt_fail "ack did not print the role"
nt_expect_eq "acknowledgement: name given, role recorded by the database" \
    "Dr. Someone|nt_staff" "$(nt_sql "SELECT acked_by || '|' || acked_role
                                       FROM needletrace.alert_acks WHERE alert_id = $alert")"
# Staff cannot name another role, nor backdate an acknowledgement.
refused nt_staff "forge acked_role" "INSERT INTO needletrace.alert_acks
    (clinic_id, alert_id, acked_by, acked_role) SELECT clinic_id, alert_id, 'x', 'postgres'
      FROM needletrace.alerts WHERE alert_id = $alert"
refused nt_staff "backdate an acknowledgement" "INSERT INTO needletrace.alert_acks
    (clinic_id, alert_id, acked_by, acked_at) SELECT clinic_id, alert_id, 'x', '2020-01-01'
      FROM needletrace.alerts WHERE alert_id = $alert"
# After SET ROLE, the login is still what is recorded.
as nt_staff "SET ROLE needletrace_staff; INSERT INTO needletrace.alert_acks
    (clinic_id, alert_id, acked_by) SELECT clinic_id, alert_id, 'as group'
      FROM needletrace.alerts WHERE alert_id = $alert" >/dev/null
nt_expect_eq "acked_role is the login" "nt_staff,nt_staff" "$(nt_sql \
    "SELECT string_agg(acked_role, ',') FROM needletrace.alert_acks WHERE alert_id = $alert")"
rc=0
NEEDLETRACE_DATABASE_URL=$(nt_db_url nt_collector) "$NT_BIN" alerts ack "$alert" --by x \
    --note y >"$NT_TMP/ack2.txt" 2>&1 || rc=$?
nt_expect_eq "the collector's login acknowledging: exit code" 1 "$rc"
nt_stop_collector c1 TERM

# ---- 3. run refuses privileged roles ------------------------------------------------------------
# run_as NAME URL [VAR=VALUE...]: starts `needletrace run` as collector NAME with database.url URL
# and waits for it to exit (within 60 s); sets RC.
run_as() {
    local name=$1 url=$2
    shift 2
    nt_start_collector "$name" NEEDLETRACE_DATABASE_URL="$url" "$@"
    nt_wait_collector_exit "$name" 60
    RC=$NT_EXIT_CODE
}
# nt_sneaky is no superuser itself, but may SET ROLE postgres.
nt_sql "CREATE ROLE nt_owner LOGIN; CREATE ROLE nt_owner_friend LOGIN IN ROLE nt_owner;
        CREATE ROLE nt_sneaky LOGIN IN ROLE postgres; GRANT needletrace_collector TO nt_sneaky" \
    >/dev/null
nt_psql postgres "CREATE DATABASE owned OWNER nt_owner" >/dev/null
NEEDLETRACE_DATABASE_ADMIN_URL=$(nt_db_url nt_owner owned) "$NT_BIN" migrate \
    >>"$NT_TMP/migrate.log" 2>&1 || nt_fail "migrate as nt_owner failed"
for who in "postgres needletrace superuser" "nt_sneaky needletrace superuser" \
    "nt_owner owned owner" "nt_owner_friend owned owner"; do
    read -r role db what <<<"$who"
    run_as "p-$role" "$(nt_db_url "$role" "$db")"
    nt_expect_eq "run as $role ($what): exit code" 2 "$RC"
    line=$(grep "refusing to write as database role" "$NT_TMP/collector-p-$role.log" | tail -n 1)
    [[ $line == *"role \\\"$role\\\""* && $line == *database.allow_privileged* ]] ||
        nt_fail "run as $role did not say why it refused: $line"
    nt_log "run as $role: $(sed -n 's/.*msg="\(.*\)"$/\1/p' <<<"$line" | cut -c1-200)"
done
nt_expect_eq "events written by the refused runs" "$(nt_count events)" \
    "$(nt_json_sum .expected.events "$NT_TMP/sim.json")"
nt_start_collector allowed NEEDLETRACE_DATABASE_URL="$(nt_db_url postgres)" \
    NEEDLETRACE_DATABASE_ALLOW_PRIVILEGED=1
nt_wait_collector_ready allowed
grep -q "allowed by database.allow_privileged" "$NT_TMP/collector-allowed.log" ||
    nt_fail "the allowed privileged run did not warn"
nt_finish
