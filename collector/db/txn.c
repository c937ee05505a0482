/* txn.c -- the sink's transaction as a table of steps (see txn.h for the steps and why). */
#include "needletrace/txn.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/ident.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"
#include "needletrace/pqutil.h"

#define TXN__SKIP 1 /* a step's send found nothing to send: go on to the next step */

#define TXN__ALERT_COLUMNS "SELECT alert_id, clinic_id, rule, payload FROM "

typedef struct {
    const char *name;
    int (*applies)(const nt_txn_t *t); /* NULL: always */
    int (*send)(nt_txn_t *t);          /* 0 sent, TXN__SKIP, or NT_E* */
    int (*again)(nt_txn_t *t);         /* after its statement: 1 = run the step again */
    int (*on_error)(nt_txn_t *t);      /* 1 when it handled the failure itself */
    int alerts;                        /* its rows are alerts */
    int stage;                         /* nt_stage_t its time counts to, -1 none */
} txn__step_t;

/* ---- when a step applies ----------------------------------------------------------------------
 */

static int txn__fast_path(const nt_txn_t *t)
{
    return t->batch != NULL && !t->staging;
}

static int txn__staging_path(const nt_txn_t *t)
{
    return t->batch != NULL && t->staging;
}

static int txn__has_batch(const nt_txn_t *t)
{
    return t->batch != NULL;
}

/* Alert bookkeeping runs only in maintenance transactions (no batch), and only the kinds in
 * maint_mask: never inside a transaction that carries events, whose locks and duration it would
 * add to, and a kind that keeps failing never holds back the others. */
static int txn__maint(const nt_txn_t *t, unsigned kind)
{
    return t->batch == NULL && (t->maint_mask & kind) != 0;
}

static int txn__has_deliveries(const nt_txn_t *t)
{
    return txn__maint(t, NT_TXN_MAINT_RECORD) && t->outbox->n_delivered > 0;
}

static int txn__has_refusals(const nt_txn_t *t)
{
    return txn__maint(t, NT_TXN_MAINT_RECORD) && t->outbox->n_refused > 0;
}

static int txn__gaps_due(const nt_txn_t *t)
{
    return txn__maint(t, NT_TXN_MAINT_GAPS) && t->outbox->gaps_due;
}

static int txn__undelivered_wanted(const nt_txn_t *t)
{
    return txn__maint(t, NT_TXN_MAINT_UNDELIVERED) && t->outbox->undelivered_wanted;
}

static int txn__heartbeat_due(const nt_txn_t *t)
{
    return txn__maint(t, NT_TXN_MAINT_HEARTBEAT);
}

static int txn__stopping(const nt_txn_t *t)
{
    return txn__maint(t, NT_TXN_MAINT_STOPPED);
}

/* ---- what a step sends ------------------------------------------------------------------------
 */

/* Sends a function call with the collector id as $1 and the given further parameters. */
static int txn__call(nt_txn_t *t, const char *sql, const char *p2, const char *p3)
{
    const char *params[3] = {t->collector_id, p2, p3};
    int n = p2 == NULL ? 1 : p3 == NULL ? 2 : 3;
    return t->ops->send(t->conn, sql, n, params);
}

/* A batch's transaction takes its batch-order lock at once (released when it ends): the batch
 * after it waits for that lock before it moves the checkpoint (txn__send_checkpoint), in the
 * database, where a deadlock with it (each waiting for a row the other inserted) is seen and
 * broken. The collector id is an identifier (1-64 of [A-Za-z0-9._-], config.c): safe in a
 * literal, checked again here. */
static int txn__send_begin(nt_txn_t *t)
{
    if (t->batch == NULL) {
        return t->ops->send(t->conn, "BEGIN", 0, NULL);
    }
    if (!nt_ident_id_valid_str(t->collector_id)) {
        return NT_EINVAL;
    }
    snprintf(t->sql, sizeof(t->sql),
             "BEGIN; SELECT pg_advisory_xact_lock(hashtext('%s'), %" PRId32 "); SAVEPOINT nt_fast",
             t->collector_id, (int32_t)(t->order & 0x7fffffffu));
    return t->ops->send(t->conn, t->sql, 0, NULL);
}

/* Moves t->table to the next table with rows; 0 when none is left. */
static int txn__next_table(nt_txn_t *t)
{
    while (t->table < NT_BATCH__TABLES && t->batch->tables[t->table].buf.rows == 0) {
        t->table++;
    }
    return t->table < NT_BATCH__TABLES;
}

