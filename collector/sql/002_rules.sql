-- 002_rules.sql -- the compliance rules of DESIGN §3, evaluated in SQL inside each batch
-- transaction, with their policy tables, their state, and alert delivery/ack bookkeeping.
--
-- Interface used by the collector (keep names, arguments and result columns):
--   needletrace.evaluate_rules(p_collector_id text)
--       RETURNS TABLE(alert_id bigint, clinic_id text, rule text, payload text)
--     Called in the batch transaction after the batch's rows are inserted. Evaluates the events
--     that this transaction inserted (events.tx = txid_current()), raises each new alert once,
--     sends pg_notify('needletrace_alert', payload) (delivered at commit) and returns it.
--   needletrace.check_sequence_gaps(p_collector_id text) -> same columns
--     Called every few seconds in its own short transaction (several replicas at once is fine).
--   needletrace.mark_alerts_delivered(p_collector_id text, p_alert_ids bigint[]) RETURNS int
--   needletrace.undelivered_alerts(p_collector_id text, p_limit int) -> same columns
-- payload is compact JSON: {"alert_id":..,"rule":..,"severity":..,"clinic_id":..,
--   "device_serial":..,"session_id":..|null,"boot_id":..,"seq":..,"raised_at":"…Z","details":{..}}
--
-- Concurrency (several replicas, READ COMMITTED): every rule is guarded by a state table whose
-- primary key is the "once per" key of the rule, written with INSERT … ON CONFLICT DO NOTHING
-- and rows sorted by that key, and every transaction takes these row locks in the same order
-- (boot_progress, cartridge_first_use, depth, skew, needling state, alerts), so concurrent
-- batches wait for each other instead of deadlocking, and whoever commits first owns the alert.
-- A deadlock (40P01) or serialization failure (40001, e.g. under REPEATABLE READ) can only make
-- a batch roll back and be retried by the collector; it never raises an alert twice or loses one.

-- ---- events: which transaction inserted a row ------------------------------------------------
-- txid_current() is STABLE, so this is a "fast default": no table rewrite, existing rows read
-- the migration's own transaction id, which no collector transaction can ever have. Rows skipped
-- by ON CONFLICT DO NOTHING get no new row, so a replayed message is never evaluated again.
ALTER TABLE needletrace.events ADD COLUMN tx bigint NOT NULL DEFAULT txid_current();
-- btree, not BRIN. Measured (PG 15, 1M-row binary COPY into events with its 001 indexes, median
-- of 6 runs on a noisy 2-core VM): no tx index 3.8 s, btree 4.4 s (~+14%, noisy: 0-25%), BRIN
-- 3.7 s (~0%). But finding this transaction's 5,000 rows takes 0.8 ms with the btree (index-only
-- scan) against 2.0 ms with BRIN right after a VACUUM (lossy bitmap: every page of the last
-- block ranges), and BRIN gets worse as not-yet-summarised pages pile up between VACUUMs. tx only
-- grows, so btree inserts always hit the rightmost leaf; the index stays small (dedup).
CREATE INDEX events_tx_idx ON needletrace.events (tx);
-- The batch's cartridge mounts (the per-mount rules), without reading the batch's other rows.
-- Partial: only mounts (~6% of events) pay for it.
CREATE INDEX events_tx_mounted_idx ON needletrace.events (tx) WHERE kind = 'cartridge_mounted';
-- Cartridge mounts/unmounts per (boot, session): NEEDLING_WITHOUT_CARTRIDGE looks up the latest
-- one before an activity sample. Partial, so only the (rare) mount/unmount rows pay for it.
CREATE INDEX events_cartridge_change_idx
    ON needletrace.events (clinic_id, device_serial, boot_id, session_id, seq)
    WHERE kind IN ('cartridge_mounted', 'cartridge_unmounted');

-- ---- alerts: who raised it; lookup by id ------------------------------------------------------
ALTER TABLE needletrace.alerts ADD COLUMN collector_id text;
CREATE INDEX alerts_alert_id_idx ON needletrace.alerts (alert_id);

-- ---- policy (data, not code: read at each evaluation, so a change applies to the next batch) --
-- Default maximum needle depth per treatment area (DESIGN §3 seeds; a clinic's medical director
-- sets the real values). 'unspecified' (the pen did not say) gets the most conservative limit.
CREATE TABLE needletrace.depth_policy (
    area         text PRIMARY KEY CHECK (area IN (
                     'unspecified', 'forehead', 'periorbital', 'nose', 'cheeks',
                     'perioral', 'chin', 'neck', 'decolletage', 'scalp', 'body')),
    max_depth_um int  NOT NULL CHECK (max_depth_um BETWEEN 0 AND 2500),
    note         text
);
INSERT INTO needletrace.depth_policy (area, max_depth_um, note) VALUES
    ('periorbital',  500, 'DESIGN §3 seed: 0.5 mm'),
    ('forehead',     750, 'DESIGN §3 seed: 0.75 mm'),
    ('nose',         750, 'DESIGN §3 seed: 0.75 mm'),
    ('perioral',     750, 'DESIGN §3 seed: 0.75 mm'),
    ('cheeks',      1500, 'DESIGN §3 seed: 1.5 mm'),
    ('chin',        1500, 'DESIGN §3 seed: 1.5 mm'),
    ('neck',        1000, 'DESIGN §3 seed: 1.0 mm'),
    ('decolletage', 1000, 'DESIGN §3 seed: 1.0 mm'),
    ('scalp',       1500, 'DESIGN §3 seed: 1.5 mm'),
    ('body',        2500, 'DESIGN §3 seed: 2.5 mm (the absolute maximum)'),
    ('unspecified',  500, 'area not reported: the most conservative limit (periorbital)');

-- Per-clinic overrides: when a row exists for (clinic, area) it replaces the default.
CREATE TABLE needletrace.depth_policy_clinic (
    clinic_id    text NOT NULL,
    area         text NOT NULL REFERENCES needletrace.depth_policy (area),
    max_depth_um int  NOT NULL CHECK (max_depth_um BETWEEN 0 AND 2500),
    note         text,
    PRIMARY KEY (clinic_id, area)
);

