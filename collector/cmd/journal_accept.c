/* journal_accept.c -- `needletrace journal accept`: the operator's decision, recorded in the
 * database, to reset a collector's checkpoint to the start of the journal on disk after the two
 * were found to disagree (checkpoint.h). The collector then replays the whole journal; the
 * database ignores what it already holds. */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "needletrace/checkpoint.h"
#include "needletrace/cmd.h"
#include "needletrace/common.h"
#include "needletrace/journal.h"
#include "needletrace/log.h"
#include "needletrace/opts.h"
#include "needletrace/pqutil.h"

#define ACCEPT__PROG "needletrace journal accept"

typedef struct {
    const char *reason;
} accept__opts_t;

static const nt_opt_t accept__options[] = {
    {"reason", NT_OPT_STRING, offsetof(accept__opts_t, reason), 0, 0, 0, 0, NULL, "TEXT",
     "why the unaccounted positions are accepted, stored with\n"
     "the reset (the incident, a ticket); default empty",
     NULL},
    {"help", NT_OPT_HELP, 0, 0, 0, 0, 0, NULL, NULL, "print this help", NULL},
    {NULL, NT_OPT_END, 0, 0, 0, 0, 0, NULL, NULL, NULL, NULL},
};

static void accept__usage(FILE *out)
{
    fprintf(out,
            "usage: " ACCEPT__PROG " [--reason TEXT] [--config FILE] [--SECTION-KEY VALUE]...\n"
            "\n"
            "When the collector stops ingesting because its checkpoint in the database does not\n"
            "fit its journal (another journal's, beyond its end, behind its start, or not on a\n"
            "record: the log and /readyz say which), this command records the operator's\n"
            "decision. Stop the collector first: the journal directory is locked while one runs.\n"
            "It compares the checkpoint of collector.id with the journal in journal.dir again;\n"
            "when they disagree, it resets the checkpoint to the start of the journal and\n"
            "records the reset in needletrace.checkpoint_resets (who, when, why, both positions\n"
            "and what it cannot account for), in one transaction, and prints what it did. The\n"
            "collector then replays the whole journal; the database ignores what it already\n"
            "holds. When they agree there is nothing to accept: nothing changes, exit code 0.\n"
            "\n");
    nt_opts_usage(accept__options, out);
}

static int accept__takes_value(const char *a)
{
    return strcmp(a, "--reason") == 0 || strcmp(a, "--config") == 0;
}

/* Runs sql with text parameters; on failure prints "could not <what>: <server message>" and
 * returns NULL, else the result for the caller to PQclear. */
static PGresult *accept__query(PGconn *conn, const char *what, const char *sql, int n,
                               const char *const *params)
{
    PGresult *res = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char err[512];
        fprintf(stderr, "needletrace: journal accept: could not %s: %s\n", what,
                nt_pqutil_message(PQerrorMessage(conn), err, sizeof(err)));
        PQclear(res);
        return NULL;
    }
    return res;
}

/* Reads and locks the checkpoint of collector_id, and compares it with j into c. 0, or NT_EDB /
 * NT_EIO after printing why. */
static int accept__compare(PGconn *conn, const char *collector_id, nt_journal_t *j,
                           nt_checkpoint_check_t *c)
{
    const char *params[1] = {collector_id};
    PGresult *res =
        accept__query(conn, "read the checkpoint", NT_CHECKPOINT_QUERY " FOR UPDATE", 1, params);
    if (res == NULL) {
        return NT_EDB;
    }
    int rc = nt_checkpoint_from_result(c, res);
    PQclear(res);
    if (rc != 0) {
        fprintf(stderr, "needletrace: journal accept: unexpected result of the checkpoint query\n");
        return NT_EDB;
    }
    if (nt_checkpoint_compare(c, j, nt_journal_end(j)) != 0) {
        fprintf(stderr,
                "needletrace: journal accept: could not read the journal at the checkpoint %" PRIu64
                ": %s\n",
                c->cp_pos, nt_journal_error(j));
        return NT_EIO;
    }
    return 0;
}

/* Resets the checkpoint found as c says to the start of journal j (in directory dir) and prints
 * what was done. 0 or NT_EDB (printed). */
