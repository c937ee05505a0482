/* pglookup.c -- the database's host names looked up with getaddrinfo (see pglookup.h). */
#include "needletrace/pglookup.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

/* The numeric form of a looked-up address into buf; 0, or -1 for a family not handled. */
static int pglookup__numeric(const struct addrinfo *ai, char *buf, size_t len)
{
    const void *src;
    if (ai->ai_family == AF_INET) {
        src = &((const struct sockaddr_in *)(const void *)ai->ai_addr)->sin_addr;
    } else if (ai->ai_family == AF_INET6) {
        src = &((const struct sockaddr_in6 *)(const void *)ai->ai_addr)->sin6_addr;
    } else {
        return -1;
    }
    return inet_ntop(ai->ai_family, src, buf, (socklen_t)len) != NULL ? 0 : -1;
}

/* Adds addr for host i unless it is there already or the list is full. */
static void pglookup__add(nt_pglookup_t *l, size_t i, const char *addr)
{
    for (size_t k = 0; k < l->naddrs; k++) {
        if (l->addrs[k].host == i && strcmp(l->addrs[k].addr, addr) == 0) {
            return;
        }
    }
    if (l->naddrs < NT_PGLOOKUP_MAX_ADDRS) {
        l->addrs[l->naddrs].host = i;
        snprintf(l->addrs[l->naddrs].addr, sizeof(l->addrs[0].addr), "%s", addr);
        l->naddrs++;
    }
}

/* Looks up entry i; 1 when it gave at least one address. */
static int pglookup__one(nt_pglookup_t *l, size_t i)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    const nt_pgparams_host_t *h = &l->hosts[i];
    int rc = getaddrinfo(h->name, NULL, &hints, &res);
    if (rc != 0) {
        if (l->error[0] == '\0') {
            snprintf(l->error, sizeof(l->error), "\"%s\": %s", h->name,
                     rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        }
        return 0;
    }
    size_t before = l->naddrs;
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        char addr[64];
        if (pglookup__numeric(ai, addr, sizeof(addr)) == 0) {
            pglookup__add(l, i, addr);
        }
    }
    freeaddrinfo(res);
    if (l->naddrs == before && l->error[0] == '\0') {
        snprintf(l->error, sizeof(l->error), "\"%s\": no IPv4 or IPv6 address", h->name);
    }
    return l->naddrs > before;
}

void nt_pglookup_run(nt_pglookup_t *l)
{
    l->naddrs = 0;
    l->failed = 0;
    l->error[0] = '\0';
    for (size_t i = 0; i < l->nhosts; i++) {
        if (l->hosts[i].resolve && !pglookup__one(l, i)) {
            l->failed++;
        }
    }
}

int nt_pglookup_needed(const nt_pglookup_t *l)
{
    for (size_t i = 0; i < l->nhosts; i++) {
        if (l->hosts[i].resolve) {
            return 1;
        }
    }
    return 0;
}
