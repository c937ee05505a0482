-- 013_partitions.sql -- events partitioned by quarter of received_at, with the event identity
-- (clinic_id, device_serial, boot_id, seq) still unique across every partition.
--
-- Why received_at: it is the collector's clock at receipt, never the device's (a pen's clock is
-- not trusted, DESIGN.md), it only grows, and an audit period ("this quarter") prunes to one
-- partition or two. A quarter per partition keeps 10^9 events in a few dozen partitions over
-- years, so a lookup that cannot prune (the rules' per-device lookups) probes a few small
-- indexes, and old quarters can be detached and archived whole.
--
-- How idempotency survives: PostgreSQL enforces a unique index on a partitioned table only when
-- it contains the partition key, and a redelivered message has another received_at, so the
-- events' own key could no longer catch it. The identity lives in needletrace.event_keys (one
-- narrow row per event, primary key = the identity, not partitioned), which a statement trigger
-- on events fills from the rows that statement inserted, in the same transaction: a second row
-- with a stored identity fails the statement with unique_violation (23505), in whatever partition
-- it would land, by whatever client (COPY or INSERT). The collector's fast path fails on it as
-- before and takes its staging path, which now inserts only the events whose identity
-- event_keys does not hold (txn.c).
--
-- Events already stored stay in events_legacy, attached as the partition of everything before
-- the first quarter boundary after now() (rows received later move to events_default); quarters
-- after it are created ahead by events_partitions_ensure() (at migrate, at each collector connect
-- and with each heartbeat: 017), and anything beyond them lands in events_default.
--
-- Collectors built before this migration must not run against it (their staging path relied on
-- ON CONFLICT on the events' key): the checkpoint function they call is renamed below, so their
-- batches fail -- an operational error they report and retry, storing nothing -- until upgraded.

-- ---- the old table becomes a partition ----------------------------------------------------------
-- Views reading events are bound to the table, not its name: their definitions are kept, to be
-- replaced on the partitioned table below.
CREATE TEMP TABLE nt_013_views ON COMMIT DROP AS
SELECT DISTINCT c.oid::regclass::text AS name, pg_get_viewdef(c.oid) AS def, c.oid AS view_oid
  FROM pg_depend d
  JOIN pg_rewrite r ON r.oid = d.objid
  JOIN pg_class c ON c.oid = r.ev_class
 WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = 'needletrace.events'::regclass
   AND c.oid <> 'needletrace.events'::regclass;

ALTER TABLE needletrace.events RENAME TO events_legacy;
DO $$
DECLARE
    i record;
BEGIN
    FOR i IN SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
              WHERE x.indrelid = 'needletrace.events_legacy'::regclass LOOP
        EXECUTE format('ALTER INDEX needletrace.%I RENAME TO %I', i.relname,
                       'events_legacy_' || substr(i.relname, length('events_') + 1));
    END LOOP;
END
$$;
-- The partitioned table's row trigger is cloned onto each partition, this one included.
DROP TRIGGER append_only ON needletrace.events_legacy;
REVOKE ALL ON needletrace.events_legacy FROM needletrace_collector, needletrace_auditor;

CREATE TABLE needletrace.events (
    LIKE needletrace.events_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE
        INCLUDING COMMENTS
) PARTITION BY RANGE (received_at);
COMMENT ON TABLE needletrace.events IS
    'One row per accepted event (DESIGN.md 4), partitioned by quarter of received_at; the event '
    'identity (clinic_id, device_serial, boot_id, seq) is unique across partitions through '
    'needletrace.event_keys. Append-only.';

-- A function taking a row of events takes a row of the partitioned table now (as in 005_rules.sql).
DROP FUNCTION needletrace.mount_alert(text, needletrace.events_legacy, jsonb);
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

-- ---- the identity ----------------------------------------------------------------------------------
CREATE TABLE needletrace.event_keys (
    clinic_id      text        NOT NULL,
    device_serial  text        NOT NULL,
    boot_id        bigint      NOT NULL,
    seq            bigint      NOT NULL,
    payload_sha256 bytea       NOT NULL,
    received_at    timestamptz NOT NULL,
    tx             bigint      NOT NULL DEFAULT txid_current()
);
COMMENT ON TABLE needletrace.event_keys IS
    'The identity of every stored event, unique across the partitions of needletrace.events; '
    'written only by the trigger event_keys on events, in the transaction that stores the event. '
    'Append-only.';
COMMENT ON COLUMN needletrace.event_keys.clinic_id IS 'The event''s clinic (its topic).';
COMMENT ON COLUMN needletrace.event_keys.device_serial IS 'The event''s pen (its topic).';
COMMENT ON COLUMN needletrace.event_keys.boot_id IS
    'The pen''s boot counter (device-reported, +1 at every power-on).';
COMMENT ON COLUMN needletrace.event_keys.seq IS 'The event''s sequence number within the boot.';
COMMENT ON COLUMN needletrace.event_keys.payload_sha256 IS
    'SHA-256 of the raw message that carried the stored event (raw_messages.payload_sha256).';
COMMENT ON COLUMN needletrace.event_keys.received_at IS
    'The stored event''s received_at: names the partition of events that holds it.';
COMMENT ON COLUMN needletrace.event_keys.tx IS 'The transaction that stored the event.';

-- Loaded in key order, then keyed: a primary key built once is several times cheaper than one
-- maintained row by row over a large table.
INSERT INTO needletrace.event_keys (clinic_id, device_serial, boot_id, seq, payload_sha256,
                                    received_at, tx)
SELECT clinic_id, device_serial, boot_id, seq, payload_sha256, received_at, tx
  FROM needletrace.events_legacy
 ORDER BY clinic_id, device_serial, boot_id, seq;
ALTER TABLE needletrace.event_keys ADD PRIMARY KEY (clinic_id, device_serial, boot_id, seq);
ALTER TABLE needletrace.events_legacy DROP CONSTRAINT events_legacy_pkey;
SELECT needletrace.make_append_only('event_keys');

-- Runs as the owner (SECURITY DEFINER): nobody writes event_keys but this trigger.
CREATE FUNCTION needletrace.event_keys_insert() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO needletrace.event_keys (clinic_id, device_serial, boot_id, seq, payload_sha256,
                                        received_at)
    SELECT n.clinic_id, n.device_serial, n.boot_id, n.seq, n.payload_sha256, n.received_at
      FROM nt_new_events n;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION needletrace.event_keys_insert() FROM PUBLIC;
CREATE TRIGGER event_keys AFTER INSERT ON needletrace.events
    REFERENCING NEW TABLE AS nt_new_events
    FOR EACH STATEMENT EXECUTE FUNCTION needletrace.event_keys_insert();
ALTER TABLE needletrace.events ENABLE ALWAYS TRIGGER event_keys;

-- ---- indexes (each partition has its own; events_legacy's are matched, the identity's built) -----
CREATE INDEX events_identity_idx ON needletrace.events (clinic_id, device_serial, boot_id, seq);
CREATE INDEX events_session_idx ON needletrace.events (clinic_id, device_serial, session_id)
    WHERE kind IN ('session_started', 'session_ended');
CREATE INDEX events_cartridge_idx ON needletrace.events (gtin, cartridge_serial)
    WHERE gtin IS NOT NULL;
CREATE INDEX events_lot_idx ON needletrace.events (gtin, lot) WHERE gtin IS NOT NULL;
CREATE INDEX events_received_at_brin ON needletrace.events USING brin (received_at);
CREATE INDEX events_tx_idx ON needletrace.events (tx);
CREATE INDEX events_tx_mounted_idx ON needletrace.events (tx) WHERE kind = 'cartridge_mounted';
CREATE INDEX events_cartridge_change_idx
    ON needletrace.events (clinic_id, device_serial, boot_id, session_id, seq)
    WHERE kind IN ('cartridge_mounted', 'cartridge_unmounted');
CREATE INDEX events_clinic_time_idx ON needletrace.events (clinic_id, device_time)
    WHERE kind IN ('session_started', 'cartridge_mounted');

-- ---- partitions ---------------------------------------------------------------------------------
-- The upper bound of a partition of events ('infinity' for the default partition).
CREATE FUNCTION needletrace.events_partition_upper(p_part regclass) RETURNS timestamptz
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN b ~ 'DEFAULT' THEN 'infinity'::timestamptz
                ELSE substring(b FROM 'TO \(''([^'']+)''\)')::timestamptz END
      FROM (SELECT pg_get_expr(c.relpartbound, c.oid) AS b FROM pg_class c WHERE c.oid = p_part) x
$$;

-- A new partition: the append-only TRUNCATE trigger (statement triggers are not cloned), and the
-- table's comments.
CREATE FUNCTION needletrace.events_partition_dress(p_part regclass) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION needletrace.refuse_change()', p_part);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER append_only_truncate', p_part);
    EXECUTE format('COMMENT ON TABLE %s IS %L', p_part,
                   'A partition of needletrace.events: ' ||
                   pg_get_expr((SELECT relpartbound FROM pg_class WHERE oid = p_part), p_part) ||
                   ' (received_at). Read it through needletrace.events.');
    PERFORM needletrace.events_partition_comments(p_part);
