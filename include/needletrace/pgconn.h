/* pgconn.h -- one PostgreSQL connection's lifecycle on the loop: connect, watchdog, reconnect.
 *
 * Non-blocking libpq (PQconnectStartParams over the arrays of pgparams.h, the socket watched by
 * fdwatch.h and re-read after every connect poll); host names are looked up first, off the loop
 * (pglookup.h), and passed as hostaddr, so that libpq never blocks the loop in getaddrinfo. TCP
 * keepalives and a user timeout notice a peer that vanished; the server's statement_timeout cancels
 * a statement that runs too long; a watchdog armed by the owner notices a database that stops
 * answering, cancels the statement in flight and, if that is not answered either, drops the
 * connection. Any failure of the connection drops it and connects again after a capped exponential
 * backoff with jitter; the owner hears on_lost and starts over from its checkpoint when
 * on_connected comes again.
 *
 * The owner sends one command at a time (nt_pgconn_send) and gets its results through the
 * callbacks: on_copy_in when the server waits for COPY data, on_rows for each row set, on_error
 * for each failed statement (SQLSTATE and primary message), on_done when the command finished.
 * The connection knows nothing of batches or transactions (txn.h does). */
#ifndef NEEDLETRACE_PGCONN_H
#define NEEDLETRACE_PGCONN_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct nt_pgconn_s nt_pgconn_t;

typedef struct {
    const char *conninfo;      /* libpq connection string or URI (see pgparams.h) */
    uint32_t reconnect_min_ms; /* backoff bounds; 0 = 250 ms */
    uint32_t reconnect_max_ms;
    const char *collector_id;      /* names the connection (fallback_application_name) */
    uint64_t statement_timeout_ms; /* set on the connection (options); 0 = none */
    int secondary; /* not the sink's first connection: leaves needletrace_db_connected alone */
    const char *password; /* libpq's password keyword (database.password_file); NULL: none */
} nt_pgconn_options_t;

typedef struct {
    /* Connected, with no command in flight: the owner may send. */
    void (*on_connected)(nt_pgconn_t *c, void *data);
    /* The connection was dropped (logged); a reconnect is scheduled. */
    void (*on_lost)(nt_pgconn_t *c, void *data);
    /* The retry timer armed by nt_pgconn_backoff() fired while connected. */
    void (*on_retry)(nt_pgconn_t *c, void *data);
    /* Results of the command in flight. */
    void (*on_copy_in)(nt_pgconn_t *c, void *data);
    void (*on_rows)(nt_pgconn_t *c, const PGresult *res, void *data);
    void (*on_error)(nt_pgconn_t *c, const char *sqlstate, const char *message, void *data);
    void (*on_done)(nt_pgconn_t *c, void *data);
} nt_pgconn_cbs_t;

/* Creates a connection (not yet connecting). 0, NT_ECONFIG when conninfo is not valid libpq
 * syntax, or NT_ENOMEM. */
int nt_pgconn_init(uv_loop_t *loop, nt_pgconn_t **out, const nt_pgconn_options_t *opts,
                   const nt_pgconn_cbs_t *cbs, void *data);

/* Starts connecting now: looks the host names up, then connects. The watchdog is armed for
 * NT_PGCONN_CONNECT_TIMEOUT_MS (lookup and connect together); the owner disarms it once its first
 * query (e.g. the checkpoint) answered. A name that gives no address fails the attempt, retried
 * after the backoff like any failed connect. */
void nt_pgconn_connect(nt_pgconn_t *c);

/* Sends one command: with nparams 0, by the simple protocol (several statements allowed);
 * otherwise by the extended protocol with text parameters $1..$nparams. Returns 0, or
 * NT_EDB when it could not be sent (the connection is then dropped: on_lost follows). */
int nt_pgconn_send(nt_pgconn_t *c, const char *sql, int nparams, const char *const *params);

/* Sends all the data of the COPY the server waits for, and its end. 0 or NT_EDB (dropped). */
int nt_pgconn_put_copy(nt_pgconn_t *c, const void *data, size_t len);

#define NT_PGCONN_CONNECT_TIMEOUT_MS 15000 /* to connect and answer the first query */
#define NT_PGCONN_CANCEL_GRACE_MS    5000  /* after a cancel request, before giving up */

/* A database that does not answer within ms (from now): when a command is in flight, its
 * statement is cancelled (PQcancel, on a thread of its own: see bgcall.h), so that the backend
 * stops and releases its locks; the command then fails with SQLSTATE 57014 (on_error) and the
 * connection stays. Without an answer NT_PGCONN_CANCEL_GRACE_MS later -- or with nothing in
 * flight, or while connecting -- the connection is dropped (nt_pgconn_fail). Arming again, or
 * disarming, ends a cancel episode. */
void nt_pgconn_arm_watchdog(nt_pgconn_t *c, uint64_t ms);
void nt_pgconn_disarm_watchdog(nt_pgconn_t *c);

/* Drops the connection (logged with why), schedules a reconnect, calls on_lost. */
void nt_pgconn_fail(nt_pgconn_t *c, const char *why);

/* Arms the retry timer after the owner's own failure: on_retry fires after the next backoff
 * delay (each call without a success in between doubles it, up to the maximum). With restart,
 * an armed timer starts over with the longer delay (a rolled-back batch: the database refused
 * it); without, an armed timer is left as it is (a failure that will be retried anyway). */
void nt_pgconn_backoff(nt_pgconn_t *c, int restart);
/* 1 while the retry timer runs (the owner should wait for it). */
int nt_pgconn_backing_off(const nt_pgconn_t *c);
/* A success: the next failure waits the shortest delay again. */
void nt_pgconn_backoff_reset(nt_pgconn_t *c);

/* The DETAIL field of the last error result on this connection ("" when it had none; cut at
 * 32 KiB). Valid until the next result. */
const char *nt_pgconn_error_detail(const nt_pgconn_t *c);

/* 1 when connected (whether or not a command is in flight). */
int nt_pgconn_connected(const nt_pgconn_t *c);

/* Closes the connection and the handles; frees itself once the loop closed them. No callback
 * runs after the call. */
void nt_pgconn_close(nt_pgconn_t *c);

#endif
