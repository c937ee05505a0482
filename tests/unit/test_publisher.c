/* test_publisher.c -- unit tests of the publisher's in-flight table (open addressing with linear
 * probing) and of its topic builder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/publisher.h"

#define SLOTS NT_PUBLISHER__SLOTS

static int setup(void **state)
{
    nt_publisher__table_t *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    free(*state);
    return 0;
}

/* The home slot of id: where find points on an empty table. */
static unsigned home(int64_t id)
{
    static nt_publisher__table_t empty;
    unsigned i = nt_publisher__find(&empty, id);
    assert_true(i < SLOTS);
    return i;
}

/* Up to max ids >= *next whose home slot is slot; *next moves past the last one looked at. */
static size_t ids_with_home(unsigned slot, int64_t *out, size_t max, int64_t *next)
{
    size_t n = 0;
    for (int64_t id = *next; n < max && id < *next + 50000000; id++) {
        if (home(id) == slot) {
            out[n++] = id;
        }
        if (n == max) {
            *next = id + 1;
            return n;
        }
    }
    fail_msg("found only %zu ids with home slot %u", n, slot);
    return n;
}

/* Inserts id with mid; it must not be there yet. Returns its slot. */
static unsigned insert(nt_publisher__table_t *t, int64_t id, int mid)
{
    unsigned i = nt_publisher__find(t, id);
    assert_int_equal(t->slots[i].alert_id, 0);
    unsigned n = t->n;
    nt_publisher__put(t, i, id, mid);
    assert_int_equal(t->n, n + 1);
    return i;
}

static void assert_found(const nt_publisher__table_t *t, int64_t id, int mid)
{
    unsigned i = nt_publisher__find(t, id);
    if (t->slots[i].alert_id != id) {
        fail_msg("alert %lld not found (probe ended at slot %u)", (long long)id, i);
    }
    assert_int_equal(t->slots[i].mid, mid);
}

static void assert_absent(const nt_publisher__table_t *t, int64_t id)
{
    unsigned i = nt_publisher__find(t, id);
    assert_int_equal(t->slots[i].alert_id, 0);
}

/* The linear-probing invariant: every slot from an id's home slot to its own slot is taken
 * (otherwise a probe for it would stop early). */
static void assert_invariant(const nt_publisher__table_t *t)
{
    for (unsigned i = 0; i < SLOTS; i++) {
        int64_t id = t->slots[i].alert_id;
        if (id == 0) {
            continue;
        }
        for (unsigned j = home(id); j != i; j = (j + 1) % SLOTS) {
            if (t->slots[j].alert_id == 0) {
                fail_msg("alert %lld at slot %u, but slot %u after its home is free", (long long)id,
                         i, j);
            }
        }
    }
}

static unsigned count_used(const nt_publisher__table_t *t)
{
    unsigned n = 0;
    for (unsigned i = 0; i < SLOTS; i++) {
        n += t->slots[i].alert_id != 0;
    }
    return n;
}

/* ---- collisions ------------------------------------------------------------------------------ */

static void test_colliding_ids_probe_linearly(void **state)
{
    nt_publisher__table_t *t = *state;
    int64_t next = 1;
    int64_t ids[8];
    unsigned b = home(12345);
    assert_int_equal(ids_with_home(b, ids, 8, &next), 8);
    for (int k = 0; k < 8; k++) {
        assert_int_equal(home(ids[k]), b);
    }
    for (int k = 0; k < 8; k++) {
        assert_int_equal(insert(t, ids[k], 100 + k), (b + (unsigned)k) % SLOTS);
    }
    for (int k = 0; k < 8; k++) {
        assert_found(t, ids[k], 100 + k);
    }
    assert_int_equal(t->n, 8);
}

/* Removing from the middle of a cluster keeps every other id reachable, including ids whose
 * home slot lies inside the cluster after the removed one. */
static void check_remove_middle(nt_publisher__table_t *t, unsigned b)
{
    /* Cluster: A0 A1 B0 A2 B1 C0 A3 (A home b, B home b+1, C home b+3). */
    int64_t next = 1, a[4] = {0}, bb[2] = {0}, c[1] = {0};
    ids_with_home(b, a, 4, &next);
    next = 1;
    ids_with_home((b + 1) % SLOTS, bb, 2, &next);
    next = 1;
    ids_with_home((b + 3) % SLOTS, c, 1, &next);
    const int64_t order[7] = {a[0], a[1], bb[0], a[2], bb[1], c[0], a[3]};
    for (int k = 0; k < 7; k++) {
        assert_int_equal(insert(t, order[k], k + 1), (b + (unsigned)k) % SLOTS);
    }
    for (int victim = 0; victim < 7; victim++) {
        /* Take each position of the cluster out in turn, then put it back. */
        assert_int_equal(nt_publisher__take_mid(t, victim + 1), order[victim]);
        assert_int_equal(t->n, 6);
        assert_int_equal(count_used(t), 6);
        assert_absent(t, order[victim]);
        for (int k = 0; k < 7; k++) {
            if (k != victim) {
                assert_found(t, order[k], k + 1);
            }
        }
        assert_invariant(t);
        insert(t, order[victim], victim + 1);
        assert_int_equal(t->n, 7);
    }
}