-- Per-device-model maximum (the message's device_model): the limit is the lower of the two.
CREATE TABLE needletrace.device_models (
    device_model text PRIMARY KEY,
    max_depth_um int  NOT NULL CHECK (max_depth_um BETWEEN 0 AND 5000),
    note         text
);
INSERT INTO needletrace.device_models (device_model, max_depth_um, note)
    VALUES ('NP-300', 2500, 'the simulator''s model');

-- Recalled cartridge lots (GS1 (01) gtin + (10) lot).
CREATE TABLE needletrace.recalled_lots (
    gtin        text        NOT NULL,
    lot         text        NOT NULL,
    recalled_at timestamptz NOT NULL DEFAULT now(),
    reason      text,
    PRIMARY KEY (gtin, lot)
);

-- Rule settings. Known keys are validated on write (interval values must parse and be > 0).
CREATE TABLE needletrace.settings (
    key   text PRIMARY KEY,
    value text NOT NULL,
    note  text
);

CREATE FUNCTION needletrace.settings_check() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    v interval;
BEGIN
    IF NEW.key IN ('clock_skew_bound', 'sequence_gap_after') THEN
        BEGIN
            v := NEW.value::interval;
        EXCEPTION WHEN others THEN
            RAISE EXCEPTION 'needletrace.settings: % = "%" is not an interval', NEW.key, NEW.value
                USING ERRCODE = 'check_violation', HINT = 'e.g. ''5 minutes'', ''30 seconds''';
        END;
        IF v <= interval '0' THEN
            RAISE EXCEPTION 'needletrace.settings: % = "%" must be positive', NEW.key, NEW.value
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER settings_check BEFORE INSERT OR UPDATE ON needletrace.settings
    FOR EACH ROW EXECUTE FUNCTION needletrace.settings_check();

INSERT INTO needletrace.settings (key, value, note) VALUES
    ('clock_skew_bound', '5 minutes',
     'CLOCK_SKEW: an event''s device time may be ahead of its receive time by this much'),
    ('sequence_gap_after', '10 minutes',
     'SEQUENCE_GAP: how long a missing seq may stay missing after a later seq arrived');

-- An interval setting (the default when the row is missing).
CREATE FUNCTION needletrace.setting_interval(p_key text, p_default interval) RETURNS interval
    LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT value::interval FROM needletrace.settings WHERE key = p_key), p_default)
$$;

-- ---- rule state (what has been seen / alerted already) ---------------------------------------
-- First recorded mount of each cartridge. Global by nature: a cartridge's identity is
-- (gtin, serial) and reuse must be caught across devices and clinics, so this table has no
-- clinic_id in its key (under Citus: a reference table, or distributed by gtin).
CREATE TABLE needletrace.cartridge_first_use (
    gtin             text        NOT NULL,
    cartridge_serial text        NOT NULL,
    clinic_id        text        NOT NULL,
    device_serial    text        NOT NULL,
    session_id       text,
    boot_id          bigint      NOT NULL,
    seq              bigint      NOT NULL,
    device_time      timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gtin, cartridge_serial)
);

-- DEPTH_OUT_OF_RANGE: once per (clinic, device, session, area, depth).
CREATE TABLE needletrace.depth_violations_seen (
    clinic_id     text   NOT NULL,
    device_serial text   NOT NULL,
    session_id    text   NOT NULL,
    area          text   NOT NULL,
    depth_um      int    NOT NULL,
    boot_id       bigint NOT NULL,
    seq           bigint NOT NULL,
    PRIMARY KEY (clinic_id, device_serial, session_id, area, depth_um)
);

-- NEEDLING_WITHOUT_CARTRIDGE: once per session.
CREATE TABLE needletrace.no_cartridge_alerted (
    clinic_id     text   NOT NULL,
    device_serial text   NOT NULL,
    session_id    text   NOT NULL,
    boot_id       bigint NOT NULL,
    seq           bigint NOT NULL,
    PRIMARY KEY (clinic_id, device_serial, session_id)
);

-- CLOCK_SKEW: once per (clinic, device, boot).
CREATE TABLE needletrace.clock_skew_alerted (
    clinic_id     text   NOT NULL,
    device_serial text   NOT NULL,
    boot_id       bigint NOT NULL,
    seq           bigint NOT NULL,
    PRIMARY KEY (clinic_id, device_serial, boot_id)
);

-- SEQUENCE_GAP: gaps alerted (never alerted again, even when partly filled later).
CREATE TABLE needletrace.sequence_gaps_alerted (
    clinic_id     text   NOT NULL,
    device_serial text   NOT NULL,
    boot_id       bigint NOT NULL,
    gap_start     bigint NOT NULL,
    gap_end       bigint NOT NULL CHECK (gap_end >= gap_start),
    PRIMARY KEY (clinic_id, device_serial, boot_id, gap_start, gap_end)
);

-- Per-boot progress, maintained by evaluate_rules from each batch's new events:
--   max_seq, n_events: a gap can only exist where n_events < max_seq;
--   settled_seq: every seq 1..settled_seq is present or inside an alerted gap. Events above it
--   may still be preceded by an event that has not arrived yet (out of order, e.g. two replicas
--   on a shared subscription), so NEEDLING_WITHOUT_CARTRIDGE decides an activity sample only
--   once it is settled. The row is locked (upsert) by the batch that advances it, which makes
--   every advance -- and every such decision -- happen exactly once.
CREATE TABLE needletrace.boot_progress (
    clinic_id     text        NOT NULL,
    device_serial text        NOT NULL,
    boot_id       bigint      NOT NULL,
    max_seq       bigint      NOT NULL,
    n_events      bigint      NOT NULL,
    settled_seq   bigint      NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, device_serial, boot_id)
);
-- The boots check_sequence_gaps has to look at: normally none, so the check costs nothing.
CREATE INDEX boot_progress_open_idx ON needletrace.boot_progress (clinic_id, device_serial, boot_id)
    WHERE settled_seq < max_seq;

-- ---- alert delivery and acknowledgement (alerts themselves stay append-only) ------------------
CREATE TABLE needletrace.alert_deliveries (
    clinic_id    text        NOT NULL,
    alert_id     bigint      NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    collector_id text        NOT NULL,
    PRIMARY KEY (clinic_id, alert_id),
    FOREIGN KEY (clinic_id, alert_id) REFERENCES needletrace.alerts (clinic_id, alert_id)
);
CREATE INDEX alert_deliveries_alert_id_idx ON needletrace.alert_deliveries (alert_id);

CREATE TABLE needletrace.alert_acks (
    clinic_id text        NOT NULL,
    alert_id  bigint      NOT NULL,
    acked_by  text        NOT NULL CHECK (acked_by <> ''),
    note      text,
    acked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, alert_id, acked_at),
    FOREIGN KEY (clinic_id, alert_id) REFERENCES needletrace.alerts (clinic_id, alert_id)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['alert_deliveries', 'alert_acks'] LOOP
        EXECUTE format('CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON needletrace.%I '
                       'FOR EACH ROW EXECUTE FUNCTION needletrace.refuse_change()', t);
        EXECUTE format('CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON needletrace.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION needletrace.refuse_change()', t);
        EXECUTE format('ALTER TABLE needletrace.%I ENABLE ALWAYS TRIGGER append_only', t);
        EXECUTE format('ALTER TABLE needletrace.%I ENABLE ALWAYS TRIGGER append_only_truncate', t);
    END LOOP;
END
$$;

-- Alerts nobody has acknowledged yet, with the delivery time when published.
CREATE VIEW needletrace.alerts_open AS
SELECT a.*, d.published_at
  FROM needletrace.alerts a
  LEFT JOIN needletrace.alert_deliveries d ON d.clinic_id = a.clinic_id AND d.alert_id = a.alert_id
 WHERE NOT EXISTS (SELECT 1 FROM needletrace.alert_acks k
                    WHERE k.clinic_id = a.clinic_id AND k.alert_id = a.alert_id);

