-- 001_init.sql -- the evidence tables, views, append-only triggers and roles of schema needletrace.
--
-- Applied by `needletrace migrate` inside one transaction; schema needletrace and
-- needletrace.schema_migrations exist already. Every table that grows with telemetry has
-- clinic_id in its key so it can be distributed (Citus) or partitioned later.

-- One row per accepted MQTT message: the raw payload is the evidence behind its events.
CREATE TABLE needletrace.raw_messages (
    clinic_id        text        NOT NULL,
    device_serial    text        NOT NULL,
    payload_sha256   bytea       NOT NULL CHECK (octet_length(payload_sha256) = 32),
    received_at      timestamptz NOT NULL,
    topic            text        NOT NULL,
    payload          bytea       NOT NULL,
    boot_id          bigint      NOT NULL,
    event_count      int         NOT NULL CHECK (event_count > 0),
    first_seq        bigint      NOT NULL,
    last_seq         bigint      NOT NULL,
    device_model     text        NOT NULL,
    firmware_version text        NOT NULL,
    collector_id     text        NOT NULL,
    journal_pos      bigint      NOT NULL,
    inserted_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, device_serial, payload_sha256)
);
CREATE INDEX raw_messages_received_at_brin ON needletrace.raw_messages USING brin (received_at);

-- One row per accepted event; the typed body columns that do not apply to kind are NULL.
CREATE TABLE needletrace.events (
    clinic_id              text        NOT NULL,
    device_serial          text        NOT NULL,
    boot_id                bigint      NOT NULL,
    seq                    bigint      NOT NULL,
    kind                   text        NOT NULL CHECK (kind IN (
                               'session_started', 'session_ended', 'cartridge_mounted',
                               'cartridge_unmounted', 'needle_setting', 'needle_activity',
                               'device_status', 'device_fault')),
    device_time            timestamptz NOT NULL,
    received_at            timestamptz NOT NULL,
    session_id             text,
    payload_sha256         bytea       NOT NULL,
    collector_id           text        NOT NULL,
    -- session_started
    operator_id            text,
    patient_ref            text,
    -- session_ended
    motor_seconds          bigint,
    -- cartridge_mounted, cartridge_unmounted
    gtin                   text,
    lot                    text,
    cartridge_serial       text,
    expiry                 date,
    needle_count           int,
    sterile_barrier_intact boolean,
    motor_ms               bigint,
    -- needle_setting, needle_activity
    depth_um               int,
    stroke_rate_hz         int,
    area                   text CHECK (area IN (
                               'unspecified', 'forehead', 'periorbital', 'nose', 'cheeks',
                               'perioral', 'chin', 'neck', 'decolletage', 'scalp', 'body')),
    duration_ms            bigint,
    -- device_status
    battery_pct            smallint,
    temperature_dc         int,
    motor_seconds_total    bigint,
    -- device_fault
    fault_code             bigint,
    fault_message          text,
    inserted_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, device_serial, boot_id, seq)
);
-- Session lookups (the sessions view, per-session audits). Partial: needle activity and
-- settings, the bulk of the rows, would make it the most expensive index to maintain.
CREATE INDEX events_session_idx ON needletrace.events (clinic_id, device_serial, session_id)
    WHERE kind IN ('session_started', 'session_ended');
-- Cartridge history across devices and clinics: "was this cartridge used twice?".
CREATE INDEX events_cartridge_idx ON needletrace.events (gtin, cartridge_serial)
    WHERE gtin IS NOT NULL;
-- Recall audits by lot.
CREATE INDEX events_lot_idx ON needletrace.events (gtin, lot) WHERE gtin IS NOT NULL;
-- Time-range audits; BRIN stays tiny and cheap to maintain on an append-only table.
CREATE INDEX events_received_at_brin ON needletrace.events USING brin (received_at);

-- One row per rejected message, with its raw bytes. message_key is the SHA-256 of
-- topic || 0x00 || payload, so a redelivered identical bad message is stored once.
-- topic holds the raw topic, or, when that is not valid UTF-8 or contains NUL, an escaped
-- form in which every offending byte (and every backslash) is written as \xNN.
CREATE TABLE needletrace.quarantine (
    clinic_id      text        NOT NULL DEFAULT '',
    message_key    bytea       NOT NULL CHECK (octet_length(message_key) = 32),
    received_at    timestamptz NOT NULL,
    topic          text        NOT NULL,
    payload        bytea       NOT NULL,
    payload_sha256 bytea       NOT NULL,
    reason         text        NOT NULL,
    detail         text        NOT NULL DEFAULT '',
    device_serial  text,
    collector_id   text        NOT NULL,
    journal_pos    bigint      NOT NULL,
    inserted_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, message_key)
);
CREATE INDEX quarantine_received_at_idx ON needletrace.quarantine (received_at);

