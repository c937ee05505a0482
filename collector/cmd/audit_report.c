/* audit_report.c -- `needletrace audit report`: what a compliance officer hands over, for one
 * clinic (or all) and a range of local dates: summary, exceptions by rule and severity, every
 * exception with its acknowledgement, every session, the depth used per treatment area against
 * its limit, sessions per pen per day, completeness, and the verification of the record (with the
 * digest it was checked against). The same sections as HTML (one printable file: inline CSS and
 * SVG, no network), CSV (a section column first) or JSON (an object of arrays). Times and dates
 * are each clinic's local ones (needletrace.clinics; UTC without a row), as the report states. */
#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_internal.h"

/* PostgreSQL's oids (pg_type.dat) of the types the JSON report writes bare. */
enum {
    REPORT__BOOL = 16,
    REPORT__INT8 = 20,
    REPORT__INT2 = 21,
    REPORT__INT4 = 23,
    REPORT__FLOAT4 = 700,
    REPORT__FLOAT8 = 701,
    REPORT__NUMERIC = 1700,
};

/* The types of the queries' parameters: $1 clinic, $2 from, $3 to (dates typed as such, not
 * text cast in the query: a cast from text is stable, not folded into a constant when planned,
 * and was parsed again for each row); then the figures gathered with the verification, arrays
 * in binary: $4-$7 per session (clinic, pen, session, depth used against the limit), $8-$15 per
 * pen and boot (clinic, pen, boot, events, device and reception time of the events furthest
 * ahead and behind), $16-$19 per clinic, area and depth bucket (clinic, area, bucket, samples);
 * $20 the sessions started, $21 the cartridges mounted. */
#define REPORT__NPARAMS 21
static const Oid report__types[REPORT__NPARAMS] = {
    25 /* text */, 1082 /* date */,      1082, 1009 /* text[] */,        1009, 1009, 1009, 1009,
    1009,          1016 /* bigint[] */,  1016, 1185 /* timestamptz[] */, 1185, 1185, 1185, 1009,
    1009,          1007 /* integer[] */, 1016, 20 /* bigint */,          20};

/* The events of the report, e: the clinic filter, and the device time within the local dates
 * [$2, $3] in its clinic's zone (needletrace.clinics, UTC without a row). Every zone is within a
 * day of UTC: a time from $2 + 1 to $3 (UTC) is in the period in any zone, one before $2 - 1 or
 * from $3 + 2 in none (plain conditions an index or a partition on device_time can use); only
 * those between, near the edges, look up their clinic's zone (no join, no zone conversion for
 * the bulk of the rows). Ends with a condition: more follow with AND. */
#define REPORT__IN                                                                                 \
    "needletrace.events e WHERE ($1::text IS NULL OR e.clinic_id = $1) AND e.device_time >= "      \
    "(($2::date - 1)::timestamp AT TIME ZONE 'UTC') AND e.device_time < (($3::date + "             \
    "2)::timestamp AT TIME ZONE 'UTC') AND ((e.device_time >= (($2::date + 1)::timestamp AT TIME " \
    "ZONE 'UTC') AND e.device_time < ($3::date::timestamp AT TIME ZONE 'UTC')) OR "                \
    "coalesce((SELECT e.device_time >= ($2::date::timestamp AT TIME ZONE z.time_zone) AND "        \
    "e.device_time < (($3::date + 1)::timestamp AT TIME ZONE z.time_zone) FROM "                   \
    "needletrace.clinics z WHERE z.clinic_id = e.clinic_id), e.device_time >= "                    \
    "($2::date::timestamp AT TIME ZONE 'UTC') AND e.device_time < (($3::date + 1)::timestamp AT "  \
    "TIME ZONE 'UTC')))"
/* The alerts of the report: those about an event of the period (its device time, local). */
#define REPORT__AL                                                                                 \
    "al AS MATERIALIZED (SELECT a.*, coalesce(c.time_zone, 'UTC') AS tz FROM needletrace.alerts "  \
    "a LEFT JOIN needletrace.clinics c ON c.clinic_id = a.clinic_id LEFT JOIN needletrace.events " \
    "e ON e.clinic_id = a.clinic_id AND e.device_serial = a.device_serial AND e.boot_id = "        \
    "a.boot_id AND e.seq = a.seq WHERE ($1::text IS NULL OR a.clinic_id = $1) AND "                \
    "(coalesce(e.device_time, a.raised_at) AT TIME ZONE coalesce(c.time_zone, 'UTC'))::date "      \
    "BETWEEN $2::date AND $3::date)"
/* The depth limit of area x.area in clinic x.clinic_id. */
#define REPORT__LIMIT                                                                              \
    "coalesce((SELECT p.max_depth_um FROM needletrace.depth_policy_clinic p WHERE p.clinic_id = "  \
    "x.clinic_id AND p.area = x.area), (SELECT p.max_depth_um FROM needletrace.depth_policy p "    \
    "WHERE p.area = x.area), needletrace.depth_hard_max_um())"
