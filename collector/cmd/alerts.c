/* alerts.c -- `needletrace alerts`: list compliance alerts and record acknowledgements beside them.
 *
 * A blocking libpq command, like migrate. Alerts are evidence and never change: an
 * acknowledgement is a row of needletrace.alert_acks (who, when, note), and acknowledging
 * again adds another row, so the history shows every one. Every value reaches the server
 * as a bound parameter; no SQL is built from user input. */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "needletrace/cmd.h"
#include "needletrace/common.h"
#include "needletrace/config.h"
#include "needletrace/ident.h"
#include "needletrace/log.h"

#define ALERTS__DEFAULT_LIMIT 100
#define ALERTS__MAX_LIMIT     100000
#define ALERTS__MAX_BY        128  /* characters of --by */
#define ALERTS__MAX_NOTE      2000 /* characters of --note */
#define ALERTS__ACK_ATTEMPTS  3    /* tries of the ack insert on a key collision */
/* Widest cells of the table (characters); longer values end in an ellipsis. --json is whole. */
#define ALERTS__MAX_SESSION 36
#define ALERTS__MAX_STATE   64
#define ALERTS__MAX_DETAILS 72
/* libpq's own connect_timeout default is "wait forever"; a conninfo that sets one wins. */
#define ALERTS__CONNECT_TIMEOUT "10"
/* Timestamps in the table, in the session's time zone (PGTZ or the server's TimeZone). */
#define ALERTS__TS_FORMAT "'YYYY-MM-DD HH24:MI:SSOF'"

/* The rules of DESIGN.md section 3. */
static const char *const alerts__rules[] = {
    "CARTRIDGE_REUSED",   "CARTRIDGE_EXPIRED",  "STERILE_BARRIER_BROKEN",
    "CARTRIDGE_RECALLED", "DEPTH_OUT_OF_RANGE", "NEEDLING_WITHOUT_CARTRIDGE",
    "SEQUENCE_GAP",       "CLOCK_SKEW",
};

#define ALERTS__SYNOPSIS                                                                           \
    "usage: needletrace alerts list [--open] [--clinic C] [--rule R] [--since TIMESTAMP]\n"        \
    "                               [--limit N] [--json]\n"                                        \
    "       needletrace alerts ack ALERT_ID --by NAME --note TEXT [--clinic C]\n"                  \
    "       needletrace alerts --help\n"

static void alerts__usage(FILE *out, int full)
{
    fputs(ALERTS__SYNOPSIS, out);
    if (!full) {
        fputs("Run 'needletrace alerts --help' for more.\n", out);
        return;
    }
    fputs("\n"
          "Lists the compliance alerts in [database] url and records acknowledgements.\n"
          "\n"
          "list  newest first, as an aligned table (ack state \"open\" or \"acked by NAME at\n"
          "      TIME\", the latest acknowledgement) or, with --json, one JSON object per line\n"
          "      holding every column of the alert, \"open\" and \"acks\" (the whole history).\n"
          "  --open               only alerts nobody has acknowledged (needletrace.alerts_open)\n"
          "  --clinic C           only clinic C\n"
          "  --rule R             only rule R, one of:\n"
          "                         CARTRIDGE_REUSED CARTRIDGE_EXPIRED STERILE_BARRIER_BROKEN\n"
          "                         CARTRIDGE_RECALLED DEPTH_OUT_OF_RANGE\n"
          "                         NEEDLING_WITHOUT_CARTRIDGE SEQUENCE_GAP CLOCK_SKEW\n"
          "  --since TIMESTAMP    raised at or after TIMESTAMP (e.g. 2025-03-01, or\n"
          "                       '2025-03-01 08:00+01'; without a zone: the session's)\n"
          "  --limit N            at most N alerts, 1 to 100000 (default 100)\n"
          "  --json               JSON lines instead of the table\n"
          "\n"
          "ack   records that NAME has seen alert ALERT_ID, with a note, beside the alert (the\n"
          "      alert itself never changes). Acknowledging again adds another record.\n"
          "  --by NAME            who acknowledges: 1 to 128 characters\n"
          "  --note TEXT          what was done: 1 to 2000 characters\n"
          "  --clinic C           the alert's clinic (only needed if the id is ambiguous)\n"
          "  NAME and TEXT are UTF-8 without control characters (no newlines or tabs).\n"
          "  Use --note=TEXT when TEXT itself starts with \"--\".\n"
          "\n"
          "Configuration as for every command: --config FILE, NEEDLETRACE_* environment,\n"
          "--<section>-<key> VALUE flags; only database.url (NEEDLETRACE_DATABASE_URL) is used.\n"
          "Run 'needletrace check-config --help' for every key.\n"
          "\n"
          "Exit status: 0 success, 2 bad usage or configuration, 1 runtime failure (database\n"
          "unreachable, unknown ALERT_ID).\n",
          out);
}

