-- 010_registry_roles.sql -- pens bound to their clinic (the device registry), and least privilege:
-- what each role may do, who acknowledged an alert, and the check the collector makes at connect.
--
-- The registry: one row per pen serial, the clinic it belongs to, its model and status. Every
-- replica shares it. Each batch transaction admits its pens (admit_devices, from evaluate_rules,
-- before any rule): a pen registered to another clinic, retired, or -- with the setting
-- unknown_devices = 'quarantine' -- not registered at all refuses the whole transaction with
-- SQLSTATE NT002, one line per refused pen in the DETAIL ("serial clinic reason registered"),
-- and the collector commits the batch again with those pens' messages quarantined (reasons
-- clinic_mismatch, device_retired, unknown_device). With unknown_devices = 'register' (the
-- default) a pen is registered to the clinic it is first seen under.

-- ---- the registry -----------------------------------------------------------------------------------
CREATE DOMAIN needletrace.identifier AS text CHECK (VALUE ~ '^[A-Za-z0-9._-]{1,64}$');
COMMENT ON DOMAIN needletrace.identifier IS
    'A serial, clinic id or model: 1-64 characters of [A-Za-z0-9._-] (as the decoder accepts).';
CREATE TABLE needletrace.devices (
    device_serial needletrace.identifier PRIMARY KEY,
    clinic_id     needletrace.identifier NOT NULL,
    device_model  needletrace.identifier,
    status        text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired')),
    registered_at timestamptz NOT NULL DEFAULT now(),
    registered_by text        NOT NULL DEFAULT current_user,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    updated_by    text        NOT NULL DEFAULT current_user
);
CREATE INDEX devices_clinic_idx ON needletrace.devices (clinic_id, device_serial);
COMMENT ON TABLE needletrace.devices IS
    'The device registry: each pen serial belongs to one clinic. Messages of a pen under another '
    'clinic''s topic, of a retired pen, or (unknown_devices = quarantine) of an unregistered pen '
    'are quarantined. Changed with `needletrace devices`; every change is kept in device_changes.';
COMMENT ON COLUMN needletrace.devices.device_serial IS 'The pen''s serial (its topic segment).';
COMMENT ON COLUMN needletrace.devices.clinic_id IS 'The clinic whose topic the pen may publish on.';
COMMENT ON COLUMN needletrace.devices.device_model IS 'Model, when registered by hand.';
COMMENT ON COLUMN needletrace.devices.status IS 'active, or retired (its messages are quarantined).';
COMMENT ON COLUMN needletrace.devices.registered_by IS
    'The database role that registered it, or "first sight by <collector id>".';
COMMENT ON COLUMN needletrace.devices.updated_by IS 'The database role of the last change.';