static int txn__copy(nt_txn_t *t, const char *prefix)
{
    if (!txn__next_table(t)) {
        return TXN__SKIP;
    }
    const nt_batch_table_t *tb = &t->batch->tables[t->table];
    snprintf(t->sql, sizeof(t->sql), "COPY %s%s (%s) FROM STDIN (FORMAT binary)", prefix, tb->table,
             tb->columns);
    return t->ops->send(t->conn, t->sql, 0, NULL);
}

static int txn__send_copy(nt_txn_t *t)
{
    return txn__copy(t, "needletrace.");
}

static int txn__send_stage_copy(nt_txn_t *t)
{
    return txn__copy(t, "nt_stage_");
}

static int txn__copy_again(nt_txn_t *t)
{
    t->table++;
    return txn__next_table(t);
}

static int txn__send_stage(nt_txn_t *t)
{
    size_t n = (size_t)snprintf(t->sql, sizeof(t->sql), "ROLLBACK TO SAVEPOINT nt_fast;");
    for (int i = 0; i < NT_BATCH__TABLES && n < sizeof(t->sql); i++) {
        const nt_batch_table_t *tb = &t->batch->tables[i];
        if (tb->buf.rows > 0) {
            n += (size_t)snprintf(t->sql + n, sizeof(t->sql) - n,
                                  "CREATE TEMP TABLE IF NOT EXISTS nt_stage_%s (LIKE "
                                  "needletrace.%s INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;",
                                  tb->table, tb->table);
        }
    }
    if (n >= sizeof(t->sql)) {
        return NT_ETOOBIG;
    }
    nt_metrics.db_batches_fallback++;
    nt_log(NT_LOG_DEBUG, "db", "batch holds rows already stored; taking the staging path");
    return t->ops->send(t->conn, t->sql, 0, NULL);
}

/* The staged rows into the tables, skipping what is stored already: events first -- those whose
 * identity needletrace.event_keys does not hold, the first of each identity in the batch (the
 * table is partitioned: 013_partitions.sql) -- then each raw message only if an event of it was
 * stored now -- a redelivered message stored none -- or, marked conflicting, if every event
 * identity of it was stored from a message with other content (at most once: a partial unique
 * index; see 009_raw_evidence_lean.sql), then quarantine rows (ON CONFLICT on their key). */
static const char txn__merge_events[] =
    "INSERT INTO needletrace.events (%s) SELECT %s FROM (SELECT DISTINCT ON (s.clinic_id, "
    "s.device_serial, s.boot_id, s.seq) s.* FROM nt_stage_events s WHERE NOT EXISTS ("
    "SELECT 1 FROM needletrace.event_keys k WHERE k.clinic_id = s.clinic_id "
    "AND k.device_serial = s.device_serial AND k.boot_id = s.boot_id AND k.seq = s.seq) "
    "ORDER BY s.clinic_id, s.device_serial, s.boot_id, s.seq, s.ctid) x;";

static const char txn__merge_raw[] =
    "INSERT INTO needletrace.raw_messages (%s, conflicting) SELECT %s, nt_conflicting FROM ("
    "SELECT DISTINCT ON (s.clinic_id, s.device_serial, s.payload_sha256) s.*, "
    "m.clinic_id IS NULL AS nt_conflicting FROM nt_stage_raw_messages s LEFT JOIN ("
    "SELECT se.clinic_id, se.device_serial, se.payload_sha256, "
    "bool_or(k.tx = txid_current()) AS now FROM nt_stage_events se JOIN needletrace.event_keys k "
    "ON k.clinic_id = se.clinic_id AND k.device_serial = se.device_serial "
    "AND k.boot_id = se.boot_id AND k.seq = se.seq AND k.payload_sha256 = se.payload_sha256 "
    "GROUP BY 1, 2, 3) m ON m.clinic_id = s.clinic_id AND m.device_serial = s.device_serial "
    "AND m.payload_sha256 = s.payload_sha256 WHERE m.now OR m.clinic_id IS NULL "
    "ORDER BY s.clinic_id, s.device_serial, s.payload_sha256, s.journal_pos) x "
    "ON CONFLICT (clinic_id, device_serial, payload_sha256) WHERE conflicting DO NOTHING;";

