/* pgsink_done.c -- a transaction of the sink ended: settle a commit (release the journal, hand
 * the alerts over), or decide what a rollback means and log it once. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"
#include "needletrace/pqutil.h"
#include "pgsink_internal.h"

/* ---- after a commit ---------------------------------------------------------------------------
 */

/* A batch's COMMIT succeeded (on either connection, in journal order): its checkpoint is
 * confirmed, the journal behind it may go. (A COMMIT whose answer was lost never comes here: the
 * connection is dropped, and the checkpoint is read back at the next connect before anything is
 * released.) */
void nt_pgsink__settle_batch(nt_pgsink_t *s, nt_batch_t *b, int64_t started_us)
{
    if (s->iso.stalled) {
        nt_log(NT_LOG_INFO, "db", "the database takes batches again");
    }
    nt_isolate_committed(&s->iso, b->first_pos, b->end_pos);
    nt_metrics.db_stalled = 0;
    if (b->end_pos > s->committed) {
        s->committed = b->end_pos; /* never backwards */
    }
    s->checkpoint_exists = 1;
    if (s->read_pos < s->committed ||
        (s->building->messages > 0 && s->building->first_pos < s->committed)) {
        /* a younger batch committed although an older one seemed not to (its answer was lost):
         * the checkpoint it moved is the truth */
        s->read_pos = s->committed;
        nt_batch_reset(s->building);
        uv_timer_stop(&s->linger_timer);
        s->linger_expired = 0;
    }
    nt_metrics.db_batches++;
    nt_metrics.db_messages += b->messages;
    nt_metrics.db_events += b->events;
    nt_metrics.db_quarantined += b->rejected;
    for (int r = 0; r < NT_REASON__COUNT; r++) {
        nt_metrics.db_quarantined_by_reason[r] += b->rejected_by_reason[r];
    }
    nt_metrics.db_commit_us_sum += (uint64_t)(nt_mono_us() - started_us);
    nt_metrics_batch_committed(b->events, (uint64_t)(nt_mono_us() - started_us));
    nt_metrics.db_last_commit_unix_us = (uint64_t)nt_now_us();
    nt_metrics.journal_checkpoint = s->committed;
    nt_log(NT_LOG_DEBUG, "db",
           "committed %u messages (%u events, %u quarantined) up to position %" PRIu64, b->messages,
           b->events, b->rejected, s->committed);
    nt_batch_reset(b);
    nt_pgsink__release(s, s->committed);
    nt_metrics.journal_bytes = nt_journal_bytes(s->journal);
    if (s->on_commit != NULL) {
        s->on_commit(s, s->committed, s->data);
    }
}

/* A transaction committed: the database answers in time again (for batches, when it was a
 * batch's statement that was too slow); the batch bound grows back, doubling per commit. */
static void pgsink__in_time(nt_pgsink_t *s, int had_batch)
{
    if (had_batch && s->slow_limit != 0) {
        s->slow_limit = s->slow_limit >= s->opts.max_events / 2 ? 0 : s->slow_limit * 2;
    }
    if (s->slow[0] != '\0' && (had_batch || !s->slow_batch)) {
        nt_log(NT_LOG_INFO, "db", "the database answers in time again");
        s->slow[0] = '\0';
        nt_metrics.db_slow = 0;
    }
}

void nt_pgsink__committed(nt_pgsink_t *s)
{
    int had_batch = s->txn.batch != NULL;
    nt_pgconn_disarm_watchdog(s->conn);
    pgsink__in_time(s, had_batch);
    s->state = NT_PGSINK__IDLE;
    s->last_was_batch = had_batch;
    if (had_batch) {
        nt_pgconn_backoff_reset(s->conn);
        nt_pgsink__settle_batch(s, s->sending, s->txn_started_us);
    } else {
        for (int k = 0; k < NT_PGSINK__KINDS; k++) {
            if (s->txn.maint_mask & (1u << k)) {
                s->maint_failures[k] = 0;
            }
        }
        if (s->txn.maint_mask & NT_TXN_MAINT_HEARTBEAT) {
            s->heartbeat_next_us = nt_mono_us() + NT_PGSINK__HEARTBEAT_US;
        }
    }
    nt_outbox_committed(&s->outbox, nt_mono_us());
    if (!had_batch && (s->txn.maint_mask & NT_TXN_MAINT_STOPPED)) {
        nt_pgsink__recorded(s, 0); /* the last transaction of a graceful stop */
    }
    if (s->outbox.alerts.n > 0 && s->on_alerts != NULL) {
        s->on_alerts(s, s->outbox.alerts.items, s->outbox.alerts.n, s->data);
    }
    nt_outbox_published(&s->outbox);
    if (had_batch) {
        nt_pgsink__lane_after_first(s); /* the second connection's batch, if it committed too */
    }
    nt_pgsink__fill(s);
    nt_pgsink__maybe_dispatch(s);
}

