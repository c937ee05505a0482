/* opts.c -- command-line options parsed, checked and documented from one declarative table. */
#include "needletrace/opts.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"

#define OPTS_USAGE_COLUMN 25 /* "  --name ARG" padded to this width after the indent */

static int opts__fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Formats a message into err; returns NT_EINVAL. */
static int opts__fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err != NULL && errlen > 0) {
        vsnprintf(err, errlen, fmt, ap);
    }
    va_end(ap);
    return NT_EINVAL;
}

/* 1 when the entry is an option the parser accepts. */
static int opts__parsed(const nt_opt_t *o)
{
    return o->type != NT_OPT_HELP && o->type != NT_OPT_TEXT;
}

/* Finds the option named name[0..len): the exact name, else the only one it is a prefix of.
 * Returns its index, or -1 when none or several match. */
static int opts__find(const nt_opt_t *table, const char *name, size_t len)
{
    int found = -1;
    int matches = 0;
    for (int i = 0; table[i].type != NT_OPT_END; i++) {
        const nt_opt_t *o = &table[i];
        if (!opts__parsed(o) || strncmp(o->name, name, len) != 0) {
            continue;
        }
        if (o->name[len] == '\0') {
            return i;
        }
        found = i;
        matches++;
    }
    return matches == 1 ? found : -1;
}

/* Parses a decimal unsigned integer in [lo, hi]: digits only. 0 or NT_EINVAL. */
static int opts__parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    if (s[0] < '0' || s[0] > '9') {
        return NT_EINVAL;
    }
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi) {
        return NT_EINVAL;
    }
    *out = (uint64_t)v;
    return 0;
}

/* Parses a finite decimal number in [lo, hi]. 0 or NT_EINVAL. */
static int opts__parse_double(const char *s, double lo, double hi, double *out)
{
    if (s[0] == '\0' || s[0] == ' ' || s[0] == '\t') {
        return NT_EINVAL;
    }
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    /* NaN fails both comparisons; infinities fail the bounds. */
    if (errno != 0 || *end != '\0' || !(v >= lo && v <= hi)) {
        return NT_EINVAL;
    }
    *out = v;
    return 0;
}

/* Checks value against o and stores it into opts. 0 or NT_EINVAL (nothing stored). */
static int opts__store(const nt_opt_t *o, const char *value, void *opts)
{
    char *field = (char *)opts + o->offset;
    uint64_t u = 0;
    double d;
    if (o->type == NT_OPT_DOUBLE) {
        if (opts__parse_double(value, o->dmin, o->dmax, &d) != 0) {
            return NT_EINVAL;
        }
        memcpy(field, &d, sizeof(d));
        return 0;
    }
    if (o->type == NT_OPT_STRING) {
        if (o->check != NULL && !o->check(value)) {
            return NT_EINVAL;
        }
        memcpy(field, &value, sizeof(value));
        return 0;
    }
    if (opts__parse_u64(value, o->umin, o->umax, &u) != 0) {
        return NT_EINVAL;
    }
    if (o->type == NT_OPT_U32) {
        *(uint32_t *)(void *)field = (uint32_t)u;
    } else if (o->type == NT_OPT_U64) {
        *(uint64_t *)(void *)field = u;
    } else if (o->type == NT_OPT_INT) {
        *(int *)(void *)field = (int)u;
    } else {
        *(int64_t *)(void *)field = (int64_t)u;
    }
    return 0;
}

/* Reports a value o refuses, naming the option and what it expects. Returns NT_EINVAL. */
static int opts__bad_value(const nt_opt_t *o, const char *value, char *err, size_t errlen)
{
    if (o->expected != NULL) {
        return opts__fail(err, errlen, "invalid value \"%s\" for --%s: expected %s", value, o->name,
                          o->expected);
    }
    if (o->type == NT_OPT_DOUBLE) {
        return opts__fail(err, errlen,
                          "invalid value \"%s\" for --%s: expected a number from %g to %g", value,
                          o->name, o->dmin, o->dmax);
    }
    if (o->type == NT_OPT_STRING) {
        return opts__fail(err, errlen, "invalid value \"%s\" for --%s", value, o->name);
    }
    return opts__fail(err, errlen,
                      "invalid value \"%s\" for --%s: expected an integer from %" PRIu64
                      " to %" PRIu64,
                      value, o->name, o->umin, o->umax);
}

