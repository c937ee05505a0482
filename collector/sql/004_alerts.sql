-- 004_alerts.sql -- how alerts are raised (one helper for every rule, within the alert budgets),
-- published (NOTIFY, the JSON payload), queued for delivery (the outbox) and marked delivered.
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
    'What the rule saw (device time, limits and their source, first use, gap range...). A summary '
    'alert (over the alert budget) has "summary": true, "folded": how many alerts of its rule and '
    'pen it stands for (listed in needletrace.alerts_folded), "folded_by", "budget" and "sample".';
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

-- ---- tables: alert budgets, folded alerts, the delivery outbox -----------------------------------
-- Alerts raised per (clinic, device, session, rule), for the alert_budget_per_session setting.
-- Rule state, not evidence.
CREATE TABLE needletrace.alert_budget_sessions (
    clinic_id     text        NOT NULL,
    device_serial text        NOT NULL,
    session_id    text        NOT NULL,
    rule          text        NOT NULL,
    raised        bigint      NOT NULL DEFAULT 0,
    folded        bigint      NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, device_serial, session_id, rule)
);

-- Alerts over a budget: each is stored here, whole, instead of in alerts, and counted in the
-- summary alert of its (rule, device, batch). Keyed like alerts' "once per event" key.
CREATE TABLE needletrace.alerts_folded (
    rule             text        NOT NULL,
    clinic_id        text        NOT NULL,
    device_serial    text        NOT NULL,
    boot_id          bigint      NOT NULL,
    seq              bigint      NOT NULL,
    severity         text        NOT NULL,
    session_id       text,
    details          jsonb       NOT NULL,
    folded_by        text        NOT NULL CHECK (folded_by IN ('batch', 'session')),
    summary_alert_id bigint      NOT NULL,
    folded_at        timestamptz NOT NULL DEFAULT now(),
    collector_id     text,
    PRIMARY KEY (rule, clinic_id, device_serial, boot_id, seq),
    FOREIGN KEY (clinic_id, summary_alert_id) REFERENCES needletrace.alerts (clinic_id, alert_id)
);
CREATE INDEX alerts_folded_summary_idx ON needletrace.alerts_folded (clinic_id, summary_alert_id);
SELECT needletrace.make_append_only('alerts_folded');

-- Alerts not yet delivered (published and acknowledged by the broker): a row per alert, inserted
-- with the alert, deleted when its delivery is recorded. Small by construction, so reading what
-- is due costs what is pending, never what the alert history holds.
CREATE TABLE needletrace.alert_outbox (
    clinic_id       text        NOT NULL,
    alert_id        bigint      NOT NULL,
    severity_rank   smallint    NOT NULL, -- needletrace.severity_rank(): critical first
    collector_id    text,                 -- who raised it: it publishes first
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts        int         NOT NULL DEFAULT 0, -- refusals so far
    last_refused_at timestamptz,
    last_refused_by text,
    PRIMARY KEY (clinic_id, alert_id),
    FOREIGN KEY (clinic_id, alert_id) REFERENCES needletrace.alerts (clinic_id, alert_id)
);
CREATE UNIQUE INDEX alert_outbox_alert_id_idx ON needletrace.alert_outbox (alert_id);
CREATE INDEX alert_outbox_due_idx ON needletrace.alert_outbox (severity_rank, next_attempt_at, alert_id);
CREATE INDEX alert_outbox_owner_idx
    ON needletrace.alert_outbox (collector_id, severity_rank, next_attempt_at, alert_id);

COMMENT ON TABLE needletrace.alert_budget_sessions IS
    'Alert budgets: alerts raised and folded per (clinic, device, session, rule), against the '
    'alert_budget_per_session setting. Rule state, not evidence.';
COMMENT ON TABLE needletrace.alerts_folded IS
    'Alerts over a budget (alert_budget_per_batch, alert_budget_per_session), each stored whole '
    'with the summary alert that counts it (summary_alert_id); append-only. folded_by: which '
    'budget was exceeded.';
COMMENT ON TABLE needletrace.alert_outbox IS
    'Alerts waiting for delivery, critical first: due at next_attempt_at for the collector that '
    'raised them, 60 s later for any other; a refused delivery pushes next_attempt_at back '
    '(alert_retry_backoff, doubled per refusal up to alert_retry_backoff_max). Deleted once the '
    'delivery is recorded in alert_deliveries.';

-- 0 for critical, 1 for warning, 2 otherwise: the outbox's order.
CREATE FUNCTION needletrace.severity_rank(p_severity text) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE p_severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END::smallint
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