/* The summary, the depth chart and the pens, from the figures ($8-$21) gathered from the rows
 * the verification read: per pen and boot (events, clock ahead and behind: the difference of the
 * times of the events furthest ahead and behind, as the server prints an interval) and per
 * clinic, area and depth bucket (needle settings and activity). One result: per row the
 * section's index in report__sections (k), its order (o) and its columns as text (c1...), split
 * by report__split into a result per section with the names in report__sections[k].cols. */
static const char report__shared[] =
    "WITH pb AS (SELECT u.clinic_id, u.device_serial, u.boot_id, u.n, u.adt - u.ara AS ahead, "
    "u.bra - u.bdt AS behind FROM unnest($8::text[], $9::text[], $10::bigint[], "
    "$11::bigint[], $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], "
    "$15::timestamptz[]) AS u(clinic_id, device_serial, boot_id, n, adt, ara, bdt, bra)), x AS "
    "(SELECT u.clinic_id, u.area, u.bucket_um, u.n FROM unnest($16::text[], "
    "$17::text[], $18::integer[], $19::bigint[]) AS u(clinic_id, area, bucket_um, n)), p AS "
    "(SELECT pb.clinic_id, coalesce(z.time_zone, 'UTC') AS tz, pb.device_serial, sum(pb.n) AS n "
    "FROM pb LEFT JOIN needletrace.clinics z ON z.clinic_id = pb.clinic_id GROUP BY 1, 2, "
    "3), " REPORT__AL
    ", sm AS (SELECT to_char($2::date, 'YYYY-MM-DD') AS from_date, to_char($3::date, "
    "'YYYY-MM-DD') AS to_date, (SELECT string_agg(DISTINCT "
    "clinic_id || ': ' || tz, ', ') FROM p) AS time_zones, (SELECT count(DISTINCT clinic_id) "
    "FROM p) AS clinics, (SELECT count(*) FROM p) AS pens, $20::bigint AS sessions, (SELECT "
    "coalesce(sum(n), 0)::bigint FROM p) AS events, $21::bigint AS cartridges_used, (SELECT "
    "count(*) FROM al WHERE rule = 'CARTRIDGE_REUSED') AS cartridge_reuse, (SELECT count(*) FROM "
    "al) AS exceptions, (SELECT count(*) FROM al WHERE NOT EXISTS (SELECT 1 FROM "
    "needletrace.alert_acks k WHERE k.clinic_id = al.clinic_id AND k.alert_id = al.alert_id)) AS "
    "open, (SELECT count(*) FROM al WHERE EXISTS (SELECT 1 FROM needletrace.alert_acks k WHERE "
    "k.clinic_id = al.clinic_id AND k.alert_id = al.alert_id)) AS acknowledged), dp AS (SELECT "
    "x.area, " REPORT__LIMIT " AS limit_um, x.bucket_um, sum(x.n)::bigint AS samples FROM x WHERE "
    "x.area IS NOT NULL GROUP BY x.area, 2, x.bucket_um), pn AS (SELECT p.clinic_id, "
    "p.device_serial AS pen, sum(p.n)::bigint AS events, count(*) AS boots, (SELECT count(*) FROM "
    "needletrace.sequence_holes h WHERE h.clinic_id = p.clinic_id AND h.device_serial = "
    "p.device_serial) AS open_holes, (SELECT coalesce(sum(h.gap_end - h.gap_start + 1), 0) FROM "
    "needletrace.sequence_holes h WHERE h.clinic_id = p.clinic_id AND h.device_serial = "
    "p.device_serial) AS missing_seqs, (SELECT count(*) FROM al WHERE al.clinic_id = p.clinic_id "
    "AND al.device_serial = p.device_serial AND al.rule = 'SEQUENCE_GAP') AS gap_alerts, (SELECT "
    "count(*) FROM al WHERE al.clinic_id = p.clinic_id AND al.device_serial = p.device_serial AND "
    "al.rule = 'CLOCK_SKEW') AS skew_alerts, coalesce(max(p.ahead)::text, '') AS clock_ahead, "
    "coalesce(max(p.behind)::text, '') AS clock_behind FROM pb p GROUP BY 1, 2) "
    "SELECT 0 AS k, 0::bigint AS o, from_date AS c1, to_date, time_zones, clinics::text, "
    "pens::text, sessions::text, events::text, cartridges_used::text, cartridge_reuse::text, "
    "exceptions::text, open::text, acknowledged::text FROM sm UNION ALL SELECT 2, row_number() "
    "OVER (ORDER BY area, bucket_um, limit_um), area, limit_um::text, bucket_um::text, "
    "samples::text, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM dp UNION ALL SELECT 5, "
    "row_number() OVER (ORDER BY clinic_id, pen), clinic_id, pen, events::text, boots::text, "
    "open_holes::text, missing_seqs::text, gap_alerts::text, skew_alerts::text, clock_ahead, "
    "clock_behind, NULL, NULL FROM pn ORDER BY 1, 2";

/* The limit of each area ($2) of a clinic ($1), in order: for the sessions' depth used. */
static const char report__limits[] =
    "SELECT (" REPORT__LIMIT ")::text FROM unnest($1::text[], $2::text[]) WITH "
    "ORDINALITY AS x(clinic_id, area, o) ORDER BY x.o";

