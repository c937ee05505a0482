/* test_outbox.c -- unit tests of the alert bookkeeping for the next transaction (outbox):
 * gap-check timing, deliveries, undelivered paging, collected alerts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/outbox.h"

#define T0 INT64_C(987654321000) /* an arbitrary monotonic time, us */

static int setup(void **state)
{
    nt_outbox_t *o = calloc(1, sizeof(*o));
    assert_non_null(o);
    nt_outbox_init(o, T0);
    *state = o;
    return 0;
}

static int teardown(void **state)
{
    nt_outbox_t *o = *state;
    nt_outbox_close(o);
    free(o);
    return 0;
}

/* Collects n alerts with ids first.. as a transaction's rows. */
static void collect_n(nt_outbox_t *o, int64_t first, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char payload[64];
        snprintf(payload, sizeof(payload), "{\"alert_id\":%lld}", (long long)(first + (int)i));
        assert_int_equal(
            nt_outbox_collect(o, first + (int64_t)i, "clinic-7", "SEQUENCE_GAP", payload), 0);
    }
}

/* One transaction that does whatever is due, committed at now_us. */
static void run_txn(nt_outbox_t *o, int64_t now_us, size_t fetched)
{
    const int64_t *ids;
    (void)nt_outbox_take_delivered(o, &ids);
    if (o->gaps_due) {
        nt_outbox_take_gaps(o);
    }
    if (o->undelivered_wanted) {
        nt_outbox_take_undelivered(o);
        collect_n(o, 1000000, fetched);
    }
    nt_outbox_committed(o, now_us);
    nt_outbox_published(o);
}

/* ---- due ------------------------------------------------------------------------------------- */

static void test_empty_not_due(void **state)
{
    nt_outbox_t *o = *state;
    assert_false(nt_outbox_due(o));
    assert_int_equal(o->n_delivered, 0);
    assert_int_equal(o->alerts.n, 0);
    const int64_t *ids = NULL;
    assert_int_equal(nt_outbox_take_delivered(o, &ids), 0);
    nt_outbox_committed(o, T0);
    assert_false(nt_outbox_due(o));
}

static void test_due_for_each_reason(void **state)
{
    nt_outbox_t *o = *state;
    assert_false(nt_outbox_due(o));
    assert_int_equal(nt_outbox_delivered(o, 42), 0);
    assert_true(nt_outbox_due(o));
    run_txn(o, T0, 0);
    assert_false(nt_outbox_due(o));

    nt_outbox_request_undelivered(o);
    assert_true(nt_outbox_due(o));
    run_txn(o, T0, 0);
    assert_false(nt_outbox_due(o));

    nt_outbox_tick(o, T0 + NT_OUTBOX_GAP_CHECK_US);
    assert_true(o->gaps_due);
    assert_false(o->undelivered_wanted);
    assert_true(nt_outbox_due(o));
    run_txn(o, T0 + NT_OUTBOX_GAP_CHECK_US, 0);
    assert_false(nt_outbox_due(o));
}

/* ---- gap check ------------------------------------------------------------------------------- */

static void test_first_gap_check_at_first_tick(void **state)
{
    nt_outbox_t *o = *state;
    assert_false(o->gaps_due);
    nt_outbox_tick(o, T0);
    assert_true(o->gaps_due);
    assert_true(nt_outbox_due(o));

    /* Also when init happened at time 0 (the clock may start anywhere). */
    nt_outbox_t o2;
    nt_outbox_init(&o2, 0);
    nt_outbox_tick(&o2, 0);
    assert_true(o2.gaps_due);
    nt_outbox_close(&o2);
}

