/* audit_verify_batches.c -- `audit verify`'s check of the sealed batches' rows, at scale: the
 * rows of a run of batches come by COPY in binary, each column in its type's binary form (the
 * type's send function, as record_send uses it), and their leaves are made here: the bytes
 * record_send would give (the column count, then each column's type and length before its
 * value) rebuilt around them, with the types record_send gives these columns (asked once, of a
 * row of NULLs), hashed with the table's tag as 011_ledger.sql says. The server's work is the
 * reading and the send functions, the hashing (half its work before) is this process's. Each
 * batch's leaves are compared as a multiset with the entry's stored ones (sorted, as sealed).
 * The batches are cut in pieces of at most BATCHES__ROWS rows, taken in turn by a worker per
 * connection in the same snapshot (a->conn, a->conn2 and, in a report, the sessions' one once
 * it is done: every core busy). What an entry claims bounds what is read and kept of it.
 * A batch whose rows differ in any way (a count, a leaf) is checked again row by row by
 * nt_audit__entry_rows (audit_verify.c), which names each row that differs: the findings are
 * those of the row-by-row check, only the batches found intact are not looked at twice. */
#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_internal.h"

/* The tables of a batch, their tag in a leaf and the columns of version 1 of the ledger (as in
 * audit_verify.c's row-by-row query). */
static const struct {
    char tag;
    const char *from, *cols;
} batches__tables[3] = {
    {'r', "needletrace.raw_messages r", NT_AUDIT_RAW_V1},
    {'e', "needletrace.events e", NT_AUDIT_EVENTS_V1},
    {'q', "needletrace.quarantine q", NT_AUDIT_QUARANTINE_V1},
};

/* Columns of a leaf's row at most. */
#define BATCHES__MAX_COLS 64
/* Batches per query: the parameters stay small whatever the ledger's length. */
#define BATCHES__PER_QUERY 2048
/* Rows (as the entries count them) per query: the leaves held at once stay small (8 MiB). */
#define BATCHES__ROWS 262144

enum { BATCHES__OK, BATCHES__ROOT, BATCHES__ROWS_DIFFER };

/* One batch's leaves as read. */
typedef struct {
    unsigned char *leaf; /* 32 bytes each */
    size_t n, cap;
    int64_t count[3]; /* per table */
    int over;         /* more rows than the entry claims */
} batches__acc_t;

typedef struct {
    PGconn *conn;
    const nt_audit_entry_t *const *e; /* the entries checked */
    unsigned char *status; /* per entry: BATCHES__OK, __ROOT (rows as sealed, root not), __ROWS_ */
    size_t rows;           /* rows found as sealed */
    int failed;            /* a query failed (printed) */
    int ncols[3];          /* per table: the leaf row's columns */
    unsigned char oid[3][BATCHES__MAX_COLS][4]; /* ... and their types, as record_send writes */
    EVP_MD *md;
    EVP_MD_CTX *ctx;
    uint32_t *slot;      /* batches__same's table: a stored leaf's index + 1, 0 empty */
    unsigned char *used; /* per stored leaf: taken */
    size_t slots_cap;
    unsigned char *row; /* a row's record_send bytes, rebuilt */
    size_t row_cap;
    batches__acc_t *acc; /* per entry of the piece */
    struct batches__tx {
        int64_t tx;
        size_t i;
    } * by_tx;                /* the piece's entries by tx */
    nt_audit_agg_t *agg;      /* the report's figures (NULL: none): every events row read, once */
    const unsigned char *dup; /* per entry: its tx is an earlier entry's (a forged ledger): its
                               * rows are counted with that one's */
    int agg_only;             /* rows for the figures only (no batch, no leaf) */
} batches__run_t;

static int batches__cmp_tx(const void *x, const void *y)
{
    const struct batches__tx *p = x, *q = y;
    return p->tx < q->tx ? -1 : p->tx > q->tx;
}

static uint32_t batches__be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Prints why a query failed (res NULL: no result at all). */
static void batches__error(PGconn *conn, const PGresult *res)
{
    fprintf(stderr, "needletrace: audit verify: %s", nt_audit__why(conn, res));
}

