/* test_pgparams.c -- unit tests of the connection's keyword/value arrays (pgparams.h): the
 * configured string kept, defaults only where it is silent, the statement timeout merged into its
 * options, the client encoding pinned, and a bad string refused without being quoted. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "needletrace/common.h"
#include "needletrace/pgparams.h"

/* Every keyword appears once, and the arrays end with NULL. */
static void assert_well_formed(const nt_pgparams_t *p)
{
    assert_null(p->keys[p->n]);
    assert_null(p->values[p->n]);
    for (size_t i = 0; i < p->n; i++) {
        assert_non_null(p->keys[i]);
        assert_non_null(p->values[i]);
        for (size_t j = i + 1; j < p->n; j++) {
            assert_string_not_equal(p->keys[i], p->keys[j]);
        }
    }
}

static void test_keyword_string(void **state)
{
    (void)state;
    nt_pgparams_t p;
    char err[128];
    assert_int_equal(nt_pgparams_init(&p,
                                      "host=db.example port=6543 dbname=nt user=collector "
                                      "options='-c work_mem=64MB' client_encoding=LATIN1",
                                      "c1", 30000, err, sizeof(err)),
                     0);
    assert_well_formed(&p);
    assert_string_equal(nt_pgparams_get(&p, "host"), "db.example");
    assert_string_equal(nt_pgparams_get(&p, "port"), "6543");
    assert_string_equal(nt_pgparams_get(&p, "dbname"), "nt");
    assert_string_equal(nt_pgparams_get(&p, "user"), "collector");
    assert_string_equal(nt_pgparams_get(&p, "options"),
                        "-c work_mem=64MB -c statement_timeout=30000");
    assert_string_equal(nt_pgparams_get(&p, "client_encoding"), "UTF8");
    assert_string_equal(nt_pgparams_get(&p, "keepalives"), "1");
    assert_string_equal(nt_pgparams_get(&p, "tcp_user_timeout"), "30000");
    assert_string_equal(nt_pgparams_get(&p, "fallback_application_name"), "needletrace-c1");
    assert_null(nt_pgparams_get(&p, "hostaddr"));
    assert_null(nt_pgparams_get(&p, "application_name"));
    /* client_encoding is the last entry: nothing after it can change it */
    assert_string_equal(p.keys[p.n - 1], "client_encoding");
    nt_pgparams_close(&p);
}

/* A URI: what it sets wins over the defaults; no timeout, no options. */
static void test_uri_and_no_timeout(void **state)
{
    (void)state;
    nt_pgparams_t p;
    char err[128];
    assert_int_equal(nt_pgparams_init(&p,
                                      "postgresql://u@h1:5433/db?keepalives_idle=99&"
                                      "application_name=mine&fallback_application_name=fb",
                                      "c2", 0, err, sizeof(err)),
                     0);
    assert_well_formed(&p);
    assert_string_equal(nt_pgparams_get(&p, "host"), "h1");
    assert_string_equal(nt_pgparams_get(&p, "port"), "5433");
    assert_string_equal(nt_pgparams_get(&p, "keepalives_idle"), "99");
    assert_string_equal(nt_pgparams_get(&p, "keepalives_interval"), "5");
    assert_string_equal(nt_pgparams_get(&p, "application_name"), "mine");
    assert_string_equal(nt_pgparams_get(&p, "fallback_application_name"), "fb");
    assert_null(nt_pgparams_get(&p, "options"));
    nt_pgparams_close(&p);

    assert_int_equal(nt_pgparams_init(&p, "", "c3", 1500, err, sizeof(err)), 0);
    assert_well_formed(&p);
    assert_string_equal(nt_pgparams_get(&p, "options"), "-c statement_timeout=1500");
    assert_null(nt_pgparams_get(&p, "host"));
    nt_pgparams_close(&p);
}

/* A malformed string is refused, and the message does not quote it (it may hold a password). */
static void test_malformed(void **state)
{
    (void)state;
    nt_pgparams_t p;
    char err[128];
    static const char *const bad[] = {"host='unterminated password=s3cret", "nonsense",
                                      "postgresql://h/db?nosuchkey=1 password=s3cret"};
    for (size_t i = 0; i < NT_ARRAY_SIZE(bad); i++) {
        assert_int_equal(nt_pgparams_init(&p, bad[i], "c1", 0, err, sizeof(err)), NT_ECONFIG);
        assert_null(strstr(err, "s3cret"));
        assert_non_null(strstr(err, "database.url"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keyword_string),
        cmocka_unit_test(test_uri_and_no_timeout),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
