/* fuzz_journal.c -- libFuzzer target for the journal reader: recovery (nt_journal_init), the
 * read-only scan (nt_journal_check), salvage (nt_journal_salvage) and nt_journal_read, over
 * segment files built from the input. No input may crash them, leak memory or descriptors, or
 * break these invariants:
 *  - check changes no file; its verdict agrees with nt_journal_init (corrupt <=> NT_ECORRUPT);
 *  - an unwritten page (power cut) is only reported in the newest segment, with valid records
 *    after it, and its page lies inside the damage, 4096-aligned, and holds only zeros; a power
 *    cut verdict is the newest segment's first damage, every older segment sound;
 *  - after a successful init, every record in [start, end) reads in order: positions increase,
 *    lengths are bounded, and there are as many as check counted (less, after a power cut, the
 *    records after the unwritten page: cut); a second check is clean;
 *  - salvage copies exactly the records check counted, loses exactly the bytes it reported,
 *    and its new journal checks clean.
 *
 * Input: byte 0 chooses the number of segments (1 + byte % 3); then, per segment, a mode byte,
 * a 2-byte little-endian length L and L bytes (the last segment takes what is left, and so may
 * a length that runs past the end). Mode & 3: 0 = the target writes a sound header (fixed
 * journal id, start = end of the previous segment) and the L bytes are records; 1 = the L bytes
 * are the whole file, header included; 2 = a sound header whose start is off by (mode >> 2) + 1;
 * 3 = a sound header with another journal id. A file is named after the start that mode 0
 * would give it. The files go to a directory of this process on tmpfs (/dev/shm), emptied at
 * every input; after each input the lowest free descriptor is what it was before (no fd leak). */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "needletrace/common.h"
#include "needletrace/journal.h"
#include "needletrace/log.h"

#define HDR         32u
#define PAGE        4096u
#define FUZZ_ID     0x6e74667a7a6a726eull
#define MAX_SEGS    3
#define MAX_PAYLOAD (NT_MAX_PAYLOAD_BYTES + 1u)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char base[128]; /* this process's directory */
static char jdir[192]; /* the journal under test */
static char sdir[192]; /* salvage output */

typedef struct {
    uint64_t start;
    uint8_t *bytes; /* the whole file as written */
    size_t len;
} seg_t;

/* Removes every entry of dir (files only: the journal makes no subdirectory), then dir itself
 * when rmdir_too. */
static void empty_dir(const char *dir, int rmdir_too)
{
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
                unlinkat(dirfd(d), de->d_name, 0);
            }
        }
        closedir(d);
    }
    if (rmdir_too) {
        rmdir(dir);
    }
}

static void cleanup(void)
{
    empty_dir(jdir, 1);
    empty_dir(sdir, 1);
    rmdir(base);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    struct stat st;
    const char *root = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(base, sizeof(base), "%s/nt_fuzz_journal.%ld", root, (long)getpid());
    snprintf(jdir, sizeof(jdir), "%s/j", base);
    snprintf(sdir, sizeof(sdir), "%s/s", base);
    if (mkdir(base, 0700) != 0 || mkdir(jdir, 0700) != 0) {
        abort();
    }
    atexit(cleanup);
    nt_log_setup(NT_LOG_ERROR, NT_LOG_TEXT); /* torn tails are expected: no warnings */
    return 0;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

/* The lowest free file descriptor. */
static int lowest_free_fd(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        abort();
    }
    close(fd);
    return fd;
}

/* Splits the input into segment files (see the top of the file). Returns how many. */
static size_t build(const uint8_t *data, size_t size, seg_t *segs)
{
    size_t n = 1 + data[0] % MAX_SEGS;
    size_t off = 1;
    uint64_t start = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t mode = off < size ? data[off] : 0;
        size_t len = off + 3 <= size ? (size_t)(data[off + 1] | data[off + 2] << 8) : 0;
        off = off + 3 < size ? off + 3 : size;
        if (len > size - off || i + 1 == n) {
            len = size - off;
        }
        seg_t *s = &segs[i];
        int raw = (mode & 3) == 1;
        if (i > 0 && start <= segs[i - 1].start) {
            start = segs[i - 1].start + 1; /* an empty one before: names must differ */
        }
        s->start = start;
        s->len = raw ? len : HDR + len;
        s->bytes = malloc(s->len ? s->len : 1);
        if (s->bytes == NULL) {
            abort();
        }
        if (!raw) {
            memcpy(s->bytes, "NTJ1", 4);
            put32(s->bytes + 4, 1);
            put64(s->bytes + 8, (mode & 3) == 3 ? FUZZ_ID + 1 : FUZZ_ID);
            put64(s->bytes + 16, (mode & 3) == 2 ? start + (mode >> 2) + 1u : start);
            put64(s->bytes + 24, 0);
        }
        memcpy(s->bytes + (raw ? 0 : HDR), data + off, len);
        off += len;
        start += s->len > HDR ? s->len - HDR : 0;
    }
    return n;
}

