/* decoder.c -- parses the topic, unpacks the protobuf payload into an arena and validates it.
 *
 * Order of checks, the first failure decides the reason: topic, payload size, protobuf
 * unpack, payload/topic serial, event count, then every field in message order
 * (device_model, firmware_version, boot_id, then events[0], events[1], ... each seq,
 * device_time_ms, body). A string field is checked for UTF-8, then for NUL bytes, then
 * for its length or identifier syntax.
 *
 * Cheap rejection: before protobuf-c allocates anything, a pre-scan of the wire format
 * (decoder_scan.c, O(bytes), no memory) finds what the unpack would reject, counts the events
 * and bounds the arena the unpack would take. A message of more than NT_MAX_EVENTS events is
 * then rejected with the reason the order above gives it (not_protobuf, serial_mismatch or
 * too_many_events) without being unpacked; one whose unpack would take more than
 * NT_MAX_DECODE_BYTES of arena is rejected as not_protobuf, and the allocator refuses to hand
 * out more than that anyway. So a 256 KiB hostile message costs well under a millisecond.
 *
 * Embedded NUL bytes: protobuf-c copies a string field into a buffer of exactly wire
 * length + 1 bytes from the allocator and terminates it, so a NUL inside the string is
 * invisible through the char *. The decoder therefore unpacks through a thin allocator
 * over the arena that stores each request's size in a 16-byte header in front of the
 * block it returns; the wire length of a decoded string is that size - 1, and the
 * string is rejected when strlen() is shorter.
 *
 * protobuf-c 1.4.1 also accepts field number 0 (and numbers above 2^29-1) when the tag is
 * a non-minimal varint; such a message is rejected as NOT_PROTOBUF, since it would not
 * survive re-encoding. */
#include "needletrace/decoder.h"

#include "needletrace/ident.h"

#include "decoder_internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define NT_QUOTE_MAX 64u /* bytes of a device string quoted in a detail */

/* ---- names --------------------------------------------------------------------------------- */

/* The oneof field names, in field-number order from session_started (10). */
static const char *const decoder__kinds[] = {
    "session_started", "session_ended",   "cartridge_mounted", "cartridge_unmounted",
    "needle_setting",  "needle_activity", "device_status",     "device_fault",
};

const char *nt_decoder_kind_name(unsigned body_case)
{
    unsigned k = body_case - NEEDLETRACE__V1__EVENT__BODY_SESSION_STARTED;
    if (body_case < NEEDLETRACE__V1__EVENT__BODY_SESSION_STARTED ||
        k >= NT_ARRAY_SIZE(decoder__kinds)) {
        return "";
    }
    return decoder__kinds[k];
}

const char *nt_decoder_event_kind(const Needletrace__V1__Event *ev)
{
    return ev == NULL ? "" : nt_decoder_kind_name((unsigned)ev->body_case);
}

/* ---- details ----------------------------------------------------------------------------------
 */

typedef struct {
    char *buf;
    size_t cap;
} decoder__detail_t;

/* Writes a device string for a detail message into out (cap >= 24): when s[0..len) is
 * valid UTF-8, quoted, with control characters, '"' and '\\' escaped and at most
 * NT_QUOTE_MAX bytes kept (cut at a character boundary, "..." appended); otherwise a
 * description without any of its bytes. The result is always ASCII or valid UTF-8. */
