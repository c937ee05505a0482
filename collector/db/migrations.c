/* migrations.c -- applies the SQL migrations compiled into the binary (see migrations.h). */
#include "needletrace/migrations.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/log.h"
#include "needletrace/pqutil.h"

/* Session advisory lock key serialising concurrent migrations ("needtrac" in ASCII). */
#define MIGRATE__LOCK_KEY INT64_C(0x6e65656474726163)

static const char migrate__create_sql[] =
    "CREATE SCHEMA IF NOT EXISTS needletrace;\n"
    "CREATE TABLE IF NOT EXISTS needletrace.schema_migrations (\n"
    "    version    int         PRIMARY KEY,\n"
    "    name       text        NOT NULL,\n"
    "    checksum   bytea       NOT NULL,\n"
    "    applied_at timestamptz NOT NULL DEFAULT now()\n"
    ")";

/* Runs sql with text parameters (or binary ones, as formats says) and returns its result,
 * in result_format, for the caller to PQclear. On failure logs "could not <what>: <server
 * message>" and returns NULL. */
static PGresult *migrate__query(PGconn *conn, const char *what, const char *sql, int nparams,
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
        nt_log(NT_LOG_ERROR, "migrate", "could not %s: %s", what,
               nt_pqutil_message(PQerrorMessage(conn), err, sizeof(err)));
        PQclear(res);
        return NULL;
    }
    return res;
}

/* Like migrate__query() for statements whose result is not needed. 0 or NT_EDB. */
static int migrate__command(PGconn *conn, const char *what, const char *sql, int nparams,
                            const char *const *values, const int *lengths, const int *formats)
{
    PGresult *res = migrate__query(conn, what, sql, nparams, values, lengths, formats, 0);
    if (res == NULL) {
        return NT_EDB;
    }
    PQclear(res);
    return 0;
}

/* Looks up a recorded migration: *found is 1 with its checksum in sum (all zero when the
 * stored one is not a SHA-256, so that it matches nothing), or 0. Returns 0 or NT_EDB. */
static int migrate__recorded_checksum(PGconn *conn, int version, uint8_t sum[SHA256_DIGEST_LENGTH],
                                      int *found)
{
    char vbuf[16];
    snprintf(vbuf, sizeof(vbuf), "%d", version);
    const char *values[1] = {vbuf};
    PGresult *res = migrate__query(conn, "read needletrace.schema_migrations",
                                   "SELECT checksum FROM needletrace.schema_migrations "
                                   "WHERE version = $1::int",
                                   1, values, NULL, NULL, 1);
    if (res == NULL) {
        return NT_EDB;
    }
    *found = PQntuples(res) > 0;
    memset(sum, 0, SHA256_DIGEST_LENGTH);
    if (*found && PQgetlength(res, 0, 0) == SHA256_DIGEST_LENGTH) {
        memcpy(sum, PQgetvalue(res, 0, 0), SHA256_DIGEST_LENGTH);
    }
    PQclear(res);
    return 0;
}

/* Applies one migration in its own transaction and records it. 0 or NT_EDB. */
static int migrate__apply_one(PGconn *conn, const nt_migration_t *m, const char *label,
                              const uint8_t sum[SHA256_DIGEST_LENGTH])
{
    char what[160];
    if (migrate__command(conn, "begin a transaction", "BEGIN", 0, NULL, NULL, NULL) != 0) {
        return NT_EDB;
    }
    snprintf(what, sizeof(what), "apply migration %s", label);
    if (migrate__command(conn, what, m->sql, 0, NULL, NULL, NULL) != 0) {
        goto err;
    }
    char vbuf[16];
    snprintf(vbuf, sizeof(vbuf), "%d", m->version);
    const char *values[3] = {vbuf, m->name, (const char *)sum};
    const int lengths[3] = {0, 0, SHA256_DIGEST_LENGTH};
    const int formats[3] = {0, 0, 1};
    snprintf(what, sizeof(what), "record migration %s", label);
    if (migrate__command(conn, what,
                         "INSERT INTO needletrace.schema_migrations (version, name, checksum) "
                         "VALUES ($1::int, $2::text, $3::bytea)",
                         3, values, lengths, formats) != 0) {
        goto err;
    }
    snprintf(what, sizeof(what), "commit migration %s", label);
    if (migrate__command(conn, what, "COMMIT", 0, NULL, NULL, NULL) != 0) {
        goto err;
    }
    nt_log(NT_LOG_INFO, "migrate", "applied migration %s", label);
    return 0;

err:
    PQclear(PQexec(conn, "ROLLBACK"));
    return NT_EDB;
}

static int migrate__warn_newer(PGconn *conn);