static void write_file(const seg_t *s)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%020" PRIu64 ".ntj", jdir, s->start);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || (s->len > 0 && write(fd, s->bytes, s->len) != (ssize_t)s->len)) {
        abort();
    }
    close(fd);
}

/* The file of s is still exactly what was written. */
static void expect_unchanged(const seg_t *s)
{
    char path[256];
    uint8_t buf[1];
    snprintf(path, sizeof(path), "%s/%020" PRIu64 ".ntj", jdir, s->start);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    uint8_t *got = malloc(s->len + 1);
    if (fd < 0 || got == NULL) {
        abort();
    }
    ssize_t n = s->len > 0 ? read(fd, got, s->len) : 0;
    if (n != (ssize_t)s->len || read(fd, buf, 1) != 0 || memcmp(got, s->bytes, s->len) != 0) {
        abort();
    }
    free(got);
    close(fd);
}

static uint64_t report_records(const nt_journal_report_t *r)
{
    uint64_t n = 0;
    for (size_t i = 0; i < r->nsegs; i++) {
        n += r->segs[i].records;
    }
    return n;
}

static uint64_t report_lost(const nt_journal_report_t *r)
{
    uint64_t n = r->missing_bytes;
    for (size_t i = 0; i < r->nsegs; i++) {
        n += r->segs[i].lost_bytes;
    }
    return n;
}

/* An unwritten page reported in damage d of segment i (of r) is where it may be. */
static int bad_unwritten_page(const nt_journal_report_t *r, size_t i, const nt_journal_damage_t *d)
{
    if (!d->unwritten_page) {
        return 0;
    }
    /* The page of zeros is aligned and either lies whole inside the damaged stretch, or is the
     * bad record's own page, zero from the bad record to its end (the page of the last sync). */
    uint64_t page_end = d->zero_page + PAGE;
    int whole = d->zero_page >= d->offset && page_end <= d->offset + d->bytes;
    int own = d->zero_page <= d->offset && d->offset < page_end && page_end <= d->offset + d->bytes;
    return i + 1 != r->nsegs || d->zero_page % PAGE != 0 || !(whole || own) ||
           d->records_after == 0 || d->unsure || d->torn_tail;
}

/* A power cut verdict: the newest segment's first damage is an unwritten page, every older
 * segment is sound. */
static int bad_power_cut(const nt_journal_report_t *r)
{
    if (r->state != NT_JOURNAL_POWER_CUT) {
        return 0;
    }
    const nt_journal_segment_report_t *s = &r->segs[r->nsegs - 1];
    for (size_t i = 0; i + 1 < r->nsegs; i++) {
        if (r->segs[i].ndamage != 0 || r->segs[i].header_error[0] != '\0') {
            return 1;
        }
    }
    return s->header_error[0] != '\0' || s->ndamage == 0 || !s->damage[0].unwritten_page;
}

/* Checks dir and returns its report; aborts when the check itself fails. */
static nt_journal_report_t *check(const char *dir)
{
    char err[1024];
    nt_journal_report_t *r = NULL;
    if (nt_journal_check(dir, &r, err, sizeof(err)) != 0 || r == NULL) {
        abort();
    }
    for (size_t i = 0; i < r->nsegs; i++) {
        const nt_journal_segment_report_t *s = &r->segs[i];
        uint64_t prev_end = HDR;
        for (size_t k = 0; k < s->ndamage; k++) {
            const nt_journal_damage_t *d = &s->damage[k];
            if (d->offset < prev_end || d->bytes == 0 || d->offset + d->bytes > s->file_bytes ||
                d->records_after > s->records ||
                memchr(d->reason, '\0', sizeof(d->reason)) == NULL ||
                (d->torn_tail && (i + 1 != r->nsegs || d->records_after != 0 || d->unsure)) ||
                bad_unwritten_page(r, i, d)) {
                abort();
            }
            prev_end = d->offset + d->bytes;
        }
    }
    if (bad_power_cut(r)) {
        abort();
    }
    return r;
}

/* Every page of zeros that check reported holds only zeros in the file as written: the whole
 * page, or, when it is the bad record's own page, from the bad record to the page's end. */
