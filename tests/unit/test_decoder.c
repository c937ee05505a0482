/* test_decoder.c -- unit tests for the arena, topic parsing, decoding and validation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "needletrace/arena.h"
#include "needletrace/decoder.h"
#include "needletrace/ident.h"

#include "../../collector/ingest/decoder_internal.h" /* the pre-scan's arena bound */

#define TOPIC  "clinics/clinic-1/handpieces/SN-0001/telemetry"
#define SERIAL "SN-0001"
#define GTIN   "04006381333931" /* EAN-13 4006381333931 with a leading 0 */
#define T0     INT64_C(1700000000000)

/* ---- message builder ------------------------------------------------------------------------ */

typedef struct {
    Needletrace__V1__Event ev;
    Needletrace__V1__SessionStarted ss;
    Needletrace__V1__SessionEnded se;
    Needletrace__V1__CartridgeMounted cm;
    Needletrace__V1__CartridgeUnmounted cu;
    Needletrace__V1__Cartridge cart;
    Needletrace__V1__NeedleSetting ns;
    Needletrace__V1__NeedleActivity na;
    Needletrace__V1__DeviceStatus ds;
    Needletrace__V1__DeviceFault df;
} tev_t;

typedef struct {
    Needletrace__V1__Telemetry t;
    tev_t *ev;
    Needletrace__V1__Event **evp;
    size_t n;
} tmsg_t;

static nt_arena_t g_arena;

static void set_kind(tev_t *e, Needletrace__V1__Event__BodyCase kind)
{
    e->ev.body_case = kind;
    switch (kind) {
    case NEEDLETRACE__V1__EVENT__BODY_SESSION_STARTED:
        e->ev.session_started = &e->ss;
        break;
    case NEEDLETRACE__V1__EVENT__BODY_SESSION_ENDED:
        e->ev.session_ended = &e->se;
        break;
    case NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_MOUNTED:
        e->ev.cartridge_mounted = &e->cm;
        break;
    case NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_UNMOUNTED:
        e->ev.cartridge_unmounted = &e->cu;
        break;
    case NEEDLETRACE__V1__EVENT__BODY_NEEDLE_SETTING:
        e->ev.needle_setting = &e->ns;
        break;
    case NEEDLETRACE__V1__EVENT__BODY_NEEDLE_ACTIVITY:
        e->ev.needle_activity = &e->na;
        break;
    case NEEDLETRACE__V1__EVENT__BODY_DEVICE_STATUS:
        e->ev.device_status = &e->ds;
        break;
    case NEEDLETRACE__V1__EVENT__BODY_DEVICE_FAULT:
        e->ev.device_fault = &e->df;
        break;
    case NEEDLETRACE__V1__EVENT__BODY__NOT_SET:
    default:
        e->ev.session_started = NULL;
        break;
    }
}

static const Needletrace__V1__Event__BodyCase kinds[8] = {
    NEEDLETRACE__V1__EVENT__BODY_SESSION_STARTED,
    NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_MOUNTED,
    NEEDLETRACE__V1__EVENT__BODY_NEEDLE_SETTING,
    NEEDLETRACE__V1__EVENT__BODY_NEEDLE_ACTIVITY,
    NEEDLETRACE__V1__EVENT__BODY_DEVICE_STATUS,
    NEEDLETRACE__V1__EVENT__BODY_DEVICE_FAULT,
    NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_UNMOUNTED,
    NEEDLETRACE__V1__EVENT__BODY_SESSION_ENDED,
};

/* A valid message of n events, with the kinds of `kinds` in turn. */
static tmsg_t *msg_new(size_t n)
{
    tmsg_t *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    m->ev = calloc(n ? n : 1, sizeof(*m->ev));
    m->evp = calloc(n ? n : 1, sizeof(*m->evp));
    assert_non_null(m->ev);
    assert_non_null(m->evp);
    m->n = n;
    needletrace__v1__telemetry__init(&m->t);
    m->t.device_serial = SERIAL;
    m->t.device_model = "NP-9";
    m->t.firmware_version = "1.2.3";
    m->t.boot_id = 7;
    m->t.n_events = n;
    m->t.events = m->evp;
    for (size_t i = 0; i < n; i++) {
        tev_t *e = &m->ev[i];
        needletrace__v1__event__init(&e->ev);
        e->ev.seq = i + 1;
        e->ev.device_time_ms = T0 + (int64_t)i;
        needletrace__v1__session_started__init(&e->ss);
        e->ss.session_id = "S1";
        e->ss.operator_id = "op-1";
        e->ss.patient_ref = "p-1";
        needletrace__v1__session_ended__init(&e->se);
        e->se.session_id = "S1";
        e->se.motor_seconds = 30;
        needletrace__v1__cartridge__init(&e->cart);
        e->cart.gtin = GTIN;
        e->cart.lot = "LOT42";
        e->cart.serial = "CART0001";
        e->cart.expiry_yyyymmdd = 20271231;
        e->cart.needle_count = 36;
        e->cart.sterile_barrier_intact = 1;
        needletrace__v1__cartridge_mounted__init(&e->cm);
        e->cm.session_id = "S1";
        e->cm.cartridge = &e->cart;
        needletrace__v1__cartridge_unmounted__init(&e->cu);
        e->cu.session_id = "S1";
        e->cu.cartridge = &e->cart;
        e->cu.motor_ms = 1000;
        needletrace__v1__needle_setting__init(&e->ns);
        e->ns.session_id = "S1";
        e->ns.depth_um = 500;
        e->ns.stroke_rate_hz = 100;
        e->ns.area = NEEDLETRACE__V1__TREATMENT_AREA__CHEEKS;
        needletrace__v1__needle_activity__init(&e->na);
        e->na.session_id = "S1";
        e->na.depth_um = 500;
        e->na.stroke_rate_hz = 100;
        e->na.area = NEEDLETRACE__V1__TREATMENT_AREA__CHEEKS;
        e->na.duration_ms = 1000;
        needletrace__v1__device_status__init(&e->ds);
        e->ds.battery_pct = 80;
        e->ds.temperature_dc = 250;
        e->ds.motor_seconds_total = 1000;
        needletrace__v1__device_fault__init(&e->df);
        e->df.code = 3;
        e->df.message = "motor stall";
        set_kind(e, kinds[i % 8]);
        m->evp[i] = &e->ev;
    }
    return m;
}

static void msg_free(tmsg_t *m)
{
    free(m->ev);
    free(m->evp);
    free(m);
}

static uint8_t *msg_pack(const tmsg_t *m, size_t *len)
{
    *len = needletrace__v1__telemetry__get_packed_size(&m->t);
    uint8_t *buf = malloc(*len ? *len : 1);
    assert_non_null(buf);
    assert_int_equal(needletrace__v1__telemetry__pack(&m->t, buf), *len);
    return buf;
}

static char g_detail[256];
static nt_message_t g_out;

static nt_reason_t decode_bytes(const char *topic, const uint8_t *buf, size_t len)
{
    nt_arena_reset(&g_arena);
    memset(g_detail, 0x55, sizeof(g_detail));
    nt_reason_t r = nt_decoder_decode(&g_arena, topic, strlen(topic), buf, len, &g_out, g_detail,
                                      sizeof(g_detail));
    /* Every detail is a NUL-terminated, valid UTF-8 line. */
    assert_non_null(memchr(g_detail, '\0', sizeof(g_detail)));
    assert_true(nt_ident_utf8_valid(g_detail, strlen(g_detail)));
    assert_null(strchr(g_detail, '\n'));
    if (r == NT_REASON_OK) {
        assert_string_equal(g_detail, "");
        assert_non_null(g_out.msg);
    } else {
        assert_true(strlen(g_detail) > 0);
        assert_null(g_out.msg);
    }
    return r;
}

static nt_reason_t decode_msg(const tmsg_t *m)
{
    size_t len;
    uint8_t *buf = msg_pack(m, &len);
    nt_reason_t r = decode_bytes(TOPIC, buf, len);
    free(buf);
    return r;
}

/* Packs m, sets byte off of the only occurrence of needle to b, decodes. Lets a test put
 * bytes into a string field that the char * API cannot carry (NUL). */
static nt_reason_t decode_patched(const tmsg_t *m, const char *needle, size_t off, uint8_t b)
{
    size_t len;
    uint8_t *buf = msg_pack(m, &len);
    size_t nlen = strlen(needle);
    uint8_t *at = memmem(buf, len, needle, nlen);
    assert_non_null(at);
    assert_null(memmem(at + 1, len - (size_t)(at + 1 - buf), needle, nlen));
    at[off] = b;
    nt_reason_t r = decode_bytes(TOPIC, buf, len);
    free(buf);
    return r;
}

#define assert_reason(expr, want)                                                                  \
    do {                                                                                           \
        nt_reason_t got_ = (expr);                                                                 \
        if (got_ != (want)) {                                                                      \
            fail_msg("got %s (%s), want %s", nt_reason_name(got_), g_detail,                       \
                     nt_reason_name(want));                                                        \
        }                                                                                          \
    } while (0)

