/* test_ident.c -- unit tests of the identifier, UTF-8, GTIN, GS1 text and date checks (ident). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <locale.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "needletrace/ident.h"

/* ---- oracles written independently of ident.c ------------------------------------------------ */

static const char id_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";

/* 1 when c is one of the NUL-terminated set (never matches the terminator itself). */
static int in_set(unsigned char c, const char *set)
{
    for (const char *p = set; *p != '\0'; p++) {
        if ((unsigned char)*p == c) {
            return 1;
        }
    }
    return 0;
}

/* A copy of s[0..len) in a heap block of exactly len bytes, so that valgrind and ASan catch
 * any read past len. */
static char *exact(const void *s, size_t len)
{
    char *p = malloc(len > 0 ? len : 1);
    assert_non_null(p);
    memcpy(p, s, len);
    return p;
}

/* ---- identifiers ----------------------------------------------------------------------------- */

static void test_id_length_bounds(void **state)
{
    char buf[NT_IDENT_MAX_ID_LEN + 2];
    memset(buf, 'a', sizeof(buf));
    assert_false(nt_ident_id_valid(buf, 0));
    assert_true(nt_ident_id_valid(buf, 1));
    assert_true(nt_ident_id_valid(buf, 63));
    assert_true(nt_ident_id_valid(buf, 64));
    assert_false(nt_ident_id_valid(buf, 65));
    assert_false(nt_ident_id_valid(NULL, 0));
    assert_false(nt_ident_id_valid(NULL, 5));

    /* All 65 allowed characters: 64 of them fit, all 65 do not. */
    assert_int_equal(strlen(id_chars), 65);
    assert_true(nt_ident_id_valid(id_chars, 64));
    assert_true(nt_ident_id_valid(id_chars + 1, 64));
    assert_false(nt_ident_id_valid(id_chars, 65));

    /* NUL-terminated variant: length from the string, bounded. */
    buf[64] = '\0';
    assert_true(nt_ident_id_valid_str(buf));
    buf[64] = 'a';
    buf[65] = '\0';
    assert_false(nt_ident_id_valid_str(buf));
    assert_false(nt_ident_id_valid_str(""));
    assert_false(nt_ident_id_valid_str(NULL));
    assert_true(nt_ident_id_valid_str("clinic-7"));
    assert_true(nt_ident_id_valid_str("HP_0001.v2"));
    char *longs = malloc(10001);
    assert_non_null(longs);
    memset(longs, 'x', 10000);
    longs[10000] = '\0';
    assert_false(nt_ident_id_valid_str(longs));
    free(longs);
}

static void test_id_every_byte(void **state)
{
    for (unsigned c = 0; c < 256; c++) {
        char s[3] = {'a', (char)c, 'b'};
        int want = in_set((unsigned char)c, id_chars);
        assert_int_equal(nt_ident_id_valid(s, 3), want);
        assert_int_equal(nt_ident_id_valid(s + 1, 1), want);
        assert_int_equal(nt_ident_session_id_valid(s, 3), want || c == ':');
        assert_int_equal(nt_ident_is_alnum((unsigned char)c),
                         in_set((unsigned char)c, id_chars) && c != '.' && c != '_' && c != '-');
    }
}

static void test_id_rejects(void **state)
{
    assert_false(nt_ident_id_valid("ab\0cd", 5)); /* NUL inside */
    assert_true(nt_ident_id_valid("ab\0cd", 2));  /* only the given length counts */
    assert_false(nt_ident_id_valid("clinic 7", 8));
    assert_false(nt_ident_id_valid("clinic/7", 8));
    assert_false(nt_ident_id_valid("clinic+", 7));
    assert_false(nt_ident_id_valid("clinic#", 7));
    assert_false(nt_ident_id_valid("a:b", 3));
    assert_false(nt_ident_id_valid("caf\xc3\xa9", 5));
    assert_false(nt_ident_id_valid("\x80", 1));
    assert_false(nt_ident_id_valid("\xff", 1));
}