static int txn__send_merge(nt_txn_t *t)
{
    static const int order[NT_BATCH__TABLES] = {NT_BATCH_EVENTS, NT_BATCH_RAW, NT_BATCH_QUARANTINE};
    size_t n = 0;
    for (int k = 0; k < NT_BATCH__TABLES && n < sizeof(t->sql); k++) {
        const nt_batch_table_t *tb = &t->batch->tables[order[k]];
        if (tb->buf.rows == 0) {
            continue;
        }
        if (order[k] == NT_BATCH_RAW || order[k] == NT_BATCH_EVENTS) {
            n += (size_t)snprintf(t->sql + n, sizeof(t->sql) - n,
                                  order[k] == NT_BATCH_RAW ? txn__merge_raw : txn__merge_events,
                                  tb->columns, tb->columns);
        } else {
            n += (size_t)snprintf(t->sql + n, sizeof(t->sql) - n,
                                  "INSERT INTO needletrace.%s (%s) SELECT %s FROM nt_stage_%s "
                                  "ON CONFLICT DO NOTHING;",
                                  tb->table, tb->columns, tb->columns, tb->table);
        }
    }
    if (n >= sizeof(t->sql)) {
        return NT_ETOOBIG;
    }
    return t->ops->send(t->conn, t->sql, 0, NULL);
}

static int txn__send_rules(nt_txn_t *t)
{
    return txn__call(t, TXN__ALERT_COLUMNS "needletrace.evaluate_rules($1)", NULL, NULL);
}

/* Sends sql with the collector id and the ids as an int8 array literal (built from integers
 * only). TXN__SKIP when the literal cannot be allocated: the ids are recorded by a later one. */
static int txn__send_ids(nt_txn_t *t, const char *sql, size_t n_hint,
                         size_t (*take)(nt_outbox_t *, const int64_t **))
{
    size_t cap = n_hint * 21 + 3, len = 0;
    char *arr = malloc(cap);
    if (arr == NULL) {
        return TXN__SKIP;
    }
    const int64_t *ids;
    size_t n = take(t->outbox, &ids);
    arr[len++] = '{';
    for (size_t i = 0; i < n; i++) {
        len += (size_t)snprintf(arr + len, cap - len, "%s%" PRId64, i ? "," : "", ids[i]);
    }
    arr[len++] = '}';
    arr[len] = '\0';
    int rc = txn__call(t, sql, arr, NULL);
    free(arr);
    return rc;
}

static int txn__send_delivered(nt_txn_t *t)
{
    return txn__send_ids(t, "SELECT needletrace.mark_alerts_delivered($1, $2::bigint[])",
                         t->outbox->n_delivered, nt_outbox_take_delivered);
}

static int txn__send_refused(nt_txn_t *t)
{
    return txn__send_ids(t, "SELECT needletrace.mark_alerts_refused($1, $2::bigint[])",
                         t->outbox->n_refused, nt_outbox_take_refused);
}

static int txn__send_gaps(nt_txn_t *t)
{
    nt_outbox_take_gaps(t->outbox);
    return txn__call(t, TXN__ALERT_COLUMNS "needletrace.check_sequence_gaps($1)", NULL, NULL);
}

static int txn__send_undelivered(nt_txn_t *t)
{
    char limit[16];
    snprintf(limit, sizeof(limit), "%d", NT_OUTBOX_PAGE);
    nt_outbox_take_undelivered(t->outbox);
    return txn__call(t, TXN__ALERT_COLUMNS "needletrace.undelivered_alerts($1, $2::int)", limit,
                     NULL);
}

static int txn__send_heartbeat(nt_txn_t *t)
{
    return txn__call(t, "SELECT needletrace.collector_heartbeat($1)", NULL, NULL);
}

static int txn__send_stopped(nt_txn_t *t)
{
    return txn__call(t, "SELECT needletrace.collector_stopped($1)", NULL, NULL);
}

/* The registry verdicts the batch quarantined messages for still hold (registry.h): refused
 * with NT003 otherwise, before any row is sent. */
static int txn__has_refusals_to_confirm(const nt_txn_t *t)
{
    return t->batch != NULL && t->batch->nrefusals > 0;
}

static int txn__send_confirm(nt_txn_t *t)
{
    const char *params[1] = {t->batch->refusals};
    return t->ops->send(t->conn, "SELECT needletrace.confirm_refusals($1)", 1, params);
}

