/* test_audit_agg.c -- the audit report's figures gathered from events rows (audit_agg.c) and the
 * binary arrays they travel in (audit_arr.c): the period per clinic, what each table counts, the
 * merge of the workers' figures, and rows no schema would allow (any length, NULLs, a session
 * with too many areas), thousands of them at random (ASan and valgrind watch). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../collector/cmd/audit_internal.h"

enum { COLS = 32 };

/* An events row in binary (NT_AUDIT_EVENTS_V1's order), its fields set one by one. */
typedef struct {
    const unsigned char *f[COLS];
    int32_t len[COLS];
    unsigned char num[COLS][8];
} row_t;

static void row_init(row_t *r)
{
    for (int c = 0; c < COLS; c++) {
        r->f[c] = NULL;
        r->len[c] = -1;
    }
}

static void row_text(row_t *r, int c, const char *s)
{
    r->f[c] = (const unsigned char *)s;
    r->len[c] = s != NULL ? (int32_t)strlen(s) : -1;
}

static void row_int(row_t *r, int c, int64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) {
        r->num[c][i] = (unsigned char)((uint64_t)v >> (8 * (bytes - 1 - i)));
    }
    r->f[c] = r->num[c];
    r->len[c] = bytes;
}

/* clinic, serial, boot, kind, device time, received, session, depth, area */
static void row_event(row_t *r, const char *clinic, const char *serial, int64_t boot,
                      const char *kind, int64_t dt, int64_t ra, const char *session, int depth,
                      const char *area)
{
    row_init(r);
    row_text(r, 0, clinic);
    row_text(r, 1, serial);
    row_int(r, 2, boot, 8);
    row_int(r, 3, 1, 8);
    row_text(r, 4, kind);
    row_int(r, 5, dt, 8);
    row_int(r, 6, ra, 8);
    row_text(r, 7, session);
    if (depth >= 0) {
        row_int(r, 20, depth, 4);
    }
    row_text(r, 22, area);
}

static int64_t be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = v << 8 | p[i];
    }
    return (int64_t)v;
}

/* Element i of an array in binary: its bytes (*len -1: NULL). */
static const unsigned char *arr_elem(const nt_audit_arr_t *a, uint32_t i, int32_t *len)
{
    size_t at = 20;
    for (uint32_t k = 0;; k++) {
        uint32_t l = (uint32_t)a->b[at] << 24 | (uint32_t)a->b[at + 1] << 16 |
                     (uint32_t)a->b[at + 2] << 8 | a->b[at + 3];
        if (k == i) {
            *len = l == 0xffffffffu ? -1 : (int32_t)l;
            return a->b + at + 4;
        }
        at += 4 + (l == 0xffffffffu ? 0 : l);
    }
}

static int64_t arr_i64(const nt_audit_arr_t *a, uint32_t i)
{
    int32_t len;
    const unsigned char *p = arr_elem(a, i, &len);
    assert_int_equal(len, 8);
    return be64(p);
}

static void test_array_binary(void **state)
{
    (void)state;
    nt_audit_arr_t a;
    nt_audit__arr_init(&a, 20);
    nt_audit__arr_i64(&a, 7);
    nt_audit__arr_add(&a, NULL, -1);
    nt_audit__arr_i64(&a, -2);
    assert_int_equal(nt_audit__arr_finish(&a), 0);
    static const unsigned char want[] = {
        0,    0,    0,    1,    0,    0,    0,    0,    0,    0,    0,    20,
        0,    0,    0,    3,    0,    0,    0,    1,                             /* header */
        0,    0,    0,    8,    0,    0,    0,    0,    0,    0,    0,    7,     /* 7 */
        0xff, 0xff, 0xff, 0xff,                                                  /* NULL */
        0,    0,    0,    8,    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe}; /* -2 */
    assert_int_equal(a.len, sizeof(want));
    assert_memory_equal(a.b, want, sizeof(want));
    nt_audit__arr_free(&a);
    nt_audit__arr_init(&a, 25); /* empty: no dimension */
    assert_int_equal(nt_audit__arr_finish(&a), 0);
    static const unsigned char empty[] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 25};
    assert_int_equal(a.len, sizeof(empty));
    assert_memory_equal(a.b, empty, sizeof(empty));
    nt_audit__arr_free(&a);
}