/* The sessions' heads from their start and end in the period (extra: a further condition on e),
 * h; their cartridges mounted in the period, k; a session's row from s (clinic_id, device_serial,
 * session_id, started, ended, operator, patient, depth), its end looked for after the period
 * when there is none in it. */
#define REPORT__SESSION_H(extra)                                                                   \
    "h AS (SELECT e.clinic_id, e.device_serial, e.session_id, min(e.device_time) FILTER (WHERE "   \
    "e.kind = 'session_started') AS started, min(e.device_time) FILTER (WHERE e.kind = "           \
    "'session_ended') AS ended, max(e.operator_id) AS operator, max(e.patient_ref) AS patient "    \
    "FROM " REPORT__IN " AND e.kind IN ('session_started', 'session_ended') AND e.session_id IS "  \
    "NOT NULL" extra " GROUP BY 1, 2, 3)"
#define REPORT__SESSION_K(extra)                                                                   \
    "k AS (SELECT e.clinic_id, e.device_serial, e.session_id, string_agg(DISTINCT e.gtin || '/' "  \
    "|| e.cartridge_serial, ' ') AS cartridges FROM " REPORT__IN " AND e.kind = "                  \
    "'cartridge_mounted' AND e.session_id IS NOT NULL" extra " GROUP BY 1, 2, 3)"
#define REPORT__SESSION_ROW                                                                        \
    "SELECT s.clinic_id, s.device_serial AS pen, s.session_id, coalesce(s.operator, '') AS "       \
    "operator, coalesce(s.patient, '') AS patient_ref, coalesce(to_char(s.started AT TIME ZONE "   \
    "coalesce(z.time_zone, 'UTC'), 'YYYY-MM-DD HH24:MI'), '') AS started, "                        \
    "coalesce(round(extract(epoch FROM coalesce(s.ended, f.ended) - s.started) / 60.0, "           \
    "1)::text, '') AS minutes, coalesce(k.cartridges, '') AS cartridges, coalesce(s.depth, '') "   \
    "AS depth_used_vs_limit FROM s LEFT JOIN k USING (clinic_id, device_serial, session_id) LEFT " \
    "JOIN LATERAL (SELECT min(y.device_time) AS ended FROM needletrace.events y WHERE s.ended IS " \
    "NULL AND s.started IS NOT NULL AND y.clinic_id = s.clinic_id AND y.device_serial = "          \
    "s.device_serial AND y.session_id = s.session_id AND y.kind = 'session_ended' AND "            \
    "y.device_time >= s.started) f ON true LEFT JOIN needletrace.clinics z ON z.clinic_id = "      \
    "s.clinic_id"

/* The sessions started in the period, in order, their depth used left empty (the figures' once
 * the record is verified): run while it is, on the connection that then joins the check. */
static const char report__started[] = "WITH " REPORT__SESSION_H("") ", " REPORT__SESSION_K(
    "") ", s AS (SELECT h.*, NULL::text AS depth FROM h WHERE h.started IS NOT "
        "NULL) " REPORT__SESSION_ROW " ORDER BY s.started, 1, 2, 3";

/* An integer of an alert's details as a number, NULL when absent or not an integer (details are
 * the rules', but an alert row is not trusted to be well-formed). */
#define REPORT__INT(key)                                                                           \
    "CASE WHEN al.details->>'" key "' ~ '^-?[0-9]{1,18}$' THEN (al.details->>'" key "')::bigint "  \
    "END AS " key

/* The sections, once the record is verified and the figures gathered: the sessions (lane 0) on
 * the first connection, the others (lane 1) on the second at once. */
