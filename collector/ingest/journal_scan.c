/* journal_scan.c -- checks every record of a journal directory without changing it: the report
 * that recovery (journal_open.c), `needletrace journal check` and `journal salvage` share. */
#include "needletrace/journal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "needletrace/common.h"
#include "needletrace/crc32c.h"

#include "journal_internal.h"

/* What is known of a record at some offset: valid, not (and why), or not known (the resync
 * budget ran out before its CRC could be checked). */
#define SCAN__BAD     0
#define SCAN__UNKNOWN (-1000) /* below every NT_E* code */

/* One segment file being scanned. */
typedef struct {
    nt_journal_t *j;
    const char *name;
    int fd;
    uint64_t size; /* bytes in the file */
    uint8_t *buf;  /* JOURNAL_SCAN_BYTES: holds file bytes [boff, boff + blen) */
    uint64_t boff;
    size_t blen;
    uint64_t budget; /* bytes the resync may still checksum */
} scan__seg_t;

/* Makes the n bytes at off available in *p (off + n <= size, n <= JOURNAL_SCAN_BYTES), reading
 * ahead as far as the buffer goes. 0 or NT_EIO (described). */
static int scan__load(scan__seg_t *sc, uint64_t off, size_t n, const uint8_t **p)
{
    if (off < sc->boff || off + n > sc->boff + sc->blen) {
        uint64_t want = sc->size - off < JOURNAL_SCAN_BYTES ? sc->size - off : JOURNAL_SCAN_BYTES;
        ssize_t got = nt_journal__pread_full(sc->fd, sc->buf, (size_t)want, off);
        if (got < 0 || (uint64_t)got != want) {
            nt_journal__errorf(sc->j, "could not read journal segment \"%s/%s\": %s", sc->j->dir,
                               sc->name, got < 0 ? strerror(errno) : "unexpected end of file");
            return NT_EIO;
        }
        sc->boff = off;
        sc->blen = (size_t)want;
    }
    *p = sc->buf + (off - sc->boff);
    return 0;
}

/* Checks the record at file offset off: cheap checks first (length, topic and payload lengths),
 * then the CRC. With resync set, the CRC is only computed while the budget lasts and why is not
 * written. Returns the record's length (frame included) when it is valid; SCAN__BAD (why says
 * why, when not NULL); SCAN__UNKNOWN when the budget ran out; NT_EIO when the file cannot be
 * read. */
static int64_t scan__record(scan__seg_t *sc, uint64_t off, int resync, char *why, size_t whylen)
{
    const uint64_t left = sc->size - off;
    const uint8_t *p;
    if (left < JOURNAL_FRAME_BYTES + JOURNAL_FIXED_BYTES) {
        if (why != NULL) {
            snprintf(why, whylen, "incomplete record (%" PRIu64 " bytes at the end of the file)",
                     left);
        }
        return SCAN__BAD;
    }
    int rc = scan__load(sc, off, JOURNAL_FRAME_BYTES + JOURNAL_FIXED_BYTES, &p);
    if (rc != 0) {
        return rc;
    }
    uint32_t len = journal__get32(p);
    if (len < JOURNAL_FIXED_BYTES || len > JOURNAL_MAX_BODY) {
        if (why != NULL) {
            snprintf(why, whylen, "impossible record length %" PRIu32, len);
        }
        return SCAN__BAD;
    }
    if (len > left - JOURNAL_FRAME_BYTES) {
        if (why != NULL) {
            snprintf(why, whylen, "record length %" PRIu32 " extends past the end of the file",
                     len);
        }
        return SCAN__BAD;
    }
    uint16_t topic_len = journal__get16(p + JOURNAL_FRAME_BYTES + 8);
    if (topic_len > len - JOURNAL_FIXED_BYTES) {
        if (why != NULL) {
            snprintf(why, whylen, "topic length %u exceeds the record", topic_len);
        }
        return SCAN__BAD;
    }
    if (len - JOURNAL_FIXED_BYTES - topic_len > JOURNAL_MAX_PAYLOAD) {
        if (why != NULL) {
            snprintf(why, whylen, "payload longer than the journal accepts (%u bytes)",
                     JOURNAL_MAX_PAYLOAD);
        }
        return SCAN__BAD;
    }
    if (resync) {
        if (sc->budget < len) {
            return SCAN__UNKNOWN;
        }
        sc->budget -= len;
    }
    rc = scan__load(sc, off, JOURNAL_FRAME_BYTES + len, &p);
    if (rc != 0) {
        return rc;
    }
    if (nt_crc32c(0, p + JOURNAL_FRAME_BYTES, len) != journal__get32(p + 4)) {
        if (why != NULL) {
            snprintf(why, whylen, "record checksum mismatch");
        }
        return SCAN__BAD;
    }
    return (int64_t)(JOURNAL_FRAME_BYTES + len);
}

