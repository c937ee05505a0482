#!/usr/bin/env bash
# test_registry.sh -- pens bound to their clinic by the device registry (needletrace.devices):
#   1. unknown_devices = register (the default): a fleet's pens are registered on first sight;
#   2. a registered pen publishing on another clinic's topic -- in the middle of a simulated
#      fleet -- is quarantined (clinic_mismatch): no event, no alert, no rule state in that
#      clinic; everything else lands exactly; the same pen in its own clinic still raises its
#      alert;
#   3. `devices move` and `devices retire` apply to the next messages (device_retired), with no
#      message quarantined for a verdict the registry no longer gives;
#   4. unknown_devices = quarantine: an unregistered pen is quarantined (unknown_device) until
#      `devices add` registers it;
#   5. the CLI refuses bad input and roles without the right (the collector's, the auditor's).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=lib/pub.sh
source "$NT_LIB_DIR/pub.sh"
nt_setup "$@"

GTIN=09506000134352
nt_start_pg
nt_start_broker
nt_migrate
nt_pub_setup
nt_start_collector c1
nt_wait_collector_ready c1
REGISTRAR=$(nt_db_url nt_registrar)
devices() { # devices ARGS...: the CLI as the registrar
    NEEDLETRACE_DATABASE_URL=$REGISTRAR "$NT_BIN" devices "$@"
}
now_ms() {
    echo $(($(date +%s) * 1000))
}

# ---- 1. registered on first sight ---------------------------------------------------------------
nt_simulate "$NT_TMP/simA.json" --clinics 2 --devices 6 --events 3000 --events-per-message 3 \
    --seed 1201
nt_wait_counts "$NT_TMP/simA.json" -- 120
nt_expect_eq "pens registered = pens seen" \
    "$(nt_sql "SELECT count(DISTINCT device_serial) FROM needletrace.events")" \
    "$(nt_sql "SELECT count(*) FROM needletrace.devices")"
nt_expect_eq "pens registered to another clinic than the one they publish under" 0 "$(nt_sql \
    "SELECT count(*) FROM needletrace.events e JOIN needletrace.devices d USING (device_serial)
      WHERE d.clinic_id <> e.clinic_id")"
nt_expect_eq "registered by the collector on first sight" "first sight by it-c1" \
    "$(nt_sql "SELECT DISTINCT registered_by FROM needletrace.devices")"
IFS='|' read -r P A <<<"$(nt_sql "SELECT device_serial, clinic_id FROM needletrace.devices
                                   ORDER BY 1 LIMIT 1")"
B=$(nt_sql "SELECT min(clinic_id) FROM needletrace.devices WHERE clinic_id <> '$A'")
nt_log "pen $P belongs to clinic $A; clinic $B is another"
devices list | tee "$NT_TMP/list.txt" >/dev/null
grep -Eq "^$P +$A " "$NT_TMP/list.txt" || nt_fail "devices list does not show $P in $A"

# ---- 2. a pen on another clinic's topic, amid a fleet -------------------------------------------
nt_simulate_bg "$NT_TMP/simB.json" --clinics 2 --devices 6 --events 3000 \
    --events-per-message 3 --seed 1202 --rate 2000
# A broken sterile barrier would raise a critical alert in B, and claim cartridge CART-X there.
nt_pub mount "$B" "$P" 7001 1 S-X "$GTIN" CART-X "$(now_ms)" --broken
nt_wait_simulate "$NT_TMP/simB.json"
nt_wait_for "the message under clinic $B quarantined as clinic_mismatch" 60 nt_sql_eq 1 \
    "SELECT count(*) FROM needletrace.quarantine WHERE reason = 'clinic_mismatch'
        AND clinic_id = '$B' AND device_serial = '$P'"
nt_wait_totals "$(nt_json_sum .expected.events "$NT_TMP/simA.json" "$NT_TMP/simB.json")" \
    "$(nt_json_sum .expected.raw_messages "$NT_TMP/simA.json" "$NT_TMP/simB.json")" 1 120
nt_expect_eq "events of $P under clinic $B" 0 \
    "$(nt_sql "SELECT count(*) FROM needletrace.events WHERE clinic_id = '$B' AND device_serial = '$P'")"
nt_expect_eq "alerts of $P" 0 \
    "$(nt_sql "SELECT count(*) FROM needletrace.alerts WHERE device_serial = '$P'")"
nt_expect_eq "cartridge CART-X claimed" 0 \
    "$(nt_sql "SELECT count(*) FROM needletrace.cartridge_first_use WHERE cartridge_serial = 'CART-X'")"
nt_log "quarantine detail: $(nt_sql "SELECT detail FROM needletrace.quarantine
                                     WHERE reason = 'clinic_mismatch'")"
# The same pen in its own clinic: stored, and its alert raised.
nt_pub mount "$A" "$P" 7001 1 S-X "$GTIN" CART-X "$(now_ms)" --broken
nt_wait_for "pen $P's mount in clinic $A stored" 60 nt_sql_eq 1 \
    "SELECT count(*) FROM needletrace.events WHERE clinic_id = '$A' AND device_serial = '$P'
        AND boot_id = 7001"
nt_wait_for "its STERILE_BARRIER_BROKEN alert in clinic $A" 60 nt_sql_eq 1 \
    "SELECT count(*) FROM needletrace.alerts WHERE clinic_id = '$A' AND device_serial = '$P'
        AND rule = 'STERILE_BARRIER_BROKEN'"
nt_check_no_duplicate_keys

