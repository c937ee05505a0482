-- 009_raw_evidence_lean.sql -- the raw evidence is written without an index of its own on the hot
-- path, and the depth rule reads the device model from the event row.
--
-- Measured (PostgreSQL 15, 200,000 one-event messages by binary COPY in transactions of 5,000 into
-- raw_messages and events, backend CPU, median of several runs on the 2-core benchmark machine):
-- the primary key (clinic_id, device_serial, payload_sha256) cost ~4 us of ~15 us per message and
-- ~30 MB of the 171 MB of WAL: a random SHA-256 sends each insert to another leaf page, and each
-- page dirtied after a checkpoint is written to WAL whole. The table keeps its BRIN on received_at
-- (a message of an event: same clinic_id, device_serial, received_at and payload_sha256).
--
-- Exactly once without that key: every message stored in raw_messages stored at least one event
-- of its own, and the events' key catches a redelivery (the collector's COPY fails on it and takes
-- its staging path, txn.c), where a message is stored only if an event of it was stored by this
-- transaction, or -- a "conflicting" message: each of its event identities was stored earlier
-- from a message with other content -- once, marked conflicting (kept as evidence; no event row
-- points to it), which the partial unique index below enforces.
--
-- Rows stored before this migration (legacy) stay in that unique index: among them may be a
-- conflicting message stored without the mark, whose redelivery must not be stored again.
--
-- Collectors built before this migration must not run against it (their staging path relied on
-- the dropped key; their event rows lack the device model): the checkpoint function they call is
-- replaced below, so their batches fail -- an operational error they report and retry, storing
-- nothing -- until they are upgraded.

ALTER TABLE needletrace.raw_messages DROP CONSTRAINT raw_messages_pkey;
ALTER TABLE needletrace.raw_messages ADD COLUMN conflicting boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN needletrace.raw_messages.conflicting IS
    'true: every event identity (device_serial, boot_id, seq) of this message was stored earlier '
    'from a message with other content; kept as evidence, no events row points to it.';
ALTER TABLE needletrace.raw_messages ADD COLUMN legacy boolean NOT NULL DEFAULT true;
ALTER TABLE needletrace.raw_messages ALTER COLUMN legacy SET DEFAULT false;
COMMENT ON COLUMN needletrace.raw_messages.legacy IS
    'true: stored before migration 009, under the unique key (clinic_id, device_serial, '
    'payload_sha256) that raw_messages_conflicting_key keeps for these rows.';
CREATE UNIQUE INDEX raw_messages_conflicting_key
    ON needletrace.raw_messages (clinic_id, device_serial, payload_sha256)
    WHERE conflicting OR legacy;

ALTER TABLE needletrace.events ADD COLUMN device_model text;
COMMENT ON COLUMN needletrace.events.device_model IS
    'The device_model of the message that carried a needle_setting or needle_activity event (the '
    'model maximum of DEPTH_OUT_OF_RANGE); NULL for other kinds and for rows older than 009.';

-- DEPTH_OUT_OF_RANGE as in 005_rules.sql, with the model from the event row instead of a lookup
-- of its message.
CREATE OR REPLACE FUNCTION needletrace.rule_depth_out_of_range(p_tx bigint)
    RETURNS needletrace.alert_candidate[]
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_min_model int := (SELECT min(d.max_depth_um) FROM needletrace.device_models d);
    v_margin    int := needletrace.setting('depth_critical_margin_um')::int;
