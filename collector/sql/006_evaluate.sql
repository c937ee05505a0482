-- 006_evaluate.sql -- the dispatchers the collector calls: evaluate_rules (each batch) and
-- check_sequence_gaps (every few seconds), the two steps evaluate_rules takes before the rules
-- (read_batch, advance_boot_progress), and the roles and grants of the rules.
-- The rules themselves are in 005_rules.sql; see there for the interface and concurrency notes.

-- ---- the batch, read once -----------------------------------------------------------------------
-- A (device, boot) of the batch: its row count and its first and last seq in the batch.
CREATE TYPE needletrace.batch_boot AS (
    clinic_id     text,
    device_serial text,
    boot_id       bigint,
    n             bigint,
    min_seq       bigint,
    max_seq       bigint
);

-- What evaluate_rules needs to know of the batch before it runs the rules.
CREATE TYPE needletrace.batch_summary AS (
    boots    needletrace.batch_boot[],    -- every boot with rows in the batch; NULL: no rows
    sessions needletrace.batch_session[], -- its sessions with activity (see the NWC rule)
    mounts   boolean, -- the batch has cartridge_mounted events
    depth    boolean, -- some setting/activity may be too deep
    skewed   boolean  -- some event may be ahead of its receive time by more than p_skew
);

-- One pass over the transaction's rows (g: per boot, session and area, what every rule needs),
-- summed up per boot, per session with activity, and as each rule's candidate test. Takes no lock.
-- Sessions whose samples all follow a mount of the batch with no unmount of the batch before the
-- last sample are left out of sessions: of a fast boot (see advance_boot_progress) they cannot
-- raise anything.
CREATE FUNCTION needletrace.read_batch(p_tx bigint, p_skew interval)
    RETURNS needletrace.batch_summary
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_min_model int := (SELECT min(d.max_depth_um) FROM needletrace.device_models d);
    v_batch     needletrace.batch_summary;
BEGIN
    WITH g AS MATERIALIZED (
        SELECT e.clinic_id, e.device_serial, e.boot_id, e.session_id,
               coalesce(e.area, 'unspecified') AS area,
               count(*) AS n, min(e.seq) AS min_seq, max(e.seq) AS max_seq,
               min(e.seq) FILTER (WHERE e.kind = 'needle_activity') AS a_min,
               max(e.seq) FILTER (WHERE e.kind = 'needle_activity') AS a_max,
               min(e.seq) FILTER (WHERE e.kind = 'cartridge_mounted') AS mount_min,
               min(e.seq) FILTER (WHERE e.kind = 'cartridge_unmounted') AS unmount_min,
               max(e.depth_um) AS max_depth, -- (only settings and activity have a depth)
               -- CLOCK_SKEW's candidate test (below): some device_time > received_at + p_skew
               max(e.device_time) AS max_device_time, min(e.received_at) AS min_received_at
          FROM needletrace.events e
         WHERE e.tx = p_tx
         -- ... and a constant xid, a type that can be hashed but not sorted: so g is hashed.
         -- (The planner expects one row for tx = p_tx -- statistics lag behind the newest tx --
         -- and would sort the 5,000 rows on their text keys, which costs 2-3 times as much.)
         GROUP BY 1, 2, 3, 4, 5, '0'::xid
    ),
    ses AS (
        SELECT g.clinic_id, g.device_serial, g.boot_id, g.session_id,
               min(g.a_min) AS a_min, max(g.a_max) AS a_max
          FROM g
         GROUP BY 1, 2, 3, 4
        HAVING min(g.a_min) IS NOT NULL
           AND NOT coalesce(g.session_id IS NOT NULL
                            AND min(g.mount_min) < min(g.a_min)
                            AND (min(g.unmount_min) IS NULL OR min(g.unmount_min) > max(g.a_max)),
                            false)
    )
    SELECT a.boots, s.sessions, sk.mounts, dp.any, sk.skewed
      INTO v_batch.boots, v_batch.sessions, v_batch.mounts, v_batch.depth, v_batch.skewed
      FROM (SELECT array_agg(ROW(a.clinic_id, a.device_serial, a.boot_id, a.n, a.min_seq,
                                 a.max_seq)::needletrace.batch_boot) AS boots
              FROM (SELECT g.clinic_id, g.device_serial, g.boot_id, sum(g.n)::bigint AS n,
                           min(g.min_seq) AS min_seq, max(g.max_seq) AS max_seq
                      FROM g
                     GROUP BY 1, 2, 3) a) a,
           (SELECT array_agg(ROW(ses.clinic_id, ses.device_serial, ses.boot_id, ses.session_id,
                                 ses.a_min, ses.a_max)::needletrace.batch_session) AS sessions
              FROM ses) s,
           -- DEPTH_OUT_OF_RANGE's candidate test, on each group's deepest sample
           (SELECT EXISTS (
                SELECT 1
                  FROM g
                  LEFT JOIN needletrace.depth_policy_clinic c
                    ON c.clinic_id = g.clinic_id AND c.area = g.area
                  LEFT JOIN needletrace.depth_policy d ON d.area = g.area
                 WHERE g.max_depth > coalesce(c.max_depth_um, d.max_depth_um,
                                              needletrace.depth_hard_max_um())
                    OR g.max_depth > v_min_model) AS any) dp,
           (SELECT coalesce(bool_or(g.mount_min IS NOT NULL), false) AS mounts,
                   coalesce(bool_or(g.max_device_time > g.min_received_at + p_skew), false)
                       AS skewed
              FROM g) sk;
    RETURN v_batch;