static const char *decoder__quote(const char *s, size_t len, char *out, size_t cap)
{
    const unsigned char *u = (const unsigned char *)s;
    if (s == NULL || !nt_ident_utf8_valid(s, len)) {
        snprintf(out, cap, "(%zu bytes, not valid utf-8)", len);
        return out;
    }
    size_t o = 0;
    out[o++] = '"';
    size_t i = 0;
    while (i < len) {
        unsigned char c = u[i];
        size_t seq = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        if (i + seq > NT_QUOTE_MAX || o + 4 + 5 > cap) {
            break;
        }
        if (c < 0x20 || c == 0x7F) {
            snprintf(out + o, cap - o, "\\x%02x", c);
            o += 4;
        } else if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else {
            memcpy(out + o, u + i, seq);
            o += seq;
        }
        i += seq;
    }
    if (i < len) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

/* Cuts a truncated detail back to a whole UTF-8 character. */
static void decoder__trim_utf8(char *buf)
{
    size_t len = strlen(buf);
    while (len > 0 && !nt_ident_utf8_valid(buf, len)) {
        buf[--len] = '\0';
    }
}

/* Writes the detail (cut to a whole UTF-8 character if it does not fit) and returns r. */
static nt_reason_t decoder__fail(decoder__detail_t *d, nt_reason_t r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static nt_reason_t decoder__fail(decoder__detail_t *d, nt_reason_t r, const char *fmt, ...)
{
    if (d->buf != NULL && d->cap > 0) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(d->buf, d->cap, fmt, ap);
        va_end(ap);
        if (n < 0) {
            d->buf[0] = '\0';
        } else if ((size_t)n >= d->cap) {
            decoder__trim_utf8(d->buf);
        }
    }
    return r;
}

/* ---- topic -------------------------------------------------------------------------------------
 */

/* Parses the topic into out; returns NULL, or why it does not match. */
static const char *decoder__topic_parse(const char *topic, size_t len, nt_topic_t *out)
{
    static const char *const literal[5] = {"clinics", NULL, "handpieces", NULL, "telemetry"};
    static const char *const what[5] = {"level 1 is not \"clinics\"", "clinic_id",
                                        "level 3 is not \"handpieces\"", "device_serial",
                                        "level 5 is not \"telemetry\""};
    static const char *const bad_id[5] = {
        NULL, "clinic_id is not 1-64 characters of [A-Za-z0-9._-]", NULL,
        "device_serial is not 1-64 characters of [A-Za-z0-9._-]", NULL};
    if (topic == NULL || len == 0) {
        return "topic is empty";
    }
    if (len > NT_MAX_TOPIC_LEN) {
        return "topic is longer than 512 bytes";
    }
    const char *seg[5];
    size_t seg_len[5];
    size_t levels = 0, start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || topic[i] == '/') {
            if (levels < 5) {
                seg[levels] = topic + start;
                seg_len[levels] = i - start;
            }
            levels++;
            start = i + 1;
        }
    }
    if (levels != 5) {
        return levels < 5 ? "topic has fewer than 5 levels" : "topic has more than 5 levels";
    }
    for (size_t k = 0; k < 5; k++) {
        if (literal[k] != NULL) {
            if (seg_len[k] != strlen(literal[k]) || memcmp(seg[k], literal[k], seg_len[k]) != 0) {
                return what[k];
            }
        } else if (!nt_ident_id_valid(seg[k], seg_len[k])) {
            return bad_id[k];
        }
    }
    if (out != NULL) {
        memcpy(out->clinic_id, seg[1], seg_len[1]);
        out->clinic_id[seg_len[1]] = '\0';
        memcpy(out->device_serial, seg[3], seg_len[3]);
        out->device_serial[seg_len[3]] = '\0';
    }
    return NULL;
}

/* Parses clinics/{clinic_id}/handpieces/{device_serial}/telemetry (topic need not be
 * NUL-terminated). Returns 0 with out filled, or NT_EINVAL when the topic does not match
 * (out is then left unchanged). */
int nt_decoder_topic_parse(const char *topic, size_t len, nt_topic_t *out)
{
    return decoder__topic_parse(topic, len, out) == NULL ? 0 : NT_EINVAL;
}

/* ---- allocation with a size header -------------------------------------------------------------
 */

typedef struct {
    nt_arena_t *arena;
    size_t limit; /* arena->used_bytes past which this message may not allocate */
    bool over_limit;
} nt_dec_alloc_t;

static void *decoder__alloc(void *data, size_t size)
{
    nt_dec_alloc_t *da = data;
    if (size > NT_MAX_DECODE_BYTES || da->arena->used_bytes > da->limit ||
        size + NT_DEC_HDR > da->limit - da->arena->used_bytes) {
        da->over_limit = true;
        return NULL;
    }
    unsigned char *p = nt_arena_alloc(da->arena, size + NT_DEC_HDR);
    if (p == NULL) {
        da->over_limit = true;
        return NULL;
    }
    memcpy(p, &size, sizeof(size));
    return p + NT_DEC_HDR;
}

static void decoder__free(void *data, void *ptr)
{
    (void)data;
    (void)ptr;
}

/* Wire length of a decoded string field: its allocation size - 1, or 0 for the shared
 * empty default. Returns SIZE_MAX if the block does not look like a protobuf-c string. */
