/* pglookup.h -- the database's host names looked up before connecting, off the loop.
 *
 * libpq resolves host names inside PQconnectPoll with a blocking getaddrinfo, which would
 * freeze the loop for the resolver's timeouts. So the connection (pgconn.h) looks the names of
 * the host list up first, with nt_pglookup_run on a thread of its own (bgcall.h), and connects
 * with the addresses as hostaddr (pgparams.h). */
#ifndef NEEDLETRACE_PGLOOKUP_H
#define NEEDLETRACE_PGLOOKUP_H

#include <stddef.h>

#include "needletrace/pgparams.h"

#define NT_PGLOOKUP_MAX_HOSTS 8  /* entries of the host list */
#define NT_PGLOOKUP_MAX_ADDRS 16 /* addresses in all */

typedef struct {
    nt_pgparams_host_t hosts[NT_PGLOOKUP_MAX_HOSTS]; /* in: nt_pgparams_hosts() */
    size_t nhosts;
    nt_pgparams_addr_t addrs[NT_PGLOOKUP_MAX_ADDRS]; /* out: the addresses found, in order */
    size_t naddrs;
    size_t failed;   /* out: entries to look up that gave no address */
    char error[320]; /* out: the first failure, "\"name\": reason" ("" when none) */
} nt_pglookup_t;

/* Looks up every entry of l->hosts marked resolve (getaddrinfo, TCP, any family; blocking: call
 * it off the loop), in order, each address once. Never fails as a whole: l->naddrs, l->failed
 * and l->error say what was found. */
void nt_pglookup_run(nt_pglookup_t *l);

/* 1 when some entry of l->hosts is to be looked up, 0 otherwise. */
int nt_pglookup_needed(const nt_pglookup_t *l);

#endif