static void test_figures(void **state)
{
    (void)state;
    /* the period: [1000, 5000) in UTC; clinic Z's own: [3000, 9000) */
    nt_audit_agg_t *g = nt_audit__agg_new(NULL, 1000, 5000);
    assert_non_null(g);
    assert_int_equal(nt_audit__agg_bound(g, "Z", 3000, 9000), 0);
    assert_int_equal(nt_audit__agg_bound(g, "Z", 1, 2), -2); /* a clinic twice: refused */
    nt_audit_agg_t *c1 = nt_audit__agg_child(g), *c2 = nt_audit__agg_child(g);
    row_t r;
    row_event(&r, "A", "P1", 1, "needle_activity", 1000, 1500, "S1", 300, NULL);
    assert_int_equal(nt_audit__agg_row(c1, COLS, r.f, r.len), 0);
    row_event(&r, "A", "P1", 1, "needle_activity", 4999, 4000, "S1", 499, "chin");
    assert_int_equal(nt_audit__agg_row(c2, COLS, r.f, r.len), 0);
    row_event(&r, "A", "P1", 2, "session_started", 2000, 2000, "S1", -1, NULL);
    assert_int_equal(nt_audit__agg_row(c1, COLS, r.f, r.len), 0);
    row_event(&r, "A", "P1", 1, "needle_activity", 5000, 5000, "S1", 300, NULL); /* after */
    assert_int_equal(nt_audit__agg_row(c1, COLS, r.f, r.len), 0);
    row_event(&r, "Z", "P9", 1, "needle_activity", 2000, 2000, "S9", 300, NULL); /* Z: before */
    assert_int_equal(nt_audit__agg_row(c2, COLS, r.f, r.len), 0);
    row_event(&r, "Z", "P9", 3, "cartridge_mounted", 8000, 8000, "S9", -1, NULL);
    row_text(&r, 13, "0950");
    row_text(&r, 15, "C-1");
    assert_int_equal(nt_audit__agg_row(c2, COLS, r.f, r.len), 0);
    assert_int_equal(nt_audit__agg_row(c1, COLS, r.f, r.len), 0); /* the same cartridge */
    row_event(&r, NULL, "P0", 1, "device_status", 1000, 1000, NULL, -1, NULL); /* no clinic */
    assert_int_equal(nt_audit__agg_row(c1, COLS, r.f, r.len), 0);
    assert_int_equal(nt_audit__agg_merge(g, c1), 0);
    assert_int_equal(nt_audit__agg_merge(g, c2), 0);
    nt_audit__agg_free(c1);
    nt_audit__agg_free(c2);
    assert_null(nt_audit__agg_error(g));

    int64_t started, carts;
    nt_audit__agg_counts(g, &started, &carts);
    assert_int_equal(started, 1);
    assert_int_equal(carts, 1);
    nt_audit_arr_t pens[8], depth[4];
    assert_int_equal(nt_audit__agg_pens(g, pens), 0);
    assert_int_equal(pens[0].n, 4); /* A/P1 boots 1 and 2, Z/P9 boot 3, (NULL)/P0 */
    int64_t rows = 0, a_dt = 0, a_ra = 0, b_dt = 0, b_ra = 0;
    for (uint32_t i = 0; i < pens[3].n; i++) {
        rows += arr_i64(&pens[3], i);
        if (arr_i64(&pens[2], i) == 1 && arr_i64(&pens[3], i) == 2) { /* A/P1 boot 1 */
            a_dt = arr_i64(&pens[4], i), a_ra = arr_i64(&pens[5], i);
            b_dt = arr_i64(&pens[6], i), b_ra = arr_i64(&pens[7], i);
        }
    }
    assert_int_equal(rows, 6); /* all but the one after the period and Z's before its own */
    assert_int_equal(a_dt - a_ra, 999); /* furthest ahead: 4999 - 4000 */
    assert_int_equal(b_ra - b_dt, 500); /* furthest behind: 1500 - 1000 */
    assert_int_equal(nt_audit__agg_depth(g, depth), 0);
    assert_int_equal(depth[0].n, 2); /* A: unspecified 250 (300 um), chin 250 (499 um) */
    int seen = 0;
    for (uint32_t i = 0; i < depth[0].n; i++) {
        int32_t la, lb, lc;
        const unsigned char *area = arr_elem(&depth[1], i, &la);
        const unsigned char *bucket = arr_elem(&depth[2], i, &lb);
        const unsigned char *clinic = arr_elem(&depth[0], i, &lc);
        assert_int_equal(lc, 1);
        assert_memory_equal(clinic, "A", 1);
        assert_int_equal(lb, 4);
        assert_int_equal((bucket[0] << 24 | bucket[1] << 16 | bucket[2] << 8 | bucket[3]), 250);
        assert_int_equal(arr_i64(&depth[3], i), 1);
        seen |= (la == 4 && memcmp(area, "chin", 4) == 0)            ? 1
                : (la == 11 && memcmp(area, "unspecified", 11) == 0) ? 2
                                                                     : 4;
    }
    assert_int_equal(seen, 3);
    nt_audit__arrs_free(pens, 8);
    nt_audit__arrs_free(depth, 4);
    nt_audit__agg_free(g);
}

