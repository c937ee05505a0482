/* journal.c -- the durable spool: appends, syncs, reads and releases CRC-framed segment records
 * (opening and recovery: journal_open.c). */
#include "needletrace/journal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "needletrace/common.h"
#include "needletrace/crc32c.h"
#include "needletrace/log.h"

#include "journal_internal.h"

/* ---- helpers ------------------------------------------------------------------------------ */

void nt_journal__errorf(nt_journal_t *j, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->error, sizeof(j->error), fmt, ap);
    va_end(ap);
}

int nt_journal__refuse(nt_journal_t *j)
{
    j->failed = 1;
    memcpy(j->failure, j->error, sizeof(j->failure));
    return NT_EIO;
}

/* Describes a refusal of a journal that failed earlier, with the cause. Returns NT_EIO. */
static int journal__refused(nt_journal_t *j)
{
    nt_journal__errorf(j, "%s", j->failure);
    return NT_EIO;
}

/* Reads up to n bytes at off, retrying short reads. Returns the bytes read (fewer only
 * at end of file), or -1 with errno set. */
ssize_t nt_journal__pread_full(int fd, void *buf, size_t n, uint64_t off)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, (uint8_t *)buf + done, n - done, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        if (r == 0) {
            break;
        }
        done += (size_t)r;
    }
    return (ssize_t)done;
}

/* Writes all n bytes at off. 0, or -1 with errno set. */
int nt_journal__pwrite_full(int fd, const void *buf, size_t n, uint64_t off)
{
    size_t done = 0;
    while (done < n) {
        ssize_t w = pwrite(fd, (const uint8_t *)buf + done, n - done, (off_t)(off + done));
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        done += (size_t)w;
    }
    return 0;
}

/* ---- writing ------------------------------------------------------------------------------ */

/* Marks the journal failed after a write error, described with the file concerned. */
static int journal__fail(nt_journal_t *j, const char *what, uint64_t start, int err)
{
    char name[64];
    journal__seg_name(name, sizeof(name), start);
    nt_journal__errorf(j, "could not %s journal segment \"%s/%s\": %s", what, j->dir, name,
                       strerror(err));
    return nt_journal__refuse(j);
}

/* fsyncs the directory if a segment was created or deleted since it was last synced. */
static int journal__sync_dir(nt_journal_t *j)
{
    if (!j->dir_dirty) {
        return 0;
    }
    if (fsync(j->dir_fd) != 0) {
        nt_journal__errorf(j, "could not sync journal directory \"%s\": %s", j->dir,
                           strerror(errno));
        return nt_journal__refuse(j);
    }
    j->dir_dirty = 0;
    return 0;
}

/* Writes the buffered records to the newest segment with one write. */
static int journal__flush(nt_journal_t *j)
{
    journal__seg_t *s = journal__newest(j);
    if (j->wlen == 0) {
        return 0;
    }
    if (nt_journal__pwrite_full(s->fd, j->wbuf, j->wlen, s->size) != 0) {
        return journal__fail(j, "write", s->start, errno);
    }
    s->size += j->wlen;
    j->disk_bytes += j->wlen;
    j->wlen = 0;
    j->unsynced = 1;
    j->write_gen++;
    return 0;
}

/* Writes and fdatasyncs the newest segment. */
static int journal__flush_sync(nt_journal_t *j)
{
    int rc = journal__flush(j);
    if (rc != 0) {
        return rc;
    }
    if (j->unsynced) {
        journal__seg_t *s = journal__newest(j);
        if (fdatasync(s->fd) != 0) {
            return journal__fail(j, "sync", s->start, errno);
        }
        j->unsynced = 0;
    }
    return 0;
}

/* Closes the newest segment (written and synced, and its directory entry too, so that a
 * later segment never survives a crash without it) and starts the next one at its end. */
static int journal__roll(nt_journal_t *j)
{
    int rc = journal__flush_sync(j);
    if (rc == 0) {
        rc = journal__sync_dir(j);
    }
    if (rc != 0) {
        return rc;
    }
    rc = nt_journal__create_seg(j, journal__seg_end(journal__newest(j)));
    if (rc != 0) {
        return nt_journal__refuse(j); /* create_seg described why */
    }
    return 0;
}

