/* pgsink.c -- the PostgreSQL sink: non-blocking libpq on the loop, one transaction per batch. */
#include "needletrace/pgsink.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/batch.h"
#include "needletrace/common.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"

typedef enum {
    SINK_WAITING = 0, /* disconnected; the retry timer will connect */
    SINK_CONNECTING,  /* PQconnectPoll in progress */
    SINK_CHECKPOINT,  /* reading the checkpoint */
    SINK_IDLE,        /* connected, no transaction in flight */
    SINK_BUSY,        /* a batch transaction in flight */
    SINK_CLOSED,
} sink_state_t;

typedef enum {
    STEP_BEGIN = 0,   /* BEGIN; SAVEPOINT */
    STEP_COPY,        /* fast path: COPY into the target table */
    STEP_FALLBACK,    /* ROLLBACK TO SAVEPOINT; create staging tables */
    STEP_STAGE_COPY,  /* COPY into a staging table */
    STEP_MERGE,       /* INSERT ... SELECT ... ON CONFLICT DO NOTHING */
    STEP_RULES,       /* evaluate_rules(): alerts for the events this transaction inserted */
    STEP_DELIVERED,   /* record alerts the broker acknowledged */
    STEP_GAPS,        /* check_sequence_gaps(): the time-based rule */
    STEP_UNDELIVERED, /* alerts raised but not yet published */
    STEP_CHECKPOINT,  /* upsert the checkpoint */
    STEP_COMMIT,
    STEP_ROLLBACK, /* after a statement error, before a retry */
} sink_step_t;

struct nt_pgsink_s {
    uv_loop_t *loop;
    nt_pgsink_options_t opts;
    char *conninfo;
    char *collector_id;
    nt_journal_t *journal;
    nt_pgsink_commit_cb on_commit;
    void *data;

    PGconn *conn;
    uv_poll_t *poll; /* a fresh handle per socket */
    int poll_fd;
    uv_timer_t retry_timer;
    uv_timer_t linger_timer;
    int handles_open;

    sink_state_t state;
    sink_step_t step;
    int table;  /* table index of the current COPY step */
    int failed; /* the current command returned an error */
    char sqlstate[6];
    char error[512];
    unsigned attempts; /* consecutive failures, for the backoff */

    nt_batch_t batches[2];
    nt_batch_t *building; /* takes records from the journal */
    nt_batch_t *sending;  /* the batch of the transaction in flight */
    uint64_t read_pos;    /* next journal position to read */
    uint64_t committed;   /* checkpoint of the last commit */
    int linger_expired;
    int64_t txn_started_us;
    int corrupt_logged;

    /* alerts */
    nt_pgsink_alerts_cb on_alerts;
    uv_timer_t tick_timer;   /* 1 s: sequence-gap checks and alert bookkeeping when idle */
    uv_timer_t watchdog;     /* a database that stops answering is a lost connection */
    int txn_has_batch;       /* 0: a maintenance transaction (no rows, no checkpoint) */
    int64_t gaps_checked_us; /* monotonic time of the last gap check */
    int gaps_due;
    int undelivered_wanted;
    int undelivered_in_txn;
    size_t undelivered_first;  /* index in alerts[] where the undelivered rows start */
    int undelivered_more;      /* the last fetch was a full page: fetch again at the next tick */
    int64_t undelivered_at_us; /* monotonic time of the last fetch */
    int step_gaps_ran;
    int64_t *delivered; /* alert ids acknowledged by the broker, not yet recorded */
    size_t n_delivered, cap_delivered;
    size_t delivered_in_txn; /* how many of them the current transaction records */
    nt_alert_t *alerts;      /* raised by the current transaction, published after commit */
    size_t n_alerts, cap_alerts;

    int draining;
    nt_pgsink_drain_cb drain_cb;
    void *drain_data;

    char sql[4096];
};

static void sink__fail(nt_pgsink_t *s, const char *what);
static void sink__maybe_dispatch(nt_pgsink_t *s);
static void sink__on_poll(uv_poll_t *h, int status, int events);
static int sink__send(nt_pgsink_t *s, sink_step_t step, const char *sql);
static void sink__free_alerts(nt_pgsink_t *s);
static void sink__alerts_aborted(nt_pgsink_t *s);

/* ---- handles ---------------------------------------------------------------------------- */

static void sink__poll_closed(uv_handle_t *h)
{
    free(h);
}

static void sink__timer_closed(uv_handle_t *h)
{
    nt_pgsink_t *s = h->data;
    if (--s->handles_open == 0) {
        nt_batch_free(&s->batches[0]);
        nt_batch_free(&s->batches[1]);
        sink__free_alerts(s);
        free(s->alerts);
        free(s->delivered);
        free(s->conninfo);
        free(s->collector_id);
        free(s);
    }
}

static void sink__drop_poll(nt_pgsink_t *s)
{
    if (s->poll != NULL) {
        uv_poll_stop(s->poll);
        uv_close((uv_handle_t *)s->poll, sink__poll_closed);
        s->poll = NULL;
        s->poll_fd = -1;
    }
}

