/* audit_verify.c -- `needletrace audit verify`: recomputes the ledger (011_ledger.sql) from the
 * stored rows, in this process, trusting no function of the needletrace schema: each entry's
 * hash and link, each batch's leaves and root from its rows' bytes (record_send), rows outside
 * any entry, and the chain heads named by signed digests kept outside the database. Every
 * finding names the table and the row's identity where it can be known. */
#include <dirent.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_internal.h"
#include "needletrace/arena.h"
#include "needletrace/decoder.h"
#include "needletrace/digest.h"

#define VERIFY__RAW_V1        NT_AUDIT_RAW_V1
#define VERIFY__EVENTS_V1     NT_AUDIT_EVENTS_V1
#define VERIFY__QUARANTINE_V1 NT_AUDIT_QUARANTINE_V1

/* Chains one digest may name. */
#define VERIFY__MAX_HEADS NT_AUDIT_MAX_HEADS

typedef struct {
    char tag;        /* 'r', 'e', 'q' */
    char ident[200]; /* the row's identity */
    unsigned char leaf[32];
} verify__row_t;

static const char *verify__table(char tag)
{
    return tag == 'r' ? "raw_messages" : tag == 'e' ? "events" : "quarantine";
}

void nt_audit__finding(nt_audit_t *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    FILE *out = a->out != NULL ? a->out : stdout;
    fputs("FINDING: ", out);
    vfprintf(out, fmt, ap);
    fputc('\n', out);
    va_end(ap);
    a->findings++;
}

static int verify__cmp_row(const void *x, const void *y)
{
    return memcmp(((const verify__row_t *)x)->leaf, ((const verify__row_t *)y)->leaf, 32);
}

/* The root of sorted leaves (011_ledger.sql): chunks of 64, then the chunks' hashes. 0, or -1 out
 * of memory (no root: the caller's verify has no verdict, never a finding). */
int nt_audit__root(const unsigned char *leaves, size_t n, unsigned char out[32])
{
    size_t chunks = (n + 63) / 64;
    unsigned char *top = malloc(1 + 32 * chunks);
    unsigned char buf[1 + 64 * 32];
    if (top == NULL) {
        fprintf(stderr, "needletrace: audit: out of memory\n");
        return -1;
    }
    top[0] = 0x02;
    buf[0] = 0x01;
    for (size_t c = 0; c < chunks; c++) {
        size_t k = n - 64 * c < 64 ? n - 64 * c : 64;
        memcpy(buf + 1, leaves + 32 * 64 * c, 32 * k);
        SHA256(buf, 1 + 32 * k, top + 1 + 32 * c);
    }
    SHA256(top, 1 + 32 * chunks, out);
    free(top);
    return 0;
}

