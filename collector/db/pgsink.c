/* pgsink.c -- the database sink: journal records into batches, batches into transactions. */
#include "needletrace/pgsink.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/batch.h"
#include "needletrace/common.h"
#include "needletrace/decoder.h"
#include "needletrace/isolate.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"
#include "needletrace/outbox.h"
#include "needletrace/pgconn.h"
#include "needletrace/pqutil.h"
#include "needletrace/txn.h"

/* Maintenance transactions rolled back in a row before /readyz says so. */
#define PGSINK_MAINT_STALLED 3

typedef enum {
    SINK_DOWN = 0,   /* no connection; pgconn reconnects */
    SINK_CHECKPOINT, /* connected, reading the checkpoint */
    SINK_IDLE,       /* no transaction in flight */
    SINK_BUSY,       /* a transaction in flight */
    SINK_CLOSED,
} pgsink__state_t;

struct nt_pgsink_s {
    nt_pgsink_options_t opts;
    char *collector_id;
    nt_journal_t *journal;
    nt_pgsink_commit_cb on_commit;
    nt_pgsink_alerts_cb on_alerts;
    void *data;

    nt_pgconn_t *conn;
    nt_txn_t txn;
    nt_outbox_t outbox;
    uv_timer_t linger_timer; /* a batch waits at most max_delay_ms for more records */
    uv_timer_t tick_timer;   /* 1 s: alert bookkeeping when idle */
    int handles_open;

    pgsink__state_t state;
    int checkpoint_failed;
    char checkpoint_error[512];
    char checkpoint_sqlstate[6];

    nt_batch_t batches[2];
    nt_batch_t *building; /* takes records from the journal */
    nt_batch_t *sending;  /* the batch of the transaction in flight */
    uint64_t read_pos;    /* next journal position to read */
    uint64_t committed;   /* checkpoint of the last commit */
    int linger_expired;
    int64_t txn_started_us;
    char read_failure[512]; /* the journal read failure last logged, "" when none */

    nt_isolate_t iso;           /* finding a message the database refuses */
    int last_was_batch;         /* maintenance and batches take turns when both are due */
    unsigned maint_failures[3]; /* per kind of bookkeeping (NT_TXN_MAINT_* bit): failed in a row */
    int64_t maint_next_us[3];   /* per kind: not before this monotonic time */
    char maint_error[512];      /* why the last one rolled back */

    int draining;
    uint64_t drain_target; /* the journal end when the drain began */
    nt_pgsink_drain_cb drain_cb;
    void *drain_data;
    nt_pgsink_drain_cb record_cb; /* nt_pgsink_record_deliveries: waits for its transaction */
    void *record_data;
};

static void pgsink__maybe_dispatch(nt_pgsink_t *s);
static void pgsink__fill(nt_pgsink_t *s);
static void pgsink__recorded(nt_pgsink_t *s, int status);

static void pgsink__timer_closed(uv_handle_t *h)
{
    nt_pgsink_t *s = h->data;
    if (--s->handles_open == 0) {
        nt_batch_close(&s->batches[0]);
        nt_batch_close(&s->batches[1]);
        nt_outbox_close(&s->outbox);
        free(s->collector_id);
        free(s);
    }
}

/* Forgets both batches: after a failure everything is re-read from the checkpoint. */
static void pgsink__discard_batches(nt_pgsink_t *s)
{
    s->read_pos = s->committed;
    nt_batch_reset(s->building);
    nt_batch_reset(s->sending);
    uv_timer_stop(&s->linger_timer);
    s->linger_expired = 0;
}

/* Deletes the journal segments wholly behind pos (committed). A failure keeps them: they are
 * deleted at a later commit (or replayed, idempotently, after a restart). */
static void pgsink__release(nt_pgsink_t *s, uint64_t pos)
{
    if (nt_journal_release(s->journal, pos) != 0) {
        nt_log(NT_LOG_ERROR, "db", "could not release the journal up to position %" PRIu64 ": %s",
               pos, nt_journal_error(s->journal));
    }
}

/* ---- the checkpoint ---------------------------------------------------------------------------
 */