/* Watches libpq's current socket for events; re-reads PQsocket every time, as it may
 * change while connecting. Returns 0 or -1 (connection failed, already handled). */
static int sink__watch(nt_pgsink_t *s, int events)
{
    int fd = PQsocket(s->conn);
    if (fd < 0) {
        sink__fail(s, "connection has no socket");
        return -1;
    }
    if (s->poll == NULL || s->poll_fd != fd) {
        sink__drop_poll(s);
        s->poll = malloc(sizeof(*s->poll));
        if (s->poll == NULL || uv_poll_init_socket(s->loop, s->poll, fd) != 0) {
            free(s->poll);
            s->poll = NULL;
            sink__fail(s, "could not watch the database socket");
            return -1;
        }
        s->poll->data = s;
        s->poll_fd = fd;
    }
    uv_poll_start(s->poll, events, sink__on_poll);
    return 0;
}

/* ---- connection --------------------------------------------------------------------------- */

static void sink__notice(void *arg, const char *message)
{
    nt_log(NT_LOG_DEBUG, "db", "server notice: %.*s", (int)strcspn(message, "\n"), message);
}

/* Trimmed first line of libpq's last error. */
static const char *sink__pq_error(nt_pgsink_t *s)
{
    const char *e = s->conn != NULL ? PQerrorMessage(s->conn) : "out of memory";
    snprintf(s->error, sizeof(s->error), "%.*s", (int)strcspn(e, "\n"), e);
    return s->error;
}

static void sink__on_retry_timer(uv_timer_t *t);

static void sink__schedule_retry(nt_pgsink_t *s)
{
    uint64_t delay =
        nt_backoff_ms(s->opts.reconnect_min_ms, s->opts.reconnect_max_ms, s->attempts++);
    uv_timer_start(&s->retry_timer, sink__on_retry_timer, delay, 0);
}

/* Forgets both batches: after a failure everything is re-read from the checkpoint. */
static void sink__discard_batches(nt_pgsink_t *s)
{
    nt_batch_reset(s->building);
    nt_batch_reset(s->sending);
    uv_timer_stop(&s->linger_timer);
    s->linger_expired = 0;
}

/* The connection is unusable: drop it, keep the journal, retry with backoff. */
static void sink__fail(nt_pgsink_t *s, const char *what)
{
    if (s->state == SINK_CLOSED) {
        return;
    }
    nt_metrics.db_errors++;
    if (s->state == SINK_CONNECTING && s->attempts > 0) {
        nt_log(NT_LOG_DEBUG, "db", "could not connect to the database: %s", what);
    } else if (s->state == SINK_CONNECTING) {
        nt_log(NT_LOG_WARN, "db", "could not connect to the database: %s; retrying", what);
    } else {
        nt_log(NT_LOG_WARN, "db", "lost the database connection: %s; retrying from the checkpoint",
               what);
    }
    sink__drop_poll(s);
    uv_timer_stop(&s->watchdog);
    if (s->conn != NULL) {
        PQfinish(s->conn);
        s->conn = NULL;
    }
    nt_metrics.db_connected = 0;
    sink__discard_batches(s);
    sink__alerts_aborted(s);
    s->state = SINK_WAITING;
    sink__schedule_retry(s);
}

/* How long the database may take: to accept a connection and answer the checkpoint query,
 * and to finish one transaction (which may wait on another replica's locks). libpq's
 * connect_timeout does not apply to PQconnectPoll driven by the caller. */
#define SINK_CONNECT_TIMEOUT_MS 15000
#define SINK_TXN_TIMEOUT_MS     120000

static void sink__on_watchdog(uv_timer_t *t)
{
    nt_pgsink_t *s = t->data;
    char why[96];
    snprintf(why, sizeof(why), "no answer from the database within %d s",
             (s->state == SINK_BUSY ? SINK_TXN_TIMEOUT_MS : SINK_CONNECT_TIMEOUT_MS) / 1000);
    sink__fail(s, why);
}

static void sink__arm_watchdog(nt_pgsink_t *s, uint64_t ms)
{
    uv_timer_start(&s->watchdog, sink__on_watchdog, ms, 0);
}

static void sink__connect(nt_pgsink_t *s)
{
    /* TCP keepalives and a user timeout notice a peer that vanished; they come first so
     * that the same keys in the configured connection string win. */
    static const char *const keys[] = {"keepalives",
                                       "keepalives_idle",
                                       "keepalives_interval",
                                       "keepalives_count",
                                       "tcp_user_timeout",
                                       "dbname",
                                       NULL};
    const char *values[] = {"1", "10", "5", "3", "30000", s->conninfo, NULL};
    s->state = SINK_CONNECTING;
    sink__arm_watchdog(s, SINK_CONNECT_TIMEOUT_MS);
    s->conn = PQconnectStartParams(keys, values, 1);
    if (s->conn == NULL || PQstatus(s->conn) == CONNECTION_BAD) {
        sink__fail(s, sink__pq_error(s));
        return;
    }
    PQsetNoticeProcessor(s->conn, sink__notice, s);
    sink__watch(s, UV_WRITABLE);
}