/* The types record_send gives each table's leaf columns: one row of NULLs sent by it (the
 * column count, then per column its type and -1). 0, or -1 (printed). */
static int batches__types(batches__run_t *r)
{
    for (int t = 0; t < 3; t++) {
        char sql[2048];
        snprintf(sql, sizeof(sql),
                 "SELECT pg_catalog.record_send(ROW(%s)) FROM (SELECT (NULL::%.*s).*) %c",
                 batches__tables[t].cols, (int)(strlen(batches__tables[t].from) - 2),
                 batches__tables[t].from, batches__tables[t].tag);
        PGresult *res = PQexecParams(r->conn, sql, 0, NULL, NULL, NULL, NULL, 1);
        const unsigned char *v = (const unsigned char *)PQgetvalue(res, 0, 0);
        int len = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1
                      ? PQgetlength(res, 0, 0)
                      : -1;
        uint32_t n = len >= 4 ? batches__be32(v) : 0;
        if (len < 4 || n == 0 || n > BATCHES__MAX_COLS || (size_t)len != 4 + 8 * (size_t)n) {
            if (len < 0) {
                batches__error(r->conn, res);
            }
            fprintf(stderr, "needletrace: audit verify: the types of %s's columns not read\n",
                    batches__tables[t].from);
            PQclear(res);
            return -1;
        }
        r->ncols[t] = (int)n;
        for (uint32_t c = 0; c < n; c++) {
            memcpy(r->oid[t][c], v + 4 + 8 * c, 4);
        }
        PQclear(res);
    }
    return 0;
}

static uint64_t batches__key(const unsigned char *leaf)
{
    uint64_t k;
    memcpy(&k, leaf, 8); /* a hash's bytes: any 8 of them spread evenly */
    return k;
}

/* Probes of the table at most. Leaves are SHA-256 hashes, spread evenly over a table at most a
 * quarter full (linear probing): a leaf 64 slots from its own has a chance of about 2^-58;
 * stored leaves that make one (forged to share their first bytes, so that filling the table
 * would take time quadratic in their number) are not as sealed. */
#define BATCHES__PROBES 64

/* The n leaves read (acc) are the n stored ones, sorted as sealed, each used once: the stored
 * leaves in a table by their first bytes, each leaf read taking its own (no sort of the leaves
 * read: two thirds of this process's time when they were sorted). 0: they differ (or the table
 * could not be made), and the row-by-row check says how. */
static int batches__same(batches__run_t *r, const batches__acc_t *acc, const unsigned char *stored,
                         size_t n)
{
    for (size_t k = 1; k < n; k++) {
        if (memcmp(stored + 32 * (k - 1), stored + 32 * k, 32) > 0) {
            return 0;
        }
    }
    size_t cap = 16;
    while (cap < 4 * n) {
        cap *= 2;
    }
    if (cap > r->slots_cap) {
        uint32_t *slot = realloc(r->slot, cap * sizeof(*slot));
        unsigned char *used = slot != NULL ? realloc(r->used, cap) : NULL;
        if (slot != NULL) {
            r->slot = slot;
        }
        if (used == NULL) {
            return 0; /* out of memory: the row-by-row check will tell */
        }
        r->used = used;
        r->slots_cap = cap;
    }
    memset(r->slot, 0, cap * sizeof(*r->slot));
    memset(r->used, 0, n);
    for (size_t k = 0; k < n; k++) {
        size_t h = (size_t)batches__key(stored + 32 * k) & (cap - 1), probes = 0;
        while (r->slot[h] != 0) {
            if (++probes == BATCHES__PROBES) {
                return 0; /* leaves no hash would give */
            }
            h = (h + 1) & (cap - 1);
        }
        r->slot[h] = (uint32_t)(k + 1);
    }
    for (size_t i = 0; i < acc->n; i++) {
        const unsigned char *leaf = acc->leaf + 32 * i;
        size_t h = (size_t)batches__key(leaf) & (cap - 1), probes = 0;
        for (;; h = (h + 1) & (cap - 1)) {
            uint32_t k = r->slot[h];
            if (k == 0 || ++probes > BATCHES__PROBES) {
                return 0; /* not stored, or stored fewer times */
            }
            if (!r->used[k - 1] && memcmp(stored + 32 * (k - 1), leaf, 32) == 0) {
                r->used[k - 1] = 1;
                break;
            }
        }
    }
    return 1;
}