/* Copies one record into the write buffer; rolls to a new segment first when the newest
 * is past segment_bytes. NT_EINVAL (topic_len > 65535), NT_ETOOBIG (payload > 256 KiB + 1),
 * NT_EIO on a write error or after an earlier one. */
int nt_journal_append(nt_journal_t *j, int64_t received_us, const char *topic, size_t topic_len,
                      const void *payload, size_t payload_len)
{
    if (j == NULL || topic_len > JOURNAL_MAX_TOPIC || (topic == NULL && topic_len > 0) ||
        (payload == NULL && payload_len > 0)) {
        return NT_EINVAL;
    }
    if (payload_len > JOURNAL_MAX_PAYLOAD) {
        nt_journal__errorf(j, "could not append a %zu-byte payload: the journal takes at most %u",
                           payload_len, JOURNAL_MAX_PAYLOAD);
        return NT_ETOOBIG;
    }
    if (j->failed) {
        return journal__refused(j);
    }
    size_t body = JOURNAL_FIXED_BYTES + topic_len + payload_len;
    size_t rec = JOURNAL_FRAME_BYTES + body;
    uint64_t cur = journal__newest(j)->size + j->wlen;
    int rc;

    if (cur > j->segment_bytes && cur > JOURNAL_HEADER_BYTES) {
        rc = journal__roll(j);
        if (rc != 0) {
            return rc;
        }
    }
    if (j->wlen + rec > JOURNAL_WBUF_BYTES) {
        rc = journal__flush(j);
        if (rc != 0) {
            return rc;
        }
    }
    uint8_t *p = j->wbuf + j->wlen;
    uint8_t *b = p + JOURNAL_FRAME_BYTES;
    journal__put32(p, (uint32_t)body);
    journal__put64(b, (uint64_t)received_us);
    journal__put16(b + 8, (uint16_t)topic_len);
    if (topic_len > 0) {
        memcpy(b + JOURNAL_FIXED_BYTES, topic, topic_len);
    }
    if (payload_len > 0) {
        memcpy(b + JOURNAL_FIXED_BYTES + topic_len, payload, payload_len);
    }
    journal__put32(p + 4, nt_crc32c(0, b, body));
    j->wlen += rec;
    return 0;
}

/* Writes the buffer, fdatasyncs the newest segment and fsyncs the directory if a segment
 * was created or deleted; then every appended record is readable. 0 or NT_EIO. */
int nt_journal_sync(nt_journal_t *j)
{
    if (j == NULL) {
        return NT_EINVAL;
    }
    if (j->failed) {
        return journal__refused(j);
    }
    int rc = journal__flush_sync(j);
    if (rc == 0) {
        rc = journal__sync_dir(j);
    }
    if (rc != 0) {
        return rc;
    }
    j->durable_end = journal__seg_end(journal__newest(j));
    return 0;
}

int nt_journal_sync_begin(nt_journal_t *j, nt_journal_sync_req_t *req)
{
    memset(req, 0, sizeof(*req));
    req->fd = -1;
    req->dir_fd = -1;
    if (j == NULL) {
        return NT_EINVAL;
    }
    if (j->failed) {
        return journal__refused(j);
    }
    int rc = journal__flush(j);
    if (rc != 0) {
        return rc;
    }
    journal__seg_t *s = journal__newest(j);
    req->seg_start = s->start;
    req->end = journal__seg_end(s);
    req->write_gen = j->write_gen;
    req->dir_gen = j->dir_gen;
    if (j->unsynced) {
        req->fd = s->fd;
    }
    if (j->dir_dirty) {
        req->dir_fd = j->dir_fd;
    }
    return 0;
}

void nt_journal_sync_run(nt_journal_sync_req_t *req)
{
    int64_t t0 = nt_mono_us();
    req->err = req->fd >= 0 && fdatasync(req->fd) != 0 ? errno : 0;
    req->dir_err = req->err == 0 && req->dir_fd >= 0 && fsync(req->dir_fd) != 0 ? errno : 0;
    req->took_us = nt_mono_us() - t0;
}