static int setup(void **state)
{
    (void)state;
    nt_arena_init(&g_arena, 0, 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    nt_arena_close(&g_arena);
    return 0;
}

/* ---- arena ------------------------------------------------------------------------------------
 */

static void test_arena_alignment_and_reuse(void **state)
{
    (void)state;
    nt_arena_t a;
    nt_arena_init(&a, 4096, 0);
    assert_int_equal(a.chunk_bytes, 4096);
    assert_int_equal(a.limit_bytes, (size_t)64 << 20);
    void *first = nt_arena_alloc(&a, 1);
    assert_non_null(first);
    for (size_t n = 0; n < 100; n++) {
        unsigned char *p = nt_arena_alloc(&a, n);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 16, 0);
        memset(p, 0xAB, n);
    }
    nt_arena_chunk_t *head = a.head;
    assert_true(a.used_bytes > 4096); /* more than one chunk was used */
    nt_arena_reset(&a);
    assert_int_equal(a.used_bytes, 0);
    assert_non_null(a.head);
    /* The first chunk is kept: the first allocation lands where it did before. */
    assert_ptr_equal(nt_arena_alloc(&a, 1), first);
    (void)head;
    nt_arena_close(&a);
    assert_null(a.head);
    assert_int_equal(a.used_bytes, 0);
}

static void test_arena_oversized_and_limit(void **state)
{
    (void)state;
    nt_arena_t a;
    nt_arena_init(&a, 1024, 8192);
    unsigned char *small = nt_arena_alloc(&a, 16);
    assert_non_null(small);
    nt_arena_chunk_t *head = a.head;
    /* An oversized request gets its own chunk; the head chunk keeps filling. */
    unsigned char *big = nt_arena_alloc(&a, 3000);
    assert_non_null(big);
    memset(big, 1, 3000);
    assert_ptr_equal(a.head, head);
    unsigned char *next = nt_arena_alloc(&a, 16);
    assert_ptr_equal(next, small + 16);
    /* The limit counts every byte handed out since the reset. */
    assert_null(nt_arena_alloc(&a, 8192));
    assert_non_null(nt_arena_alloc(&a, 4000));
    assert_null(nt_arena_alloc(&a, 2000));
    assert_null(nt_arena_alloc(&a, SIZE_MAX));
    assert_null(nt_arena_alloc(&a, SIZE_MAX - 8));
    /* free is a no-op and the memory stays counted. */
    size_t used = a.used_bytes;
    a.allocator.free(a.allocator.allocator_data, big);
    assert_int_equal(a.used_bytes, used);
    void *via_pb = a.allocator.alloc(a.allocator.allocator_data, 10);
    assert_non_null(via_pb);
    assert_int_equal(a.used_bytes, used + 16);
    nt_arena_reset(&a);
    assert_ptr_equal(a.head, head);
    assert_ptr_equal(nt_arena_alloc(&a, 16), small);
    nt_arena_close(&a);

    /* An arena whose first request is oversized keeps nothing of that size. */
    nt_arena_init(&a, 1024, 0);
    assert_non_null(nt_arena_alloc(&a, 5000));
    nt_arena_reset(&a);
    assert_null(a.head);
    assert_non_null(nt_arena_alloc(&a, 10));
    nt_arena_close(&a);
}

static void test_arena_steady_state(void **state)
{
    (void)state;
    tmsg_t *m = msg_new(8);
    size_t len;
    uint8_t *buf = msg_pack(m, &len);
    nt_arena_t a;
    nt_arena_init(&a, 64 * 1024, 0);
    nt_message_t out;
    assert_int_equal(nt_decoder_decode(&a, TOPIC, strlen(TOPIC), buf, len, &out, NULL, 0),
                     NT_REASON_OK);
    nt_arena_chunk_t *head = a.head;
    size_t used = a.used_bytes;
    for (int i = 0; i < 100; i++) {
        nt_arena_reset(&a);
        assert_int_equal(nt_decoder_decode(&a, TOPIC, strlen(TOPIC), buf, len, &out, NULL, 0),
                         NT_REASON_OK);
        assert_ptr_equal(a.head, head); /* no new chunk, so no malloc */
        assert_int_equal(a.used_bytes, used);
    }
    /* Many messages per reset share the chunks. */
    nt_arena_reset(&a);
    for (int i = 0; i < 50; i++) {
        assert_int_equal(nt_decoder_decode(&a, TOPIC, strlen(TOPIC), buf, len, &out, NULL, 0),
                         NT_REASON_OK);
        assert_string_equal(out.msg->device_serial, SERIAL);
    }
    nt_arena_close(&a);
    free(buf);
    msg_free(m);
}

static void test_arena_limit_in_decode(void **state)
{
    (void)state;
    tmsg_t *m = msg_new(100);
    size_t len;
    uint8_t *buf = msg_pack(m, &len);
    nt_arena_t a;
    nt_arena_init(&a, 1024, 2048);
    char detail[128];
    nt_message_t out;
    assert_int_equal(
        nt_decoder_decode(&a, TOPIC, strlen(TOPIC), buf, len, &out, detail, sizeof(detail)),
        NT_REASON_NOT_PROTOBUF);
    assert_string_equal(detail, "decoded message exceeds arena limit");
    assert_null(out.msg);
    nt_arena_close(&a);
    free(buf);
    msg_free(m);
}

/* ---- names ------------------------------------------------------------------------------------
 */

static void test_reason_names(void **state)
{
    (void)state;
    assert_string_equal(nt_reason_name(NT_REASON_OK), "ok");
    assert_string_equal(nt_reason_name(NT_REASON_BAD_TOPIC), "bad_topic");
    assert_string_equal(nt_reason_name(NT_REASON_PAYLOAD_TOO_LARGE), "payload_too_large");
    assert_string_equal(nt_reason_name(NT_REASON_NOT_PROTOBUF), "not_protobuf");
    assert_string_equal(nt_reason_name(NT_REASON_SERIAL_MISMATCH), "serial_mismatch");
    assert_string_equal(nt_reason_name(NT_REASON_BAD_IDENTIFIER), "bad_identifier");
    assert_string_equal(nt_reason_name(NT_REASON_INVALID_UTF8), "invalid_utf8");
    assert_string_equal(nt_reason_name(NT_REASON_NUL_IN_STRING), "nul_in_string");
    assert_string_equal(nt_reason_name(NT_REASON_STRING_TOO_LONG), "string_too_long");
    assert_string_equal(nt_reason_name(NT_REASON_NO_EVENTS), "no_events");
    assert_string_equal(nt_reason_name(NT_REASON_TOO_MANY_EVENTS), "too_many_events");
    assert_string_equal(nt_reason_name(NT_REASON_MISSING_BODY), "missing_body");
    assert_string_equal(nt_reason_name(NT_REASON_SEQ_ORDER), "seq_order");
    assert_string_equal(nt_reason_name(NT_REASON_OUT_OF_RANGE), "out_of_range");
    assert_string_equal(nt_reason_name(NT_REASON_UNKNOWN_AREA), "unknown_area");
    assert_string_equal(nt_reason_name(NT_REASON__COUNT), "unknown");
    assert_string_equal(nt_reason_name((nt_reason_t)-1), "unknown");
}

static void test_event_kinds(void **state)
{
    (void)state;
    static const char *const names[8] = {
        "session_started", "cartridge_mounted", "needle_setting",      "needle_activity",
        "device_status",   "device_fault",      "cartridge_unmounted", "session_ended"};
    tmsg_t *m = msg_new(8);
    assert_reason(decode_msg(m), NT_REASON_OK);
    assert_int_equal(g_out.msg->n_events, 8);
    for (size_t i = 0; i < 8; i++) {
        assert_string_equal(nt_decoder_event_kind(g_out.msg->events[i]), names[i]);
    }
    Needletrace__V1__Event unset = NEEDLETRACE__V1__EVENT__INIT;
    assert_string_equal(nt_decoder_event_kind(&unset), "");
    assert_string_equal(nt_decoder_event_kind(NULL), "");
    msg_free(m);
}

/* ---- topic ------------------------------------------------------------------------------------
 */

static int topic_ok(const char *t)
{
    nt_topic_t out;
    return nt_decoder_topic_parse(t, strlen(t), &out) == 0;
}

static void test_topic_parse(void **state)
{
    (void)state;
    char id64[65], id65[66], t[256];
    memset(id64, 'a', 64);
    id64[64] = '\0';
    memset(id65, 'b', 65);
    id65[65] = '\0';

    nt_topic_t out;
    assert_int_equal(nt_decoder_topic_parse(TOPIC, strlen(TOPIC), &out), 0);
    assert_string_equal(out.clinic_id, "clinic-1");
    assert_string_equal(out.device_serial, SERIAL);
    assert_true(topic_ok("clinics/A.b_c-9/handpieces/x/telemetry"));

    snprintf(t, sizeof(t), "clinics/%s/handpieces/%s/telemetry", id64, id64);
    assert_int_equal(nt_decoder_topic_parse(t, strlen(t), &out), 0);
    assert_string_equal(out.clinic_id, id64);
    assert_string_equal(out.device_serial, id64);
    snprintf(t, sizeof(t), "clinics/%s/handpieces/x/telemetry", id65);
    assert_false(topic_ok(t));
    snprintf(t, sizeof(t), "clinics/c/handpieces/%s/telemetry", id65);
    assert_false(topic_ok(t));

    assert_false(topic_ok(""));
    assert_false(topic_ok("clinics/c/handpieces/d/telemetry/extra"));
    assert_false(topic_ok("clinics/c/handpieces/d/telemetry/"));
    assert_false(topic_ok("/clinics/c/handpieces/d/telemetry"));
    assert_false(topic_ok("clinics/c/handpieces/d"));
    assert_false(topic_ok("clinics//handpieces/d/telemetry"));
    assert_false(topic_ok("clinics/c/handpieces//telemetry"));
    assert_false(topic_ok("clinic/c/handpieces/d/telemetry"));
    assert_false(topic_ok("Clinics/c/handpieces/d/telemetry"));
    assert_false(topic_ok("clinics/c/handpiece/d/telemetry"));
    assert_false(topic_ok("clinics/c/handpieces/d/telemetryx"));
    assert_false(topic_ok("clinics/c/handpieces/d/Telemetry"));
    assert_false(topic_ok("clinics/c d/handpieces/d/telemetry"));
    assert_false(topic_ok("clinics/c/handpieces/d+/telemetry"));
    assert_false(topic_ok("clinics/#/handpieces/d/telemetry"));
    assert_false(topic_ok("clinics/c:1/handpieces/d/telemetry"));
    assert_false(topic_ok("clinics/c/handpieces/\xc3\xa9/telemetry"));
    assert_false(topic_ok("$share/g/clinics/c/handpieces/d/telemetry"));
    /* The length is authoritative: a NUL inside the id is a bad character. */
    static const char nul_topic[] = "clinics/c\0x/handpieces/d/telemetry";
    assert_int_equal(nt_decoder_topic_parse(nul_topic, sizeof(nul_topic) - 1, &out), NT_EINVAL);
    /* Not NUL-terminated: only len bytes are read. */
    assert_int_equal(nt_decoder_topic_parse(TOPIC "/more", strlen(TOPIC), &out), 0);
    assert_int_equal(nt_decoder_topic_parse(NULL, 0, &out), NT_EINVAL);
    assert_int_equal(nt_decoder_topic_parse(TOPIC, strlen(TOPIC), NULL), 0);
}