/* The rows of transaction tx, with their leaves computed here. NULL on failure (printed). */
static verify__row_t *verify__rows(nt_audit_t *a, const char *tx, size_t *n)
{
    /* The rows of version 1 of the ledger (011_ledger.sql, ledger_rows), every function named
     * in pg_catalog (the session's search_path is pg_catalog too: audit.c): the server's
     * built-in record_send and sha256 make each row's leaf, so only 32 bytes per row travel
     * (no function of the needletrace schema is involved). */
    static const char sql[] =
        "SELECT 'r', pg_catalog.concat_ws('/', r.clinic_id, r.device_serial, "
        "pg_catalog.encode(r.payload_sha256, 'hex'), r.journal_pos), "
        "pg_catalog.sha256('\\x0072'::bytea || pg_catalog.record_send(ROW(" VERIFY__RAW_V1 "))) "
        "FROM needletrace.raw_messages r WHERE r.tx = $1::bigint "
        "UNION ALL SELECT 'e', pg_catalog.concat_ws('/', e.clinic_id, e.device_serial, e.boot_id, "
        "e.seq), pg_catalog.sha256('\\x0065'::bytea || "
        "pg_catalog.record_send(ROW(" VERIFY__EVENTS_V1
        "))) FROM needletrace.events e WHERE e.tx = $1::bigint "
        "UNION ALL SELECT 'q', pg_catalog.concat_ws('/', q.clinic_id, "
        "pg_catalog.encode(q.message_key, 'hex')), "
        "pg_catalog.sha256('\\x0071'::bytea || pg_catalog.record_send(ROW(" VERIFY__QUARANTINE_V1
        "))) FROM needletrace.quarantine q WHERE q.tx = $1::bigint";
    const char *values[1] = {tx};
    PGresult *res = nt_audit__query(a, sql, 1, values, 1);
    if (res == NULL) {
        return NULL;
    }
    *n = (size_t)PQntuples(res);
    verify__row_t *rows = calloc(*n + 1, sizeof(*rows));
    for (size_t i = 0; rows != NULL && i < *n; i++) {
        verify__row_t *r = &rows[i];
        r->tag = PQgetvalue(res, (int)i, 0)[0];
        snprintf(r->ident, sizeof(r->ident), "%.*s", PQgetlength(res, (int)i, 1),
                 PQgetvalue(res, (int)i, 1));
        if (PQgetlength(res, (int)i, 2) == 32) {
            memcpy(r->leaf, PQgetvalue(res, (int)i, 2), 32);
        } /* else: all zeros, matches no leaf: reported */
    }
    PQclear(res);
    if (rows == NULL) {
        fprintf(stderr, "needletrace: audit verify: out of memory\n");
    }
    return rows;
}

/* Names the events a batch's raw messages hold that are not among its rows (deleted). */
static void verify__missing_events(nt_audit_t *a, const nt_audit_entry_t *e,
                                   const verify__row_t *rows, size_t n)
{
    static const char sql[] = "SELECT topic, payload FROM needletrace.raw_messages WHERE tx = $1";
    const char *values[1] = {e->tx};
    PGresult *res = nt_audit__query(a, sql, 1, values, 1);
    if (res == NULL) {
        return;
    }
    nt_arena_t arena;
    nt_arena_init(&arena, 0, 0);
    for (int i = 0; i < PQntuples(res); i++) {
        nt_arena_reset(&arena);
        nt_message_t m;
        char detail[64];
        if (nt_decoder_decode(&arena, PQgetvalue(res, i, 0), (size_t)PQgetlength(res, i, 0),
                              (const uint8_t *)PQgetvalue(res, i, 1),
                              (size_t)PQgetlength(res, i, 1), &m, detail,
                              sizeof(detail)) != NT_REASON_OK) {
            continue;
        }
        for (size_t k = 0; k < m.msg->n_events; k++) {
            char ident[200];
            /* as stored: bigint columns (boot ids above 2^63 read negative) */
            snprintf(ident, sizeof(ident), "%s/%s/%" PRId64 "/%" PRId64, m.topic.clinic_id,
                     m.topic.device_serial, (int64_t)m.msg->boot_id,
                     (int64_t)m.msg->events[k]->seq);
            size_t j = 0;
            while (j < n && !(rows[j].tag == 'e' && strcmp(rows[j].ident, ident) == 0)) {
                j++;
            }
            if (j == n) {
                nt_audit__finding(a, "events row %s of batch %s#%s (tx %s): deleted", ident,
                                  e->collector, e->seq, e->tx);
            }
        }
    }
    nt_arena_close(&arena);
    PQclear(res);
}