/* The position to resume from, given the checkpoint row (or its absence). */
static uint64_t pgsink__resume_pos(nt_pgsink_t *s, const PGresult *res)
{
    uint64_t start = nt_journal_start(s->journal);
    uint64_t end = nt_journal_end(s->journal);
    if (PQntuples(res) != 1) {
        return start;
    }
    uint64_t jid = (uint64_t)strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    uint64_t cp = (uint64_t)strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    if (jid != nt_journal_id(s->journal)) {
        nt_log(NT_LOG_WARN, "db",
               "checkpoint of collector \"%s\" belongs to another journal (id %" PRIu64
               "); replaying this journal from its start (duplicates are ignored)",
               s->collector_id, jid);
        return start;
    }
    if (cp < start) {
        nt_log(NT_LOG_WARN, "db",
               "checkpoint %" PRIu64 " is behind the oldest journal record %" PRIu64
               "; replaying from there",
               cp, start);
        return start;
    }
    if (cp > end) {
        nt_log(NT_LOG_ERROR, "db",
               "checkpoint %" PRIu64 " is beyond the journal end %" PRIu64
               ": the journal lost records the database already holds; continuing from the end",
               cp, end);
        return end;
    }
    return cp;
}

static void pgsink__checkpoint_rows(nt_pgsink_t *s, const PGresult *res)
{
    uint64_t pos = pgsink__resume_pos(s, res);
    s->read_pos = pos;
    s->committed = pos;
    if (pos > nt_journal_start(s->journal)) {
        pgsink__release(s, pos);
    }
    nt_metrics.journal_checkpoint = pos;
    nt_metrics.db_connected = 1;
    nt_pgconn_backoff_reset(s->conn);
    nt_log(NT_LOG_INFO, "db",
           "connected to the database; resuming at journal position %" PRIu64 " (%" PRIu64
           " bytes to replay)",
           pos, nt_journal_end(s->journal) - pos);
}

static void pgsink__checkpoint_done(nt_pgsink_t *s)
{
    if (s->checkpoint_failed) {
        nt_log(NT_LOG_ERROR, "db", "could not read the checkpoint: %s%s", s->checkpoint_error,
               strcmp(s->checkpoint_sqlstate, "42P01") == 0
                   ? " (has the schema been created? run needletrace migrate)"
                   : "");
        nt_pgconn_fail(s->conn, s->checkpoint_error);
        return;
    }
    s->state = SINK_IDLE;
    nt_pgconn_disarm_watchdog(s->conn);
    pgsink__fill(s);
    pgsink__maybe_dispatch(s);
}

/* ---- after a transaction ----------------------------------------------------------------------
 */

static void pgsink__batch_committed(nt_pgsink_t *s)
{
    nt_batch_t *b = s->sending;
    if (s->iso.stalled) {
        nt_log(NT_LOG_INFO, "db", "the database takes batches again");
    }
    nt_isolate_committed(&s->iso, b->first_pos, b->end_pos);
    nt_metrics.db_stalled = 0;
    s->committed = b->end_pos;
    nt_metrics.db_batches++;
    nt_metrics.db_messages += b->messages;
    nt_metrics.db_events += b->events;
    nt_metrics.db_quarantined += b->rejected;
    for (int r = 0; r < NT_REASON__COUNT; r++) {
        nt_metrics.db_quarantined_by_reason[r] += b->rejected_by_reason[r];
    }
    nt_metrics.db_commit_us_sum += (uint64_t)(nt_mono_us() - s->txn_started_us);
    nt_metrics.db_last_commit_unix_us = (uint64_t)nt_now_us();
    nt_metrics.journal_checkpoint = s->committed;
    nt_log(NT_LOG_DEBUG, "db",
           "committed %u messages (%u events, %u quarantined) up to position %" PRIu64, b->messages,
           b->events, b->rejected, s->committed);
    nt_batch_reset(b);
    pgsink__release(s, s->committed);
    nt_metrics.journal_bytes = nt_journal_bytes(s->journal);
    if (s->on_commit != NULL) {
        s->on_commit(s, s->committed, s->data);
    }
}