/* Whatever LC_CTYPE says, only ASCII letters and digits are letters and digits. */
static void test_id_locale_independent(void **state)
{
    const char *loc = setlocale(LC_ALL, "C.UTF-8");
    if (loc == NULL) {
        loc = setlocale(LC_ALL, "C.utf8");
    }
    if (loc == NULL) {
        skip();
    }
    assert_false(nt_ident_id_valid("caf\xc3\xa9", 5)); /* é in UTF-8 */
    assert_false(nt_ident_id_valid("caf\xe9", 4));     /* é in Latin-1 */
    assert_false(nt_ident_session_id_valid("S-\xc3\xa9", 4));
    assert_false(nt_ident_id_valid_str("\xc3\x89t\xc3\xa9"));
    for (unsigned c = 0x80; c < 256; c++) {
        assert_false(nt_ident_is_alnum((unsigned char)c));
        char s[1] = {(char)c};
        assert_false(nt_ident_id_valid(s, 1));
    }
    assert_true(nt_ident_id_valid("cafe", 4));
    setlocale(LC_ALL, "C");
}

static void test_session_id(void **state)
{
    assert_true(nt_ident_session_id_valid("S-1", 3));
    assert_true(nt_ident_session_id_valid("2025-01-01T12:00:00", 19));
    assert_true(nt_ident_session_id_valid(":", 1));
    assert_false(nt_ident_session_id_valid("", 0));
    assert_false(nt_ident_session_id_valid(NULL, 3));
    assert_false(nt_ident_session_id_valid("S 1", 3));
    assert_false(nt_ident_session_id_valid("S/1", 3));
    assert_false(nt_ident_session_id_valid("S\0001", 3));
    char buf[NT_IDENT_MAX_SESSION_ID_LEN + 1];
    memset(buf, ':', sizeof(buf));
    assert_true(nt_ident_session_id_valid(buf, 64));
    assert_false(nt_ident_session_id_valid(buf, 65));
}

/* ---- UTF-8 ----------------------------------------------------------------------------------- */

typedef struct {
    const char *s;
    size_t len;
    size_t invalid_at; /* == len when well-formed */
} utf8_case_t;

#define U(lit, at)                                                                                 \
    {                                                                                              \
        lit, sizeof(lit) - 1, (at)                                                                 \
    }
#define OK(lit)                                                                                    \
    {                                                                                              \
        lit, sizeof(lit) - 1, sizeof(lit) - 1                                                      \
    }