/* Finds the first offset after the bad record at off where a valid record starts: *next, or the
 * end of the file when there is none (or, with *unsure set, when the budget ran out first).
 * 0 or NT_EIO. */
static int scan__resync(scan__seg_t *sc, uint64_t off, uint64_t *next, int *unsure)
{
    for (uint64_t p = off + 1; p + JOURNAL_FRAME_BYTES + JOURNAL_FIXED_BYTES <= sc->size; p++) {
        int64_t n = scan__record(sc, p, 1, NULL, 0);
        if (n > 0) {
            *next = p;
            return 0;
        }
        if (n == SCAN__UNKNOWN) {
            *unsure = 1;
            break;
        }
        if (n < 0) {
            return (int)n;
        }
    }
    *next = sc->size;
    return 0;
}

/* 1 when the n file bytes at off are all zeros, 0 when not, NT_EIO. */
static int scan__zeros(scan__seg_t *sc, uint64_t off, size_t n)
{
    const uint8_t *p;
    int rc = scan__load(sc, off, n, &p);
    if (rc != 0) {
        return rc;
    }
    size_t k = 0;
    while (k < n && p[k] == 0) {
        k++;
    }
    return k == n;
}

/* Looks for a page left unwritten by a power cut in the file bytes [from, to), from being the
 * offset of a bad record: either every byte from `from` to the end of its page is zero (the page
 * of the last sync, whose new content never reached the disk: it holds the synced bytes, then
 * the zeros it was written with beyond the end of the file), or a whole page of zeros at a file
 * offset that is a multiple of JOURNAL_PAGE_BYTES. *found is 1 when there is one, and *page is
 * the offset of that page (the first one); else both are 0. 0 or NT_EIO. */
static int scan__zero_page(scan__seg_t *sc, uint64_t from, uint64_t to, uint64_t *page, int *found)
{
    *page = 0;
    *found = 0;
    uint64_t a = from / JOURNAL_PAGE_BYTES * JOURNAL_PAGE_BYTES;
    for (; a + JOURNAL_PAGE_BYTES <= to; a += JOURNAL_PAGE_BYTES) {
        uint64_t b = a < from ? from : a; /* the bad record's page: from its offset on */
        int z = scan__zeros(sc, b, (size_t)(a + JOURNAL_PAGE_BYTES - b));
        if (z < 0) {
            return z;
        }
        if (z > 0) {
            *page = a;
            *found = 1;
            return 0;
        }
    }
    return 0;
}

/* Adds one damaged stretch to the segment's report. 0 or NT_ENOMEM (described). */
static int scan__add_damage(nt_journal_t *j, nt_journal_segment_report_t *sr,
                            const nt_journal_damage_t *d, size_t *cap)
{
    if (nt_grow(&sr->damage, cap, sr->ndamage + 1, sizeof(*d), 4) != 0) {
        nt_journal__errorf(j, "could not check journal segment \"%s/%s\": %s", j->dir, sr->name,
                           nt_strerror(NT_ENOMEM));
        return NT_ENOMEM;
    }
    sr->damage[sr->ndamage++] = *d;
    return 0;
}

/* Walks the records of the segment from the end of its header to the end of the file: counts
 * the valid ones (handing each to fn), and records every damaged stretch with the number of
 * valid records that follow it, and whether it is a torn tail or an unwritten page (newest: the
 * newest segment). Only in the newest segment, and only between a bad record and the valid
 * record found after it, is a page of zeros looked for (zeros from the bad record to the end of
 * its page, or a whole aligned page): the bytes of valid records are never examined, so a
 * payload that holds zeros is no sign of anything, and a record damaged by a flipped bit or
 * garbage does not read as zeros from its start (its length is never 0). (A flipped bit in a
 * record whose own payload holds a whole aligned page of zeros cannot be told from an unwritten
 * page.)
 * 0, NT_EIO, NT_ENOMEM or what fn returned. */
