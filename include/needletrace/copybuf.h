/* copybuf.h -- builds a PostgreSQL binary COPY stream (header, tuples, trailer) in memory. */
#ifndef NEEDLETRACE_COPYBUF_H
#define NEEDLETRACE_COPYBUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
    uint32_t rows;
    int oom;             /* set when a growth failed; every later call is a no-op */
    uint16_t fields_due; /* fields the current row still needs */
    int miscounted;      /* a row got more or fewer fields than nt_copybuf_row announced */
} nt_copybuf_t;

/* Empty buffer, no allocation yet. */
void nt_copybuf_init(nt_copybuf_t *b);
/* Drops the content (keeps the memory) and writes the 19-byte COPY BINARY header. */
void nt_copybuf_reset(nt_copybuf_t *b);
void nt_copybuf_close(nt_copybuf_t *b);

/* Starts a tuple of ncols fields; then exactly ncols field calls must follow. The buffer
 * counts them: a row with more or fewer makes nt_copybuf_finish() fail with NT_ECORRUPT
 * (a writer's bug never reaches the database as a shifted column). */
void nt_copybuf_row(nt_copybuf_t *b, uint16_t ncols);
void nt_copybuf_null(nt_copybuf_t *b);
void nt_copybuf_bool(nt_copybuf_t *b, int v);
void nt_copybuf_int2(nt_copybuf_t *b, int16_t v);
void nt_copybuf_int4(nt_copybuf_t *b, int32_t v);
void nt_copybuf_int8(nt_copybuf_t *b, int64_t v);
/* text and bytea: the bytes as given (text must already be valid UTF-8 without NUL). */
void nt_copybuf_bytes(nt_copybuf_t *b, const void *p, size_t len);
void nt_copybuf_text(nt_copybuf_t *b, const char *s); /* NUL-terminated; NULL writes SQL NULL */
/* timestamptz from Unix microseconds. */
void nt_copybuf_timestamptz(nt_copybuf_t *b, int64_t unix_us);
/* date from a yyyymmdd integer (day 00 = last day of the month, as GS1 expiry dates). */
void nt_copybuf_date_yyyymmdd(nt_copybuf_t *b, uint32_t yyyymmdd);

/* Appends the trailer (-1). After it the buffer is a complete COPY stream. Returns 0,
 * NT_ENOMEM if any growth failed since the reset, or NT_ECORRUPT if a row's field count did
 * not match what nt_copybuf_row() announced. */
int nt_copybuf_finish(nt_copybuf_t *b);

#endif
