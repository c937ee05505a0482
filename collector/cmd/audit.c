/* audit.c -- `needletrace audit`: the auditor's commands over the tamper-evident ledger
 * (011_ledger.sql): keygen (the digest signing key pair), digest (sign the chain heads now, into
 * a directory kept outside the database), verify (audit_verify.c). The queries the parts share
 * are here. */
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "audit_internal.h"
#include "needletrace/cmd.h"
#include "needletrace/common.h"
#include "needletrace/config.h"
#include "needletrace/ident.h"

#define AUDIT__SYNOPSIS                                                                            \
    "usage: needletrace audit verify [--digests DIR --pubkey FILE] [--from TIME] [--to TIME]\n"    \
    "                                [--clinic ID]\n"                                              \
    "       needletrace audit prove --session ID [--clinic ID] [--digests DIR --pubkey FILE]\n"    \
    "                               [--out FILE]\n"                                                \
    "       needletrace audit report [--clinic ID] --from DATE --to DATE [--format "               \
    "html|csv|json]\n"                                                                             \
    "                                --out FILE [--digests DIR --pubkey FILE]\n"                   \
    "       needletrace audit digest --key FILE --out DIR\n"                                       \
    "       needletrace audit keygen --out DIR\n"

static void audit__usage(FILE *out)
{
    fputs(AUDIT__SYNOPSIS
          "\n"
          "verify  recomputes the ledger from the rows in [database] url (a login of\n"
          "        needletrace_auditor is enough): every entry's hash and its link to the one\n"
          "        before, every batch's Merkle root from its rows, rows outside any batch, and\n"
          "        with --digests every signed digest in DIR (checked with --pubkey FILE, the\n"
          "        public key kept apart): the chain heads it names must still be there.\n"
          "        Prints each finding (table and row) and exits 1, or OK and exits 0.\n"
          "        --from/--to limit the entries checked to those committed in [FROM, TO);\n"
          "        --clinic to batches holding that clinic's rows.\n"
          "prove   the session's event rows, each with its proof of inclusion in its batch's\n"
          "        root, the chain from that batch to the newest entry and, with --digests,\n"
          "        the newest signed digest naming it: one JSON document (to --out FILE, else\n"
          "        stdout) that README, \"Checking a proof\", shows how to check\n"
          "report  the compliance report of a clinic (all without --clinic) over local dates\n"
          "        [FROM, TO] (YYYY-MM-DD): summary, exceptions, sessions, depth per area against\n"
          "        its limit, sessions per pen per day, completeness, and the verification of\n"
          "        the record (against --digests); HTML (default: one printable file, no\n"
          "        network), CSV or JSON, to --out FILE. A session is in the report of the\n"
          "        period its start is in (README, \"The report\")\n"
          "digest  signs every chain's head now with the Ed25519 key in FILE into\n"
          "        DIR/digest-<time>.json (keep DIR where the database's users cannot write)\n"
          "keygen  a new Ed25519 key pair in DIR: " NT_DIGEST_KEY_FILE " (mode 0600) and\n"
          "        " NT_DIGEST_PUB_FILE "\n"
          "Exit codes: 0 done (verify: nothing found), 1 findings or failure, 2 bad usage.\n",
          out);
}

typedef struct {
    const char *verb, *digests, *pubkey, *from, *to, *clinic, *key, *out, *session, *format;
} audit__opts_t;