static int scan__records(scan__seg_t *sc, nt_journal_segment_report_t *sr, int newest,
                         nt_journal__record_fn fn, void *arg)
{
    size_t cap = 0;
    uint64_t off = JOURNAL_HEADER_BYTES;
    while (off < sc->size) {
        nt_journal_damage_t d;
        memset(&d, 0, sizeof(d));
        int64_t n = scan__record(sc, off, 0, d.reason, sizeof(d.reason));
        if (n > 0) {
            if (fn != NULL) {
                const uint8_t *p;
                int rc = scan__load(sc, off, (size_t)n, &p);
                rc = rc != 0 ? rc : fn(arg, p, (size_t)n);
                if (rc != 0) {
                    return rc;
                }
            }
            sr->records++;
            sr->record_bytes += (uint64_t)n;
            off += (uint64_t)n;
            continue;
        }
        if (n < 0) {
            return (int)n;
        }
        uint64_t next = sc->size;
        int rc = scan__resync(sc, off, &next, &d.unsure);
        if (rc == 0 && newest && next < sc->size) {
            /* unwritten_page holds "zeros found" until the records after it are counted */
            rc = scan__zero_page(sc, off, next, &d.zero_page, &d.unwritten_page);
        }
        if (rc != 0) {
            return rc;
        }
        d.offset = off;
        d.bytes = next - off;
        d.records_after = sr->records; /* records before it, for now */
        rc = scan__add_damage(sc->j, sr, &d, &cap);
        if (rc != 0) {
            return rc;
        }
        off = next;
    }
    for (size_t k = 0; k < sr->ndamage; k++) {
        nt_journal_damage_t *d = &sr->damage[k];
        d->records_after = sr->records - d->records_after;
        d->torn_tail = newest && d->records_after == 0 && !d->unsure;
        d->unwritten_page = newest && d->records_after > 0 && !d->unsure && d->unwritten_page;
    }
    return 0;
}

/* Checks the header of segment i against its name, the journal's id and the end of the segment
 * before it (*prev_end, UINT64_MAX when unknown; set to this segment's end). The problem, if any,
 * goes to the segment's header_error. Returns 1 when its records can be walked (the file holds a
 * header, sound or not), 0 when not, NT_EIO when it cannot be read. */
static int scan__header(scan__seg_t *sc, nt_journal_report_t *r, size_t i, int *have_id,
                        uint64_t *prev_end)
{
    nt_journal_segment_report_t *sr = &r->segs[i];
    char *e = sr->header_error;
    const size_t elen = sizeof(sr->header_error);
    const uint8_t *h;
    uint64_t prev = *prev_end;

    *prev_end = UINT64_MAX;
    if (sc->size < JOURNAL_HEADER_BYTES) {
        snprintf(e, elen, "is shorter than its header (%" PRIu64 " bytes)", sc->size);
        return 0;
    }
    *prev_end = sr->start + (sc->size - JOURNAL_HEADER_BYTES);
    int rc = scan__load(sc, 0, JOURNAL_HEADER_BYTES, &h);
    if (rc != 0) {
        return rc;
    }
    uint32_t version = journal__get32(h + 4);
    uint64_t id = journal__get64(h + 8);
    uint64_t start = journal__get64(h + 16);
    if (memcmp(h, JOURNAL_MAGIC, 4) != 0) {
        snprintf(e, elen, "has an invalid header: wrong magic");
    } else if (version != JOURNAL_VERSION) {
        snprintf(e, elen, "has an invalid header: unsupported version %" PRIu32, version);
    } else if (*have_id && id != r->id) {
        snprintf(e, elen,
                 "has an invalid header: journal id %016" PRIx64 " does not match %016" PRIx64
                 " of the older segments",
                 id, r->id);
    } else if (start != sr->start) {
        snprintf(e, elen,
                 "has an invalid header: start position %" PRIu64 " does not match the file name",
                 start);
    } else if (i > 0 && prev != UINT64_MAX && sr->start != prev) {
        snprintf(e, elen,
                 "is not contiguous: it starts at %" PRIu64
                 " but the previous segment ends at %" PRIu64,
                 sr->start, prev);
    }
    if (!*have_id && memcmp(h, JOURNAL_MAGIC, 4) == 0 && version == JOURNAL_VERSION) {
        r->id = id;
        *have_id = 1;
    }
    if (i > 0 && prev != UINT64_MAX && sr->start > prev) {
        r->missing_bytes += sr->start - prev;
    }
    return 1;
}

