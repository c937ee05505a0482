/* test_journal.c -- unit tests of the CRC-32C paths and of the journal: format, recovery, roll,
 * release. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "needletrace/common.h"
#include "needletrace/crc32c.h"
#include "needletrace/journal.h"
#include "needletrace/log.h"

/* Internal paths of crc32c.c, declared there. */
uint32_t nt_crc32c__sw(uint32_t crc, const void *data, size_t len);
uint32_t nt_crc32c__hw(uint32_t crc, const void *data, size_t len);
int nt_crc32c__have_hw(void);

#define HDR   32u /* segment header */
#define FRAME 8u
#define FIXED 10u

typedef struct {
    char tmp[128]; /* mkdtemp directory, removed after the test */
    char dir[192]; /* journal directory inside it (created by nt_journal_init) */
} fixture_t;

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    /* xorshift64*: deterministic for a given seed */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    const char *base = getenv("TMPDIR");
    int n = snprintf(f->tmp, sizeof(f->tmp) - 6, "%s/nt_test_journal_",
                     base != NULL && base[0] != '\0' ? base : "/tmp");
    assert_true(n > 0 && (size_t)n < sizeof(f->tmp) - 6);
    memset(f->tmp + n, 'X', 6); /* the mkdtemp template suffix */
    f->tmp[n + 6] = '\0';
    assert_non_null(mkdtemp(f->tmp));
    snprintf(f->dir, sizeof(f->dir), "%s/spool/j", f->tmp);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    int rc = nftw(f->tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return rc;
}

static nt_journal_t *open_ok(const char *dir, uint64_t max_bytes, uint64_t segment_bytes)
{
    nt_journal_options_t o = {.dir = dir, .max_bytes = max_bytes, .segment_bytes = segment_bytes};
    nt_journal_t *j = NULL;
    assert_int_equal(nt_journal_init(&j, &o, NULL, 0), 0);
    assert_non_null(j);
    return j;
}

static int open_rc(const char *dir, uint64_t segment_bytes)
{
    nt_journal_options_t o = {.dir = dir, .segment_bytes = segment_bytes};
    nt_journal_t *j = (nt_journal_t *)&o; /* must be reset to NULL on failure */
    char err[640] = "";
    int rc = nt_journal_init(&j, &o, err, sizeof(err));
    if (rc == 0) {
        nt_journal_close(j);
    } else {
        assert_null(j);
        assert_true(err[0] != '\0');                /* the failure is described for the caller... */
        nt_log(NT_LOG_ERROR, "journal", "%s", err); /* ...which logs it, as the collector does */
    }
    return rc;
}

/* Deterministic content of record i: topic and payload lengths vary with i. */
static size_t make_topic(unsigned i, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "clinics/c%u/handpieces/pen-%u/telemetry", i % 7, i);
    return (size_t)n;
}

static size_t make_payload(unsigned i, uint8_t *buf)
{
    size_t len = (i * 37u) % 301u; /* includes empty payloads */
    for (size_t k = 0; k < len; k++) {
        buf[k] = (uint8_t)(i * 31u + k * 7u);
    }
    return len;
}

static int64_t make_time(unsigned i)
{
    return 1700000000000000LL + (int64_t)i * 1234 - (i % 3 == 0 ? 5000000000LL : 0);
}

/* Appends records first..first+n-1; pos[] receives each record's position, starting at *at. */
static void append_records(nt_journal_t *j, unsigned first, unsigned n, uint64_t *pos, uint64_t *at)
{
    char topic[128];
    uint8_t payload[512];
    for (unsigned i = first; i < first + n; i++) {
        size_t tl = make_topic(i, topic, sizeof(topic));
        size_t pl = make_payload(i, payload);
        assert_int_equal(nt_journal_append(j, make_time(i), topic, tl, payload, pl), 0);
        if (pos != NULL) {
            pos[i] = *at;
        }
        *at += FRAME + FIXED + tl + pl;
    }
}