/* ---- argument parsing ------------------------------------------------------------------- */

typedef struct {
    int open;
    int json;
    const char *clinic;
    const char *rule; /* points into alerts__rules */
    const char *since;
    long limit;
} alerts__list_opts_t;

typedef struct {
    int64_t alert_id;
    const char *alert_arg; /* as typed, for messages */
    const char *by;
    const char *note;
    const char *clinic;
} alerts__ack_opts_t;

/* Options that take a value: a "-h" after one of them is its value, not a request for help. */
static int alerts__takes_value(const char *a)
{
    static const char *const names[] = {"--clinic", "--rule", "--since", "--limit",
                                        "--by",     "--note", "--config"};
    for (size_t i = 0; i < NT_ARRAY_SIZE(names); i++) {
        if (strcmp(a, names[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Whether argv asks for help (before any "--"). */
static int alerts__wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            return 0;
        }
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            return 1;
        }
        if (alerts__takes_value(argv[i])) {
            i++;
        }
    }
    return 0;
}

/* Matches argv[*i] against --name VALUE or --name=VALUE. Returns 1 and sets *value (advancing
 * *i past a separate value), 0 when it is another argument, or 2 after printing an error
 * (missing value or the option given twice). */
static int alerts__opt(const char *cmd, int argc, char **argv, int *i, const char *name,
                       const char **value)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0 || (a[n] != '\0' && a[n] != '=')) {
        return 0;
    }
    if (*value != NULL) {
        fprintf(stderr, "needletrace: alerts %s: option %s given more than once\n", cmd, name);
        return 2;
    }
    if (a[n] == '=') {
        *value = a + n + 1;
        return 1;
    }
    if (*i + 1 >= argc) {
        fprintf(stderr, "needletrace: alerts %s: missing value after %s\n", cmd, name);
        return 2;
    }
    *value = argv[++*i];
    return 1;
}

/* Matches a flag without a value; 1 when it is name, 0 when not, 2 after an error. */
static int alerts__flag(const char *cmd, const char *a, const char *name, int *set)
{
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) {
        return 0;
    }
    if (a[n] == '=') {
        fprintf(stderr, "needletrace: alerts %s: option %s takes no value\n", cmd, name);
        return 2;
    }
    if (a[n] != '\0') {
        return 0;
    }
    if (*set) {
        fprintf(stderr, "needletrace: alerts %s: option %s given more than once\n", cmd, name);
        return 2;
    }
    *set = 1;
    return 1;
}

/* Decodes the UTF-8 sequence at the NUL-terminated s (see nt_ident_utf8_decode). */
static size_t alerts__utf8_decode(const unsigned char *s, uint32_t *cp)
{
    return nt_ident_utf8_decode((const char *)s, strnlen((const char *)s, 4), cp);
}

/* Unicode category Cc: C0 controls, DEL and C1 controls. */
static int alerts__is_control(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F);
}

/* Checks a --by or --note value: valid UTF-8, 1..max characters, no control character, not
 * only spaces. Returns 0, or 2 after printing an error that names the option. */
static int alerts__check_text(const char *option, const char *s, size_t max)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t chars = 0;
    int blank = 1;
    while (*p != '\0') {
        uint32_t cp;
        size_t n = alerts__utf8_decode(p, &cp);
        if (n == 0) {
            fprintf(stderr,
                    "needletrace: alerts ack: invalid %s: not valid UTF-8 (byte 0x%02x at "
                    "offset %zu)\n",
                    option, *p, (size_t)(p - (const unsigned char *)s));
            return 2;
        }
        chars++;
        if (alerts__is_control(cp)) {
            fprintf(stderr,
                    "needletrace: alerts ack: invalid %s: control character U+%04" PRIX32
                    " at character %zu is not allowed\n",
                    option, cp, chars);
            return 2;
        }
        if (cp != ' ') {
            blank = 0;
        }
        p += n;
    }
    if (chars == 0 || blank) {
        fprintf(stderr, "needletrace: alerts ack: invalid %s: must not be empty or blank\n",
                option);
        return 2;
    }
    if (chars > max) {
        fprintf(stderr,
                "needletrace: alerts ack: invalid %s: %zu characters, at most %zu are allowed\n",
                option, chars, max);
        return 2;
    }
    return 0;
}

