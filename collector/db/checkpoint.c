/* checkpoint.c -- the database checkpoint against the journal (see checkpoint.h). */
#include "needletrace/checkpoint.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"

#define CHECKPOINT__RESOLVE                                                                        \
    "ingest is stopped: to replay this journal from its start (the database ignores "              \
    "duplicates), stop the collector and run needletrace journal accept --reason TEXT"

/* Parses a bigint column of row 0 into *out; 1 when NULL (*out = 0); NT_EDB when malformed
 * (negative when !allow_negative). */
static int checkpoint__int(const PGresult *res, int col, int allow_negative, uint64_t *out)
{
    *out = 0;
    if (PQgetisnull(res, 0, col)) {
        return 1;
    }
    char *end;
    const char *v = PQgetvalue(res, 0, col);
    long long n = strtoll(v, &end, 10);
    if (end == v || *end != '\0' || (!allow_negative && n < 0)) {
        return NT_EDB;
    }
    *out = (uint64_t)n; /* the database holds the 64-bit journal id as a signed bigint */
    return 0;
}

int nt_checkpoint_from_result(nt_checkpoint_check_t *c, const PGresult *res)
{
    c->found = 0;
    c->cp_journal_id = c->cp_pos = 0;
    c->held = NT_CHECKPOINT_NONE;
    c->held_journal_id = c->held_start = c->held_end = 0;
    c->held_since[0] = '\0';
    if (PQnfields(res) != 7 || PQntuples(res) > 1) {
        return NT_EDB;
    }
    if (PQntuples(res) == 0) {
        return 0;
    }
    if (checkpoint__int(res, 0, 1, &c->cp_journal_id) != 0 ||
        checkpoint__int(res, 1, 0, &c->cp_pos) != 0) {
        return NT_EDB;
    }
    c->found = 1;
    if (PQgetisnull(res, 0, 2)) {
        return 0;
    }
    c->held = nt_checkpoint_verdict_parse(PQgetvalue(res, 0, 2));
    if (!nt_checkpoint_is_mismatch(c->held) ||
        checkpoint__int(res, 3, 1, &c->held_journal_id) < 0 ||
        checkpoint__int(res, 4, 0, &c->held_start) < 0 ||
        checkpoint__int(res, 5, 0, &c->held_end) < 0) {
        c->held = NT_CHECKPOINT_NONE;
        return NT_EDB;
    }
    snprintf(c->held_since, sizeof(c->held_since), "%s", PQgetvalue(res, 0, 6));
    return 0;
}

/* The verdict of the checkpoint in c against the journal: c->journal_id, start and end set. */
static nt_checkpoint_verdict_t checkpoint__verdict(nt_checkpoint_check_t *c, nt_journal_t *j,
                                                   int *rc)
{
    *rc = 0;
    if (!c->found) {
        if (c->start == 0) {
            return NT_CHECKPOINT_NONE; /* a new journal, or one never released: replay it all */
        }
        /* Segments before the journal's start were released, so their records were committed
         * to a database: not to this one, which has no checkpoint (an empty or rebuilt database,
         * a dump from before the first commit). Behind, from position 0. */
        c->cp_journal_id = c->journal_id;
        c->cp_pos = 0;
        snprintf(c->detail, sizeof(c->detail),
                 "the database has no checkpoint for this collector, yet positions [0, %" PRIu64
                 ") were committed and released",
                 c->start);
        return NT_CHECKPOINT_BEHIND;
    }
    if (c->cp_journal_id != c->journal_id) {
        return NT_CHECKPOINT_OTHER_JOURNAL;
    }
    if (c->cp_pos > c->end) {
        return NT_CHECKPOINT_AHEAD;
    }
    if (c->cp_pos < c->start) {
        return NT_CHECKPOINT_BEHIND;
    }
    nt_journal_record_t rec;
    int r = nt_journal_read(j, c->cp_pos, &rec);
    if (r == NT_EINVAL || r == NT_ECORRUPT) {
        snprintf(c->detail, sizeof(c->detail), "%s", nt_journal_error(j));
        return NT_CHECKPOINT_NOT_RECORD;
    }
    if (r < 0) {
        *rc = NT_EIO;
    }
    return NT_CHECKPOINT_OK;
}