-- How far each collector replica has committed its journal; upserted in each batch.
CREATE TABLE needletrace.collector_checkpoints (
    collector_id text        PRIMARY KEY,
    journal_id   bigint      NOT NULL,
    journal_pos  bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Compliance alerts, raised once per (rule, triggering event) by the rules.
CREATE TABLE needletrace.alerts (
    alert_id      bigint      GENERATED ALWAYS AS IDENTITY,
    rule          text        NOT NULL,
    severity      text        NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    clinic_id     text        NOT NULL,
    device_serial text        NOT NULL,
    session_id    text,
    boot_id       bigint      NOT NULL,
    seq           bigint      NOT NULL,
    raised_at     timestamptz NOT NULL DEFAULT now(),
    details       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (clinic_id, alert_id),
    UNIQUE (rule, clinic_id, device_serial, boot_id, seq)
);
CREATE INDEX alerts_raised_at_idx ON needletrace.alerts (raised_at);

-- Sessions as the devices reported them: start from session_started, end from session_ended.
CREATE VIEW needletrace.sessions AS
SELECT s.clinic_id,
       s.device_serial,
       s.session_id,
       s.operator_id,
       s.patient_ref,
       s.device_time AS started_at,
       e.ended_at,
       s.boot_id,
       s.seq
  FROM needletrace.events s
  LEFT JOIN LATERAL (
        SELECT min(x.device_time) AS ended_at
          FROM needletrace.events x
         WHERE x.clinic_id = s.clinic_id
           AND x.device_serial = s.device_serial
           AND x.session_id = s.session_id
           AND x.kind = 'session_ended') e ON true
 WHERE s.kind = 'session_started';

-- Every cartridge mount, with the cartridge's GS1 identity.
CREATE VIEW needletrace.cartridge_mounts AS
SELECT clinic_id,
       device_serial,
       session_id,
       gtin,
       lot,
       cartridge_serial AS serial,
       expiry,
       device_time AS mounted_at,
       needle_count,
       sterile_barrier_intact,
       boot_id,
       seq
  FROM needletrace.events
 WHERE kind = 'cartridge_mounted';

-- Evidence is append-only: UPDATE, DELETE and TRUNCATE are refused for everyone.
CREATE FUNCTION needletrace.refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%.% is append-only: % refused', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Evidence tables accept INSERT only.';
END
$$;

-- Makes a table append-only: UPDATE and DELETE (per row) and TRUNCATE refused by triggers that
-- fire even with session_replication_role = replica. Used by every migration that adds evidence.
CREATE FUNCTION needletrace.make_append_only(p_table text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON needletrace.%I '
                   'FOR EACH ROW EXECUTE FUNCTION needletrace.refuse_change()', p_table);
    EXECUTE format('CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON needletrace.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION needletrace.refuse_change()', p_table);
    EXECUTE format('ALTER TABLE needletrace.%I ENABLE ALWAYS TRIGGER append_only', p_table);
    EXECUTE format('ALTER TABLE needletrace.%I ENABLE ALWAYS TRIGGER append_only_truncate', p_table);
END
$$;
REVOKE ALL ON FUNCTION needletrace.make_append_only(text) FROM PUBLIC;

SELECT needletrace.make_append_only(t)
  FROM unnest(ARRAY['raw_messages', 'events', 'quarantine', 'alerts']) AS t;

-- Creates a login-less role when missing (roles are cluster-wide: another database's migration
-- may create it at the same moment). Used by every migration that adds a role.
CREATE FUNCTION needletrace.ensure_role(p_role text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_role) THEN
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', p_role);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- created concurrently by a migration of another database
        END;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION needletrace.ensure_role(text) FROM PUBLIC;

-- Lets only the collector run the given functions of schema needletrace (signatures as in
-- 'raise_alerts(text, regclass, needletrace.alert_candidate[])'): revoked from PUBLIC, granted
-- to needletrace_collector. Used by every migration that adds functions that write.
CREATE FUNCTION needletrace.collector_may_run(p_functions text[]) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY p_functions LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION needletrace.%s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION needletrace.%s TO needletrace_collector', f);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION needletrace.collector_may_run(text[]) FROM PUBLIC;

-- Roles: the collector inserts and reads, and rewrites only its checkpoint; the auditor only reads.
SELECT needletrace.ensure_role(r) FROM unnest(ARRAY['needletrace_collector', 'needletrace_auditor']) AS r;

GRANT USAGE ON SCHEMA needletrace TO needletrace_collector, needletrace_auditor;
GRANT SELECT, INSERT ON needletrace.raw_messages, needletrace.events, needletrace.quarantine,
                        needletrace.alerts TO needletrace_collector;
GRANT SELECT, INSERT, UPDATE ON needletrace.collector_checkpoints TO needletrace_collector;
GRANT SELECT ON needletrace.sessions, needletrace.cartridge_mounts, needletrace.schema_migrations
    TO needletrace_collector;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA needletrace TO needletrace_collector;
GRANT SELECT ON ALL TABLES IN SCHEMA needletrace TO needletrace_auditor;
ALTER DEFAULT PRIVILEGES IN SCHEMA needletrace GRANT SELECT ON TABLES TO needletrace_auditor;
