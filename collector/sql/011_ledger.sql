-- 011_ledger.sql -- the tamper-evident ledger: every batch transaction seals the rows it inserted
-- (raw messages, events, quarantine rows) under a Merkle root, and links that root into a hash
-- chain per collector. `needletrace audit verify` recomputes both from the stored rows; signed
-- digests of the chain heads (kept outside the database) catch a chain rewritten consistently.
--
-- Leaf of a row: sha256(0x00 || tag || record_send(ROW(its columns, v1))), tag 'r' raw_messages,
-- 'e' events, 'q' quarantine; record_send is PostgreSQL's binary form of a row value (each
-- column with its type and bytes), over the columns the tables have in version 1 of the ledger
-- (all of them, in table order: see ledger_rows), so a change to any column changes the leaf and
-- a column added by a later migration does not change the leaves already sealed.
-- Root: the leaves sorted (bytewise) and cut into chunks of 64 (the last one shorter); each
-- chunk's hash is sha256(0x01 || its leaves, in order), the root sha256(0x02 || the chunks'
-- hashes, in order); no leaves: sha256(0x02). A two-level hash tree: a row's inclusion proof is
-- its chunk's leaves and the other chunks' hashes, checked with two hashes.
-- Entry hash: sha256 of the UTF-8 text (one line)
--   needletrace-ledger-v1|collector_id|seq|tx|journal_id|journal_from|journal_to|
--   n_raw|n_events|n_quarantine|hex(merkle_root)|hex(prev_hash)|committed_at|n_messages
-- (committed_at as YYYY-MM-DDTHH:MI:SS.US in UTC; prev_hash 32 zero bytes for seq 1).
-- Chains are per collector (replica), not global: each replica commits its batches one after the
-- other already (move_checkpoint), so its chain costs no lock shared with the others; a digest
-- names every chain's head.

-- ---- which transaction inserted a row -------------------------------------------------------------
-- events.tx exists (002). Rows stored before this migration read the migration's own
-- transaction id (a fast default): they are before the ledger, counted by its genesis entry.
ALTER TABLE needletrace.raw_messages ADD COLUMN tx bigint NOT NULL DEFAULT txid_current();
ALTER TABLE needletrace.quarantine ADD COLUMN tx bigint NOT NULL DEFAULT txid_current();
CREATE INDEX raw_messages_tx_idx ON needletrace.raw_messages (tx);
CREATE INDEX quarantine_tx_idx ON needletrace.quarantine (tx);
COMMENT ON COLUMN needletrace.raw_messages.tx IS
    'The transaction that inserted the row (its ledger entry''s tx); set by the database only.';
COMMENT ON COLUMN needletrace.quarantine.tx IS
    'The transaction that inserted the row (its ledger entry''s tx); set by the database only.';

-- ---- the ledger ---------------------------------------------------------------------------------------
CREATE TABLE needletrace.ledger (
    collector_id text        NOT NULL
                             CHECK (collector_id ~ '^[A-Za-z0-9._-]{1,64}$'
                                    OR collector_id = '(genesis)'),
    seq          bigint      NOT NULL CHECK (seq >= 1),
    tx           bigint      NOT NULL UNIQUE,
    journal_id   bigint      NOT NULL,
    journal_from bigint      NOT NULL,
    journal_to   bigint      NOT NULL,
    n_raw        int         NOT NULL,
    n_events     int         NOT NULL,
    n_quarantine int         NOT NULL,
    n_messages   int         NOT NULL, -- journal records the batch held (received)
    merkle_root  bytea       NOT NULL CHECK (octet_length(merkle_root) = 32),
    leaves       bytea       NOT NULL, -- the sorted leaves, 32 bytes each
    prev_hash    bytea       NOT NULL CHECK (octet_length(prev_hash) = 32),
    entry_hash   bytea       NOT NULL CHECK (octet_length(entry_hash) = 32),
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collector_id, seq)
);
ALTER TABLE needletrace.ledger ALTER COLUMN leaves SET STORAGE EXTERNAL; -- hashes do not compress
COMMENT ON TABLE needletrace.ledger IS
    'One entry per committed batch: the Merkle root of the rows it inserted and the link to the '
    'previous entry of the same collector (see 011_ledger.sql for the exact hashes).';
COMMENT ON COLUMN needletrace.ledger.collector_id IS 'The collector (replica) whose chain it is.';
COMMENT ON COLUMN needletrace.ledger.seq IS 'Position in that chain, from 1, without gaps.';
COMMENT ON COLUMN needletrace.ledger.tx IS 'The batch transaction: its rows have this tx.';
COMMENT ON COLUMN needletrace.ledger.journal_from IS 'The batch''s journal range, from...';
COMMENT ON COLUMN needletrace.ledger.journal_to IS '...to (exclusive).';
COMMENT ON COLUMN needletrace.ledger.n_raw IS 'raw_messages rows the batch inserted.';
COMMENT ON COLUMN needletrace.ledger.n_events IS 'events rows the batch inserted.';
COMMENT ON COLUMN needletrace.ledger.n_quarantine IS 'quarantine rows the batch inserted.';
COMMENT ON COLUMN needletrace.ledger.n_messages IS
    'Messages (journal records) the batch held: stored as raw_messages or quarantine rows, or '
    'already stored (a redelivery): n_messages - n_raw - n_quarantine.';