/* Moves the checkpoint from where the batch starts to where it ends, after waiting for the batch
 * before it (its batch-order lock: order - 1) to end; the database refuses when the checkpoint is
 * not where the batch starts (SQLSTATE NT_TXN_CHECKPOINT_MOVED). A batch that follows another in
 * flight (t->after) never creates the first checkpoint. */
static int txn__send_checkpoint(nt_txn_t *t)
{
    char jid[24], from[24], to[24], prev[16];
    snprintf(jid, sizeof(jid), "%" PRId64, (int64_t)t->journal_id);
    snprintf(from, sizeof(from), "%" PRIu64, t->batch->first_pos);
    snprintf(to, sizeof(to), "%" PRIu64, t->batch->end_pos);
    snprintf(prev, sizeof(prev), "%" PRId32, (int32_t)((t->order - 1u) & 0x7fffffffu));
    const char *params[6] = {t->collector_id, jid, from, to, t->after ? "true" : "false", prev};
    return t->ops->send(t->conn,
                        "SELECT needletrace.move_checkpoint_keyed($1, $2::bigint, $3::bigint, "
                        "$4::bigint, $5::boolean, $6::int)",
                        6, params);
}

static int txn__send_commit(nt_txn_t *t)
{
    return t->ops->send(t->conn, "COMMIT", 0, NULL);
}

/* Gives a failure the class it really has: t->sqlstate becomes sqlstate, t->error says what
 * happened, then the server's SQLSTATE and message. */
static void txn__recast(nt_txn_t *t, const char *sqlstate, const char *what)
{
    char was[sizeof(t->error)];
    memcpy(was, t->error, sizeof(was));
    int n = snprintf(t->error, sizeof(t->error), "%s: SQLSTATE %.5s: %s", what, t->sqlstate, was);
    if (n >= (int)sizeof(t->error)) {
        memcpy(t->error + sizeof(t->error) - 4, "...", 4); /* the server's message cut short */
    }
    snprintf(t->sqlstate, sizeof(t->sqlstate), "%s", sqlstate);
}

/* No partition of events takes a row (23514 "no partition of relation ... found for row": the
 * default partition detached by hand): the database's fault, not the rows' -- never isolated as a
 * poison message but reported as the operational failure it is (SQLSTATE NT005: the sink stops and
 * says why, and retries). */
static void txn__no_partition(nt_txn_t *t)
{
    if (strcmp(t->sqlstate, "23514") == 0 && strstr(t->error, "no partition of relation") != NULL) {
        txn__recast(t, "NT005", "the events table has no partition for a row");
    }
}

/* A unique violation on the fast path: some rows are already stored (a redelivery). */
static int txn__copy_conflict(nt_txn_t *t)
{
    txn__no_partition(t);
    if (strcmp(t->sqlstate, "23505") != 0) {
        return 0;
    }
    t->staging = 1;
    t->failed = 0;
    return 1;
}

/* ---- the table --------------------------------------------------------------------------------
 */

/* Seals the rows the batch inserted into the collector's ledger chain (011_ledger.sql): after
 * the checkpoint move (the entry of the batch before it is committed) and the rules. */
static int txn__send_seal(nt_txn_t *t)
{
    char jid[24], from[24], to[24], msgs[16];
    snprintf(jid, sizeof(jid), "%" PRId64, (int64_t)t->journal_id);
    snprintf(from, sizeof(from), "%" PRIu64, t->batch->first_pos);
    snprintf(to, sizeof(to), "%" PRIu64, t->batch->end_pos);
    snprintf(msgs, sizeof(msgs), "%" PRIu32, t->batch->messages);
    const char *params[5] = {t->collector_id, jid, from, to, msgs};
    return t->ops->send(
        t->conn, "SELECT needletrace.ledger_seal($1, $2::bigint, $3::bigint, $4::bigint, $5::int)",
        5, params);
}

/* The seal failed: never the rows' fault (they are stored by then), so never isolated -- a
 * unique violation of the ledger's keys, say, would otherwise quarantine an innocent message.
 * Reported as the operational failure it is (SQLSTATE NT004: the sink stops and says why). */
static int txn__seal_failed(nt_txn_t *t)
{
    if (nt_pqutil_classify(t->sqlstate) == NT_PQ_DATA) {
        txn__recast(t, "NT004", "could not seal the batch in the ledger");
    }
    return 0;
}

