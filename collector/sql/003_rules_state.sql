-- 003_rules_state.sql -- what the rules remember between batches, and the delivery and
-- acknowledgement records of alerts (alerts themselves stay append-only).
--
-- Each "..._alerted"/"..._seen" table has the "once per" key of its rule as primary key: a rule
-- raises an alert only for a state row it managed to insert (needletrace.raise_alerts), so
-- concurrent batches and replicas raise each alert exactly once.

-- ---- rule state (what has been seen / alerted already) ---------------------------------------
-- First mount of each cartridge by device time (ties: clinic, device, boot, seq), among the
-- mounts stored so far: a mount that arrives late with an earlier device time replaces the row
-- (rule state, not evidence: the mounts themselves are in events), and the prev_* columns keep
-- the mount it replaced. Global by nature: a cartridge's identity is (gtin, serial) and reuse
-- must be caught across devices and clinics, so this table has no clinic_id in its key (under
-- Citus: a reference table, or distributed by gtin).
CREATE TABLE needletrace.cartridge_first_use (
    gtin               text        NOT NULL,
    cartridge_serial   text        NOT NULL,
    clinic_id          text        NOT NULL,
    device_serial      text        NOT NULL,
    session_id         text,
    boot_id            bigint      NOT NULL,
    seq                bigint      NOT NULL,
    device_time        timestamptz NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    prev_clinic_id     text,
    prev_device_serial text,
    prev_session_id    text,
    prev_boot_id       bigint,
    prev_seq           bigint,
    prev_device_time   timestamptz,
    PRIMARY KEY (gtin, cartridge_serial)
);

-- DEPTH_OUT_OF_RANGE: once per (clinic, device, session, area, depth).
CREATE TABLE needletrace.depth_violations_seen (
    clinic_id     text   NOT NULL,
    device_serial text   NOT NULL,
    session_id    text   NOT NULL,
    area          text   NOT NULL,
    depth_um      int    NOT NULL,
    boot_id       bigint NOT NULL,
    seq           bigint NOT NULL,
    PRIMARY KEY (clinic_id, device_serial, session_id, area, depth_um)
);

-- NEEDLING_WITHOUT_CARTRIDGE: once per session.
CREATE TABLE needletrace.no_cartridge_alerted (
    clinic_id     text   NOT NULL,
    device_serial text   NOT NULL,
    session_id    text   NOT NULL,
    boot_id       bigint NOT NULL,
    seq           bigint NOT NULL,
    PRIMARY KEY (clinic_id, device_serial, session_id)
);

-- CLOCK_SKEW: once per (clinic, device, boot).
CREATE TABLE needletrace.clock_skew_alerted (
    clinic_id     text   NOT NULL,
    device_serial text   NOT NULL,
    boot_id       bigint NOT NULL,
    seq           bigint NOT NULL,
    PRIMARY KEY (clinic_id, device_serial, boot_id)
);

-- SEQUENCE_GAP: gaps alerted (never alerted again, even when partly filled later).
CREATE TABLE needletrace.sequence_gaps_alerted (
    clinic_id     text   NOT NULL,
    device_serial text   NOT NULL,
    boot_id       bigint NOT NULL,
    gap_start     bigint NOT NULL,
    gap_end       bigint NOT NULL CHECK (gap_end >= gap_start),
    PRIMARY KEY (clinic_id, device_serial, boot_id, gap_start, gap_end)
);

-- Per-boot progress, maintained by evaluate_rules from each batch's new events:
--   max_seq, n_events: the highest seq and the number of events (every seq 1..max_seq present
--   when n_events = max_seq); prev_max_seq: max_seq before the latest batch that advanced the
--   row (the batch's own holes start above it);
--   settled_seq: every seq 1..settled_seq is present or inside an alerted gap -- the start of the
--   boot's lowest open hole (sequence_holes) - 1, or max_seq when it has none. Events above it
--   may still be preceded by an event that has not arrived yet (out of order, e.g. two replicas
--   on a shared subscription), so NEEDLING_WITHOUT_CARTRIDGE decides an activity sample only
--   once it is settled. The row is locked (upsert) by the batch that advances it, and by the gap
--   check that alerts its holes, which makes every advance -- and every such decision -- happen
--   exactly once; the boot's holes are only written under that lock.
CREATE TABLE needletrace.boot_progress (
    clinic_id     text        NOT NULL,
    device_serial text        NOT NULL,
    boot_id       bigint      NOT NULL,
    max_seq       bigint      NOT NULL,
    n_events      bigint      NOT NULL,
    prev_max_seq  bigint      NOT NULL DEFAULT 0,
    settled_seq   bigint      NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, device_serial, boot_id)
);

