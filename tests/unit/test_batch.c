/* test_batch.c -- unit tests of the binary COPY encoder (copybuf) and the batcher (batch). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/batch.h"
#include "needletrace/common.h"
#include "needletrace/copybuf.h"

/* ---- a reader for the binary COPY streams under test --------------------------------------- */

#define MAX_FIELDS 32

typedef struct {
    const uint8_t *p; /* NULL for SQL NULL */
    int32_t len;
} field_t;

typedef struct {
    uint16_t ncols;
    field_t f[MAX_FIELDS];
} row_t;

static const uint8_t header[19] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n',
                                   0,   0,   0,   0,   0,   0,   0,    0,    0};

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t get64(const uint8_t *p)
{
    return ((uint64_t)get32(p) << 32) | get32(p + 4);
}

/* Parses a finished stream: header, rows, trailer, nothing after. Returns the row count. */
static size_t parse_stream(const nt_copybuf_t *b, row_t *rows, size_t max)
{
    assert_true(b->len >= sizeof(header) + 2);
    assert_memory_equal(b->data, header, sizeof(header));
    size_t off = sizeof(header);
    size_t n = 0;
    for (;;) {
        assert_true(off + 2 <= b->len);
        uint16_t ncols = get16(b->data + off);
        off += 2;
        if (ncols == 0xffff) {
            break;
        }
        assert_true(n < max);
        assert_true(ncols <= MAX_FIELDS);
        rows[n].ncols = ncols;
        for (uint16_t i = 0; i < ncols; i++) {
            assert_true(off + 4 <= b->len);
            int32_t len = (int32_t)get32(b->data + off);
            off += 4;
            rows[n].f[i].len = len;
            rows[n].f[i].p = NULL;
            if (len >= 0) {
                assert_true(off + (size_t)len <= b->len);
                rows[n].f[i].p = b->data + off;
                off += (size_t)len;
            } else {
                assert_int_equal(len, -1);
            }
        }
        n++;
    }
    assert_int_equal(off, b->len);
    assert_int_equal(n, b->rows);
    return n;
}

/* Index of name in a "a, b, c" column list; fails the test when absent. */
static int col(const char *columns, const char *name)
{
    size_t want = strlen(name);
    int i = 0;
    for (const char *p = columns;;) {
        const char *end = strstr(p, ", ");
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        if (len == want && memcmp(p, name, len) == 0) {
            return i;
        }
        if (end == NULL) {
            fail_msg("column %s not in list", name);
        }
        p = end + 2;
        i++;
    }
}

static int count_cols(const char *columns)
{
    int n = 1;
    for (const char *p = columns; (p = strstr(p, ", ")) != NULL; p += 2) {
        n++;
    }
    return n;
}

static void assert_text(const row_t *r, int i, const char *s)
{
    assert_non_null(r->f[i].p);
    assert_int_equal(r->f[i].len, strlen(s));
    assert_memory_equal(r->f[i].p, s, strlen(s));
}

static void assert_null_field(const row_t *r, int i)
{
    assert_null(r->f[i].p);
    assert_int_equal(r->f[i].len, -1);
}

static int64_t get_int8(const row_t *r, int i)
{
    assert_int_equal(r->f[i].len, 8);
    return (int64_t)get64(r->f[i].p);
}

static int32_t get_int4(const row_t *r, int i)
{
    assert_int_equal(r->f[i].len, 4);
    return (int32_t)get32(r->f[i].p);
}

static int16_t get_int2(const row_t *r, int i)
{
    assert_int_equal(r->f[i].len, 2);
    return (int16_t)get16(r->f[i].p);
}

static int get_bool(const row_t *r, int i)
{
    assert_int_equal(r->f[i].len, 1);
    return r->f[i].p[0];
}

/* ---- copybuf --------------------------------------------------------------------------------- */

/* Bytes written since mark. */
static void assert_tail(const nt_copybuf_t *b, size_t mark, const uint8_t *want, size_t n)
{
    assert_int_equal(b->len - mark, n);
    assert_memory_equal(b->data + mark, want, n);
}

