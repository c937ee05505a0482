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
-- A boot the batch did not settle by itself: its max_seq before the batch and its settled_seq.
CREATE TYPE needletrace.boot_span AS (
    clinic_id     text,
    device_serial text,
    boot_id       bigint,
    old_max       bigint,
    settled       bigint
);

-- An open hole (a row of needletrace.sequence_holes).
CREATE TYPE needletrace.seq_hole AS (
    clinic_id       text,
    device_serial   text,
    boot_id         bigint,
    gap_start       bigint,
    gap_end         bigint,
    revealed_at     timestamptz,
    revealed_by_seq bigint
);

-- Brings the open holes of the given boots (locked by the caller) up to date with transaction
-- p_tx's rows: the range a boot's rows skipped above its old max_seq becomes holes, a hole that
-- rows fill shrinks, splits or goes, and a hole with an earlier-received row above it than the
-- one that revealed it takes that row's time. Reads the batch's rows (events_tx_idx), one index
-- probe per row at or below the old max_seq, and the holes the rows touch: never a boot's
-- history. Only the rows above settled_seq matter: those below it fill alerted gaps.
-- No arithmetic that can overflow: x + 1 only where x < some seq, x - 1 only where x is a seq
-- (>= 1, the decoder refuses 0).
CREATE FUNCTION needletrace.track_holes(p_tx bigint, p_spans needletrace.boot_span[])
    RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    v_old needletrace.seq_hole[]; -- holes replaced
    v_new needletrace.seq_hole[]; -- their pieces and the new holes