static void sink__on_retry_timer(uv_timer_t *t)
{
    nt_pgsink_t *s = t->data;
    if (s->state == SINK_WAITING) {
        sink__connect(s);
    } else if (s->state == SINK_IDLE || s->state == SINK_BUSY) {
        nt_pgsink_wakeup(s);
    }
}

static void sink__connect_poll(nt_pgsink_t *s)
{
    switch (PQconnectPoll(s->conn)) {
    case PGRES_POLLING_READING:
        sink__watch(s, UV_READABLE);
        return;
    case PGRES_POLLING_WRITING:
        sink__watch(s, UV_WRITABLE);
        return;
    case PGRES_POLLING_FAILED:
        sink__fail(s, sink__pq_error(s));
        return;
    default:
        break;
    }
    if (PQsetnonblocking(s->conn, 1) != 0) {
        sink__fail(s, sink__pq_error(s));
        return;
    }
    nt_metrics.db_connects++;
    s->state = SINK_CHECKPOINT;
    const char *params[1] = {s->collector_id};
    if (!PQsendQueryParams(s->conn,
                           "SELECT journal_id, journal_pos FROM needletrace.collector_checkpoints "
                           "WHERE collector_id = $1",
                           1, NULL, params, NULL, NULL, 0)) {
        sink__fail(s, sink__pq_error(s));
        return;
    }
    s->failed = 0;
    PQflush(s->conn);
    sink__watch(s, UV_READABLE | UV_WRITABLE);
}

/* Sets the read position from the checkpoint row (or its absence). */
static void sink__checkpoint_result(nt_pgsink_t *s, PGresult *res)
{
    uint64_t start = nt_journal_start(s->journal);
    uint64_t end = nt_journal_end(s->journal);
    uint64_t pos = start;
    if (PQntuples(res) == 1) {
        uint64_t jid = (uint64_t)strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        uint64_t cp = (uint64_t)strtoll(PQgetvalue(res, 0, 1), NULL, 10);
        if (jid != nt_journal_id(s->journal)) {
            nt_log(NT_LOG_WARN, "db",
                   "checkpoint of collector \"%s\" belongs to another journal (id %" PRIu64
                   "); replaying this journal from its start (duplicates are ignored)",
                   s->collector_id, jid);
        } else if (cp < start) {
            nt_log(NT_LOG_WARN, "db",
                   "checkpoint %" PRIu64 " is behind the oldest journal record %" PRIu64
                   "; replaying from there",
                   cp, start);
        } else if (cp > end) {
            nt_log(NT_LOG_ERROR, "db",
                   "checkpoint %" PRIu64 " is beyond the journal end %" PRIu64
                   ": the journal lost records the database already holds; continuing from the end",
                   cp, end);
            pos = end;
        } else {
            pos = cp;
        }
    }
    s->read_pos = pos;
    s->committed = pos;
    if (pos > start) {
        nt_journal_release(s->journal, pos);
    }
    nt_metrics.journal_checkpoint = pos;
    nt_metrics.db_connected = 1;
    s->attempts = 0;
    nt_log(NT_LOG_INFO, "db",
           "connected to the database; resuming at journal position %" PRIu64 " (%" PRIu64
           " bytes to replay)",
           pos, end - pos);
}

/* ---- alerts ------------------------------------------------------------------------------ */

#define SINK_GAP_CHECK_US          (5 * 1000000)
#define SINK_UNDELIVERED_LIMIT     1000
#define SINK_UNDELIVERED_LIMIT_SQL "1000"
/* Undelivered alerts are also fetched this often, for alerts a replica that stopped left
 * behind and alerts the publisher had to defer. */
#define SINK_UNDELIVERED_EVERY_US (30 * 1000000)

static void sink__free_alerts(nt_pgsink_t *s)
{
    for (size_t i = 0; i < s->n_alerts; i++) {
        free((char *)s->alerts[i].clinic_id);
        free((char *)s->alerts[i].rule);
        free((char *)s->alerts[i].payload);
    }
    s->n_alerts = 0;
}

/* Keeps the rows (alert_id, clinic_id, rule, payload) of res for after the commit. */
static int sink__collect_alerts(nt_pgsink_t *s, PGresult *res)
{
    int rows = PQntuples(res);
    if (PQnfields(res) != 4) {
        return NT_EDB;
    }
    for (int r = 0; r < rows; r++) {
        if (s->n_alerts == s->cap_alerts) {
            size_t cap = s->cap_alerts ? s->cap_alerts * 2 : 64;
            nt_alert_t *a = realloc(s->alerts, cap * sizeof(*a));
            if (a == NULL) {
                return NT_ENOMEM;
            }
            s->alerts = a;
            s->cap_alerts = cap;
        }
        nt_alert_t *a = &s->alerts[s->n_alerts];
        a->alert_id = strtoll(PQgetvalue(res, r, 0), NULL, 10);
        a->clinic_id = strdup(PQgetvalue(res, r, 1));
        a->rule = strdup(PQgetvalue(res, r, 2));
        a->payload = strdup(PQgetvalue(res, r, 3));
        if (a->clinic_id == NULL || a->rule == NULL || a->payload == NULL) {
            free((char *)a->clinic_id);
            free((char *)a->rule);
            free((char *)a->payload);
            return NT_ENOMEM;
        }
        s->n_alerts++;
    }
    return 0;
}

