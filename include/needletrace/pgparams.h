/* pgparams.h -- the keyword/value arrays the collector's database connection is made with.
 *
 * The configured connection string (database.url: a libpq string or URI) is parsed once with
 * PQconninfoParse; the arrays then hold, in this order:
 *   - defaults for what it leaves unset: TCP keepalives and a user timeout (a peer that
 *     vanished is noticed), fallback_application_name "needletrace-<collector id>";
 *   - every keyword it sets, as it sets it, except the ones below;
 *   - options: its own options, then "-c statement_timeout=<ms>" when a timeout is set (the
 *     server applies it from the first statement on);
 *   - host, hostaddr, port: as configured; after nt_pgparams_set_addrs(), one entry per
 *     resolved address, each with the name it was resolved from as host (so TLS and
 *     authentication still see the name) and the address as hostaddr, so that libpq does no
 *     lookup of its own (a blocking getaddrinfo on the loop);
 *   - password, when nt_pgparams_set_password() gave one (database.password_file's);
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
    const char *password; /* not owned (nt_pgparams_set_password); NULL: none */
} nt_pgparams_t;

/* One entry of the host list to connect to, as configured. */
typedef struct {
    char name[256]; /* a host name, a numeric address, a socket directory, or "" (the default) */
    char port[16];  /* "" for the default */
    int resolve;    /* 1: a name or address to look up; 0: a socket directory or "" */
} nt_pgparams_host_t;

/* One looked-up address of the entry hosts[host]. */
typedef struct {
    size_t host;
    char addr[64]; /* numeric, as inet_ntop writes it */
} nt_pgparams_addr_t;

/* Parses conninfo and builds the arrays for collector_id with statement_timeout_ms (0: none).
 * Returns 0; NT_ECONFIG when conninfo is not valid libpq syntax (err says so without quoting
 * it: it may hold a password); NT_ENOMEM. On failure nothing is left allocated. */
int nt_pgparams_init(nt_pgparams_t *p, const char *conninfo, const char *collector_id,
                     uint64_t statement_timeout_ms, char *err, size_t errlen);
void nt_pgparams_close(nt_pgparams_t *p);

/* Adds password to the arrays as libpq's password keyword (after the string's keywords: it wins
 * over one in the string), or removes it (NULL). Not copied: it must outlive p. Never fails. */
void nt_pgparams_set_password(nt_pgparams_t *p, const char *password);

/* The value of keyword key in the arrays as they are now, NULL when unset. */
const char *nt_pgparams_get(const nt_pgparams_t *p, const char *key);

/* The host list to look up before connecting, into hosts (at most max entries): each entry of
 * the configured host list (PGHOST when the string sets none) with its port (the port list, or
 * PGPORT), marked for lookup unless it is a socket directory (starting with '/' or '@') or empty.
 * Returns the number of entries, 0 when there is nothing to look up (no host configured: the
 * default socket; hostaddr or PGHOSTADDR configured; a service, whose host libpq reads at
 * connect), NT_ETOOBIG with more than max entries, NT_ECONFIG when the port list matches
 * neither one port nor one per host. */
int nt_pgparams_hosts(const nt_pgparams_t *p, nt_pgparams_host_t *hosts, size_t max);

/* Replaces host, hostaddr and port in the arrays by one entry per address of addrs (in order)
 * for each entry of hosts to look up, and the entry itself for the others, in the order of
 * hosts. Returns 0, NT_ENOMEM, or NT_EINVAL when that leaves no entry (nothing resolved). */
int nt_pgparams_set_addrs(nt_pgparams_t *p, const nt_pgparams_host_t *hosts, size_t nhosts,
                          const nt_pgparams_addr_t *addrs, size_t naddrs);

#endif
