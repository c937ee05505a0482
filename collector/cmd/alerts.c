/* alerts.c -- `needletrace alerts`: list compliance alerts and record acknowledgements beside
 * them. This file is the command line (usage, options, their checks); the queries and the
 * printing of their results are in alerts_db.c. */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "alerts_internal.h"
#include "needletrace/alert.h"
#include "needletrace/cmd.h"
#include "needletrace/common.h"
#include "needletrace/config.h"
#include "needletrace/ident.h"

#define ALERTS__DEFAULT_LIMIT 100
#define ALERTS__MAX_LIMIT     100000
#define ALERTS__MAX_BY        128  /* characters of --by */
#define ALERTS__MAX_NOTE      2000 /* characters of --note */

/* The rules of DESIGN.md section 3. */
#define alerts__rules nt_alert_rules

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
          "      alert itself never changes). Acknowledging again adds another record. The\n"
          "      database records the role that inserted it too (acked_role): run it with the\n"
          "      acknowledging person's own login, a member of needletrace_staff.\n"
          "  --by NAME            who acknowledges: 1 to 128 characters\n"
          "  --note TEXT          what was done: 1 to 2000 characters\n"
          "  --clinic C           the alert's clinic (only needed if the id is ambiguous)\n"
          "  NAME and TEXT are UTF-8 without control characters (no newlines or tabs).\n"
          "  Use --note=TEXT when TEXT itself starts with \"--\".\n"
          "\n"
          "Configuration as for every command: --config FILE, NEEDLETRACE_* environment,\n"
          "--<section>-<key> VALUE flags; only database.url (NEEDLETRACE_DATABASE_URL) and\n"
          "database.password_file are used.\n"
          "Run 'needletrace check-config --help' for every key.\n"
          "\n"
          "Exit status: 0 success, 2 bad usage or configuration, 1 runtime failure (database\n"
          "unreachable, unknown ALERT_ID).\n",
          out);
}

static void alerts__help(FILE *out)
{
    alerts__usage(out, 1);
}

/* ---- option tables ---------------------------------------------------------------------- */

/* One option of a subcommand: a flag (an int set to 1) or an option with a value (a const
 * char * pointing into argv), at offset in the subcommand's options struct. */
typedef struct {
    const char *name;
    int takes_value;
    size_t offset;
} alerts__option_t;

static const alerts__option_t alerts__list_options[] = {
    {"--open", 0, offsetof(nt_alerts__list_opts_t, open)},
    {"--json", 0, offsetof(nt_alerts__list_opts_t, json)},
    {"--clinic", 1, offsetof(nt_alerts__list_opts_t, clinic)},
    {"--rule", 1, offsetof(nt_alerts__list_opts_t, rule_arg)},
    {"--since", 1, offsetof(nt_alerts__list_opts_t, since)},
    {"--limit", 1, offsetof(nt_alerts__list_opts_t, limit_arg)},
};

static const alerts__option_t alerts__ack_options[] = {
    {"--by", 1, offsetof(nt_alerts__ack_opts_t, by)},
    {"--note", 1, offsetof(nt_alerts__ack_opts_t, note)},
    {"--clinic", 1, offsetof(nt_alerts__ack_opts_t, clinic)},
};

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

/* ---- parsing ---------------------------------------------------------------------------- */

/* See alerts_internal.h. */
size_t nt_alerts__utf8_decode(const unsigned char *s, uint32_t *cp)
{
    return nt_ident_utf8_decode((const char *)s, strnlen((const char *)s, 4), cp);
}

/* See alerts_internal.h. */
int nt_alerts__is_control(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F);
}

/* Reports an unknown option or extra argument with the synopsis; returns NT_EINVAL. */
static int alerts__bad_arg(const char *cmd, const char *a)
{
    fprintf(stderr, "needletrace: alerts %s: %s \"%s\"\n", cmd,
            a[0] == '-' && a[1] != '\0' ? "unknown option" : "unexpected argument", a);
    alerts__usage(stderr, 0);
    return NT_EINVAL;
}

