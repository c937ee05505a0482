/* copybuf.c -- builds a PostgreSQL binary COPY stream (header, tuples, trailer) in memory. */
#include "needletrace/copybuf.h"

#include "needletrace/ident.h"

#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"

#define COPYBUF_MIN_CAP 4096u

/* Unix time of 2000-01-01 00:00:00 UTC, the PostgreSQL epoch, in microseconds and days. */
#define PG_EPOCH_UNIX_US   INT64_C(946684800000000)
#define PG_EPOCH_UNIX_DAYS 10957

static const uint8_t copy_header[19] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n',
                                        0,   0,   0,   0,   0,   0,   0,    0,    0};

/* Grows the buffer so that n more bytes fit, doubling. On failure sets oom and returns NULL. */
static uint8_t *copybuf__reserve(nt_copybuf_t *b, size_t n)
{
    if (b->oom) {
        return NULL;
    }
    if (n > SIZE_MAX - b->len) {
        b->oom = 1;
        return NULL;
    }
    size_t need = b->len + n;
    if (need > b->cap) {
        size_t cap = b->cap < COPYBUF_MIN_CAP ? COPYBUF_MIN_CAP : b->cap;
        while (cap < need) {
            if (cap > SIZE_MAX / 2) {
                cap = need;
                break;
            }
            cap *= 2;
        }
        uint8_t *p = realloc(b->data, cap);
        if (p == NULL) {
            b->oom = 1;
            return NULL;
        }
        b->data = p;
        b->cap = cap;
    }
    uint8_t *at = b->data + b->len;
    b->len = need;
    return at;
}

static inline void copybuf__put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void copybuf__put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void copybuf__put64(uint8_t *p, uint64_t v)
{
    copybuf__put32(p, (uint32_t)(v >> 32));
    copybuf__put32(p + 4, (uint32_t)v);
}

/* Empty buffer; nothing is allocated until the first write. */
void nt_copybuf_init(nt_copybuf_t *b)
{
    memset(b, 0, sizeof(*b));
}

/* Clears the oom flag too: the header is the first write after the reset. */
void nt_copybuf_reset(nt_copybuf_t *b)
{
    b->len = 0;
    b->rows = 0;
    b->oom = 0;
    b->fields_due = 0;
    b->miscounted = 0;
    uint8_t *p = copybuf__reserve(b, sizeof(copy_header));
    if (p != NULL) {
        memcpy(p, copy_header, sizeof(copy_header));
    }
}

/* Frees the memory; the buffer is empty (as after init) afterwards. */
void nt_copybuf_close(nt_copybuf_t *b)
{
    free(b->data);
    nt_copybuf_init(b);
}

/* Counts one field of the current row. */
static inline void copybuf__field(nt_copybuf_t *b)
{
    if (b->fields_due == 0) {
        b->miscounted = 1;
    } else {
        b->fields_due--;
    }
}

/* Writes the field count; counts the row. */
void nt_copybuf_row(nt_copybuf_t *b, uint16_t ncols)
{
    if (b->fields_due != 0) {
        b->miscounted = 1;
    }
    b->fields_due = ncols;
    uint8_t *p = copybuf__reserve(b, 2);
    if (p != NULL) {
        copybuf__put16(p, ncols);
        b->rows++;
    }
}

/* A NULL field is a length of -1 with no data. */
void nt_copybuf_null(nt_copybuf_t *b)
{
    copybuf__field(b);
    uint8_t *p = copybuf__reserve(b, 4);
    if (p != NULL) {
        copybuf__put32(p, UINT32_MAX);
    }
}

/* bool: one byte, 0 or 1. */
void nt_copybuf_bool(nt_copybuf_t *b, int v)
{
    copybuf__field(b);
    uint8_t *p = copybuf__reserve(b, 5);
    if (p != NULL) {
        copybuf__put32(p, 1);
        p[4] = v ? 1 : 0;
    }
}

/* Integers: length, then the value in network byte order. */
void nt_copybuf_int2(nt_copybuf_t *b, int16_t v)
{
    copybuf__field(b);
    uint8_t *p = copybuf__reserve(b, 6);
    if (p != NULL) {
        copybuf__put32(p, 2);
        copybuf__put16(p + 4, (uint16_t)v);
    }
}

void nt_copybuf_int4(nt_copybuf_t *b, int32_t v)
{
    copybuf__field(b);
    uint8_t *p = copybuf__reserve(b, 8);
    if (p != NULL) {
        copybuf__put32(p, 4);
        copybuf__put32(p + 4, (uint32_t)v);
    }
}

void nt_copybuf_int8(nt_copybuf_t *b, int64_t v)
{
    copybuf__field(b);
    uint8_t *p = copybuf__reserve(b, 12);
    if (p != NULL) {
        copybuf__put32(p, 8);
        copybuf__put64(p + 4, (uint64_t)v);
    }
}

/* A field longer than 1 GiB cannot be sent (PostgreSQL's limit): it marks the buffer oom. */
void nt_copybuf_bytes(nt_copybuf_t *b, const void *data, size_t len)
{
    copybuf__field(b);
    if (len > 0x3fffffffu) {
        b->oom = 1;
        return;
    }
    uint8_t *p = copybuf__reserve(b, 4 + len);
    if (p != NULL) {
        copybuf__put32(p, (uint32_t)len);
        if (len > 0) {
            memcpy(p + 4, data, len);
        }
    }
}

void nt_copybuf_text(nt_copybuf_t *b, const char *s)
{
    if (s == NULL) {
        nt_copybuf_null(b);
        return;
    }
    nt_copybuf_bytes(b, s, strlen(s));
}

/* timestamptz on the wire: int8 microseconds since 2000-01-01 00:00:00 UTC. */
void nt_copybuf_timestamptz(nt_copybuf_t *b, int64_t unix_us)
{
    nt_copybuf_int8(b, (int64_t)((uint64_t)unix_us - (uint64_t)PG_EPOCH_UNIX_US));
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant's
 * days_from_civil). */
static int64_t copybuf__days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* date on the wire: int4 days since 2000-01-01. A value that is no calendar date (month
 * outside 1-12, day past the month's end, year 0) is written as SQL NULL. */
void nt_copybuf_date_yyyymmdd(nt_copybuf_t *b, uint32_t yyyymmdd)
{
    int64_t y = yyyymmdd / 10000;
    unsigned m = (yyyymmdd / 100) % 100;
    unsigned d = yyyymmdd % 100;
    if (y == 0 || m < 1 || m > 12 || d > nt_ident_days_in_month(y, m)) {
        nt_copybuf_null(b);
        return;
    }
    if (d == 0) {
        d = nt_ident_days_in_month(y, m);
    }
    nt_copybuf_int4(b, (int32_t)(copybuf__days_from_civil(y, m, d) - PG_EPOCH_UNIX_DAYS));
}

/* Appends the trailer; NT_ENOMEM if any growth failed since the reset. */
int nt_copybuf_finish(nt_copybuf_t *b)
{
    uint8_t *p = copybuf__reserve(b, 2);
    if (p != NULL) {
        copybuf__put16(p, UINT16_MAX);
    }
    if (b->fields_due != 0) {
        b->miscounted = 1;
    }
    return b->oom ? NT_ENOMEM : b->miscounted ? NT_ECORRUPT : 0;
}