/* Parses a decimal integer in [min, max] with nothing around it. 0 or NT_EINVAL. */
static int alerts__parse_int(const char *s, int64_t min, int64_t max, int64_t *out)
{
    if (s[0] < '0' || s[0] > '9') {
        return NT_EINVAL;
    }
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max) {
        return NT_EINVAL;
    }
    *out = (int64_t)v;
    return 0;
}

/* Reports an unknown option or extra argument with the synopsis; returns 2. */
static int alerts__bad_arg(const char *cmd, const char *a)
{
    fprintf(stderr, "needletrace: alerts %s: %s \"%s\"\n", cmd,
            a[0] == '-' && a[1] != '\0' ? "unknown option" : "unexpected argument", a);
    alerts__usage(stderr, 0);
    return 2;
}

/* Parses the arguments after "list" (argv[0] is "list"). 0, or 2 after printing why. */
static int alerts__parse_list(int argc, char **argv, alerts__list_opts_t *o)
{
    const char *limit = NULL;
    const char *rule = NULL;
    int rc;
    int dashdash = 0;
    memset(o, 0, sizeof(*o));
    o->limit = ALERTS__DEFAULT_LIMIT;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!dashdash && strcmp(a, "--") == 0) {
            dashdash = 1;
            continue;
        }
        if (dashdash || a[0] != '-') {
            return alerts__bad_arg("list", a);
        }
        if ((rc = alerts__flag("list", a, "--open", &o->open)) != 0 ||
            (rc = alerts__flag("list", a, "--json", &o->json)) != 0 ||
            (rc = alerts__opt("list", argc, argv, &i, "--clinic", &o->clinic)) != 0 ||
            (rc = alerts__opt("list", argc, argv, &i, "--rule", &rule)) != 0 ||
            (rc = alerts__opt("list", argc, argv, &i, "--since", &o->since)) != 0 ||
            (rc = alerts__opt("list", argc, argv, &i, "--limit", &limit)) != 0) {
            if (rc == 2) {
                return 2;
            }
            continue;
        }
        return alerts__bad_arg("list", a);
    }
    if (o->clinic != NULL && !nt_ident_id_valid_str(o->clinic)) {
        fprintf(stderr,
                "needletrace: alerts list: invalid value \"%s\" for --clinic: expected 1 to 64 "
                "characters of A-Z, a-z, 0-9, '.', '_' and '-'\n",
                o->clinic);
        return 2;
    }
    if (rule != NULL) {
        for (size_t i = 0; i < NT_ARRAY_SIZE(alerts__rules) && o->rule == NULL; i++) {
            if (strcasecmp(rule, alerts__rules[i]) == 0) {
                o->rule = alerts__rules[i];
            }
        }
        if (o->rule == NULL) {
            fprintf(stderr,
                    "needletrace: alerts list: invalid value \"%s\" for --rule: expected one of",
                    rule);
            for (size_t i = 0; i < NT_ARRAY_SIZE(alerts__rules); i++) {
                fprintf(stderr, "%s %s", i == 0 ? "" : ",", alerts__rules[i]);
            }
            fputc('\n', stderr);
            return 2;
        }
    }
    if (o->since != NULL && o->since[0] == '\0') {
        fprintf(stderr, "needletrace: alerts list: invalid value \"\" for --since: expected a "
                        "timestamp such as 2025-03-01 or '2025-03-01 08:00+01'\n");
        return 2;
    }
    if (limit != NULL) {
        int64_t v;
        if (alerts__parse_int(limit, 1, ALERTS__MAX_LIMIT, &v) != 0) {
            fprintf(stderr,
                    "needletrace: alerts list: invalid value \"%s\" for --limit: expected an "
                    "integer from 1 to %d\n",
                    limit, ALERTS__MAX_LIMIT);
            return 2;
        }
        o->limit = (long)v;
    }
    return 0;
}

