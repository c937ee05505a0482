/* journal_salvage.c -- copies every valid record of a damaged journal to a new one, leaving the
 * old directory as it was (`needletrace journal salvage`). */
#include "needletrace/journal.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "needletrace/common.h"

#include "journal_internal.h"

typedef struct {
    nt_journal_t *out;
    uint64_t records;
    uint64_t bytes;
} salvage__t;

/* Appends one valid record of the old journal to the new one (an nt_journal__record_fn). */
static int salvage__copy(void *arg, const uint8_t *rec, size_t len)
{
    salvage__t *s = arg;
    const uint8_t *b = rec + JOURNAL_FRAME_BYTES;
    size_t body = len - JOURNAL_FRAME_BYTES;
    uint16_t topic_len = journal__get16(b + 8);
    const uint8_t *topic = b + JOURNAL_FIXED_BYTES;
    int rc = nt_journal_append(s->out, (int64_t)journal__get64(b), (const char *)topic, topic_len,
                               topic + topic_len, body - JOURNAL_FIXED_BYTES - topic_len);
    if (rc != 0) {
        return rc;
    }
    s->records++;
    s->bytes += len;
    return 0;
}

/* Refuses an output directory that exists and holds anything: a salvage never mixes with (or
 * overwrites) another journal. 0, or NT_EINVAL / NT_EIO with err set. */
static int salvage__check_out(const char *dir, char *err, size_t errlen)
{
    /* Created here, mode 0700, and never an existing directory: one made beforehand (or a
     * symbolic link planted in its place) could belong to someone who would swap the salvaged
     * segments before the operator moves them into place. */
    char parent[PATH_MAX];
    size_t n = strlen(dir);
    if (n >= sizeof(parent)) {
        snprintf(err, errlen, "cannot salvage into \"%.200s...\": the path is too long", dir);
        return NT_EINVAL;
    }
    /* Missing parents are made as `mkdir -p` would; the directory itself must be new. */
    memcpy(parent, dir, n + 1);
    for (size_t i = 1; i < n; i++) {
        if (parent[i] == '/') {
            parent[i] = '\0';
            if (mkdir(parent, 0700) != 0 && errno != EEXIST) {
                snprintf(err, errlen, "cannot salvage into \"%s\": could not create \"%s\": %s",
                         dir, parent, strerror(errno));
                return NT_EIO;
            }
            parent[i] = '/';
        }
    }
    if (mkdir(dir, 0700) != 0) {
        snprintf(err, errlen, "cannot salvage into \"%s\": %s%s", dir, strerror(errno),
                 errno == EEXIST ? " (name a directory that does not exist yet: salvage creates it)"
                                 : "");
        return errno == EEXIST || errno == ENOTDIR ? NT_EINVAL : NT_EIO;
    }
    return 0;
}

/* Bytes of the old journal's record areas that held no valid record, plus the positions that
 * no segment holds. */
static uint64_t salvage__lost(const nt_journal_report_t *r)
{
    uint64_t lost = r->missing_bytes;
    for (size_t i = 0; i < r->nsegs; i++) {
        lost += r->segs[i].lost_bytes;
    }
    return lost;
}

/* See journal.h. */
int nt_journal_salvage(const char *dir, const nt_journal_options_t *out, nt_journal_salvage_t *res,
                       char *err, size_t errlen)
{
    char scratch[8];
    nt_journal_t *src = NULL;
    salvage__t s = {0};
    int rc;

    if (err == NULL || errlen == 0) {
        err = scratch;
        errlen = sizeof(scratch);
    }
    if (res == NULL || dir == NULL || dir[0] == '\0' || out == NULL || out->dir == NULL ||
        out->dir[0] == '\0') {
        return NT_EINVAL;
    }
    memset(res, 0, sizeof(*res));
    nt_journal_report_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        snprintf(err, errlen, "could not salvage journal \"%s\": %s", dir, nt_strerror(NT_ENOMEM));
        return NT_ENOMEM;
    }
    rc = salvage__check_out(out->dir, err, errlen);
    if (rc != 0) {
        goto err;
    }
    rc = nt_journal__open_readonly(&src, dir, err, errlen);
    if (rc != 0) {
        goto err;
    }
    rc = nt_journal_init(&s.out, out, err, errlen);
    if (rc != 0) {
        goto err;
    }
    rc = nt_journal__scan(src, r, salvage__copy, &s);
    if (rc != 0) {
        /* A read failure is described by the old journal, a write failure by the new one. */
        snprintf(err, errlen, "%s", src->error[0] != '\0' ? src->error : s.out->error);
        goto err;
    }
    rc = nt_journal_sync(s.out);
    if (rc != 0) {
        snprintf(err, errlen, "%s", nt_journal_error(s.out));
        goto err;
    }
    res->report = r;
    res->records = s.records;
    res->record_bytes = s.bytes;
    res->lost_bytes = salvage__lost(r);
    res->new_id = nt_journal_id(s.out);
    res->new_end = nt_journal_end(s.out);
    nt_journal_close(s.out);
    nt_journal__free(src);
    return 0;
err:
    nt_journal_close(s.out);
    if (src != NULL) {
        nt_journal__free(src);
    }
    nt_journal_report_free(r);
    return rc;
}