static void test_gap_check_interval(void **state)
{
    nt_outbox_t *o = *state;
    nt_outbox_tick(o, T0);
    nt_outbox_take_gaps(o);
    const int64_t t1 = T0 + 1234;
    nt_outbox_committed(o, t1);
    assert_false(o->gaps_due);
    assert_false(nt_outbox_due(o));

    nt_outbox_tick(o, t1 + 1);
    assert_false(o->gaps_due);
    nt_outbox_tick(o, t1 + NT_OUTBOX_GAP_CHECK_US - 1);
    assert_false(o->gaps_due);
    nt_outbox_tick(o, t1 + NT_OUTBOX_GAP_CHECK_US);
    assert_true(o->gaps_due);

    /* The interval counts from the commit that ran the check, not from when it fell due. */
    const int64_t t2 = t1 + 3 * NT_OUTBOX_GAP_CHECK_US;
    nt_outbox_take_gaps(o);
    nt_outbox_committed(o, t2);
    assert_false(o->gaps_due);
    nt_outbox_tick(o, t2 + NT_OUTBOX_GAP_CHECK_US - 1);
    assert_false(o->gaps_due);
    nt_outbox_tick(o, t2 + NT_OUTBOX_GAP_CHECK_US);
    assert_true(o->gaps_due);
}

/* A commit of a transaction that did not run the check leaves it due. */
static void test_gap_check_only_settled_by_its_txn(void **state)
{
    nt_outbox_t *o = *state;
    nt_outbox_tick(o, T0);
    assert_true(o->gaps_due);
    nt_outbox_committed(o, T0 + 10);
    assert_true(o->gaps_due);
    assert_true(nt_outbox_due(o));
}

static void test_aborted_leaves_work_due(void **state)
{
    nt_outbox_t *o = *state;
    nt_outbox_tick(o, T0);
    nt_outbox_request_undelivered(o);
    assert_int_equal(nt_outbox_delivered(o, 7), 0);
    assert_int_equal(nt_outbox_delivered(o, 8), 0);

    const int64_t *ids;
    assert_int_equal(nt_outbox_take_delivered(o, &ids), 2);
    nt_outbox_take_gaps(o);
    nt_outbox_take_undelivered(o);
    collect_n(o, 1, 3);
    nt_outbox_aborted(o);

    assert_true(nt_outbox_due(o));
    assert_true(o->gaps_due);
    assert_true(o->undelivered_wanted);
    assert_int_equal(o->n_delivered, 2);
    assert_int_equal(o->delivered[0], 7);
    assert_int_equal(o->delivered[1], 8);
    assert_int_equal(o->alerts.n, 0);

    /* A later commit that takes nothing does not settle the aborted work. */
    nt_outbox_committed(o, T0 + 1);
    assert_true(o->gaps_due);
    assert_true(o->undelivered_wanted);
    assert_int_equal(o->n_delivered, 2);
    assert_false(o->undelivered_more);

    /* The retry settles it all. */
    assert_int_equal(nt_outbox_take_delivered(o, &ids), 2);
    assert_int_equal(ids[0], 7);
    assert_int_equal(ids[1], 8);
    nt_outbox_take_gaps(o);
    nt_outbox_take_undelivered(o);
    nt_outbox_committed(o, T0 + 2);
    assert_false(nt_outbox_due(o));
}

/* ---- deliveries ------------------------------------------------------------------------------ */

static void test_deliveries_forgotten_at_commit(void **state)
{
    nt_outbox_t *o = *state;
    for (int64_t id = 1; id <= 3; id++) {
        assert_int_equal(nt_outbox_delivered(o, id), 0);
    }
    const int64_t *ids = NULL;
    assert_int_equal(nt_outbox_take_delivered(o, &ids), 3);
    assert_non_null(ids);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 2);
    assert_int_equal(ids[2], 3);
    assert_int_equal(o->n_delivered, 3); /* not forgotten yet */

    /* Acknowledged while the transaction runs: for the next one. */
    assert_int_equal(nt_outbox_delivered(o, 4), 0);
    assert_int_equal(nt_outbox_delivered(o, 5), 0);
    nt_outbox_committed(o, T0);
    assert_int_equal(o->n_delivered, 2);
    assert_true(nt_outbox_due(o));
    assert_int_equal(nt_outbox_take_delivered(o, &ids), 2);
    assert_int_equal(ids[0], 4);
    assert_int_equal(ids[1], 5);
    nt_outbox_committed(o, T0);
    assert_int_equal(o->n_delivered, 0);
    assert_false(nt_outbox_due(o));
}