/* Parses the arguments after "ack" (argv[0] is "ack"). 0, or 2 after printing why. */
static int alerts__parse_ack(int argc, char **argv, alerts__ack_opts_t *o)
{
    int rc;
    int dashdash = 0;
    memset(o, 0, sizeof(*o));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!dashdash && strcmp(a, "--") == 0) {
            dashdash = 1;
            continue;
        }
        if (dashdash || a[0] != '-' || a[1] == '\0') {
            if (o->alert_arg != NULL) {
                return alerts__bad_arg("ack", a);
            }
            o->alert_arg = a;
            continue;
        }
        if ((rc = alerts__opt("ack", argc, argv, &i, "--by", &o->by)) != 0 ||
            (rc = alerts__opt("ack", argc, argv, &i, "--note", &o->note)) != 0 ||
            (rc = alerts__opt("ack", argc, argv, &i, "--clinic", &o->clinic)) != 0) {
            if (rc == 2) {
                return 2;
            }
            continue;
        }
        return alerts__bad_arg("ack", a);
    }
    if (o->alert_arg == NULL) {
        fprintf(stderr, "needletrace: alerts ack: missing ALERT_ID\n");
        alerts__usage(stderr, 0);
        return 2;
    }
    if (alerts__parse_int(o->alert_arg, 1, INT64_MAX, &o->alert_id) != 0) {
        fprintf(stderr,
                "needletrace: alerts ack: invalid ALERT_ID \"%s\": expected a positive integer\n",
                o->alert_arg);
        return 2;
    }
    if (o->by == NULL) {
        fprintf(stderr, "needletrace: alerts ack: missing --by NAME (who acknowledges)\n");
        return 2;
    }
    if (o->note == NULL) {
        fprintf(stderr, "needletrace: alerts ack: missing --note TEXT (what was done)\n");
        return 2;
    }
    if (alerts__check_text("--by", o->by, ALERTS__MAX_BY) != 0 ||
        alerts__check_text("--note", o->note, ALERTS__MAX_NOTE) != 0) {
        return 2;
    }
    if (o->clinic != NULL && !nt_ident_id_valid_str(o->clinic)) {
        fprintf(stderr,
                "needletrace: alerts ack: invalid value \"%s\" for --clinic: expected 1 to 64 "
                "characters of A-Z, a-z, 0-9, '.', '_' and '-'\n",
                o->clinic);
        return 2;
    }
    return 0;
}

/* ---- database --------------------------------------------------------------------------- */

/* The first line of a libpq message, without its "ERROR:  " / "FATAL:  " prefix, in buf. */
static const char *alerts__pg_message(const char *msg, char *buf, size_t len)
{
    static const char *const prefixes[] = {"ERROR:  ", "FATAL:  "};
    for (size_t i = 0; i < NT_ARRAY_SIZE(prefixes); i++) {
        if (strncmp(msg, prefixes[i], strlen(prefixes[i])) == 0) {
            msg += strlen(prefixes[i]);
        }
    }
    size_t n = strcspn(msg, "\r\n");
    snprintf(buf, len, "%.*s", (int)(n < len ? n : len - 1), msg);
    return buf;
}

/* Server notices and warnings go to the log, not to libpq's default stderr printer. */
static void alerts__notice(void *arg, const char *message)
{
    char buf[512];
    nt_log(NT_LOG_WARN, "alerts", "server: %s", alerts__pg_message(message, buf, sizeof(buf)));
}

/* Connects to conninfo (a libpq string or URI). Returns the connection, or NULL after printing
 * an error that names the target (host, port, database, user; never the password): *rc is
 * then 2 when conninfo itself is invalid (configuration) and 1 when the server could not be
 * reached or refused us. */
static PGconn *alerts__connect(const char *conninfo, int *rc)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (opts == NULL) {
        /* The parser's message may quote the string, password and all: keep it out. */
        fprintf(stderr, "needletrace: invalid value for database.url: not a valid libpq "
                        "connection string or URI\n");
        PQfreemem(perr);
        *rc = 2;
        return NULL;
    }
    PQconninfoFree(opts);

    /* Later entries override earlier ones, and dbname expands into the whole conninfo: a
     * connect_timeout of the user's wins over ours; client_encoding is ours (UTF-8 in, UTF-8
     * out, whatever PGCLIENTENCODING says). */
    const char *const keys[] = {"connect_timeout", "fallback_application_name", "dbname",
                                "client_encoding", NULL};
    const char *const values[] = {ALERTS__CONNECT_TIMEOUT, "needletrace-alerts", conninfo, "UTF8",
                                  NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    if (conn == NULL) {
        fprintf(stderr, "needletrace: could not connect to the database: out of memory\n");
        *rc = 1;
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        char buf[512];
        /* libpq says "connection to server at "H", port P failed: FATAL:  why": the target is
         * named below already, keep the why. */
        const char *why = PQerrorMessage(conn);
        const char *failed = strstr(why, " failed: ");
        if (strncmp(why, "connection to server ", 21) == 0 && failed != NULL &&
            failed < why + strcspn(why, "\n")) {
            why = failed + 9;
        }
        const char *host = PQhost(conn);
        const char *port = PQport(conn);
        const char *db = PQdb(conn);
        const char *user = PQuser(conn);
        fprintf(stderr,
                "needletrace: could not connect to database \"%s\" on %s%s%s as user \"%s\": %s\n",
                db != NULL ? db : "", host != NULL && host[0] != '\0' ? host : "localhost",
                port != NULL && port[0] != '\0' ? ":" : "", port != NULL ? port : "",
                user != NULL ? user : "", alerts__pg_message(why, buf, sizeof(buf)));
        PQfinish(conn);
        *rc = 1;
        return NULL;
    }
    PQsetNoticeProcessor(conn, alerts__notice, NULL);
    *rc = 0;
    return conn;
}