static void test_identifier_valid(void **state)
{
    (void)state;
    char id[66];
    memset(id, 'Z', sizeof(id));
    assert_true(nt_ident_id_valid(id, 1));
    assert_true(nt_ident_id_valid(id, 64));
    assert_false(nt_ident_id_valid(id, 65));
    assert_false(nt_ident_id_valid(id, 0));
    assert_false(nt_ident_id_valid(NULL, 0));
    assert_true(nt_ident_id_valid("aZ09._-", 7));
    assert_false(nt_ident_id_valid("a/b", 3));
    assert_false(nt_ident_id_valid("a b", 3));
    assert_false(nt_ident_id_valid("a:b", 3));
    assert_false(nt_ident_id_valid("a\0b", 3));
    assert_false(nt_ident_id_valid("\xc3\xa9", 2));
}

static void test_bad_topic_decode(void **state)
{
    (void)state;
    tmsg_t *m = msg_new(1);
    size_t len;
    uint8_t *buf = msg_pack(m, &len);
    assert_reason(decode_bytes("clinics/c/handpieces/SN-0001/telemetry/x", buf, len),
                  NT_REASON_BAD_TOPIC);
    assert_non_null(strstr(g_detail, "more than 5 levels"));
    assert_reason(decode_bytes("clinics/c/handpieces/SN-0001/telemetry/", buf, len),
                  NT_REASON_BAD_TOPIC);
    assert_reason(decode_bytes("clinics//handpieces/SN-0001/telemetry", buf, len),
                  NT_REASON_BAD_TOPIC);
    assert_non_null(strstr(g_detail, "clinic_id"));
    /* Raw bytes that are not UTF-8 never reach the detail. */
    assert_reason(decode_bytes("clinics/\xff\xfe/handpieces/SN-0001/telemetry", buf, len),
                  NT_REASON_BAD_TOPIC);
    assert_non_null(strstr(g_detail, "not valid utf-8"));
    /* Control characters are escaped. */
    assert_reason(decode_bytes("clinics/a\nb/handpieces/SN-0001/telemetry", buf, len),
                  NT_REASON_BAD_TOPIC);
    assert_non_null(strstr(g_detail, "a\\x0ab"));
    /* The topic is checked before anything else. */
    assert_reason(decode_bytes("nope", (const uint8_t *)"\xff", 1), NT_REASON_BAD_TOPIC);
    nt_arena_reset(&g_arena);
    assert_int_equal(nt_decoder_decode(&g_arena, NULL, 5, buf, len, NULL, NULL, 0),
                     NT_REASON_BAD_TOPIC);
    free(buf);
    msg_free(m);
}

/* ---- size, protobuf, serial --------------------------------------------------------------------
 */

static void test_payload_size_limit(void **state)
{
    (void)state;
    static char full[1025], last[1100];
    memset(full, 'f', 1024);
    /* Fault events with 1024-byte messages, the last one shortened to hit 256 KiB exactly. */
    size_t target = NT_MAX_PAYLOAD_BYTES;
    int found = 0;
    for (size_t n = 200; n <= 300 && !found; n++) {
        tmsg_t *m = msg_new(n);
        for (size_t i = 0; i < n; i++) {
            set_kind(&m->ev[i], NEEDLETRACE__V1__EVENT__BODY_DEVICE_FAULT);
            m->ev[i].df.message = full;
        }
        m->ev[n - 1].df.message = last;
        memset(last, 'l', 1024);
        last[1024] = '\0';
        if (needletrace__v1__telemetry__get_packed_size(&m->t) < target) {
            msg_free(m);
            continue;
        }
        for (size_t l = 1024; l > 0 && !found; l--) {
            memset(last, 'l', l);
            last[l] = '\0';
            if (needletrace__v1__telemetry__get_packed_size(&m->t) == target) {
                found = 1;
                size_t len;
                uint8_t *buf = msg_pack(m, &len);
                assert_int_equal(len, target);
                assert_reason(decode_bytes(TOPIC, buf, len), NT_REASON_OK);
                assert_int_equal(g_out.msg->n_events, n);
                free(buf);
                /* One byte more: a message one byte longer, and the same with a junk byte. */
                last[l] = 'l';
                last[l + 1] = '\0';
                buf = msg_pack(m, &len);
                assert_int_equal(len, target + 1);
                assert_reason(decode_bytes(TOPIC, buf, len), NT_REASON_PAYLOAD_TOO_LARGE);
                assert_string_equal(g_detail, "payload of 262145 bytes exceeds 262144 bytes");
                free(buf);
            }
        }
        msg_free(m);
    }
    assert_true(found);
    /* The size is checked before unpacking. */
    uint8_t *junk = calloc(1, NT_MAX_PAYLOAD_BYTES + 1);
    assert_non_null(junk);
    memset(junk, 0xff, NT_MAX_PAYLOAD_BYTES + 1);
    assert_reason(decode_bytes(TOPIC, junk, NT_MAX_PAYLOAD_BYTES + 1), NT_REASON_PAYLOAD_TOO_LARGE);
    assert_reason(decode_bytes(TOPIC, junk, NT_MAX_PAYLOAD_BYTES), NT_REASON_NOT_PROTOBUF);
    free(junk);
}

static void test_not_protobuf(void **state)
{
    (void)state;
    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff};
    assert_reason(decode_bytes(TOPIC, garbage, sizeof(garbage)), NT_REASON_NOT_PROTOBUF);
    assert_string_equal(g_detail, "payload is not a needletrace.v1.Telemetry protobuf message");
    /* A string field sent as a varint. */
    static const uint8_t wrong_type[] = {0x08, 0x01};
    assert_reason(decode_bytes(TOPIC, wrong_type, sizeof(wrong_type)), NT_REASON_NOT_PROTOBUF);
    /* Field number 0 or above 2^29-1, which protobuf-c accepts from a non-minimal tag, at
     * the top level and inside an event. */
    {
        tmsg_t *one = msg_new(1);
        size_t olen;
        uint8_t *obuf = msg_pack(one, &olen);
        uint8_t big[512];
        static const uint8_t field0[] = {0x82, 0x00, 0x00};                 /* 0, LEN, 0 */
        static const uint8_t huge[] = {0x80, 0x80, 0x80, 0x80, 0x10, 0x01}; /* 2^29, VARINT */
        static const uint8_t max[] = {0xf8, 0xff, 0xff, 0xff, 0x0f, 0x01};  /* 2^29-1 */
        memcpy(big, obuf, olen);
        memcpy(big + olen, field0, sizeof(field0));
        assert_reason(decode_bytes(TOPIC, big, olen + sizeof(field0)), NT_REASON_NOT_PROTOBUF);
        assert_string_equal(g_detail, "payload has a field number outside 1-536870911");
        memcpy(big + olen, huge, sizeof(huge));
        assert_reason(decode_bytes(TOPIC, big, olen + sizeof(huge)), NT_REASON_NOT_PROTOBUF);
        memcpy(big + olen, max, sizeof(max));
        assert_reason(decode_bytes(TOPIC, big, olen + sizeof(max)), NT_REASON_OK);
        assert_int_equal(g_out.msg->base.n_unknown_fields, 1);

        /* Inside events[0]: serial, then the event with field 0 appended. */
        size_t elen = needletrace__v1__event__get_packed_size(one->evp[0]);
        assert_true(elen + 3 < 120);
        size_t o = 0;
        big[o++] = 0x0a;
        big[o++] = (uint8_t)strlen(SERIAL);
        memcpy(big + o, SERIAL, strlen(SERIAL));
        o += strlen(SERIAL);
        big[o++] = 0x2a;
        big[o++] = (uint8_t)(elen + sizeof(field0));
        needletrace__v1__event__pack(one->evp[0], big + o);
        o += elen;
        memcpy(big + o, field0, sizeof(field0));
        assert_reason(decode_bytes(TOPIC, big, o + sizeof(field0)), NT_REASON_NOT_PROTOBUF);
        big[o + 1] = 0x08; /* 0x82 0x08: field number 128, unknown but valid */
        assert_reason(decode_bytes(TOPIC, big, o + sizeof(field0)), NT_REASON_OK);
        free(obuf);
        msg_free(one);
    }

    /* Truncated: cut inside the last field, rejected; every prefix, never a crash. */
    tmsg_t *m = msg_new(8);
    size_t len;
    uint8_t *buf = msg_pack(m, &len);
    assert_reason(decode_bytes(TOPIC, buf, len - 1), NT_REASON_NOT_PROTOBUF);
    for (size_t cut = 0; cut < len; cut++) {
        (void)decode_bytes(TOPIC, buf, cut);
    }
    /* Bit flips: whatever the outcome, a valid detail and no crash. */
    for (size_t i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            buf[i] ^= (uint8_t)(1u << bit);
            (void)decode_bytes(TOPIC, buf, len);
            buf[i] ^= (uint8_t)(1u << bit);
        }
    }
    free(buf);
    msg_free(m);
}

