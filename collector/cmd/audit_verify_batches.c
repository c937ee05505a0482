/* audit_verify_batches.c -- `audit verify`'s check of the sealed batches' rows, at scale: for each
 * batch the server makes its rows' leaves (its built-in record_send and sha256, as before) and
 * sends them as one string per table, 32 bytes a row and nothing else, with the entry's stored
 * leaves; here they are sorted and compared whole. The batches are cut in two runs of about as
 * many rows, checked at once on two connections in the same snapshot (a->conn, a->conn2: the
 * server's work, the bulk of it, on two cores), each run's results streamed a batch at a time.
 * A batch whose rows differ in any way (a count, a leaf) is checked again row by row by
 * nt_audit__entry_rows (audit_verify.c), which names each row that differs: the findings are
 * those of the row-by-row check, only the batches found intact are not looked at twice. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_internal.h"

/* Per batch ($1 tx, $2 collector, $3 seq, in that order): the entry's stored leaves, then the
 * leaves of its raw_messages, events and quarantine rows (version 1 of the ledger, as in
 * audit_verify.c's row-by-row query), each table's concatenated in no particular order. */
static const char batches__sql[] =
    "SELECT (SELECT l.leaves FROM needletrace.ledger l WHERE l.collector_id = t.c AND l.seq = "
    "t.s), (SELECT pg_catalog.string_agg(pg_catalog.sha256('\\x0072'::bytea || "
    "pg_catalog.record_send(ROW(" NT_AUDIT_RAW_V1 "))), ''::bytea) FROM needletrace.raw_messages "
    "r WHERE r.tx = t.tx), (SELECT pg_catalog.string_agg(pg_catalog.sha256('\\x0065'::bytea || "
    "pg_catalog.record_send(ROW(" NT_AUDIT_EVENTS_V1 "))), ''::bytea) FROM needletrace.events e "
    "WHERE e.tx = t.tx), (SELECT pg_catalog.string_agg(pg_catalog.sha256('\\x0071'::bytea || "
    "pg_catalog.record_send(ROW(" NT_AUDIT_QUARANTINE_V1 "))), ''::bytea) FROM "
    "needletrace.quarantine q WHERE q.tx = t.tx) FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), "
    "pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::bigint[])) WITH ORDINALITY AS t(tx, c, "
    "s, o) ORDER BY t.o";

/* Batches per query: the parameters stay small whatever the ledger's length. */
#define BATCHES__PER_QUERY 2048

enum { BATCHES__OK, BATCHES__ROOT, BATCHES__ROWS };

typedef struct {
    PGconn *conn;
    const nt_audit_entry_t *const *e; /* this run's entries */
    size_t n;
    unsigned char *status; /* per entry: BATCHES__OK, __ROOT (rows as sealed, root not), __ROWS */
    size_t rows;           /* rows found as sealed */
    int failed;            /* a query failed (printed) */
    unsigned char *buf;    /* the rows' leaves of one batch, sorted here */
    size_t cap;
} batches__run_t;

static int batches__cmp_leaf(const void *x, const void *y)
{
    return memcmp(x, y, 32);
}

/* One batch's result row: its rows against its stored leaves, then its stored leaves against its
 * root. Any difference: BATCHES__ROWS (the row-by-row check says which). */
static void batches__one(batches__run_t *r, size_t i, const PGresult *res)
{
    const nt_audit_entry_t *e = r->e[i];
    size_t nstored = (size_t)PQgetlength(res, 0, 0), len[3], total = 0;
    const unsigned char *stored = (const unsigned char *)PQgetvalue(res, 0, 0);
    const int64_t want[3] = {e->n_raw, e->n_events, e->n_quarantine};
    int same = !PQgetisnull(res, 0, 0) && nstored % 32 == 0;
    for (int t = 0; t < 3; t++) {
        len[t] = (size_t)PQgetlength(res, 0, t + 1); /* 0 when NULL: no row */
        same = same && want[t] >= 0 && len[t] == 32 * (size_t)want[t];
        total += len[t];
    }
    same = same && total == nstored;
    if (same && total > r->cap) {
        unsigned char *p = realloc(r->buf, total);
        same = p != NULL; /* out of memory: the row-by-row check will tell */
        if (p != NULL) {
            r->buf = p;
            r->cap = total;
        }
    }
    if (same && total > 0) {
        size_t at = 0;
        for (int t = 0; t < 3; t++) {
            memcpy(r->buf + at, PQgetvalue(res, 0, t + 1), len[t]);
            at += len[t];
        }
        qsort(r->buf, total / 32, 32, batches__cmp_leaf);
        same = memcmp(r->buf, stored, total) == 0;
    }
    if (!same) {
        r->status[i] = BATCHES__ROWS;
        return;
    }
    r->rows += total / 32;
    unsigned char root[32];
    char hex[65];
    static const char hx[] = "0123456789abcdef";
    if (nt_audit__root(stored, nstored / 32, root) != 0) {
        r->status[i] = BATCHES__ROWS; /* checked row by row, where it fails as it must */
        return;
    }
    for (int k = 0; k < 32; k++) {
        hex[2 * k] = hx[root[k] >> 4];
        hex[2 * k + 1] = hx[root[k] & 15];
    }
    hex[64] = '\0';
    r->status[i] = strcmp(hex, e->root) == 0 ? BATCHES__OK : BATCHES__ROOT;
}

