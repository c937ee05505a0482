/* txn.h -- one database transaction of the sink, driven by a table of steps.
 *
 * A batch transaction carries a batch (batch.h) and the checkpoint that covers it; a
 * maintenance transaction carries only alert bookkeeping (outbox.h). The steps, in order, each
 * run only when it applies:
 *   begin        BEGIN (and SAVEPOINT nt_fast for a batch)
 *   heartbeat    collector_heartbeat(): this replica is alive                    \  maintenance
 *   copy         fast path: binary COPY of each table straight into needletrace.<table>
 *   stage        after a unique violation in copy: ROLLBACK TO SAVEPOINT, temp staging tables
 *   stage_copy   COPY of each table into its staging table
 *   merge        INSERT ... SELECT ... ON CONFLICT DO NOTHING from the staging tables
 *   rules        evaluate_rules(): the alerts of the events this transaction inserted
 *   delivered    mark_alerts_delivered(): the deliveries the broker acknowledged  \  maintenance
 *   refused      mark_alerts_refused(): the ones it refused (retried later)      |  ...
 *   gaps         check_sequence_gaps(): the time-based rule, when due            |  transactions
 *   undelivered  undelivered_alerts(): a page of alerts not yet published        |  only
 *   stopped      collector_stopped(): the last transaction of a clean stop       /
 *   checkpoint   advance_checkpoint(): the collector's journal position moves from the batch's
 *                first position to its end, in the same transaction as its rows; refused with
 *                SQLSTATE NT_TXN_CHECKPOINT_MOVED when it is not where this collector left it
 *   commit       COMMIT
 * Any other failed statement rolls the transaction back (ROLLBACK); the owner reads t->sqlstate
 * and t->error, decides what the failure means (isolate.h) and logs it.
 *
 * The transaction does not own a connection: it sends through nt_txn_ops_t, and the owner
 * feeds the results back (nt_txn_copy_in, nt_txn_rows, nt_txn_error, nt_txn_done). So the
 * sink may run it over any of its connections, and a unit test over a fake one. */
#ifndef NEEDLETRACE_TXN_H
#define NEEDLETRACE_TXN_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#include "needletrace/batch.h"
#include "needletrace/outbox.h"

/* How the transaction reaches the database. Each returns 0, or NT_E* when the connection
 * failed (the owner handles that; the transaction is then abandoned). */
typedef struct {
    /* One command: simple protocol when nparams is 0, else text parameters $1..$nparams. */
    int (*send)(void *conn, const char *sql, int nparams, const char *const *params);
    /* All the data of the COPY the server waits for, and its end. */
    int (*put_copy)(void *conn, const void *data, size_t len);
} nt_txn_ops_t;

/* The kinds of bookkeeping, for nt_txn_t.maint_mask (the three of alerts after nt_txn_init): a
 * kind that keeps failing can be left out, so that it never holds back the others. */
#define NT_TXN_MAINT_RECORD      1u /* delivered + refused */
#define NT_TXN_MAINT_GAPS        2u
#define NT_TXN_MAINT_UNDELIVERED 4u
#define NT_TXN_MAINT_ALL         7u  /* the alert bookkeeping */
#define NT_TXN_MAINT_HEARTBEAT   8u  /* collector_heartbeat(): this replica is alive */
#define NT_TXN_MAINT_STOPPED     16u /* collector_stopped(): this replica stops cleanly */

/* The SQLSTATE of a checkpoint that is not where the collector left it (advance_checkpoint in
 * collector/sql/007_checkpoint_resets.sql): compare it with the journal again. */
#define NT_TXN_CHECKPOINT_MOVED "NT001"

/* What nt_txn_done() says. */
enum {
    NT_TXN_PENDING = 0,     /* the next statement was sent: wait for its results */
    NT_TXN_COMMITTED = 1,   /* COMMIT succeeded */
    NT_TXN_ROLLED_BACK = 2, /* a statement failed; ROLLBACK finished: retry later */
};

typedef struct {
    const nt_txn_ops_t *ops;
    void *conn;
    const char *collector_id; /* $1 of every function call */
    uint64_t journal_id;
    nt_batch_t *batch;   /* NULL: a maintenance transaction */
    nt_outbox_t *outbox; /* where alert rows go and bookkeeping comes from */
    size_t step;         /* index in the step table */
    int table;           /* the table of the current COPY */
    int staging;         /* took the staging + ON CONFLICT path */
    unsigned maint_mask; /* which bookkeeping a maintenance transaction runs (NT_TXN_MAINT_*) */
    int after;           /* the batch follows another in flight (move_checkpoint's p_after) */
    uint32_t order;      /* the batch's number: it takes batch-order lock `order` at BEGIN and
                            waits for lock `order - 1` before moving the checkpoint */
    int (*gate)(void *gate_data); /* NULL, or 0 while the checkpoint may not be moved yet */
    void *gate_data;
    int gated;        /* waiting at the gate: nothing in flight until nt_txn_ungate */
    int64_t sent_us;  /* when the statement in flight was sent (the per-stage metrics) */
    int rolling_back; /* ROLLBACK sent */
    int failed;       /* the current command failed */
    char sqlstate[6]; /* of the first failure */
    char error[512];  /* its primary message */
    char sql[8192];
} nt_txn_t;

/* Prepares t for transactions of one collector over conn (nothing is sent). */
void nt_txn_init(nt_txn_t *t, const nt_txn_ops_t *ops, void *conn, const char *collector_id,
                 uint64_t journal_id, nt_outbox_t *outbox);

/* Starts a transaction for batch (finished with nt_batch_finish; NULL for a maintenance
 * transaction): sends BEGIN. Returns 0 or the ops' NT_E*. */
int nt_txn_begin(nt_txn_t *t, nt_batch_t *batch);

/* The server waits for the data of the current COPY: sends it. 0 or the ops' NT_E*. */
int nt_txn_copy_in(nt_txn_t *t);
/* A row set of the current statement (alerts, for the steps that return them). */
void nt_txn_rows(nt_txn_t *t, const PGresult *res);
/* A statement of the current command failed (only the first failure is kept). */
void nt_txn_error(nt_txn_t *t, const char *sqlstate, const char *message);
/* The current command finished: sends the next step's statement, or ends. Returns
 * NT_TXN_PENDING, NT_TXN_COMMITTED, NT_TXN_ROLLED_BACK, or the ops' NT_E*. */
int nt_txn_done(nt_txn_t *t);

/* When the transaction waits at its gate (t->gated): sends the checkpoint move if the gate opens
 * now. 0 (sent, or still waiting), or NT_E* when the send failed (the connection dropped). */
int nt_txn_ungate(nt_txn_t *t);

/* 1 once the transaction's BEGIN (with its batch-order lock) has answered: the batch after it may
 * send its checkpoint move, which waits in the database for this transaction to end. */
int nt_txn_begun(const nt_txn_t *t);

/* The name of the step in flight ("copy", "rules", ...), for logs and tests. */
const char *nt_txn_step_name(const nt_txn_t *t);

/* The kind of bookkeeping the step in flight belongs to (NT_TXN_MAINT_*), 0 for the others. */
unsigned nt_txn_step_kind(const nt_txn_t *t);

#endif
