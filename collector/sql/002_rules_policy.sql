-- 002_rules_policy.sql -- what the compliance rules of DESIGN §3 read: the transaction id of each
-- event row, the depth policy, device models, recalled lots and the rule settings.
--
-- Policy is data, not code: every rule reads these tables at each evaluation, so a change applies
-- to the next batch without a restart. Constants live in exactly one place: the seeds and
-- fallbacks of the settings in needletrace.setting_defaults(), the absolute depth maximum in
-- needletrace.depth_hard_max_um().

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

-- ---- constants ---------------------------------------------------------------------------------
-- DESIGN §3: no treatment area allows more than 2.5 mm. Bounds every depth limit of the policy
-- tables (CHECK, through the domain below), is the area limit when no policy row exists, and a
-- depth above it is always critical. IMMUTABLE, so the planner folds it into a constant.
CREATE FUNCTION needletrace.depth_hard_max_um() RETURNS int
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 2500 $$;
COMMENT ON FUNCTION needletrace.depth_hard_max_um() IS
    'The absolute maximum needle depth in um (DESIGN §3: 2.5 mm): bounds every depth policy, is '
    'the limit of an area without a policy row; a depth above it is always critical.';

-- A depth limit in um, between 0 and the absolute maximum.
CREATE DOMAIN needletrace.depth_limit_um AS int
    CHECK (VALUE BETWEEN 0 AND needletrace.depth_hard_max_um());

-- ---- settings ------------------------------------------------------------------------------------
-- The known settings: kind ('interval': must parse and be > 0; 'um': an integer >= 0 and at most
-- the absolute depth maximum; 'count': an integer from 1 to 1,000,000), default
-- (seeded below, and used when the row has been deleted) and what it does.
CREATE FUNCTION needletrace.setting_defaults()
    RETURNS TABLE(key text, kind text, value text, note text)
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    VALUES ('clock_skew_bound', 'interval', '5 minutes',
            'CLOCK_SKEW: an event''s device time may be ahead of its receive time by this much'),
           ('sequence_gap_after', 'interval', '10 minutes',
            'SEQUENCE_GAP: how long a missing seq may stay missing after a later seq arrived'),
           ('depth_critical_margin_um', 'um', '250',
            'DEPTH_OUT_OF_RANGE: a depth more than this above its limit is critical, not a warning'),
           ('alert_budget_per_batch', 'count', '50',
            'Alerts of one rule one pen may raise in one batch (so in one message); the excess is '
            'folded into one summary alert per (rule, pen, batch)'),
           ('alert_budget_per_session', 'count', '20',
            'Alerts of one rule one session may raise over its lifetime; the excess is folded into '
            'the summary alert of its batch'),
           ('alert_retry_backoff', 'interval', '30 seconds',
            'A refused alert delivery is retried after this, doubled at each refusal'),
           ('alert_retry_backoff_max', 'interval', '15 minutes',
            'The longest wait between two delivery attempts of a refused alert')
$$;
COMMENT ON FUNCTION needletrace.setting_defaults() IS
    'The rule settings needletrace.settings knows: kind, default value (seeded; used when a row is '
    'missing) and meaning.';

-- Rule settings, editable by SQL; known keys are validated on write.
CREATE TABLE needletrace.settings (
    key   text PRIMARY KEY,
    value text NOT NULL,
    note  text
);
COMMENT ON TABLE needletrace.settings IS
    'Rule settings (see needletrace.setting_defaults() for the known keys and their defaults); '
    'read at each evaluation, so a change applies to the next batch.';

CREATE FUNCTION needletrace.settings_check() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    v_kind text := (SELECT d.kind FROM needletrace.setting_defaults() d WHERE d.key = NEW.key);
    v      interval;
    n      bigint;
