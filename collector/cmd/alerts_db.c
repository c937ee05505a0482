/* alerts_db.c -- the queries of `needletrace alerts` and the printing of their results.
 *
 * A blocking libpq client. Every value reaches the server as a bound parameter; no SQL is
 * built from user input. Alerts are evidence and never change: an acknowledgement is a row
 * of needletrace.alert_acks beside the alert. */
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alerts_internal.h"
#include "needletrace/common.h"
#include "needletrace/pqutil.h"

#define ALERTS__ACK_ATTEMPTS 3 /* tries of the ack insert on a key collision */
/* Timestamps in the table, in the session's time zone (PGTZ or the server's TimeZone). */
#define ALERTS__TS_FORMAT "'YYYY-MM-DD HH24:MI:SSOF'"

/* Prints "needletrace: could not <what>: <server message>", with a hint when the schema is
 * older than this command (relations of migration 002 missing). */
static void alerts__query_failed(PGresult *res, const char *what)
{
    char buf[1024];
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    fprintf(stderr, "needletrace: could not %s: %s\n", what,
            nt_pqutil_message(PQresultErrorMessage(res), buf, sizeof(buf)));
    if (state != NULL && (strcmp(state, "42P01") == 0 || strcmp(state, "42703") == 0)) {
        fprintf(stderr, "needletrace: hint: the database schema is older than this command; "
                        "run 'needletrace migrate'\n");
    }
}

/* ---- list ------------------------------------------------------------------------------- */

/* Columns of the list query, in order. */
enum {
    L_ID,
    L_RAISED,
    L_SEVERITY,
    L_RULE,
    L_CLINIC,
    L_DEVICE,
    L_SESSION,
    L_ACKS,
    L_ACK_BY,
    L_ACK_AT,
    L_DETAILS,
    L_JSON,
};

/* alert_acks is append-only: the latest row is the current state, all rows the history. The
 * details summary is key=value over the top-level keys (string values unquoted). */
static const char list_sql[] =
    "SELECT a.alert_id::text, to_char(a.raised_at, " ALERTS__TS_FORMAT "), a.severity, a.rule,\n"
    "       a.clinic_id, a.device_serial, coalesce(a.session_id, ''),\n"
    "       k.n::text, coalesce(k.last_by, ''),\n"
    "       coalesce(to_char(k.last_at, " ALERTS__TS_FORMAT "), ''),\n"
    "       CASE WHEN jsonb_typeof(a.details) = 'object' THEN\n"
    "                coalesce((SELECT string_agg(d.key || '=' || CASE jsonb_typeof(d.value)\n"
    "                                   WHEN 'string' THEN d.value #>> '{}'\n"
    "                                   ELSE d.value::text END, ' ' ORDER BY d.key)\n"
    "                            FROM jsonb_each(a.details) d), '')\n"
    "            ELSE a.details::text END,\n"
    "       CASE WHEN $6::boolean THEN\n"
    "            (SELECT row_to_json(r)::text\n"
    "               FROM (SELECT a.*, k.n = 0 AS open, coalesce(k.acks, '[]'::jsonb) AS acks) r)\n"
    "       END\n"
    "  FROM needletrace.alerts a\n"
    "  CROSS JOIN LATERAL (\n"
    "        SELECT count(*) AS n,\n"
    "               (array_agg(x.acked_by ORDER BY x.acked_at DESC))[1] AS last_by,\n"
    "               max(x.acked_at) AS last_at,\n"
    "               jsonb_agg(to_jsonb(x) - 'clinic_id' - 'alert_id' ORDER BY x.acked_at) AS acks\n"
    "          FROM needletrace.alert_acks x\n"
    "         WHERE x.clinic_id = a.clinic_id AND x.alert_id = a.alert_id) k\n"
    " WHERE ($1::text IS NULL OR a.clinic_id = $1::text)\n"
    "   AND ($2::text IS NULL OR a.rule = $2::text)\n"
    "   AND ($3::timestamptz IS NULL OR a.raised_at >= $3::timestamptz)\n"
    "   AND (NOT $4::boolean OR EXISTS (SELECT 1 FROM needletrace.alerts_open o\n"
    "                                    WHERE o.clinic_id = a.clinic_id\n"
    "                                      AND o.alert_id = a.alert_id))\n"
    " ORDER BY a.raised_at DESC, a.alert_id DESC, a.clinic_id\n"
    " LIMIT $5::bigint";

/* Copies s into a new string for a table cell: control characters (which could drive the
 * terminal) and invalid UTF-8 bytes become '?', and more than max characters are cut to
 * max - 1 and an ellipsis. *width gets the character count. NULL when out of memory. */