/* Scans segment i of j into r->segs[i]. 0, NT_EIO, NT_ENOMEM or what fn returned. */
static int scan__segment(nt_journal_t *j, nt_journal_report_t *r, size_t i, uint8_t *buf,
                         int *have_id, uint64_t *prev_end, nt_journal__record_fn fn, void *arg)
{
    nt_journal_segment_report_t *sr = &r->segs[i];
    struct stat st;
    scan__seg_t sc = {.j = j, .name = sr->name, .buf = buf};

    sr->start = j->segs[i].start;
    journal__seg_name(sr->name, sizeof(sr->name), sr->start);
    sc.fd = openat(j->dir_fd, sr->name, O_RDONLY | O_CLOEXEC);
    if (sc.fd < 0 || fstat(sc.fd, &st) != 0) {
        nt_journal__errorf(j, "could not open journal segment \"%s/%s\": %s", j->dir, sr->name,
                           strerror(errno));
        if (sc.fd >= 0) {
            close(sc.fd);
        }
        return NT_EIO;
    }
    sc.size = (uint64_t)st.st_size;
    sc.budget = JOURNAL_RESYNC_BASE + JOURNAL_RESYNC_FACTOR * sc.size;
    sr->file_bytes = sc.size;
    int rc = scan__header(&sc, r, i, have_id, prev_end);
    if (rc == 0) {
        sr->lost_bytes = sc.size;
    } else if (rc == 1) {
        rc = scan__records(&sc, sr, i + 1 == j->nsegs, fn, arg);
        for (size_t k = 0; k < sr->ndamage; k++) {
            sr->lost_bytes += sr->damage[k].bytes;
        }
    }
    close(sc.fd);
    return rc;
}

/* Why the damage d of segment sr is corruption, for the verdict (newest: sr is the newest
 * segment). */
static void scan__why_corrupt(char *why, size_t len, const nt_journal_damage_t *d, int newest)
{
    if (d->records_after > 0 && newest) {
        snprintf(why, len,
                 "%" PRIu64 " valid records follow it, so it is no torn tail, and it holds no "
                 "whole 4096-byte page of zeros, so it is no page left unwritten by a power cut",
                 d->records_after);
    } else if (d->records_after > 0) {
        snprintf(why, len, "%" PRIu64 " valid records follow it, so it is no torn tail",
                 d->records_after);
    } else if (d->unsure) {
        snprintf(why, len, "valid records may follow it (the search for them gave up)");
    } else {
        snprintf(why, len, "it is not in the newest segment, so it is no torn tail");
    }
}

/* Describes into r->verdict the first damage of segment sr (newest: the newest segment) that
 * decides the journal's state: corruption, or an unwritten page after a power cut (the start
 * cuts the segment there: nothing after it counts); returns 1. Returns 0 when there is none: a
 * torn tail, the only damage of the newest segment, is then described. */
static int scan__judge_records(const nt_journal_t *j, nt_journal_report_t *r,
                               const nt_journal_segment_report_t *sr, int newest)
{
    for (size_t k = 0; k < sr->ndamage; k++) {
        const nt_journal_damage_t *d = &sr->damage[k];
        char why[192];
        if (d->torn_tail) {
            r->state = NT_JOURNAL_TORN_TAIL;
            snprintf(r->verdict, sizeof(r->verdict),
                     "torn tail of journal segment \"%s/%s\" at offset %" PRIu64 ": %" PRIu64
                     " bytes (%s)",
                     j->dir, sr->name, d->offset, d->bytes, d->reason);
            return 0;
        }
        if (d->unwritten_page) {
            r->state = NT_JOURNAL_POWER_CUT;
            snprintf(
                r->verdict, sizeof(r->verdict),
                "unwritten page after a power cut in journal segment \"%s/%s\" at offset %" PRIu64
                " (%s): the page at offset %" PRIu64 " is all zeros, and the %" PRIu64
                " valid-looking records after it were written after the last sync, never "
                "acknowledged; %" PRIu64 " bytes to cut",
                j->dir, sr->name, d->offset, d->reason, d->zero_page, d->records_after,
                sr->file_bytes - d->offset);
            return 1;
        }
        scan__why_corrupt(why, sizeof(why), d, newest);
        r->state = NT_JOURNAL_CORRUPT;
        snprintf(r->verdict, sizeof(r->verdict),
                 "corrupt record in journal segment \"%s/%s\" at offset %" PRIu64 ": %s; %s",
                 j->dir, sr->name, d->offset, d->reason, why);
        return 1;
    }
    return 0;
}