/* Prints "needletrace: could not <what>: <server message>", with a hint when the schema is
 * older than this command (relations of migration 002 missing). */
static void alerts__query_failed(PGresult *res, const char *what)
{
    char buf[1024];
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    fprintf(stderr, "needletrace: could not %s: %s\n", what,
            alerts__pg_message(PQresultErrorMessage(res), buf, sizeof(buf)));
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
        size_t n = alerts__utf8_decode(p, &cp);
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
        size_t n = alerts__utf8_decode(p, &cp);
        if (n == 0 || alerts__is_control(cp)) {
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

/* Prints the rows as an aligned table. 0 or NT_ENOMEM. */
static int alerts__print_table(PGresult *res, int rows, FILE *out)
{
    enum { NCOL = 9 };
    static const char *const heads[NCOL] = {"ALERT_ID", "RAISED_AT", "SEVERITY", "RULE",   "CLINIC",
                                            "DEVICE",   "SESSION",   "STATE",    "DETAILS"};
    static const size_t maxw[NCOL] = {
        64, 64, 16, 64, 64, 64, ALERTS__MAX_SESSION, ALERTS__MAX_STATE, ALERTS__MAX_DETAILS};
    size_t width[NCOL];
    char **cells = calloc((size_t)rows * NCOL + 1, sizeof(*cells));
    size_t *cw = calloc((size_t)rows * NCOL + 1, sizeof(*cw));
    int rc = NT_ENOMEM;
    if (cells == NULL || cw == NULL) {
        goto done;
    }
    for (int c = 0; c < NCOL; c++) {
        width[c] = strlen(heads[c]);
    }
    for (int r = 0; r < rows; r++) {
        char state[256];
        if (strcmp(PQgetvalue(res, r, L_ACKS), "0") == 0) {
            snprintf(state, sizeof(state), "open");
        } else {
            /* --by is at most 128 characters: the state fits, and the cell cuts it anyway */
            snprintf(state, sizeof(state), "acked by %.200s at %s", PQgetvalue(res, r, L_ACK_BY),
                     PQgetvalue(res, r, L_ACK_AT));
        }
        const char *src[NCOL] = {
            PQgetvalue(res, r, L_ID),       PQgetvalue(res, r, L_RAISED),
            PQgetvalue(res, r, L_SEVERITY), PQgetvalue(res, r, L_RULE),
            PQgetvalue(res, r, L_CLINIC),   PQgetvalue(res, r, L_DEVICE),
            PQgetvalue(res, r, L_SESSION),  state,
            PQgetvalue(res, r, L_DETAILS),
        };
        for (int c = 0; c < NCOL; c++) {
            const char *v = src[c][0] != '\0' ? src[c] : "-";
            size_t i = (size_t)r * NCOL + (size_t)c;
            cells[i] = alerts__cell(v, maxw[c], &cw[i]);
            if (cells[i] == NULL) {
                goto done;
            }
            if (cw[i] > width[c]) {
                width[c] = cw[i];
            }
        }
    }
    for (int c = 0; c < NCOL; c++) {
        fprintf(out, "%s%-*s", c == 0 ? "" : "  ", c == NCOL - 1 ? 0 : (int)width[c], heads[c]);
    }
    fputc('\n', out);
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < NCOL; c++) {
            size_t i = (size_t)r * NCOL + (size_t)c;
            /* pad by characters, not bytes: printf's width counts bytes */
            fprintf(out, "%s%s", c == 0 ? "" : "  ", cells[i]);
            if (c < NCOL - 1) {
                fprintf(out, "%*s", (int)(width[c] - cw[i]), "");
            }
        }
        fputc('\n', out);
    }
    rc = 0;

done:
    if (cells != NULL) {
        for (size_t i = 0; i < (size_t)rows * NCOL; i++) {
            free(cells[i]);
        }
    }
    free(cells);
    free(cw);
    return rc;
}