-- Raises new alerts within the budgets: per (rule, session) at most alert_budget_per_session over
-- the session's life, and per (rule, clinic, device) at most alert_budget_per_batch of this call
-- (a batch: evaluate_rules raises each rule once); critical ones first, then in array order. The others are folded: stored in alerts_folded and counted by ONE
-- summary alert per (rule, clinic, device) of this call -- same rule, the most severe of their
-- severities, on the event of the first one folded (whose own alert can never be raised: its
-- state row is in, or its event is evaluated once), details saying how many, by which budget,
-- and a sample of five. Every alert raised gets its outbox row. Locks: the session counters in
-- key order, after the rule's state rows and before the alerts. Returns the new alert ids.
CREATE FUNCTION needletrace.raise_within_budget(p_collector_id text,
                                                p_cands needletrace.alert_candidate[])
    RETURNS bigint[]
    LANGUAGE plpgsql AS $$
DECLARE
    v_batch   int := needletrace.setting('alert_budget_per_batch')::int;
    v_session int := needletrace.setting('alert_budget_per_session')::int;
    v_fold    text[]; -- per candidate (array index): NULL raised, else the budget it exceeded
    v_ids     bigint[];
    v_sum     bigint[] := '{}';
BEGIN
    IF p_cands IS NULL OR cardinality(p_cands) = 0 THEN
        RETURN '{}';
    END IF;
    -- The candidates' session counters, locked (created when new), and the decisions: first the
    -- session budget, then the batch budget among the candidates the session budget keeps.
    WITH u AS MATERIALIZED (
        SELECT u.*, row_number() OVER (PARTITION BY u.rule, u.clinic_id, u.device_serial,
                                                    u.session_id
                                       ORDER BY u.severity <> 'critical', u.ord) AS r_ses
          FROM unnest(p_cands) WITH ORDINALITY AS u(rule, severity, clinic_id, device_serial,
                                                    session_id, boot_id, seq, details, state, ord)
    ),
    s AS (
        INSERT INTO needletrace.alert_budget_sessions AS b
               (clinic_id, device_serial, session_id, rule)
        SELECT DISTINCT u.clinic_id, u.device_serial, u.session_id, u.rule
          FROM u WHERE u.session_id IS NOT NULL
         ORDER BY 1, 2, 3, 4
        ON CONFLICT (clinic_id, device_serial, session_id, rule) DO UPDATE SET updated_at = now()
        RETURNING b.clinic_id, b.device_serial, b.session_id, b.rule, b.raised
    ),
    k AS (
        SELECT u.ord,
               row_number() OVER (PARTITION BY u.rule, u.clinic_id, u.device_serial
                                  ORDER BY u.severity <> 'critical', u.ord) AS r_dev
          FROM u LEFT JOIN s
            ON s.clinic_id = u.clinic_id AND s.device_serial = u.device_serial
           AND s.session_id = u.session_id AND s.rule = u.rule
         WHERE coalesce(s.raised + u.r_ses <= v_session, true)
    )
    SELECT array_agg(CASE WHEN k.ord IS NULL THEN 'session'
                          WHEN k.r_dev > v_batch THEN 'batch' END ORDER BY u.ord)
      INTO v_fold
      FROM u LEFT JOIN k ON k.ord = u.ord;

    WITH ins AS (
        INSERT INTO needletrace.alerts (rule, severity, clinic_id, device_serial, session_id,
                                        boot_id, seq, details, collector_id)
        SELECT c.rule, c.severity, c.clinic_id, c.device_serial, c.session_id, c.boot_id, c.seq,
               c.details, p_collector_id
          FROM unnest(p_cands) WITH ORDINALITY AS c
         WHERE v_fold[c.ordinality] IS NULL
         ORDER BY c.rule, c.clinic_id, c.device_serial, c.boot_id, c.seq
        ON CONFLICT DO NOTHING
        RETURNING alerts.alert_id, alerts.clinic_id, alerts.severity
    ),
    ob AS (
        INSERT INTO needletrace.alert_outbox (clinic_id, alert_id, severity_rank, collector_id)
        SELECT ins.clinic_id, ins.alert_id, needletrace.severity_rank(ins.severity), p_collector_id
          FROM ins ORDER BY ins.clinic_id, ins.alert_id
    )
    SELECT coalesce(array_agg(ins.alert_id), '{}') INTO v_ids FROM ins;

    IF array_position(v_fold, 'batch') IS NOT NULL OR array_position(v_fold, 'session') IS NOT NULL
    THEN
        v_sum := needletrace.raise_summaries(p_collector_id, p_cands, v_fold, v_batch, v_session);
    END IF;

    UPDATE needletrace.alert_budget_sessions b
       SET raised = b.raised + x.raised, folded = b.folded + x.folded
      FROM (SELECT c.clinic_id, c.device_serial, c.session_id, c.rule,
                   count(*) FILTER (WHERE v_fold[c.ordinality] IS NULL) AS raised,
                   count(*) FILTER (WHERE v_fold[c.ordinality] IS NOT NULL) AS folded
              FROM unnest(p_cands) WITH ORDINALITY AS c
             WHERE c.session_id IS NOT NULL
             GROUP BY 1, 2, 3, 4) x
     WHERE b.clinic_id = x.clinic_id AND b.device_serial = x.device_serial
       AND b.session_id = x.session_id AND b.rule = x.rule;
    RETURN v_ids || v_sum;