int nt_journal_sync_end(nt_journal_t *j, const nt_journal_sync_req_t *req)
{
    if (j->failed) {
        return journal__refused(j); /* failed meanwhile: what the sync covered is in doubt */
    }
    if (req->err != 0) {
        return journal__fail(j, "sync", req->seg_start, req->err);
    }
    if (req->dir_err != 0) {
        nt_journal__errorf(j, "could not sync journal directory \"%s\": %s", j->dir,
                           strerror(req->dir_err));
        return nt_journal__refuse(j);
    }
    if (j->write_gen == req->write_gen) {
        j->unsynced = 0;
    }
    if (req->dir_fd >= 0 && j->dir_gen == req->dir_gen) {
        j->dir_dirty = 0;
    }
    if (req->end > j->durable_end) {
        j->durable_end = req->end;
    }
    return 0;
}

/* Cuts the newest segment back to its durable part and starts a fresh segment at the durable end
 * (the empty newest segment is reused), after a failed write or sync. */
static int journal__restart(nt_journal_t *j)
{
    journal__seg_t *s = journal__newest(j);
    char name[64];
    /* A roll synced the previous segment whole: what it holds is durable even if no sync of
     * the journal reported it yet. */
    uint64_t end = j->durable_end > s->start ? j->durable_end : s->start;
    uint64_t keep = JOURNAL_HEADER_BYTES + (end - s->start);
    journal__seg_name(name, sizeof(name), s->start);
    /* Always cut: a write that failed half way left bytes past s->size (never counted), and a
     * later start would read them as records of a segment that no longer ends where the next
     * begins. Then prove the disk takes a write buffer again (a full disk fails here, not after
     * the reconnect), and give the space back. */
    int err = 0;
    if (ftruncate(s->fd, (off_t)keep) != 0) {
        err = errno;
    } else if ((err = posix_fallocate(s->fd, (off_t)keep, JOURNAL_WBUF_BYTES)) == EOPNOTSUPP ||
               err == EINVAL) {
        err = 0; /* the file system cannot preallocate: the next write finds out */
    }
    if (err != 0 || ftruncate(s->fd, (off_t)keep) != 0 || fdatasync(s->fd) != 0) {
        nt_journal__errorf(j,
                           "could not cut journal segment \"%s/%s\" back to %" PRIu64
                           " bytes and find room for more: %s",
                           j->dir, name, keep, strerror(err != 0 ? err : errno));
        return NT_EIO;
    }
    j->disk_bytes = j->disk_bytes - s->size + keep;
    s->size = keep;
    j->unsynced = 0;
    j->durable_end = end;
    if (s->size > JOURNAL_HEADER_BYTES) {
        int rc = nt_journal__create_seg(j, end);
        if (rc != 0) {
            return rc; /* described */
        }
    }
    if (fsync(j->dir_fd) != 0) {
        nt_journal__errorf(j, "could not sync journal directory \"%s\": %s", j->dir,
                           strerror(errno));
        return NT_EIO;
    }
    j->dir_dirty = 0;
    return 0;
}

/* After a failed write or sync: forgets what was appended since the last successful sync (never
 * acknowledged), cuts the newest segment back to its durable part, and starts a fresh segment at
 * the durable end. 0: appends are accepted again; NT_EIO (described): still refusing. */
int nt_journal_resume(nt_journal_t *j)
{
    if (j == NULL) {
        return NT_EINVAL;
    }
    if (!j->failed) {
        return 0;
    }
    j->wlen = 0;
    int rc = journal__restart(j);
    if (rc != 0) {
        return rc;
    }
    j->failed = 0;
    j->failure[0] = '\0';
    j->rlen = 0;
    return 0;
}

/* 1 while the journal refuses appends after a failed write or sync (nt_journal_resume). */
int nt_journal_failed(const nt_journal_t *j)
{
    return j->failed;
}

/* Writes what is buffered (no fdatasync: unsynced records were never acknowledged) and
 * frees everything. After a write error nothing more is written. */
void nt_journal_close(nt_journal_t *j)
{
    if (j == NULL) {
        return;
    }
    if (!j->failed) {
        journal__flush(j);
    }
    nt_journal__free(j);
}

