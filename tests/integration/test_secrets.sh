#!/usr/bin/env bash
# test_secrets.sh -- where the collector takes its secrets from, and that it never shows them:
#   1. an encrypted TLS client key (openssl pkey -aes256) without mqtt.key_password_file fails at
#      once with a clear error and never asks on the terminal (run in a pseudo-terminal, where
#      OpenSSL's own prompt would wait for input); a wrong passphrase is a clear error too;
#   2. a database.url with a password is refused on the command line, and in a configuration
#      file that others may read (mode 0644), accepted from one of mode 0600;
#   3. database.password_file: the collector (both connections), migrate and alerts log in with
#      it to a role that needs a password (scram-sha-256); a wrong one is refused by the server
#      and the collector says so without quoting it;
#   4. the collector with the encrypted key and its passphrase file, and the database password
#      from its file, collects a fleet over mTLS exactly;
#   5. no log, output or configuration dump holds a secret.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"
command -v openssl >/dev/null || nt_fail "openssl is not installed (tests/run.sh installs it)"
command -v script >/dev/null || nt_fail "script (util-linux) is not installed"
ROOT=$(cd "$NT_LIB_DIR/../../.." && pwd)
CERTS=$NT_TMP/certs
SECRETS=$NT_TMP/secrets
KEY_PHRASE=K3y-phrase-9f2c
DB_PASSWORD=S3cret-db-pw-71ab
WRONG=Wr0ng-secret-55de

bash "$ROOT/deploy/certs.sh" "$CERTS" --gateway fleet-sim/+ 2>>"$NT_TMP/certs.log" ||
    nt_fail "deploy/certs.sh failed"
mkdir -m 700 "$SECRETS"
openssl pkey -in "$CERTS/collector.key" -aes256 -passout "pass:$KEY_PHRASE" \
    -out "$SECRETS/collector-enc.key" 2>>"$NT_TMP/certs.log" || nt_fail "openssl pkey failed"