END
$$;

-- The summary alerts of raise_within_budget: one per (rule, clinic, device) with folded
-- candidates (p_fold[i] not NULL), each folded candidate stored in alerts_folded under it.
-- Returns the summary alerts' ids.
CREATE FUNCTION needletrace.raise_summaries(p_collector_id text,
                                            p_cands needletrace.alert_candidate[], p_fold text[],
                                            p_batch int, p_session int)
    RETURNS bigint[]
    LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
BEGIN
    WITH f AS MATERIALIZED (
        SELECT c.*, p_fold[c.ordinality] AS folded_by,
               row_number() OVER (PARTITION BY c.rule, c.clinic_id, c.device_serial
                                  ORDER BY c.ordinality) AS k
          FROM unnest(p_cands) WITH ORDINALITY AS c
         WHERE p_fold[c.ordinality] IS NOT NULL
    ),
    g AS (
        SELECT f.rule, f.clinic_id, f.device_serial,
               min(f.boot_id) FILTER (WHERE f.k = 1) AS boot_id,
               min(f.seq) FILTER (WHERE f.k = 1) AS seq,
               min(f.session_id) FILTER (WHERE f.k = 1) AS session_id,
               (ARRAY['critical', 'warning', 'info'])[min(needletrace.severity_rank(f.severity)) + 1]
                   AS severity,
               count(*) AS n,
               count(*) FILTER (WHERE f.folded_by = 'batch') AS n_batch,
               count(*) FILTER (WHERE f.folded_by = 'session') AS n_session,
               count(DISTINCT f.session_id) AS n_sessions,
               jsonb_agg(jsonb_build_object('session_id', f.session_id, 'boot_id', f.boot_id,
                                            'seq', f.seq, 'severity', f.severity,
                                            'details', f.details) ORDER BY f.k)
                   FILTER (WHERE f.k <= 5) AS sample
          FROM f
         GROUP BY 1, 2, 3
    ),
    sm AS (
        INSERT INTO needletrace.alerts (rule, severity, clinic_id, device_serial, session_id,
                                        boot_id, seq, details, collector_id)
        SELECT g.rule, g.severity, g.clinic_id, g.device_serial, g.session_id, g.boot_id, g.seq,
               jsonb_build_object('summary', true, 'folded', g.n,
                                  'folded_by', jsonb_build_object('batch', g.n_batch,
                                                                  'session', g.n_session),
                                  'sessions', g.n_sessions,
                                  'budget', jsonb_build_object('per_batch', p_batch,
                                                               'per_session', p_session),
                                  'sample', g.sample),
               p_collector_id
          FROM g
         ORDER BY g.rule, g.clinic_id, g.device_serial, g.boot_id, g.seq
        RETURNING alerts.alert_id, alerts.clinic_id, alerts.rule, alerts.device_serial,
                  alerts.severity
    ),
    ob AS (
        INSERT INTO needletrace.alert_outbox (clinic_id, alert_id, severity_rank, collector_id)
        SELECT sm.clinic_id, sm.alert_id, needletrace.severity_rank(sm.severity), p_collector_id
          FROM sm ORDER BY sm.clinic_id, sm.alert_id
    ),
    fo AS (
        INSERT INTO needletrace.alerts_folded (rule, clinic_id, device_serial, boot_id, seq,
                                               severity, session_id, details, folded_by,
                                               summary_alert_id, collector_id)
        SELECT f.rule, f.clinic_id, f.device_serial, f.boot_id, f.seq, f.severity, f.session_id,
               f.details, f.folded_by, sm.alert_id, p_collector_id
          FROM f JOIN sm
            ON sm.rule = f.rule AND sm.clinic_id = f.clinic_id AND sm.device_serial = f.device_serial
         ORDER BY f.rule, f.clinic_id, f.device_serial, f.boot_id, f.seq
    )
    SELECT coalesce(array_agg(sm.alert_id), '{}') INTO v_ids FROM sm;
    RETURN v_ids;
