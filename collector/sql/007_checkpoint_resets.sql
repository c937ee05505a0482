-- 007_checkpoint_resets.sql -- the checkpoint moves only from where its collector left it, and
-- an operator's decision to reset it (needletrace journal accept) is recorded for good.
--
-- At every (re)connect the collector compares its checkpoint with its journal (see
-- include/needletrace/checkpoint.h); when they disagree (another journal, a checkpoint ahead of
-- the journal's end or behind its start, or not on a record) it ingests nothing until an
-- operator runs `needletrace journal accept`, which calls accept_journal() below.

-- ---- a checkpoint ahead of the journal is held until an operator decides ------------------------
-- The journal grows while ingest is stopped (what the broker delivers is still journaled), and
-- must not grow into a checkpoint that was found ahead of it: the records before it would be
-- skipped silently. So the collector records that finding in the checkpoint row, and for that
-- journal the checkpoint stays ahead, as it was found, until needletrace journal accept clears it.
-- (The other mismatches cannot turn into a fit by themselves.)
ALTER TABLE needletrace.collector_checkpoints
    ADD COLUMN held_mismatch   text CHECK (held_mismatch IN ('ahead')),
    ADD COLUMN held_journal_id bigint,
    ADD COLUMN held_start      bigint,
    ADD COLUMN held_end        bigint,
    ADD COLUMN held_since      timestamptz;

COMMENT ON TABLE needletrace.collector_checkpoints IS
    'How far each collector replica has committed its journal (journal id, byte position), moved '
    'in the transaction of each batch. held_*: the checkpoint was found ahead of the journal; the '
    'collector ingests nothing until needletrace journal accept.';
COMMENT ON COLUMN needletrace.collector_checkpoints.held_mismatch IS
    'NULL, or ahead: the checkpoint was found beyond the end (held_end) of the journal '
    'held_journal_id [held_start, held_end) at held_since.';

-- Holds the checkpoint of p_collector_id (when it is still (p_journal_id, p_pos) and not held
-- already) as found ahead (p_mismatch) of the journal (p_found_journal_id, [p_start, p_end)).
CREATE FUNCTION needletrace.hold_checkpoint(p_collector_id text, p_journal_id bigint,
                                            p_pos bigint, p_mismatch text,
                                            p_found_journal_id bigint, p_start bigint,
                                            p_end bigint)
    RETURNS void
    LANGUAGE sql AS $$
    UPDATE needletrace.collector_checkpoints c
       SET held_mismatch = p_mismatch, held_journal_id = p_found_journal_id,
           held_start = p_start, held_end = p_end, held_since = now()
     WHERE c.collector_id = p_collector_id AND c.journal_id = p_journal_id
       AND c.journal_pos = p_pos AND c.held_mismatch IS NULL
$$;

-- ---- the checkpoint moves only forward from what its collector read ------------------------------
-- Moves the checkpoint of p_collector_id from (p_journal_id, p_from) to p_to, in the transaction
-- of the batch that covers [p_from, p_to); creates it when there is none. A checkpoint that is
-- not where this collector left it (another collector with the same collector.id, or a reset
-- while it ran), or held, is not overwritten: SQLSTATE NT001, and the collector compares again.
CREATE FUNCTION needletrace.advance_checkpoint(p_collector_id text, p_journal_id bigint,
                                               p_from bigint, p_to bigint)
    RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    v_jid  bigint;
    v_pos  bigint;
    v_held text;
BEGIN
    SELECT c.journal_id, c.journal_pos, c.held_mismatch INTO v_jid, v_pos, v_held
      FROM needletrace.collector_checkpoints c
     WHERE c.collector_id = p_collector_id
       FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO needletrace.collector_checkpoints (collector_id, journal_id, journal_pos)
        VALUES (p_collector_id, p_journal_id, p_to)
        ON CONFLICT (collector_id) DO NOTHING;
        IF FOUND THEN
            RETURN;
        END IF;
        SELECT c.journal_id, c.journal_pos, c.held_mismatch INTO v_jid, v_pos, v_held
          FROM needletrace.collector_checkpoints c
         WHERE c.collector_id = p_collector_id
           FOR UPDATE;
    END IF;
    IF v_jid IS DISTINCT FROM p_journal_id OR v_pos IS DISTINCT FROM p_from OR v_held IS NOT NULL
    THEN
        RAISE EXCEPTION 'checkpoint of collector "%" moved to journal %, position % while this '
                        'collector expected journal %, position %', p_collector_id,
                        to_hex(v_jid), v_pos, to_hex(p_journal_id), p_from
            USING ERRCODE = 'NT001',
                  HINT = 'another collector runs with the same collector.id, or the checkpoint '
                         'was reset meanwhile';
    END IF;
    UPDATE needletrace.collector_checkpoints c
       SET journal_pos = p_to, updated_at = now()
     WHERE c.collector_id = p_collector_id;
END
$$;
COMMENT ON FUNCTION needletrace.advance_checkpoint(text, bigint, bigint, bigint) IS
    'Moves a collector''s checkpoint from the position it read to the end of the batch being '
    'committed; refuses (SQLSTATE NT001) when the checkpoint is no longer where the collector '
    'left it.';

-- ---- operator resets ------------------------------------------------------------------------------
-- Every reset of a checkpoint by `needletrace journal accept`: evidence of a decision that a
-- range of the journal will never be committed (or will be committed again). Append-only.
CREATE TABLE needletrace.checkpoint_resets (
    reset_id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collector_id    text        NOT NULL,
    mismatch        text        NOT NULL
        CHECK (mismatch IN ('other_journal', 'ahead', 'behind', 'not_a_record')),
    old_journal_id  bigint      NOT NULL,
    old_journal_pos bigint      NOT NULL,
    new_journal_id  bigint      NOT NULL,
    new_journal_pos bigint      NOT NULL,
    journal_start   bigint      NOT NULL,
    journal_end     bigint      NOT NULL,
    unaccounted     text        NOT NULL,
    reason          text        NOT NULL DEFAULT '',
    db_user         text        NOT NULL DEFAULT current_user,
    accepted_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX checkpoint_resets_collector_idx ON needletrace.checkpoint_resets (collector_id, accepted_at);
SELECT needletrace.make_append_only('checkpoint_resets');

COMMENT ON TABLE needletrace.checkpoint_resets IS
    'Each reset of a collector''s checkpoint by the operator command needletrace journal accept, '
    'after the checkpoint and the collector''s journal were found to disagree; append-only.';
COMMENT ON COLUMN needletrace.checkpoint_resets.mismatch IS
    'other_journal: the journal directory was replaced; ahead: the checkpoint was beyond the '
    'journal''s end (journal restored from an older copy); behind: it was before the journal''s '
    'oldest record (database restored or failed over: the positions in between were lost); '
    'not_a_record: no record started at it.';
COMMENT ON COLUMN needletrace.checkpoint_resets.old_journal_id IS
    'The checkpoint before the reset (journal id as a signed bigint; to_hex() gives the id the '
    'collector logs). old_journal_pos: its position.';
COMMENT ON COLUMN needletrace.checkpoint_resets.new_journal_id IS
    'The checkpoint after the reset: the journal found on disk and its oldest position, from which '
    'the collector replays it (the database ignores what it already holds).';
COMMENT ON COLUMN needletrace.checkpoint_resets.journal_start IS
    'The journal''s positions [journal_start, journal_end) at the time of the reset.';
COMMENT ON COLUMN needletrace.checkpoint_resets.unaccounted IS
    'The journal positions the reset could not account for, as the command printed them.';
COMMENT ON COLUMN needletrace.checkpoint_resets.db_user IS
    'The database user who ran the command (current_user); reason: the operator''s --reason.';

-- Resets the checkpoint of p_collector_id to (p_journal_id, p_start), no longer held, and records
-- why, when the checkpoint is still (p_old_journal_id, p_old_pos) (else SQLSTATE NT001, nothing
-- changed).
-- Returns the reset's row.
CREATE FUNCTION needletrace.accept_journal(p_collector_id text, p_mismatch text,
                                           p_old_journal_id bigint, p_old_pos bigint,
                                           p_journal_id bigint, p_start bigint, p_end bigint,
                                           p_unaccounted text, p_reason text)
    RETURNS needletrace.checkpoint_resets
    LANGUAGE plpgsql AS $$
DECLARE
    v_row needletrace.checkpoint_resets;
BEGIN
    UPDATE needletrace.collector_checkpoints c
       SET journal_id = p_journal_id, journal_pos = p_start, updated_at = now(),
           held_mismatch = NULL, held_journal_id = NULL, held_start = NULL, held_end = NULL,
           held_since = NULL
     WHERE c.collector_id = p_collector_id
       AND c.journal_id = p_old_journal_id AND c.journal_pos = p_old_pos;
    IF NOT FOUND AND p_old_pos = 0 THEN
        -- No checkpoint row at all (a database without this collector's history): the reset
        -- creates it.
        INSERT INTO needletrace.collector_checkpoints (collector_id, journal_id, journal_pos)
        VALUES (p_collector_id, p_journal_id, p_start)
        ON CONFLICT (collector_id) DO NOTHING;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'checkpoint of collector "%" is no longer journal %, position %',
                        p_collector_id, to_hex(p_old_journal_id), p_old_pos
            USING ERRCODE = 'NT001', HINT = 'run the command again';
    END IF;
    INSERT INTO needletrace.checkpoint_resets
           (collector_id, mismatch, old_journal_id, old_journal_pos, new_journal_id,
            new_journal_pos, journal_start, journal_end, unaccounted, reason)
    VALUES (p_collector_id, p_mismatch, p_old_journal_id, p_old_pos, p_journal_id, p_start,
            p_start, p_end, p_unaccounted, coalesce(p_reason, ''))
    RETURNING * INTO v_row;
    RETURN v_row;
END
$$;
COMMENT ON FUNCTION needletrace.accept_journal(text, text, bigint, bigint, bigint, bigint, bigint, text, text) IS
    'needletrace journal accept: resets a collector''s checkpoint to the start of its journal and '
    'records the decision in needletrace.checkpoint_resets.';

SELECT needletrace.collector_may_run(ARRAY[
        'advance_checkpoint(text, bigint, bigint, bigint)',
        'hold_checkpoint(text, bigint, bigint, text, bigint, bigint, bigint)',
        'accept_journal(text, text, bigint, bigint, bigint, bigint, bigint, text, text)']);
GRANT SELECT, INSERT ON needletrace.checkpoint_resets TO needletrace_collector;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA needletrace TO needletrace_collector;
GRANT SELECT ON needletrace.checkpoint_resets TO needletrace_auditor;
