/* test_isolate.c -- unit tests for isolate.h: bisecting a refused batch down to the poison. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "needletrace/isolate.h"

/* Positions: message i occupies [i * 10, i * 10 + 10). */
#define POS(i) ((uint64_t)(i)*10u)

/* Plays the sink over messages 0..n-1 where `poison` is refused (22003); batches hold at most
 * `full` messages. Returns the number of rolled-back transactions; *quarantined gets the
 * position quarantined (NT_ISOLATE_NONE when none) and *commits the committed transactions. */
static unsigned run(nt_isolate_t *x, uint32_t n, uint32_t poison, uint32_t full,
                    uint64_t *quarantined, unsigned *commits)
{
    unsigned failures = 0;
    uint32_t at = 0;
    *quarantined = NT_ISOLATE_NONE;
    *commits = 0;
    while (at < n) {
        uint32_t limit = nt_isolate_limit(x, POS(at));
        uint32_t size = full;
        if (limit != 0 && limit < size) {
            size = limit;
        }
        if (at + size > n) {
            size = n - at;
        }
        int holds_poison = poison >= at && poison < at + size;
        int is_quarantine = holds_poison && nt_isolate_is_poison(x, POS(poison));
        if (holds_poison && !is_quarantine) {
            failures++;
            assert_true(failures < 64);
            assert_int_equal(
                nt_isolate_failed(x, POS(at), POS(at + size), size, "22003", "bigint out of range"),
                NT_ISOLATE_RETRY);
            continue;
        }
        if (nt_isolate_committed(x, POS(at), POS(at + size))) {
            *quarantined = POS(poison);
        }
        (*commits)++;
        at += size;
    }
    return failures;
}

static void test_bisects_to_the_poison(void **state)
{
    static const uint32_t poisons[] = {0, 1, 2499, 2500, 4998, 4999};
    for (size_t i = 0; i < sizeof(poisons) / sizeof(poisons[0]); i++) {
        nt_isolate_t x;
        nt_isolate_init(&x);
        uint64_t q;
        unsigned commits;
        unsigned failures = run(&x, 5000, poisons[i], 5000, &q, &commits);
        print_message("poison %u: %u refusals, %u commits\n", poisons[i], failures, commits);
        assert_int_equal(q, POS(poisons[i]));
        /* about log2(5000) = 13 refusals, never one per message */
        /* at most about log2(5000) = 13 refusals and as many commits: never one per message */
        assert_true(failures >= 1 && failures <= 14);
        assert_true(commits <= 28);
        assert_int_equal(nt_isolate_limit(&x, POS(0)), 0); /* whole batches again */
        assert_false(x.stalled);
        assert_string_equal(x.detail, "SQLSTATE 22003: bigint out of range");
    }
}

static void test_a_batch_of_one(void **state)
{
    nt_isolate_t x;
    nt_isolate_init(&x);
    assert_int_equal(nt_isolate_failed(&x, POS(7), POS(8), 1, "P0001", "rule raised"),
                     NT_ISOLATE_RETRY);
    assert_true(nt_isolate_is_poison(&x, POS(7)));
    assert_false(nt_isolate_is_poison(&x, POS(8)));
    assert_int_equal(nt_isolate_limit(&x, POS(7)), 1);
    assert_int_equal(nt_isolate_committed(&x, POS(7), POS(8)), 1);
    assert_false(nt_isolate_is_poison(&x, POS(7)));
}

static void test_transient_and_operational_are_not_isolated(void **state)
{
    nt_isolate_t x;
    nt_isolate_init(&x);
    assert_int_equal(nt_isolate_failed(&x, POS(0), POS(100), 100, "40P01", "deadlock detected"),
                     NT_ISOLATE_BACKOFF);
    assert_false(x.stalled);
    assert_int_equal(nt_isolate_limit(&x, POS(0)), 0);
    assert_int_equal(nt_isolate_failed(&x, POS(0), POS(100), 100, "53100", "disk full"),
                     NT_ISOLATE_BACKOFF);
    assert_true(x.stalled);
    assert_non_null(strstr(x.stall, "53100"));
    assert_int_equal(nt_isolate_limit(&x, POS(0)), 0);
    assert_false(nt_isolate_is_poison(&x, POS(0)));
    /* a commit ends the stall */
    nt_isolate_committed(&x, POS(0), POS(100));
    assert_false(x.stalled);
}

static void test_a_failing_quarantine_row_stalls(void **state)
{
    nt_isolate_t x;
    nt_isolate_init(&x);
    assert_int_equal(nt_isolate_failed(&x, POS(3), POS(4), 1, "22021", "bad byte"),
                     NT_ISOLATE_RETRY);
    assert_int_equal(nt_isolate_failed(&x, POS(3), POS(4), 1, "22021", "bad byte"),
                     NT_ISOLATE_BACKOFF);
    assert_true(x.stalled);
    assert_non_null(strstr(x.stall, "quarantine row"));
}