END
$$;

-- The one place that raises alerts: inserts the candidates' state rows into p_state (in array
-- order: callers sort the candidates by the state table's key, the lock order), ON CONFLICT DO
-- NOTHING, and raises an alert for each candidate whose state row went in -- in the same
-- statement, so a concurrent batch holding the same key makes this one wait, and whoever commits
-- first owns the alert. Without p_state, the alerts' own unique key (rule, event) is the state:
-- a candidate whose alert exists (raised or folded) is not new. The new ones are raised within
-- the alert budgets (raise_within_budget). Returns the new alert ids (summaries included).
CREATE FUNCTION needletrace.raise_alerts(p_collector_id text, p_state regclass,
                                         p_cands needletrace.alert_candidate[])
    RETURNS bigint[]
    LANGUAGE plpgsql AS $$
DECLARE
    v_new needletrace.alert_candidate[];
BEGIN
    IF p_cands IS NULL OR cardinality(p_cands) = 0 THEN
        RETURN '{}';
    END IF;
    IF p_state IS NULL THEN
        v_new := ARRAY(
            SELECT ROW(c.rule, c.severity, c.clinic_id, c.device_serial, c.session_id, c.boot_id,
                       c.seq, c.details, c.state)::needletrace.alert_candidate
              FROM unnest(p_cands) WITH ORDINALITY AS c
             WHERE NOT EXISTS (SELECT 1 FROM needletrace.alerts a
                                WHERE a.rule = c.rule AND a.clinic_id = c.clinic_id
                                  AND a.device_serial = c.device_serial AND a.boot_id = c.boot_id
                                  AND a.seq = c.seq)
               AND NOT EXISTS (SELECT 1 FROM needletrace.alerts_folded z
                                WHERE z.rule = c.rule AND z.clinic_id = c.clinic_id
                                  AND z.device_serial = c.device_serial AND z.boot_id = c.boot_id
                                  AND z.seq = c.seq)
             ORDER BY c.ordinality);
        RETURN needletrace.raise_within_budget(p_collector_id, v_new);
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
        )
        SELECT coalesce(array_agg(ROW(c.rule, c.severity, c.clinic_id, c.device_serial,
                                      c.session_id, c.boot_id, c.seq, c.details,
                                      c.state)::needletrace.alert_candidate ORDER BY c.ord), '{}')
          FROM c JOIN st ON st.state_key = c.state_key
        $q$, p_state)
        INTO v_new USING p_cands;
    RETURN needletrace.raise_within_budget(p_collector_id, v_new);
END
$$;
COMMENT ON FUNCTION needletrace.raise_alerts(text, regclass, needletrace.alert_candidate[]) IS
    'Raises the alerts a rule found, once each: inserts each candidate''s state row into the rule''s '
    'state table and raises the alert only when that row was new, within the alert budgets. '
    'Returns the new alert ids.';
COMMENT ON FUNCTION needletrace.raise_within_budget(text, needletrace.alert_candidate[]) IS
    'Raises new alerts within alert_budget_per_batch (per rule and device, per call) and '
    'alert_budget_per_session; folds the rest into one summary alert per (rule, device) and '
    'needletrace.alerts_folded. Returns the new alert ids.';

-- ---- delivery bookkeeping ------------------------------------------------------------------------
-- Locks the outbox rows of the given alerts, in key order (so concurrent bookkeeping of the same
-- alerts by two replicas waits instead of deadlocking); returns their keys.
CREATE FUNCTION needletrace.lock_outbox(p_alert_ids bigint[])
    RETURNS TABLE(clinic_id text, alert_id bigint)
    LANGUAGE sql AS $$
    SELECT o.clinic_id, o.alert_id
      FROM needletrace.alert_outbox o
     WHERE o.alert_id = ANY (p_alert_ids)
     ORDER BY o.clinic_id, o.alert_id
       FOR UPDATE
$$;

-- Records that the given alerts were published (MQTT + NOTIFY) and takes them out of the outbox;
-- returns how many deliveries were new.
CREATE FUNCTION needletrace.mark_alerts_delivered(p_collector_id text, p_alert_ids bigint[])
    RETURNS int
    LANGUAGE plpgsql AS $$