-- Every registration, move and retirement, as it happened (append-only).
CREATE TABLE needletrace.device_changes (
    change_id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_serial text        NOT NULL,
    clinic_id     text        NOT NULL,
    old_clinic_id text,
    status        text        NOT NULL,
    old_status    text,
    changed_by    text        NOT NULL,
    changed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_changes_serial_idx ON needletrace.device_changes (device_serial, changed_at);
COMMENT ON TABLE needletrace.device_changes IS
    'History of the device registry: one row per registration, move or status change.';
SELECT needletrace.make_append_only('device_changes');

-- Runs as the owner: the collector registers pens on first sight but may not write the history
-- by itself.
CREATE FUNCTION needletrace.device_changed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.clinic_id = OLD.clinic_id AND NEW.status = OLD.status THEN
        RETURN NULL;
    END IF;
    INSERT INTO needletrace.device_changes (device_serial, clinic_id, old_clinic_id, status,
                                            old_status, changed_by)
    VALUES (NEW.device_serial, NEW.clinic_id,
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.clinic_id END, NEW.status,
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
            CASE WHEN TG_OP = 'INSERT' THEN NEW.registered_by ELSE NEW.updated_by END);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION needletrace.device_changed() FROM PUBLIC;
CREATE TRIGGER device_changed AFTER INSERT OR UPDATE ON needletrace.devices
    FOR EACH ROW EXECUTE FUNCTION needletrace.device_changed();
-- A change is stamped with its time and role by the database, whatever the client sends.
CREATE FUNCTION needletrace.device_stamp() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    NEW.updated_by := current_user;
    NEW.registered_at := OLD.registered_at;
    NEW.registered_by := OLD.registered_by;
    RETURN NEW;
END
$$;
CREATE TRIGGER device_stamp BEFORE UPDATE ON needletrace.devices
    FOR EACH ROW EXECUTE FUNCTION needletrace.device_stamp();
-- Pens are moved or retired, never deleted: their history would lose its subject.
CREATE TRIGGER append_only BEFORE DELETE ON needletrace.devices
    FOR EACH ROW EXECUTE FUNCTION needletrace.refuse_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON needletrace.devices
    FOR EACH STATEMENT EXECUTE FUNCTION needletrace.refuse_change();
ALTER TABLE needletrace.devices ENABLE ALWAYS TRIGGER device_changed,
    ENABLE ALWAYS TRIGGER device_stamp, ENABLE ALWAYS TRIGGER append_only,
    ENABLE ALWAYS TRIGGER append_only_truncate;

-- The pens already seen, each registered to the clinic of its latest event (a pen seen under
-- several clinics was moved, or spoofed: those are named in a warning, for the registrar to
-- check). Aggregated per (pen, clinic) first: a hash of the pairs, not a sort of every event.
DO $$
DECLARE
    v_n    bigint;
    v_list text;
BEGIN
    CREATE TEMP TABLE nt_010_seen ON COMMIT DROP AS
    SELECT e.device_serial, e.clinic_id, min(e.received_at) AS first_at,
           max(e.received_at) AS last_at
      FROM needletrace.events e
     GROUP BY 1, 2;
    INSERT INTO needletrace.devices (device_serial, clinic_id, registered_at, registered_by,
                                     updated_by)
    SELECT DISTINCT ON (s.device_serial) s.device_serial, s.clinic_id, s.first_at,
           'first sight (migration 010)', 'migration 010'
      FROM nt_010_seen s
     ORDER BY s.device_serial, s.last_at DESC, s.clinic_id;
    SELECT count(*), string_agg(x.device_serial || ' (' || x.clinics || ')', ', ')
               FILTER (WHERE x.i <= 20)
      INTO v_n, v_list
      FROM (SELECT s.device_serial, string_agg(s.clinic_id, ' ' ORDER BY s.last_at) AS clinics,
                   row_number() OVER (ORDER BY s.device_serial) AS i
              FROM nt_010_seen s GROUP BY 1 HAVING count(*) > 1) x;
    IF v_n > 0 THEN
        RAISE WARNING '%', format('migration 010: %s pen(s) were seen under more than one '
                                  'clinic and are registered to the clinic of their latest '
                                  'event: %s; check them with `needletrace devices list`',
                                  v_n, v_list);
    END IF;
END
$$;

-- ---- the setting ------------------------------------------------------------------------------------
-- setting_defaults() as in 008_replica_heartbeat.sql, with unknown_devices; settings_check as in
-- 002_rules_policy.sql, with the kind 'choice:a,b' (one of the listed values).
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
            'transaction may hold the connection that long)'),
           ('unknown_devices', 'choice:register,quarantine', 'register',
            'A pen serial not in the device registry: register it to the clinic it is first seen '
            'under, or quarantine its messages (unknown_device) until it is registered with '
            '`needletrace devices add` -- the production choice')
$$;