/* ---- reading ------------------------------------------------------------------------------ */

/* Index of the last segment starting at or before pos: the one that holds pos. */
static size_t journal__find(const nt_journal_t *j, uint64_t pos)
{
    size_t lo = 0;
    size_t hi = j->nsegs;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (j->segs[mid].start <= pos) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return lo;
}

/* Loads the read-ahead buffer with segment s from pos: at least need bytes, at most up to
 * limit (need <= limit - pos). 0, NT_ENOMEM or NT_EIO (described for nt_journal_error). */
static int journal__fill(nt_journal_t *j, journal__seg_t *s, uint64_t pos, uint64_t limit,
                         size_t need)
{
    char name[64];
    if (need > j->rcap) {
        uint8_t *nb = realloc(j->rbuf, need);
        if (nb == NULL) {
            nt_journal__errorf(j, "could not read the journal: %s (a %zu-byte read buffer)",
                               nt_strerror(NT_ENOMEM), need);
            return NT_ENOMEM;
        }
        j->rbuf = nb;
        j->rcap = need;
    }
    j->rlen = 0;
    journal__seg_name(name, sizeof(name), s->start);
    if (s->fd < 0) {
        s->fd = openat(j->dir_fd, name, O_RDONLY | O_CLOEXEC);
        if (s->fd < 0) {
            nt_journal__errorf(j, "could not open journal segment \"%s/%s\": %s", j->dir, name,
                               strerror(errno));
            return NT_EIO;
        }
    }
    size_t want = limit - pos < j->rcap ? (size_t)(limit - pos) : j->rcap;
    ssize_t n =
        nt_journal__pread_full(s->fd, j->rbuf, want, JOURNAL_HEADER_BYTES + (pos - s->start));
    if (n < 0 || (size_t)n != want) {
        nt_journal__errorf(j, "could not read journal segment \"%s/%s\": %s", j->dir, name,
                           n < 0 ? strerror(errno) : "unexpected end of file");
        return NT_EIO;
    }
    j->rpos = pos;
    j->rlen = want;
    return 0;
}

/* Describes a read at a position that is no record boundary of the retained journal. */
static int journal__bad_position(nt_journal_t *j, uint64_t pos)
{
    nt_journal__errorf(j,
                       "journal position %" PRIu64 " is no record boundary in [%" PRIu64
                       ", %" PRIu64 ") of \"%s\"",
                       pos, j->segs[0].start, j->durable_end, j->dir);
    return NT_EINVAL;
}

/* Reads the durable record at pos through the read-ahead buffer and checks its CRC.
 * 1, 0 at the durable end, NT_EINVAL, NT_ECORRUPT or NT_EIO (each described for
 * nt_journal_error). */