/* The parameters of entries [from, to) of the run: arrays of their tx, collector and seq. */
static char *batches__params(const batches__run_t *r, size_t from, size_t to, char **coll,
                             char **seq)
{
    size_t n = to - from;
    char *tx = malloc(2 + 25 * n + 1), *c = malloc(2 + 70 * n + 1), *s = malloc(2 + 25 * n + 1);
    if (tx == NULL || c == NULL || s == NULL) {
        free(tx);
        free(c);
        free(s);
        return NULL;
    }
    size_t at = 0, ac = 0, as = 0;
    for (size_t i = from; i < to; i++) {
        const char *sep = i > from ? "," : "{";
        /* collector ids are [A-Za-z0-9._-]{1,64} (011_ledger.sql): quoted all the same */
        at += (size_t)sprintf(tx + at, "%s%.22s", sep, r->e[i]->tx);
        ac += (size_t)sprintf(c + ac, "%s\"%.64s\"", sep, r->e[i]->collector);
        as += (size_t)sprintf(s + as, "%s%.22s", sep, r->e[i]->seq);
    }
    strcpy(tx + (n > 0 ? at : 0), n > 0 ? "}" : "{}");
    strcpy(c + (n > 0 ? ac : 0), n > 0 ? "}" : "{}");
    strcpy(s + (n > 0 ? as : 0), n > 0 ? "}" : "{}");
    *coll = c;
    *seq = s;
    return tx;
}

/* Entries [from, to) of the run: one query, its rows streamed one batch at a time. */
static void batches__query(batches__run_t *r, size_t from, size_t to)
{
    char *coll = NULL, *seq = NULL, *tx = batches__params(r, from, to, &coll, &seq);
    const char *values[3] = {tx, coll, seq};
    if (tx == NULL) {
        fprintf(stderr, "needletrace: audit verify: out of memory\n");
        r->failed = 1;
        return;
    }
    if (!PQsendQueryParams(r->conn, batches__sql, 3, NULL, values, NULL, NULL, 1) ||
        !PQsetSingleRowMode(r->conn)) {
        fprintf(stderr, "needletrace: audit: %s", PQerrorMessage(r->conn));
        r->failed = 1;
    }
    free(tx);
    free(coll);
    free(seq);
    size_t i = from;
    PGresult *res;
    while ((res = PQgetResult(r->conn)) != NULL) {
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_SINGLE_TUPLE && i < to && !r->failed) {
            batches__one(r, i++, res);
        } else if (st != PGRES_TUPLES_OK && st != PGRES_SINGLE_TUPLE) {
            fprintf(stderr, "needletrace: audit: %s", PQresultErrorMessage(res));
            r->failed = 1;
        }
        PQclear(res);
    }
    if (!r->failed && i != to) {
        fprintf(stderr, "needletrace: audit verify: %zu batch(es) instead of %zu\n", i - from,
                to - from);
        r->failed = 1;
    }
}

static void *batches__run(void *arg)
{
    batches__run_t *r = arg;
    for (size_t from = 0; from < r->n && !r->failed; from += BATCHES__PER_QUERY) {
        batches__query(r, from,
                       from + BATCHES__PER_QUERY < r->n ? from + BATCHES__PER_QUERY : r->n);
    }
    free(r->buf);
    r->buf = NULL;
    return NULL;
}

size_t nt_audit__batches(nt_audit_t *a, const nt_audit_entry_t *const *sel, size_t n)
{
    unsigned char *status = calloc(n + 1, 1);
    if (status == NULL) {
        fprintf(stderr, "needletrace: audit verify: out of memory\n");
        a->failed = 1;
        return 0;
    }
    /* Two runs of about as many rows each (the second empty without a second connection). */
    int64_t all = 0, half = 0;
    for (size_t i = 0; i < n; i++) {
        all += sel[i]->n_raw + sel[i]->n_events + sel[i]->n_quarantine;
    }
    size_t cut = a->conn2 != NULL ? 0 : n;
    while (cut < n && half * 2 < all) {
        half += sel[cut]->n_raw + sel[cut]->n_events + sel[cut]->n_quarantine;
        cut++;
    }
    batches__run_t run[2] = {
        {.conn = a->conn, .e = sel, .n = cut, .status = status},
        {.conn = a->conn2, .e = sel + cut, .n = n - cut, .status = status + cut}};
    pthread_t th;
    int threaded = run[1].n > 0 && pthread_create(&th, NULL, batches__run, &run[1]) == 0;
    batches__run(&run[0]);
    if (threaded) {
        pthread_join(th, NULL);
    } else if (run[1].n > 0) {
        batches__run(&run[1]); /* no thread: one after the other */
    }
    size_t rows = run[0].rows + run[1].rows;
    a->failed |= run[0].failed | run[1].failed;
    for (size_t i = 0; i < n && !a->failed; i++) {
        if (status[i] == BATCHES__ROOT) {
            nt_audit__finding(a, "ledger entry %s#%s: its leaves do not give its root",
                              sel[i]->collector, sel[i]->seq);
        } else if (status[i] == BATCHES__ROWS) {
            rows += nt_audit__entry_rows(a, sel[i]);
        }
    }
    free(status);
    return rows;
}
