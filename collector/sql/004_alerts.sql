-- 004_alerts.sql -- how alerts are raised (one helper for every rule), published (NOTIFY, the
-- JSON payload) and marked delivered.
--
-- payload is compact JSON: {"alert_id":..,"rule":..,"severity":..,"clinic_id":..,
--   "device_serial":..,"session_id":..|null,"boot_id":..,"seq":..,"raised_at":"…Z","details":{..}}

-- ---- alerts: who raised it; lookup by id ------------------------------------------------------
ALTER TABLE needletrace.alerts ADD COLUMN collector_id text;
CREATE INDEX alerts_alert_id_idx ON needletrace.alerts (alert_id);

COMMENT ON TABLE needletrace.alerts IS
    'Compliance alerts (DESIGN §3), raised once per (rule, triggering event) in the transaction of '
    'that event; append-only. Acknowledgements: needletrace.alert_acks.';
COMMENT ON COLUMN needletrace.alerts.rule IS
    'CARTRIDGE_REUSED, CARTRIDGE_EXPIRED, STERILE_BARRIER_BROKEN, CARTRIDGE_RECALLED, '
    'DEPTH_OUT_OF_RANGE, NEEDLING_WITHOUT_CARTRIDGE, CLOCK_SKEW or SEQUENCE_GAP.';
COMMENT ON COLUMN needletrace.alerts.seq IS
    'The triggering event (clinic_id, device_serial, boot_id, seq); for SEQUENCE_GAP, the first '
    'missing seq.';
COMMENT ON COLUMN needletrace.alerts.details IS
    'What the rule saw (device time, limits and their source, first use, gap range...).';
COMMENT ON COLUMN needletrace.alerts.collector_id IS 'The collector replica that raised the alert.';

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

-- ---- raising alerts ------------------------------------------------------------------------------
-- What a rule found: an alert to raise, and the state row that makes it "once per" its key.
CREATE TYPE needletrace.alert_candidate AS (
    rule          text,
    severity      text,
    clinic_id     text,
    device_serial text,
    session_id    text,
    boot_id       bigint,
    seq           bigint,
    details       jsonb,
    state         jsonb  -- the row for the rule's state table, every column named; NULL: none
);

-- The one place that raises alerts: inserts the candidates' state rows into p_state (in array
-- order: callers sort the candidates by the state table's key, the lock order), ON CONFLICT DO
-- NOTHING, and raises an alert for each candidate whose state row went in -- in the same
-- statement, so a concurrent batch holding the same key makes this one wait, and whoever commits
-- first owns the alert. Without p_state, the alerts' own unique key (rule, event) is the state.
-- Alerts are inserted in (rule, clinic, device, boot, seq) order. Returns the new alert ids.
CREATE FUNCTION needletrace.raise_alerts(p_collector_id text, p_state regclass,
                                         p_cands needletrace.alert_candidate[])
    RETURNS bigint[]
    LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
BEGIN
    IF p_cands IS NULL OR cardinality(p_cands) = 0 THEN
        RETURN '{}';
    END IF;
    IF p_state IS NULL THEN
        WITH ins AS (
            INSERT INTO needletrace.alerts (rule, severity, clinic_id, device_serial, session_id,
                                            boot_id, seq, details, collector_id)
            SELECT c.rule, c.severity, c.clinic_id, c.device_serial, c.session_id, c.boot_id,
                   c.seq, c.details, p_collector_id
              FROM unnest(p_cands) c
             ORDER BY c.rule, c.clinic_id, c.device_serial, c.boot_id, c.seq
            ON CONFLICT DO NOTHING
            RETURNING alerts.alert_id
        )
        SELECT coalesce(array_agg(ins.alert_id), '{}') INTO v_ids FROM ins;
        RETURN v_ids;
    END IF;
    -- The state row goes through the table's row type both ways, so a candidate and the row it
    -- inserted compare equal as jsonb whatever the table's columns.
    EXECUTE format($q$
        WITH c AS MATERIALIZED (
            SELECT u.*, r AS state_row, to_jsonb(r) AS state_key
              FROM unnest($1) WITH ORDINALITY AS u(rule, severity, clinic_id, device_serial,
                                                   session_id, boot_id, seq, details, state, ord)
             CROSS JOIN LATERAL jsonb_populate_record(NULL::%1$s, u.state) AS r
        ),
        st AS (
            INSERT INTO %1$s AS t
            SELECT (c.state_row).* FROM c ORDER BY c.ord
            ON CONFLICT DO NOTHING
            RETURNING to_jsonb(t) AS state_key
        ),
        ins AS (
            INSERT INTO needletrace.alerts (rule, severity, clinic_id, device_serial, session_id,
                                            boot_id, seq, details, collector_id)
            SELECT c.rule, c.severity, c.clinic_id, c.device_serial, c.session_id, c.boot_id,
                   c.seq, c.details, $2
              FROM c JOIN st ON st.state_key = c.state_key
             ORDER BY c.rule, c.clinic_id, c.device_serial, c.boot_id, c.seq
            ON CONFLICT DO NOTHING
            RETURNING alerts.alert_id
        )
        SELECT coalesce(array_agg(ins.alert_id), '{}') FROM ins
        $q$, p_state)
        INTO v_ids USING p_cands, p_collector_id;
    RETURN v_ids;
END
$$;
COMMENT ON FUNCTION needletrace.raise_alerts(text, regclass, needletrace.alert_candidate[]) IS
    'Raises the alerts a rule found, once each: inserts each candidate''s state row into the rule''s '
    'state table and raises the alert only when that row was new. Returns the new alert ids.';

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