static const report__section_t report__sections[] = {
    /* summary, depth and pens: from report__shared (their columns here, their rows there) */
    {3, 1, "summary", "Summary", NULL,
     "from_date,to_date,time_zones,clinics#,pens#,sessions#,events#,cartridges_used#,"
     "cartridge_reuse#,exceptions#,open#,acknowledged#"},
    {3, 1, "exceptions_by_rule", "Exceptions by rule and severity",
     "WITH " REPORT__AL " SELECT rule, severity, count(*) AS alerts, count(*) FILTER (WHERE NOT "
     "EXISTS (SELECT 1 FROM needletrace.alert_acks k WHERE k.clinic_id = al.clinic_id AND "
     "k.alert_id = al.alert_id)) AS open FROM al GROUP BY 1, 2 ORDER BY 1, 2",
     NULL},
    {3, 1, "depth", "Depth used per treatment area against its limit", NULL,
     "area,limit_um#,bucket_um#,samples#"},
    {3, 1, "sessions_per_day", "Sessions per pen per day",
     "SELECT e.device_serial AS pen, (e.device_time AT TIME ZONE coalesce(z.time_zone, "
     "'UTC'))::date::text AS day, count(*) AS sessions FROM (SELECT e.clinic_id, "
     "e.device_serial, e.device_time FROM " REPORT__IN " AND e.kind = 'session_started') e LEFT "
     "JOIN needletrace.clinics z ON z.clinic_id = e.clinic_id GROUP BY 1, 2 ORDER BY 1, 2",
     NULL},
    {0, 1, "completeness", "Completeness",
     "SELECT collector_id, batches, messages_received, messages_stored, messages_quarantined, "
     "redeliveries_skipped, raw_rows_now, CASE WHEN messages_received = messages_stored + "
     "messages_quarantined + redeliveries_skipped AND raw_rows_now = messages_stored THEN 'ok' "
     "ELSE 'MISMATCH' END AS verdict FROM needletrace.completeness ORDER BY 1",
     NULL},
    /* Per pen, over the period: its events, boots and clock skew, and the alerts of the period
     * about its gaps and clock; its sequence holes still open are the record's now. */
    {3, 1, "pens", "Sequence gaps and clock skew per pen", NULL,
     "clinic_id,pen,events#,boots#,open_holes#,missing_seqs#,gap_alerts#,skew_alerts#,clock_ahead,"
     "clock_behind"},
    {3, 1, "exceptions", "Exceptions",
     "WITH " REPORT__AL " SELECT to_char(al.raised_at AT TIME ZONE al.tz, 'YYYY-MM-DD HH24:MI') "
     "AS raised, al.alert_id, al.rule, al.severity, al.clinic_id, al.device_serial AS pen, "
     "coalesce(al.session_id, '') AS session, coalesce(al.details->>'serial', "
     "al.details->>'cartridge_serial', '') AS cartridge, " REPORT__INT("limit_um") ", " REPORT__INT(
         "depth_um") ", coalesce(k.acked_by || ' "
                     "(' || k.acked_role || ', ' || to_char(k.acked_at AT TIME ZONE al.tz, "
                     "'YYYY-MM-DD HH24:MI') "
                     "|| '): ' || coalesce(k.note, ''), 'open') AS acknowledgement FROM al LEFT "
                     "JOIN LATERAL "
                     "(SELECT * FROM needletrace.alert_acks x WHERE x.clinic_id = al.clinic_id AND "
                     "x.alert_id = "
                     "al.alert_id ORDER BY x.acked_at DESC LIMIT 1) k ON true ORDER BY "
                     "al.raised_at, al.alert_id",
     NULL},
    /* A session is the period's whose start is in it (each session in the report of one period
     * only), or, with no start in the record at all, that has events in it. Its end is taken
     * where it is (after the period too: minutes whole); its operator, patient, cartridges and
     * depth from its events in the period. A session started before the period is in the report
     * of the period it started in; its events in this one still count in the summary's events,
     * the depth chart and the pens. Those started in the period come from report__started (while
     * the record is verified), the others from this query, its $4-$7 the sessions with events in
     * the period and no start in it: the figures' (their depth used too). */
    {7, 0, "sessions", "Sessions",
     "WITH d AS (SELECT u.clinic_id, u.device_serial, u.session_id, u.depth FROM "
     "unnest($4::text[], $5::text[], $6::text[], $7::text[]) AS u(clinic_id, device_serial, "
     "session_id, depth)), " REPORT__SESSION_H(
         " AND (e.clinic_id, e.device_serial, e.session_id) "
         "IN (SELECT d.clinic_id, d.device_serial, "
         "d.session_id FROM d)") ", " REPORT__SESSION_K(" AND (e.clinic_id, e.device_serial, "
                                                        "e.session_id) IN (SELECT "
                                                        "d.clinic_id, d.device_serial, "
                                                        "d.session_id FROM d)") ", s AS (SELECT "
                                                                                "d.*, h.started, "
                                                                                "h.ended, "
                                                                                "h.operator, "
                                                                                "h.patient FROM d "
                                                                                "LEFT JOIN h "
                                                                                "USING (clinic_id, "
                                                                                "device_serial, "
                                                                                "session_id))"
                                                                                " " REPORT__SESSION_ROW
                                                                                " WHERE s.started "
                                                                                "IS NOT NULL OR "
                                                                                "NOT EXISTS "
                                                                                "(SELECT 1 FROM "
                                                                                "needletrace."
                                                                                "events y "
                                                                                "WHERE y.clinic_id "
                                                                                "= s.clinic_id AND "
                                                                                "y.device_serial = "
                                                                                "s.device_serial "
                                                                                "AND "
                                                                                "y.session_id = "
                                                                                "s.session_id AND "
                                                                                "y.kind = "
                                                                                "'session_started')"
                                                                                " ORDER BY "
                                                                                "s.started "
                                                                                "NULLS LAST, 1, 2, "
                                                                                "3",
     NULL},
};

#define REPORT__N (sizeof(report__sections) / sizeof(report__sections[0]))

/* Writes s for CSV (quoted when needed). A cell a spreadsheet would read as a formula (it starts
 * with = + - @ or a tab or CR: a pen's or a person's text) is quoted and prefixed with '. */
static void report__csv(FILE *out, const char *s)
{
    int formula = strchr("=+-@\t\r", s[0]) != NULL && s[0] != '\0';
    if (!formula && strpbrk(s, ",\"\n\r") == NULL) {
        fputs(s, out);
        return;
    }
    fputc('"', out);
    if (formula) {
        fputc('\'', out);
    }
    for (; *s != '\0'; s++) {
        if (*s == '"') {
            fputc('"', out);
        }
        fputc(*s, out);
    }
    fputc('"', out);
}

