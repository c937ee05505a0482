/* opts.h -- command-line options from a declarative table: parsing, validation and usage text.
 *
 * A command describes its options once, as an array of nt_opt_t ending with NT_OPT_END; the
 * same table parses argv into the command's options struct (each value checked against the
 * entry's bounds, errors naming the option), and prints the usage lines.
 *
 * Argument syntax (as GNU getopt_long with argument permutation): "--name VALUE" or
 * "--name=VALUE"; a name may be shortened to any prefix that names one option only (an
 * exact name always wins); "--" ends the options; any other argument is an operand. Every
 * option takes a value: the argument after "--name" is its value even when it starts with
 * "-". NT_OPT_HELP entries are documented by nt_opts_usage() but never parsed: the command
 * answers --help before parsing (see nt_cmd_wants_help()). */
#ifndef NEEDLETRACE_OPTS_H
#define NEEDLETRACE_OPTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    NT_OPT_END = 0, /* ends the table */
    NT_OPT_U32,     /* uint32_t: decimal digits only, within [umin, umax] */
    NT_OPT_U64,     /* uint64_t: same */
    NT_OPT_INT,     /* int: same; umax must not exceed INT_MAX */
    NT_OPT_I64,     /* int64_t: same; umax must not exceed INT64_MAX */
    NT_OPT_DOUBLE,  /* double: a finite decimal number within [dmin, dmax], no leading space */
    NT_OPT_STRING,  /* const char *: points into argv; accepted when check(value) is 1 */
    NT_OPT_HELP,    /* "-h, --help" in the usage; not parsed */
    NT_OPT_TEXT,    /* no option: help is printed as is in the usage (a section heading) */
} nt_opt_type_t;

/* Returns 1 when a string value is acceptable, 0 otherwise. */
typedef int (*nt_opt_check_fn)(const char *value);

typedef struct {
    const char *name; /* long name without "--" (NULL for NT_OPT_TEXT) */
    nt_opt_type_t type;
    size_t offset; /* of the value in the options struct (offsetof) */
    uint64_t umin; /* integer types: inclusive bounds */
    uint64_t umax;
    double dmin; /* NT_OPT_DOUBLE: inclusive bounds */
    double dmax;
    nt_opt_check_fn check; /* NT_OPT_STRING: NULL accepts any value */
    const char *arg;       /* the value's placeholder in the usage, e.g. "N" */
    const char *help;      /* usage text; each '\n' starts an indented continuation line */
    const char *expected;  /* "expected ..." in errors; NULL: derived from the bounds */
} nt_opt_t;

/* The most entries a table may have (the seen bit mask has one bit per entry). */
#define NT_OPTS_MAX 64u

/* Parses argv[1..argc) into the struct at opts as table describes; values of options not
 * given are left as they are (set the defaults before the call). Bit i of *seen (when seen
 * is not NULL) is set when table[i] was given. The last occurrence of an option wins.
 *
 * Returns 0, or NT_EINVAL with a message in err (at most errlen bytes, NUL-terminated, no
 * program prefix) at the first problem, in argument order: an unrecognized or ambiguous
 * option (the message then adds a second line: Try "<prog> --help" for more information.),
 * a missing value, a value out of bounds (invalid value "V" for --name: expected ...), or,
 * once every option is parsed, the first operand (unexpected argument "A"). Values already
 * stored may have been changed. Also NT_EINVAL for a table of more than NT_OPTS_MAX entries.
 * See also nt_opts_usage(). */
int nt_opts_parse(const nt_opt_t *table, int argc, char **argv, void *opts, uint64_t *seen,
                  const char *prog, char *err, size_t errlen);

/* 1 when the option named name (exactly) is marked in seen, as set by nt_opts_parse(). */
int nt_opts_given(const nt_opt_t *table, uint64_t seen, const char *name);

/* Prints the usage lines of table to out: "  --name ARG" padded to 25 columns, then the help,
 * continuation lines indented to the same column; NT_OPT_TEXT entries as they are. */
void nt_opts_usage(const nt_opt_t *table, FILE *out);

#endif
