/* journal_open.c -- opens a journal directory: creates it, locks it, recovers its segments and
 * starts the fresh segment appends go to (read-only opens for check and salvage too). */
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

/* Takes the lock on the directory: exclusive for a collector, shared for a read-only open
 * (check and salvage may run together, never beside a collector). A read-only open creates no
 * lock file: a directory without one was never opened by a collector. 0 or NT_EIO (described
 * for nt_journal_error). */
static int journal__lock(nt_journal_t *j)
{
    int flags = j->readonly ? O_RDONLY : O_RDWR | O_CREAT;
    j->lock_fd = openat(j->dir_fd, JOURNAL_LOCK_NAME, flags | O_CLOEXEC, 0600);
    if (j->lock_fd < 0) {
        if (j->readonly && errno == ENOENT) {
            return 0;
        }
        nt_journal__errorf(j, "could not open lock file \"%s/%s\": %s", j->dir, JOURNAL_LOCK_NAME,
                           strerror(errno));
        return NT_EIO;
    }
    if (flock(j->lock_fd, (j->readonly ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK && j->readonly) {
            nt_journal__errorf(j,
                               "could not lock journal directory \"%s\": a collector is running "
                               "on it; stop it first",
                               j->dir);
        } else if (errno == EWOULDBLOCK) {
            nt_journal__errorf(j,
                               "could not lock journal directory \"%s\": it is in use by another "
                               "collector, or by needletrace journal check or salvage",
                               j->dir);
        } else {
            nt_journal__errorf(j, "could not lock journal directory \"%s\": %s", j->dir,
                               strerror(errno));
        }
        return NT_EIO;
    }
    return 0;
}

/* Lists the segment files (sorted by start) and removes leftovers of an interrupted segment
 * creation (a read-only open only counts them). 0, NT_EIO or NT_ENOMEM (described for
 * nt_journal_error). */
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
            if (j->readonly) {
                j->leftovers++;
            } else {
                if (unlinkat(j->dir_fd, name, 0) != 0) {
                    nt_journal__errorf(j, "could not remove \"%s/%s\": %s", j->dir, name,
                                       strerror(errno));
                    rc = NT_EIO;
                    goto err;
                }
                journal__dir_changed(j);
            }
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
 * then renamed into place (replacing a file of that name), so a segment file never exists
 * without its header. The new segment becomes the newest, open read-write; the directory still
 * needs an fsync. 0, NT_ENOMEM or NT_EIO (described for nt_journal_error; errno then tells the
 * cause, e.g. ENOSPC). */
int nt_journal__create_seg(nt_journal_t *j, uint64_t start)
{
    char name[64];
    char tmp[64];
    uint8_t hdr[JOURNAL_HEADER_BYTES];
    int rc = journal__reserve(j);
    if (rc != 0) {
        nt_journal__errorf(j, "could not create journal segment in \"%s\": %s", j->dir,
                           nt_strerror(rc));
        errno = ENOMEM;
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
        int e = errno;
        nt_journal__errorf(j, "could not create journal segment \"%s/%s\": %s", j->dir, tmp,
                           strerror(e));
        errno = e;
        return NT_EIO;
    }
    if (nt_journal__pwrite_full(fd, hdr, sizeof(hdr), 0) != 0 || fdatasync(fd) != 0 ||
        renameat(j->dir_fd, tmp, j->dir_fd, name) != 0) {
        int e = errno;
        nt_journal__errorf(j, "could not create journal segment \"%s/%s\": %s", j->dir, name,
                           strerror(e));
        close(fd);
        unlinkat(j->dir_fd, tmp, 0);
        errno = e;
        return NT_EIO;
    }
    j->segs[j->nsegs++] = (journal__seg_t){.start = start, .size = JOURNAL_HEADER_BYTES, .fd = fd};
    j->disk_bytes += JOURNAL_HEADER_BYTES;
    journal__dir_changed(j);
    return 0;
}

/* fsyncs the journal directory now, so that the segment just created (or replaced) is durable.
 * 0 or NT_EIO (described for nt_journal_error). */
static int journal__sync_dir_now(nt_journal_t *j)
{
    if (fsync(j->dir_fd) != 0) {
        nt_journal__errorf(j, "could not sync journal directory \"%s\": %s", j->dir,
                           strerror(errno));
        return NT_EIO;
    }
    j->dir_dirty = 0;
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
    if (rc == 0) {
        rc = journal__sync_dir_now(j);
    }
    if (rc != 0) {
        return rc;
    }
    nt_log(NT_LOG_INFO, "journal", "created journal \"%s\" with id %016" PRIx64, j->dir, j->id);
    return 0;
}

/* Starts the segment that this process appends to, at the end of the journal: a new file after
 * the newest segment, so that a file an earlier process was writing when it died is never
 * written again. A newest segment with no record (left by the previous start, or cut to its
 * header) is replaced by the new file, which takes its name by an atomic rename: a crash loop
 * never piles up empty segments, and a crash at any step leaves either the old file or the new
 * one (a *.ntj.tmp leftover is removed at the next open). The directory is fsynced. */
static int journal__start_fresh(nt_journal_t *j)
{
    journal__seg_t *s = journal__newest(j);
    uint64_t start = journal__seg_end(s);
    int replaced = s->size == JOURNAL_HEADER_BYTES;
    if (replaced) {
        if (s->fd >= 0) {
            close(s->fd);
            s->fd = -1;
        }
        j->disk_bytes -= s->size;
        j->nsegs--;
    }
    int rc = nt_journal__create_seg(j, start);
    if (rc != 0) {
        int e = errno;
        if (replaced) {
            j->nsegs++; /* the empty segment is still there: the create never renamed over it */
            j->disk_bytes += JOURNAL_HEADER_BYTES;
        }
        if (e == ENOSPC || e == EDQUOT) {
            /* A full disk is backpressure, not a refusal to start: the journal opens refusing
             * appends (the records already journaled are intact and can be committed, which
             * frees space); nt_journal_resume starts the fresh segment once there is room. */
            char name[64];
            journal__seg_name(name, sizeof(name), start);
            nt_journal__errorf(j,
                               "could not start a fresh journal segment \"%s/%s\": %s: the file "
                               "system of the journal is full",
                               j->dir, name, strerror(e));
            nt_journal__refuse(j);
            return 0;
        }
        return rc;
    }
    return journal__sync_dir_now(j);
}

/* Cuts the newest segment at its first damage, which the scan found to be a torn tail (the
 * bytes after the last valid record, none of them a valid record) or an unwritten page after a
 * power cut (with it, every record after it: written after the last fdatasync, so never
 * acknowledged), and logs it once. */
static int journal__cut_tail(nt_journal_t *j, const nt_journal_report_t *r)
{
    const nt_journal_segment_report_t *sr = &r->segs[r->nsegs - 1];
    const nt_journal_damage_t *d = &sr->damage[0];
    const uint64_t cut = sr->file_bytes - d->offset;
    int fd = openat(j->dir_fd, sr->name, O_RDWR | O_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)d->offset) != 0 || fdatasync(fd) != 0) {
        nt_journal__errorf(j, "could not truncate journal segment \"%s/%s\": %s", j->dir, sr->name,
                           strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return NT_EIO;
    }
    close(fd);
    if (r->state == NT_JOURNAL_POWER_CUT) {
        nt_log(NT_LOG_WARN, "journal",
               "truncated journal segment \"%s/%s\" at offset %" PRIu64
               " after a power cut: cut %" PRIu64 " bytes (%s); the page at offset %" PRIu64
               " was never written (it reads as zeros), so the %" PRIu64
               " valid-looking records after it were discarded: written after the last sync, "
               "they were never acknowledged",
               j->dir, sr->name, d->offset, cut, d->reason, d->zero_page, d->records_after);
    } else {
        nt_log(NT_LOG_WARN, "journal",
               "truncated torn tail of journal segment \"%s/%s\" at offset %" PRIu64
               ": cut %" PRIu64 " bytes (%s); no valid record follows it",
               j->dir, sr->name, d->offset, cut, d->reason);
    }
    journal__newest(j)->size = d->offset;
    j->disk_bytes -= cut;
    return 0;
}