static void report__write_csv(FILE *out, PGresult *const *res, const char *verification)
{
    for (size_t s = 0; s < REPORT__N; s++) {
        fputs("section", out);
        for (int c = 0; c < PQnfields(res[s]); c++) {
            fputc(',', out);
            report__csv(out, PQfname(res[s], c));
        }
        fputc('\n', out);
        for (int r = 0; r < PQntuples(res[s]); r++) {
            fputs(report__sections[s].name, out);
            for (int c = 0; c < PQnfields(res[s]); c++) {
                fputc(',', out);
                report__csv(out, PQgetvalue(res[s], r, c));
            }
            fputc('\n', out);
        }
    }
    fputs("section,verification\nverification,", out);
    report__csv(out, verification);
    fputc('\n', out);
}

/* One value in JSON as its column's type says: numbers (a finite one; else a string) and booleans
 * bare, NULL as null, everything else a string. */
static void report__json_value(FILE *out, const PGresult *res, int r, int c)
{
    const char *v = PQgetvalue(res, r, c);
    if (PQgetisnull(res, r, c)) {
        fputs("null", out);
        return;
    }
    switch (PQftype(res, c)) {
    case REPORT__BOOL:
        fputs(v[0] == 't' ? "true" : "false", out);
        return;
    case REPORT__INT2:
    case REPORT__INT4:
    case REPORT__INT8:
    case REPORT__FLOAT4:
    case REPORT__FLOAT8:
    case REPORT__NUMERIC: {
        char *end = NULL;
        double d = strtod(v, &end);
        if (end != v && *end == '\0' && isfinite(d) &&
            (v[0] == '-' || isdigit((unsigned char)v[0]))) {
            fputs(v, out);
            return;
        }
        break;
    }
    default:
        break;
    }
    nt_audit__json_str(out, v);
}

static void report__write_json(FILE *out, PGresult *const *res, const char *verification)
{
    fputs("{", out);
    for (size_t s = 0; s < REPORT__N; s++) {
        fprintf(out, "%s\n  \"%s\": [", s > 0 ? "," : "", report__sections[s].name);
        for (int r = 0; r < PQntuples(res[s]); r++) {
            fputs(r > 0 ? ",\n    {" : "\n    {", out);
            for (int c = 0; c < PQnfields(res[s]); c++) {
                fputs(c > 0 ? ", " : "", out);
                nt_audit__json_str(out, PQfname(res[s], c));
                fputs(": ", out);
                report__json_value(out, res[s], r, c);
            }
            fputc('}', out);
        }
        fputs("]", out);
    }
    fputs(",\n  \"verification\": ", out);
    nt_audit__json_str(out, verification);
    fputs("\n}\n", out);
}

/* The period's bounds (device time, microseconds since 2000-01-01 UTC): in UTC, then per clinic
 * in its zone. */
static const char report__bounds[] =
    "SELECT NULL::text, ((extract(epoch FROM ($1::date::timestamp AT TIME ZONE 'UTC')) - "
    "946684800) * 1000000)::bigint, ((extract(epoch FROM (($2::date + 1)::timestamp AT TIME ZONE "
    "'UTC')) - 946684800) * 1000000)::bigint UNION ALL SELECT z.clinic_id, ((extract(epoch FROM "
    "($1::date::timestamp AT TIME ZONE coalesce(z.time_zone, 'UTC'))) - 946684800) * "
    "1000000)::bigint, ((extract(epoch FROM (($2::date + 1)::timestamp AT TIME ZONE "
    "coalesce(z.time_zone, 'UTC'))) - 946684800) * 1000000)::bigint FROM needletrace.clinics z "
    "WHERE z.clinic_id IS NOT NULL ORDER BY 1 NULLS FIRST";

/* An aggregate for the events of clinic (NULL: all) whose device time is within the local dates
 * [from, to] of their clinic (UTC without a row in needletrace.clinics); NULL after printing. */
