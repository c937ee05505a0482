/* test_journal.c -- unit tests of the CRC-32C paths and of the journal: format, recovery (torn
 * tail, unwritten page after a power cut or corruption, a fresh segment per open), roll,
 * release, check and salvage. */
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

/* Opens dir expecting a failure: returns its code, with the description in err. */
static int open_err(const char *dir, uint64_t segment_bytes, char *err, size_t errlen)
{
    nt_journal_options_t o = {.dir = dir, .segment_bytes = segment_bytes};
    nt_journal_t *j = NULL;
    err[0] = '\0';
    int rc = nt_journal_init(&j, &o, err, errlen);
    if (rc == 0) {
        nt_journal_close(j);
    } else {
        assert_null(j);
        nt_log(NT_LOG_ERROR, "journal", "%s", err);
    }
    return rc;
}

/* Asserts that haystack contains needle, printing both when not. */
static void expect_contains(const char *haystack, const char *needle)
{
    if (strstr(haystack, needle) == NULL) {
        fail_msg("\"%s\" not found in \"%s\"", needle, haystack);
    }
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

/* Bytes record i occupies in a segment. */
static uint64_t record_size(unsigned i)
{
    char topic[128];
    uint8_t payload[512];
    return FRAME + FIXED + make_topic(i, topic, sizeof(topic)) + make_payload(i, payload);
}

/* Checks that rec holds the content of record i (receive time, topic, payload). */
static void expect_record(const nt_journal_record_t *rec, unsigned i)
{
    char topic[128];
    uint8_t payload[512];
    size_t tl = make_topic(i, topic, sizeof(topic));
    size_t pl = make_payload(i, payload);
    assert_int_equal(rec->next_pos, rec->pos + FRAME + FIXED + tl + pl);
    assert_int_equal(rec->received_us, make_time(i));
    assert_int_equal(rec->topic_len, tl);
    assert_memory_equal(rec->topic, topic, tl);
    assert_int_equal(rec->payload_len, pl);
    if (pl > 0) {
        assert_memory_equal(rec->payload, payload, pl);
    }
}

/* Reads records first..first+n-1 starting at pos[first] and checks every field. */
static void check_records(nt_journal_t *j, unsigned first, unsigned n, const uint64_t *pos)
{
    nt_journal_record_t rec;
    uint64_t at = pos[first];
    for (unsigned i = first; i < first + n; i++) {
        assert_int_equal(nt_journal_read(j, at, &rec), 1);
        assert_int_equal(rec.pos, pos[i]);
        expect_record(&rec, i);
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

/* A checksum of every entry of dir: names, sizes and contents, in name order; equal before and
 * after a call proves the call changed nothing there. */
static uint32_t dir_digest(const char *dir)
{
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);
    assert_true(n >= 0);
    uint32_t crc = nt_crc32c(0, &n, sizeof(n));
    static uint8_t buf[64 * 1024];
    for (int i = 0; i < n; i++) {
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
        crc = nt_crc32c(crc, names[i]->d_name, strlen(names[i]->d_name) + 1);
        int fd = open(path, O_RDONLY);
        assert_true(fd >= 0);
        ssize_t got;
        while ((got = read(fd, buf, sizeof(buf))) > 0) {
            crc = nt_crc32c(crc, buf, (size_t)got);
        }
        close(fd);
        free(names[i]);
    }
    free(names);
    return crc;
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

/* The sync in three steps (the sync thread's): what begin covered is durable after end; what was
 * appended between them is not, until the next sync; a failed fdatasync fails the journal. */
static void test_sync_in_steps(void **state)
{
    fixture_t *f = *state;
    nt_journal_record_t rec;
    uint64_t pos[12];
    uint64_t at = 0;
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    nt_journal_sync_req_t req;

    append_records(j, 0, 5, pos, &at);
    assert_int_equal(nt_journal_sync_begin(j, &req), 0);
    assert_true(req.fd >= 0);
    uint64_t covered = at;
    append_records(j, 5, 2, pos, &at); /* after begin: not covered */
    nt_journal_sync_run(&req);
    assert_int_equal(req.err, 0);
    assert_int_equal(nt_journal_sync_end(j, &req), 0);
    assert_int_equal(nt_journal_end(j), covered);
    check_records(j, 0, 5, pos);
    assert_int_equal(nt_journal_read(j, covered, &rec), 0);
    assert_int_equal(nt_journal_sync(j), 0);
    assert_int_equal(nt_journal_end(j), at);
    check_records(j, 0, 7, pos);

    /* nothing new: nothing to sync */
    assert_int_equal(nt_journal_sync_begin(j, &req), 0);
    assert_int_equal(req.fd, -1);
    nt_journal_sync_run(&req);
    assert_int_equal(nt_journal_sync_end(j, &req), 0);

    /* a failed fdatasync: the journal refuses appends, nothing past the last sync is readable */
    uint64_t end = at;
    append_records(j, 7, 2, pos, &at);
    assert_int_equal(nt_journal_sync_begin(j, &req), 0);
    req.err = EIO; /* as nt_journal_sync_run reports it */
    assert_int_equal(nt_journal_sync_end(j, &req), NT_EIO);
    assert_true(nt_journal_failed(j));
    assert_non_null(strstr(nt_journal_error(j), "could not sync"));
    assert_int_equal(nt_journal_end(j), end);
    assert_int_equal(nt_journal_sync_begin(j, &req), NT_EIO);
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
    assert_int_equal(nt_journal_bytes(j), HDR + at + HDR); /* and the fresh segment */
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

/* Writes 20 good records, then damages the tail of the newest segment in one way, with no valid
 * record after the damage: a torn tail, which recovery cuts; later appends go to a fresh
 * segment. (A valid record after the damage makes it corruption: test_flipped_bit_newest.) */
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
    assert_int_equal(nt_journal_bytes(j), good + HDR);
    check_records(j, 0, 20, pos);
    /* later appends work, continue the positions and go to a fresh segment */
    uint64_t end = at;
    append_records(j, 20, 10, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    check_records(j, 0, 30, pos);
    assert_int_equal(file_size(path), good);
    seg_path(path, sizeof(path), f->dir, end);
    assert_int_equal(file_size(path), HDR + at - end);
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
    assert_int_equal(nt_journal_bytes(j), sum + HDR);
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
    uint64_t pos[N + 10];
    uint64_t at = 0;
    uint64_t starts[256];
    uint64_t after[256];
    nt_journal_record_t rec;
    make_segments(f, pos, N, &at, starts, 256);

    nt_journal_t *j = open_ok(f->dir, 0, 1024);
    /* the segments written before, and the fresh one of this open, which holds no record */
    size_t nseg = list_segments(f->dir, starts, 256);
    assert_true(nseg >= 6);
    assert_int_equal(starts[nseg - 1], at);
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

    /* at the start of the newest written segment: everything before it goes */
    unsigned first = 0;
    while (pos[first] != starts[nseg - 2]) {
        first++;
    }
    assert_int_equal(nt_journal_release(j, starts[nseg - 2]), 0);
    assert_int_equal(list_segments(f->dir, after, 256), 2);
    check_records(j, first, N - first, pos);

    /* past the end is refused; at the end everything but the newest goes: here the fresh,
     * empty segment of this open */
    assert_int_equal(nt_journal_release(j, at + 1), NT_EINVAL);
    assert_int_equal(nt_journal_release(j, at), 0);
    assert_int_equal(list_segments(f->dir, after, 256), 1);
    assert_int_equal(after[0], at);
    assert_int_equal(nt_journal_start(j), at);
    assert_int_equal(nt_journal_bytes(j), HDR);
    assert_int_equal(nt_journal_read(j, at, &rec), 0);
    assert_int_equal(nt_journal_release(j, 0), 0); /* behind start: a no-op */

    /* new appends continue the positions */
    append_records(j, N, 10, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    check_records(j, N, 10, pos);
    nt_journal_close(j);

    j = open_ok(f->dir, 0, 1024);
    assert_int_equal(nt_journal_start(j), pos[N]);
    assert_int_equal(nt_journal_end(j), at);
    check_records(j, N, 10, pos);
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

/* ---- recovery: a fresh segment per open, torn tail or corruption ---------------------------- */

static void test_fresh_segment_per_open(void **state)
{
    fixture_t *f = *state;
    uint64_t pos[32];
    uint64_t at = 0;
    uint64_t starts[16];
    char path0[256];
    char path1[256];
    char path2[256];
    char tmp[256];
    struct stat st;
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    append_records(j, 0, 10, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    nt_journal_close(j);
    seg_path(path0, sizeof(path0), f->dir, 0);
    uint64_t size0 = file_size(path0);

    /* the next open appends to a new segment, never to the one written before */
    j = open_ok(f->dir, 0, 0);
    assert_int_equal(list_segments(f->dir, starts, 16), 2);
    assert_int_equal(starts[1], at);
    assert_int_equal(nt_journal_bytes(j), size0 + HDR);
    uint64_t end1 = at;
    append_records(j, 10, 5, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    nt_journal_close(j);
    assert_int_equal(file_size(path0), size0);
    seg_path(path1, sizeof(path1), f->dir, end1);
    assert_int_equal(file_size(path1), HDR + at - end1);

    /* a crash loop: every open starts a fresh segment at the end, replacing the empty one the
     * open before left (a new file each time), so empty segments never pile up */
    seg_path(path2, sizeof(path2), f->dir, at);
    ino_t prev = 0;
    for (int k = 0; k < 50; k++) {
        j = open_ok(f->dir, 0, 0);
        assert_int_equal(list_segments(f->dir, starts, 16), 3);
        assert_int_equal(starts[2], at);
        assert_int_equal(stat(path2, &st), 0);
        assert_int_equal(st.st_size, HDR);
        assert_true(k == 0 || st.st_ino != prev);
        prev = st.st_ino;
        assert_int_equal(nt_journal_end(j), at);
        assert_int_equal(nt_journal_bytes(j), size0 + file_size(path1) + HDR);
        nt_journal_close(j);
    }

    /* a crash while creating the fresh segment leaves its temp file: removed by the next open;
     * a crash right after its first partial write leaves a torn tail in it: cut, and the
     * segment, empty again, replaced */
    snprintf(tmp, sizeof(tmp), "%s/%020" PRIu64 ".ntj.tmp", f->dir, at);
    touch(tmp);
    append_bytes(path2, "\x30\x00\x00", 3);
    j = open_ok(f->dir, 0, 0);
    assert_int_equal(access(tmp, F_OK), -1);
    assert_int_equal(list_segments(f->dir, starts, 16), 3);
    assert_int_equal(file_size(path2), HDR);
    check_records(j, 0, 15, pos);
    assert_int_equal(nt_journal_end(j), at);
    nt_journal_close(j);
}

/* Writes 30 records into one segment and flips one bit of record 10's payload: valid records
 * follow it, so it is corruption, not a torn tail. */
static void test_flipped_bit_newest(void **state)
{
    fixture_t *f = *state;
    uint64_t pos[32];
    uint64_t at = 0;
    uint64_t starts[4];
    char path[256];
    char err[1024];
    char expect[512];
    uint8_t rec[256];
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    append_records(j, 0, 30, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    nt_journal_close(j);
    seg_path(path, sizeof(path), f->dir, 0);
    patch_byte(path, HDR + pos[10] + FRAME + FIXED + 2, 0x04);

    uint32_t before = dir_digest(f->dir);
    assert_int_equal(open_err(f->dir, 0, err, sizeof(err)), NT_ECORRUPT);
    snprintf(expect, sizeof(expect),
             "corrupt record in journal segment \"%s/00000000000000000000.ntj\" at offset %" PRIu64
             ": record checksum mismatch; 19 valid records follow it",
             f->dir, HDR + pos[10]);
    expect_contains(err, expect);
    snprintf(expect, sizeof(expect), "needletrace journal salvage --journal-dir %s --out NEWDIR",
             f->dir);
    expect_contains(err, expect);
    /* refused without changing anything: no truncation, no new segment */
    assert_int_equal(dir_digest(f->dir), before);
    assert_int_equal(list_segments(f->dir, starts, 4), 1);

    /* one valid record after a bad one at the very end is enough */
    patch_byte(path, HDR + pos[10] + FRAME + FIXED + 2, 0x04);
    size_t n = build_record(rec, 7, "clinics/a/handpieces/b/telemetry", "payload bytes");
    rec[n - 1] ^= 0x01;
    append_bytes(path, rec, n);
    rec[n - 1] ^= 0x01;
    append_bytes(path, rec, n);
    assert_int_equal(open_err(f->dir, 0, err, sizeof(err)), NT_ECORRUPT);
    snprintf(expect, sizeof(expect), "at offset %" PRIu64 ": record checksum mismatch; 1 valid",
             HDR + at);
    expect_contains(err, expect);

    /* without the record after it, the bad one is a torn tail */
    assert_int_equal(truncate(path, (off_t)(HDR + at + n)), 0);
    j = open_ok(f->dir, 0, 0);
    assert_int_equal(nt_journal_end(j), at);
    check_records(j, 0, 30, pos);
    nt_journal_close(j);
    assert_int_equal(file_size(path), HDR + at);
}

/* A bad record in an older segment is corruption, even with nothing valid after it there. */
static void test_flipped_bit_older(void **state)
{
    fixture_t *f = *state;
    uint64_t pos[100];
    uint64_t at = 0;
    uint64_t starts[64];
    char path[256];
    char err[1024];
    char expect[512];
    size_t nseg = make_segments(f, pos, 100, &at, starts, 64);
    assert_true(nseg >= 3);
    unsigned last = 0; /* the last record of segment 1 */
    while (pos[last + 1] < starts[2]) {
        last++;
    }
    assert_true(pos[last] >= starts[1]);
    seg_path(path, sizeof(path), f->dir, starts[1]);
    uint64_t off = HDR + pos[last] - starts[1];
    patch_byte(path, off + 4, 0x80); /* its CRC */

    uint32_t before = dir_digest(f->dir);
    assert_int_equal(open_err(f->dir, 1024, err, sizeof(err)), NT_ECORRUPT);
    snprintf(expect, sizeof(expect),
             "corrupt record in journal segment \"%s/%020" PRIu64 ".ntj\" at offset %" PRIu64
             ": record checksum mismatch; it is not in the newest segment",
             f->dir, starts[1], off);
    expect_contains(err, expect);
    expect_contains(err, "needletrace journal salvage --journal-dir");
    assert_int_equal(dir_digest(f->dir), before);
    patch_byte(path, off + 4, 0x80);
    assert_int_equal(open_rc(f->dir, 1024), 0);
}

/* The search for valid records after a bad one is bounded: 2 MiB in which every sixth offset
 * passes the cheap checks with a 60000-byte length would cost about 20 GiB of CRC; the search
 * gives up after its budget, and the damage is "unsure": corruption, never a torn tail. */
static void test_resync_bounded(void **state)
{
    fixture_t *f = *state;
    uint64_t pos[8];
    uint64_t at = 0;
    char path[256];
    char err[1024];
    enum { BYTES = 2 * 1024 * 1024 };
    nt_journal_report_t *r = NULL;
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    append_records(j, 0, 5, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    nt_journal_close(j);
    uint8_t *bad = calloc(1, BYTES);
    assert_non_null(bad);
    for (size_t k = 0; k + 6 <= BYTES; k += 6) {
        bad[k] = (uint8_t)(60000 & 0xff); /* length 60000, then zeros: topic length 0 */
        bad[k + 1] = (uint8_t)(60000 >> 8);
    }
    seg_path(path, sizeof(path), f->dir, 0);
    append_bytes(path, bad, BYTES);
    free(bad);

    assert_int_equal(nt_journal_check(f->dir, &r, err, sizeof(err)), 0);
    assert_int_equal(r->state, NT_JOURNAL_CORRUPT);
    assert_int_equal(r->segs[0].records, 5);
    assert_int_equal(r->segs[0].ndamage, 1);
    assert_int_equal(r->segs[0].damage[0].offset, HDR + at);
    assert_int_equal(r->segs[0].damage[0].bytes, BYTES);
    assert_int_equal(r->segs[0].damage[0].unsure, 1);
    assert_int_equal(r->segs[0].damage[0].torn_tail, 0);
    nt_journal_report_free(r);
    assert_int_equal(open_err(f->dir, 0, err, sizeof(err)), NT_ECORRUPT);
    expect_contains(err, "valid records may follow it");
}

/* ---- an unwritten page after a power cut ---------------------------------------------------- */

#define PAGE         4096u
#define HOLE_RECORDS 120u /* about six pages */

enum { HOLE_ZERO_PAGE, HOLE_FLIPPED_BIT, HOLE_GARBAGE_PAGE, HOLE_SHORT_ZEROS, HOLE_MISALIGNED };

/* Overwrites len bytes of path at off with the byte b. */
static void fill_bytes(const char *path, uint64_t off, uint8_t b, size_t len)
{
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    memset(buf, b, len);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
    close(fd);
    free(buf);
}

/* The first of records 0..n-1 (positions pos, in the segment that starts at 0) whose bytes reach
 * past file offset off: the one a change of the byte at off damages. */
static unsigned first_reaching(const uint64_t *pos, unsigned n, uint64_t off)
{
    unsigned i = 0;
    while (i < n && HDR + pos[i] + record_size(i) <= off) {
        i++;
    }
    return i;
}

/* The first of records 0..n-1 that starts at file offset off or after it. */
static unsigned first_from(const uint64_t *pos, unsigned n, uint64_t off)
{
    unsigned i = 0;
    while (i < n && HDR + pos[i] < off) {
        i++;
    }
    return i;
}

/* Writes HOLE_RECORDS records into the first segment in two syncs, as the collector does: the
 * first 30 (acknowledged: they end before the file's third page), then the rest (the third page
 * on). pos gets their positions, path the segment's file; returns its size. */
static uint64_t write_hole_records(fixture_t *f, uint64_t *pos, char *path, size_t cap)
{
    uint64_t at = 0;
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    append_records(j, 0, 30, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    assert_true(HDR + at < 2 * PAGE);
    append_records(j, 30, HOLE_RECORDS - 30, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    nt_journal_close(j);
    seg_path(path, cap, f->dir, 0);
    assert_int_equal(file_size(path), HDR + at);
    assert_true(HDR + at > 5 * PAGE);
    return HDR + at;
}

/* The file offset of the first byte that damage(kind) changes. */
static uint64_t hole_start(int kind)
{
    switch (kind) {
    case HOLE_FLIPPED_BIT:
        return 2 * PAGE + 100;
    case HOLE_MISALIGNED:
        return 2 * PAGE + 512;
    default:
        return 2 * PAGE;
    }
}

/* Damages the file's third page, [2 * PAGE, 3 * PAGE), in one way: valid records follow. */
static void damage(const char *path, int kind)
{
    switch (kind) {
    case HOLE_ZERO_PAGE: /* the page never reached the disk */
        fill_bytes(path, 2 * PAGE, 0, PAGE);
        break;
    case HOLE_FLIPPED_BIT:
        patch_byte(path, hole_start(kind), 0x08);
        break;
    case HOLE_GARBAGE_PAGE:
        fill_bytes(path, 2 * PAGE, 0xa5, PAGE);
        break;
    case HOLE_SHORT_ZEROS: /* one byte short of a page */
        fill_bytes(path, 2 * PAGE, 0, PAGE - 1);
        fill_bytes(path, 3 * PAGE - 1, 0x5a, 1);
        break;
    case HOLE_MISALIGNED: /* a page of zeros that starts 512 bytes into a page */
        fill_bytes(path, hole_start(kind), 0, PAGE);
        break;
    }
}

/* (a) An unwritten page in the newest segment: check reports it distinctly (no corruption); open
 * cuts the segment at the first bad record, the valid-looking records after the page included,
 * and says so; the broker's redelivery appends them again. */
static void test_unwritten_page_newest(void **state)
{
    fixture_t *f = *state;
    uint64_t pos[HOLE_RECORDS];
    char path[256];
    char err[1024];
    char expect[512];
    nt_journal_report_t *r = NULL;
    uint64_t size = write_hole_records(f, pos, path, sizeof(path));
    damage(path, HOLE_ZERO_PAGE);
    unsigned bad = first_reaching(pos, HOLE_RECORDS, 2 * PAGE);
    unsigned after = first_from(pos, HOLE_RECORDS, 3 * PAGE);
    assert_true(bad >= 30 && after > bad + 1 && after < HOLE_RECORDS);
    const uint64_t cut_at = HDR + pos[bad];
    const unsigned discarded = HOLE_RECORDS - after;

    uint32_t before = dir_digest(f->dir);
    assert_int_equal(nt_journal_check(f->dir, &r, err, sizeof(err)), 0);
    assert_int_equal(dir_digest(f->dir), before); /* check cuts nothing */
    assert_int_equal(r->state, NT_JOURNAL_POWER_CUT);
    assert_int_equal(r->segs[0].records, bad + discarded);
    assert_int_equal(r->segs[0].ndamage, 1);
    const nt_journal_damage_t *d = &r->segs[0].damage[0];
    assert_int_equal(d->offset, cut_at);
    assert_int_equal(d->bytes, HDR + pos[after] - cut_at);
    assert_int_equal(d->records_after, discarded);
    assert_int_equal(d->zero_page, 2 * PAGE);
    assert_int_equal(d->unwritten_page, 1);
    assert_int_equal(d->torn_tail, 0);
    assert_int_equal(d->unsure, 0);
    snprintf(expect, sizeof(expect),
             "unwritten page after a power cut in journal segment "
             "\"%s/00000000000000000000.ntj\" at offset %" PRIu64,
             f->dir, cut_at);
    expect_contains(r->verdict, expect);
    snprintf(expect, sizeof(expect),
             "the page at offset %u is all zeros, and the %u valid-looking records after it",
             2 * PAGE, discarded);
    expect_contains(r->verdict, expect);
    snprintf(expect, sizeof(expect), "%" PRIu64 " bytes to cut", size - cut_at);
    expect_contains(r->verdict, expect);
    nt_journal_report_free(r);

    capture_t cap;
    capture_start(&cap, f);
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    char *log = capture_stop(&cap);
    expect_contains(log, "truncated journal segment"); /* logged as JSON: quotes escaped */
    expect_contains(log, "00000000000000000000.ntj");
    snprintf(expect, sizeof(expect),
             "at offset %" PRIu64 " after a power cut: cut %" PRIu64 " bytes", cut_at,
             size - cut_at);
    expect_contains(log, expect);
    snprintf(expect, sizeof(expect),
             "the page at offset %u was never written (it reads as zeros), so the %u "
             "valid-looking records after it were discarded",
             2 * PAGE, discarded);
    expect_contains(log, expect);
    free(log);
    assert_int_equal(file_size(path), cut_at);
    assert_int_equal(nt_journal_end(j), pos[bad]);
    check_records(j, 0, bad, pos);

    /* the broker sends the records that were never acknowledged again: they follow in a fresh
     * segment, at the same positions */
    uint64_t at = pos[bad];
    append_records(j, bad, HOLE_RECORDS - bad, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    check_records(j, 0, HOLE_RECORDS, pos);
    nt_journal_close(j);
    assert_int_equal(nt_journal_check(f->dir, &r, err, sizeof(err)), 0);
    assert_int_equal(r->state, NT_JOURNAL_CLEAN);
    nt_journal_report_free(r);
}

/* (b), (d) A flipped bit, a page of non-zero garbage, a zero run one byte short of a page or one
 * not aligned to a page, with valid records after it, is corruption: refused, nothing changed. */
static void expect_hole_corrupt(fixture_t *f, int kind)
{
    uint64_t pos[HOLE_RECORDS];
    char path[256];
    char err[1024];
    nt_journal_report_t *r = NULL;
    write_hole_records(f, pos, path, sizeof(path));
    damage(path, kind);
    unsigned bad = first_reaching(pos, HOLE_RECORDS, hole_start(kind));

    uint32_t before = dir_digest(f->dir);
    assert_int_equal(nt_journal_check(f->dir, &r, err, sizeof(err)), 0);
    assert_int_equal(r->state, NT_JOURNAL_CORRUPT);
    assert_int_equal(r->segs[0].ndamage, 1);
    const nt_journal_damage_t *d = &r->segs[0].damage[0];
    assert_int_equal(d->offset, HDR + pos[bad]);
    assert_true(d->records_after > 0);
    assert_int_equal(d->zero_page, 0);
    assert_int_equal(d->unwritten_page, 0);
    nt_journal_report_free(r);
    assert_int_equal(open_err(f->dir, 0, err, sizeof(err)), NT_ECORRUPT);
    expect_contains(err, "so it is no torn tail, and it holds no whole 4096-byte page of zeros, "
                         "so it is no page left unwritten by a power cut");
    expect_contains(err, "needletrace journal salvage --journal-dir");
    assert_int_equal(dir_digest(f->dir), before);
}

static void test_unwritten_page_flipped_bit(void **state)
{
    expect_hole_corrupt(*state, HOLE_FLIPPED_BIT);
}

static void test_unwritten_page_garbage(void **state)
{
    expect_hole_corrupt(*state, HOLE_GARBAGE_PAGE);
}

static void test_unwritten_page_short_zeros(void **state)
{
    expect_hole_corrupt(*state, HOLE_SHORT_ZEROS);
}

static void test_unwritten_page_misaligned(void **state)
{
    expect_hole_corrupt(*state, HOLE_MISALIGNED);
}

/* The page of the last sync, partly written: the records from the first one that starts at
 * 2 * PAGE + 100 or after it (mid-page) to the end of that page read as zeros (its new content
 * never reached the disk; beyond the end of the file at the sync it was written with zeros), the
 * next page did reach the disk. With stray set, one byte among those zeros is not zero. Returns
 * the first zeroed record; *after is the first valid one after the zeros. */
static unsigned partial_page(fixture_t *f, uint64_t *pos, char *path, size_t cap, int stray,
                             unsigned *after)
{
    write_hole_records(f, pos, path, cap);
    unsigned bad = first_from(pos, HOLE_RECORDS, 2 * PAGE + 100);
    const uint64_t from = HDR + pos[bad];
    assert_true(from % PAGE != 0 && from < 3 * PAGE - 64);
    fill_bytes(path, from, 0, (size_t)(3 * PAGE - from));
    if (stray) {
        fill_bytes(path, from + (3 * PAGE - from) / 2, 0x01, 1);
    }
    *after = first_from(pos, HOLE_RECORDS, 3 * PAGE);
    assert_true(*after > bad + 1 && *after < HOLE_RECORDS);
    return bad;
}

/* (e) Zeros from a record in the middle of a page to its end, valid records after them: the
 * same unwritten page after a power cut (the page named is the bad record's), cut there. */
static void test_unwritten_page_partial(void **state)
{
    fixture_t *f = *state;
    uint64_t pos[HOLE_RECORDS];
    char path[256];
    char err[1024];
    char expect[512];
    nt_journal_report_t *r = NULL;
    unsigned after;
    unsigned bad = partial_page(f, pos, path, sizeof(path), 0, &after);
    const uint64_t size = file_size(path);
    const uint64_t cut_at = HDR + pos[bad];
    const unsigned discarded = HOLE_RECORDS - after;

    uint32_t before = dir_digest(f->dir);
    assert_int_equal(nt_journal_check(f->dir, &r, err, sizeof(err)), 0);
    assert_int_equal(dir_digest(f->dir), before);
    assert_int_equal(r->state, NT_JOURNAL_POWER_CUT);
    assert_int_equal(r->segs[0].records, bad + discarded);
    assert_int_equal(r->segs[0].ndamage, 1);
    const nt_journal_damage_t *d = &r->segs[0].damage[0];
    assert_int_equal(d->offset, cut_at);
    assert_int_equal(d->bytes, HDR + pos[after] - cut_at);
    assert_int_equal(d->records_after, discarded);
    assert_int_equal(d->zero_page, 2 * PAGE);
    assert_int_equal(d->unwritten_page, 1);
    assert_int_equal(d->torn_tail, 0);
    assert_int_equal(d->unsure, 0);
    snprintf(expect, sizeof(expect),
             "unwritten page after a power cut in journal segment "
             "\"%s/00000000000000000000.ntj\" at offset %" PRIu64,
             f->dir, cut_at);
    expect_contains(r->verdict, expect);
    snprintf(expect, sizeof(expect),
             "the page at offset %u is all zeros, and the %u valid-looking records after it",
             2 * PAGE, discarded);
    expect_contains(r->verdict, expect);
    nt_journal_report_free(r);

    capture_t cap;
    capture_start(&cap, f);
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    char *log = capture_stop(&cap);
    snprintf(expect, sizeof(expect),
             "at offset %" PRIu64 " after a power cut: cut %" PRIu64 " bytes", cut_at,
             size - cut_at);
    expect_contains(log, expect);
    snprintf(expect, sizeof(expect),
             "the page at offset %u was never written (it reads as zeros), so the %u "
             "valid-looking records after it were discarded",
             2 * PAGE, discarded);
    expect_contains(log, expect);
    free(log);
    assert_int_equal(file_size(path), cut_at);
    assert_int_equal(nt_journal_end(j), pos[bad]);
    check_records(j, 0, bad, pos);
    nt_journal_close(j);
}

/* (f) The same with one non-zero byte among the zeros: corruption, refused, nothing changed. */
static void test_unwritten_page_partial_stray_byte(void **state)
{
    fixture_t *f = *state;
    uint64_t pos[HOLE_RECORDS];
    char path[256];
    char err[1024];
    nt_journal_report_t *r = NULL;
    unsigned after;
    unsigned bad = partial_page(f, pos, path, sizeof(path), 1, &after);

    uint32_t before = dir_digest(f->dir);
    assert_int_equal(nt_journal_check(f->dir, &r, err, sizeof(err)), 0);
    assert_int_equal(r->state, NT_JOURNAL_CORRUPT);
    assert_int_equal(r->segs[0].ndamage, 1);
    const nt_journal_damage_t *d = &r->segs[0].damage[0];
    assert_int_equal(d->offset, HDR + pos[bad]);
    assert_int_equal(d->records_after, HOLE_RECORDS - after);
    assert_int_equal(d->zero_page, 0);
    assert_int_equal(d->unwritten_page, 0);
    nt_journal_report_free(r);
    assert_int_equal(open_err(f->dir, 0, err, sizeof(err)), NT_ECORRUPT);
    expect_contains(err, "corrupt record in journal segment");
    expect_contains(err, "needletrace journal salvage --journal-dir");
    assert_int_equal(dir_digest(f->dir), before);
}

/* (c) The same page of zeros in an older segment is corruption (a segment is synced whole before
 * the next one starts); once that segment is the newest again, it is an unwritten page. */
static void test_unwritten_page_older(void **state)
{
    fixture_t *f = *state;
    uint64_t pos[HOLE_RECORDS + 5];
    char path[256];
    char newer[256];
    char err[1024];
    nt_journal_report_t *r = NULL;
    uint64_t at = write_hole_records(f, pos, path, sizeof(path)) - HDR;
    nt_journal_t *j = open_ok(f->dir, 0, 0); /* a fresh segment after it */
    append_records(j, HOLE_RECORDS, 5, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    nt_journal_close(j);
    damage(path, HOLE_ZERO_PAGE);
    unsigned bad = first_reaching(pos, HOLE_RECORDS, 2 * PAGE);

    uint32_t before = dir_digest(f->dir);
    assert_int_equal(nt_journal_check(f->dir, &r, err, sizeof(err)), 0);
    assert_int_equal(r->state, NT_JOURNAL_CORRUPT);
    assert_int_equal(r->nsegs, 2);
    assert_int_equal(r->segs[0].ndamage, 1);
    assert_int_equal(r->segs[0].damage[0].offset, HDR + pos[bad]);
    assert_true(r->segs[0].damage[0].records_after > 0);
    assert_int_equal(r->segs[0].damage[0].unwritten_page, 0);
    assert_int_equal(r->segs[1].ndamage, 0);
    nt_journal_report_free(r);
    assert_int_equal(open_err(f->dir, 0, err, sizeof(err)), NT_ECORRUPT);
    expect_contains(err, "corrupt record in journal segment");
    expect_contains(err, "valid records follow it, so it is no torn tail");
    assert_int_equal(dir_digest(f->dir), before);

    seg_path(newer, sizeof(newer), f->dir, pos[HOLE_RECORDS]);
    assert_int_equal(unlink(newer), 0);
    assert_int_equal(nt_journal_check(f->dir, &r, err, sizeof(err)), 0);
    assert_int_equal(r->state, NT_JOURNAL_POWER_CUT);
    nt_journal_report_free(r);
}

/* Only the stretch between a bad record and the next valid one counts: a record whose payload
 * holds whole pages of zeros is valid; a bad record beside it, or a bad acknowledged record
 * before an unwritten page, is corruption; after the first unwritten page, more of them and a
 * torn tail are cut with it. */
static void test_unwritten_page_only_in_damage(void **state)
{
    fixture_t *f = *state;
    uint64_t pos[HOLE_RECORDS];
    uint64_t at = 0;
    char path[256];
    char err[1024];
    nt_journal_report_t *r = NULL;
    uint8_t *zeros = calloc(1, 3 * PAGE);
    assert_non_null(zeros);
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    append_records(j, 0, 20, pos, &at);
    assert_int_equal(
        nt_journal_append(j, 1, "clinics/z/handpieces/z/telemetry", 32, zeros, 3 * PAGE), 0);
    at += FRAME + FIXED + 32 + 3 * PAGE;
    append_records(j, 20, 10, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    nt_journal_close(j);
    free(zeros);
    seg_path(path, sizeof(path), f->dir, 0);
    assert_int_equal(nt_journal_check(f->dir, &r, err, sizeof(err)), 0);
    assert_int_equal(r->state, NT_JOURNAL_CLEAN);
    assert_int_equal(r->segs[0].records, 31);
    nt_journal_report_free(r);

    patch_byte(path, HDR + pos[19] + FRAME + FIXED + 1, 0x02); /* the record before it */
    assert_int_equal(nt_journal_check(f->dir, &r, err, sizeof(err)), 0);
    assert_int_equal(r->state, NT_JOURNAL_CORRUPT);
    assert_int_equal(r->segs[0].ndamage, 1);
    assert_int_equal(r->segs[0].damage[0].offset, HDR + pos[19]);
    assert_int_equal(r->segs[0].damage[0].bytes, record_size(19));
    assert_int_equal(r->segs[0].damage[0].zero_page, 0);
    nt_journal_report_free(r);
    assert_int_equal(open_rc(f->dir, 0), NT_ECORRUPT);
    assert_int_equal(nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);

    /* a flipped bit in an acknowledged record before an unwritten page: refused */
    write_hole_records(f, pos, path, sizeof(path));
    damage(path, HOLE_ZERO_PAGE);
    patch_byte(path, HDR + pos[3] + FRAME + FIXED + 1, 0x02);
    assert_int_equal(open_rc(f->dir, 0), NT_ECORRUPT);
    patch_byte(path, HDR + pos[3] + FRAME + FIXED + 1, 0x02);

    /* a second unwritten page and a torn tail after the first: all cut at the first */
    fill_bytes(path, 4 * PAGE, 0, PAGE);
    append_bytes(path, "\x30\x00\x00", 3);
    assert_int_equal(nt_journal_check(f->dir, &r, err, sizeof(err)), 0);
    assert_int_equal(r->state, NT_JOURNAL_POWER_CUT);
    assert_int_equal(r->segs[0].ndamage, 3);
    assert_int_equal(r->segs[0].damage[1].unwritten_page, 1);
    assert_int_equal(r->segs[0].damage[1].zero_page, 4 * PAGE);
    assert_int_equal(r->segs[0].damage[2].torn_tail, 1);
    unsigned bad = first_reaching(pos, HOLE_RECORDS, 2 * PAGE);
    assert_int_equal(r->segs[0].damage[0].offset, HDR + pos[bad]);
    assert_int_equal(r->segs[0].damage[0].records_after,
                     r->segs[0].records - bad); /* every valid-looking record after it */
    nt_journal_report_free(r);
    j = open_ok(f->dir, 0, 0);
    assert_int_equal(nt_journal_end(j), pos[bad]);
    check_records(j, 0, bad, pos);
    nt_journal_close(j);
    assert_int_equal(file_size(path), HDR + pos[bad]);
}

/* ---- check and salvage -------------------------------------------------------------------- */

typedef struct {
    uint64_t pos[100];
    uint64_t at;
    uint64_t starts[64];
    size_t nseg;
    unsigned bad1;  /* one bad record in segment 1 */
    unsigned bad2;  /* two bad records in a row in segment 2: bad2 and bad2 + 1 */
    size_t garbage; /* bytes of garbage after the last record of the newest segment */
    uint64_t lost;  /* bytes of all that */
    unsigned valid; /* valid records left */
} damaged_t;

/* Writes 100 records in segments of about 1 KiB, then damages segment 1 (one record), segment 2
 * (two adjacent records) and the tail of the newest segment. */
static void make_damaged(fixture_t *f, damaged_t *d)
{
    static const char garbage[] = "\x11\x22\x33 not a record at all";
    char path[256];
    memset(d, 0, sizeof(*d));
    d->nseg = make_segments(f, d->pos, 100, &d->at, d->starts, 64);
    assert_true(d->nseg >= 5);
    d->bad1 = 0;
    while (d->pos[d->bad1] < d->starts[1]) {
        d->bad1++;
    }
    d->bad1++; /* the second record of segment 1 */
    d->bad2 = 0;
    while (d->pos[d->bad2] < d->starts[2]) {
        d->bad2++;
    }
    assert_true(d->pos[d->bad2 + 2] < d->starts[3]);
    seg_path(path, sizeof(path), f->dir, d->starts[1]);
    patch_byte(path, HDR + d->pos[d->bad1] - d->starts[1] + FRAME, 0x01); /* received_us */
    seg_path(path, sizeof(path), f->dir, d->starts[2]);
    patch_byte(path, HDR + d->pos[d->bad2] - d->starts[2] + 1, 0x40);     /* length */
    patch_byte(path, HDR + d->pos[d->bad2 + 1] - d->starts[2] + 6, 0x02); /* CRC */
    seg_path(path, sizeof(path), f->dir, d->starts[d->nseg - 1]);
    append_bytes(path, garbage, sizeof(garbage) - 1);
    d->garbage = sizeof(garbage) - 1;
    d->lost = record_size(d->bad1) + record_size(d->bad2) + record_size(d->bad2 + 1) + d->garbage;
    d->valid = 100 - 3;
}

static void test_check_report(void **state)
{
    fixture_t *f = *state;
    damaged_t d;
    char err[1024];
    char expect[512];
    char tmp[256];
    nt_journal_report_t *r = NULL;
    make_damaged(f, &d);
    snprintf(tmp, sizeof(tmp), "%s/%020d.ntj.tmp", f->dir, 12345);
    touch(tmp);

    uint32_t before = dir_digest(f->dir);
    assert_int_equal(nt_journal_check(f->dir, &r, err, sizeof(err)), 0);
    assert_int_equal(dir_digest(f->dir), before); /* read only: not even the leftover removed */
    assert_int_equal(r->state, NT_JOURNAL_CORRUPT);
    assert_int_equal(r->nsegs, d.nseg);
    assert_int_equal(r->leftovers, 1);
    assert_int_equal(r->missing_bytes, 0);
    uint64_t records = 0;
    uint64_t lost = 0;
    for (size_t i = 0; i < r->nsegs; i++) {
        const nt_journal_segment_report_t *s = &r->segs[i];
        char name[32];
        snprintf(name, sizeof(name), "%020" PRIu64 ".ntj", d.starts[i]);
        assert_string_equal(s->name, name);
        assert_int_equal(s->start, d.starts[i]);
        assert_string_equal(s->header_error, "");
        assert_int_equal(s->ndamage, i == 1 || i == 2 || i + 1 == r->nsegs ? 1 : 0);
        uint64_t end = i + 1 < r->nsegs ? d.starts[i + 1] : d.at;
        assert_int_equal(s->file_bytes,
                         HDR + end - d.starts[i] + (i + 1 == r->nsegs ? d.garbage : 0));
        assert_int_equal(s->record_bytes + s->lost_bytes + HDR, s->file_bytes);
        records += s->records;
        lost += s->lost_bytes;
    }
    assert_int_equal(records, d.valid);
    assert_int_equal(lost, d.lost);

    const nt_journal_damage_t *x = &r->segs[1].damage[0];
    assert_int_equal(x->offset, HDR + d.pos[d.bad1] - d.starts[1]);
    assert_int_equal(x->bytes, record_size(d.bad1));
    assert_string_equal(x->reason, "record checksum mismatch");
    assert_int_equal(x->records_after, r->segs[1].records - 1); /* all but the one before it */
    assert_int_equal(x->torn_tail, 0);
    x = &r->segs[2].damage[0];
    assert_int_equal(x->offset, HDR);
    assert_int_equal(x->bytes, record_size(d.bad2) + record_size(d.bad2 + 1));
    assert_int_equal(x->records_after, r->segs[2].records);
    assert_int_equal(x->torn_tail, 0);
    x = &r->segs[r->nsegs - 1].damage[0];
    assert_int_equal(x->bytes, d.garbage);
    assert_int_equal(x->records_after, 0);
    assert_int_equal(x->unsure, 0);
    assert_int_equal(x->torn_tail, 1); /* a torn tail, but the journal is corrupt before it */
    snprintf(expect, sizeof(expect),
             "corrupt record in journal segment \"%s/%020" PRIu64 ".ntj\" at offset %" PRIu64,
             f->dir, d.starts[1], HDR + d.pos[d.bad1] - d.starts[1]);
    expect_contains(r->verdict, expect);
    nt_journal_report_free(r);
    nt_journal_report_free(NULL);

    /* a directory with no segment is clean; a missing one is an error */
    assert_int_equal(nt_journal_check(f->tmp, &r, err, sizeof(err)), 0); /* no segments: clean */
    assert_int_equal(r->state, NT_JOURNAL_CLEAN);
    assert_int_equal(r->nsegs, 0);
    nt_journal_report_free(r);
    snprintf(tmp, sizeof(tmp), "%s/nowhere", f->tmp);
    assert_int_equal(nt_journal_check(tmp, &r, err, sizeof(err)), NT_ENOENT);
    assert_null(r);
    expect_contains(err, "does not exist");
}

/* check names a torn tail but counts it as no corruption; open cuts it; then check is clean. */
static void test_check_torn_then_clean(void **state)
{
    fixture_t *f = *state;
    uint64_t pos[16];
    uint64_t at = 0;
    char path[256];
    char err[1024];
    nt_journal_report_t *r = NULL;
    nt_journal_t *j = open_ok(f->dir, 0, 0);
    append_records(j, 0, 12, pos, &at);
    assert_int_equal(nt_journal_sync(j), 0);
    nt_journal_close(j);
    seg_path(path, sizeof(path), f->dir, 0);
    append_bytes(path, "\x05\x00\x00\x00\x01\x02", 6);

    assert_int_equal(nt_journal_check(f->dir, &r, err, sizeof(err)), 0);
    assert_int_equal(r->state, NT_JOURNAL_TORN_TAIL);
    assert_int_equal(r->nsegs, 1);
    assert_int_equal(r->segs[0].records, 12);
    assert_int_equal(r->segs[0].damage[0].offset, HDR + at);
    assert_int_equal(r->segs[0].damage[0].bytes, 6);
    assert_int_equal(r->segs[0].damage[0].torn_tail, 1);
    expect_contains(r->verdict, "torn tail of journal segment");
    nt_journal_report_free(r);
    assert_int_equal(file_size(path), HDR + at + 6); /* check cut nothing */

    /* the lock: check refuses beside a collector */
    j = open_ok(f->dir, 0, 0);
    assert_int_equal(nt_journal_check(f->dir, &r, err, sizeof(err)), NT_EIO);
    assert_null(r);
    expect_contains(err, "a collector is running on it");
    nt_journal_close(j);

    assert_int_equal(nt_journal_check(f->dir, &r, err, sizeof(err)), 0);
    assert_int_equal(r->state, NT_JOURNAL_CLEAN);
    assert_int_equal(r->nsegs, 2); /* the fresh segment of the open */
    assert_int_equal(r->segs[0].records, 12);
    assert_int_equal(r->segs[1].start, at);
    assert_int_equal(r->segs[1].file_bytes, HDR);
    assert_string_equal(r->verdict, "");
    nt_journal_report_free(r);
}

/* Reads the whole journal in dir from its start and checks that it holds exactly the records
 * expect[0..n) (record numbers), in order. */
static void expect_journal(const char *dir, const unsigned *expect, unsigned n)
{
    nt_journal_record_t rec;
    nt_journal_t *j = open_ok(dir, 0, 0);
    uint64_t at = nt_journal_start(j);
    for (unsigned k = 0; k < n; k++) {
        assert_int_equal(nt_journal_read(j, at, &rec), 1);
        expect_record(&rec, expect[k]);
        at = rec.next_pos;
    }
    assert_int_equal(nt_journal_read(j, at, &rec), 0);
    assert_int_equal(at, nt_journal_end(j));
    nt_journal_close(j);
}

static void test_salvage_reports_loss(void **state)
{
    fixture_t *f = *state;
    damaged_t d;
    char err[1024];
    char out[256];
    unsigned expect[100];
    nt_journal_salvage_t res;
    nt_journal_report_t *r = NULL;
    make_damaged(f, &d);
    snprintf(out, sizeof(out), "%s/salvaged", f->tmp);
    nt_journal_options_t o = {.dir = out, .segment_bytes = 2048};

    uint32_t before = dir_digest(f->dir);
    assert_int_equal(nt_journal_salvage(f->dir, &o, &res, err, sizeof(err)), 0);
    assert_int_equal(dir_digest(f->dir), before); /* the old journal is left as it was */
    assert_int_equal(res.records, d.valid);
    assert_int_equal(res.lost_bytes, d.lost);
    assert_int_equal(res.record_bytes, d.at - (d.lost - d.garbage));
    assert_int_equal(res.report->state, NT_JOURNAL_CORRUPT);
    assert_true(res.new_id != res.report->id);
    assert_int_equal(res.new_end, res.record_bytes);
    assert_int_equal(res.report->segs[2].damage[0].bytes,
                     record_size(d.bad2) + record_size(d.bad2 + 1));
    nt_journal_report_free(res.report);

    /* the new journal is clean and holds every valid record, in order */
    assert_int_equal(nt_journal_check(out, &r, err, sizeof(err)), 0);
    assert_int_equal(r->state, NT_JOURNAL_CLEAN);
    nt_journal_report_free(r);
    unsigned n = 0;
    for (unsigned i = 0; i < 100; i++) {
        if (i != d.bad1 && i != d.bad2 && i != d.bad2 + 1) {
            expect[n++] = i;
        }
    }
    assert_int_equal(n, d.valid);
    expect_journal(out, expect, n);

    /* never into a directory that exists already; never beside a collector */
    assert_int_equal(nt_journal_salvage(f->dir, &o, &res, err, sizeof(err)), NT_EINVAL);
    assert_null(res.report);
    expect_contains(err, "does not exist yet");
    char out2[256];
    snprintf(out2, sizeof(out2), "%s/salvaged2", f->tmp);
    o.dir = out2;
    nt_journal_t *j = open_ok(out, 0, 0);
    assert_int_equal(nt_journal_salvage(out, &o, &res, err, sizeof(err)), NT_EIO);
    expect_contains(err, "a collector is running on it");
    nt_journal_close(j);
}

static void test_salvage_clean(void **state)
{
    fixture_t *f = *state;
    uint64_t pos[200];
    uint64_t at = 0;
    uint64_t starts[128];
    unsigned expect[200];
    char err[1024];
    char out[256];
    nt_journal_salvage_t res;
    make_segments(f, pos, 200, &at, starts, 128);
    nt_journal_t *j = open_ok(f->dir, 0, 1024); /* adds the fresh, empty segment */
    uint64_t id = nt_journal_id(j);
    nt_journal_close(j);

    snprintf(out, sizeof(out), "%s/new/journal", f->tmp);
    nt_journal_options_t o = {.dir = out};
    assert_int_equal(nt_journal_salvage(f->dir, &o, &res, err, sizeof(err)), 0);
    assert_int_equal(res.records, 200);
    assert_int_equal(res.record_bytes, at);
    assert_int_equal(res.lost_bytes, 0);
    assert_int_equal(res.report->state, NT_JOURNAL_CLEAN);
    assert_int_equal(res.report->id, id);
    assert_true(res.new_id != id);
    assert_int_equal(res.new_end, at);
    nt_journal_report_free(res.report);
    for (unsigned i = 0; i < 200; i++) {
        expect[i] = i;
    }
    expect_journal(out, expect, 200);
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
        cmocka_unit_test_setup_teardown(test_fresh_segment_per_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flipped_bit_newest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flipped_bit_older, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resync_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritten_page_newest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritten_page_flipped_bit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritten_page_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritten_page_short_zeros, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritten_page_misaligned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritten_page_partial, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritten_page_partial_stray_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritten_page_older, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritten_page_only_in_damage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_report, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_torn_then_clean, setup, teardown),
        cmocka_unit_test_setup_teardown(test_salvage_reports_loss, setup, teardown),
        cmocka_unit_test_setup_teardown(test_salvage_clean, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_in_steps, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