static size_t decoder__wire_len(const char *s)
{
    if (s == NULL || s == protobuf_c_empty_string) {
        return 0;
    }
    size_t size;
    memcpy(&size, s - NT_DEC_HDR, sizeof(size));
    if (size == 0 || s[size - 1] != '\0') {
        return SIZE_MAX;
    }
    return size - 1;
}

/* ---- field numbers -----------------------------------------------------------------------------
 */

#define NT_DEC_MAX_FIELD_NUMBER 536870911u /* 2^29 - 1 */
#define NT_DEC_MAX_DEPTH        8u

/* 1 when every unknown field of m and of its submessages has a field number protobuf
 * allows (1 to 2^29-1). protobuf-c accepts 0 or larger numbers from a non-minimal tag
 * varint, keeps them as unknown fields and would re-pack them as different bytes (number 0
 * is then rejected, a large number wraps into another field). */
static bool decoder__field_numbers_valid(const ProtobufCMessage *m, unsigned depth)
{
    if (m == NULL) {
        return true;
    }
    if (depth > NT_DEC_MAX_DEPTH) {
        return false;
    }
    for (size_t i = 0; i < m->n_unknown_fields; i++) {
        uint32_t tag = m->unknown_fields[i].tag;
        if (tag == 0 || tag > NT_DEC_MAX_FIELD_NUMBER) {
            return false;
        }
    }
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    const char *base = (const char *)m;
    for (unsigned f = 0; f < desc->n_fields; f++) {
        const ProtobufCFieldDescriptor *fd = &desc->fields[f];
        if (fd->type != PROTOBUF_C_TYPE_MESSAGE) {
            continue;
        }
        if (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which;
            memcpy(&which, base + fd->quantifier_offset, sizeof(which));
            if (which != fd->id) {
                continue;
            }
        }
        if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = 0;
            const ProtobufCMessage *const *arr;
            memcpy(&n, base + fd->quantifier_offset, sizeof(n));
            memcpy(&arr, base + fd->offset, sizeof(arr));
            for (size_t i = 0; i < n && arr != NULL; i++) {
                if (!decoder__field_numbers_valid(arr[i], depth + 1)) {
                    return false;
                }
            }
        } else {
            const ProtobufCMessage *sub;
            memcpy(&sub, base + fd->offset, sizeof(sub));
            if (!decoder__field_numbers_valid(sub, depth + 1)) {
                return false;
            }
        }
    }
    return true;
}

/* ---- field checks ------------------------------------------------------------------------------
 */

typedef struct {
    decoder__detail_t *d;
    char path[96]; /* "events[12].session_started" */
} decoder__ctx_t;

/* Checks one string field for encoding: INVALID_UTF8, NUL_IN_STRING, or OK with *len set. */
static nt_reason_t decoder__string(decoder__ctx_t *c, const char *field, const char *s, size_t *len)
{
    const char *dot = c->path[0] ? "." : "";
    size_t n = decoder__wire_len(s);
    if (n == SIZE_MAX) {
        return decoder__fail(c->d, NT_REASON_NOT_PROTOBUF, "%s%s%s has an unexpected layout",
                             c->path, dot, field);
    }
    size_t bad = nt_ident_utf8_invalid_at(s, n);
    if (bad != n) {
        return decoder__fail(c->d, NT_REASON_INVALID_UTF8,
                             "%s%s%s is not valid utf-8 (byte 0x%02x at offset %zu)", c->path, dot,
                             field, (unsigned char)s[bad], bad);
    }
    size_t visible = strlen(s);
    if (visible != n) {
        return decoder__fail(c->d, NT_REASON_NUL_IN_STRING,
                             "%s%s%s contains a nul byte at offset %zu", c->path, dot, field,
                             visible);
    }
    *len = n;
    return NT_REASON_OK;
}

/* A free-text field: encoding, then at most max bytes. */
static nt_reason_t decoder__text(decoder__ctx_t *c, const char *field, const char *s, size_t max)
{
    size_t n = 0;
    nt_reason_t r = decoder__string(c, field, s, &n);
    if (r != NT_REASON_OK) {
        return r;
    }
    if (n > max) {
        return decoder__fail(c->d, NT_REASON_STRING_TOO_LONG, "%s%s%s is %zu bytes, more than %zu",
                             c->path, c->path[0] ? "." : "", field, n, max);
    }
    return NT_REASON_OK;
}