BEGIN
    WITH s AS MATERIALIZED (
        SELECT * FROM unnest(p_spans)
    ),
    bt AS MATERIALIZED (
        SELECT e.clinic_id, e.device_serial, e.boot_id, e.seq, e.received_at
          FROM needletrace.events e
         WHERE e.tx = p_tx
    ),
    -- The rows above settled_seq, each with the hole it fills (one probe of the holes' primary
    -- key per row at or below the old max_seq; none: above it).
    r AS MATERIALIZED (
        SELECT bt.*, s.old_max, h.gap_start AS h_start, h.gap_end AS h_end,
               h.revealed_at AS h_at, h.revealed_by_seq AS h_by
          FROM bt JOIN s USING (clinic_id, device_serial, boot_id)
          LEFT JOIN LATERAL (
                   SELECT h.gap_start, h.gap_end, h.revealed_at, h.revealed_by_seq
                     FROM needletrace.sequence_holes h
                    WHERE bt.seq <= s.old_max
                      AND h.clinic_id = bt.clinic_id AND h.device_serial = bt.device_serial
                      AND h.boot_id = bt.boot_id AND h.gap_start <= bt.seq
                    ORDER BY h.gap_start DESC LIMIT 1) h ON true
         WHERE bt.seq > s.settled
           AND (bt.seq > s.old_max OR h.gap_end >= bt.seq)
    ),
    -- The existing holes to rewrite: those rows fill, and those an earlier-received row of the
    -- batch lies above (rare: replicas commit out of receive order).
    ph AS (
        SELECT r.clinic_id, r.device_serial, r.boot_id, r.h_start AS gap_start,
               r.h_end AS gap_end, r.h_at AS revealed_at, r.h_by AS revealed_by_seq
          FROM r WHERE r.h_start IS NOT NULL
        UNION
        SELECT h.*
          FROM (SELECT r.clinic_id, r.device_serial, r.boot_id, min(r.received_at) AS r_min,
                       max(r.seq) AS s_max
                  FROM r GROUP BY 1, 2, 3) m
          CROSS JOIN LATERAL (
                   SELECT h.* FROM needletrace.sequence_holes h
                    WHERE h.clinic_id = m.clinic_id AND h.device_serial = m.device_serial
                      AND h.boot_id = m.boot_id
                      AND h.revealed_at >= m.r_min AND h.gap_end < m.s_max) h
    ),
    -- The batch's rows (tag 1) and the tops of those holes (tag 0), each with its hole (h_*;
    -- NULL: above the old max_seq), in one descending sweep per boot: r_incl is the earliest
    -- receive time at or above each point, by_incl the lowest seq that has it. (One stream, no
    -- join between CTEs: their row estimates are guesses.)
    pts AS (
        SELECT r.clinic_id, r.device_serial, r.boot_id, r.seq AS pos, 1 AS tag, r.received_at,
               r.old_max, r.h_start, r.h_end, r.h_at, r.h_by
          FROM r
        UNION ALL
        SELECT ph.clinic_id, ph.device_serial, ph.boot_id, ph.gap_end, 0, NULL, NULL,
               ph.gap_start, ph.gap_end, ph.revealed_at, ph.revealed_by_seq
          FROM ph
    ),
    sw1 AS (
        SELECT pts.*, min(pts.received_at) OVER w AS r_incl
          FROM pts
        WINDOW w AS (PARTITION BY pts.clinic_id, pts.device_serial, pts.boot_id
                     ORDER BY pts.pos DESC, pts.tag DESC ROWS UNBOUNDED PRECEDING)
    ),
    -- ... and, per hole, the row before each row (prev) and its last row (last).
    sw AS (
        SELECT sw1.*, min(sw1.pos) FILTER (WHERE sw1.received_at = sw1.r_incl) OVER w AS by_incl,
               lag(sw1.pos) OVER (PARTITION BY sw1.clinic_id, sw1.device_serial, sw1.boot_id,
                                               sw1.h_start, sw1.tag
                                  ORDER BY sw1.pos) AS prev,
               max(sw1.pos) FILTER (WHERE sw1.tag = 1)
                   OVER (PARTITION BY sw1.clinic_id, sw1.device_serial, sw1.boot_id,
                                      sw1.h_start) AS last
          FROM sw1
        WINDOW w AS (PARTITION BY sw1.clinic_id, sw1.device_serial, sw1.boot_id
                     ORDER BY sw1.pos DESC, sw1.tag DESC ROWS UNBOUNDED PRECEDING)
    ),
    -- The pieces below each row: from the previous row (or the hole's start, or old max + 1) to
    -- the row - 1; then the top piece of each rewritten hole, above its last row.
    pieces AS (
        SELECT sw.clinic_id, sw.device_serial, sw.boot_id,
               CASE WHEN sw.tag = 0 THEN
                        CASE WHEN sw.last IS NULL THEN sw.h_start
                             WHEN sw.last < sw.h_end THEN sw.last + 1 END
                    WHEN sw.prev IS NOT NULL THEN sw.prev + 1
                    WHEN sw.h_start IS NOT NULL THEN sw.h_start
                    ELSE sw.old_max + 1 END AS lo,
               CASE WHEN sw.tag = 0 THEN sw.h_end ELSE sw.pos - 1 END AS hi,
               sw.r_incl AS r_at, sw.by_incl AS r_by, sw.h_at AS o_at, sw.h_by AS o_by
          FROM sw
    )
    SELECT (SELECT array_agg(ROW(ph.*)::needletrace.seq_hole) FROM ph),
           (SELECT array_agg(ROW(p.clinic_id, p.device_serial, p.boot_id, p.lo, p.hi,
                                 CASE WHEN p.o_at IS NULL OR (p.r_at, p.r_by) < (p.o_at, p.o_by)
                                      THEN p.r_at ELSE p.o_at END,
                                 CASE WHEN p.o_at IS NULL OR (p.r_at, p.r_by) < (p.o_at, p.o_by)
                                      THEN p.r_by ELSE p.o_by END)::needletrace.seq_hole)
              FROM pieces p
             WHERE p.lo <= p.hi)
      INTO v_old, v_new;

    IF v_old IS NOT NULL THEN
        DELETE FROM needletrace.sequence_holes h
         USING unnest(v_old) AS o
         WHERE h.clinic_id = o.clinic_id AND h.device_serial = o.device_serial
           AND h.boot_id = o.boot_id AND h.gap_start = o.gap_start;
    END IF;
    IF v_new IS NOT NULL THEN
        INSERT INTO needletrace.sequence_holes
        SELECT * FROM unnest(v_new) ORDER BY 1, 2, 3, 4;
    END IF;
END
$$;

-- Upserts the progress of the batch's boots, in key order (the first row locks every batch
-- takes), brings the holes of the boots it did not settle by itself up to date (track_holes), and
-- returns those boots (slow), for settle_boots, and whether the batch holds rows at or below one's
-- settled_seq (late: they fill alerted gaps; settle_boots then looks at the batch's samples).
-- When the batch alone moves a boot forward -- the boot was settled to its max_seq (so it has no
-- open hole), the batch's first seq is max_seq + 1 and the batch holds every seq from there to
-- its last (its row count says so) -- the upsert settles the boot at once, to the batch's last
-- seq (settle_boots would do exactly that), and the rows that became settled are exactly the
-- batch's rows, so read_batch saw all that NEEDLING_WITHOUT_CARTRIDGE needs: such a boot is
-- "fast". The other boots keep their settled_seq here and are returned.
CREATE FUNCTION needletrace.advance_boot_progress(p_boots needletrace.batch_boot[], p_tx bigint,
                                                  OUT slow needletrace.boot_key[],
                                                  OUT late boolean)
    LANGUAGE plpgsql AS $$
DECLARE
    v_spans needletrace.boot_span[];
BEGIN
    WITH a AS MATERIALIZED (
        SELECT * FROM unnest(p_boots)
    ),
    b AS (
        INSERT INTO needletrace.boot_progress AS p
               (clinic_id, device_serial, boot_id, max_seq, n_events, prev_max_seq, settled_seq)
        SELECT a.clinic_id, a.device_serial, a.boot_id, a.max_seq, a.n, 0,
               CASE WHEN a.min_seq = 1 AND a.n = a.max_seq THEN a.max_seq ELSE 0 END
          FROM a
         ORDER BY 1, 2, 3
        ON CONFLICT (clinic_id, device_serial, boot_id) DO UPDATE
           SET max_seq = greatest(p.max_seq, EXCLUDED.max_seq),
               n_events = p.n_events + EXCLUDED.n_events,
               prev_max_seq = p.max_seq,
               -- (seqs >= 1: subtracting two of them, or 1 from one, cannot overflow)
               settled_seq =
                   CASE WHEN p.settled_seq = p.max_seq
                         AND EXCLUDED.max_seq > p.max_seq
                         AND EXCLUDED.n_events = EXCLUDED.max_seq - p.max_seq
                         AND (SELECT a.min_seq FROM a
                               WHERE a.clinic_id = EXCLUDED.clinic_id
                                 AND a.device_serial = EXCLUDED.device_serial
                                 AND a.boot_id = EXCLUDED.boot_id) - 1 = p.max_seq
                        THEN EXCLUDED.max_seq ELSE p.settled_seq END,
               updated_at = now()
        RETURNING p.clinic_id, p.device_serial, p.boot_id, p.max_seq, p.prev_max_seq,
                  p.settled_seq
    )
    -- A boot is fast when the upsert settled it to its max_seq, that max_seq is the batch's last
    -- seq for the boot, and the batch's rows of the boot are contiguous.
    SELECT array_agg(ROW(a.clinic_id, a.device_serial, a.boot_id, b.prev_max_seq,
                         b.settled_seq)::needletrace.boot_span),
           coalesce(bool_or(a.min_seq <= b.settled_seq), false)
      INTO v_spans, late
      FROM a JOIN b ON b.clinic_id = a.clinic_id AND b.device_serial = a.device_serial
                   AND b.boot_id = a.boot_id
     WHERE NOT (b.settled_seq = a.max_seq AND b.max_seq = a.max_seq
                AND a.n - 1 = a.max_seq - a.min_seq);
    IF v_spans IS NOT NULL THEN
        PERFORM needletrace.track_holes(p_tx, v_spans);
        slow := ARRAY(SELECT ROW(v.clinic_id, v.device_serial, v.boot_id)::needletrace.boot_key
                        FROM unnest(v_spans) AS v);
    END IF;
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
    v_late  boolean; -- some of their rows fill alerted gaps
    v_ids   bigint[] := '{}';
BEGIN
    IF v_batch.boots IS NULL THEN
        RETURN; -- this transaction inserted no events
    END IF;
    -- the batch's first row locks
    SELECT a.slow, a.late INTO v_slow, v_late
      FROM needletrace.advance_boot_progress(v_batch.boots, v_tx) a;
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
                              needletrace.rule_needling_without_cartridge(
                                  CASE WHEN v_late THEN v_tx END, v_slow, v_batch.sessions));
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
COMMENT ON FUNCTION needletrace.advance_boot_progress(needletrace.batch_boot[], bigint) IS
    'Records the batch''s boots in boot_progress (highest seq, event count; settled_seq when the '
    'batch alone completes the boot) and their open holes; returns the boots left for '
    'settle_boots.';
