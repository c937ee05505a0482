/* pgsink.c -- the database sink: journal records into batches, batches into transactions. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/decoder.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"
#include "pgsink_internal.h"

/* Records decoded per turn of the loop: a batch of 5000 takes several turns, so that the database
 * connection (a COPY waiting to stream, a result waiting to be read) and the broker are served in
 * between and the database never idles while the next batch is decoded. */
#define PGSINK_FILL_CHUNK 512

static void pgsink__timer_closed(uv_handle_t *h)
{
    nt_pgsink_t *s = h->data;
    if (--s->handles_open == 0) {
        nt_batch_close(&s->batches[0]);
        nt_batch_close(&s->batches[1]);
        nt_batch_close(&s->batches[2]);
        nt_outbox_close(&s->outbox);
        nt_registry_free(&s->registry);
        free(s->collector_id);
        free(s);
    }
}

void nt_pgsink__discard_batches(nt_pgsink_t *s)
{
    /* An older batch on the second connection goes on while the first is connected (a
     * bookkeeping transaction or a younger batch failed there): reading resumes after it. Older
     * than the first connection's batch that failed, if any (sending holds it until reset). */
    const nt_batch_t *failed = s->sending->messages > 0 ? s->sending : NULL;
    int keep = nt_pgsink__lane_busy(s) &&
               (failed == NULL || s->lane.batch->first_pos < failed->first_pos) &&
               (s->state == NT_PGSINK__IDLE || s->state == NT_PGSINK__BUSY);
    s->read_pos = keep ? s->lane.batch->end_pos : s->committed;
    nt_batch_reset(s->building);
    nt_batch_reset(s->sending);
    uv_timer_stop(&s->linger_timer);
    s->linger_expired = 0;
    if (!keep) {
        nt_pgsink__lane_abort(s, "the batch before it was not committed"); /* last: it may call
                                                                              back into the sink */
    }
}

/* A failure keeps the segments: they are deleted at a later commit (or replayed, idempotently,
 * after a restart). */
void nt_pgsink__release(nt_pgsink_t *s, uint64_t pos)
{
    if (nt_journal_release(s->journal, pos) != 0) {
        nt_log(NT_LOG_ERROR, "db", "could not release the journal up to position %" PRIu64 ": %s",
               pos, nt_journal_error(s->journal));
    }
}

/* ---- batches ----------------------------------------------------------------------------------
 */

static int pgsink__full(const nt_pgsink_t *s, const nt_batch_t *b)
{
    uint32_t limit = nt_isolate_limit(&s->iso, b->messages > 0 ? b->first_pos : s->read_pos);
    if (s->slow_limit != 0 && (limit == 0 || s->slow_limit < limit)) {
        limit = s->slow_limit;
    }
    return b->events >= s->opts.max_events || b->messages >= s->opts.max_events ||
           b->nrefusals >= NT_BATCH_MAX_REFUSALS || b->bytes >= s->opts.max_bytes ||
           (limit != 0 && b->messages >= limit);
}

static void pgsink__on_linger(uv_timer_t *t)
{
    nt_pgsink_t *s = t->data;
    s->linger_expired = 1;
    nt_pgsink__maybe_dispatch(s);
}

static void pgsink__on_fill_idle(uv_idle_t *h)
{
    nt_pgsink_t *s = h->data;
    uv_idle_stop(h);
    nt_pgsink__fill(s);
    nt_pgsink__maybe_dispatch(s);
}

static void pgsink__fill_chunk(nt_pgsink_t *s);

/* When the journal cannot be read, tries again after a backoff (nothing else would wake the sink
 * when reading paused because the journal is full). */
void nt_pgsink__fill(nt_pgsink_t *s)
{
    if (s->state != NT_PGSINK__IDLE && s->state != NT_PGSINK__BUSY) {
        return;
    }
    int64_t t0 = nt_mono_us();
    pgsink__fill_chunk(s);
    nt_metrics.stage_us[NT_STAGE_DECODE_ENCODE] += (uint64_t)(nt_mono_us() - t0);
}