static int audit__takes_value(const char *arg)
{
    static const char *const with[] = {"--digests", "--pubkey", "--from", "--to",
                                       "--clinic",  "--key",    "--out",  "--session",
                                       "--config",  "--format"};
    for (size_t i = 0; i < NT_ARRAY_SIZE(with); i++) {
        if (strcmp(arg, with[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

static int audit__bad(const char *what, const char *why)
{
    fprintf(stderr, "needletrace: audit: %s %s\n" AUDIT__SYNOPSIS, what, why);
    return 2;
}

static int audit__parse(int argc, char **argv, audit__opts_t *o)
{
    memset(o, 0, sizeof(*o));
    if (argc < 2) {
        return audit__bad("a subcommand", "is missing");
    }
    o->verb = argv[1];
    struct {
        const char *name;
        const char **slot;
    } opts[] = {{"--digests", &o->digests}, {"--pubkey", &o->pubkey},   {"--from", &o->from},
                {"--to", &o->to},           {"--clinic", &o->clinic},   {"--key", &o->key},
                {"--out", &o->out},         {"--session", &o->session}, {"--format", &o->format}};
    for (int i = 2; i < argc; i++) {
        size_t k = 0;
        while (k < NT_ARRAY_SIZE(opts) && strcmp(argv[i], opts[k].name) != 0) {
            k++;
        }
        if (k == NT_ARRAY_SIZE(opts)) {
            return audit__bad(argv[i], "is not an option of audit");
        }
        if (i + 1 >= argc) {
            return audit__bad(argv[i], "needs a value");
        }
        *opts[k].slot = argv[++i];
    }
    if (o->clinic != NULL && !nt_ident_id_valid_str(o->clinic)) {
        return audit__bad("--clinic", "must be 1-64 characters of [A-Za-z0-9._-]");
    }
    if (strcmp(o->verb, "report") == 0) {
        int dates_ok = o->from != NULL && o->to != NULL && strlen(o->from) == 10 &&
                       strlen(o->to) == 10 && strspn(o->from, "0123456789-") == 10 &&
                       strspn(o->to, "0123456789-") == 10;
        if (!dates_ok || o->out == NULL || o->key != NULL || o->session != NULL ||
            (o->digests != NULL) != (o->pubkey != NULL)) {
            return audit__bad("report", "takes --from YYYY-MM-DD --to YYYY-MM-DD --out FILE "
                                        "[--clinic ID] [--format html|csv|json] [--digests DIR "
                                        "--pubkey FILE]");
        }
        if (o->format == NULL) {
            o->format = "html";
        }
        if (strcmp(o->format, "html") != 0 && strcmp(o->format, "csv") != 0 &&
            strcmp(o->format, "json") != 0) {
            return audit__bad("--format", "is html, csv or json");
        }
        return 0;
    }
    if (o->format != NULL) {
        return audit__bad("--format", "is for report");
    }
    if (strcmp(o->verb, "prove") == 0) {
        if (o->session == NULL || o->key != NULL || o->from != NULL || o->to != NULL ||
            (o->digests != NULL) != (o->pubkey != NULL)) {
            return audit__bad("prove", "takes --session ID [--clinic ID] [--digests DIR --pubkey "
                                       "FILE] [--out FILE]");
        }
        return 0;
    }
    if (o->session != NULL) {
        return audit__bad("--session", "is for prove");
    }
    if (strcmp(o->verb, "verify") == 0) {
        if (o->digests != NULL && o->pubkey == NULL) {
            return audit__bad("--digests", "needs --pubkey FILE: the public key, kept apart from "
                                           "the digests (whoever can write one can write both)");
        }
        return o->key != NULL || o->out != NULL ? audit__bad("verify", "takes no --key/--out") : 0;
    }
    if (strcmp(o->verb, "digest") == 0 || strcmp(o->verb, "keygen") == 0) {
        int digest = o->verb[0] == 'd';
        if (o->out == NULL || (digest && o->key == NULL) || (!digest && o->key != NULL) ||
            o->digests != NULL || o->pubkey != NULL || o->from != NULL || o->to != NULL ||
            o->clinic != NULL) {
            return audit__bad(o->verb, digest ? "takes --key FILE --out DIR" : "takes --out DIR");
        }
        return 0;
    }
    return audit__bad(o->verb, "is not a subcommand (verify, prove, report, digest, keygen)");
}

/* ---- the shared queries ------------------------------------------------------------------- */

const char *nt_audit__why(PGconn *conn, const PGresult *res)
{
    const char *m = res != NULL ? PQresultErrorMessage(res) : "";
    m = m[0] != '\0' || conn == NULL ? m : PQerrorMessage(conn);
    return m[0] != '\0' ? m : "a query failed, no reason given\n";
}

PGresult *nt_audit__query(nt_audit_t *a, const char *sql, int n, const char *const *values,
                          int binary)
{
    PGresult *res = PQexecParams(a->conn, sql, n, NULL, values, NULL, NULL, binary);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "needletrace: audit: %s", nt_audit__why(a->conn, res));
        PQclear(res);
        a->failed = 1;
        return NULL;
    }
    return res;
}

nt_audit_entry_t *nt_audit__entries(nt_audit_t *a, size_t *n, int filtered)
{
    static const char sql[] =
        "SELECT l.collector_id, l.seq, l.tx, l.journal_id, l.journal_from, l.journal_to, "
        "l.n_raw, l.n_events, l.n_quarantine, encode(l.merkle_root, 'hex'), "
        "encode(l.prev_hash, 'hex'), encode(l.entry_hash, 'hex'), "
        "to_char(l.committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), "
        "l.n_messages FROM needletrace.ledger l "
        "WHERE ($1::timestamptz IS NULL OR l.committed_at >= $1::timestamptz) "
        "AND ($2::timestamptz IS NULL OR l.committed_at < $2::timestamptz) "
        "AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM needletrace.events e WHERE e.tx = l.tx "
        "AND e.clinic_id = $3) OR EXISTS (SELECT 1 FROM needletrace.quarantine q WHERE q.tx = "
        "l.tx AND q.clinic_id = $3)) "
        "ORDER BY l.collector_id, l.seq";
    const char *values[3] = {filtered ? a->from : NULL, filtered ? a->to : NULL,
                             filtered ? a->clinic : NULL};
    PGresult *res = nt_audit__query(a, sql, 3, values, 0);
    if (res == NULL) {
        return NULL;
    }
    *n = (size_t)PQntuples(res);
    nt_audit_entry_t *e = calloc(*n + 1, sizeof(*e));
    for (size_t i = 0; e != NULL && i < *n; i++) {
        int r = (int)i;
        nt_audit_entry_t *x = &e[i];
        snprintf(x->collector, sizeof(x->collector), "%s", PQgetvalue(res, r, 0));
        snprintf(x->seq, sizeof(x->seq), "%s", PQgetvalue(res, r, 1));
        snprintf(x->tx, sizeof(x->tx), "%s", PQgetvalue(res, r, 2));
        snprintf(x->journal_id, sizeof(x->journal_id), "%s", PQgetvalue(res, r, 3));
        snprintf(x->from, sizeof(x->from), "%s", PQgetvalue(res, r, 4));
        snprintf(x->to, sizeof(x->to), "%s", PQgetvalue(res, r, 5));
        x->n_raw = strtoll(PQgetvalue(res, r, 6), NULL, 10);
        x->n_events = strtoll(PQgetvalue(res, r, 7), NULL, 10);
        x->n_quarantine = strtoll(PQgetvalue(res, r, 8), NULL, 10);
        snprintf(x->root, sizeof(x->root), "%s", PQgetvalue(res, r, 9));
        snprintf(x->prev, sizeof(x->prev), "%s", PQgetvalue(res, r, 10));
        snprintf(x->hash, sizeof(x->hash), "%s", PQgetvalue(res, r, 11));
        snprintf(x->committed, sizeof(x->committed), "%s", PQgetvalue(res, r, 12));
        x->n_messages = strtoll(PQgetvalue(res, r, 13), NULL, 10);
    }
    PQclear(res);
    return e;
}

unsigned char *nt_audit__leaves(nt_audit_t *a, const nt_audit_entry_t *e, size_t *n)
{
    /* read only when no longer than a batch's can be (a forged bytea of a gigabyte is named,
     * not loaded: the row-by-row check then names every row of the batch) */
    char cap[24];
    snprintf(cap, sizeof(cap), "%d", 32 * NT_AUDIT_MAX_BATCH_ROWS);
    const char *values[3] = {e->collector, e->seq, cap};
    PGresult *res = nt_audit__query(a,
                                    "SELECT CASE WHEN octet_length(leaves) <= $3::int THEN leaves "
                                    "END, octet_length(leaves)::text FROM needletrace.ledger WHERE "
                                    "collector_id = $1 AND seq = $2::bigint",
                                    3, values, 1);
    if (res == NULL) {
        return NULL;
    }
    int found = PQntuples(res) == 1;
    size_t len = found ? (size_t)PQgetlength(res, 0, 0) : 0;
    unsigned char *leaves = malloc(len + 1);
    if (leaves != NULL && len > 0) {
        memcpy(leaves, PQgetvalue(res, 0, 0), len);
    }
    *n = len / 32;
    int64_t claimed = nt_audit__claimed(e);
    if (found && PQgetisnull(res, 0, 0) && !PQgetisnull(res, 0, 1)) {
        nt_audit__finding(a,
                          "ledger entry %s#%s: its leaves are %s bytes, more than any batch's "
                          "(not read)",
                          e->collector, e->seq, PQgetvalue(res, 0, 1));
    } else if (len % 32 != 0) {
        nt_audit__finding(a, "ledger entry %s#%s: its leaves are not whole hashes", e->collector,
                          e->seq);
    } else if (found && claimed < 0) {
        nt_audit__finding(a,
                          "ledger entry %s#%s: its counts (%" PRId64 ", %" PRId64 ", %" PRId64
                          ") are beyond any batch's",
                          e->collector, e->seq, e->n_raw, e->n_events, e->n_quarantine);
    } else if (found && (int64_t)(len / 32) != claimed) {
        nt_audit__finding(a, "ledger entry %s#%s: %zu leaves for the %" PRId64 " rows it counts",
                          e->collector, e->seq, len / 32, claimed);
    }
    PQclear(res);
    return leaves;
}

void nt_audit__hex(const unsigned char *in, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[in[i] >> 4];
        out[2 * i + 1] = hx[in[i] & 15];
    }
    out[2 * n] = '\0';
}

void nt_audit__entry_text(const nt_audit_entry_t *e, char *text, size_t len)
{
    snprintf(text, len,
             "needletrace-ledger-v1|%s|%s|%s|%s|%s|%s|%" PRId64 "|%" PRId64 "|%" PRId64
             "|%s|%s|%s|%" PRId64,
             e->collector, e->seq, e->tx, e->journal_id, e->from, e->to, e->n_raw, e->n_events,
             e->n_quarantine, e->root, e->prev, e->committed, e->n_messages);
}

void nt_audit__json_str(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            fprintf(out, "\\%c", c);
        } else if (c < 0x20) {
            fprintf(out, "\\u%04x", c);
        } else {
            fputc(c, out);
        }
    }
    fputc('"', out);
}