static void test_serial_mismatch(void **state)
{
    (void)state;
    tmsg_t *m = msg_new(1);
    m->t.device_serial = "SN-0002";
    assert_reason(decode_msg(m), NT_REASON_SERIAL_MISMATCH);
    assert_string_equal(g_detail,
                        "payload device_serial \"SN-0002\" does not match topic device_serial "
                        "\"SN-0001\"");
    m->t.device_serial = "";
    assert_reason(decode_msg(m), NT_REASON_SERIAL_MISMATCH);
    m->t.device_serial = "sn-0001";
    assert_reason(decode_msg(m), NT_REASON_SERIAL_MISMATCH);
    m->t.device_serial = "SN-00011";
    assert_reason(decode_msg(m), NT_REASON_SERIAL_MISMATCH);
    m->t.device_serial = "SN-000"; /* a prefix of the topic serial */
    assert_reason(decode_msg(m), NT_REASON_SERIAL_MISMATCH);
    /* A NUL after the topic serial must not make the payload serial compare equal. */
    m->t.device_serial = "SN-0001#junk";
    assert_reason(decode_patched(m, "SN-0001#junk", 7, 0), NT_REASON_SERIAL_MISMATCH);
    assert_non_null(strstr(g_detail, "\\x00junk"));
    /* Invalid UTF-8 is described, not copied. */
    m->t.device_serial = "SN-\xff";
    assert_reason(decode_msg(m), NT_REASON_SERIAL_MISMATCH);
    assert_non_null(strstr(g_detail, "not valid utf-8"));
    /* The serial is compared before the events are looked at. */
    m->t.device_serial = "X";
    m->t.n_events = 0;
    assert_reason(decode_msg(m), NT_REASON_SERIAL_MISMATCH);
    /* An empty payload is an empty message: its serial is empty. */
    assert_reason(decode_bytes(TOPIC, NULL, 0), NT_REASON_SERIAL_MISMATCH);
    msg_free(m);
}

/* ---- event count ------------------------------------------------------------------------------
 */

static void test_event_count(void **state)
{
    (void)state;
    tmsg_t *m = msg_new(0);
    assert_reason(decode_msg(m), NT_REASON_NO_EVENTS);
    assert_string_equal(g_detail, "message has no events");
    msg_free(m);

    m = msg_new(1);
    assert_reason(decode_msg(m), NT_REASON_OK);
    msg_free(m);

    m = msg_new(1000);
    assert_reason(decode_msg(m), NT_REASON_OK);
    assert_int_equal(g_out.msg->n_events, 1000);
    assert_int_equal(g_out.msg->events[999]->seq, 1000);
    msg_free(m);

    m = msg_new(1001);
    assert_reason(decode_msg(m), NT_REASON_TOO_MANY_EVENTS);
    assert_string_equal(g_detail, "message has 1001 events, more than 1000");
    msg_free(m);
}

/* ---- strings ----------------------------------------------------------------------------------
 */

static void test_utf8_valid(void **state)
{
    (void)state;
    assert_true(nt_ident_utf8_valid("", 0));
    assert_true(nt_ident_utf8_valid(NULL, 0));
    assert_false(nt_ident_utf8_valid(NULL, 1));
    assert_true(nt_ident_utf8_valid("plain ascii text, longer than eight bytes", 41));
    assert_true(nt_ident_utf8_valid("\xc3\xa9", 2));          /* U+00E9 */
    assert_true(nt_ident_utf8_valid("\xc2\x80", 2));          /* U+0080 */
    assert_true(nt_ident_utf8_valid("\xdf\xbf", 2));          /* U+07FF */
    assert_true(nt_ident_utf8_valid("\xe0\xa0\x80", 3));      /* U+0800 */
    assert_true(nt_ident_utf8_valid("\xe2\x82\xac", 3));      /* U+20AC */
    assert_true(nt_ident_utf8_valid("\xed\x9f\xbf", 3));      /* U+D7FF */
    assert_true(nt_ident_utf8_valid("\xee\x80\x80", 3));      /* U+E000 */
    assert_true(nt_ident_utf8_valid("\xef\xbf\xbf", 3));      /* U+FFFF */
    assert_true(nt_ident_utf8_valid("\xf0\x90\x80\x80", 4));  /* U+10000 */
    assert_true(nt_ident_utf8_valid("\xf0\x9f\x98\x80", 4));  /* U+1F600 */
    assert_true(nt_ident_utf8_valid("\xf4\x8f\xbf\xbf", 4));  /* U+10FFFF */
    assert_true(nt_ident_utf8_valid("a\0b", 3));              /* NUL is UTF-8 */
    assert_false(nt_ident_utf8_valid("\xc0\x80", 2));         /* overlong NUL */
    assert_false(nt_ident_utf8_valid("\xc1\xbf", 2));         /* overlong */
    assert_false(nt_ident_utf8_valid("\xe0\x80\xaf", 3));     /* overlong '/' */
    assert_false(nt_ident_utf8_valid("\xe0\x9f\xbf", 3));     /* overlong U+07FF */
    assert_false(nt_ident_utf8_valid("\xf0\x8f\xbf\xbf", 4)); /* overlong U+FFFF */
    assert_false(nt_ident_utf8_valid("\xed\xa0\x80", 3));     /* surrogate U+D800 */
    assert_false(nt_ident_utf8_valid("\xed\xbf\xbf", 3));     /* surrogate U+DFFF */
    assert_false(nt_ident_utf8_valid("\xf4\x90\x80\x80", 4)); /* U+110000 */
    assert_false(nt_ident_utf8_valid("\xf5\x80\x80\x80", 4)); /* beyond */
    assert_false(nt_ident_utf8_valid("\xff", 1));
    assert_false(nt_ident_utf8_valid("\xfe", 1));
    assert_false(nt_ident_utf8_valid("\x80", 1));         /* lone continuation */
    assert_false(nt_ident_utf8_valid("\xe2\x82", 2));     /* truncated */
    assert_false(nt_ident_utf8_valid("\xf0\x9f\x98", 3)); /* truncated */
    assert_false(nt_ident_utf8_valid("\xc3", 1));         /* truncated */
    assert_false(nt_ident_utf8_valid("\xe2\x28\xa1", 3)); /* bad continuation */
    assert_false(nt_ident_utf8_valid("\xc3\xa9\xc3", 3)); /* truncated after a good one */
    /* Errors on either side of the 8-byte fast path. */
    assert_false(nt_ident_utf8_valid("abcdefgh\xff", 9));
    assert_false(nt_ident_utf8_valid("abcdefg\xc3", 8));
    assert_true(nt_ident_utf8_valid("abcdefg\xc3\xa9", 9));
    assert_true(nt_ident_utf8_valid("abcdefgh\xc3\xa9ijklmnopq", 18));
    assert_false(nt_ident_utf8_valid("abcdefgh\xc3\xa9ijklmnop\x80q", 19));
    /* Only len bytes are read: a sequence cut by len is truncated even if the bytes after
     * len would complete it. */
    assert_true(nt_ident_utf8_valid("ok\xff", 2));
    assert_false(nt_ident_utf8_valid("\xe2\x82\xac", 2));
    assert_false(nt_ident_utf8_valid("\xf0\x9f\x98\x80", 3));
    assert_false(nt_ident_utf8_valid("\xc3\xa9", 1));
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    static char *const bad[] = {
        "op\xc0\x80",         /* overlong */
        "op\xe0\x80\xaf",     /* overlong */
        "op\xed\xa0\x80",     /* surrogate */
        "op\xe2\x82",         /* truncated at the end */
        "op\xe2\x82x",        /* truncated before ASCII */
        "op\xff",             /* never valid */
        "op\xf4\x90\x80\x80", /* above U+10FFFF */
    };
    tmsg_t *m = msg_new(1);
    for (size_t i = 0; i < NT_ARRAY_SIZE(bad); i++) {
        m->ev[0].ss.operator_id = bad[i];
        assert_reason(decode_msg(m), NT_REASON_INVALID_UTF8);
        assert_non_null(strstr(g_detail, "events[0].session_started.operator_id is not valid"));
        assert_non_null(strstr(g_detail, "at offset 2"));
    }
    m->ev[0].ss.operator_id = "op\xc3\xa9";
    assert_reason(decode_msg(m), NT_REASON_OK);
    m->ev[0].ss.operator_id = "op";

    /* Each string field of the message is checked. */
    m->t.device_model = "\xff";
    assert_reason(decode_msg(m), NT_REASON_INVALID_UTF8);
    assert_string_equal(g_detail, "device_model is not valid utf-8 (byte 0xff at offset 0)");
    m->t.device_model = "NP-9";
    m->t.firmware_version = "1.\xff";
    assert_reason(decode_msg(m), NT_REASON_INVALID_UTF8);
    m->t.firmware_version = "1";
    m->ev[0].ss.patient_ref = "\xed\xbf\xbf";
    assert_reason(decode_msg(m), NT_REASON_INVALID_UTF8);
    m->ev[0].ss.patient_ref = "p";
    /* An invalid identifier is an encoding problem first. */
    m->ev[0].ss.session_id = "S\xff";
    assert_reason(decode_msg(m), NT_REASON_INVALID_UTF8);
    msg_free(m);

    m = msg_new(8);
    m->ev[5].df.message = "bad \xc3\x28";
    assert_reason(decode_msg(m), NT_REASON_INVALID_UTF8);
    assert_non_null(strstr(g_detail, "events[5].device_fault.message"));
    m->ev[5].df.message = "ok";
    m->ev[1].cart.lot = "L\xfe";
    assert_reason(decode_msg(m), NT_REASON_INVALID_UTF8);
    assert_non_null(strstr(g_detail, "events[1].cartridge_mounted.cartridge.lot"));
    msg_free(m);
}