static void pgsink__committed(nt_pgsink_t *s)
{
    int had_batch = s->txn.batch != NULL;
    nt_pgconn_disarm_watchdog(s->conn);
    s->state = SINK_IDLE;
    s->last_was_batch = had_batch;
    if (had_batch) {
        nt_pgconn_backoff_reset(s->conn);
        pgsink__batch_committed(s);
    } else {
        for (int k = 0; k < 3; k++) {
            if (s->txn.maint_mask & (1u << k)) {
                s->maint_failures[k] = 0;
            }
        }
    }
    nt_outbox_committed(&s->outbox, nt_mono_us());
    if (!had_batch && (s->txn.maint_mask & NT_TXN_MAINT_RECORD) && s->record_cb != NULL) {
        pgsink__recorded(s, 0);
    }
    if (s->outbox.alerts.n > 0 && s->on_alerts != NULL) {
        s->on_alerts(s, s->outbox.alerts.items, s->outbox.alerts.n, s->data);
    }
    nt_outbox_published(&s->outbox);
    pgsink__fill(s);
    pgsink__maybe_dispatch(s);
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

/* The index of a kind of bookkeeping (one NT_TXN_MAINT_* bit) in the per-kind arrays. */
static int pgsink__kind_index(unsigned kind)
{
    return kind == NT_TXN_MAINT_RECORD ? 0 : kind == NT_TXN_MAINT_GAPS ? 1 : 2;
}

/* A maintenance transaction rolled back: its work stays due; the kind of bookkeeping whose step
 * failed is retried after a backoff of its own, so that neither batches nor the other kinds wait
 * for it; logged once here. */
static void pgsink__maintenance_rolled_back(nt_pgsink_t *s)
{
    const nt_txn_t *t = &s->txn;
    unsigned kind = nt_txn_step_kind(t);
    int k = pgsink__kind_index(kind != 0 ? kind : NT_TXN_MAINT_UNDELIVERED);
    uint64_t delay_ms = nt_backoff_ms(1000, 60000, s->maint_failures[k]++);
    nt_metrics.db_maintenance_failures++;
    nt_log(nt_pqutil_classify(t->sqlstate) == NT_PQ_TRANSIENT ? NT_LOG_INFO : NT_LOG_ERROR, "db",
           "could not run the alert bookkeeping transaction (step %s): SQLSTATE %s: %s; retrying "
           "that step in %llu ms, batches and the other bookkeeping go on meanwhile",
           nt_txn_step_name(t), t->sqlstate, t->error, (unsigned long long)delay_ms);
    s->maint_next_us[k] = nt_mono_us() + (int64_t)delay_ms * 1000;
    snprintf(s->maint_error, sizeof(s->maint_error), "step %s: SQLSTATE %s: %.400s",
             nt_txn_step_name(t), t->sqlstate, t->error);
    s->last_was_batch = 0;
    if (s->record_cb != NULL) {
        pgsink__recorded(s, NT_EDB); /* stopping: not retried; published again after a restart */
    }
}

/* ROLLBACK finished: start over from the last commit. */
static void pgsink__rolled_back(nt_pgsink_t *s)
{
    nt_pgconn_disarm_watchdog(s->conn);
    nt_outbox_aborted(&s->outbox);
    s->state = SINK_IDLE;
    if (s->txn.batch != NULL) {
        pgsink__batch_rolled_back(s); /* reads the batch: before it is discarded */
    } else {
        pgsink__maintenance_rolled_back(s);
    }
    pgsink__discard_batches(s);
    pgsink__fill(s);
    pgsink__maybe_dispatch(s);
}

/* ---- connection callbacks ---------------------------------------------------------------------
 */

static void pgsink__on_connected(nt_pgconn_t *c, void *data)
{
    nt_pgsink_t *s = data;
    const char *params[1] = {s->collector_id};
    s->state = SINK_CHECKPOINT;
    s->checkpoint_failed = 0;
    nt_pgconn_send(c,
                   "SELECT journal_id, journal_pos FROM needletrace.collector_checkpoints "
                   "WHERE collector_id = $1",
                   1, params);
}

static void pgsink__on_lost(nt_pgconn_t *c, void *data)
{
    nt_pgsink_t *s = data;
    if (s->state == SINK_CLOSED) {
        return;
    }
    s->state = SINK_DOWN;
    pgsink__discard_batches(s);
    nt_outbox_aborted(&s->outbox);
}

static void pgsink__on_retry(nt_pgconn_t *c, void *data)
{
    nt_pgsink_wakeup(data);
}

static void pgsink__on_copy_in(nt_pgconn_t *c, void *data)
{
    nt_pgsink_t *s = data;
    if (s->state == SINK_BUSY) {
        nt_txn_copy_in(&s->txn);
    }
}

static void pgsink__on_rows(nt_pgconn_t *c, const PGresult *res, void *data)
{
    nt_pgsink_t *s = data;
    if (s->state == SINK_CHECKPOINT) {
        pgsink__checkpoint_rows(s, res);
    } else if (s->state == SINK_BUSY) {
        nt_txn_rows(&s->txn, res);
    }
}

static void pgsink__on_error(nt_pgconn_t *c, const char *sqlstate, const char *message, void *data)
{
    nt_pgsink_t *s = data;
    if (s->state == SINK_BUSY) {
        nt_txn_error(&s->txn, sqlstate, message);
    } else if (s->state == SINK_CHECKPOINT && !s->checkpoint_failed) {
        s->checkpoint_failed = 1;
        snprintf(s->checkpoint_sqlstate, sizeof(s->checkpoint_sqlstate), "%s", sqlstate);
        snprintf(s->checkpoint_error, sizeof(s->checkpoint_error), "%s", message);
    }
}

static void pgsink__on_done(nt_pgconn_t *c, void *data)
{
    nt_pgsink_t *s = data;
    if (s->state == SINK_CHECKPOINT) {
        pgsink__checkpoint_done(s);
        return;
    }
    if (s->state != SINK_BUSY) {
        return;
    }
    int rc = nt_txn_done(&s->txn);
    if (rc == NT_TXN_COMMITTED) {
        pgsink__committed(s);
    } else if (rc == NT_TXN_ROLLED_BACK) {
        pgsink__rolled_back(s);
    } else if (rc < 0 && nt_pgconn_connected(c)) {
        nt_pgconn_fail(c, nt_strerror(rc)); /* an internal error: start over */
    }
}

/* ---- batches ----------------------------------------------------------------------------------
 */

static int pgsink__full(const nt_pgsink_t *s, const nt_batch_t *b)
{
    uint32_t limit = nt_isolate_limit(&s->iso, b->messages > 0 ? b->first_pos : s->read_pos);
    return b->events >= s->opts.max_events || b->messages >= s->opts.max_events ||
           b->bytes >= s->opts.max_bytes || (limit != 0 && b->messages >= limit);
}

static void pgsink__on_linger(uv_timer_t *t)
{
    nt_pgsink_t *s = t->data;
    s->linger_expired = 1;
    pgsink__maybe_dispatch(s);
}

/* Moves durable journal records into the building batch, up to its bounds. When the journal
 * cannot be read, tries again after a backoff (nothing else would wake the sink when reading
 * paused because the journal is full). */
static void pgsink__fill(nt_pgsink_t *s)
{
    if (s->state != SINK_IDLE && s->state != SINK_BUSY) {
        return;
    }
    while (!pgsink__full(s, s->building)) {
        nt_journal_record_t rec;
        int rc = nt_journal_read(s->journal, s->read_pos, &rec);
        if (rc == 0) {
            break;
        }
        if (rc < 0) {
            /* Once per failure, not per retry; a different failure is logged again. */
            const char *why = nt_journal_error(s->journal);
            if (strcmp(why, s->read_failure) != 0) {
                nt_log(NT_LOG_ERROR, "db",
                       "could not read the journal at position %" PRIu64 ": %s; retrying",
                       s->read_pos, why);
                snprintf(s->read_failure, sizeof(s->read_failure), "%s", why);
            }
            nt_pgconn_backoff(s->conn, 0);
            return;
        }
        s->read_failure[0] = '\0';
        if (nt_isolate_is_poison(&s->iso, s->read_pos)) {
            nt_topic_t topic;
            nt_isolate_set_device(&s->iso,
                                  nt_decoder_topic_parse(rec.topic, rec.topic_len, &topic) == 0
                                      ? topic.device_serial
                                      : "");
            nt_log(NT_LOG_ERROR, "db",
                   "quarantining the message at journal position %" PRIu64
                   " on \"%.*s\" as db_rejected: the database refused it: %s",
                   s->read_pos, (int)(rec.topic_len > 200 ? 200 : rec.topic_len), rec.topic,
                   s->iso.detail);
            rc = nt_batch_add_quarantined(s->building, &rec, NT_REASON_DB_REJECTED, s->iso.detail);
        } else {
            rc = nt_batch_add(s->building, &rec);
        }
        if (rc != 0) {
            nt_log(NT_LOG_ERROR, "db", "could not add journal record %" PRIu64 " to a batch: %s",
                   s->read_pos, nt_strerror(rc));
            nt_pgconn_backoff(s->conn, 0);
            return;
        }
        s->read_pos = rec.next_pos;
        if (s->building->messages == 1 && s->opts.max_delay_ms > 0) {
            s->linger_expired = 0;
            uv_timer_start(&s->linger_timer, pgsink__on_linger, s->opts.max_delay_ms, 0);
        }
    }
}

/* Calls the record_deliveries callback once with status. */
static void pgsink__recorded(nt_pgsink_t *s, int status)
{
    nt_pgsink_drain_cb cb = s->record_cb;
    s->record_cb = NULL;
    if (cb != NULL) {
        cb(s, status, s->record_data);
    }
}

static void pgsink__check_drain(nt_pgsink_t *s)
{
    if (s->draining && s->drain_cb != NULL && s->state == SINK_IDLE &&
        s->committed >= s->drain_target) {
        nt_pgsink_drain_cb cb = s->drain_cb;
        s->drain_cb = NULL;
        cb(s, 0, s->drain_data);
    }
}

/* Sends BEGIN for batch (NULL: maintenance) under the transaction watchdog. */
static void pgsink__begin(nt_pgsink_t *s, nt_batch_t *batch)
{
    s->state = SINK_BUSY;
    nt_pgconn_arm_watchdog(s->conn, NT_PGCONN_TXN_TIMEOUT_MS);
    s->txn_started_us = nt_mono_us();
    nt_txn_begin(&s->txn, batch); /* a send failure dropped the connection: on_lost ran */
}

/* 1 when alert bookkeeping waits and its own backoff allows it now. */
static unsigned pgsink__maintenance_due(const nt_pgsink_t *s)
{
    const nt_outbox_t *o = &s->outbox;
    int64_t now = nt_mono_us();
    unsigned mask = 0;
    if (s->record_cb != NULL && (o->n_refused > 0 || o->n_delivered > 0)) {
        return NT_TXN_MAINT_RECORD; /* the last transaction of a graceful stop */
    }
    if (!nt_outbox_due_now(o)) {
        return 0;
    }
    if ((o->n_refused > 0 || o->n_delivered >= NT_OUTBOX_DELIVERED_BATCH ||
         (o->n_delivered > 0 && o->deliveries_aged)) &&
        now >= s->maint_next_us[0]) {
        mask |= NT_TXN_MAINT_RECORD;
    }
    if (o->gaps_due && now >= s->maint_next_us[1]) {
        mask |= NT_TXN_MAINT_GAPS;
    }
    if (o->undelivered_wanted && now >= s->maint_next_us[2]) {
        mask |= NT_TXN_MAINT_UNDELIVERED;
    }
    return mask;
}

/* 1 when the building batch should go now. */
static int pgsink__batch_due(const nt_pgsink_t *s)
{
    const nt_batch_t *b = s->building;
    return b->messages > 0 &&
           (pgsink__full(s, b) || s->linger_expired || s->draining || s->opts.max_delay_ms == 0);
}

/* Sends the building batch. */
static void pgsink__dispatch_batch(nt_pgsink_t *s)
{
    nt_batch_t *b = s->building;
    int rc = nt_batch_finish(b);
    if (rc != 0) {
        nt_log(NT_LOG_ERROR, "db", "could not finish a batch: %s", nt_strerror(rc));
        pgsink__discard_batches(s);
        nt_pgconn_backoff(s->conn, 1);
        return;
    }
    uv_timer_stop(&s->linger_timer);
    s->linger_expired = 0;
    s->building = s->sending;
    s->sending = b;
    pgsink__begin(s, b);
    if (s->state == SINK_BUSY) {
        pgsink__fill(s); /* keep decoding the next batch while this one commits */
    }
}

/* Starts the next transaction when idle: the building batch when it is due, alert bookkeeping
 * (a maintenance transaction, never inside a batch's) when it is due -- taking turns when both
 * are, so that neither waits long behind the other. */
static void pgsink__maybe_dispatch(nt_pgsink_t *s)
{
    if (s->state != SINK_IDLE || nt_pgconn_backing_off(s->conn)) {
        return; /* busy, or backing off after a failed batch */
    }
    int batch = pgsink__batch_due(s);
    unsigned maintenance = pgsink__maintenance_due(s);
    if (maintenance != 0 && (!batch || s->last_was_batch || s->record_cb != NULL)) {
        s->txn.maint_mask = maintenance; /* the kinds due and not backing off */
        pgsink__begin(s, NULL);
    } else if (batch) {
        pgsink__dispatch_batch(s);
    } else if (s->building->messages == 0) {
        pgsink__check_drain(s);
    }
}

static void pgsink__on_tick(uv_timer_t *t)
{
    nt_pgsink_t *s = t->data;
    nt_outbox_tick(&s->outbox, nt_mono_us());
    pgsink__maybe_dispatch(s);
}

/* ---- public ---------------------------------------------------------------------------------- */

static int pgsink__ops_send(void *conn, const char *sql, int nparams, const char *const *params)
{
    return nt_pgconn_send(conn, sql, nparams, params);
}

static int pgsink__ops_put_copy(void *conn, const void *data, size_t len)
{
    return nt_pgconn_put_copy(conn, data, len);
}

static const nt_txn_ops_t pgsink__txn_ops = {pgsink__ops_send, pgsink__ops_put_copy};

static const nt_pgconn_cbs_t pgsink__conn_cbs = {
    .on_connected = pgsink__on_connected,
    .on_lost = pgsink__on_lost,
    .on_retry = pgsink__on_retry,
    .on_copy_in = pgsink__on_copy_in,
    .on_rows = pgsink__on_rows,
    .on_error = pgsink__on_error,
    .on_done = pgsink__on_done,
};

/* The sink's two batches and its connection. 0 or NT_ENOMEM (nothing left allocated). */
static int pgsink__alloc(nt_pgsink_t *s, uv_loop_t *loop, const nt_pgsink_options_t *opts)
{
    nt_pgconn_options_t copts = {opts->conninfo, opts->reconnect_min_ms, opts->reconnect_max_ms};
    s->collector_id = strdup(opts->collector_id);
    if (s->collector_id == NULL || nt_batch_init(&s->batches[0], opts->collector_id) != 0) {
        goto err;
    }
    if (nt_batch_init(&s->batches[1], opts->collector_id) != 0) {
        goto err_batch;
    }
    if (nt_pgconn_init(loop, &s->conn, &copts, &pgsink__conn_cbs, s) != 0) {
        nt_batch_close(&s->batches[1]);
        goto err_batch;
    }
    return 0;
err_batch:
    nt_batch_close(&s->batches[0]);
err:
    free(s->collector_id);
    return NT_ENOMEM;
}

int nt_pgsink_init(uv_loop_t *loop, nt_pgsink_t **out, const nt_pgsink_options_t *opts,
                   nt_journal_t *journal, nt_pgsink_commit_cb on_commit, void *data)
{
    nt_pgsink_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return NT_ENOMEM;
    }
    if (pgsink__alloc(s, loop, opts) != 0) {
        free(s);
        return NT_ENOMEM;
    }
    s->opts = *opts;
    s->journal = journal;
    s->on_commit = on_commit;
    s->data = data;
    s->building = &s->batches[0];
    s->sending = &s->batches[1];
    nt_outbox_init(&s->outbox, nt_mono_us());
    nt_isolate_init(&s->iso);
    nt_txn_init(&s->txn, &pgsink__txn_ops, s->conn, s->collector_id, nt_journal_id(journal),
                &s->outbox);
    uv_timer_init(loop, &s->linger_timer);
    uv_timer_init(loop, &s->tick_timer);
    s->linger_timer.data = s;
    s->tick_timer.data = s;
    s->handles_open = 2;
    s->state = SINK_DOWN;
    *out = s;
    return 0;
}