/* ---- after a rollback -------------------------------------------------------------------------
 */

/* Refusals of one batch by the device registry, in a row, before it is isolated instead. */
#define PGSINK_REGISTRY_TRIES 8u

/* A batch transaction on connection c was refused by the device registry (NT002): its pens'
 * verdicts are learned from the error's DETAIL, and the batch goes again at once with their
 * messages quarantined; or a verdict it was built with no longer holds (NT003): forgotten, and
 * the batch goes again with those messages as events. Returns 1 when it handled the rollback; 0
 * when it was neither, or nothing could be learned, or the same batch keeps being refused
 * (handled then as any refused batch: isolated, so never retried in a loop). */
int nt_pgsink__registry_refused(nt_pgsink_t *s, const nt_pgconn_t *c)
{
    const nt_txn_t *t = c == s->conn ? &s->txn : &s->lane.txn;
    int changed = strcmp(t->sqlstate, NT_REGISTRY_CHANGED_SQLSTATE) == 0;
    if (!changed && strcmp(t->sqlstate, NT_REGISTRY_SQLSTATE) != 0) {
        return 0;
    }
    if (s->registry_tries > 0 && s->registry_pos == t->batch->first_pos) {
        s->registry_tries++;
    } else {
        s->registry_pos = t->batch->first_pos;
        s->registry_tries = 1;
    }
    /* Learning (or forgetting) is always right, whatever comes next. */
    int n = changed ? nt_registry_forget(&s->registry, nt_pgconn_error_detail(c))
                    : nt_registry_refused(&s->registry, nt_pgconn_error_detail(c), nt_mono_us());
    if (!changed && s->registry_tries > PGSINK_REGISTRY_TRIES) {
        /* What was learned does not stick (more refused pens than the collector remembers):
         * the refused messages are isolated one by one instead (db_rejected, NT002 in detail).
         * A changed verdict (NT003) never needs this: once forgotten it is not predicted again. */
        nt_log(NT_LOG_WARN, "db",
               "the device registry refused the batch at journal %" PRIu64 " %u times in a row; "
               "isolating the refused messages one by one",
               t->batch->first_pos, s->registry_tries - 1);
        return 0;
    }
    if (n <= 0 && !changed) {
        nt_log(NT_LOG_ERROR, "db",
               "could not read the device registry's refusal: %s (detail: %.200s)", t->error,
               nt_pgconn_error_detail(c));
        return 0;
    }
    nt_log(NT_LOG_INFO, "db", "%s; committing the batch (journal %" PRIu64 "..%" PRIu64 ") again%s",
           t->error, t->batch->first_pos, t->batch->end_pos,
           changed ? " with their messages as events" : " without them");
    return 1;
}

/* A batch transaction rolled back: isolate the message the database refuses (retry at once with
 * smaller batches), or retry the same after a backoff; logged once here. */
static void pgsink__batch_rolled_back(nt_pgsink_t *s)
{
    const nt_txn_t *t = &s->txn;
    const nt_batch_t *b = t->batch;
    nt_isolate_action_t act =
        nt_isolate_failed(&s->iso, b->first_pos, b->end_pos, b->messages, t->sqlstate, t->error);
    if (act == NT_ISOLATE_RETRY) {
        nt_metrics.db_isolations++;
        nt_log(NT_LOG_WARN, "db",
               "the database refused a batch of %u messages (journal %" PRIu64 "..%" PRIu64
               "): SQLSTATE %s: %s; retrying %s",
               b->messages, b->first_pos, b->end_pos, t->sqlstate, t->error,
               s->iso.poison_pos == b->first_pos ? "with that message quarantined"
                                                 : "in smaller batches to find the message");
        return;
    }
    if (s->iso.stalled) {
        nt_metrics.db_stalled = 1;
        nt_log(NT_LOG_ERROR, "db",
               "could not commit a batch of %u messages (journal %" PRIu64 "..%" PRIu64
               "): %s%s; retrying after a pause",
               b->messages, b->first_pos, b->end_pos, s->iso.stall,
               strcmp(t->sqlstate, "42P01") == 0
                   ? " (has the schema been created? run needletrace migrate)"
                   : "");
    } else {
        nt_log(NT_LOG_INFO, "db",
               "a batch conflicted with another transaction: SQLSTATE %s: %s; "
               "retrying",
               t->sqlstate, t->error);
    }
    nt_pgconn_backoff(s->conn, 1);
}

/* A statement ran too long and was cancelled (SQLSTATE 57014): the database is slow, not the
 * rows wrong. A batch is retried after a backoff with half as many messages (never quarantined);
 * logged once here, said on /readyz and in needletrace_db_slow until a commit. Returns 1 when it
 * handled a batch's rollback. */
