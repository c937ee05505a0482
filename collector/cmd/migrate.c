/* migrate.c -- applies the SQL migrations compiled into the binary, and the migrate command. */
#include "needletrace/migrate.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

#include "needletrace/cmd.h"
#include "needletrace/common.h"
#include "needletrace/config.h"
#include "needletrace/log.h"

/* Session advisory lock key serialising concurrent migrations ("needtrac" in ASCII). */
#define MIGRATE_LOCK_KEY INT64_C(0x6e65656474726163)

static const char create_sql[] = "CREATE SCHEMA IF NOT EXISTS needletrace;\n"
                                 "CREATE TABLE IF NOT EXISTS needletrace.schema_migrations (\n"
                                 "    version    int         PRIMARY KEY,\n"
                                 "    name       text        NOT NULL,\n"
                                 "    checksum   bytea       NOT NULL,\n"
                                 "    applied_at timestamptz NOT NULL DEFAULT now()\n"
                                 ")";

/* The connection's last error, without libpq's "ERROR:  " prefix and trailing newline, in buf. */
static const char *db_error(PGconn *conn, char *buf, size_t len)
{
    const char *msg = PQerrorMessage(conn);
    static const char *const prefixes[] = {"ERROR:  ", "FATAL:  "};
    for (size_t i = 0; i < NT_ARRAY_SIZE(prefixes); i++) {
        if (strncmp(msg, prefixes[i], strlen(prefixes[i])) == 0) {
            msg += strlen(prefixes[i]);
        }
    }
    snprintf(buf, len, "%s", msg);
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ' || buf[n - 1] == '\r')) {
        buf[--n] = '\0';
    }
    return buf;
}

/* Server notices and warnings go to the log, not to libpq's default stderr printer. */
static void notice_processor(void *arg, const char *message)
{
    int len = (int)strlen(message);
    while (len > 0 && message[len - 1] == '\n') {
        len--;
    }
    nt_log(NT_LOG_WARN, "migrate", "server: %.*s", len, message);
}

/* Runs sql with text parameters (or binary ones, as formats says) and returns its result,
 * in result_format, for the caller to PQclear. On failure logs "could not <what>: <server
 * message>" and returns NULL. */
static PGresult *query(PGconn *conn, const char *what, const char *sql, int nparams,
                       const char *const *values, const int *lengths, const int *formats,
                       int result_format)
{
    PGresult *res;
    if (nparams == 0 && result_format == 0) {
        res = PQexec(conn, sql); /* simple protocol: sql may hold several statements */
    } else {
        res = PQexecParams(conn, sql, nparams, NULL, values, lengths, formats, result_format);
    }
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char err[1024];
        nt_log(NT_LOG_ERROR, "migrate", "could not %s: %s", what, db_error(conn, err, sizeof(err)));
        PQclear(res);
        return NULL;
    }
    return res;
}

/* Like query() for statements whose result is not needed. 0 or NT_EDB. */
static int command(PGconn *conn, const char *what, const char *sql, int nparams,
                   const char *const *values, const int *lengths, const int *formats)
{
    PGresult *res = query(conn, what, sql, nparams, values, lengths, formats, 0);
    if (res == NULL) {
        return NT_EDB;
    }
    PQclear(res);
    return 0;
}

/* Looks up a recorded migration. Returns 1 and fills sum when recorded, 0 when not,
 * NT_EDB on error. */
static int recorded_checksum(PGconn *conn, int version, uint8_t sum[SHA256_DIGEST_LENGTH],
                             int *sum_ok)
{
    char vbuf[16];
    snprintf(vbuf, sizeof(vbuf), "%d", version);
    const char *values[1] = {vbuf};
    PGresult *res = query(conn, "read needletrace.schema_migrations",
                          "SELECT checksum FROM needletrace.schema_migrations "
                          "WHERE version = $1::int",
                          1, values, NULL, NULL, 1);
    if (res == NULL) {
        return NT_EDB;
    }
    int found = PQntuples(res) > 0;
    *sum_ok = 0;
    if (found && PQgetlength(res, 0, 0) == SHA256_DIGEST_LENGTH) {
        memcpy(sum, PQgetvalue(res, 0, 0), SHA256_DIGEST_LENGTH);
        *sum_ok = 1;
    }
    PQclear(res);
    return found;
}

/* Applies one migration in its own transaction and records it. 0 or NT_EDB. */
static int apply_one(PGconn *conn, const nt_migration_t *m, const char *label,
                     const uint8_t sum[SHA256_DIGEST_LENGTH])
{
    char what[160];
    if (command(conn, "begin a transaction", "BEGIN", 0, NULL, NULL, NULL) != 0) {
        return NT_EDB;
    }
    snprintf(what, sizeof(what), "apply migration %s", label);
    if (command(conn, what, m->sql, 0, NULL, NULL, NULL) != 0) {
        goto err;
    }
    char vbuf[16];
    snprintf(vbuf, sizeof(vbuf), "%d", m->version);
    const char *values[3] = {vbuf, m->name, (const char *)sum};
    const int lengths[3] = {0, 0, SHA256_DIGEST_LENGTH};
    const int formats[3] = {0, 0, 1};
    snprintf(what, sizeof(what), "record migration %s", label);
    if (command(conn, what,
                "INSERT INTO needletrace.schema_migrations (version, name, checksum) "
                "VALUES ($1::int, $2::text, $3::bytea)",
                3, values, lengths, formats) != 0) {
        goto err;
    }
    snprintf(what, sizeof(what), "commit migration %s", label);
    if (command(conn, what, "COMMIT", 0, NULL, NULL, NULL) != 0) {
        goto err;
    }
    nt_log(NT_LOG_INFO, "migrate", "applied migration %s", label);
    return 0;

err:
    PQclear(PQexec(conn, "ROLLBACK"));
    return NT_EDB;
}