/* The merge stores only identities event_keys did not hold when it started; another transaction
 * (a replica given the same redelivered message) may store one of them before it ends: a unique
 * violation here is that race, never the rows' fault, so never isolated -- the batch is retried
 * (SQLSTATE 40001, transient), and then finds the identity stored. */
static int txn__merge_raced(nt_txn_t *t)
{
    txn__no_partition(t);
    if (strcmp(t->sqlstate, "23505") == 0) {
        txn__recast(t, "40001", "another transaction stored some of the batch's events meanwhile");
    }
    return 0;
}

static const txn__step_t txn__steps[] = {
    {"begin", NULL, txn__send_begin, NULL, NULL, 0, -1},
    {"heartbeat", txn__heartbeat_due, txn__send_heartbeat, NULL, NULL, 0, -1},
    {"confirm", txn__has_refusals_to_confirm, txn__send_confirm, NULL, NULL, 0, -1},
    {"copy", txn__fast_path, txn__send_copy, txn__copy_again, txn__copy_conflict, 0,
     NT_STAGE_DB_COPY},
    {"stage", txn__staging_path, txn__send_stage, NULL, NULL, 0, NT_STAGE_DB_COPY},
    {"stage_copy", txn__staging_path, txn__send_stage_copy, txn__copy_again, NULL, 0,
     NT_STAGE_DB_COPY},
    {"merge", txn__staging_path, txn__send_merge, NULL, txn__merge_raced, 0, NT_STAGE_DB_COPY},
    /* The checkpoint before the rules: with two connections, a batch's transaction waits here
     * until the one before it ended, so that its rules see every earlier batch, and batches
     * commit in journal order. */
    {"checkpoint", txn__has_batch, txn__send_checkpoint, NULL, NULL, 0, NT_STAGE_DB_CHECKPOINT},
    {"rules", txn__has_batch, txn__send_rules, NULL, NULL, 1, NT_STAGE_DB_RULES},
    {"seal", txn__has_batch, txn__send_seal, NULL, txn__seal_failed, 0, NT_STAGE_DB_RULES},
    {"delivered", txn__has_deliveries, txn__send_delivered, NULL, NULL, 0, -1},
    {"refused", txn__has_refusals, txn__send_refused, NULL, NULL, 0, -1},
    {"gaps", txn__gaps_due, txn__send_gaps, NULL, NULL, 1, -1},
    {"undelivered", txn__undelivered_wanted, txn__send_undelivered, NULL, NULL, 1, -1},
    {"stopped", txn__stopping, txn__send_stopped, NULL, NULL, 0, -1},
    {"commit", NULL, txn__send_commit, NULL, NULL, 0, NT_STAGE_DB_COMMIT},
};

#define TXN__NSTEPS NT_ARRAY_SIZE(txn__steps)

/* Sends the statement of the first step from index i on that applies and has something to
 * send. Returns NT_TXN_PENDING or NT_E*. */
static int txn__run_from(nt_txn_t *t, size_t i)
{
    for (; i < TXN__NSTEPS; i++) {
        const txn__step_t *s = &txn__steps[i];
        if (s->applies != NULL && !s->applies(t)) {
            continue;
        }
        t->step = i;
        t->table = 0;
        t->failed = 0;
        if (s->send == txn__send_checkpoint && t->gate != NULL && !t->gate(t->gate_data)) {
            t->gated = 1; /* nt_txn_ungate sends it */
            return NT_TXN_PENDING;
        }
        int rc = s->send(t);
        if (rc == TXN__SKIP) {
            continue;
        }
        t->sent_us = nt_mono_us();
        return rc < 0 ? rc : NT_TXN_PENDING;
    }
    return NT_EINVAL; /* unreachable: commit always applies */
}

/* A statement failed and the step could not handle it: ROLLBACK. The owner decides what the
 * failure means and logs it (t->sqlstate, t->error). */
static int txn__rollback(nt_txn_t *t)
{
    nt_metrics.db_errors++;
    t->rolling_back = 1;
    int rc = t->ops->send(t->conn, "ROLLBACK", 0, NULL);
    return rc < 0 ? rc : NT_TXN_PENDING;
}

/* ---- public ---------------------------------------------------------------------------------- */

void nt_txn_init(nt_txn_t *t, const nt_txn_ops_t *ops, void *conn, const char *collector_id,
                 uint64_t journal_id, nt_outbox_t *outbox)
{
    memset(t, 0, sizeof(*t));
    t->ops = ops;
    t->conn = conn;
    t->collector_id = collector_id;
    t->journal_id = journal_id;
    t->outbox = outbox;
    t->maint_mask = NT_TXN_MAINT_ALL;
}