static void test_remove_middle_of_cluster(void **state)
{
    check_remove_middle(*state, home(777));
}

/* The same across the end of the table: the cluster wraps to slot 0. */
static void test_remove_middle_of_wrapping_cluster(void **state)
{
    check_remove_middle(*state, SLOTS - 3);
}

/* Many ids crowded into a few home slots, removed in a scrambled order: after every removal,
 * everything still there is found and the table agrees with a plain list. */
static void test_crowded_random_removals(void **state)
{
    nt_publisher__table_t *t = *state;
    enum { N = 240, HOMES = 12 };
    int64_t ids[N];
    int mids[N], live[N];
    int64_t next = 1;
    for (int h = 0; h < HOMES; h++) {
        /* Homes near the end of the table, so clusters merge and wrap. */
        unsigned slot = (SLOTS - 30 + (unsigned)h * 5) % SLOTS;
        int64_t from = next;
        ids_with_home(slot, ids + h * (N / HOMES), N / HOMES, &from);
    }
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int k = 0; k < N; k++) {
        mids[k] = 1000 + k;
        live[k] = 1;
    }
    /* Insert in a scrambled order too. */
    int perm[N];
    for (int k = 0; k < N; k++) {
        perm[k] = k;
    }
    for (int k = N - 1; k > 0; k--) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int j = (int)(x % (uint64_t)(k + 1));
        int tmp = perm[k];
        perm[k] = perm[j];
        perm[j] = tmp;
    }
    for (int k = 0; k < N; k++) {
        insert(t, ids[perm[k]], mids[perm[k]]);
    }
    for (int k = 0; k < N; k++) {
        assert_found(t, ids[k], mids[k]);
    }
    for (int r = 0; r < N; r++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int k = perm[(r * 7 + (int)(x % 3)) % N];
        if (!live[k]) {
            continue;
        }
        assert_int_equal(nt_publisher__take_mid(t, mids[k]), ids[k]);
        live[k] = 0;
        unsigned want = 0;
        for (int j = 0; j < N; j++) {
            if (live[j]) {
                assert_found(t, ids[j], mids[j]);
                want++;
            } else {
                assert_absent(t, ids[j]);
            }
        }
        assert_int_equal(t->n, want);
        assert_int_equal(count_used(t), want);
        assert_invariant(t);
    }
}

/* ---- take by mid ----------------------------------------------------------------------------- */

static void test_take_mid(void **state)
{
    nt_publisher__table_t *t = *state;
    assert_int_equal(nt_publisher__take_mid(t, 1), 0);
    assert_int_equal(nt_publisher__take_mid(t, 0), 0); /* free slots have mid 0 */
    insert(t, 501, 7);
    insert(t, 502, 8);
    insert(t, 503, 9);
    assert_int_equal(nt_publisher__take_mid(t, 42), 0);
    assert_int_equal(t->n, 3);
    assert_int_equal(nt_publisher__take_mid(t, 8), 502);
    assert_int_equal(t->n, 2);
    assert_int_equal(nt_publisher__take_mid(t, 8), 0); /* only once */
    assert_absent(t, 502);
    assert_found(t, 501, 7);
    assert_found(t, 503, 9);
    assert_int_equal(nt_publisher__take_mid(t, 9), 503);
    assert_int_equal(nt_publisher__take_mid(t, 7), 501);
    assert_int_equal(t->n, 0);
    assert_int_equal(count_used(t), 0);
}

/* ---- full table ------------------------------------------------------------------------------ */

static void test_fill_to_max_in_flight(void **state)
{
    nt_publisher__table_t *t = *state;
    /* Ids as the database hands them out: consecutive, from a large start. */
    const int64_t base = INT64_C(9000000000);
    for (int k = 0; k < NT_PUBLISHER_MAX_IN_FLIGHT; k++) {
        insert(t, base + k, k + 1);
    }
    assert_int_equal(t->n, NT_PUBLISHER_MAX_IN_FLIGHT);
    assert_int_equal(count_used(t), NT_PUBLISHER_MAX_IN_FLIGHT);
    for (int k = 0; k < NT_PUBLISHER_MAX_IN_FLIGHT; k++) {
        assert_found(t, base + k, k + 1);
    }
    /* An id not in the table still ends its probe at a free slot. */
    assert_absent(t, base - 1);
    assert_absent(t, base + NT_PUBLISHER_MAX_IN_FLIGHT);
    /* Drain: odd mids first, then even, checking a sample of the rest each time. */
    for (int pass = 1; pass >= 0; pass--) {
        for (int k = 0; k < NT_PUBLISHER_MAX_IN_FLIGHT; k++) {
            if ((k + 1) % 2 == pass) {
                assert_int_equal(nt_publisher__take_mid(t, k + 1), base + k);
            }
        }
        for (int k = 0; k < NT_PUBLISHER_MAX_IN_FLIGHT; k++) {
            if ((k + 1) % 2 == pass) {
                assert_absent(t, base + k);
            } else if (pass == 1) {
                assert_found(t, base + k, k + 1);
            }
        }
    }
    assert_int_equal(t->n, 0);
    assert_int_equal(count_used(t), 0);
}