/* The entry of table that argv element a names (--name or --name=VALUE), or NULL. */
static const alerts__option_t *alerts__find_option(const alerts__option_t *table, size_t n,
                                                   const char *a)
{
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(table[i].name);
        if (strncmp(a, table[i].name, len) == 0 && (a[len] == '\0' || a[len] == '=')) {
            return &table[i];
        }
    }
    return NULL;
}

/* Stores option o, found at argv[*i], in opts: a flag's int, or a value (after "=" or the next
 * argument, advancing *i). Returns 0, or NT_EINVAL after printing why (a value for a flag, a
 * missing value, an option given twice). */
static int alerts__store_option(const char *cmd, const alerts__option_t *o, int argc, char **argv,
                                int *i, void *opts)
{
    const char *a = argv[*i];
    size_t n = strlen(o->name);
    if (!o->takes_value) {
        int *set = (int *)(void *)((char *)opts + o->offset);
        if (a[n] == '=') {
            fprintf(stderr, "needletrace: alerts %s: option %s takes no value\n", cmd, o->name);
            return NT_EINVAL;
        }
        if (*set) {
            fprintf(stderr, "needletrace: alerts %s: option %s given more than once\n", cmd,
                    o->name);
            return NT_EINVAL;
        }
        *set = 1;
        return 0;
    }
    const char **value = (const char **)(void *)((char *)opts + o->offset);
    if (*value != NULL) {
        fprintf(stderr, "needletrace: alerts %s: option %s given more than once\n", cmd, o->name);
        return NT_EINVAL;
    }
    if (a[n] == '=') {
        *value = a + n + 1;
        return 0;
    }
    if (*i + 1 >= argc) {
        fprintf(stderr, "needletrace: alerts %s: missing value after %s\n", cmd, o->name);
        return NT_EINVAL;
    }
    *value = argv[++*i];
    return 0;
}

/* Parses argv[1..argc) (argv[0] is the subcommand) against table into opts. Arguments that
 * are not options ("-" included, and everything after "--") go to *positional, of which there
 * may be one; positional NULL means none. Returns 0, or NT_EINVAL after printing why. */
static int alerts__parse_args(const char *cmd, const alerts__option_t *table, size_t n, int argc,
                              char **argv, void *opts, const char **positional)
{
    int dashdash = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!dashdash && strcmp(a, "--") == 0) {
            dashdash = 1;
            continue;
        }
        if (dashdash || a[0] != '-' || a[1] == '\0') {
            if (positional == NULL || *positional != NULL) {
                return alerts__bad_arg(cmd, a);
            }
            *positional = a;
            continue;
        }
        const alerts__option_t *o = alerts__find_option(table, n, a);
        if (o == NULL) {
            return alerts__bad_arg(cmd, a);
        }
        int rc = alerts__store_option(cmd, o, argc, argv, &i, opts);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

/* Checks a --by or --note value: valid UTF-8, 1..max characters, no control character, not
 * only spaces. Returns 0, or NT_EINVAL after printing an error that names the option. */