/* One batch's leaves against its stored ones (stored, nstored bytes; NULL: no entry), then its
 * stored leaves against its root. Any difference: BATCHES__ROWS_DIFFER (the row-by-row check
 * says which). */
static void batches__one(batches__run_t *r, size_t i, batches__acc_t *acc,
                         const unsigned char *stored, size_t nstored)
{
    const nt_audit_entry_t *e = r->e[i];
    const int64_t want[3] = {e->n_raw, e->n_events, e->n_quarantine};
    int same = !acc->over && stored != NULL && nstored % 32 == 0 && acc->n * 32 == nstored;
    for (int t = 0; t < 3; t++) {
        same = same && want[t] >= 0 && acc->count[t] == want[t];
    }
    same = same && batches__same(r, acc, stored, nstored / 32);
    if (!same) {
        r->status[i] = BATCHES__ROWS_DIFFER;
        return;
    }
    r->rows += acc->n;
    unsigned char root[32];
    char hex[65];
    if (nt_audit__root(stored, nstored / 32, root) != 0) {
        r->status[i] = BATCHES__ROWS_DIFFER; /* checked row by row, where it fails as it must */
        return;
    }
    nt_audit__hex(root, 32, hex);
    r->status[i] = strcmp(hex, e->root) == 0 ? BATCHES__OK : BATCHES__ROOT;
}

int64_t nt_audit__claimed(const nt_audit_entry_t *e)
{
    const int64_t c[3] = {e->n_raw, e->n_events, e->n_quarantine};
    int64_t n = 0;
    for (int t = 0; t < 3; t++) {
        if (c[t] < 0 || c[t] > NT_AUDIT_MAX_BATCH_ROWS) {
            return -1;
        }
        n += c[t];
    }
    return n > NT_AUDIT_MAX_BATCH_ROWS ? -1 : n;
}

/* The parameters of entries [from, to) of the run, as array literals: their tx (returned; it
 * goes into the COPY's text, made from the number read), collector, seq and the length of the
 * leaves they claim (32 bytes a row); r->by_tx filled. NULL after printing why (a tx that is no
 * integer: the ledger's column was changed; or out of memory). */
static char *batches__params(batches__run_t *r, size_t from, size_t to, char **coll, char **seq,
                             char **lens)
{
    size_t n = to - from;
    char *tx = malloc(2 + 25 * n + 1), *c = malloc(2 + 70 * n + 1), *s = malloc(2 + 25 * n + 1),
         *l = malloc(2 + 25 * n + 1);
    if (tx == NULL || c == NULL || s == NULL || l == NULL) {
        fprintf(stderr, "needletrace: audit verify: out of memory\n");
        free(tx);
        free(c);
        free(s);
        free(l);
        return NULL;
    }
    size_t at = 0, ac = 0, as = 0, al = 0;
    for (size_t i = from; i < to; i++) {
        const nt_audit_entry_t *e = r->e[i];
        const char *sep = i > from ? "," : "{";
        char *end = NULL;
        errno = 0;
        long long v = strtoll(e->tx, &end, 10);
        if (errno != 0 || end == e->tx || *end != '\0') {
            fprintf(stderr,
                    "needletrace: audit verify: ledger entry %s#%s: its tx \"%.22s\" is no "
                    "integer\n",
                    e->collector, e->seq, e->tx);
            free(tx);
            free(c);
            free(s);
            free(l);
            return NULL;
        }
        r->by_tx[i - from] = (struct batches__tx){.tx = (int64_t)v, .i = i};
        int64_t claimed = nt_audit__claimed(e);
        at += (size_t)sprintf(tx + at, "%s%" PRId64, sep, (int64_t)v);
        /* collector ids are [A-Za-z0-9._-]{1,64} (011_ledger.sql): quoted all the same */
        ac += (size_t)sprintf(c + ac, "%s\"%.64s\"", sep, e->collector);
        as += (size_t)sprintf(s + as, "%s%.22s", sep, e->seq);
        al += (size_t)sprintf(l + al, "%s%" PRId64, sep, claimed < 0 ? -1 : 32 * claimed);
    }
    strcpy(tx + (n > 0 ? at : 0), n > 0 ? "}" : "{}");
    strcpy(c + (n > 0 ? ac : 0), n > 0 ? "}" : "{}");
    strcpy(s + (n > 0 ? as : 0), n > 0 ? "}" : "{}");
    strcpy(l + (n > 0 ? al : 0), n > 0 ? "}" : "{}");
    *coll = c;
    *seq = s;
    *lens = l;
    return tx;
}

