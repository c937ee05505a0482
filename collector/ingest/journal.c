/* journal.c -- the durable spool: append-only CRC-framed segment files, recovered at open. */
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

#define JOURNAL_MAGIC        "NTJ1"
#define JOURNAL_VERSION      1u
#define JOURNAL_HEADER_BYTES 32u /* "NTJ1" | u32 version | u64 id | u64 start_pos | u64 0 */
#define JOURNAL_FRAME_BYTES  8u  /* u32 body_len | u32 crc32c(body) */
#define JOURNAL_FIXED_BYTES  10u /* i64 received_us | u16 topic_len */
#define JOURNAL_MAX_TOPIC    65535u
/* Longest body a reader accepts; anything longer is a torn or corrupt length. */
/* One byte more than the wire contract allows: an oversized message is journaled cut to
 * NT_MAX_PAYLOAD_BYTES + 1 so that it reaches quarantine as payload_too_large. */
#define JOURNAL_MAX_PAYLOAD           (NT_MAX_PAYLOAD_BYTES + 1u)
#define JOURNAL_MAX_BODY              (JOURNAL_MAX_PAYLOAD + 65535u + 64u)
#define JOURNAL_MAX_RECORD            (JOURNAL_FRAME_BYTES + JOURNAL_MAX_BODY)
#define JOURNAL_WBUF_BYTES            (1024u * 1024u) /* write buffer, flushed with one write */
#define JOURNAL_RBUF_BYTES            (64u * 1024u)   /* read-ahead of nt_journal_read */
#define JOURNAL_SCAN_BYTES            (1024u * 1024u) /* read size of the recovery scan */
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

typedef struct {
    uint64_t start; /* position of its first record; also its name */
    uint64_t size;  /* bytes in the file, header included (buffered bytes not counted) */
    int fd;         /* -1 until needed; the newest segment's is open read-write */
} journal__seg_t;

struct nt_journal_s {
    char error[512]; /* the last failure, for the caller to log (nt_journal_error) */
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
    int unsynced;  /* the newest segment was written since its last fdatasync */
    int dir_dirty; /* a segment was created or deleted since the last directory fsync */
    int failed;    /* a write failed: appends and syncs are refused until reopened */
};

/* ---- small helpers ------------------------------------------------------------------------ */

/* Describes the failure that the function about to return reports: the caller, which decides
 * what to do about it, logs it (nt_journal_error). Journal functions log no errors themselves. */
static void journal__errorf(nt_journal_t *j, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void journal__errorf(nt_journal_t *j, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->error, sizeof(j->error), fmt, ap);
    va_end(ap);
}

static void journal__put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void journal__put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static void journal__put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static uint16_t journal__get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t journal__get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t journal__get64(const uint8_t *p)
{
    return (uint64_t)journal__get32(p) | (uint64_t)journal__get32(p + 4) << 32;
}

/* Writes the file name of the segment starting at start into name (at least 32 bytes). */
static void journal__seg_name(char *name, size_t len, uint64_t start)
{
    snprintf(name, len, "%020" PRIu64 JOURNAL_SUFFIX, start);
}

/* Position just past the last record written to the file of s (buffered ones not counted). */
static uint64_t journal__seg_end(const journal__seg_t *s)
{
    return s->start + (s->size - JOURNAL_HEADER_BYTES);
}

static journal__seg_t *journal__newest(nt_journal_t *j)
{
    return &j->segs[j->nsegs - 1];
}

/* Reads up to n bytes at off, retrying short reads. Returns the bytes read (fewer only
 * at end of file), or -1 with errno set. */
static ssize_t journal__pread_full(int fd, void *buf, size_t n, uint64_t off)
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
static int journal__pwrite_full(int fd, const void *buf, size_t n, uint64_t off)
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

/* Parses exactly JOURNAL_NAME_DIGITS decimal digits. 0, or -1 if not digits or too large. */
static int journal__parse_start(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < JOURNAL_NAME_DIGITS; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) {
            return -1;
        }
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static int journal__seg_cmp(const void *a, const void *b)
{
    uint64_t x = ((const journal__seg_t *)a)->start;
    uint64_t y = ((const journal__seg_t *)b)->start;
    return x < y ? -1 : x > y;
}