static void test_copybuf_header_trailer(void **state)
{
    nt_copybuf_t b;
    nt_copybuf_init(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    nt_copybuf_reset(&b);
    assert_int_equal(b.len, 19);
    assert_memory_equal(b.data, header, 19);
    assert_int_equal(b.rows, 0);
    assert_int_equal(nt_copybuf_finish(&b), 0);
    static const uint8_t trailer[2] = {0xff, 0xff};
    assert_tail(&b, 19, trailer, 2);

    size_t mark = b.len;
    nt_copybuf_row(&b, 3);
    static const uint8_t row3[2] = {0x00, 0x03};
    assert_tail(&b, mark, row3, 2);
    assert_int_equal(b.rows, 1);
    nt_copybuf_close(&b);
    assert_null(b.data);
}

static void test_copybuf_ints(void **state)
{
    nt_copybuf_t b;
    nt_copybuf_init(&b);
    nt_copybuf_reset(&b);
    size_t mark = b.len;
    nt_copybuf_int2(&b, -2);
    static const uint8_t i2[] = {0, 0, 0, 2, 0xff, 0xfe};
    assert_tail(&b, mark, i2, sizeof(i2));

    mark = b.len;
    nt_copybuf_int2(&b, 0x1234);
    static const uint8_t i2b[] = {0, 0, 0, 2, 0x12, 0x34};
    assert_tail(&b, mark, i2b, sizeof(i2b));

    mark = b.len;
    nt_copybuf_int4(&b, 0x01020304);
    static const uint8_t i4[] = {0, 0, 0, 4, 1, 2, 3, 4};
    assert_tail(&b, mark, i4, sizeof(i4));

    mark = b.len;
    nt_copybuf_int4(&b, INT32_MIN);
    static const uint8_t i4min[] = {0, 0, 0, 4, 0x80, 0, 0, 0};
    assert_tail(&b, mark, i4min, sizeof(i4min));

    mark = b.len;
    nt_copybuf_int8(&b, INT64_C(0x0102030405060708));
    static const uint8_t i8[] = {0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8};
    assert_tail(&b, mark, i8, sizeof(i8));

    mark = b.len;
    nt_copybuf_int8(&b, -1);
    static const uint8_t i8m1[] = {0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    assert_tail(&b, mark, i8m1, sizeof(i8m1));
    nt_copybuf_close(&b);
}

static void test_copybuf_bool_null_text_bytes(void **state)
{
    nt_copybuf_t b;
    nt_copybuf_init(&b);
    nt_copybuf_reset(&b);
    size_t mark = b.len;
    nt_copybuf_bool(&b, 1);
    nt_copybuf_bool(&b, 0);
    nt_copybuf_bool(&b, 7);
    static const uint8_t bools[] = {0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1};
    assert_tail(&b, mark, bools, sizeof(bools));

    mark = b.len;
    nt_copybuf_null(&b);
    static const uint8_t null[] = {0xff, 0xff, 0xff, 0xff};
    assert_tail(&b, mark, null, sizeof(null));

    mark = b.len;
    nt_copybuf_text(&b, "abc");
    static const uint8_t abc[] = {0, 0, 0, 3, 'a', 'b', 'c'};
    assert_tail(&b, mark, abc, sizeof(abc));

    mark = b.len;
    nt_copybuf_text(&b, NULL);
    assert_tail(&b, mark, null, sizeof(null));

    mark = b.len;
    nt_copybuf_text(&b, "");
    static const uint8_t empty[] = {0, 0, 0, 0};
    assert_tail(&b, mark, empty, sizeof(empty));

    mark = b.len;
    static const uint8_t raw[] = {0x00, 0xff, 0x10};
    nt_copybuf_bytes(&b, raw, sizeof(raw));
    static const uint8_t rawf[] = {0, 0, 0, 3, 0x00, 0xff, 0x10};
    assert_tail(&b, mark, rawf, sizeof(rawf));

    mark = b.len;
    nt_copybuf_text(&b, "\xc3\xa9t\xc3\xa9"); /* "été" */
    static const uint8_t ete[] = {0, 0, 0, 5, 0xc3, 0xa9, 't', 0xc3, 0xa9};
    assert_tail(&b, mark, ete, sizeof(ete));
    nt_copybuf_close(&b);
}

static void test_copybuf_timestamptz(void **state)
{
    nt_copybuf_t b;
    nt_copybuf_init(&b);
    nt_copybuf_reset(&b);
    size_t mark = b.len;
    nt_copybuf_timestamptz(&b, INT64_C(946684800000000)); /* 2000-01-01T00:00:00Z */
    static const uint8_t epoch[] = {0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0};
    assert_tail(&b, mark, epoch, sizeof(epoch));

    /* 2024-02-29T12:34:56.789012Z = 762525296789012 us after the PostgreSQL epoch. */
    mark = b.len;
    nt_copybuf_timestamptz(&b, INT64_C(1709210096789012));
    static const uint8_t leap[] = {0, 0, 0, 8, 0x00, 0x02, 0xb5, 0x83, 0x41, 0x72, 0x86, 0x14};
    assert_tail(&b, mark, leap, sizeof(leap));

    /* 1970-01-01T00:00:00Z is before it: negative. */
    mark = b.len;
    nt_copybuf_timestamptz(&b, 0);
    assert_int_equal(b.len - mark, 12);
    assert_int_equal((int64_t)get64(b.data + mark + 4), -INT64_C(946684800000000));
    nt_copybuf_close(&b);
}

/* Days since 2000-01-01 that nt_copybuf_date_yyyymmdd wrote, or INT32_MIN for NULL. */
static int32_t date_days(uint32_t yyyymmdd)
{
    nt_copybuf_t b;
    nt_copybuf_init(&b);
    nt_copybuf_reset(&b);
    size_t mark = b.len;
    nt_copybuf_date_yyyymmdd(&b, yyyymmdd);
    int32_t len = (int32_t)get32(b.data + mark);
    int32_t v = INT32_MIN;
    if (len == 4) {
        assert_int_equal(b.len - mark, 8);
        v = (int32_t)get32(b.data + mark + 4);
    } else {
        assert_int_equal(len, -1);
        assert_int_equal(b.len - mark, 4);
    }
    nt_copybuf_close(&b);
    return v;
}

static void test_copybuf_date(void **state)
{
    assert_int_equal(date_days(20000101), 0);
    assert_int_equal(date_days(19991231), -1);
    assert_int_equal(date_days(20000229), 59);
    assert_int_equal(date_days(20240229), 8825);
    assert_int_equal(date_days(20251231), 9496);
    assert_int_equal(date_days(21000228), 36583);
    assert_int_equal(date_days(19000228), -36466);
    /* Day 00: the last day of the month, leap years included. */
    assert_int_equal(date_days(20240200), 8825);   /* 2024-02-29 */
    assert_int_equal(date_days(20230200), 8459);   /* 2023-02-28 */
    assert_int_equal(date_days(20000200), 59);     /* 2000-02-29: divisible by 400 */
    assert_int_equal(date_days(19000200), -36466); /* 1900-02-28: century, not leap */
    assert_int_equal(date_days(20251200), 9496);   /* 2025-12-31 */
    assert_int_equal(date_days(20271200), 10226);  /* 2027-12-31 */
    /* Not a calendar date: NULL. */
    assert_int_equal(date_days(20231301), INT32_MIN);
    assert_int_equal(date_days(20230001), INT32_MIN);
    assert_int_equal(date_days(20230230), INT32_MIN);
    assert_int_equal(date_days(21000229), INT32_MIN);
    assert_int_equal(date_days(20230432), INT32_MIN);
    assert_int_equal(date_days(0), INT32_MIN);

    static const uint8_t wire[] = {0, 0, 0, 4, 0x00, 0x00, 0x22, 0x79}; /* 8825 */
    nt_copybuf_t b;
    nt_copybuf_init(&b);
    nt_copybuf_reset(&b);
    size_t mark = b.len;
    nt_copybuf_date_yyyymmdd(&b, 20240229);
    assert_tail(&b, mark, wire, sizeof(wire));
    nt_copybuf_close(&b);
}

static void test_copybuf_growth(void **state)
{
    nt_copybuf_t b;
    nt_copybuf_init(&b);
    nt_copybuf_reset(&b);
    size_t prev_cap = b.cap;
    for (int32_t i = 0; i < 100000; i++) {
        nt_copybuf_row(&b, 1);
        nt_copybuf_int4(&b, i);
        if (b.cap != prev_cap) {
            assert_true(prev_cap == 0 || b.cap == prev_cap * 2); /* doubling */
            prev_cap = b.cap;
        }
    }
    assert_int_equal(nt_copybuf_finish(&b), 0);
    assert_int_equal(b.rows, 100000);
    assert_int_equal(b.len, 19 + 100000 * 10 + 2);
    assert_true(b.cap >= b.len);
    for (int32_t i = 0; i < 100000; i++) {
        const uint8_t *p = b.data + 19 + (size_t)i * 10;
        assert_int_equal(get16(p), 1);
        assert_int_equal(get32(p + 2), 4);
        assert_int_equal((int32_t)get32(p + 6), i);
    }
    /* Reset keeps the memory. */
    uint8_t *data = b.data;
    size_t cap = b.cap;
    nt_copybuf_reset(&b);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, cap);
    assert_int_equal(b.len, 19);
    assert_int_equal(b.rows, 0);
    nt_copybuf_close(&b);
}

static void test_copybuf_oom_flag(void **state)
{
    nt_copybuf_t b;
    nt_copybuf_init(&b);
    nt_copybuf_reset(&b);
    b.oom = 1; /* as after a failed growth */
    size_t len = b.len;
    nt_copybuf_row(&b, 2);
    nt_copybuf_int8(&b, 1);
    nt_copybuf_text(&b, "ignored");
    nt_copybuf_null(&b);
    assert_int_equal(b.len, len);
    assert_int_equal(b.rows, 0);
    assert_int_equal(nt_copybuf_finish(&b), NT_ENOMEM);
    assert_int_equal(b.len, len);
    /* A reset starts over. */
    nt_copybuf_reset(&b);
    assert_int_equal(b.oom, 0);
    assert_int_equal(nt_copybuf_finish(&b), 0);
    assert_int_equal(b.len, 21);
    nt_copybuf_close(&b);
}

/* ---- batch: helpers to build telemetry --------------------------------------------------------
 */

#define T0_MS   INT64_C(1735732800000) /* 2025-01-01T12:00:00Z */
#define RECV_US INT64_C(1735732805123456)
#define GTIN    "07612345678900"

static const char topic_ok[] = "clinics/clinic-7/handpieces/HP-0001/telemetry";

typedef struct {
    Needletrace__V1__Event ev[8];
    Needletrace__V1__Event *evp[8];
    Needletrace__V1__SessionStarted started;
    Needletrace__V1__SessionEnded ended;
    Needletrace__V1__CartridgeMounted mounted;
    Needletrace__V1__CartridgeUnmounted unmounted;
    Needletrace__V1__Cartridge cart;
    Needletrace__V1__Cartridge cart2;
    Needletrace__V1__NeedleSetting setting;
    Needletrace__V1__NeedleActivity activity;
    Needletrace__V1__DeviceStatus status;
    Needletrace__V1__DeviceFault fault;
    Needletrace__V1__Telemetry t;
} fixture_t;

/* A message holding one event of each kind, seq 11..18, one second apart. */
static size_t pack_all_kinds(const char *serial, uint8_t *out, size_t cap)
{
    static fixture_t f;
    needletrace__v1__session_started__init(&f.started);
    f.started.session_id = "S-1";
    f.started.operator_id = "op-42";
    f.started.patient_ref = "pt-9f3a";
    needletrace__v1__cartridge__init(&f.cart);
    f.cart.gtin = GTIN;
    f.cart.lot = "LOT-A1";
    f.cart.serial = "CS-0001";
    f.cart.expiry_yyyymmdd = 20271200;
    f.cart.needle_count = 36;
    f.cart.sterile_barrier_intact = 1;
    needletrace__v1__cartridge_mounted__init(&f.mounted);
    f.mounted.session_id = "S-1";
    f.mounted.cartridge = &f.cart;
    needletrace__v1__needle_setting__init(&f.setting);
    f.setting.session_id = "S-1";
    f.setting.depth_um = 750;
    f.setting.stroke_rate_hz = 120;
    f.setting.area = NEEDLETRACE__V1__TREATMENT_AREA__FOREHEAD;
    needletrace__v1__needle_activity__init(&f.activity);
    f.activity.session_id = "S-1";
    f.activity.depth_um = 500;
    f.activity.stroke_rate_hz = 100;
    f.activity.area = NEEDLETRACE__V1__TREATMENT_AREA__DECOLLETAGE;
    f.activity.duration_ms = 4500;
    needletrace__v1__device_status__init(&f.status);
    f.status.battery_pct = 87;
    f.status.temperature_dc = -15;
    f.status.motor_seconds_total = 123456;
    needletrace__v1__device_fault__init(&f.fault);
    f.fault.code = 4000000000u;
    f.fault.message = "motor stall \xc3\xa0 2";
    needletrace__v1__session_ended__init(&f.ended);
    f.ended.session_id = "S-1";
    f.ended.motor_seconds = 600;
    needletrace__v1__cartridge__init(&f.cart2);
    f.cart2.gtin = GTIN;
    f.cart2.lot = "LOT-A1";
    f.cart2.serial = "CS-0001";
    f.cart2.needle_count = 36;
    needletrace__v1__cartridge_unmounted__init(&f.unmounted);
    f.unmounted.session_id = "S-1";
    f.unmounted.cartridge = &f.cart2;
    f.unmounted.motor_ms = 600000;

    for (int i = 0; i < 8; i++) {
        needletrace__v1__event__init(&f.ev[i]);
        f.ev[i].seq = 11 + (uint64_t)i;
        f.ev[i].device_time_ms = T0_MS + i * 1000;
        f.evp[i] = &f.ev[i];
    }
    f.ev[0].body_case = NEEDLETRACE__V1__EVENT__BODY_SESSION_STARTED;
    f.ev[0].session_started = &f.started;
    f.ev[1].body_case = NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_MOUNTED;
    f.ev[1].cartridge_mounted = &f.mounted;
    f.ev[2].body_case = NEEDLETRACE__V1__EVENT__BODY_NEEDLE_SETTING;
    f.ev[2].needle_setting = &f.setting;
    f.ev[3].body_case = NEEDLETRACE__V1__EVENT__BODY_NEEDLE_ACTIVITY;
    f.ev[3].needle_activity = &f.activity;
    f.ev[4].body_case = NEEDLETRACE__V1__EVENT__BODY_DEVICE_STATUS;
    f.ev[4].device_status = &f.status;
    f.ev[5].body_case = NEEDLETRACE__V1__EVENT__BODY_DEVICE_FAULT;
    f.ev[5].device_fault = &f.fault;
    f.ev[6].body_case = NEEDLETRACE__V1__EVENT__BODY_SESSION_ENDED;
    f.ev[6].session_ended = &f.ended;
    f.ev[7].body_case = NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_UNMOUNTED;
    f.ev[7].cartridge_unmounted = &f.unmounted;

    needletrace__v1__telemetry__init(&f.t);
    f.t.device_serial = (char *)serial;
    f.t.device_model = "MN-Pro 3";
    f.t.firmware_version = "2.4.1";
    f.t.boot_id = 7;
    f.t.n_events = 8;
    f.t.events = f.evp;
    size_t n = needletrace__v1__telemetry__get_packed_size(&f.t);
    assert_true(n <= cap);
    return needletrace__v1__telemetry__pack(&f.t, out);
}

static nt_journal_record_t record(uint64_t pos, const char *topic, size_t topic_len,
                                  const uint8_t *payload, size_t payload_len)
{
    nt_journal_record_t r;
    r.pos = pos;
    r.next_pos = pos + 8 + 8 + 2 + topic_len + payload_len;
    r.received_us = RECV_US + (int64_t)pos;
    r.topic = topic;
    r.topic_len = topic_len;
    r.payload = payload;
    r.payload_len = payload_len;
    return r;
}

static int batch_setup(void **state)
{
    nt_batch_t *b = calloc(1, sizeof(*b));
    assert_non_null(b);
    assert_int_equal(nt_batch_init(b, "collector-a"), 0);
    *state = b;
    return 0;
}

static int batch_teardown(void **state)
{
    nt_batch_t *b = *state;
    nt_batch_close(b);
    free(b);
    return 0;
}

static row_t rows[64];

/* ---- batch tests ----------------------------------------------------------------------------- */

static void test_batch_tables(void **state)
{
    nt_batch_t *b = *state;
    assert_string_equal(b->tables[NT_BATCH_RAW].table, "raw_messages");
    assert_string_equal(b->tables[NT_BATCH_EVENTS].table, "events");
    assert_string_equal(b->tables[NT_BATCH_QUARANTINE].table, "quarantine");
    assert_int_equal(count_cols(b->tables[NT_BATCH_RAW].columns), 14);
    assert_int_equal(count_cols(b->tables[NT_BATCH_EVENTS].columns), 30);
    assert_int_equal(count_cols(b->tables[NT_BATCH_QUARANTINE].columns), 11);
    assert_string_equal(b->collector_id, "collector-a");
    for (int i = 0; i < NT_BATCH__TABLES; i++) {
        assert_int_equal(b->tables[i].buf.rows, 0);
        assert_int_equal(b->tables[i].buf.len, 19);
    }
    assert_int_equal(b->messages, 0);
    assert_int_equal(b->oldest_received_us, 0);
}

static void test_batch_valid_message(void **state)
{
    nt_batch_t *b = *state;
    uint8_t payload[4096];
    size_t plen = pack_all_kinds("HP-0001", payload, sizeof(payload));
    nt_journal_record_t rec = record(1000, topic_ok, strlen(topic_ok), payload, plen);
    assert_int_equal(nt_batch_add(b, &rec), 0);
    assert_int_equal(nt_batch_finish(b), 0);

    assert_int_equal(b->messages, 1);
    assert_int_equal(b->accepted, 1);
    assert_int_equal(b->events, 8);
    assert_int_equal(b->rejected, 0);
    for (int i = 0; i < NT_REASON__COUNT; i++) {
        assert_int_equal(b->rejected_by_reason[i], 0);
    }
    assert_int_equal(b->bytes, strlen(topic_ok) + plen);
    assert_int_equal(b->first_pos, 1000);
    assert_int_equal(b->end_pos, rec.next_pos);
    assert_int_equal(b->oldest_received_us, RECV_US + 1000);

    uint8_t sha[32];
    SHA256(payload, plen, sha);

    /* raw_messages */
    const char *rc = b->tables[NT_BATCH_RAW].columns;
    assert_int_equal(parse_stream(&b->tables[NT_BATCH_RAW].buf, rows, 64), 1);
    const row_t *r = &rows[0];
    assert_int_equal(r->ncols, count_cols(rc));
    assert_text(r, col(rc, "clinic_id"), "clinic-7");
    assert_text(r, col(rc, "device_serial"), "HP-0001");
    assert_int_equal(r->f[col(rc, "payload_sha256")].len, 32);
    assert_memory_equal(r->f[col(rc, "payload_sha256")].p, sha, 32);
    assert_int_equal(get_int8(r, col(rc, "received_at")),
                     RECV_US + 1000 - INT64_C(946684800000000));
    assert_text(r, col(rc, "topic"), topic_ok);
    assert_int_equal(r->f[col(rc, "payload")].len, plen);
    assert_memory_equal(r->f[col(rc, "payload")].p, payload, plen);
    assert_int_equal(get_int8(r, col(rc, "boot_id")), 7);
    assert_int_equal(get_int4(r, col(rc, "event_count")), 8);
    assert_int_equal(get_int8(r, col(rc, "first_seq")), 11);
    assert_int_equal(get_int8(r, col(rc, "last_seq")), 18);
    assert_text(r, col(rc, "device_model"), "MN-Pro 3");
    assert_text(r, col(rc, "firmware_version"), "2.4.1");
    assert_text(r, col(rc, "collector_id"), "collector-a");
    assert_int_equal(get_int8(r, col(rc, "journal_pos")), 1000);

    /* quarantine: nothing */
    assert_int_equal(parse_stream(&b->tables[NT_BATCH_QUARANTINE].buf, rows, 64), 0);

    /* events */
    const char *ec = b->tables[NT_BATCH_EVENTS].columns;
    assert_int_equal(parse_stream(&b->tables[NT_BATCH_EVENTS].buf, rows, 64), 8);
    static const char *const kinds[8] = {"session_started", "cartridge_mounted",  "needle_setting",
                                         "needle_activity", "device_status",      "device_fault",
                                         "session_ended",   "cartridge_unmounted"};
    static const char *const typed[] = {"operator_id",
                                        "patient_ref",
                                        "motor_seconds",
                                        "gtin",
                                        "lot",
                                        "cartridge_serial",
                                        "expiry",
                                        "needle_count",
                                        "sterile_barrier_intact",
                                        "motor_ms",
                                        "depth_um",
                                        "stroke_rate_hz",
                                        "area",
                                        "duration_ms",
                                        "battery_pct",
                                        "temperature_dc",
                                        "motor_seconds_total",
                                        "fault_code",
                                        "fault_message",
                                        "device_model"};
    /* Which typed columns each kind fills (bit i = typed[i]). */
    static const uint32_t filled[8] = {
        0x3,           /* operator_id, patient_ref */
        0x1f8,         /* gtin .. sterile_barrier_intact */
        0x81c00,       /* depth_um, stroke_rate_hz, area, device_model */
        0x83c00,       /* + duration_ms */
        0x1c000,       /* battery_pct, temperature_dc, motor_seconds_total */
        0x60000,       /* fault_code, fault_message */
        0x4,           /* motor_seconds */
        0x3f8 & ~0x40, /* gtin, lot, serial, (no expiry), needle_count, barrier, motor_ms */
    };
    for (int i = 0; i < 8; i++) {
        r = &rows[i];
        assert_int_equal(r->ncols, 30);
        assert_text(r, col(ec, "clinic_id"), "clinic-7");
        assert_text(r, col(ec, "device_serial"), "HP-0001");
        assert_int_equal(get_int8(r, col(ec, "boot_id")), 7);
        assert_int_equal(get_int8(r, col(ec, "seq")), 11 + i);
        assert_text(r, col(ec, "kind"), kinds[i]);
        assert_int_equal(get_int8(r, col(ec, "device_time")),
                         (T0_MS + i * 1000) * 1000 - INT64_C(946684800000000));
        assert_int_equal(get_int8(r, col(ec, "received_at")),
                         RECV_US + 1000 - INT64_C(946684800000000));
        if (i == 4 || i == 5) {
            assert_null_field(r, col(ec, "session_id"));
        } else {
            assert_text(r, col(ec, "session_id"), "S-1");
        }
        assert_memory_equal(r->f[col(ec, "payload_sha256")].p, sha, 32);
        assert_text(r, col(ec, "collector_id"), "collector-a");
        for (size_t k = 0; k < NT_ARRAY_SIZE(typed); k++) {
            const field_t *fld = &r->f[col(ec, typed[k])];
            if (filled[i] & (1u << k)) {
                assert_non_null(fld->p);
            } else {
                assert_int_equal(fld->len, -1);
            }
        }
    }
    r = &rows[0];
    assert_text(r, col(ec, "operator_id"), "op-42");
    assert_text(r, col(ec, "patient_ref"), "pt-9f3a");
    r = &rows[1];
    assert_text(r, col(ec, "gtin"), GTIN);
    assert_text(r, col(ec, "lot"), "LOT-A1");
    assert_text(r, col(ec, "cartridge_serial"), "CS-0001");
    assert_int_equal(get_int4(r, col(ec, "expiry")), 10226); /* 2027-12-31 */
    assert_int_equal(get_int4(r, col(ec, "needle_count")), 36);
    assert_int_equal(get_bool(r, col(ec, "sterile_barrier_intact")), 1);
    r = &rows[2];
    assert_int_equal(get_int4(r, col(ec, "depth_um")), 750);
    assert_int_equal(get_int4(r, col(ec, "stroke_rate_hz")), 120);
    assert_text(r, col(ec, "area"), "forehead");
    assert_text(r, col(ec, "device_model"), "MN-Pro 3");
    r = &rows[3];
    assert_int_equal(get_int4(r, col(ec, "depth_um")), 500);
    assert_int_equal(get_int4(r, col(ec, "stroke_rate_hz")), 100);
    assert_text(r, col(ec, "area"), "decolletage");
    assert_int_equal(get_int8(r, col(ec, "duration_ms")), 4500);
    assert_text(r, col(ec, "device_model"), "MN-Pro 3");
    r = &rows[4];
    assert_int_equal(get_int2(r, col(ec, "battery_pct")), 87);
    assert_int_equal(get_int4(r, col(ec, "temperature_dc")), -15);
    assert_int_equal(get_int8(r, col(ec, "motor_seconds_total")), 123456);
    r = &rows[5];
    assert_int_equal(get_int8(r, col(ec, "fault_code")), 4000000000);
    assert_text(r, col(ec, "fault_message"), "motor stall \xc3\xa0 2");
    r = &rows[6];
    assert_int_equal(get_int8(r, col(ec, "motor_seconds")), 600);
    r = &rows[7];
    assert_int_equal(get_bool(r, col(ec, "sterile_barrier_intact")), 0);
    assert_int_equal(get_int8(r, col(ec, "motor_ms")), 600000);
}

/* Checks the single quarantine row against rec and reason; the topic is expected as
 * topic_text (its escaped form when the raw topic is not valid text). */
static void check_quarantine_row(nt_batch_t *b, const nt_journal_record_t *rec, const char *reason,
                                 const char *clinic, const char *serial, const char *topic_text)
{
    const char *qc = b->tables[NT_BATCH_QUARANTINE].columns;
    assert_int_equal(parse_stream(&b->tables[NT_BATCH_QUARANTINE].buf, rows, 64), 1);
    const row_t *r = &rows[0];
    assert_int_equal(r->ncols, count_cols(qc));
    assert_text(r, col(qc, "clinic_id"), clinic);
    uint8_t key[32], sha[32];
    {
        size_t n = rec->topic_len + 1 + rec->payload_len;
        uint8_t *all = malloc(n);
        assert_non_null(all);
        memcpy(all, rec->topic, rec->topic_len);
        all[rec->topic_len] = 0;
        memcpy(all + rec->topic_len + 1, rec->payload, rec->payload_len);
        SHA256(all, n, key);
        free(all);
    }
    SHA256(rec->payload, rec->payload_len, sha);
    assert_int_equal(r->f[col(qc, "message_key")].len, 32);
    assert_memory_equal(r->f[col(qc, "message_key")].p, key, 32);
    assert_int_equal(get_int8(r, col(qc, "received_at")),
                     rec->received_us - INT64_C(946684800000000));
    assert_text(r, col(qc, "topic"), topic_text);
    assert_int_equal(r->f[col(qc, "payload")].len, rec->payload_len);
    if (rec->payload_len > 0) {
        assert_memory_equal(r->f[col(qc, "payload")].p, rec->payload, rec->payload_len);
    }
    assert_memory_equal(r->f[col(qc, "payload_sha256")].p, sha, 32);
    assert_text(r, col(qc, "reason"), reason);
    assert_true(r->f[col(qc, "detail")].len > 0);
    if (serial != NULL) {
        assert_text(r, col(qc, "device_serial"), serial);
    } else {
        assert_null_field(r, col(qc, "device_serial"));
    }
    assert_text(r, col(qc, "collector_id"), "collector-a");
    assert_int_equal(get_int8(r, col(qc, "journal_pos")), rec->pos);
}

static void assert_no_accepted_rows(nt_batch_t *b)
{
    assert_int_equal(parse_stream(&b->tables[NT_BATCH_RAW].buf, rows, 64), 0);
    assert_int_equal(parse_stream(&b->tables[NT_BATCH_EVENTS].buf, rows, 64), 0);
}

static void test_batch_malformed_payload(void **state)
{
    nt_batch_t *b = *state;
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x42};
    nt_journal_record_t rec = record(64, topic_ok, strlen(topic_ok), junk, sizeof(junk));
    assert_int_equal(nt_batch_add(b, &rec), 0);
    assert_int_equal(nt_batch_finish(b), 0);
    assert_int_equal(b->messages, 1);
    assert_int_equal(b->accepted, 0);
    assert_int_equal(b->events, 0);
    assert_int_equal(b->rejected, 1);
    assert_int_equal(b->rejected_by_reason[NT_REASON_NOT_PROTOBUF], 1);
    check_quarantine_row(b, &rec, "not_protobuf", "clinic-7", "HP-0001", topic_ok);
    assert_no_accepted_rows(b);
}