void nt_audit__check_link(nt_audit_t *a, const nt_audit_entry_t *e, const nt_audit_entry_t *prev)
{
    char text[1024], hex[65];
    nt_audit__entry_text(e, text, sizeof(text));
    unsigned char md[32];
    SHA256((const unsigned char *)text, strlen(text), md);
    nt_audit__hex(md, 32, hex);
    if (strcmp(hex, e->hash) != 0) {
        nt_audit__finding(a, "ledger entry %s#%s: its hash does not match its contents",
                          e->collector, e->seq);
    }
    int64_t seq = strtoll(e->seq, NULL, 10);
    if (prev != NULL) {
        if (strcmp(prev->journal_id, e->journal_id) == 0 && strcmp(prev->to, e->from) != 0) {
            nt_audit__finding(a,
                              "chain %s: journal positions %s..%s between entries #%s and #%s "
                              "are in no sealed batch (a batch deleted with its entry, or a "
                              "journal accept: see needletrace.checkpoint_resets)",
                              e->collector, prev->to, e->from, prev->seq, e->seq);
        }
        if (strtoll(prev->seq, NULL, 10) + 1 != seq) {
            nt_audit__finding(a, "chain %s: entries %s..%" PRId64 " are missing", e->collector,
                              prev->seq, seq - 1);
        } else if (strcmp(e->prev, prev->hash) != 0) {
            nt_audit__finding(a, "chain %s: entry #%s does not link to #%s", e->collector, e->seq,
                              prev->seq);
        }
        return;
    }
    if (seq == 1) {
        if (strspn(e->prev, "0") != 64) {
            nt_audit__finding(a, "chain %s: its first entry links to something", e->collector);
        }
        return;
    }
    /* the first checked of its chain, after a --from: the entry before it must be there */
    char before[24];
    snprintf(before, sizeof(before), "%" PRId64, seq - 1);
    const char *values[2] = {e->collector, before};
    PGresult *res = nt_audit__query(a,
                                    "SELECT encode(entry_hash, 'hex') FROM needletrace.ledger "
                                    "WHERE collector_id = $1 AND seq = $2::bigint",
                                    2, values, 0);
    if (res == NULL) {
        return;
    }
    if (PQntuples(res) != 1) {
        nt_audit__finding(a, "chain %s: entries before #%s are missing", e->collector, e->seq);
    } else if (strcmp(PQgetvalue(res, 0, 0), e->prev) != 0) {
        nt_audit__finding(a, "chain %s: entry #%s does not link to #%s", e->collector, e->seq,
                          before);
    }
    PQclear(res);
}

