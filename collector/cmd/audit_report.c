/* audit_report.c -- `needletrace audit report`: what a compliance officer hands over, for one
 * clinic (or all) and a range of local dates: summary, exceptions by rule and severity, every
 * exception with its acknowledgement, every session, the depth used per treatment area against
 * its limit, sessions per pen per day, completeness, and the verification of the record (with the
 * digest it was checked against). The same sections as HTML (one printable file: inline CSS and
 * SVG, no network), CSV (a section column first) or JSON (an object of arrays). Times and dates
 * are each clinic's local ones (needletrace.clinics; UTC without a row), as the report states. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_internal.h"

/* The events of the report: clinic filter, local dates [$2, $3] of the device time in the
 * clinic's zone. */
#define REPORT__EV                                                                                 \
    "ev AS MATERIALIZED (SELECT e.*, coalesce(c.time_zone, 'UTC') AS tz FROM needletrace.events "  \
    "e LEFT JOIN needletrace.clinics c ON c.clinic_id = e.clinic_id WHERE ($1::text IS NULL OR "   \
    "e.clinic_id = $1) AND (e.device_time AT TIME ZONE coalesce(c.time_zone, 'UTC'))::date "       \
    "BETWEEN $2::date AND $3::date)"
/* The alerts of the report: those about an event of the period (its device time, local). */
#define REPORT__AL                                                                                 \
    "al AS MATERIALIZED (SELECT a.*, coalesce(c.time_zone, 'UTC') AS tz FROM needletrace.alerts "  \
    "a LEFT JOIN needletrace.clinics c ON c.clinic_id = a.clinic_id LEFT JOIN needletrace.events " \
    "e ON e.clinic_id = a.clinic_id AND e.device_serial = a.device_serial AND e.boot_id = "        \
    "a.boot_id AND e.seq = a.seq WHERE ($1::text IS NULL OR a.clinic_id = $1) AND "                \
    "(coalesce(e.device_time, a.raised_at) AT TIME ZONE coalesce(c.time_zone, 'UTC'))::date "      \
    "BETWEEN $2::date AND $3::date)"
#define REPORT__LIMIT                                                                              \
    "coalesce((SELECT p.max_depth_um FROM needletrace.depth_policy_clinic p WHERE p.clinic_id = "  \
    "x.clinic_id AND p.area = x.area), (SELECT p.max_depth_um FROM needletrace.depth_policy p "    \
    "WHERE p.area = x.area), needletrace.depth_hard_max_um())"

