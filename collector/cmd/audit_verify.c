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
    fputs("FINDING: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    a->findings++;
}

static void verify__hex(const unsigned char *in, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[in[i] >> 4];
        out[2 * i + 1] = hx[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int verify__cmp_leaf(const void *x, const void *y)
{
    return memcmp(x, y, 32);
}

static int verify__cmp_row(const void *x, const void *y)
{
    return memcmp(((const verify__row_t *)x)->leaf, ((const verify__row_t *)y)->leaf, 32);
}

/* The root of sorted leaves (011_ledger.sql): chunks of 64, then the chunks' hashes. */
void nt_audit__root(const unsigned char *leaves, size_t n, unsigned char out[32])
{
    size_t chunks = (n + 63) / 64;
    unsigned char *top = malloc(1 + 32 * chunks);
    unsigned char buf[1 + 64 * 32];
    if (top == NULL) {
        memset(out, 0, 32); /* matches no root: reported as a finding */
        return;
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
}

/* leaf = sha256(0x00 || tag || row) */
static void verify__leaf(EVP_MD_CTX *md, char tag, const char *row, size_t len,
                         unsigned char out[32])
{
    unsigned char head[2] = {0x00, (unsigned char)tag};
    if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 || EVP_DigestUpdate(md, head, 2) != 1 ||
        EVP_DigestUpdate(md, row, len) != 1 || EVP_DigestFinal_ex(md, out, NULL) != 1) {
        memset(out, 0, 32);
    }
}

/* The rows of transaction tx, with their leaves computed here. NULL on failure (printed). */
static verify__row_t *verify__rows(nt_audit_t *a, const char *tx, size_t *n)
{
    static const char sql[] =
        "SELECT 'r', concat_ws('/', r.clinic_id, r.device_serial, encode(r.payload_sha256, "
        "'hex'), r.journal_pos), record_send(r) FROM needletrace.raw_messages r WHERE r.tx = $1 "
        "UNION ALL SELECT 'e', concat_ws('/', e.clinic_id, e.device_serial, e.boot_id, e.seq), "
        "record_send(e) FROM needletrace.events e WHERE e.tx = $1 "
        "UNION ALL SELECT 'q', concat_ws('/', q.clinic_id, encode(q.message_key, 'hex')), "
        "record_send(q) FROM needletrace.quarantine q WHERE q.tx = $1";
    const char *values[1] = {tx};
    PGresult *res = nt_audit__query(a, sql, 1, values, 1);
    if (res == NULL) {
        return NULL;
    }
    *n = (size_t)PQntuples(res);
    verify__row_t *rows = calloc(*n + 1, sizeof(*rows));
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    for (size_t i = 0; rows != NULL && md != NULL && i < *n; i++) {
        verify__row_t *r = &rows[i];
        r->tag = PQgetvalue(res, (int)i, 0)[0];
        snprintf(r->ident, sizeof(r->ident), "%.*s", PQgetlength(res, (int)i, 1),
                 PQgetvalue(res, (int)i, 1));
        verify__leaf(md, r->tag, PQgetvalue(res, (int)i, 2), (size_t)PQgetlength(res, (int)i, 2),
                     r->leaf);
    }
    EVP_MD_CTX_free(md);
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
            snprintf(ident, sizeof(ident), "%s/%s/%" PRIu64 "/%" PRIu64, m.topic.clinic_id,
                     m.topic.device_serial, m.msg->boot_id, m.msg->events[k]->seq);
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
    nt_audit__root(stored, nstored, root);
    verify__hex(root, 32, hex);
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
    size_t matched = 0;
    for (size_t i = 0; i < n; i++) {
        int t = rows[i].tag == 'r' ? 0 : rows[i].tag == 'e' ? 1 : 2;
        found[t]++;
        if (bsearch(rows[i].leaf, stored, nstored, 32, verify__cmp_leaf) != NULL) {
            matched++;
        } else {
            unknown[t]++;
        }
    }
    for (size_t i = 0; i < n; i++) {
        int t = rows[i].tag == 'r' ? 0 : rows[i].tag == 'e' ? 1 : 2;
        if (bsearch(rows[i].leaf, stored, nstored, 32, verify__cmp_leaf) == NULL) {
            nt_audit__finding(a, "%s row %s of batch %s#%s (tx %s): %s", verify__table(tags[t]),
                              rows[i].ident, e->collector, e->seq, e->tx,
                              found[t] > want[t] ? "inserted or modified (not as sealed)"
                                                 : "modified (not as sealed)");
        }
    }
    for (int t = 0; t < 3; t++) {
        int64_t missing = want[t] - (found[t] - unknown[t]) - unknown[t];
        if (found[t] < want[t] && missing > 0) {
            nt_audit__finding(a,
                              "batch %s#%s (tx %s): %" PRId64 " %s row(s) sealed are gone "
                              "(deleted)",
                              e->collector, e->seq, e->tx, want[t] - found[t],
                              verify__table(tags[t]));
        }
    }
    if (found[1] < want[1]) {
        verify__missing_events(a, e, rows, n);
    }
    if (matched != nstored && matched == n && n == nstored) {
        nt_audit__finding(a, "batch %s#%s: leaves do not match its rows", e->collector, e->seq);
    }
    free(rows);
    return n;
}

/* Every entry of the ledger: its hash, its link, its rows. */
static int verify__ledger(nt_audit_t *a)
{
    size_t n = 0;
    nt_audit_entry_t *entries = nt_audit__entries(a, &n);
    if (entries == NULL) {
        return -1;
    }
    size_t chains = 0, rows = 0;
    for (size_t i = 0; i < n && !a->failed; i++) {
        const nt_audit_entry_t *e = &entries[i];
        int first = i == 0 || strcmp(entries[i - 1].collector, e->collector) != 0;
        chains += first;
        nt_audit__check_link(a, e, first ? NULL : &entries[i - 1]);
        size_t nleaves = 0;
        unsigned char *leaves = nt_audit__leaves(a, e, &nleaves);
        if (leaves == NULL) {
            a->failed = 1;
            break;
        }
        rows += verify__entry(a, e, leaves, nleaves);
        free(leaves);
    }
    printf("ledger: %zu entries in %zu chain(s), %zu rows recomputed\n", n, chains, rows);
    free(entries);
    return a->failed ? -1 : 0;
}

/* Rows no entry seals: inserted outside any batch. */
static int verify__outside(nt_audit_t *a)
{
    static const char sql[] =
        "WITH l AS (SELECT tx FROM needletrace.ledger), m AS (SELECT value::bigint AS legacy "
        "FROM needletrace.ledger_meta WHERE key = 'legacy_tx') "
        "SELECT 'raw_messages', concat_ws('/', r.clinic_id, r.device_serial, "
        "encode(r.payload_sha256, 'hex'), r.journal_pos), r.tx FROM needletrace.raw_messages r, m "
        "WHERE r.tx > m.legacy AND r.tx NOT IN (SELECT tx FROM l) "
        "UNION ALL SELECT 'events', concat_ws('/', e.clinic_id, e.device_serial, e.boot_id, "
        "e.seq), e.tx FROM needletrace.events e, m WHERE e.tx > m.legacy AND e.tx NOT IN (SELECT "
        "tx FROM l) "
        "UNION ALL SELECT 'quarantine', concat_ws('/', q.clinic_id, encode(q.message_key, "
        "'hex')), q.tx FROM needletrace.quarantine q, m WHERE q.tx > m.legacy AND q.tx NOT IN "
        "(SELECT tx FROM l) LIMIT 10000";
    PGresult *res = nt_audit__query(a, sql, 0, NULL, 0);
    if (res == NULL) {
        return -1;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        nt_audit__finding(a, "%s row %s (tx %s): inserted outside any sealed batch",
                          PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 2));
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
        nt_digest_head_t h[256];
        int n = nt_digest_read(path, pub, h, 256, time, sizeof(time), err, sizeof(err));
        files++;
        if (n < 0) {
            nt_audit__finding(a, "digest %s: %s", de->d_name, err);
            continue;
        }
        for (int i = 0; i < n; i++) {
            heads++;
            nt_audit__check_head(a, de->d_name, &h[i]);
        }
    }
    closedir(d);
    printf("digests: %zu file(s) in \"%s\", %zu chain head(s) checked\n", files, dir, heads);
    return 0;
}

int nt_audit__verify(nt_audit_t *a, const char *digests, const char *pub)
{
    if (verify__ledger(a) != 0 || verify__outside(a) != 0) {
        return 1;
    }
    if (digests != NULL && verify__digests(a, digests, pub) != 0) {
        return 1;
    }
    if (a->findings == 0) {
        printf("OK: every sealed row is as sealed, no row is outside the ledger, every chain "
               "links%s\n",
               digests != NULL ? ", and every digest matches" : "");
        return 0;
    }
    printf("%zu finding(s): the record was changed after it was sealed\n", a->findings);
    return 1;
}
