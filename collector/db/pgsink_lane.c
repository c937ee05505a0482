/* pgsink_lane.c -- the sink's second database connection: batches take turns on the two
 * connections, so that PostgreSQL works on two at once (two backends: the COPY of one overlaps the
 * rules and the commit of the other).
 *
 * Order is kept in the database: each batch's transaction takes its batch-order lock at BEGIN, and
 * before it moves the checkpoint (before its rules: txn.c) it waits for the lock of the batch
 * before it, so that it moves on only once that batch committed -- its rules see that batch's rows
 * and state -- and finds the checkpoint where it starts; when that batch rolled back, the
 * checkpoint is elsewhere and the move is refused (NT001). A deadlock (the older batch waiting for
 * a row the younger inserted: a message redelivered into both) is seen and broken by the
 * database. The younger sends its move only once the older's BEGIN has answered (the gate,
 * nt_txn_ungate), so that the lock it waits for is taken; it never creates the first checkpoint
 * (p_after). Commits are settled in
 * journal order: a COMMIT answered before the older batch's is held until that one is settled.
 *
 * The first connection keeps what it did alone (the checkpoint read at connect, bookkeeping,
 * isolating a message the database refuses): the second takes a batch only while the first holds
 * one, and either takes one after the other's only while all is well (no isolation, no slow
 * database, no stop under way).
 *
 * Failures: when the older batch is not committed, the younger one can no longer be (its move is
 * refused: NT001), and everything is read again from the checkpoint. The younger transaction is
 * left to end by itself -- never dropped with its connection, which would leave its backend
 * waiting behind whatever lock it waits for -- and nothing waits for it: if it commits after all
 * (the older one did commit, only its answer was lost), the checkpoint it moved is the truth, and
 * it is settled as such. When the second connection's own batch fails, its records go again,
 * later, to the first connection, which handles the failure as it always did; the second rests
 * until the first commits again. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"
#include "pgsink_internal.h"

/* ---- who is older ---------------------------------------------------------------------------- */

static int lane__first_in_flight(const nt_pgsink_t *s)
{
    return s->state == NT_PGSINK__BUSY && s->txn.batch != NULL;
}

/* The second connection holds a batch that counts (not one left to end by itself). */
static int lane__live(const nt_pgsink_t *s)
{
    return s->lane.state == NT_PGSINK__LANE_BUSY && !s->lane.doomed;
}

int nt_pgsink__lane_busy(const nt_pgsink_t *s)
{
    return lane__live(s);
}

int nt_pgsink__lane_holds_older(const nt_pgsink_t *s)
{
    return lane__live(s) &&
           (!lane__first_in_flight(s) || s->lane.batch->first_pos < s->sending->first_pos);
}

/* The second connection's gate: closed while the first's batch is older and its BEGIN (which takes
 * the batch-order lock this one's checkpoint move waits for) has not answered. */
static int lane__gate(void *data)
{
    nt_pgsink_t *s = data;
    return s->lane.doomed ||
           !(lane__first_in_flight(s) && s->sending->first_pos < s->lane.batch->first_pos &&
             !nt_txn_begun(&s->txn));
}

int nt_pgsink__first_gate(void *data)
{
    nt_pgsink_t *s = data;
    return !(nt_pgsink__lane_holds_older(s) && !nt_txn_begun(&s->lane.txn));
}

void nt_pgsink__ungate(nt_pgsink_t *s)
{
    if (s->lane.state == NT_PGSINK__LANE_BUSY && s->lane.txn.gated) {
        nt_txn_ungate(&s->lane.txn); /* a send failure dropped the connection: on_lost ran */
    }
    if (lane__first_in_flight(s) && s->txn.gated) {
        nt_txn_ungate(&s->txn);
    }
}

int nt_pgsink__all_well(const nt_pgsink_t *s)
{
    const nt_isolate_t *x = &s->iso;
    return s->lane.state != NT_PGSINK__LANE_OFF && !s->lane.resting && !s->lane.doomed &&
           s->checkpoint_exists && x->limit == 0 && x->poison_pos == NT_ISOLATE_NONE &&
           !x->stalled && s->slow_limit == 0 && s->record_cb == NULL && !s->stop_marked;
}