int nt_pgsink_start(nt_pgsink_t *s)
{
    nt_outbox_init(&s->outbox, nt_mono_us());
    uv_timer_start(&s->tick_timer, pgsink__on_tick, 1000, 1000);
    nt_pgconn_connect(s->conn);
    return 0;
}

void nt_pgsink_wakeup(nt_pgsink_t *s)
{
    pgsink__fill(s);
    pgsink__maybe_dispatch(s);
}

void nt_pgsink_drain(nt_pgsink_t *s, nt_pgsink_drain_cb cb, void *data)
{
    s->draining = 1;
    s->drain_target = nt_journal_end(s->journal);
    s->drain_cb = cb;
    s->drain_data = data;
    nt_pgsink_wakeup(s);
}

void nt_pgsink_record_deliveries(nt_pgsink_t *s, nt_pgsink_drain_cb cb, void *data)
{
    s->record_cb = cb;
    s->record_data = data;
    if (s->outbox.n_delivered == 0 && s->outbox.n_refused == 0) {
        pgsink__recorded(s, 0);
    } else if (s->state != SINK_IDLE && s->state != SINK_BUSY) {
        pgsink__recorded(s, NT_EDB);
    } else {
        pgsink__maybe_dispatch(s);
    }
}

void nt_pgsink_set_alerts_cb(nt_pgsink_t *s, nt_pgsink_alerts_cb on_alerts)
{
    s->on_alerts = on_alerts;
}

