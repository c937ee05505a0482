/* pgparams.h -- the keyword/value arrays the collector's database connection is made with.
 *
 * The configured connection string (database.url: a libpq string or URI) is parsed once with
 * PQconninfoParse; the arrays then hold, in this order:
 *   - defaults for what it leaves unset: TCP keepalives and a user timeout (a peer that
 *     vanished is noticed), fallback_application_name "needletrace-<collector id>";
 *   - every keyword it sets, as it sets it, except the ones below;
 *   - options: its own options, then "-c statement_timeout=<ms>" when a timeout is set (the
 *     server applies it from the first statement on);
 *   - host, hostaddr, port: as configured;
 *   - client_encoding UTF8, always (every string the collector sends is UTF-8).
 * Plain functions over strings: no connection, no lookup. */
#ifndef NEEDLETRACE_PGPARAMS_H
#define NEEDLETRACE_PGPARAMS_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    PQconninfoOption *parsed; /* the configured string */
    const char **keys;        /* NULL-terminated, for PQconnectStartParams(keys, values, 0) */
    const char **values;
    size_t n;
    size_t cap;
    char *app_name; /* owned strings the arrays point to */
    char *options;
    char *host; /* replacements of the configured lists; NULL: as configured */
    char *hostaddr;
    char *port;
} nt_pgparams_t;

/* Parses conninfo and builds the arrays for collector_id with statement_timeout_ms (0: none).
 * Returns 0; NT_ECONFIG when conninfo is not valid libpq syntax (err says so without quoting
 * it: it may hold a password); NT_ENOMEM. On failure nothing is left allocated. */
int nt_pgparams_init(nt_pgparams_t *p, const char *conninfo, const char *collector_id,
                     uint64_t statement_timeout_ms, char *err, size_t errlen);
void nt_pgparams_close(nt_pgparams_t *p);

/* The value of keyword key in the arrays as they are now, NULL when unset. */
const char *nt_pgparams_get(const nt_pgparams_t *p, const char *key);

#endif
