/* journal_open.c -- opens a journal directory: creates it, locks it, and recovers its segments. */
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

/* Parses exactly JOURNAL_NAME_DIGITS decimal digits. 0, or NT_EINVAL if not digits or too large. */
static int journal__parse_start(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < JOURNAL_NAME_DIGITS; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return NT_EINVAL;
        }
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) {
            return NT_EINVAL;
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
    return nt_grow(&j->segs, &j->segs_cap, j->nsegs + 1, sizeof(*j->segs), 16);
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
        nt_journal__errorf(j, "could not sync directory \"%s\": %s", parent, strerror(errno));
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
        nt_journal__errorf(j, "could not create journal directory \"%s\": %s", dir,
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
            nt_journal__errorf(j, "could not create journal directory \"%s\": %s", path,
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
        nt_journal__errorf(j, "could not open lock file \"%s/%s\": %s", j->dir, JOURNAL_LOCK_NAME,
                           strerror(errno));
        return NT_EIO;
    }
    if (flock(j->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK) {
            nt_journal__errorf(
                j, "could not lock journal directory \"%s\": it is in use by another collector",
                j->dir);
        } else {
            nt_journal__errorf(j, "could not lock journal directory \"%s\": %s", j->dir,
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
        nt_journal__errorf(j, "could not read journal directory \"%s\": %s", j->dir,
                           strerror(errno));
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
                nt_journal__errorf(j, "could not list journal directory \"%s\": %s", j->dir,
                                   nt_strerror(rc));
                goto err;
            }
            j->segs[j->nsegs++] = (journal__seg_t){.start = start, .size = 0, .fd = -1};
        } else if (len == JOURNAL_NAME_DIGITS + strlen(JOURNAL_TMP_SUFFIX) &&
                   strcmp(name + JOURNAL_NAME_DIGITS, JOURNAL_TMP_SUFFIX) == 0 &&
                   journal__parse_start(name, &start) == 0) {
            if (unlinkat(j->dir_fd, name, 0) != 0) {
                nt_journal__errorf(j, "could not remove \"%s/%s\": %s", j->dir, name,
                                   strerror(errno));
                rc = NT_EIO;
                goto err;
            }
            j->dir_dirty = 1;
        }
        errno = 0;
    }
    if (errno != 0) {
        nt_journal__errorf(j, "could not read journal directory \"%s\": %s", j->dir,
                           strerror(errno));
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
int nt_journal__create_seg(nt_journal_t *j, uint64_t start)
{
    char name[64];
    char tmp[64];
    uint8_t hdr[JOURNAL_HEADER_BYTES];
    int rc = journal__reserve(j);
    if (rc != 0) {
        nt_journal__errorf(j, "could not create journal segment in \"%s\": %s", j->dir,
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
        nt_journal__errorf(j, "could not create journal segment \"%s/%s\": %s", j->dir, tmp,
                           strerror(errno));
        return NT_EIO;
    }
    if (nt_journal__pwrite_full(fd, hdr, sizeof(hdr), 0) != 0 || fdatasync(fd) != 0 ||
        renameat(j->dir_fd, tmp, j->dir_fd, name) != 0) {
        nt_journal__errorf(j, "could not create journal segment \"%s/%s\": %s", j->dir, name,
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
            nt_journal__errorf(j, "could not choose a journal id for \"%s\": %s", j->dir,
                               strerror(errno));
            return NT_EIO;
        }
    }
    int rc = nt_journal__create_seg(j, 0);
    if (rc != 0) {
        return rc;
    }
    if (fsync(j->dir_fd) != 0) {
        nt_journal__errorf(j, "could not sync journal directory \"%s\": %s", j->dir,
                           strerror(errno));
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
            ssize_t n = nt_journal__pread_full(fd, buf, (size_t)want, off);
            if (n < 0 || (uint64_t)n != want) {
                nt_journal__errorf(j, "could not read journal segment \"%s/%s\": %s", j->dir, name,
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
            nt_journal__errorf(
                j, "corrupt record in journal segment \"%s/%s\" at offset %" PRIu64 ": %s", j->dir,
                name, off, why);
            return NT_ECORRUPT;
        }
        if (ftruncate(fd, (off_t)off) != 0 || fdatasync(fd) != 0) {
            nt_journal__errorf(j, "could not truncate journal segment \"%s/%s\": %s", j->dir, name,
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
        nt_journal__errorf(j,
                           "invalid header in journal segment \"%s/%s\": file is %" PRIu64
                           " bytes, shorter than its header",
                           j->dir, name, size);
        return NT_ECORRUPT;
    }
    ssize_t n = nt_journal__pread_full(fd, hdr, sizeof(hdr), 0);
    if (n != (ssize_t)sizeof(hdr)) {
        nt_journal__errorf(j, "could not read journal segment \"%s/%s\": %s", j->dir, name,
                           n < 0 ? strerror(errno) : "unexpected end of file");
        return NT_EIO;
    }
    uint32_t version = journal__get32(hdr + 4);
    uint64_t id = journal__get64(hdr + 8);
    uint64_t start = journal__get64(hdr + 16);
    if (memcmp(hdr, JOURNAL_MAGIC, 4) != 0) {
        nt_journal__errorf(j, "invalid header in journal segment \"%s/%s\": wrong magic", j->dir,
                           name);
        return NT_ECORRUPT;
    }
    if (version != JOURNAL_VERSION) {
        nt_journal__errorf(
            j, "invalid header in journal segment \"%s/%s\": unsupported version %" PRIu32, j->dir,
            name, version);
        return NT_ECORRUPT;
    }
    if (first) {
        j->id = id;
    } else if (id != j->id) {
        nt_journal__errorf(j,
                           "invalid header in journal segment \"%s/%s\": journal id %016" PRIx64
                           " does not match %016" PRIx64 " of the older segments",
                           j->dir, name, id, j->id);
        return NT_ECORRUPT;
    }
    if (start != s->start) {
        nt_journal__errorf(j,
                           "invalid header in journal segment \"%s/%s\": start position %" PRIu64
                           " does not match the file name",
                           j->dir, name, start);
        return NT_ECORRUPT;
    }
    if (!first && s->start != prev_end) {
        nt_journal__errorf(j,
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
        nt_journal__errorf(j, "could not recover journal \"%s\": %s", j->dir,
                           nt_strerror(NT_ENOMEM));
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
            nt_journal__errorf(j, "could not open journal segment \"%s/%s\": %s", j->dir, name,
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
void nt_journal__free(nt_journal_t *j)
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
        nt_journal__errorf(j, "could not open journal \"%s\": %s", opts->dir,
                           nt_strerror(NT_ENOMEM));
        rc = NT_ENOMEM;
        goto err;
    }
    rc = journal__mkdirs(j, j->dir);
    if (rc != 0) {
        goto err;
    }
    j->dir_fd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (j->dir_fd < 0) {
        nt_journal__errorf(j, "could not open journal directory \"%s\": %s", j->dir,
                           strerror(errno));
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
    nt_journal__free(j);
    return rc;
}
