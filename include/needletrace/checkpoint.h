/* checkpoint.h -- does the database checkpoint belong to this journal? The one comparison the
 * sink makes at every (re)connect and `needletrace journal accept` makes before it resets it.
 *
 * The checkpoint (needletrace.collector_checkpoints: journal id, position) says how far a
 * collector's journal is committed. It fits the journal when it names this journal and a record
 * boundary inside [start, end]: the sink resumes there. Every other case is a mismatch, and
 * nothing is ingested until an operator decides (`needletrace journal accept`):
 *   other journal  the journal directory was replaced (deleted, restored, salvaged): what the old
 *                  journal held beyond the checkpoint and had not committed is unaccounted for;
 *   ahead          checkpoint > end: the journal was restored from an older copy; the database
 *                  holds [end, checkpoint), the journal no longer does;
 *   behind         checkpoint < start: the database was restored from a backup or failed over to
 *                  a replica without the latest commits; [checkpoint, start) was committed, then
 *                  deleted from the journal, and is gone from the database;
 *   not a record   inside [start, end) but no valid record starts there: journal and database do
 *                  not belong together.
 * Replaying the whole journal after an accept is safe: the database ignores duplicates.
 *
 * The journal keeps growing while ingest is stopped (what the broker delivers is still
 * journaled), so a checkpoint found ahead of the end could later fall inside the journal, even
 * on a record boundary by chance, and the records before it would be skipped silently. Two rules
 * prevent that: the end compared with is the highest position the database can know of (the
 * journal's end when the process opened it, or the end of a batch the process sent), and the
 * sink records a checkpoint found ahead in the checkpoint row (hold_checkpoint()): for that
 * journal it stays ahead, as it was found, until journal accept clears it. (The other mismatches
 * cannot turn into a fit: the journal's id never changes, its start only grows, and its records
 * never change.)
 *
 * Plain functions over the journal (nt_journal_read) and a result row: no loop, no connection. */
#ifndef NEEDLETRACE_CHECKPOINT_H
#define NEEDLETRACE_CHECKPOINT_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#include "needletrace/journal.h"

typedef enum {
    NT_CHECKPOINT_NONE = 0,      /* no checkpoint row: start at the journal's start */
    NT_CHECKPOINT_OK,            /* resume at the checkpoint */
    NT_CHECKPOINT_OTHER_JOURNAL, /* mismatch: the checkpoint names another journal */
    NT_CHECKPOINT_AHEAD,         /* mismatch: checkpoint > journal end */
    NT_CHECKPOINT_BEHIND,        /* mismatch: checkpoint < journal start */
    NT_CHECKPOINT_NOT_RECORD,    /* mismatch: no valid record starts at the checkpoint */
} nt_checkpoint_verdict_t;

/* A comparison's inputs and outcome. */
typedef struct {
    nt_checkpoint_verdict_t verdict;
    int found;              /* a checkpoint row exists */
    uint64_t cp_journal_id; /* the row's journal id and position (when found) */
    uint64_t cp_pos;
    nt_checkpoint_verdict_t held; /* a mismatch recorded in the row, NONE when none; then: */
    uint64_t held_journal_id;     /* the journal it was found with */
    uint64_t held_start;
    uint64_t held_end;
    char held_since[40]; /* when (RFC 3339) */
    uint64_t journal_id; /* the journal compared with (for a held mismatch: as it was found) */
    uint64_t start;
    uint64_t end;     /* the highest position the database can know of */
    uint64_t resume;  /* NONE: start; OK: the checkpoint; mismatches: unused */
    char detail[320]; /* NOT_RECORD: why the journal refused to read there */
} nt_checkpoint_check_t;

/* The checkpoint query: $1 is the collector id; zero or one row, read by
 * nt_checkpoint_from_result(). */
#define NT_CHECKPOINT_QUERY                                                                        \
    "SELECT journal_id, journal_pos, held_mismatch, held_journal_id, held_start, held_end, "       \
    "needletrace.rfc3339(held_since) FROM needletrace.collector_checkpoints "                      \
    "WHERE collector_id = $1"

/* Records a checkpoint found ahead in its row, so that it stays ahead until journal accept:
 * $1 collector id, $2 and $3 the checkpoint (journal id, position) it was found with, $4 the
 * verdict's name, $5..$7 the journal (id, start, end) it was compared with. */
#define NT_CHECKPOINT_HOLD                                                                         \
    "SELECT needletrace.hold_checkpoint($1, $2::bigint, $3::bigint, $4, $5::bigint, $6::bigint, "  \
    "$7::bigint)"

/* Reads the checkpoint from the result of NT_CHECKPOINT_QUERY (zero or one row) into c (found,
 * cp_journal_id, cp_pos, held...). Returns 0, or NT_EDB when the result does not have that
 * shape. */
int nt_checkpoint_from_result(nt_checkpoint_check_t *c, const PGresult *res);

/* Compares the checkpoint in c (set by nt_checkpoint_from_result, or by hand) with journal j,
 * and fills the rest of c. known_end is the highest position the database can know of (see
 * above; at most nt_journal_end(j)): a checkpoint beyond it is ahead. A checkpoint held ahead of
 * this journal is ahead, as it was found, whatever the journal is now. Returns 0 (c->verdict says
 * what was found), or NT_EIO when the journal could not be read at the checkpoint for a reason that
 * may pass (nt_journal_error() says why; compare again later). */
int nt_checkpoint_compare(nt_checkpoint_check_t *c, nt_journal_t *j, uint64_t known_end);

/* The seven parameters of NT_CHECKPOINT_HOLD for the verdict in c (ahead), for collector_id, into
 * params (the numbers are written into nums). */
void nt_checkpoint_hold_params(const nt_checkpoint_check_t *c, const char *collector_id,
                               char nums[5][24], const char *params[7]);

/* 1 when the verdict stops ingest (one of the mismatches), 0 otherwise. */
int nt_checkpoint_is_mismatch(nt_checkpoint_verdict_t v);

/* A short name of the verdict: "none", "ok", "other_journal", "ahead", "behind",
 * "not_a_record" (stored in collector_checkpoints.held_mismatch and
 * checkpoint_resets.mismatch). */
const char *nt_checkpoint_verdict_name(nt_checkpoint_verdict_t v);
/* The verdict of a name (NT_CHECKPOINT_NONE for an unknown one). */
nt_checkpoint_verdict_t nt_checkpoint_verdict_parse(const char *name);

/* Says in one line what the comparison found: both positions and, for a mismatch, what
 * disagrees and what probably happened. Returns buf (always NUL-terminated when len > 0). */
const char *nt_checkpoint_describe(const nt_checkpoint_check_t *c, const char *collector_id,
                                   char *buf, size_t len);

/* Explains a mismatch in one line for the log and /readyz: what disagrees, both positions,
 * what probably happened, what is unaccounted for, and the command that resolves it. Returns
 * buf (always NUL-terminated when len > 0). */
const char *nt_checkpoint_explain(const nt_checkpoint_check_t *c, const char *collector_id,
                                  char *buf, size_t len);

/* The same in fewer than 200 characters, for /readyz: the verdict, both positions and the
 * command. Returns buf. */
const char *nt_checkpoint_brief(const nt_checkpoint_check_t *c, char *buf, size_t len);

/* The journal positions an accept cannot account for, in one line ("positions [a, b) (n
 * bytes): ..."), for journal accept's report. Returns buf. */
const char *nt_checkpoint_unaccounted(const nt_checkpoint_check_t *c, char *buf, size_t len);

#endif
