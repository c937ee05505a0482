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

static void test_classify(void **state)
{
    static const char *const data[] = {"22003", "22P02", "23514", "23502", "P0001",
                                       "P0004", "21000", "2F005", "22021", "23P01"};
    static const char *const transient[] = {"40001", "40P01", "55P03", "57014"};
    static const char *const operational[] = {"53100", "53200", "42P01", "42501", "42883", "57P01",
                                              "58030", "XX000", "08006", "3D000", "55006", "0A000"};
    for (size_t i = 0; i < sizeof(data) / sizeof(data[0]); i++) {
        assert_int_equal(nt_pqutil_classify(data[i]), NT_PQ_DATA);
    }
    for (size_t i = 0; i < sizeof(transient) / sizeof(transient[0]); i++) {
        assert_int_equal(nt_pqutil_classify(transient[i]), NT_PQ_TRANSIENT);
    }
    for (size_t i = 0; i < sizeof(operational) / sizeof(operational[0]); i++) {
        assert_int_equal(nt_pqutil_classify(operational[i]), NT_PQ_OPERATIONAL);
    }
    assert_int_equal(nt_pqutil_classify(NULL), NT_PQ_OPERATIONAL);
    assert_int_equal(nt_pqutil_classify(""), NT_PQ_OPERATIONAL);
    assert_int_equal(nt_pqutil_classify("2200"), NT_PQ_OPERATIONAL);
    assert_int_equal(nt_pqutil_classify("220030"), NT_PQ_OPERATIONAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_first_line),
        cmocka_unit_test(test_edges),
        cmocka_unit_test(test_classify),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