COMMENT ON FUNCTION needletrace.track_holes(bigint, needletrace.boot_span[]) IS
    'Brings the open holes (sequence_holes) of the given boots up to date with the rows of a '
    'transaction: opens, shrinks, splits or deletes them; reads only the batch and its holes.';

-- ---- check_sequence_gaps -------------------------------------------------------------------------
-- Reads only the holes due (sequence_holes_due_idx), locks only their boots -- a boot locked by a
-- batch or by another replica's check is skipped and looked at again on the next run, so this
-- never waits or deadlocks -- raises SEQUENCE_GAP once per hole, deletes the alerted holes and
-- settles those boots. A lower hole is never due later than a higher one of its boot, so the
-- alerted gaps of a boot stay below its open holes.
CREATE FUNCTION needletrace.check_sequence_gaps(p_collector_id text)
    RETURNS TABLE(alert_id bigint, clinic_id text, rule text, payload text)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_after interval := needletrace.setting('sequence_gap_after')::interval;
    v_boots needletrace.boot_key[];
    v_ids   bigint[];
BEGIN
    SELECT array_agg(ROW(p.clinic_id, p.device_serial, p.boot_id)::needletrace.boot_key
                     ORDER BY p.clinic_id, p.device_serial, p.boot_id)
      INTO v_boots
      FROM (SELECT DISTINCT h.clinic_id, h.device_serial, h.boot_id
              FROM needletrace.sequence_holes h
             WHERE h.revealed_at <= now() - v_after) d
     CROSS JOIN LATERAL (
               SELECT b.clinic_id, b.device_serial, b.boot_id
                 FROM needletrace.boot_progress b
                WHERE b.clinic_id = d.clinic_id AND b.device_serial = d.device_serial
                  AND b.boot_id = d.boot_id
                  FOR UPDATE SKIP LOCKED) p;
    IF v_boots IS NULL THEN
        RETURN;
    END IF;

    -- New statements, so they see everything committed before the locks were taken.
    v_ids := needletrace.raise_alerts(p_collector_id, 'needletrace.sequence_gaps_alerted',
                                      needletrace.rule_sequence_gap(v_boots, v_after));
    DELETE FROM needletrace.sequence_holes h
     USING unnest(v_boots) AS k
     WHERE h.clinic_id = k.clinic_id AND h.device_serial = k.device_serial
       AND h.boot_id = k.boot_id AND h.revealed_at <= now() - v_after;

    -- Alerted gaps count as settled: advance, and decide the activity samples that waited.
    v_ids := v_ids || needletrace.raise_alerts(p_collector_id, 'needletrace.no_cartridge_alerted',
                          needletrace.rule_needling_without_cartridge(NULL, v_boots, NULL));

    RETURN QUERY SELECT * FROM needletrace.publish_alerts(v_ids);