/* Walks the migrations in order under the advisory lock. 0 or NT_EDB. */
static int apply_all(PGconn *conn)
{
    for (size_t i = 0; i < nt_migrations_count; i++) {
        const nt_migration_t *m = &nt_migrations[i];
        char label[96];
        snprintf(label, sizeof(label), "%03d_%s", m->version, m->name);
        uint8_t sum[SHA256_DIGEST_LENGTH];
        SHA256((const unsigned char *)m->sql, strlen(m->sql), sum);

        uint8_t have[SHA256_DIGEST_LENGTH];
        int have_ok = 0;
        int found = recorded_checksum(conn, m->version, have, &have_ok);
        if (found < 0) {
            return NT_EDB;
        }
        if (found) {
            if (!have_ok || memcmp(have, sum, sizeof(sum)) != 0) {
                nt_log(NT_LOG_ERROR, "migrate", "migration %s was changed after it was applied",
                       label);
                return NT_EDB;
            }
            continue;
        }
        if (apply_one(conn, m, label, sum) != 0) {
            return NT_EDB;
        }
    }

    /* A database migrated by a newer binary still works with this one (migrations only
     * add), but say so. */
    char vbuf[16];
    snprintf(vbuf, sizeof(vbuf), "%d",
             nt_migrations_count > 0 ? nt_migrations[nt_migrations_count - 1].version : 0);
    const char *values[1] = {vbuf};
    PGresult *res = query(conn, "read needletrace.schema_migrations",
                          "SELECT count(*)::text FROM needletrace.schema_migrations "
                          "WHERE version > $1::int",
                          1, values, NULL, NULL, 0);
    if (res == NULL) {
        return NT_EDB;
    }
    if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "0") != 0) {
        nt_log(NT_LOG_WARN, "migrate",
               "database has %s migrations newer than this binary knows; leaving them as they are",
               PQgetvalue(res, 0, 0));
    }
    PQclear(res);
    return 0;
}

/* See migrate.h. Connects, takes the advisory lock, creates the schema and
 * schema_migrations if missing, then verifies (checksum) or applies each migration in order. */
int nt_migrate_apply(const char *conninfo)
{
    char err[1024];
    PGconn *conn = PQconnectdb(conninfo);
    if (conn == NULL) {
        nt_log(NT_LOG_ERROR, "migrate", "could not connect to database: out of memory");
        return NT_EDB;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        nt_log(NT_LOG_ERROR, "migrate", "could not connect to database: %s",
               db_error(conn, err, sizeof(err)));
        PQfinish(conn);
        return NT_EDB;
    }
    PQsetNoticeProcessor(conn, notice_processor, NULL);

    int rc = NT_EDB;
    int locked = 0;
    char key[24];
    snprintf(key, sizeof(key), "%" PRId64, MIGRATE_LOCK_KEY);
    const char *values[1] = {key};
    if (command(conn, "set client_min_messages", "SET client_min_messages = warning", 0, NULL, NULL,
                NULL) != 0) {
        goto done;
    }
    if (command(conn, "take the migration lock", "SELECT pg_advisory_lock($1::bigint)", 1, values,
                NULL, NULL) != 0) {
        goto done;
    }
    locked = 1;
    if (command(conn, "create schema needletrace", create_sql, 0, NULL, NULL, NULL) != 0) {
        goto done;
    }
    rc = apply_all(conn);

done:
    if (locked) {
        if (command(conn, "release the migration lock", "SELECT pg_advisory_unlock($1::bigint)", 1,
                    values, NULL, NULL) != 0) {
            rc = NT_EDB;
        }
    }
    PQfinish(conn);
    return rc;
}

static void migrate_usage(FILE *out)
{
    fprintf(out, "usage: needletrace migrate [--config FILE] [--<section>-<key> VALUE]...\n"
                 "\n"
                 "Creates or upgrades the needletrace schema in [database] url: applies, in\n"
                 "order and each in its own transaction, every migration not yet recorded in\n"
                 "needletrace.schema_migrations. Safe to run concurrently and repeatedly.\n"
                 "\n");
    nt_config_help(out);
}

/* `needletrace migrate`: 0 when the schema is up to date, 2 on bad usage or configuration,
 * 1 when the database could not be migrated (the reason is logged). */
int nt_cmd_migrate(int argc, char **argv, char *const *envp)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            migrate_usage(stdout);
            return 0;
        }
    }

    nt_config_t cfg;
    char err[512];
    if (nt_config_load(&cfg, &argc, argv, envp, err, sizeof(err)) != 0) {
        fprintf(stderr, "needletrace: %s\n", err); /* nt_config_load freed cfg */
        return 2;
    }
    if (argc > 1) {
        fprintf(stderr, "needletrace: migrate: %s \"%s\"\n",
                argv[1][0] == '-' ? "unknown option" : "unexpected argument", argv[1]);
        nt_config_free(&cfg);
        return 2;
    }
    nt_config_setup_log(&cfg);

    int rc = nt_migrate_apply(cfg.database_url);
    nt_config_free(&cfg);
    if (rc != 0) {
        return 1;
    }
    printf("schema is up to date (%zu migrations)\n", nt_migrations_count);
    return 0;
}