BEGIN
    RETURN ARRAY(
        WITH cand AS MATERIALIZED (
            SELECT e.clinic_id, e.device_serial, e.session_id, e.boot_id, e.seq, e.kind,
                   e.device_time, e.device_model, e.depth_um,
                   coalesce(e.area, 'unspecified') AS area,
                   coalesce(c.max_depth_um, d.max_depth_um, needletrace.depth_hard_max_um())
                       AS area_limit,
                   CASE WHEN c.max_depth_um IS NOT NULL THEN 'clinic' ELSE 'default' END AS area_source
              FROM needletrace.events e
              LEFT JOIN needletrace.depth_policy_clinic c
                ON c.clinic_id = e.clinic_id AND c.area = coalesce(e.area, 'unspecified')
              LEFT JOIN needletrace.depth_policy d ON d.area = coalesce(e.area, 'unspecified')
             WHERE e.tx = p_tx AND e.kind IN ('needle_setting', 'needle_activity')
               AND (e.depth_um > coalesce(c.max_depth_um, d.max_depth_um,
                                          needletrace.depth_hard_max_um())
                    OR e.depth_um > v_min_model)
        ),
        lim AS (
            SELECT cand.*, dm.max_depth_um AS model_limit
              FROM cand
              LEFT JOIN needletrace.device_models dm ON dm.device_model = cand.device_model
        ),
        viol AS (
            SELECT lim.*,
                   CASE WHEN lim.model_limit < lim.area_limit THEN lim.model_limit ELSE lim.area_limit END
                       AS limit_um,
                   CASE WHEN lim.model_limit < lim.area_limit THEN 'model' ELSE lim.area_source END
                       AS limit_source
              FROM lim
        ),
        first AS (
            SELECT DISTINCT ON (v.clinic_id, v.device_serial, coalesce(v.session_id, ''), v.area,
                                v.depth_um) v.*
              FROM viol v
             WHERE v.depth_um > v.limit_um
             ORDER BY v.clinic_id, v.device_serial, coalesce(v.session_id, ''), v.area, v.depth_um,
                      v.device_time, v.seq, v.boot_id
        )
        SELECT ROW('DEPTH_OUT_OF_RANGE',
                   CASE WHEN f.depth_um > f.limit_um + v_margin
                          OR f.depth_um > needletrace.depth_hard_max_um()
                        THEN 'critical' ELSE 'warning' END,
                   f.clinic_id, f.device_serial, f.session_id, f.boot_id, f.seq,
                   jsonb_build_object('kind', f.kind, 'area', f.area, 'depth_um', f.depth_um,
                                      'limit_um', f.limit_um, 'limit_source', f.limit_source,
                                      'area_limit_um', f.area_limit, 'area_limit_source', f.area_source,
                                      'model_limit_um', f.model_limit, 'device_model', f.device_model,
                                      'device_time', needletrace.rfc3339(f.device_time)),
                   jsonb_build_object('clinic_id', f.clinic_id, 'device_serial', f.device_serial,
                                      'session_id', coalesce(f.session_id, ''), 'area', f.area,
                                      'depth_um', f.depth_um, 'boot_id', f.boot_id, 'seq', f.seq)
               )::needletrace.alert_candidate
          FROM first f
         ORDER BY f.clinic_id, f.device_serial, coalesce(f.session_id, ''), f.area, f.depth_um);
END
$$;

-- ---- the checkpoint ---------------------------------------------------------------------------
-- move_checkpoint replaces advance_checkpoint (dropped: a collector built before 009 then fails at
-- every batch with "function needletrace.advance_checkpoint does not exist"). A batch moves the
-- checkpoint before its rules run (txn.c). Batch n of a collector takes the transaction-level
-- advisory lock (hashtext(collector_id), n) at BEGIN; its move first waits for lock n - 1 (p_wait),
-- i.e. for the batch before it, maybe in flight on the collector's other connection
-- (database.connections = 2), to end: then it finds the checkpoint where it starts -- or, when that
-- batch rolled back, elsewhere, and is refused (NT001). So batches commit one after the other, in
-- journal order, each one's rules see the batch before it, and a deadlock between two of them
-- (each waiting for a row the other inserted) is one PostgreSQL detects and breaks. With p_after
-- the row must exist: a batch that follows another never creates the first checkpoint (were the
-- first batch rolled back, that would skip it).

DROP FUNCTION needletrace.advance_checkpoint(text, bigint, bigint, bigint);

CREATE FUNCTION needletrace.move_checkpoint(p_collector_id text, p_journal_id bigint,
                                            p_from bigint, p_to bigint, p_after boolean,
                                            p_wait int)
    RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    v_jid  bigint;
    v_pos  bigint;
    v_held text;
BEGIN
    IF p_wait IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext(p_collector_id), p_wait);
    END IF;
    SELECT c.journal_id, c.journal_pos, c.held_mismatch INTO v_jid, v_pos, v_held
      FROM needletrace.collector_checkpoints c
     WHERE c.collector_id = p_collector_id
       FOR UPDATE;
    IF NOT FOUND AND NOT p_after THEN
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
                  HINT = 'another collector runs with the same collector.id, the checkpoint '
                         'was reset meanwhile, or the batch before this one was not committed';
    END IF;
    UPDATE needletrace.collector_checkpoints c
       SET journal_pos = p_to, updated_at = now()
     WHERE c.collector_id = p_collector_id;
END
$$;
COMMENT ON FUNCTION needletrace.move_checkpoint(text, bigint, bigint, bigint, boolean, int) IS
    'Moves a collector''s checkpoint from where its batch starts (p_from) to where it ends '
    '(p_to), in the batch''s transaction, after waiting for the batch before it (its batch-order '
    'lock p_wait: pg_advisory_xact_lock(hashtext(collector_id), n), taken by batch n at BEGIN) to '
    'end; refuses (SQLSTATE NT001) when the checkpoint is not at p_from. Creates the first '
    'checkpoint unless p_after (a batch that follows another).';
