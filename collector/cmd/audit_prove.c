/* audit_prove.c -- `needletrace audit prove --session ID`: a session's event rows with the proof
 * that each is sealed in the ledger, as one JSON document anyone can check (README, "Checking a
 * proof"): for each row its stored bytes and leaf; for its batch the chunk of sorted leaves that
 * holds it, every chunk's hash, the entry's text and hash; the chain from that entry to the newest
 * one; and, with --digests, the newest signed digest that names the chain at or after the entry. */
#include <dirent.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_internal.h"

static void prove__hex(FILE *out, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        fprintf(out, "%02x", p[i]);
    }
}

/* One batch of the session: its entry, the chunks of its leaves, and the session's rows in it. */
static int prove__batch(nt_audit_t *a, FILE *out, const nt_audit_entry_t *e, PGresult *rows,
                        const char *tx)
{
    size_t nleaves = 0;
    unsigned char *leaves = nt_audit__leaves(a, e, &nleaves);
    if (leaves == NULL) {
        return -1;
    }
    char text[1024];
    nt_audit__entry_text(e, text, sizeof(text));
    fputs("    {\"entry_text\": ", out);
    nt_audit__json_str(out, text);
    fprintf(out, ",\n     \"entry_hash\": \"%s\",\n     \"chunk_hashes\": [", e->hash);
    unsigned char buf[1 + 64 * 32], h[32];
    buf[0] = 0x01;
    for (size_t c = 0; c * 64 < nleaves; c++) {
        size_t k = nleaves - 64 * c < 64 ? nleaves - 64 * c : 64;
        memcpy(buf + 1, leaves + 32 * 64 * c, 32 * k);
        SHA256(buf, 1 + 32 * k, h);
        fputs(c > 0 ? ", \"" : "\"", out);
        prove__hex(out, h, 32);
        fputc('"', out);
    }
    fputs("],\n     \"rows\": [", out);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int first = 1;
    for (int r = 0; md != NULL && r < PQntuples(rows); r++) {
        if (strcmp(PQgetvalue(rows, r, 0), tx) != 0) {
            continue;
        }
        unsigned char leaf[32], head[2] = {0x00, 'e'};
        EVP_DigestInit_ex(md, EVP_sha256(), NULL);
        EVP_DigestUpdate(md, head, 2);
        EVP_DigestUpdate(md, PQgetvalue(rows, r, 2), (size_t)PQgetlength(rows, r, 2));
        EVP_DigestFinal_ex(md, leaf, NULL);
        size_t at = 0;
        while (at < nleaves && memcmp(leaves + 32 * at, leaf, 32) != 0) {
            at++;
        }
        fputs(first ? "\n      {" : ",\n      {", out);
        first = 0;
        fputs("\"ident\": ", out);
        nt_audit__json_str(out, PQgetvalue(rows, r, 1));
        fputs(", \"row\": ", out);
        fputs(PQgetvalue(rows, r, 3), out); /* row_to_json: for people, not proven by itself */
        fputs(", \"record\": \"", out);
        prove__hex(out, (const unsigned char *)PQgetvalue(rows, r, 2),
                   (size_t)PQgetlength(rows, r, 2));
        fputs("\", \"leaf\": \"", out);
        prove__hex(out, leaf, 32);
        if (at == nleaves) {
            fputs("\", \"sealed\": false}", out);
            nt_audit__finding(a, "events row %s: not as sealed in batch %s#%s",
                              PQgetvalue(rows, r, 1), e->collector, e->seq);
            continue;
        }
        size_t chunk = at / 64, k = nleaves - 64 * chunk < 64 ? nleaves - 64 * chunk : 64;
        fprintf(out, "\", \"chunk\": %zu, \"chunk_leaves\": [", chunk);
        for (size_t i = 0; i < k; i++) {
            fputs(i > 0 ? ", \"" : "\"", out);
            prove__hex(out, leaves + 32 * (64 * chunk + i), 32);
            fputc('"', out);
        }
        fputs("]}", out);
    }
    EVP_MD_CTX_free(md);
    fputs("],\n     \"chain_after\": ", out);
    free(leaves);
    return 0;
}

/* The entries of e's chain after e up to seq upto (INT64_MAX: the newest), as texts: the checker
 * follows their prev links from e to the head the digest signed. */
static void prove__chain(FILE *out, const nt_audit_entry_t *all, size_t n,
                         const nt_audit_entry_t *e, int64_t upto)
{
    fputs("[", out);
    int first = 1;
    int64_t from = strtoll(e->seq, NULL, 10);
    for (size_t i = 0; i < n; i++) {
        int64_t seq = strtoll(all[i].seq, NULL, 10);
        if (strcmp(all[i].collector, e->collector) != 0 || seq <= from || seq > upto) {
            continue;
        }
        char text[1024];
        nt_audit__entry_text(&all[i], text, sizeof(text));
        fputs(first ? "\n    " : ",\n    ", out);
        first = 0;
        nt_audit__json_str(out, text);
    }
    fputs("]", out);
}

/* The earliest digest in dir (signed by pub) that names the chain of every batch at or after it:
 * its path and heads (*nh), or "" when none does. */
