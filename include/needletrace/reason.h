/* reason.h -- why a message was quarantined: the reason codes and their stable names.
 *
 * The decoder decides the reason, the batch stores its name in quarantine.reason, the
 * metrics count messages per reason; this header is all they share. */
#ifndef NEEDLETRACE_REASON_H
#define NEEDLETRACE_REASON_H

/* Rejection reasons: the stable names are stored in quarantine.reason. */
#define NT_REASON_MAP(XX)                                                                          \
    XX(OK, "ok")                                                                                   \
    XX(BAD_TOPIC, "bad_topic")                 /* not clinics/{id}/handpieces/{id}/telemetry */    \
    XX(PAYLOAD_TOO_LARGE, "payload_too_large") /* more than 256 KiB */                             \
    XX(NOT_PROTOBUF, "not_protobuf")           /* protobuf-c could not unpack it */                \
    XX(SERIAL_MISMATCH, "serial_mismatch")     /* payload device_serial != topic serial */         \
    XX(BAD_IDENTIFIER, "bad_identifier")       /* serial, session id, gtin, lot... malformed */    \
    XX(INVALID_UTF8, "invalid_utf8")                                                               \
    XX(NUL_IN_STRING, "nul_in_string")                                                             \
    XX(STRING_TOO_LONG, "string_too_long")                                                         \
    XX(NO_EVENTS, "no_events")                                                                     \
    XX(TOO_MANY_EVENTS, "too_many_events")                                                         \
    XX(MISSING_BODY, "missing_body") /* an event with no oneof body */                             \
    XX(SEQ_ORDER, "seq_order")       /* seq 0, or not strictly increasing */                       \
    XX(OUT_OF_RANGE, "out_of_range") /* a number outside what any handpiece can report */          \
    XX(UNKNOWN_AREA, "unknown_area")                                                               \
    XX(DB_REJECTED, "db_rejected")         /* the database refused its rows: SQLSTATE in detail */ \
    XX(CLINIC_MISMATCH, "clinic_mismatch") /* the registry has the pen in another clinic */        \
    XX(UNKNOWN_DEVICE, "unknown_device") /* not in the registry (unknown_devices = quarantine) */  \
    XX(DEVICE_RETIRED, "device_retired") /* retired in the registry */

typedef enum {
#define NT__REASON_ENUM(name, text) NT_REASON_##name,
    NT_REASON_MAP(NT__REASON_ENUM)
#undef NT__REASON_ENUM
        NT_REASON__COUNT
} nt_reason_t;

/* Stable snake_case name of a reason ("not_protobuf"), "unknown" if out of range. */
const char *nt_reason_name(nt_reason_t r);

#endif