/* A required session id: encoding, then 1-64 characters of [A-Za-z0-9._:-]. */
static nt_reason_t decoder__session_id(decoder__ctx_t *c, const char *s)
{
    size_t n = 0;
    nt_reason_t r = decoder__string(c, "session_id", s, &n);
    if (r != NT_REASON_OK) {
        return r;
    }
    if (n == 0) {
        return decoder__fail(c->d, NT_REASON_BAD_IDENTIFIER, "%s.session_id is empty", c->path);
    }
    if (!nt_ident_session_id_valid(s, n)) {
        char q[NT_QUOTE_MAX * 4 + 16];
        return decoder__fail(c->d, NT_REASON_BAD_IDENTIFIER,
                             "%s.session_id %s is not 1-64 characters of [A-Za-z0-9._:-]", c->path,
                             decoder__quote(s, n, q, sizeof(q)));
    }
    return NT_REASON_OK;
}

/* 1 when gtin is 14 digits whose last is the GS1 mod-10 check digit of the first 13. */
static nt_reason_t decoder__gtin(decoder__ctx_t *c, const char *s)
{
    size_t n = 0;
    nt_reason_t r = decoder__string(c, "cartridge.gtin", s, &n);
    if (r != NT_REASON_OK) {
        return r;
    }
    char q[NT_QUOTE_MAX * 4 + 16];
    bool digits = n == NT_IDENT_GTIN_LEN;
    for (size_t i = 0; digits && i < n; i++) {
        digits = s[i] >= '0' && s[i] <= '9';
    }
    if (!digits) {
        return decoder__fail(c->d, NT_REASON_BAD_IDENTIFIER,
                             "%s.cartridge.gtin %s is not 14 digits", c->path,
                             decoder__quote(s, n, q, sizeof(q)));
    }
    if (!nt_ident_gtin_valid(s, n)) {
        return decoder__fail(
            c->d, NT_REASON_BAD_IDENTIFIER, "%s.cartridge.gtin %s has check digit %c, expected %c",
            c->path, decoder__quote(s, n, q, sizeof(q)), s[13], nt_ident_gtin_check_digit(s));
    }
    return NT_REASON_OK;
}

/* A GS1 lot or serial: 1-20 characters. The GS1 AI encodable set (GS1 General
 * Specifications, figure 7.11-1) is approximated by printable ASCII 0x21-0x7E without
 * space, which contains it. */
static nt_reason_t decoder__gs1_text(decoder__ctx_t *c, const char *field, const char *s)
{
    size_t n = 0;
    nt_reason_t r = decoder__string(c, field, s, &n);
    if (r != NT_REASON_OK) {
        return r;
    }
    bool ok = nt_ident_gs1_text_valid(s, n);
    if (!ok) {
        char q[NT_QUOTE_MAX * 4 + 16];
        return decoder__fail(c->d, NT_REASON_BAD_IDENTIFIER,
                             "%s.%s %s is not 1-20 printable ascii characters (0x21-0x7e)", c->path,
                             field, decoder__quote(s, n, q, sizeof(q)));
    }
    return NT_REASON_OK;
}

static nt_reason_t decoder__cartridge(decoder__ctx_t *c, const Needletrace__V1__Cartridge *cart,
                                      bool mounted)
{
    if (cart == NULL) {
        return decoder__fail(c->d, NT_REASON_BAD_IDENTIFIER, "%s.cartridge is missing", c->path);
    }
    nt_reason_t r = decoder__gtin(c, cart->gtin);
    if (r == NT_REASON_OK) {
        r = decoder__gs1_text(c, "cartridge.lot", cart->lot);
    }
    if (r == NT_REASON_OK) {
        r = decoder__gs1_text(c, "cartridge.serial", cart->serial);
    }
    if (r != NT_REASON_OK) {
        return r;
    }
    if (cart->expiry_yyyymmdd == 0) {
        if (mounted) {
            return decoder__fail(c->d, NT_REASON_OUT_OF_RANGE,
                                 "%s.cartridge.expiry_yyyymmdd is missing", c->path);
        }
    } else if (!nt_ident_gs1_date_valid(cart->expiry_yyyymmdd)) {
        return decoder__fail(c->d, NT_REASON_OUT_OF_RANGE,
                             "%s.cartridge.expiry_yyyymmdd %" PRIu32
                             " is not a calendar date in 2000-2099",
                             c->path, cart->expiry_yyyymmdd);
    }
    if (cart->needle_count < 1 || cart->needle_count > NT_MAX_NEEDLES) {
        return decoder__fail(c->d, NT_REASON_OUT_OF_RANGE,
                             "%s.cartridge.needle_count %" PRIu32 " is outside 1-%u", c->path,
                             cart->needle_count, NT_MAX_NEEDLES);
    }
    return NT_REASON_OK;
}

