/* decoder_internal.h -- what the decoder's two files share: the wire pre-scan that
 * decoder_scan.c runs before decoder.c lets protobuf-c unpack a payload. Not a public header:
 * include needletrace/decoder.h instead. */
#ifndef NEEDLETRACE_DECODER_INTERNAL_H
#define NEEDLETRACE_DECODER_INTERNAL_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Size header the decoder's allocator puts in front of every block it hands protobuf-c. */
#define NT_DEC_HDR 16u

/* Field numbers of needletrace.v1.Telemetry the scan looks at (the wire contract, never
 * renumbered). */
#define NT_DEC_FIELD_SERIAL 1u /* device_serial */
#define NT_DEC_FIELD_EVENTS 5u /* events */

/* What the pre-scan learned about a payload without allocating anything. */
typedef struct {
    size_t events;         /* top-level field 5 (events) occurrences */
    size_t arena_bytes;    /* upper bound of the arena protobuf-c will take to unpack it; only
                            * known to exceed NT_MAX_DECODE_BYTES once it does (see below) */
    bool bad_number;       /* an unknown field numbered 0 or above 2^29-1, at any depth */
    const uint8_t *serial; /* the last top-level device_serial (field 1) bytes, NULL if none */
    size_t serial_len;
} nt_dec_scan_t;

/* Walks payload as protobuf-c 1.4 unpacks it with desc, at every depth, and fills *out.
 * Returns true when protobuf-c would unpack it given enough memory, false when it would fail
 * (a malformed tag, varint, length or wire type; a known field sent with the wrong wire type;
 * a submessage that fails likewise). Once more than NT_MAX_EVENTS events or NT_MAX_DECODE_BYTES
 * of arena are counted, the rest is checked at the top level only (the message is rejected
 * anyway): events past that point are neither descended into nor counted in arena_bytes.
 * Costs O(len) time and no memory. */
bool nt_decoder__scan(const ProtobufCMessageDescriptor *desc, const uint8_t *payload, size_t len,
                      nt_dec_scan_t *out);

#endif
