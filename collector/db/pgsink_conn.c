/* pgsink_conn.c -- the sink's connection callbacks, and the checkpoint compared with the journal
 * at every connect: resume there, or stop ingesting and say why. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"
#include "pgsink_internal.h"

/* ---- the checkpoint ---------------------------------------------------------------------------
 */

void nt_pgsink__read_checkpoint(nt_pgsink_t *s)
{
    const char *params[1] = {s->collector_id};
    s->state = NT_PGSINK__CHECKPOINT;
    s->priv_pending = 0;
    s->checkpoint_failed = 0;
    s->checkpoint_read = 0;
    nt_pgconn_arm_watchdog(s->conn, NT_PGCONN_CONNECT_TIMEOUT_MS);
    nt_pgconn_send(s->conn, NT_CHECKPOINT_QUERY, 1, params);
}

static void pgsink__checkpoint_rows(nt_pgsink_t *s, const PGresult *res)
{
    if (nt_checkpoint_from_result(&s->check, res) != 0) {
        s->checkpoint_failed = 1;
        snprintf(s->checkpoint_sqlstate, sizeof(s->checkpoint_sqlstate), "XX000");
        snprintf(s->checkpoint_error, sizeof(s->checkpoint_error),
                 "unexpected result of the checkpoint query (%d rows of %d columns)",
                 PQntuples(res), PQnfields(res));
        return;
    }
    s->checkpoint_read = 1;
}

/* The checkpoint fits the journal (or there is none): resume there. Segments behind it are
 * deleted: it was just read back on this connection. */
static void pgsink__resume(nt_pgsink_t *s)
{
    uint64_t pos = s->check.resume;
    s->read_pos = pos;
    s->committed = pos;
    s->checkpoint_exists = s->check.verdict != NT_CHECKPOINT_NONE;
    s->mismatch[0] = '\0';
    nt_metrics.db_checkpoint_mismatch = 0;
    if (pos > s->check.start) {
        nt_pgsink__release(s, pos);
    }
    nt_metrics.journal_checkpoint = pos;
    nt_pgconn_backoff_reset(s->conn);
    nt_log(NT_LOG_INFO, "db",
           "connected to the database; %s at journal position %" PRIu64 " (%" PRIu64
           " bytes to replay)",
           s->check.verdict == NT_CHECKPOINT_NONE ? "no checkpoint yet, starting" : "resuming", pos,
           nt_journal_end(s->journal) - pos);
    s->state = NT_PGSINK__IDLE;
    s->heartbeat_next_us = 0; /* the heartbeat goes first: alive before any alert is raised */
    s->last_was_batch = 1;
    nt_pgsink__fill(s);
    nt_pgsink__maybe_dispatch(s);
}

/* The checkpoint does not fit the journal: stay connected, ingest nothing, release nothing, say
 * why once (per connection) in the log, and in /readyz and a metric until the next connect. A
 * checkpoint ahead of the journal is held in the database (checkpoint.h), so that the journal,
 * which goes on growing, never grows into it unnoticed. */
static void pgsink__mismatch(nt_pgsink_t *s)
{
    char why[1536];
    s->state = NT_PGSINK__MISMATCH;
    nt_pgsink__discard_batches(s);
    nt_metrics.db_checkpoint_mismatch = 1;
    nt_checkpoint_brief(&s->check, s->mismatch, sizeof(s->mismatch));
    nt_log(NT_LOG_ERROR, "db", "%s",
           nt_checkpoint_explain(&s->check, s->collector_id, why, sizeof(why)));
    if (s->check.verdict == NT_CHECKPOINT_AHEAD && s->check.held != NT_CHECKPOINT_AHEAD) {
        char nums[5][24];
        const char *params[7];
        nt_checkpoint_hold_params(&s->check, s->collector_id, nums, params);
        nt_pgconn_arm_watchdog(s->conn, NT_PGCONN_CONNECT_TIMEOUT_MS);
        nt_pgconn_send(s->conn, NT_CHECKPOINT_HOLD, 7, params); /* a failure drops the connection */
        return;
    }
    nt_pgsink__maybe_dispatch(s); /* a drain waiting for the connection ends now */
}