static char *alerts__cell(const char *s, size_t max, size_t *width)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t total = 0;
    while (*p != '\0') {
        uint32_t cp;
        size_t n = nt_alerts__utf8_decode(p, &cp);
        p += n == 0 ? 1 : n;
        total++;
    }
    size_t keep = total <= max ? total : max - 1;
    char *out = malloc(strlen(s) + 4);
    if (out == NULL) {
        return NULL;
    }
    size_t o = 0;
    p = (const unsigned char *)s;
    for (size_t i = 0; i < keep; i++) {
        uint32_t cp;
        size_t n = nt_alerts__utf8_decode(p, &cp);
        if (n == 0 || nt_alerts__is_control(cp)) {
            out[o++] = '?';
            p += n == 0 ? 1 : n;
        } else {
            memcpy(out + o, p, n);
            o += n;
            p += n;
        }
    }
    if (keep < total) {
        memcpy(out + o, "\xE2\x80\xA6", 3); /* U+2026 HORIZONTAL ELLIPSIS */
        o += 3;
    }
    out[o] = '\0';
    *width = keep < total ? keep + 1 : keep;
    return out;
}

enum { ALERTS__NCOL = 9 };

/* Fills the cells of row r (ALERTS__NCOL of them, each with its width in characters in cw)
 * and widens width[] to fit. Returns 0 or NT_ENOMEM (cells filled so far stay to be freed). */
static int alerts__row_cells(PGresult *res, int r, char **cells, size_t *cw, size_t *width)
{
    static const size_t maxw[ALERTS__NCOL] = {64,
                                              64,
                                              16,
                                              64,
                                              64,
                                              64,
                                              NT_ALERTS__MAX_SESSION,
                                              NT_ALERTS__MAX_STATE,
                                              NT_ALERTS__MAX_DETAILS};
    char state[256];
    if (strcmp(PQgetvalue(res, r, L_ACKS), "0") == 0) {
        snprintf(state, sizeof(state), "open");
    } else {
        /* --by is at most 128 characters: the state fits, and the cell cuts it anyway */
        snprintf(state, sizeof(state), "acked by %.200s at %s", PQgetvalue(res, r, L_ACK_BY),
                 PQgetvalue(res, r, L_ACK_AT));
    }
    const char *src[ALERTS__NCOL] = {
        PQgetvalue(res, r, L_ID),       PQgetvalue(res, r, L_RAISED),
        PQgetvalue(res, r, L_SEVERITY), PQgetvalue(res, r, L_RULE),
        PQgetvalue(res, r, L_CLINIC),   PQgetvalue(res, r, L_DEVICE),
        PQgetvalue(res, r, L_SESSION),  state,
        PQgetvalue(res, r, L_DETAILS),
    };
    for (int c = 0; c < ALERTS__NCOL; c++) {
        const char *v = src[c][0] != '\0' ? src[c] : "-";
        cells[c] = alerts__cell(v, maxw[c], &cw[c]);
        if (cells[c] == NULL) {
            return NT_ENOMEM;
        }
        if (cw[c] > width[c]) {
            width[c] = cw[c];
        }
    }
    return 0;
}

/* Writes the header and rows cells (row-major, ALERTS__NCOL per row) padded to width[]. */
static void alerts__write_table(FILE *out, const char *const *heads, char **cells, const size_t *cw,
                                const size_t *width, int rows)
{
    for (int c = 0; c < ALERTS__NCOL; c++) {
        fprintf(out, "%s%-*s", c == 0 ? "" : "  ", c == ALERTS__NCOL - 1 ? 0 : (int)width[c],
                heads[c]);
    }
    fputc('\n', out);
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < ALERTS__NCOL; c++) {
            size_t i = (size_t)r * ALERTS__NCOL + (size_t)c;
            /* pad by characters, not bytes: printf's width counts bytes */
            fprintf(out, "%s%s", c == 0 ? "" : "  ", cells[i]);
            if (c < ALERTS__NCOL - 1) {
                fprintf(out, "%*s", (int)(width[c] - cw[i]), "");
            }
        }
        fputc('\n', out);
    }
}

/* Prints the rows as an aligned table. 0 or NT_ENOMEM. */
static int alerts__print_table(PGresult *res, int rows, FILE *out)
{
    static const char *const heads[ALERTS__NCOL] = {"ALERT_ID", "RAISED_AT", "SEVERITY",
                                                    "RULE",     "CLINIC",    "DEVICE",
                                                    "SESSION",  "STATE",     "DETAILS"};
    size_t width[ALERTS__NCOL];
    char **cells = calloc((size_t)rows * ALERTS__NCOL + 1, sizeof(*cells));
    size_t *cw = calloc((size_t)rows * ALERTS__NCOL + 1, sizeof(*cw));
    int rc = NT_ENOMEM;
    if (cells == NULL || cw == NULL) {
        goto done;
    }
    for (int c = 0; c < ALERTS__NCOL; c++) {
        width[c] = strlen(heads[c]);
    }
    for (int r = 0; r < rows; r++) {
        size_t i = (size_t)r * ALERTS__NCOL;
        if (alerts__row_cells(res, r, cells + i, cw + i, width) != 0) {
            goto done;
        }
    }
    alerts__write_table(out, heads, cells, cw, width, rows);
    rc = 0;

done:
    if (cells != NULL) {
        for (size_t i = 0; i < (size_t)rows * ALERTS__NCOL; i++) {
            free(cells[i]);
        }
    }
    free(cells);
    free(cw);
    return rc;
}