int nt_checkpoint_compare(nt_checkpoint_check_t *c, nt_journal_t *j, uint64_t known_end)
{
    c->detail[0] = '\0';
    if (c->found && c->held == NT_CHECKPOINT_AHEAD && c->held_journal_id == nt_journal_id(j)) {
        c->verdict = c->held;
        c->journal_id = c->held_journal_id;
        c->start = c->held_start;
        c->end = c->held_end;
        c->resume = c->start;
        return 0;
    }
    c->journal_id = nt_journal_id(j);
    c->start = nt_journal_start(j);
    c->end = known_end < nt_journal_end(j) ? known_end : nt_journal_end(j);
    c->resume = c->start;
    int rc;
    c->verdict = checkpoint__verdict(c, j, &rc);
    if (c->verdict == NT_CHECKPOINT_OK) {
        c->resume = c->cp_pos;
    }
    return rc;
}

void nt_checkpoint_hold_params(const nt_checkpoint_check_t *c, const char *collector_id,
                               char nums[5][24], const char *params[7])
{
    uint64_t v[5] = {c->cp_journal_id, c->cp_pos, c->journal_id, c->start, c->end};
    for (int i = 0; i < 5; i++) {
        snprintf(nums[i], 24, "%" PRId64, (int64_t)v[i]);
    }
    params[0] = collector_id;
    params[1] = nums[0];
    params[2] = nums[1];
    params[3] = nt_checkpoint_verdict_name(c->verdict);
    params[4] = nums[2];
    params[5] = nums[3];
    params[6] = nums[4];
}

int nt_checkpoint_is_mismatch(nt_checkpoint_verdict_t v)
{
    return v != NT_CHECKPOINT_NONE && v != NT_CHECKPOINT_OK;
}

const char *nt_checkpoint_verdict_name(nt_checkpoint_verdict_t v)
{
    switch (v) {
    case NT_CHECKPOINT_NONE:
        return "none";
    case NT_CHECKPOINT_OK:
        return "ok";
    case NT_CHECKPOINT_OTHER_JOURNAL:
        return "other_journal";
    case NT_CHECKPOINT_AHEAD:
        return "ahead";
    case NT_CHECKPOINT_BEHIND:
        return "behind";
    case NT_CHECKPOINT_NOT_RECORD:
        return "not_a_record";
    }
    return "unknown";
}

nt_checkpoint_verdict_t nt_checkpoint_verdict_parse(const char *name)
{
    for (int v = NT_CHECKPOINT_NONE; v <= NT_CHECKPOINT_NOT_RECORD; v++) {
        if (strcmp(name, nt_checkpoint_verdict_name((nt_checkpoint_verdict_t)v)) == 0) {
            return (nt_checkpoint_verdict_t)v;
        }
    }
    return NT_CHECKPOINT_NONE;
}

/* What probably happened, for the verdict of c. */
static const char *checkpoint__cause(const nt_checkpoint_check_t *c)
{
    switch (c->verdict) {
    case NT_CHECKPOINT_OTHER_JOURNAL:
        return "the journal directory was replaced (deleted, restored or salvaged)";
    case NT_CHECKPOINT_AHEAD:
        return "the journal was restored from an older copy";
    case NT_CHECKPOINT_BEHIND:
        return "the database was restored from a backup or failed over to a replica that lacks "
               "the latest commits";
    case NT_CHECKPOINT_NOT_RECORD:
        return "the journal and the database do not belong together";
    default:
        return "";
    }
}