static void test_nul_in_string(void **state)
{
    (void)state;
    tmsg_t *m = msg_new(8);
    m->ev[0].ss.operator_id = "op#id";
    assert_reason(decode_patched(m, "op#id", 2, '#'), NT_REASON_OK);
    assert_reason(decode_patched(m, "op#id", 2, 0), NT_REASON_NUL_IN_STRING);
    assert_string_equal(g_detail,
                        "events[0].session_started.operator_id contains a nul byte at offset 2");
    m->ev[0].ss.operator_id = "op";
    /* A trailing NUL counts too. */
    m->ev[5].df.message = "stall#";
    assert_reason(decode_patched(m, "stall#", 5, 0), NT_REASON_NUL_IN_STRING);
    assert_non_null(strstr(g_detail, "events[5].device_fault.message"));
    m->ev[5].df.message = "stall";
    /* A leading NUL in an identifier is a NUL problem, not an empty id. */
    m->ev[2].ns.session_id = "#S2";
    assert_reason(decode_patched(m, "#S2", 0, 0), NT_REASON_NUL_IN_STRING);
    m->ev[2].ns.session_id = "S1";
    m->ev[1].cart.serial = "CART#9";
    assert_reason(decode_patched(m, "CART#9", 4, 0), NT_REASON_NUL_IN_STRING);
    m->ev[1].cart.serial = "CART9";
    m->t.device_model = "NP#";
    assert_reason(decode_patched(m, "NP#", 2, 0), NT_REASON_NUL_IN_STRING);
    msg_free(m);
}

static void test_string_too_long(void **state)
{
    (void)state;
    static char s[1100];
    tmsg_t *m = msg_new(8);

    memset(s, 'm', sizeof(s));
    s[NT_MAX_TEXT_LEN] = '\0';
    m->t.device_model = s;
    assert_reason(decode_msg(m), NT_REASON_OK);
    s[NT_MAX_TEXT_LEN] = 'm';
    s[NT_MAX_TEXT_LEN + 1] = '\0';
    assert_reason(decode_msg(m), NT_REASON_STRING_TOO_LONG);
    assert_string_equal(g_detail, "device_model is 257 bytes, more than 256");
    m->t.device_model = "NP-9";

    m->t.firmware_version = s;
    assert_reason(decode_msg(m), NT_REASON_STRING_TOO_LONG);
    m->t.firmware_version = "1";
    m->ev[0].ss.operator_id = s;
    assert_reason(decode_msg(m), NT_REASON_STRING_TOO_LONG);
    m->ev[0].ss.operator_id = "o";
    m->ev[0].ss.patient_ref = s;
    assert_reason(decode_msg(m), NT_REASON_STRING_TOO_LONG);
    assert_non_null(strstr(g_detail, "events[0].session_started.patient_ref is 257 bytes"));
    m->ev[0].ss.patient_ref = "p";

    /* Length is counted in bytes: 128 two-byte characters are 256 bytes. */
    static char wide[300];
    for (int i = 0; i < 128; i++) {
        memcpy(wide + 2 * i, "\xc3\xa9", 2);
    }
    wide[256] = '\0';
    m->ev[0].ss.patient_ref = wide;
    assert_reason(decode_msg(m), NT_REASON_OK);
    m->ev[0].ss.patient_ref = "p";

    memset(s, 'f', sizeof(s));
    s[NT_MAX_FAULT_MSG_LEN] = '\0';
    m->ev[5].df.message = s;
    assert_reason(decode_msg(m), NT_REASON_OK);
    s[NT_MAX_FAULT_MSG_LEN] = 'f';
    s[NT_MAX_FAULT_MSG_LEN + 1] = '\0';
    assert_reason(decode_msg(m), NT_REASON_STRING_TOO_LONG);
    assert_string_equal(g_detail, "events[5].device_fault.message is 1025 bytes, more than 1024");
    msg_free(m);
}

/* ---- identifiers ------------------------------------------------------------------------------
 */

static void test_session_id(void **state)
{
    (void)state;
    char id64[65], id65[66];
    memset(id64, 's', 64);
    id64[64] = '\0';
    memset(id65, 's', 65);
    id65[65] = '\0';
    tmsg_t *m = msg_new(8);
    /* Every kind that carries a session id requires it. */
    static const size_t with_id[] = {0, 1, 2, 3, 6, 7};
    for (size_t k = 0; k < NT_ARRAY_SIZE(with_id); k++) {
        tev_t *e = &m->ev[with_id[k]];
        char **field[] = {
            &e->ss.session_id, &e->cm.session_id, &e->ns.session_id, &e->na.session_id, NULL, NULL,
            &e->cu.session_id, &e->se.session_id};
        char **f = field[with_id[k]];
        *f = "";
        assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
        assert_non_null(strstr(g_detail, "session_id is empty"));
        *f = id64;
        assert_reason(decode_msg(m), NT_REASON_OK);
        *f = id65;
        assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
        *f = "2024-05-01T10:00:00Z.a_b";
        assert_reason(decode_msg(m), NT_REASON_OK);
        *f = "S 1";
        assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
        *f = "S1";
    }
    m->ev[2].ns.session_id = "a\"b\\c\x01";
    assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
    assert_string_equal(g_detail, "events[2].needle_setting.session_id \"a\\\"b\\\\c\\x01\" is not "
                                  "1-64 characters of [A-Za-z0-9._:-]");
    m->ev[2].ns.session_id = "del\x7f";
    assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
    assert_non_null(strstr(g_detail, "\"del\\x7f\""));
    m->ev[2].ns.session_id = "caf\xc3\xa9";
    assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
    assert_non_null(strstr(g_detail, "\"caf\xc3\xa9\""));
    msg_free(m);
}

static void test_cartridge_identifiers(void **state)
{
    (void)state;
    tmsg_t *m = msg_new(8);
    Needletrace__V1__Cartridge *c = &m->ev[1].cart; /* shared by mounted (1) */
    assert_reason(decode_msg(m), NT_REASON_OK);

    /* GTIN: 14 digits, GS1 mod-10 check digit. */
    static char *const good_gtin[] = {"04006381333931", "00012345600012", "10614141000415",
                                      "00000000000000"};
    for (size_t i = 0; i < NT_ARRAY_SIZE(good_gtin); i++) {
        c->gtin = good_gtin[i];
        assert_reason(decode_msg(m), NT_REASON_OK);
    }
    static char *const bad_gtin[] = {"04006381333932",  "04006381333930", "4006381333931",
                                     "004006381333931", "0400638133393A", "",
                                     "0400638133393 ",  "10614141000414"};
    for (size_t i = 0; i < NT_ARRAY_SIZE(bad_gtin); i++) {
        c->gtin = bad_gtin[i];
        assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
        assert_non_null(strstr(g_detail, "events[1].cartridge_mounted.cartridge.gtin"));
    }
    c->gtin = "04006381333932";
    assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
    assert_string_equal(g_detail, "events[1].cartridge_mounted.cartridge.gtin \"04006381333932\" "
                                  "has check digit 2, expected 1");
    c->gtin = GTIN;

    /* Lot and serial: 1-20 of 0x21-0x7e. */
    char **fields[2] = {&c->lot, &c->serial};
    for (int f = 0; f < 2; f++) {
        *fields[f] = "12345678901234567890";
        assert_reason(decode_msg(m), NT_REASON_OK);
        *fields[f] = "!~/#%&()*+,-./:;<=>?";
        assert_reason(decode_msg(m), NT_REASON_OK);
        *fields[f] = "123456789012345678901";
        assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
        *fields[f] = "";
        assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
        *fields[f] = "A B";
        assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
        *fields[f] = "A\x7f";
        assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
        *fields[f] = "\xc3\xa9";
        assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
        *fields[f] = "X1";
    }

    /* The cartridge is required on mount and unmount. */
    m->ev[1].cm.cartridge = NULL;
    assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
    assert_string_equal(g_detail, "events[1].cartridge_mounted.cartridge is missing");
    m->ev[1].cm.cartridge = c;
    m->ev[6].cu.cartridge = NULL;
    assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
    assert_string_equal(g_detail, "events[6].cartridge_unmounted.cartridge is missing");
    m->ev[6].cu.cartridge = &m->ev[6].cart;
    m->ev[6].cart.gtin = "1";
    assert_reason(decode_msg(m), NT_REASON_BAD_IDENTIFIER);
    msg_free(m);
}

/* ---- sequence, body ----------------------------------------------------------------------------
 */