static nt_audit_agg_t *report__agg(PGconn *conn, const char *clinic, const char *from,
                                   const char *to)
{
    const Oid types[2] = {1082, 1082};
    const char *values[2] = {from, to};
    PGresult *res = PQexecParams(conn, report__bounds, 2, types, values, NULL, NULL, 0);
    nt_audit_agg_t *g = NULL;
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1) {
        fprintf(stderr, "needletrace: audit report: the period's bounds: %s",
                nt_audit__why(conn, res));
    } else if ((g = nt_audit__agg_new(clinic, strtoll(PQgetvalue(res, 0, 1), NULL, 10),
                                      strtoll(PQgetvalue(res, 0, 2), NULL, 10))) == NULL) {
        fprintf(stderr, "needletrace: audit report: out of memory\n");
    }
    const int64_t day = 86400000000LL; /* µs */
    for (int r = 1; g != NULL && r < PQntuples(res); r++) {
        int64_t lo = strtoll(PQgetvalue(res, r, 1), NULL, 10);
        int64_t hi = strtoll(PQgetvalue(res, r, 2), NULL, 10);
        int64_t utc_lo = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
        int64_t utc_hi = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
        /* the sessions' queries take every zone to be within a day of UTC (REPORT__IN), as the
         * clinics trigger makes them (IANA zones): a zone beyond, set by hand, would make them
         * disagree with the figures */
        int rc = PQgetisnull(res, r, 1) || PQgetisnull(res, r, 2) ? -3
                 : llabs(lo - utc_lo) > day || llabs(hi - utc_hi) > day
                     ? -4
                     : nt_audit__agg_bound(g, PQgetvalue(res, r, 0), lo, hi);
        if (rc != 0) {
            fprintf(stderr, "needletrace: audit report: clinic \"%.64s\": %s\n",
                    PQgetvalue(res, r, 0),
                    rc == -2   ? "two rows in needletrace.clinics: which time zone is its own?"
                    : rc == -3 ? "the period's bounds in its time zone are not known"
                    : rc == -4 ? "its time zone is more than a day from UTC (the clinics trigger "
                                 "allows IANA zones only: the row was changed by hand)"
                               : "out of memory");
            nt_audit__agg_free(g);
            g = NULL;
        }
    }
    PQclear(res);
    return g;
}

/* The sessions started in the period (report__started) on conn; then, when late is set, conn
 * offered to the verification. */
typedef struct {
    PGconn *conn;
    const char *const *values;
    PGresult *res; /* NULL after a failure (printed) */
    nt_audit_late_t *late;
} report__started_t;

static void *report__started_run(void *arg)
{
    report__started_t *s = arg;
    s->res = PQexecParams(s->conn, report__started, 3, report__types, s->values, NULL, NULL, 0);
    if (PQresultStatus(s->res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "needletrace: audit report: sessions: %s", nt_audit__why(s->conn, s->res));
        PQclear(s->res);
        s->res = NULL;
    }
    if (s->late != NULL) {
        pthread_mutex_lock(&s->late->mu);
        s->late->conn = s->res != NULL ? s->conn : NULL; /* a failed transaction is no use */
        s->late->done = 1;
        pthread_cond_broadcast(&s->late->cv);
        pthread_mutex_unlock(&s->late->mu);
    }
    return NULL;
}

/* Runs verify into a string (the report's last section), gathering the figures into g on the way
 * (the rows it reads are the events, once): every connection in turn takes a piece of the check.
 * *verdict gets its exit code (0: the record verified; -1: no verdict). NULL when out of memory
 * or when the figures could not be made (printed). */
