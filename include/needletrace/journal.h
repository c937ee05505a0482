/* journal.h -- the durable spool: append-only, CRC-framed segment files in one directory.
 *
 * The journal is the collector's only durable state. Every MQTT message is appended
 * (receive time, topic, raw payload) and made durable with nt_journal_sync() before its
 * PUBACK is released; the database sink then reads records back from the journal, and
 * nt_journal_release() deletes segments wholly behind the database checkpoint.
 *
 * Positions are byte offsets in one logical stream that starts at 0 when the journal
 * directory is created and never goes back; a segment is named after the position of
 * its first record (%020llu.ntj). A position is valid across restarts.
 *
 * On-disk format (little endian):
 *   segment header (32 bytes): "NTJ1" | u32 version=1 | u64 journal_id | u64 start_pos | u64 0
 *   record: u32 body_len | u32 crc32c(body) | body
 *   body:   i64 received_us | u16 topic_len | topic bytes | payload bytes
 * A record at position p occupies [p, p + 8 + body_len). A record is valid when
 * 10 <= body_len, topic_len <= body_len - 10, the payload is at most 256 KiB + 1 bytes (an
 * oversized message is journaled cut to that, see journal_internal.h) and the CRC matches. */
#ifndef NEEDLETRACE_JOURNAL_H
#define NEEDLETRACE_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

typedef struct nt_journal_s nt_journal_t;

typedef struct {
    const char *dir;        /* created (mode 0700) if missing */
    uint64_t max_bytes;     /* bound reported by nt_journal_full(); 0 = 1 GiB */
    uint64_t segment_bytes; /* roll to a new segment past this size; 0 = 64 MiB */
} nt_journal_options_t;

typedef struct {
    uint64_t pos;        /* position of this record */
    uint64_t next_pos;   /* position just past it */
    int64_t received_us; /* receive time, Unix microseconds */
    const char *topic;   /* not NUL-terminated */
    size_t topic_len;
    const uint8_t *payload;
    size_t payload_len;
} nt_journal_record_t;

/* Opens (creating if needed) the journal in opts->dir and recovers it. Every segment is
 * scanned (see nt_journal_check()); then:
 *  - a torn tail -- a bad record in the newest segment with no valid record anywhere after it
 *    (a crash mid-write) -- is truncated, logged once as a warning with the bytes cut;
 *  - an unwritten page after a power cut -- the first bad record of the newest segment, when the
 *    unreadable stretch from it to the next valid record holds a whole 4096-byte page of zeros
 *    at a file offset that is a multiple of 4096 -- is truncated like a torn tail, the valid
 *    records after it included, logged once as a warning with the bytes cut and the records
 *    discarded. Pages written after the last fdatasync reach the disk in any order, and one that
 *    never did reads as zeros; every record after it was written after that fdatasync, so none
 *    was acknowledged (the broker sends them again). Only that stretch is examined: a valid
 *    record is never bad, whatever its payload holds. The same page in an older segment, or
 *    non-zero bytes (a flipped bit, garbage), is corruption;
 *  - corruption -- a bad record followed by a valid one (but for the unwritten page above), a bad
 *    record in any older segment, a bad segment header, a missing segment -- is NT_ECORRUPT:
 *    nothing is changed, and err names the segment file, the byte offset, the reason and the
 *    command that salvages the journal (`needletrace journal salvage --journal-dir DIR --out
 *    NEWDIR`). Never silently skipped;
 *  - appends go to a fresh segment that starts at the end, after the newest segment is
 *    fdatasynced (so every older segment is durable whole): a segment written by an earlier
 *    process is never appended to again. An empty newest segment (header only, e.g. left by
 *    the previous start) is replaced by a fresh file of the same name, so repeated starts never
 *    pile up empty segments. The directory is fsynced before the call returns.
 * Holds an exclusive flock on the directory: a second collector (or a running
 * `journal check|salvage`) on the same journal gets NT_EIO.
 * On success *out owns the journal; on failure nothing is left open and err (when not NULL)
 * gets a one-line description naming the file and the reason, for the caller to log (a full
 * disk says so: creating the fresh segment needs a little space).
 *
 * Failures are never logged by the journal itself: every function that fails describes the
 * failure for nt_journal_error(), and the caller, which decides what to do, logs it once. */
int nt_journal_init(nt_journal_t **out, const nt_journal_options_t *opts, char *err, size_t errlen);

/* The description of the last failure of any journal function ("could not sync journal
 * segment \"/var/lib/...\": No space left on device; ..."), "" when none yet. */
const char *nt_journal_error(const nt_journal_t *j);

/* Flushes buffered records (without fdatasync) and frees everything. NULL is a no-op. */
void nt_journal_close(nt_journal_t *j);