static void test_seq_order(void **state)
{
    (void)state;
    tmsg_t *m = msg_new(3);
    m->ev[0].ev.seq = 0;
    assert_reason(decode_msg(m), NT_REASON_SEQ_ORDER);
    assert_string_equal(g_detail, "events[0].seq is 0, must be at least 1");
    m->ev[0].ev.seq = 1;
    m->ev[1].ev.seq = 1;
    assert_reason(decode_msg(m), NT_REASON_SEQ_ORDER);
    assert_string_equal(g_detail, "events[1].seq 1 does not follow 1");
    m->ev[1].ev.seq = 5;
    m->ev[2].ev.seq = 4;
    assert_reason(decode_msg(m), NT_REASON_SEQ_ORDER);
    m->ev[2].ev.seq = 6; /* gaps are allowed here: the rules raise SEQUENCE_GAP */
    assert_reason(decode_msg(m), NT_REASON_OK);
    m->ev[2].ev.seq = 0;
    assert_reason(decode_msg(m), NT_REASON_SEQ_ORDER);
    msg_free(m);
}

static void test_missing_body(void **state)
{
    (void)state;
    tmsg_t *m = msg_new(3);
    set_kind(&m->ev[1], NEEDLETRACE__V1__EVENT__BODY__NOT_SET);
    assert_reason(decode_msg(m), NT_REASON_MISSING_BODY);
    assert_string_equal(g_detail, "events[1] has no body");
    msg_free(m);
}

/* ---- ranges -----------------------------------------------------------------------------------
 */

static void test_out_of_range_numbers(void **state)
{
    (void)state;
    tmsg_t *m = msg_new(8);
    tev_t *e = m->ev;

    /* boot_id: at most 2^53 - 1 (exact in JSON); seq: at most 2^40 (seq * 2 in SQL). */
    m->t.boot_id = NT_MAX_BOOT_ID;
    assert_reason(decode_msg(m), NT_REASON_OK);
    m->t.boot_id = NT_MAX_BOOT_ID + 1;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(g_detail, "boot_id 9007199254740992 exceeds 9007199254740991");
    m->t.boot_id = (uint64_t)INT64_MAX + 1;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    m->t.boot_id = UINT64_MAX;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    m->t.boot_id = 0;
    assert_reason(decode_msg(m), NT_REASON_OK);

    e[7].ev.seq = NT_MAX_SEQ;
    assert_reason(decode_msg(m), NT_REASON_OK);
    e[7].ev.seq = NT_MAX_SEQ + 1;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(g_detail, "events[7].seq 1099511627777 exceeds 1099511627776");
    e[7].ev.seq = (uint64_t)1 << 62; /* issue 7: seq * 2 overflowed bigint in settle_boots */
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(g_detail, "events[7].seq 4611686018427387904 exceeds 1099511627776");
    e[7].ev.seq = UINT64_MAX;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    /* The first event may start anywhere up to the bound. */
    for (size_t i = 0; i < 8; i++) {
        e[i].ev.seq = NT_MAX_SEQ - 7 + i;
    }
    assert_reason(decode_msg(m), NT_REASON_OK);
    e[0].ev.seq = 0;
    assert_reason(decode_msg(m), NT_REASON_SEQ_ORDER);
    for (size_t i = 0; i < 8; i++) {
        e[i].ev.seq = i + 1;
    }

    e[3].ev.device_time_ms = NT_MIN_DEVICE_TIME_MS;
    assert_reason(decode_msg(m), NT_REASON_OK);
    e[3].ev.device_time_ms = NT_MIN_DEVICE_TIME_MS - 1;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(g_detail, "events[3].device_time_ms 946684799999 is outside "
                                  "[946684800000, 4102444800000)");
    e[3].ev.device_time_ms = NT_MAX_DEVICE_TIME_MS - 1;
    assert_reason(decode_msg(m), NT_REASON_OK);
    e[3].ev.device_time_ms = NT_MAX_DEVICE_TIME_MS;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    e[3].ev.device_time_ms = -1;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    e[3].ev.device_time_ms = T0;

    /* Depth and stroke rate on both setting (2) and activity (3). */
    e[2].ns.depth_um = NT_MAX_DEPTH_UM;
    e[3].na.depth_um = NT_MAX_DEPTH_UM;
    assert_reason(decode_msg(m), NT_REASON_OK);
    e[2].ns.depth_um = 9000;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(g_detail, "events[2].needle_setting.depth_um 9000 exceeds 5000");
    e[2].ns.depth_um = NT_MAX_DEPTH_UM + 1;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    e[2].ns.depth_um = 0;
    e[3].na.depth_um = NT_MAX_DEPTH_UM + 1;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(g_detail, "events[3].needle_activity.depth_um 5001 exceeds 5000");
    e[3].na.depth_um = 250;
    e[2].ns.stroke_rate_hz = NT_MAX_STROKE_RATE_HZ;
    e[3].na.stroke_rate_hz = NT_MAX_STROKE_RATE_HZ;
    assert_reason(decode_msg(m), NT_REASON_OK);
    e[2].ns.stroke_rate_hz = NT_MAX_STROKE_RATE_HZ + 1;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(g_detail, "events[2].needle_setting.stroke_rate_hz 1001 exceeds 1000");
    e[2].ns.stroke_rate_hz = 0;
    e[3].na.stroke_rate_hz = UINT32_MAX;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    e[3].na.stroke_rate_hz = 120;
    e[3].na.duration_ms = 600000;
    assert_reason(decode_msg(m), NT_REASON_OK);
    e[3].na.duration_ms = NT_MAX_DURATION_MS + 1;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(g_detail, "events[3].needle_activity.duration_ms 600001 exceeds 600000");
    e[3].na.duration_ms = 0;

    /* Device status (4). */
    e[4].ds.battery_pct = 100;
    assert_reason(decode_msg(m), NT_REASON_OK);
    e[4].ds.battery_pct = 101;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(g_detail, "events[4].device_status.battery_pct 101 exceeds 100");
    e[4].ds.battery_pct = 0;
    e[4].ds.temperature_dc = -400;
    assert_reason(decode_msg(m), NT_REASON_OK);
    e[4].ds.temperature_dc = -401;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(g_detail,
                        "events[4].device_status.temperature_dc -401 is outside [-400, 1500]");
    e[4].ds.temperature_dc = 1500;
    assert_reason(decode_msg(m), NT_REASON_OK);
    e[4].ds.temperature_dc = NT_MAX_TEMP_DC + 1;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(g_detail,
                        "events[4].device_status.temperature_dc 1501 is outside [-400, 1500]");
    e[4].ds.temperature_dc = INT32_MIN;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    e[4].ds.temperature_dc = 0;
    e[4].ds.motor_seconds_total = NT_MAX_MOTOR_SECONDS_TOTAL;
    assert_reason(decode_msg(m), NT_REASON_OK);
    e[4].ds.motor_seconds_total = (uint64_t)NT_MAX_MOTOR_SECONDS_TOTAL + 1;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(
        g_detail, "events[4].device_status.motor_seconds_total 4294967296 exceeds 4294967295");
    e[4].ds.motor_seconds_total = (uint64_t)INT64_MAX + 1;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    e[4].ds.motor_seconds_total = 0;

    /* Counters take any uint32. */
    e[6].cu.motor_ms = UINT32_MAX;
    e[7].se.motor_seconds = UINT32_MAX;
    e[5].df.code = UINT32_MAX;
    assert_reason(decode_msg(m), NT_REASON_OK);

    /* Needle count on mount (1) and unmount (6). */
    e[1].cart.needle_count = 1;
    e[6].cart.needle_count = 256;
    assert_reason(decode_msg(m), NT_REASON_OK);
    e[1].cart.needle_count = 0;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(g_detail,
                        "events[1].cartridge_mounted.cartridge.needle_count 0 is outside 1-256");
    e[1].cart.needle_count = 12;
    e[6].cart.needle_count = NT_MAX_NEEDLES + 1;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(
        g_detail, "events[6].cartridge_unmounted.cartridge.needle_count 257 is outside 1-256");
    e[6].cart.needle_count = 12;
    msg_free(m);
}

static void test_expiry_dates(void **state)
{
    (void)state;
    static const uint32_t good[] = {20240229, 20250200, 20000229, 20000101, 20991231,
                                    20250131, 20250430, 20251231, 20250228, 20250100};
    static const uint32_t bad[] = {20250229, 20250431, 20251301, 20250001, 19991231,  21000101,
                                   20250132, 20990229, 1,        99999999, UINT32_MAX};
    tmsg_t *m = msg_new(8);
    for (size_t i = 0; i < NT_ARRAY_SIZE(good); i++) {
        m->ev[1].cart.expiry_yyyymmdd = good[i];
        m->ev[6].cart.expiry_yyyymmdd = good[i];
        assert_reason(decode_msg(m), NT_REASON_OK);
    }
    for (size_t i = 0; i < NT_ARRAY_SIZE(bad); i++) {
        m->ev[1].cart.expiry_yyyymmdd = bad[i];
        assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
        m->ev[1].cart.expiry_yyyymmdd = 20300101;
        m->ev[6].cart.expiry_yyyymmdd = bad[i];
        assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
        m->ev[6].cart.expiry_yyyymmdd = 20300101;
    }
    m->ev[1].cart.expiry_yyyymmdd = 20250229;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(g_detail, "events[1].cartridge_mounted.cartridge.expiry_yyyymmdd "
                                  "20250229 is not a calendar date in 2000-2099");
    /* 0 is "absent": required on mount, allowed on unmount. */
    m->ev[1].cart.expiry_yyyymmdd = 0;
    assert_reason(decode_msg(m), NT_REASON_OUT_OF_RANGE);
    assert_string_equal(g_detail, "events[1].cartridge_mounted.cartridge.expiry_yyyymmdd is "
                                  "missing");
    m->ev[1].cart.expiry_yyyymmdd = 20300101;
    m->ev[6].cart.expiry_yyyymmdd = 0;
    assert_reason(decode_msg(m), NT_REASON_OK);
    msg_free(m);
}