static void prove__pick_digest(const char *dir, const char *pub, const nt_audit_entry_t *const *b,
                               size_t nb, char *best, size_t bestlen, nt_digest_head_t *heads,
                               int *nh)
{
    best[0] = '\0';
    *nh = 0;
    DIR *d = dir != NULL ? opendir(dir) : NULL;
    nt_digest_head_t *h = d != NULL ? calloc(NT_AUDIT_MAX_HEADS, sizeof(*h)) : NULL;
    struct dirent *de;
    while (h != NULL && (de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        char path[4096], err[512], time[64];
        if (strncmp(de->d_name, "digest-", 7) != 0 || len < 5 ||
            strcmp(de->d_name + len - 5, ".json") != 0) {
            continue;
        }
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        int k =
            nt_digest_read(path, pub, h, NT_AUDIT_MAX_HEADS, time, sizeof(time), err, sizeof(err));
        int covers = k > 0;
        for (size_t i = 0; covers && i < nb; i++) {
            int found = 0;
            for (int j = 0; j < k && !found; j++) {
                found = strcmp(h[j].collector_id, b[i]->collector) == 0 &&
                        h[j].seq >= strtoll(b[i]->seq, NULL, 10);
            }
            covers = found;
        }
        if (covers && (best[0] == '\0' || strcmp(path, best) < 0)) {
            snprintf(best, bestlen, "%s", path);
            memcpy(heads, h, (size_t)k * sizeof(*h));
            *nh = k;
        }
    }
    free(h);
    if (d != NULL) {
        closedir(d);
    }
}

/* The digest's signed head of collector, or INT64_MAX (no digest: to the newest entry). */
static int64_t prove__head(const nt_digest_head_t *h, int nh, const char *collector)
{
    for (int i = 0; i < nh; i++) {
        if (strcmp(h[i].collector_id, collector) == 0) {
            return h[i].seq;
        }
    }
    return INT64_MAX;
}

static void prove__copy_file(FILE *out, const char *path)
{
    FILE *f = fopen(path, "r");
    char buf[4096];
    size_t got;
    while (f != NULL && (got = fread(buf, 1, sizeof(buf), f)) > 0) {
        if (got < sizeof(buf) && buf[got - 1] == '\n') {
            got--; /* the document ends with a newline: keep the JSON tidy */
        }
        fwrite(buf, 1, got, out);
    }
    if (f != NULL) {
        fclose(f);
    } else {
        fputs("null", out);
    }
}

/* The session's batches: each distinct tx of rows (sorted by tx), its entry or NULL (counted as a
 * finding). *nb gets the count; NULL when out of memory. */
static const nt_audit_entry_t **prove__batches(nt_audit_t *a, PGresult *rows,
                                               const nt_audit_entry_t *all, size_t n,
                                               const char *session, size_t *nb)
{
    const nt_audit_entry_t **b = calloc((size_t)PQntuples(rows) + 1, sizeof(*b));
    *nb = 0;
    for (int r = 0; b != NULL && r < PQntuples(rows); r++) {
        const char *tx = PQgetvalue(rows, r, 0);
        if (r > 0 && strcmp(tx, PQgetvalue(rows, r - 1, 0)) == 0) {
            continue;
        }
        const nt_audit_entry_t *e = NULL;
        for (size_t i = 0; i < n && e == NULL; i++) {
            e = strcmp(all[i].tx, tx) == 0 ? &all[i] : NULL;
        }
        if (e == NULL) {
            nt_audit__finding(a, "session %s: rows of transaction %s are in no sealed batch",
                              session, tx);
        } else {
            b[(*nb)++] = e;
        }
    }
    return b;
}

int nt_audit__prove(nt_audit_t *a, const char *session, const char *digests, const char *pub,
                    FILE *out)
{
    static const char sql[] =
        "SELECT e.tx::text, pg_catalog.concat_ws('/', e.clinic_id, e.device_serial, e.boot_id, "
        "e.seq), pg_catalog.record_send(ROW(" NT_AUDIT_EVENTS_V1 ")), "
        "pg_catalog.row_to_json(e)::text FROM needletrace.events e "
        "WHERE e.session_id = $1 AND ($2::text IS NULL OR e.clinic_id = $2) ORDER BY e.tx, e.seq";
    const char *values[2] = {session, a->clinic};
    PGresult *rows = nt_audit__query(a, sql, 2, values, 1);
    size_t n = 0, nb = 0;
    nt_audit_entry_t *all = rows != NULL ? nt_audit__entries(a, &n, 0) : NULL;
    const nt_audit_entry_t **b = all != NULL ? prove__batches(a, rows, all, n, session, &nb) : NULL;
    nt_digest_head_t *heads = calloc(NT_AUDIT_MAX_HEADS, sizeof(*heads));
    int rc = 1, nh = 0;
    char path[4096] = "";
    if (b == NULL || heads == NULL || nb == 0) {
        fprintf(stderr, "needletrace: audit prove: %s\n",
                b == NULL || heads == NULL ? "could not read the session or the ledger"
                                           : "no sealed event of that session");
        goto done;
    }
    prove__pick_digest(digests, pub, b, nb, path, sizeof(path), heads, &nh);
    if (digests != NULL && path[0] == '\0') {
        nt_audit__finding(a, "no digest in \"%s\" signed by the key names the session's batches",
                          digests);
    }
    fputs("{\"version\": 1, \"session\": ", out);
    nt_audit__json_str(out, session);
    fputs(",\n  \"batches\": [\n", out);
    for (size_t i = 0; i < nb; i++) {
        fputs(i > 0 ? ",\n" : "", out);
        if (prove__batch(a, out, b[i], rows, b[i]->tx) != 0) {
            goto done;
        }
        prove__chain(out, all, n, b[i], prove__head(heads, nh, b[i]->collector));
        fputs("}", out);
    }
    fputs("\n  ],\n  \"digest\": ", out);
    if (path[0] != '\0') {
        prove__copy_file(out, path);
    } else {
        fputs("null", out);
    }
    fputs("\n}\n", out);
    rc = a->failed || a->findings > 0 ? 1 : 0;
done:
    free(heads);
    free(b);
    free(all);
    PQclear(rows);
    return rc;
}
