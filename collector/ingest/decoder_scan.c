/* decoder_scan.c -- the decoder's wire pre-scan: walks a payload as protobuf-c 1.4 unpacks it,
 * counting events and bounding the arena the unpack will take, without allocating anything.
 *
 * protobuf-c allocates for every message, string, unknown field and repeated array it decodes,
 * and 32 bytes per field of a message with more than 16 fields: on a hostile payload that is
 * 50-80 bytes of arena per byte (a 256 KiB message of empty events took 20 MB and 12 ms before
 * it was rejected as too_many_events). The decoder runs this scan first and rejects what it
 * shows to be too costly, so any payload costs O(bytes) time and a bounded arena.
 *
 * The scan mirrors protobuf-c's parsing rules -- parse_tag_and_wiretype (a tag of at most 5
 * bytes, bits past 32 dropped), the varint scan of protobuf_c_message_unpack (at most 10
 * bytes), scan_length_prefixed_data (a length of at most 5 bytes, truncated to 32 bits, that
 * must fit), the wire types it supports (0, 1, 2, 5) and the wire type each known field needs
 * (parse_required_member) -- so that it fails exactly when the unpack would fail for a reason
 * other than memory -- with one exception: once the message is known to be rejected (more than
 * NT_MAX_EVENTS events, or more than NT_MAX_DECODE_BYTES of arena so far), the rest of it is
 * checked only at the top level, so that a hostile message costs what its top-level fields cost.
 * The arena estimate is an upper bound for telemetry.proto: it counts every
 * allocation the unpack makes, except the concatenation of repeated fields when a singular
 * submessage occurs twice (telemetry.proto has no repeated field below the top level). */
#include "decoder_internal.h"

#include "needletrace/decoder.h"

#define SCAN_MEMBER_BYTES     32u /* sizeof(ScannedMember) in protobuf-c.c, on LP64 */
#define SCAN_STACK_MEMBERS    16u /* members protobuf-c keeps on its stack per message */
#define SCAN_MAX_DEPTH        8u  /* telemetry.proto nests 4 deep: Telemetry > ... > Cartridge */
#define SCAN_MAX_FIELD_NUMBER 536870911u /* 2^29 - 1 */

/* Arena bytes of one allocation of size bytes through the decoder's allocator. */
static size_t scan__cost(size_t size)
{
    return (size + NT_DEC_HDR + 15u) & ~(size_t)15u;
}

/* Arena bytes of the member slabs protobuf-c allocates for a message of n fields: the first
 * 16 members live on its stack, then slabs of 32, 64, 128 ... members. */
static size_t scan__slabs(size_t n)
{
    size_t bytes = 0, cap = SCAN_STACK_MEMBERS, slab = SCAN_STACK_MEMBERS;
    while (n > cap) {
        slab *= 2;
        cap += slab;
        bytes += scan__cost(slab * SCAN_MEMBER_BYTES);
    }
    return bytes;
}

/* Reads a tag as parse_tag_and_wiretype does. Returns the bytes used, 0 if malformed. */
static size_t scan__tag(const uint8_t *p, size_t rem, uint32_t *tag, unsigned *wire)
{
    size_t max = rem > 5 ? 5 : rem;
    uint32_t t = (uint32_t)(p[0] & 0x7fu) >> 3;
    unsigned shift = 4;
    *wire = p[0] & 7u;
    if ((p[0] & 0x80u) == 0) {
        *tag = t;
        return 1;
    }
    for (size_t i = 1; i < max; i++) {
        t |= (uint32_t)(p[i] & 0x7fu) << shift;
        if ((p[i] & 0x80u) == 0) {
            *tag = t;
            return i + 1;
        }
        shift += 7;
    }
    return 0;
}

/* The bytes of a field's value after its tag as protobuf_c_message_unpack scans them (a length
 * prefix included), 0 if malformed; *prefix is the size of the length prefix (0 unless LEN). */
static size_t scan__value(const uint8_t *p, size_t rem, unsigned wire, size_t *prefix)
{
    *prefix = 0;
    switch (wire) {
    case PROTOBUF_C_WIRE_TYPE_VARINT:
        for (size_t i = 0; i < rem && i < 10; i++) {
            if ((p[i] & 0x80u) == 0) {
                return i + 1;
            }
        }
        return 0;
    case PROTOBUF_C_WIRE_TYPE_64BIT:
        return rem >= 8 ? 8 : 0;
    case PROTOBUF_C_WIRE_TYPE_32BIT:
        return rem >= 4 ? 4 : 0;
    case PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED: {
        uint32_t val = 0;
        for (size_t i = 0, shift = 0; i < rem && i < 5; i++, shift += 7) {
            val |= (uint32_t)(p[i] & 0x7fu) << shift;
            if ((p[i] & 0x80u) == 0) {
                *prefix = i + 1;
                return val <= rem - (i + 1) ? i + 1 + val : 0;
            }
        }
        return 0;
    }
    default:
        return 0; /* groups (3, 4) and 6, 7 */
    }
}