/* One chunk of nt_pgsink__fill. */
static void pgsink__fill_chunk(nt_pgsink_t *s)
{
    for (unsigned n = 0; !pgsink__full(s, s->building); n++) {
        if (n == PGSINK_FILL_CHUNK) {
            uv_idle_start(&s->fill_idle, pgsink__on_fill_idle);
            return;
        }
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

/* Ends a drain with status (once). */
static void pgsink__end_drain(nt_pgsink_t *s, int status)
{
    if (s->draining && s->drain_cb != NULL) {
        nt_pgsink_drain_cb cb = s->drain_cb;
        s->drain_cb = NULL;
        cb(s, status, s->drain_data);
    }
}

/* Everything durable when the drain began is committed: the drain ends. */
static void pgsink__check_drain(nt_pgsink_t *s)
{
    if ((s->state == NT_PGSINK__IDLE || s->state == NT_PGSINK__BUSY) &&
        s->committed >= s->drain_target) {
        pgsink__end_drain(s, 0);
    }
}

/* Sends BEGIN for batch (NULL: maintenance) under the transaction watchdog. */
static void pgsink__begin(nt_pgsink_t *s, nt_batch_t *batch)
{
    s->state = NT_PGSINK__BUSY;
    if (batch != NULL && batch->end_pos > s->known_end) {
        s->known_end = batch->end_pos; /* its checkpoint may be committed from now on */
    }
    nt_pgconn_arm_watchdog(s->conn, s->opts.watchdog_ms != 0 ? s->opts.watchdog_ms : 120000);
    s->txn_started_us = nt_mono_us();
    nt_txn_begin(&s->txn, batch); /* a send failure dropped the connection: on_lost ran */
}

/* The kinds of bookkeeping that wait and whose own backoff allows them now (NT_TXN_MAINT_*): the
 * heartbeat when due, the alert bookkeeping the outbox asks for. */
static unsigned pgsink__maintenance_due(const nt_pgsink_t *s)
{
    const nt_outbox_t *o = &s->outbox;
    int64_t now = nt_mono_us();
    unsigned mask = 0;
    if (s->stop_marked) {
        return 0; /* a heartbeat now would undo the stop mark */
    }
    if (s->record_cb != NULL) {
        /* the last transaction of a graceful stop: the deliveries so far, and the stop mark */
        return NT_TXN_MAINT_STOPPED |
               (o->n_refused > 0 || o->n_delivered > 0 ? NT_TXN_MAINT_RECORD : 0);
    }
    /* No heartbeat while this replica cannot publish (broker unreachable, journal refusing
     * writes, backpressure disconnect): past replica_gone_after the others take its alerts. */
    if (now >= s->heartbeat_next_us && now >= s->maint_next_us[3] &&
        (s->can_publish == NULL || s->can_publish(s->data))) {
        mask |= NT_TXN_MAINT_HEARTBEAT;
    }
    if (!nt_outbox_due_now(o)) {
        return mask;
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
        nt_pgsink__discard_batches(s);
        nt_pgconn_backoff(s->conn, 1);
        return;
    }
    uv_timer_stop(&s->linger_timer);
    s->linger_expired = 0;
    s->building = s->sending;
    s->sending = b;
    s->txn.after = nt_pgsink__lane_busy(s); /* it follows the second connection's batch */
    s->txn.order = ++s->batch_order;
    pgsink__begin(s, b);
    if (s->state == NT_PGSINK__BUSY) {
        nt_pgsink__fill(s); /* keep decoding the next batch while this one commits */
    }
}

/* The building batch when it is due, alert bookkeeping (a maintenance transaction, never inside
 * a batch's) when it is due -- taking turns when both are, so that neither waits long behind the
 * other. */
void nt_pgsink__maybe_dispatch(nt_pgsink_t *s)
{
    if (s->state == NT_PGSINK__MISMATCH) {
        pgsink__end_drain(s, NT_EDB); /* nothing will be committed until an operator decides */
        return;
    }
    if (s->state == NT_PGSINK__BUSY && pgsink__batch_due(s) && nt_pgsink__lane_dispatch(s)) {
        nt_pgsink__fill(s); /* the next batch, while both commit */
    }
    if (s->state != NT_PGSINK__IDLE || nt_pgconn_backing_off(s->conn)) {
        pgsink__check_drain(s);
        return; /* busy, or backing off after a failed batch */
    }
    /* While the second connection holds a batch, the first takes one after it only when all is
     * well (the first alone isolates a refused message, or slows down). */
    int batch = pgsink__batch_due(s) &&
                (!nt_pgsink__lane_busy(s) ||
                 (nt_pgsink__all_well(s) && s->building->first_pos == s->lane.batch->end_pos));
    unsigned maintenance = pgsink__maintenance_due(s);
    if (maintenance != 0 && (!batch || s->last_was_batch || s->record_cb != NULL)) {
        s->txn.maint_mask = maintenance; /* the kinds due and not backing off */
        s->stop_marked = (maintenance & NT_TXN_MAINT_STOPPED) != 0;
        pgsink__begin(s, NULL);
    } else if (batch) {
        pgsink__dispatch_batch(s);
    }
    /* Also while messages keep arriving (they are journaled and acknowledged during a stop, and
     * committed at the next start): the drain is over once what was durable when it began is. */
    pgsink__check_drain(s);
}

static void pgsink__on_tick(uv_timer_t *t)
{
    nt_pgsink_t *s = t->data;
    nt_outbox_tick(&s->outbox, nt_mono_us());
    nt_pgsink__maybe_dispatch(s);
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

const nt_txn_ops_t nt_pgsink__txn_ops = {pgsink__ops_send, pgsink__ops_put_copy};

/* The sink's three batches and its first connection. 0, NT_ENOMEM or NT_ECONFIG (the connection
 * string is not valid libpq syntax); nothing left allocated on failure. */
static int pgsink__alloc(nt_pgsink_t *s, uv_loop_t *loop, const nt_pgsink_options_t *opts)
{
    nt_pgconn_options_t copts = {
        opts->conninfo,     opts->reconnect_min_ms,     opts->reconnect_max_ms,
        opts->collector_id, opts->statement_timeout_ms, 0,
        opts->password};
    s->collector_id = strdup(opts->collector_id);
    if (s->collector_id == NULL || nt_batch_init(&s->batches[0], opts->collector_id) != 0) {
        goto err;
    }
    if (nt_batch_init(&s->batches[1], opts->collector_id) != 0) {
        goto err_batch;
    }
    if (nt_batch_init(&s->batches[2], opts->collector_id) != 0) {
        nt_batch_close(&s->batches[1]);
        goto err_batch;
    }
    int rc = nt_pgconn_init(loop, &s->conn, &copts, &nt_pgsink__conn_cbs, s);
    if (rc != 0) {
        nt_batch_close(&s->batches[2]);
        nt_batch_close(&s->batches[1]);
        nt_batch_close(&s->batches[0]);
        free(s->collector_id);
        return rc;
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
    int rc = pgsink__alloc(s, loop, opts);
    if (rc != 0) {
        free(s);
        return rc;
    }
    s->opts = *opts;
    s->journal = journal;
    s->known_end = nt_journal_end(journal); /* before anything is appended */
    s->on_commit = on_commit;
    s->data = data;
    s->building = &s->batches[0];
    s->sending = &s->batches[1];
    nt_outbox_init(&s->outbox, nt_mono_us());
    nt_isolate_init(&s->iso);
    nt_registry_init(&s->registry);
    for (int i = 0; i < 3; i++) {
        s->batches[i].registry = &s->registry;
    }
    nt_txn_init(&s->txn, &nt_pgsink__txn_ops, s->conn, s->collector_id, nt_journal_id(journal),
                &s->outbox);
    s->txn.gate = nt_pgsink__first_gate;
    s->txn.gate_data = s;
    uv_timer_init(loop, &s->linger_timer);
    uv_timer_init(loop, &s->tick_timer);
    uv_idle_init(loop, &s->fill_idle);
    s->linger_timer.data = s;
    s->tick_timer.data = s;
    s->fill_idle.data = s;
    s->handles_open = 3;
    s->state = NT_PGSINK__DOWN;
    nt_pgconn_options_t copts = {
        opts->conninfo,     opts->reconnect_min_ms,     opts->reconnect_max_ms,
        opts->collector_id, opts->statement_timeout_ms, 1,
        opts->password};
    if (nt_pgsink__lane_init(s, loop, &copts) != 0) {
        nt_log(NT_LOG_WARN, "db", "could not set up the second database connection: %s; using one",
               nt_strerror(NT_ENOMEM));
        s->lane.state = NT_PGSINK__LANE_OFF;
    }
    *out = s;
    return 0;
}

int nt_pgsink_start(nt_pgsink_t *s)
{
    nt_outbox_init(&s->outbox, nt_mono_us());
    uv_timer_start(&s->tick_timer, pgsink__on_tick, 1000, 1000);
    nt_pgconn_connect(s->conn);
    nt_pgsink__lane_start(s);
    return 0;
}

void nt_pgsink_wakeup(nt_pgsink_t *s)
{
    nt_pgsink__fill(s);
    nt_pgsink__maybe_dispatch(s);
}

void nt_pgsink_drain(nt_pgsink_t *s, nt_pgsink_drain_cb cb, void *data)
{
    s->draining = 1;
    s->drain_target = nt_journal_end(s->journal);
    s->drain_cb = cb;
    s->drain_data = data;
    nt_pgsink_wakeup(s);
}

void nt_pgsink__recorded(nt_pgsink_t *s, int status)
{
    nt_pgsink_drain_cb cb = s->record_cb;
    s->record_cb = NULL;
    if (cb != NULL) {
        cb(s, status, s->record_data);
    }
}

void nt_pgsink_record_deliveries(nt_pgsink_t *s, nt_pgsink_drain_cb cb, void *data)
{
    s->record_cb = cb;
    s->record_data = data;
    if (s->state != NT_PGSINK__IDLE && s->state != NT_PGSINK__BUSY) {
        nt_pgsink__recorded(s, NT_EDB); /* not connected, or ingest stopped */
    } else {
        nt_pgsink__maybe_dispatch(s);
    }
}

void nt_pgsink_set_alerts_cb(nt_pgsink_t *s, nt_pgsink_alerts_cb on_alerts)
{
    s->on_alerts = on_alerts;
}

void nt_pgsink_set_refused_cb(nt_pgsink_t *s, void (*on_refused)(nt_pgsink_t *s, void *data))
{
    s->on_refused = on_refused;
}

void nt_pgsink_set_publish_check(nt_pgsink_t *s, int (*can_publish)(void *data))
{
    s->can_publish = can_publish;
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
    nt_pgsink__maybe_dispatch(s);
}

/* A transaction in flight longer than this makes /readyz say the database is slow. */
#define PGSINK__SLOW_AFTER_US (5 * INT64_C(1000000))

int nt_pgsink_stalled(const nt_pgsink_t *s, char *reason, size_t len)
{
    if (s->state == NT_PGSINK__MISMATCH) {
        snprintf(reason, len, "%s", s->mismatch);
        return 1;
    }
    if (s->slow[0] != '\0') {
        snprintf(reason, len, "%s", s->slow);
        return 1;
    }
    int64_t waited_us = nt_mono_us() - s->txn_started_us;
    if (s->state == NT_PGSINK__BUSY && waited_us > PGSINK__SLOW_AFTER_US) {
        /* Before any statement times out: a lock held elsewhere, an overloaded server. */
        snprintf(reason, len,
                 "the database is slow: a transaction has waited %lld s for an answer (statements "
                 "are cancelled after database.statement_timeout_ms)",
                 (long long)(waited_us / 1000000));
        return 1;
    }
    if (s->iso.stalled) {
        snprintf(reason, len, "the database refuses batches: %s", s->iso.stall);
        return 1;
    }
    for (int k = 0; k < NT_PGSINK__KINDS; k++) {
        if (s->maint_failures[k] >= NT_PGSINK__MAINT_STALLED) {
            snprintf(reason, len, "bookkeeping (alerts, heartbeat) failed %u times in a row: %s",
                     s->maint_failures[k], s->maint_error);
            return 1;
        }
    }
    return 0;
}

int nt_pgsink_ready(const nt_pgsink_t *s)
{
    return s->state == NT_PGSINK__IDLE || s->state == NT_PGSINK__BUSY ||
           s->state == NT_PGSINK__MISMATCH;
}

void nt_pgsink_close(nt_pgsink_t *s)
{
    s->state = NT_PGSINK__CLOSED;
    nt_pgsink__lane_close(s);
    nt_pgconn_close(s->conn);
    uv_timer_stop(&s->linger_timer);
    uv_timer_stop(&s->tick_timer);
    uv_close((uv_handle_t *)&s->linger_timer, pgsink__timer_closed);
    uv_close((uv_handle_t *)&s->tick_timer, pgsink__timer_closed);
    uv_idle_stop(&s->fill_idle);
    uv_close((uv_handle_t *)&s->fill_idle, pgsink__timer_closed);
}