/* depth_um, stroke_rate_hz and area, shared by needle_setting and needle_activity. */
static nt_reason_t decoder__needle(decoder__ctx_t *c, uint32_t depth_um, uint32_t stroke_rate_hz,
                                   int area)
{
    if (depth_um > NT_MAX_DEPTH_UM) {
        return decoder__fail(c->d, NT_REASON_OUT_OF_RANGE, "%s.depth_um %" PRIu32 " exceeds %u",
                             c->path, depth_um, NT_MAX_DEPTH_UM);
    }
    if (stroke_rate_hz > NT_MAX_STROKE_RATE_HZ) {
        return decoder__fail(c->d, NT_REASON_OUT_OF_RANGE,
                             "%s.stroke_rate_hz %" PRIu32 " exceeds %u", c->path, stroke_rate_hz,
                             NT_MAX_STROKE_RATE_HZ);
    }
    if (area < NEEDLETRACE__V1__TREATMENT_AREA__AREA_UNSPECIFIED ||
        area > NEEDLETRACE__V1__TREATMENT_AREA__BODY) {
        return decoder__fail(c->d, NT_REASON_UNKNOWN_AREA,
                             "%s.area %d is not a known treatment area (0-10)", c->path, area);
    }
    return NT_REASON_OK;
}

static nt_reason_t decoder__body(decoder__ctx_t *c, const Needletrace__V1__Event *ev)
{
    nt_reason_t r;
    switch (ev->body_case) {
    case NEEDLETRACE__V1__EVENT__BODY_SESSION_STARTED: {
        const Needletrace__V1__SessionStarted *b = ev->session_started;
        if ((r = decoder__session_id(c, b->session_id)) != NT_REASON_OK ||
            (r = decoder__text(c, "operator_id", b->operator_id, NT_MAX_TEXT_LEN)) !=
                NT_REASON_OK) {
            return r;
        }
        return decoder__text(c, "patient_ref", b->patient_ref, NT_MAX_TEXT_LEN);
    }
    case NEEDLETRACE__V1__EVENT__BODY_SESSION_ENDED:
        return decoder__session_id(c, ev->session_ended->session_id);
    case NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_MOUNTED: {
        const Needletrace__V1__CartridgeMounted *b = ev->cartridge_mounted;
        if ((r = decoder__session_id(c, b->session_id)) != NT_REASON_OK) {
            return r;
        }
        return decoder__cartridge(c, b->cartridge, true);
    }
    case NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_UNMOUNTED: {
        const Needletrace__V1__CartridgeUnmounted *b = ev->cartridge_unmounted;
        if ((r = decoder__session_id(c, b->session_id)) != NT_REASON_OK) {
            return r;
        }
        return decoder__cartridge(c, b->cartridge, false);
    }
    case NEEDLETRACE__V1__EVENT__BODY_NEEDLE_SETTING: {
        const Needletrace__V1__NeedleSetting *b = ev->needle_setting;
        if ((r = decoder__session_id(c, b->session_id)) != NT_REASON_OK) {
            return r;
        }
        return decoder__needle(c, b->depth_um, b->stroke_rate_hz, (int)b->area);
    }
    case NEEDLETRACE__V1__EVENT__BODY_NEEDLE_ACTIVITY: {
        const Needletrace__V1__NeedleActivity *b = ev->needle_activity;
        if ((r = decoder__session_id(c, b->session_id)) != NT_REASON_OK ||
            (r = decoder__needle(c, b->depth_um, b->stroke_rate_hz, (int)b->area)) !=
                NT_REASON_OK) {
            return r;
        }
        if (b->duration_ms > NT_MAX_DURATION_MS) {
            return decoder__fail(c->d, NT_REASON_OUT_OF_RANGE,
                                 "%s.duration_ms %" PRIu32 " exceeds %u", c->path, b->duration_ms,
                                 NT_MAX_DURATION_MS);
        }
        return NT_REASON_OK;
    }
    case NEEDLETRACE__V1__EVENT__BODY_DEVICE_STATUS: {
        const Needletrace__V1__DeviceStatus *b = ev->device_status;
        if (b->battery_pct > NT_MAX_BATTERY_PCT) {
            return decoder__fail(c->d, NT_REASON_OUT_OF_RANGE,
                                 "%s.battery_pct %" PRIu32 " exceeds %u", c->path, b->battery_pct,
                                 NT_MAX_BATTERY_PCT);
        }
        if (b->temperature_dc < NT_MIN_TEMP_DC || b->temperature_dc > NT_MAX_TEMP_DC) {
            return decoder__fail(c->d, NT_REASON_OUT_OF_RANGE,
                                 "%s.temperature_dc %" PRId32 " is outside [%d, %d]", c->path,
                                 b->temperature_dc, NT_MIN_TEMP_DC, NT_MAX_TEMP_DC);
        }
        if (b->motor_seconds_total > NT_MAX_MOTOR_SECONDS_TOTAL) {
            return decoder__fail(c->d, NT_REASON_OUT_OF_RANGE,
                                 "%s.motor_seconds_total %" PRIu64 " exceeds %" PRIu32, c->path,
                                 b->motor_seconds_total, (uint32_t)NT_MAX_MOTOR_SECONDS_TOTAL);
        }
        return NT_REASON_OK;
    }
    case NEEDLETRACE__V1__EVENT__BODY_DEVICE_FAULT:
        return decoder__text(c, "message", ev->device_fault->message, NT_MAX_FAULT_MSG_LEN);
    case NEEDLETRACE__V1__EVENT__BODY__NOT_SET:
    default:
        break;
    }
    return NT_REASON_OK;
}