static void test_unknown_area(void **state)
{
    (void)state;
    tmsg_t *m = msg_new(8);
    for (int a = 0; a <= 10; a++) {
        m->ev[2].ns.area = (Needletrace__V1__TreatmentArea)a;
        m->ev[3].na.area = (Needletrace__V1__TreatmentArea)a;
        assert_reason(decode_msg(m), NT_REASON_OK);
    }
    m->ev[2].ns.area = (Needletrace__V1__TreatmentArea)11;
    assert_reason(decode_msg(m), NT_REASON_UNKNOWN_AREA);
    assert_string_equal(g_detail,
                        "events[2].needle_setting.area 11 is not a known treatment area (0-10)");
    m->ev[2].ns.area = (Needletrace__V1__TreatmentArea)-1;
    assert_reason(decode_msg(m), NT_REASON_UNKNOWN_AREA);
    m->ev[2].ns.area = NEEDLETRACE__V1__TREATMENT_AREA__BODY;
    m->ev[3].na.area = (Needletrace__V1__TreatmentArea)1000;
    assert_reason(decode_msg(m), NT_REASON_UNKNOWN_AREA);
    assert_non_null(strstr(g_detail, "events[3].needle_activity.area 1000"));
    msg_free(m);
}

/* ---- the rest of the contract -----------------------------------------------------------------
 */

static void test_accepted_message_contents(void **state)
{
    (void)state;
    tmsg_t *m = msg_new(8);
    size_t len;
    uint8_t *buf = msg_pack(m, &len);
    /* An unknown field (a newer firmware's addition) is accepted. */
    uint8_t *ext = malloc(len + 4);
    assert_non_null(ext);
    memcpy(ext, buf, len);
    memcpy(ext + len, "\xa0\x06\x2a", 3); /* field 100, varint 42 */
    assert_reason(decode_bytes(TOPIC, ext, len + 3), NT_REASON_OK);
    const Needletrace__V1__Telemetry *t = g_out.msg;
    assert_string_equal(g_out.topic.clinic_id, "clinic-1");
    assert_string_equal(g_out.topic.device_serial, SERIAL);
    assert_string_equal(t->device_model, "NP-9");
    assert_int_equal(t->boot_id, 7);
    assert_string_equal(t->events[1]->cartridge_mounted->cartridge->gtin, GTIN);
    assert_int_equal(t->events[2]->needle_setting->area, NEEDLETRACE__V1__TREATMENT_AREA__CHEEKS);
    assert_int_equal(t->events[7]->device_time_ms, T0 + 7);
    /* The decoded message lives in the arena. */
    assert_true(g_arena.used_bytes > 0);
    free(ext);
    free(buf);

    /* out and detail are optional. */
    buf = msg_pack(m, &len);
    nt_arena_reset(&g_arena);
    assert_int_equal(nt_decoder_decode(&g_arena, TOPIC, strlen(TOPIC), buf, len, NULL, NULL, 0),
                     NT_REASON_OK);
    m->t.device_serial = "other";
    free(buf);
    buf = msg_pack(m, &len);
    char one[1] = {'x'};
    assert_int_equal(nt_decoder_decode(&g_arena, TOPIC, strlen(TOPIC), buf, len, NULL, one, 1),
                     NT_REASON_SERIAL_MISMATCH);
    assert_int_equal(one[0], '\0');
    assert_int_equal(nt_decoder_decode(NULL, TOPIC, strlen(TOPIC), buf, len, NULL, NULL, 0),
                     NT_REASON_NOT_PROTOBUF);
    free(buf);
    msg_free(m);
}

static void test_detail_truncation(void **state)
{
    (void)state;
    /* A session id of two-byte characters, quoted, cut to fit a small buffer. */
    static char id[200];
    for (int i = 0; i < 60; i++) {
        memcpy(id + 2 * i, "\xc3\xa9", 2);
    }
    id[120] = '\0';
    tmsg_t *m = msg_new(1);
    m->ev[0].ss.session_id = id;
    size_t len;
    uint8_t *buf = msg_pack(m, &len);
    for (size_t cap = 1; cap < 200; cap++) {
        char detail[200];
        nt_arena_reset(&g_arena);
        assert_int_equal(
            nt_decoder_decode(&g_arena, TOPIC, strlen(TOPIC), buf, len, NULL, detail, cap),
            NT_REASON_BAD_IDENTIFIER);
        assert_true(strlen(detail) < cap);
        assert_true(nt_ident_utf8_valid(detail, strlen(detail)));
    }
    /* In full, the quote is cut at a character boundary with "...". */
    assert_reason(decode_bytes(TOPIC, buf, len), NT_REASON_BAD_IDENTIFIER);
    assert_non_null(strstr(g_detail, "\xc3\xa9...\""));
    free(buf);
    msg_free(m);
}

/* ---- cost of hostile messages -----------------------------------------------------------------
 */

enum {
    HOSTILE_EMPTY_EVENTS,   /* 256 KiB of empty events (2 bytes each) */
    HOSTILE_UNKNOWN_TOP,    /* one event, then 256 KiB of 2-byte unknown fields */
    HOSTILE_UNKNOWN_EVENTS, /* 1000 events, each padded with 2-byte unknown fields */
    HOSTILE_NESTED,         /* one event whose cartridge_mounted body repeats (merged) */
    HOSTILE_TINY_STRINGS,   /* device_model repeated as 1-byte strings */
    HOSTILE_NESTED_UNKNOWN, /* unknown fields nested in unknown fields, 256 KiB deep */
    HOSTILE__COUNT
};

static const char *const hostile_names[HOSTILE__COUNT] = {
    "empty events",           "unknown fields", "unknown fields in 1000 events",
    "repeated nested bodies", "tiny strings",   "nested unknown fields"};

/* Writes n as a varint at p; returns its length. */
static size_t put_varint(uint8_t *p, uint64_t n)
{
    size_t i = 0;
    while (n >= 0x80) {
        p[i++] = (uint8_t)(n | 0x80);
        n >>= 7;
    }
    p[i++] = (uint8_t)n;
    return i;
}

/* Fills buf (NT_MAX_PAYLOAD_BYTES) with a hostile message of the given kind; returns its length. */
static size_t hostile_payload(int kind, uint8_t *buf)
{
    const size_t cap = NT_MAX_PAYLOAD_BYTES;
    size_t o = 0;
    buf[o++] = 0x0a; /* device_serial */
    buf[o++] = (uint8_t)strlen(SERIAL);
    memcpy(buf + o, SERIAL, strlen(SERIAL));
    o += strlen(SERIAL);
    tmsg_t *one = msg_new(1);
    size_t elen = needletrace__v1__event__get_packed_size(one->evp[0]);
    if (kind == HOSTILE_UNKNOWN_TOP || kind == HOSTILE_TINY_STRINGS) {
        buf[o++] = 0x2a;
        o += put_varint(buf + o, elen);
        o += needletrace__v1__event__pack(one->evp[0], buf + o);
    }
    switch (kind) {
    case HOSTILE_EMPTY_EVENTS:
        while (o + 2 <= cap) {
            buf[o++] = 0x2a;
            buf[o++] = 0x00;
        }
        break;
    case HOSTILE_UNKNOWN_TOP:
        while (o + 2 <= cap) {
            buf[o++] = 0x30; /* field 6, varint */
            buf[o++] = 0x00;
        }
        break;
    case HOSTILE_UNKNOWN_EVENTS: {
        size_t pad = (cap - o) / 1000 - elen - 4;
        pad -= pad % 2;
        for (size_t i = 0; i < 1000; i++) {
            one->evp[0]->seq = i + 1;
            elen = needletrace__v1__event__get_packed_size(one->evp[0]);
            buf[o++] = 0x2a;
            o += put_varint(buf + o, elen + pad);
            o += needletrace__v1__event__pack(one->evp[0], buf + o);
            for (size_t k = 0; k < pad; k += 2) {
                buf[o++] = 0x30;
                buf[o++] = 0x00;
            }
        }
        break;
    }
    case HOSTILE_NESTED: {
        /* events[0] = {seq 1, time, cartridge_mounted {cartridge {}} x many} */
        uint8_t head[32];
        size_t h = 0;
        head[h++] = 0x08;
        head[h++] = 0x01;
        head[h++] = 0x10;
        h += put_varint(head + h, (uint64_t)T0);
        size_t reps = (cap - o - 8 - h) / 4;
        buf[o++] = 0x2a;
        o += put_varint(buf + o, h + reps * 4);
        memcpy(buf + o, head, h);
        o += h;
        for (size_t k = 0; k < reps; k++) {
            buf[o++] = 0x62; /* field 12, cartridge_mounted */
            buf[o++] = 0x02;
            buf[o++] = 0x12; /* field 2, cartridge */
            buf[o++] = 0x00;
        }
        break;
    }
    case HOSTILE_TINY_STRINGS:
        while (o + 3 <= cap) {
            buf[o++] = 0x12; /* device_model, 1 byte */
            buf[o++] = 0x01;
            buf[o++] = 'x';
        }
        break;
    case HOSTILE_NESTED_UNKNOWN: {
        /* field 6 (LEN) holding field 6 (LEN) holding ... : each level 4 bytes of header */
        size_t levels = (cap - o) / 4 - 1;
        size_t inner = 0;
        size_t start = o;
        (void)inner;
        for (size_t k = 0; k < levels; k++) {
            size_t body = (levels - k - 1) * 4;
            buf[o++] = 0x32;
            size_t n = put_varint(buf + o, body);
            assert_true(n <= 3);
            for (size_t z = n; z < 3; z++) {
                buf[o + z - 1] |= 0x80; /* pad the varint to 3 bytes */
                buf[o + z] = 0x00;
            }
            o += 3;
        }
        assert_true(o - start == levels * 4);
        break;
    }
    default:
        fail();
    }
    assert_true(o <= cap);
    msg_free(one);
    return o;
}