static const report__section_t report__sections[] = {
    {3, "summary", "Summary",
     "WITH " REPORT__EV ", " REPORT__AL " SELECT $2::text AS from_date, $3::text AS to_date, "
     "(SELECT string_agg(DISTINCT clinic_id || ': ' || tz, ', ') FROM ev) AS time_zones, "
     "(SELECT count(DISTINCT clinic_id) FROM ev) AS clinics, "
     "(SELECT count(DISTINCT (clinic_id, device_serial)) FROM ev) AS pens, "
     "(SELECT count(*) FROM ev WHERE kind = 'session_started') AS sessions, "
     "(SELECT count(*) FROM ev) AS events, "
     "(SELECT count(DISTINCT (gtin, cartridge_serial)) FROM ev WHERE kind = 'cartridge_mounted') "
     "AS cartridges_used, (SELECT count(*) FROM al WHERE rule = 'CARTRIDGE_REUSED') AS "
     "cartridge_reuse, (SELECT count(*) FROM al) AS exceptions, (SELECT count(*) FROM al WHERE "
     "NOT EXISTS (SELECT 1 FROM needletrace.alert_acks k WHERE k.clinic_id = al.clinic_id AND "
     "k.alert_id = al.alert_id)) AS open, (SELECT count(*) FROM al WHERE EXISTS (SELECT 1 FROM "
     "needletrace.alert_acks k WHERE k.clinic_id = al.clinic_id AND k.alert_id = al.alert_id)) "
     "AS acknowledged"},
    {3, "exceptions_by_rule", "Exceptions by rule and severity",
     "WITH " REPORT__AL " SELECT rule, severity, count(*) AS alerts, count(*) FILTER (WHERE NOT "
     "EXISTS (SELECT 1 FROM needletrace.alert_acks k WHERE k.clinic_id = al.clinic_id AND "
     "k.alert_id = al.alert_id)) AS open FROM al GROUP BY 1, 2 ORDER BY 1, 2"},
    {3, "depth", "Depth used per treatment area against its limit",
     "WITH " REPORT__EV " SELECT x.area, " REPORT__LIMIT " AS limit_um, x.bucket_um, count(*) "
     "AS samples FROM (SELECT clinic_id, coalesce(area, 'unspecified') AS area, (depth_um / "
     "250) * 250 AS bucket_um FROM ev WHERE kind IN ('needle_setting', 'needle_activity')) x "
     "GROUP BY x.area, 2, x.bucket_um ORDER BY 1, 3"},
    {3, "sessions_per_day", "Sessions per pen per day",
     "WITH " REPORT__EV " SELECT device_serial AS pen, (device_time AT TIME ZONE tz)::date::text "
     "AS day, count(*) AS sessions FROM ev WHERE kind = 'session_started' GROUP BY 1, 2 ORDER BY "
     "1, 2"},
    {0, "completeness", "Completeness",
     "SELECT collector_id, batches, messages_received, messages_stored, messages_quarantined, "
     "redeliveries_skipped, raw_rows_now, CASE WHEN messages_received = messages_stored + "
     "messages_quarantined + redeliveries_skipped AND raw_rows_now = messages_stored THEN 'ok' "
     "ELSE 'MISMATCH' END AS verdict FROM needletrace.completeness ORDER BY 1"},
    {1, "pens", "Sequence gaps and clock skew per pen",
     "SELECT clinic_id, device_serial AS pen, events, boots, open_holes, missing_seqs, "
     "gap_alerts, skew_alerts, coalesce(max_ahead::text, '') AS clock_ahead, "
     "coalesce(max_behind::text, '') AS clock_behind FROM needletrace.pen_completeness WHERE "
     "$1::text IS NULL OR clinic_id = $1 ORDER BY 1, 2"},
    {3, "exceptions", "Exceptions",
     "WITH " REPORT__AL " SELECT to_char(al.raised_at AT TIME ZONE al.tz, 'YYYY-MM-DD HH24:MI') "
     "AS raised, al.alert_id, al.rule, al.severity, al.clinic_id, al.device_serial AS pen, "
     "coalesce(al.session_id, '') AS session, coalesce(al.details->>'serial', "
     "al.details->>'cartridge_serial', '') AS cartridge, coalesce(al.details->>'limit_um', '') "
     "AS limit_um, coalesce(al.details->>'depth_um', '') AS depth_um, coalesce(k.acked_by || ' "
     "(' || k.acked_role || ', ' || to_char(k.acked_at AT TIME ZONE al.tz, 'YYYY-MM-DD HH24:MI') "
     "|| '): ' || coalesce(k.note, ''), 'open') AS acknowledgement FROM al LEFT JOIN LATERAL "
     "(SELECT * FROM needletrace.alert_acks x WHERE x.clinic_id = al.clinic_id AND x.alert_id = "
     "al.alert_id ORDER BY x.acked_at DESC LIMIT 1) k ON true ORDER BY al.raised_at, al.alert_id"},
    {3, "sessions", "Sessions",
     "WITH " REPORT__EV ", s AS (SELECT clinic_id, device_serial, session_id, min(tz) AS tz, "
     "min(device_time) FILTER (WHERE kind = 'session_started') AS started, min(device_time) "
     "FILTER (WHERE kind = 'session_ended') AS ended, max(operator_id) AS operator, "
     "max(patient_ref) AS patient, string_agg(DISTINCT gtin || '/' || cartridge_serial, ' ') "
     "FILTER (WHERE kind = 'cartridge_mounted') AS cartridges FROM ev WHERE session_id IS NOT "
     "NULL GROUP BY 1, 2, 3), d AS (SELECT x.clinic_id, x.device_serial, x.session_id, "
     "string_agg(x.area || ' ' || x.mx || '/' || " REPORT__LIMIT " || ' um', ', ' ORDER BY "
     "x.area) AS depth FROM (SELECT clinic_id, device_serial, session_id, coalesce(area, "
     "'unspecified') AS area, max(depth_um) AS mx FROM ev WHERE kind IN ('needle_setting', "
     "'needle_activity') AND session_id IS NOT NULL GROUP BY 1, 2, 3, 4) x GROUP BY 1, 2, 3) "
     "SELECT s.clinic_id, s.device_serial AS pen, s.session_id, coalesce(s.operator, '') AS "
     "operator, coalesce(s.patient, '') AS patient_ref, coalesce(to_char(s.started AT TIME ZONE "
     "s.tz, 'YYYY-MM-DD HH24:MI'), '') AS started, coalesce(round(extract(epoch FROM s.ended - "
     "s.started) / 60.0, 1)::text, '') AS minutes, coalesce(s.cartridges, '') AS cartridges, "
     "coalesce(d.depth, '') AS depth_used_vs_limit FROM s LEFT JOIN d USING (clinic_id, "
     "device_serial, session_id) ORDER BY s.started NULLS LAST, 1, 2, 3"},
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
                nt_audit__json_str(out, PQgetvalue(res[s], r, c));
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
static char *report__verify(nt_audit_t *a, const char *digests, const char *pub, int *verdict)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    if (mem == NULL) {
        return NULL;
    }
    nt_audit_t v = *a;
    v.out = mem;
    v.findings = 0;
    v.failed = 0;
    v.from = v.to = v.clinic = NULL; /* the record as a whole */
    *verdict = nt_audit__verify(&v, digests, pub);
    if (v.failed) {
        fputs("NO VERDICT: a query failed; nothing can be said of the record\n", mem);
    }
    if (digests == NULL) {
        fputs("(checked without digests: a chain rewritten consistently would not be seen)\n", mem);
    }
    fclose(mem);
    return buf;
}

int nt_audit__report(nt_audit_t *a, const char *format, const char *from, const char *to,
                     const char *digests, const char *pub, FILE *out)
{
    PGresult *res[REPORT__N] = {0};
    const char *values[3] = {a->clinic, from, to};
    int rc = 0;
    for (size_t s = 0; s < REPORT__N && rc == 0; s++) {
        res[s] =
            nt_audit__query(a, report__sections[s].sql, report__sections[s].nparams, values, 0);
        rc = res[s] == NULL;
    }
    int verdict = 0;
    char *verification = rc == 0 ? report__verify(a, digests, pub, &verdict) : NULL;
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
    if (rc == 0 && verdict != 0) {
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