static int accept__reset(PGconn *conn, const char *collector_id, const nt_checkpoint_check_t *c,
                         nt_journal_t *j, const char *dir, const char *reason)
{
    char old_jid[24], old_pos[24], jid[24], start[24], end[24], lost[384];
    uint64_t new_id = nt_journal_id(j), new_start = nt_journal_start(j);
    snprintf(old_jid, sizeof(old_jid), "%" PRId64, (int64_t)c->cp_journal_id);
    snprintf(old_pos, sizeof(old_pos), "%" PRIu64, c->cp_pos);
    snprintf(jid, sizeof(jid), "%" PRId64, (int64_t)new_id);
    snprintf(start, sizeof(start), "%" PRIu64, new_start);
    snprintf(end, sizeof(end), "%" PRIu64, nt_journal_end(j));
    nt_checkpoint_unaccounted(c, lost, sizeof(lost));
    const char *params[9] = {collector_id, nt_checkpoint_verdict_name(c->verdict),
                             old_jid,      old_pos,
                             jid,          start,
                             end,          lost,
                             reason};
    PGresult *res =
        accept__query(conn, "reset the checkpoint",
                      "SELECT reset_id, db_user, needletrace.rfc3339(accepted_at) "
                      "FROM needletrace.accept_journal($1, $2, $3::bigint, $4::bigint, $5::bigint, "
                      "$6::bigint, $7::bigint, $8, $9)",
                      9, params);
    if (res == NULL) {
        return NT_EDB;
    }
    if (PQntuples(res) != 1 || PQnfields(res) != 3) {
        fprintf(stderr, "needletrace: journal accept: unexpected result of accept_journal\n");
        PQclear(res);
        return NT_EDB;
    }
    printf("accepted: checkpoint reset to journal %016" PRIx64 ", position %" PRIu64
           " (the start of \"%s\"): the collector replays %" PRIu64
           " bytes from there, and the database ignores what it already holds\n"
           "unaccounted for: %s\n"
           "recorded: needletrace.checkpoint_resets reset_id %s, by database user \"%s\" at %s, "
           "reason \"%s\"\n",
           new_id, new_start, dir, nt_journal_end(j) - new_start, lost, PQgetvalue(res, 0, 0),
           PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2), reason);
    nt_log(NT_LOG_WARN, "journal",
           "checkpoint of collector \"%s\" reset from journal %016" PRIx64 ", position %" PRIu64
           " to journal %016" PRIx64 ", position %" PRIu64
           " (%s) by needletrace journal accept, reset_id %s, reason \"%s\"; unaccounted for: %s",
           collector_id, c->cp_journal_id, c->cp_pos, new_id, new_start,
           nt_checkpoint_verdict_name(c->verdict), PQgetvalue(res, 0, 0), reason, lost);
    PQclear(res);
    return 0;
}

/* The comparison and, on a mismatch, the reset, in one transaction. 0, NT_EDB or NT_EIO. */
static int accept__run(PGconn *conn, const nt_config_t *cfg, nt_journal_t *j, const char *reason)
{
    nt_checkpoint_check_t c;
    char what[1024];
    PGresult *res = accept__query(conn, "begin a transaction", "BEGIN", 0, NULL);
    if (res == NULL) {
        return NT_EDB;
    }
    PQclear(res);
    int rc = accept__compare(conn, cfg->collector_id, j, &c);
    if (rc == 0) {
        nt_checkpoint_describe(&c, cfg->collector_id, what, sizeof(what));
        if (!nt_checkpoint_is_mismatch(c.verdict)) {
            printf("%s: nothing to accept (nothing changed)\n", what);
        } else {
            printf("mismatch: %s\n", what);
            rc = accept__reset(conn, cfg->collector_id, &c, j, cfg->journal_dir, reason);
        }
    }
    const char *end = rc == 0 && nt_checkpoint_is_mismatch(c.verdict) ? "COMMIT" : "ROLLBACK";
    res = accept__query(conn, strcmp(end, "COMMIT") == 0 ? "commit" : "roll back", end, 0, NULL);
    if (res == NULL) {
        return NT_EDB;
    }
    PQclear(res);
    return rc;
}

/* `needletrace journal accept`: see the usage. 0 accepted or nothing to accept; 2 bad usage or
 * configuration; 1 the journal or the database failed (printed). */
int nt_cmd_journal_accept(int argc, char **argv, char *const *envp)
{
    nt_config_t cfg;
    accept__opts_t o = {""};
    char err[640];
    int rc = nt_cmd_begin_with(&argc, argv, envp, accept__usage, accept__takes_value, &cfg);
    if (rc != NT_CMD_CONTINUE) {
        return rc;
    }
    if (nt_opts_parse(accept__options, argc, argv, &o, NULL, ACCEPT__PROG, err, sizeof(err)) != 0) {
        fprintf(stderr, ACCEPT__PROG ": %s\n", err);
        nt_config_close(&cfg);
        return 2;
    }
    nt_journal_t *j = NULL;
    PGconn *conn = NULL;
    nt_journal_options_t jopts = {cfg.journal_dir, (uint64_t)cfg.journal_max_bytes,
                                  (uint64_t)cfg.journal_segment_bytes};
    rc = 1;
    if (nt_journal_init(&j, &jopts, err, sizeof(err)) != 0) {
        fprintf(stderr, "needletrace: journal accept: could not open the journal in \"%s\": %s\n",
                cfg.journal_dir, err);
        goto done;
    }
    int crc = nt_cmd_connect(cfg.database_url, cfg.database_password, "needletrace-journal-accept",
                             &conn);
    if (crc != 0) {
        rc = crc == NT_ECONFIG ? 2 : 1;
        goto done;
    }
    rc = accept__run(conn, &cfg, j, o.reason) == 0 ? 0 : 1;
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "needletrace: could not write the output: %s\n", strerror(errno));
        rc = 1;
    }
done:
    PQfinish(conn);
    nt_journal_close(j);
    nt_config_close(&cfg);
    return rc;
}