-- The open holes of each boot: seq ranges gap_start..gap_end above settled_seq that are neither
-- present nor alerted yet, kept by each batch for its own boots (a batch landing above max_seq
-- opens the range it skipped; a batch filling part of a hole shrinks, splits or deletes it) and
-- deleted by check_sequence_gaps when it alerts them. revealed_at/revealed_by_seq: the
-- earliest-received event above the hole (receive time, then seq); the hole is due
-- sequence_gap_after later. A lower hole is never revealed later than a higher one of its boot,
-- so the alerted gaps of a boot are always below its open holes.
CREATE TABLE needletrace.sequence_holes (
    clinic_id       text        NOT NULL,
    device_serial   text        NOT NULL,
    boot_id         bigint      NOT NULL,
    gap_start       bigint      NOT NULL,
    gap_end         bigint      NOT NULL CHECK (gap_end >= gap_start),
    revealed_at     timestamptz NOT NULL,
    revealed_by_seq bigint      NOT NULL,
    PRIMARY KEY (clinic_id, device_serial, boot_id, gap_start)
);
-- What falls due: check_sequence_gaps reads only revealed_at <= now() - sequence_gap_after.
CREATE INDEX sequence_holes_due_idx ON needletrace.sequence_holes (revealed_at);

-- ---- alert delivery and acknowledgement (alerts themselves stay append-only) ------------------
CREATE TABLE needletrace.alert_deliveries (
    clinic_id    text        NOT NULL,
    alert_id     bigint      NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    collector_id text        NOT NULL,
    PRIMARY KEY (clinic_id, alert_id),
    FOREIGN KEY (clinic_id, alert_id) REFERENCES needletrace.alerts (clinic_id, alert_id)
);
CREATE INDEX alert_deliveries_alert_id_idx ON needletrace.alert_deliveries (alert_id);

CREATE TABLE needletrace.alert_acks (
    clinic_id text        NOT NULL,
    alert_id  bigint      NOT NULL,
    acked_by  text        NOT NULL CHECK (acked_by <> ''),
    note      text,
    acked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, alert_id, acked_at),
    FOREIGN KEY (clinic_id, alert_id) REFERENCES needletrace.alerts (clinic_id, alert_id)
);

SELECT needletrace.make_append_only(t) FROM unnest(ARRAY['alert_deliveries', 'alert_acks']) AS t;

-- Alerts nobody has acknowledged yet, with the delivery time when published.
CREATE VIEW needletrace.alerts_open AS
SELECT a.*, d.published_at
  FROM needletrace.alerts a
  LEFT JOIN needletrace.alert_deliveries d ON d.clinic_id = a.clinic_id AND d.alert_id = a.alert_id
 WHERE NOT EXISTS (SELECT 1 FROM needletrace.alert_acks k
                    WHERE k.clinic_id = a.clinic_id AND k.alert_id = a.alert_id);

COMMENT ON TABLE needletrace.cartridge_first_use IS
    'CARTRIDGE_REUSED: the first mount by device time of each cartridge (gtin, serial) among those '
    'stored, on any device in any clinic; a mount in another session raises the alert and names '
    'this one. A mount arriving late with an earlier device time replaces the row (recorded_at: '
    'when) and the alert goes to the session it replaced (prev_*).';
COMMENT ON TABLE needletrace.depth_violations_seen IS
    'DEPTH_OUT_OF_RANGE: the (clinic, device, session, area, depth) already alerted, with the '
    'event that raised it; alerted once per key.';
COMMENT ON TABLE needletrace.no_cartridge_alerted IS
    'NEEDLING_WITHOUT_CARTRIDGE: the sessions already alerted (session_id '''' when the pen sent '
    'none), with the first activity sample found without a mounted cartridge.';
COMMENT ON TABLE needletrace.clock_skew_alerted IS
    'CLOCK_SKEW: the (clinic, device, boot) already alerted, with the first event ahead of its '
    'receive time by more than the clock_skew_bound setting.';
COMMENT ON TABLE needletrace.sequence_gaps_alerted IS
    'SEQUENCE_GAP: the seq ranges gap_start..gap_end of a (device, boot) alerted as missing; never '
    'alerted again, even when partly filled later.';
COMMENT ON TABLE needletrace.boot_progress IS
    'Per (device, boot): highest seq, event count and settled_seq (every seq up to it is present '
    'or inside an alerted gap). Maintained by the rules; not evidence.';
COMMENT ON TABLE needletrace.sequence_holes IS
    'Per (device, boot): the seq ranges missing and not alerted yet, with the receive time of the '
    'earliest event above each (SEQUENCE_GAP is due sequence_gap_after later). Maintained by the '
    'rules; not evidence.';
COMMENT ON TABLE needletrace.alert_deliveries IS
    'When and by which collector each alert was published (MQTT and NOTIFY); append-only.';
COMMENT ON TABLE needletrace.alert_acks IS
    'Acknowledgements of alerts by staff (acked_by, note); append-only, an alert may be acked again.';
COMMENT ON VIEW needletrace.alerts_open IS
    'Alerts nobody has acknowledged yet, with their publication time (NULL: not published yet).';