void nt_audit__check_head(nt_audit_t *a, const char *digest, const nt_digest_head_t *h)
{
    char seq[24];
    snprintf(seq, sizeof(seq), "%" PRId64, h->seq);
    const char *values[2] = {h->collector_id, seq};
    PGresult *res = nt_audit__query(a,
                                    "SELECT encode(entry_hash, 'hex') FROM needletrace.ledger "
                                    "WHERE collector_id = $1 AND seq = $2::bigint",
                                    2, values, 0);
    if (res == NULL) {
        return;
    }
    if (PQntuples(res) != 1) {
        nt_audit__finding(a, "digest %s: chain %s has no entry #%s any more", digest,
                          h->collector_id, seq);
    } else if (strcmp(PQgetvalue(res, 0, 0), h->entry_hash) != 0) {
        nt_audit__finding(a,
                          "digest %s: chain %s entry #%s was rewritten (signed %.16s..., now "
                          "%.16s...)",
                          digest, h->collector_id, seq, h->entry_hash, PQgetvalue(res, 0, 0));
    }
    PQclear(res);
}

/* ---- digest -----------------------------------------------------------------------------------
 */

/* Signs every chain's head now into o->out. */
static int audit__digest(nt_audit_t *a, const audit__opts_t *o)
{
    char *text = NULL, *json = NULL, time[40], path[4096], err[512];
    size_t n = 0;
    int rc = 1;
    if (nt_digest_from_db(a->conn, &text, time, sizeof(time), &n, err, sizeof(err)) != 0 ||
        (json = nt_digest_sign(o->key, text, err, sizeof(err))) == NULL ||
        nt_digest_write(o->out, time, json, path, sizeof(path), err, sizeof(err)) != 0) {
        fprintf(stderr, "needletrace: audit digest: %s\n", err);
    } else {
        printf("%s: %zu chain head(s) signed\n", path, n);
        rc = 0;
    }
    free(json);
    free(text);
    return rc;
}