/* ---- the end of the second connection's batch --------------------------------------------------
 */

/* Its batch is over, committed or not: the lane is free again. */
static void lane__free(nt_pgsink_t *s)
{
    nt_pgsink__lane_t *l = &s->lane;
    nt_pgconn_disarm_watchdog(l->conn);
    nt_batch_reset(l->batch);
    l->committed_early = 0;
    l->doomed = 0;
    if (l->state == NT_PGSINK__LANE_BUSY) {
        l->state = NT_PGSINK__LANE_IDLE;
    }
}

/* Not committed: reading goes on from where its batch started (or from earlier, when the sink
 * already went back further), unless it was left to end by itself (the sink has gone back). */
static void lane__forget(nt_pgsink_t *s)
{
    nt_pgsink__lane_t *l = &s->lane;
    nt_batch_t *b = l->batch;
    if (!l->doomed && b->messages > 0 && b->first_pos < s->read_pos) {
        s->read_pos = b->first_pos;
        nt_batch_reset(s->building);
        uv_timer_stop(&s->linger_timer);
        s->linger_expired = 0;
    }
    nt_outbox_aborted(&l->outbox);
    lane__free(s);
}

/* Committed, and every older batch is settled (or known committed: the checkpoint it moved says
 * so): settle it. */
static void lane__settle(nt_pgsink_t *s)
{
    nt_pgsink__lane_t *l = &s->lane;
    nt_pgconn_backoff_reset(l->conn);
    /* While the first connection (re)reads the checkpoint, nothing is settled: the journal must
     * not shrink under that comparison, and the checkpoint read (or a refused move after it) says
     * where to resume. Its alerts are committed: they go out either way. */
    if (l->batch->end_pos > s->committed &&
        (s->state == NT_PGSINK__IDLE || s->state == NT_PGSINK__BUSY)) {
        nt_pgsink__settle_batch(s, l->batch, l->started_us);
    }
    nt_outbox_committed(&l->outbox, nt_mono_us());
    if (l->outbox.alerts.n > 0 && s->on_alerts != NULL) {
        s->on_alerts(s, l->outbox.alerts.items, l->outbox.alerts.n, s->data);
    }
    nt_outbox_published(&l->outbox);
    lane__free(s);
}

/* After the second connection's batch ended: the first's younger batch, if its COMMIT was held
 * (it committed, so everything before it did), is settled now; one waiting at its gate moves on
 * (and is refused if the batch before it was not committed). */
static void lane__after(nt_pgsink_t *s)
{
    if (s->first_deferred) {
        s->first_deferred = 0;
        nt_pgsink__committed(s); /* fills and dispatches */
        return;
    }
    nt_pgsink__ungate(s);
    nt_pgsink__fill(s);
    nt_pgsink__maybe_dispatch(s);
}

/* ---- dispatch and the first connection's events --------------------------------------------- */

/* Whether the second connection may take the building batch now. */
static int lane__may_take(const nt_pgsink_t *s)
{
    const nt_pgsink__lane_t *l = &s->lane;
    return l->state == NT_PGSINK__LANE_IDLE && !nt_pgconn_backing_off(l->conn) &&
           lane__first_in_flight(s) && !s->txn.rolling_back && !s->first_deferred &&
           nt_pgsink__all_well(s) && s->building->first_pos == s->sending->end_pos;
}