/* Writes "events[i].kind" into buf without printf: it runs for every event of every message. */
static void decoder__event_path(char *buf, size_t len, size_t i, const char *kind)
{
    char digits[24];
    size_t nd = 0, o = 0;
    do {
        digits[nd++] = (char)('0' + i % 10);
        i /= 10;
    } while (i > 0);
    size_t klen = strlen(kind);
    if (len < sizeof("events[].") + nd + klen) {
        buf[0] = '\0';
        return;
    }
    memcpy(buf, "events[", 7);
    o = 7;
    while (nd > 0) {
        buf[o++] = digits[--nd];
    }
    buf[o++] = ']';
    buf[o++] = '.';
    memcpy(buf + o, kind, klen + 1);
}

/* The body pointer of a set oneof, NULL if unset. */
static const void *decoder__body_ptr(const Needletrace__V1__Event *ev)
{
    switch (ev->body_case) {
    case NEEDLETRACE__V1__EVENT__BODY_SESSION_STARTED:
        return ev->session_started;
    case NEEDLETRACE__V1__EVENT__BODY_SESSION_ENDED:
        return ev->session_ended;
    case NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_MOUNTED:
        return ev->cartridge_mounted;
    case NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_UNMOUNTED:
        return ev->cartridge_unmounted;
    case NEEDLETRACE__V1__EVENT__BODY_NEEDLE_SETTING:
        return ev->needle_setting;
    case NEEDLETRACE__V1__EVENT__BODY_NEEDLE_ACTIVITY:
        return ev->needle_activity;
    case NEEDLETRACE__V1__EVENT__BODY_DEVICE_STATUS:
        return ev->device_status;
    case NEEDLETRACE__V1__EVENT__BODY_DEVICE_FAULT:
        return ev->device_fault;
    case NEEDLETRACE__V1__EVENT__BODY__NOT_SET:
    default:
        return NULL;
    }
}

