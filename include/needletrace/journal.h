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
 * A record at position p occupies [p, p + 8 + body_len). */
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

/* Opens (creating if needed) the journal in opts->dir and recovers it: every segment
 * is scanned, and a torn or corrupt tail (bad length or CRC in the last segment) is
 * truncated, logged once as a warning with the number of bytes cut. Corruption before the
 * tail of the newest segment is NT_ECORRUPT (never silently skipped). Holds an exclusive
 * flock on the directory: a second collector on the same journal gets NT_EIO.
 * On success *out owns the journal; on failure nothing is left open and err (when not NULL)
 * gets a one-line description naming the file and the reason, for the caller to log.
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

#endif