BEGIN
    IF v_kind = 'interval' THEN
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
    ELSIF v_kind = 'um' THEN
        BEGIN
            n := NEW.value::bigint;
        EXCEPTION WHEN others THEN
            RAISE EXCEPTION 'needletrace.settings: % = "%" is not an integer', NEW.key, NEW.value
                USING ERRCODE = 'check_violation', HINT = 'a length in micrometres, e.g. ''250''';
        END;
        IF n < 0 OR n > needletrace.depth_hard_max_um() THEN
            RAISE EXCEPTION 'needletrace.settings: % = "%" must be between 0 and %', NEW.key,
                            NEW.value, needletrace.depth_hard_max_um()
                USING ERRCODE = 'check_violation';
        END IF;
    ELSIF v_kind = 'count' THEN
        BEGIN
            n := NEW.value::bigint;
        EXCEPTION WHEN others THEN
            RAISE EXCEPTION 'needletrace.settings: % = "%" is not an integer', NEW.key, NEW.value
                USING ERRCODE = 'check_violation', HINT = 'a number of alerts, e.g. ''50''';
        END;
        IF n < 1 OR n > 1000000 THEN
            RAISE EXCEPTION 'needletrace.settings: % = "%" must be between 1 and 1000000', NEW.key,
                            NEW.value
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER settings_check BEFORE INSERT OR UPDATE ON needletrace.settings
    FOR EACH ROW EXECUTE FUNCTION needletrace.settings_check();

INSERT INTO needletrace.settings (key, value, note)
SELECT d.key, d.value, d.note FROM needletrace.setting_defaults() d ORDER BY d.key;

-- A setting's value (its default when the row is missing).
CREATE FUNCTION needletrace.setting(p_key text) RETURNS text
    LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT s.value FROM needletrace.settings s WHERE s.key = p_key),
                    (SELECT d.value FROM needletrace.setting_defaults() d WHERE d.key = p_key))
$$;

-- ---- depth policy --------------------------------------------------------------------------------
-- Default maximum needle depth per treatment area (DESIGN §3 seeds; a clinic's medical director
-- sets the real values). 'unspecified' (the pen did not say) gets the most conservative limit.
CREATE TABLE needletrace.depth_policy (
    area         text PRIMARY KEY CHECK (area IN (
                     'unspecified', 'forehead', 'periorbital', 'nose', 'cheeks',
                     'perioral', 'chin', 'neck', 'decolletage', 'scalp', 'body')),
    max_depth_um needletrace.depth_limit_um NOT NULL,
    note         text
);
COMMENT ON TABLE needletrace.depth_policy IS
    'DEPTH_OUT_OF_RANGE: default maximum needle depth per treatment area (um); a row of '
    'needletrace.depth_policy_clinic replaces it for one clinic.';
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
    ('body',        needletrace.depth_hard_max_um(), 'DESIGN §3 seed: 2.5 mm (the absolute maximum)'),
    ('unspecified',  500, 'area not reported: the most conservative limit (periorbital)');

-- Per-clinic overrides: when a row exists for (clinic, area) it replaces the default.
CREATE TABLE needletrace.depth_policy_clinic (
    clinic_id    text NOT NULL,
    area         text NOT NULL REFERENCES needletrace.depth_policy (area),
    max_depth_um needletrace.depth_limit_um NOT NULL,
    note         text,
    PRIMARY KEY (clinic_id, area)
);
COMMENT ON TABLE needletrace.depth_policy_clinic IS
    'DEPTH_OUT_OF_RANGE: a clinic''s maximum needle depth for an area (um), replacing the default '
    'of needletrace.depth_policy.';

-- Per-device-model maximum (the message's device_model): the limit is the lower of the two.
-- (A model's own maximum may exceed the clinical one: 5 mm bounds typos, not policy.)
CREATE TABLE needletrace.device_models (
    device_model text PRIMARY KEY,
    max_depth_um int  NOT NULL CHECK (max_depth_um BETWEEN 0 AND 5000),
    note         text
);
COMMENT ON TABLE needletrace.device_models IS
    'DEPTH_OUT_OF_RANGE: a pen model''s maximum needle depth (um); the limit of a sample is the '
    'lower of its area limit and its model''s maximum.';
INSERT INTO needletrace.device_models (device_model, max_depth_um, note)
    VALUES ('NP-300', needletrace.depth_hard_max_um(), 'the simulator''s model');

-- Recalled cartridge lots (GS1 (01) gtin + (10) lot).
CREATE TABLE needletrace.recalled_lots (
    gtin        text        NOT NULL,
    lot         text        NOT NULL,
    recalled_at timestamptz NOT NULL DEFAULT now(),
    reason      text,
    PRIMARY KEY (gtin, lot)
);
COMMENT ON TABLE needletrace.recalled_lots IS
    'CARTRIDGE_RECALLED: recalled cartridge lots, GS1 (01) gtin + (10) lot; a mount of such a '
    'cartridge raises the alert.';