static void test_everything_refused_stalls(void **state)
{
    nt_isolate_t x;
    nt_isolate_init(&x);
    unsigned quarantined = 0;
    for (uint32_t i = 0; i < 100 && !x.stalled; i++) {
        if (nt_isolate_failed(&x, POS(i), POS(i + 1), 1, "23514", "check") == NT_ISOLATE_RETRY) {
            assert_true(nt_isolate_is_poison(&x, POS(i)));
            char pen[16];
            snprintf(pen, sizeof(pen), "pen-%u", i); /* a different pen each time */
            nt_isolate_set_device(&x, pen);
            assert_int_equal(nt_isolate_committed(&x, POS(i), POS(i + 1)), 1);
            quarantined++;
        }
    }
    assert_true(x.stalled);
    assert_int_equal(quarantined, NT_ISOLATE_MAX_STREAK);
    assert_non_null(strstr(x.stall, "every message"));
}

static void test_clean_commit_resets_the_streak(void **state)
{
    nt_isolate_t x;
    nt_isolate_init(&x);
    for (unsigned round = 0; round < 3 * NT_ISOLATE_MAX_STREAK; round++) {
        uint64_t at = POS(round * 2);
        assert_int_equal(nt_isolate_failed(&x, at, at + 10, 1, "22003", "x"), NT_ISOLATE_RETRY);
        assert_int_equal(nt_isolate_committed(&x, at, at + 10), 1);
        assert_int_equal(nt_isolate_committed(&x, at + 10, at + 20), 0); /* a clean one */
    }
    assert_false(x.stalled);
}

/* One pen's backlog of refused messages is its data, however long: never a stall. */
static void test_one_pens_backlog_never_stalls(void **state)
{
    nt_isolate_t x;
    nt_isolate_init(&x);
    for (uint32_t i = 0; i < 10 * NT_ISOLATE_MAX_STREAK; i++) {
        assert_int_equal(nt_isolate_failed(&x, POS(i), POS(i + 1), 1, "22023", "bad"),
                         NT_ISOLATE_RETRY);
        nt_isolate_set_device(&x, "NP1-0-0");
        assert_int_equal(nt_isolate_committed(&x, POS(i), POS(i + 1)), 1);
    }
    assert_false(x.stalled);
}

/* The same batch refused on conflicts again and again is reported, not retried silently. */
static void test_repeated_conflicts_are_reported(void **state)
{
    nt_isolate_t x;
    nt_isolate_init(&x);
    for (unsigned i = 1; i < NT_ISOLATE_MAX_REPEAT; i++) {
        assert_int_equal(nt_isolate_failed(&x, POS(0), POS(50), 50, "55P03", "lock timeout"),
                         NT_ISOLATE_BACKOFF);
        assert_false(x.stalled);
    }
    assert_int_equal(nt_isolate_failed(&x, POS(0), POS(50), 50, "55P03", "lock timeout"),
                     NT_ISOLATE_BACKOFF);
    assert_true(x.stalled);
    assert_non_null(strstr(x.stall, "55P03"));
    nt_isolate_committed(&x, POS(0), POS(50));
    assert_false(x.stalled);
}

/* A poison passed by a commit (e.g. a checkpoint re-read after its quarantine row committed)
 * is forgotten: never a stale "quarantine row refused" stall later. */
static void test_passed_poison_is_forgotten(void **state)
{
    nt_isolate_t x;
    nt_isolate_init(&x);
    assert_int_equal(nt_isolate_failed(&x, POS(4), POS(5), 1, "22023", "bad"), NT_ISOLATE_RETRY);
    nt_isolate_committed(&x, POS(9), POS(20)); /* resumed past it */
    assert_false(nt_isolate_is_poison(&x, POS(4)));
    assert_int_equal(nt_isolate_failed(&x, POS(0), POS(30), 30, "22023", "bad"), NT_ISOLATE_RETRY);
    assert_false(x.stalled);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bisects_to_the_poison),
        cmocka_unit_test(test_a_batch_of_one),
        cmocka_unit_test(test_transient_and_operational_are_not_isolated),
        cmocka_unit_test(test_a_failing_quarantine_row_stalls),
        cmocka_unit_test(test_everything_refused_stalls),
        cmocka_unit_test(test_clean_commit_resets_the_streak),
        cmocka_unit_test(test_one_pens_backlog_never_stalls),
        cmocka_unit_test(test_repeated_conflicts_are_reported),
        cmocka_unit_test(test_passed_poison_is_forgotten),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