COMMENT ON COLUMN needletrace.ledger.merkle_root IS 'Root over the sorted leaves.';
COMMENT ON COLUMN needletrace.ledger.leaves IS 'The sorted leaves (32 bytes each).';
COMMENT ON COLUMN needletrace.ledger.prev_hash IS 'entry_hash of the previous entry (zeros: first).';
COMMENT ON COLUMN needletrace.ledger.entry_hash IS 'Hash of this entry, the chain''s link.';
COMMENT ON COLUMN needletrace.ledger.committed_at IS 'Start of the batch transaction.';
SELECT needletrace.make_append_only('ledger');

-- The leaves of transaction p_tx's rows, each with its table's tag and the row's identity.
-- The column lists are version 1 of the ledger: never change them (a new version gets new lists
-- and a new tag), or every sealed row would stop verifying.
CREATE FUNCTION needletrace.ledger_rows(p_tx bigint)
    RETURNS TABLE(tag text, ident text, leaf bytea)
    LANGUAGE sql STABLE AS $$
    SELECT 'r', concat_ws('/', r.clinic_id, r.device_serial, encode(r.payload_sha256, 'hex'),
                          r.journal_pos),
           sha256('\x0072'::bytea || record_send(ROW(r.clinic_id, r.device_serial, r.payload_sha256, r.received_at, r.topic, r.payload, r.boot_id,
                           r.event_count, r.first_seq, r.last_seq, r.device_model,
                           r.firmware_version, r.collector_id, r.journal_pos, r.inserted_at,
                           r.conflicting, r.legacy, r.tx)))
      FROM needletrace.raw_messages r WHERE r.tx = p_tx
    UNION ALL
    SELECT 'e', concat_ws('/', e.clinic_id, e.device_serial, e.boot_id, e.seq),
           sha256('\x0065'::bytea || record_send(ROW(e.clinic_id, e.device_serial, e.boot_id, e.seq, e.kind, e.device_time, e.received_at,
                           e.session_id, e.payload_sha256, e.collector_id, e.operator_id,
                           e.patient_ref, e.motor_seconds, e.gtin, e.lot, e.cartridge_serial,
                           e.expiry, e.needle_count, e.sterile_barrier_intact, e.motor_ms,
                           e.depth_um, e.stroke_rate_hz, e.area, e.duration_ms, e.battery_pct,
                           e.temperature_dc, e.motor_seconds_total, e.fault_code,
                           e.fault_message, e.inserted_at, e.tx, e.device_model)))
      FROM needletrace.events e WHERE e.tx = p_tx
    UNION ALL
    SELECT 'q', concat_ws('/', q.clinic_id, encode(q.message_key, 'hex')),
           sha256('\x0071'::bytea || record_send(ROW(q.clinic_id, q.message_key, q.received_at, q.topic, q.payload, q.payload_sha256, q.reason,
                           q.detail, q.device_serial, q.collector_id, q.journal_pos,
                           q.inserted_at, q.tx)))
      FROM needletrace.quarantine q WHERE q.tx = p_tx
$$;

-- The root of the leaves (see the top): a two-level hash tree, set-based (one statement).
CREATE FUNCTION needletrace.merkle_root(p_leaves bytea[]) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256('\x02'::bytea || coalesce(string_agg(c.h, ''::bytea ORDER BY c.k), ''::bytea))
      FROM (SELECT (l.o - 1) / 64 AS k,
                   sha256('\x01'::bytea || string_agg(l.x, ''::bytea ORDER BY l.o)) AS h
              FROM (SELECT x, row_number() OVER (ORDER BY x) AS o
                      FROM unnest(p_leaves) AS x) l
             GROUP BY 1) c
$$;

