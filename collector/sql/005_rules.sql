-- 005_rules.sql -- the compliance rules of DESIGN §3, one function per rule; the dispatchers
-- the collector calls are in 006_evaluate.sql.
--
-- Interface used by the collector (keep names, arguments and result columns):
--   needletrace.evaluate_rules(p_collector_id text)
--       RETURNS TABLE(alert_id bigint, clinic_id text, rule text, payload text)
--     Called in the batch transaction after the batch's rows are inserted. Evaluates the events
--     that this transaction inserted (events.tx = txid_current()), raises each new alert once,
--     sends pg_notify('needletrace_alert', payload) (delivered at commit) and returns it.
--   needletrace.check_sequence_gaps(p_collector_id text) -> same columns
--     Called every few seconds in its own short transaction (several replicas at once is fine).
--   needletrace.mark_alerts_delivered, needletrace.undelivered_alerts: see 004_alerts.sql.
--
-- A rule function (rule_*) says when its rule fires: it returns its candidates
-- (needletrace.alert_candidate: the alert and the state row of its "once per" key), sorted by
-- that key; needletrace.raise_alerts raises them. Rules read only this transaction's rows
-- (events.tx) plus the state and policy tables.
--
-- Concurrency (several replicas, READ COMMITTED): every rule is guarded by a state table whose
-- primary key is the "once per" key of the rule, written with INSERT … ON CONFLICT DO NOTHING
-- and rows sorted by that key, and every transaction takes these row locks in the same order
-- (boot_progress, cartridge_first_use, depth, skew, needling state, alerts), so concurrent
-- batches wait for each other instead of deadlocking, and whoever commits first owns the alert.
-- A deadlock (40P01) or serialization failure (40001, e.g. under REPEATABLE READ) can only make
-- a batch roll back and be retried by the collector; it never raises an alert twice or loses one.

-- A (device, boot).
CREATE TYPE needletrace.boot_key AS (
    clinic_id     text,
    device_serial text,
    boot_id       bigint
);

-- A session with needle activity in the batch: its first and last activity sample of the batch.
CREATE TYPE needletrace.batch_session AS (
    clinic_id     text,
    device_serial text,
    boot_id       bigint,
    session_id    text,
    a_min         bigint,
    a_max         bigint
);

-- ---- per-mount rules -----------------------------------------------------------------------------
-- The alert of rule p_rule on mount m: the cartridge's identity plus p_extra in details.
CREATE FUNCTION needletrace.mount_alert(p_rule text, m needletrace.events, p_extra jsonb)
    RETURNS needletrace.alert_candidate
    LANGUAGE sql STABLE AS $$
    SELECT ROW(p_rule, 'critical', m.clinic_id, m.device_serial, m.session_id, m.boot_id, m.seq,
               jsonb_build_object('gtin', m.gtin, 'lot', m.lot,
                                  'cartridge_serial', m.cartridge_serial,
                                  'expiry', to_char(m.expiry, 'YYYY-MM-DD'),
                                  'sterile_barrier_intact', m.sterile_barrier_intact,
                                  'device_time', needletrace.rfc3339(m.device_time)) || p_extra,
               NULL)::needletrace.alert_candidate
$$;

-- A use of a cartridge in CARTRIDGE_REUSED's details: where and when it was mounted.
CREATE FUNCTION needletrace.cartridge_use(p_clinic_id text, p_device_serial text,
                                          p_session_id text, p_boot_id bigint, p_seq bigint,
                                          p_device_time timestamptz)
    RETURNS jsonb
    LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('clinic_id', p_clinic_id, 'device_serial', p_device_serial,
                              'session_id', p_session_id, 'boot_id', p_boot_id, 'seq', p_seq,
                              'device_time', needletrace.rfc3339(p_device_time))
$$;

