-- 012_clinics.sql -- clinics and their time zones: the audit report states every time in the
-- clinic's zone, and a cartridge's expiry is judged on the clinic's local date.

CREATE TABLE needletrace.clinics (
    clinic_id  needletrace.identifier PRIMARY KEY,
    name       text NOT NULL DEFAULT '',
    time_zone  text NOT NULL DEFAULT 'UTC',
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE needletrace.clinics IS
    'Clinics: a name and the IANA time zone (e.g. Europe/Berlin) the audit report and the expiry '
    'rule use for their local dates and times; a clinic without a row is in UTC.';
COMMENT ON COLUMN needletrace.clinics.clinic_id IS 'As in the topics: clinics/<clinic_id>/...';
COMMENT ON COLUMN needletrace.clinics.name IS 'The name printed in reports.';
COMMENT ON COLUMN needletrace.clinics.time_zone IS 'IANA zone name, checked on write.';
COMMENT ON COLUMN needletrace.clinics.updated_at IS 'Last change.';

CREATE FUNCTION needletrace.clinics_check() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names z WHERE z.name = NEW.time_zone) THEN
        RAISE EXCEPTION 'needletrace.clinics: "%" is not a time zone this server knows',
                        NEW.time_zone
            USING ERRCODE = 'check_violation', HINT = 'an IANA name, e.g. Europe/Berlin';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER clinics_check BEFORE INSERT OR UPDATE ON needletrace.clinics
    FOR EACH ROW EXECUTE FUNCTION needletrace.clinics_check();

-- A clinic's zone ('UTC' without a row).
CREATE FUNCTION needletrace.clinic_zone(p_clinic_id text) RETURNS text
    LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT c.time_zone FROM needletrace.clinics c WHERE c.clinic_id = p_clinic_id),
                    'UTC')
$$;

-- CARTRIDGE_EXPIRED as in 005_rules.sql, on the clinic's local date of the mount.
CREATE OR REPLACE FUNCTION needletrace.rule_cartridge_expired(p_tx bigint)
    RETURNS needletrace.alert_candidate[]
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN ARRAY(
        SELECT needletrace.mount_alert('CARTRIDGE_EXPIRED', e, jsonb_build_object(
                   'mounted_on', to_char(e.device_time AT TIME ZONE z.zone, 'YYYY-MM-DD'),
                   'time_zone', z.zone))
          FROM needletrace.events e
         CROSS JOIN LATERAL (SELECT needletrace.clinic_zone(e.clinic_id) AS zone) z
         WHERE e.tx = p_tx AND e.kind = 'cartridge_mounted'
           AND e.expiry < (e.device_time AT TIME ZONE z.zone)::date);
END
$$;

GRANT SELECT ON needletrace.clinics TO needletrace_collector, needletrace_auditor,
    needletrace_staff, needletrace_registrar;
GRANT INSERT, UPDATE (name, time_zone) ON needletrace.clinics TO needletrace_registrar;