/* Whether protobuf-c parses a known field that arrives with this wire type. */
static bool scan__wire_ok(const ProtobufCFieldDescriptor *f, unsigned wire)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_BOOL:
        return true; /* parse_boolean reads any wire type */
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
        return wire == PROTOBUF_C_WIRE_TYPE_32BIT || (f->label == PROTOBUF_C_LABEL_REPEATED &&
                                                      wire == PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED);
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return wire == PROTOBUF_C_WIRE_TYPE_64BIT || (f->label == PROTOBUF_C_LABEL_REPEATED &&
                                                      wire == PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED);
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES:
    case PROTOBUF_C_TYPE_MESSAGE:
        return wire == PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
    default: /* enum and the varint integers */
        return wire == PROTOBUF_C_WIRE_TYPE_VARINT ||
               (f->label == PROTOBUF_C_LABEL_REPEATED &&
                wire == PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED);
    }
}

/* Arena bytes of the repeated arrays of a message with n repeated elements in all: at most 16
 * bytes an element (ProtobufCBinaryData), plus header and rounding per repeated field. */
static size_t scan__repeated(const ProtobufCMessageDescriptor *desc, size_t n)
{
    size_t fields = 0;
    for (unsigned f = 0; n > 0 && f < desc->n_fields; f++) {
        fields += desc->fields[f].label == PROTOBUF_C_LABEL_REPEATED;
    }
    return n * sizeof(ProtobufCBinaryData) + fields * scan__cost(0);
}

/* Scans one message of type desc in p[0..len) at the given depth, adding to out. */
static bool scan__message(const ProtobufCMessageDescriptor *desc, const uint8_t *p, size_t len,
                          unsigned depth, nt_dec_scan_t *out)
{
    size_t at = 0, fields = 0, unknown = 0, repeated = 0;
    size_t bytes = scan__cost(desc->sizeof_message);
    const ProtobufCFieldDescriptor *f, *last = NULL;
    uint32_t max_id = desc->n_fields > 0 ? desc->fields[desc->n_fields - 1].id : 0;
    if (depth > SCAN_MAX_DEPTH) {
        return false;
    }
    while (at < len) {
        uint32_t tag;
        unsigned wire;
        size_t prefix, used = scan__tag(p + at, len - at, &tag, &wire);
        size_t vlen = used == 0 ? 0 : scan__value(p + at + used, len - at - used, wire, &prefix);
        if (vlen == 0) {
            return false;
        }
        const uint8_t *v = p + at + used;
        at += used + vlen;
        fields++;
        if (tag == 0 || tag > max_id) { /* fields are sorted by number */
            f = NULL;
        } else if (last == NULL || last->id != tag) { /* protobuf-c keeps the last field too */
            f = protobuf_c_message_descriptor_get_field(desc, tag);
            last = f != NULL ? f : last;
        } else {
            f = last;
        }
        if (f == NULL) {
            unknown++;
            bytes += scan__cost(vlen); /* protobuf-c copies the value, prefix included */
            out->bad_number |= tag == 0 || tag > SCAN_MAX_FIELD_NUMBER;
            continue;
        }
        if (!scan__wire_ok(f, wire)) {
            return false;
        }
        repeated += f->label == PROTOBUF_C_LABEL_REPEATED;
        if (depth == 0 && tag == NT_DEC_FIELD_EVENTS) {
            out->events++;
        } else if (depth == 0 && tag == NT_DEC_FIELD_SERIAL) {
            out->serial = v + prefix;
            out->serial_len = vlen - prefix;
        }
        if (out->events > NT_MAX_EVENTS || out->arena_bytes > NT_MAX_DECODE_BYTES) {
            if (depth > 0) {
                return true; /* rejected whatever the rest holds: back to the top level */
            }
            continue; /* only the top level is checked from here on */
        }
        if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_BYTES) {
            bytes += scan__cost(vlen - prefix + 1);
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
            const ProtobufCMessageDescriptor *sub = f->descriptor;
            if (vlen == prefix) { /* empty: just the message */
                out->arena_bytes += scan__cost(sub->sizeof_message);
            } else if (!scan__message(sub, v + prefix, vlen - prefix, depth + 1, out)) {
                return false;
            }
        }
    }
    bytes += scan__slabs(fields) + scan__repeated(desc, repeated);
    if (unknown > 0) {
        bytes += scan__cost(unknown * sizeof(ProtobufCMessageUnknownField));
    }
    out->arena_bytes += bytes;
    return true;
}

/* See decoder_internal.h. */
bool nt_decoder__scan(const ProtobufCMessageDescriptor *desc, const uint8_t *payload, size_t len,
                      nt_dec_scan_t *out)
{
    *out = (nt_dec_scan_t){.events = 0};
    return scan__message(desc, payload, len, 0, out);
}
