/* pgsink_internal.h -- what the files of the sink share: its state (pgsink.c reads the journal
 * into batches and starts transactions; pgsink_conn.c handles the connection and the checkpoint
 * at every connect; pgsink_done.c settles a transaction that ended). Not a public header. */
#ifndef NEEDLETRACE_PGSINK_INTERNAL_H
#define NEEDLETRACE_PGSINK_INTERNAL_H

#include <stdint.h>
#include <uv.h>

#include "needletrace/batch.h"
#include "needletrace/checkpoint.h"
#include "needletrace/isolate.h"
#include "needletrace/outbox.h"
#include "needletrace/pgconn.h"
#include "needletrace/pgsink.h"
#include "needletrace/txn.h"

/* Maintenance transactions rolled back in a row before /readyz says so. */
#define NT_PGSINK__MAINT_STALLED 3
/* The SQLSTATE of a statement cancelled (statement_timeout, or a cancel request). */
#define NT_PGSINK__QUERY_CANCELED "57014"
/* Kinds of bookkeeping with their own backoff: index k is the NT_TXN_MAINT_* bit 1 << k
 * (record, gaps, undelivered, heartbeat). */
#define NT_PGSINK__KINDS 4
/* How often this replica records that it is alive (collector_heartbeat): well below the
 * setting replica_gone_after (default 1 minute). */
#define NT_PGSINK__HEARTBEAT_US (5 * 1000000)

typedef enum {
    NT_PGSINK__DOWN = 0,   /* no connection; pgconn reconnects */
    NT_PGSINK__CHECKPOINT, /* connected, reading the checkpoint */
    NT_PGSINK__MISMATCH,   /* connected, the checkpoint does not fit the journal: ingest stopped */
    NT_PGSINK__IDLE,       /* no transaction in flight */
    NT_PGSINK__BUSY,       /* a transaction in flight */
    NT_PGSINK__CLOSED,
} nt_pgsink__state_t;

/* The second connection (pgsink_lane.c): it takes the batch after the one in flight on the first
 * connection, whose transaction it overlaps; the first connection keeps everything else (the
 * checkpoint read at connect, bookkeeping, isolating a refused message). */
typedef enum {
    NT_PGSINK__LANE_OFF = 0, /* database.connections = 1 */
    NT_PGSINK__LANE_DOWN,    /* not connected; pgconn reconnects */
    NT_PGSINK__LANE_IDLE,
    NT_PGSINK__LANE_BUSY, /* a batch's transaction in flight */
} nt_pgsink__lane_state_t;

typedef struct {
    nt_pgsink__lane_state_t state;
    nt_pgconn_t *conn;
    nt_txn_t txn;
    nt_outbox_t outbox;  /* the alerts its transaction raised (no bookkeeping of its own) */
    nt_batch_t *batch;   /* its batch (one of the sink's three) */
    int committed_early; /* COMMIT answered before the first connection's batch was settled */
    int resting;         /* its last batch failed: unused until that range is committed... */
    uint64_t rest_until; /* ...up to here (by the first connection) */
    int doomed; /* the batch before it was not committed: left to end by itself (pgsink_lane.c) */
    int64_t started_us;
} nt_pgsink__lane_t;

struct nt_pgsink_s {
    nt_pgsink_options_t opts;
    char *collector_id;
    nt_journal_t *journal;
    nt_pgsink_commit_cb on_commit;
    nt_pgsink_alerts_cb on_alerts;
    int (*can_publish)(void *data); /* NULL, or 0 while alerts cannot reach the broker */
    void *data;

    nt_pgconn_t *conn;
    nt_txn_t txn;
    nt_outbox_t outbox;
    uv_timer_t linger_timer; /* a batch waits at most max_delay_ms for more records */
    uv_idle_t fill_idle;     /* the next chunk of the building batch, on the next turn */
    uv_timer_t tick_timer;   /* 1 s: alert bookkeeping when idle */
    int handles_open;

    nt_pgsink__state_t state;
    int checkpoint_failed;
    int checkpoint_read;        /* the checkpoint query's row set arrived */
    int priv_pending;           /* at connect: the role's privileges are being checked first */
    int priv_read;              /* their row arrived */
    int priv_super, priv_owner; /* a superuser; a member of the evidence tables' owner */
    int priv_warned;            /* the allowed privileged role was logged */
    char priv_role[NT_MAX_ID_LEN * 2 + 1];
    void (*on_refused)(nt_pgsink_t *s, void *data); /* the role is refused: stop */
    char checkpoint_error[512];
    char checkpoint_sqlstate[6];
    nt_checkpoint_check_t check; /* the comparison made at the last connect */
    char mismatch[400];          /* why ingest is stopped, for /readyz ("" when it is not) */

    nt_batch_t batches[3];
    nt_batch_t *building;   /* takes records from the journal */
    nt_batch_t *sending;    /* the batch of the transaction in flight on the first connection */
    nt_pgsink__lane_t lane; /* the second connection and its batch */
    uint32_t batch_order;   /* the number of the last batch dispatched (txn.h: order) */
    int checkpoint_exists;  /* this connection read or committed the checkpoint row: a batch may
                               follow another (move_checkpoint's p_after needs the row) */
    int first_deferred;     /* the first connection's batch committed before the second's older
                               one was settled: settled right after it (state stays BUSY) */
    uint64_t read_pos;      /* next journal position to read */
    uint64_t committed;     /* checkpoint confirmed on the current connection (read or committed) */
    uint64_t known_end;     /* the highest position the database can know of (checkpoint.h) */
    int linger_expired;
    int64_t txn_started_us;
    char read_failure[512]; /* the journal read failure last logged, "" when none */