CREATE OR REPLACE FUNCTION needletrace.settings_check() RETURNS trigger
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
    ELSIF v_kind IN ('um', 'count') THEN
        BEGIN
            n := NEW.value::bigint;
        EXCEPTION WHEN others THEN
            RAISE EXCEPTION 'needletrace.settings: % = "%" is not an integer', NEW.key, NEW.value
                USING ERRCODE = 'check_violation',
                      HINT = CASE v_kind WHEN 'um' THEN 'a length in micrometres, e.g. ''250'''
                                         ELSE 'a number of alerts, e.g. ''50''' END;
        END;
        IF v_kind = 'um' AND (n < 0 OR n > needletrace.depth_hard_max_um()) THEN
            RAISE EXCEPTION 'needletrace.settings: % = "%" must be between 0 and %', NEW.key,
                            NEW.value, needletrace.depth_hard_max_um()
                USING ERRCODE = 'check_violation';
        ELSIF v_kind = 'count' AND (n < 1 OR n > 1000000) THEN
            RAISE EXCEPTION 'needletrace.settings: % = "%" must be between 1 and 1000000', NEW.key,
                            NEW.value
                USING ERRCODE = 'check_violation';
        END IF;
    ELSIF v_kind LIKE 'choice:%' THEN
        IF NOT NEW.value = ANY (string_to_array(substr(v_kind, 8), ',')) THEN
            RAISE EXCEPTION 'needletrace.settings: % = "%" must be one of: %', NEW.key, NEW.value,
                            replace(substr(v_kind, 8), ',', ', ')
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

INSERT INTO needletrace.settings (key, value, note)
SELECT d.key, d.value, d.note FROM needletrace.setting_defaults() d
 WHERE d.key = 'unknown_devices'
ON CONFLICT (key) DO NOTHING;

-- ---- admitting a batch's pens -----------------------------------------------------------------------
-- Registers the batch's pens not yet in the registry to the clinic they came under, when
-- unknown_devices = 'register'. The collector's only way to write the registry (it has no INSERT
-- on devices): it cannot register a pen in quarantine mode, nor set a status or another
-- registered_by. Runs as the owner.
CREATE FUNCTION needletrace.register_first_sight(p_boots needletrace.batch_boot[],
                                                 p_collector_id text)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF needletrace.setting('unknown_devices') <> 'register' THEN
        RETURN;
    END IF;
    INSERT INTO needletrace.devices AS d (device_serial, clinic_id, registered_by, updated_by)
    SELECT DISTINCT ON (b.device_serial) b.device_serial, b.clinic_id,
           left('first sight by ' || p_collector_id, 100), left('first sight by ' || p_collector_id, 100)
      FROM unnest(p_boots) b
     WHERE NOT EXISTS (SELECT 1 FROM needletrace.devices x WHERE x.device_serial = b.device_serial)
     ORDER BY b.device_serial, b.clinic_id
    ON CONFLICT (device_serial) DO NOTHING;
END
$$;

-- Registers the batch's new pens (unknown_devices = 'register'; in serial order, so that two
-- replicas registering the same pens never deadlock; a pen new under two clinics in one batch
-- goes to the first clinic in order, and is refused under the other), then refuses the
-- transaction (NT002) when a pen of the batch is registered to another clinic, retired or
-- unknown. The DETAIL holds one line per refused (pen, clinic): "serial clinic reason
-- registered_clinic" ('?' when none: not an identifier), at most 256 lines (as many as a batch
-- of the collector quarantines for; it commits again without them and meets the next ones then). Serials and clinic ids are identifiers ([A-Za-z0-9._-]):
-- the decoder refuses anything else, so the lines split on spaces.
CREATE FUNCTION needletrace.admit_devices(p_boots needletrace.batch_boot[], p_collector_id text)
    RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    v_n      int;
    v_detail text;
BEGIN
    PERFORM needletrace.register_first_sight(p_boots, p_collector_id);
    SELECT count(*),
           string_agg(concat_ws(' ', r.device_serial, r.clinic_id, r.reason,
                                coalesce(r.registered, '?')), E'\n')
               FILTER (WHERE r.i <= 256)
      INTO v_n, v_detail
      FROM (SELECT p.*, row_number() OVER (ORDER BY p.device_serial, p.clinic_id) AS i
              FROM (SELECT DISTINCT b.device_serial, b.clinic_id, d.clinic_id AS registered,
                           CASE WHEN d.device_serial IS NULL THEN 'unknown_device'
                                WHEN d.status = 'retired' THEN 'device_retired'
                                WHEN d.clinic_id <> b.clinic_id THEN 'clinic_mismatch'
                           END AS reason
                      FROM unnest(p_boots) b
                      LEFT JOIN needletrace.devices d ON d.device_serial = b.device_serial) p
             WHERE p.reason IS NOT NULL) r;
    IF v_n > 0 THEN
        RAISE EXCEPTION 'the device registry refuses % pen(s) of this batch', v_n
            USING ERRCODE = 'NT002', DETAIL = v_detail,
                  HINT = 'the collector quarantines their messages and commits the rest';
    END IF;
