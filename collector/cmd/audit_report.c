/* audit_report.c -- `needletrace audit report`: what a compliance officer hands over, for one
 * clinic (or all) and a range of local dates: summary, exceptions by rule and severity, every
 * exception with its acknowledgement, every session, the depth used per treatment area against
 * its limit, sessions per pen per day, completeness, and the verification of the record (with the
 * digest it was checked against). The same sections as HTML (one printable file: inline CSS and
 * SVG, no network), CSV (a section column first) or JSON (an object of arrays). Times and dates
 * are each clinic's local ones (needletrace.clinics; UTC without a row), as the report states. */
#include <ctype.h>
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

/* The types of $1 clinic, $2 from, $3 to: dates typed as such, not text cast in the query (a
 * cast from text is stable, not folded into a constant when planned: it was parsed again for
 * each row, three quarters of a scan's time). */
static const Oid report__types[3] = {25 /* text */, 1082 /* date */, 1082};

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
/* The summary, the depth chart and the pens from one read of the period's events: per pen and
 * boot (events, clock ahead and behind) and per clinic, area and depth bucket (needle settings
 * and activity), two groupings of one scan. One result: per row the section's index in
 * report__sections (k), its order (o) and its columns as text (c1...), split by report__split
 * into a result per section with the names in report__sections[k].cols. */
static const char report__shared[] =
    "WITH x AS MATERIALIZED (SELECT GROUPING(x.boot_id) AS g, x.clinic_id, x.device_serial, "
    "x.boot_id, x.area, x.bucket_um, count(*) AS n, max(x.ahead) AS ahead, max(x.behind) AS "
    "behind FROM (SELECT e.clinic_id, e.device_serial, e.boot_id, e.device_time - e.received_at "
    "AS ahead, e.received_at - e.device_time AS behind, CASE WHEN e.kind IN ('needle_setting', "
    "'needle_activity') THEN coalesce(e.area, 'unspecified') END AS area, CASE WHEN e.kind IN "
    "('needle_setting', 'needle_activity') THEN (e.depth_um / 250) * 250 END AS bucket_um "
    "FROM " REPORT__IN ") x GROUP BY GROUPING SETS ((x.clinic_id, x.device_serial, x.boot_id), "
    "(x.clinic_id, x.area, x.bucket_um))), pb AS (SELECT clinic_id, device_serial, boot_id, n, "
    "ahead, behind FROM x WHERE g = 0), p AS (SELECT pb.clinic_id, coalesce(z.time_zone, 'UTC') "
    "AS tz, pb.device_serial, sum(pb.n) AS n FROM pb LEFT JOIN needletrace.clinics z ON "
    "z.clinic_id = pb.clinic_id GROUP BY 1, 2, 3), " REPORT__AL
    ", sm AS (SELECT to_char($2::date, 'YYYY-MM-DD') AS from_date, to_char($3::date, "
    "'YYYY-MM-DD') AS to_date, (SELECT string_agg(DISTINCT "
    "clinic_id || ': ' || tz, ', ') FROM p) AS time_zones, (SELECT count(DISTINCT clinic_id) "
    "FROM p) AS clinics, (SELECT count(*) FROM p) AS pens, (SELECT count(*) FROM " REPORT__IN
    " AND e.kind = 'session_started') AS sessions, (SELECT coalesce(sum(n), 0)::bigint FROM p) "
    "AS events, (SELECT count(*) FROM (SELECT DISTINCT e.gtin, e.cartridge_serial FROM " REPORT__IN
    " AND e.kind = 'cartridge_mounted') k) AS cartridges_used, (SELECT count(*) FROM al WHERE "
    "rule = 'CARTRIDGE_REUSED') AS cartridge_reuse, (SELECT count(*) FROM al) AS exceptions, "
    "(SELECT count(*) FROM al WHERE NOT EXISTS (SELECT 1 FROM needletrace.alert_acks k WHERE "
    "k.clinic_id = al.clinic_id AND k.alert_id = al.alert_id)) AS open, (SELECT count(*) FROM al "
    "WHERE EXISTS (SELECT 1 FROM needletrace.alert_acks k WHERE k.clinic_id = al.clinic_id AND "
    "k.alert_id = al.alert_id)) AS acknowledged), dp AS (SELECT x.area, " REPORT__LIMIT
    " AS limit_um, x.bucket_um, sum(x.n)::bigint AS samples FROM x WHERE x.g = 1 AND x.area IS "
    "NOT NULL GROUP BY x.area, 2, x.bucket_um), pn AS (SELECT p.clinic_id, p.device_serial AS "
    "pen, sum(p.n)::bigint AS events, count(*) AS boots, (SELECT count(*) FROM "
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