/* See alerts_internal.h. */
int nt_alerts__list(PGconn *conn, const nt_alerts__list_opts_t *o)
{
    char limit[24];
    /* one more than asked, to tell the user when there are more */
    snprintf(limit, sizeof(limit), "%ld", o->limit + 1);
    const char *values[6] = {o->clinic, o->rule,
                             o->since,  o->open ? "true" : "false",
                             limit,     o->json ? "true" : "false"};
    PGresult *res = PQexecParams(conn, list_sql, 6, NULL, values, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (o->since != NULL && state != NULL && strncmp(state, "22", 2) == 0) {
            /* data exceptions: only the --since cast can raise one here */
            char buf[512];
            fprintf(stderr, "needletrace: alerts list: invalid value \"%s\" for --since: %s\n",
                    o->since, nt_pqutil_message(PQresultErrorMessage(res), buf, sizeof(buf)));
            PQclear(res);
            return NT_EINVAL;
        }
        alerts__query_failed(res, "list alerts");
        PQclear(res);
        return NT_EDB;
    }
    int rows = PQntuples(res);
    int more = rows > o->limit;
    if (more) {
        rows = (int)o->limit;
    }
    int rc = 0;
    if (o->json) {
        for (int r = 0; r < rows; r++) {
            fputs(PQgetvalue(res, r, L_JSON), stdout);
            fputc('\n', stdout);
        }
    } else if ((rc = alerts__print_table(res, rows, stdout)) != 0) {
        fprintf(stderr, "needletrace: could not list alerts: out of memory\n");
    }
    PQclear(res);
    if (rc == 0 && more) {
        fprintf(stderr, "needletrace: more alerts match than the %ld shown; see --limit\n",
                o->limit);
    }
    return rc;
}

/* ---- ack -------------------------------------------------------------------------------- */

/* The alert_id names one alert (the id comes from one identity sequence); --clinic narrows it
 * should a copied or distributed database ever hold the same id in two clinics. The
 * acknowledgement is only inserted when exactly one alert matches. */
static const char ack_sql[] =
    "WITH target AS (\n"
    "    SELECT clinic_id, alert_id FROM needletrace.alerts\n"
    "     WHERE alert_id = $1::bigint AND ($4::text IS NULL OR clinic_id = $4::text))\n"
    "INSERT INTO needletrace.alert_acks (clinic_id, alert_id, acked_by, note)\n"
    "SELECT clinic_id, alert_id, $2::text, $3::text FROM target\n"
    " WHERE (SELECT count(*) FROM target) = 1\n"
    "RETURNING clinic_id, acked_role";

static const char ack_count_sql[] = "SELECT count(*)::text FROM needletrace.alerts\n"
                                    " WHERE alert_id = $1::bigint\n"
                                    "   AND ($2::text IS NULL OR clinic_id = $2::text)";

/* See alerts_internal.h. */
int nt_alerts__ack(PGconn *conn, const nt_alerts__ack_opts_t *o)
{
    char id[24];
    snprintf(id, sizeof(id), "%" PRId64, o->alert_id);
    const char *values[4] = {id, o->by, o->note, o->clinic};
    char what[64];
    snprintf(what, sizeof(what), "acknowledge alert %s", id);
    PGresult *res = NULL;
    for (int attempt = 1;; attempt++) {
        res = PQexecParams(conn, ack_sql, 4, NULL, values, NULL, NULL, 0);
        if (PQresultStatus(res) == PGRES_TUPLES_OK) {
            break;
        }
        /* alert_acks is keyed by (clinic_id, alert_id, acked_at = now()): two acks of one alert
         * starting in the same microsecond collide. The next transaction has another now(). */
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (attempt < ALERTS__ACK_ATTEMPTS && state != NULL && strcmp(state, "23505") == 0) {
            PQclear(res);
            continue;
        }
        alerts__query_failed(res, what);
        PQclear(res);
        return NT_EDB;
    }
    int inserted = PQntuples(res);
    if (inserted == 1) {
        /* acked_role: the database role, recorded by the database whatever --by says */
        printf("alert %s acknowledged by %s (database role %s)\n", id, o->by,
               PQnfields(res) > 1 ? PQgetvalue(res, 0, 1) : "?");
        PQclear(res);
        return 0;
    }
    PQclear(res);

    /* Nothing inserted: unknown, or (without --clinic) in several clinics. */
    const char *cvalues[2] = {id, o->clinic};
    res = PQexecParams(conn, ack_count_sql, 2, NULL, cvalues, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        alerts__query_failed(res, what);
        PQclear(res);
        return NT_EDB;
    }
    long n = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    if (n == 0) {
        if (o->clinic != NULL) {
            fprintf(stderr, "needletrace: alert %s does not exist in clinic %s\n", id, o->clinic);
        } else {
            fprintf(stderr, "needletrace: alert %s does not exist\n", id);
        }
        return NT_ENOENT;
    }
    fprintf(stderr,
            "needletrace: alerts ack: alert %s exists in %ld clinics; name one with --clinic\n", id,
            n);
    return NT_EINVAL;
}