END
$$;
COMMENT ON FUNCTION needletrace.admit_devices(needletrace.batch_boot[], text) IS
    'Registers the batch''s new pens (unknown_devices = register) and refuses the transaction '
    '(SQLSTATE NT002, one "serial clinic reason registered" line per pen in DETAIL) when a pen is '
    'registered to another clinic, retired, or unknown.';

-- evaluate_rules as in 006_evaluate.sql, admitting the batch's pens first.
CREATE OR REPLACE FUNCTION needletrace.evaluate_rules(p_collector_id text)
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
    PERFORM needletrace.admit_devices(v_batch.boots, p_collector_id);
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

-- ---- who acknowledged ---------------------------------------------------------------------------------
-- acked_role: the database role that inserted the acknowledgement, set by the database whatever
-- the client sends; acked_by stays the name the person gave (--by).
ALTER TABLE needletrace.alert_acks ADD COLUMN acked_role text NOT NULL
    DEFAULT '(before migration 010)';
ALTER TABLE needletrace.alert_acks ALTER COLUMN acked_role SET DEFAULT current_user;
COMMENT ON COLUMN needletrace.alert_acks.acked_role IS
    'The database login (session_user) that acknowledged: set by the database, not the client.';
COMMENT ON COLUMN needletrace.alert_acks.acked_by IS
    'The name the person gave (needletrace alerts ack --by; the role''s name when omitted).';

CREATE FUNCTION needletrace.ack_role() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.acked_role := session_user; -- the login, also after SET ROLE needletrace_staff
    NEW.acked_at := now();           -- not backdated by the client
    RETURN NEW;
END
$$;
CREATE TRIGGER ack_role BEFORE INSERT ON needletrace.alert_acks
    FOR EACH ROW EXECUTE FUNCTION needletrace.ack_role();
ALTER TABLE needletrace.alert_acks ENABLE ALWAYS TRIGGER ack_role;

-- ---- the collector's connection check ------------------------------------------------------------------
-- Whether the session's role is a superuser, or a member of the role that owns the evidence
-- tables (it could then disable their triggers, truncate or alter them): `needletrace run` refuses
-- to write as such unless database.allow_privileged is set.
-- Both the login (session_user) and the role in effect (current_user) count, and so does every
-- role either may become (pg_has_role MEMBER: also through SET ROLE): superuser, and, as owning,
-- the owner of the evidence tables, of their schema or of the database, CREATEROLE (can grant
-- itself any of those) and the roles that write server files or run server programs.
CREATE FUNCTION needletrace.connection_privileges(OUT superuser boolean, OUT owns_evidence boolean,
                                                  OUT role_name text)
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH who AS (
        SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname IN (session_user, current_user)
    ),
    owners AS (
        SELECT c.relowner AS oid FROM pg_catalog.pg_class c
         WHERE c.oid = 'needletrace.events'::pg_catalog.regclass
        UNION SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'needletrace'
        UNION SELECT d.datdba FROM pg_catalog.pg_database d
         WHERE d.datname = pg_catalog.current_database()
    ),
    can AS (
        SELECT r.* FROM pg_catalog.pg_roles r
         WHERE EXISTS (SELECT 1 FROM who w WHERE pg_catalog.pg_has_role(w.oid, r.oid, 'MEMBER'))
    )
    SELECT EXISTS (SELECT 1 FROM can WHERE can.rolsuper),
           EXISTS (SELECT 1 FROM can
                    WHERE can.rolcreaterole OR can.oid IN (SELECT oid FROM owners)
                       OR can.rolname IN ('pg_execute_server_program', 'pg_write_server_files')),
           CASE WHEN session_user = current_user THEN session_user::text
                ELSE session_user || ' (as ' || current_user || ')' END