/* A connection's settings. Nothing of the database's choosing: built-in functions only (a
 * function of the same name in another schema would shadow them), no row-level security hiding
 * rows (an error instead), read only; verify and report (big) get room to aggregate in memory,
 * no parallel workers (their own connections keep the cores busy: workers added a tenth), and
 * a minute at most to wait for a lock: their connections share one snapshot, and a schema change
 * queued between them (waiting for one, waited for by another) would otherwise hold them all,
 * unseen by the server's deadlock detector, for ever. */
static int audit__session(PGconn *conn, int big)
{
    PGresult *set = PQexec(conn, big ? "SET search_path = pg_catalog, pg_temp; SET row_security = "
                                       "off; SET default_transaction_read_only = on; SET work_mem "
                                       "= '256MB'; SET hash_mem_multiplier = 2; SET jit = off; SET "
                                       "max_parallel_workers_per_gather = 0; SET lock_timeout = "
                                       "'60s'"
                                     : "SET search_path = pg_catalog, pg_temp; SET row_security = "
                                       "off; SET default_transaction_read_only = on");
    int ok = PQresultStatus(set) == PGRES_COMMAND_OK;
    if (!ok) {
        fprintf(stderr, "needletrace: audit: %s", nt_audit__why(conn, set));
    }
    PQclear(set);
    return ok ? 0 : -1;
}

