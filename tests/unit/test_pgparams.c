/* test_pgparams.c -- unit tests of the connection's keyword/value arrays (pgparams.h): the
 * configured string kept, defaults only where it is silent, the statement timeout merged into its
 * options, the client encoding pinned, and a bad string refused without being quoted. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "needletrace/common.h"
#include "needletrace/pglookup.h"
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

/* The host list to look up: socket directories and empty entries are not, the port list is one
 * port for all or one per host, and there is nothing to look up when the string gives
 * addresses, a service, or no host at all. */
static void test_hosts(void **state)
{
    (void)state;
    nt_pgparams_t p;
    nt_pgparams_host_t h[4];
    char err[128];
    unsetenv("PGHOST");
    unsetenv("PGPORT");
    unsetenv("PGHOSTADDR");
    unsetenv("PGSERVICE");
    assert_int_equal(
        nt_pgparams_init(&p, "host=db1,/var/run/pg,db2 port=5432,5433,5434", "c", 0, err, 128), 0);
    assert_int_equal(nt_pgparams_hosts(&p, h, 4), 3);
    assert_string_equal(h[0].name, "db1");
    assert_string_equal(h[0].port, "5432");
    assert_int_equal(h[0].resolve, 1);
    assert_string_equal(h[1].name, "/var/run/pg");
    assert_int_equal(h[1].resolve, 0);
    assert_string_equal(h[2].port, "5434");
    assert_int_equal(nt_pgparams_hosts(&p, h, 2), NT_ETOOBIG);
    nt_pgparams_close(&p);

    assert_int_equal(nt_pgparams_init(&p, "postgresql://a,b:6000/db", "c", 0, err, 128), 0);
    assert_int_equal(nt_pgparams_hosts(&p, h, 4), 2);
    assert_string_equal(h[0].name, "a");
    assert_string_equal(h[0].port, "");
    assert_string_equal(h[1].port, "6000");
    nt_pgparams_close(&p);

    assert_int_equal(nt_pgparams_init(&p, "host=a,b port=1,2,3", "c", 0, err, 128), 0);
    assert_int_equal(nt_pgparams_hosts(&p, h, 4), NT_ECONFIG);
    nt_pgparams_close(&p);

    static const char *const nothing[] = {"dbname=x", "host=a hostaddr=10.0.0.1",
                                          "host=a service=prod", "host=/tmp"};
    for (size_t i = 0; i < NT_ARRAY_SIZE(nothing); i++) {
        assert_int_equal(nt_pgparams_init(&p, nothing[i], "c", 0, err, 128), 0);
        int n = nt_pgparams_hosts(&p, h, 4);
        assert_true(n == 0 || (n == 1 && !h[0].resolve));
        nt_pgparams_close(&p);
    }

    setenv("PGHOST", "envhost", 1);
    setenv("PGPORT", "7777", 1);
    assert_int_equal(nt_pgparams_init(&p, "dbname=x", "c", 0, err, 128), 0);
    assert_int_equal(nt_pgparams_hosts(&p, h, 4), 1);
    assert_string_equal(h[0].name, "envhost");
    assert_string_equal(h[0].port, "7777");
    nt_pgparams_close(&p);
    unsetenv("PGHOST");
    unsetenv("PGPORT");
}

