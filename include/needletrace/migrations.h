/* migrations.h -- the versioned SQL migrations compiled into the binary, and how to apply them. */
#ifndef NEEDLETRACE_MIGRATIONS_H
#define NEEDLETRACE_MIGRATIONS_H

#include <stddef.h>

typedef struct {
    int version; /* NNN of collector/sql/NNN_name.sql */
    const char *name;
    const char *sql;
} nt_migration_t;

/* Generated from collector/sql/ at build time, sorted by version. */
extern const nt_migration_t nt_migrations[];
extern const size_t nt_migrations_count;

/* Applies every migration not yet recorded in needletrace.schema_migrations, each in its
 * own transaction, under a session advisory lock so that concurrent runs (several
 * replicas starting at once) serialise; a second run applies nothing. conninfo is a
 * libpq connection string or URI; password, when not NULL, is given to libpq as its password
 * keyword (database.password_file's). Prints one line per applied migration to stderr via
 * nt_log. Returns 0, or NT_EDB with the server's message logged. */
int nt_migrations_apply(const char *conninfo, const char *password);

#endif
