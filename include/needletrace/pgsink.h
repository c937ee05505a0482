/* pgsink.h -- the PostgreSQL sink: reads the journal from the checkpoint, one transaction per
 * batch.
 *
 * The sink ties the database stage together: it reads durable journal records into a batch
 * (batch.h) up to its bounds (events, bytes, max delay), runs one transaction per batch over
 * its connection (txn.h over pgconn.h: COPY, rules, alert bookkeeping, checkpoint, COMMIT),
 * releases the journal up to each commit's checkpoint, and hands the alerts each commit
 * raised to its owner for publishing. When idle it runs maintenance transactions for the
 * alert outbox (outbox.h) and this replica's heartbeat (collector_heartbeat: at connect, then
 * every 5 s; the other replicas take over its undelivered alerts only once it is gone). On any
 * connection error the batches are dropped, the connection re-made with capped exponential backoff
 * plus jitter, the checkpoint re-read, and reading resumes from it, so nothing is lost or doubled.
 * A batch whose statement is cancelled for running too long (SQLSTATE 57014: the connection's
 * statement_timeout, or the watchdog's cancel request) is no poison: it is retried after a backoff
 * in batches of half its size, the bound doubling again after each commit, while /readyz and
 * needletrace_db_slow say the database is slow. A checkpoint that does not fit the journal (another
 * journal's, ahead of its end, behind its start, not on a record: checkpoint.h) stops ingest --
 * connected, committing and releasing nothing, logged once per connect, reported by
 * nt_pgsink_stalled() -- until an operator runs `needletrace journal accept` and restarts. Journal
 * segments are released only up to a checkpoint confirmed on the current connection: read back
 * at connect, or committed by a COMMIT whose answer arrived. */
#ifndef NEEDLETRACE_PGSINK_H
#define NEEDLETRACE_PGSINK_H

#include <stdint.h>
#include <uv.h>

#include "needletrace/alert.h"
#include "needletrace/journal.h"

typedef struct nt_pgsink_s nt_pgsink_t;

typedef struct {
    const char *conninfo;
    const char *collector_id;
    uint32_t max_events;   /* batch bound: events */
    uint32_t max_bytes;    /* batch bound: payload bytes */
    uint32_t max_delay_ms; /* batch bound: wait for more records at most this long */
    uint32_t reconnect_min_ms;
    uint32_t reconnect_max_ms;
    uint64_t statement_timeout_ms; /* the connection's statement_timeout; 0 = none */
    uint64_t watchdog_ms; /* a transaction without an answer this long: cancel (pgconn.h) */
    uint32_t connections; /* 1, or 2: a second connection takes the next batch (pgsink_lane.c) */
    int allow_privileged; /* 1: may write as a superuser or a member of the tables' owner */
    const char *password; /* libpq's password keyword (database.password_file); NULL: none */
} nt_pgsink_options_t;

/* Called after a commit with the alerts it raised, and with undelivered alerts found after
 * nt_pgsink_request_undelivered(). The array is valid during the call only. */
typedef void (*nt_pgsink_alerts_cb)(nt_pgsink_t *s, const nt_alert_t *alerts, size_t n, void *data);

/* Called after each commit with the new checkpoint (the journal is already released). */
typedef void (*nt_pgsink_commit_cb)(nt_pgsink_t *s, uint64_t checkpoint, void *data);
/* Called once when a drain finished: status 0 = everything durable was committed; NT_EDB =
 * nothing could be, because the checkpoint does not fit the journal (see checkpoint.h). */
typedef void (*nt_pgsink_drain_cb)(nt_pgsink_t *s, int status, void *data);

/* Creates the sink over journal (which must outlive it); on_commit follows every batch commit.
 * Nothing is connected before nt_pgsink_start. Returns 0, NT_ECONFIG (opts->conninfo is not
 * valid libpq syntax) or NT_ENOMEM. */
int nt_pgsink_init(uv_loop_t *loop, nt_pgsink_t **out, const nt_pgsink_options_t *opts,
                   nt_journal_t *journal, nt_pgsink_commit_cb on_commit, void *data);
/* Sets the callback run when the database role is refused (a superuser, or a member of the role
 * that owns the evidence tables, without opts->allow_privileged): logged, nothing ingested; the
 * owner should stop. */
void nt_pgsink_set_refused_cb(nt_pgsink_t *s, void (*on_refused)(nt_pgsink_t *s, void *data));
/* Sets the alert callback (before nt_pgsink_start). */
void nt_pgsink_set_alerts_cb(nt_pgsink_t *s, nt_pgsink_alerts_cb on_alerts);
/* Sets the check (called with the sink's data) that says whether this replica can publish alerts
 * now: its heartbeat is written only then, so that the other replicas take over the alerts of
 * one that reaches the database but not the broker (after replica_gone_after). */
void nt_pgsink_set_publish_check(nt_pgsink_t *s, int (*can_publish)(void *data));
/* Records that the broker acknowledged (refused = 0) or refused (refused = 1) the publication of
 * an alert; written to the database by the next maintenance transaction. */
void nt_pgsink_alert_delivered(nt_pgsink_t *s, int64_t alert_id, int refused);
/* Asks for the alerts not yet published (after the broker connection came back). */
void nt_pgsink_request_undelivered(nt_pgsink_t *s);

/* Starts connecting; once connected and the checkpoint is read, consumes the journal. 0. */
int nt_pgsink_start(nt_pgsink_t *s);
/* Tells the sink that the journal's durable end moved. Cheap; call after every sync. */
void nt_pgsink_wakeup(nt_pgsink_t *s);
/* Commits everything durable now (up to the journal end at the call; what is journaled later
 * stays for the next start), then calls cb -- at once, with NT_EDB, when ingest is stopped by a
 * checkpoint mismatch; the owner bounds the wait otherwise. */
void nt_pgsink_drain(nt_pgsink_t *s, nt_pgsink_drain_cb cb, void *data);

/* The last step of a graceful stop, in one transaction now: records in the database the
 * deliveries and refusals of alerts the broker answered so far (a restart then does not publish
 * them again) and marks this replica stopped (collector_stopped: the other replicas take its
 * undelivered alerts over at once; no heartbeat follows). cb gets 0 once committed, or NT_EDB when
 * the database cannot take it now (not connected, ingest stopped, or the transaction failed: those
 * alerts are published again later, at least once, and the others take over once the heartbeat
 * is older than replica_gone_after). */
void nt_pgsink_record_deliveries(nt_pgsink_t *s, nt_pgsink_drain_cb cb, void *data);
/* 1 when connected and the checkpoint is read (whether it fits the journal or not: see
 * nt_pgsink_stalled). */
int nt_pgsink_ready(const nt_pgsink_t *s);
/* 1 when ingest is stopped because the checkpoint does not fit the journal (checkpoint.h), the
 * database is slow (a statement was cancelled for running too long, and no batch has committed
 * since), batches fail for a reason no message causes (see isolate.h), or alert bookkeeping failed
 * several times in a row, with the reason in reason (for /readyz); 0 otherwise. */
int nt_pgsink_stalled(const nt_pgsink_t *s, char *reason, size_t len);
/* Closes the connection and handles; frees itself when they are closed. */
void nt_pgsink_close(nt_pgsink_t *s);

#endif
