-- 016_views.sql -- depth_exceedances applies the device model's maximum too, as the rule
-- DEPTH_OUT_OF_RANGE does (009_raw_evidence_lean.sql): the limit of a sample is the lower of its
-- area's limit (the clinic's policy, else the default, else the absolute maximum) and its pen
-- model's maximum depth. The view of 012 compared with the area's limit only, so a sample within
-- its area but beyond what its pen model may do was missing from it while the rule alerted on it.

CREATE OR REPLACE VIEW needletrace.depth_exceedances AS
SELECT e.clinic_id, e.device_serial, e.session_id, e.boot_id, e.seq, e.kind, e.device_time,
       (e.device_time AT TIME ZONE needletrace.clinic_zone(e.clinic_id)) AS device_time_local,
       coalesce(e.area, 'unspecified') AS area, e.depth_um, l.limit_um, l.limit_source,
       e.device_model, a.area_limit_um, dm.max_depth_um AS model_limit_um
  FROM needletrace.events e
  LEFT JOIN needletrace.depth_policy_clinic pc
    ON pc.clinic_id = e.clinic_id AND pc.area = coalesce(e.area, 'unspecified')
  LEFT JOIN needletrace.depth_policy d ON d.area = coalesce(e.area, 'unspecified')
  LEFT JOIN needletrace.device_models dm ON dm.device_model = e.device_model
  CROSS JOIN LATERAL (
      SELECT coalesce(pc.max_depth_um, d.max_depth_um, needletrace.depth_hard_max_um())
                 AS area_limit_um,
             CASE WHEN pc.max_depth_um IS NOT NULL THEN 'clinic'
                  WHEN d.max_depth_um IS NOT NULL THEN 'default' ELSE 'absolute' END
                 AS area_source) a
  CROSS JOIN LATERAL (
      SELECT CASE WHEN dm.max_depth_um < a.area_limit_um THEN dm.max_depth_um
                  ELSE a.area_limit_um END AS limit_um,
             CASE WHEN dm.max_depth_um < a.area_limit_um THEN 'model'
                  ELSE a.area_source END AS limit_source) l
 WHERE e.kind IN ('needle_setting', 'needle_activity') AND e.depth_um > l.limit_um;
COMMENT ON VIEW needletrace.depth_exceedances IS
    'Every needle setting or activity sample deeper than its limit: the lower of its area''s '
    'limit (clinic policy, default policy, absolute maximum) and its pen model''s maximum, as '
    'the rule DEPTH_OUT_OF_RANGE applies them; with the limit applied and where it came from.';
COMMENT ON COLUMN needletrace.depth_exceedances.limit_um IS
    'The limit applied, micrometres: the lower of area_limit_um and model_limit_um.';
COMMENT ON COLUMN needletrace.depth_exceedances.limit_source IS
    'Where limit_um came from: clinic (the clinic''s policy for the area), default (the default '
    'policy), absolute (no policy row: the absolute maximum) or model (the pen model''s maximum, '
    'lower than the area''s limit).';
COMMENT ON COLUMN needletrace.depth_exceedances.device_model IS
    'The pen model of the message that carried the sample (device-reported; NULL before 009).';
COMMENT ON COLUMN needletrace.depth_exceedances.area_limit_um IS
    'The area''s limit, micrometres: the clinic''s policy, else the default, else the absolute '
    'maximum.';
COMMENT ON COLUMN needletrace.depth_exceedances.model_limit_um IS
    'The pen model''s maximum depth, micrometres (needletrace.device_models; NULL: unknown model).';