/* Sends a query with the collector id as $1 (and an optional $2) for the given step. */
/* Sends one statement with the collector id as $1 and up to two more parameters ($2, $3;
 * NULL ends the list) for the given step. */
static void sink__send_params(nt_pgsink_t *s, sink_step_t step, const char *sql, const char *p2,
                              const char *p3)
{
    const char *params[3] = {s->collector_id, p2, p3};
    int n = p2 == NULL ? 1 : p3 == NULL ? 2 : 3;
    s->step = step;
    s->failed = 0;
    if (!PQsendQueryParams(s->conn, sql, n, NULL, params, NULL, NULL, 0)) {
        sink__fail(s, sink__pq_error(s));
        return;
    }
    sink__watch(s, UV_READABLE | (PQflush(s->conn) == 1 ? UV_WRITABLE : 0));
}

/* Sends the first step after `after` that this transaction needs: the rules (batches only),
 * the delivery records, the gap check, the undelivered alerts, the checkpoint (batches
 * only), COMMIT. */
static void sink__next_extra(nt_pgsink_t *s, sink_step_t after)
{
    if (after < STEP_RULES && s->txn_has_batch) {
        sink__send_params(s, STEP_RULES,
                          "SELECT alert_id, clinic_id, rule, payload "
                          "FROM needletrace.evaluate_rules($1)",
                          NULL, NULL);
        return;
    }
    if (after < STEP_DELIVERED && s->n_delivered > 0) {
        /* An int8 array literal built from integers only. */
        size_t cap = s->n_delivered * 21 + 3, n = 0;
        char *arr = malloc(cap);
        if (arr != NULL) {
            arr[n++] = '{';
            for (size_t i = 0; i < s->n_delivered; i++) {
                n +=
                    (size_t)snprintf(arr + n, cap - n, "%s%" PRId64, i ? "," : "", s->delivered[i]);
            }
            arr[n++] = '}';
            arr[n] = '\0';
            s->delivered_in_txn = s->n_delivered;
            sink__send_params(s, STEP_DELIVERED,
                              "SELECT needletrace.mark_alerts_delivered($1, $2::bigint[])", arr,
                              NULL);
            free(arr);
            return;
        }
    }
    if (after < STEP_GAPS && s->gaps_due) {
        sink__send_params(s, STEP_GAPS,
                          "SELECT alert_id, clinic_id, rule, payload "
                          "FROM needletrace.check_sequence_gaps($1)",
                          NULL, NULL);
        return;
    }
    if (after < STEP_UNDELIVERED && s->undelivered_wanted) {
        s->undelivered_in_txn = 1;
        s->undelivered_first = s->n_alerts;
        sink__send_params(s, STEP_UNDELIVERED,
                          "SELECT alert_id, clinic_id, rule, payload "
                          "FROM needletrace.undelivered_alerts($1, " SINK_UNDELIVERED_LIMIT_SQL ")",
                          NULL, NULL);
        return;
    }
    if (after < STEP_CHECKPOINT && s->txn_has_batch) {
        /* Checkpoint in the same transaction as the rows it covers. */
        char jid[24], pos[24];
        snprintf(jid, sizeof(jid), "%" PRId64, (int64_t)nt_journal_id(s->journal));
        snprintf(pos, sizeof(pos), "%" PRIu64, s->sending->end_pos);
        sink__send_params(s, STEP_CHECKPOINT,
                          "INSERT INTO needletrace.collector_checkpoints "
                          "(collector_id, journal_id, journal_pos, updated_at) "
                          "VALUES ($1, $2, $3, now()) ON CONFLICT (collector_id) DO UPDATE SET "
                          "journal_id = EXCLUDED.journal_id, journal_pos = EXCLUDED.journal_pos, "
                          "updated_at = EXCLUDED.updated_at",
                          jid, pos);
        return;
    }
    sink__send(s, STEP_COMMIT, "COMMIT");
}

/* After a commit: forget what it recorded, hand its alerts over. */
static void sink__alerts_committed(nt_pgsink_t *s)
{
    if (s->delivered_in_txn > 0) {
        memmove(s->delivered, s->delivered + s->delivered_in_txn,
                (s->n_delivered - s->delivered_in_txn) * sizeof(*s->delivered));
        s->n_delivered -= s->delivered_in_txn;
        s->delivered_in_txn = 0;
    }
    if (s->step_gaps_ran) {
        s->gaps_due = 0;
        s->gaps_checked_us = nt_mono_us();
        s->step_gaps_ran = 0;
    }
    if (s->undelivered_in_txn) {
        s->undelivered_wanted = 0;
        s->undelivered_in_txn = 0;
        s->undelivered_at_us = nt_mono_us();
        /* A full page: more are waiting; fetch the next page at the next tick, once the
         * deliveries of this one are recorded. */
        s->undelivered_more = s->n_alerts - s->undelivered_first >= SINK_UNDELIVERED_LIMIT;
    }
    if (s->n_alerts > 0 && s->on_alerts != NULL) {
        s->on_alerts(s, s->alerts, s->n_alerts, s->data);
    }
    sink__free_alerts(s);
}