/* fdatasyncs the newest segment before a fresh one follows it (one with no record is replaced
 * instead): what the process that wrote it had not synced when it stopped or died (never
 * acknowledged) may still be in the page cache only. So every older segment is durable whole,
 * as a roll leaves it, and a page of zeros in one is corruption, never a power cut. 0 or NT_EIO
 * (described). */
static int journal__sync_newest(nt_journal_t *j)
{
    const journal__seg_t *s = journal__newest(j);
    char name[64];
    if (s->size == JOURNAL_HEADER_BYTES) {
        return 0;
    }
    journal__seg_name(name, sizeof(name), s->start);
    int fd = openat(j->dir_fd, name, O_RDWR | O_CLOEXEC);
    if (fd < 0 || fdatasync(fd) != 0) {
        nt_journal__errorf(j, "could not sync journal segment \"%s/%s\": %s", j->dir, name,
                           strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return NT_EIO;
    }
    close(fd);
    return 0;
}

/* Scans every segment (journal_scan.c); refuses a corrupt journal without changing anything,
 * cuts a torn tail or an unwritten page after a power cut, syncs the newest segment and starts
 * a fresh one at the end. */
static int journal__recover(nt_journal_t *j)
{
    nt_journal_report_t r;
    memset(&r, 0, sizeof(r));
    int rc = nt_journal__scan(j, &r, NULL, NULL);
    if (rc != 0) {
        goto done;
    }
    if (r.state == NT_JOURNAL_CORRUPT) {
        nt_journal__errorf(j,
                           "%s; refusing to start: \"needletrace journal salvage --journal-dir %s "
                           "--out NEWDIR\" copies every valid record to a new journal "
                           "(\"needletrace journal check --journal-dir %s\" lists the damage)",
                           r.verdict, j->dir, j->dir);
        rc = NT_ECORRUPT;
        goto done;
    }
    j->id = r.id;
    for (size_t i = 0; i < j->nsegs; i++) {
        j->segs[i].size = r.segs[i].file_bytes;
        j->disk_bytes += r.segs[i].file_bytes;
    }
    if (r.state == NT_JOURNAL_TORN_TAIL || r.state == NT_JOURNAL_POWER_CUT) {
        rc = journal__cut_tail(j, &r);
        if (rc != 0) {
            goto done;
        }
    }
    j->durable_end = journal__seg_end(journal__newest(j));
    rc = journal__sync_newest(j);
    if (rc == 0) {
        rc = journal__start_fresh(j);
    }
done:
    nt_journal__report_clear(&r);
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

/* Allocates a journal for dir: with buffers for appending and reading unless readonly. NULL
 * when out of memory. */
static nt_journal_t *journal__alloc(const char *dir, int readonly)
{
    nt_journal_t *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        return NULL;
    }
    j->dir_fd = -1;
    j->lock_fd = -1;
    j->readonly = readonly;
    j->dir = strdup(dir);
    if (!readonly) {
        j->wbuf = malloc(JOURNAL_WBUF_BYTES);
        j->rbuf = malloc(JOURNAL_RBUF_BYTES);
        j->rcap = JOURNAL_RBUF_BYTES;
    }
    if (j->dir == NULL || (!readonly && (j->wbuf == NULL || j->rbuf == NULL))) {
        nt_journal__free(j);
        return NULL;
    }
    return j;
}

/* Opens j->dir (which must exist), takes its lock and lists its segments. 0, NT_ENOENT (a
 * read-only open of a directory that does not exist), NT_EIO or NT_ENOMEM (described). */
static int journal__open_dir(nt_journal_t *j)
{
    j->dir_fd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (j->dir_fd < 0) {
        int e = errno;
        if (j->readonly && e == ENOENT) {
            nt_journal__errorf(j, "journal directory \"%s\" does not exist", j->dir);
            return NT_ENOENT;
        }
        nt_journal__errorf(j, "could not open journal directory \"%s\": %s", j->dir, strerror(e));
        return NT_EIO;
    }
    int rc = journal__lock(j);
    if (rc == 0) {
        rc = journal__list(j);
    }
    return rc;
}

/* Copies the description of j's failure rc to err, when the caller gave one. */
static void journal__describe(const nt_journal_t *j, int rc, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0) {
        snprintf(err, errlen, "%s", j->error[0] != '\0' ? j->error : nt_strerror(rc));
    }
}

