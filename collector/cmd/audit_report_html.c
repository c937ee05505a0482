/* audit_report_html.c -- the audit report as one self-contained, printable HTML file: inline
 * CSS, inline SVG charts (depth per area against its limit, sessions per pen per day), no script,
 * no network. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_internal.h"

static void html__esc(FILE *out, const char *s)
{
    for (;;) { /* runs without a character to escape written whole (a report has millions) */
        size_t n = strcspn(s, "&<>\"'");
        fwrite(s, 1, n, out);
        s += n;
        switch (*s) {
        case '\0':
            return;
        case '&':
            fputs("&amp;", out);
            break;
        case '<':
            fputs("&lt;", out);
            break;
        case '>':
            fputs("&gt;", out);
            break;
        case '"':
            fputs("&quot;", out);
            break;
        default:
            fputs("&#39;", out);
            break;
        }
        s++;
    }
}

static int html__col(const PGresult *r, const char *name)
{
    return PQfnumber(r, name);
}

static void html__table(FILE *out, const PGresult *r)
{
    if (PQntuples(r) == 0) {
        fputs("<p class=\"none\">None in this period.</p>\n", out);
        return;
    }
    fputs("<table><thead><tr>", out);
    for (int c = 0; c < PQnfields(r); c++) {
        fputs("<th>", out);
        html__esc(out, PQfname(r, c));
        fputs("</th>", out);
    }
    fputs("</tr></thead><tbody>\n", out);
    for (int i = 0; i < PQntuples(r); i++) {
        fputs("<tr>", out);
        for (int c = 0; c < PQnfields(r); c++) {
            const char *v = PQgetvalue(r, i, c);
            fputs(strcmp(v, "MISMATCH") == 0 || strcmp(v, "critical") == 0 ? "<td class=\"bad\">"
                                                                           : "<td>",
                  out);
            html__esc(out, v);
            fputs("</td>", out);
        }
        fputs("</tr>\n", out);
    }
    fputs("</tbody></table>\n", out);
}

/* One chart per area: a bar per 250 um bucket (samples), the area's limit as a red line. */
static void html__depth_chart(FILE *out, const PGresult *r)
{
    int ca = html__col(r, "area"), cl = html__col(r, "limit_um"), cb = html__col(r, "bucket_um"),
        cs = html__col(r, "samples");
    for (int i = 0; i < PQntuples(r);) {
        const char *area = PQgetvalue(r, i, ca);
        int j = i, limit = atoi(PQgetvalue(r, i, cl)), top = limit;
        long most = 1;
        while (j < PQntuples(r) && strcmp(PQgetvalue(r, j, ca), area) == 0) {
            int b = atoi(PQgetvalue(r, j, cb)) + 250;
            long n = atol(PQgetvalue(r, j, cs));
            top = b > top ? b : top;
            most = n > most ? n : most;
            j++;
        }
        top += 250;
        const double w = 360.0, h = 120.0;
        fputs("<figure class=\"chart\"><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"380\" "
              "height=\"166\" role=\"img\"><title>depth ",
              out);
        html__esc(out, area);
        fputs("</title><rect x=\"10\" y=\"22\" width=\"360\" height=\"120\" class=\"frame\"/>",
              out);
        for (int k = i; k < j; k++) {
            double b = atoi(PQgetvalue(r, k, cb)), n = atof(PQgetvalue(r, k, cs));
            double x = 10 + w * b / top, bw = w * 250 / top - 1, bh = h * n / (double)most;
            fprintf(out,
                    "<rect class=\"bar%s\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/>",
                    b + 250 > limit ? " over" : "", x, 142 - bh, bw, bh);
        }
        double lx = 10 + w * limit / top;
        fprintf(out,
                "<line class=\"limit\" x1=\"%.1f\" y1=\"22\" x2=\"%.1f\" y2=\"142\"/>"
                "<text x=\"%.1f\" y=\"158\" class=\"lbl\">limit %d um</text>"
                "<text x=\"10\" y=\"15\" class=\"lbl\">",
                lx, lx, lx > 300 ? 300 : lx, limit);
        html__esc(out, area);
        fprintf(out, " (most %ld per 250 um)</text></svg></figure>\n", most);
        i = j;
    }
}