/* Adds the leaf of one COPY row of table t (the fields after its tx, at p, end its end) to the
 * batches of tx. The bytes read, or 0 when the row is malformed. */
static size_t batches__row(batches__run_t *r, int t, size_t from, size_t to, const unsigned char *p,
                           const unsigned char *end)
{
    const unsigned char *start = p;
    if (end - p < 2 + 4 || (p[0] << 8 | p[1]) != 1 + r->ncols[t]) {
        return 0;
    }
    int64_t tx = 0;
    if (r->agg_only && batches__be32(p + 2) == 0xffffffffu) {
        p += 6; /* a row without a tx (altered by hand): counted all the same */
    } else if (end - p < 2 + 4 + 8 || batches__be32(p + 2) != 8) {
        return 0;
    } else {
        for (int k = 0; k < 8; k++) {
            tx = (int64_t)((uint64_t)tx << 8 | p[6 + k]);
        }
        p += 14;
    }
    size_t need = 6 + 8 * (size_t)r->ncols[t] + (size_t)(end - p);
    if (need > r->row_cap) {
        unsigned char *row = realloc(r->row, need);
        if (row == NULL) {
            return 0;
        }
        r->row = row;
        r->row_cap = need;
    }
    /* record_send: the column count, then per column its type, its length (-1: NULL) and its
     * bytes; the leaf hashes 0x00, the table's tag and those bytes */
    unsigned char *w = r->row;
    uint32_t nc = (uint32_t)r->ncols[t];
    *w++ = 0;
    *w++ = (unsigned char)batches__tables[t].tag;
    *w++ = (unsigned char)(nc >> 24), *w++ = (unsigned char)(nc >> 16);
    *w++ = (unsigned char)(nc >> 8), *w++ = (unsigned char)nc;
    const unsigned char *field[BATCHES__MAX_COLS];
    int32_t flen[BATCHES__MAX_COLS];
    for (int c = 0; c < r->ncols[t]; c++) {
        if (end - p < 4) {
            return 0;
        }
        uint32_t len = batches__be32(p);
        size_t body = len == 0xffffffffu ? 0 : len;
        if (len != 0xffffffffu && (len > INT32_MAX || (size_t)(end - p - 4) < body)) {
            return 0;
        }
        field[c] = p + 4;
        flen[c] = len == 0xffffffffu ? -1 : (int32_t)len;
        memcpy(w, r->oid[t][c], 4);
        memcpy(w + 4, p, 4 + body);
        w += 8 + body;
        p += 4 + body;
    }
    if (r->agg_only) { /* a failure of the figures is theirs (nt_audit__agg_error), never the
                        * verification's */
        nt_audit__agg_row(r->agg, r->ncols[t], field, flen);
        return (size_t)(p - start);
    }
    unsigned char leaf[32];
    if (EVP_DigestInit_ex(r->ctx, r->md, NULL) != 1 ||
        EVP_DigestUpdate(r->ctx, r->row, (size_t)(w - r->row)) != 1 ||
        EVP_DigestFinal_ex(r->ctx, leaf, NULL) != 1) {
        return 0;
    }
    /* every entry of the piece with this tx (one, unless the ledger was forged) */
    struct batches__tx key = {.tx = tx}, *hit = bsearch(&key, r->by_tx, to - from,
                                                        sizeof(*r->by_tx), batches__cmp_tx);
    if (hit == NULL) {
        return 0; /* a row of no batch asked for: the query is not what was meant */
    }
    while (hit > r->by_tx && hit[-1].tx == tx) {
        hit--;
    }
    int count = 0; /* for the figures: when one of its entries here is the first of its tx */
    for (struct batches__tx *h = hit; h < r->by_tx + (to - from) && h->tx == tx; h++) {
        count = count || r->dup == NULL || !r->dup[h->i];
    }
    if (t == 1 && r->agg != NULL && count) {
        nt_audit__agg_row(r->agg, r->ncols[t], field, flen); /* its failure is the figures' */
    }
    for (; hit < r->by_tx + (to - from) && hit->tx == tx; hit++) {
        batches__acc_t *acc = &r->acc[hit->i - from];
        int64_t claimed = nt_audit__claimed(r->e[hit->i]);
        if ((int64_t)acc->n >= claimed) { /* more rows than it claims: they differ, and no
                                           * more of its leaves are kept */
            acc->over = 1;
            continue;
        }
        if (acc->n == acc->cap) {
            size_t cap = acc->cap > 0 ? acc->cap * 2 : 256;
            unsigned char *l = realloc(acc->leaf, cap * 32);
            if (l == NULL) {
                return 0;
            }
            acc->leaf = l;
            acc->cap = cap;
        }
        memcpy(acc->leaf + 32 * acc->n++, leaf, 32);
        acc->count[t]++;
    }
    return (size_t)(p - start);
}

