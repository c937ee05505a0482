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

/* Physical bounds applied by the validator (a value past them is garbage, not a
 * policy violation: policy violations are accepted and raise alerts). */
#define NT_MAX_DEPTH_UM       5000u
#define NT_MAX_STROKE_RATE_HZ 1000u
#define NT_MAX_SESSION_ID_LEN 64u
#define NT_MAX_TEXT_LEN       256u /* device_model, firmware_version, operator_id, patient_ref */
#define NT_MAX_FAULT_MSG_LEN  1024u
#define NT_MIN_DEVICE_TIME_MS 946684800000LL  /* 2000-01-01 */
#define NT_MAX_DEVICE_TIME_MS 4102444800000LL /* 2100-01-01 */

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
 * 5000"), always NUL-terminated when detail_len > 0. Never crashes on any input. */
nt_reason_t nt_decoder_decode(nt_arena_t *arena, const char *topic, size_t topic_len,
                              const uint8_t *payload, size_t payload_len, nt_message_t *out,
                              char *detail, size_t detail_len);

/* The oneof field name of a body case (field number 10 "session_started" ... 17
 * "device_fault"; events.kind), "" for any other value. */
const char *nt_decoder_kind_name(unsigned body_case);

/* The oneof field name of an event's body ("needle_activity", ...), "" if not set. */
const char *nt_decoder_event_kind(const Needletrace__V1__Event *ev);

#endif