/* `alerts list`: 0, or 1 after printing why. */
static int alerts__list(PGconn *conn, const alerts__list_opts_t *o)
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
                    o->since, alerts__pg_message(PQresultErrorMessage(res), buf, sizeof(buf)));
            PQclear(res);
            return 2;
        }
        alerts__query_failed(res, "list alerts");
        PQclear(res);
        return 1;
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
    } else if (alerts__print_table(res, rows, stdout) != 0) {
        fprintf(stderr, "needletrace: could not list alerts: out of memory\n");
        rc = 1;
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
    "RETURNING clinic_id";

static const char ack_count_sql[] = "SELECT count(*)::text FROM needletrace.alerts\n"
                                    " WHERE alert_id = $1::bigint\n"
                                    "   AND ($2::text IS NULL OR clinic_id = $2::text)";

/* `alerts ack`: 0, 1 when the alert does not exist or the database failed, 2 when the id is
 * ambiguous without --clinic. */
static int alerts__ack(PGconn *conn, const alerts__ack_opts_t *o)
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
        return 1;
    }
    int inserted = PQntuples(res);
    PQclear(res);
    if (inserted == 1) {
        printf("alert %s acknowledged by %s\n", id, o->by);
        return 0;
    }

    /* Nothing inserted: unknown, or (without --clinic) in several clinics. */
    const char *cvalues[2] = {id, o->clinic};
    res = PQexecParams(conn, ack_count_sql, 2, NULL, cvalues, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        alerts__query_failed(res, what);
        PQclear(res);
        return 1;
    }
    long n = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    if (n == 0) {
        if (o->clinic != NULL) {
            fprintf(stderr, "needletrace: alert %s does not exist in clinic %s\n", id, o->clinic);
        } else {
            fprintf(stderr, "needletrace: alert %s does not exist\n", id);
        }
        return 1;
    }
    fprintf(stderr,
            "needletrace: alerts ack: alert %s exists in %ld clinics; name one with --clinic\n", id,
            n);
    return 2;
}

/* ---- the command ------------------------------------------------------------------------ */

/* `needletrace alerts`: see the usage text. 0 success, 2 bad usage or configuration, 1 runtime
 * failure (database unreachable, unknown alert). */
int nt_cmd_alerts(int argc, char **argv, char *const *envp)
{
    if (alerts__wants_help(argc, argv)) {
        alerts__usage(stdout, 1);
        return 0;
    }

    nt_config_t cfg;
    char err[512];
    if (nt_config_load(&cfg, &argc, argv, envp, err, sizeof(err)) != 0) {
        fprintf(stderr, "needletrace: %s\n", err); /* nt_config_load freed cfg */
        return 2;
    }
    nt_config_setup_log(&cfg);

    /* argv[0] is "alerts"; a "--" before the subcommand is skipped */
    int first = 1;
    if (first < argc && strcmp(argv[first], "--") == 0) {
        first++;
    }
    alerts__list_opts_t lo;
    alerts__ack_opts_t ao;
    int is_list = 0;
    int rc;
    if (first >= argc) {
        fprintf(stderr, "needletrace: alerts: missing subcommand (list or ack)\n");
        alerts__usage(stderr, 0);
        rc = 2;
    } else if (strcmp(argv[first], "list") == 0) {
        is_list = 1;
        rc = alerts__parse_list(argc - first, argv + first, &lo);
    } else if (strcmp(argv[first], "ack") == 0) {
        rc = alerts__parse_ack(argc - first, argv + first, &ao);
    } else {
        fprintf(stderr, "needletrace: alerts: %s \"%s\"\n",
                argv[first][0] == '-' ? "unknown option" : "unknown subcommand", argv[first]);
        alerts__usage(stderr, 0);
        rc = 2;
    }
    if (rc != 0) {
        nt_config_free(&cfg);
        return rc;
    }

    PGconn *conn = alerts__connect(cfg.database_url, &rc);
    nt_config_free(&cfg);
    if (conn == NULL) {
        return rc;
    }
    rc = is_list ? alerts__list(conn, &lo) : alerts__ack(conn, &ao);
    PQfinish(conn);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "needletrace: could not write the output: %s\n", strerror(errno));
        return 1;
    }
    return rc;
}