DECLARE
    n int;
BEGIN
    IF p_alert_ids IS NULL OR cardinality(p_alert_ids) = 0 THEN
        RETURN 0;
    END IF;
    DELETE FROM needletrace.alert_outbox o
     USING needletrace.lock_outbox(p_alert_ids) l
     WHERE o.clinic_id = l.clinic_id AND o.alert_id = l.alert_id;
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

-- Records that the broker refused the given alerts: each stays in the outbox, due again after
-- alert_retry_backoff * 2^(refusals so far), at most alert_retry_backoff_max, so a refused alert
-- never stays first in line. Returns how many were still pending.
CREATE FUNCTION needletrace.mark_alerts_refused(p_collector_id text, p_alert_ids bigint[])
    RETURNS int
    LANGUAGE plpgsql AS $$
DECLARE
    v_base interval := needletrace.setting('alert_retry_backoff')::interval;
    v_max  interval := needletrace.setting('alert_retry_backoff_max')::interval;
    n      int;
BEGIN
    IF p_alert_ids IS NULL OR cardinality(p_alert_ids) = 0 THEN
        RETURN 0;
    END IF;
    UPDATE needletrace.alert_outbox o
       SET attempts = o.attempts + 1,
           next_attempt_at = now() + least(v_max, v_base * power(2, least(o.attempts, 30))),
           last_refused_at = now(), last_refused_by = p_collector_id
      FROM needletrace.lock_outbox(p_alert_ids) l
     WHERE o.clinic_id = l.clinic_id AND o.alert_id = l.alert_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Alerts due for delivery, critical before warning, then by due time: those this collector
-- raised, due now; and any collector's, due more than 60 s ago (a replica that died does not
-- strand its alerts; one alive has had 60 s to publish its own). Reads only the outbox (its
-- indexes) and the page's alerts. Does not notify.
CREATE FUNCTION needletrace.undelivered_alerts(p_collector_id text, p_limit int)
    RETURNS TABLE(alert_id bigint, clinic_id text, rule text, payload text)
    LANGUAGE sql STABLE AS $$
    WITH due AS (
        (SELECT o.clinic_id, o.alert_id, o.severity_rank, o.next_attempt_at
           FROM needletrace.alert_outbox o
          WHERE o.collector_id = p_collector_id AND o.next_attempt_at <= now()
          ORDER BY o.collector_id, o.severity_rank, o.next_attempt_at, o.alert_id
          LIMIT p_limit)
        UNION ALL
        (SELECT o.clinic_id, o.alert_id, o.severity_rank, o.next_attempt_at
           FROM needletrace.alert_outbox o
          WHERE o.next_attempt_at <= now() - interval '60 seconds'
            AND o.collector_id IS DISTINCT FROM p_collector_id
          ORDER BY o.severity_rank, o.next_attempt_at, o.alert_id
          LIMIT p_limit)
    ), page AS (
        SELECT due.* FROM due
         ORDER BY due.severity_rank, due.next_attempt_at, due.alert_id
         LIMIT p_limit
    )
    SELECT a.alert_id, a.clinic_id, a.rule, needletrace.alert_payload(a)
      FROM page JOIN needletrace.alerts a ON a.clinic_id = page.clinic_id AND a.alert_id = page.alert_id
     ORDER BY page.severity_rank, page.next_attempt_at, page.alert_id
$$;
COMMENT ON FUNCTION needletrace.undelivered_alerts(text, int) IS
    'A page of alerts due for delivery (needletrace.alert_outbox), critical first.';
COMMENT ON FUNCTION needletrace.mark_alerts_refused(text, bigint[]) IS
    'Puts alerts the broker refused back in the outbox with an exponential backoff.';

-- ---- grants (the rest of the collector's are in 006_evaluate.sql) ----------------------------------
SELECT needletrace.collector_may_run(ARRAY[
        'mark_alerts_refused(text, bigint[])', 'lock_outbox(bigint[])',
        'raise_within_budget(text, needletrace.alert_candidate[])',
        'raise_summaries(text, needletrace.alert_candidate[], text[], int, int)']);
GRANT SELECT, INSERT, UPDATE, DELETE ON needletrace.alert_outbox TO needletrace_collector;
GRANT SELECT, INSERT, UPDATE ON needletrace.alert_budget_sessions TO needletrace_collector;
GRANT SELECT, INSERT ON needletrace.alerts_folded TO needletrace_collector;