    uint32_t slow_limit; /* after a statement timeout: at most this many messages per batch */
    int slow_batch;      /* the last statement timeout was a batch's (a maintenance one else) */
    char slow[200];      /* why the database is called slow, for /readyz ("" when it is not) */

    nt_isolate_t iso;        /* finding a message the database refuses */
    nt_registry_t registry;  /* pens the device registry refused (NT002) */
    uint64_t registry_pos;   /* where the last batch the registry refused started... */
    unsigned registry_tries; /* ...and how many times in a row a batch there was refused */
    int last_was_batch;      /* maintenance and batches take turns */
    unsigned maint_failures[NT_PGSINK__KINDS]; /* per kind of bookkeeping: failed in a row */
    int64_t maint_next_us[NT_PGSINK__KINDS];   /* per kind: not before this monotonic time */
    char maint_error[512];                     /* why the last one rolled back */

    int64_t heartbeat_next_us; /* the next heartbeat is due then (0: at once) */
    int stop_marked;           /* the last transaction of a graceful stop has begun */

    int draining;
    uint64_t drain_target; /* the journal end when the drain began */
    nt_pgsink_drain_cb drain_cb;
    void *drain_data;
    nt_pgsink_drain_cb record_cb; /* nt_pgsink_record_deliveries: waits for its transaction */
    void *record_data;
};

/* The transaction's operations over a pgconn, for both connections (pgsink.c). */
extern const nt_txn_ops_t nt_pgsink__txn_ops;

/* The connection callbacks (pgsink_conn.c). */
extern const nt_pgconn_cbs_t nt_pgsink__conn_cbs;

/* Moves durable journal records into the building batch, up to its bounds (pgsink.c). */
void nt_pgsink__fill(nt_pgsink_t *s);
/* Starts the next transaction when idle and one is due; ends a drain (pgsink.c). */
void nt_pgsink__maybe_dispatch(nt_pgsink_t *s);
/* Forgets both batches: reading starts over from the checkpoint (pgsink.c). */
void nt_pgsink__discard_batches(nt_pgsink_t *s);
/* Deletes the journal segments wholly behind pos, a checkpoint confirmed on the current
 * connection (pgsink.c). */
void nt_pgsink__release(nt_pgsink_t *s, uint64_t pos);
/* Sends the checkpoint query (state NT_PGSINK__CHECKPOINT): at connect, and on the same
 * connection when the database says the checkpoint moved (pgsink_conn.c). */
void nt_pgsink__read_checkpoint(nt_pgsink_t *s);

/* The second connection (pgsink_lane.c): created with the sink when opts.connections is 2. */
int nt_pgsink__lane_init(nt_pgsink_t *s, uv_loop_t *loop, const nt_pgconn_options_t *copts);
void nt_pgsink__lane_start(nt_pgsink_t *s);
void nt_pgsink__lane_close(nt_pgsink_t *s);
/* Sends the building batch on the second connection when it may take it; 1 when it did. */
int nt_pgsink__lane_dispatch(nt_pgsink_t *s);
/* The first connection settled its batch: settles the second's if it committed meanwhile. */
void nt_pgsink__lane_after_first(nt_pgsink_t *s);
/* Everything after the checkpoint is read again: the second connection's transaction (which can
 * no longer commit, unless it already did) is left to end by itself; nothing waits for it. */
void nt_pgsink__lane_abort(nt_pgsink_t *s, const char *why);
/* 1 while the second connection holds a batch that counts (not one left to end by itself). */
int nt_pgsink__lane_busy(const nt_pgsink_t *s);
/* 1 while the second connection holds the oldest batch in flight. */
int nt_pgsink__lane_holds_older(const nt_pgsink_t *s);
/* No isolation, slow database or stop under way, and a second connection: a batch may follow
 * another in flight. */
int nt_pgsink__all_well(const nt_pgsink_t *s);
/* The first connection's gate (txn.h): closed while the second holds an older batch that has not
 * moved the checkpoint. */
int nt_pgsink__first_gate(void *data);
/* Sends the checkpoint move of a transaction waiting at its gate, when it opened. */
void nt_pgsink__ungate(nt_pgsink_t *s);
/* Settles a committed batch: checkpoint, metrics, journal release, commit callback (pgsink_done.c).
 */
void nt_pgsink__settle_batch(nt_pgsink_t *s, nt_batch_t *b, int64_t started_us);

/* Calls the nt_pgsink_record_deliveries callback once with status (pgsink.c). */
void nt_pgsink__recorded(nt_pgsink_t *s, int status);

/* COMMIT succeeded on the current connection (pgsink_done.c). */
void nt_pgsink__committed(nt_pgsink_t *s);
/* ROLLBACK finished: decides what the failure means, logs it once (pgsink_done.c). */
void nt_pgsink__rolled_back(nt_pgsink_t *s);
int nt_pgsink__registry_refused(nt_pgsink_t *s, const nt_pgconn_t *c);

#endif