/* Makes room for one more segment. 0 or NT_ENOMEM. */
static int journal__reserve(nt_journal_t *j)
{
    if (j->nsegs < j->segs_cap) {
        return 0;
    }
    size_t cap = j->segs_cap ? j->segs_cap * 2 : 16;
    journal__seg_t *segs = realloc(j->segs, cap * sizeof(*segs));
    if (segs == NULL) {
        return NT_ENOMEM;
    }
    j->segs = segs;
    j->segs_cap = cap;
    return 0;
}

/* ---- opening ------------------------------------------------------------------------------ */

/* fsyncs the directory that contains path, so that a newly made entry in it is durable. */
static int journal__fsync_parent(nt_journal_t *j, const char *path)
{
    char parent[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (slash == NULL) {
        strcpy(parent, ".");
    } else if (slash == path) {
        strcpy(parent, "/");
    } else {
        memcpy(parent, path, (size_t)(slash - path));
        parent[slash - path] = '\0';
    }
    int fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        journal__errorf(j, "could not sync directory \"%s\": %s", parent, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return NT_EIO;
    }
    close(fd);
    return 0;
}

/* Creates dir and its missing parents with mode 0700 (like mkdir -p), syncing the parent
 * of every directory it creates. 0 or NT_EIO (described for nt_journal_error). */
static int journal__mkdirs(nt_journal_t *j, const char *dir)
{
    char path[PATH_MAX];
    size_t len = strlen(dir);
    if (len >= sizeof(path)) {
        journal__errorf(j, "could not create journal directory \"%s\": %s", dir,
                        strerror(ENAMETOOLONG));
        return NT_EIO;
    }
    memcpy(path, dir, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (path[i] != '/' && path[i] != '\0') {
            continue;
        }
        char c = path[i];
        path[i] = '\0';
        if (mkdir(path, 0700) == 0) {
            int rc = journal__fsync_parent(j, path);
            if (rc != 0) {
                return rc;
            }
        } else if (errno != EEXIST) {
            journal__errorf(j, "could not create journal directory \"%s\": %s", path,
                            strerror(errno));
            return NT_EIO;
        }
        path[i] = c;
    }
    return 0;
}

/* Takes the exclusive lock on the directory. 0 or NT_EIO (described for nt_journal_error). */
static int journal__lock(nt_journal_t *j)
{
    j->lock_fd = openat(j->dir_fd, JOURNAL_LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (j->lock_fd < 0) {
        journal__errorf(j, "could not open lock file \"%s/%s\": %s", j->dir, JOURNAL_LOCK_NAME,
                        strerror(errno));
        return NT_EIO;
    }
    if (flock(j->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK) {
            journal__errorf(
                j, "could not lock journal directory \"%s\": it is in use by another collector",
                j->dir);
        } else {
            journal__errorf(j, "could not lock journal directory \"%s\": %s", j->dir,
                            strerror(errno));
        }
        return NT_EIO;
    }
    return 0;
}

/* Lists the segment files (sorted by start) and removes leftovers of an interrupted
 * segment creation. 0, NT_EIO or NT_ENOMEM (described for nt_journal_error). */
static int journal__list(nt_journal_t *j)
{
    int rc = 0;
    int fd = dup(j->dir_fd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (d == NULL) {
        journal__errorf(j, "could not read journal directory \"%s\": %s", j->dir, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return NT_EIO;
    }
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        size_t len = strlen(name);
        uint64_t start;
        if (len == JOURNAL_NAME_DIGITS + strlen(JOURNAL_SUFFIX) &&
            strcmp(name + JOURNAL_NAME_DIGITS, JOURNAL_SUFFIX) == 0 &&
            journal__parse_start(name, &start) == 0) {
            rc = journal__reserve(j);
            if (rc != 0) {
                journal__errorf(j, "could not list journal directory \"%s\": %s", j->dir,
                                nt_strerror(rc));
                goto err;
            }
            j->segs[j->nsegs++] = (journal__seg_t){.start = start, .size = 0, .fd = -1};
        } else if (len == JOURNAL_NAME_DIGITS + strlen(JOURNAL_TMP_SUFFIX) &&
                   strcmp(name + JOURNAL_NAME_DIGITS, JOURNAL_TMP_SUFFIX) == 0 &&
                   journal__parse_start(name, &start) == 0) {
            if (unlinkat(j->dir_fd, name, 0) != 0) {
                journal__errorf(j, "could not remove \"%s/%s\": %s", j->dir, name, strerror(errno));
                rc = NT_EIO;
                goto err;
            }
            j->dir_dirty = 1;
        }
        errno = 0;
    }
    if (errno != 0) {
        journal__errorf(j, "could not read journal directory \"%s\": %s", j->dir, strerror(errno));
        rc = NT_EIO;
        goto err;
    }
    closedir(d);
    if (j->nsegs > 1) {
        qsort(j->segs, j->nsegs, sizeof(j->segs[0]), journal__seg_cmp);
    }
    return 0;
err:
    closedir(d);
    return rc;
}

/* Creates the segment that starts at start: header written and synced in a temporary file,
 * then renamed into place, so a segment file never exists without its header. The new
 * segment becomes the newest, open read-write; the directory still needs an fsync.
 * 0, NT_ENOMEM or NT_EIO (described for nt_journal_error). */
static int journal__create_seg(nt_journal_t *j, uint64_t start)
{
    char name[64];
    char tmp[64];
    uint8_t hdr[JOURNAL_HEADER_BYTES];
    int rc = journal__reserve(j);
    if (rc != 0) {
        journal__errorf(j, "could not create journal segment in \"%s\": %s", j->dir,
                        nt_strerror(rc));
        return rc;
    }
    journal__seg_name(name, sizeof(name), start);
    snprintf(tmp, sizeof(tmp), "%020" PRIu64 JOURNAL_TMP_SUFFIX, start);

    memcpy(hdr, JOURNAL_MAGIC, 4);
    journal__put32(hdr + 4, JOURNAL_VERSION);
    journal__put64(hdr + 8, j->id);
    journal__put64(hdr + 16, start);
    journal__put64(hdr + 24, 0);

    int fd = openat(j->dir_fd, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        journal__errorf(j, "could not create journal segment \"%s/%s\": %s", j->dir, tmp,
                        strerror(errno));
        return NT_EIO;
    }
    if (journal__pwrite_full(fd, hdr, sizeof(hdr), 0) != 0 || fdatasync(fd) != 0 ||
        renameat(j->dir_fd, tmp, j->dir_fd, name) != 0) {
        journal__errorf(j, "could not create journal segment \"%s/%s\": %s", j->dir, name,
                        strerror(errno));
        close(fd);
        unlinkat(j->dir_fd, tmp, 0);
        return NT_EIO;
    }
    j->segs[j->nsegs++] = (journal__seg_t){.start = start, .size = JOURNAL_HEADER_BYTES, .fd = fd};
    j->disk_bytes += JOURNAL_HEADER_BYTES;
    j->dir_dirty = 1;
    return 0;
}

/* A new journal: a random id and the first segment, made durable now. */
static int journal__create_first(nt_journal_t *j)
{
    while (j->id == 0) {
        ssize_t n = getrandom(&j->id, sizeof(j->id), 0);
        if (n < 0 && errno != EINTR) {
            journal__errorf(j, "could not choose a journal id for \"%s\": %s", j->dir,
                            strerror(errno));
            return NT_EIO;
        }
    }
    int rc = journal__create_seg(j, 0);
    if (rc != 0) {
        return rc;
    }
    if (fsync(j->dir_fd) != 0) {
        journal__errorf(j, "could not sync journal directory \"%s\": %s", j->dir, strerror(errno));
        return NT_EIO;
    }
    j->dir_dirty = 0;
    nt_log(NT_LOG_INFO, "journal", "created journal \"%s\" with id %016" PRIx64, j->dir, j->id);
    return 0;
}

/* Checks every record of the segment file fd (size bytes) and returns in *valid the size
 * of its intact prefix. The newest segment is truncated there (a torn tail: logged as a
 * warning); in an older segment any bad record is NT_ECORRUPT. buf has JOURNAL_SCAN_BYTES. */
static int journal__scan(nt_journal_t *j, int fd, const char *name, uint64_t size, int newest,
                         uint8_t *buf, uint64_t *valid)
{
    uint64_t off = JOURNAL_HEADER_BYTES;
    uint64_t boff = 0; /* buf holds file bytes [boff, boff + blen) */
    size_t blen = 0;
    char why[96];

    why[0] = '\0';
    while (off < size) {
        if (size - off < JOURNAL_FRAME_BYTES) {
            snprintf(why, sizeof(why), "incomplete record header");
            break;
        }
        /* Keep the whole of the longest possible record at off in buf. */
        uint64_t need = size - off < JOURNAL_MAX_RECORD ? size - off : JOURNAL_MAX_RECORD;
        if (off < boff || off + need > boff + blen) {
            uint64_t want = size - off < JOURNAL_SCAN_BYTES ? size - off : JOURNAL_SCAN_BYTES;
            ssize_t n = journal__pread_full(fd, buf, (size_t)want, off);
            if (n < 0 || (uint64_t)n != want) {
                journal__errorf(j, "could not read journal segment \"%s/%s\": %s", j->dir, name,
                                n < 0 ? strerror(errno) : "unexpected end of file");
                return NT_EIO;
            }
            boff = off;
            blen = (size_t)want;
        }
        const uint8_t *p = buf + (off - boff);
        uint32_t len = journal__get32(p);
        if (len < JOURNAL_FIXED_BYTES || len > JOURNAL_MAX_BODY) {
            snprintf(why, sizeof(why), "impossible record length %" PRIu32, len);
            break;
        }
        if (len > size - off - JOURNAL_FRAME_BYTES) {
            snprintf(why, sizeof(why), "record length %" PRIu32 " extends past the end of the file",
                     len);
            break;
        }
        if (nt_crc32c(0, p + JOURNAL_FRAME_BYTES, len) != journal__get32(p + 4)) {
            snprintf(why, sizeof(why), "record checksum mismatch");
            break;
        }
        if (journal__get16(p + JOURNAL_FRAME_BYTES + 8) > len - JOURNAL_FIXED_BYTES) {
            snprintf(why, sizeof(why), "topic length exceeds the record");
            break;
        }
        off += JOURNAL_FRAME_BYTES + len;
    }
    if (off < size) {
        if (!newest) {
            journal__errorf(j,
                            "corrupt record in journal segment \"%s/%s\" at offset %" PRIu64 ": %s",
                            j->dir, name, off, why);
            return NT_ECORRUPT;
        }
        if (ftruncate(fd, (off_t)off) != 0 || fdatasync(fd) != 0) {
            journal__errorf(j, "could not truncate journal segment \"%s/%s\": %s", j->dir, name,
                            strerror(errno));
            return NT_EIO;
        }
        nt_log(NT_LOG_WARN, "journal",
               "truncated torn tail of journal segment \"%s/%s\" at offset %" PRIu64
               ": cut %" PRIu64 " bytes (%s)",
               j->dir, name, off, size - off, why);
    }
    *valid = off;
    return 0;
}

/* Checks the header of segment s (open as fd, size bytes), then all its records. */
static int journal__recover_seg(nt_journal_t *j, journal__seg_t *s, int fd, uint64_t size,
                                int first, int newest, uint64_t prev_end, uint8_t *buf)
{
    char name[64];
    uint8_t hdr[JOURNAL_HEADER_BYTES];
    journal__seg_name(name, sizeof(name), s->start);

    if (size < JOURNAL_HEADER_BYTES) {
        journal__errorf(j,
                        "invalid header in journal segment \"%s/%s\": file is %" PRIu64
                        " bytes, shorter than its header",
                        j->dir, name, size);
        return NT_ECORRUPT;
    }
    ssize_t n = journal__pread_full(fd, hdr, sizeof(hdr), 0);
    if (n != (ssize_t)sizeof(hdr)) {
        journal__errorf(j, "could not read journal segment \"%s/%s\": %s", j->dir, name,
                        n < 0 ? strerror(errno) : "unexpected end of file");
        return NT_EIO;
    }
    uint32_t version = journal__get32(hdr + 4);
    uint64_t id = journal__get64(hdr + 8);
    uint64_t start = journal__get64(hdr + 16);
    if (memcmp(hdr, JOURNAL_MAGIC, 4) != 0) {
        journal__errorf(j, "invalid header in journal segment \"%s/%s\": wrong magic", j->dir,
                        name);
        return NT_ECORRUPT;
    }
    if (version != JOURNAL_VERSION) {
        journal__errorf(j,
                        "invalid header in journal segment \"%s/%s\": unsupported version %" PRIu32,
                        j->dir, name, version);
        return NT_ECORRUPT;
    }
    if (first) {
        j->id = id;
    } else if (id != j->id) {
        journal__errorf(j,
                        "invalid header in journal segment \"%s/%s\": journal id %016" PRIx64
                        " does not match %016" PRIx64 " of the older segments",
                        j->dir, name, id, j->id);
        return NT_ECORRUPT;
    }
    if (start != s->start) {
        journal__errorf(j,
                        "invalid header in journal segment \"%s/%s\": start position %" PRIu64
                        " does not match the file name",
                        j->dir, name, start);
        return NT_ECORRUPT;
    }
    if (!first && s->start != prev_end) {
        journal__errorf(j,
                        "journal segment \"%s/%s\" is not contiguous: it starts at %" PRIu64
                        " but the previous segment ends at %" PRIu64,
                        j->dir, name, s->start, prev_end);
        return NT_ECORRUPT;
    }
    return journal__scan(j, fd, name, size, newest, buf, &s->size);
}

/* Scans every segment in order: headers, contiguity, every record. Keeps the newest
 * segment open for appending. */
static int journal__recover(nt_journal_t *j)
{
    int rc = 0;
    int fd = -1;
    uint8_t *buf = malloc(JOURNAL_SCAN_BYTES);
    if (buf == NULL) {
        journal__errorf(j, "could not recover journal \"%s\": %s", j->dir, nt_strerror(NT_ENOMEM));
        return NT_ENOMEM;
    }
    uint64_t prev_end = 0;
    for (size_t i = 0; i < j->nsegs; i++) {
        journal__seg_t *s = &j->segs[i];
        int newest = i + 1 == j->nsegs;
        char name[64];
        struct stat st;
        journal__seg_name(name, sizeof(name), s->start);
        fd = openat(j->dir_fd, name, (newest ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) != 0) {
            journal__errorf(j, "could not open journal segment \"%s/%s\": %s", j->dir, name,
                            strerror(errno));
            rc = NT_EIO;
            goto err;
        }
        rc = journal__recover_seg(j, s, fd, (uint64_t)st.st_size, i == 0, newest, prev_end, buf);
        if (rc != 0) {
            goto err;
        }
        if (newest) {
            s->fd = fd;
        } else {
            close(fd);
        }
        fd = -1;
        j->disk_bytes += s->size;
        prev_end = journal__seg_end(s);
    }
    j->durable_end = prev_end;
    free(buf);
    return 0;
err:
    if (fd >= 0) {
        close(fd);
    }
    free(buf);
    return rc;
}

/* Releases everything j holds, without flushing. */
static void journal__free(nt_journal_t *j)
{
    for (size_t i = 0; i < j->nsegs; i++) {
        if (j->segs[i].fd >= 0) {
            close(j->segs[i].fd);
        }
    }
    if (j->lock_fd >= 0) {
        close(j->lock_fd);
    }
    if (j->dir_fd >= 0) {
        close(j->dir_fd);
    }
    free(j->segs);
    free(j->wbuf);
    free(j->rbuf);
    free(j->dir);
    free(j);
}

/* Opens or creates the journal in opts->dir, takes its lock and recovers every segment
 * (see journal.h). 0 with *out set; otherwise *out is NULL and nothing stays open. */
int nt_journal_init(nt_journal_t **out, const nt_journal_options_t *opts, char *err, size_t errlen)
{
    int rc;
    nt_journal_t *j = NULL;

    if (out == NULL) {
        return NT_EINVAL;
    }
    *out = NULL;
    if (opts == NULL || opts->dir == NULL || opts->dir[0] == '\0') {
        return NT_EINVAL;
    }
    j = calloc(1, sizeof(*j));
    if (j == NULL) {
        if (err != NULL && errlen > 0) {
            snprintf(err, errlen, "could not open journal \"%s\": %s", opts->dir,
                     nt_strerror(NT_ENOMEM));
        }
        return NT_ENOMEM;
    }
    j->dir_fd = -1;
    j->lock_fd = -1;
    j->max_bytes = opts->max_bytes ? opts->max_bytes : JOURNAL_DEFAULT_MAX_BYTES;
    j->segment_bytes = opts->segment_bytes ? opts->segment_bytes : JOURNAL_DEFAULT_SEGMENT_BYTES;
    j->dir = strdup(opts->dir);
    j->wbuf = malloc(JOURNAL_WBUF_BYTES);
    j->rbuf = malloc(JOURNAL_RBUF_BYTES);
    j->rcap = JOURNAL_RBUF_BYTES;
    if (j->dir == NULL || j->wbuf == NULL || j->rbuf == NULL) {
        journal__errorf(j, "could not open journal \"%s\": %s", opts->dir, nt_strerror(NT_ENOMEM));
        rc = NT_ENOMEM;
        goto err;
    }
    rc = journal__mkdirs(j, j->dir);
    if (rc != 0) {
        goto err;
    }
    j->dir_fd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (j->dir_fd < 0) {
        journal__errorf(j, "could not open journal directory \"%s\": %s", j->dir, strerror(errno));
        rc = NT_EIO;
        goto err;
    }
    rc = journal__lock(j);
    if (rc != 0) {
        goto err;
    }
    rc = journal__list(j);
    if (rc != 0) {
        goto err;
    }
    rc = j->nsegs == 0 ? journal__create_first(j) : journal__recover(j);
    if (rc != 0) {
        goto err;
    }
    *out = j;
    return 0;
err:
    if (err != NULL && errlen > 0) {
        snprintf(err, errlen, "%s", j->error[0] != '\0' ? j->error : nt_strerror(rc));
    }
    journal__free(j);
    return rc;
}

/* ---- writing ------------------------------------------------------------------------------ */

/* Marks the journal failed after a write error; logs once with the file concerned. */
static int journal__fail(nt_journal_t *j, const char *what, uint64_t start, int err)
{
    char name[64];
    journal__seg_name(name, sizeof(name), start);
    j->failed = 1;
    journal__errorf(j,
                    "could not %s journal segment \"%s/%s\": %s; refusing appends until reopened",
                    what, j->dir, name, strerror(err));
    return NT_EIO;
}

/* fsyncs the directory if a segment was created or deleted since it was last synced. */
static int journal__sync_dir(nt_journal_t *j)
{
    if (!j->dir_dirty) {
        return 0;
    }
    if (fsync(j->dir_fd) != 0) {
        j->failed = 1;
        journal__errorf(
            j, "could not sync journal directory \"%s\": %s; refusing appends until reopened",
            j->dir, strerror(errno));
        return NT_EIO;
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
    if (journal__pwrite_full(s->fd, j->wbuf, j->wlen, s->size) != 0) {
        return journal__fail(j, "write", s->start, errno);
    }
    s->size += j->wlen;
    j->disk_bytes += j->wlen;
    j->wlen = 0;
    j->unsynced = 1;
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
    rc = journal__create_seg(j, journal__seg_end(journal__newest(j)));
    if (rc != 0) {
        j->failed = 1;
        return NT_EIO;
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
        return NT_ETOOBIG;
    }
    if (j->failed) {
        return NT_EIO;
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
        return NT_EIO;
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
    journal__free(j);
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
            journal__errorf(j, "could not open journal segment \"%s/%s\": %s", j->dir, name,
                            strerror(errno));
            return NT_EIO;
        }
    }
    size_t want = limit - pos < j->rcap ? (size_t)(limit - pos) : j->rcap;
    ssize_t n = journal__pread_full(s->fd, j->rbuf, want, JOURNAL_HEADER_BYTES + (pos - s->start));
    if (n < 0 || (size_t)n != want) {
        journal__errorf(j, "could not read journal segment \"%s/%s\": %s", j->dir, name,
                        n < 0 ? strerror(errno) : "unexpected end of file");
        return NT_EIO;
    }
    j->rpos = pos;
    j->rlen = want;
    return 0;
}

/* Reads the durable record at pos through the read-ahead buffer and checks its CRC.
 * 1, 0 at the durable end, NT_EINVAL, NT_ECORRUPT or NT_EIO (the last two described for
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
        return NT_EINVAL;
    }
    journal__seg_t *s = &j->segs[journal__find(j, pos)];
    uint64_t limit = journal__seg_end(s);
    if (limit > j->durable_end) {
        limit = j->durable_end;
    }
    if (pos >= limit || limit - pos < JOURNAL_FRAME_BYTES + JOURNAL_FIXED_BYTES) {
        return NT_EINVAL;
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
        return NT_EINVAL;
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
        journal__errorf(j, "corrupt record in journal segment \"%s/%s\" at offset %" PRIu64 ": %s",
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

    if (j == NULL || pos > j->durable_end) {
        return NT_EINVAL;
    }
    while (j->nsegs - removed > 1 && journal__seg_end(&j->segs[removed]) <= pos) {
        journal__seg_t *s = &j->segs[removed];
        char name[64];
        journal__seg_name(name, sizeof(name), s->start);
        if (unlinkat(j->dir_fd, name, 0) != 0 && errno != ENOENT) {
            journal__errorf(j, "could not delete journal segment \"%s/%s\": %s", j->dir, name,
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
        j->dir_dirty = 1;
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
