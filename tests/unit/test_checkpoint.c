/* test_checkpoint.c -- unit tests of the checkpoint against the journal (checkpoint.h): every
 * verdict over a real journal in a temp directory, the result row parser, and the messages. */
#include <ftw.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "needletrace/checkpoint.h"
#include "needletrace/common.h"
#include "needletrace/journal.h"

#define NREC 5

typedef struct {
    char tmp[128];
    char dir[192];
    nt_journal_t *j;
    uint64_t pos[NREC + 1]; /* pos[i]: record i; pos[NREC]: the end */
} fixture_t;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* A journal of NREC records, each in a segment of its own (segment_bytes of 1), the first two
 * released: positions [pos[2], pos[NREC]). */
static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    const char *base = getenv("TMPDIR");
    snprintf(f->tmp, sizeof(f->tmp), "%s/nt_test_checkpoint_XXXXXX",
             base != NULL && base[0] != '\0' ? base : "/tmp");
    assert_non_null(mkdtemp(f->tmp));
    snprintf(f->dir, sizeof(f->dir), "%s/j", f->tmp);
    nt_journal_options_t o = {.dir = f->dir, .segment_bytes = 1};
    char err[512];
    assert_int_equal(nt_journal_init(&f->j, &o, err, sizeof(err)), 0);
    const char *topic = "clinics/c1/handpieces/p1/telemetry";
    for (int i = 0; i < NREC; i++) {
        f->pos[i] = nt_journal_end(f->j);
        assert_int_equal(nt_journal_append(f->j, 1000 + i, topic, strlen(topic), "payload", 7), 0);
        assert_int_equal(nt_journal_sync(f->j), 0);
    }
    f->pos[NREC] = nt_journal_end(f->j);
    assert_int_equal(nt_journal_release(f->j, f->pos[2]), 0);
    assert_int_equal(nt_journal_start(f->j), f->pos[2]);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    nt_journal_close(f->j);
    nftw(f->tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* Compares a checkpoint (found, journal id, position; not held) with the fixture's journal. */
static nt_checkpoint_check_t compare(fixture_t *f, int found, uint64_t jid, uint64_t pos)
{
    nt_checkpoint_check_t c;
    memset(&c, 0xa5, sizeof(c));
    c.found = found;
    c.cp_journal_id = jid;
    c.cp_pos = pos;
    c.held = NT_CHECKPOINT_NONE;
    assert_int_equal(nt_checkpoint_compare(&c, f->j, UINT64_MAX), 0);
    assert_int_equal(c.journal_id, nt_journal_id(f->j));
    assert_int_equal(c.start, f->pos[2]);
    assert_int_equal(c.end, f->pos[NREC]);
    return c;
}

/* No checkpoint row, but the journal released segments: what they held was committed to some
 * database, not this one -- behind, from position 0, never a silent start at the journal's start.
 */
static void test_no_checkpoint_with_released_segments_is_behind(void **state)
{
    fixture_t *f = *state;
    nt_checkpoint_check_t c = compare(f, 0, 0, 0);
    assert_int_equal(c.verdict, NT_CHECKPOINT_BEHIND);
    assert_true(nt_checkpoint_is_mismatch(c.verdict));
    assert_int_equal(c.cp_pos, 0);
    assert_int_equal(c.cp_journal_id, nt_journal_id(f->j));
    assert_non_null(strstr(c.detail, "no checkpoint"));
}

/* Every record boundary in [start, end], the end included, is a place to resume. */
static void test_resume_at_every_boundary(void **state)
{
    fixture_t *f = *state;
    uint64_t jid = nt_journal_id(f->j);
    for (int i = 2; i <= NREC; i++) {
        nt_checkpoint_check_t c = compare(f, 1, jid, f->pos[i]);
        assert_int_equal(c.verdict, NT_CHECKPOINT_OK);
        assert_int_equal(c.resume, f->pos[i]);
        assert_false(nt_checkpoint_is_mismatch(c.verdict));
    }
}

static void test_other_journal(void **state)
{
    fixture_t *f = *state;
    nt_checkpoint_check_t c = compare(f, 1, nt_journal_id(f->j) ^ 1, f->pos[3]);
    assert_int_equal(c.verdict, NT_CHECKPOINT_OTHER_JOURNAL);
    assert_true(nt_checkpoint_is_mismatch(c.verdict));
    assert_string_equal(nt_checkpoint_verdict_name(c.verdict), "other_journal");
}

/* The journal was restored from an older copy: the database is ahead of its end. */
static void test_ahead_of_the_end(void **state)
{
    fixture_t *f = *state;
    nt_checkpoint_check_t c = compare(f, 1, nt_journal_id(f->j), f->pos[NREC] + 1);
    assert_int_equal(c.verdict, NT_CHECKPOINT_AHEAD);
    assert_true(nt_checkpoint_is_mismatch(c.verdict));
}

/* Records appended since the process opened the journal cannot be known to the database: a
 * checkpoint that falls among them, even on a record boundary, is ahead of the end it compares
 * with -- never a place to resume, which would skip the records before it. */
static void test_ahead_of_what_the_database_can_know(void **state)
{
    fixture_t *f = *state;
    nt_checkpoint_check_t c;
    memset(&c, 0, sizeof(c));
    c.found = 1;
    c.cp_journal_id = nt_journal_id(f->j);
    c.cp_pos = f->pos[4]; /* a record boundary */
    assert_int_equal(nt_checkpoint_compare(&c, f->j, f->pos[3]), 0);
    assert_int_equal(c.verdict, NT_CHECKPOINT_AHEAD);
    assert_int_equal(c.end, f->pos[3]);
    assert_int_equal(nt_checkpoint_compare(&c, f->j, f->pos[4]), 0);
    assert_int_equal(c.verdict, NT_CHECKPOINT_OK);
    assert_int_equal(c.resume, f->pos[4]);
}

/* A checkpoint held ahead of this journal stays ahead, whatever the journal is now: here the
 * checkpoint is now a record boundary of it. */
static void test_held_mismatch_stays(void **state)
{
    fixture_t *f = *state;
    nt_checkpoint_check_t c;
    memset(&c, 0, sizeof(c));
    c.found = 1;
    c.cp_journal_id = nt_journal_id(f->j);
    c.cp_pos = f->pos[4];
    c.held = NT_CHECKPOINT_AHEAD;
    c.held_journal_id = nt_journal_id(f->j);
    c.held_start = f->pos[2];
    c.held_end = f->pos[3];
    snprintf(c.held_since, sizeof(c.held_since), "2026-01-02T03:04:05.000Z");
    assert_int_equal(nt_checkpoint_compare(&c, f->j, UINT64_MAX), 0);
    assert_int_equal(c.verdict, NT_CHECKPOINT_AHEAD);
    assert_int_equal(c.end, f->pos[3]);
    char buf[1536];
    nt_checkpoint_explain(&c, "it-c1", buf, sizeof(buf));
    assert_non_null(strstr(buf, "found at 2026-01-02T03:04:05.000Z and held"));

    char nums[5][24];
    const char *params[7];
    nt_checkpoint_hold_params(&c, "it-c1", nums, params);
    assert_string_equal(params[0], "it-c1");
    assert_string_equal(params[3], "ahead");
    char want[24];
    snprintf(want, sizeof(want), "%" PRIu64, f->pos[3]);
    assert_string_equal(params[6], want);

    /* Held for another journal: this one is compared as it is. */
    c.held_journal_id = nt_journal_id(f->j) ^ 1;
    assert_int_equal(nt_checkpoint_compare(&c, f->j, UINT64_MAX), 0);
    assert_int_equal(c.verdict, NT_CHECKPOINT_OK);
}

/* The database was restored: its checkpoint is behind the oldest record left, by one record or
 * by all of them. */
static void test_behind_the_start(void **state)
{
    fixture_t *f = *state;
    for (int i = 0; i < 2; i++) {
        nt_checkpoint_check_t c = compare(f, 1, nt_journal_id(f->j), f->pos[i]);
        assert_int_equal(c.verdict, NT_CHECKPOINT_BEHIND);
        assert_true(nt_checkpoint_is_mismatch(c.verdict));
    }
}

/* Inside the journal but not where a record starts. */
static void test_not_a_record_boundary(void **state)
{
    fixture_t *f = *state;
    nt_checkpoint_check_t c = compare(f, 1, nt_journal_id(f->j), f->pos[3] + 1);
    assert_int_equal(c.verdict, NT_CHECKPOINT_NOT_RECORD);
    assert_true(nt_checkpoint_is_mismatch(c.verdict));
    assert_true(strlen(c.detail) > 0); /* the journal's own reason */
}

/* The log line names the collector, both journals, both positions, the cause, what is lost and
 * the command; the /readyz line fits its 200 bytes with the command in it. */
static void test_messages(void **state)
{
    fixture_t *f = *state;
    char buf[1536], brief[200], lost[384], id[24];
    nt_checkpoint_check_t c = compare(f, 1, nt_journal_id(f->j), f->pos[1]);
    nt_checkpoint_explain(&c, "it-c1", buf, sizeof(buf));
    assert_non_null(strstr(buf, "checkpoint of collector \"it-c1\""));
    snprintf(id, sizeof(id), "%016" PRIx64, nt_journal_id(f->j));
    assert_non_null(strstr(buf, id));
    snprintf(lost, sizeof(lost), "positions [%" PRIu64 ", %" PRIu64 ")", f->pos[1], f->pos[2]);
    assert_non_null(strstr(buf, lost));
    assert_non_null(strstr(buf, "restored from a backup"));
    assert_non_null(strstr(buf, "needletrace journal accept"));
    nt_checkpoint_brief(&c, brief, sizeof(brief));
    assert_true(strlen(brief) < sizeof(brief) - 1);
    assert_non_null(strstr(brief, "(behind)"));
    assert_non_null(strstr(brief, "needletrace journal accept"));

    c = compare(f, 1, nt_journal_id(f->j), f->pos[NREC] + 100);
    nt_checkpoint_unaccounted(&c, lost, sizeof(lost));
    assert_non_null(strstr(lost, "100 bytes"));
    assert_non_null(strstr(lost, "nothing is missing from the database"));
    nt_checkpoint_explain(&c, "it-c1", buf, sizeof(buf));
    assert_non_null(strstr(buf, "restored from an older copy"));

    c = compare(f, 1, nt_journal_id(f->j), f->pos[3]);
    nt_checkpoint_explain(&c, "it-c1", buf, sizeof(buf));
    assert_non_null(strstr(buf, "fits its journal"));
    assert_null(strstr(buf, "journal accept"));
}

/* ---- the result row -------------------------------------------------------------------------- */

/* A result of NT_CHECKPOINT_QUERY's ncols columns with nrows rows: (jid, pos) and, when held is
 * not NULL, a held mismatch (held, "7", "8", "9", "T"); NULL columns otherwise. */
static PGresult *row(int ncols, int nrows, const char *jid, const char *pos, const char *held)
{
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    assert_non_null(res);
    static char *names[8] = {"journal_id", "journal_pos", "held_mismatch", "held_journal_id",
                             "held_start", "held_end",    "held_since",    "x"};
    PGresAttDesc att[8];
    memset(att, 0, sizeof(att));
    for (int i = 0; i < ncols; i++) {
        att[i].name = names[i];
        att[i].typid = 25;
        att[i].typlen = -1;
        att[i].atttypmod = -1;
    }
    assert_true(PQsetResultAttrs(res, ncols, att));
    for (int r = 0; r < nrows; r++) {
        const char *v[8] = {jid, pos, held, "7", "8", "9", "T", "0"};
        for (int i = 0; i < ncols; i++) {
            if (i < 2 || held != NULL) {
                assert_true(PQsetvalue(res, r, i, (char *)v[i], (int)strlen(v[i])));
            } else {
                assert_true(PQsetvalue(res, r, i, NULL, -1));
            }
        }
    }
    return res;
}

static void test_from_result(void **state)
{
    (void)state;
    nt_checkpoint_check_t c;
    PGresult *res = row(7, 1, "-2", "4096", NULL);
    assert_int_equal(nt_checkpoint_from_result(&c, res), 0);
    assert_true(c.found);
    assert_int_equal(c.cp_journal_id, UINT64_MAX - 1); /* a signed bigint in the database */
    assert_int_equal(c.cp_pos, 4096);
    assert_int_equal(c.held, NT_CHECKPOINT_NONE);
    PQclear(res);

    res = row(7, 1, "1", "2", "ahead");
    assert_int_equal(nt_checkpoint_from_result(&c, res), 0);
    assert_int_equal(c.held, NT_CHECKPOINT_AHEAD);
    assert_int_equal(c.held_journal_id, 7);
    assert_int_equal(c.held_start, 8);
    assert_int_equal(c.held_end, 9);
    assert_string_equal(c.held_since, "T");
    PQclear(res);

    res = row(7, 0, NULL, NULL, NULL);
    assert_int_equal(nt_checkpoint_from_result(&c, res), 0);
    assert_false(c.found);
    PQclear(res);

    const struct {
        int ncols, nrows;
        const char *jid, *pos, *held;
    } bad[] = {
        {2, 1, "1", "2", NULL},  {8, 1, "1", "2", NULL},      {7, 2, "1", "2", NULL},
        {7, 1, "1", "-5", NULL}, {7, 1, "1x", "5", NULL},     {7, 1, "", "5", NULL},
        {7, 1, "1", "2", "ok"},  {7, 1, "1", "2", "unknown"},
    };
    for (size_t i = 0; i < NT_ARRAY_SIZE(bad); i++) {
        res = row(bad[i].ncols, bad[i].nrows, bad[i].jid, bad[i].pos, bad[i].held);
        assert_int_equal(nt_checkpoint_from_result(&c, res), NT_EDB);
        PQclear(res);
    }
}

static void test_verdict_names(void **state)
{
    (void)state;
    for (int v = NT_CHECKPOINT_NONE; v <= NT_CHECKPOINT_NOT_RECORD; v++) {
        assert_int_equal(
            nt_checkpoint_verdict_parse(nt_checkpoint_verdict_name((nt_checkpoint_verdict_t)v)), v);
    }
    assert_int_equal(nt_checkpoint_verdict_parse("nonsense"), NT_CHECKPOINT_NONE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_no_checkpoint_with_released_segments_is_behind, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_resume_at_every_boundary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_journal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ahead_of_the_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ahead_of_what_the_database_can_know, setup, teardown),
        cmocka_unit_test_setup_teardown(test_held_mismatch_stays, setup, teardown),
        cmocka_unit_test_setup_teardown(test_behind_the_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_a_record_boundary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_messages, setup, teardown),
        cmocka_unit_test(test_from_result),
        cmocka_unit_test(test_verdict_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