-- ---- JSON helpers ------------------------------------------------------------------------------
-- jsonb as compact JSON text (no spaces; object keys sorted).
CREATE FUNCTION needletrace.json_compact(j jsonb) RETURNS text
    LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    CASE jsonb_typeof(j)
    WHEN 'object' THEN
        RETURN '{' || coalesce((SELECT string_agg(to_json(k)::text || ':' || needletrace.json_compact(v),
                                                  ',' ORDER BY k)
                                  FROM jsonb_each(j) AS t(k, v)), '') || '}';
    WHEN 'array' THEN
        RETURN '[' || coalesce((SELECT string_agg(needletrace.json_compact(v), ',' ORDER BY n)
                                  FROM jsonb_array_elements(j) WITH ORDINALITY AS t(v, n)), '') || ']';
    ELSE
        RETURN j::text;
    END CASE;
END
$$;

-- RFC 3339 UTC with milliseconds, e.g. 2026-11-21T13:00:00.123Z.
CREATE FUNCTION needletrace.rfc3339(t timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- The published form of an alert (MQTT and NOTIFY).
CREATE FUNCTION needletrace.alert_payload(a needletrace.alerts) RETURNS text
    LANGUAGE sql STABLE AS $$
    SELECT '{"alert_id":' || a.alert_id
        || ',"rule":' || to_json(a.rule)::text
        || ',"severity":' || to_json(a.severity)::text
        || ',"clinic_id":' || to_json(a.clinic_id)::text
        || ',"device_serial":' || to_json(a.device_serial)::text
        || ',"session_id":' || coalesce(to_json(a.session_id)::text, 'null')
        || ',"boot_id":' || a.boot_id
        || ',"seq":' || a.seq
        || ',"raised_at":"' || needletrace.rfc3339(a.raised_at) || '"'
        || ',"details":' || needletrace.json_compact(a.details)
        || '}'
$$;

-- Notifies and returns the given new alerts, oldest first.
CREATE FUNCTION needletrace.publish_alerts(p_ids bigint[])
    RETURNS TABLE(alert_id bigint, clinic_id text, rule text, payload text)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF p_ids IS NULL OR cardinality(p_ids) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH p AS (
        SELECT a.alert_id, a.clinic_id, a.rule, needletrace.alert_payload(a) AS payload
          FROM needletrace.alerts a
         WHERE a.alert_id = ANY (p_ids)
         ORDER BY a.alert_id
    ), n AS (
        SELECT p.*, pg_notify('needletrace_alert', p.payload) FROM p
    )
    SELECT n.alert_id, n.clinic_id, n.rule, n.payload FROM n ORDER BY n.alert_id;
END
$$;

-- ---- settling boots: advance settled_seq and decide NEEDLING_WITHOUT_CARTRIDGE -----------------
-- For the given boots (whose boot_progress rows the caller has locked): moves settled_seq up to
-- the highest s such that every seq in 1..s is present or inside an alerted gap, and decides
-- NEEDLING_WITHOUT_CARTRIDGE for the activity samples that became settled (plus, with p_tx,
-- late samples of that transaction that fell into an alerted gap). Returns the new alert ids.
--
-- From evaluate_rules (p_tx), two shortcuts. p_b_min/p_b_max/p_b_n: the batch's first and last
-- seq and row count per boot; a boot the batch alone moved forward -- already settled by
-- evaluate_rules's upsert, to the batch's last seq, from just below its first seq, the batch's
-- rows being all of that range: settled_seq = max_seq = p_b_max and p_b_n = p_b_max - p_b_min + 1
-- (nothing else can leave a boot like that) -- is "fast" and is not re-read here. p_s_*:
-- sessions with activity in the batch, each with its first and last activity sample of the
-- batch; those of fast boots (or of boots not passed at all) are decided from these, since
-- their samples are exactly the boot's activity rows in a_min..a_max of that session. Sessions
-- whose samples all follow a mount of the batch, with no unmount of the batch in between, are
-- left out by evaluate_rules: they cannot raise anything.
CREATE FUNCTION needletrace.settle_boots(p_collector_id text, p_clinic text[], p_device text[],
                                         p_boot bigint[], p_tx bigint,
                                         p_b_min bigint[] DEFAULT NULL,
                                         p_b_max bigint[] DEFAULT NULL,
                                         p_b_n bigint[] DEFAULT NULL,
                                         p_s_clinic text[] DEFAULT NULL,
                                         p_s_device text[] DEFAULT NULL,
                                         p_s_boot bigint[] DEFAULT NULL,
                                         p_s_session text[] DEFAULT NULL,
                                         p_s_amin bigint[] DEFAULT NULL,
                                         p_s_amax bigint[] DEFAULT NULL)
    RETURNS bigint[]
    LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
BEGIN
    WITH kf AS MATERIALIZED (
        SELECT b.clinic_id, b.device_serial, b.boot_id, b.max_seq, b.n_events, b.settled_seq,
               coalesce(b.settled_seq = u.b_max AND b.max_seq = u.b_max
                        AND u.b_n = u.b_max - u.b_min + 1, false) AS fast
          FROM unnest(p_clinic, p_device, p_boot, p_b_min, p_b_max, p_b_n)
               AS u(clinic_id, device_serial, boot_id, b_min, b_max, b_n)
          JOIN needletrace.boot_progress b USING (clinic_id, device_serial, boot_id)
    ),
    -- The boots to settle here.
    k AS (
        SELECT kf.clinic_id, kf.device_serial, kf.boot_id, kf.max_seq, kf.n_events, kf.settled_seq
          FROM kf WHERE NOT kf.fast
    ),
    -- Boots with holes: present events and alerted gaps above settled_seq, as ranges.
    r AS (
        SELECT k.clinic_id, k.device_serial, k.boot_id, k.settled_seq, e.seq AS lo, e.seq AS hi
          FROM k JOIN needletrace.events e
            ON e.clinic_id = k.clinic_id AND e.device_serial = k.device_serial
           AND e.boot_id = k.boot_id AND e.seq > k.settled_seq
         WHERE k.n_events < k.max_seq
        UNION ALL
        SELECT k.clinic_id, k.device_serial, k.boot_id, k.settled_seq, g.gap_start, g.gap_end
          FROM k JOIN needletrace.sequence_gaps_alerted g
            ON g.clinic_id = k.clinic_id AND g.device_serial = k.device_serial
           AND g.boot_id = k.boot_id AND g.gap_end > k.settled_seq
         WHERE k.n_events < k.max_seq
    ),
    w AS (
        SELECT r.*, coalesce(max(r.hi) OVER (PARTITION BY r.clinic_id, r.device_serial, r.boot_id
                                             ORDER BY r.lo, r.hi
                                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                             r.settled_seq) AS reach
          FROM r
    ),
    s AS (
        SELECT w.clinic_id, w.device_serial, w.boot_id, min(w.settled_seq) AS old_settled,
               coalesce(min(w.reach) FILTER (WHERE w.lo > w.reach + 1), max(w.hi)) AS new_settled
          FROM w GROUP BY w.clinic_id, w.device_serial, w.boot_id
        UNION ALL
        SELECT k.clinic_id, k.device_serial, k.boot_id, k.settled_seq, k.max_seq
          FROM k WHERE k.n_events >= k.max_seq
    ),
    -- Settled ranges (old, new] of the advanced boots.
    adv AS (
        UPDATE needletrace.boot_progress b
           SET settled_seq = s.new_settled, updated_at = now()
          FROM s
         WHERE b.clinic_id = s.clinic_id AND b.device_serial = s.device_serial
           AND b.boot_id = s.boot_id AND s.new_settled > b.settled_seq
        RETURNING b.clinic_id, b.device_serial, b.boot_id, s.old_settled, s.new_settled
    ),
    act AS (
        SELECT e.clinic_id, e.device_serial, e.boot_id, e.session_id, e.seq
          FROM adv JOIN needletrace.events e
            ON e.clinic_id = adv.clinic_id AND e.device_serial = adv.device_serial
           AND e.boot_id = adv.boot_id AND e.seq > adv.old_settled AND e.seq <= adv.new_settled
         WHERE e.kind = 'needle_activity'
        UNION ALL
        -- A new row at or below the old settled_seq can only fill an alerted gap: look there.
        SELECT e.clinic_id, e.device_serial, e.boot_id, e.session_id, e.seq
          FROM k JOIN needletrace.sequence_gaps_alerted g
            ON g.clinic_id = k.clinic_id AND g.device_serial = k.device_serial
           AND g.boot_id = k.boot_id AND g.gap_start <= k.settled_seq
          JOIN needletrace.events e
            ON e.clinic_id = g.clinic_id AND e.device_serial = g.device_serial
           AND e.boot_id = g.boot_id AND e.seq BETWEEN g.gap_start AND least(g.gap_end, k.settled_seq)
         WHERE p_tx IS NOT NULL AND e.tx = p_tx AND e.kind = 'needle_activity'
    ),
    -- Per (boot, session) of the samples to decide: first and last sample; fast = the samples
    -- are all the session's activity rows of the boot in a_min..a_max (p_s_*).
    agg AS MATERIALIZED (
        SELECT act.clinic_id, act.device_serial, act.boot_id, act.session_id,
               min(act.seq) AS a_min, max(act.seq) AS a_max, false AS fast
          FROM act
         GROUP BY 1, 2, 3, 4
        UNION ALL
        SELECT f.clinic_id, f.device_serial, f.boot_id, f.session_id, f.a_min, f.a_max, true
          FROM unnest(p_s_clinic, p_s_device, p_s_boot, p_s_session, p_s_amin, p_s_amax)
               AS f(clinic_id, device_serial, boot_id, session_id, a_min, a_max)
         WHERE NOT EXISTS (SELECT 1 FROM k
                            WHERE k.clinic_id = f.clinic_id AND k.device_serial = f.device_serial
                              AND k.boot_id = f.boot_id)
    ),
    agg2 AS (
        SELECT agg.* FROM agg
         WHERE NOT EXISTS (SELECT 1 FROM needletrace.no_cartridge_alerted n
                            WHERE n.clinic_id = agg.clinic_id AND n.device_serial = agg.device_serial
                              AND n.session_id = coalesce(agg.session_id, ''))
    ),
    -- The session's mounts/unmounts before its last sample; code = seq*2 + 1 for a mount, so
    -- the greatest code is the latest change.
    chg AS MATERIALIZED (
        SELECT agg2.clinic_id, agg2.device_serial, agg2.boot_id, agg2.session_id, m.seq,
               m.seq * 2 + (m.kind = 'cartridge_mounted')::int AS code
          FROM agg2 JOIN needletrace.events m
            ON m.clinic_id = agg2.clinic_id AND m.device_serial = agg2.device_serial
           AND m.boot_id = agg2.boot_id AND m.session_id = agg2.session_id AND m.seq < agg2.a_max
         WHERE m.kind IN ('cartridge_mounted', 'cartridge_unmounted')
    ),
    cls AS (
        SELECT agg2.clinic_id, agg2.device_serial, agg2.boot_id, agg2.session_id, agg2.a_min,
               agg2.a_max, agg2.fast,
               max(chg.code) FILTER (WHERE chg.seq < agg2.a_min) AS code_before,
               coalesce(bool_or(chg.seq > agg2.a_min), false) AS changes_within
          FROM agg2 LEFT JOIN chg
            ON chg.clinic_id = agg2.clinic_id AND chg.device_serial = agg2.device_serial
           AND chg.boot_id = agg2.boot_id AND chg.session_id = agg2.session_id
         GROUP BY 1, 2, 3, 4, 5, 6, 7
    ),
    -- Common case: no mount/unmount among the samples, so the first sample decides.
    bad_simple AS (
        SELECT cls.clinic_id, cls.device_serial, cls.boot_id, cls.session_id, cls.a_min AS seq,
               cls.code_before AS last_code
          FROM cls
         WHERE NOT cls.changes_within AND (cls.code_before IS NULL OR cls.code_before % 2 = 0)
    ),
    -- A cartridge changed among the samples: look at each sample of those sessions.
    comb AS (
        SELECT act.clinic_id, act.device_serial, act.boot_id, act.session_id, act.seq, NULL::bigint AS code
          FROM act JOIN cls
            ON cls.clinic_id = act.clinic_id AND cls.device_serial = act.device_serial
           AND cls.boot_id = act.boot_id AND cls.session_id IS NOT DISTINCT FROM act.session_id
         WHERE cls.changes_within
        UNION ALL
        -- (the same for the sessions from p_s_*: their samples are the activity rows in
        -- a_min..a_max)
        SELECT e.clinic_id, e.device_serial, e.boot_id, e.session_id, e.seq, NULL::bigint
          FROM cls JOIN needletrace.events e
            ON e.clinic_id = cls.clinic_id AND e.device_serial = cls.device_serial
           AND e.boot_id = cls.boot_id AND e.seq BETWEEN cls.a_min AND cls.a_max
         WHERE cls.fast AND cls.changes_within AND e.kind = 'needle_activity'
           AND e.session_id IS NOT DISTINCT FROM cls.session_id
        UNION ALL
        SELECT chg.clinic_id, chg.device_serial, chg.boot_id, chg.session_id, chg.seq, chg.code
          FROM chg JOIN cls
            ON cls.clinic_id = chg.clinic_id AND cls.device_serial = chg.device_serial
           AND cls.boot_id = chg.boot_id AND cls.session_id = chg.session_id
         WHERE cls.changes_within
    ),
    lat AS (
        SELECT comb.*, max(comb.code) OVER (PARTITION BY comb.clinic_id, comb.device_serial,
                                                         comb.boot_id, comb.session_id
                                            ORDER BY comb.seq ROWS UNBOUNDED PRECEDING) AS last_code
          FROM comb
    ),
    bad_any AS (
        SELECT bad_simple.* FROM bad_simple
        UNION ALL
        SELECT lat.clinic_id, lat.device_serial, lat.boot_id, lat.session_id, lat.seq, lat.last_code
          FROM lat
         WHERE lat.code IS NULL AND (lat.last_code IS NULL OR lat.last_code % 2 = 0)
    ),
    bad AS (
        SELECT DISTINCT ON (b.clinic_id, b.device_serial, coalesce(b.session_id, ''))
               b.clinic_id, b.device_serial, b.boot_id, b.session_id, b.seq, b.last_code, e.device_time
          FROM bad_any b
          JOIN needletrace.events e
            ON e.clinic_id = b.clinic_id AND e.device_serial = b.device_serial
           AND e.boot_id = b.boot_id AND e.seq = b.seq
         ORDER BY b.clinic_id, b.device_serial, coalesce(b.session_id, ''), b.seq
    ),
    st AS (
        INSERT INTO needletrace.no_cartridge_alerted (clinic_id, device_serial, session_id, boot_id, seq)
        SELECT bad.clinic_id, bad.device_serial, coalesce(bad.session_id, ''), bad.boot_id, bad.seq
          FROM bad ORDER BY 1, 2, 3
        ON CONFLICT DO NOTHING
        RETURNING clinic_id, device_serial, session_id
    ),
    ins AS (
        INSERT INTO needletrace.alerts (rule, severity, clinic_id, device_serial, session_id,
                                        boot_id, seq, details, collector_id)
        SELECT 'NEEDLING_WITHOUT_CARTRIDGE', 'critical', bad.clinic_id, bad.device_serial,
               bad.session_id, bad.boot_id, bad.seq,
               jsonb_build_object(
                   'device_time', needletrace.rfc3339(bad.device_time),
                   'last_cartridge_event',
                   CASE WHEN bad.last_code IS NULL THEN NULL
                        ELSE jsonb_build_object('kind', 'cartridge_unmounted',
                                                'seq', bad.last_code / 2) END),
               p_collector_id
          FROM bad JOIN st ON st.clinic_id = bad.clinic_id AND st.device_serial = bad.device_serial
                          AND st.session_id = coalesce(bad.session_id, '')
         ORDER BY bad.clinic_id, bad.device_serial, bad.boot_id, bad.seq
        ON CONFLICT DO NOTHING
        RETURNING alert_id
    )
    SELECT coalesce(array_agg(ins.alert_id), '{}') INTO v_ids FROM ins;
    RETURN v_ids;
END
$$;

-- ---- evaluate_rules ----------------------------------------------------------------------------
CREATE FUNCTION needletrace.evaluate_rules(p_collector_id text)
    RETURNS TABLE(alert_id bigint, clinic_id text, rule text, payload text)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_tx        bigint := txid_current();
    v_skew      interval := needletrace.setting_interval('clock_skew_bound', interval '5 minutes');
    v_min_model int;
    v_ids       bigint[] := '{}';
    v_new       bigint[];
    v_n_boots   bigint;
    v_all_fast  boolean;   -- the batch alone moved every one of its boots forward
    v_clinic    text[];    -- the batch's boots, with its first and last seq and row count
    v_device    text[];
    v_boot      bigint[];
    v_b_min     bigint[];
    v_b_max     bigint[];
    v_b_n       bigint[];
    v_s_clinic  text[];    -- sessions with activity in the batch (see settle_boots)
    v_s_device  text[];
    v_s_boot    bigint[];
    v_s_session text[];
    v_s_amin    bigint[];
    v_s_amax    bigint[];
    v_mounts    boolean;   -- the batch has cartridge_mounted events
    v_depth     boolean;   -- some setting/activity may be too deep
    v_skewed    boolean;   -- some event may be ahead of its receive time by more than v_skew
BEGIN
    SELECT min(d.max_depth_um) INTO v_min_model FROM needletrace.device_models d;

    -- The one pass over the batch's rows (g: per boot, session and area, what every rule needs),
    -- then per boot the progress upsert, in key order (the first row locks every batch takes).
    -- When the batch alone moves a boot forward -- the boot was settled to its max_seq, all of
    -- the batch's seqs lie above it (known when n_events = max_seq, i.e. every seq 1..max_seq is
    -- present -- seqs are >= 1, the decoder refuses 0 -- else checked on the batch's first seq),
    -- and the batch holds every seq from max_seq + 1 to its last (its row count says so) -- the
    -- upsert settles the boot at once, to the batch's last seq (settle_boots would do exactly
    -- that), and the rows that became settled are exactly the batch's rows, so g has all that
    -- NEEDLING_WITHOUT_CARTRIDGE needs (settle_boots calls such a boot "fast"). Any other boot
    -- keeps its settled_seq here and is settled by settle_boots as before.
    WITH g AS MATERIALIZED (
        SELECT e.clinic_id, e.device_serial, e.boot_id, e.session_id,
               coalesce(e.area, 'unspecified') AS area,
               count(*) AS n, min(e.seq) AS min_seq, max(e.seq) AS max_seq,
               min(e.seq) FILTER (WHERE e.kind = 'needle_activity') AS a_min,
               max(e.seq) FILTER (WHERE e.kind = 'needle_activity') AS a_max,
               min(e.seq) FILTER (WHERE e.kind = 'cartridge_mounted') AS mount_min,
               min(e.seq) FILTER (WHERE e.kind = 'cartridge_unmounted') AS unmount_min,
               max(e.depth_um) AS max_depth, -- (only settings and activity have a depth)
               -- CLOCK_SKEW's candidate test (below): some device_time > received_at + v_skew
               max(e.device_time) AS max_device_time, min(e.received_at) AS min_received_at
          FROM needletrace.events e
         WHERE e.tx = v_tx
         -- ... and a constant xid, a type that can be hashed but not sorted: so g is hashed.
         -- (The planner expects one row for tx = v_tx -- statistics lag behind the newest tx --
         -- and would sort the 5,000 rows on their text keys, which costs 2-3 times as much.)
         GROUP BY 1, 2, 3, 4, 5, '0'::xid
    ),
    a AS MATERIALIZED (
        SELECT g.clinic_id, g.device_serial, g.boot_id, sum(g.n)::bigint AS n,
               min(g.min_seq) AS min_seq, max(g.max_seq) AS max_seq
          FROM g
         GROUP BY 1, 2, 3
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
        RETURNING p.max_seq, p.settled_seq
    ),
    -- Sessions with activity, except those whose samples all follow a mount of the batch with no
    -- unmount of the batch before the last sample (of a fast boot, they cannot raise anything).
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
    -- Every boot is fast iff each was settled to its max_seq, each max_seq is the batch's last
    -- seq for the boot (max_seq >= it always, hence the sums) and each batch is contiguous.
    SELECT ab.n_boots, ab.c, ab.d, ab.b, ab.mn, ab.mx, ab.n,
           coalesce(bb.all_settled AND bb.sum_max = ab.sum_max AND ab.contiguous, false),
           s.c, s.d, s.b, s.s, s.amin, s.amax,
           dp.any, sk.mounts, sk.skewed
      INTO v_n_boots, v_clinic, v_device, v_boot, v_b_min, v_b_max, v_b_n, v_all_fast,
           v_s_clinic, v_s_device, v_s_boot, v_s_session, v_s_amin, v_s_amax,
           v_depth, v_mounts, v_skewed
      FROM (SELECT count(*) AS n_boots, array_agg(a.clinic_id) AS c,
                   array_agg(a.device_serial) AS d, array_agg(a.boot_id) AS b,
                   array_agg(a.min_seq) AS mn, array_agg(a.max_seq) AS mx, array_agg(a.n) AS n,
                   sum(a.max_seq) AS sum_max,
                   bool_and(a.n = a.max_seq - a.min_seq + 1) AS contiguous
              FROM a) ab,
           (SELECT bool_and(b.settled_seq = b.max_seq) AS all_settled, sum(b.max_seq) AS sum_max
              FROM b) bb,
           (SELECT array_agg(ses.clinic_id) AS c, array_agg(ses.device_serial) AS d,
                   array_agg(ses.boot_id) AS b, array_agg(ses.session_id) AS s,
                   array_agg(ses.a_min) AS amin, array_agg(ses.a_max) AS amax
              FROM ses) s,
           -- DEPTH_OUT_OF_RANGE's candidate test (below), on each group's deepest sample
           (SELECT EXISTS (
                SELECT 1
                  FROM g
                  LEFT JOIN needletrace.depth_policy_clinic c
                    ON c.clinic_id = g.clinic_id AND c.area = g.area
                  LEFT JOIN needletrace.depth_policy d ON d.area = g.area
                 WHERE g.max_depth > coalesce(c.max_depth_um, d.max_depth_um, 2500)
                    OR g.max_depth > v_min_model) AS any) dp,
           (SELECT coalesce(bool_or(g.mount_min IS NOT NULL), false) AS mounts,
                   coalesce(bool_or(g.max_device_time > g.min_received_at + v_skew), false)
                       AS skewed
              FROM g) sk;
    IF v_n_boots = 0 THEN
        RETURN; -- this transaction inserted no events
    END IF;

    IF v_mounts THEN
        -- CARTRIDGE_REUSED, step 1: record the batch's earliest mount of each cartridge as its first
        -- use unless one is recorded already (a concurrent insert of the same key waits for the
        -- other transaction; ON CONFLICT then keeps the committed row). Key order: no deadlocks.
        INSERT INTO needletrace.cartridge_first_use AS f
               (gtin, cartridge_serial, clinic_id, device_serial, session_id, boot_id, seq, device_time)
        SELECT m.gtin, m.cartridge_serial, m.clinic_id, m.device_serial, m.session_id, m.boot_id,
               m.seq, m.device_time
          FROM (SELECT DISTINCT ON (e.gtin, e.cartridge_serial) e.*
                  FROM needletrace.events e
                 WHERE e.tx = v_tx AND e.kind = 'cartridge_mounted'
                   AND e.gtin IS NOT NULL AND e.cartridge_serial IS NOT NULL
                 ORDER BY e.gtin, e.cartridge_serial, e.device_time, e.clinic_id, e.device_serial,
                          e.boot_id, e.seq) m
         ORDER BY m.gtin, m.cartridge_serial
        ON CONFLICT DO NOTHING;

        -- Step 2 (a new statement: under READ COMMITTED it sees a first use that another replica
        -- committed meanwhile), and the per-mount rules.
        WITH m AS (
            SELECT e.*, f.clinic_id AS f_clinic, f.device_serial AS f_device,
                   f.session_id AS f_session, f.device_time AS f_time,
                   (r.gtin IS NOT NULL) AS recalled, r.reason AS recall_reason,
                   r.recalled_at
              FROM needletrace.events e
              LEFT JOIN needletrace.cartridge_first_use f
                ON f.gtin = e.gtin AND f.cartridge_serial = e.cartridge_serial
              LEFT JOIN needletrace.recalled_lots r ON r.gtin = e.gtin AND r.lot = e.lot
             WHERE e.tx = v_tx AND e.kind = 'cartridge_mounted'
        ),
        cand AS (
            SELECT 'CARTRIDGE_REUSED' AS rule, m.*,
                   jsonb_build_object('first_use', jsonb_build_object(
                       'clinic_id', m.f_clinic, 'device_serial', m.f_device,
                       'session_id', m.f_session, 'device_time', needletrace.rfc3339(m.f_time)))
                       AS extra
              FROM m
             WHERE m.f_clinic IS NOT NULL
               AND (m.f_clinic, m.f_device, m.f_session)
                   IS DISTINCT FROM (m.clinic_id, m.device_serial, m.session_id)
            UNION ALL
            SELECT 'CARTRIDGE_EXPIRED', m.*,
                   jsonb_build_object('mounted_on', to_char(m.device_time AT TIME ZONE 'UTC', 'YYYY-MM-DD'))
              FROM m
             WHERE m.expiry < (m.device_time AT TIME ZONE 'UTC')::date
            UNION ALL
            SELECT 'STERILE_BARRIER_BROKEN', m.*, '{}'::jsonb
              FROM m
             WHERE m.sterile_barrier_intact = false
            UNION ALL
            SELECT 'CARTRIDGE_RECALLED', m.*,
                   jsonb_build_object('recall_reason', m.recall_reason,
                                      'recalled_at', needletrace.rfc3339(m.recalled_at))
              FROM m
             WHERE m.recalled
        ),
        ins AS (
            INSERT INTO needletrace.alerts (rule, severity, clinic_id, device_serial, session_id,
                                            boot_id, seq, details, collector_id)
            SELECT c.rule, 'critical', c.clinic_id, c.device_serial, c.session_id, c.boot_id, c.seq,
                   jsonb_build_object('gtin', c.gtin, 'lot', c.lot, 'cartridge_serial', c.cartridge_serial,
                                      'expiry', to_char(c.expiry, 'YYYY-MM-DD'),
                                      'sterile_barrier_intact', c.sterile_barrier_intact,
                                      'device_time', needletrace.rfc3339(c.device_time)) || c.extra,
                   p_collector_id
              FROM cand c
             ORDER BY c.rule, c.clinic_id, c.device_serial, c.boot_id, c.seq
            ON CONFLICT DO NOTHING
            RETURNING alerts.alert_id
        )
        SELECT coalesce(array_agg(ins.alert_id), '{}') INTO v_new FROM ins;
        v_ids := v_ids || v_new;
    END IF;

    -- DEPTH_OUT_OF_RANGE. Limit = least(area limit (clinic override, else default), model max).
    -- Only when the first pass saw a candidate (a clean batch has none).
    IF v_depth THEN
        SELECT min(d.max_depth_um) INTO v_min_model FROM needletrace.device_models d;
        WITH cand AS MATERIALIZED (
            SELECT e.clinic_id, e.device_serial, e.session_id, e.boot_id, e.seq, e.kind,
                   e.device_time, e.payload_sha256, e.depth_um,
                   coalesce(e.area, 'unspecified') AS area,
                   coalesce(c.max_depth_um, d.max_depth_um, 2500) AS area_limit,
                   CASE WHEN c.max_depth_um IS NOT NULL THEN 'clinic' ELSE 'default' END AS area_source
              FROM needletrace.events e
              LEFT JOIN needletrace.depth_policy_clinic c
                ON c.clinic_id = e.clinic_id AND c.area = coalesce(e.area, 'unspecified')
              LEFT JOIN needletrace.depth_policy d ON d.area = coalesce(e.area, 'unspecified')
             WHERE e.tx = v_tx AND e.kind IN ('needle_setting', 'needle_activity')
               AND (e.depth_um > coalesce(c.max_depth_um, d.max_depth_um, 2500)
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
            SELECT DISTINCT ON (v.clinic_id, v.device_serial, coalesce(v.session_id, ''), v.area, v.depth_um) v.*
              FROM viol v
             WHERE v.depth_um > v.limit_um
             ORDER BY v.clinic_id, v.device_serial, coalesce(v.session_id, ''), v.area, v.depth_um,
                      v.device_time, v.seq, v.boot_id
        ),
        st AS (
            INSERT INTO needletrace.depth_violations_seen
                   (clinic_id, device_serial, session_id, area, depth_um, boot_id, seq)
            SELECT f.clinic_id, f.device_serial, coalesce(f.session_id, ''), f.area, f.depth_um,
                   f.boot_id, f.seq
              FROM first f ORDER BY 1, 2, 3, 4, 5
            ON CONFLICT DO NOTHING
            RETURNING depth_violations_seen.clinic_id, depth_violations_seen.device_serial,
                      depth_violations_seen.boot_id, depth_violations_seen.seq
        ),
        ins AS (
            INSERT INTO needletrace.alerts (rule, severity, clinic_id, device_serial, session_id,
                                            boot_id, seq, details, collector_id)
            SELECT 'DEPTH_OUT_OF_RANGE',
                   CASE WHEN f.depth_um > f.limit_um + 250 OR f.depth_um > 2500
                        THEN 'critical' ELSE 'warning' END,
                   f.clinic_id, f.device_serial, f.session_id, f.boot_id, f.seq,
                   jsonb_build_object('kind', f.kind, 'area', f.area, 'depth_um', f.depth_um,
                                      'limit_um', f.limit_um, 'limit_source', f.limit_source,
                                      'area_limit_um', f.area_limit, 'area_limit_source', f.area_source,
                                      'model_limit_um', f.model_limit, 'device_model', f.device_model,
                                      'device_time', needletrace.rfc3339(f.device_time)),
                   p_collector_id
              FROM first f
              JOIN st ON st.clinic_id = f.clinic_id AND st.device_serial = f.device_serial
                     AND st.boot_id = f.boot_id AND st.seq = f.seq
             ORDER BY f.clinic_id, f.device_serial, f.boot_id, f.seq
            ON CONFLICT DO NOTHING
            RETURNING alerts.alert_id
        )
        SELECT coalesce(array_agg(ins.alert_id), '{}') INTO v_new FROM ins;
        v_ids := v_ids || v_new;
    END IF;

    -- CLOCK_SKEW: once per (clinic, device, boot), on the first (lowest seq) such event.
    IF v_skewed THEN
        WITH first AS (
            SELECT DISTINCT ON (e.clinic_id, e.device_serial, e.boot_id)
                   e.clinic_id, e.device_serial, e.boot_id, e.seq, e.session_id, e.device_time,
                   e.received_at
              FROM needletrace.events e
             WHERE e.tx = v_tx AND e.device_time > e.received_at + v_skew
             ORDER BY e.clinic_id, e.device_serial, e.boot_id, e.seq
        ),
        st AS (
            INSERT INTO needletrace.clock_skew_alerted (clinic_id, device_serial, boot_id, seq)
            SELECT f.clinic_id, f.device_serial, f.boot_id, f.seq FROM first f ORDER BY 1, 2, 3
            ON CONFLICT DO NOTHING
            RETURNING clock_skew_alerted.clinic_id, clock_skew_alerted.device_serial,
                      clock_skew_alerted.boot_id
        ),
        ins AS (
            INSERT INTO needletrace.alerts (rule, severity, clinic_id, device_serial, session_id,
                                            boot_id, seq, details, collector_id)
            SELECT 'CLOCK_SKEW', 'warning', f.clinic_id, f.device_serial, f.session_id, f.boot_id, f.seq,
                   jsonb_build_object('device_time', needletrace.rfc3339(f.device_time),
                                      'received_at', needletrace.rfc3339(f.received_at),
                                      'ahead_ms', floor(extract(epoch FROM f.device_time - f.received_at)
                                                        * 1000)::bigint,
                                      'bound', v_skew::text,
                                      'bound_ms', floor(extract(epoch FROM v_skew) * 1000)::bigint),
                   p_collector_id
              FROM first f
              JOIN st USING (clinic_id, device_serial, boot_id)
             ORDER BY f.clinic_id, f.device_serial, f.boot_id
            ON CONFLICT DO NOTHING
            RETURNING alerts.alert_id
        )
        SELECT coalesce(array_agg(ins.alert_id), '{}') INTO v_new FROM ins;
        v_ids := v_ids || v_new;
    END IF;

    -- NEEDLING_WITHOUT_CARTRIDGE, decided as the batch settles its boots. When the batch alone
    -- moved every boot forward, only its sessions that need a look are left to decide.
    IF v_all_fast THEN
        IF v_s_clinic IS NOT NULL THEN
            v_ids := v_ids || needletrace.settle_boots(p_collector_id, NULL, NULL, NULL, v_tx,
                                                       NULL, NULL, NULL,
                                                       v_s_clinic, v_s_device, v_s_boot,
                                                       v_s_session, v_s_amin, v_s_amax);
        END IF;
    ELSE
        v_ids := v_ids || needletrace.settle_boots(p_collector_id, v_clinic, v_device, v_boot, v_tx,
                                                   v_b_min, v_b_max, v_b_n,
                                                   v_s_clinic, v_s_device, v_s_boot,
                                                   v_s_session, v_s_amin, v_s_amax);
    END IF;

    RETURN QUERY SELECT * FROM needletrace.publish_alerts(v_ids);
END
$$;

-- ---- check_sequence_gaps -------------------------------------------------------------------------
CREATE FUNCTION needletrace.check_sequence_gaps(p_collector_id text)
    RETURNS TABLE(alert_id bigint, clinic_id text, rule text, payload text)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_after  interval := needletrace.setting_interval('sequence_gap_after', interval '10 minutes');
    v_clinic text[];
    v_device text[];
    v_boot   bigint[];
    v_ids    bigint[];
BEGIN
    -- Boots that may hold a gap, locked; a boot locked by a batch or by another replica's check
    -- is skipped (it is looked at again on the next run), so this never waits or deadlocks.
    SELECT array_agg(b.clinic_id), array_agg(b.device_serial), array_agg(b.boot_id)
      INTO v_clinic, v_device, v_boot
      FROM (SELECT p.clinic_id, p.device_serial, p.boot_id
              FROM needletrace.boot_progress p
             WHERE p.settled_seq < p.max_seq
             ORDER BY 1, 2, 3
               FOR UPDATE SKIP LOCKED) b;
    IF v_clinic IS NULL THEN
        RETURN;
    END IF;

    -- A new statement, so it sees everything committed before the locks were taken.
    WITH k AS (
        SELECT b.clinic_id, b.device_serial, b.boot_id, b.settled_seq
          FROM unnest(v_clinic, v_device, v_boot) AS u(clinic_id, device_serial, boot_id)
          JOIN needletrace.boot_progress b USING (clinic_id, device_serial, boot_id)
         WHERE b.settled_seq < b.max_seq
    ),
    ev AS MATERIALIZED (
        SELECT k.clinic_id, k.device_serial, k.boot_id, k.settled_seq, e.seq, e.received_at
          FROM k JOIN needletrace.events e
            ON e.clinic_id = k.clinic_id AND e.device_serial = k.device_serial
           AND e.boot_id = k.boot_id AND e.seq > k.settled_seq
    ),
    -- Present ranges above settled_seq: events, and gaps already alerted.
    r AS (
        SELECT ev.clinic_id, ev.device_serial, ev.boot_id, ev.settled_seq, ev.seq AS lo, ev.seq AS hi
          FROM ev
        UNION ALL
        SELECT k.clinic_id, k.device_serial, k.boot_id, k.settled_seq, g.gap_start, g.gap_end
          FROM k JOIN needletrace.sequence_gaps_alerted g
            ON g.clinic_id = k.clinic_id AND g.device_serial = k.device_serial
           AND g.boot_id = k.boot_id AND g.gap_end > k.settled_seq
    ),
    w AS (
        SELECT r.*, coalesce(max(r.hi) OVER (PARTITION BY r.clinic_id, r.device_serial, r.boot_id
                                             ORDER BY r.lo, r.hi
                                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                             r.settled_seq) AS reach
          FROM r
    ),
    holes AS (
        SELECT w.clinic_id, w.device_serial, w.boot_id, w.reach + 1 AS gap_start, w.lo - 1 AS gap_end
          FROM w WHERE w.lo > w.reach + 1
    ),
    -- The earliest-received event above each hole revealed it.
    due AS (
        SELECT h.*, rv.seq AS revealed_by_seq, rv.received_at AS revealed_at
          FROM holes h
          CROSS JOIN LATERAL (
                SELECT ev.seq, ev.received_at FROM ev
                 WHERE ev.clinic_id = h.clinic_id AND ev.device_serial = h.device_serial
                   AND ev.boot_id = h.boot_id AND ev.seq > h.gap_end
                 ORDER BY ev.received_at, ev.seq LIMIT 1) rv
         WHERE rv.received_at + v_after <= now()
    ),
    st AS (
        INSERT INTO needletrace.sequence_gaps_alerted (clinic_id, device_serial, boot_id, gap_start, gap_end)
        SELECT d.clinic_id, d.device_serial, d.boot_id, d.gap_start, d.gap_end
          FROM due d ORDER BY 1, 2, 3, 4
        ON CONFLICT DO NOTHING
        RETURNING sequence_gaps_alerted.clinic_id, sequence_gaps_alerted.device_serial,
                  sequence_gaps_alerted.boot_id, sequence_gaps_alerted.gap_start
    ),
    ins AS (
        INSERT INTO needletrace.alerts (rule, severity, clinic_id, device_serial, session_id,
                                        boot_id, seq, details, collector_id)
        SELECT 'SEQUENCE_GAP', 'warning', d.clinic_id, d.device_serial, NULL, d.boot_id, d.gap_start,
               jsonb_build_object('missing_from', d.gap_start, 'missing_to', d.gap_end,
                                  'missing_count', d.gap_end - d.gap_start + 1,
                                  'revealed_by_seq', d.revealed_by_seq,
                                  'revealed_at', needletrace.rfc3339(d.revealed_at),
                                  'gap_after', v_after::text),
               p_collector_id
          FROM due d JOIN st USING (clinic_id, device_serial, boot_id, gap_start)
         ORDER BY d.clinic_id, d.device_serial, d.boot_id, d.gap_start
        ON CONFLICT DO NOTHING
        RETURNING alerts.alert_id
    )
    SELECT coalesce(array_agg(ins.alert_id), '{}') INTO v_ids FROM ins;

    -- Alerted gaps count as settled: advance, and decide the activity samples that waited.
    IF cardinality(v_ids) > 0 THEN
        v_ids := v_ids || needletrace.settle_boots(p_collector_id, v_clinic, v_device, v_boot, NULL);
    END IF;

    RETURN QUERY SELECT * FROM needletrace.publish_alerts(v_ids);
END
$$;

-- ---- delivery bookkeeping ------------------------------------------------------------------------
-- Records that the given alerts were published (MQTT + NOTIFY); returns how many were new.
CREATE FUNCTION needletrace.mark_alerts_delivered(p_collector_id text, p_alert_ids bigint[])
    RETURNS int
    LANGUAGE plpgsql AS $$
DECLARE
    n int;
BEGIN
    INSERT INTO needletrace.alert_deliveries (clinic_id, alert_id, published_at, collector_id)
    SELECT a.clinic_id, a.alert_id, now(), p_collector_id
      FROM needletrace.alerts a
     WHERE a.alert_id = ANY (p_alert_ids)
     ORDER BY a.clinic_id, a.alert_id
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Alerts not yet published: raised by this collector, or by any collector more than 60 s ago
-- (so a replica that died does not strand its alerts). Oldest first. Does not notify.
CREATE FUNCTION needletrace.undelivered_alerts(p_collector_id text, p_limit int)
    RETURNS TABLE(alert_id bigint, clinic_id text, rule text, payload text)
    LANGUAGE sql STABLE AS $$
    SELECT a.alert_id, a.clinic_id, a.rule, needletrace.alert_payload(a)
      FROM needletrace.alerts a
     WHERE NOT EXISTS (SELECT 1 FROM needletrace.alert_deliveries d
                        WHERE d.clinic_id = a.clinic_id AND d.alert_id = a.alert_id)
       AND (a.collector_id IS NOT DISTINCT FROM p_collector_id
            OR a.raised_at < now() - interval '60 seconds')
     ORDER BY a.alert_id
     LIMIT p_limit
$$;

-- ---- roles and grants ------------------------------------------------------------------------------
-- needletrace_staff: clinic staff / compliance officers who read and acknowledge alerts.
-- The collector role may also insert acks, because `needletrace alerts ack` runs with the
-- collector's database URL; the auditor role stays read-only.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'needletrace_staff') THEN
        BEGIN
            CREATE ROLE needletrace_staff NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;

REVOKE EXECUTE ON FUNCTION
    needletrace.evaluate_rules(text), needletrace.check_sequence_gaps(text),
    needletrace.mark_alerts_delivered(text, bigint[]), needletrace.undelivered_alerts(text, int),
    needletrace.settle_boots(text, text[], text[], bigint[], bigint, bigint[], bigint[], bigint[],
                             text[], text[], bigint[], text[], bigint[], bigint[]),
    needletrace.publish_alerts(bigint[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    needletrace.evaluate_rules(text), needletrace.check_sequence_gaps(text),
    needletrace.mark_alerts_delivered(text, bigint[]), needletrace.undelivered_alerts(text, int),
    needletrace.settle_boots(text, text[], text[], bigint[], bigint, bigint[], bigint[], bigint[],
                             text[], text[], bigint[], text[], bigint[], bigint[]),
    needletrace.publish_alerts(bigint[])
    TO needletrace_collector;

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