/* After a rollback or a lost connection: everything is done again later. */
static void sink__alerts_aborted(nt_pgsink_t *s)
{
    s->delivered_in_txn = 0;
    s->undelivered_in_txn = 0;
    s->step_gaps_ran = 0;
    sink__free_alerts(s);
}

/* Starts a maintenance transaction when idle and something is due. */
static void sink__maybe_maintain(nt_pgsink_t *s)
{
    if (s->state != SINK_IDLE || s->building->messages > 0 ||
        uv_is_active((uv_handle_t *)&s->retry_timer)) {
        return;
    }
    if (!s->gaps_due && s->n_delivered == 0 && !s->undelivered_wanted) {
        return;
    }
    s->state = SINK_BUSY;
    sink__arm_watchdog(s, SINK_TXN_TIMEOUT_MS);
    s->txn_has_batch = 0;
    s->txn_started_us = nt_mono_us();
    sink__send(s, STEP_BEGIN, "BEGIN");
}

static void sink__on_tick(uv_timer_t *t)
{
    nt_pgsink_t *s = t->data;
    int64_t now = nt_mono_us();
    if (now - s->gaps_checked_us >= SINK_GAP_CHECK_US) {
        s->gaps_due = 1;
    }
    if (s->undelivered_more || now - s->undelivered_at_us >= SINK_UNDELIVERED_EVERY_US) {
        s->undelivered_more = 0;
        s->undelivered_wanted = 1;
    }
    sink__maybe_maintain(s);
}

/* ---- batches ------------------------------------------------------------------------------ */

static int sink__full(const nt_pgsink_t *s, const nt_batch_t *b)
{
    return b->events >= s->opts.max_events || b->messages >= s->opts.max_events ||
           b->bytes >= s->opts.max_bytes;
}

static void sink__on_linger(uv_timer_t *t)
{
    nt_pgsink_t *s = t->data;
    s->linger_expired = 1;
    sink__maybe_dispatch(s);
}

/* Moves durable journal records into the building batch, up to its bounds. */
/* Nothing else wakes the sink when reading paused because the journal is full: try again
 * after a backoff (the retry timer calls nt_pgsink_wakeup when idle). */
static void sink__retry_fill(nt_pgsink_t *s)
{
    if (!uv_is_active((uv_handle_t *)&s->retry_timer)) {
        sink__schedule_retry(s);
    }
}

static void sink__fill(nt_pgsink_t *s)
{
    if (s->state != SINK_IDLE && s->state != SINK_BUSY) {
        return;
    }
    while (!sink__full(s, s->building)) {
        nt_journal_record_t rec;
        int rc = nt_journal_read(s->journal, s->read_pos, &rec);
        if (rc == 0) {
            break;
        }
        if (rc < 0) {
            if (!s->corrupt_logged) {
                nt_log(NT_LOG_ERROR, "db",
                       "could not read the journal at position %" PRIu64 ": %s; retrying",
                       s->read_pos, nt_strerror(rc));
                s->corrupt_logged = 1;
            }
            sink__retry_fill(s);
            return;
        }
        s->corrupt_logged = 0;
        if (nt_batch_add(s->building, &rec) != 0) {
            nt_log(NT_LOG_ERROR, "db", "could not add journal record %" PRIu64 " to a batch: %s",
                   s->read_pos, nt_strerror(NT_ENOMEM));
            sink__retry_fill(s);
            return;
        }
        s->read_pos = rec.next_pos;
        if (s->building->messages == 1 && s->opts.max_delay_ms > 0) {
            s->linger_expired = 0;
            uv_timer_start(&s->linger_timer, sink__on_linger, s->opts.max_delay_ms, 0);
        }
    }
}

static void sink__check_drain(nt_pgsink_t *s)
{
    if (s->draining && s->drain_cb != NULL && s->state == SINK_IDLE && s->building->messages == 0 &&
        s->read_pos >= nt_journal_end(s->journal)) {
        nt_pgsink_drain_cb cb = s->drain_cb;
        s->drain_cb = NULL;
        cb(s, 0, s->drain_data);
    }
}

/* Sends one command (simple protocol, may hold several statements). */
static int sink__send(nt_pgsink_t *s, sink_step_t step, const char *sql)
{
    s->step = step;
    s->failed = 0;
    if (!PQsendQuery(s->conn, sql)) {
        sink__fail(s, sink__pq_error(s));
        return -1;
    }
    int events = UV_READABLE | (PQflush(s->conn) == 1 ? UV_WRITABLE : 0);
    return sink__watch(s, events);
}