static void test_batch_spoofed_serial(void **state)
{
    nt_batch_t *b = *state;
    uint8_t payload[4096];
    size_t plen = pack_all_kinds("HP-9999", payload, sizeof(payload));
    nt_journal_record_t rec = record(0, topic_ok, strlen(topic_ok), payload, plen);
    assert_int_equal(nt_batch_add(b, &rec), 0);
    assert_int_equal(nt_batch_finish(b), 0);
    assert_int_equal(b->rejected, 1);
    assert_int_equal(b->accepted, 0);
    assert_int_equal(b->events, 0);
    assert_int_equal(b->rejected_by_reason[NT_REASON_SERIAL_MISMATCH], 1);
    check_quarantine_row(b, &rec, "serial_mismatch", "clinic-7", "HP-0001", topic_ok);
    assert_no_accepted_rows(b);
}

static void test_batch_bad_topic_escaped(void **state)
{
    nt_batch_t *b = *state;
    uint8_t payload[4096];
    size_t plen = pack_all_kinds("HP-0001", payload, sizeof(payload));
    /* Invalid UTF-8 (0xff, a lone continuation byte, a truncated sequence), a NUL, a
     * backslash and a valid two-byte sequence, which stays as it is. */
    static const char bad[] = "clinics/c\xff/handpieces/\x80x\\y\xc3\xa9\x00z/telemetry\xe2\x82";
    nt_journal_record_t rec = record(5, bad, sizeof(bad) - 1, payload, plen);
    assert_int_equal(nt_batch_add(b, &rec), 0);
    assert_int_equal(nt_batch_finish(b), 0);
    assert_int_equal(b->rejected_by_reason[NT_REASON_BAD_TOPIC], 1);
    check_quarantine_row(
        b, &rec, "bad_topic", "", NULL,
        "clinics/c\\xff/handpieces/\\x80x\\x5cy\xc3\xa9\\x00z/telemetry\\xe2\\x82");
    assert_no_accepted_rows(b);
}