int nt_pgsink__lane_dispatch(nt_pgsink_t *s)
{
    nt_pgsink__lane_t *l = &s->lane;
    if (!lane__may_take(s)) {
        return 0;
    }
    nt_batch_t *b = s->building;
    if (nt_batch_finish(b) != 0) {
        return 0; /* the first connection takes it later, and says why it cannot */
    }
    uv_timer_stop(&s->linger_timer);
    s->linger_expired = 0;
    s->building = l->batch;
    l->batch = b;
    l->state = NT_PGSINK__LANE_BUSY;
    l->committed_early = 0;
    l->doomed = 0;
    l->txn.after = 1;
    l->txn.order = ++s->batch_order;
    if (b->end_pos > s->known_end) {
        s->known_end = b->end_pos; /* its checkpoint may be committed from now on */
    }
    nt_pgconn_arm_watchdog(l->conn, s->opts.watchdog_ms != 0 ? s->opts.watchdog_ms : 120000);
    l->started_us = nt_mono_us();
    nt_txn_begin(&l->txn, b); /* a send failure dropped the connection: lane__on_lost ran */
    return 1;
}

void nt_pgsink__lane_after_first(nt_pgsink_t *s)
{
    if (s->committed >= s->lane.rest_until) {
        s->lane.resting = 0; /* the range it failed on is committed */
    }
    if (lane__live(s) && s->lane.committed_early) {
        lane__settle(s);
    }
}

void nt_pgsink__lane_abort(nt_pgsink_t *s, const char *why)
{
    nt_pgsink__lane_t *l = &s->lane;
    if (l->state != NT_PGSINK__LANE_BUSY || l->doomed) {
        return;
    }
    if (l->committed_early) {
        lane__settle(s); /* it committed: so did everything before it, whatever the first says */
        return;
    }
    nt_log(NT_LOG_DEBUG, "db",
           "the second connection's batch (journal %" PRIu64 "..%" PRIu64
           ") cannot commit: %s; left to end by itself",
           l->batch->first_pos, l->batch->end_pos, why);
    l->doomed = 1;
    if (l->txn.gated) {
        nt_txn_ungate(&l->txn); /* it moves the checkpoint now, and is refused */
    }
}

/* ---- the second connection's callbacks --------------------------------------------------------
 */

static void lane__on_connected(nt_pgconn_t *c, void *data)
{
    nt_pgsink_t *s = data;
    s->lane.state = NT_PGSINK__LANE_IDLE;
    nt_pgconn_disarm_watchdog(c);
    nt_log(NT_LOG_DEBUG, "db", "second database connection ready");
    nt_pgsink__maybe_dispatch(s);
}

static void lane__on_lost(nt_pgconn_t *c, void *data)
{
    nt_pgsink_t *s = data;
    if (s->lane.state == NT_PGSINK__LANE_OFF) {
        return;
    }
    int busy = s->lane.state == NT_PGSINK__LANE_BUSY;
    if (busy) {
        lane__forget(s);
    }
    s->lane.state = NT_PGSINK__LANE_DOWN;
    if (busy) {
        lane__after(s);
    }
}

static void lane__on_retry(nt_pgconn_t *c, void *data)
{
    nt_pgsink__maybe_dispatch(data);
}

static void lane__on_copy_in(nt_pgconn_t *c, void *data)
{
    nt_pgsink_t *s = data;
    if (s->lane.state == NT_PGSINK__LANE_BUSY) {
        nt_txn_copy_in(&s->lane.txn);
    }
}

static void lane__on_rows(nt_pgconn_t *c, const PGresult *res, void *data)
{
    nt_pgsink_t *s = data;
    if (s->lane.state == NT_PGSINK__LANE_BUSY) {
        nt_txn_rows(&s->lane.txn, res);
    }
}

static void lane__on_error(nt_pgconn_t *c, const char *sqlstate, const char *message, void *data)
{
    nt_pgsink_t *s = data;
    if (strcmp(sqlstate, NT_PGSINK__QUERY_CANCELED) == 0) {
        nt_metrics.db_statement_timeouts++;
    }
    if (s->lane.state == NT_PGSINK__LANE_BUSY) {
        nt_txn_error(&s->lane.txn, sqlstate, message);
    }
}

/* Its batch rolled back: unless it was left to end by itself, the records go again, later, to
 * the first connection, which handles whatever the failure means (a refused message, a
 * conflict, a slow database). */