-- CARTRIDGE_REUSED: a mount in a session other than the cartridge's first, "first" by device time
-- (ties broken by clinic, device, boot, seq), whatever order the mounts arrive in.
-- Step 1 upserts the batch's earliest mount of each cartridge, in key order: a new cartridge is
-- recorded; a recorded one is replaced when the batch's mount is earlier, its old values kept in
-- prev_*. The upsert locks every recorded row it meets (replaced or not) until commit, waiting
-- for a concurrent batch that holds it (and re-checking against that batch's row once it
-- commits), so two batches with the same cartridge take turns and the later one compares with
-- what the earlier one wrote. Step 2, a new statement (READ COMMITTED: it sees what committed
-- meanwhile), alerts:
--   - each mount of the batch in another session than the (possibly new) first use;
--   - when a first use was replaced by one of another session: every stored mount of that
--     cartridge in the replaced session (it happened later, so it is the reuse), except the
--     batch's own (above) and those alerted already -- the alert goes to the later session,
--     raised by the transaction that brought the earlier use.
-- details: the mount alerted (the event's own fields plus "reuse") and "first_use" (both with
-- clinic, device, session, boot, seq and device time); "first_use_arrived_late" when the first
-- use arrived after the mount alerted.
CREATE FUNCTION needletrace.rule_cartridge_reused(p_tx bigint)
    RETURNS needletrace.alert_candidate[]
    LANGUAGE plpgsql AS $$
DECLARE
    v_moved needletrace.cartridge_first_use[];
BEGIN
    WITH m AS (
        SELECT DISTINCT ON (e.gtin, e.cartridge_serial) e.*
          FROM needletrace.events e
         WHERE e.tx = p_tx AND e.kind = 'cartridge_mounted'
           AND e.gtin IS NOT NULL AND e.cartridge_serial IS NOT NULL
         ORDER BY e.gtin, e.cartridge_serial, e.device_time, e.clinic_id, e.device_serial,
                  e.boot_id, e.seq
    ),
    up AS (
        INSERT INTO needletrace.cartridge_first_use AS f
               (gtin, cartridge_serial, clinic_id, device_serial, session_id, boot_id, seq,
                device_time)
        SELECT m.gtin, m.cartridge_serial, m.clinic_id, m.device_serial, m.session_id, m.boot_id,
               m.seq, m.device_time
          FROM m
         ORDER BY m.gtin, m.cartridge_serial
        ON CONFLICT (gtin, cartridge_serial) DO UPDATE
           SET clinic_id = EXCLUDED.clinic_id, device_serial = EXCLUDED.device_serial,
               session_id = EXCLUDED.session_id, boot_id = EXCLUDED.boot_id, seq = EXCLUDED.seq,
               device_time = EXCLUDED.device_time, recorded_at = now(),
               prev_clinic_id = f.clinic_id, prev_device_serial = f.device_serial,
               prev_session_id = f.session_id, prev_boot_id = f.boot_id, prev_seq = f.seq,
               prev_device_time = f.device_time
         WHERE (EXCLUDED.device_time, EXCLUDED.clinic_id, EXCLUDED.device_serial, EXCLUDED.boot_id,
                EXCLUDED.seq)
             < (f.device_time, f.clinic_id, f.device_serial, f.boot_id, f.seq)
        RETURNING f.*
    )
    -- (an inserted row has no prev_*; a replaced one within the same session raises nothing)
    SELECT coalesce(array_agg(ROW(up.*)::needletrace.cartridge_first_use
                              ORDER BY up.gtin, up.cartridge_serial), '{}')
      INTO v_moved
      FROM up
     WHERE up.prev_seq IS NOT NULL
       AND (up.prev_clinic_id, up.prev_device_serial, up.prev_session_id)
           IS DISTINCT FROM (up.clinic_id, up.device_serial, up.session_id);

    RETURN ARRAY(
        SELECT needletrace.mount_alert('CARTRIDGE_REUSED', e, jsonb_build_object(
                   'first_use', needletrace.cartridge_use(f.clinic_id, f.device_serial,
                                    f.session_id, f.boot_id, f.seq, f.device_time),
                   'reuse', needletrace.cartridge_use(e.clinic_id, e.device_serial, e.session_id,
                                e.boot_id, e.seq, e.device_time)))
          FROM needletrace.events e
          JOIN needletrace.cartridge_first_use f
            ON f.gtin = e.gtin AND f.cartridge_serial = e.cartridge_serial
         WHERE e.tx = p_tx AND e.kind = 'cartridge_mounted'
           AND (f.clinic_id, f.device_serial, f.session_id)
               IS DISTINCT FROM (e.clinic_id, e.device_serial, e.session_id)
        UNION ALL
        SELECT needletrace.mount_alert('CARTRIDGE_REUSED', e, jsonb_build_object(
                   'first_use', needletrace.cartridge_use(r.clinic_id, r.device_serial,
                                    r.session_id, r.boot_id, r.seq, r.device_time),
                   'reuse', needletrace.cartridge_use(e.clinic_id, e.device_serial, e.session_id,
                                e.boot_id, e.seq, e.device_time),
                   'first_use_arrived_late', true))
          FROM unnest(v_moved) AS r
          JOIN needletrace.events e
            ON e.gtin = r.gtin AND e.cartridge_serial = r.cartridge_serial
         WHERE e.kind = 'cartridge_mounted' AND e.tx <> p_tx
           AND (e.clinic_id, e.device_serial, e.session_id)
               IS NOT DISTINCT FROM (r.prev_clinic_id, r.prev_device_serial, r.prev_session_id)
           AND NOT EXISTS (SELECT 1 FROM needletrace.alerts a
                            WHERE a.rule = 'CARTRIDGE_REUSED' AND a.clinic_id = e.clinic_id
                              AND a.device_serial = e.device_serial AND a.boot_id = e.boot_id
                              AND a.seq = e.seq)
           AND NOT EXISTS (SELECT 1 FROM needletrace.alerts_folded z
                            WHERE z.rule = 'CARTRIDGE_REUSED' AND z.clinic_id = e.clinic_id
                              AND z.device_serial = e.device_serial AND z.boot_id = e.boot_id
                              AND z.seq = e.seq));