/* Sends the next COPY (fast or staging path) from table index s->table on, or moves on. */
static void sink__next_copy(nt_pgsink_t *s, int staging)
{
    while (s->table < NT_BATCH__TABLES && s->sending->tables[s->table].buf.rows == 0) {
        s->table++;
    }
    if (s->table < NT_BATCH__TABLES) {
        const nt_batch_table_t *t = &s->sending->tables[s->table];
        snprintf(s->sql, sizeof(s->sql), "COPY %s%s (%s) FROM STDIN (FORMAT binary)",
                 staging ? "nt_stage_" : "needletrace.", t->table, t->columns);
        sink__send(s, staging ? STEP_STAGE_COPY : STEP_COPY, s->sql);
        return;
    }
    if (staging) {
        size_t n = 0;
        for (int i = 0; i < NT_BATCH__TABLES; i++) {
            const nt_batch_table_t *t = &s->sending->tables[i];
            if (t->buf.rows > 0) {
                n += (size_t)snprintf(s->sql + n, sizeof(s->sql) - n,
                                      "INSERT INTO needletrace.%s (%s) SELECT %s FROM nt_stage_%s "
                                      "ON CONFLICT DO NOTHING;",
                                      t->table, t->columns, t->columns, t->table);
            }
        }
        if (n >= sizeof(s->sql)) {
            sink__fail(s, "internal error: merge statement too long");
            return;
        }
        sink__send(s, STEP_MERGE, s->sql);
        return;
    }
    sink__next_extra(s, STEP_MERGE);
}

static void sink__start_fallback(nt_pgsink_t *s)
{
    size_t n = (size_t)snprintf(s->sql, sizeof(s->sql), "ROLLBACK TO SAVEPOINT nt_fast;");
    for (int i = 0; i < NT_BATCH__TABLES; i++) {
        const nt_batch_table_t *t = &s->sending->tables[i];
        if (t->buf.rows > 0) {
            n +=
                (size_t)snprintf(s->sql + n, sizeof(s->sql) - n,
                                 "CREATE TEMP TABLE IF NOT EXISTS nt_stage_%s (LIKE needletrace.%s "
                                 "INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;",
                                 t->table, t->table);
        }
    }
    if (n >= sizeof(s->sql)) {
        sink__fail(s, "internal error: staging statement too long");
        return;
    }
    nt_metrics.db_batches_fallback++;
    nt_log(NT_LOG_DEBUG, "db", "batch holds rows already stored; taking the staging path");
    sink__send(s, STEP_FALLBACK, s->sql);
}

static void sink__committed(nt_pgsink_t *s)
{
    nt_batch_t *b = s->sending;
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
    s->attempts = 0;
    s->state = SINK_IDLE;
    nt_journal_release(s->journal, s->committed);
    nt_metrics.journal_bytes = nt_journal_bytes(s->journal);
    if (s->on_commit != NULL) {
        s->on_commit(s, s->committed, s->data);
    }
}

/* A statement failed inside the transaction (the connection is fine). */
static void sink__statement_failed(nt_pgsink_t *s)
{
    if (s->step == STEP_COPY && strcmp(s->sqlstate, "23505") == 0) {
        sink__start_fallback(s);
        return;
    }
    nt_metrics.db_errors++;
    int transient = strncmp(s->sqlstate, "40", 2) == 0; /* serialization failure, deadlock */
    if (!s->txn_has_batch) {
        nt_log(transient ? NT_LOG_INFO : NT_LOG_ERROR, "db",
               "could not run the alert bookkeeping transaction: %s; retrying", s->error);
        sink__send(s, STEP_ROLLBACK, "ROLLBACK");
        return;
    }
    nt_log(transient ? NT_LOG_INFO : NT_LOG_ERROR, "db",
           "could not commit a batch of %u messages (journal %" PRIu64 "..%" PRIu64 "): %s%s",
           s->sending->messages, s->sending->first_pos, s->sending->end_pos, s->error,
           strcmp(s->sqlstate, "42P01") == 0
               ? " (has the schema been created? run needletrace migrate)"
               : "; retrying");
    sink__send(s, STEP_ROLLBACK, "ROLLBACK");
}