static int pgsink__too_slow(nt_pgsink_t *s)
{
    const nt_txn_t *t = &s->txn;
    const nt_batch_t *b = t->batch;
    nt_metrics.db_slow = 1;
    s->slow_batch = b != NULL;
    if (b == NULL) {
        snprintf(s->slow, sizeof(s->slow),
                 "the database is slow: the alert bookkeeping step %s was cancelled after "
                 "running too long",
                 nt_txn_step_name(t));
        return 0; /* logged and backed off as any failed bookkeeping */
    }
    s->slow_limit = b->messages > 1 ? b->messages / 2 : 1;
    snprintf(s->slow, sizeof(s->slow),
             "the database is slow: a batch's statement (step %s) was cancelled after running too "
             "long; retrying with at most %u messages per batch",
             nt_txn_step_name(t), s->slow_limit);
    nt_log(NT_LOG_WARN, "db",
           "a batch of %u messages (journal %" PRIu64 "..%" PRIu64
           ") ran too long and was cancelled at step %s: %s; retrying with at most %u messages "
           "per batch after a pause",
           b->messages, b->first_pos, b->end_pos, nt_txn_step_name(t), t->error, s->slow_limit);
    nt_pgconn_backoff(s->conn, 1);
    return 1;
}

/* The index of a kind of bookkeeping (one NT_TXN_MAINT_* bit) in the per-kind arrays. */
static int pgsink__kind_index(unsigned kind)
{
    for (int k = 0; k < NT_PGSINK__KINDS; k++) {
        if (kind == 1u << k) {
            return k;
        }
    }
    return 2; /* begin or commit: backed off with the undelivered fetch */
}

/* A maintenance transaction rolled back: its work stays due; the kind of bookkeeping whose step
 * failed is retried after a backoff of its own, so that neither batches nor the other kinds wait
 * for it; logged once here. */
static void pgsink__maintenance_rolled_back(nt_pgsink_t *s)
{
    const nt_txn_t *t = &s->txn;
    unsigned kind = nt_txn_step_kind(t);
    int k = pgsink__kind_index(kind);
    nt_metrics.db_maintenance_failures++;
    if (t->maint_mask & NT_TXN_MAINT_STOPPED) {
        nt_log(NT_LOG_WARN, "db",
               "could not record the last deliveries and mark this collector stopped (step %s): "
               "SQLSTATE %s: %s; the other replicas take its undelivered alerts over once its "
               "heartbeat is older than replica_gone_after",
               nt_txn_step_name(t), t->sqlstate, t->error);
        nt_pgsink__recorded(s, NT_EDB); /* stopping: not retried */
        return;
    }
    uint64_t delay_ms = nt_backoff_ms(1000, 60000, s->maint_failures[k]++);
    nt_log(nt_pqutil_classify(t->sqlstate) == NT_PQ_TRANSIENT ? NT_LOG_INFO : NT_LOG_ERROR, "db",
           "could not run the bookkeeping transaction (step %s): SQLSTATE %s: %s; retrying "
           "that step in %llu ms, batches and the other bookkeeping go on meanwhile",
           nt_txn_step_name(t), t->sqlstate, t->error, (unsigned long long)delay_ms);
    s->maint_next_us[k] = nt_mono_us() + (int64_t)delay_ms * 1000;
    snprintf(s->maint_error, sizeof(s->maint_error), "step %s: SQLSTATE %s: %.400s",
             nt_txn_step_name(t), t->sqlstate, t->error);
    s->last_was_batch = 0;
}

void nt_pgsink__rolled_back(nt_pgsink_t *s)
{
    nt_pgconn_disarm_watchdog(s->conn);
    nt_outbox_aborted(&s->outbox);
    s->state = NT_PGSINK__IDLE;
    if (s->txn.batch != NULL && strcmp(s->txn.sqlstate, NT_TXN_CHECKPOINT_MOVED) == 0) {
        /* Not this batch's fault: the checkpoint changed under the collector. Compare it with
         * the journal again (the comparison logs what it finds). */
        nt_log(s->txn.after ? NT_LOG_INFO : NT_LOG_ERROR, "db",
               "could not commit a batch: %s%s; reading the checkpoint again", s->txn.error,
               s->txn.after ? " (the batch before it, on the other connection, was not committed)"
                            : "");
        nt_pgsink__discard_batches(s);
        nt_pgsink__read_checkpoint(s);
        return;
    }
    int handled =
        (strcmp(s->txn.sqlstate, NT_PGSINK__QUERY_CANCELED) == 0 && pgsink__too_slow(s)) ||
        (s->txn.batch != NULL && nt_pgsink__registry_refused(s, s->conn));
    if (!handled && s->txn.batch != NULL) {
        pgsink__batch_rolled_back(s); /* reads the batch: before it is discarded */
    } else if (!handled) {
        pgsink__maintenance_rolled_back(s);
    }
    nt_pgsink__discard_batches(s);
    nt_pgsink__fill(s);
    nt_pgsink__maybe_dispatch(s);
}
