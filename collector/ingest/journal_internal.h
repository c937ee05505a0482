/* journal_internal.h -- what the journal's files share: the on-disk format, the journal
 * structure and a few helpers. journal_open.c opens and recovers a journal; journal_scan.c
 * checks every record of a directory (recovery, `journal check`) and salvages one; journal.c
 * appends, syncs, reads and releases. Not a public header: include needletrace/journal.h. */
#ifndef NEEDLETRACE_JOURNAL_INTERNAL_H
#define NEEDLETRACE_JOURNAL_INTERNAL_H

#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "needletrace/common.h"
#include "needletrace/journal.h"

#define JOURNAL_MAGIC        "NTJ1"
#define JOURNAL_VERSION      1u
#define JOURNAL_HEADER_BYTES 32u /* "NTJ1" | u32 version | u64 id | u64 start_pos | u64 0 */
#define JOURNAL_FRAME_BYTES  8u  /* u32 body_len | u32 crc32c(body) */
#define JOURNAL_FIXED_BYTES  10u /* i64 received_us | u16 topic_len */
#define JOURNAL_MAX_TOPIC    65535u
/* Longest body a reader accepts; anything longer is a torn or corrupt length. */
/* One byte more than the wire contract allows: an oversized message is journaled cut to
 * NT_MAX_PAYLOAD_BYTES + 1 so that it reaches quarantine as payload_too_large. */
#define JOURNAL_MAX_PAYLOAD (NT_MAX_PAYLOAD_BYTES + 1u)
#define JOURNAL_MAX_BODY    (JOURNAL_MAX_PAYLOAD + 65535u + 64u)
#define JOURNAL_MAX_RECORD  (JOURNAL_FRAME_BYTES + JOURNAL_MAX_BODY)
#define JOURNAL_WBUF_BYTES  (1024u * 1024u) /* write buffer, flushed with one write */
#define JOURNAL_RBUF_BYTES  (64u * 1024u)   /* read-ahead of nt_journal_read */
#define JOURNAL_SCAN_BYTES  (1024u * 1024u) /* read size of the recovery scan */
/* After a bad record, the scan tries every later byte offset for a valid record: cheap checks
 * first (length, topic length), then the CRC. The bytes it may checksum doing so are bounded
 * per segment file to this base plus JOURNAL_RESYNC_FACTOR times the file's size, so that a
 * hostile file cannot make recovery quadratic; past the bound the damage is "unsure". */
#define JOURNAL_RESYNC_BASE   (16ull * 1024u * 1024u)
#define JOURNAL_RESYNC_FACTOR 16u
/* A power cut can leave a page of the newest segment that was written (pwrite) after the last
 * fdatasync but never reached the disk: it reads as zeros, and pages after it may hold the
 * records that were written back. A damaged stretch of the newest segment that holds a whole
 * page of zeros at a file offset that is a multiple of this size is such a page (see
 * nt_journal_init). A smaller file system block or a torn sector leaves no such page: the damage
 * is then corruption, the safe side. */
#define JOURNAL_PAGE_BYTES            4096u
#define JOURNAL_ERROR_BYTES           1024u /* descriptions of failures (nt_journal_error) */
#define JOURNAL_DEFAULT_MAX_BYTES     (1024ull * 1024u * 1024u)
#define JOURNAL_DEFAULT_SEGMENT_BYTES (64ull * 1024u * 1024u)
#define JOURNAL_NAME_DIGITS           20
#define JOURNAL_SUFFIX                ".ntj"
#define JOURNAL_TMP_SUFFIX            ".ntj.tmp"
#define JOURNAL_LOCK_NAME             "LOCK"

_Static_assert(JOURNAL_WBUF_BYTES >= JOURNAL_FRAME_BYTES + JOURNAL_FIXED_BYTES + JOURNAL_MAX_TOPIC +
                                         JOURNAL_MAX_PAYLOAD,
               "the write buffer must hold the largest record an append accepts");
_Static_assert(JOURNAL_SCAN_BYTES >= JOURNAL_MAX_RECORD,
               "a recovery read must hold the largest record");
_Static_assert(JOURNAL_SCAN_BYTES >= JOURNAL_PAGE_BYTES, "a recovery read must hold a whole page");
_Static_assert(JOURNAL_HEADER_BYTES < JOURNAL_PAGE_BYTES,
               "the first page holds the header: it is never a whole page of zeros after a bad "
               "record");

typedef struct {
    uint64_t start; /* position of its first record; also its name */
    uint64_t size;  /* bytes in the file, header included (buffered bytes not counted) */
    int fd;         /* -1 until needed; the newest segment's is open read-write */
} journal__seg_t;