END
$$;

-- ---- boot progress ------------------------------------------------------------------------------
-- Upserts the progress of the batch's boots, in key order (the first row locks every batch
-- takes), and returns the boots the batch did not settle by itself, for settle_boots.
-- When the batch alone moves a boot forward -- the boot was settled to its max_seq, all of the
-- batch's seqs lie above it (known when n_events = max_seq, i.e. every seq 1..max_seq is present
-- -- seqs are >= 1, the decoder refuses 0 -- else checked on the batch's first seq), and the batch
-- holds every seq from max_seq + 1 to its last (its row count says so) -- the upsert settles the
-- boot at once, to the batch's last seq (settle_boots would do exactly that), and the rows that
-- became settled are exactly the batch's rows, so read_batch saw all that
-- NEEDLING_WITHOUT_CARTRIDGE needs: such a boot is "fast". The other boots keep their settled_seq
-- here and are returned.
CREATE FUNCTION needletrace.advance_boot_progress(p_boots needletrace.batch_boot[])
    RETURNS needletrace.boot_key[]
    LANGUAGE plpgsql AS $$
DECLARE
    v_slow needletrace.boot_key[];
BEGIN
    WITH a AS MATERIALIZED (
        SELECT * FROM unnest(p_boots)
    ),
    b AS (
        INSERT INTO needletrace.boot_progress AS p
               (clinic_id, device_serial, boot_id, max_seq, n_events, settled_seq)
        SELECT a.clinic_id, a.device_serial, a.boot_id, a.max_seq, a.n,
               CASE WHEN a.min_seq = 1 AND a.n = a.max_seq THEN a.max_seq ELSE 0 END
          FROM a
         ORDER BY 1, 2, 3
        ON CONFLICT (clinic_id, device_serial, boot_id) DO UPDATE
           SET max_seq = greatest(p.max_seq, EXCLUDED.max_seq),
               n_events = p.n_events + EXCLUDED.n_events,
               settled_seq =
                   CASE WHEN p.settled_seq = p.max_seq
                         AND EXCLUDED.n_events = EXCLUDED.max_seq - p.max_seq
                        THEN CASE WHEN p.n_events = p.max_seq
                                    OR (SELECT a.min_seq FROM a
                                         WHERE a.clinic_id = EXCLUDED.clinic_id
                                           AND a.device_serial = EXCLUDED.device_serial
                                           AND a.boot_id = EXCLUDED.boot_id) = p.max_seq + 1
                                  THEN EXCLUDED.max_seq ELSE p.settled_seq END
                        ELSE p.settled_seq END,
               updated_at = now()
        RETURNING p.clinic_id, p.device_serial, p.boot_id, p.max_seq, p.settled_seq
    )
    -- A boot is fast when the upsert settled it to its max_seq, that max_seq is the batch's last
    -- seq for the boot, and the batch's rows of the boot are contiguous.
    SELECT array_agg(ROW(a.clinic_id, a.device_serial, a.boot_id)::needletrace.boot_key)
               FILTER (WHERE NOT (b.settled_seq = a.max_seq AND b.max_seq = a.max_seq
                                  AND a.n = a.max_seq - a.min_seq + 1))
      INTO v_slow
      FROM a JOIN b ON b.clinic_id = a.clinic_id AND b.device_serial = a.device_serial
                   AND b.boot_id = a.boot_id;
    RETURN v_slow;