static void pgsink__checkpoint_done(nt_pgsink_t *s)
{
    if (s->checkpoint_failed || !s->checkpoint_read) {
        if (!s->checkpoint_failed) {
            snprintf(s->checkpoint_error, sizeof(s->checkpoint_error), "no row set returned");
            s->checkpoint_sqlstate[0] = '\0';
        }
        nt_log(NT_LOG_ERROR, "db", "could not read the checkpoint: %s%s", s->checkpoint_error,
               strcmp(s->checkpoint_sqlstate, "42P01") == 0
                   ? " (has the schema been created? run needletrace migrate)"
                   : "");
        nt_pgconn_fail(s->conn, s->checkpoint_error);
        return;
    }
    nt_pgconn_disarm_watchdog(s->conn);
    nt_metrics.db_connected = 1;
    if (nt_checkpoint_compare(&s->check, s->journal, s->known_end) != 0) {
        char why[600];
        snprintf(why, sizeof(why), "could not read the journal at the checkpoint %" PRIu64 ": %s",
                 s->check.cp_pos, nt_journal_error(s->journal));
        nt_pgconn_fail(s->conn, why); /* compared again at the next connect */
        return;
    }
    if (nt_checkpoint_is_mismatch(s->check.verdict)) {
        pgsink__mismatch(s);
    } else {
        pgsink__resume(s);
    }
}

/* ---- the role -----------------------------------------------------------------------------------
 */

/* The fourth column creates the coming quarters' partitions of events when missing
 * (013_partitions.sql; it never fails, and only warns when the table is too busy to add one). */
#define PGSINK_PRIVILEGES_QUERY                                                                    \
    "SELECT superuser, owns_evidence, role_name, CASE WHEN pg_catalog.has_function_privilege("     \
    "'needletrace.events_partitions_ensure()', 'EXECUTE') THEN "                                   \
    "needletrace.events_partitions_ensure() END FROM needletrace.connection_privileges()"

/* At every connect, before the checkpoint: is the role one that could rewrite the evidence (a
 * superuser, or a member of the role owning the tables: it could disable their triggers)? */
static void pgsink__check_privileges(nt_pgsink_t *s)
{
    s->state = NT_PGSINK__CHECKPOINT;
    s->priv_pending = 1;
    s->priv_read = 0;
    s->checkpoint_failed = 0;
    nt_pgconn_arm_watchdog(s->conn, NT_PGCONN_CONNECT_TIMEOUT_MS);
    nt_pgconn_send(s->conn, PGSINK_PRIVILEGES_QUERY, 0, NULL);
}

static void pgsink__privileges_rows(nt_pgsink_t *s, const PGresult *res)
{
    if (PQntuples(res) != 1 || PQnfields(res) != 4) {
        return; /* not read: refused as unknown below */
    }
    s->priv_super = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    s->priv_owner = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
    snprintf(s->priv_role, sizeof(s->priv_role), "%s", PQgetvalue(res, 0, 2));
    s->priv_read = 1;
}

static void pgsink__privileges_done(nt_pgsink_t *s)
{
    s->priv_pending = 0;
    if (s->checkpoint_failed || !s->priv_read) {
        const char *why = s->checkpoint_failed ? s->checkpoint_error : "unexpected result";
        nt_log(NT_LOG_ERROR, "db", "could not check the database role's privileges: %s%s", why,
               strcmp(s->checkpoint_sqlstate, "42883") == 0 ||
                       strcmp(s->checkpoint_sqlstate, "3F000") == 0
                   ? " (is the schema up to date? run needletrace migrate as the schema's owner)"
                   : "");
        nt_pgconn_fail(s->conn, why);
        return;
    }
    if (s->priv_super || s->priv_owner) {
        const char *what = s->priv_super ? "a superuser"
                                         : "a member of the role that owns the evidence tables "
                                           "(or able to become one: CREATEROLE)";
        if (!s->opts.allow_privileged) {
            snprintf(s->mismatch, sizeof(s->mismatch),
                     "refusing to write as database role \"%s\", %s (it could disable the "
                     "append-only triggers or truncate the evidence)",
                     s->priv_role, what);
            nt_log(NT_LOG_ERROR, "db",
                   "%s: connect as a login that is a member of needletrace_collector (README, "
                   "Security model), or set database.allow_privileged = 1 to allow it",
                   s->mismatch);
            s->state = NT_PGSINK__MISMATCH;
            nt_pgconn_disarm_watchdog(s->conn);
            if (s->on_refused != NULL) {
                s->on_refused(s, s->data);
            }
            return;
        }
        if (!s->priv_warned) {
            s->priv_warned = 1;
            nt_log(NT_LOG_WARN, "db",
                   "writing as database role \"%s\", %s: allowed by database.allow_privileged; "
                   "in production connect as a member of needletrace_collector",
                   s->priv_role, what);
        }
    }
    nt_pgsink__read_checkpoint(s);
}

/* ---- connection callbacks ---------------------------------------------------------------------
 */

static void pgsink__on_connected(nt_pgconn_t *c, void *data)
{
    pgsink__check_privileges(data);
}