static nt_reason_t decoder__validate(decoder__detail_t *d, const Needletrace__V1__Telemetry *m)
{
    decoder__ctx_t c = {.d = d, .path = ""};
    nt_reason_t r;

    if (m->n_events == 0) {
        return decoder__fail(d, NT_REASON_NO_EVENTS, "message has no events");
    }
    if (m->n_events > NT_MAX_EVENTS) {
        return decoder__fail(d, NT_REASON_TOO_MANY_EVENTS, "message has %zu events, more than %u",
                             m->n_events, NT_MAX_EVENTS);
    }
    if ((r = decoder__text(&c, "device_model", m->device_model, NT_MAX_TEXT_LEN)) != NT_REASON_OK ||
        (r = decoder__text(&c, "firmware_version", m->firmware_version, NT_MAX_TEXT_LEN)) !=
            NT_REASON_OK) {
        return r;
    }
    if (m->boot_id > NT_MAX_BOOT_ID) {
        return decoder__fail(d, NT_REASON_OUT_OF_RANGE, "boot_id %" PRIu64 " exceeds %" PRIu64,
                             m->boot_id, NT_MAX_BOOT_ID);
    }

    uint64_t prev_seq = 0;
    for (size_t i = 0; i < m->n_events; i++) {
        const Needletrace__V1__Event *ev = m->events[i];
        if (ev == NULL) {
            return decoder__fail(d, NT_REASON_MISSING_BODY, "events[%zu] is missing", i);
        }
        if (ev->seq == 0) {
            return decoder__fail(d, NT_REASON_SEQ_ORDER, "events[%zu].seq is 0, must be at least 1",
                                 i);
        }
        if (ev->seq > NT_MAX_SEQ) {
            return decoder__fail(d, NT_REASON_OUT_OF_RANGE,
                                 "events[%zu].seq %" PRIu64 " exceeds %" PRIu64, i, ev->seq,
                                 NT_MAX_SEQ);
        }
        if (ev->seq <= prev_seq) {
            return decoder__fail(d, NT_REASON_SEQ_ORDER,
                                 "events[%zu].seq %" PRIu64 " does not follow %" PRIu64, i, ev->seq,
                                 prev_seq);
        }
        prev_seq = ev->seq;
        if (ev->device_time_ms < NT_MIN_DEVICE_TIME_MS ||
            ev->device_time_ms >= NT_MAX_DEVICE_TIME_MS) {
            return decoder__fail(d, NT_REASON_OUT_OF_RANGE,
                                 "events[%zu].device_time_ms %" PRId64 " is outside [%lld, %lld)",
                                 i, ev->device_time_ms, NT_MIN_DEVICE_TIME_MS,
                                 NT_MAX_DEVICE_TIME_MS);
        }
        if (decoder__body_ptr(ev) == NULL) {
            return decoder__fail(d, NT_REASON_MISSING_BODY, "events[%zu] has no body", i);
        }
        decoder__event_path(c.path, sizeof(c.path), i, nt_decoder_event_kind(ev));
        if ((r = decoder__body(&c, ev)) != NT_REASON_OK) {
            return r;
        }
    }
    return NT_REASON_OK;
}

/* ---- entry point -------------------------------------------------------------------------------
 */

/* SERIAL_MISMATCH unless the payload serial s (its wire bytes: len of them, SIZE_MAX when they
 * cannot be read, 0 when absent) is not empty and equals the topic's serial; else OK. A NUL
 * inside the payload serial must not shorten it, so the wire bytes are compared. */
static nt_reason_t decoder__serial(decoder__detail_t *d, const char *s, size_t len,
                                   const char *topic_serial)
{
    char q1[NT_QUOTE_MAX * 4 + 16], q2[NT_QUOTE_MAX * 4 + 16];
    size_t topic_len = strlen(topic_serial);
    if (len == 0) {
        return decoder__fail(d, NT_REASON_SERIAL_MISMATCH,
                             "payload device_serial is empty, topic device_serial is \"%s\"",
                             topic_serial);
    }
    if (len != topic_len || memcmp(s, topic_serial, len) != 0) {
        return decoder__fail(d, NT_REASON_SERIAL_MISMATCH,
                             "payload device_serial %s does not match topic device_serial %s",
                             len == SIZE_MAX ? "(unreadable)"
                                             : decoder__quote(s, len, q1, sizeof(q1)),
                             decoder__quote(topic_serial, topic_len, q2, sizeof(q2)));
    }
    return NT_REASON_OK;
}

/* The wire pre-scan (decoder_scan.c): rejects, before anything is allocated, what the unpack
 * would reject, a message of more than NT_MAX_EVENTS events (with the reason the full decoder
 * would give it: a bad field number or serial is reported first, as after an unpack), and a
 * message whose unpack would take more than NT_MAX_DECODE_BYTES of arena. OK otherwise. */