static void lane__rolled_back(nt_pgsink_t *s)
{
    nt_pgsink__lane_t *l = &s->lane;
    if (!l->doomed) {
        /* the first connection's try of these records then quarantines the refused pens */
        (void)nt_pgsink__registry_refused(s, l->conn);
        nt_log(NT_LOG_INFO, "db",
               "the second connection's batch (journal %" PRIu64 "..%" PRIu64
               ") was not committed: SQLSTATE %s: %s; the first connection takes it again",
               l->batch->first_pos, l->batch->end_pos, l->txn.sqlstate, l->txn.error);
        l->resting = 1;
        l->rest_until = l->batch->end_pos;
    }
    lane__forget(s);
    lane__after(s);
}

static void lane__on_done(nt_pgconn_t *c, void *data)
{
    nt_pgsink_t *s = data;
    nt_pgsink__lane_t *l = &s->lane;
    if (l->state != NT_PGSINK__LANE_BUSY) {
        return;
    }
    int rc = nt_txn_done(&l->txn);
    if (rc == NT_TXN_COMMITTED) {
        /* After the first connection's older batch (the checkpoint says so), whose answer may not
         * have been read yet: settled in journal order. */
        if (!l->doomed && lane__first_in_flight(s) && !s->first_deferred &&
            s->sending->first_pos < l->batch->first_pos) {
            l->committed_early = 1;
            nt_pgconn_disarm_watchdog(c); /* nothing in flight until it is settled */
            return;
        }
        lane__settle(s);
        lane__after(s);
    } else if (rc == NT_TXN_PENDING) {
        nt_pgsink__ungate(s); /* its checkpoint move may have opened the other's gate */
    } else if (rc == NT_TXN_ROLLED_BACK) {
        lane__rolled_back(s);
    } else if (rc < 0 && nt_pgconn_connected(c)) {
        nt_pgconn_fail(c, nt_strerror(rc)); /* an internal error: start over */
    }
}

static const nt_pgconn_cbs_t lane__conn_cbs = {
    .on_connected = lane__on_connected,
    .on_lost = lane__on_lost,
    .on_retry = lane__on_retry,
    .on_copy_in = lane__on_copy_in,
    .on_rows = lane__on_rows,
    .on_error = lane__on_error,
    .on_done = lane__on_done,
};

/* ---- life ---------------------------------------------------------------------------------- */

int nt_pgsink__lane_init(nt_pgsink_t *s, uv_loop_t *loop, const nt_pgconn_options_t *copts)
{
    nt_pgsink__lane_t *l = &s->lane;
    l->batch = &s->batches[2];
    if (s->opts.connections < 2) {
        l->state = NT_PGSINK__LANE_OFF;
        return 0;
    }
    nt_pgconn_options_t o = *copts;
    o.secondary = 1;
    int rc = nt_pgconn_init(loop, &l->conn, &o, &lane__conn_cbs, s);
    if (rc != 0) {
        return rc;
    }
    nt_outbox_init(&l->outbox, nt_mono_us());
    nt_txn_init(&l->txn, &nt_pgsink__txn_ops, l->conn, s->collector_id, nt_journal_id(s->journal),
                &l->outbox);
    l->txn.maint_mask = 0; /* batches only: the bookkeeping is the first connection's */
    l->txn.gate = lane__gate;
    l->txn.gate_data = s;
    l->state = NT_PGSINK__LANE_DOWN;
    return 0;
}

void nt_pgsink__lane_start(nt_pgsink_t *s)
{
    if (s->lane.state != NT_PGSINK__LANE_OFF) {
        nt_pgconn_connect(s->lane.conn);
    }
}

void nt_pgsink__lane_close(nt_pgsink_t *s)
{
    nt_pgsink__lane_t *l = &s->lane;
    if (l->state == NT_PGSINK__LANE_OFF) {
        return;
    }
    l->state = NT_PGSINK__LANE_OFF;
    nt_pgconn_close(l->conn);
    nt_outbox_close(&l->outbox);
}
