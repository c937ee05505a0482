-- 008_replica_heartbeat.sql -- which collector replicas are alive: a heartbeat per replica, and
-- another replica's alerts are taken over only when that replica is known gone.
--
-- Each collector records a heartbeat when it connects and every few seconds after
-- (collector_heartbeat, in its bookkeeping transactions, never in one that carries events), and
-- marks itself stopped when it shuts down cleanly (collector_stopped). A replica is gone when it
-- is marked stopped, when its heartbeat is older than the setting replica_gone_after, or when it
-- never recorded one. undelivered_alerts() hands a replica the alerts another raised only when
-- that one is gone -- never merely because a delivery is late: an alive replica publishes its own
-- alerts, and a late one is not published twice for being late.

-- ---- the setting -----------------------------------------------------------------------------------
-- setting_defaults() as in 002_rules_policy.sql, with replica_gone_after.
CREATE OR REPLACE FUNCTION needletrace.setting_defaults()
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
            'The longest wait between two delivery attempts of a refused alert'),
           ('replica_gone_after', 'interval', '3 minutes',
            'A collector replica whose heartbeat (every 5 s, in its bookkeeping transactions, '
            'only while it can publish to the broker) is older than this is gone: the other '
            'replicas publish its undelivered alerts. Keep it above database.watchdog_ms (a '
            'transaction may hold the connection that long)')
$$;

INSERT INTO needletrace.settings (key, value, note)
SELECT d.key, d.value, d.note FROM needletrace.setting_defaults() d
 WHERE d.key = 'replica_gone_after'
ON CONFLICT (key) DO NOTHING;

-- ---- the replicas ----------------------------------------------------------------------------------
CREATE TABLE needletrace.collectors (
    collector_id  text        PRIMARY KEY,
    connected_at  timestamptz NOT NULL DEFAULT now(), -- the first heartbeat of its current run
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz                         -- set by a clean stop, cleared by a heartbeat
);
COMMENT ON TABLE needletrace.collectors IS
    'Collector replicas and their heartbeats (every 5 s while connected and ingesting). A replica '
    'is gone when stopped_at is set (clean stop) or heartbeat_at is older than the setting '
    'replica_gone_after; only then do the others publish its undelivered alerts. Not evidence.';

-- The heartbeat of p_collector_id: alive now (a stop mark is cleared; connected_at restarts after
-- a stop or a gap of more than replica_gone_after).
CREATE FUNCTION needletrace.collector_heartbeat(p_collector_id text) RETURNS void
    LANGUAGE sql AS $$
    INSERT INTO needletrace.collectors AS c (collector_id) VALUES (p_collector_id)
    ON CONFLICT (collector_id) DO UPDATE
       SET heartbeat_at = now(), stopped_at = NULL,
           connected_at = CASE WHEN c.stopped_at IS NOT NULL
                                 OR c.heartbeat_at <= now() - needletrace.setting('replica_gone_after')::interval
                               THEN now() ELSE c.connected_at END
$$;

-- p_collector_id stopped cleanly: the others may publish its alerts at once.
CREATE FUNCTION needletrace.collector_stopped(p_collector_id text) RETURNS void
    LANGUAGE sql AS $$
    UPDATE needletrace.collectors SET stopped_at = now() WHERE collector_id = p_collector_id
$$;

-- The replicas alive now (not stopped, heartbeat within replica_gone_after).
CREATE FUNCTION needletrace.collectors_alive() RETURNS text[]
    LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(c.collector_id), '{}')
      FROM needletrace.collectors c
     WHERE c.stopped_at IS NULL
       AND c.heartbeat_at > now() - needletrace.setting('replica_gone_after')::interval
$$;

-- ---- undelivered alerts: another replica's only when it is gone ------------------------------------
-- Alerts due for delivery, critical before warning, then by due time: those this collector
-- raised, due now; and those of collectors that are gone (collectors_alive()), due now -- never
-- those of a replica alive, however late (it publishes its own). Reads only the outbox (its
-- indexes), the replicas and the page's alerts. Does not notify.
CREATE OR REPLACE FUNCTION needletrace.undelivered_alerts(p_collector_id text, p_limit int)
    RETURNS TABLE(alert_id bigint, clinic_id text, rule text, payload text)
    LANGUAGE sql STABLE AS $$
    WITH alive AS (
        SELECT needletrace.collectors_alive() AS ids
    ), due AS (
        (SELECT o.clinic_id, o.alert_id, o.severity_rank, o.next_attempt_at
           FROM needletrace.alert_outbox o
          WHERE o.collector_id = p_collector_id AND o.next_attempt_at <= now()
          ORDER BY o.collector_id, o.severity_rank, o.next_attempt_at, o.alert_id
          LIMIT p_limit)
        UNION ALL
        (SELECT o.clinic_id, o.alert_id, o.severity_rank, o.next_attempt_at
           FROM needletrace.alert_outbox o CROSS JOIN alive
          WHERE o.next_attempt_at <= now()
            AND o.collector_id IS DISTINCT FROM p_collector_id
            AND NOT (coalesce(o.collector_id, '') = ANY (alive.ids))
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
    'A page of alerts due for delivery (needletrace.alert_outbox), critical first: the caller''s '
    'own, and those of replicas that are gone (needletrace.collectors, replica_gone_after).';
COMMENT ON TABLE needletrace.alert_outbox IS
    'Alerts waiting for delivery, critical first: due at next_attempt_at for the collector that '
    'raised them, and for any other once that collector is gone (stopped, or no heartbeat for '
    'replica_gone_after); a refused delivery pushes next_attempt_at back (alert_retry_backoff, '
    'doubled per refusal up to alert_retry_backoff_max). Deleted once the delivery is recorded in '
    'alert_deliveries.';

SELECT needletrace.collector_may_run(ARRAY[
        'collector_heartbeat(text)', 'collector_stopped(text)', 'collectors_alive()']);
GRANT SELECT, INSERT, UPDATE ON needletrace.collectors TO needletrace_collector;
GRANT SELECT ON needletrace.collectors TO needletrace_auditor;