/* Compares one entry's stored leaves and root with its rows. Returns the rows checked. */
static size_t verify__entry(nt_audit_t *a, const nt_audit_entry_t *e, const unsigned char *stored,
                            size_t nstored)
{
    unsigned char root[32];
    char hex[65];
    if (nt_audit__root(stored, nstored, root) != 0) {
        a->failed = 1;
        return 0;
    }
    nt_audit__hex(root, 32, hex);
    if (strcmp(hex, e->root) != 0) {
        nt_audit__finding(a, "ledger entry %s#%s: its leaves do not give its root", e->collector,
                          e->seq);
    }
    size_t n = 0;
    verify__row_t *rows = verify__rows(a, e->tx, &n);
    if (rows == NULL) {
        a->failed = 1;
        return 0;
    }
    qsort(rows, n, sizeof(*rows), verify__cmp_row);
    int64_t want[3] = {e->n_raw, e->n_events, e->n_quarantine}, found[3] = {0}, unknown[3] = {0};
    const char tags[3] = {'r', 'e', 'q'};
    /* As multisets: both sides sorted, merged; a row matches one sealed leaf at most, so a
     * duplicate of a sealed row does not hide the row it replaced. */
    size_t i = 0, j = 0, gone = 0;
    unsigned char *unknown_at = calloc(n + 1, 1);
    if (unknown_at == NULL) {
        fprintf(stderr, "needletrace: audit: out of memory\n");
        a->failed = 1;
        free(rows);
        return 0;
    }
    while (i < n || j < nstored) {
        int c = i == n ? 1 : j == nstored ? -1 : memcmp(rows[i].leaf, stored + 32 * j, 32);
        if (c == 0) {
            found[rows[i].tag == 'r' ? 0 : rows[i].tag == 'e' ? 1 : 2]++;
            i++;
            j++;
        } else if (c < 0) {
            int t = rows[i].tag == 'r' ? 0 : rows[i].tag == 'e' ? 1 : 2;
            found[t]++;
            unknown[t]++;
            /* 2: the same bytes as the row before it, matched to a sealed leaf: a copy */
            unknown_at[i] = i > 0 && memcmp(rows[i].leaf, rows[i - 1].leaf, 32) == 0 ? 2 : 1;
            i++;
        } else {
            gone++;
            j++;
        }
    }
    for (i = 0; i < n; i++) {
        int t = rows[i].tag == 'r' ? 0 : rows[i].tag == 'e' ? 1 : 2;
        if (unknown_at[i]) {
            nt_audit__finding(a, "%s row %s of batch %s#%s (tx %s): %s", verify__table(tags[t]),
                              rows[i].ident, e->collector, e->seq, e->tx,
                              unknown_at[i] == 2   ? "a copy of a sealed row (inserted)"
                              : found[t] > want[t] ? "inserted or modified (not as sealed)"
                                                   : "modified (not as sealed)");
        }
    }
    free(unknown_at);
    for (int t = 0; t < 3; t++) {
        if (found[t] < want[t]) {
            nt_audit__finding(a,
                              "batch %s#%s (tx %s): %" PRId64 " of its %" PRId64
                              " sealed %s row(s) are gone (deleted)",
                              e->collector, e->seq, e->tx, want[t] - found[t], want[t],
                              verify__table(tags[t]));
        }
    }
    /* A sealed row gone can hide behind a row inserted in its place (counts even): its
     * identity is named from the batch's raw messages whenever a sealed leaf matches no row. */
    if (gone > 0 || found[1] < want[1]) {
        verify__missing_events(a, e, rows, n);
    }
    if (gone > 0 && found[0] >= want[0] && found[1] >= want[1] && found[2] >= want[2]) {
        nt_audit__finding(a,
                          "batch %s#%s: %zu sealed row(s) match no row now (modified or deleted)",
                          e->collector, e->seq, gone);
    }
    free(rows);
    return n;
}