int nt_journal_read(nt_journal_t *j, uint64_t pos, nt_journal_record_t *rec)
{
    if (j == NULL || rec == NULL) {
        return NT_EINVAL;
    }
    if (pos == j->durable_end) {
        return 0;
    }
    if (pos < j->segs[0].start || pos > j->durable_end) {
        return journal__bad_position(j, pos);
    }
    journal__seg_t *s = &j->segs[journal__find(j, pos)];
    uint64_t limit = journal__seg_end(s);
    if (limit > j->durable_end) {
        limit = j->durable_end;
    }
    if (pos >= limit || limit - pos < JOURNAL_FRAME_BYTES + JOURNAL_FIXED_BYTES) {
        return journal__bad_position(j, pos);
    }
    int rc;
    if (j->rlen == 0 || pos < j->rpos || pos - j->rpos + JOURNAL_FRAME_BYTES > j->rlen) {
        rc = journal__fill(j, s, pos, limit, JOURNAL_FRAME_BYTES);
        if (rc != 0) {
            return rc;
        }
    }
    uint32_t len = journal__get32(j->rbuf + (pos - j->rpos));
    if (len < JOURNAL_FIXED_BYTES || len > JOURNAL_MAX_BODY ||
        len > limit - pos - JOURNAL_FRAME_BYTES) {
        return journal__bad_position(j, pos);
    }
    size_t total = JOURNAL_FRAME_BYTES + len;
    if (pos - j->rpos + total > j->rlen) {
        rc = journal__fill(j, s, pos, limit, total);
        if (rc != 0) {
            return rc;
        }
    }
    const uint8_t *p = j->rbuf + (pos - j->rpos);
    const uint8_t *b = p + JOURNAL_FRAME_BYTES;
    uint16_t topic_len = journal__get16(b + 8);
    if (nt_crc32c(0, b, len) != journal__get32(p + 4) || topic_len > len - JOURNAL_FIXED_BYTES) {
        char name[64];
        journal__seg_name(name, sizeof(name), s->start);
        nt_journal__errorf(j,
                           "corrupt record in journal segment \"%s/%s\" at offset %" PRIu64 ": %s",
                           j->dir, name, JOURNAL_HEADER_BYTES + (pos - s->start),
                           topic_len > len - JOURNAL_FIXED_BYTES ? "topic length exceeds the record"
                                                                 : "record checksum mismatch");
        return NT_ECORRUPT;
    }
    rec->pos = pos;
    rec->next_pos = pos + total;
    rec->received_us = (int64_t)journal__get64(b);
    rec->topic = (const char *)(b + JOURNAL_FIXED_BYTES);
    rec->topic_len = topic_len;
    rec->payload = b + JOURNAL_FIXED_BYTES + topic_len;
    rec->payload_len = len - JOURNAL_FIXED_BYTES - topic_len;
    return 1;
}

/* Deletes the segments that end at or before pos, never the newest, oldest first with a
 * directory fsync after each. NT_EINVAL past the durable end, NT_EIO if a delete failed. */
int nt_journal_release(nt_journal_t *j, uint64_t pos)
{
    int rc = 0;
    size_t removed = 0;

    if (j == NULL) {
        return NT_EINVAL;
    }
    if (pos > j->durable_end) {
        nt_journal__errorf(
            j, "cannot release the journal up to %" PRIu64 ": past its durable end %" PRIu64, pos,
            j->durable_end);
        return NT_EINVAL;
    }
    while (j->nsegs - removed > 1 && journal__seg_end(&j->segs[removed]) <= pos) {
        journal__seg_t *s = &j->segs[removed];
        char name[64];
        journal__seg_name(name, sizeof(name), s->start);
        if (unlinkat(j->dir_fd, name, 0) != 0 && errno != ENOENT) {
            nt_journal__errorf(j, "could not delete journal segment \"%s/%s\": %s", j->dir, name,
                               strerror(errno));
            rc = NT_EIO;
            break;
        }
        if (s->fd >= 0) {
            close(s->fd);
        }
        j->disk_bytes -= s->size;
        removed++;
        /* One at a time, oldest first: what a crash brings back is always a prefix, so
         * the segments left stay contiguous. */
        journal__dir_changed(j);
        rc = journal__sync_dir(j);
        if (rc != 0) {
            break;
        }
    }
    if (removed > 0) {
        memmove(j->segs, j->segs + removed, (j->nsegs - removed) * sizeof(j->segs[0]));
        j->nsegs -= removed;
        j->rlen = 0;
    }
    return rc;
}

/* ---- accessors ---------------------------------------------------------------------------- */

/* The description of the last failure, "" when none. */
const char *nt_journal_error(const nt_journal_t *j)
{
    return j->error;
}

/* Position of the first record of the oldest segment kept. */
uint64_t nt_journal_start(const nt_journal_t *j)
{
    return j->segs[0].start;
}

/* Position just past the last durable record. */
uint64_t nt_journal_end(const nt_journal_t *j)
{
    return j->durable_end;
}

/* Bytes of all segment files plus the write buffer. */
uint64_t nt_journal_bytes(const nt_journal_t *j)
{
    return j->disk_bytes + j->wlen;
}

/* 1 once nt_journal_bytes() reaches max_bytes. */
int nt_journal_full(const nt_journal_t *j)
{
    return nt_journal_bytes(j) >= j->max_bytes;
}

/* The random id chosen when the journal was created. */
uint64_t nt_journal_id(const nt_journal_t *j)
{
    return j->id;
}