/* Walks the migrations in order under the advisory lock. 0 or NT_EDB. */
static int migrate__apply_all(PGconn *conn)
{
    for (size_t i = 0; i < nt_migrations_count; i++) {
        const nt_migration_t *m = &nt_migrations[i];
        char label[96];
        snprintf(label, sizeof(label), "%03d_%s", m->version, m->name);
        uint8_t sum[SHA256_DIGEST_LENGTH];
        SHA256((const unsigned char *)m->sql, strlen(m->sql), sum);

        uint8_t have[SHA256_DIGEST_LENGTH];
        int found = 0;
        if (migrate__recorded_checksum(conn, m->version, have, &found) != 0) {
            return NT_EDB;
        }
        if (found) {
            if (memcmp(have, sum, sizeof(sum)) != 0) {
                nt_log(NT_LOG_ERROR, "migrate", "migration %s was changed after it was applied",
                       label);
                return NT_EDB;
            }
            continue;
        }
        if (migrate__apply_one(conn, m, label, sum) != 0) {
            return NT_EDB;
        }
    }
    return migrate__warn_newer(conn);
}

/* A database migrated by a newer binary still works with this one (migrations only add), but
 * say so (a warning). Returns 0 or NT_EDB. */
static int migrate__warn_newer(PGconn *conn)
{
    char vbuf[16];
    snprintf(vbuf, sizeof(vbuf), "%d",
             nt_migrations_count > 0 ? nt_migrations[nt_migrations_count - 1].version : 0);
    const char *values[1] = {vbuf};
    PGresult *res = migrate__query(conn, "read needletrace.schema_migrations",
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

/* Refuses a database whose encoding is not UTF8: devices send UTF-8 text (validated by the
 * decoder), and a narrower encoding would reject or alter it. 0 or NT_EDB (logged). */
static int migrate__check_encoding(PGconn *conn)
{
    PGresult *res = migrate__query(conn, "read the database encoding",
                                   "SELECT current_database(), "
                                   "pg_encoding_to_char(encoding) FROM pg_database "
                                   "WHERE datname = current_database()",
                                   0, NULL, NULL, NULL, 0);
    if (res == NULL) {
        return NT_EDB;
    }
    int rc = 0;
    if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 1), "UTF8") != 0) {
        nt_log(NT_LOG_ERROR, "migrate",
               "cannot use database \"%s\": its encoding is %s, and needletrace needs UTF8 "
               "(create the database with ENCODING 'UTF8', e.g. createdb -E UTF8 -T template0)",
               PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "?",
               PQntuples(res) == 1 ? PQgetvalue(res, 0, 1) : "unknown");
        rc = NT_EDB;
    }
    PQclear(res);
    return rc;
}

/* See migrations.h. Connects, takes the advisory lock, creates the schema and
 * schema_migrations if missing, then verifies (checksum) or applies each migration in order. */
int nt_migrations_apply(const char *conninfo, const char *password)
{
    char err[1024];
    /* a NULL password is ignored */
    const char *const keys[] = {"dbname", NT_PQUTIL_ENCODING_KEY, "password", NULL};
    const char *const cvalues[] = {conninfo, NT_PQUTIL_ENCODING_VALUE, password, NULL};
    PGconn *conn = PQconnectdbParams(keys, cvalues, 1);
    if (conn == NULL) {
        nt_log(NT_LOG_ERROR, "migrate", "could not connect to database: out of memory");
        return NT_EDB;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        nt_log(NT_LOG_ERROR, "migrate", "could not connect to database: %s",
               nt_pqutil_message(PQerrorMessage(conn), err, sizeof(err)));
        PQfinish(conn);
        return NT_EDB;
    }
    PQsetNoticeProcessor(conn, nt_pqutil_notice, (void *)"migrate");

    int rc = NT_EDB;
    int locked = 0;
    char key[24];
    snprintf(key, sizeof(key), "%" PRId64, MIGRATE__LOCK_KEY);
    const char *values[1] = {key};
    if (migrate__command(conn, "set client_min_messages", "SET client_min_messages = warning", 0,
                         NULL, NULL, NULL) != 0) {
        goto done;
    }
    if (migrate__command(conn, "take the migration lock", "SELECT pg_advisory_lock($1::bigint)", 1,
                         values, NULL, NULL) != 0) {
        goto done;
    }
    locked = 1;
    if (migrate__check_encoding(conn) != 0) {
        goto done;
    }
    if (migrate__command(conn, "create schema needletrace", migrate__create_sql, 0, NULL, NULL,
                         NULL) != 0) {
        goto done;
    }
    rc = migrate__apply_all(conn);

done:
    if (locked) {
        if (migrate__command(conn, "release the migration lock",
                             "SELECT pg_advisory_unlock($1::bigint)", 1, values, NULL, NULL) != 0) {
            rc = NT_EDB;
        }
    }
    PQfinish(conn);
    return rc;
}