/* Table t's rows of the piece's batches (txs, an array literal; with r->agg_only, where is the
 * condition instead) by COPY in binary, each row's leaf to its batch. 0, or -1 (printed). */
static int batches__copy(batches__run_t *r, int t, size_t from, size_t to, const char *txs,
                         const char *where)
{
    size_t cap = strlen(txs != NULL ? txs : where) + 4096;
    char *sql = malloc(cap);
    if (sql == NULL) {
        fprintf(stderr, "needletrace: audit verify: out of memory\n");
        return -1;
    }
    if (txs != NULL) {
        snprintf(sql, cap,
                 "COPY (SELECT %c.tx, %s FROM %s WHERE %c.tx = ANY ('%s'::bigint[])) TO STDOUT "
                 "(FORMAT binary)",
                 batches__tables[t].tag, batches__tables[t].cols, batches__tables[t].from,
                 batches__tables[t].tag, txs);
    } else {
        snprintf(sql, cap, "COPY (SELECT %c.tx, %s FROM %s WHERE %s) TO STDOUT (FORMAT binary)",
                 batches__tables[t].tag, batches__tables[t].cols, batches__tables[t].from, where);
    }
    PGresult *res = PQexec(r->conn, sql);
    free(sql);
    int ok = PQresultStatus(res) == PGRES_COPY_OUT, header = 1, trailer = 0, bad = 0, n = 0;
    if (!ok) {
        batches__error(r->conn, res);
    }
    PQclear(res);
    static const unsigned char sig[11] = "PGCOPY\n\377\r\n";
    char *buf;
    while (ok && (n = PQgetCopyData(r->conn, &buf, 0)) > 0) {
        const unsigned char *p = (const unsigned char *)buf, *end = p + n;
        if (header) { /* the signature, flags and the extension's length, then the extension */
            header = 0;
            uint32_t ext = n >= 19 ? batches__be32(p + 15) : 0;
            /* flags: bits 0-15 a change this reader does not know, 16 OIDs (none since 12) */
            bad = n < 19 || memcmp(p, sig, 11) != 0 || (batches__be32(p + 11) & 0x1ffffu) != 0 ||
                  ext > (uint32_t)(n - 19);
            p += bad ? 0 : 19 + ext;
        }
        while (!bad && p < end) {
            if (trailer) {
                bad = 1; /* nothing after the trailer */
            } else if (end - p >= 2 && p[0] == 0xff && p[1] == 0xff) {
                trailer = 1;
                p += 2;
            } else {
                size_t used = batches__row(r, t, from, to, p, end);
                bad = used == 0;
                p += used;
            }
        }
        PQfreemem(buf);
    }
    if (ok && n == -2) { /* the connection lost, or no memory for a row: nothing more from it */
        batches__error(r->conn, NULL);
        ok = 0;
    }
    while ((res = PQgetResult(r->conn)) != NULL) {
        ExecStatusType st = PQresultStatus(res);
        if (ok && st != PGRES_COMMAND_OK) {
            batches__error(r->conn, res);
            ok = 0;
        }
        PQclear(res);
        if (st == PGRES_COPY_OUT || st == PGRES_COPY_IN || st == PGRES_COPY_BOTH) {
            break; /* still in the COPY (after -2): it would come back forever */
        }
    }
    if (ok && (bad || header || !trailer)) {
        fprintf(stderr,
                "needletrace: audit verify: the %s rows came in a form not understood "
                "(or out of memory)\n",
                batches__tables[t].from);
        bad = 1;
    }
    return ok && !bad ? 0 : -1;
}

