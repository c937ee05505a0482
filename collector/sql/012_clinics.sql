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

-- ---- the auditor's questions -------------------------------------------------------------------------
-- Cartridges used more than once: every mount of a cartridge (GS1 identity) that was mounted in
-- more than one session, with where and when (the clinic's local time).
CREATE VIEW needletrace.cartridge_reuse AS
SELECT m.gtin, m.cartridge_serial, m.lot, m.clinic_id, m.device_serial, m.session_id,
       m.device_time AS mounted_at,
       (m.device_time AT TIME ZONE needletrace.clinic_zone(m.clinic_id)) AS mounted_local,
       count(*) OVER (PARTITION BY m.gtin, m.cartridge_serial) AS mounts
  FROM needletrace.events m
 WHERE m.kind = 'cartridge_mounted'
   AND EXISTS (SELECT 1 FROM needletrace.events o
                WHERE o.kind = 'cartridge_mounted' AND o.gtin = m.gtin
                  AND o.cartridge_serial = m.cartridge_serial
                  AND (o.clinic_id, o.device_serial, o.session_id)
                      IS DISTINCT FROM (m.clinic_id, m.device_serial, m.session_id));
COMMENT ON VIEW needletrace.cartridge_reuse IS
    'Every mount of a cartridge mounted in more than one session (single-use cartridges reused).';

-- Needle settings and activity deeper than the limit of their area (the clinic's policy, else the
-- default, else the absolute maximum), with the limit applied.
CREATE VIEW needletrace.depth_exceedances AS
SELECT e.clinic_id, e.device_serial, e.session_id, e.boot_id, e.seq, e.kind, e.device_time,
       (e.device_time AT TIME ZONE needletrace.clinic_zone(e.clinic_id)) AS device_time_local,
       coalesce(e.area, 'unspecified') AS area, e.depth_um, l.limit_um,
       CASE WHEN pc.max_depth_um IS NOT NULL THEN 'clinic'
            WHEN d.max_depth_um IS NOT NULL THEN 'default' ELSE 'absolute' END AS limit_source
  FROM needletrace.events e
  LEFT JOIN needletrace.depth_policy_clinic pc
    ON pc.clinic_id = e.clinic_id AND pc.area = coalesce(e.area, 'unspecified')
  LEFT JOIN needletrace.depth_policy d ON d.area = coalesce(e.area, 'unspecified')
  CROSS JOIN LATERAL (SELECT coalesce(pc.max_depth_um, d.max_depth_um,
                                      needletrace.depth_hard_max_um()) AS limit_um) l
 WHERE e.kind IN ('needle_setting', 'needle_activity') AND e.depth_um > l.limit_um;
COMMENT ON VIEW needletrace.depth_exceedances IS
    'Every needle setting or activity sample deeper than its area''s limit, with the limit '
    'applied and where it came from (clinic policy, default policy, absolute maximum).';

-- Per clinic and local date: the auditor's questions by clinic and date range.
CREATE INDEX events_clinic_time_idx ON needletrace.events (clinic_id, device_time)
    WHERE kind IN ('session_started', 'cartridge_mounted');
CREATE INDEX alerts_clinic_raised_idx ON needletrace.alerts (clinic_id, raised_at);

GRANT SELECT ON needletrace.cartridge_reuse, needletrace.depth_exceedances
    TO needletrace_auditor, needletrace_staff;