-- The text an entry's hash is taken over (see the top).
CREATE FUNCTION needletrace.ledger_entry_text(l needletrace.ledger) RETURNS text
    LANGUAGE sql STABLE AS $$
    SELECT concat_ws('|', 'needletrace-ledger-v1', l.collector_id, l.seq, l.tx, l.journal_id,
                     l.journal_from, l.journal_to, l.n_raw, l.n_events, l.n_quarantine,
                     encode(l.merkle_root, 'hex'), encode(l.prev_hash, 'hex'),
                     to_char(l.committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'),
                     l.n_messages)
$$;

-- Seals this transaction's rows: one entry at the head of p_collector_id's chain. Called by the
-- collector in each batch transaction, after its checkpoint move (so the entry before it, of the
-- batch before it, is committed and visible) and its rules.
-- Runs as the owner: the collector cannot write the ledger otherwise.
CREATE FUNCTION needletrace.ledger_seal(p_collector_id text, p_journal_id bigint,
                                        p_from bigint, p_to bigint, p_messages int)
    RETURNS bytea
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_tx     bigint := txid_current();
    v_leaves bytea[];
    v_n      int[];
    v_prev   needletrace.ledger;
    v_entry  needletrace.ledger;
BEGIN
    SELECT array_agg(r.leaf ORDER BY r.leaf),
           ARRAY[count(*) FILTER (WHERE r.tag = 'r'), count(*) FILTER (WHERE r.tag = 'e'),
                 count(*) FILTER (WHERE r.tag = 'q')]
      INTO v_leaves, v_n
      FROM needletrace.ledger_rows(v_tx) r;
    IF v_tx <= (SELECT l.tx FROM needletrace.ledger l WHERE l.collector_id = '(genesis)') THEN
        -- transaction ids restarted (a logical dump restored into a new cluster): rows could not
        -- be told from those before the ledger. Operational: the collector stops and says so.
        -- (Not max(tx): batches of two connections or replicas seal out of txid order.)
        RAISE EXCEPTION 'transaction id % is older than the ledger''s genesis: transaction ids '
                        'restarted (was the database restored from a logical dump?)', v_tx
            USING ERRCODE = 'NT004';
    END IF;
    SELECT l.seq, l.entry_hash INTO v_prev.seq, v_prev.entry_hash FROM needletrace.ledger l
     WHERE l.collector_id = p_collector_id ORDER BY l.seq DESC LIMIT 1;
    v_entry.collector_id := p_collector_id;
    v_entry.seq := coalesce(v_prev.seq, 0) + 1;
    v_entry.tx := v_tx;
    v_entry.journal_id := p_journal_id;
    v_entry.journal_from := p_from;
    v_entry.journal_to := p_to;
    v_entry.n_raw := v_n[1];
    v_entry.n_events := v_n[2];
    v_entry.n_quarantine := v_n[3];
    v_entry.n_messages := p_messages;
    v_entry.merkle_root := needletrace.merkle_root(v_leaves);
    v_entry.leaves := coalesce((SELECT string_agg(x, ''::bytea ORDER BY x)
                                  FROM unnest(v_leaves) AS x), ''::bytea);
    v_entry.prev_hash := coalesce(v_prev.entry_hash, decode(repeat('00', 32), 'hex'));
    v_entry.committed_at := now();
    v_entry.entry_hash := sha256(convert_to(needletrace.ledger_entry_text(v_entry), 'UTF8'));
    INSERT INTO needletrace.ledger VALUES (v_entry.*);
    RETURN v_entry.entry_hash;
END
$$;
COMMENT ON FUNCTION needletrace.ledger_seal(text, bigint, bigint, bigint, int) IS
    'Seals the rows this transaction inserted under a Merkle root, linked into the collector''s '
    'chain; returns the new entry''s hash. Called by the collector in each batch transaction.';

-- Each collector's newest entry: what a digest signs.
CREATE VIEW needletrace.ledger_heads AS
SELECT h.collector_id, h.seq, h.entry_hash, h.committed_at
  FROM (SELECT DISTINCT l.collector_id FROM needletrace.ledger l) c
  CROSS JOIN LATERAL (SELECT l.* FROM needletrace.ledger l WHERE l.collector_id = c.collector_id
                       ORDER BY l.seq DESC LIMIT 1) h;
COMMENT ON VIEW needletrace.ledger_heads IS 'The head (newest entry) of each collector''s chain.';

-- ---- completeness ---------------------------------------------------------------------------------
-- Per collector: what its sealed batches received, and where each message went; a mismatch is a
-- row, never hidden. Per pen: the sequence holes still open and alerted, and clock skew.
CREATE VIEW needletrace.completeness AS
SELECT l.collector_id,
       count(*) AS batches,
       sum(l.n_messages)::bigint AS messages_received,
       sum(l.n_raw)::bigint AS messages_stored,
       sum(l.n_quarantine)::bigint AS messages_quarantined,
       (sum(l.n_messages) - sum(l.n_raw) - sum(l.n_quarantine))::bigint AS redeliveries_skipped,
       sum(l.n_events)::bigint AS events_stored,
       (SELECT count(*) FROM needletrace.raw_messages r WHERE r.collector_id = l.collector_id
           AND r.tx > (SELECT g.tx FROM needletrace.ledger g WHERE g.collector_id = '(genesis)'))
           AS raw_rows_now,
       min(l.committed_at) AS first_batch_at, max(l.committed_at) AS last_batch_at
  FROM needletrace.ledger l
 WHERE l.collector_id <> '(genesis)'
 GROUP BY l.collector_id;
COMMENT ON VIEW needletrace.completeness IS
    'Per collector: messages received by its sealed batches = stored + quarantined + '
    'redeliveries skipped (already stored); raw_rows_now differing from messages_stored means rows '
    'were added or removed after sealing (audit verify names them).';

CREATE VIEW needletrace.pen_completeness AS
SELECT e.clinic_id, e.device_serial, count(*) AS events, count(DISTINCT e.boot_id) AS boots,
       (SELECT count(*) FROM needletrace.sequence_holes h
         WHERE h.clinic_id = e.clinic_id AND h.device_serial = e.device_serial) AS open_holes,
       (SELECT coalesce(sum(h.gap_end - h.gap_start + 1), 0) FROM needletrace.sequence_holes h
         WHERE h.clinic_id = e.clinic_id AND h.device_serial = e.device_serial) AS missing_seqs,
       (SELECT count(*) FROM needletrace.alerts a WHERE a.clinic_id = e.clinic_id
           AND a.device_serial = e.device_serial AND a.rule = 'SEQUENCE_GAP') AS gap_alerts,
       (SELECT count(*) FROM needletrace.alerts a WHERE a.clinic_id = e.clinic_id
           AND a.device_serial = e.device_serial AND a.rule = 'CLOCK_SKEW') AS skew_alerts,
       max(e.device_time - e.received_at) AS max_ahead,
       max(e.received_at - e.device_time) AS max_behind
  FROM needletrace.events e
 GROUP BY e.clinic_id, e.device_serial;
COMMENT ON VIEW needletrace.pen_completeness IS
    'Per pen: events, boots, sequence numbers still missing (open holes) and alerted, clock skew '
    '(device time ahead of / behind the receive time).';
GRANT SELECT ON needletrace.completeness, needletrace.pen_completeness TO needletrace_auditor;

-- ---- genesis ---------------------------------------------------------------------------------------
-- The rows stored before this migration are not sealed row by row (hashing a large history
-- would hold the migration for hours); the genesis entry seals how many there are, and the
-- transaction at or below which a row is one of them. verify counts them again.
DO $$
DECLARE
    g needletrace.ledger;
BEGIN
    g.collector_id := '(genesis)';
    g.seq := 1;
    g.tx := txid_current();
    g.journal_id := 0;
    g.journal_from := 0;
    g.journal_to := 0;
    g.n_raw := (SELECT count(*) FROM needletrace.raw_messages);
    g.n_events := (SELECT count(*) FROM needletrace.events);
    g.n_quarantine := (SELECT count(*) FROM needletrace.quarantine);
    g.n_messages := g.n_raw + g.n_quarantine;
    g.merkle_root := needletrace.merkle_root(NULL);
    g.leaves := ''::bytea;
    g.prev_hash := decode(repeat('00', 32), 'hex');
    g.committed_at := now();
    g.entry_hash := sha256(convert_to(needletrace.ledger_entry_text(g), 'UTF8'));
    INSERT INTO needletrace.ledger VALUES (g.*);
END
$$;

-- ---- collectors built before the ledger ----------------------------------------------------------------
-- They would store rows no batch seals (reported by verify forever): their checkpoint move is
-- renamed, so that they stop with "function needletrace.move_checkpoint(...) does not exist"
-- (nothing stored, their journals keep everything) until their binary is upgraded.
ALTER FUNCTION needletrace.move_checkpoint(text, bigint, bigint, bigint, boolean, int)
    RENAME TO move_checkpoint_sealed;

-- ---- grants ------------------------------------------------------------------------------------------
-- The collector inserts evidence but never chooses a row's tx (the ledger's batch key) nor its
-- inserted_at: INSERT on every other column only. It seals through ledger_seal only.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['raw_messages', 'events', 'quarantine'] LOOP
        EXECUTE format('REVOKE INSERT ON needletrace.%I FROM needletrace_collector', t);
        EXECUTE format('GRANT INSERT (%s) ON needletrace.%I TO needletrace_collector',
                       (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
                          FROM pg_attribute a
                         WHERE a.attrelid = format('needletrace.%I', t)::regclass
                           AND a.attnum > 0 AND NOT a.attisdropped
                           AND a.attname NOT IN ('tx', 'inserted_at')), t);
    END LOOP;
END
$$;
SELECT needletrace.collector_may_run(ARRAY['ledger_seal(text, bigint, bigint, bigint, int)']);
GRANT SELECT ON needletrace.ledger, needletrace.ledger_heads TO needletrace_collector;
GRANT SELECT ON needletrace.ledger, needletrace.ledger_heads TO needletrace_auditor;
