/* test_opts.c -- unit tests of the table-driven command-line option parser and its usage text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/opts.h"

typedef struct {
    uint32_t count;
    uint64_t big;
    int level;
    int64_t when;
    double ratio;
    const char *name;
    const char *file;
} test_opts_t;

/* 1 when s starts with a letter (the check of --name). */
static int name_valid(const char *s)
{
    return (s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z');
}

static const nt_opt_t table[] = {
    {"count", NT_OPT_U32, offsetof(test_opts_t, count), 1, 100, 0, 0, NULL, "N",
     "how many (default 3)", NULL},
    {"big", NT_OPT_U64, offsetof(test_opts_t, big), 0, UINT64_MAX, 0, 0, NULL, "N", "a big one",
     "an unsigned 64-bit integer"},
    {"level", NT_OPT_INT, offsetof(test_opts_t, level), 0, 1, 0, 0, NULL, "0|1", "level", "0 or 1"},
    {"when", NT_OPT_I64, offsetof(test_opts_t, when), 1000, 2000, 0, 0, NULL, "MS", "when", NULL},
    {"ratio", NT_OPT_DOUBLE, offsetof(test_opts_t, ratio), 0, 0, 0, 1, NULL, "F",
     "a share\nof something", NULL},
    {"help", NT_OPT_HELP, 0, 0, 0, 0, 0, NULL, NULL, "show this help", NULL},
    {NULL, NT_OPT_TEXT, 0, 0, 0, 0, 0, NULL, NULL, "\nmore:\n", NULL},
    {"name", NT_OPT_STRING, offsetof(test_opts_t, name), 0, 0, 0, 0, name_valid, "S", "a name",
     "a letter first"},
    {"name-file", NT_OPT_STRING, offsetof(test_opts_t, file), 0, 0, 0, 0, NULL, "FILE", "a file",
     NULL},
    {NULL, NT_OPT_END, 0, 0, 0, 0, 0, NULL, NULL, NULL, NULL},
};

static char err[512];

/* Parses the NULL-terminated arguments (after a program name) into *o. */
static int parse(test_opts_t *o, uint64_t *seen, ...)
{
    char *argv[32] = {"prog"};
    int argc = 1;
    va_list ap;
    va_start(ap, seen);
    for (char *a; (a = va_arg(ap, char *)) != NULL && argc < 31; argc++) {
        argv[argc] = a;
    }
    va_end(ap);
    err[0] = '\0';
    return nt_opts_parse(table, argc, argv, o, seen, "prog", err, sizeof(err));
}

static void test_values(void **state)
{
    test_opts_t o = {.count = 3, .name = "default"};
    uint64_t seen = 0;
    assert_int_equal(parse(&o, &seen, "--count", "42", "--big=18446744073709551615", "--level", "1",
                           "--when", "1500", "--ratio", "0.25", "--name-file", "-x.bin", NULL),
                     0);
    assert_int_equal(o.count, 42);
    assert_true(o.big == UINT64_MAX);
    assert_int_equal(o.level, 1);
    assert_int_equal(o.when, 1500);
    assert_true(o.ratio == 0.25);
    assert_string_equal(o.name, "default"); /* not given: left alone */
    assert_string_equal(o.file, "-x.bin");  /* a value may start with "-" */
    assert_true(nt_opts_given(table, seen, "count"));
    assert_true(nt_opts_given(table, seen, "name-file"));
    assert_false(nt_opts_given(table, seen, "name"));
    assert_false(nt_opts_given(table, seen, "nosuch"));

    /* The last occurrence wins; "=" may give an empty value. */
    assert_int_equal(parse(&o, NULL, "--count", "1", "--count=7", "--name-file=", NULL), 0);
    assert_int_equal(o.count, 7);
    assert_string_equal(o.file, "");
}

static void test_prefixes(void **state)
{
    test_opts_t o = {0};
    assert_int_equal(parse(&o, NULL, "--cou", "5", "--rat=1", NULL), 0);
    assert_int_equal(o.count, 5);
    assert_true(o.ratio == 1.0);
    /* An exact name wins over the longer one it is a prefix of. */
    assert_int_equal(parse(&o, NULL, "--name", "abc", NULL), 0);
    assert_string_equal(o.name, "abc");
    /* Ambiguous: "--na" could be --name or --name-file. */
    assert_int_equal(parse(&o, NULL, "--na", "abc", NULL), NT_EINVAL);
    assert_string_equal(err, "unrecognized option \"--na\"\n"
                             "Try \"prog --help\" for more information.");
    /* --help is documented, not parsed. */
    assert_int_equal(parse(&o, NULL, "--he", NULL), NT_EINVAL);
    assert_string_equal(err, "unrecognized option \"--he\"\n"
                             "Try \"prog --help\" for more information.");
}

static void test_bad_values(void **state)
{
    test_opts_t o = {0};
    static const struct {
        const char *arg;
        const char *value;
        const char *message;
    } cases[] = {
        {"--count", "0", "invalid value \"0\" for --count: expected an integer from 1 to 100"},
        {"--count", "101", "invalid value \"101\" for --count: expected an integer from 1 to 100"},
        {"--count", "+5", "invalid value \"+5\" for --count: expected an integer from 1 to 100"},
        {"--count", " 5", "invalid value \" 5\" for --count: expected an integer from 1 to 100"},
        {"--count", "5x", "invalid value \"5x\" for --count: expected an integer from 1 to 100"},
        {"--big", "18446744073709551616",
         "invalid value \"18446744073709551616\" for --big: expected an unsigned 64-bit integer"},
        {"--level", "2", "invalid value \"2\" for --level: expected 0 or 1"},
        {"--when", "-1", "invalid value \"-1\" for --when: expected an integer from 1000 to 2000"},
        {"--ratio", "nan", "invalid value \"nan\" for --ratio: expected a number from 0 to 1"},
        {"--ratio", "1.5", "invalid value \"1.5\" for --ratio: expected a number from 0 to 1"},
        {"--ratio", "", "invalid value \"\" for --ratio: expected a number from 0 to 1"},
        {"--name", "1abc", "invalid value \"1abc\" for --name: expected a letter first"},
    };
    for (size_t i = 0; i < NT_ARRAY_SIZE(cases); i++) {
        o.count = 9;
        assert_int_equal(parse(&o, NULL, cases[i].arg, cases[i].value, NULL), NT_EINVAL);
        assert_string_equal(err, cases[i].message);
    }
    assert_int_equal(o.count, 9); /* a refused value is not stored */
}

static void test_syntax_errors(void **state)
{
    test_opts_t o = {0};
    assert_int_equal(parse(&o, NULL, "--count", NULL), NT_EINVAL);
    assert_string_equal(err, "option \"--count\" requires a value");
    assert_int_equal(parse(&o, NULL, "--cou", NULL), NT_EINVAL);
    assert_string_equal(err, "option \"--cou\" requires a value");
    assert_int_equal(parse(&o, NULL, "--bogus=1", NULL), NT_EINVAL);
    assert_string_equal(err, "unrecognized option \"--bogus=1\"\n"
                             "Try \"prog --help\" for more information.");
    assert_int_equal(parse(&o, NULL, "-x", NULL), NT_EINVAL);
    assert_string_equal(err, "unrecognized option \"-x\"\n"
                             "Try \"prog --help\" for more information.");
    /* Operands are reported once every option is parsed (options first). */
    assert_int_equal(parse(&o, NULL, "stray", "--bogus", NULL), NT_EINVAL);
    assert_string_equal(err, "unrecognized option \"--bogus\"\n"
                             "Try \"prog --help\" for more information.");
    assert_int_equal(parse(&o, NULL, "--count", "2", "stray", "other", NULL), NT_EINVAL);
    assert_string_equal(err, "unexpected argument \"stray\"");
    assert_int_equal(o.count, 2);
    assert_int_equal(parse(&o, NULL, "-", NULL), NT_EINVAL);
    assert_string_equal(err, "unexpected argument \"-\"");
    /* "--" ends the options. */
    assert_int_equal(parse(&o, NULL, "--", NULL), 0);
    assert_int_equal(parse(&o, NULL, "--", "--count", "3", NULL), NT_EINVAL);
    assert_string_equal(err, "unexpected argument \"--count\"");
}

static void test_usage(void **state)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    assert_non_null(out);
    nt_opts_usage(table, out);
    fclose(out);
    assert_non_null(strstr(buf, "  --count N                how many (default 3)\n"
                                "  --big N                  a big one\n"));
    assert_non_null(strstr(buf, "  --ratio F                a share\n"
                                "                           of something\n"));
    assert_non_null(strstr(buf, "  -h, --help               show this help\n"
                                "\nmore:\n"
                                "  --name S                 a name\n"));
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values),     cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_bad_values), cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_usage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