/* Appends one record to the in-memory write buffer (not yet durable, not yet visible
 * to nt_journal_read). topic_len must be <= 65535. Rolls to a new segment first when
 * the current one is past segment_bytes. Never refuses because of max_bytes: callers
 * stop reading input when nt_journal_full() says so. NT_EIO on a write error; after
 * any write error the journal refuses further appends until reopened. */
int nt_journal_append(nt_journal_t *j, int64_t received_us, const char *topic, size_t topic_len,
                      const void *payload, size_t payload_len);

/* Writes the buffer and fdatasync()s the segment (and the directory after a segment
 * was created). After 0, every appended record is durable and readable. NT_EIO on failure:
 * then nothing appended since the last successful sync may be acknowledged. */
int nt_journal_sync(nt_journal_t *j);

/* The same in three steps, so that the fdatasync runs on another thread while the loop goes on
 * (group commit): nt_journal_sync_begin writes the buffer (loop thread) and fills req;
 * nt_journal_sync_run does the fdatasync and directory fsync (any thread; touches only req);
 * nt_journal_sync_end (loop thread) makes what req covered durable and readable, or fails the
 * journal as nt_journal_sync does. Between begin and end, nothing may close the journal; records
 * appended meanwhile are not covered (the next sync covers them). */
typedef struct {
    int fd;             /* the newest segment when it needs an fdatasync, else -1 */
    int dir_fd;         /* the directory when it needs an fsync, else -1 */
    int err;            /* errno of a failed fdatasync, else 0 */
    int dir_err;        /* errno of a failed directory fsync, else 0 */
    uint64_t seg_start; /* the newest segment's start (names it in errors) */
    uint64_t end;       /* durable up to here once the sync succeeded */
    uint64_t write_gen;
    uint64_t dir_gen;
    int64_t took_us; /* how long nt_journal_sync_run took */
} nt_journal_sync_req_t;

int nt_journal_sync_begin(nt_journal_t *j, nt_journal_sync_req_t *req);
void nt_journal_sync_run(nt_journal_sync_req_t *req);
int nt_journal_sync_end(nt_journal_t *j, const nt_journal_sync_req_t *req);

/* After a failed write or sync (the journal refuses appends): forgets what was appended since
 * the last successful sync -- never acknowledged, so the broker redelivers it --, cuts the newest
 * segment back to what was synced, and starts a fresh segment at the durable end (an fdatasync
 * that failed leaves that segment's later pages in doubt: they are never trusted again).
 * 0 when appends are accepted again; NT_EIO (described for nt_journal_error) when the disk still
 * refuses: try again later. 0 at once when the journal has not failed. */
int nt_journal_resume(nt_journal_t *j);

/* 1 while the journal refuses appends after a failed write or sync. */
int nt_journal_failed(const nt_journal_t *j);

/* Reads the durable record at pos into *rec. The record's pointers stay valid until the
 * next nt_journal_read/nt_journal_release/nt_journal_close on this journal.
 * Returns 1 when a record was read, 0 when pos == nt_journal_end(j) (nothing more yet),
 * NT_EINVAL when pos is not a record boundary inside [start, end), NT_ECORRUPT on a
 * CRC mismatch, NT_EIO on a read error. */
int nt_journal_read(nt_journal_t *j, uint64_t pos, nt_journal_record_t *rec);

/* Declares every record before pos consumed (committed downstream): deletes the
 * segments that end at or before pos. The newest segment is never deleted. */
int nt_journal_release(nt_journal_t *j, uint64_t pos);

uint64_t nt_journal_start(const nt_journal_t *j); /* position of the oldest retained record */
uint64_t nt_journal_end(const nt_journal_t *j);   /* position just past the last durable record */
uint64_t nt_journal_bytes(const nt_journal_t *j); /* bytes on disk plus buffered, all segments */
int nt_journal_full(const nt_journal_t *j);       /* 1 when nt_journal_bytes() >= max_bytes */
uint64_t nt_journal_id(const nt_journal_t *j);    /* random id chosen when the dir was created */

/* ---- checking and salvaging a journal directory (`needletrace journal check|salvage`) ------ */

/* One unreadable stretch of a segment file: it starts with a bad record and ends where the next
 * valid record starts (found by trying every byte offset), or at the end of the file. */