/* Reads records first..first+n-1 starting at pos[first] and checks every field. */
static void check_records(nt_journal_t *j, unsigned first, unsigned n, const uint64_t *pos)
{
    char topic[128];
    uint8_t payload[512];
    nt_journal_record_t rec;
    uint64_t at = pos[first];
    for (unsigned i = first; i < first + n; i++) {
        size_t tl = make_topic(i, topic, sizeof(topic));
        size_t pl = make_payload(i, payload);
        assert_int_equal(nt_journal_read(j, at, &rec), 1);
        assert_int_equal(rec.pos, pos[i]);
        assert_int_equal(rec.next_pos, pos[i] + FRAME + FIXED + tl + pl);
        assert_int_equal(rec.received_us, make_time(i));
        assert_int_equal(rec.topic_len, tl);
        assert_memory_equal(rec.topic, topic, tl);
        assert_int_equal(rec.payload_len, pl);
        if (pl > 0) {
            assert_memory_equal(rec.payload, payload, pl);
        }
        at = rec.next_pos;
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Lists the segment files of dir (NNNNNNNNNNNNNNNNNNNN.ntj): their starts, sorted. */
static size_t list_segments(const char *dir, uint64_t *starts, size_t cap)
{
    size_t n = 0;
    DIR *d = opendir(dir);
    struct dirent *de;
    assert_non_null(d);
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (len == 24 && strcmp(de->d_name + 20, ".ntj") == 0 &&
            strspn(de->d_name, "0123456789") == 20) {
            assert_true(n < cap);
            starts[n++] = strtoull(de->d_name, NULL, 10);
        }
    }
    closedir(d);
    qsort(starts, n, sizeof(starts[0]), cmp_u64);
    return n;
}

/* Creates an empty file. */
static void touch(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    close(fd);
}

static void seg_path(char *buf, size_t cap, const char *dir, uint64_t start)
{
    snprintf(buf, cap, "%s/%020" PRIu64 ".ntj", dir, start);
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (uint64_t)st.st_size;
}

static void append_bytes(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

static void patch_byte(const char *path, uint64_t off, uint8_t xor_mask)
{
    int fd = open(path, O_RDWR);
    uint8_t b;
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
    b ^= xor_mask;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)off), 1);
    close(fd);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* Builds a well-formed record by hand (the documented format); returns its length. */
static size_t build_record(uint8_t *out, int64_t us, const char *topic, const char *payload)
{
    size_t tl = strlen(topic);
    size_t pl = strlen(payload);
    uint32_t body = (uint32_t)(FIXED + tl + pl);
    put32(out, body);
    put32(out + FRAME, (uint32_t)(uint64_t)us);
    put32(out + FRAME + 4, (uint32_t)((uint64_t)us >> 32));
    out[FRAME + 8] = (uint8_t)tl;
    out[FRAME + 9] = (uint8_t)(tl >> 8);
    memcpy(out + FRAME + FIXED, topic, tl);
    memcpy(out + FRAME + FIXED + tl, payload, pl);
    put32(out + 4, nt_crc32c(0, out + FRAME, body));
    return FRAME + body;
}

/* Captures what the process writes to stderr (nt_log) between start and stop. */
typedef struct {
    int saved;
    char path[160];
} capture_t;

static void capture_start(capture_t *c, const fixture_t *f)
{
    snprintf(c->path, sizeof(c->path), "%s/stderr.txt", f->tmp);
    int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    fflush(stderr);
    c->saved = dup(STDERR_FILENO);
    assert_true(c->saved >= 0);
    assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    close(fd);
}

/* Restores stderr, echoes the captured text to it and returns it (caller frees). */
static char *capture_stop(capture_t *c)
{
    fflush(stderr);
    assert_int_equal(dup2(c->saved, STDERR_FILENO), STDERR_FILENO);
    close(c->saved);
    int fd = open(c->path, O_RDONLY);
    assert_true(fd >= 0);
    char *buf = calloc(1, 16384);
    assert_non_null(buf);
    ssize_t n = read(fd, buf, 16383);
    assert_true(n >= 0);
    close(fd);
    unlink(c->path);
    fputs(buf, stderr);
    return buf;
}

/* ---- crc32c ------------------------------------------------------------------------------- */

static void test_crc32c_known_vectors(void **state)
{
    (void)state;
    static const struct {
        size_t len;
        int fill; /* -1: "123456789", -2: 0..31, -3: 31..0, else a constant byte */
        uint32_t crc;
    } vec[] = {
        {9, -1, 0xE3069283u},    {0, 0, 0x00000000u},   {32, 0x00, 0x8A9136AAu},
        {32, 0xff, 0x62A8AB43u}, {32, -2, 0x46DD794Eu}, {32, -3, 0x113FDB5Cu},
    };
    for (size_t v = 0; v < NT_ARRAY_SIZE(vec); v++) {
        uint8_t buf[32];
        for (size_t i = 0; i < vec[v].len; i++) {
            buf[i] = vec[v].fill == -1   ? (uint8_t)('1' + i)
                     : vec[v].fill == -2 ? (uint8_t)i
                     : vec[v].fill == -3 ? (uint8_t)(31 - i)
                                         : (uint8_t)vec[v].fill;
        }
        assert_int_equal(nt_crc32c(0, buf, vec[v].len), vec[v].crc);
        assert_int_equal(nt_crc32c__sw(0, buf, vec[v].len), vec[v].crc);
        if (nt_crc32c__have_hw()) {
            assert_int_equal(nt_crc32c__hw(0, buf, vec[v].len), vec[v].crc);
        }
    }
    /* extending: crc(a || b) == crc(crc(a), b), split at every point */
    const char *s = "123456789";
    for (size_t cut = 0; cut <= 9; cut++) {
        assert_int_equal(nt_crc32c(nt_crc32c(0, s, cut), s + cut, 9 - cut), 0xE3069283u);
        assert_int_equal(nt_crc32c__sw(nt_crc32c__sw(0, s, cut), s + cut, 9 - cut), 0xE3069283u);
    }
}