/* The rows stored before the ledger: as many as its genesis entry sealed. */
static void verify__genesis(nt_audit_t *a, const nt_audit_entry_t *g)
{
    static const char sql[] =
        "SELECT (SELECT pg_catalog.count(*) FROM needletrace.raw_messages WHERE tx <= $1::bigint),"
        " (SELECT pg_catalog.count(*) FROM needletrace.events WHERE tx <= $1::bigint),"
        " (SELECT pg_catalog.count(*) FROM needletrace.quarantine WHERE tx <= $1::bigint)";
    const char *values[1] = {g->tx};
    PGresult *res = nt_audit__query(a, sql, 1, values, 0);
    if (res == NULL) {
        return;
    }
    int64_t want[3] = {g->n_raw, g->n_events, g->n_quarantine};
    const char tags[3] = {'r', 'e', 'q'};
    for (int t = 0; t < 3; t++) {
        int64_t have = strtoll(PQgetvalue(res, 0, t), NULL, 10);
        if (have != want[t]) {
            nt_audit__finding(a,
                              "%s: %" PRId64 " row(s) from before the ledger, its genesis sealed "
                              "%" PRId64 " (rows %s among them)",
                              verify__table(tags[t]), have, want[t],
                              have > want[t] ? "were inserted" : "were deleted");
        }
    }
    PQclear(res);
}

size_t nt_audit__entry_rows(nt_audit_t *a, const nt_audit_entry_t *e)
{
    size_t nleaves = 0;
    unsigned char *leaves = nt_audit__leaves(a, e, &nleaves);
    if (leaves == NULL) {
        a->failed = 1;
        return 0;
    }
    size_t rows = verify__entry(a, e, leaves, nleaves);
    free(leaves);
    return rows;
}

static int verify__cmp_entry(const void *x, const void *y)
{
    const nt_audit_entry_t *p = x, *q = y;
    int c = strcmp(p->collector, q->collector);
    int64_t s = strtoll(p->seq, NULL, 10), t = strtoll(q->seq, NULL, 10);
    return c != 0 ? c : (s > t) - (s < t);
}

/* Every entry of the ledger: its hash and its link (all of them, whatever the filters), and the
 * rows of those the filters select. */
static int verify__ledger(nt_audit_t *a)
{
    size_t n = 0, nsel = 0;
    nt_audit_entry_t *entries = nt_audit__entries(a, &n, 0);
    int filtered = a->from != NULL || a->to != NULL || a->clinic != NULL;
    nt_audit_entry_t *sel = filtered && entries != NULL ? nt_audit__entries(a, &nsel, 1) : NULL;
    const nt_audit_entry_t **check = entries != NULL ? calloc(n + 1, sizeof(*check)) : NULL;
    if (entries == NULL || (filtered && sel == NULL) || check == NULL) {
        free(entries);
        free(sel);
        free(check);
        return -1;
    }
    if (filtered) { /* sorted here: the database's collation may order them otherwise */
        qsort(sel, nsel, sizeof(*sel), verify__cmp_entry);
    }
    size_t chains = 0, checked = 0;
    a->legacy_tx[0] = '\0';
    for (size_t i = 0; i < n && !a->failed; i++) {
        const nt_audit_entry_t *e = &entries[i];
        int first = i == 0 || strcmp(entries[i - 1].collector, e->collector) != 0;
        chains += first;
        nt_audit__check_link(a, e, first ? NULL : &entries[i - 1]);
        if (strcmp(e->collector, "(genesis)") == 0) {
            /* exactly one (migration 011's): a second would move the line below which rows are
             * only counted, hiding rows inserted later */
            if (a->legacy_tx[0] != '\0' || strcmp(e->seq, "1") != 0) {
                nt_audit__finding(a,
                                  "ledger entry (genesis)#%s (tx %s): a second genesis entry "
                                  "(the ledger has one, made by migration 011)",
                                  e->seq, e->tx);
                continue;
            }
            snprintf(a->legacy_tx, sizeof(a->legacy_tx), "%s", e->tx);
            verify__genesis(a, e);
        } else if (!filtered || bsearch(e, sel, nsel, sizeof(*sel), verify__cmp_entry) != NULL) {
            check[checked++] = e;
        }
    }
    if (a->legacy_tx[0] == '\0') {
        nt_audit__finding(a, "the ledger has no genesis entry (migration 011's)");
    }
    size_t rows = a->failed ? 0 : nt_audit__batches(a, check, checked);
    fprintf(a->out != NULL ? a->out : stdout,
            "ledger: %zu entries in %zu chain(s), every hash and link checked; rows recomputed for "
            "%zu batch(es)%s: %zu rows\n",
            n, chains, checked, filtered ? " (those the filters select)" : "", rows);
    free(entries);
    free(sel);
    free(check);
    return a->failed ? -1 : 0;
}