static const utf8_case_t utf8_cases[] = {
    OK(""),
    OK("plain ascii"),
    OK("\x7f"),
    /* well-formed, Unicode table 3-7 row by row, both ends of each range */
    OK("\xc2\x80"),
    OK("\xdf\xbf"),
    OK("\xe0\xa0\x80"),
    OK("\xe0\xbf\xbf"),
    OK("\xe1\x80\x80"),
    OK("\xec\xbf\xbf"),
    OK("\xed\x80\x80"),
    OK("\xed\x9f\xbf"),
    OK("\xee\x80\x80"),
    OK("\xef\xbf\xbf"),
    OK("\xf0\x90\x80\x80"),
    OK("\xf0\xbf\xbf\xbf"),
    OK("\xf1\x80\x80\x80"),
    OK("\xf3\xbf\xbf\xbf"),
    OK("\xf4\x80\x80\x80"),
    OK("\xf4\x8f\xbf\xbf"),
    OK("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80!"),
    /* lone continuation bytes and bytes that never appear */
    U("\x80", 0),
    U("\xbf", 0),
    U("ab\x80", 2),
    U("\xc0\x80", 0), /* overlong NUL */
    U("\xc1\xbf", 0), /* overlong 0x7f */
    U("\xf5\x80\x80\x80", 0),
    U("\xf8\x88\x80\x80\x80", 0),
    U("\xfe", 0),
    U("\xff", 0),
    /* overlong 3- and 4-byte forms */
    U("\xe0\x80\x80", 0),
    U("\xe0\x9f\xbf", 0),
    U("\xf0\x80\x80\x80", 0),
    U("\xf0\x8f\xbf\xbf", 0),
    /* surrogates */
    U("\xed\xa0\x80", 0),
    U("\xed\xbf\xbf", 0),
    U("x\xed\xb0\x80", 1),
    /* above U+10FFFF */
    U("\xf4\x90\x80\x80", 0),
    U("\xf4\xbf\xbf\xbf", 0),
    /* truncated at the end */
    U("\xc2", 0),
    U("abc\xc3", 3),
    U("\xe2\x82", 0),
    U("ab\xe2\x82", 2),
    U("\xe2", 0),
    U("\xf0\x9f\x98", 0),
    U("\xf0\x9f", 0),
    U("\xf0", 0),
    U("ok\xf4\x8f\xbf", 2),
    /* a bad continuation byte inside a sequence */
    U("\xc3\x28", 0),
    U("\xe2\x28\xa1", 0),
    U("\xe2\x82\x28", 0),
    U("\xf0\x90\x28\xbc", 0),
    U("\xf0\x90\x8c\x28", 0),
    U("\xc3\xa9\xc3", 2),
    U("\xc3\xa9\xc3\xc3", 2),
};

static void test_utf8_table(void **state)
{
    for (size_t i = 0; i < sizeof(utf8_cases) / sizeof(utf8_cases[0]); i++) {
        const utf8_case_t *c = &utf8_cases[i];
        char *p = exact(c->s, c->len);
        size_t got = nt_ident_utf8_invalid_at(p, c->len);
        if (got != c->invalid_at) {
            fail_msg("case %zu: invalid_at %zu, want %zu", i, got, c->invalid_at);
        }
        assert_int_equal(nt_ident_utf8_valid(p, c->len), c->invalid_at == c->len);
        free(p);
    }
    assert_true(nt_ident_utf8_valid(NULL, 0));
    assert_false(nt_ident_utf8_valid(NULL, 1));
}

/* The eight-bytes-at-a-time ASCII path: an invalid byte at every offset is found exactly. */
static void test_utf8_fast_path_offsets(void **state)
{
    for (size_t total = 1; total <= 24; total++) {
        for (size_t off = 0; off < total && off <= 16; off++) {
            for (int bad = 0; bad < 3; bad++) {
                static const unsigned char bads[3] = {0x80, 0xff, 0xc0};
                char *p = malloc(total);
                assert_non_null(p);
                memset(p, 'a', total);
                p[off] = (char)bads[bad];
                size_t got = nt_ident_utf8_invalid_at(p, total);
                if (got != off) {
                    fail_msg("len %zu, bad byte 0x%02x at %zu: invalid_at %zu", total, bads[bad],
                             off, got);
                }
                assert_false(nt_ident_utf8_valid(p, total));
                /* Shortened so that the bad byte is past len: valid, and nothing is read. */
                assert_true(nt_ident_utf8_valid(p, off));
                free(p);
            }
        }
        char *ascii = malloc(total);
        assert_non_null(ascii);
        memset(ascii, 'z', total);
        assert_int_equal(nt_ident_utf8_invalid_at(ascii, total), total);
        free(ascii);
    }
}

