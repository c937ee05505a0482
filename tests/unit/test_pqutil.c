/* test_pqutil.c -- unit tests of nt_pqutil_message: libpq messages trimmed to one line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "needletrace/pqutil.h"

static void test_prefixes(void **state)
{
    char buf[128];
    assert_string_equal(
        nt_pqutil_message("ERROR:  relation \"x\" does not exist\n", buf, sizeof(buf)),
        "relation \"x\" does not exist");
    assert_string_equal(
        nt_pqutil_message("FATAL:  password authentication failed\n", buf, sizeof(buf)),
        "password authentication failed");
    assert_string_equal(nt_pqutil_message("WARNING:  kept as it is\n", buf, sizeof(buf)),
                        "WARNING:  kept as it is");
}

static void test_first_line(void **state)
{
    char buf[128];
    assert_string_equal(nt_pqutil_message("ERROR:  syntax error at or near \"x\"\nLINE 1: x\n"
                                          "        ^\n",
                                          buf, sizeof(buf)),
                        "syntax error at or near \"x\"");
    assert_string_equal(nt_pqutil_message("could not connect: refused  \r\n\tIs the server "
                                          "running?\n",
                                          buf, sizeof(buf)),
                        "could not connect: refused");
}

static void test_edges(void **state)
{
    char buf[8];
    assert_string_equal(nt_pqutil_message(NULL, buf, sizeof(buf)), "");
    assert_string_equal(nt_pqutil_message("", buf, sizeof(buf)), "");
    assert_string_equal(nt_pqutil_message("\n", buf, sizeof(buf)), "");
    assert_string_equal(nt_pqutil_message("ERROR:  0123456789", buf, sizeof(buf)), "0123456");
    assert_ptr_equal(nt_pqutil_message("x", buf, 0), buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_first_line),
        cmocka_unit_test(test_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