/* Is any row outside every sealed batch? The transaction ids the tables hold, each found by
 * one descent of their tx index from the one before (a skip scan: as many steps as batches, not
 * as many as rows), against the ledger's; the first one outside ends it. On events a step
 * descends each partition's index (tx says nothing of received_at): batches x partitions
 * descents, against an index-only scan of every row (VERIFY__ANY_OUTSIDE_SCAN). Without a btree
 * index leading on tx (dropped by hand), each step would read the whole table: the scan then. */
#define VERIFY__ANY_OUTSIDE_SKIP(t, x)                                                             \
    "EXISTS (WITH RECURSIVE s(tx) AS (SELECT (SELECT min(" x ".tx) FROM needletrace." t " " x      \
    " WHERE " x ".tx > $1::bigint) UNION ALL SELECT (SELECT min(" x ".tx) FROM needletrace." t     \
    " " x " WHERE " x ".tx > s.tx) FROM s WHERE s.tx IS NOT NULL) SELECT 1 FROM s WHERE s.tx IS "  \
    "NOT NULL AND NOT EXISTS (SELECT 1 FROM needletrace.ledger l WHERE l.tx = s.tx)) OR EXISTS "   \
    "(SELECT 1 FROM needletrace." t " WHERE tx IS NULL)"
#define VERIFY__ANY_OUTSIDE_SCAN(t, x)                                                             \
    "EXISTS (SELECT 1 FROM (SELECT " x ".tx FROM needletrace." t " " x " WHERE " x                 \
    ".tx > $1::bigint GROUP BY " x ".tx) g WHERE NOT EXISTS (SELECT 1 FROM needletrace.ledger l "  \
    "WHERE l.tx = g.tx)) OR EXISTS (SELECT 1 FROM needletrace." t " WHERE tx IS NULL)"
#define VERIFY__ANY_OUTSIDE(t, x)                                                                  \
    "CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = " \
    "i.indexrelid JOIN pg_catalog.pg_am m ON m.oid = c.relam JOIN pg_catalog.pg_attribute a ON "   \
    "a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = 'needletrace." t        \
    "'::pg_catalog.regclass AND a.attname = 'tx' AND m.amname = 'btree' AND i.indisvalid AND "     \
    "i.indpred IS NULL) THEN " VERIFY__ANY_OUTSIDE_SKIP(t, x) " ELSE " VERIFY__ANY_OUTSIDE_SCAN(   \
        t, x) " END"

/* Rows no entry seals: inserted outside any batch (a NULL tx too). Named only when there are
 * some (VERIFY__ANY_OUTSIDE): naming them reads every row. */
