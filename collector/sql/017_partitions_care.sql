-- 017_partitions_care.sql -- keeping events' quarters ahead of time (013_partitions.sql), hardened.
--
-- * A quarter whose rows already went to events_default (a collector clock far ahead, or nobody
--   creating partitions for months) is skipped with a warning, and the quarters after it are still
--   created: before, the first such quarter stopped partition creation for good.
-- * Never fails its caller: everything, the reading of the partitions' bounds included (which waits
--   for a lock on each partition), runs under lock_timeout inside an exception block, so a busy
--   table or an owner's ALTER of a partition delays the next quarter instead of failing a
--   collector's connect or batch.
-- * At most 8 partitions per call.
-- * The collector may only call events_partitions_ensure() (two quarters ahead): its login can
--   no longer make it take the table's exclusive lock once per quarter up to two years ahead.
-- * Called by every collector's heartbeat too (008), so quarters are created ahead while a
--   collector runs for months without reconnecting.

-- (Recreated without 013's default for p_ahead: the collector's no-argument version below.)
DROP FUNCTION needletrace.events_partitions_ensure(int);
CREATE FUNCTION needletrace.events_partitions_ensure(p_ahead int) RETURNS int
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET lock_timeout = '2s' SET timezone = 'UTC' AS $$
DECLARE
    v_until timestamptz := (date_trunc('quarter', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
                           + make_interval(months => 3 * (least(greatest(p_ahead, 0), 8) + 1));
    v_from  timestamptz;
    v_to    timestamptz;
    v_name  text;
    v_made  int := 0;
    v_tries int := 0;
BEGIN
    SELECT max(u) INTO v_from
      FROM (SELECT needletrace.events_partition_upper(i.inhrelid) AS u
              FROM pg_inherits i WHERE i.inhparent = 'needletrace.events'::regclass) p
     WHERE u < 'infinity';
    WHILE v_from < v_until AND v_tries < 8 LOOP
        v_tries := v_tries + 1;
        v_to := v_from + interval '3 months';
        v_name := to_char(v_from AT TIME ZONE 'UTC', '"events_"YYYY"q"Q');
        IF EXISTS (SELECT 1 FROM needletrace.events_default d
                    WHERE d.received_at >= v_from AND d.received_at < v_to) THEN
            RAISE WARNING 'needletrace.events: rows received in % are in events_default; '
                          'that quarter keeps them there (README, Growth)', v_name;
        ELSE
            EXECUTE format('CREATE TABLE needletrace.%I PARTITION OF needletrace.events '
                           'FOR VALUES FROM (%L) TO (%L)', v_name, v_from, v_to);
            PERFORM needletrace.events_partition_dress(format('needletrace.%I', v_name)::regclass);
            v_made := v_made + 1;
        END IF;
        v_from := v_to;
    END LOOP;
    RETURN v_made;
EXCEPTION WHEN OTHERS THEN
    -- (the partitions created before the failure are rolled back with it: a retry makes them)
    RAISE WARNING 'needletrace.events: could not create the partitions ahead: % (SQLSTATE %)',
                  SQLERRM, SQLSTATE;
    RETURN 0;
END
$$;
REVOKE ALL ON FUNCTION needletrace.events_partitions_ensure(int) FROM PUBLIC;

CREATE FUNCTION needletrace.events_partitions_ensure() RETURNS int
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT needletrace.events_partitions_ensure(2)
$$;
REVOKE ALL ON FUNCTION needletrace.events_partitions_ensure() FROM PUBLIC;
COMMENT ON FUNCTION needletrace.events_partitions_ensure() IS
    'Creates the missing quarters of needletrace.events up to two after the current one; never '
    'fails (warns). Called by each collector at connect and with its heartbeat.';
COMMENT ON FUNCTION needletrace.events_partitions_ensure(int) IS
    'Creates the missing quarters of needletrace.events up to p_ahead (at most 8) after the '
    'current one, at most 8 per call, skipping a quarter whose rows are in events_default; '
    'returns how many it created; never fails (warns). For the owner.';
SELECT needletrace.collector_may_run(ARRAY['events_partitions_ensure()']);

-- The heartbeat (008) also keeps the quarters ahead. It runs in the collector's transactions
-- before any row is written; when a partition is made, the table's exclusive lock is held to the
-- end of that transaction (once per quarter).
CREATE OR REPLACE FUNCTION needletrace.collector_heartbeat(p_collector_id text) RETURNS void
    LANGUAGE sql AS $$
    INSERT INTO needletrace.collectors AS c (collector_id) VALUES (p_collector_id)
    ON CONFLICT (collector_id) DO UPDATE
       SET heartbeat_at = now(), stopped_at = NULL,
           connected_at = CASE WHEN c.stopped_at IS NOT NULL
                                 OR c.heartbeat_at <= now() - needletrace.setting('replica_gone_after')::interval
                               THEN now() ELSE c.connected_at END;
    SELECT needletrace.events_partitions_ensure();
$$;