END
$$;
-- Replacing a first use is the only rewrite this rule needs.
GRANT UPDATE ON needletrace.cartridge_first_use TO needletrace_collector;

-- CARTRIDGE_EXPIRED: mounted after its expiry date.
CREATE FUNCTION needletrace.rule_cartridge_expired(p_tx bigint)
    RETURNS needletrace.alert_candidate[]
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN ARRAY(
        SELECT needletrace.mount_alert('CARTRIDGE_EXPIRED', e, jsonb_build_object(
                   'mounted_on', to_char(e.device_time AT TIME ZONE 'UTC', 'YYYY-MM-DD')))
          FROM needletrace.events e
         WHERE e.tx = p_tx AND e.kind = 'cartridge_mounted'
           AND e.expiry < (e.device_time AT TIME ZONE 'UTC')::date);
END
$$;

-- STERILE_BARRIER_BROKEN: mounted with sterile_barrier_intact = false.
CREATE FUNCTION needletrace.rule_sterile_barrier_broken(p_tx bigint)
    RETURNS needletrace.alert_candidate[]
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN ARRAY(
        SELECT needletrace.mount_alert('STERILE_BARRIER_BROKEN', e, '{}'::jsonb)
          FROM needletrace.events e
         WHERE e.tx = p_tx AND e.kind = 'cartridge_mounted'
           AND e.sterile_barrier_intact = false);
END
$$;

-- CARTRIDGE_RECALLED: its (gtin, lot) is in needletrace.recalled_lots.
CREATE FUNCTION needletrace.rule_cartridge_recalled(p_tx bigint)
    RETURNS needletrace.alert_candidate[]
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN ARRAY(
        SELECT needletrace.mount_alert('CARTRIDGE_RECALLED', e, jsonb_build_object(
                   'recall_reason', r.reason, 'recalled_at', needletrace.rfc3339(r.recalled_at)))
          FROM needletrace.events e
          JOIN needletrace.recalled_lots r ON r.gtin = e.gtin AND r.lot = e.lot
         WHERE e.tx = p_tx AND e.kind = 'cartridge_mounted');
END
$$;