static int alerts__check_text(const char *option, const char *s, size_t max)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t chars = 0;
    int blank = 1;
    while (*p != '\0') {
        uint32_t cp;
        size_t n = nt_alerts__utf8_decode(p, &cp);
        if (n == 0) {
            fprintf(stderr,
                    "needletrace: alerts ack: invalid %s: not valid UTF-8 (byte 0x%02x at "
                    "offset %zu)\n",
                    option, *p, (size_t)(p - (const unsigned char *)s));
            return NT_EINVAL;
        }
        chars++;
        if (nt_alerts__is_control(cp)) {
            fprintf(stderr,
                    "needletrace: alerts ack: invalid %s: control character U+%04" PRIX32
                    " at character %zu is not allowed\n",
                    option, cp, chars);
            return NT_EINVAL;
        }
        if (cp != ' ') {
            blank = 0;
        }
        p += n;
    }
    if (chars == 0 || blank) {
        fprintf(stderr, "needletrace: alerts ack: invalid %s: must not be empty or blank\n",
                option);
        return NT_EINVAL;
    }
    if (chars > max) {
        fprintf(stderr,
                "needletrace: alerts ack: invalid %s: %zu characters, at most %zu are allowed\n",
                option, chars, max);
        return NT_EINVAL;
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

/* Checks --clinic (NULL: not given) of subcommand cmd. Returns 0, or NT_EINVAL after printing
 * why. */
static int alerts__check_clinic(const char *cmd, const char *clinic)
{
    if (clinic != NULL && !nt_ident_id_valid_str(clinic)) {
        fprintf(stderr,
                "needletrace: alerts %s: invalid value \"%s\" for --clinic: expected 1 to 64 "
                "characters of A-Z, a-z, 0-9, '.', '_' and '-'\n",
                cmd, clinic);
        return NT_EINVAL;
    }
    return 0;
}

/* Sets o->rule to the canonical name of o->rule_arg (any case). Returns 0, or NT_EINVAL after
 * printing the rules there are. */
static int alerts__check_rule(nt_alerts__list_opts_t *o)
{
    if (o->rule_arg == NULL) {
        return 0;
    }
    for (size_t i = 0; i < NT_ARRAY_SIZE(alerts__rules) && o->rule == NULL; i++) {
        if (strcasecmp(o->rule_arg, alerts__rules[i]) == 0) {
            o->rule = alerts__rules[i];
        }
    }
    if (o->rule != NULL) {
        return 0;
    }
    fprintf(stderr, "needletrace: alerts list: invalid value \"%s\" for --rule: expected one of",
            o->rule_arg);
    for (size_t i = 0; i < NT_ARRAY_SIZE(alerts__rules); i++) {
        fprintf(stderr, "%s %s", i == 0 ? "" : ",", alerts__rules[i]);
    }
    fputc('\n', stderr);
    return NT_EINVAL;
}

/* Parses and checks the arguments after "list" (argv[0] is "list"). Returns 0, or NT_EINVAL
 * after printing why. */
static int alerts__parse_list(int argc, char **argv, nt_alerts__list_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->limit = ALERTS__DEFAULT_LIMIT;
    int rc = alerts__parse_args("list", alerts__list_options, NT_ARRAY_SIZE(alerts__list_options),
                                argc, argv, o, NULL);
    if (rc != 0 || (rc = alerts__check_clinic("list", o->clinic)) != 0 ||
        (rc = alerts__check_rule(o)) != 0) {
        return rc;
    }
    if (o->since != NULL && o->since[0] == '\0') {
        fprintf(stderr, "needletrace: alerts list: invalid value \"\" for --since: expected a "
                        "timestamp such as 2025-03-01 or '2025-03-01 08:00+01'\n");
        return NT_EINVAL;
    }
    if (o->limit_arg != NULL) {
        int64_t v;
        if (alerts__parse_int(o->limit_arg, 1, ALERTS__MAX_LIMIT, &v) != 0) {
            fprintf(stderr,
                    "needletrace: alerts list: invalid value \"%s\" for --limit: expected an "
                    "integer from 1 to %d\n",
                    o->limit_arg, ALERTS__MAX_LIMIT);
            return NT_EINVAL;
        }
        o->limit = (long)v;
    }
    return 0;
}

/* Parses and checks the arguments after "ack" (argv[0] is "ack"). Returns 0, or NT_EINVAL
 * after printing why. */
static int alerts__parse_ack(int argc, char **argv, nt_alerts__ack_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    int rc = alerts__parse_args("ack", alerts__ack_options, NT_ARRAY_SIZE(alerts__ack_options),
                                argc, argv, o, &o->alert_arg);
    if (rc != 0) {
        return rc;
    }
    if (o->alert_arg == NULL) {
        fprintf(stderr, "needletrace: alerts ack: missing ALERT_ID\n");
        alerts__usage(stderr, 0);
        return NT_EINVAL;
    }
    if (alerts__parse_int(o->alert_arg, 1, INT64_MAX, &o->alert_id) != 0) {
        fprintf(stderr,
                "needletrace: alerts ack: invalid ALERT_ID \"%s\": expected a positive integer\n",
                o->alert_arg);
        return NT_EINVAL;
    }
    if (o->by == NULL) {
        fprintf(stderr, "needletrace: alerts ack: missing --by NAME (who acknowledges)\n");
        return NT_EINVAL;
    }
    if (o->note == NULL) {
        fprintf(stderr, "needletrace: alerts ack: missing --note TEXT (what was done)\n");
        return NT_EINVAL;
    }
    if ((rc = alerts__check_text("--by", o->by, ALERTS__MAX_BY)) != 0 ||
        (rc = alerts__check_text("--note", o->note, ALERTS__MAX_NOTE)) != 0) {
        return rc;
    }
    return alerts__check_clinic("ack", o->clinic);
}

/* ---- the command ------------------------------------------------------------------------ */

/* The exit code for an NT_E* result: 2 for bad usage or configuration, 1 for the rest. */
static int alerts__exit_code(int err)
{
    if (err == 0) {
        return 0;
    }
    return err == NT_EINVAL || err == NT_ECONFIG ? 2 : 1;
}

/* Parses the subcommand and its arguments (argv[0] is "alerts"; a "--" before the subcommand
 * is skipped): *is_list says which of lo and ao is filled. Returns 0, or NT_EINVAL after
 * printing why. */
static int alerts__parse(int argc, char **argv, int *is_list, nt_alerts__list_opts_t *lo,
                         nt_alerts__ack_opts_t *ao)
{
    int first = 1;
    if (first < argc && strcmp(argv[first], "--") == 0) {
        first++;
    }
    *is_list = 0;
    if (first >= argc) {
        fprintf(stderr, "needletrace: alerts: missing subcommand (list or ack)\n");
        alerts__usage(stderr, 0);
        return NT_EINVAL;
    }
    if (strcmp(argv[first], "list") == 0) {
        *is_list = 1;
        return alerts__parse_list(argc - first, argv + first, lo);
    }
    if (strcmp(argv[first], "ack") == 0) {
        return alerts__parse_ack(argc - first, argv + first, ao);
    }
    fprintf(stderr, "needletrace: alerts: %s \"%s\"\n",
            argv[first][0] == '-' ? "unknown option" : "unknown subcommand", argv[first]);
    alerts__usage(stderr, 0);
    return NT_EINVAL;
}

/* `needletrace alerts`: see the usage text. 0 success, 2 bad usage or configuration, 1 runtime
 * failure (database unreachable, unknown alert). */
int nt_cmd_alerts(int argc, char **argv, char *const *envp)
{
    nt_config_t cfg;
    nt_alerts__list_opts_t lo;
    nt_alerts__ack_opts_t ao;
    int is_list;
    PGconn *conn = NULL;
    int rc = nt_cmd_begin_with(&argc, argv, envp, alerts__help, alerts__takes_value, &cfg);
    if (rc != NT_CMD_CONTINUE) {
        return rc;
    }
    rc = alerts__parse(argc, argv, &is_list, &lo, &ao);
    if (rc == 0) {
        rc = nt_cmd_connect(cfg.database_url, cfg.database_password, "needletrace-alerts", &conn);
    }
    nt_config_close(&cfg);
    if (rc != 0) {
        return alerts__exit_code(rc);
    }
    rc = is_list ? nt_alerts__list(conn, &lo) : nt_alerts__ack(conn, &ao);
    PQfinish(conn);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "needletrace: could not write the output: %s\n", strerror(errno));
        return 1;
    }
    return alerts__exit_code(rc);
}