static void test_batch_mixed(void **state)
{
    nt_batch_t *b = *state;
    uint8_t good[4096], spoof[4096];
    size_t glen = pack_all_kinds("HP-0001", good, sizeof(good));
    size_t slen = pack_all_kinds("HP-0002", spoof, sizeof(spoof));
    static const uint8_t junk[] = {0x0a, 0xff};
    static const char topic2[] = "clinics/clinic-8/handpieces/HP-0002/telemetry";
    static const char bad_topic[] = "clinics/clinic-7/handpieces/HP-0001/status";

    nt_journal_record_t recs[5];
    recs[0] = record(100, topic_ok, strlen(topic_ok), good, glen);
    recs[1] = record(recs[0].next_pos, topic_ok, strlen(topic_ok), junk, sizeof(junk));
    recs[2] = record(recs[1].next_pos, topic_ok, strlen(topic_ok), spoof, slen);
    recs[3] = record(recs[2].next_pos, bad_topic, strlen(bad_topic), good, glen);
    recs[4] = record(recs[3].next_pos, topic2, strlen(topic2), spoof, slen);
    size_t bytes = 0;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(nt_batch_add(b, &recs[i]), 0);
        bytes += recs[i].topic_len + recs[i].payload_len;
    }
    assert_int_equal(nt_batch_finish(b), 0);
    assert_int_equal(b->messages, 5);
    assert_int_equal(b->accepted, 2);
    assert_int_equal(b->events, 16);
    assert_int_equal(b->rejected, 3);
    assert_int_equal(b->rejected_by_reason[NT_REASON_NOT_PROTOBUF], 1);
    assert_int_equal(b->rejected_by_reason[NT_REASON_SERIAL_MISMATCH], 1);
    assert_int_equal(b->rejected_by_reason[NT_REASON_BAD_TOPIC], 1);
    assert_int_equal(b->bytes, bytes);
    assert_int_equal(b->first_pos, 100);
    assert_int_equal(b->end_pos, recs[4].next_pos);
    assert_int_equal(b->oldest_received_us, recs[0].received_us);

    const char *rc = b->tables[NT_BATCH_RAW].columns;
    assert_int_equal(parse_stream(&b->tables[NT_BATCH_RAW].buf, rows, 64), 2);
    assert_text(&rows[0], col(rc, "clinic_id"), "clinic-7");
    assert_int_equal(get_int8(&rows[0], col(rc, "journal_pos")), 100);
    assert_text(&rows[1], col(rc, "clinic_id"), "clinic-8");
    assert_text(&rows[1], col(rc, "device_serial"), "HP-0002");
    assert_int_equal(get_int8(&rows[1], col(rc, "journal_pos")), recs[4].pos);

    const char *ec = b->tables[NT_BATCH_EVENTS].columns;
    assert_int_equal(parse_stream(&b->tables[NT_BATCH_EVENTS].buf, rows, 64), 16);
    assert_text(&rows[7], col(ec, "device_serial"), "HP-0001");
    assert_text(&rows[8], col(ec, "device_serial"), "HP-0002");

    const char *qc = b->tables[NT_BATCH_QUARANTINE].columns;
    assert_int_equal(parse_stream(&b->tables[NT_BATCH_QUARANTINE].buf, rows, 64), 3);
    assert_text(&rows[0], col(qc, "reason"), "not_protobuf");
    assert_int_equal(get_int8(&rows[0], col(qc, "journal_pos")), recs[1].pos);
    assert_text(&rows[1], col(qc, "reason"), "serial_mismatch");
    assert_text(&rows[2], col(qc, "reason"), "bad_topic");
    assert_text(&rows[2], col(qc, "clinic_id"), "");
    assert_null_field(&rows[2], col(qc, "device_serial"));
    assert_text(&rows[2], col(qc, "topic"), bad_topic);
}