/* ---- topic ----------------------------------------------------------------------------------- */

static void test_topic(void **state)
{
    nt_alert_t a = {.alert_id = 1, .clinic_id = "clinic-7", .rule = "CARTRIDGE_REUSED"};
    const char *want = "clinics/clinic-7/alerts/CARTRIDGE_REUSED";
    char buf[NT_MAX_TOPIC_LEN];
    assert_int_equal(nt_publisher_topic(&a, buf, sizeof(buf)), 0);
    assert_string_equal(buf, want);

    /* Exactly enough room (with the NUL), and one byte less. */
    size_t need = strlen(want) + 1;
    memset(buf, '#', sizeof(buf));
    assert_int_equal(nt_publisher_topic(&a, buf, need), 0);
    assert_string_equal(buf, want);
    assert_int_equal(buf[need], '#');
    memset(buf, '#', sizeof(buf));
    assert_int_equal(nt_publisher_topic(&a, buf, need - 1), NT_ETOOBIG);
    assert_int_equal(buf[need - 1], '#'); /* nothing written past len */
    assert_int_equal(nt_publisher_topic(&a, buf, 1), NT_ETOOBIG);
    assert_int_equal(nt_publisher_topic(&a, buf, 0), NT_ETOOBIG);

    /* The longest clinic id and rule fit the MQTT topic buffer. */
    char clinic[NT_MAX_ID_LEN + 1];
    memset(clinic, 'c', NT_MAX_ID_LEN);
    clinic[NT_MAX_ID_LEN] = '\0';
    nt_alert_t b = {.alert_id = 2, .clinic_id = clinic, .rule = "NEEDLING_WITHOUT_CARTRIDGE"};
    assert_int_equal(nt_publisher_topic(&b, buf, sizeof(buf)), 0);
    assert_int_equal(strlen(buf), strlen("clinics/") + NT_MAX_ID_LEN + strlen("/alerts/") +
                                      strlen("NEEDLING_WITHOUT_CARTRIDGE"));
    assert_int_equal(strncmp(buf, "clinics/cccc", 12), 0);

    /* Values from the database that are no identifier or rule never make a topic: a clinic id
     * too long for the contract (and the buffer), one that adds a level or a wildcard, an
     * unknown rule. */
    char *huge = malloc(NT_MAX_TOPIC_LEN + 1);
    assert_non_null(huge);
    memset(huge, 'h', NT_MAX_TOPIC_LEN);
    huge[NT_MAX_TOPIC_LEN] = '\0';
    nt_alert_t c = {.alert_id = 3, .clinic_id = huge, .rule = "CLOCK_SKEW"};
    memset(buf, '#', sizeof(buf));
    assert_int_equal(nt_publisher_topic(&c, buf, sizeof(buf)), NT_EINVAL);
    assert_int_equal(buf[0], '#'); /* nothing written */
    free(huge);
    static const char *const bad_clinics[] = {"a/b", "+", "#", "", "clinic 1", "cl\xc3\xa9"};
    for (size_t i = 0; i < sizeof(bad_clinics) / sizeof(bad_clinics[0]); i++) {
        nt_alert_t d = {.alert_id = 4, .clinic_id = bad_clinics[i], .rule = "CLOCK_SKEW"};
        assert_int_equal(nt_publisher_topic(&d, buf, sizeof(buf)), NT_EINVAL);
    }
    static const char *const bad_rules[] = {"clock_skew", "CLOCK_SKEW/x", "#",
                                            "",           "A+B",          "RULE WITH SPACES"};
    for (size_t i = 0; i < sizeof(bad_rules) / sizeof(bad_rules[0]); i++) {
        nt_alert_t e = {.alert_id = 5, .clinic_id = "clinic-7", .rule = bad_rules[i]};
        assert_int_equal(nt_publisher_topic(&e, buf, sizeof(buf)), NT_EINVAL);
    }
    /* A rule a newer migration adds is published like the others. */
    nt_alert_t f = {.alert_id = 6, .clinic_id = "clinic-7", .rule = "NEW_RULE_2"};
    assert_int_equal(nt_publisher_topic(&f, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "clinics/clinic-7/alerts/NEW_RULE_2");
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_colliding_ids_probe_linearly),
        T(test_remove_middle_of_cluster),
        T(test_remove_middle_of_wrapping_cluster),
        T(test_crowded_random_removals),
        T(test_take_mid),
        T(test_fill_to_max_in_flight),
        T(test_topic),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