/* Many deliveries (growth of the array), some during the transaction, order kept. */
static void test_deliveries_many(void **state)
{
    nt_outbox_t *o = *state;
    for (int64_t id = 1; id <= 150; id++) {
        assert_int_equal(nt_outbox_delivered(o, id), 0);
    }
    const int64_t *ids;
    assert_int_equal(nt_outbox_take_delivered(o, &ids), 150);
    for (int64_t id = 151; id <= 400; id++) {
        assert_int_equal(nt_outbox_delivered(o, id), 0);
    }
    nt_outbox_committed(o, T0);
    assert_int_equal(o->n_delivered, 250);
    for (size_t i = 0; i < 250; i++) {
        assert_int_equal(o->delivered[i], 151 + (int64_t)i);
    }
    /* Aborted: all 250 stay, and so do the ones that came meanwhile. */
    assert_int_equal(nt_outbox_take_delivered(o, &ids), 250);
    assert_int_equal(nt_outbox_delivered(o, 401), 0);
    nt_outbox_aborted(o);
    assert_int_equal(o->n_delivered, 251);
    assert_int_equal(o->delivered[250], 401);
    nt_outbox_committed(o, T0); /* took nothing */
    assert_int_equal(o->n_delivered, 251);
}

/* ---- undelivered paging ---------------------------------------------------------------------- */

static void test_undelivered_full_page_asks_for_more(void **state)
{
    nt_outbox_t *o = *state;
    assert_false(o->undelivered_wanted);
    nt_outbox_request_undelivered(o);
    assert_true(o->undelivered_wanted);

    nt_outbox_take_undelivered(o);
    collect_n(o, 1, NT_OUTBOX_PAGE);
    const int64_t t1 = T0 + 100;
    nt_outbox_committed(o, t1);
    assert_false(o->undelivered_wanted);
    assert_true(o->undelivered_more);
    assert_int_equal(o->alerts.n, NT_OUTBOX_PAGE); /* for the caller to publish */
    nt_outbox_published(o);

    /* The next tick wants the next page, long before the periodic fetch. */
    nt_outbox_tick(o, t1 + 1);
    assert_true(o->undelivered_wanted);
    assert_false(o->undelivered_more);
    assert_true(nt_outbox_due(o));

    /* A partial page: no more. */
    nt_outbox_take_undelivered(o);
    collect_n(o, 5000, NT_OUTBOX_PAGE - 1);
    const int64_t t2 = t1 + 200;
    nt_outbox_committed(o, t2);
    nt_outbox_published(o);
    assert_false(o->undelivered_wanted);
    assert_false(o->undelivered_more);
    nt_outbox_tick(o, t2 + 1);
    assert_false(o->undelivered_wanted);

    /* An empty page: no more either. */
    nt_outbox_request_undelivered(o);
    nt_outbox_take_undelivered(o);
    nt_outbox_committed(o, t2 + 2);
    assert_false(o->undelivered_more);
    nt_outbox_tick(o, t2 + 3);
    assert_false(o->undelivered_wanted);
}

/* Only the fetched rows count towards the page, not the alerts the rules raised before. */
static void test_undelivered_page_counts_fetched_rows_only(void **state)
{
    nt_outbox_t *o = *state;
    nt_outbox_request_undelivered(o);
    collect_n(o, 1, 10); /* raised by the rules step */
    nt_outbox_take_undelivered(o);
    collect_n(o, 100, NT_OUTBOX_PAGE - 1);
    nt_outbox_committed(o, T0 + 1);
    assert_int_equal(o->alerts.n, NT_OUTBOX_PAGE + 9);
    assert_false(o->undelivered_more);
    nt_outbox_published(o);

    nt_outbox_request_undelivered(o);
    collect_n(o, 1, 10);
    nt_outbox_take_undelivered(o);
    collect_n(o, 100, NT_OUTBOX_PAGE);
    nt_outbox_committed(o, T0 + 2);
    assert_true(o->undelivered_more);
    nt_outbox_published(o);
}

/* A full page that rolled back does not ask for more: the fetch itself is still wanted. */
static void test_undelivered_full_page_aborted(void **state)
{
    nt_outbox_t *o = *state;
    nt_outbox_request_undelivered(o);
    nt_outbox_take_undelivered(o);
    collect_n(o, 1, NT_OUTBOX_PAGE);
    nt_outbox_aborted(o);
    assert_int_equal(o->alerts.n, 0);
    assert_false(o->undelivered_more);
    assert_true(o->undelivered_wanted);
    assert_int_equal(o->undelivered_at_us, T0);
}