/* Entries [from, to) of the run: their stored leaves, then their rows, table by table. */
static void batches__query(batches__run_t *r, size_t from, size_t to)
{
    char *coll = NULL, *seq = NULL, *lens = NULL, *tx = NULL;
    PGresult *stored = NULL;
    r->acc = calloc(to - from, sizeof(*r->acc));
    r->by_tx = calloc(to - from, sizeof(*r->by_tx));
    if (r->acc == NULL || r->by_tx == NULL) {
        fprintf(stderr, "needletrace: audit verify: out of memory\n");
        r->failed = 1;
    } else if ((tx = batches__params(r, from, to, &coll, &seq, &lens)) == NULL) {
        r->failed = 1;
    } else {
        /* an entry's leaves only when as long as its counts say (else NULL: its rows differ,
         * checked row by row): a forged one, however long, is not read here */
        const char *values[3] = {coll, seq, lens};
        stored = PQexecParams(r->conn,
                              "SELECT CASE WHEN pg_catalog.octet_length(l.leaves) = t.n THEN "
                              "l.leaves END FROM ROWS FROM (pg_catalog.unnest($1::text[]), "
                              "pg_catalog.unnest($2::bigint[]), pg_catalog.unnest($3::bigint[])) "
                              "WITH ORDINALITY AS t(c, s, n, o) LEFT JOIN needletrace.ledger l ON "
                              "l.collector_id = t.c AND l.seq = t.s ORDER BY t.o",
                              3, NULL, values, NULL, NULL, 1);
        if (PQresultStatus(stored) != PGRES_TUPLES_OK) {
            batches__error(r->conn, stored);
            r->failed = 1;
        } else if (PQntuples(stored) != (int)(to - from)) {
            fprintf(stderr, "needletrace: audit verify: %d stored leaves for %zu batches\n",
                    PQntuples(stored), to - from);
            r->failed = 1;
        }
    }
    if (!r->failed) {
        qsort(r->by_tx, to - from, sizeof(*r->by_tx), batches__cmp_tx);
    }
    for (int t = 0; t < 3 && !r->failed; t++) {
        r->failed = batches__copy(r, t, from, to, tx, NULL) != 0;
    }
    for (size_t i = from; i < to && !r->failed; i++) {
        batches__one(r, i, &r->acc[i - from],
                     PQgetisnull(stored, (int)(i - from), 0)
                         ? NULL
                         : (const unsigned char *)PQgetvalue(stored, (int)(i - from), 0),
                     (size_t)PQgetlength(stored, (int)(i - from), 0));
    }
    for (size_t i = from; r->acc != NULL && i < to; i++) {
        free(r->acc[i - from].leaf);
    }
    free(r->acc);
    free(r->by_tx);
    r->acc = NULL;
    r->by_tx = NULL;
    PQclear(stored);
    free(tx);
    free(coll);
    free(seq);
    free(lens);
}

/* The pieces of the check, taken in turn by the workers (one per connection). */
typedef struct {
    pthread_mutex_t mu;
    size_t next, n;
    size_t (*piece)[2]; /* [from, to) of each piece */
    int failed;         /* a worker failed: the others stop */
    nt_audit_late_t *late;
} batches__queue_t;

typedef struct {
    batches__run_t run;
    batches__queue_t *q;
    int joiner; /* waits for q->late's connection first */
} batches__worker_t;

/* The next piece, or 0 when none is left (then a connection still to come need not). */
static int batches__take(batches__queue_t *q, size_t *from, size_t *to)
{
    pthread_mutex_lock(&q->mu);
    int got = q->next < q->n && !q->failed;
    if (got) {
        *from = q->piece[q->next][0];
        *to = q->piece[q->next][1];
        q->next++;
    }
    pthread_mutex_unlock(&q->mu);
    if (!got && q->late != NULL) {
        pthread_mutex_lock(&q->late->mu);
        q->late->exhausted = 1;
        pthread_cond_broadcast(&q->late->cv);
        pthread_mutex_unlock(&q->late->mu);
    }
    return got;
}