int nt_txn_begin(nt_txn_t *t, nt_batch_t *batch)
{
    t->batch = batch;
    t->staging = 0;
    t->rolling_back = 0;
    t->gated = 0;
    int rc = txn__run_from(t, 0);
    return rc == NT_TXN_PENDING ? 0 : rc;
}

int nt_txn_copy_in(nt_txn_t *t)
{
    const nt_copybuf_t *buf = &t->batch->tables[t->table].buf;
    return t->ops->put_copy(t->conn, buf->data, buf->len);
}

void nt_txn_rows(nt_txn_t *t, const PGresult *res)
{
    if (!txn__steps[t->step].alerts || t->rolling_back) {
        return;
    }
    int rc = PQnfields(res) == 4 ? 0 : NT_EDB;
    for (int r = 0; rc == 0 && r < PQntuples(res); r++) {
        rc = nt_outbox_collect(t->outbox, strtoll(PQgetvalue(res, r, 0), NULL, 10),
                               PQgetvalue(res, r, 1), PQgetvalue(res, r, 2), PQgetvalue(res, r, 3));
    }
    if (rc != 0 && !t->failed) {
        snprintf(t->sqlstate, sizeof(t->sqlstate), "XX000");
        snprintf(t->error, sizeof(t->error), "could not keep the raised alerts: %s",
                 nt_strerror(rc));
        t->failed = 1;
    }
}

void nt_txn_error(nt_txn_t *t, const char *sqlstate, const char *message)
{
    if (t->failed) {
        return;
    }
    snprintf(t->sqlstate, sizeof(t->sqlstate), "%s", sqlstate);
    snprintf(t->error, sizeof(t->error), "%s", message);
    t->failed = 1;
}

/* Adds the time of the statement that just answered to its stage (metrics.h). */
static void txn__account(const nt_txn_t *t)
{
    int stage = txn__steps[t->step].stage;
    if (stage >= 0 && !t->rolling_back && t->batch != NULL && t->sent_us != 0) {
        nt_metrics.stage_us[stage] += (uint64_t)(nt_mono_us() - t->sent_us);
    }
}

int nt_txn_done(nt_txn_t *t)
{
    txn__account(t);
    if (t->rolling_back) {
        t->rolling_back = 0;
        return NT_TXN_ROLLED_BACK;
    }
    const txn__step_t *s = &txn__steps[t->step];
    if (t->failed) {
        if (s->on_error != NULL && s->on_error(t)) {
            return txn__run_from(t, t->step + 1);
        }
        return txn__rollback(t);
    }
    if (s->again != NULL && s->again(t)) {
        int rc = s->send(t);
        t->sent_us = nt_mono_us();
        return rc < 0 ? rc : NT_TXN_PENDING;
    }
    if (t->step + 1 == TXN__NSTEPS) {
        return NT_TXN_COMMITTED;
    }
    return txn__run_from(t, t->step + 1);
}

int nt_txn_ungate(nt_txn_t *t)
{
    if (!t->gated) {
        return 0;
    }
    t->gated = 0;
    int rc = txn__run_from(t, t->step);
    return rc == NT_TXN_PENDING ? 0 : rc;
}

int nt_txn_begun(const nt_txn_t *t)
{
    return t->step > 0 && !t->rolling_back;
}

unsigned nt_txn_step_kind(const nt_txn_t *t)
{
    const char *name = txn__steps[t->step].name;
    if (strcmp(name, "delivered") == 0 || strcmp(name, "refused") == 0) {
        return NT_TXN_MAINT_RECORD;
    }
    if (strcmp(name, "gaps") == 0) {
        return NT_TXN_MAINT_GAPS;
    }
    if (strcmp(name, "heartbeat") == 0) {
        return NT_TXN_MAINT_HEARTBEAT;
    }
    if (strcmp(name, "stopped") == 0) {
        return NT_TXN_MAINT_STOPPED;
    }
    return strcmp(name, "undelivered") == 0 ? NT_TXN_MAINT_UNDELIVERED : 0;
}

const char *nt_txn_step_name(const nt_txn_t *t)
{
    return t->rolling_back ? "rollback" : txn__steps[t->step].name;
}
