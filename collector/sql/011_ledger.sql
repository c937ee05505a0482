-- 011_ledger.sql -- the tamper-evident ledger: every batch transaction seals the rows it inserted
-- (raw messages, events, quarantine rows) under a Merkle root, and links that root into a hash
-- chain per collector. `needletrace audit verify` recomputes both from the stored rows; signed
-- digests of the chain heads (kept outside the database) catch a chain rewritten consistently.
--
-- Leaf of a row: sha256(0x00 || tag || record_send(row)), tag 'r' raw_messages, 'e' events,
-- 'q' quarantine; record_send is PostgreSQL's binary form of the whole stored row (every column,
-- each with its type), so any change to any column changes the leaf.
-- Root: the leaves sorted (bytewise) and cut into chunks of 64 (the last one shorter); each
-- chunk's hash is sha256(0x01 || its leaves, in order), the root sha256(0x02 || the chunks'
-- hashes, in order); no leaves: sha256(0x02). A two-level hash tree: a row's inclusion proof is
-- its chunk's leaves and the other chunks' hashes, checked with two hashes.
-- Entry hash: sha256 of the UTF-8 text
--   needletrace-ledger-v1|collector_id|seq|tx|journal_id|journal_from|journal_to|
--   n_raw|n_events|n_quarantine|hex(merkle_root)|hex(prev_hash)|committed_at
-- (committed_at as YYYY-MM-DDTHH:MI:SS.US in UTC; prev_hash 32 zero bytes for seq 1).
-- Chains are per collector (replica), not global: each replica commits its batches one after the
-- other already (move_checkpoint), so its chain costs no lock shared with the others; a digest
-- names every chain's head.

-- ---- which transaction inserted a row -------------------------------------------------------------
-- events.tx exists (002). Rows stored before this migration read the migration's own
-- transaction id (a fast default): they are before the ledger (ledger_meta.legacy_tx).
ALTER TABLE needletrace.raw_messages ADD COLUMN tx bigint NOT NULL DEFAULT txid_current();
ALTER TABLE needletrace.quarantine ADD COLUMN tx bigint NOT NULL DEFAULT txid_current();
CREATE INDEX raw_messages_tx_idx ON needletrace.raw_messages (tx);
CREATE INDEX quarantine_tx_idx ON needletrace.quarantine (tx);
COMMENT ON COLUMN needletrace.raw_messages.tx IS
    'The transaction that inserted the row (its ledger entry''s tx).';
COMMENT ON COLUMN needletrace.quarantine.tx IS
    'The transaction that inserted the row (its ledger entry''s tx).';

CREATE TABLE needletrace.ledger_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
COMMENT ON TABLE needletrace.ledger_meta IS
    'Facts of the ledger: legacy_tx (rows of a transaction at or below it predate the ledger).';
INSERT INTO needletrace.ledger_meta VALUES ('legacy_tx', txid_current()::text);

-- ---- the ledger ---------------------------------------------------------------------------------------
CREATE TABLE needletrace.ledger (
    collector_id text        NOT NULL,
    seq          bigint      NOT NULL CHECK (seq >= 1),
    tx           bigint      NOT NULL UNIQUE,
    journal_id   bigint      NOT NULL,
    journal_from bigint      NOT NULL,
    journal_to   bigint      NOT NULL,
    n_raw        int         NOT NULL,
    n_events     int         NOT NULL,
    n_quarantine int         NOT NULL,
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
COMMENT ON COLUMN needletrace.ledger.merkle_root IS 'Root over the sorted leaves.';
COMMENT ON COLUMN needletrace.ledger.leaves IS 'The sorted leaves (32 bytes each).';
COMMENT ON COLUMN needletrace.ledger.prev_hash IS 'entry_hash of the previous entry (zeros: first).';
COMMENT ON COLUMN needletrace.ledger.entry_hash IS 'Hash of this entry, the chain''s link.';
COMMENT ON COLUMN needletrace.ledger.committed_at IS 'Start of the batch transaction.';
SELECT needletrace.make_append_only('ledger');

-- The leaf of a stored row (see the top).
CREATE FUNCTION needletrace.ledger_leaf(p_tag text, p_row bytea) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256('\x00'::bytea || convert_to(p_tag, 'UTF8') || p_row)
$$;

-- The leaves of transaction p_tx's rows, each with its table's tag and the row's identity.
CREATE FUNCTION needletrace.ledger_rows(p_tx bigint)
    RETURNS TABLE(tag text, ident text, leaf bytea)
    LANGUAGE sql STABLE AS $$
    SELECT 'r', concat_ws('/', r.clinic_id, r.device_serial, encode(r.payload_sha256, 'hex'),
                          r.journal_pos),
           needletrace.ledger_leaf('r', record_send(r))
      FROM needletrace.raw_messages r WHERE r.tx = p_tx
    UNION ALL
    SELECT 'e', concat_ws('/', e.clinic_id, e.device_serial, e.boot_id, e.seq),
           needletrace.ledger_leaf('e', record_send(e))
      FROM needletrace.events e WHERE e.tx = p_tx
    UNION ALL
    SELECT 'q', concat_ws('/', q.clinic_id, encode(q.message_key, 'hex')),
           needletrace.ledger_leaf('q', record_send(q))
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
                     to_char(l.committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'))
$$;

-- Seals this transaction's rows: one entry at the head of p_collector_id's chain. Called by the
-- collector in each batch transaction, after its checkpoint move (so the entry before it, of the
-- batch before it, is committed and visible) and its rules.
CREATE FUNCTION needletrace.ledger_seal(p_collector_id text, p_journal_id bigint,
                                        p_from bigint, p_to bigint)
    RETURNS bytea
    LANGUAGE plpgsql AS $$
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
    SELECT * INTO v_prev FROM needletrace.ledger l
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
COMMENT ON FUNCTION needletrace.ledger_seal(text, bigint, bigint, bigint) IS
    'Seals the rows this transaction inserted under a Merkle root, linked into the collector''s '
    'chain; returns the new entry''s hash. Called by the collector in each batch transaction.';

-- Each collector's newest entry: what a digest signs.
CREATE VIEW needletrace.ledger_heads AS
SELECT DISTINCT ON (l.collector_id) l.collector_id, l.seq, l.entry_hash, l.committed_at
  FROM needletrace.ledger l
 ORDER BY l.collector_id, l.seq DESC;
COMMENT ON VIEW needletrace.ledger_heads IS 'The head (newest entry) of each collector''s chain.';

SELECT needletrace.collector_may_run(ARRAY['ledger_seal(text, bigint, bigint, bigint)']);
GRANT SELECT, INSERT ON needletrace.ledger TO needletrace_collector;
GRANT SELECT ON needletrace.ledger_heads TO needletrace_collector;
GRANT SELECT ON needletrace.ledger, needletrace.ledger_meta, needletrace.ledger_heads
    TO needletrace_auditor;