END
$$;

-- Copies the column comments of events onto a partition (after a migration changed them too).
CREATE FUNCTION needletrace.events_partition_comments(p_part regclass) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a record;
BEGIN
    FOR a IN SELECT pa.attname, col_description(pa.attrelid, pa.attnum) AS c
               FROM pg_attribute pa
              WHERE pa.attrelid = 'needletrace.events'::regclass AND pa.attnum > 0
                AND NOT pa.attisdropped AND col_description(pa.attrelid, pa.attnum) IS NOT NULL LOOP
        EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', p_part, a.attname, a.c);
    END LOOP;
END
$$;

-- Creates the quarters of events from the last one's end until p_ahead quarters after the
-- current one (at most 8); returns how many it created. A quarter whose rows already went to
-- events_default is not created (a warning says so; the rows stay readable there). Never fails:
-- at a collector's connect a busy table (lock_timeout) is left for the next connect.
CREATE FUNCTION needletrace.events_partitions_ensure(p_ahead int DEFAULT 2) RETURNS int
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET lock_timeout = '2s' SET timezone = 'UTC' AS $$
DECLARE
    v_until timestamptz := (date_trunc('quarter', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
                           + make_interval(months => 3 * (least(greatest(p_ahead, 0), 8) + 1));
    v_from  timestamptz;
    v_to    timestamptz;
    v_name  text;
    v_made  int := 0;
BEGIN
    SELECT max(u) INTO v_from
      FROM (SELECT needletrace.events_partition_upper(i.inhrelid) AS u
              FROM pg_inherits i WHERE i.inhparent = 'needletrace.events'::regclass) p
     WHERE u < 'infinity';
    WHILE v_from < v_until LOOP
        v_to := v_from + interval '3 months';
        v_name := to_char(v_from AT TIME ZONE 'UTC', '"events_"YYYY"q"Q');
        IF EXISTS (SELECT 1 FROM needletrace.events_default d
                    WHERE d.received_at >= v_from AND d.received_at < v_to) THEN
            RAISE WARNING 'needletrace.events: rows received in % are in events_default; '
                          'partition % not created', v_name, v_name;
            EXIT;
        END IF;
        BEGIN
            EXECUTE format('CREATE TABLE needletrace.%I PARTITION OF needletrace.events '
                           'FOR VALUES FROM (%L) TO (%L)', v_name, v_from, v_to);
            PERFORM needletrace.events_partition_dress(format('needletrace.%I', v_name)::regclass);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'needletrace.events: could not create partition %: %', v_name, SQLERRM;
            EXIT;
        END;
        v_made := v_made + 1;
        v_from := v_to;
    END LOOP;
    RETURN v_made;
END
$$;
REVOKE ALL ON FUNCTION needletrace.events_partitions_ensure(int) FROM PUBLIC;

-- events_legacy: everything received before the first quarter boundary after now(). A row
-- received later than that (a collector clock that ran far ahead) moves, unchanged, to
-- events_default, so that one such row cannot stretch events_legacy over the years to come and
-- keep every quarter from having its partition. (The ledger's hashes do not depend on the
-- partition; event_keys already holds the rows' identities.) The attach validates the bound by a
-- scan of events_legacy.
CREATE TABLE needletrace.events_default PARTITION OF needletrace.events DEFAULT;
DO $$
DECLARE
    v_bound timestamptz := (date_trunc('quarter', now() AT TIME ZONE 'UTC') + interval '3 months')
                           AT TIME ZONE 'UTC';
    v_cols  text := (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
                       FROM pg_attribute a
                      WHERE a.attrelid = 'needletrace.events'::regclass AND a.attnum > 0
                        AND NOT a.attisdropped);
    v_moved bigint;
BEGIN
    EXECUTE format('WITH moved AS (DELETE FROM needletrace.events_legacy WHERE received_at >= %L '
                   'RETURNING %s) INSERT INTO needletrace.events_default (%s) SELECT %s FROM moved',
                   v_bound, v_cols, v_cols, v_cols);
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    IF v_moved > 0 THEN
        RAISE NOTICE '013: % event(s) received after % moved to events_default', v_moved, v_bound;
    END IF;
    EXECUTE format('ALTER TABLE needletrace.events ATTACH PARTITION needletrace.events_legacy '
                   'FOR VALUES FROM (MINVALUE) TO (%L)', v_bound);
END
$$;
COMMENT ON TABLE needletrace.events_legacy IS
    'The partition of needletrace.events holding what was stored before migration 013 (and '
    'anything received before its upper bound). Read it through needletrace.events.';
SELECT needletrace.events_partition_comments('needletrace.events_legacy');
-- (events_legacy keeps its TRUNCATE trigger of 001; the row trigger below is cloned onto it.)
SELECT needletrace.events_partition_dress('needletrace.events_default');
SELECT needletrace.make_append_only('events');
SELECT needletrace.events_partitions_ensure();

-- ---- the views, on the partitioned table ----------------------------------------------------------
DO $$
DECLARE
    v record;
BEGIN
    FOR v IN SELECT name, def FROM nt_013_views ORDER BY view_oid LOOP
        EXECUTE format('CREATE OR REPLACE VIEW %s AS %s', v.name, v.def);
    END LOOP;
END
$$;

-- ---- grants -------------------------------------------------------------------------------------
-- As before on events (011): the collector inserts every column but tx and inserted_at and reads;
-- the auditor reads. Nobody but the owner touches a partition directly. Both read event_keys
-- (the staging path's test of what is stored).
GRANT SELECT ON needletrace.events, needletrace.event_keys
    TO needletrace_collector, needletrace_auditor;
DO $$
BEGIN
    EXECUTE format('GRANT INSERT (%s) ON needletrace.events TO needletrace_collector',
                   (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
                      FROM pg_attribute a
                     WHERE a.attrelid = 'needletrace.events'::regclass
                       AND a.attnum > 0 AND NOT a.attisdropped
                       AND a.attname NOT IN ('tx', 'inserted_at')));
END
$$;
SELECT needletrace.collector_may_run(ARRAY['events_partitions_ensure(int)']);

-- Collectors built before this migration stop here (see the header).
ALTER FUNCTION needletrace.move_checkpoint_sealed(text, bigint, bigint, bigint, boolean, int)
    RENAME TO move_checkpoint_keyed;

-- Nothing may still use the old table's row type (it would read no new event).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc p
                WHERE p.prorettype = 'needletrace.events_legacy'::regtype
                   OR 'needletrace.events_legacy'::regtype = ANY (p.proargtypes::oid[]))
       OR EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                   WHERE a.atttypid = 'needletrace.events_legacy'::regtype
                     AND NOT a.attisdropped AND c.relkind <> 'c') THEN
        RAISE EXCEPTION '013: something still uses the row type of events_legacy';
    END IF;
END
$$;