# ---- 3. move and retire -------------------------------------------------------------------------
devices move "$P" --clinic "$B" | tee -a "$NT_TMP/cli.txt"
# Right after the move, under B: stored at once (the verdict the collector remembers for $P no
# longer holds: its batch is refused with NT003 and built again).
nt_pub mount "$B" "$P" 7002 1 S-Y "$GTIN" CART-Y "$(now_ms)"
nt_wait_for "pen $P's message under clinic $B stored after the move" 60 nt_sql_eq 1 \
    "SELECT count(*) FROM needletrace.events WHERE clinic_id = '$B' AND device_serial = '$P'"
nt_pub mount "$A" "$P" 7002 2 S-Y "$GTIN" CART-Z "$(now_ms)"
nt_wait_for "pen $P under its old clinic $A quarantined" 60 nt_sql_eq 1 \
    "SELECT count(*) FROM needletrace.quarantine WHERE reason = 'clinic_mismatch'
        AND clinic_id = '$A' AND device_serial = '$P'"
devices retire "$P" | tee -a "$NT_TMP/cli.txt"
nt_pub mount "$B" "$P" 7003 1 S-Z "$GTIN" CART-W "$(now_ms)"
nt_wait_for "the retired pen's message quarantined" 60 nt_sql_eq 1 "$(printf '%s' \
    "SELECT count(*) FROM needletrace.quarantine WHERE reason = 'device_retired'")"
devices activate "$P" | tee -a "$NT_TMP/cli.txt"
nt_pub mount "$B" "$P" 7004 1 S-W "$GTIN" CART-V "$(now_ms)"
nt_wait_for "the pen back in service: stored" 60 nt_sql_eq 1 \
    "SELECT count(*) FROM needletrace.events WHERE device_serial = '$P' AND boot_id = 7004"
nt_expect_eq "registry history of $P (registered, moved, retired, activated)" \
    "-:$A:active|$A:$B:active|$B:$B:retired|$B:$B:active" "$(nt_sql "SELECT string_agg(
        coalesce(old_clinic_id, '-') || ':' || clinic_id || ':' || status, '|' ORDER BY change_id)
       FROM needletrace.device_changes WHERE device_serial = '$P'")"
nt_expect_eq "changes stamped with the registrar's role" "nt_registrar" "$(nt_sql \
    "SELECT string_agg(DISTINCT changed_by, ',') FROM needletrace.device_changes
      WHERE device_serial = '$P' AND change_id > (SELECT min(change_id)
        FROM needletrace.device_changes WHERE device_serial = '$P')")"

# ---- 4. strict: unknown pens quarantined until registered ---------------------------------------
nt_sql "UPDATE needletrace.settings SET value = 'quarantine' WHERE key = 'unknown_devices'"
nt_pub mount "$A" NEW-PEN-1 1 1 S-N "$GTIN" CART-N1 "$(now_ms)"
nt_wait_for "the unknown pen's message quarantined" 60 nt_sql_eq 1 \
    "SELECT count(*) FROM needletrace.quarantine WHERE reason = 'unknown_device'
        AND device_serial = 'NEW-PEN-1'"
nt_expect_eq "unknown pen registered" 0 \
    "$(nt_sql "SELECT count(*) FROM needletrace.devices WHERE device_serial = 'NEW-PEN-1'")"
devices add NEW-PEN-1 --clinic "$A" --model NP-300 | tee -a "$NT_TMP/cli.txt"
nt_pub mount "$A" NEW-PEN-1 1 2 S-N "$GTIN" CART-N2 "$(now_ms)"
nt_wait_for "the registered pen's message stored" 60 nt_sql_eq 1 \
    "SELECT count(*) FROM needletrace.events WHERE device_serial = 'NEW-PEN-1'"
nt_expect_eq "quarantine by reason" "clinic_mismatch=2 device_retired=1 unknown_device=1" \
    "$(nt_sql "SELECT string_agg(reason || '=' || n, ' ' ORDER BY reason)
                 FROM (SELECT reason, count(*) n FROM needletrace.quarantine GROUP BY 1) q")"
nt_expect_eq "raw messages of quarantined messages" 0 "$(nt_sql "SELECT count(*)
    FROM needletrace.raw_messages r JOIN needletrace.quarantine q USING (payload_sha256)")"

# ---- 5. the CLI's refusals ----------------------------------------------------------------------
expect_refused() { # expect_refused CODE WHAT ARGS...: devices exits with CODE, saying why
    local code=$1 what=$2 rc=0
    shift 2
    "$@" >"$NT_TMP/out.txt" 2>&1 || rc=$?
    nt_expect_eq "$what: exit code" "$code" "$rc"
    nt_log "$what: $(head -n 2 "$NT_TMP/out.txt" | tr '\n' ' ')"
}
expect_refused 1 "add a pen registered elsewhere" devices add "$P" --clinic "$A"
expect_refused 1 "move an unregistered pen" devices move NO-SUCH-PEN --clinic "$A"
expect_refused 2 "a serial with a space" devices add 'HP 1' --clinic "$A"
expect_refused 2 "add without a clinic" devices add HP-9
expect_refused 1 "the collector's login moving a pen" \
    env NEEDLETRACE_DATABASE_URL="$(nt_db_url nt_collector)" "$NT_BIN" devices move "$P" \
    --clinic "$A"
expect_refused 1 "the auditor's login adding a pen" \
    env NEEDLETRACE_DATABASE_URL="$(nt_db_url nt_auditor)" "$NT_BIN" devices add HP-9 \
    --clinic "$A"
grep -q "needletrace_registrar" "$NT_TMP/out.txt" ||
    nt_fail "the refusal does not say which role may change the registry"
nt_finish