/* Sets r->state and r->verdict from the segments' findings: the first bad header or damage that
 * is no torn tail makes the journal corrupt, unless it is an unwritten page of the newest
 * segment. */
static void scan__judge(const nt_journal_t *j, nt_journal_report_t *r)
{
    r->state = NT_JOURNAL_CLEAN;
    r->verdict[0] = '\0';
    for (size_t i = 0; i < r->nsegs; i++) {
        const nt_journal_segment_report_t *sr = &r->segs[i];
        if (sr->header_error[0] != '\0') {
            r->state = NT_JOURNAL_CORRUPT;
            snprintf(r->verdict, sizeof(r->verdict), "journal segment \"%s/%s\" %s", j->dir,
                     sr->name, sr->header_error);
            return;
        }
        if (scan__judge_records(j, r, sr, i + 1 == r->nsegs)) {
            return;
        }
    }
}

/* See journal_internal.h. */
int nt_journal__scan(nt_journal_t *j, nt_journal_report_t *r, nt_journal__record_fn fn, void *arg)
{
    int have_id = 0;
    uint64_t prev_end = UINT64_MAX;
    uint8_t *buf = malloc(JOURNAL_SCAN_BYTES);
    r->segs = calloc(j->nsegs ? j->nsegs : 1, sizeof(*r->segs));
    if (buf == NULL || r->segs == NULL) {
        free(buf);
        nt_journal__errorf(j, "could not check journal \"%s\": %s", j->dir, nt_strerror(NT_ENOMEM));
        return NT_ENOMEM;
    }
    r->leftovers = j->leftovers;
    int rc = 0;
    for (size_t i = 0; i < j->nsegs && rc == 0; i++) {
        r->nsegs = i + 1;
        rc = scan__segment(j, r, i, buf, &have_id, &prev_end, fn, arg);
    }
    free(buf);
    if (rc == 0) {
        scan__judge(j, r);
    }
    return rc;
}

/* See journal_internal.h. */
void nt_journal__report_clear(nt_journal_report_t *r)
{
    for (size_t i = 0; i < r->nsegs; i++) {
        free(r->segs[i].damage);
    }
    free(r->segs);
    memset(r, 0, sizeof(*r));
}

/* See journal.h. */
void nt_journal_report_free(nt_journal_report_t *r)
{
    if (r != NULL) {
        nt_journal__report_clear(r);
        free(r);
    }
}

/* See journal.h. */
int nt_journal_check(const char *dir, nt_journal_report_t **out, char *err, size_t errlen)
{
    nt_journal_t *j = NULL;
    if (out == NULL) {
        return NT_EINVAL;
    }
    *out = NULL;
    if (dir == NULL || dir[0] == '\0') {
        return NT_EINVAL;
    }
    nt_journal_report_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        if (err != NULL && errlen > 0) {
            snprintf(err, errlen, "could not check journal \"%s\": %s", dir,
                     nt_strerror(NT_ENOMEM));
        }
        return NT_ENOMEM;
    }
    int rc = nt_journal__open_readonly(&j, dir, err, errlen);
    if (rc == 0) {
        rc = nt_journal__scan(j, r, NULL, NULL);
        if (rc != 0 && err != NULL && errlen > 0) {
            snprintf(err, errlen, "%s", j->error);
        }
        nt_journal__free(j);
    }
    if (rc != 0) {
        nt_journal_report_free(r);
        return rc;
    }
    *out = r;
    return 0;
}