static void test_undelivered_periodic(void **state)
{
    nt_outbox_t *o = *state;
    nt_outbox_tick(o, T0 + NT_OUTBOX_UNDELIVERED_EVERY_US - 1);
    assert_false(o->undelivered_wanted);
    nt_outbox_tick(o, T0 + NT_OUTBOX_UNDELIVERED_EVERY_US);
    assert_true(o->undelivered_wanted);

    /* Fetched at t1: the next periodic fetch counts from t1. */
    const int64_t t1 = T0 + NT_OUTBOX_UNDELIVERED_EVERY_US + 777;
    run_txn(o, t1, 3);
    assert_false(o->undelivered_wanted);
    nt_outbox_tick(o, t1 + NT_OUTBOX_UNDELIVERED_EVERY_US - 1);
    assert_false(o->undelivered_wanted);
    nt_outbox_tick(o, t1 + NT_OUTBOX_UNDELIVERED_EVERY_US);
    assert_true(o->undelivered_wanted);

    /* A fetch that rolled back does not move the period. */
    nt_outbox_take_undelivered(o);
    nt_outbox_aborted(o);
    assert_true(o->undelivered_wanted);
    assert_int_equal(o->undelivered_at_us, t1);
}

/* ---- collected alerts ------------------------------------------------------------------------ */

static void test_alerts_kept_until_published(void **state)
{
    nt_outbox_t *o = *state;
    assert_int_equal(nt_outbox_collect(o, 11, "clinic-7", "CARTRIDGE_REUSED", "{\"a\":1}"), 0);
    char clinic[16] = "clinic-8"; /* copied, not referenced */
    assert_int_equal(nt_outbox_collect(o, 12, clinic, "CLOCK_SKEW", "{}"), 0);
    memset(clinic, 'X', sizeof(clinic) - 1);
    nt_outbox_committed(o, T0);
    assert_int_equal(o->alerts.n, 2);
    assert_int_equal(o->alerts.items[0].alert_id, 11);
    assert_string_equal(o->alerts.items[0].clinic_id, "clinic-7");
    assert_string_equal(o->alerts.items[0].rule, "CARTRIDGE_REUSED");
    assert_string_equal(o->alerts.items[0].payload, "{\"a\":1}");
    assert_int_equal(o->alerts.items[1].alert_id, 12);
    assert_string_equal(o->alerts.items[1].clinic_id, "clinic-8");
    assert_string_equal(o->alerts.items[1].rule, "CLOCK_SKEW");
    /* Ticks and new deliveries do not touch them. */
    nt_outbox_tick(o, T0 + NT_OUTBOX_UNDELIVERED_EVERY_US);
    assert_int_equal(nt_outbox_delivered(o, 11), 0);
    assert_int_equal(o->alerts.n, 2);
    nt_outbox_published(o);
    assert_int_equal(o->alerts.n, 0);
}

static void test_alerts_dropped_by_aborted(void **state)
{
    nt_outbox_t *o = *state;
    collect_n(o, 1, 70); /* past the first growth */
    assert_int_equal(o->alerts.n, 70);
    assert_int_equal(o->alerts.items[69].alert_id, 70);
    nt_outbox_aborted(o);
    assert_int_equal(o->alerts.n, 0);
    collect_n(o, 100, 2);
    assert_int_equal(o->alerts.n, 2);
    assert_int_equal(o->alerts.items[0].alert_id, 100);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_empty_not_due),
        T(test_due_for_each_reason),
        T(test_first_gap_check_at_first_tick),
        T(test_gap_check_interval),
        T(test_gap_check_only_settled_by_its_txn),
        T(test_aborted_leaves_work_due),
        T(test_deliveries_forgotten_at_commit),
        T(test_deliveries_many),
        T(test_undelivered_full_page_asks_for_more),
        T(test_undelivered_page_counts_fetched_rows_only),
        T(test_undelivered_full_page_aborted),
        T(test_undelivered_periodic),
        T(test_alerts_kept_until_published),
        T(test_alerts_dropped_by_aborted),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
