/* decoder.h -- topic parsing, protobuf decoding and validation of one telemetry message.
 *
 * Plain functions over data: no loop, no I/O. Everything decoded lives in the caller's
 * arena. A message is either accepted whole or rejected whole with one reason code. */
#ifndef NEEDLETRACE_DECODER_H
#define NEEDLETRACE_DECODER_H

#include "needletrace/arena.h"
#include "needletrace/common.h"
#include "needletrace/reason.h"
#include "needletrace/v1/telemetry.pb-c.h"

#include <stdint.h>

/* Bounds applied by the validator: a value past them is garbage, not a policy violation
 * (policy violations are accepted and raise alerts). A value past a bound is rejected as
 * out_of_range with a detail naming the field. Every number of the wire contract has one, and
 * each leaves the SQL that computes with it far from bigint overflow. */
#define NT_MAX_DEPTH_UM       5000u /* needle depth: 5 mm, beyond any microneedling cartridge */
#define NT_MAX_STROKE_RATE_HZ 1000u /* pens run at 50-200 Hz */
#define NT_MAX_SESSION_ID_LEN 64u
#define NT_MAX_TEXT_LEN       256u /* device_model, firmware_version, operator_id, patient_ref */
#define NT_MAX_FAULT_MSG_LEN  1024u
#define NT_MIN_DEVICE_TIME_MS 946684800000LL  /* 2000-01-01 */
#define NT_MAX_DEVICE_TIME_MS 4102444800000LL /* 2100-01-01, exclusive */
/* seq counts the events of one boot (1, 2, 3 ...): 2^40 is 1000 events a second for 34 years
 * without a reboot. The SQL computes seq * 2 + 1 (005_rules.sql) and differences of seqs; with
 * seq <= 2^40 any such expression has 2^22 of headroom below 2^63. */
#define NT_MAX_SEQ ((uint64_t)1 << 40)
/* boot_id counts power-ons (2^40 would do), but firmware may derive it from a millisecond
 * clock (2^40.6 today) or draw it at random: 2^53 - 1 allows both, is still exact as a JSON
 * number (alert details, jq, JavaScript) and is only compared, never computed with, in SQL. */
#define NT_MAX_BOOT_ID (((uint64_t)1 << 53) - 1)
#define NT_MAX_NEEDLES 256u /* cartridge.needle_count 1-256: cartridges hold 1-42 needles */
/* needle_activity.duration_ms: one sample covers at most 10 minutes of motor time. */
#define NT_MAX_DURATION_MS 600000u
#define NT_MAX_BATTERY_PCT 100u
#define NT_MIN_TEMP_DC     (-400) /* device_status.temperature_dc, tenths of a degree C: -40 C */
#define NT_MAX_TEMP_DC     1500   /* 150 C */
/* device_status.motor_seconds_total: 2^32 - 1 s is 136 years of uninterrupted motor time. */
#define NT_MAX_MOTOR_SECONDS_TOTAL UINT32_MAX
/* session_ended.motor_seconds, cartridge_unmounted.motor_ms and device_fault.code take any
 * uint32 (their wire type is the bound): counters and an opaque vendor code, stored as bigint
 * and never computed with. cartridge.expiry_yyyymmdd is a calendar date in 2000-2099 and area
 * a known TreatmentArea (unknown_area). */

/* The most arena one message may take to decode. The decoder's pre-scan computes an upper
 * bound of what protobuf-c will allocate before it unpacks anything, and rejects a message
 * above this as not_protobuf: the largest real message (1000 events of every kind at 256 KiB)
 * takes about 0.5 MiB, a hostile one up to 80 bytes per payload byte (20 MiB). */
#define NT_MAX_DECODE_BYTES ((size_t)1 << 20)

typedef struct {
    char clinic_id[NT_MAX_ID_LEN + 1];
    char device_serial[NT_MAX_ID_LEN + 1];
} nt_topic_t;

typedef struct {
    nt_topic_t topic;
    Needletrace__V1__Telemetry *msg; /* arena-owned, valid until the arena is reset */
} nt_message_t;

/* Parses clinics/{clinic_id}/handpieces/{device_serial}/telemetry. Ids are 1-64 chars
 * of [A-Za-z0-9._-]. Returns 0, or NT_EINVAL when the topic does not match. */
int nt_decoder_topic_parse(const char *topic, size_t len, nt_topic_t *out);

/* Decodes and validates one message. On NT_REASON_OK, *out is filled (decoded into the
 * arena). Otherwise returns the reason and writes a one-line human explanation naming
 * the offending field into detail (e.g. "events[3].needle_setting.depth_um 9000 exceeds
 * 5000"), always NUL-terminated when detail_len > 0. Never crashes on any input; costs
 * O(payload_len) time and at most NT_MAX_DECODE_BYTES of arena (see decoder.c). */
nt_reason_t nt_decoder_decode(nt_arena_t *arena, const char *topic, size_t topic_len,
                              const uint8_t *payload, size_t payload_len, nt_message_t *out,
                              char *detail, size_t detail_len);

/* The oneof field name of a body case (field number 10 "session_started" ... 17
 * "device_fault"; events.kind), "" for any other value. */
const char *nt_decoder_kind_name(unsigned body_case);

/* The oneof field name of an event's body ("needle_activity", ...), "" if not set. */
const char *nt_decoder_event_kind(const Needletrace__V1__Event *ev);

#endif