static void *batches__work(void *arg)
{
    batches__worker_t *w = arg;
    batches__run_t *r = &w->run;
    if (w->joiner) {
        nt_audit_late_t *late = w->q->late;
        pthread_mutex_lock(&late->mu);
        while (!late->done && !late->exhausted) {
            pthread_cond_wait(&late->cv, &late->mu);
        }
        r->conn = late->exhausted ? NULL : late->conn;
        pthread_mutex_unlock(&late->mu);
        if (r->conn == NULL) {
            return NULL;
        }
    }
    r->md = EVP_MD_fetch(NULL, "SHA256", NULL);
    r->ctx = EVP_MD_CTX_new();
    if (r->md == NULL || r->ctx == NULL) {
        fprintf(stderr, "needletrace: audit verify: no SHA-256 (OpenSSL)\n");
        r->failed = 1;
    } else if (batches__types(r) != 0) {
        r->failed = 1;
    }
    size_t from, to;
    while (!r->failed && batches__take(w->q, &from, &to)) {
        batches__query(r, from, to);
    }
    if (r->failed) { /* no verdict: the others stop, a connection still to come need not */
        pthread_mutex_lock(&w->q->mu);
        w->q->failed = 1;
        pthread_mutex_unlock(&w->q->mu);
        batches__take(w->q, &from, &to);
    }
    free(r->row);
    free(r->slot);
    free(r->used);
    r->row = NULL;
    EVP_MD_CTX_free(r->ctx);
    EVP_MD_free(r->md);
    return NULL;
}

/* Cuts the n entries sel into pieces of at most BATCHES__PER_QUERY batches and BATCHES__ROWS rows
 * (one batch at least); their number, 0 when out of memory. */
static size_t batches__pieces(const nt_audit_entry_t *const *sel, size_t n, size_t (**out)[2])
{
    size_t(*piece)[2] = malloc((n + 1) * sizeof(*piece)), k = 0;
    if (piece == NULL) {
        return 0;
    }
    for (size_t from = 0, to; from < n; from = to) {
        int64_t rows = 0;
        for (to = from;
             to < n && to - from < BATCHES__PER_QUERY && (to == from || rows < BATCHES__ROWS);
             to++) {
            const int64_t c[3] = {sel[to]->n_raw, sel[to]->n_events, sel[to]->n_quarantine};
            for (int t = 0; t < 3; t++) { /* a forged count: no overflow */
                rows += c[t] < 0 ? 0 : c[t] > BATCHES__ROWS ? BATCHES__ROWS : c[t];
            }
        }
        piece[k][0] = from;
        piece[k][1] = to;
        k++;
    }
    *out = piece;
    return k;
}

/* Per entry: its tx is an earlier entry's (the rows of a tx are counted in the figures once,
 * with its first entry). NULL when out of memory. */
static unsigned char *batches__dups(const nt_audit_entry_t *const *sel, size_t n)
{
    unsigned char *dup = calloc(n + 1, 1);
    struct batches__tx *t = calloc(n + 1, sizeof(*t));
    for (size_t i = 0; dup != NULL && t != NULL && i < n; i++) {
        t[i] = (struct batches__tx){.tx = strtoll(sel[i]->tx, NULL, 10), .i = i};
    }
    if (dup != NULL && t != NULL) {
        qsort(t, n, sizeof(*t), batches__cmp_tx);
        for (size_t i = 0, j; i < n; i = j) {
            size_t first = t[i].i;
            for (j = i + 1; j < n && t[j].tx == t[i].tx; j++) {
                first = t[j].i < first ? t[j].i : first;
            }
            for (size_t k = i; k < j; k++) {
                dup[t[k].i] = t[k].i != first;
            }
        }
    }
    free(t);
    if (t == NULL) {
        free(dup);
        return NULL;
    }
    return dup;
}