/* The current command finished (PQgetResult returned NULL). */
static void sink__step_done(nt_pgsink_t *s)
{
    if (s->state == SINK_CHECKPOINT) {
        if (s->failed) {
            nt_log(NT_LOG_ERROR, "db", "could not read the checkpoint: %s%s", s->error,
                   strcmp(s->sqlstate, "42P01") == 0
                       ? " (has the schema been created? run needletrace migrate)"
                       : "");
            sink__fail(s, s->error);
            return;
        }
        s->state = SINK_IDLE;
        uv_timer_stop(&s->watchdog);
        sink__fill(s);
        sink__maybe_dispatch(s);
        return;
    }
    if (s->step == STEP_ROLLBACK) {
        uv_timer_stop(&s->watchdog);
        sink__alerts_aborted(s);
        /* Start over from the last commit after a pause. */
        s->read_pos = s->committed;
        sink__discard_batches(s);
        s->state = SINK_IDLE;
        sink__schedule_retry(s);
        return;
    }
    if (s->failed) {
        sink__statement_failed(s);
        return;
    }
    switch (s->step) {
    case STEP_BEGIN:
        s->table = 0;
        if (s->txn_has_batch) {
            sink__next_copy(s, 0);
        } else {
            sink__next_extra(s, STEP_MERGE);
        }
        break;
    case STEP_COPY:
        s->table++;
        sink__next_copy(s, 0);
        break;
    case STEP_FALLBACK:
        s->table = 0;
        sink__next_copy(s, 1);
        break;
    case STEP_STAGE_COPY:
        s->table++;
        sink__next_copy(s, 1);
        break;
    case STEP_MERGE:
        sink__next_extra(s, STEP_MERGE);
        break;
    case STEP_GAPS:
        s->step_gaps_ran = 1;
        sink__next_extra(s, STEP_GAPS);
        break;
    case STEP_RULES:
    case STEP_DELIVERED:
    case STEP_UNDELIVERED:
    case STEP_CHECKPOINT:
        sink__next_extra(s, s->step);
        break;
    case STEP_COMMIT:
        uv_timer_stop(&s->watchdog);
        if (s->txn_has_batch) {
            sink__committed(s);
        } else {
            s->state = SINK_IDLE;
            s->attempts = 0;
        }
        sink__alerts_committed(s);
        sink__fill(s);
        sink__maybe_dispatch(s);
        sink__maybe_maintain(s);
        break;
    case STEP_ROLLBACK:
        break;
    }
}

static void sink__handle_result(nt_pgsink_t *s, PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COPY_IN) {
        const nt_copybuf_t *buf = &s->sending->tables[s->table].buf;
        if (PQputCopyData(s->conn, (const char *)buf->data, (int)buf->len) != 1 ||
            PQputCopyEnd(s->conn, NULL) != 1) {
            sink__fail(s, sink__pq_error(s));
        }
        return;
    }
    if (st == PGRES_TUPLES_OK && s->state == SINK_CHECKPOINT) {
        sink__checkpoint_result(s, res);
        return;
    }
    if (st == PGRES_TUPLES_OK &&
        (s->step == STEP_RULES || s->step == STEP_GAPS || s->step == STEP_UNDELIVERED)) {
        int rc = sink__collect_alerts(s, res);
        if (rc != 0 && !s->failed) {
            snprintf(s->sqlstate, sizeof(s->sqlstate), "XX000");
            snprintf(s->error, sizeof(s->error), "could not keep the raised alerts: %s",
                     nt_strerror(rc));
            s->failed = 1;
        }
        return;
    }
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        return;
    }
    if (!s->failed) {
        const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        snprintf(s->sqlstate, sizeof(s->sqlstate), "%s", code != NULL ? code : "XX000");
        snprintf(s->error, sizeof(s->error), "%s", msg != NULL ? msg : PQresStatus(st));
        s->failed = 1;
    }
}

static void sink__on_poll(uv_poll_t *h, int status, int events)
{
    nt_pgsink_t *s = h->data;
    if (s->state == SINK_CONNECTING) {
        sink__connect_poll(s);
        return;
    }
    if (status < 0) {
        events = UV_READABLE; /* let libpq report the error */
    }
    if (events & UV_WRITABLE) {
        int rc = PQflush(s->conn);
        if (rc < 0) {
            sink__fail(s, sink__pq_error(s));
            return;
        }
        if (rc == 0 && sink__watch(s, UV_READABLE) != 0) {
            return;
        }
    }
    if (!(events & UV_READABLE)) {
        return;
    }
    if (!PQconsumeInput(s->conn)) {
        sink__fail(s, sink__pq_error(s));
        return;
    }
    while (s->conn != NULL && (s->state == SINK_CHECKPOINT || s->state == SINK_BUSY) &&
           !PQisBusy(s->conn)) {
        PGresult *res = PQgetResult(s->conn);
        if (res == NULL) {
            sink__step_done(s);
            continue;
        }
        sink__handle_result(s, res);
        PQclear(res);
        if (s->conn != NULL && PQflush(s->conn) == 1) {
            sink__watch(s, UV_READABLE | UV_WRITABLE);
        }
    }
    if (s->conn != NULL && PQstatus(s->conn) == CONNECTION_BAD) {
        sink__fail(s, sink__pq_error(s));
    }
}

/* Starts a transaction for the building batch when it is due. */
static void sink__maybe_dispatch(nt_pgsink_t *s)
{
    if (s->state != SINK_IDLE) {
        return;
    }
    if (uv_is_active((uv_handle_t *)&s->retry_timer)) {
        return; /* backing off after a failed batch */
    }
    nt_batch_t *b = s->building;
    if (b->messages == 0) {
        sink__check_drain(s);
        return;
    }
    if (!sink__full(s, b) && !s->linger_expired && !s->draining && s->opts.max_delay_ms > 0) {
        return;
    }
    if (nt_batch_finish(b) != 0) {
        nt_log(NT_LOG_ERROR, "db", "could not finish a batch: %s", nt_strerror(NT_ENOMEM));
        s->read_pos = s->committed;
        sink__discard_batches(s);
        sink__schedule_retry(s);
        return;
    }
    uv_timer_stop(&s->linger_timer);
    s->linger_expired = 0;
    s->building = s->sending;
    s->sending = b;
    s->state = SINK_BUSY;
    sink__arm_watchdog(s, SINK_TXN_TIMEOUT_MS);
    s->txn_has_batch = 1;
    s->txn_started_us = nt_mono_us();
    if (sink__send(s, STEP_BEGIN, "BEGIN; SAVEPOINT nt_fast") != 0) {
        return;
    }
    /* Keep decoding the next batch while this one commits. */
    sink__fill(s);
}