static void test_crc32c_hw_matches_sw(void **state)
{
    (void)state;
    if (!nt_crc32c__have_hw()) {
        skip();
    }
    uint8_t *buf = malloc(8192 + 16);
    assert_non_null(buf);
    rng_state = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < 8192 + 16; i++) {
        buf[i] = (uint8_t)rng_next();
    }
    for (int round = 0; round < 2000; round++) {
        size_t off = (size_t)(rng_next() % 16);   /* every alignment */
        size_t len = (size_t)(rng_next() % 8193); /* 0..8192 */
        uint32_t seed = round % 4 == 0 ? 0 : (uint32_t)rng_next();
        uint32_t sw = nt_crc32c__sw(seed, buf + off, len);
        assert_int_equal(nt_crc32c__hw(seed, buf + off, len), sw);
        assert_int_equal(nt_crc32c(seed, buf + off, len), sw);
    }
    free(buf);
}

/* ---- journal ------------------------------------------------------------------------------ */

static void test_append_read_roundtrip(void **state)
{
    fixture_t *f = *state;
    enum { N = 500 };
    uint64_t pos[N];
    uint64_t at = 0;
    nt_journal_record_t rec;
    nt_journal_t *j = open_ok(f->dir, 0, 0);

    assert_int_not_equal(nt_journal_id(j), 0);
    assert_int_equal(nt_journal_start(j), 0);
    assert_int_equal(nt_journal_end(j), 0);
    assert_int_equal(nt_journal_bytes(j), HDR);
    assert_int_equal(nt_journal_read(j, 0, &rec), 0);

    append_records(j, 0, N, pos, &at);
    assert_int_equal(nt_journal_bytes(j), HDR + at);
    assert_int_equal(nt_journal_sync(j), 0);
    assert_int_equal(nt_journal_end(j), at);
    check_records(j, 0, N, pos);
    assert_int_equal(nt_journal_read(j, at, &rec), 0);
    assert_int_equal(nt_journal_read(j, at + 1, &rec), NT_EINVAL);
    assert_int_equal(nt_journal_bytes(j), HDR + at);

    /* random access, backwards */
    for (unsigned i = N; i-- > 0;) {
        assert_int_equal(nt_journal_read(j, pos[i], &rec), 1);
        assert_int_equal(rec.received_us, make_time(i));
    }
    /* a sync with nothing new changes nothing */
    assert_int_equal(nt_journal_sync(j), 0);
    assert_int_equal(nt_journal_end(j), at);

    char path[256];
    seg_path(path, sizeof(path), f->dir, 0);
    assert_int_equal(file_size(path), HDR + at);
    nt_journal_close(j);
    nt_journal_close(NULL);
}

static void test_on_disk_format(void **state)
{
    fixture_t *f = *state;
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    uint64_t id = nt_journal_id(j);
    assert_int_equal(nt_journal_append(j, -42, "t/x", 3, "PAY", 3), 0);
    assert_int_equal(nt_journal_sync(j), 0);
    nt_journal_close(j);

    char path[256];
    uint8_t file[HDR + 64];
    seg_path(path, sizeof(path), f->dir, 0);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(read(fd, file, sizeof(file)), HDR + FRAME + FIXED + 6);
    close(fd);
    assert_memory_equal(file, "NTJ1", 4);
    assert_int_equal(get32(file + 4), 1);
    assert_int_equal(get64(file + 8), id);
    assert_int_equal(get64(file + 16), 0);
    assert_int_equal(get64(file + 24), 0);

    uint8_t expect[64];
    size_t n = build_record(expect, -42, "t/x", "PAY");
    assert_int_equal(n, FRAME + FIXED + 6);
    assert_memory_equal(file + HDR, expect, n);
}