-- ---- DEPTH_OUT_OF_RANGE ----------------------------------------------------------------------------
-- Limit = least(area limit (clinic override, else default, else the absolute maximum), model
-- max); once per (clinic, device, session, area, depth), on its earliest event (device time).
-- Critical above the limit + the depth_critical_margin_um setting or above the absolute maximum.
CREATE FUNCTION needletrace.rule_depth_out_of_range(p_tx bigint)
    RETURNS needletrace.alert_candidate[]
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_min_model int := (SELECT min(d.max_depth_um) FROM needletrace.device_models d);
    v_margin    int := needletrace.setting('depth_critical_margin_um')::int;
BEGIN
    RETURN ARRAY(
        WITH cand AS MATERIALIZED (
            SELECT e.clinic_id, e.device_serial, e.session_id, e.boot_id, e.seq, e.kind,
                   e.device_time, e.payload_sha256, e.depth_um,
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
            SELECT cand.*, r.device_model, dm.max_depth_um AS model_limit
              FROM cand
              LEFT JOIN needletrace.raw_messages r
                ON r.clinic_id = cand.clinic_id AND r.device_serial = cand.device_serial
               AND r.payload_sha256 = cand.payload_sha256
              LEFT JOIN needletrace.device_models dm ON dm.device_model = r.device_model
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

-- ---- CLOCK_SKEW ------------------------------------------------------------------------------------
-- Once per (clinic, device, boot), on the first (lowest seq) event whose device time is ahead of
-- its receive time by more than p_bound.
CREATE FUNCTION needletrace.rule_clock_skew(p_tx bigint, p_bound interval)
    RETURNS needletrace.alert_candidate[]
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN ARRAY(
        WITH first AS (
            SELECT DISTINCT ON (e.clinic_id, e.device_serial, e.boot_id)
                   e.clinic_id, e.device_serial, e.boot_id, e.seq, e.session_id, e.device_time,
                   e.received_at
              FROM needletrace.events e
             WHERE e.tx = p_tx AND e.device_time > e.received_at + p_bound
             ORDER BY e.clinic_id, e.device_serial, e.boot_id, e.seq
        )
        SELECT ROW('CLOCK_SKEW', 'warning', f.clinic_id, f.device_serial, f.session_id, f.boot_id,
                   f.seq,
                   jsonb_build_object('device_time', needletrace.rfc3339(f.device_time),
                                      'received_at', needletrace.rfc3339(f.received_at),
                                      'ahead_ms', floor(extract(epoch FROM f.device_time - f.received_at)
                                                        * 1000)::bigint,
                                      'bound', p_bound::text,
                                      'bound_ms', floor(extract(epoch FROM p_bound) * 1000)::bigint),
                   jsonb_build_object('clinic_id', f.clinic_id, 'device_serial', f.device_serial,
                                      'boot_id', f.boot_id, 'seq', f.seq)
               )::needletrace.alert_candidate
          FROM first f
         ORDER BY f.clinic_id, f.device_serial, f.boot_id);
END
$$;

-- ---- SEQUENCE_GAP ----------------------------------------------------------------------------------
-- For the given boots (locked by the caller): their open holes (sequence_holes) revealed -- by
-- the earliest-received event above them -- at least p_after ago. One index lookup per boot.
CREATE FUNCTION needletrace.rule_sequence_gap(p_boots needletrace.boot_key[], p_after interval)
    RETURNS needletrace.alert_candidate[]
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN ARRAY(
        SELECT ROW('SEQUENCE_GAP', 'warning', h.clinic_id, h.device_serial, NULL, h.boot_id,
                   h.gap_start,
                   jsonb_build_object('missing_from', h.gap_start, 'missing_to', h.gap_end,
                                      -- numeric: no bigint arithmetic on device values
                                      'missing_count', h.gap_end::numeric - h.gap_start + 1,
                                      'revealed_by_seq', h.revealed_by_seq,
                                      'revealed_at', needletrace.rfc3339(h.revealed_at),
                                      'gap_after', p_after::text),
                   jsonb_build_object('clinic_id', h.clinic_id, 'device_serial', h.device_serial,
                                      'boot_id', h.boot_id, 'gap_start', h.gap_start,
                                      'gap_end', h.gap_end)
               )::needletrace.alert_candidate
          FROM unnest(p_boots) AS k
          JOIN needletrace.sequence_holes h
            ON h.clinic_id = k.clinic_id AND h.device_serial = k.device_serial
           AND h.boot_id = k.boot_id
         WHERE h.revealed_at <= now() - p_after
         ORDER BY h.clinic_id, h.device_serial, h.boot_id, h.gap_start, h.gap_end);
END
$$;

-- ---- settling boots ----------------------------------------------------------------------------------
-- For the given boots (whose boot_progress rows the caller has locked, and whose holes it has
-- brought up to date): moves settled_seq up to the start of the boot's lowest open hole - 1, or
-- max_seq when it has none (every seq up to there is present or inside an alerted gap: alerted
-- gaps lie below the open holes), and returns the activity samples that became settled -- read
-- by one range of the events' primary key per advanced boot, each sample once --
-- NEEDLING_WITHOUT_CARTRIDGE decides a sample only then; plus, with p_tx, the samples of that
-- transaction at or below the old settled_seq (they can only have filled an alerted gap).
CREATE FUNCTION needletrace.settle_boots(p_boots needletrace.boot_key[], p_tx bigint)
    RETURNS TABLE(clinic_id text, device_serial text, boot_id bigint, session_id text, seq bigint)
    LANGUAGE plpgsql ROWS 50 AS $$
#variable_conflict use_column
BEGIN
    IF p_boots IS NULL OR cardinality(p_boots) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH k AS MATERIALIZED (
        SELECT b.clinic_id, b.device_serial, b.boot_id, b.max_seq, b.settled_seq,
               -- (gap_start >= 1: the decoder refuses seq 0, so - 1 cannot overflow)
               coalesce((SELECT h.gap_start - 1 FROM needletrace.sequence_holes h
                          WHERE h.clinic_id = b.clinic_id AND h.device_serial = b.device_serial
                            AND h.boot_id = b.boot_id
                          ORDER BY h.gap_start LIMIT 1), b.max_seq) AS new_settled
          FROM unnest(p_boots) AS u
          JOIN needletrace.boot_progress b
            ON b.clinic_id = u.clinic_id AND b.device_serial = u.device_serial
           AND b.boot_id = u.boot_id
    ),
    -- Settled ranges (old, new] of the advanced boots.
    adv AS (
        UPDATE needletrace.boot_progress b
           SET settled_seq = k.new_settled, updated_at = now()
          FROM k
         WHERE b.clinic_id = k.clinic_id AND b.device_serial = k.device_serial
           AND b.boot_id = k.boot_id AND k.new_settled > b.settled_seq
        RETURNING b.clinic_id, b.device_serial, b.boot_id, k.settled_seq AS old_settled,
                  k.new_settled
    ),
    -- This transaction's activity samples (events_tx_idx: the batch's rows, not the boots').
    late AS MATERIALIZED (
        SELECT e.clinic_id, e.device_serial, e.boot_id, e.session_id, e.seq
          FROM needletrace.events e
         WHERE p_tx IS NOT NULL AND e.tx = p_tx AND e.kind = 'needle_activity'
    )
    SELECT e.clinic_id, e.device_serial, e.boot_id, e.session_id, e.seq
      FROM adv CROSS JOIN LATERAL (
               SELECT e.clinic_id, e.device_serial, e.boot_id, e.session_id, e.seq
                 FROM needletrace.events e
                WHERE e.clinic_id = adv.clinic_id AND e.device_serial = adv.device_serial
                  AND e.boot_id = adv.boot_id AND e.seq > adv.old_settled
                  AND e.seq <= adv.new_settled AND e.kind = 'needle_activity'
               OFFSET 0) e
    UNION ALL
    SELECT l.clinic_id, l.device_serial, l.boot_id, l.session_id, l.seq
      FROM late l JOIN k
        ON k.clinic_id = l.clinic_id AND k.device_serial = l.device_serial
       AND k.boot_id = l.boot_id AND l.seq <= k.settled_seq;
END
$$;

-- ---- NEEDLING_WITHOUT_CARTRIDGE ------------------------------------------------------------------------
-- The alert of NEEDLING_WITHOUT_CARTRIDGE on the activity sample (p_boot_id, p_seq) of a session,
-- with its state row; p_last_unmount is the seq of the session's last cartridge change before the
-- sample (an unmount: a mount would have covered it), NULL when there was none.
CREATE FUNCTION needletrace.no_cartridge_alert(p_clinic_id text, p_device_serial text,
                                               p_session_id text, p_boot_id bigint, p_seq bigint,
                                               p_device_time timestamptz, p_last_unmount bigint)
    RETURNS needletrace.alert_candidate
    LANGUAGE sql STABLE AS $$
    SELECT ROW('NEEDLING_WITHOUT_CARTRIDGE', 'critical', p_clinic_id, p_device_serial, p_session_id,
               p_boot_id, p_seq,
               jsonb_build_object(
                   'device_time', needletrace.rfc3339(p_device_time),
                   'last_cartridge_event',
                   CASE WHEN p_last_unmount IS NULL THEN NULL
                        ELSE jsonb_build_object('kind', 'cartridge_unmounted',
                                                'seq', p_last_unmount) END),
               jsonb_build_object('clinic_id', p_clinic_id, 'device_serial', p_device_serial,
                                  'session_id', coalesce(p_session_id, ''),
                                  'boot_id', p_boot_id, 'seq', p_seq)
           )::needletrace.alert_candidate
$$;

-- Needle activity in a session with no mounted cartridge; once per session, on its first such
-- sample. Decided only for settled samples (every earlier seq present, so no late mount can
-- change the answer): those of p_boots that settle_boots settles now, and, for the batch's
-- sessions (p_sessions) of boots not in p_boots -- boots the batch alone moved forward, so their
-- samples are exactly the session's activity rows in a_min..a_max -- from these bounds. Sessions
-- whose samples all follow a mount of the batch, with no unmount of the batch in between, are
-- left out of p_sessions by read_batch: they cannot raise anything.
CREATE FUNCTION needletrace.rule_needling_without_cartridge(p_tx bigint,
                                                            p_boots needletrace.boot_key[],
                                                            p_sessions needletrace.batch_session[])
    RETURNS needletrace.alert_candidate[]
    LANGUAGE plpgsql AS $$
BEGIN
    RETURN ARRAY(
        WITH act AS MATERIALIZED (
            SELECT * FROM needletrace.settle_boots(p_boots, p_tx)
        ),
        -- Per (boot, session) of the samples to decide: first and last sample; fast = the
        -- samples are all the session's activity rows of the boot in a_min..a_max (p_sessions).
        agg AS MATERIALIZED (
            SELECT act.clinic_id, act.device_serial, act.boot_id, act.session_id,
                   min(act.seq) AS a_min, max(act.seq) AS a_max, false AS fast
              FROM act
             GROUP BY 1, 2, 3, 4
            UNION ALL
            SELECT f.clinic_id, f.device_serial, f.boot_id, f.session_id, f.a_min, f.a_max, true
              FROM unnest(p_sessions) AS f
             WHERE NOT EXISTS (SELECT 1 FROM unnest(p_boots) AS k
                                WHERE k.clinic_id = f.clinic_id AND k.device_serial = f.device_serial
                                  AND k.boot_id = f.boot_id)
        ),
        agg2 AS (
            SELECT agg.* FROM agg
             WHERE NOT EXISTS (SELECT 1 FROM needletrace.no_cartridge_alerted n
                                WHERE n.clinic_id = agg.clinic_id AND n.device_serial = agg.device_serial
                                  AND n.session_id = coalesce(agg.session_id, ''))
        ),
        -- The session's mounts/unmounts before its last sample (mount: true for a mount). No
        -- arithmetic on seq: the latest change is the one with the greatest seq (unique per boot).
        -- One index lookup (events_cartridge_change_idx) per session: OFFSET 0 keeps the
        -- subquery per row, so the plan never turns into a scan of every mount of the fleet
        -- (a hash join the planner picks when its estimates of this batch's sessions are off).
        chg AS MATERIALIZED (
            SELECT agg2.clinic_id, agg2.device_serial, agg2.boot_id, agg2.session_id, m.seq,
                   m.kind = 'cartridge_mounted' AS mount
              FROM agg2 CROSS JOIN LATERAL (
                       SELECT e.seq, e.kind
                         FROM needletrace.events e
                        WHERE e.clinic_id = agg2.clinic_id AND e.device_serial = agg2.device_serial
                          AND e.boot_id = agg2.boot_id AND e.session_id = agg2.session_id
                          AND e.seq < agg2.a_max
                          AND e.kind IN ('cartridge_mounted', 'cartridge_unmounted')
                       OFFSET 0) m
        ),
        cls AS (
            SELECT agg2.clinic_id, agg2.device_serial, agg2.boot_id, agg2.session_id, agg2.a_min,
                   agg2.a_max, agg2.fast,
                   max(chg.seq) FILTER (WHERE chg.seq < agg2.a_min) AS before_seq,
                   (array_agg(chg.mount ORDER BY chg.seq DESC)
                        FILTER (WHERE chg.seq < agg2.a_min))[1] AS before_mount,
                   coalesce(bool_or(chg.seq > agg2.a_min), false) AS changes_within
              FROM agg2 LEFT JOIN chg
                ON chg.clinic_id = agg2.clinic_id AND chg.device_serial = agg2.device_serial
               AND chg.boot_id = agg2.boot_id AND chg.session_id = agg2.session_id
             GROUP BY 1, 2, 3, 4, 5, 6, 7
        ),
        -- Common case: no mount/unmount among the samples, so the first sample decides.
        bad_simple AS (
            SELECT cls.clinic_id, cls.device_serial, cls.boot_id, cls.session_id, cls.a_min AS seq,
                   cls.before_seq AS last_unmount
              FROM cls
             WHERE NOT cls.changes_within AND NOT coalesce(cls.before_mount, false)
        ),
        -- A cartridge changed among the samples: look at each sample of those sessions.
        comb AS (
            SELECT act.clinic_id, act.device_serial, act.boot_id, act.session_id, act.seq,
                   NULL::boolean AS mount
              FROM act JOIN cls
                ON cls.clinic_id = act.clinic_id AND cls.device_serial = act.device_serial
               AND cls.boot_id = act.boot_id AND cls.session_id IS NOT DISTINCT FROM act.session_id
             WHERE cls.changes_within
            UNION ALL
            -- (the same for the sessions from p_sessions: their samples are the activity rows in
            -- a_min..a_max; one primary-key range per session, whatever the planner's estimates)
            SELECT cls.clinic_id, cls.device_serial, cls.boot_id, e.session_id, e.seq, NULL::boolean
              FROM cls CROSS JOIN LATERAL (
                       SELECT e.session_id, e.seq
                         FROM needletrace.events e
                        WHERE e.clinic_id = cls.clinic_id AND e.device_serial = cls.device_serial
                          AND e.boot_id = cls.boot_id AND e.seq BETWEEN cls.a_min AND cls.a_max
                          AND e.kind = 'needle_activity'
                          AND e.session_id IS NOT DISTINCT FROM cls.session_id
                       OFFSET 0) e
             WHERE cls.fast AND cls.changes_within
            UNION ALL
            SELECT chg.clinic_id, chg.device_serial, chg.boot_id, chg.session_id, chg.seq, chg.mount
              FROM chg JOIN cls
                ON cls.clinic_id = chg.clinic_id AND cls.device_serial = chg.device_serial
               AND cls.boot_id = chg.boot_id AND cls.session_id = chg.session_id
             WHERE cls.changes_within
        ),
        -- Each row with the seq of the latest change at or before it (last_seq), then whether
        -- that change was a mount (the one row of its group with a mount flag).
        lat0 AS (
            SELECT comb.*,
                   max(comb.seq) FILTER (WHERE comb.mount IS NOT NULL)
                       OVER (PARTITION BY comb.clinic_id, comb.device_serial, comb.boot_id,
                                          comb.session_id
                             ORDER BY comb.seq ROWS UNBOUNDED PRECEDING) AS last_seq
              FROM comb
        ),
        lat AS (
            SELECT lat0.*,
                   bool_or(lat0.mount) OVER (PARTITION BY lat0.clinic_id, lat0.device_serial,
                                                          lat0.boot_id, lat0.session_id,
                                                          lat0.last_seq) AS last_mount
              FROM lat0
        ),
        bad_any AS (
            SELECT bad_simple.* FROM bad_simple
            UNION ALL
            SELECT lat.clinic_id, lat.device_serial, lat.boot_id, lat.session_id, lat.seq,
                   lat.last_seq
              FROM lat
             WHERE lat.mount IS NULL AND NOT coalesce(lat.last_mount, false)
        ),
        bad AS (
            SELECT DISTINCT ON (b.clinic_id, b.device_serial, coalesce(b.session_id, ''))
                   b.clinic_id, b.device_serial, b.boot_id, b.session_id, b.seq, b.last_unmount,
                   e.device_time
              FROM bad_any b
              -- one primary-key lookup per sample, whatever the planner's estimates
             CROSS JOIN LATERAL (
                       SELECT e.device_time
                         FROM needletrace.events e
                        WHERE e.clinic_id = b.clinic_id AND e.device_serial = b.device_serial
                          AND e.boot_id = b.boot_id AND e.seq = b.seq
                       OFFSET 0) e
             ORDER BY b.clinic_id, b.device_serial, coalesce(b.session_id, ''), b.seq
        )
        SELECT needletrace.no_cartridge_alert(bad.clinic_id, bad.device_serial, bad.session_id,
                                              bad.boot_id, bad.seq, bad.device_time, bad.last_unmount)
          FROM bad
         ORDER BY bad.clinic_id, bad.device_serial, coalesce(bad.session_id, ''));
END
$$;

COMMENT ON FUNCTION needletrace.rule_cartridge_reused(bigint) IS
    'CARTRIDGE_REUSED (critical): a cartridge (gtin, serial) mounted in a session other than the '
    'first session it was mounted in (by device time), on any device in any clinic; a first use '
    'that arrives late moves the alert to the later session.';
COMMENT ON FUNCTION needletrace.rule_cartridge_expired(bigint) IS
    'CARTRIDGE_EXPIRED (critical): a cartridge mounted after its expiry date.';
COMMENT ON FUNCTION needletrace.rule_sterile_barrier_broken(bigint) IS
    'STERILE_BARRIER_BROKEN (critical): a cartridge mounted with sterile_barrier_intact = false.';
COMMENT ON FUNCTION needletrace.rule_cartridge_recalled(bigint) IS
    'CARTRIDGE_RECALLED (critical): a cartridge whose (gtin, lot) is in needletrace.recalled_lots.';
COMMENT ON FUNCTION needletrace.rule_depth_out_of_range(bigint) IS
    'DEPTH_OUT_OF_RANGE (warning; critical above limit + depth_critical_margin_um or above '
    'depth_hard_max_um()): a setting or activity deeper than the area policy (clinic override, '
    'else default) or the model maximum; once per (session, area, depth).';
COMMENT ON FUNCTION needletrace.rule_clock_skew(bigint, interval) IS
    'CLOCK_SKEW (warning): an event''s device time ahead of its receive time by more than the '
    'clock_skew_bound setting; once per (device, boot).';
COMMENT ON FUNCTION needletrace.rule_sequence_gap(needletrace.boot_key[], interval) IS
    'SEQUENCE_GAP (warning): seq numbers of a (device, boot) still missing sequence_gap_after '
    'after a later seq arrived; once per gap.';
COMMENT ON FUNCTION needletrace.rule_needling_without_cartridge(bigint, needletrace.boot_key[],
                                                                needletrace.batch_session[]) IS
    'NEEDLING_WITHOUT_CARTRIDGE (critical): needle activity in a session with no mounted '
    'cartridge; once per session, decided when the sample''s boot is settled up to it.';