const char *nt_checkpoint_describe(const nt_checkpoint_check_t *c, const char *collector_id,
                                   char *buf, size_t len)
{
    char what[256];
    if (c->verdict == NT_CHECKPOINT_OTHER_JOURNAL) {
        snprintf(what, sizeof(what), "belongs to another journal");
    } else if (c->verdict == NT_CHECKPOINT_AHEAD) {
        snprintf(what, sizeof(what), "is beyond the journal's end %" PRIu64, c->end);
    } else if (c->verdict == NT_CHECKPOINT_BEHIND) {
        snprintf(what, sizeof(what), "is behind the journal's oldest record %" PRIu64, c->start);
    } else if (c->verdict == NT_CHECKPOINT_NOT_RECORD) {
        snprintf(what, sizeof(what), "is not the start of a valid record in the journal%s%.180s%s",
                 c->detail[0] != '\0' ? " (" : "", c->detail, c->detail[0] != '\0' ? ")" : "");
    } else if (c->verdict == NT_CHECKPOINT_OK) {
        snprintf(buf, len,
                 "checkpoint of collector \"%s\" (journal %016" PRIx64 ", position %" PRIu64
                 ") fits its journal [%" PRIu64 ", %" PRIu64 ")",
                 collector_id, c->cp_journal_id, c->cp_pos, c->start, c->end);
        return buf;
    } else {
        snprintf(
            buf, len,
            "collector \"%s\" has no checkpoint yet: it starts at the journal's start %" PRIu64,
            collector_id, c->start);
        return buf;
    }
    char held[96] = "";
    if (nt_checkpoint_is_mismatch(c->held)) {
        snprintf(held, sizeof(held), " (found at %s and held since; the journal may have grown)",
                 c->held_since);
    }
    snprintf(buf, len,
             "checkpoint of collector \"%s\" (journal %016" PRIx64 ", position %" PRIu64
             ") %s: this journal is %016" PRIx64 " with positions [%" PRIu64 ", %" PRIu64
             ")%s; probably %s",
             collector_id, c->cp_journal_id, c->cp_pos, what, c->journal_id, c->start, c->end, held,
             checkpoint__cause(c));
    return buf;
}

const char *nt_checkpoint_explain(const nt_checkpoint_check_t *c, const char *collector_id,
                                  char *buf, size_t len)
{
    char what[768], lost[384];
    nt_checkpoint_describe(c, collector_id, what, sizeof(what));
    if (!nt_checkpoint_is_mismatch(c->verdict)) {
        snprintf(buf, len, "%s", what);
        return buf;
    }
    snprintf(buf, len, "%s; unaccounted for: %s; %s", what,
             nt_checkpoint_unaccounted(c, lost, sizeof(lost)), CHECKPOINT__RESOLVE);
    return buf;
}

const char *nt_checkpoint_brief(const nt_checkpoint_check_t *c, char *buf, size_t len)
{
    snprintf(buf, len,
             "checkpoint %" PRIu64 " of journal %016" PRIx64 " does not fit journal %016" PRIx64
             " [%" PRIu64 ", %" PRIu64 ") (%s): ingest stopped; see the log, then "
             "needletrace journal accept",
             c->cp_pos, c->cp_journal_id, c->journal_id, c->start, c->end,
             nt_checkpoint_verdict_name(c->verdict));
    return buf;
}

const char *nt_checkpoint_unaccounted(const nt_checkpoint_check_t *c, char *buf, size_t len)
{
    switch (c->verdict) {
    case NT_CHECKPOINT_OTHER_JOURNAL:
        snprintf(buf, len,
                 "whatever journal %016" PRIx64 " held beyond position %" PRIu64
                 " (an unknown number of messages, acknowledged to the broker but never "
                 "committed)",
                 c->cp_journal_id, c->cp_pos);
        break;
    case NT_CHECKPOINT_AHEAD:
        snprintf(buf, len,
                 "positions [%" PRIu64 ", %" PRIu64 ") (%" PRIu64
                 " bytes) are committed to the database but no longer in the journal (nothing "
                 "is missing from the database; new records will reuse these positions)",
                 c->end, c->cp_pos, c->cp_pos - c->end);
        break;
    case NT_CHECKPOINT_BEHIND:
        snprintf(buf, len,
                 "positions [%" PRIu64 ", %" PRIu64 ") (%" PRIu64
                 " bytes) were committed, then deleted from the journal, and are missing from "
                 "this database: restore them from elsewhere or accept their loss",
                 c->cp_pos, c->start, c->start - c->cp_pos);
        break;
    case NT_CHECKPOINT_NOT_RECORD:
        snprintf(buf, len,
                 "none known: the whole journal [%" PRIu64 ", %" PRIu64
                 ") is replayed, but the database's checkpoint came from another history",
                 c->start, c->end);
        break;
    default:
        snprintf(buf, len, "nothing");
        break;
    }
    return buf;
}