static void pgsink__on_lost(nt_pgconn_t *c, void *data)
{
    nt_pgsink_t *s = data;
    if (s->state == NT_PGSINK__CLOSED) {
        return;
    }
    s->state = NT_PGSINK__DOWN;
    s->checkpoint_exists = 0;
    s->first_deferred = 0; /* its commit, if it happened, is in the checkpoint read next */
    nt_pgsink__discard_batches(s);
    nt_outbox_aborted(&s->outbox);
    nt_pgsink__recorded(s, NT_EDB); /* a graceful stop does not wait for the reconnect */
}

static void pgsink__on_retry(nt_pgconn_t *c, void *data)
{
    nt_pgsink_wakeup(data);
}

static void pgsink__on_copy_in(nt_pgconn_t *c, void *data)
{
    nt_pgsink_t *s = data;
    if (s->state == NT_PGSINK__BUSY) {
        nt_txn_copy_in(&s->txn);
    }
}

static void pgsink__on_rows(nt_pgconn_t *c, const PGresult *res, void *data)
{
    nt_pgsink_t *s = data;
    if (s->state == NT_PGSINK__CHECKPOINT && s->priv_pending) {
        pgsink__privileges_rows(s, res);
    } else if (s->state == NT_PGSINK__CHECKPOINT) {
        pgsink__checkpoint_rows(s, res);
    } else if (s->state == NT_PGSINK__BUSY) {
        nt_txn_rows(&s->txn, res);
    }
}

static void pgsink__on_error(nt_pgconn_t *c, const char *sqlstate, const char *message, void *data)
{
    nt_pgsink_t *s = data;
    if (strcmp(sqlstate, NT_PGSINK__QUERY_CANCELED) == 0) {
        nt_metrics.db_statement_timeouts++;
    }
    if (s->state == NT_PGSINK__BUSY) {
        nt_txn_error(&s->txn, sqlstate, message);
    } else if (s->state == NT_PGSINK__CHECKPOINT && !s->checkpoint_failed) {
        s->checkpoint_failed = 1;
        snprintf(s->checkpoint_sqlstate, sizeof(s->checkpoint_sqlstate), "%s", sqlstate);
        snprintf(s->checkpoint_error, sizeof(s->checkpoint_error), "%s", message);
    } else if (s->state == NT_PGSINK__MISMATCH) {
        nt_log(NT_LOG_WARN, "db",
               "could not hold the checkpoint ahead of the journal in the database: SQLSTATE %s: "
               "%s; ingest stays stopped in this process",
               sqlstate, message);
    }
}

static void pgsink__on_done(nt_pgconn_t *c, void *data)
{
    nt_pgsink_t *s = data;
    if (s->state == NT_PGSINK__CHECKPOINT && s->priv_pending) {
        pgsink__privileges_done(s);
        return;
    }
    if (s->state == NT_PGSINK__CHECKPOINT) {
        pgsink__checkpoint_done(s);
        return;
    }
    if (s->state == NT_PGSINK__MISMATCH) {
        nt_pgconn_disarm_watchdog(c); /* the hold finished */
        nt_pgsink__maybe_dispatch(s); /* a drain waiting for it ends now */
        return;
    }
    if (s->state != NT_PGSINK__BUSY) {
        return;
    }
    int rc = nt_txn_done(&s->txn);
    if (rc == NT_TXN_COMMITTED) {
        if (s->txn.batch != NULL && nt_pgsink__lane_holds_older(s)) {
            /* committed after the second connection's older batch, whose answer has not been
             * read yet: settled right after it (pgsink_lane.c) */
            s->first_deferred = 1;
            nt_pgconn_disarm_watchdog(c); /* nothing in flight until it is settled */
            return;
        }
        nt_pgsink__committed(s);
    } else if (rc == NT_TXN_PENDING) {
        nt_pgsink__ungate(s); /* its checkpoint move may have opened the other's gate */
    } else if (rc == NT_TXN_ROLLED_BACK) {
        nt_pgsink__rolled_back(s);
    } else if (rc < 0 && nt_pgconn_connected(c)) {
        nt_pgconn_fail(c, nt_strerror(rc)); /* an internal error: start over */
    }
}

const nt_pgconn_cbs_t nt_pgsink__conn_cbs = {
    .on_connected = pgsink__on_connected,
    .on_lost = pgsink__on_lost,
    .on_retry = pgsink__on_retry,
    .on_copy_in = pgsink__on_copy_in,
    .on_rows = pgsink__on_rows,
    .on_error = pgsink__on_error,
    .on_done = pgsink__on_done,
};