void nt_pgsink_alert_delivered(nt_pgsink_t *s, int64_t alert_id, int refused)
{
    int rc = refused ? nt_outbox_refused(&s->outbox, alert_id)
                     : nt_outbox_delivered(&s->outbox, alert_id);
    if (rc != 0) {
        /* Not recorded: the alert is published again later (at least once). */
        nt_log(NT_LOG_WARN, "db", "could not record the %s of alert %" PRId64 ": %s",
               refused ? "refusal" : "delivery", alert_id, nt_strerror(rc));
    }
}

void nt_pgsink_request_undelivered(nt_pgsink_t *s)
{
    nt_outbox_request_undelivered(&s->outbox);
    pgsink__maybe_dispatch(s);
}

int nt_pgsink_stalled(const nt_pgsink_t *s, char *reason, size_t len)
{
    if (s->iso.stalled) {
        snprintf(reason, len, "the database refuses batches: %s", s->iso.stall);
        return 1;
    }
    for (int k = 0; k < 3; k++) {
        if (s->maint_failures[k] >= PGSINK_MAINT_STALLED) {
            snprintf(reason, len, "alert bookkeeping failed %u times in a row: %s",
                     s->maint_failures[k], s->maint_error);
            return 1;
        }
    }
    return 0;
}

int nt_pgsink_ready(const nt_pgsink_t *s)
{
    return s->state == SINK_IDLE || s->state == SINK_BUSY;
}

void nt_pgsink_close(nt_pgsink_t *s)
{
    s->state = SINK_CLOSED;
    nt_pgconn_close(s->conn);
    uv_timer_stop(&s->linger_timer);
    uv_timer_stop(&s->tick_timer);
    uv_close((uv_handle_t *)&s->linger_timer, pgsink__timer_closed);
    uv_close((uv_handle_t *)&s->tick_timer, pgsink__timer_closed);
}