/* verify and report read everything in one snapshot: one repeatable-read transaction, its
 * snapshot shared with the second connection. What they check is the record at one instant,
 * whatever the collectors commit meanwhile. */
static int audit__snapshot(nt_audit_t *a)
{
    PGresult *r = PQexec(a->conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (ok && a->conn2 != NULL) {
        r = PQexec(a->conn, "SELECT pg_catalog.pg_export_snapshot()");
        char sql[160];
        ok =
            PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
            strspn(PQgetvalue(r, 0, 0), "0123456789ABCDEFabcdef-") == strlen(PQgetvalue(r, 0, 0)) &&
            strlen(PQgetvalue(r, 0, 0)) < 64;
        if (ok) {
            snprintf(sql, sizeof(sql),
                     "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT "
                     "'%s'",
                     PQgetvalue(r, 0, 0));
        }
        PQclear(r);
        if (ok) {
            r = PQexec(a->conn2, sql);
            ok = PQresultStatus(r) == PGRES_COMMAND_OK;
            PQclear(r);
        }
        if (ok && a->conn3 != NULL) {
            r = PQexec(a->conn3, sql);
            ok = PQresultStatus(r) == PGRES_COMMAND_OK;
            PQclear(r);
        }
    }
    if (!ok) {
        fprintf(stderr, "needletrace: audit: could not take a snapshot: %s",
                PQerrorMessage(a->conn3 != NULL && PQtransactionStatus(a->conn2) == PQTRANS_INTRANS
                                   ? a->conn3
                               : a->conn2 != NULL && PQstatus(a->conn2) == CONNECTION_OK &&
                                       PQtransactionStatus(a->conn) == PQTRANS_INTRANS
                                   ? a->conn2
                                   : a->conn));
    }
    return ok ? 0 : -1;
}

/* `needletrace audit`. */
int nt_cmd_audit(int argc, char **argv, char *const *envp)
{
    nt_config_t cfg;
    int rc = nt_cmd_begin_with(&argc, argv, envp, audit__usage, audit__takes_value, &cfg);
    if (rc != NT_CMD_CONTINUE) {
        return rc;
    }
    audit__opts_t o;
    if (audit__parse(argc, argv, &o) != 0) {
        nt_config_close(&cfg);
        return 2;
    }
    if (strcmp(o.verb, "keygen") == 0) {
        nt_config_close(&cfg);
        char err[512];
        if (nt_digest_keygen(o.out, err, sizeof(err)) != 0) {
            fprintf(stderr, "needletrace: audit keygen: %s\n", err);
            return 1;
        }
        printf("%s/%s (private, mode 0600) and %s/%s (public)\n", o.out, NT_DIGEST_KEY_FILE, o.out,
               NT_DIGEST_PUB_FILE);
        return 0;
    }
    nt_audit_t a = {.from = o.from, .to = o.to, .clinic = o.clinic};
    rc = nt_cmd_connect(cfg.database_url, cfg.database_password, "needletrace-audit", &a.conn);
    int big = strcmp(o.verb, "verify") == 0 || strcmp(o.verb, "report") == 0;
    if (rc == 0 && big &&
        nt_cmd_connect(cfg.database_url, cfg.database_password, "needletrace-audit", &a.conn2) !=
            0) {
        fprintf(stderr, "needletrace: audit: no second connection: checking on one\n");
        a.conn2 = NULL;
    }
    /* report: a third, for the verification to run while the sessions section does */
    if (rc == 0 && a.conn2 != NULL && strcmp(o.verb, "report") == 0 &&
        nt_cmd_connect(cfg.database_url, cfg.database_password, "needletrace-audit", &a.conn3) !=
            0) {
        a.conn3 = NULL; /* verified after the sections instead */
    }
    nt_config_close(&cfg);
    if (rc != 0) {
        return rc == NT_ECONFIG ? 2 : 1;
    }
    if (audit__session(a.conn, big) != 0 || (a.conn2 != NULL && audit__session(a.conn2, 1) != 0) ||
        (a.conn3 != NULL && audit__session(a.conn3, 1) != 0)) {
        rc = 1;
    } else if (big && audit__snapshot(&a) != 0) {
        rc = 1;
    } else if (strcmp(o.verb, "digest") == 0) {
        rc = audit__digest(&a, &o);
    } else if (strcmp(o.verb, "report") == 0) {
        /* Written whole to a private temporary file, then renamed: a failed run leaves the
         * previous report as it was; patient references are in it (mode 0600). */
        char tmp[4200];
        snprintf(tmp, sizeof(tmp), "%s.tmp", o.out);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        FILE *out = fd >= 0 ? fdopen(fd, "w") : NULL;
        if (out == NULL) {
            fprintf(stderr, "needletrace: audit report: cannot write \"%s\"\n", tmp);
            rc = 1;
        } else {
            rc = nt_audit__report(&a, o.format, o.from, o.to, o.digests, o.pubkey, out);
            int wrote = fflush(out) == 0 && fsync(fileno(out)) == 0;
            wrote = fclose(out) == 0 && wrote;
            if (!wrote || (rc != 0 && rc != 2) || rename(tmp, o.out) != 0) {
                fprintf(stderr, "needletrace: audit report: \"%s\" not written\n", o.out);
                unlink(tmp);
                rc = 1;
            } else {
                printf("%s: %s report written%s\n", o.out, o.format,
                       rc == 2 ? " (the record did NOT verify: see its last section)" : "");
                rc = rc == 2 ? 1 : 0;
            }
        }
    } else if (strcmp(o.verb, "prove") == 0) {
        FILE *out = o.out != NULL ? fopen(o.out, "w") : stdout;
        if (out == NULL) {
            fprintf(stderr, "needletrace: audit prove: cannot write \"%s\"\n", o.out);
            rc = 1;
        } else {
            rc = nt_audit__prove(&a, o.session, o.digests, o.pubkey, out);
            if ((out != stdout && fclose(out) != 0) || (out == stdout && fflush(out) != 0)) {
                fprintf(stderr, "needletrace: audit prove: could not write the proof\n");
                rc = 1;
            }
        }
    } else {
        rc = nt_audit__verify(&a, o.digests, o.pubkey);
    }
    PQfinish(a.conn);
    if (a.conn2 != NULL) {
        PQfinish(a.conn2);
    }
    if (a.conn3 != NULL) {
        PQfinish(a.conn3);
    }
    return rc;
}
