#!/usr/bin/env bash
# test_audit_verify.sh -- the tamper-evident ledger (011_ledger.sql) and `needletrace audit`:
#   1. every batch the collector commits is sealed; `audit verify`, run as an auditor's login,
#      finds an untouched database complete (exit 0);
#   2. a superuser who disables the append-only triggers and UPDATEs, DELETEs or INSERTs a row is
#      found, and the finding names the table and the row (each change undone before the next);
#   3. a superuser who rewrites a row and then the whole chain after it, consistently, passes the
#      database's own checks but not a signed digest exported before (audit keygen/digest).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nt_setup "$@"

nt_start_pg
nt_start_broker
nt_migrate
nt_start_collector c1
nt_wait_collector_ready c1
nt_simulate "$NT_TMP/sim.json" --clinics 2 --devices 5 --events 6000 --events-per-message 4 \
    --malformed-rate 0.02 --too-deep-rate 0.01 --seed 1401
nt_wait_counts "$NT_TMP/sim.json" -- 120
nt_stop_collector c1 TERM

AUDITOR=$(nt_db_url nt_auditor)
audit() { # audit ARGS...: `needletrace audit ARGS` as the auditor; output in OUT, code in RC
    RC=0
    NEEDLETRACE_DATABASE_URL=$AUDITOR "$NT_BIN" audit "$@" >"$NT_TMP/audit.out" 2>&1 || RC=$?
    OUT=$(cat "$NT_TMP/audit.out")
    cat "$NT_TMP/audit.out" >>"$NT_TMP/audit.log"
}
entries=$(nt_sql "SELECT count(*) FROM needletrace.ledger")
nt_expect_eq "rows sealed = rows stored" \
    "$(nt_sql "SELECT (SELECT count(*) FROM needletrace.raw_messages) + (SELECT count(*) FROM
        needletrace.events) + (SELECT count(*) FROM needletrace.quarantine)")" \
    "$(nt_sql "SELECT sum(n_raw + n_events + n_quarantine) FROM needletrace.ledger")"
nt_log "ledger: $entries entries"
# Completeness: what the collector's batches received, where each message went.
nt_expect_eq "completeness: received = stored + quarantined (+ redeliveries), as the fleet sent" \
    "it-c1 $(nt_json_sum .expected.raw_messages "$NT_TMP/sim.json") $(nt_json_sum \
        .expected.quarantine "$NT_TMP/sim.json") 0 true" \
    "$(nt_sql "SELECT collector_id, messages_stored, messages_quarantined, redeliveries_skipped,
                      messages_received = messages_stored + messages_quarantined
                                          + redeliveries_skipped AND raw_rows_now = messages_stored
                 FROM needletrace.completeness" | tr '|' ' ' | sed 's/ t$/ true/')"
nt_log "pens: $(nt_sql "SELECT count(*) || ' pens, ' || sum(events) || ' events, ' ||
                               sum(missing_seqs) || ' seqs missing' FROM needletrace.pen_completeness")"

# ---- 1. untouched; digests from the collector and on demand ----------------------------------------
mkdir -m 0700 "$NT_TMP/keys" "$NT_TMP/digests"
"$NT_BIN" audit keygen --out "$NT_TMP/keys" >/dev/null || nt_fail "audit keygen failed"
# The collector signs a digest 5 s after its start (then every interval, when a chain moved),
# into the directory and retained on the broker.
timeout 60 mosquitto_sub -h 127.0.0.1 -p "$NT_BROKER_PORT" -q 1 -C 1 -N -t 'needletrace/digests/#' \
    >"$NT_TMP/retained.json" 2>"$NT_TMP/retained.err" &
sub_pid=$!
nt_start_collector c1 NEEDLETRACE_AUDIT_SIGNING_KEY_FILE="$NT_TMP/keys/digest-signing.key" \
    NEEDLETRACE_AUDIT_DIGEST_DIR="$NT_TMP/digests" NEEDLETRACE_AUDIT_DIGEST_TOPIC=needletrace/digests \
    NEEDLETRACE_AUDIT_DIGEST_INTERVAL_S=10