/* The pre-scan gives a message of more than 1000 events, never unpacked, the reason the full
 * decoder would: what comes first in the order of checks wins. */
static void test_prescan_reasons(void **state)
{
    (void)state;
    tmsg_t *m = msg_new(1001);
    size_t len;
    uint8_t *buf = msg_pack(m, &len);
    uint8_t *big = malloc(len + 16);
    assert_non_null(big);

    /* Broken top-level framing anywhere: not_protobuf. */
    memcpy(big, buf, len);
    assert_reason(decode_bytes(TOPIC, big, len - 1), NT_REASON_NOT_PROTOBUF);
    memcpy(big + len, "\x2a\x05\x08", 3); /* an event longer than what is left */
    assert_reason(decode_bytes(TOPIC, big, len + 3), NT_REASON_NOT_PROTOBUF);
    memcpy(big + len, "\x28\x01", 2); /* events (5) sent as a varint */
    assert_reason(decode_bytes(TOPIC, big, len + 2), NT_REASON_NOT_PROTOBUF);
    memcpy(big + len, "\x0b", 1); /* wire type 3 (group) */
    assert_reason(decode_bytes(TOPIC, big, len + 1), NT_REASON_NOT_PROTOBUF);
    memcpy(big + len, "\x82\x00\x00", 3); /* field number 0 */
    assert_reason(decode_bytes(TOPIC, big, len + 3), NT_REASON_NOT_PROTOBUF);
    assert_string_equal(g_detail, "payload has a field number outside 1-536870911");
    /* A malformed event among the first 1000: not_protobuf. */
    memcpy(big, buf, len);
    uint8_t *first = memmem(big, len, "\x2a", 1);
    assert_non_null(first);
    first[2] = 0x0b; /* events[0]'s first tag becomes a group */
    assert_reason(decode_bytes(TOPIC, big, len), NT_REASON_NOT_PROTOBUF);
    /* A wrong serial: serial_mismatch, as after an unpack; the last serial counts. */
    m->t.device_serial = "SN-0002";
    free(buf);
    buf = msg_pack(m, &len);
    assert_reason(decode_bytes(TOPIC, buf, len), NT_REASON_SERIAL_MISMATCH);
    assert_string_equal(g_detail, "payload device_serial \"SN-0002\" does not match topic "
                                  "device_serial \"SN-0001\"");
    memcpy(big, buf, len);
    memcpy(big + len, "\x0a\x07" SERIAL, 9);
    assert_reason(decode_bytes(TOPIC, big, len + 9), NT_REASON_TOO_MANY_EVENTS);
    m->t.device_serial = "";
    free(buf);
    buf = msg_pack(m, &len);
    assert_reason(decode_bytes(TOPIC, buf, len), NT_REASON_SERIAL_MISMATCH);
    /* Otherwise too_many_events, with or without unknown fields, whatever the events hold. */
    m->t.device_serial = SERIAL;
    m->ev[5].ev.seq = 0;
    m->ev[7].se.session_id = "";
    free(buf);
    buf = msg_pack(m, &len);
    memcpy(big, buf, len);
    memcpy(big + len, "\xa0\x06\x2a", 3);
    assert_reason(decode_bytes(TOPIC, big, len + 3), NT_REASON_TOO_MANY_EVENTS);
    assert_string_equal(g_detail, "message has 1001 events, more than 1000");
    /* A non-minimal tag for events still counts as an event (as protobuf-c reads it). */
    m->t.n_events = 1000;
    free(buf);
    buf = msg_pack(m, &len);
    memcpy(big, buf, len);
    memcpy(big + len, "\xaa\x00\x00", 3); /* field 5, LEN, in a 2-byte tag; empty event */
    assert_reason(decode_bytes(TOPIC, big, len + 3), NT_REASON_TOO_MANY_EVENTS);
    free(big);
    free(buf);
    msg_free(m);
}

/* The pre-scan's arena figure bounds what the unpack really takes; the largest real messages
 * decode well within NT_MAX_DECODE_BYTES. */
static void test_prescan_arena_bound(void **state)
{
    (void)state;
    static char text[NT_MAX_TEXT_LEN + 1], fault[NT_MAX_FAULT_MSG_LEN + 1];
    static char session[NT_MAX_SESSION_ID_LEN + 1];
    memset(text, 'a', NT_MAX_TEXT_LEN);
    memset(fault, 'f', NT_MAX_FAULT_MSG_LEN);
    memset(session, 's', NT_MAX_SESSION_ID_LEN);
    size_t sizes[] = {1, 8, 100, 1000};
    for (size_t k = 0; k < NT_ARRAY_SIZE(sizes); k++) {
        for (int heavy = 0; heavy < 2; heavy++) {
            tmsg_t *m = msg_new(sizes[k]);
            if (heavy) {
                m->t.device_model = text;
                m->t.firmware_version = text;
                for (size_t i = 0; i < m->n; i++) {
                    tev_t *e = &m->ev[i];
                    e->ss.session_id = e->se.session_id = e->cm.session_id = session;
                    e->cu.session_id = e->ns.session_id = e->na.session_id = session;
                    e->ss.operator_id = e->ss.patient_ref = text;
                    e->cart.lot = e->cart.serial = "ABCDEFGHIJKLMNOPQRST";
                    e->df.message = m->n < 200 ? fault : "x";
                }
            }
            size_t len;
            uint8_t *buf = msg_pack(m, &len);
            assert_true(len <= NT_MAX_PAYLOAD_BYTES);
            nt_dec_scan_t scan;
            assert_true(nt_decoder__scan(&needletrace__v1__telemetry__descriptor, buf, len, &scan));
            assert_int_equal(scan.events, sizes[k]);
            assert_reason(decode_bytes(TOPIC, buf, len), NT_REASON_OK);
            printf("%4zu events, %6zu bytes: arena %7zu bytes, pre-scan bound %7zu\n", sizes[k],
                   len, g_arena.used_bytes, scan.arena_bytes);
            assert_true(g_arena.used_bytes <= scan.arena_bytes);
            assert_true(scan.arena_bytes < NT_MAX_DECODE_BYTES * 3 / 4);
            free(buf);
            msg_free(m);
        }
    }
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* Every hostile message is rejected with less than 1 MiB of arena. The time per message is
 * printed, not asserted (valgrind and sanitizers make it 50x slower). */
static void test_hostile_cost(void **state)
{
    (void)state;
    static const nt_reason_t want[HOSTILE__COUNT] = {
        NT_REASON_TOO_MANY_EVENTS, NT_REASON_NOT_PROTOBUF, NT_REASON_NOT_PROTOBUF,
        NT_REASON_NOT_PROTOBUF,    NT_REASON_NOT_PROTOBUF, NT_REASON_NO_EVENTS};
    uint8_t *buf = malloc(NT_MAX_PAYLOAD_BYTES);
    assert_non_null(buf);
    nt_arena_t a;
    nt_arena_init(&a, 0, 0);
    for (int kind = 0; kind < HOSTILE__COUNT; kind++) {
        size_t len = hostile_payload(kind, buf);
        char detail[256];
        nt_reason_t r = NT_REASON_OK;
        size_t used = 0;
        const int iterations = 100;
        double total = 0, best = 1e12;
        for (int i = 0; i < iterations; i++) {
            nt_arena_reset(&a);
            double t0 = now_us();
            r = nt_decoder_decode(&a, TOPIC, strlen(TOPIC), buf, len, NULL, detail, sizeof(detail));
            double t = now_us() - t0;
            total += t;
            best = t < best ? t : best;
            used = a.used_bytes;
        }
        printf("hostile %-30s %6zu bytes: %-15s %8zu arena bytes, %7.1f us mean, %7.1f us min\n",
               hostile_names[kind], len, nt_reason_name(r), used, total / iterations, best);
        assert_true(len > NT_MAX_PAYLOAD_BYTES - 1024);
        assert_reason(r, want[kind]);
        assert_true(used < NT_MAX_DECODE_BYTES);
    }
    nt_arena_close(&a);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arena_alignment_and_reuse),
        cmocka_unit_test(test_arena_oversized_and_limit),
        cmocka_unit_test(test_arena_steady_state),
        cmocka_unit_test(test_arena_limit_in_decode),
        cmocka_unit_test(test_reason_names),
        cmocka_unit_test(test_event_kinds),
        cmocka_unit_test(test_topic_parse),
        cmocka_unit_test(test_identifier_valid),
        cmocka_unit_test(test_bad_topic_decode),
        cmocka_unit_test(test_payload_size_limit),
        cmocka_unit_test(test_not_protobuf),
        cmocka_unit_test(test_serial_mismatch),
        cmocka_unit_test(test_event_count),
        cmocka_unit_test(test_utf8_valid),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_nul_in_string),
        cmocka_unit_test(test_string_too_long),
        cmocka_unit_test(test_session_id),
        cmocka_unit_test(test_cartridge_identifiers),
        cmocka_unit_test(test_seq_order),
        cmocka_unit_test(test_missing_body),
        cmocka_unit_test(test_out_of_range_numbers),
        cmocka_unit_test(test_expiry_dates),
        cmocka_unit_test(test_unknown_area),
        cmocka_unit_test(test_accepted_message_contents),
        cmocka_unit_test(test_detail_truncation),
        cmocka_unit_test(test_prescan_reasons),
        cmocka_unit_test(test_prescan_arena_bound),
        cmocka_unit_test(test_hostile_cost),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
