/* pgparams.c -- the keyword/value arrays of the collector's database connection (pgparams.h). */
#include "needletrace/pgparams.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/pqutil.h"

/* Keywords the arrays set themselves (the configured value is merged or replaced). */
static const char *const pgparams__own[] = {"options", "host", "hostaddr", "port",
                                            NT_PQUTIL_ENCODING_KEY};

/* Defaults for what the configured string leaves unset: TCP keepalives and a user timeout
 * notice a peer that vanished. */
static const char *const pgparams__defaults[][2] = {
    {"keepalives", "1"},       {"keepalives_idle", "10"},     {"keepalives_interval", "5"},
    {"keepalives_count", "3"}, {"tcp_user_timeout", "30000"},
};

static int pgparams__is_own(const char *key)
{
    for (size_t i = 0; i < NT_ARRAY_SIZE(pgparams__own); i++) {
        if (strcmp(key, pgparams__own[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

/* The configured value of key (the environment variable env when the string leaves it unset
 * and env is not NULL), NULL when neither sets it. */
static const char *pgparams__configured(const nt_pgparams_t *p, const char *key, const char *env)
{
    for (const PQconninfoOption *o = p->parsed; o->keyword != NULL; o++) {
        if (strcmp(o->keyword, key) == 0 && o->val != NULL) {
            return o->val;
        }
    }
    const char *v = env != NULL ? getenv(env) : NULL;
    return v != NULL && v[0] != '\0' ? v : NULL;
}

static void pgparams__add(nt_pgparams_t *p, const char *key, const char *value)
{
    if (value != NULL) {
        p->keys[p->n] = key;
        p->values[p->n] = value;
        p->n++;
    }
}

/* (Re)builds the arrays from the parsed string and the owned strings. */
static void pgparams__build(nt_pgparams_t *p)
{
    p->n = 0;
    for (size_t i = 0; i < NT_ARRAY_SIZE(pgparams__defaults); i++) {
        if (pgparams__configured(p, pgparams__defaults[i][0], NULL) == NULL) {
            pgparams__add(p, pgparams__defaults[i][0], pgparams__defaults[i][1]);
        }
    }
    for (const PQconninfoOption *o = p->parsed; o->keyword != NULL; o++) {
        if (o->val != NULL && !pgparams__is_own(o->keyword) &&
            strcmp(o->keyword, "fallback_application_name") != 0 &&
            (p->password == NULL || strcmp(o->keyword, "password") != 0)) {
            pgparams__add(p, o->keyword, o->val);
        }
    }
    const char *app = pgparams__configured(p, "fallback_application_name", NULL);
    pgparams__add(p, "fallback_application_name", app != NULL ? app : p->app_name);
    pgparams__add(p, "options",
                  p->options != NULL ? p->options : pgparams__configured(p, "options", NULL));
    pgparams__add(p, "host", p->host != NULL ? p->host : pgparams__configured(p, "host", NULL));
    pgparams__add(p, "hostaddr",
                  p->hostaddr != NULL ? p->hostaddr : pgparams__configured(p, "hostaddr", NULL));
    pgparams__add(p, "port", p->port != NULL ? p->port : pgparams__configured(p, "port", NULL));
    pgparams__add(p, "password", p->password);
    pgparams__add(p, NT_PQUTIL_ENCODING_KEY, NT_PQUTIL_ENCODING_VALUE);
    p->keys[p->n] = NULL;
    p->values[p->n] = NULL;
}

int nt_pgparams_init(nt_pgparams_t *p, const char *conninfo, const char *collector_id,
                     uint64_t statement_timeout_ms, char *err, size_t errlen)
{
    char *perr = NULL;
    memset(p, 0, sizeof(*p));
    p->parsed = PQconninfoParse(conninfo, &perr);
    if (p->parsed == NULL) {
        /* The parser's message may quote the string, password and all: keep it out. */
        snprintf(err, errlen, "database.url is not a valid libpq connection string or URI");
        PQfreemem(perr);
        return perr != NULL ? NT_ECONFIG : NT_ENOMEM;
    }
    size_t count = 0;
    for (const PQconninfoOption *o = p->parsed; o->keyword != NULL; o++) {
        count++;
    }
    p->cap = count + NT_ARRAY_SIZE(pgparams__defaults) + 5;
    p->keys = calloc(p->cap, sizeof(*p->keys));
    p->values = calloc(p->cap, sizeof(*p->values));
    size_t alen = strlen("needletrace-") + strlen(collector_id) + 1;
    p->app_name = malloc(alen);
    if (p->keys == NULL || p->values == NULL || p->app_name == NULL) {
        goto err;
    }
    snprintf(p->app_name, alen, "needletrace-%s", collector_id);
    if (statement_timeout_ms > 0) {
        const char *mine = pgparams__configured(p, "options", NULL);
        size_t len = (mine != NULL ? strlen(mine) : 0) + 64;
        p->options = malloc(len);
        if (p->options == NULL) {
            goto err;
        }
        snprintf(p->options, len, "%s%s-c statement_timeout=%" PRIu64, mine != NULL ? mine : "",
                 mine != NULL && mine[0] != '\0' ? " " : "", statement_timeout_ms);
    }
    pgparams__build(p);
    return 0;
err:
    snprintf(err, errlen, "out of memory");
    nt_pgparams_close(p);
    return NT_ENOMEM;
}

void nt_pgparams_close(nt_pgparams_t *p)
{
    if (p->parsed != NULL) {
        PQconninfoFree(p->parsed);
    }
    free(p->keys);
    free(p->values);
    free(p->app_name);
    free(p->options);
    free(p->host);
    free(p->hostaddr);
    free(p->port);
    memset(p, 0, sizeof(*p));
}

void nt_pgparams_set_password(nt_pgparams_t *p, const char *password)
{
    p->password = password;
    pgparams__build(p);
}

const char *nt_pgparams_get(const nt_pgparams_t *p, const char *key)
{
    for (size_t i = 0; i < p->n; i++) {
        if (strcmp(p->keys[i], key) == 0) {
            return p->values[i];
        }
    }
    return NULL;
}

/* Copies item number i of the comma-separated list into buf ("" when the list is shorter).
 * Returns NT_ETOOBIG when it does not fit. */
static int pgparams__item(const char *list, size_t i, char *buf, size_t len)
{
    const char *p = list;
    for (; i > 0 && p != NULL; i--) {
        p = strchr(p, ',');
        p = p != NULL ? p + 1 : NULL;
    }
    size_t n = p != NULL ? strcspn(p, ",") : 0;
    if (n >= len) {
        return NT_ETOOBIG;
    }
    memcpy(buf, p != NULL ? p : "", n);
    buf[n] = '\0';
    return 0;
}

static size_t pgparams__count(const char *list)
{
    size_t n = 1;
    for (const char *p = list; *p != '\0'; p++) {
        n += *p == ',';
    }
    return n;
}

int nt_pgparams_hosts(const nt_pgparams_t *p, nt_pgparams_host_t *hosts, size_t max)
{
    const char *host = pgparams__configured(p, "host", "PGHOST");
    if (host == NULL || pgparams__configured(p, "hostaddr", "PGHOSTADDR") != NULL ||
        pgparams__configured(p, "service", "PGSERVICE") != NULL) {
        return 0;
    }
    const char *port = pgparams__configured(p, "port", "PGPORT");
    size_t n = pgparams__count(host);
    size_t nports = port != NULL ? pgparams__count(port) : 0;
    if (n > max) {
        return NT_ETOOBIG;
    }
    if (nports > 1 && nports != n) {
        return NT_ECONFIG;
    }
    for (size_t i = 0; i < n; i++) {
        nt_pgparams_host_t *h = &hosts[i];
        if (pgparams__item(host, i, h->name, sizeof(h->name)) != 0 ||
            pgparams__item(port != NULL ? port : "", nports > 1 ? i : 0, h->port,
                           sizeof(h->port)) != 0) {
            return NT_ETOOBIG;
        }
        h->resolve = h->name[0] != '\0' && h->name[0] != '/' && h->name[0] != '@';
    }
    return (int)n;
}

/* Appends item to the comma-separated list in buf at *len (sized by the caller); a separator
 * before it unless it is the first. */
static void pgparams__append(char *buf, size_t *len, int first, const char *item)
{
    size_t n = strlen(item);
    if (!first) {
        buf[(*len)++] = ',';
    }
    memcpy(buf + *len, item, n);
    *len += n;
    buf[*len] = '\0';
}

int nt_pgparams_set_addrs(nt_pgparams_t *p, const nt_pgparams_host_t *hosts, size_t nhosts,
                          const nt_pgparams_addr_t *addrs, size_t naddrs)
{
    size_t cap = (nhosts + naddrs + 1) * (sizeof(hosts[0].name) + 1);
    char *host = malloc(cap), *hostaddr = malloc(cap), *port = malloc(cap);
    size_t lh = 0, la = 0, lp = 0, entries = 0;
    if (host == NULL || hostaddr == NULL || port == NULL) {
        free(host);
        free(hostaddr);
        free(port);
        return NT_ENOMEM;
    }
    host[0] = hostaddr[0] = port[0] = '\0';
    for (size_t i = 0; i < nhosts; i++) {
        for (size_t a = 0; a < (hosts[i].resolve ? naddrs : 1); a++) {
            if (hosts[i].resolve && addrs[a].host != i) {
                continue;
            }
            int first = entries++ == 0;
            pgparams__append(host, &lh, first, hosts[i].name);
            pgparams__append(hostaddr, &la, first, hosts[i].resolve ? addrs[a].addr : "");
            pgparams__append(port, &lp, first, hosts[i].port);
        }
    }
    free(p->host);
    free(p->hostaddr);
    free(p->port);
    p->host = host;
    p->hostaddr = hostaddr;
    p->port = port;
    pgparams__build(p);
    return entries > 0 ? 0 : NT_EINVAL;
}