END
$$;
COMMENT ON FUNCTION needletrace.check_sequence_gaps(text) IS
    'Raises SEQUENCE_GAP for the open holes due now (sequence_holes), then '
    'NEEDLING_WITHOUT_CARTRIDGE for the samples they settled. Called by each collector every few '
    'seconds in its own transaction; reads and locks only what is due.';

-- ---- roles and grants ------------------------------------------------------------------------------
-- needletrace_staff: clinic staff / compliance officers who read and acknowledge alerts.
-- The collector role may also insert acks, because `needletrace alerts ack` runs with the
-- collector's database URL; the auditor role stays read-only.
SELECT needletrace.ensure_role('needletrace_staff');

-- The functions that write: only the collector runs them.
SELECT needletrace.collector_may_run(ARRAY[
        'evaluate_rules(text)', 'check_sequence_gaps(text)',
        'mark_alerts_delivered(text, bigint[])', 'undelivered_alerts(text, int)',
        'publish_alerts(bigint[])', 'read_batch(bigint, interval)',
        'advance_boot_progress(needletrace.batch_boot[], bigint)',
        'track_holes(bigint, needletrace.boot_span[])',
        'raise_alerts(text, regclass, needletrace.alert_candidate[])',
        'settle_boots(needletrace.boot_key[], bigint)',
        'rule_cartridge_reused(bigint)', 'rule_cartridge_expired(bigint)',
        'rule_sterile_barrier_broken(bigint)', 'rule_cartridge_recalled(bigint)',
        'rule_depth_out_of_range(bigint)', 'rule_clock_skew(bigint, interval)',
        'rule_sequence_gap(needletrace.boot_key[], interval)',
        'rule_needling_without_cartridge(bigint, needletrace.boot_key[], needletrace.batch_session[])']);

GRANT SELECT ON needletrace.depth_policy, needletrace.depth_policy_clinic, needletrace.device_models,
                needletrace.recalled_lots, needletrace.settings
    TO needletrace_collector, needletrace_staff;
GRANT SELECT, INSERT ON needletrace.cartridge_first_use, needletrace.depth_violations_seen,
                        needletrace.no_cartridge_alerted, needletrace.clock_skew_alerted,
                        needletrace.sequence_gaps_alerted, needletrace.boot_progress,
                        needletrace.alert_deliveries, needletrace.alert_acks
    TO needletrace_collector;
-- The upsert of per-boot progress and the open holes are the only rewrites the rules need.
GRANT UPDATE ON needletrace.boot_progress TO needletrace_collector;
GRANT SELECT, INSERT, UPDATE, DELETE ON needletrace.sequence_holes TO needletrace_collector;
GRANT SELECT ON needletrace.alerts_open TO needletrace_collector;

GRANT USAGE ON SCHEMA needletrace TO needletrace_staff;
GRANT SELECT ON needletrace.alerts, needletrace.alerts_open, needletrace.alert_acks,
                needletrace.alert_deliveries TO needletrace_staff;
GRANT INSERT ON needletrace.alert_acks TO needletrace_staff;

GRANT SELECT ON ALL TABLES IN SCHEMA needletrace TO needletrace_auditor;