static char *report__verify(nt_audit_t *a, nt_audit_agg_t *g, const char *digests, const char *pub,
                            int *verdict, report__started_t *started)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    if (mem == NULL) {
        fprintf(stderr, "needletrace: audit report: out of memory\n");
        return NULL;
    }
    /* the third connection gets the sessions started in the period first, then joins */
    nt_audit_late_t late = {
        .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .conn = NULL, .done = 1};
    pthread_t th;
    int threaded = 0;
    if (a->conn3 != NULL) { /* all set before the thread may look */
        late.done = 0;
        started->conn = a->conn3;
        started->late = &late;
        threaded = pthread_create(&th, NULL, report__started_run, started) == 0;
        if (!threaded) { /* no thread: the third joins at once, the sessions are read after */
            late.conn = a->conn3;
            late.done = 1;
            started->conn = NULL;
            started->late = NULL;
        }
    }
    nt_audit_t v = *a;
    v.late = a->conn3 != NULL ? &late : NULL;
    v.out = mem;
    v.findings = 0;
    v.failed = 0;
    v.agg = g;
    v.from = v.to = v.clinic = NULL; /* the record as a whole */
    *verdict = nt_audit__verify(&v, digests, pub);
    int figures = 0;
    if (v.failed) {
        fputs("NO VERDICT: a query failed; nothing can be said of the record\n", mem);
        *verdict = -1;
    } else {
        figures = nt_audit__agg_rest(&v) == 0; /* the events no checked batch seals */
    }
    if (threaded) { /* the sessions started in the period, read meanwhile */
        pthread_join(th, NULL);
        started->late = NULL;
    }
    if (digests == NULL) {
        fputs("(checked without digests: a chain rewritten consistently would not be seen)\n", mem);
    }
    int lost = ferror(mem); /* out of memory while it grew: a verification cut short */
    if (fclose(mem) != 0 || lost) {
        fprintf(stderr, "needletrace: audit report: out of memory\n");
        free(buf);
        buf = NULL;
        *verdict = -1;
        figures = 1;
    }
    pthread_mutex_destroy(&late.mu);
    pthread_cond_destroy(&late.cv);
    const char *why = nt_audit__agg_error(g);
    if (why != NULL && *verdict >= 0 && buf != NULL) {
        fprintf(stderr, "needletrace: audit report: the figures: %s\n", why);
        figures = 0;
    }
    if (!figures && *verdict >= 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* The rows of report__shared into a result per section (each column text, NULL kept). 0, or -1
 * (printed). */
static int report__split(const PGresult *all, PGresult **res)
{
    for (size_t s = 0; s < REPORT__N; s++) {
        if (report__sections[s].sql != NULL) {
            continue;
        }
        PGresAttDesc att[16];
        char names[512];
        int n = 0;
        snprintf(names, sizeof(names), "%s", report__sections[s].cols);
        for (char *save = NULL, *t = strtok_r(names, ",", &save); t != NULL && n < 16;
             t = strtok_r(NULL, ",", &save)) {
            size_t tl = strlen(t);
            int number = tl > 0 && t[tl - 1] == '#'; /* a count: a number in JSON */
            t[tl - (size_t)number] = '\0';
            att[n++] = (PGresAttDesc){
                .name = t, .typid = number ? REPORT__NUMERIC : 25, .typlen = -1, .atttypmod = -1};
        }
        res[s] = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
        if (res[s] == NULL || !PQsetResultAttrs(res[s], n, att)) {
            fprintf(stderr, "needletrace: audit report: out of memory\n");
            return -1;
        }
    }
    for (int r = 0; r < PQntuples(all); r++) {
        size_t k = (size_t)strtoul(PQgetvalue(all, r, 0), NULL, 10);
        if (k >= REPORT__N || report__sections[k].sql != NULL) {
            fprintf(stderr, "needletrace: audit report: shared query: no section %zu\n", k);
            return -1;
        }
        int row = PQntuples(res[k]);
        for (int c = 0; c < PQnfields(res[k]) && c + 2 < PQnfields(all); c++) {
            int null = PQgetisnull(all, r, c + 2);
            if (!PQsetvalue(res[k], row, c, null ? NULL : PQgetvalue(all, r, c + 2),
                            null ? -1 : PQgetlength(all, r, c + 2))) {
                fprintf(stderr, "needletrace: audit report: out of memory\n");
                return -1;
            }
        }
    }
    return 0;
}

/* The sections of one lane, in order, on conn; lane 1 starts with report__shared. */
typedef struct {
    PGconn *conn;
    int lane; /* -1: every section */
    const char *const *values;
    const int *lengths, *formats;
    PGresult **res;
    PGresult *started; /* the sessions started in the period: the sessions' first rows */
    int others;        /* sessions with events in the period and no start in it */
    int failed;        /* a query failed (printed) */
} report__lane_t;

/* The sessions: those started in the period, then the others (if any: their query). NULL after
 * a failure (printed). */
static PGresult *report__sessions(report__lane_t *l, size_t s)
{
    PGresult *started = l->started, *others = NULL;
    l->started = NULL; /* the section's now */
    if (l->others > 0) {
        others = PQexecParams(l->conn, report__sections[s].sql, report__sections[s].nparams,
                              report__types, l->values, l->lengths, l->formats, 0);
        if (PQresultStatus(others) != PGRES_TUPLES_OK) {
            fprintf(stderr, "needletrace: audit report: section %s: %s", report__sections[s].name,
                    nt_audit__why(l->conn, others));
            PQclear(others);
            PQclear(started);
            return NULL;
        }
    }
    int n = PQntuples(started);
    if (others != NULL && PQnfields(others) != PQnfields(started)) {
        fprintf(stderr, "needletrace: audit report: sessions: %d columns, then %d\n",
                PQnfields(started), PQnfields(others));
        PQclear(others);
        PQclear(started);
        return NULL;
    }
    int ok = 1;
    for (int r = 0; ok && others != NULL && r < PQntuples(others); r++) {
        for (int c = 0; ok && c < PQnfields(others); c++) {
            int null = PQgetisnull(others, r, c);
            ok = PQsetvalue(started, n + r, c, null ? NULL : PQgetvalue(others, r, c),
                            null ? -1 : PQgetlength(others, r, c));
        }
    }
    PQclear(others);
    if (!ok) {
        fprintf(stderr, "needletrace: audit report: sessions: out of memory\n");
        PQclear(started);
        return NULL;
    }
    return started;
}

static void *report__lane(void *arg)
{
    report__lane_t *l = arg;
    if (l->lane != 0) {
        PGresult *all = PQexecParams(l->conn, report__shared, REPORT__NPARAMS, report__types,
                                     l->values, l->lengths, l->formats, 0);
        if (PQresultStatus(all) != PGRES_TUPLES_OK) {
            fprintf(stderr, "needletrace: audit report: summary, depth and pens: %s",
                    nt_audit__why(l->conn, all));
            l->failed = 1;
        } else if (report__split(all, l->res) != 0) {
            l->failed = 1;
        }
        PQclear(all);
    }
    for (size_t s = 0; s < REPORT__N && !l->failed; s++) {
        if ((l->lane >= 0 && report__sections[s].lane != l->lane) ||
            report__sections[s].sql == NULL) {
            continue;
        }
        if (strcmp(report__sections[s].name, "sessions") == 0) {
            l->res[s] = report__sessions(l, s);
            l->failed = l->res[s] == NULL;
            continue;
        }
        l->res[s] = PQexecParams(l->conn, report__sections[s].sql, report__sections[s].nparams,
                                 report__types, l->values, l->lengths, l->formats, 0);
        if (PQresultStatus(l->res[s]) != PGRES_TUPLES_OK) {
            fprintf(stderr, "needletrace: audit report: section %s: %s", report__sections[s].name,
                    nt_audit__why(l->conn, l->res[s]));
            PQclear(l->res[s]);
            l->res[s] = NULL;
            l->failed = 1;
        }
    }
    return NULL;
}

/* The sections' queries, their parameters the figures in g: on two lanes at once (the sessions
 * on a->conn, the others on a->conn2: same snapshot) or, with one connection, one after the
 * other. 0, or -1 (printed). */
static int report__sections_run(nt_audit_t *a, nt_audit_agg_t *g, const char *from, const char *to,
                                PGresult *first, PGresult **res)
{
    nt_audit_arr_t arr[16] = {{0}};
    char started[24], carts[24];
    int64_t ns, nc;
    int rc = nt_audit__agg_sessions(g, a->conn, report__limits, first, &arr[0]);
    if (rc == 0 && (nt_audit__agg_pens(g, &arr[4]) != 0 || nt_audit__agg_depth(g, &arr[12]) != 0)) {
        fprintf(stderr,
                "needletrace: audit report: the figures: out of memory, or more than a query's "
                "parameter may hold (1 GiB)\n");
        rc = -1;
    }
    nt_audit__agg_counts(g, &ns, &nc);
    snprintf(started, sizeof(started), "%" PRId64, ns);
    snprintf(carts, sizeof(carts), "%" PRId64, nc);
    const char *values[REPORT__NPARAMS] = {a->clinic, from, to};
    int lengths[REPORT__NPARAMS] = {0}, formats[REPORT__NPARAMS] = {0};
    for (int i = 0; i < 16; i++) {
        values[3 + i] = (const char *)arr[i].b;
        lengths[3 + i] = (int)arr[i].len;
        formats[3 + i] = 1;
    }
    values[19] = started;
    values[20] = carts;
    report__lane_t lane[2] = {{.conn = a->conn,
                               .lane = a->conn2 != NULL ? 0 : -1,
                               .values = values,
                               .lengths = lengths,
                               .formats = formats,
                               .res = res,
                               .started = first,
                               .others = (int)arr[0].n},
                              {.conn = a->conn2,
                               .lane = 1,
                               .values = values,
                               .lengths = lengths,
                               .formats = formats,
                               .res = res}};
    pthread_t th;
    int threaded = 0;
    if (rc == 0) {
        threaded = a->conn2 != NULL && pthread_create(&th, NULL, report__lane, &lane[1]) == 0;
        if (!threaded) {
            lane[0].lane = -1;
        }
        report__lane(&lane[0]);
        if (threaded) {
            pthread_join(th, NULL);
        }
        rc = lane[0].failed || lane[1].failed ? -1 : 0;
    }
    PQclear(lane[0].started); /* not the section's: a failure before it */
    nt_audit__arrs_free(arr, 16);
    return rc;
}

int nt_audit__report(nt_audit_t *a, const char *format, const char *from, const char *to,
                     const char *digests, const char *pub, FILE *out)
{
    PGresult *res[REPORT__N] = {0};
    /* The verification first, every connection busy with it, the figures gathered from the
     * events it reads; then the sections, their queries on the figures and the small tables. */
    nt_audit_agg_t *g = report__agg(a->conn, a->clinic, from, to);
    int verdict = -1;
    const char *values[3] = {a->clinic, from, to};
    report__started_t started = {.values = values};
    char *verification = g != NULL ? report__verify(a, g, digests, pub, &verdict, &started) : NULL;
    int rc = verification == NULL;
    if (rc == 0 && verdict >= 0 && started.conn == NULL) { /* not run meanwhile: now */
        started.conn = a->conn;
        report__started_run(&started);
    }
    if (rc == 0 && verdict >= 0 &&
        (started.res == NULL || report__sections_run(a, g, from, to, started.res, res) != 0)) {
        rc = 1;
    } else if (rc != 0 || verdict < 0) {
        PQclear(started.res);
    }
    nt_audit__agg_free(g);
    if (rc == 0 && verdict >= 0) {
        if (strcmp(format, "csv") == 0) {
            report__write_csv(out, res, verification);
            rc = ferror(out) ? 1 : 0;
        } else if (strcmp(format, "json") == 0) {
            report__write_json(out, res, verification);
            rc = ferror(out) ? 1 : 0;
        } else {
            rc = nt_audit__report_html(out, report__sections, res, REPORT__N, verification);
        }
    }
    if (rc == 0 && verdict < 0) { /* a report without a verdict is not one to hand over */
        fprintf(stderr, "needletrace: audit report: the record could not be verified (a query "
                        "failed: see above)\n");
        rc = 1;
    } else if (rc == 0 && verdict != 0) {
        fprintf(stderr, "needletrace: audit report: the verification of the record did not pass "
                        "(see its section in the report)\n");
        rc = 2; /* the report is written; the record is not as sealed */
    }
    free(verification);
    for (size_t s = 0; s < REPORT__N; s++) {
        PQclear(res[s]);
    }
    return rc;
}