END
$$;

-- ---- evaluate_rules ----------------------------------------------------------------------------
-- Reads the batch, advances its boots, then runs each rule, in the lock order, each only when
-- read_batch saw a candidate for it. NEEDLING_WITHOUT_CARTRIDGE is decided as the batch settles
-- its boots; when the batch alone moved every boot forward, only its sessions that need a look
-- are left.
CREATE FUNCTION needletrace.evaluate_rules(p_collector_id text)
    RETURNS TABLE(alert_id bigint, clinic_id text, rule text, payload text)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_tx    bigint := txid_current();
    v_skew  interval := needletrace.setting('clock_skew_bound')::interval;
    v_batch needletrace.batch_summary := needletrace.read_batch(v_tx, v_skew);
    v_slow  needletrace.boot_key[]; -- the batch's boots that are not fast
    v_ids   bigint[] := '{}';
BEGIN
    IF v_batch.boots IS NULL THEN
        RETURN; -- this transaction inserted no events
    END IF;
    v_slow := needletrace.advance_boot_progress(v_batch.boots); -- the batch's first row locks
    IF v_batch.mounts THEN
        -- One raise for the four, in rule order as ever; CARTRIDGE_REUSED first records the first
        -- uses (locks on cartridge_first_use come before any alert's).
        v_ids := v_ids || needletrace.raise_alerts(p_collector_id, NULL,
                              needletrace.rule_cartridge_reused(v_tx)
                              || needletrace.rule_cartridge_expired(v_tx)
                              || needletrace.rule_cartridge_recalled(v_tx)
                              || needletrace.rule_sterile_barrier_broken(v_tx));
    END IF;
    IF v_batch.depth THEN
        v_ids := v_ids || needletrace.raise_alerts(p_collector_id,
                              'needletrace.depth_violations_seen',
                              needletrace.rule_depth_out_of_range(v_tx));
    END IF;
    IF v_batch.skewed THEN
        v_ids := v_ids || needletrace.raise_alerts(p_collector_id, 'needletrace.clock_skew_alerted',
                              needletrace.rule_clock_skew(v_tx, v_skew));
    END IF;
    IF v_slow IS NOT NULL OR v_batch.sessions IS NOT NULL THEN
        v_ids := v_ids || needletrace.raise_alerts(p_collector_id, 'needletrace.no_cartridge_alerted',
                              needletrace.rule_needling_without_cartridge(v_tx, v_slow,
                                                                          v_batch.sessions));
    END IF;

    RETURN QUERY SELECT * FROM needletrace.publish_alerts(v_ids);
END
$$;
COMMENT ON FUNCTION needletrace.evaluate_rules(text) IS
    'Evaluates the compliance rules on the events this transaction inserted; raises, notifies '
    'and returns each new alert once. Called by the collector in each batch transaction.';
COMMENT ON FUNCTION needletrace.read_batch(bigint, interval) IS
    'The events this transaction inserted, summed up for evaluate_rules: per boot, per session '
    'with needle activity, and which rules have candidates. Reads only; takes no lock.';
COMMENT ON FUNCTION needletrace.advance_boot_progress(needletrace.batch_boot[]) IS
    'Records the batch''s boots in boot_progress (highest seq, event count; settled_seq when the '
    'batch alone completes the boot); returns the boots left for settle_boots.';

-- ---- check_sequence_gaps -------------------------------------------------------------------------
CREATE FUNCTION needletrace.check_sequence_gaps(p_collector_id text)
    RETURNS TABLE(alert_id bigint, clinic_id text, rule text, payload text)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_after interval := needletrace.setting('sequence_gap_after')::interval;
    v_boots needletrace.boot_key[];
    v_ids   bigint[];
BEGIN
    -- Boots that may hold a gap, locked; a boot locked by a batch or by another replica's check
    -- is skipped (it is looked at again on the next run), so this never waits or deadlocks.
    SELECT array_agg(ROW(b.clinic_id, b.device_serial, b.boot_id)::needletrace.boot_key)
      INTO v_boots
      FROM (SELECT p.clinic_id, p.device_serial, p.boot_id
              FROM needletrace.boot_progress p
             WHERE p.settled_seq < p.max_seq
             ORDER BY 1, 2, 3
               FOR UPDATE SKIP LOCKED) b;
    IF v_boots IS NULL THEN
        RETURN;
    END IF;

    -- A new statement, so it sees everything committed before the locks were taken.
    v_ids := needletrace.raise_alerts(p_collector_id, 'needletrace.sequence_gaps_alerted',
                                      needletrace.rule_sequence_gap(v_boots, v_after));

    -- Alerted gaps count as settled: advance, and decide the activity samples that waited.
    IF cardinality(v_ids) > 0 THEN
        v_ids := v_ids || needletrace.raise_alerts(p_collector_id, 'needletrace.no_cartridge_alerted',
                              needletrace.rule_needling_without_cartridge(NULL, v_boots, NULL));
    END IF;

    RETURN QUERY SELECT * FROM needletrace.publish_alerts(v_ids);
END
$$;
COMMENT ON FUNCTION needletrace.check_sequence_gaps(text) IS
    'Raises SEQUENCE_GAP for gaps due now, then NEEDLING_WITHOUT_CARTRIDGE for the samples they '
    'settled. Called by each collector every few seconds in its own transaction.';

-- ---- roles and grants ------------------------------------------------------------------------------
-- needletrace_staff: clinic staff / compliance officers who read and acknowledge alerts.
-- The collector role may also insert acks, because `needletrace alerts ack` runs with the
-- collector's database URL; the auditor role stays read-only.
SELECT needletrace.ensure_role('needletrace_staff');

-- The functions that write: only the collector runs them.
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'evaluate_rules(text)', 'check_sequence_gaps(text)',
        'mark_alerts_delivered(text, bigint[])', 'undelivered_alerts(text, int)',
        'publish_alerts(bigint[])', 'read_batch(bigint, interval)',
        'advance_boot_progress(needletrace.batch_boot[])',
        'raise_alerts(text, regclass, needletrace.alert_candidate[])',
        'settle_boots(needletrace.boot_key[], bigint)',
        'rule_cartridge_reused(bigint)', 'rule_cartridge_expired(bigint)',
        'rule_sterile_barrier_broken(bigint)', 'rule_cartridge_recalled(bigint)',
        'rule_depth_out_of_range(bigint)', 'rule_clock_skew(bigint, interval)',
        'rule_sequence_gap(needletrace.boot_key[], interval)',
        'rule_needling_without_cartridge(bigint, needletrace.boot_key[], needletrace.batch_session[])']
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION needletrace.%s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION needletrace.%s TO needletrace_collector', f);
    END LOOP;
END
$$;

GRANT SELECT ON needletrace.depth_policy, needletrace.depth_policy_clinic, needletrace.device_models,
                needletrace.recalled_lots, needletrace.settings
    TO needletrace_collector, needletrace_staff;
GRANT SELECT, INSERT ON needletrace.cartridge_first_use, needletrace.depth_violations_seen,
                        needletrace.no_cartridge_alerted, needletrace.clock_skew_alerted,
                        needletrace.sequence_gaps_alerted, needletrace.boot_progress,
                        needletrace.alert_deliveries, needletrace.alert_acks
    TO needletrace_collector;
-- The upsert of per-boot progress is the only rewrite the rules need.
GRANT UPDATE ON needletrace.boot_progress TO needletrace_collector;
GRANT SELECT ON needletrace.alerts_open TO needletrace_collector;

GRANT USAGE ON SCHEMA needletrace TO needletrace_staff;
GRANT SELECT ON needletrace.alerts, needletrace.alerts_open, needletrace.alert_acks,
                needletrace.alert_deliveries TO needletrace_staff;
GRANT INSERT ON needletrace.alert_acks TO needletrace_staff;

GRANT SELECT ON ALL TABLES IN SCHEMA needletrace TO needletrace_auditor;