$$;
COMMENT ON FUNCTION needletrace.connection_privileges() IS
    'Whether the current role is a superuser, or can act as the owner of the evidence tables (a '
    'member of the owner''s role, or CREATEROLE, which can make itself one): the collector '
    'refuses to run as either unless database.allow_privileged.';

-- ---- roles and grants ------------------------------------------------------------------------------------
-- needletrace_collector: inserts evidence, maintains rule state, registers pens on first sight;
--   no UPDATE or DELETE of evidence, no acknowledgements, no registry changes.
-- needletrace_auditor: reads everything.
-- needletrace_staff: reads alerts and acknowledges them (as itself: acked_role).
-- needletrace_registrar: adds, moves and retires pens (`needletrace devices`).
-- The owner (the role that ran migrate) keeps everything else; logins are created by the
-- administrator (README, "Security model").
SELECT needletrace.ensure_role('needletrace_registrar');
SELECT needletrace.collector_may_run(ARRAY[
        'admit_devices(needletrace.batch_boot[], text)', 'evaluate_rules(text)',
        'register_first_sight(needletrace.batch_boot[], text)',
        'move_checkpoint(text, bigint, bigint, bigint, boolean, int)']);
REVOKE INSERT ON needletrace.alert_acks FROM needletrace_collector, needletrace_staff;
GRANT INSERT (clinic_id, alert_id, acked_by, note) ON needletrace.alert_acks TO needletrace_staff;
GRANT SELECT ON needletrace.devices TO needletrace_collector;
GRANT USAGE ON SCHEMA needletrace TO needletrace_registrar;
GRANT SELECT, INSERT (device_serial, clinic_id, device_model, status),
      UPDATE (clinic_id, device_model, status) ON needletrace.devices TO needletrace_registrar;
GRANT SELECT ON needletrace.device_changes TO needletrace_registrar, needletrace_staff;
GRANT SELECT ON needletrace.devices TO needletrace_staff;
GRANT SELECT ON ALL TABLES IN SCHEMA needletrace TO needletrace_auditor;

-- ---- confirming the collector's verdicts -----------------------------------------------------------
-- A batch built with messages quarantined for the registry's verdicts (remembered by the
-- collector from an earlier NT002) confirms them first: p_lines holds "serial clinic reason"
-- lines. A verdict the registry no longer gives (the pen was registered, moved or put back in
-- service, or unknown_devices changed) refuses the transaction with SQLSTATE NT003, its serials
-- one per line in DETAIL: the collector forgets them and builds the batch again.
CREATE FUNCTION needletrace.confirm_refusals(p_lines text) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    v_strict  boolean := needletrace.setting('unknown_devices') = 'quarantine';
    v_changed text;
BEGIN
    SELECT string_agg(DISTINCT v.serial, E'\n')
      INTO v_changed
      FROM (SELECT split_part(l, ' ', 1) AS serial, split_part(l, ' ', 2) AS clinic,
                   split_part(l, ' ', 3) AS reason
              FROM regexp_split_to_table(p_lines, E'\n') AS l
             WHERE l <> '') v
      LEFT JOIN needletrace.devices d ON d.device_serial = v.serial
     WHERE v.reason IS DISTINCT FROM
           CASE WHEN d.device_serial IS NULL THEN CASE WHEN v_strict THEN 'unknown_device' END
                WHEN d.status = 'retired' THEN 'device_retired'
                WHEN d.clinic_id <> v.clinic THEN 'clinic_mismatch' END;
    IF v_changed IS NOT NULL THEN
        RAISE EXCEPTION 'the device registry changed for pens of this batch'
            USING ERRCODE = 'NT003', DETAIL = v_changed;
    END IF;
END
$$;
COMMENT ON FUNCTION needletrace.confirm_refusals(text) IS
    'Confirms the registry verdicts ("serial clinic reason" lines) a batch quarantined messages '
    'for; SQLSTATE NT003 with the serials whose verdict changed otherwise.';
SELECT needletrace.collector_may_run(ARRAY['confirm_refusals(text)']);