static void test_not_visible_before_sync(void **state)
{
    fixture_t *f = *state;
    nt_journal_record_t rec;
    uint64_t pos[41];
    uint64_t at = 0;
    /* small segments: appends roll several times before the first sync */
    nt_journal_t *j = open_ok(f->dir, 0, 1024);

    append_records(j, 0, 40, pos, &at);
    assert_int_equal(nt_journal_end(j), 0);
    assert_int_equal(nt_journal_read(j, 0, &rec), 0);
    assert_int_equal(nt_journal_read(j, pos[1], &rec), NT_EINVAL);
    assert_int_equal(nt_journal_sync(j), 0);
    assert_int_equal(nt_journal_end(j), at);
    check_records(j, 0, 40, pos);

    uint64_t end = at;
    append_records(j, 40, 1, pos, &at);
    assert_int_equal(nt_journal_end(j), end);
    assert_int_equal(nt_journal_read(j, end, &rec), 0);
    assert_int_equal(nt_journal_sync(j), 0);
    assert_int_equal(nt_journal_read(j, end, &rec), 1);
    assert_int_equal(rec.next_pos, at);
    nt_journal_close(j);
}

static void test_reopen_continues(void **state)
{
    fixture_t *f = *state;
    enum { N = 300 };
    uint64_t pos[N];
    uint64_t at = 0;
    char path[256];
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    uint64_t id = nt_journal_id(j);

    append_records(j, 0, 100, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    nt_journal_close(j);

    /* a leftover of an interrupted segment creation is removed */
    snprintf(path, sizeof(path), "%s/%020d.ntj.tmp", f->dir, 999);
    touch(path);

    j = open_ok(f->dir, 0, 0);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(nt_journal_id(j), id);
    assert_int_equal(nt_journal_start(j), 0);
    assert_int_equal(nt_journal_end(j), at);
    assert_int_equal(nt_journal_bytes(j), HDR + at);
    check_records(j, 0, 100, pos);

    append_records(j, 100, 100, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    check_records(j, 0, 200, pos);
    /* close writes buffered records (not synced, but not lost on a clean close) */
    append_records(j, 200, 100, pos, &at);
    nt_journal_close(j);

    j = open_ok(f->dir, 0, 0);
    assert_int_equal(nt_journal_id(j), id);
    assert_int_equal(nt_journal_end(j), at);
    check_records(j, 0, N, pos);
    nt_journal_close(j);
}

enum { TORN_GARBAGE, TORN_SHORT_HEADER, TORN_PARTIAL, TORN_BAD_CRC, TORN_BAD_LEN, TORN_HUGE_LEN };

/* Writes 20 good records, then damages the tail of the newest segment in one way, and
 * appends one more well-formed record after the damage: recovery must cut both. */
static void torn_tail(fixture_t *f, int kind)
{
    uint64_t pos[32];
    uint64_t at = 0;
    char path[256];
    uint8_t rec[256];
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    append_records(j, 0, 20, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    nt_journal_close(j);
    seg_path(path, sizeof(path), f->dir, 0);
    uint64_t good = file_size(path);
    assert_int_equal(good, HDR + at);

    static const char garbage[] = "\xde\xad\xbe\xef garbage that is no record";
    size_t n = build_record(rec, 7, "clinics/a/handpieces/b/telemetry", "payload bytes");
    switch (kind) {
    case TORN_GARBAGE:
        append_bytes(path, garbage, sizeof(garbage) - 1);
        break;
    case TORN_SHORT_HEADER:
        append_bytes(path, rec, 5);
        break;
    case TORN_PARTIAL:
        append_bytes(path, rec, n - 3);
        break;
    case TORN_BAD_CRC:
        rec[5] ^= 0x10;
        append_bytes(path, rec, n);
        rec[5] ^= 0x10;
        append_bytes(path, rec, n); /* a good record after the bad one is cut too */
        break;
    case TORN_BAD_LEN:
        put32(rec, 9); /* shorter than received_us + topic_len */
        append_bytes(path, rec, n);
        break;
    case TORN_HUGE_LEN:
        put32(rec, 256u * 1024u + 65535u + 65u);
        append_bytes(path, rec, n);
        break;
    }
    uint64_t damaged = file_size(path);
    assert_true(damaged > good);

    capture_t cap;
    capture_start(&cap, f);
    j = open_ok(f->dir, 0, 0);
    char *log = capture_stop(&cap);
    char expect[128];
    snprintf(expect, sizeof(expect), "at offset %" PRIu64 ": cut %" PRIu64 " bytes", good,
             damaged - good);
    assert_non_null(strstr(log, expect));
    assert_non_null(strstr(log, "00000000000000000000.ntj"));
    free(log);

    assert_int_equal(file_size(path), good);
    assert_int_equal(nt_journal_end(j), at);
    assert_int_equal(nt_journal_bytes(j), good);
    check_records(j, 0, 20, pos);
    /* later appends work and continue the positions */
    append_records(j, 20, 10, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    check_records(j, 0, 30, pos);
    assert_int_equal(file_size(path), HDR + at);
    nt_journal_close(j);

    j = open_ok(f->dir, 0, 0);
    check_records(j, 0, 30, pos);
    nt_journal_close(j);
}

static void test_torn_tail_garbage(void **state)
{
    torn_tail(*state, TORN_GARBAGE);
}

static void test_torn_tail_short_header(void **state)
{
    torn_tail(*state, TORN_SHORT_HEADER);
}

static void test_torn_tail_partial_record(void **state)
{
    torn_tail(*state, TORN_PARTIAL);
}

static void test_torn_tail_bad_crc(void **state)
{
    torn_tail(*state, TORN_BAD_CRC);
}

static void test_torn_tail_bad_length(void **state)
{
    torn_tail(*state, TORN_BAD_LEN);
    fixture_t *f = *state;
    assert_int_equal(nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
    torn_tail(*state, TORN_HUGE_LEN);
}

static void test_hand_written_record_is_read(void **state)
{
    fixture_t *f = *state;
    char path[256];
    uint8_t rec[256];
    nt_journal_record_t r;
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    nt_journal_close(j);

    seg_path(path, sizeof(path), f->dir, 0);
    size_t n = build_record(rec, 123456789, "clinics/a/handpieces/b/telemetry", "raw");
    append_bytes(path, rec, n);
    j = open_ok(f->dir, 0, 0);
    assert_int_equal(nt_journal_end(j), n);
    assert_int_equal(nt_journal_read(j, 0, &r), 1);
    assert_int_equal(r.received_us, 123456789);
    assert_int_equal(r.topic_len, 32);
    assert_memory_equal(r.topic, "clinics/a/handpieces/b/telemetry", 32);
    assert_int_equal(r.payload_len, 3);
    assert_memory_equal(r.payload, "raw", 3);
    assert_int_equal(r.next_pos, n);
    nt_journal_close(j);
}

/* Writes records into segments of about 1 KiB; returns the segment starts found on disk. */
static size_t make_segments(fixture_t *f, uint64_t *pos, unsigned n, uint64_t *at, uint64_t *starts,
                            size_t cap)
{
    nt_journal_t *j = open_ok(f->dir, 0, 1024);
    append_records(j, 0, n, pos, at);
    assert_int_equal(nt_journal_sync(j), 0);
    nt_journal_close(j);
    return list_segments(f->dir, starts, cap);
}

static void test_segment_roll(void **state)
{
    fixture_t *f = *state;
    enum { N = 200 };
    uint64_t pos[N];
    uint64_t at = 0;
    uint64_t starts[256];
    char path[256];
    nt_journal_t *j = open_ok(f->dir, 0, 1024);
    append_records(j, 0, N, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    check_records(j, 0, N, pos);

    size_t nseg = list_segments(f->dir, starts, 256);
    assert_true(nseg >= 10);
    uint64_t sum = 0;
    for (size_t s = 0; s < nseg; s++) {
        seg_path(path, sizeof(path), f->dir, starts[s]);
        uint64_t size = file_size(path);
        sum += size;
        /* every segment starts at a record and holds at least one */
        int found = 0;
        for (unsigned i = 0; i < N; i++) {
            found |= pos[i] == starts[s];
        }
        assert_true(found);
        assert_true(size > HDR);
        /* a segment is closed the first time it is past 1024 bytes */
        if (s + 1 < nseg) {
            assert_int_equal(starts[s] + (size - HDR), starts[s + 1]);
            assert_true(size - (FRAME + FIXED + 300 + 64) <= 1024);
            assert_true(size > 1024);
        } else {
            assert_int_equal(starts[s] + (size - HDR), at);
        }
    }
    assert_int_equal(starts[0], 0);
    assert_int_equal(nt_journal_bytes(j), sum);
    nt_journal_close(j);

    j = open_ok(f->dir, 0, 1024);
    assert_int_equal(nt_journal_end(j), at);
    assert_int_equal(nt_journal_bytes(j), sum);
    check_records(j, 0, N, pos);
    nt_journal_close(j);
}

/* segment_bytes below the header size: every record gets a segment of its own, and an
 * empty segment is never rolled (its successor would have the same name). */
static void test_segment_per_record(void **state)
{
    fixture_t *f = *state;
    uint64_t pos[6];
    uint64_t at = 0;
    uint64_t starts[16];
    nt_journal_t *j = open_ok(f->dir, 0, 1);
    append_records(j, 0, 5, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    assert_int_equal(list_segments(f->dir, starts, 16), 5);
    assert_int_equal(nt_journal_bytes(j), 5 * HDR + at);
    for (unsigned i = 0; i < 5; i++) {
        assert_int_equal(starts[i], pos[i]);
    }
    check_records(j, 0, 5, pos);
    assert_int_equal(nt_journal_release(j, pos[3]), 0);
    assert_int_equal(list_segments(f->dir, starts, 16), 2);
    assert_int_equal(nt_journal_start(j), pos[3]);
    nt_journal_close(j);

    j = open_ok(f->dir, 0, 1);
    assert_int_equal(nt_journal_end(j), at);
    check_records(j, 3, 2, pos);
    append_records(j, 5, 1, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    assert_int_equal(list_segments(f->dir, starts, 16), 3);
    assert_int_equal(starts[2], pos[5]);
    check_records(j, 3, 3, pos);
    nt_journal_close(j);
}

static void test_release(void **state)
{
    fixture_t *f = *state;
    enum { N = 200 };
    uint64_t pos[N];
    uint64_t at = 0;
    uint64_t starts[256];
    uint64_t after[256];
    char path[256];
    nt_journal_record_t rec;
    size_t nseg = make_segments(f, pos, N, &at, starts, 256);
    assert_true(nseg >= 5);

    nt_journal_t *j = open_ok(f->dir, 0, 1024);
    uint64_t bytes0 = nt_journal_bytes(j);

    /* before the end of the first segment: nothing goes */
    assert_int_equal(nt_journal_release(j, starts[1] - 1), 0);
    assert_int_equal(list_segments(f->dir, after, 256), nseg);
    assert_int_equal(nt_journal_start(j), 0);

    /* exactly at a segment boundary: the segments ending there go */
    assert_int_equal(nt_journal_release(j, starts[2]), 0);
    assert_int_equal(list_segments(f->dir, after, 256), nseg - 2);
    assert_int_equal(after[0], starts[2]);
    assert_int_equal(nt_journal_start(j), starts[2]);
    uint64_t gone = 0;
    for (size_t s = 0; s < 2; s++) {
        gone += starts[s + 1] - starts[s] + HDR;
    }
    assert_int_equal(nt_journal_bytes(j), bytes0 - gone);

    /* a released position is gone; the first kept one reads */
    assert_int_equal(nt_journal_read(j, 0, &rec), NT_EINVAL);
    assert_int_equal(nt_journal_read(j, pos[1], &rec), NT_EINVAL);
    assert_int_equal(nt_journal_read(j, starts[2], &rec), 1);

    /* inside segment 3: only segment 2 goes */
    assert_int_equal(nt_journal_release(j, starts[3] + 1), 0);
    assert_int_equal(list_segments(f->dir, after, 256), nseg - 3);
    assert_int_equal(nt_journal_start(j), starts[3]);

    /* past the end is refused; at the end everything but the newest goes */
    assert_int_equal(nt_journal_release(j, at + 1), NT_EINVAL);
    assert_int_equal(nt_journal_release(j, at), 0);
    assert_int_equal(list_segments(f->dir, after, 256), 1);
    assert_int_equal(after[0], starts[nseg - 1]);
    assert_int_equal(nt_journal_start(j), starts[nseg - 1]);
    seg_path(path, sizeof(path), f->dir, starts[nseg - 1]);
    assert_int_equal(nt_journal_bytes(j), file_size(path));

    /* the kept records still read; new appends continue */
    unsigned first = 0;
    while (pos[first] != starts[nseg - 1]) {
        first++;
    }
    check_records(j, first, N - first, pos);
    assert_int_equal(nt_journal_release(j, 0), 0); /* behind start: a no-op */
    nt_journal_close(j);

    j = open_ok(f->dir, 0, 1024);
    assert_int_equal(nt_journal_start(j), starts[nseg - 1]);
    assert_int_equal(nt_journal_end(j), at);
    check_records(j, first, N - first, pos);
    nt_journal_close(j);
}

static void test_corrupt_older_segment(void **state)
{
    fixture_t *f = *state;
    uint64_t pos[100];
    uint64_t at = 0;
    uint64_t starts[64];
    char path[256];
    size_t nseg = make_segments(f, pos, 100, &at, starts, 64);
    assert_true(nseg >= 3);

    /* one payload byte of the second record of the first segment */
    seg_path(path, sizeof(path), f->dir, starts[0]);
    uint64_t size = file_size(path);
    patch_byte(path, HDR + pos[1] + FRAME + FIXED + 3, 0x01);
    assert_int_equal(open_rc(f->dir, 1024), NT_ECORRUPT);
    assert_int_equal(file_size(path), size); /* an older segment is never truncated */
    patch_byte(path, HDR + pos[1] + FRAME + FIXED + 3, 0x01);
    assert_int_equal(open_rc(f->dir, 1024), 0);

    /* a torn tail in an older segment is corruption too */
    seg_path(path, sizeof(path), f->dir, starts[1]);
    append_bytes(path, "\0\0", 2);
    assert_int_equal(open_rc(f->dir, 1024), NT_ECORRUPT);
    assert_int_equal(truncate(path, (off_t)(starts[2] - starts[1] + HDR)), 0);
    assert_int_equal(open_rc(f->dir, 1024), 0);
}

static void test_corrupt_headers(void **state)
{
    fixture_t *f = *state;
    uint64_t pos[100];
    uint64_t at = 0;
    uint64_t starts[64];
    char path[256];
    char other[256];
    size_t nseg = make_segments(f, pos, 100, &at, starts, 64);
    assert_true(nseg >= 3);

    /* wrong magic, wrong version, another journal's id, start not matching the name */
    static const uint64_t offs[] = {0, 4, 8 + 3, 16};
    for (size_t k = 0; k < NT_ARRAY_SIZE(offs); k++) {
        for (size_t s = 0; s < 2; s++) {
            size_t which = s == 0 ? 1 : nseg - 1; /* an older segment and the newest */
            seg_path(path, sizeof(path), f->dir, starts[which]);
            patch_byte(path, offs[k], 0x40);
            assert_int_equal(open_rc(f->dir, 1024), NT_ECORRUPT);
            patch_byte(path, offs[k], 0x40);
            assert_int_equal(open_rc(f->dir, 1024), 0);
        }
    }

    /* a missing segment in the middle breaks contiguity */
    seg_path(path, sizeof(path), f->dir, starts[1]);
    snprintf(other, sizeof(other), "%s/moved", f->tmp);
    assert_int_equal(rename(path, other), 0);
    capture_t cap;
    capture_start(&cap, f);
    assert_int_equal(open_rc(f->dir, 1024), NT_ECORRUPT);
    char *log = capture_stop(&cap);
    assert_non_null(strstr(log, "is not contiguous"));
    free(log);
    assert_int_equal(rename(other, path), 0);

    /* a newest segment shorter than its header */
    seg_path(path, sizeof(path), f->dir, starts[nseg - 1]);
    assert_int_equal(truncate(path, 31), 0);
    assert_int_equal(open_rc(f->dir, 1024), NT_ECORRUPT);
}

static void test_full(void **state)
{
    fixture_t *f = *state;
    uint64_t at = 0;
    nt_journal_t *j = open_ok(f->dir, 4096, 1024);
    assert_int_equal(nt_journal_full(j), 0);
    unsigned i = 0;
    while (!nt_journal_full(j)) {
        /* never refused because of the bound */
        append_records(j, i++, 1, NULL, &at);
    }
    assert_true(nt_journal_bytes(j) >= 4096);
    assert_true(nt_journal_bytes(j) - 4096 < FRAME + FIXED + 64 + 300 + HDR);
    append_records(j, i++, 5, NULL, &at);
    assert_int_equal(nt_journal_full(j), 1);
    assert_int_equal(nt_journal_sync(j), 0);
    assert_int_equal(nt_journal_release(j, nt_journal_end(j)), 0);
    assert_true(nt_journal_bytes(j) < 4096);
    assert_int_equal(nt_journal_full(j), 0);
    nt_journal_close(j);
}

static void test_second_open_refused(void **state)
{
    fixture_t *f = *state;
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    capture_t cap;
    capture_start(&cap, f);
    assert_int_equal(open_rc(f->dir, 0), NT_EIO);
    char *log = capture_stop(&cap);
    char expect[256];
    snprintf(expect, sizeof(expect), "could not lock journal directory \\\"%s\\\"", f->dir);
    assert_non_null(strstr(log, expect));
    free(log);
    nt_journal_close(j);
    assert_int_equal(open_rc(f->dir, 0), 0);
}

static void test_big_record_and_limits(void **state)
{
    fixture_t *f = *state;
    nt_journal_record_t rec;
    size_t plen = NT_MAX_PAYLOAD_BYTES + 1; /* the largest: an oversized message, cut */
    size_t tlen = 65535;
    uint8_t *payload = malloc(plen + 1);
    char *topic = malloc(tlen + 1);
    assert_non_null(payload);
    assert_non_null(topic);
    for (size_t i = 0; i <= plen; i++) {
        payload[i] = (uint8_t)(i * 13 + (i >> 8));
    }
    for (size_t i = 0; i <= tlen; i++) {
        topic[i] = (char)('a' + i % 26);
    }
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    assert_int_equal(nt_journal_append(j, 1, topic, tlen + 1, "x", 1), NT_EINVAL);
    assert_int_equal(nt_journal_append(j, 1, "t", 1, payload, plen + 1), NT_ETOOBIG);
    assert_int_equal(nt_journal_append(j, 1, NULL, 1, "x", 1), NT_EINVAL);
    assert_int_equal(nt_journal_append(j, 1, "t", 1, NULL, 1), NT_EINVAL);
    assert_int_equal(nt_journal_bytes(j), HDR);

    assert_int_equal(nt_journal_append(j, 5, "small", 5, "p", 1), 0);
    assert_int_equal(nt_journal_append(j, 6, "t", 1, payload, plen), 0);
    assert_int_equal(nt_journal_append(j, 7, topic, tlen, payload, plen), 0);
    assert_int_equal(nt_journal_append(j, 8, topic, tlen, payload, plen), 0);
    assert_int_equal(nt_journal_append(j, 9, "", 0, NULL, 0), 0);
    assert_int_equal(nt_journal_sync(j), 0);

    uint64_t p = 0;
    for (int round = 0; round < 2; round++) {
        assert_int_equal(nt_journal_read(j, 0, &rec), 1);
        assert_int_equal(rec.received_us, 5);
        assert_int_equal(nt_journal_read(j, rec.next_pos, &rec), 1);
        assert_int_equal(rec.payload_len, plen);
        assert_memory_equal(rec.payload, payload, plen);
        for (int k = 0; k < 2; k++) {
            assert_int_equal(nt_journal_read(j, rec.next_pos, &rec), 1);
            assert_int_equal(rec.received_us, 7 + k);
            assert_int_equal(rec.topic_len, tlen);
            assert_memory_equal(rec.topic, topic, tlen);
            assert_int_equal(rec.payload_len, plen);
            assert_memory_equal(rec.payload, payload, plen);
        }
        assert_int_equal(nt_journal_read(j, rec.next_pos, &rec), 1);
        assert_int_equal(rec.received_us, 9);
        assert_int_equal(rec.topic_len, 0);
        assert_int_equal(rec.payload_len, 0);
        p = rec.next_pos;
        assert_int_equal(nt_journal_read(j, p, &rec), 0);
        nt_journal_close(j);
        j = open_ok(f->dir, 0, 0); /* the recovery scan accepts the largest record */
        assert_int_equal(nt_journal_end(j), p);
    }
    nt_journal_close(j);
    free(payload);
    free(topic);
}

static void test_write_error_refuses_appends(void **state)
{
    fixture_t *f = *state;
    uint64_t pos[64];
    uint64_t at = 0;
    char path[256];
    struct rlimit old;
    static uint8_t big[64 * 1024];
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    append_records(j, 0, 20, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    seg_path(path, sizeof(path), f->dir, 0);
    uint64_t good = file_size(path);

    /* files may not grow past good + 100 bytes: the next write is cut short, then fails */
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    struct rlimit lim = old;
    lim.rlim_cur = (rlim_t)(good + 100);
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    assert_int_equal(nt_journal_append(j, 1, "t", 1, big, sizeof(big)), 0);
    int rc = nt_journal_sync(j);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    assert_int_equal(rc, NT_EIO);

    assert_int_equal(nt_journal_append(j, 1, "t", 1, "x", 1), NT_EIO);
    assert_int_equal(nt_journal_sync(j), NT_EIO);
    assert_int_equal(nt_journal_end(j), at);
    check_records(j, 0, 20, pos); /* what was durable still reads */
    nt_journal_close(j);
    assert_int_equal(file_size(path), good + 100);

    /* reopening cuts the partial record and accepts appends again */
    j = open_ok(f->dir, 0, 0);
    assert_int_equal(file_size(path), good);
    append_records(j, 20, 5, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    check_records(j, 0, 25, pos);
    nt_journal_close(j);
}

static void test_open_errors(void **state)
{
    fixture_t *f = *state;
    nt_journal_t *j = NULL;
    nt_journal_options_t o = {.dir = NULL};
    char path[256];
    assert_int_equal(nt_journal_init(&j, &o, NULL, 0), NT_EINVAL);
    assert_null(j);
    o.dir = "";
    assert_int_equal(nt_journal_init(&j, &o, NULL, 0), NT_EINVAL);
    assert_int_equal(nt_journal_init(&j, NULL, NULL, 0), NT_EINVAL);
    assert_int_equal(nt_journal_init(NULL, &o, NULL, 0), NT_EINVAL);

    /* the directory path names a regular file */
    snprintf(path, sizeof(path), "%s/file", f->tmp);
    touch(path);
    assert_int_equal(open_rc(path, 0), NT_EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_known_vectors),
        cmocka_unit_test(test_crc32c_hw_matches_sw),
        cmocka_unit_test_setup_teardown(test_append_read_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_on_disk_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_visible_before_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_continues, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_short_header, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_partial_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_bad_crc, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_bad_length, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hand_written_record_is_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_segment_roll, setup, teardown),
        cmocka_unit_test_setup_teardown(test_segment_per_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_older_segment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_open_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_big_record_and_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_error_refuses_appends, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