/* ---- public ---------------------------------------------------------------------------------- */

int nt_pgsink_init(uv_loop_t *loop, nt_pgsink_t **out, const nt_pgsink_options_t *opts,
                   nt_journal_t *journal, nt_pgsink_commit_cb on_commit, void *data)
{
    nt_pgsink_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return NT_ENOMEM;
    }
    s->loop = loop;
    s->opts = *opts;
    s->conninfo = strdup(opts->conninfo);
    s->collector_id = strdup(opts->collector_id);
    s->journal = journal;
    s->on_commit = on_commit;
    s->data = data;
    s->poll_fd = -1;
    if (s->opts.reconnect_min_ms == 0) {
        s->opts.reconnect_min_ms = 250;
    }
    if (s->opts.reconnect_max_ms < s->opts.reconnect_min_ms) {
        s->opts.reconnect_max_ms = s->opts.reconnect_min_ms;
    }
    if (s->conninfo == NULL || s->collector_id == NULL ||
        nt_batch_init(&s->batches[0], opts->collector_id) != 0) {
        goto err;
    }
    if (nt_batch_init(&s->batches[1], opts->collector_id) != 0) {
        nt_batch_free(&s->batches[0]);
        goto err;
    }
    s->building = &s->batches[0];
    s->sending = &s->batches[1];
    uv_timer_init(loop, &s->retry_timer);
    uv_timer_init(loop, &s->linger_timer);
    uv_timer_init(loop, &s->tick_timer);
    uv_timer_init(loop, &s->watchdog);
    s->retry_timer.data = s;
    s->linger_timer.data = s;
    s->tick_timer.data = s;
    s->watchdog.data = s;
    s->handles_open = 4;
    s->state = SINK_WAITING;
    *out = s;
    return 0;
err:
    free(s->conninfo);
    free(s->collector_id);
    free(s);
    return NT_ENOMEM;
}

int nt_pgsink_start(nt_pgsink_t *s)
{
    s->gaps_checked_us = nt_mono_us() - SINK_GAP_CHECK_US;
    s->undelivered_at_us = nt_mono_us();
    uv_timer_start(&s->tick_timer, sink__on_tick, 1000, 1000);
    sink__connect(s);
    return 0;
}

void nt_pgsink_wakeup(nt_pgsink_t *s)
{
    sink__fill(s);
    sink__maybe_dispatch(s);
}

void nt_pgsink_drain(nt_pgsink_t *s, nt_pgsink_drain_cb cb, void *data)
{
    s->draining = 1;
    s->drain_cb = cb;
    s->drain_data = data;
    nt_pgsink_wakeup(s);
}

void nt_pgsink_set_alerts_cb(nt_pgsink_t *s, nt_pgsink_alerts_cb on_alerts)
{
    s->on_alerts = on_alerts;
}

void nt_pgsink_alert_delivered(nt_pgsink_t *s, int64_t alert_id)
{
    if (s->n_delivered == s->cap_delivered) {
        size_t cap = s->cap_delivered ? s->cap_delivered * 2 : 64;
        int64_t *d = realloc(s->delivered, cap * sizeof(*d));
        if (d == NULL) {
            /* Not recorded: the alert is published again later (at least once). */
            nt_log(NT_LOG_WARN, "db", "could not record the delivery of alert %" PRId64 ": %s",
                   alert_id, nt_strerror(NT_ENOMEM));
            return;
        }
        s->delivered = d;
        s->cap_delivered = cap;
    }
    s->delivered[s->n_delivered++] = alert_id;
}

void nt_pgsink_request_undelivered(nt_pgsink_t *s)
{
    s->undelivered_wanted = 1;
    sink__maybe_maintain(s);
}

int nt_pgsink_ready(const nt_pgsink_t *s)
{
    return s->state == SINK_IDLE || s->state == SINK_BUSY;
}

void nt_pgsink_close(nt_pgsink_t *s)
{
    s->state = SINK_CLOSED;
    sink__drop_poll(s);
    if (s->conn != NULL) {
        PQfinish(s->conn);
        s->conn = NULL;
    }
    nt_metrics.db_connected = 0;
    uv_timer_stop(&s->retry_timer);
    uv_timer_stop(&s->linger_timer);
    uv_timer_stop(&s->tick_timer);
    uv_timer_stop(&s->watchdog);
    uv_close((uv_handle_t *)&s->watchdog, sink__timer_closed);
    uv_close((uv_handle_t *)&s->retry_timer, sink__timer_closed);
    uv_close((uv_handle_t *)&s->linger_timer, sink__timer_closed);
    uv_close((uv_handle_t *)&s->tick_timer, sink__timer_closed);
}