static nt_reason_t decoder__prescan(decoder__detail_t *d, const uint8_t *payload, size_t len,
                                    const char *topic_serial)
{
    nt_dec_scan_t s;
    if (!nt_decoder__scan(&needletrace__v1__telemetry__descriptor, payload, len, &s)) {
        return decoder__fail(d, NT_REASON_NOT_PROTOBUF,
                             "payload is not a needletrace.v1.Telemetry protobuf message");
    }
    if (s.events > NT_MAX_EVENTS) {
        if (s.bad_number) {
            return decoder__fail(d, NT_REASON_NOT_PROTOBUF,
                                 "payload has a field number outside 1-536870911");
        }
        nt_reason_t r = decoder__serial(d, (const char *)s.serial, s.serial_len, topic_serial);
        if (r != NT_REASON_OK) {
            return r;
        }
        return decoder__fail(d, NT_REASON_TOO_MANY_EVENTS, "message has %zu events, more than %u",
                             s.events, NT_MAX_EVENTS);
    }
    if (s.arena_bytes > NT_MAX_DECODE_BYTES) {
        return decoder__fail(d, NT_REASON_NOT_PROTOBUF,
                             "decoding the payload would take more than %zu bytes of memory",
                             NT_MAX_DECODE_BYTES);
    }
    return NT_REASON_OK;
}

/* Decodes and validates one message; see decoder.h. payload may be NULL when payload_len
 * is 0; out may be NULL to validate only. On rejection out->msg is NULL (out->topic is
 * filled once the topic parsed). Memory comes from arena and stays there until its reset,
 * accepted or not. */
nt_reason_t nt_decoder_decode(nt_arena_t *arena, const char *topic, size_t topic_len,
                              const uint8_t *payload, size_t payload_len, nt_message_t *out,
                              char *detail, size_t detail_len)
{
    decoder__detail_t d = {.buf = detail, .cap = detail_len};
    nt_message_t scratch;
    char q1[NT_QUOTE_MAX * 4 + 16];

    if (detail != NULL && detail_len > 0) {
        detail[0] = '\0';
    }
    if (out == NULL) {
        out = &scratch;
    }
    memset(out, 0, sizeof(*out));

    const char *why = decoder__topic_parse(topic, topic_len, &out->topic);
    if (why != NULL) {
        size_t shown = (topic == NULL) ? 0 : topic_len;
        return decoder__fail(&d, NT_REASON_BAD_TOPIC,
                             "topic %s does not match "
                             "clinics/{clinic_id}/handpieces/{device_serial}/telemetry: %s",
                             decoder__quote(topic ? topic : "", shown, q1, sizeof(q1)), why);
    }
    if (payload_len > NT_MAX_PAYLOAD_BYTES) {
        return decoder__fail(&d, NT_REASON_PAYLOAD_TOO_LARGE,
                             "payload of %zu bytes exceeds %u bytes", payload_len,
                             NT_MAX_PAYLOAD_BYTES);
    }
    if (arena == NULL || (payload == NULL && payload_len > 0)) {
        return decoder__fail(&d, NT_REASON_NOT_PROTOBUF, "no payload or arena to decode into");
    }

    nt_reason_t r = decoder__prescan(&d, payload, payload_len, out->topic.device_serial);
    if (r != NT_REASON_OK) {
        return r;
    }
    nt_dec_alloc_t da = {.arena = arena, .over_limit = false};
    da.limit = arena->used_bytes > SIZE_MAX - NT_MAX_DECODE_BYTES
                   ? SIZE_MAX
                   : arena->used_bytes + NT_MAX_DECODE_BYTES;
    ProtobufCAllocator alloc = {
        .alloc = decoder__alloc, .free = decoder__free, .allocator_data = &da};
    static const uint8_t empty[1] = {0};
    Needletrace__V1__Telemetry *m =
        needletrace__v1__telemetry__unpack(&alloc, payload_len, payload ? payload : empty);
    if (m == NULL) {
        if (da.over_limit) {
            return decoder__fail(&d, NT_REASON_NOT_PROTOBUF, "decoded message exceeds arena limit");
        }
        return decoder__fail(&d, NT_REASON_NOT_PROTOBUF,
                             "payload is not a needletrace.v1.Telemetry protobuf message");
    }

    if (!decoder__field_numbers_valid(&m->base, 0)) {
        return decoder__fail(&d, NT_REASON_NOT_PROTOBUF,
                             "payload has a field number outside 1-536870911");
    }

    r = decoder__serial(&d, m->device_serial, decoder__wire_len(m->device_serial),
                        out->topic.device_serial);
    if (r == NT_REASON_OK) {
        r = decoder__validate(&d, m);
    }
    if (r != NT_REASON_OK) {
        return r;
    }
    out->msg = m;
    return NT_REASON_OK;
}