/* Parses the option at argv[*i] ("--name" or "--name=value"), taking its value from the next
 * argument when not attached, and advances *i past what it used. 0 or NT_EINVAL. */
static int opts__one(const nt_opt_t *table, int argc, char **argv, int *i, void *opts,
                     uint64_t *seen, const char *prog, char *err, size_t errlen)
{
    const char *arg = argv[*i];
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t len = eq != NULL ? (size_t)(eq - name) : strlen(name);
    int idx = len > 0 ? opts__find(table, name, len) : -1;
    if (idx < 0) {
        return opts__fail(err, errlen,
                          "unrecognized option \"%s\"\nTry \"%s --help\" for more information.",
                          arg, prog);
    }
    const char *value = eq != NULL ? eq + 1 : NULL;
    if (value == NULL) {
        if (*i + 1 >= argc) {
            return opts__fail(err, errlen, "option \"%s\" requires a value", arg);
        }
        value = argv[++*i];
    }
    if (opts__store(&table[idx], value, opts) != 0) {
        return opts__bad_value(&table[idx], value, err, errlen);
    }
    if (seen != NULL) {
        *seen |= UINT64_C(1) << idx;
    }
    return 0;
}

/* Parses argv over the defaults in opts; see opts.h for the syntax and every error. */
int nt_opts_parse(const nt_opt_t *table, int argc, char **argv, void *opts, uint64_t *seen,
                  const char *prog, char *err, size_t errlen)
{
    size_t n = 0;
    while (table[n].type != NT_OPT_END) {
        n++;
    }
    if (n > NT_OPTS_MAX) {
        return opts__fail(err, errlen, "option table of %zu entries: at most %u", n, NT_OPTS_MAX);
    }
    if (seen != NULL) {
        *seen = 0;
    }
    const char *operand = NULL; /* the first, reported once every option is parsed */
    int i = 1;
    for (; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--") == 0) {
            i++;
            break;
        }
        if (arg[0] != '-' || arg[1] == '\0') {
            operand = operand != NULL ? operand : arg;
            continue;
        }
        if (arg[1] != '-') {
            return opts__fail(err, errlen,
                              "unrecognized option \"-%c\"\nTry \"%s --help\" for more "
                              "information.",
                              arg[1], prog);
        }
        if (opts__one(table, argc, argv, &i, opts, seen, prog, err, errlen) != 0) {
            return NT_EINVAL;
        }
    }
    if (operand == NULL && i < argc) {
        operand = argv[i];
    }
    if (operand != NULL) {
        return opts__fail(err, errlen, "unexpected argument \"%s\"", operand);
    }
    return 0;
}

/* 1 when the option named name is marked in seen. */
int nt_opts_given(const nt_opt_t *table, uint64_t seen, const char *name)
{
    for (unsigned i = 0; i < NT_OPTS_MAX && table[i].type != NT_OPT_END; i++) {
        if (table[i].name != NULL && strcmp(table[i].name, name) == 0) {
            return (seen >> i) & 1u;
        }
    }
    return 0;
}

/* Prints text with each '\n' followed by an indent of column spaces; ends with a newline. */
static void opts__indented(FILE *out, const char *text, int column)
{
    for (const char *p = text; *p != '\0'; p++) {
        fputc(*p, out);
        if (*p == '\n' && p[1] != '\0') {
            fprintf(out, "%*s", column, "");
        }
    }
    fputc('\n', out);
}

/* Prints one usage line (and its continuation lines) per table entry. */
void nt_opts_usage(const nt_opt_t *table, FILE *out)
{
    char left[128];
    for (const nt_opt_t *o = table; o->type != NT_OPT_END; o++) {
        if (o->type == NT_OPT_TEXT) {
            fputs(o->help, out);
            continue;
        }
        if (o->type == NT_OPT_HELP) {
            snprintf(left, sizeof(left), "-h, --%s", o->name);
        } else {
            snprintf(left, sizeof(left), "--%s %s", o->name, o->arg != NULL ? o->arg : "VALUE");
        }
        fprintf(out, "  %-*s ", OPTS_USAGE_COLUMN - 1, left);
        opts__indented(out, o->help != NULL ? o->help : "", OPTS_USAGE_COLUMN + 2);
    }
}
