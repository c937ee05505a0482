/* digest_db.c -- the chain heads a digest signs, read from the database (digest.h). */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/digest.h"

int nt_digest_from_db(void *pgconn, char **text, char *time, size_t timelen, size_t *n, char *err,
                      size_t errlen)
{
    static const char sql[] =
        "SELECT current_database(), to_char(clock_timestamp() AT TIME ZONE 'UTC', "
        "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), h.collector_id, h.seq, encode(h.entry_hash, "
        "'hex'), to_char(h.committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') "
        "FROM (SELECT 1) one LEFT JOIN needletrace.ledger_heads h ON true ORDER BY 3";
    PGresult *res = PQexec(pgconn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1) {
        snprintf(err, errlen, "could not read the chain heads: %s",
                 PQresultErrorMessage(res)[0] != '\0' ? PQresultErrorMessage(res) : "no row");
        err[strcspn(err, "\n")] = '\0';
        PQclear(res);
        return -1;
    }
    size_t k = PQgetisnull(res, 0, 2) ? 0 : (size_t)PQntuples(res);
    nt_digest_head_t *h = calloc(k + 1, sizeof(*h));
    for (size_t i = 0; h != NULL && i < k; i++) {
        int r = (int)i;
        snprintf(h[i].collector_id, sizeof(h[i].collector_id), "%s", PQgetvalue(res, r, 2));
        h[i].seq = strtoll(PQgetvalue(res, r, 3), NULL, 10);
        snprintf(h[i].entry_hash, sizeof(h[i].entry_hash), "%s", PQgetvalue(res, r, 4));
        snprintf(h[i].committed_at, sizeof(h[i].committed_at), "%s", PQgetvalue(res, r, 5));
    }
    snprintf(time, timelen, "%s", PQgetvalue(res, 0, 1));
    *text = h != NULL ? nt_digest_text(PQgetvalue(res, 0, 0), time, h, k) : NULL;
    PQclear(res);
    free(h);
    if (*text == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    *n = k;
    return 0;
}