/* One entry per address, the name kept as host; socket directories where they were. */
static void test_set_addrs(void **state)
{
    (void)state;
    nt_pgparams_t p;
    nt_pgparams_host_t h[4];
    char err[128];
    assert_int_equal(nt_pgparams_init(&p,
                                      "host=db1,/var/run/pg,db2 port=5432,5433,5434 "
                                      "sslmode=verify-full",
                                      "c", 0, err, 128),
                     0);
    assert_int_equal(nt_pgparams_hosts(&p, h, 4), 3);
    const nt_pgparams_addr_t addrs[] = {{0, "10.0.0.1"}, {2, "::1"}, {0, "10.0.0.2"}};
    assert_int_equal(nt_pgparams_set_addrs(&p, h, 3, addrs, 3), 0);
    assert_well_formed(&p);
    assert_string_equal(nt_pgparams_get(&p, "host"), "db1,db1,/var/run/pg,db2");
    assert_string_equal(nt_pgparams_get(&p, "hostaddr"), "10.0.0.1,10.0.0.2,,::1");
    assert_string_equal(nt_pgparams_get(&p, "port"), "5432,5432,5433,5434");
    assert_string_equal(nt_pgparams_get(&p, "sslmode"), "verify-full");
    /* the configured lists are still what the next lookup starts from */
    assert_int_equal(nt_pgparams_hosts(&p, h, 4), 3);
    assert_string_equal(h[2].name, "db2");

    nt_pgparams_close(&p);

    /* nothing found: no entry left */
    assert_int_equal(nt_pgparams_init(&p, "host=db1", "c", 0, err, 128), 0);
    assert_int_equal(nt_pgparams_hosts(&p, h, 4), 1);
    assert_int_equal(nt_pgparams_set_addrs(&p, h, 1, NULL, 0), NT_EINVAL);
    nt_pgparams_close(&p);
}

/* Numeric addresses and localhost (from /etc/hosts) are found; socket directories are not looked
 * up; a second address of one name is kept once. */
static void test_lookup(void **state)
{
    (void)state;
    nt_pglookup_t l;
    memset(&l, 0, sizeof(l));
    snprintf(l.hosts[0].name, sizeof(l.hosts[0].name), "127.0.0.1");
    l.hosts[0].resolve = 1;
    snprintf(l.hosts[1].name, sizeof(l.hosts[1].name), "/tmp");
    snprintf(l.hosts[2].name, sizeof(l.hosts[2].name), "localhost");
    l.hosts[2].resolve = 1;
    l.nhosts = 3;
    assert_true(nt_pglookup_needed(&l));
    nt_pglookup_run(&l);
    assert_int_equal(l.failed, 0);
    assert_string_equal(l.error, "");
    assert_true(l.naddrs >= 2);
    assert_int_equal(l.addrs[0].host, 0);
    assert_string_equal(l.addrs[0].addr, "127.0.0.1");
    for (size_t i = 1; i < l.naddrs; i++) {
        assert_int_equal(l.addrs[i].host, 2);
        for (size_t j = i + 1; j < l.naddrs; j++) {
            assert_string_not_equal(l.addrs[i].addr, l.addrs[j].addr);
        }
    }
    l.hosts[0].resolve = l.hosts[2].resolve = 0;
    assert_false(nt_pglookup_needed(&l));
}

/* database.password_file's password: one password keyword, after the string's own, and gone
 * again when unset; it survives a rebuild for looked-up addresses. */
static void test_password(void **state)
{
    (void)state;
    nt_pgparams_t p;
    char err[128];
    assert_int_equal(
        nt_pgparams_init(&p, "postgresql://u:url-pw@db.example/nt", "c1", 0, err, sizeof(err)), 0);
    nt_pgparams_set_password(&p, "file-pw");
    assert_well_formed(&p);
    assert_string_equal(nt_pgparams_get(&p, "password"), "file-pw");
    assert_string_equal(p.keys[p.n - 1], "client_encoding");
    nt_pgparams_host_t hosts[1];
    assert_int_equal(nt_pgparams_hosts(&p, hosts, 1), 1);
    nt_pgparams_addr_t addr = {.host = 0, .addr = "192.0.2.7"};
    assert_int_equal(nt_pgparams_set_addrs(&p, hosts, 1, &addr, 1), 0);
    assert_well_formed(&p);
    assert_string_equal(nt_pgparams_get(&p, "password"), "file-pw");
    assert_string_equal(nt_pgparams_get(&p, "hostaddr"), "192.0.2.7");
    nt_pgparams_set_password(&p, NULL);
    assert_string_equal(nt_pgparams_get(&p, "password"), "url-pw");
    nt_pgparams_close(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keyword_string), cmocka_unit_test(test_uri_and_no_timeout),
        cmocka_unit_test(test_malformed),      cmocka_unit_test(test_hosts),
        cmocka_unit_test(test_set_addrs),      cmocka_unit_test(test_lookup),
        cmocka_unit_test(test_password),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