/* Multi-byte sequences straddling the 8-byte blocks. */
static void test_utf8_straddling(void **state)
{
    static const char *const seqs[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    for (size_t k = 0; k < 3; k++) {
        size_t n = strlen(seqs[k]);
        for (size_t off = 0; off <= 16; off++) {
            char buf[32];
            memset(buf, 'a', sizeof(buf));
            memcpy(buf + off, seqs[k], n);
            assert_int_equal(nt_ident_utf8_invalid_at(buf, 24), 24);
            /* Cut inside the sequence: invalid at its start. */
            for (size_t cut = 1; cut < n; cut++) {
                char *p = exact(buf, off + cut);
                assert_int_equal(nt_ident_utf8_invalid_at(p, off + cut), off);
                free(p);
            }
            /* Its last byte replaced by ASCII: invalid at its start. */
            buf[off + n - 1] = 'a';
            assert_int_equal(nt_ident_utf8_invalid_at(buf, 24), off);
        }
    }
}

typedef struct {
    const char *s;
    size_t len;
    uint32_t cp;
} decode_case_t;

static void test_utf8_decode(void **state)
{
    static const decode_case_t ok[] = {
        {"A", 1, 0x41},
        {"\x00", 1, 0},
        {"\x7f", 1, 0x7f},
        {"\xc2\x80", 2, 0x80},
        {"\xc3\xa9", 2, 0xe9},
        {"\xdf\xbf", 2, 0x7ff},
        {"\xe0\xa0\x80", 3, 0x800},
        {"\xe2\x82\xac", 3, 0x20ac},
        {"\xed\x9f\xbf", 3, 0xd7ff},
        {"\xee\x80\x80", 3, 0xe000},
        {"\xef\xbf\xbf", 3, 0xffff},
        {"\xf0\x90\x80\x80", 4, 0x10000},
        {"\xf0\x9f\x98\x80", 4, 0x1f600},
        {"\xf4\x8f\xbf\xbf", 4, 0x10ffff},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char *p = exact(ok[i].s, ok[i].len);
        uint32_t cp = 0xdeadbeef;
        assert_int_equal(nt_ident_utf8_decode(p, ok[i].len, &cp), ok[i].len);
        assert_int_equal(cp, ok[i].cp);
        free(p);
        /* Followed by more bytes: only the first sequence is decoded. */
        char buf[8];
        memcpy(buf, ok[i].s, ok[i].len);
        memcpy(buf + ok[i].len, "\xc3\xa9z", 3);
        cp = 0;
        assert_int_equal(nt_ident_utf8_decode(buf, ok[i].len + 3, &cp), ok[i].len);
        assert_int_equal(cp, ok[i].cp);
        /* Any shorter len: nothing decoded, *cp untouched, nothing read past len (the heap
         * block ends at len). */
        for (size_t cut = 0; cut < ok[i].len; cut++) {
            char *q = exact(ok[i].s, cut);
            cp = 0xdeadbeef;
            assert_int_equal(nt_ident_utf8_decode(q, cut, &cp), 0);
            assert_int_equal(cp, 0xdeadbeef);
            free(q);
        }
    }
    /* Every ill-formed case of the table above decodes to nothing at its bad offset. */
    for (size_t i = 0; i < sizeof(utf8_cases) / sizeof(utf8_cases[0]); i++) {
        const utf8_case_t *c = &utf8_cases[i];
        if (c->invalid_at == c->len) {
            continue;
        }
        size_t rest = c->len - c->invalid_at;
        char *p = exact(c->s + c->invalid_at, rest);
        uint32_t cp = 0xdeadbeef;
        assert_int_equal(nt_ident_utf8_decode(p, rest, &cp), 0);
        assert_int_equal(cp, 0xdeadbeef);
        free(p);
    }
}

/* Decoding every code point's encoding (built here from the definition) gives it back; the
 * surrogates' encodings are rejected. */
static void test_utf8_decode_all_code_points(void **state)
{
    for (uint32_t v = 0; v <= 0x10ffff; v++) {
        unsigned char b[4];
        size_t n;
        if (v < 0x80) {
            b[0] = (unsigned char)v;
            n = 1;
        } else if (v < 0x800) {
            b[0] = (unsigned char)(0xc0 | (v >> 6));
            b[1] = (unsigned char)(0x80 | (v & 0x3f));
            n = 2;
        } else if (v < 0x10000) {
            b[0] = (unsigned char)(0xe0 | (v >> 12));
            b[1] = (unsigned char)(0x80 | ((v >> 6) & 0x3f));
            b[2] = (unsigned char)(0x80 | (v & 0x3f));
            n = 3;
        } else {
            b[0] = (unsigned char)(0xf0 | (v >> 18));
            b[1] = (unsigned char)(0x80 | ((v >> 12) & 0x3f));
            b[2] = (unsigned char)(0x80 | ((v >> 6) & 0x3f));
            b[3] = (unsigned char)(0x80 | (v & 0x3f));
            n = 4;
        }
        uint32_t cp = 0xdeadbeef;
        size_t got = nt_ident_utf8_decode((const char *)b, n, &cp);
        int surrogate = v >= 0xd800 && v <= 0xdfff;
        if (surrogate) {
            if (got != 0) {
                fail_msg("surrogate U+%04X decoded", (unsigned)v);
            }
            assert_int_equal(nt_ident_utf8_invalid_at((const char *)b, n), 0);
        } else if (got != n || cp != v) {
            fail_msg("U+%04X: got length %zu, code point %X", (unsigned)v, got, (unsigned)cp);
        }
    }
}

/* ---- GTIN ------------------------------------------------------------------------------------ */

/* 1 when the 14 digits satisfy the GS1 rule read from the left: weights 3,1,3,... on the first
 * 13 digits plus the check digit add up to a multiple of 10. */
static int gtin_oracle(const char *s)
{
    unsigned sum = 0;
    for (int i = 0; i < 14; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        sum += (i < 13 && i % 2 == 0) ? 3 * d : d;
    }
    return sum % 10 == 0;
}

static void test_gtin_known(void **state)
{
    /* GS1's own example GTIN, and EAN-13 4006381333931 padded to 14 digits. */
    assert_true(nt_ident_gtin_valid("09506000134352", 14));
    assert_true(nt_ident_gtin_valid("04006381333931", 14));
    assert_int_equal(nt_ident_gtin_check_digit("0950600013435"), '2');
    assert_int_equal(nt_ident_gtin_check_digit("0400638133393"), '1');
    assert_true(nt_ident_gtin_valid("00000000000000", 14));
    assert_true(gtin_oracle("09506000134352"));
    assert_true(gtin_oracle("04006381333931"));
}

static void test_gtin_wrong_check_digit(void **state)
{
    static const char *const good[] = {"09506000134352", "04006381333931", "00000000000000"};
    for (size_t g = 0; g < 3; g++) {
        char s[15];
        memcpy(s, good[g], 15);
        int valid = 0;
        for (char d = '0'; d <= '9'; d++) {
            s[13] = d;
            int v = nt_ident_gtin_valid(s, 14);
            assert_int_equal(v, d == good[g][13]);
            valid += v;
        }
        assert_int_equal(valid, 1);
        /* A single changed data digit breaks it (mod 10 with weights 1 and 3 catches it). */
        memcpy(s, good[g], 15);
        for (int i = 0; i < 13; i++) {
            char orig = s[i];
            s[i] = (char)('0' + (orig - '0' + 1) % 10);
            assert_false(nt_ident_gtin_valid(s, 14));
            s[i] = orig;
        }
    }
}

static void test_gtin_against_oracle(void **state)
{
    uint64_t x = 88172645463325252ull;
    for (int k = 0; k < 20000; k++) {
        char s[15];
        for (int i = 0; i < 14; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s[i] = (char)('0' + x % 10);
        }
        s[14] = '\0';
        assert_int_equal(nt_ident_gtin_valid(s, 14), gtin_oracle(s));
        s[13] = nt_ident_gtin_check_digit(s);
        assert_true(gtin_oracle(s));
        assert_true(nt_ident_gtin_valid(s, 14));
    }
}

static void test_gtin_shape(void **state)
{
    assert_false(nt_ident_gtin_valid("0950600013435", 13));   /* 13 digits */
    assert_false(nt_ident_gtin_valid("4006381333931", 13));   /* an EAN-13 as such */
    assert_false(nt_ident_gtin_valid("095060001343520", 15)); /* 15 digits */
    assert_false(nt_ident_gtin_valid("009506000134352", 15)); /* 15, padded */
    assert_false(nt_ident_gtin_valid("0950600013435A", 14));  /* letter as check digit */
    assert_false(nt_ident_gtin_valid("O9506000134352", 14));  /* letter O for zero */
    assert_false(nt_ident_gtin_valid("0950600013435 2", 14)); /* space inside */
    assert_false(nt_ident_gtin_valid("09506000134352", 0));
    assert_false(nt_ident_gtin_valid(NULL, 14));
    assert_false(nt_ident_gtin_valid("0950600013435\0"
                                     "2",
                                     14)); /* NUL inside */
    /* ':' is '0' + 10: must not pass as a digit with value 10. */
    assert_false(nt_ident_gtin_valid("0950600013435:", 14));
    assert_false(nt_ident_gtin_valid("095060001343/2", 14));
}

/* ---- GS1 text -------------------------------------------------------------------------------- */

static void test_gs1_text(void **state)
{
    assert_true(nt_ident_gs1_text_valid("LOT-A1", 6));
    assert_true(nt_ident_gs1_text_valid("!", 1));
    assert_true(nt_ident_gs1_text_valid("~", 1));
    assert_false(nt_ident_gs1_text_valid("", 0));
    assert_false(nt_ident_gs1_text_valid(NULL, 3));
    char buf[NT_IDENT_MAX_GS1_TEXT_LEN + 1];
    memset(buf, 'Z', sizeof(buf));
    assert_true(nt_ident_gs1_text_valid(buf, 20));
    assert_false(nt_ident_gs1_text_valid(buf, 21));
    for (unsigned c = 0; c < 256; c++) {
        char s[3] = {'A', (char)c, 'B'};
        assert_int_equal(nt_ident_gs1_text_valid(s, 3), c >= 0x21 && c <= 0x7e);
    }
    assert_false(nt_ident_gs1_text_valid("LOT A1", 6));
    assert_false(nt_ident_gs1_text_valid("LOT\x7f", 4));
    assert_false(nt_ident_gs1_text_valid("LOT\0A", 5));
    assert_false(nt_ident_gs1_text_valid("L\xc3\xa9", 3));
}

/* ---- calendar -------------------------------------------------------------------------------- */

static void test_leap_years(void **state)
{
    assert_false(nt_ident_is_leap(1900));
    assert_true(nt_ident_is_leap(2000));
    assert_true(nt_ident_is_leap(2024));
    assert_false(nt_ident_is_leap(2100));
    assert_false(nt_ident_is_leap(2023));
    assert_true(nt_ident_is_leap(1600));
    assert_true(nt_ident_is_leap(2400));
    assert_true(nt_ident_is_leap(0)); /* proleptic: year 0 is 1 BC, a leap year */
    assert_true(nt_ident_is_leap(-4));
    assert_false(nt_ident_is_leap(-100));
    assert_true(nt_ident_is_leap(-400));
    assert_false(nt_ident_is_leap(-1));
}

/* The day after the last day of month m is the first of the next month (timegm as oracle). */
static unsigned days_oracle(int y, unsigned m)
{
    for (unsigned d = 31; d >= 28; d--) {
        struct tm tm = {0};
        tm.tm_year = y - 1900;
        tm.tm_mon = (int)m - 1;
        tm.tm_mday = (int)d;
        tm.tm_hour = 12;
        time_t t = timegm(&tm);
        assert_true(t != (time_t)-1);
        if (tm.tm_mon == (int)m - 1 && tm.tm_mday == (int)d) {
            return d;
        }
    }
    fail_msg("no last day for %d-%u", y, m);
    return 0;
}

static void test_days_in_month(void **state)
{
    static const unsigned y2023[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    for (unsigned m = 1; m <= 12; m++) {
        assert_int_equal(nt_ident_days_in_month(2023, m), y2023[m - 1]);
        assert_int_equal(nt_ident_days_in_month(2024, m), m == 2 ? 29 : y2023[m - 1]);
    }
    assert_int_equal(nt_ident_days_in_month(1900, 2), 28);
    assert_int_equal(nt_ident_days_in_month(2000, 2), 29);
    assert_int_equal(nt_ident_days_in_month(2100, 2), 28);
    assert_int_equal(nt_ident_days_in_month(2024, 0), 0);
    assert_int_equal(nt_ident_days_in_month(2024, 13), 0);
    for (int y = 1890; y <= 2110; y++) {
        for (unsigned m = 1; m <= 12; m++) {
            assert_int_equal(nt_ident_days_in_month(y, m), days_oracle(y, m));
        }
    }
}

static void test_gs1_dates(void **state)
{
    assert_true(nt_ident_gs1_date_valid(20240229));
    assert_false(nt_ident_gs1_date_valid(20240230));
    assert_false(nt_ident_gs1_date_valid(20230229));
    assert_true(nt_ident_gs1_date_valid(20230228));
    assert_true(nt_ident_gs1_date_valid(20240200)); /* day 00: last day of the month */
    assert_true(nt_ident_gs1_date_valid(20230200));
    assert_true(nt_ident_gs1_date_valid(20271200));
    assert_true(nt_ident_gs1_date_valid(20000101));
    assert_true(nt_ident_gs1_date_valid(20991231));
    assert_false(nt_ident_gs1_date_valid(19991231));
    assert_false(nt_ident_gs1_date_valid(21000101));
    assert_false(nt_ident_gs1_date_valid(21000100));
    assert_false(nt_ident_gs1_date_valid(20231301));
    assert_false(nt_ident_gs1_date_valid(20230001));
    assert_false(nt_ident_gs1_date_valid(20230000));
    assert_false(nt_ident_gs1_date_valid(20230431));
    assert_false(nt_ident_gs1_date_valid(20231232));
    assert_false(nt_ident_gs1_date_valid(0));
    assert_false(nt_ident_gs1_date_valid(2024022)); /* seven digits: year 202 */
    assert_false(nt_ident_gs1_date_valid(UINT32_MAX));

    /* Every year of the range against the calendar. */
    for (int y = 1998; y <= 2101; y++) {
        for (unsigned m = 0; m <= 13; m++) {
            for (unsigned d = 0; d <= 32; d++) {
                int want = y >= 2000 && y <= 2099 && m >= 1 && m <= 12 &&
                           (d == 0 || d <= days_oracle(y, m));
                uint32_t v = (uint32_t)y * 10000 + m * 100 + d;
                if (nt_ident_gs1_date_valid(v) != want) {
                    fail_msg("%08u: want %d", (unsigned)v, want);
                }
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_id_length_bounds),
        cmocka_unit_test(test_id_every_byte),
        cmocka_unit_test(test_id_rejects),
        cmocka_unit_test(test_id_locale_independent),
        cmocka_unit_test(test_session_id),
        cmocka_unit_test(test_utf8_table),
        cmocka_unit_test(test_utf8_fast_path_offsets),
        cmocka_unit_test(test_utf8_straddling),
        cmocka_unit_test(test_utf8_decode),
        cmocka_unit_test(test_utf8_decode_all_code_points),
        cmocka_unit_test(test_gtin_known),
        cmocka_unit_test(test_gtin_wrong_check_digit),
        cmocka_unit_test(test_gtin_against_oracle),
        cmocka_unit_test(test_gtin_shape),
        cmocka_unit_test(test_gs1_text),
        cmocka_unit_test(test_leap_years),
        cmocka_unit_test(test_days_in_month),
        cmocka_unit_test(test_gs1_dates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
