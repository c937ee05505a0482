-- 014_comments.sql -- a comment on every table, view and column of schema needletrace (issue 11,
-- point 8), for an auditor reading the schema with \d+ or any catalog browser.
--
-- Comments already written by earlier migrations stay as they are unless restated (improved)
-- here. tests/integration/test_schema_comments.sh fails when a table, view, partition or column
-- of the schema has none: a migration that adds one comments it.
--
-- Units are in the column names and restated in the comments: _um micrometres, _ms milliseconds,
-- _hz strokes per second, _pct percent, _dc tenths of a degree Celsius (deci-degrees: 365 is
-- 36.5 °C), motor_seconds* seconds; timestamptz columns are instants (psql shows them in the
-- session's TimeZone), the *_local columns of the views wall-clock times in the clinic's zone.
--
-- Where a value comes from, as the comments say it:
--   device-reported  from the payload a pen (or a gateway for it) published. UNTRUSTED: the
--                    decoder checks its form and range only (include/needletrace/decoder.h),
--                    never its truth; a faulty or compromised pen can report any value in range.
--   topic            from the MQTT topic clinics/{clinic_id}/handpieces/{device_serial}/telemetry:
--                    with the broker ACL of deploy/certs.sh a pen's certificate publishes only on
--                    its own topic (a gateway's on any pen of its clinic); since migration 010
--                    the device registry (needletrace.devices) checks the pair.
--   collector        set by the collector process: its clock (received_at), its configuration
--                    (collector_id), its journal positions and its hashes.
--   database         set by PostgreSQL: a default, trigger or function of this schema. Enforced
--                    against the writing role for tx and inserted_at of the evidence tables, for
--                    acked_at and acked_role of alert_acks and for the stamps of devices; the
--                    other defaults are what the collector's functions use, but the
--                    needletrace_collector role may write those tables (rule state, alerts) itself.
--   policy           entered by the people who own the policy (SQL as the schema's owner, or the
--                    needletrace_registrar role through `needletrace devices` / clinics).

-- ---- evidence: raw_messages, events, quarantine (append-only, sealed by the ledger) -------------
COMMENT ON TABLE needletrace.raw_messages IS
    'Evidence: one row per accepted MQTT message, with its raw payload bytes, from which its '
    'events rows were decoded. Append-only; sealed by needletrace.ledger (column tx). An event''s '
    'message: same clinic_id, device_serial, received_at and payload_sha256.';
COMMENT ON COLUMN needletrace.raw_messages.clinic_id IS
    'Clinic of the topic clinics/{clinic_id}/... (topic; checked against needletrace.devices).';
COMMENT ON COLUMN needletrace.raw_messages.device_serial IS
    'Pen serial of the topic (topic); the payload''s own device_serial was checked equal to it.';
COMMENT ON COLUMN needletrace.raw_messages.payload_sha256 IS
    'SHA-256 of payload, 32 bytes (collector); events.payload_sha256 points here.';
COMMENT ON COLUMN needletrace.raw_messages.received_at IS
    'When the collector received the message from the broker (collector clock, journaled with '
    'it; a replay from the journal keeps it). Not the device''s time: see events.device_time.';
COMMENT ON COLUMN needletrace.raw_messages.topic IS 'The MQTT topic exactly as received.';
COMMENT ON COLUMN needletrace.raw_messages.payload IS
    'The payload bytes as received: one needletrace.v1.Telemetry protobuf message '
    '(proto/needletrace/v1/telemetry.proto), at most 256 KiB. Device-reported, the evidence '
    'itself.';
COMMENT ON COLUMN needletrace.raw_messages.boot_id IS
    'Telemetry.boot_id: the pen''s power-on counter, +1 at each power-on (device-reported, '
    'untrusted; 0 to 2^53-1).';
COMMENT ON COLUMN needletrace.raw_messages.event_count IS
    'Number of events in the payload, 1-1000 (counted by the collector from the device''s '
    'payload).';
COMMENT ON COLUMN needletrace.raw_messages.first_seq IS
    'seq of the payload''s first event (device-reported, untrusted).';
COMMENT ON COLUMN needletrace.raw_messages.last_seq IS
    'seq of the payload''s last event; seqs strictly increase within a message (device-reported).';
COMMENT ON COLUMN needletrace.raw_messages.device_model IS
    'Telemetry.device_model, '''' when the pen sent none (device-reported, untrusted).';
COMMENT ON COLUMN needletrace.raw_messages.firmware_version IS
    'Telemetry.firmware_version, '''' when the pen sent none (device-reported, untrusted).';
COMMENT ON COLUMN needletrace.raw_messages.collector_id IS
    'The collector replica (its collector.id) that received and stored the message (collector).';
COMMENT ON COLUMN needletrace.raw_messages.journal_pos IS
    'Byte position of the message''s record in that collector''s journal (collector); inside the '
    'range [journal_from, journal_to) of the ledger entry that sealed the row.';
COMMENT ON COLUMN needletrace.raw_messages.inserted_at IS
    'When the row was inserted: start of the inserting transaction (database clock; the '
    'collector cannot set it).';

COMMENT ON TABLE needletrace.events IS
    'Evidence: one row per accepted event, identified by (clinic_id, device_serial, boot_id, '
    'seq); a redelivered event never makes a second row. kind says which typed body columns '
    'apply; the others are NULL. Every body column is device-reported and UNTRUSTED (checked for '
    'form and range only). Append-only; sealed by needletrace.ledger (column tx). Partitioned by '
    'quarter of received_at (013_partitions.sql); the identity is unique across partitions '
    'through needletrace.event_keys.';
COMMENT ON COLUMN needletrace.events.clinic_id IS
    'Clinic of the topic the event''s message came on (topic; checked against '
    'needletrace.devices).';
COMMENT ON COLUMN needletrace.events.device_serial IS
    'Pen serial of the topic (topic); equal to the payload''s device_serial.';
COMMENT ON COLUMN needletrace.events.boot_id IS
    'Power-on counter of the pen when it recorded the event (device-reported, untrusted).';
COMMENT ON COLUMN needletrace.events.seq IS
    'Event number within the boot: 1, 2, 3 ... without gaps by contract (device-reported); a '
    'missing seq raises SEQUENCE_GAP.';
COMMENT ON COLUMN needletrace.events.kind IS
    'The event''s type, the protobuf oneof field name: session_started, session_ended, '
    'cartridge_mounted, cartridge_unmounted, needle_setting, needle_activity, device_status or '
    'device_fault.';
COMMENT ON COLUMN needletrace.events.device_time IS
    'When the event happened by the pen''s clock (Event.device_time_ms; device-reported, '
    'UNTRUSTED, only checked to lie in 2000-2099). CLOCK_SKEW compares it with received_at.';
COMMENT ON COLUMN needletrace.events.received_at IS
    'When the collector received the message that carried the event (collector clock).';
COMMENT ON COLUMN needletrace.events.session_id IS
    'Treatment session the pen assigned (1-64 of [A-Za-z0-9._:-]; device-reported); set for the '
    'session, cartridge and needle kinds, NULL for device_status and device_fault.';
COMMENT ON COLUMN needletrace.events.payload_sha256 IS
    'SHA-256 of the payload of the message that carried the event (collector): with clinic_id, '
    'device_serial and received_at it finds the raw_messages row.';
COMMENT ON COLUMN needletrace.events.collector_id IS
    'The collector replica that stored the event (collector).';
COMMENT ON COLUMN needletrace.events.operator_id IS
    'session_started: who operates the pen, as the pen was told (device-reported, up to 256 '
    'characters, may be ''''); not checked against any staff list.';
COMMENT ON COLUMN needletrace.events.patient_ref IS
    'session_started: pseudonymous patient reference, never a name by contract (device-reported, '
    'up to 256 characters, may be ''''). Personal data: handle as such.';
COMMENT ON COLUMN needletrace.events.motor_seconds IS
    'session_ended: motor run time of the session, seconds (device-reported, 0 to 2^32-1).';
COMMENT ON COLUMN needletrace.events.gtin IS
    'cartridge_mounted/_unmounted: GS1 (01) GTIN of the cartridge, 14 digits with a valid check '
    'digit (device-reported, e.g. from the cartridge''s code).';
COMMENT ON COLUMN needletrace.events.lot IS
    'cartridge_mounted/_unmounted: GS1 (10) lot of the cartridge, 1-20 printable ASCII '
    '(device-reported); matched against needletrace.recalled_lots.';
COMMENT ON COLUMN needletrace.events.cartridge_serial IS
    'cartridge_mounted/_unmounted: GS1 (21) serial, unique per cartridge: (gtin, '
    'cartridge_serial) identifies a single-use cartridge (device-reported).';
COMMENT ON COLUMN needletrace.events.expiry IS
    'cartridge_mounted/_unmounted: GS1 (17) expiry date (device-reported; required on mounts, '
    'NULL on an unmount that sent none). CARTRIDGE_EXPIRED compares it with the clinic''s local '
    'date.';
COMMENT ON COLUMN needletrace.events.needle_count IS
    'cartridge_mounted/_unmounted: needles in the cartridge, 1-256 (device-reported).';
COMMENT ON COLUMN needletrace.events.sterile_barrier_intact IS
    'cartridge_mounted/_unmounted: the pen''s reading of the cartridge''s sterile barrier '
    '(device-reported); false on a mount raises STERILE_BARRIER_BROKEN.';
COMMENT ON COLUMN needletrace.events.motor_ms IS
    'cartridge_unmounted: motor run time with this cartridge, milliseconds (device-reported).';
COMMENT ON COLUMN needletrace.events.depth_um IS
    'needle_setting/needle_activity: needle depth in micrometres (1000 um = 1 mm), 0-5000 '
    '(device-reported, untrusted). DEPTH_OUT_OF_RANGE judges it.';
COMMENT ON COLUMN needletrace.events.stroke_rate_hz IS
    'needle_setting/needle_activity: needle strokes per second (Hz), 0-1000 (device-reported).';
COMMENT ON COLUMN needletrace.events.area IS
    'needle_setting/needle_activity: treatment area as the pen reported it (lower-case '
    'TreatmentArea name); unspecified when the pen did not say (its depth limit is seeded as the '
    'most conservative one).';
COMMENT ON COLUMN needletrace.events.duration_ms IS
    'needle_activity: motor time the sample covers, milliseconds, 0-600000 (device-reported).';
COMMENT ON COLUMN needletrace.events.battery_pct IS
    'device_status: battery charge in percent, 0-100 (device-reported).';
COMMENT ON COLUMN needletrace.events.temperature_dc IS
    'device_status: pen temperature in deci-degrees Celsius (tenths of a degree: 365 = 36.5 °C), '
    '-400 to 1500 (device-reported).';
COMMENT ON COLUMN needletrace.events.motor_seconds_total IS
    'device_status: the pen''s lifetime motor run time, seconds, 0 to 2^32-1 (device-reported).';
COMMENT ON COLUMN needletrace.events.fault_code IS
    'device_fault: the vendor''s fault code, opaque to needletrace, 0 to 2^32-1 (device-reported).';
COMMENT ON COLUMN needletrace.events.fault_message IS
    'device_fault: the pen''s fault text, up to 1024 characters, may be '''' (device-reported).';
COMMENT ON COLUMN needletrace.events.inserted_at IS
    'When the row was inserted: start of the inserting transaction (database clock; the '
    'collector cannot set it).';
COMMENT ON COLUMN needletrace.events.tx IS
    'The transaction that inserted the row (its ledger entry''s tx; the rules read the batch by '
    'it); set by the database only. Rows older than migration 002 read 002''s transaction.';
COMMENT ON COLUMN needletrace.events.device_model IS
    'needle_setting/needle_activity: the device_model of the message that carried the event '
    '(device-reported; '''' when the pen sent none), for the model maximum of DEPTH_OUT_OF_RANGE; '
    'NULL for other kinds and for rows older than migration 009.';

COMMENT ON TABLE needletrace.quarantine IS
    'Evidence: one row per rejected message, with its raw bytes and why (reason, detail); never '
    'dropped. A redelivered identical message is stored once (message_key). Append-only; sealed '
    'by needletrace.ledger (column tx).';
COMMENT ON COLUMN needletrace.quarantine.clinic_id IS
    'Clinic of the topic when the topic has the expected form, else '''' (topic, unverified).';
COMMENT ON COLUMN needletrace.quarantine.message_key IS
    'SHA-256 of topic || 0x00 || payload, 32 bytes (collector): one row per distinct message.';
COMMENT ON COLUMN needletrace.quarantine.received_at IS
    'When the collector received the message from the broker (collector clock).';
COMMENT ON COLUMN needletrace.quarantine.topic IS
    'The topic as received; when not valid UTF-8 or holding a NUL, every offending byte (and every '
    'backslash) is written as \xNN.';
COMMENT ON COLUMN needletrace.quarantine.payload IS
    'The payload bytes as received (payload_too_large: only the first 256 KiB + 1 bytes).';
COMMENT ON COLUMN needletrace.quarantine.payload_sha256 IS
    'SHA-256 of payload as stored (collector).';
COMMENT ON COLUMN needletrace.quarantine.reason IS
    'Why it was rejected: bad_topic, payload_too_large, not_protobuf, serial_mismatch, '
    'bad_identifier, invalid_utf8, nul_in_string, string_too_long, no_events, too_many_events, '
    'missing_body, seq_order, out_of_range, unknown_area, db_rejected, clinic_mismatch, '
    'unknown_device or device_retired (include/needletrace/reason.h; README).';
COMMENT ON COLUMN needletrace.quarantine.detail IS
    'One line naming the offending field and value (collector), e.g. "events[3].needle_setting.'
    'depth_um 9000 exceeds 5000"; db_rejected: the SQLSTATE and server message. Escaped as topic.';
COMMENT ON COLUMN needletrace.quarantine.device_serial IS
    'Pen serial of the topic when the topic has the expected form, else NULL (topic, unverified).';
COMMENT ON COLUMN needletrace.quarantine.collector_id IS
    'The collector replica that received and stored the message (collector).';
COMMENT ON COLUMN needletrace.quarantine.journal_pos IS
    'Byte position of the message''s record in that collector''s journal (collector).';
COMMENT ON COLUMN needletrace.quarantine.inserted_at IS
    'When the row was inserted: start of the inserting transaction (database clock; the '
    'collector cannot set it).';

-- ---- views over events --------------------------------------------------------------------------
COMMENT ON VIEW needletrace.sessions IS
    'Treatment sessions as the pens reported them: one row per session_started event, with the '
    'earliest session_ended of the same pen and session_id. Times are device clock (untrusted).';
COMMENT ON COLUMN needletrace.sessions.clinic_id IS 'Clinic of the session_started event (topic).';
COMMENT ON COLUMN needletrace.sessions.device_serial IS 'Pen of the session (topic).';
COMMENT ON COLUMN needletrace.sessions.session_id IS
    'Session id the pen assigned (device-reported).';
COMMENT ON COLUMN needletrace.sessions.operator_id IS
    'Operator as the pen was told at session start (device-reported, unverified).';
COMMENT ON COLUMN needletrace.sessions.patient_ref IS
    'Pseudonymous patient reference at session start (device-reported; personal data).';
COMMENT ON COLUMN needletrace.sessions.started_at IS
    'device_time of session_started (device clock).';
COMMENT ON COLUMN needletrace.sessions.ended_at IS
    'Earliest device_time of a session_ended of the session (device clock); NULL: none received.';
COMMENT ON COLUMN needletrace.sessions.boot_id IS 'boot_id of the session_started event.';
COMMENT ON COLUMN needletrace.sessions.seq IS 'seq of the session_started event.';

COMMENT ON VIEW needletrace.cartridge_mounts IS
    'Every cartridge_mounted event with the cartridge''s GS1 identity (all device-reported).';
COMMENT ON COLUMN needletrace.cartridge_mounts.clinic_id IS 'Clinic of the mount (topic).';
COMMENT ON COLUMN needletrace.cartridge_mounts.device_serial IS 'Pen of the mount (topic).';
COMMENT ON COLUMN needletrace.cartridge_mounts.session_id IS
    'Session of the mount (device-reported).';
COMMENT ON COLUMN needletrace.cartridge_mounts.gtin IS
    'GS1 (01) GTIN, 14 digits (device-reported).';
COMMENT ON COLUMN needletrace.cartridge_mounts.lot IS 'GS1 (10) lot (device-reported).';
COMMENT ON COLUMN needletrace.cartridge_mounts.serial IS
    'GS1 (21) cartridge serial (events.cartridge_serial; device-reported).';
COMMENT ON COLUMN needletrace.cartridge_mounts.expiry IS 'GS1 (17) expiry date (device-reported).';
COMMENT ON COLUMN needletrace.cartridge_mounts.mounted_at IS
    'device_time of the mount (device clock).';
COMMENT ON COLUMN needletrace.cartridge_mounts.needle_count IS 'Needles in the cartridge, 1-256.';
COMMENT ON COLUMN needletrace.cartridge_mounts.sterile_barrier_intact IS
    'The pen''s reading of the sterile barrier at the mount (device-reported).';
COMMENT ON COLUMN needletrace.cartridge_mounts.boot_id IS 'boot_id of the mount event.';
COMMENT ON COLUMN needletrace.cartridge_mounts.seq IS 'seq of the mount event.';

COMMENT ON COLUMN needletrace.cartridge_reuse.gtin IS 'GS1 (01) GTIN of the reused cartridge.';
COMMENT ON COLUMN needletrace.cartridge_reuse.cartridge_serial IS
    'GS1 (21) serial: with gtin, the single-use cartridge mounted in more than one session.';
COMMENT ON COLUMN needletrace.cartridge_reuse.lot IS 'GS1 (10) lot as reported with this mount.';
COMMENT ON COLUMN needletrace.cartridge_reuse.clinic_id IS 'Clinic of this mount (topic).';
COMMENT ON COLUMN needletrace.cartridge_reuse.device_serial IS 'Pen of this mount (topic).';
COMMENT ON COLUMN needletrace.cartridge_reuse.session_id IS
    'Session of this mount (device-reported).';
COMMENT ON COLUMN needletrace.cartridge_reuse.mounted_at IS
    'device_time of this mount (device clock).';
COMMENT ON COLUMN needletrace.cartridge_reuse.mounted_local IS
    'mounted_at as wall-clock time in the clinic''s zone (needletrace.clinics; UTC without a row).';
COMMENT ON COLUMN needletrace.cartridge_reuse.mounts IS
    'How many mounts of this cartridge are stored.';

COMMENT ON COLUMN needletrace.depth_exceedances.clinic_id IS 'Clinic of the event (topic).';
COMMENT ON COLUMN needletrace.depth_exceedances.device_serial IS 'Pen of the event (topic).';
COMMENT ON COLUMN needletrace.depth_exceedances.session_id IS
    'Session of the event (device-reported).';
COMMENT ON COLUMN needletrace.depth_exceedances.boot_id IS 'boot_id of the event.';
COMMENT ON COLUMN needletrace.depth_exceedances.seq IS 'seq of the event.';
COMMENT ON COLUMN needletrace.depth_exceedances.kind IS 'needle_setting or needle_activity.';
COMMENT ON COLUMN needletrace.depth_exceedances.device_time IS
    'When, by the pen''s clock (untrusted).';
COMMENT ON COLUMN needletrace.depth_exceedances.device_time_local IS
    'device_time as wall-clock time in the clinic''s zone (needletrace.clinics; UTC without a '
    'row).';
COMMENT ON COLUMN needletrace.depth_exceedances.area IS
    'Treatment area as reported (unspecified when the pen did not say).';
COMMENT ON COLUMN needletrace.depth_exceedances.depth_um IS
    'Reported needle depth, micrometres (device-reported).';
COMMENT ON COLUMN needletrace.depth_exceedances.limit_um IS
    'The area''s limit it exceeds, micrometres. The device model''s maximum '
    '(needletrace.device_models), which DEPTH_OUT_OF_RANGE also applies, is not considered here.';
COMMENT ON COLUMN needletrace.depth_exceedances.limit_source IS
    'Where limit_um came from: clinic (depth_policy_clinic), default (depth_policy) or absolute '
    '(needletrace.depth_hard_max_um(), 2500 um).';

-- ---- alerts -------------------------------------------------------------------------------------
COMMENT ON COLUMN needletrace.alerts.alert_id IS
    'The alert''s number (identity, database); `needletrace alerts ack` takes it.';
COMMENT ON COLUMN needletrace.alerts.severity IS
    'info, warning or critical (critical ones are delivered first).';
COMMENT ON COLUMN needletrace.alerts.clinic_id IS 'Clinic of the triggering event (topic).';
COMMENT ON COLUMN needletrace.alerts.device_serial IS 'Pen of the triggering event (topic).';
COMMENT ON COLUMN needletrace.alerts.session_id IS
    'Session of the triggering event; NULL when it has none (e.g. CLOCK_SKEW on a device_status, '
    'SEQUENCE_GAP).';
COMMENT ON COLUMN needletrace.alerts.boot_id IS 'boot_id of the triggering event (see seq).';
COMMENT ON COLUMN needletrace.alerts.raised_at IS
    'When the alert was raised: start of the raising transaction (database clock), i.e. when its '
    'event was stored or the gap check ran -- not the device time of the event.';
COMMENT ON COLUMN needletrace.alerts.collector_id IS
    'The collector replica that raised the alert; NULL for alerts raised before migration 004.';

COMMENT ON COLUMN needletrace.alerts_open.alert_id IS 'See needletrace.alerts.alert_id.';
COMMENT ON COLUMN needletrace.alerts_open.rule IS 'See needletrace.alerts.rule.';
COMMENT ON COLUMN needletrace.alerts_open.severity IS 'info, warning or critical.';
COMMENT ON COLUMN needletrace.alerts_open.clinic_id IS 'Clinic of the triggering event.';
COMMENT ON COLUMN needletrace.alerts_open.device_serial IS 'Pen of the triggering event.';
COMMENT ON COLUMN needletrace.alerts_open.session_id IS 'Session of the triggering event, or NULL.';
COMMENT ON COLUMN needletrace.alerts_open.boot_id IS 'boot_id of the triggering event.';
COMMENT ON COLUMN needletrace.alerts_open.seq IS 'seq of the triggering event (see alerts.seq).';
COMMENT ON COLUMN needletrace.alerts_open.raised_at IS 'When it was raised (database clock).';
COMMENT ON COLUMN needletrace.alerts_open.details IS 'What the rule saw (see alerts.details).';
COMMENT ON COLUMN needletrace.alerts_open.published_at IS
    'When it was delivered (alert_deliveries.published_at); NULL: not delivered yet.';

COMMENT ON COLUMN needletrace.alert_deliveries.clinic_id IS 'Clinic of the alert.';
COMMENT ON COLUMN needletrace.alert_deliveries.alert_id IS 'The alert delivered.';
COMMENT ON COLUMN needletrace.alert_deliveries.published_at IS
    'When the delivery was recorded, after the broker acknowledged the publication (database '
    'clock).';
COMMENT ON COLUMN needletrace.alert_deliveries.collector_id IS
    'The collector replica that published it (not necessarily the one that raised it).';

COMMENT ON COLUMN needletrace.alert_acks.clinic_id IS 'Clinic of the alert acknowledged.';
COMMENT ON COLUMN needletrace.alert_acks.alert_id IS 'The alert acknowledged.';
COMMENT ON COLUMN needletrace.alert_acks.note IS
    'What was done, as the person wrote it (needletrace alerts ack --note, required by the '
    'command: 1-2000 characters); NULL only when inserted by SQL without one.';
COMMENT ON COLUMN needletrace.alert_acks.acked_by IS
    'The name the person gave (needletrace alerts ack --by, required by the command): free text, '
    'not verified; acked_role is the database login that recorded it.';
COMMENT ON COLUMN needletrace.alert_acks.acked_at IS
    'When it was acknowledged: set by the database (now()), not the client; cannot be backdated.';

COMMENT ON COLUMN needletrace.alerts_folded.rule IS 'The rule, as in needletrace.alerts.rule.';
COMMENT ON COLUMN needletrace.alerts_folded.clinic_id IS 'Clinic of the triggering event.';
COMMENT ON COLUMN needletrace.alerts_folded.device_serial IS 'Pen of the triggering event.';
COMMENT ON COLUMN needletrace.alerts_folded.boot_id IS 'boot_id of the triggering event.';
COMMENT ON COLUMN needletrace.alerts_folded.seq IS 'seq of the triggering event.';
COMMENT ON COLUMN needletrace.alerts_folded.severity IS 'The severity the alert would have had.';
COMMENT ON COLUMN needletrace.alerts_folded.session_id IS
    'Session of the triggering event, or NULL.';
COMMENT ON COLUMN needletrace.alerts_folded.details IS
    'What the rule saw, as the alert''s details would have been.';
COMMENT ON COLUMN needletrace.alerts_folded.folded_by IS
    'The budget it exceeded: batch (alert_budget_per_batch) or session (alert_budget_per_session).';
COMMENT ON COLUMN needletrace.alerts_folded.summary_alert_id IS
    'The summary alert (needletrace.alerts) that counts this one.';
COMMENT ON COLUMN needletrace.alerts_folded.folded_at IS
    'When it was folded: start of the raising transaction (database clock).';
COMMENT ON COLUMN needletrace.alerts_folded.collector_id IS 'The collector replica that folded it.';

COMMENT ON COLUMN needletrace.alert_budget_sessions.clinic_id IS 'Clinic of the session.';
COMMENT ON COLUMN needletrace.alert_budget_sessions.device_serial IS 'Pen of the session.';
COMMENT ON COLUMN needletrace.alert_budget_sessions.session_id IS
    'The session (device-reported id).';
COMMENT ON COLUMN needletrace.alert_budget_sessions.rule IS 'The rule counted.';
COMMENT ON COLUMN needletrace.alert_budget_sessions.raised IS
    'Alerts of this rule raised for the session so far (against alert_budget_per_session).';
COMMENT ON COLUMN needletrace.alert_budget_sessions.folded IS
    'Alerts of this rule folded for the session so far (stored in alerts_folded).';
COMMENT ON COLUMN needletrace.alert_budget_sessions.updated_at IS 'Last change (database clock).';

COMMENT ON COLUMN needletrace.alert_outbox.clinic_id IS 'Clinic of the alert.';
COMMENT ON COLUMN needletrace.alert_outbox.alert_id IS 'The alert waiting for delivery.';
COMMENT ON COLUMN needletrace.alert_outbox.severity_rank IS
    'Delivery order: 0 critical, 1 warning, 2 info (needletrace.severity_rank()).';
COMMENT ON COLUMN needletrace.alert_outbox.collector_id IS
    'The collector replica that raised it and delivers it; another one only once it is gone '
    '(needletrace.collectors).';
COMMENT ON COLUMN needletrace.alert_outbox.next_attempt_at IS
    'When delivery is due (again) (database clock).';
COMMENT ON COLUMN needletrace.alert_outbox.attempts IS 'Deliveries the broker refused so far.';
COMMENT ON COLUMN needletrace.alert_outbox.last_refused_at IS
    'When the broker last refused it (database clock); NULL: never.';
COMMENT ON COLUMN needletrace.alert_outbox.last_refused_by IS
    'The collector replica whose delivery was last refused; NULL: never.';

-- ---- policy the rules read ----------------------------------------------------------------------
COMMENT ON COLUMN needletrace.settings.key IS
    'The setting''s name; the known ones are listed by needletrace.setting_defaults().';
COMMENT ON COLUMN needletrace.settings.value IS
    'Its value as text, checked on write by kind (interval, micrometres, count or choice).';
COMMENT ON COLUMN needletrace.settings.note IS 'What the setting does (free text).';

COMMENT ON COLUMN needletrace.depth_policy.area IS 'Treatment area (as in events.area).';
COMMENT ON COLUMN needletrace.depth_policy.max_depth_um IS
    'Default maximum needle depth for the area, micrometres, 0-2500 (policy).';
COMMENT ON COLUMN needletrace.depth_policy.note IS 'Free text, e.g. the source of the value.';

COMMENT ON COLUMN needletrace.depth_policy_clinic.clinic_id IS
    'The clinic the limit applies to (as in the topics; needletrace.clinics need not have it).';
COMMENT ON COLUMN needletrace.depth_policy_clinic.area IS 'Treatment area (as in events.area).';
COMMENT ON COLUMN needletrace.depth_policy_clinic.max_depth_um IS
    'The clinic''s maximum needle depth for the area, micrometres, 0-2500 (policy).';
COMMENT ON COLUMN needletrace.depth_policy_clinic.note IS
    'Free text, e.g. who decided the limit and why.';

COMMENT ON COLUMN needletrace.device_models.device_model IS
    'A pen model, matched against the device_model the pen reports (device-reported, so a pen '
    'reporting an unknown model gets no model limit).';
COMMENT ON COLUMN needletrace.device_models.max_depth_um IS
    'The model''s maximum needle depth, micrometres, 0-5000 (policy).';
COMMENT ON COLUMN needletrace.device_models.note IS 'Free text.';

COMMENT ON COLUMN needletrace.recalled_lots.gtin IS 'GS1 (01) GTIN of the recalled product.';
COMMENT ON COLUMN needletrace.recalled_lots.lot IS 'GS1 (10) lot recalled.';
COMMENT ON COLUMN needletrace.recalled_lots.recalled_at IS
    'When the recall was entered (default: database clock). Every mount of the lot stored after '
    'the row exists alerts, whatever its device time; mounts stored before are not re-evaluated.';
COMMENT ON COLUMN needletrace.recalled_lots.reason IS 'Why (free text, e.g. the notice).';

COMMENT ON COLUMN needletrace.clinics.updated_at IS
    'Last change of the row (set by its trigger, database clock).';

-- ---- rule state (not evidence) ------------------------------------------------------------------
COMMENT ON COLUMN needletrace.cartridge_first_use.gtin IS 'GS1 (01) GTIN of the cartridge.';
COMMENT ON COLUMN needletrace.cartridge_first_use.cartridge_serial IS
    'GS1 (21) serial: with gtin, the cartridge''s identity across all pens and clinics.';
COMMENT ON COLUMN needletrace.cartridge_first_use.clinic_id IS 'Clinic of the first mount.';
COMMENT ON COLUMN needletrace.cartridge_first_use.device_serial IS 'Pen of the first mount.';
COMMENT ON COLUMN needletrace.cartridge_first_use.session_id IS 'Session of the first mount.';
COMMENT ON COLUMN needletrace.cartridge_first_use.boot_id IS 'boot_id of the first mount event.';
COMMENT ON COLUMN needletrace.cartridge_first_use.seq IS 'seq of the first mount event.';
COMMENT ON COLUMN needletrace.cartridge_first_use.device_time IS
    'device_time of the first mount (device clock, untrusted): what "first" is ordered by.';
COMMENT ON COLUMN needletrace.cartridge_first_use.recorded_at IS
    'When the row was written or last replaced (database clock).';
COMMENT ON COLUMN needletrace.cartridge_first_use.prev_clinic_id IS
    'prev_*: the first use this row replaced when an earlier mount arrived late (clinic, pen, '
    'session, boot_id, seq, device time); NULL when never replaced.';
COMMENT ON COLUMN needletrace.cartridge_first_use.prev_device_serial IS
    'Pen of the replaced first use (see prev_clinic_id).';
COMMENT ON COLUMN needletrace.cartridge_first_use.prev_session_id IS
    'Session of the replaced first use (see prev_clinic_id).';
COMMENT ON COLUMN needletrace.cartridge_first_use.prev_boot_id IS
    'boot_id of the replaced first use (see prev_clinic_id).';
COMMENT ON COLUMN needletrace.cartridge_first_use.prev_seq IS
    'seq of the replaced first use (see prev_clinic_id).';
COMMENT ON COLUMN needletrace.cartridge_first_use.prev_device_time IS
    'device_time of the replaced first use (see prev_clinic_id).';

COMMENT ON COLUMN needletrace.depth_violations_seen.clinic_id IS 'Clinic (key).';
COMMENT ON COLUMN needletrace.depth_violations_seen.device_serial IS 'Pen (key).';
COMMENT ON COLUMN needletrace.depth_violations_seen.session_id IS
    'Session (key); '''' stands for an event without one.';
COMMENT ON COLUMN needletrace.depth_violations_seen.area IS 'Treatment area (key).';
COMMENT ON COLUMN needletrace.depth_violations_seen.depth_um IS
    'The depth alerted, micrometres (key): another depth in the same session alerts again.';
COMMENT ON COLUMN needletrace.depth_violations_seen.boot_id IS 'boot_id of the alerted event.';
COMMENT ON COLUMN needletrace.depth_violations_seen.seq IS 'seq of the alerted event.';

COMMENT ON COLUMN needletrace.no_cartridge_alerted.clinic_id IS 'Clinic (key).';
COMMENT ON COLUMN needletrace.no_cartridge_alerted.device_serial IS 'Pen (key).';
COMMENT ON COLUMN needletrace.no_cartridge_alerted.session_id IS
    'Session (key); '''' stands for an event without one.';
COMMENT ON COLUMN needletrace.no_cartridge_alerted.boot_id IS 'boot_id of the alerted sample.';
COMMENT ON COLUMN needletrace.no_cartridge_alerted.seq IS 'seq of the alerted sample.';

COMMENT ON COLUMN needletrace.clock_skew_alerted.clinic_id IS 'Clinic (key).';
COMMENT ON COLUMN needletrace.clock_skew_alerted.device_serial IS 'Pen (key).';
COMMENT ON COLUMN needletrace.clock_skew_alerted.boot_id IS 'Boot (key): alerted once per boot.';
COMMENT ON COLUMN needletrace.clock_skew_alerted.seq IS 'seq of the alerted event.';

COMMENT ON COLUMN needletrace.sequence_gaps_alerted.clinic_id IS 'Clinic of the pen.';
COMMENT ON COLUMN needletrace.sequence_gaps_alerted.device_serial IS 'The pen.';
COMMENT ON COLUMN needletrace.sequence_gaps_alerted.boot_id IS
    'The boot the seqs are missing from.';
COMMENT ON COLUMN needletrace.sequence_gaps_alerted.gap_start IS 'First missing seq (inclusive).';
COMMENT ON COLUMN needletrace.sequence_gaps_alerted.gap_end IS 'Last missing seq (inclusive).';

COMMENT ON COLUMN needletrace.boot_progress.clinic_id IS 'Clinic of the pen.';
COMMENT ON COLUMN needletrace.boot_progress.device_serial IS 'The pen.';
COMMENT ON COLUMN needletrace.boot_progress.boot_id IS 'The boot.';
COMMENT ON COLUMN needletrace.boot_progress.max_seq IS 'Highest seq stored for the boot.';
COMMENT ON COLUMN needletrace.boot_progress.n_events IS
    'Events stored for the boot (= max_seq when none is missing).';
COMMENT ON COLUMN needletrace.boot_progress.prev_max_seq IS
    'max_seq before the latest batch that raised it (that batch''s holes start above it).';
COMMENT ON COLUMN needletrace.boot_progress.settled_seq IS
    'Every seq 1..settled_seq is stored or inside an alerted gap; NEEDLING_WITHOUT_CARTRIDGE '
    'decides a sample only at or below it.';
COMMENT ON COLUMN needletrace.boot_progress.updated_at IS 'Last change (database clock).';

COMMENT ON COLUMN needletrace.sequence_holes.clinic_id IS 'Clinic of the pen.';
COMMENT ON COLUMN needletrace.sequence_holes.device_serial IS 'The pen.';
COMMENT ON COLUMN needletrace.sequence_holes.boot_id IS 'The boot.';
COMMENT ON COLUMN needletrace.sequence_holes.gap_start IS 'First missing seq (inclusive).';
COMMENT ON COLUMN needletrace.sequence_holes.gap_end IS 'Last missing seq (inclusive).';
COMMENT ON COLUMN needletrace.sequence_holes.revealed_at IS
    'received_at (collector clock) of the earliest-received event above the hole; SEQUENCE_GAP '
    'is raised sequence_gap_after later if the hole is still open.';
COMMENT ON COLUMN needletrace.sequence_holes.revealed_by_seq IS 'seq of that event.';

-- ---- collectors: checkpoints, resets, heartbeats ------------------------------------------------
COMMENT ON COLUMN needletrace.collector_checkpoints.collector_id IS
    'The collector replica (its collector.id).';
COMMENT ON COLUMN needletrace.collector_checkpoints.journal_id IS
    'Id of the replica''s journal (random 64 bits chosen when its directory was created, stored '
    'as a signed bigint; to_hex() gives the id the collector logs).';
COMMENT ON COLUMN needletrace.collector_checkpoints.journal_pos IS
    'Journal byte position up to which batches are committed; ingest resumes there.';
COMMENT ON COLUMN needletrace.collector_checkpoints.updated_at IS
    'When the checkpoint last moved (database clock).';
COMMENT ON COLUMN needletrace.collector_checkpoints.held_journal_id IS
    'Held (see held_mismatch): the journal found on disk when the checkpoint was ahead of it.';
COMMENT ON COLUMN needletrace.collector_checkpoints.held_start IS
    'Held: that journal''s first position [held_start, held_end).';
COMMENT ON COLUMN needletrace.collector_checkpoints.held_end IS
    'Held: that journal''s end position, below the checkpoint.';
COMMENT ON COLUMN needletrace.collector_checkpoints.held_since IS
    'Held: when the mismatch was found (database clock).';

COMMENT ON COLUMN needletrace.checkpoint_resets.reset_id IS 'Number of the reset (identity).';
COMMENT ON COLUMN needletrace.checkpoint_resets.collector_id IS
    'The collector replica whose checkpoint was reset.';
COMMENT ON COLUMN needletrace.checkpoint_resets.old_journal_pos IS
    'The checkpoint''s position before the reset.';
COMMENT ON COLUMN needletrace.checkpoint_resets.new_journal_pos IS
    'The checkpoint''s position after the reset: the journal''s first position.';
COMMENT ON COLUMN needletrace.checkpoint_resets.journal_end IS
    'End of the journal''s positions at the time of the reset (see journal_start).';
COMMENT ON COLUMN needletrace.checkpoint_resets.reason IS
    'Why, as the operator gave it (needletrace journal accept --reason); '''' when none.';
COMMENT ON COLUMN needletrace.checkpoint_resets.accepted_at IS
    'When the reset was made (database clock).';

COMMENT ON COLUMN needletrace.collectors.collector_id IS
    'The collector replica (its collector.id).';
COMMENT ON COLUMN needletrace.collectors.connected_at IS
    'First heartbeat of its current run (restarts after a clean stop or a gap longer than '
    'replica_gone_after; database clock).';
COMMENT ON COLUMN needletrace.collectors.heartbeat_at IS 'Its latest heartbeat (database clock).';
COMMENT ON COLUMN needletrace.collectors.stopped_at IS
    'When it stopped cleanly (database clock); NULL while running or after a crash.';

-- ---- the device registry ------------------------------------------------------------------------
COMMENT ON COLUMN needletrace.devices.registered_at IS
    'When the pen was registered (database clock; for pens registered by migration 010, the '
    'receive time of their first event).';
COMMENT ON COLUMN needletrace.devices.updated_at IS
    'Last change (set by the database on every update).';

COMMENT ON COLUMN needletrace.device_changes.change_id IS 'Number of the change (identity).';
COMMENT ON COLUMN needletrace.device_changes.device_serial IS 'The pen.';
COMMENT ON COLUMN needletrace.device_changes.clinic_id IS 'Its clinic after the change.';
COMMENT ON COLUMN needletrace.device_changes.old_clinic_id IS
    'Its clinic before the change; NULL for a registration.';
COMMENT ON COLUMN needletrace.device_changes.status IS
    'Its status after the change (active, retired).';
COMMENT ON COLUMN needletrace.device_changes.old_status IS
    'Its status before the change; NULL for a registration.';
COMMENT ON COLUMN needletrace.device_changes.changed_by IS
    'Who: the database role that made the change, or "first sight by <collector id>", or '
    '"first sight (migration 010)" (written by the database, not the client).';
COMMENT ON COLUMN needletrace.device_changes.changed_at IS 'When (database clock).';

-- ---- the ledger ---------------------------------------------------------------------------------
COMMENT ON COLUMN needletrace.ledger.journal_id IS
    'The collector''s journal the batch was read from (as collector_checkpoints.journal_id); 0 '
    'for the genesis entry.';
COMMENT ON COLUMN needletrace.ledger.journal_from IS
    'Journal byte position where the batch''s records start (the range is [journal_from, '
    'journal_to)); the rows'' journal_pos lie in it.';
COMMENT ON COLUMN needletrace.ledger.journal_to IS
    'Journal byte position just past the batch''s last record (exclusive).';
COMMENT ON COLUMN needletrace.ledger.committed_at IS
    'Start of the batch transaction (database clock); part of the hashed entry text.';

COMMENT ON COLUMN needletrace.ledger_heads.collector_id IS
    'The chain: a collector replica, or (genesis).';
COMMENT ON COLUMN needletrace.ledger_heads.seq IS 'seq of its newest entry.';
COMMENT ON COLUMN needletrace.ledger_heads.entry_hash IS
    'entry_hash of its newest entry: what a signed digest names.';
COMMENT ON COLUMN needletrace.ledger_heads.committed_at IS 'committed_at of its newest entry.';

COMMENT ON COLUMN needletrace.completeness.collector_id IS 'The collector replica (chain).';
COMMENT ON COLUMN needletrace.completeness.batches IS 'Sealed batches (ledger entries).';
COMMENT ON COLUMN needletrace.completeness.messages_received IS
    'Messages (journal records) those batches held: sum of n_messages.';
COMMENT ON COLUMN needletrace.completeness.messages_stored IS
    'raw_messages rows those batches inserted: sum of n_raw.';
COMMENT ON COLUMN needletrace.completeness.messages_quarantined IS
    'quarantine rows those batches inserted: sum of n_quarantine.';
COMMENT ON COLUMN needletrace.completeness.redeliveries_skipped IS
    'Messages received but already stored: received - stored - quarantined.';
COMMENT ON COLUMN needletrace.completeness.events_stored IS
    'events rows those batches inserted: sum of n_events.';
COMMENT ON COLUMN needletrace.completeness.raw_rows_now IS
    'raw_messages rows of this collector after the genesis counted now; differs from '
    'messages_stored when rows were added or removed after sealing.';
COMMENT ON COLUMN needletrace.completeness.first_batch_at IS 'committed_at of its first entry.';
COMMENT ON COLUMN needletrace.completeness.last_batch_at IS 'committed_at of its newest entry.';

COMMENT ON COLUMN needletrace.pen_completeness.clinic_id IS 'Clinic (topic).';
COMMENT ON COLUMN needletrace.pen_completeness.device_serial IS 'The pen (topic).';
COMMENT ON COLUMN needletrace.pen_completeness.events IS 'Events stored for the pen in the clinic.';
COMMENT ON COLUMN needletrace.pen_completeness.boots IS 'Distinct boot_ids among them.';
COMMENT ON COLUMN needletrace.pen_completeness.open_holes IS
    'Ranges of missing seqs not alerted yet (needletrace.sequence_holes).';
COMMENT ON COLUMN needletrace.pen_completeness.missing_seqs IS
    'Seqs missing in those open holes (alerted gaps not included).';
COMMENT ON COLUMN needletrace.pen_completeness.gap_alerts IS
    'SEQUENCE_GAP alerts raised for the pen (not counting those folded into a summary).';
COMMENT ON COLUMN needletrace.pen_completeness.skew_alerts IS
    'CLOCK_SKEW alerts raised for the pen (not counting those folded into a summary).';
COMMENT ON COLUMN needletrace.pen_completeness.max_ahead IS
    'Largest device_time - received_at: how far the pen''s clock ran ahead (negative: never).';
COMMENT ON COLUMN needletrace.pen_completeness.max_behind IS
    'Largest received_at - device_time: how far behind (includes the delivery delay).';

-- ---- schema_migrations (created by `needletrace migrate` itself, collector/db/migrations.c) -----
COMMENT ON TABLE needletrace.schema_migrations IS
    'The migrations applied to this database, one row each (collector/sql/NNN_name.sql, compiled '
    'into the binary); `needletrace migrate` refuses a database whose applied migration differs '
    'from the binary''s (checksum).';
COMMENT ON COLUMN needletrace.schema_migrations.version IS 'NNN of the migration''s file name.';
COMMENT ON COLUMN needletrace.schema_migrations.name IS
    'The rest of the file name, without .sql (e.g. comments).';
COMMENT ON COLUMN needletrace.schema_migrations.checksum IS
    'SHA-256 of the migration''s SQL text as applied (32 bytes).';
COMMENT ON COLUMN needletrace.schema_migrations.applied_at IS
    'When it was applied (database clock).';

-- ---- partitions ---------------------------------------------------------------------------------
-- A partition does not inherit the comments of its partitioned table. For every partition in
-- schema needletrace, parents before their sub-partitions: a table comment when it has none (its
-- parent's, prefixed "Partition of ...: "), and its columns' comments made the same as its
-- parent's (they are the same columns; a migration that restates a comment on the parent runs
-- this again). Whoever creates partitions (a migration, or a function running as the owner)
-- calls it afterwards. Returns the comments it wrote.
CREATE FUNCTION needletrace.comment_partitions() RETURNS int
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    p record;
    col record;
    n int := 0;
BEGIN
    FOR p IN
        SELECT c.oid AS part, i.inhparent AS parent
          FROM pg_class c
          JOIN pg_namespace s ON s.oid = c.relnamespace
          JOIN pg_inherits i ON i.inhrelid = c.oid
         WHERE s.nspname = 'needletrace' AND c.relispartition
         ORDER BY (SELECT count(*) FROM pg_partition_ancestors(c.oid)), c.oid
    LOOP
        IF obj_description(p.part, 'pg_class') IS NULL
           AND obj_description(p.parent, 'pg_class') IS NOT NULL THEN
            EXECUTE format('COMMENT ON TABLE %s IS %L', p.part::regclass,
                           'Partition of ' || p.parent::regclass::text || ': '
                           || obj_description(p.parent, 'pg_class'));
            n := n + 1;
        END IF;
        FOR col IN
            SELECT a.attname, col_description(p.parent, pa.attnum) AS note
              FROM pg_attribute a
              JOIN pg_attribute pa ON pa.attrelid = p.parent AND pa.attname = a.attname
             WHERE a.attrelid = p.part AND a.attnum > 0 AND NOT a.attisdropped
               AND col_description(p.parent, pa.attnum) IS NOT NULL
               AND col_description(p.part, a.attnum) IS DISTINCT FROM
                   col_description(p.parent, pa.attnum)
        LOOP
            EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', p.part::regclass, col.attname,
                           col.note);
            n := n + 1;
        END LOOP;
    END LOOP;
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION needletrace.comment_partitions() FROM PUBLIC;
COMMENT ON FUNCTION needletrace.comment_partitions() IS
    'Gives each partition in schema needletrace its parent''s comments: the table''s when it has '
    'none, the columns'' always; returns how many it wrote. Run by whoever creates partitions.';
SELECT needletrace.comment_partitions();