grep -q 'ENCRYPTED PRIVATE KEY' "$SECRETS/collector-enc.key" || nt_fail "the key is not encrypted"
printf '%s\n' "$KEY_PHRASE" >"$SECRETS/key-phrase"
printf '%s\n' "$WRONG" >"$SECRETS/wrong"
printf '%s\n' "$DB_PASSWORD" >"$SECRETS/db-password"
chmod 600 "$SECRETS"/*
if ((EUID == 0)) && id mosquitto >/dev/null 2>&1; then
    chown -R mosquitto: "$CERTS" # the broker drops to user mosquitto before reading its key
fi

nt_start_pg
NT_BROKER_TLS_DIR=$CERTS nt_start_broker
nt_migrate
# A role that must give its password (the harness trusts every other one).
# nt_pw: the collector's (and staff's) login; nt_pw_admin: the owner's, for migrate.
nt_sql "CREATE ROLE nt_pw LOGIN PASSWORD '$DB_PASSWORD' IN ROLE needletrace_collector, needletrace_staff;
        CREATE ROLE nt_pw_admin LOGIN SUPERUSER PASSWORD '$DB_PASSWORD'"
nt__as_pg sed -i '1i host all nt_pw,nt_pw_admin 127.0.0.1/32 scram-sha-256' data/pg_hba.conf
nt_sql "SELECT pg_reload_conf()" >/dev/null
PW_URL="host=127.0.0.1 port=$NT_PG_PORT user=nt_pw dbname=needletrace"
nt_wait_for "nt_pw refused without its password" 10 bash -c \
    "! PGPASSWORD= psql -X -w -At -h 127.0.0.1 -p $NT_PG_PORT -U nt_pw -d needletrace -c 'SELECT 1'"
export NEEDLETRACE_MQTT_CA_FILE=$CERTS/ca.crt
export NEEDLETRACE_MQTT_CERT_FILE=$CERTS/collector.crt
export NEEDLETRACE_MQTT_KEY_FILE=$CERTS/collector.key

# run_pty NAME [VAR=VALUE...] -- ARGS...: `needletrace ARGS` in a pseudo-terminal (stdin a
# terminal too) with VAR=VALUE in its environment, 30 s at most; its output goes to
# $NT_TMP/pty-NAME.log. Sets PTY_RC.
run_pty() {
    local name=$1 cmd
    shift
    local envs=()
    while [[ $1 != -- ]]; do
        envs+=("$1")
        shift
    done
    shift
    mkdir -p "$NT_TMP/journal-$name"
    cmd=$(printf '%q ' env NEEDLETRACE_JOURNAL_DIR="$NT_TMP/journal-$name" \
        NEEDLETRACE_COLLECTOR_ID="it-$name" "${envs[@]}" "$NT_BIN" "$@")
    PTY_RC=0
    timeout 30 script -qefc "$cmd" /dev/null </dev/null >"$NT_TMP/pty-$name.log" 2>&1 || PTY_RC=$?
    nt_log "needletrace $1 ($name): exit $PTY_RC: $(tr -d '\r' <"$NT_TMP/pty-$name.log" |
        grep -v '^$' | tail -n 1 | cut -c1-300)"
}

# ---- 1. an encrypted client key --------------------------------------------------------------
run_pty key-none NEEDLETRACE_MQTT_KEY_FILE="$SECRETS/collector-enc.key" -- run
nt_expect_eq "encrypted key, no passphrase file: exit code" 1 "$PTY_RC"
nt_expect_true "... says the key is encrypted and names mqtt.key_password_file" grep -q \
    'could not load the TLS client key.*it is encrypted and mqtt.key_password_file is not set' \
    "$NT_TMP/pty-key-none.log"
nt_expect_eq "... no passphrase prompt" 0 "$(grep -ci 'pass phrase' "$NT_TMP/pty-key-none.log" || true)"

run_pty key-wrong NEEDLETRACE_MQTT_KEY_FILE="$SECRETS/collector-enc.key" \
    NEEDLETRACE_MQTT_KEY_PASSWORD_FILE="$SECRETS/wrong" -- run
nt_expect_eq "encrypted key, wrong passphrase: exit code" 1 "$PTY_RC"
nt_expect_true "... says the passphrase does not decrypt it" grep -q \
    'the passphrase in mqtt.key_password_file does not decrypt it' "$NT_TMP/pty-key-wrong.log"

# ---- 2. a password inside database.url -------------------------------------------------------
run_pty url-flag -- check-config --database-url "$PW_URL password=$DB_PASSWORD"
nt_expect_eq "--database-url with a password: exit code" 2 "$PTY_RC"
nt_expect_true "... says where to put it" grep -q \
    'not accepted on the command line.*NEEDLETRACE_DATABASE_URL.*database.password_file.*PGPASSFILE.*~/.pgpass' \
    "$NT_TMP/pty-url-flag.log"

printf '[database]\nurl = "%s password=%s"\n' "$PW_URL" "$DB_PASSWORD" >"$NT_TMP/pw.conf"
chmod 644 "$NT_TMP/pw.conf"
run_pty url-file-open -- check-config --config "$NT_TMP/pw.conf"
nt_expect_eq "a password in a configuration file of mode 0644: exit code" 2 "$PTY_RC"
nt_expect_true "... names the mode and chmod 600" grep -q 'this file has 0644): chmod 600' \
    "$NT_TMP/pty-url-file-open.log"
chmod 600 "$NT_TMP/pw.conf"
run_pty url-file-private -- check-config --config "$NT_TMP/pw.conf"
nt_expect_eq "... of mode 0600: exit code" 0 "$PTY_RC"

# ---- 3. database.password_file ---------------------------------------------------------------
run_pty migrate-pw NEEDLETRACE_DATABASE_ADMIN_URL="${PW_URL/user=nt_pw/user=nt_pw_admin}" \
    NEEDLETRACE_DATABASE_PASSWORD_FILE="$SECRETS/db-password" -- migrate
nt_expect_eq "migrate with database.password_file: exit code" 0 "$PTY_RC"
run_pty alerts-pw NEEDLETRACE_DATABASE_URL="$PW_URL" \
    NEEDLETRACE_DATABASE_PASSWORD_FILE="$SECRETS/db-password" -- alerts list
nt_expect_eq "alerts list with database.password_file: exit code" 0 "$PTY_RC"
run_pty alerts-nopw NEEDLETRACE_DATABASE_URL="$PW_URL" -- alerts list
nt_expect_eq "alerts list without it: exit code" 1 "$PTY_RC"

nt_start_collector wrong NEEDLETRACE_DATABASE_URL="$PW_URL" \
    NEEDLETRACE_DATABASE_PASSWORD_FILE="$SECRETS/wrong"
nt_wait_for "the collector refused by the database" 30 grep -q \
    'password authentication failed for user' "$NT_TMP/collector-wrong.log"
nt_stop_collector wrong
nt_expect_eq "collector with a wrong database password: exit code after SIGTERM" 0 "$NT_EXIT_CODE"

# ---- 4. everything from files: a fleet over mTLS ---------------------------------------------
NT_LOG_LEVEL=debug nt_start_collector c1 NEEDLETRACE_MQTT_KEY_FILE="$SECRETS/collector-enc.key" \
    NEEDLETRACE_MQTT_KEY_PASSWORD_FILE="$SECRETS/key-phrase" NEEDLETRACE_DATABASE_URL="$PW_URL" \
    NEEDLETRACE_DATABASE_PASSWORD_FILE="$SECRETS/db-password" NEEDLETRACE_DATABASE_CONNECTIONS=2
nt_wait_collector_ready c1
grep -q "TLS handshake with localhost:$NT_BROKER_PORT done" "$NT_TMP/collector-c1.log" ||
    nt_fail "the collector's log does not show a TLS handshake"
nt_expect_eq "database sessions of nt_pw (both connections)" 2 "$(nt_sql "SELECT count(*)
    FROM pg_stat_activity WHERE usename = 'nt_pw' AND application_name = 'needletrace-it-c1'")"
NEEDLETRACE_MQTT_CERT_FILE=$CERTS/gateways/fleet-sim.crt \
    NEEDLETRACE_MQTT_KEY_FILE=$CERTS/gateways/fleet-sim.key \
    nt_simulate "$NT_TMP/sim.json" --clinics 2 --devices 4 --events 4000 --events-per-message 4 \
    --seed 1201
nt_wait_counts "$NT_TMP/sim.json" -- 120
run_pty dump NEEDLETRACE_DATABASE_URL="$PW_URL" \
    NEEDLETRACE_DATABASE_PASSWORD_FILE="$SECRETS/db-password" \
    NEEDLETRACE_MQTT_KEY_FILE="$SECRETS/collector-enc.key" \
    NEEDLETRACE_MQTT_KEY_PASSWORD_FILE="$SECRETS/key-phrase" -- check-config
nt_expect_eq "check-config with every secret file: exit code" 0 "$PTY_RC"
nt_expect_true "... prints the database password file's path" grep -q \
    "password_file = $SECRETS/db-password" "$NT_TMP/pty-dump.log"
nt_expect_true "... prints the key passphrase file's path" grep -q \
    "key_password_file = $SECRETS/key-phrase" "$NT_TMP/pty-dump.log"

# ---- 5. no secret anywhere -------------------------------------------------------------------
for secret in "$KEY_PHRASE" "$DB_PASSWORD" "$WRONG"; do
    nt_expect_eq "files of the test run showing ${secret:0:4}… (logs, outputs, dumps)" "" \
        "$(grep -rlF -- "$secret" "$NT_TMP"/*.log 2>/dev/null | xargs -r -n1 basename | tr '\n' ' ')"
done
nt_finish