size_t nt_audit__batches(nt_audit_t *a, const nt_audit_entry_t *const *sel, size_t n)
{
    unsigned char *status = calloc(n + 1, 1);
    unsigned char *dup = a->agg != NULL ? batches__dups(sel, n) : NULL;
    batches__queue_t q = {.mu = PTHREAD_MUTEX_INITIALIZER, .late = a->late};
    q.n = batches__pieces(sel, n, &q.piece);
    /* a worker per connection, taking pieces in turn: this thread on a->conn, threads on
     * a->conn2 and (once it is free) a->late's; each gathers its own figures */
    batches__worker_t w[3] = {{.run = {.conn = a->conn, .e = sel, .status = status}, .q = &q},
                              {.run = {.conn = a->conn2, .e = sel, .status = status}, .q = &q},
                              {.run = {.e = sel, .status = status}, .q = &q, .joiner = 1}};
    int oom = status == NULL || (n > 0 && q.n == 0) || (a->agg != NULL && dup == NULL);
    for (int k = 0; k < 3 && a->agg != NULL && !oom; k++) {
        w[k].run.dup = dup;
        oom = (w[k].run.agg = nt_audit__agg_child(a->agg)) == NULL;
    }
    if (oom) {
        fprintf(stderr, "needletrace: audit verify: out of memory\n");
        a->failed = 1;
        for (int k = 0; k < 3; k++) {
            nt_audit__agg_free(w[k].run.agg);
        }
        free(status);
        free(dup);
        free(q.piece);
        return 0;
    }
    pthread_t th[3];
    int started[3] = {0};
    for (int k = 1; k < 3; k++) {
        int want = k == 1 ? a->conn2 != NULL : a->late != NULL;
        started[k] = want && q.n > 0 && pthread_create(&th[k], NULL, batches__work, &w[k]) == 0;
    }
    batches__work(&w[0]);
    size_t rows = w[0].run.rows;
    a->failed |= w[0].run.failed;
    for (int k = 1; k < 3; k++) {
        if (started[k]) {
            pthread_join(th[k], NULL);
            rows += w[k].run.rows;
            a->failed |= w[k].run.failed;
        }
    }
    free(q.piece);
    free(dup);
    pthread_mutex_destroy(&q.mu);
    for (int k = 0; k < 3; k++) { /* the workers' figures into the report's (a failure is the
                                   * figures', nt_audit__agg_error: the verification goes on) */
        if (w[k].run.agg != NULL) {
            nt_audit__agg_merge(a->agg, w[k].run.agg);
        }
        nt_audit__agg_free(w[k].run.agg);
    }
    for (size_t i = 0; i < n && !a->failed; i++) {
        if (status[i] == BATCHES__ROOT) {
            nt_audit__finding(a, "ledger entry %s#%s: its leaves do not give its root",
                              sel[i]->collector, sel[i]->seq);
        } else if (status[i] == BATCHES__ROWS_DIFFER) {
            rows += nt_audit__entry_rows(a, sel[i]);
        }
    }
    free(status);
    return rows;
}

int nt_audit__agg_rest(nt_audit_t *a)
{
    /* Without findings every row after the genesis is in a checked batch (verify looked): the
     * rest are those from before the ledger, read by the tx index. With findings (rows outside
     * any batch, a second genesis, a forged entry), every row no checked entry seals: a scan. */
    static const char sealed[] = "NOT EXISTS (SELECT 1 FROM needletrace.ledger l WHERE l.tx = "
                                 "e.tx AND l.collector_id IS DISTINCT FROM '(genesis)')";
    char where[256];
    char *end = NULL;
    long long legacy = strtoll(a->legacy_tx, &end, 10);
    if (a->findings == 0 && a->legacy_tx[0] != '\0' && end != NULL && *end == '\0') {
        snprintf(where, sizeof(where), "e.tx <= %lld AND %s", legacy, sealed);
    } else {
        snprintf(where, sizeof(where), "%s", sealed);
    }
    batches__run_t r = {.conn = a->conn, .agg = a->agg, .agg_only = 1};
    int rc = batches__types(&r) == 0 ? batches__copy(&r, 1, 0, 0, NULL, where) : -1;
    free(r.row);
    if (rc != 0) {
        a->failed = 1;
    }
    return rc;
}