static void test_batch_reset_reuses(void **state)
{
    nt_batch_t *b = *state;
    uint8_t good[4096];
    size_t glen = pack_all_kinds("HP-0001", good, sizeof(good));
    static const uint8_t junk[] = {0xff};
    nt_journal_record_t r1 = record(10, topic_ok, strlen(topic_ok), good, glen);
    nt_journal_record_t r2 = record(r1.next_pos, topic_ok, strlen(topic_ok), junk, sizeof(junk));
    assert_int_equal(nt_batch_add(b, &r1), 0);
    assert_int_equal(nt_batch_add(b, &r2), 0);
    assert_int_equal(nt_batch_finish(b), 0);
    size_t len1 = b->tables[NT_BATCH_EVENTS].buf.len;
    uint8_t *data[NT_BATCH__TABLES];
    for (int i = 0; i < NT_BATCH__TABLES; i++) {
        data[i] = b->tables[i].buf.data;
    }

    nt_batch_reset(b);
    assert_int_equal(b->messages, 0);
    assert_int_equal(b->accepted, 0);
    assert_int_equal(b->events, 0);
    assert_int_equal(b->rejected, 0);
    assert_int_equal(b->rejected_by_reason[NT_REASON_NOT_PROTOBUF], 0);
    assert_int_equal(b->bytes, 0);
    assert_int_equal(b->first_pos, 0);
    assert_int_equal(b->end_pos, 0);
    assert_int_equal(b->oldest_received_us, 0);
    for (int i = 0; i < NT_BATCH__TABLES; i++) {
        assert_int_equal(b->tables[i].buf.rows, 0);
        assert_int_equal(b->tables[i].buf.len, 19);
        assert_ptr_equal(b->tables[i].buf.data, data[i]);
    }

    /* Same input, same bytes: nothing of the previous batch leaks into the next. */
    nt_journal_record_t r3 = record(r2.next_pos, topic_ok, strlen(topic_ok), good, glen);
    r3.received_us = r1.received_us;
    r3.pos = r1.pos;
    assert_int_equal(nt_batch_add(b, &r3), 0);
    assert_int_equal(nt_batch_finish(b), 0);
    assert_int_equal(b->messages, 1);
    assert_int_equal(b->events, 8);
    assert_int_equal(b->first_pos, r1.pos);
    assert_int_equal(b->tables[NT_BATCH_EVENTS].buf.len, len1);
    assert_int_equal(parse_stream(&b->tables[NT_BATCH_QUARANTINE].buf, rows, 64), 0);
    assert_ptr_equal(b->tables[NT_BATCH_EVENTS].buf.data, data[NT_BATCH_EVENTS]);
}