/* One chart per pen: sessions per day, days in order. */
static void html__sessions_chart(FILE *out, const PGresult *r)
{
    int cp = html__col(r, "pen"), cn = html__col(r, "sessions"), cd = html__col(r, "day");
    for (int i = 0; i < PQntuples(r);) {
        const char *pen = PQgetvalue(r, i, cp);
        int j = i;
        long most = 1;
        while (j < PQntuples(r) && strcmp(PQgetvalue(r, j, cp), pen) == 0) {
            long n = atol(PQgetvalue(r, j, cn));
            most = n > most ? n : most;
            j++;
        }
        double bw = 360.0 / (j - i);
        fputs("<figure class=\"chart\"><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"380\" "
              "height=\"166\" role=\"img\"><title>sessions ",
              out);
        html__esc(out, pen);
        fputs("</title><rect x=\"10\" y=\"22\" width=\"360\" height=\"120\" class=\"frame\"/>",
              out);
        for (int k = i; k < j; k++) {
            double bh = 120.0 * atof(PQgetvalue(r, k, cn)) / (double)most;
            fprintf(out,
                    "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\">",
                    10 + bw * (k - i), 142 - bh, bw > 2 ? bw - 1 : bw, bh);
            fputs("<title>", out);
            html__esc(out, PQgetvalue(r, k, cd));
            fprintf(out, ": %s</title></rect>", PQgetvalue(r, k, cn));
        }
        fputs("<text x=\"10\" y=\"15\" class=\"lbl\">", out);
        html__esc(out, pen);
        fprintf(out, " (%s .. %s, most %ld a day)</text></svg></figure>\n", PQgetvalue(r, i, cd),
                PQgetvalue(r, j - 1, cd), most);
        i = j;
    }
}

static const char html__css[] =
    "body{font:13px/1.4 sans-serif;margin:24px;color:#111}h1{font-size:20px}"
    "h2{font-size:16px;border-bottom:1px solid #999;margin-top:28px}"
    "table{border-collapse:collapse;width:100%;margin:8px 0}th,td{border:1px solid #bbb;"
    "padding:2px 6px;text-align:left;vertical-align:top}th{background:#eee}"
    ".bad{color:#a00;font-weight:bold}.none{color:#555}.chart{display:inline-block;margin:4px}"
    ".frame{fill:#fafafa;stroke:#999}.bar{fill:#4a78b8}.bar.over{fill:#c44}"
    ".limit{stroke:#c00;stroke-width:2}.lbl{font-size:11px;fill:#222}"
    "pre{background:#f4f4f4;padding:8px;white-space:pre-wrap}"
    "@media print{h2{page-break-after:avoid}table{page-break-inside:auto}}";

int nt_audit__report_html(FILE *out, const report__section_t *sec, PGresult *const *res, size_t n,
                          const char *verification)
{
    const PGresult *sum = res[0];
    fprintf(out,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>needletrace audit report</title><style>%s</style></head><body>\n",
            html__css);
    fputs("<h1>needletrace audit report</h1>\n<p>", out);
    if (PQntuples(sum) == 1) {
        fputs("Local dates ", out);
        html__esc(out, PQgetvalue(sum, 0, 0));
        fputs(" to ", out);
        html__esc(out, PQgetvalue(sum, 0, 1));
        fputs(" (inclusive). Every time is in its clinic's time zone: ", out);
        html__esc(out, PQgetisnull(sum, 0, 2) ? "no clinic in this period" : PQgetvalue(sum, 0, 2));
        fputs(".</p>\n", out);
    }
    for (size_t s = 0; s < n; s++) {
        fputs("<h2>", out);
        html__esc(out, sec[s].title);
        fputs("</h2>\n", out);
        if (strcmp(sec[s].name, "depth") == 0) {
            html__depth_chart(out, res[s]);
        } else if (strcmp(sec[s].name, "sessions_per_day") == 0) {
            html__sessions_chart(out, res[s]);
        }
        html__table(out, res[s]);
    }
    fputs("<h2>Verification of the record</h2>\n<pre>", out);
    html__esc(out, verification);
    fputs("</pre>\n</body></html>\n", out);
    return ferror(out) ? 1 : 0;
}