/* One clinic only: the others' rows are not counted. */
static void test_clinic_filter(void **state)
{
    (void)state;
    nt_audit_agg_t *g = nt_audit__agg_new("B", 0, 100);
    row_t r;
    row_event(&r, "A", "P1", 1, "session_started", 10, 10, "S", -1, NULL);
    nt_audit__agg_row(g, COLS, r.f, r.len);
    row_event(&r, "B", "P1", 1, "session_started", 10, 10, "S", -1, NULL);
    nt_audit__agg_row(g, COLS, r.f, r.len);
    row_event(&r, "BB", "P1", 1, "session_started", 10, 10, "S", -1, NULL);
    nt_audit__agg_row(g, COLS, r.f, r.len);
    int64_t started, carts;
    nt_audit__agg_counts(g, &started, &carts);
    assert_int_equal(started, 1);
    nt_audit__agg_free(g);
}

/* A session with more areas than the schema allows (its CHECK dropped): the figures refused,
 * saying why, not slowed down; 64 are still counted. */
static void areas(int n, int want_error)
{
    nt_audit_agg_t *g = nt_audit__agg_new(NULL, 0, 100);
    row_t r;
    char area[32];
    for (int i = 0; i < n; i++) {
        snprintf(area, sizeof(area), "area-%d", i);
        row_event(&r, "A", "P1", 1, "needle_setting", 10, 10, "S", 300, area);
        nt_audit__agg_row(g, COLS, r.f, r.len);
    }
    if (want_error) {
        assert_non_null(nt_audit__agg_error(g));
        assert_non_null(strstr(nt_audit__agg_error(g), "treatment areas"));
    } else {
        assert_null(nt_audit__agg_error(g));
    }
    nt_audit__agg_free(g);
}

static void test_too_many_areas(void **state)
{
    (void)state;
    areas(64, 0);
    areas(65, 1);
}

/* Rows of any shape: long values (keys past the stack's room), NULLs anywhere, wrong lengths. */
static void test_hostile_rows(void **state)
{
    (void)state;
    nt_audit_agg_t *g = nt_audit__agg_new(NULL, INT64_MIN, INT64_MAX);
    nt_audit_agg_t *c[2] = {nt_audit__agg_child(g), nt_audit__agg_child(g)};
    unsigned char *big = malloc(5000);
    for (int i = 0; i < 5000; i++) {
        big[i] = (unsigned char)('a' + i % 26);
    }
    srand(11);
    for (int i = 0; i < 20000; i++) {
        row_t r;
        row_init(&r);
        for (int col = 0; col < COLS; col++) {
            int pick = rand() % 6;
            if (pick == 0) {
                continue; /* NULL */
            }
            if (col == 2 || col == 5 || col == 6) {
                row_int(&r, col, (int64_t)rand() * (rand() % 2 ? 1 : -1) * 1000003LL, 8);
            } else if (col == 20) {
                row_int(&r, col, rand() - RAND_MAX / 2, 4);
            } else if (col == 4) {
                static const char *kinds[] = {"needle_activity", "needle_setting",
                                              "session_started", "cartridge_mounted", "x"};
                row_text(&r, col, kinds[rand() % 5]);
            } else {
                r.f[col] = big + rand() % 100;
                r.len[col] = pick == 1 ? 4000 + rand() % 900 : rand() % 8; /* long, or few */
            }
        }
        nt_audit__agg_row(c[i % 2], COLS, r.f, r.len);
    }
    for (int k = 0; k < 2; k++) {
        nt_audit__agg_merge(g, c[k]);
        nt_audit__agg_free(c[k]);
    }
    nt_audit_arr_t pens[8], depth[4];
    assert_null(nt_audit__agg_error(g)); /* this seed: no session with 65 areas */
    assert_int_equal(nt_audit__agg_pens(g, pens), 0);
    assert_int_equal(nt_audit__agg_depth(g, depth), 0);
    assert_true(pens[0].n > 1000);
    nt_audit__arrs_free(pens, 8);
    nt_audit__arrs_free(depth, 4);
    free(big);
    nt_audit__agg_free(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_array_binary),  cmocka_unit_test(test_figures),
        cmocka_unit_test(test_clinic_filter), cmocka_unit_test(test_too_many_areas),
        cmocka_unit_test(test_hostile_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
