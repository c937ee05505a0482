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

/* A JSON string of s (control characters and quotes escaped). */
static void prove__str(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            fprintf(out, "\\%c", c);
        } else if (c < 0x20) {
            fprintf(out, "\\u%04x", c);
        } else {
            fputc(c, out);
        }
    }
    fputc('"', out);
}

/* The entry text of e (as nt_audit__check_link hashes it). */
static void prove__entry_text(const nt_audit_entry_t *e, char *text, size_t len)
{
    snprintf(text, len,
             "needletrace-ledger-v1|%s|%s|%s|%s|%s|%s|%" PRId64 "|%" PRId64 "|%" PRId64
             "|%s|%s|%s|%" PRId64,
             e->collector, e->seq, e->tx, e->journal_id, e->from, e->to, e->n_raw, e->n_events,
             e->n_quarantine, e->root, e->prev, e->committed, e->n_messages);
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
    prove__entry_text(e, text, sizeof(text));
    fputs("    {\"entry_text\": ", out);
    prove__str(out, text);
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
        prove__str(out, PQgetvalue(rows, r, 1));
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

/* The entries of e's chain from e to the newest, as texts (the checker follows prev links). */
static void prove__chain(nt_audit_t *a, FILE *out, const nt_audit_entry_t *all, size_t n,
                         const nt_audit_entry_t *e)
{
    fputs("[", out);
    int first = 1;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(all[i].collector, e->collector) != 0 ||
            strtoll(all[i].seq, NULL, 10) <= strtoll(e->seq, NULL, 10)) {
            continue;
        }
        char text[1024];
        prove__entry_text(&all[i], text, sizeof(text));
        fputs(first ? "\n    " : ",\n    ", out);
        first = 0;
        prove__str(out, text);
    }
    fputs("]", out);
    (void)a;
}

/* The newest digest in dir (signed by pub) that names last's chain at or after last: its
 * document as it is, or null. */
static int prove__digest(nt_audit_t *a, const char *dir, const char *pub,
                         const nt_audit_entry_t *last, FILE *out)
{
    char best[4096] = "";
    int64_t want = last != NULL ? strtoll(last->seq, NULL, 10) : INT64_MAX;
    DIR *d = dir != NULL && last != NULL ? opendir(dir) : NULL;
    struct dirent *de;
    nt_digest_head_t *h = d != NULL ? calloc(NT_AUDIT_MAX_HEADS, sizeof(*h)) : NULL;
    while (h != NULL && (de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (strncmp(de->d_name, "digest-", 7) != 0 || len < 5 ||
            strcmp(de->d_name + len - 5, ".json") != 0) {
            continue;
        }
        char path[4096], err[512], time[64];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        int k =
            nt_digest_read(path, pub, h, NT_AUDIT_MAX_HEADS, time, sizeof(time), err, sizeof(err));
        for (int i = 0; i < k; i++) {
            if (strcmp(h[i].collector_id, last->collector) == 0 && h[i].seq >= want &&
                (best[0] == '\0' || strcmp(path, best) > 0)) {
                snprintf(best, sizeof(best), "%s", path);
            }
        }
    }
    free(h);
    if (d != NULL) {
        closedir(d);
    }
    FILE *f = best[0] != '\0' ? fopen(best, "r") : NULL;
    if (f == NULL) {
        fputs("null", out);
        if (dir != NULL) {
            nt_audit__finding(a,
                              "no digest in \"%s\" signed by the key names the session's "
                              "newest batch",
                              dir);
        }
        return 0;
    }
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof(buf), f)) > 0) {
        /* the document ends with a newline: keep the JSON tidy */
        if (got < sizeof(buf) && buf[got - 1] == '\n') {
            got--;
        }
        fwrite(buf, 1, got, out);
    }
    fclose(f);
    return 0;
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
    /* binary: record bytes raw; the text columns arrive as their UTF-8 bytes */
    PGresult *rows = nt_audit__query(a, sql, 2, values, 1);
    if (rows == NULL) {
        return 1;
    }
    if (PQntuples(rows) == 0) {
        fprintf(stderr, "needletrace: audit prove: no event of session \"%s\"%s%s\n", session,
                a->clinic != NULL ? " in clinic " : "", a->clinic != NULL ? a->clinic : "");
        PQclear(rows);
        return 1;
    }
    size_t n = 0;
    nt_audit_entry_t *all = nt_audit__entries(a, &n, 0);
    if (all == NULL) {
        PQclear(rows);
        return 1;
    }
    fputs("{\"version\": 1, \"session\": ", out);
    prove__str(out, session);
    fputs(",\n  \"batches\": [\n", out);
    const nt_audit_entry_t *last = NULL;
    char prev_tx[24] = "";
    int nb = 0;
    for (int r = 0; r < PQntuples(rows); r++) {
        const char *tx = PQgetvalue(rows, r, 0);
        if (strcmp(tx, prev_tx) == 0) {
            continue;
        }
        snprintf(prev_tx, sizeof(prev_tx), "%s", tx);
        const nt_audit_entry_t *e = NULL;
        for (size_t i = 0; i < n && e == NULL; i++) {
            e = strcmp(all[i].tx, tx) == 0 ? &all[i] : NULL;
        }
        if (e == NULL) {
            nt_audit__finding(a, "session %s: rows of transaction %s are in no sealed batch",
                              session, tx);
            continue;
        }
        fputs(nb++ > 0 ? ",\n" : "", out);
        if (prove__batch(a, out, e, rows, tx) != 0) {
            break;
        }
        prove__chain(a, out, all, n, e);
        fputs("}", out);
        if (last == NULL || strtoll(e->seq, NULL, 10) > strtoll(last->seq, NULL, 10)) {
            last = e;
        }
    }
    fputs("\n  ],\n  \"digest\": ", out);
    int rc = prove__digest(a, digests, pub, last, out);
    fputs("\n}\n", out);
    free(all);
    PQclear(rows);
    return a->failed || a->findings > 0 || rc != 0 ? 1 : 0;
}
