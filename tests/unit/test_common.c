/* test_common.c -- unit tests for common.h: error strings, backoff and nt_grow. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "needletrace/common.h"

static void test_grow_from_empty_doubles(void **state)
{
    int *a = NULL;
    size_t cap = 0;
    assert_int_equal(nt_grow(&a, &cap, 1, sizeof(*a), 4), 0);
    assert_non_null(a);
    assert_int_equal(cap, 4);
    for (int i = 0; i < 4; i++) {
        a[i] = i;
    }
    assert_int_equal(nt_grow(&a, &cap, 4, sizeof(*a), 4), 0); /* fits: unchanged */
    assert_int_equal(cap, 4);
    assert_int_equal(nt_grow(&a, &cap, 5, sizeof(*a), 4), 0);
    assert_int_equal(cap, 8);
    assert_int_equal(nt_grow(&a, &cap, 33, sizeof(*a), 4), 0);
    assert_int_equal(cap, 64);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(a[i], i); /* the content moved with the array */
    }
    free(a);
}

static void test_grow_refuses_overflow(void **state)
{
    char *a = malloc(16);
    assert_non_null(a);
    memset(a, 'x', 16);
    size_t cap = 16;
    char *before = a;
    assert_int_equal(nt_grow(&a, &cap, SIZE_MAX, 1, 16), NT_ENOMEM);
    assert_int_equal(nt_grow(&a, &cap, SIZE_MAX / 4, 8, 16), NT_ENOMEM);
    assert_ptr_equal(a, before); /* unchanged and still valid */
    assert_int_equal(cap, 16);
    assert_int_equal(a[15], 'x');
    free(a);
}

static void test_backoff_bounds(void **state)
{
    for (unsigned attempt = 0; attempt < 100; attempt++) {
        uint64_t d = nt_backoff_ms(250, 30000, attempt);
        uint64_t full = attempt < 20 ? 250ull << attempt : 30000;
        if (full > 30000) {
            full = 30000;
        }
        assert_true(d >= full / 2);
        assert_true(d <= full);
    }
}

static void test_strerror_names_every_code(void **state)
{
    assert_string_equal(nt_strerror(0), "success");
    assert_string_equal(nt_strerror(NT_ENOMEM), "out of memory");
    assert_string_equal(nt_strerror(NT_EAGAIN), "try again");
    assert_string_equal(nt_strerror(-999), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grow_from_empty_doubles),
        cmocka_unit_test(test_grow_refuses_overflow),
        cmocka_unit_test(test_backoff_bounds),
        cmocka_unit_test(test_strerror_names_every_code),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