nt_wait_for "a digest file from the collector" 60 bash -c "ls '$NT_TMP/digests' | grep -q '^digest-.*json$'"
wait "$sub_pid" || nt_fail "no retained digest on needletrace/digests/#: $(cat "$NT_TMP/retained.err")"
nt_expect_true "the retained digest is the file's document" \
    cmp -s "$NT_TMP/retained.json" "$(find "$NT_TMP/digests" -name "digest-*.json" | head -n 1)"
nt_stop_collector c1 TERM
audit digest --key "$NT_TMP/keys/digest-signing.key" --out "$NT_TMP/digests"
nt_expect_eq "audit digest: exit code" 0 "$RC"
nt_log "$OUT"
audit verify --digests "$NT_TMP/digests" --pubkey "$NT_TMP/keys/digest-signing.pub"
nt_expect_eq "verify an untouched database: exit code" 0 "$RC"
nt_expect_true "verify says OK" grep -q '^OK: ' <<<"$OUT"
nt_log "$(tr '\n' ' ' <<<"$OUT")"

# A session's proof, checked by a short independent program and openssl.
session=$(nt_sql "SELECT session_id FROM needletrace.events WHERE kind = 'session_started'
                   ORDER BY tx, seq LIMIT 1")
audit digest --key "$NT_TMP/keys/digest-signing.key" --out "$NT_TMP/digests"
audit prove --session "$session" --digests "$NT_TMP/digests" \
    --pubkey "$NT_TMP/keys/digest-signing.pub" --out "$NT_TMP/proof.json"
nt_expect_eq "audit prove: exit code" 0 "$RC"
py_out=$(/usr/bin/python3 "$NT_LIB_DIR/check_proof.py" "$NT_TMP/proof.json" "$NT_TMP/signed.txt") ||
    nt_fail "the proof does not check: $py_out"
nt_log "$py_out"
nt_expect_true "the digest's signature, checked by openssl" openssl pkeyutl -verify -pubin \
    -inkey "$NT_TMP/keys/digest-signing.pub" -rawin -in "$NT_TMP/signed.txt" \
    -sigfile "$NT_TMP/signed.txt.sig"
# Tampered copies of the proof do not check: a changed row; a made-up batch (its own root and
# entry) riding on the real digest; a chain cut short.
sed 's/"record": "0000/"record": "0001/' "$NT_TMP/proof.json" >"$NT_TMP/bad.json"
if /usr/bin/python3 "$NT_LIB_DIR/check_proof.py" "$NT_TMP/bad.json" >/dev/null; then
    nt_fail "a proof with a changed row still checks"
fi
/usr/bin/python3 - "$NT_TMP/proof.json" "$NT_TMP/forged.json" <<'PY'
import hashlib, json, sys
h = lambda b: hashlib.sha256(b).digest()
doc = json.load(open(sys.argv[1]))
b = doc["batches"][0]
rec = b"\x00\x00\x00\x01forged"
leaf = h(b"\x00e" + rec)
chunk = h(b"\x01" + leaf)
f = b["entry_text"].split("|")
f[2], f[10] = "1", h(b"\x02" + chunk).hex()
text = "|".join(f)
doc["batches"] = [{"entry_text": text, "entry_hash": h(text.encode()).hex(),
                   "chunk_hashes": [chunk.hex()], "chain_after": [],
                   "rows": [{"ident": "x", "row": {}, "record": rec.hex(), "leaf": leaf.hex(),
                             "chunk": 0, "chunk_leaves": [leaf.hex()]}]}]
json.dump(doc, open(sys.argv[2], "w"))
PY
if /usr/bin/python3 "$NT_LIB_DIR/check_proof.py" "$NT_TMP/forged.json" >/dev/null; then
    nt_fail "a made-up batch riding on a real digest still checks"
fi
/usr/bin/python3 -c "import json,sys; d=json.load(open(sys.argv[1]))
for b in d['batches']: b['chain_after'] = b['chain_after'][:-1]
json.dump(d, open(sys.argv[2], 'w'))" "$NT_TMP/proof.json" "$NT_TMP/cut.json"
if [[ $(/usr/bin/python3 -c "import json,sys; print(sum(len(b['chain_after']) for b in json.load(open(sys.argv[1]))['batches']))" "$NT_TMP/proof.json") -gt 0 ]] &&
    /usr/bin/python3 "$NT_LIB_DIR/check_proof.py" "$NT_TMP/cut.json" >/dev/null; then
    nt_fail "a proof with its chain cut short still checks"
fi

# ---- 2. a superuser's changes, each found and named -----------------------------------------------
untrigger() { # the superuser's first step (on events also the identity's: 013_partitions.sql)
    nt_sql "ALTER TABLE needletrace.$1 DISABLE TRIGGER append_only" >/dev/null
    if [[ $1 == events ]]; then
        nt_sql "ALTER TABLE needletrace.events DISABLE TRIGGER event_keys" >/dev/null
    fi
}
retrigger() {
    nt_sql "ALTER TABLE needletrace.$1 ENABLE ALWAYS TRIGGER append_only" >/dev/null
    if [[ $1 == events ]]; then
        nt_sql "ALTER TABLE needletrace.events ENABLE ALWAYS TRIGGER event_keys" >/dev/null
    fi
}
# expect_found WHAT PATTERN: verify exits 1 and one finding matches PATTERN
expect_found() {
    audit verify
    nt_expect_eq "$1: verify exit code" 1 "$RC"
    nt_expect_true "$1: named ($(grep -m1 '^FINDING' <<<"$OUT" || true))" \
        grep -qE "$2" <<<"$OUT"
}
read -r C S B Q <<<"$(nt_sql "SELECT clinic_id, device_serial, boot_id, seq FROM needletrace.events
    WHERE kind = 'needle_activity' ORDER BY tx, seq LIMIT 1 OFFSET 100" | tr '|' ' ')"
key="clinic_id = '$C' AND device_serial = '$S' AND boot_id = $B AND seq = $Q"
nt_sql "CREATE TABLE public.saved AS SELECT * FROM needletrace.events WHERE $key" >/dev/null
untrigger events
nt_sql "UPDATE needletrace.events SET depth_um = depth_um + 1 WHERE $key" >/dev/null
expect_found "UPDATE of an event" "events row $C/$S/$B/$Q of batch .*: modified"
nt_sql "UPDATE needletrace.events e SET depth_um = s.depth_um FROM public.saved s
         WHERE e.clinic_id = s.clinic_id AND e.device_serial = s.device_serial
           AND e.boot_id = s.boot_id AND e.seq = s.seq" >/dev/null
audit verify
nt_expect_eq "the UPDATE undone: verify exit code" 0 "$RC"

nt_sql "DELETE FROM needletrace.events WHERE $key" >/dev/null
expect_found "DELETE of an event" "events row $C/$S/$B/$Q of batch .*: deleted"
nt_sql "INSERT INTO needletrace.events SELECT * FROM public.saved" >/dev/null
audit verify
nt_expect_eq "the DELETE undone: verify exit code" 0 "$RC"

# An event slipped into a sealed batch, and a raw message in a transaction of its own.
nt_sql "UPDATE public.saved SET seq = 900000;
        INSERT INTO needletrace.events SELECT * FROM public.saved;
        UPDATE public.saved SET seq = $Q" >/dev/null
expect_found "INSERT into a sealed batch" "events row $C/$S/$B/900000 of batch .*: inserted"
nt_sql "DELETE FROM needletrace.events WHERE clinic_id = '$C' AND seq = 900000" >/dev/null
raw_cols=$(nt_sql "SELECT string_agg(attname, ', ' ORDER BY attnum) FROM pg_attribute
    WHERE attrelid = 'needletrace.raw_messages'::regclass AND attnum > 0 AND NOT attisdropped
      AND attname <> 'tx'")
nt_sql "INSERT INTO needletrace.raw_messages ($raw_cols) SELECT $raw_cols
          FROM needletrace.raw_messages LIMIT 1" >/dev/null
expect_found "INSERT outside any batch" "raw_messages row .*: inserted outside any sealed batch"
# The same with the tx index dropped (verify then scans instead of skipping through the index).
nt_sql "CREATE TABLE public.raw_tx_idx AS SELECT pg_get_indexdef('needletrace.raw_messages_tx_idx'::regclass) AS d;
        DROP INDEX needletrace.raw_messages_tx_idx" >/dev/null
expect_found "... without the tx index" "raw_messages row .*: inserted outside any sealed batch"
nt_sql "DO \$\$ BEGIN EXECUTE (SELECT d FROM public.raw_tx_idx); END \$\$" >/dev/null
untrigger raw_messages
nt_sql "DELETE FROM needletrace.raw_messages WHERE tx > (SELECT max(tx) FROM needletrace.ledger)" \
    >/dev/null
retrigger raw_messages
audit verify
nt_expect_eq "the INSERTs undone: verify exit code" 0 "$RC"

# A row given an old transaction id, to hide among the rows from before the ledger: counted.
nt_sql "UPDATE public.saved SET seq = 900001, tx = 1;
        INSERT INTO needletrace.events SELECT * FROM public.saved;
        UPDATE public.saved SET seq = $Q, tx = (SELECT tx FROM needletrace.events WHERE $key)" \
    >/dev/null
expect_found "INSERT before the ledger" "events: 1 row\\(s\\) from before the ledger, its genesis sealed 0"
untrigger events
nt_sql "DELETE FROM needletrace.events WHERE seq = 900001" >/dev/null
audit verify
nt_expect_eq "that INSERT undone: verify exit code" 0 "$RC"

# A deleted event with a copy of another sealed row of its batch in its place (the counts even):
# the deleted one named from the batch's raw messages, the copy named as a copy.
read -r C2 S2 B2 Q2 <<<"$(nt_sql "SELECT clinic_id, device_serial, boot_id, seq FROM needletrace.events
    WHERE tx = (SELECT tx FROM needletrace.events WHERE $key) AND NOT ($key)
    ORDER BY seq LIMIT 1" | tr '|' ' ')"
key2="clinic_id = '$C2' AND device_serial = '$S2' AND boot_id = $B2 AND seq = $Q2"
nt_sql "DELETE FROM needletrace.events WHERE $key;
        INSERT INTO needletrace.events SELECT * FROM needletrace.events WHERE $key2" >/dev/null
expect_found "DELETE hidden by a copy" "events row $C/$S/$B/$Q of batch .*: deleted"
nt_expect_true "... and the copy named as one" \
    grep -qE "events row $C2/$S2/$B2/$Q2 of batch .*: a copy of a sealed row" <<<"$OUT"
nt_sql "DELETE FROM needletrace.events WHERE ctid = (SELECT max(ctid) FROM needletrace.events
                                                    WHERE $key2) AND $key2;
        INSERT INTO needletrace.events SELECT * FROM public.saved" >/dev/null
audit verify
nt_expect_eq "that undone: verify exit code" 0 "$RC"

# A second genesis entry, which would hide the rows up to its tx among those before the ledger.
nt_sql "DO \$\$ DECLARE g needletrace.ledger; BEGIN
    SELECT * INTO g FROM needletrace.ledger WHERE collector_id = '(genesis)';
    g.seq := 2; g.prev_hash := g.entry_hash;
    g.tx := (SELECT max(tx) FROM needletrace.ledger) + 1000;
    g.entry_hash := sha256(convert_to(needletrace.ledger_entry_text(g), 'UTF8'));
    INSERT INTO needletrace.ledger VALUES (g.*);
END \$\$" >/dev/null
expect_found "a second genesis entry" "ledger entry \\(genesis\\)#2 .*: a second genesis entry"
untrigger ledger
nt_sql "DELETE FROM needletrace.ledger WHERE collector_id = '(genesis)' AND seq = 2" >/dev/null
retrigger ledger
audit verify
nt_expect_eq "that undone: verify exit code" 0 "$RC"

# A batch's stored leaves doubled (they are not in the entry's hash, its root is): read only when
# as long as its counts say, never whole into the verifier, and the batch checked row by row.
untrigger ledger
nt_sql "UPDATE needletrace.ledger SET leaves = leaves || leaves
         WHERE tx = (SELECT tx FROM needletrace.events WHERE $key)" >/dev/null
expect_found "stored leaves doubled" "ledger entry [^ ]+#[0-9]+: [0-9]+ leaves for the [0-9]+ rows it counts"
nt_sql "UPDATE needletrace.ledger SET leaves = substring(leaves FROM 1 FOR octet_length(leaves) / 2)
         WHERE tx = (SELECT tx FROM needletrace.events WHERE $key)" >/dev/null
retrigger ledger
audit verify
nt_expect_eq "that undone: verify exit code" 0 "$RC"

# ---- 3. a consistent rewrite of the chain, caught by the digest -----------------------------------
untrigger ledger
nt_sql "UPDATE needletrace.events SET depth_um = 250 WHERE $key" >/dev/null
nt_sql "DO \$\$
DECLARE
    l needletrace.ledger;
    v_prev bytea;
    v_leaves bytea[];
BEGIN
    FOR l IN SELECT * FROM needletrace.ledger
              WHERE collector_id = (SELECT collector_id FROM needletrace.ledger
                                     WHERE tx = (SELECT tx FROM public.saved))
              ORDER BY seq LOOP
        IF l.tx = (SELECT tx FROM public.saved) THEN
            SELECT array_agg(leaf ORDER BY leaf) INTO v_leaves FROM needletrace.ledger_rows(l.tx);
            l.merkle_root := needletrace.merkle_root(v_leaves);
            l.leaves := (SELECT string_agg(x, ''::bytea ORDER BY x) FROM unnest(v_leaves) x);
        END IF;
        IF v_prev IS NOT NULL THEN
            l.prev_hash := v_prev;
        END IF;
        l.entry_hash := sha256(convert_to(needletrace.ledger_entry_text(l), 'UTF8'));
        UPDATE needletrace.ledger SET merkle_root = l.merkle_root, leaves = l.leaves,
               prev_hash = l.prev_hash, entry_hash = l.entry_hash
         WHERE collector_id = l.collector_id AND seq = l.seq;
        v_prev := l.entry_hash;
    END LOOP;
END
\$\$" >/dev/null
retrigger ledger
retrigger events
audit verify
nt_expect_eq "a consistent rewrite, without digests: verify exit code" 0 "$RC"
audit verify --digests "$NT_TMP/digests" --pubkey "$NT_TMP/keys/digest-signing.pub"
nt_expect_eq "with the digest exported before: verify exit code" 1 "$RC"
nt_expect_true "the digest names the rewritten chain ($(grep -m1 '^FINDING' <<<"$OUT" || true))" \
    grep -qE "digest digest-.*: chain it-c1 entry #[0-9]+ was rewritten" <<<"$OUT"
# A forged digest (another key) is refused.
mkdir -m 0700 "$NT_TMP/other"
"$NT_BIN" audit keygen --out "$NT_TMP/other" >/dev/null
audit digest --key "$NT_TMP/other/digest-signing.key" --out "$NT_TMP/digests"
audit verify --digests "$NT_TMP/digests" --pubkey "$NT_TMP/keys/digest-signing.pub"
nt_expect_true "a digest signed with another key is refused" \
    grep -q 'the signature does not verify' <<<"$OUT"
nt_finish