/* A full-size message of 1000 events many times over: memory stays bounded by the arena
 * reuse and the streams stay well-formed. */
static void test_batch_many_messages(void **state)
{
    nt_batch_t *b = *state;
    static Needletrace__V1__Event ev[NT_MAX_EVENTS];
    static Needletrace__V1__Event *evp[NT_MAX_EVENTS];
    static Needletrace__V1__NeedleActivity act;
    needletrace__v1__needle_activity__init(&act);
    act.session_id = "S-2";
    act.depth_um = 1000;
    act.stroke_rate_hz = 110;
    act.area = NEEDLETRACE__V1__TREATMENT_AREA__CHEEKS;
    act.duration_ms = 100;
    for (size_t i = 0; i < NT_MAX_EVENTS; i++) {
        needletrace__v1__event__init(&ev[i]);
        ev[i].seq = 1 + i;
        ev[i].device_time_ms = T0_MS + (int64_t)i * 100;
        ev[i].body_case = NEEDLETRACE__V1__EVENT__BODY_NEEDLE_ACTIVITY;
        ev[i].needle_activity = &act;
        evp[i] = &ev[i];
    }
    Needletrace__V1__Telemetry t;
    needletrace__v1__telemetry__init(&t);
    t.device_serial = "HP-0001";
    t.boot_id = 1;
    t.n_events = NT_MAX_EVENTS;
    t.events = evp;
    size_t cap = needletrace__v1__telemetry__get_packed_size(&t);
    uint8_t *payload = malloc(cap);
    assert_non_null(payload);
    size_t plen = needletrace__v1__telemetry__pack(&t, payload);
    uint64_t pos = 0;
    for (int m = 0; m < 20; m++) {
        nt_journal_record_t rec = record(pos, topic_ok, strlen(topic_ok), payload, plen);
        assert_int_equal(nt_batch_add(b, &rec), 0);
        pos = rec.next_pos;
    }
    assert_int_equal(nt_batch_finish(b), 0);
    assert_int_equal(b->accepted, 20);
    assert_int_equal(b->events, 20 * NT_MAX_EVENTS);
    assert_int_equal(b->tables[NT_BATCH_EVENTS].buf.rows, 20 * NT_MAX_EVENTS);
    row_t *all = malloc(sizeof(row_t) * 20 * NT_MAX_EVENTS);
    assert_non_null(all);
    assert_int_equal(parse_stream(&b->tables[NT_BATCH_EVENTS].buf, all, 20 * NT_MAX_EVENTS),
                     20 * NT_MAX_EVENTS);
    const char *ec = b->tables[NT_BATCH_EVENTS].columns;
    assert_int_equal(get_int8(&all[20 * NT_MAX_EVENTS - 1], col(ec, "seq")), NT_MAX_EVENTS);
    assert_text(&all[12345], col(ec, "area"), "cheeks");
    free(all);
    free(payload);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copybuf_header_trailer),
        cmocka_unit_test(test_copybuf_ints),
        cmocka_unit_test(test_copybuf_bool_null_text_bytes),
        cmocka_unit_test(test_copybuf_timestamptz),
        cmocka_unit_test(test_copybuf_date),
        cmocka_unit_test(test_copybuf_growth),
        cmocka_unit_test(test_copybuf_oom_flag),
        cmocka_unit_test_setup_teardown(test_batch_tables, batch_setup, batch_teardown),
        cmocka_unit_test_setup_teardown(test_batch_valid_message, batch_setup, batch_teardown),
        cmocka_unit_test_setup_teardown(test_batch_malformed_payload, batch_setup, batch_teardown),
        cmocka_unit_test_setup_teardown(test_batch_spoofed_serial, batch_setup, batch_teardown),
        cmocka_unit_test_setup_teardown(test_batch_bad_topic_escaped, batch_setup, batch_teardown),
        cmocka_unit_test_setup_teardown(test_batch_mixed, batch_setup, batch_teardown),
        cmocka_unit_test_setup_teardown(test_batch_reset_reuses, batch_setup, batch_teardown),
        cmocka_unit_test_setup_teardown(test_batch_many_messages, batch_setup, batch_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
