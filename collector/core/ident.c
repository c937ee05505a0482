/* ident.c -- identifier, UTF-8, GTIN and date checks shared by every module (see ident.h). */
#include "needletrace/ident.h"

#include <string.h>

int nt_ident_is_alnum(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* 1 when s[0..len) is 1..max characters of [A-Za-z0-9] plus the characters of extra. */
static int ident__chars(const char *s, size_t len, size_t max, const char *extra)
{
    if (s == NULL || len == 0 || len > max) {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!nt_ident_is_alnum(c) && (c == '\0' || strchr(extra, c) == NULL)) {
            return 0;
        }
    }
    return 1;
}

int nt_ident_id_valid(const char *s, size_t len)
{
    return ident__chars(s, len, NT_IDENT_MAX_ID_LEN, "._-");
}

int nt_ident_id_valid_str(const char *s)
{
    return s != NULL && nt_ident_id_valid(s, strnlen(s, NT_IDENT_MAX_ID_LEN + 1));
}

int nt_ident_session_id_valid(const char *s, size_t len)
{
    return ident__chars(s, len, NT_IDENT_MAX_SESSION_ID_LEN, "._:-");
}

/* Length of the well-formed sequence at s[0..len) (2-4 bytes, lead byte >= 0x80), 0 if none. */
static size_t ident__utf8_seq(const unsigned char *s, size_t len)
{
    unsigned char c = s[0];
    size_t n;                           /* continuation bytes */
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        n = 1;
    } else if (c == 0xE0) {
        n = 2;
        lo = 0xA0;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
        n = 2;
    } else if (c == 0xED) {
        n = 2;
        hi = 0x9F;
    } else if (c == 0xF0) {
        n = 3;
        lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
        n = 3;
    } else if (c == 0xF4) {
        n = 3;
        hi = 0x8F;
    } else {
        return 0;
    }
    if (len <= n || s[1] < lo || s[1] > hi) {
        return 0;
    }
    for (size_t k = 2; k <= n; k++) {
        if ((s[k] & 0xC0) != 0x80) {
            return 0;
        }
    }
    return n + 1;
}

size_t nt_ident_utf8_invalid_at(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        if (len - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, sizeof(w));
            if ((w & UINT64_C(0x8080808080808080)) == 0) {
                i += 8; /* eight ASCII bytes at a time */
                continue;
            }
        }
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = ident__utf8_seq(s + i, len - i);
        if (n == 0) {
            return i;
        }
        i += n;
    }
    return len;
}

int nt_ident_utf8_valid(const char *s, size_t len)
{
    if (s == NULL) {
        return len == 0;
    }
    return nt_ident_utf8_invalid_at(s, len) == len;
}

size_t nt_ident_utf8_decode(const char *str, size_t len, uint32_t *cp)
{
    const unsigned char *s = (const unsigned char *)str;
    if (len == 0) {
        return 0;
    }
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    size_t n = ident__utf8_seq(s, len);
    static const unsigned char lead_mask[5] = {0, 0, 0x1F, 0x0F, 0x07};
    if (n == 0) {
        return 0;
    }
    uint32_t v = s[0] & lead_mask[n];
    for (size_t k = 1; k < n; k++) {
        v = (v << 6) | (s[k] & 0x3F);
    }
    *cp = v;
    return n;
}

char nt_ident_gtin_check_digit(const char *base13)
{
    /* Weights 3, 1, 3, ... from the digit next to the check digit leftwards. */
    unsigned sum = 0;
    for (unsigned i = 0; i < 13; i++) {
        unsigned digit = (unsigned)(base13[12 - i] - '0');
        sum += (i % 2 == 0) ? digit * 3 : digit;
    }
    return (char)('0' + (10 - sum % 10) % 10);
}

int nt_ident_gtin_valid(const char *s, size_t len)
{
    if (s == NULL || len != NT_IDENT_GTIN_LEN) {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
    }
    return s[13] == nt_ident_gtin_check_digit(s);
}

int nt_ident_gs1_text_valid(const char *s, size_t len)
{
    if (s == NULL || len < 1 || len > NT_IDENT_MAX_GS1_TEXT_LEN) {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x21 || ch > 0x7E) {
            return 0;
        }
    }
    return 1;
}

int nt_ident_is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

unsigned nt_ident_days_in_month(int64_t y, unsigned m)
{
    static const unsigned days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m < 1 || m > 12) {
        return 0;
    }
    return m == 2 && nt_ident_is_leap(y) ? 29 : days[m - 1];
}

int nt_ident_gs1_date_valid(uint32_t v)
{
    unsigned y = v / 10000, m = v / 100 % 100, d = v % 100;
    if (y < 2000 || y > 2099 || m < 1 || m > 12) {
        return 0;
    }
    return d <= nt_ident_days_in_month(y, m);
}