/* See journal_internal.h. */
int nt_journal__open_readonly(nt_journal_t **out, const char *dir, char *err, size_t errlen)
{
    *out = NULL;
    nt_journal_t *j = journal__alloc(dir, 1);
    if (j == NULL) {
        if (err != NULL && errlen > 0) {
            snprintf(err, errlen, "could not open journal \"%s\": %s", dir, nt_strerror(NT_ENOMEM));
        }
        return NT_ENOMEM;
    }
    int rc = journal__open_dir(j);
    if (rc != 0) {
        journal__describe(j, rc, err, errlen);
        nt_journal__free(j);
        return rc;
    }
    *out = j;
    return 0;
}

/* Opens or creates the journal in opts->dir, takes its lock, recovers every segment and starts
 * a fresh one (see journal.h). 0 with *out set; otherwise *out is NULL and nothing stays open. */
int nt_journal_init(nt_journal_t **out, const nt_journal_options_t *opts, char *err, size_t errlen)
{
    int rc;
    if (out == NULL) {
        return NT_EINVAL;
    }
    *out = NULL;
    if (opts == NULL || opts->dir == NULL || opts->dir[0] == '\0') {
        return NT_EINVAL;
    }
    nt_journal_t *j = journal__alloc(opts->dir, 0);
    if (j == NULL) {
        if (err != NULL && errlen > 0) {
            snprintf(err, errlen, "could not open journal \"%s\": %s", opts->dir,
                     nt_strerror(NT_ENOMEM));
        }
        return NT_ENOMEM;
    }
    j->max_bytes = opts->max_bytes ? opts->max_bytes : JOURNAL_DEFAULT_MAX_BYTES;
    j->segment_bytes = opts->segment_bytes ? opts->segment_bytes : JOURNAL_DEFAULT_SEGMENT_BYTES;
    rc = journal__mkdirs(j, j->dir);
    if (rc != 0) {
        goto err;
    }
    rc = journal__open_dir(j);
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
    journal__describe(j, rc, err, errlen);
    nt_journal__free(j);
    return rc;
}