typedef struct {
    uint64_t offset;        /* byte offset in the file of the bad record */
    uint64_t bytes;         /* bytes unreadable: up to the next valid record or the end */
    uint64_t records_after; /* valid records after it in the same file */
    int unsure;             /* 1: the search for valid records after it gave up (too many
                               candidates to check); some may follow */
    int torn_tail;          /* 1: at the end of the newest segment, nothing valid after it (a
                               crash mid-write leaves one; the next start cuts it) */
    int unwritten_page;     /* 1: in the newest segment, valid records after it and a page of
                               zeros (zero_page) in it: a page never written back before a power
                               cut. When it is the segment's first damage, the next start cuts
                               the segment there (see nt_journal_init()) */
    uint64_t zero_page;     /* byte offset in the file (4096-aligned) of the first 4096-byte page
                               of zeros in this stretch: the bad record's own page when every
                               byte from the bad record to its end is zero (the page of the last
                               sync, whose later content never reached the disk), else the first
                               whole page of zeros; 0 when none was looked for (only in the
                               newest segment, with valid records after it) or found (then
                               unwritten_page is 0: the first page may be the bad record's) */
    char reason[96];        /* "record checksum mismatch", "impossible record length 9", ... */
} nt_journal_damage_t;

typedef struct {
    char name[32];          /* file name, e.g. "00000000000000001234.ntj" */
    uint64_t start;         /* position of its first record (from the name) */
    uint64_t file_bytes;    /* size of the file, header included */
    uint64_t records;       /* valid records in it */
    uint64_t record_bytes;  /* bytes of those records */
    uint64_t lost_bytes;    /* bytes no valid record holds: the damage, or the whole file when it
                               is shorter than a header (a bad header itself is not counted) */
    char header_error[160]; /* "" when the header is sound and the segment continues the one
                               before; else the problem, worded to follow the segment's name:
                               "has an invalid header: wrong magic", "is not contiguous: ..." */
    nt_journal_damage_t *damage; /* in file order */
    size_t ndamage;
} nt_journal_segment_report_t;

typedef enum {
    NT_JOURNAL_CLEAN = 0, /* every byte of every segment is a valid record */
    NT_JOURNAL_TORN_TAIL, /* only a torn tail in the newest segment: the next start cuts it */
    NT_JOURNAL_POWER_CUT, /* the first damage of the newest segment is an unwritten page after a
                             power cut, and none before it: the next start cuts it and what
                             follows */
    NT_JOURNAL_CORRUPT,   /* anything else: the collector refuses to start */
} nt_journal_state_t;

typedef struct {
    uint64_t id;                       /* journal id of the segments (0 when none is readable) */
    nt_journal_segment_report_t *segs; /* oldest first */
    size_t nsegs;
    size_t leftovers;       /* *.ntj.tmp files of an interrupted segment creation */
    uint64_t missing_bytes; /* positions no segment holds (gaps between segments) */
    nt_journal_state_t state;
    char verdict[512]; /* "" when clean; else the torn tail, the unwritten page or the first
                          corruption, as nt_journal_init() describes it (without the advice) */
} nt_journal_report_t;

/* Scans the journal in dir without changing anything (no truncation, no new segment, leftovers
 * left in place): takes a shared lock on the directory, so it refuses while a collector runs.
 * 0 with *out set (whatever the journal's state: see (*out)->state; free it with
 * nt_journal_report_free()); NT_ENOENT when dir does not exist; NT_EIO when it cannot be locked
 * (a collector runs on it) or read; NT_ENOMEM. On failure err describes it.
 * See also nt_journal_salvage(). */
int nt_journal_check(const char *dir, nt_journal_report_t **out, char *err, size_t errlen);

void nt_journal_report_free(nt_journal_report_t *r); /* NULL is a no-op */

/* What nt_journal_salvage() did. */
typedef struct {
    nt_journal_report_t *report; /* the old journal's, as nt_journal_check() gives it */
    uint64_t records;            /* records copied */
    uint64_t record_bytes;       /* their bytes in the old journal */
    uint64_t lost_bytes;         /* damaged bytes left behind, plus report->missing_bytes */
    uint64_t new_id;             /* the new journal's id (random: positions changed) */
    uint64_t new_end;            /* end position of the new journal */
} nt_journal_salvage_t;

/* Copies every valid record of the journal in dir, in order (receive time, topic and payload
 * kept), to a new journal created in out->dir with a new random id, and makes it durable. dir is
 * only read (shared lock, as nt_journal_check()); out->dir must not exist or be an empty
 * directory. On 0, *res holds the counts and the old journal's report (free it with
 * nt_journal_report_free(res->report)). NT_EINVAL when out->dir is not empty; NT_ENOENT when
 * dir does not exist; NT_EIO (a lock, a read or a write failed: the new directory may be
 * incomplete and should be deleted); NT_ENOMEM. On failure res->report is NULL and err says why. */
int nt_journal_salvage(const char *dir, const nt_journal_options_t *out, nt_journal_salvage_t *res,
                       char *err, size_t errlen);

#endif