struct nt_journal_s {
    char error[JOURNAL_ERROR_BYTES];   /* the last failure, for the caller to log */
    char failure[JOURNAL_ERROR_BYTES]; /* the failure that made the journal refuse appends */
    char *dir;
    int dir_fd;
    int lock_fd;
    uint64_t id;
    uint64_t max_bytes;
    uint64_t segment_bytes;
    journal__seg_t *segs; /* oldest first; appends go to the last one */
    size_t nsegs;
    size_t segs_cap;
    uint64_t disk_bytes;  /* sum of segs[].size */
    uint64_t durable_end; /* records below this position are durable and readable */
    uint8_t *wbuf;        /* records appended to the newest segment, not yet written */
    size_t wlen;
    uint8_t *rbuf; /* read-ahead: holds positions [rpos, rpos + rlen) of one segment */
    size_t rcap;
    uint64_t rpos;
    size_t rlen;
    int unsynced;       /* the newest segment was written since its last fdatasync */
    int dir_dirty;      /* a segment was created or deleted since the last directory fsync */
    uint64_t write_gen; /* counts writes of the buffer (a sync outside the loop covers those
                           before it began) */
    uint64_t dir_gen;   /* counts changes of the directory (likewise) */
    int failed;         /* a write failed: appends and syncs are refused until reopened */
    int readonly;       /* opened by nt_journal__open_readonly: nothing may be written */
    size_t leftovers;   /* *.ntj.tmp files seen by a read-only open (a writer removes them) */
};

/* ---- small helpers ------------------------------------------------------------------------ */

/* A segment was created or removed: the directory needs an fsync. */
static inline void journal__dir_changed(nt_journal_t *j)
{
    j->dir_dirty = 1;
    j->dir_gen++;
}

static inline void journal__put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void journal__put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static inline void journal__put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static inline uint16_t journal__get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t journal__get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t journal__get64(const uint8_t *p)
{
    return (uint64_t)journal__get32(p) | (uint64_t)journal__get32(p + 4) << 32;
}

/* Writes the file name of the segment starting at start into name (at least 32 bytes). */
static inline void journal__seg_name(char *name, size_t len, uint64_t start)
{
    snprintf(name, len, "%020" PRIu64 JOURNAL_SUFFIX, start);
}

/* Position just past the last record written to the file of s (buffered ones not counted). */
static inline uint64_t journal__seg_end(const journal__seg_t *s)
{
    return s->start + (s->size - JOURNAL_HEADER_BYTES);
}

static inline journal__seg_t *journal__newest(nt_journal_t *j)
{
    return &j->segs[j->nsegs - 1];
}

/* Describes the failure that the function about to return reports: the caller, which decides
 * what to do about it, logs it (nt_journal_error). Journal functions log no errors themselves. */
void nt_journal__errorf(nt_journal_t *j, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Marks the journal failed: it refuses appends and syncs until reopened. The failure just
 * described (j->error) is kept, to describe every later refusal with its cause. Returns NT_EIO. */
int nt_journal__refuse(nt_journal_t *j);

/* pread/pwrite of exactly n bytes, retried on EINTR and short transfers: pread returns n, less
 * at end of file, or -1; pwrite 0 or -1 (errno set). */
ssize_t nt_journal__pread_full(int fd, void *buf, size_t n, uint64_t off);
int nt_journal__pwrite_full(int fd, const void *buf, size_t n, uint64_t off);

/* Creates the segment starting at start (temp file, header, sync, rename, directory sync) and
 * appends it to j->segs as the newest, open read-write. 0, NT_ENOMEM or NT_EIO (described). */
int nt_journal__create_seg(nt_journal_t *j, uint64_t start);

/* Releases everything j holds, without flushing. */
void nt_journal__free(nt_journal_t *j);

/* Opens the journal in dir for reading only (`journal check|salvage`): nothing is created or
 * removed, the directory's lock is taken shared (a running collector holds it exclusively: then
 * NT_EIO) and the segment files are listed (j->segs, sizes unknown, no file open). 0 with *out
 * set (free it with nt_journal__free); NT_ENOENT when dir does not exist, NT_EIO, NT_ENOMEM,
 * each described in err. */
int nt_journal__open_readonly(nt_journal_t **out, const char *dir, char *err, size_t errlen);

/* Called by nt_journal__scan for every valid record, in order: rec points at the record (frame
 * and body, len bytes), valid until the call returns. Returns 0 to go on, or a negative NT_E*
 * code that ends the scan, which returns it. */
typedef int (*nt_journal__record_fn)(void *arg, const uint8_t *rec, size_t len);

/* Checks every listed segment of j (headers, contiguity, every record, finding the valid records
 * after each bad one) without changing anything, and fills *report (zeroed by the caller;
 * clear it with nt_journal__report_clear) with what it found and the journal's state (see
 * nt_journal_check). fn, when not NULL, gets every valid record. 0, or NT_EIO (a read failed),
 * NT_ENOMEM (described for nt_journal_error), or what fn returned. */
int nt_journal__scan(nt_journal_t *j, nt_journal_report_t *report, nt_journal__record_fn fn,
                     void *arg);

/* Frees what nt_journal__scan allocated in report (not report itself). */
void nt_journal__report_clear(nt_journal_report_t *report);

#endif