/* An integer of an alert's details as a number, NULL when absent or not an integer (details are
 * the rules', but an alert row is not trusted to be well-formed). */
#define REPORT__INT(key)                                                                           \
    "CASE WHEN al.details->>'" key "' ~ '^-?[0-9]{1,18}$' THEN (al.details->>'" key "')::bigint "  \
    "END AS " key

/* Sections on the second connection (lane 1), at once with those on the first: each reads the
 * period's events once; the sessions (lane 0) cost about as much as the others together. */
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
     * the depth chart and the pens. */
    {3, 0, "sessions", "Sessions",
     "WITH sa AS (SELECT e.clinic_id, e.device_serial, e.session_id, CASE WHEN e.kind IN "
     "('needle_setting', 'needle_activity') THEN coalesce(e.area, 'unspecified') END AS area, "
     "max(e.depth_um) AS mx FROM " REPORT__IN " AND e.session_id IS NOT NULL GROUP BY 1, 2, 3, "
     "4), h AS (SELECT e.clinic_id, e.device_serial, e.session_id, min(e.device_time) FILTER "
     "(WHERE e.kind = 'session_started') AS started, min(e.device_time) FILTER (WHERE e.kind = "
     "'session_ended') AS ended, max(e.operator_id) AS operator, max(e.patient_ref) AS patient "
     "FROM " REPORT__IN " AND e.kind IN ('session_started', 'session_ended') AND e.session_id IS "
     "NOT NULL GROUP BY 1, 2, 3), d AS (SELECT v.clinic_id, v.device_serial, v.session_id, "
     "string_agg(v.area || ' ' || v.mx || '/' || coalesce(pc.max_depth_um, dp.max_depth_um, "
     "needletrace.depth_hard_max_um()) || ' um', ', ') FILTER (WHERE v.area IS NOT NULL) AS "
     "depth FROM sa v LEFT JOIN needletrace.depth_policy_clinic pc ON pc.clinic_id = v.clinic_id "
     "AND pc.area = v.area LEFT JOIN needletrace.depth_policy dp ON dp.area = v.area GROUP BY 1, "
     "2, 3), s AS (SELECT d.*, h.started, h.ended, h.operator, h.patient FROM d LEFT JOIN h USING "
     "(clinic_id, device_serial, session_id)), k AS (SELECT e.clinic_id, e.device_serial, "
     "e.session_id, string_agg(DISTINCT e.gtin || '/' || e.cartridge_serial, ' ') AS cartridges "
     "FROM " REPORT__IN " AND e.kind = 'cartridge_mounted' AND e.session_id IS NOT NULL GROUP BY "
     "1, 2, 3) SELECT s.clinic_id, s.device_serial AS pen, s.session_id, "
     "coalesce(s.operator, '') AS operator, coalesce(s.patient, '') AS patient_ref, "
     "coalesce(to_char(s.started AT TIME "
     "ZONE coalesce(z.time_zone, 'UTC'), 'YYYY-MM-DD HH24:MI'), '') AS started, "
     "coalesce(round(extract(epoch FROM coalesce(s.ended, f.ended) - s.started) / 60.0, "
     "1)::text, '') AS minutes, coalesce(k.cartridges, '') AS cartridges, coalesce(s.depth, '') "
     "AS depth_used_vs_limit FROM s LEFT JOIN k USING (clinic_id, device_serial, session_id) LEFT "
     "JOIN LATERAL (SELECT "
     "min(y.device_time) AS ended FROM "
     "needletrace.events y WHERE s.ended IS NULL AND s.started IS NOT NULL AND y.clinic_id = "
     "s.clinic_id AND y.device_serial = s.device_serial AND y.session_id = s.session_id AND "
     "y.kind = 'session_ended' AND y.device_time >= s.started) f ON true LEFT JOIN "
     "needletrace.clinics z ON z.clinic_id = s.clinic_id WHERE s.started IS NOT "
     "NULL OR NOT EXISTS (SELECT 1 FROM needletrace.events y WHERE y.clinic_id = s.clinic_id AND "
     "y.device_serial = s.device_serial AND y.session_id = s.session_id AND y.kind = "
     "'session_started') ORDER BY s.started NULLS LAST, 1, 2, 3",
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

/* Runs verify into a string (the report's last section); *verdict gets its exit code (0: the
 * record verified). */
static char *report__verify(nt_audit_t *a, PGconn *c1, PGconn *c2, nt_audit_late_t *late,
                            const char *digests, const char *pub, int *verdict)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    if (mem == NULL) {
        return NULL;
    }
    nt_audit_t v = *a;
    v.conn = c1;
    v.conn2 = c2;
    v.late = late;
    v.out = mem;
    v.findings = 0;
    v.failed = 0;
    v.from = v.to = v.clinic = NULL; /* the record as a whole */
    *verdict = nt_audit__verify(&v, digests, pub);
    if (v.failed) {
        fputs("NO VERDICT: a query failed; nothing can be said of the record\n", mem);
        *verdict = -1;
    }
    if (digests == NULL) {
        fputs("(checked without digests: a chain rewritten consistently would not be seen)\n", mem);
    }
    fclose(mem);
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

static int report__cmp_str(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

/* The sessions' last column (depth used per area, "area depth/limit um, ...", aggregated by hash
 * in no order: sorting each session's areas there cost the server a sort of every session and
 * area) with each cell's areas in order. 0, or -1 (out of memory). */
static int report__sort_depths(PGresult *res)
{
    int c = PQnfields(res) - 1;
    for (int r = 0; r < PQntuples(res); r++) {
        const char *v = PQgetvalue(res, r, c);
        if (strstr(v, ", ") == NULL) {
            continue; /* one area or none */
        }
        size_t len = strlen(v), n = 0;
        char *copy = strdup(v), *out = malloc(len + 1);
        char **part = malloc((len / 2 + 1) * sizeof(*part));
        if (copy == NULL || out == NULL || part == NULL) {
            free(copy);
            free(out);
            free(part);
            return -1;
        }
        for (char *p = copy, *q; p != NULL; p = q) {
            q = strstr(p, ", ");
            if (q != NULL) {
                *q = '\0';
                q += 2;
            }
            part[n++] = p;
        }
        qsort(part, n, sizeof(*part), report__cmp_str);
        size_t at = 0;
        for (size_t k = 0; k < n; k++) {
            at += (size_t)sprintf(out + at, "%s%s", k > 0 ? ", " : "", part[k]);
        }
        int ok = PQsetvalue(res, r, c, out, (int)at);
        free(copy);
        free(out);
        free(part);
        if (!ok) {
            return -1;
        }
    }
    return 0;
}

/* The sections of one lane, in order, on conn; lane 1 starts with report__shared. With a third
 * connection, lane 1 then verifies the record on conn and conn3 (the sessions of lane 0 go on
 * meanwhile: the server's work on both cores throughout). */
typedef struct {
    PGconn *conn;
    int lane; /* -1: every section */
    const char *const *values;
    PGresult **res;
    int failed;            /* a query failed (printed) */
    nt_audit_t *verify;    /* non-NULL: verify after the sections, on conn and verify->conn3 */
    nt_audit_late_t *late; /* lane 0: its connection offered to the verification once done;
                            * lane 1: the verification takes it */
    const char *digests, *pub;
    char *verification;
    int verdict;
} report__lane_t;

static void *report__lane(void *arg)
{
    report__lane_t *l = arg;
    if (l->lane != 0) {
        PGresult *all =
            PQexecParams(l->conn, report__shared, 3, report__types, l->values, NULL, NULL, 0);
        if (PQresultStatus(all) != PGRES_TUPLES_OK) {
            fprintf(stderr, "needletrace: audit report: summary, depth and pens: %s",
                    PQresultErrorMessage(all));
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
        l->res[s] = PQexecParams(l->conn, report__sections[s].sql, report__sections[s].nparams,
                                 report__types, l->values, NULL, NULL, 0);
        if (PQresultStatus(l->res[s]) != PGRES_TUPLES_OK) {
            fprintf(stderr, "needletrace: audit report: section %s: %s", report__sections[s].name,
                    PQresultErrorMessage(l->res[s]));
            PQclear(l->res[s]);
            l->res[s] = NULL;
            l->failed = 1;
        } else if (strcmp(report__sections[s].name, "sessions") == 0 &&
                   report__sort_depths(l->res[s]) != 0) {
            fprintf(stderr, "needletrace: audit report: out of memory\n");
            l->failed = 1;
        }
    }
    if (l->verify != NULL && !l->failed) {
        l->verification = report__verify(l->verify, l->conn, l->verify->conn3, l->late, l->digests,
                                         l->pub, &l->verdict);
    } else if (l->late != NULL && l->lane == 0) { /* done with conn: the verification may use it */
        pthread_mutex_lock(&l->late->mu);
        l->late->conn = l->failed ? NULL : l->conn;
        l->late->done = 1;
        pthread_cond_broadcast(&l->late->cv);
        pthread_mutex_unlock(&l->late->mu);
    }
    return NULL;
}

int nt_audit__report(nt_audit_t *a, const char *format, const char *from, const char *to,
                     const char *digests, const char *pub, FILE *out)
{
    PGresult *res[REPORT__N] = {0};
    const char *values[3] = {a->clinic, from, to};
    /* Two lanes at once on the two connections (same snapshot), else one after the other; with
     * a third, lane 1 verifies on it and its own once its sections are done. */
    nt_audit_late_t late = {
        .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .conn = NULL};
    report__lane_t lane[2] = {{.conn = a->conn,
                               .lane = a->conn2 != NULL ? 0 : -1,
                               .values = values,
                               .res = res,
                               .late = a->conn3 != NULL ? &late : NULL},
                              {.conn = a->conn2,
                               .lane = 1,
                               .values = values,
                               .res = res,
                               .verify = a->conn3 != NULL ? a : NULL,
                               .late = a->conn3 != NULL ? &late : NULL,
                               .digests = digests,
                               .pub = pub}};
    pthread_t th;
    int threaded = a->conn2 != NULL && pthread_create(&th, NULL, report__lane, &lane[1]) == 0;
    if (a->conn2 != NULL && !threaded) {
        lane[0].lane = -1;
        lane[0].late = NULL;
        lane[1].verify = NULL;
    }
    report__lane(&lane[0]);
    if (threaded) {
        pthread_join(th, NULL);
    }
    int rc = lane[0].failed || lane[1].failed;
    int verdict = lane[1].verdict;
    char *verification = lane[1].verification;
    if (rc == 0 && lane[1].verify == NULL) {
        verification = report__verify(a, a->conn, a->conn2, NULL, digests, pub, &verdict);
    }
    if (rc == 0 && verification == NULL) {
        fprintf(stderr, "needletrace: audit report: out of memory\n");
        rc = 1;
    }
    if (rc == 0) {
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