static int verify__outside(nt_audit_t *a)
{
    static const char any[] =
        "SELECT " VERIFY__ANY_OUTSIDE("raw_messages", "r") " OR " VERIFY__ANY_OUTSIDE(
            "events", "e") " OR " VERIFY__ANY_OUTSIDE("quarantine", "q");
    static const char sql[] =
        "SELECT 'raw_messages', pg_catalog.concat_ws('/', r.clinic_id, r.device_serial, "
        "pg_catalog.encode(r.payload_sha256, 'hex'), r.journal_pos), r.tx "
        "FROM needletrace.raw_messages r WHERE (r.tx > $1::bigint OR r.tx IS NULL) AND NOT EXISTS "
        "(SELECT 1 FROM needletrace.ledger l WHERE l.tx = r.tx) "
        "UNION ALL SELECT 'events', pg_catalog.concat_ws('/', e.clinic_id, e.device_serial, "
        "e.boot_id, e.seq), e.tx FROM needletrace.events e WHERE (e.tx > $1::bigint OR e.tx IS "
        "NULL) AND NOT EXISTS (SELECT 1 FROM needletrace.ledger l WHERE l.tx = e.tx) "
        "UNION ALL SELECT 'quarantine', pg_catalog.concat_ws('/', q.clinic_id, "
        "pg_catalog.encode(q.message_key, 'hex')), q.tx FROM needletrace.quarantine q WHERE (q.tx "
        "> $1::bigint OR q.tx IS NULL) AND NOT EXISTS (SELECT 1 FROM needletrace.ledger l WHERE "
        "l.tx = q.tx) LIMIT 10001";
    const char *values[1] = {a->legacy_tx[0] != '\0' ? a->legacy_tx : "0"};
    PGresult *res = nt_audit__query(a, any, 1, values, 0);
    if (res == NULL) {
        return -1;
    }
    int some = PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "f") != 0;
    PQclear(res);
    if (!some) {
        return 0;
    }
    res = nt_audit__query(a, sql, 1, values, 0);
    if (res == NULL) {
        return -1;
    }
    for (int i = 0; i < PQntuples(res) && i < 10000; i++) {
        nt_audit__finding(a, "%s row %s (tx %s): inserted outside any sealed batch",
                          PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                          PQgetisnull(res, i, 2) ? "NULL" : PQgetvalue(res, i, 2));
    }
    if (PQntuples(res) > 10000) {
        nt_audit__finding(a, "more rows outside any sealed batch than the 10000 named above");
    }
    PQclear(res);
    return 0;
}

/* Each digest in dir: signed by pub, and every head it names still in the ledger as it was. */
static int verify__digests(nt_audit_t *a, const char *dir, const char *pub)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        fprintf(stderr, "needletrace: audit verify: cannot read the digest directory \"%s\"\n",
                dir);
        return -1;
    }
    struct dirent *de;
    size_t files = 0, heads = 0;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (strncmp(de->d_name, "digest-", 7) != 0 || len < 5 ||
            strcmp(de->d_name + len - 5, ".json") != 0) {
            continue;
        }
        char path[4096], err[512], time[64] = "";
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        nt_digest_head_t *h = calloc(VERIFY__MAX_HEADS, sizeof(*h));
        int n = h != NULL ? nt_digest_read(path, pub, h, VERIFY__MAX_HEADS, time, sizeof(time), err,
                                           sizeof(err))
                          : -1;
        files++;
        if (n < 0) {
            nt_audit__finding(a, "digest %s: %s", de->d_name, h != NULL ? err : "out of memory");
            free(h);
            continue;
        }
        for (int i = 0; i < n; i++) {
            heads++;
            nt_audit__check_head(a, de->d_name, &h[i]);
        }
        free(h);
    }
    closedir(d);
    if (files == 0) {
        nt_audit__finding(a,
                          "no digest (digest-*.json) in \"%s\": nothing outside the database "
                          "to check the chains against",
                          dir);
    }
    fprintf(a->out != NULL ? a->out : stdout,
            "digests: %zu file(s) in \"%s\", %zu chain head(s) checked\n", files, dir, heads);
    return 0;
}

int nt_audit__verify(nt_audit_t *a, const char *digests, const char *pub)
{
    if (verify__ledger(a) != 0 || verify__outside(a) != 0 ||
        (digests != NULL && verify__digests(a, digests, pub) != 0)) {
        a->failed = 1;
    }
    if (a->failed) {
        fprintf(a->out != NULL ? a->out : stdout,
                "NO VERDICT: a query failed (above); nothing can be said of the record\n");
        return 1;
    }
    if (a->findings == 0) {
        fprintf(a->out != NULL ? a->out : stdout,
                "OK: every sealed row is as sealed, no row is outside the ledger, every chain "
                "links%s\n",
                digests != NULL ? ", and every digest matches" : "");
        return 0;
    }
    fprintf(a->out != NULL ? a->out : stdout,
            "%zu finding(s): the record was changed after it was sealed\n", a->findings);
    return 1;
}