static void expect_zero_pages(const nt_journal_report_t *r, const seg_t *segs, size_t n)
{
    for (size_t i = 0; i < r->nsegs; i++) {
        const nt_journal_segment_report_t *s = &r->segs[i];
        for (size_t k = 0; k < s->ndamage; k++) {
            uint64_t z = s->damage[k].zero_page;
            if (!s->damage[k].unwritten_page) {
                continue;
            }
            if (i >= n || segs[i].start != s->start || z + PAGE > segs[i].len) {
                abort();
            }
            uint64_t from = s->damage[k].offset > z ? s->damage[k].offset - z : 0;
            for (size_t b = (size_t)from; b < PAGE; b++) {
                if (segs[i].bytes[z + b] != 0) {
                    abort();
                }
            }
        }
    }
}

/* The records a successful init keeps: all valid ones, but for those after an unwritten page of
 * the newest segment, which it cuts. */
static uint64_t records_kept(const nt_journal_report_t *r)
{
    uint64_t n = report_records(r);
    if (r->state == NT_JOURNAL_POWER_CUT) {
        n -= r->segs[r->nsegs - 1].damage[0].records_after;
    }
    return n;
}

/* Reads every record of an open journal from its start: returns how many. */
static uint64_t read_all(nt_journal_t *j)
{
    nt_journal_record_t rec;
    uint64_t at = nt_journal_start(j);
    uint64_t end = nt_journal_end(j);
    uint64_t n = 0;
    int rc;
    while ((rc = nt_journal_read(j, at, &rec)) == 1) {
        if (rec.pos != at || rec.next_pos <= at || rec.next_pos > end || rec.topic_len > 65535 ||
            rec.payload_len > MAX_PAYLOAD ||
            rec.next_pos - rec.pos != 8u + 10u + rec.topic_len + rec.payload_len) {
            abort();
        }
        at = rec.next_pos;
        n++;
    }
    if (rc != 0 || at != end || nt_journal_read(j, end + 1, &rec) != NT_EINVAL) {
        abort();
    }
    return n;
}

/* Salvages the journal and checks the copy against the report r of the original. */
static void salvage(const nt_journal_report_t *r)
{
    char err[1024];
    nt_journal_salvage_t res;
    nt_journal_options_t o = {.dir = sdir, .segment_bytes = 4096};
    if (nt_journal_salvage(jdir, &o, &res, err, sizeof(err)) != 0) {
        abort();
    }
    if (res.records != report_records(r) || res.lost_bytes != report_lost(r) ||
        res.report->state != r->state) {
        abort();
    }
    nt_journal_report_free(res.report);
    nt_journal_report_t *copy = check(sdir);
    if (copy->state != NT_JOURNAL_CLEAN || report_records(copy) != res.records) {
        abort();
    }
    nt_journal_report_free(copy);
    empty_dir(sdir, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    seg_t segs[MAX_SEGS];
    char err[1024];
    if (size < 1) {
        return 0;
    }
    int free_fd = lowest_free_fd();
    size_t n = build(data, size, segs);
    for (size_t i = 0; i < n; i++) {
        write_file(&segs[i]);
    }

    nt_journal_report_t *r = check(jdir);
    for (size_t i = 0; i < n; i++) {
        expect_unchanged(&segs[i]);
    }
    expect_zero_pages(r, segs, n);
    salvage(r);

    nt_journal_t *j = NULL;
    nt_journal_options_t o = {.dir = jdir, .segment_bytes = 4096};
    int rc = nt_journal_init(&j, &o, err, sizeof(err));
    if ((rc == NT_ECORRUPT) != (r->state == NT_JOURNAL_CORRUPT) || (rc != 0 && rc != NT_ECORRUPT) ||
        (rc != 0) != (j == NULL) || (rc != 0 && err[0] == '\0')) {
        abort();
    }
    if (rc == 0) {
        if (read_all(j) != records_kept(r)) {
            abort();
        }
        nt_journal_close(j);
        nt_journal_report_t *again = check(jdir);
        if (again->state != NT_JOURNAL_CLEAN || report_records(again) != records_kept(r)) {
            abort();
        }
        nt_journal_report_free(again);
    } else {
        for (size_t i = 0; i < n; i++) {
            expect_unchanged(&segs[i]); /* a refused journal is left as it was */
        }
    }
    nt_journal_report_free(r);
    for (size_t i = 0; i < n; i++) {
        free(segs[i].bytes);
    }
    empty_dir(jdir, 0);
    if (lowest_free_fd() != free_fd) {
        abort(); /* a descriptor leaked */
    }
    return 0;
}
