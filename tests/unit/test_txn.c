/* test_txn.c -- unit tests of the batch transaction's table of steps (txn) over a fake
 * connection that records every statement, its parameters and the COPY data it is given. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/batch.h"
#include "needletrace/common.h"
#include "needletrace/outbox.h"
#include "needletrace/pqutil.h"
#include "needletrace/txn.h"

#define COLLECTOR  "collector-a"
#define JOURNAL_ID UINT64_C(424242)
#define T0         INT64_C(5000000000)

/* ---- the fake connection --------------------------------------------------------------------- */

#define MAX_STMTS 64

typedef struct {
    char sql[4096];
    int nparams;
    char params[6][4096];
} stmt_t;

typedef struct {
    stmt_t stmts[MAX_STMTS];
    int n;
    struct {
        const void *data;
        size_t len;
    } copies[16];
    int n_copies;
    int fail_send_at; /* index of the send that fails, -1 none */
    int fail_send_rc;
    int fail_put; /* put_copy returns this when != 0 */
} fake_t;

static int fake_send(void *conn, const char *sql, int nparams, const char *const *params)
{
    fake_t *f = conn;
    assert_true(f->n < MAX_STMTS);
    assert_true(nparams >= 0 && nparams <= 6);
    assert_true(strlen(sql) < sizeof(f->stmts[0].sql));
    stmt_t *s = &f->stmts[f->n];
    snprintf(s->sql, sizeof(s->sql), "%s", sql);
    s->nparams = nparams;
    for (int i = 0; i < nparams; i++) {
        assert_non_null(params[i]);
        assert_true(strlen(params[i]) < sizeof(s->params[i]));
        snprintf(s->params[i], sizeof(s->params[i]), "%s", params[i]);
    }
    if (f->n++ == f->fail_send_at) {
        return f->fail_send_rc;
    }
    return 0;
}

static int fake_put_copy(void *conn, const void *data, size_t len)
{
    fake_t *f = conn;
    assert_true(f->n_copies < 16);
    f->copies[f->n_copies].data = data;
    f->copies[f->n_copies].len = len;
    f->n_copies++;
    return f->fail_put;
}

static const nt_txn_ops_t fake_ops = {fake_send, fake_put_copy};

static const stmt_t *last_stmt(const fake_t *f)
{
    assert_true(f->n > 0);
    return &f->stmts[f->n - 1];
}

/* ---- what the server answers ----------------------------------------------------------------- */

/* A result of the alert-returning functions: ncols columns (4 is right), rows of
 * (id, clinic, rule, payload). */
static PGresult *alert_rows(int ncols, int nrows, int64_t first_id)
{
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    assert_non_null(res);
    static char *names[5] = {"alert_id", "clinic_id", "rule", "payload", "extra"};
    PGresAttDesc att[5];
    memset(att, 0, sizeof(att));
    for (int c = 0; c < ncols; c++) {
        att[c].name = names[c];
        att[c].typid = c == 0 ? 20 : 25; /* int8, text */
        att[c].typlen = c == 0 ? 8 : -1;
        att[c].atttypmod = -1;
    }
    assert_true(PQsetResultAttrs(res, ncols, att));
    for (int r = 0; r < nrows; r++) {
        char id[24], clinic[32], payload[64];
        snprintf(id, sizeof(id), "%" PRId64, first_id + r);
        snprintf(clinic, sizeof(clinic), "clinic-%d", r);
        snprintf(payload, sizeof(payload), "{\"alert_id\":%" PRId64 "}", first_id + r);
        const char *v[5] = {id, clinic, "SEQUENCE_GAP", payload, "x"};
        for (int c = 0; c < ncols; c++) {
            assert_true(PQsetvalue(res, r, c, (char *)v[c], (int)strlen(v[c])));
        }
    }
    return res;
}

typedef struct {
    int error_at;         /* index of the statement that fails, -1 none */
    const char *sqlstate; /* its SQLSTATE */
    int error2_at;        /* a second failing statement, when sqlstate2 is set */
    const char *sqlstate2;
    const char *rows_step; /* the step that returns rows, NULL none */
    int rows_ncols, rows_n;
    int64_t rows_first_id;
    int64_t deliver_during; /* an alert id acknowledged while the transaction runs, 0 none */
    const char *message;    /* the first failure's message, NULL: a generic one */
} server_t;

typedef struct {
    nt_batch_t batch;
    nt_outbox_t outbox;
    fake_t fake;
    nt_txn_t txn;
    char trace[512]; /* the step names, space-separated */
} fixture_t;

static void trace_add(fixture_t *f, const char *name)
{
    size_t n = strlen(f->trace);
    snprintf(f->trace + n, sizeof(f->trace) - n, "%s%s", n ? " " : "", name);
}

/* Runs the transaction from BEGIN to its end as the server answers. Returns nt_txn_done's last
 * result (NT_TXN_COMMITTED, NT_TXN_ROLLED_BACK or NT_E*), or nt_txn_begin's failure. */
static int drive(fixture_t *f, nt_batch_t *batch, const server_t *srv)
{
    f->trace[0] = '\0';
    int rc = nt_txn_begin(&f->txn, batch);
    if (rc != 0) {
        return rc;
    }
    for (int guard = 0; guard < MAX_STMTS; guard++) {
        const char *name = nt_txn_step_name(&f->txn);
        trace_add(f, name);
        int idx = f->fake.n - 1;
        if (strncmp(last_stmt(&f->fake)->sql, "COPY ", 5) == 0) {
            rc = nt_txn_copy_in(&f->txn);
            if (rc != 0) {
                return rc;
            }
        }
        if (srv != NULL && srv->deliver_during != 0 && strcmp(name, "delivered") == 0) {
            assert_int_equal(nt_outbox_delivered(&f->outbox, srv->deliver_during), 0);
        }
        if (srv != NULL && idx == srv->error_at) {
            nt_txn_error(&f->txn, srv->sqlstate,
                         srv->message != NULL ? srv->message : "a failure the server reported");
        } else if (srv != NULL && srv->sqlstate2 != NULL && idx == srv->error2_at) {
            nt_txn_error(&f->txn, srv->sqlstate2, "a second failure");
        } else if (srv != NULL && srv->rows_step != NULL && strcmp(name, srv->rows_step) == 0) {
            PGresult *res = alert_rows(srv->rows_ncols, srv->rows_n, srv->rows_first_id);
            nt_txn_rows(&f->txn, res);
            PQclear(res);
        }
        rc = nt_txn_done(&f->txn);
        if (rc != NT_TXN_PENDING) {
            return rc;
        }
    }
    fail_msg("the transaction did not end: %s", f->trace);
    return NT_EINVAL;
}

/* ---- a batch from journal records ------------------------------------------------------------ */

static const char topic_ok[] = "clinics/clinic-7/handpieces/HP-0001/telemetry";

/* A valid message: two device status events. */
static size_t pack_status(uint8_t *out, size_t cap)
{
    Needletrace__V1__DeviceStatus st;
    needletrace__v1__device_status__init(&st);
    st.battery_pct = 80;
    st.temperature_dc = 250;
    st.motor_seconds_total = 1000;
    Needletrace__V1__Event ev[2], *evp[2];
    for (int i = 0; i < 2; i++) {
        needletrace__v1__event__init(&ev[i]);
        ev[i].seq = 1 + (uint64_t)i;
        ev[i].device_time_ms = INT64_C(1735732800000) + i * 1000;
        ev[i].body_case = NEEDLETRACE__V1__EVENT__BODY_DEVICE_STATUS;
        ev[i].device_status = &st;
        evp[i] = &ev[i];
    }
    Needletrace__V1__Telemetry t;
    needletrace__v1__telemetry__init(&t);
    t.device_serial = "HP-0001";
    t.device_model = "MN-Pro 3";
    t.firmware_version = "2.4.1";
    t.boot_id = 7;
    t.n_events = 2;
    t.events = evp;
    assert_true(needletrace__v1__telemetry__get_packed_size(&t) <= cap);
    return needletrace__v1__telemetry__pack(&t, out);
}

static nt_journal_record_t record(uint64_t pos, const uint8_t *payload, size_t len)
{
    nt_journal_record_t r;
    r.pos = pos;
    r.next_pos = pos + 8 + 8 + 2 + strlen(topic_ok) + len;
    r.received_us = INT64_C(1735732805000000) + (int64_t)pos;
    r.topic = topic_ok;
    r.topic_len = strlen(topic_ok);
    r.payload = payload;
    r.payload_len = len;
    return r;
}

/* Fills f->batch with one valid message, and with one that is not protobuf when junk. */
static void make_batch(fixture_t *f, int junk)
{
    static uint8_t payload[1024];
    static const uint8_t garbage[] = {0xff, 0xff, 0xff};
    size_t len = pack_status(payload, sizeof(payload));
    nt_journal_record_t r1 = record(4096, payload, len);
    assert_int_equal(nt_batch_add(&f->batch, &r1), 0);
    uint64_t end = r1.next_pos;
    if (junk) {
        nt_journal_record_t r2 = record(r1.next_pos, garbage, sizeof(garbage));
        assert_int_equal(nt_batch_add(&f->batch, &r2), 0);
        end = r2.next_pos;
    }
    assert_int_equal(nt_batch_finish(&f->batch), 0);
    assert_int_equal(f->batch.accepted, 1);
    assert_int_equal(f->batch.rejected, junk ? 1 : 0);
    assert_int_equal(f->batch.end_pos, end);
    assert_true(f->batch.tables[NT_BATCH_RAW].buf.rows > 0);
    assert_true(f->batch.tables[NT_BATCH_EVENTS].buf.rows > 0);
    assert_int_equal(f->batch.tables[NT_BATCH_QUARANTINE].buf.rows, junk ? 1 : 0);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(nt_batch_init(&f->batch, COLLECTOR), 0);
    nt_outbox_init(&f->outbox, T0);
    f->fake.fail_send_at = -1;
    nt_txn_init(&f->txn, &fake_ops, &f->fake, COLLECTOR, JOURNAL_ID, &f->outbox);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    nt_batch_close(&f->batch);
    nt_outbox_close(&f->outbox);
    free(f);
    return 0;
}

/* ---- assertions on what was sent ------------------------------------------------------------- */

static void assert_copy_stmt(const fixture_t *f, int i, const char *prefix, int table)
{
    char want[4096];
    snprintf(want, sizeof(want), "COPY %s%s (%s) FROM STDIN (FORMAT binary)", prefix,
             f->batch.tables[table].table, f->batch.tables[table].columns);
    assert_string_equal(f->fake.stmts[i].sql, want);
    assert_int_equal(f->fake.stmts[i].nparams, 0);
}

/* The c-th put_copy carried exactly the finished stream of table. */
static void assert_copy_data(const fixture_t *f, int c, int table)
{
    assert_true(c < f->fake.n_copies);
    assert_ptr_equal(f->fake.copies[c].data, f->batch.tables[table].buf.data);
    assert_int_equal(f->fake.copies[c].len, f->batch.tables[table].buf.len);
}

static void assert_call(const fixture_t *f, int i, const char *sql, int nparams)
{
    assert_string_equal(f->fake.stmts[i].sql, sql);
    assert_int_equal(f->fake.stmts[i].nparams, nparams);
    assert_string_equal(f->fake.stmts[i].params[0], COLLECTOR);
}

#define SQL_RULES "SELECT alert_id, clinic_id, rule, payload FROM needletrace.evaluate_rules($1)"
#define SQL_GAPS                                                                                   \
    "SELECT alert_id, clinic_id, rule, payload FROM needletrace.check_sequence_gaps($1)"
#define SQL_UNDELIVERED                                                                            \
    "SELECT alert_id, clinic_id, rule, payload FROM needletrace.undelivered_alerts($1, $2::int)"
#define SQL_DELIVERED "SELECT needletrace.mark_alerts_delivered($1, $2::bigint[])"
#define SQL_SEAL      "SELECT needletrace.ledger_seal($1, $2::bigint, $3::bigint, $4::bigint, $5::int)"

/* The checkpoint moves from the batch's first position to its end, under this journal's id. */
static void assert_checkpoint(const fixture_t *f, int i)
{
    const stmt_t *s = &f->fake.stmts[i];
    assert_string_equal(s->sql, "SELECT needletrace.move_checkpoint_keyed($1, $2::bigint, "
                                "$3::bigint, $4::bigint, $5::boolean, $6::int)");
    assert_int_equal(s->nparams, 6);
    assert_string_equal(s->params[4], f->txn.after ? "true" : "false");
    char prev[16];
    snprintf(prev, sizeof(prev), "%" PRId32, (int32_t)((f->txn.order - 1u) & 0x7fffffffu));
    assert_string_equal(s->params[5], prev);
    assert_string_equal(s->params[0], COLLECTOR);
    char jid[24], from[24], to[24];
    snprintf(jid, sizeof(jid), "%" PRIu64, JOURNAL_ID);
    snprintf(from, sizeof(from), "%" PRIu64, f->batch.first_pos);
    snprintf(to, sizeof(to), "%" PRIu64, f->batch.end_pos);
    assert_string_equal(s->params[1], jid);
    assert_string_equal(s->params[2], from);
    assert_string_equal(s->params[3], to);
    assert_int_equal(f->batch.first_pos, 4096); /* the first record of make_batch() */
}

/* ---- (a) nothing due in the outbox ----------------------------------------------------------- */

static void test_fast_path_commit(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    assert_false(nt_outbox_due(&f->outbox));
    assert_int_equal(drive(f, &f->batch, NULL), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin copy copy checkpoint rules seal commit");
    assert_int_equal(f->fake.n, 7);
    assert_string_equal(f->fake.stmts[0].sql,
                        "BEGIN; SELECT pg_advisory_xact_lock(hashtext('" COLLECTOR
                        "'), 0); SAVEPOINT nt_fast");
    assert_int_equal(f->fake.stmts[0].nparams, 0);
    assert_copy_stmt(f, 1, "needletrace.", NT_BATCH_RAW);
    assert_copy_stmt(f, 2, "needletrace.", NT_BATCH_EVENTS);
    assert_checkpoint(f, 3);
    assert_call(f, 4, SQL_RULES, 1);
    assert_call(f, 5, SQL_SEAL, 5);
    assert_string_equal(f->fake.stmts[5].params[2], "4096"); /* the batch's journal range */
    assert_string_equal(f->fake.stmts[6].sql, "COMMIT");
    assert_int_equal(f->fake.stmts[6].nparams, 0);
    assert_int_equal(f->fake.n_copies, 2);
    assert_copy_data(f, 0, NT_BATCH_RAW);
    assert_copy_data(f, 1, NT_BATCH_EVENTS);
}

/* A batch that follows another waits at its gate before moving the checkpoint (nothing in
 * flight), moves it with p_after once the gate opens, and then goes on as usual. */
static int gate_open;
static int test_gate(void *data)
{
    (void)data;
    return gate_open;
}

static void test_gate_before_checkpoint(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    f->txn.after = 1;
    f->txn.order = 7;
    f->txn.gate = test_gate;
    gate_open = 0;
    assert_int_equal(nt_txn_begin(&f->txn, &f->batch), 0);
    /* BEGIN, two COPYs: then the gate holds the checkpoint back */
    for (int i = 0; i < 3; i++) {
        if (i > 0) {
            nt_txn_copy_in(&f->txn);
        }
        assert_int_equal(nt_txn_done(&f->txn), NT_TXN_PENDING);
    }
    assert_true(f->txn.gated);
    assert_int_equal(f->fake.n, 3);
    assert_true(nt_txn_begun(&f->txn));
    assert_int_equal(nt_txn_ungate(&f->txn), 0); /* still closed: nothing sent */
    assert_int_equal(f->fake.n, 3);
    gate_open = 1;
    assert_int_equal(nt_txn_ungate(&f->txn), 0);
    assert_int_equal(f->fake.n, 4);
    assert_checkpoint(f, 3);
    assert_int_equal(nt_txn_done(&f->txn), NT_TXN_PENDING); /* the rules */
    assert_true(nt_txn_begun(&f->txn));
    assert_int_equal(nt_txn_done(&f->txn), NT_TXN_PENDING); /* the seal */
    assert_int_equal(nt_txn_done(&f->txn), NT_TXN_PENDING); /* COMMIT */
    assert_string_equal(f->fake.stmts[6].sql, "COMMIT");
    assert_int_equal(nt_txn_done(&f->txn), NT_TXN_COMMITTED);
}

static void test_fast_path_three_tables(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 1);
    assert_int_equal(drive(f, &f->batch, NULL), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin copy copy copy checkpoint rules seal commit");
    assert_copy_stmt(f, 1, "needletrace.", NT_BATCH_RAW);
    assert_copy_stmt(f, 2, "needletrace.", NT_BATCH_EVENTS);
    assert_copy_stmt(f, 3, "needletrace.", NT_BATCH_QUARANTINE);
    assert_int_equal(f->fake.n_copies, 3);
    assert_copy_data(f, 2, NT_BATCH_QUARANTINE);
    assert_checkpoint(f, 4);
}

/* ---- (b) deliveries, gaps due and undelivered wanted ----------------------------------------- */

static void test_outbox_work_in_order(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    assert_int_equal(nt_outbox_delivered(&f->outbox, 5), 0);
    assert_int_equal(nt_outbox_delivered(&f->outbox, INT64_MAX), 0);
    assert_int_equal(nt_outbox_delivered(&f->outbox, 17), 0);
    nt_outbox_tick(&f->outbox, T0);
    nt_outbox_request_undelivered(&f->outbox);
    assert_true(f->outbox.gaps_due);

    /* A batch transaction never carries the bookkeeping, however due (issue 7: it runs in its
     * own transactions, never inside one that carries events)... */
    assert_int_equal(drive(f, &f->batch, NULL), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin copy copy checkpoint rules seal commit");
    nt_outbox_committed(&f->outbox, T0 + 5);
    assert_int_equal(f->outbox.n_delivered, 3);
    assert_true(f->outbox.gaps_due);
    assert_true(f->outbox.undelivered_wanted);

    /* ...a maintenance transaction does, in order. */
    f->fake.n = 0;
    server_t srv = {.error_at = -1, .deliver_during = 99};
    assert_int_equal(drive(f, NULL, &srv), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin delivered gaps undelivered commit");
    assert_string_equal(f->fake.stmts[0].sql, "BEGIN");
    assert_call(f, 1, SQL_DELIVERED, 2);
    assert_string_equal(f->fake.stmts[1].params[1], "{5,9223372036854775807,17}");
    assert_call(f, 2, SQL_GAPS, 1);
    assert_call(f, 3, SQL_UNDELIVERED, 2);
    char page[16];
    snprintf(page, sizeof(page), "%d", NT_OUTBOX_PAGE);
    assert_string_equal(f->fake.stmts[3].params[1], page);
    assert_string_equal(f->fake.stmts[4].sql, "COMMIT");

    /* Settled at commit; the delivery that came during the transaction stays. */
    nt_outbox_committed(&f->outbox, T0 + 10);
    assert_int_equal(f->outbox.n_delivered, 1);
    assert_int_equal(f->outbox.delivered[0], 99);
    assert_false(f->outbox.gaps_due);
    assert_false(f->outbox.undelivered_wanted);

    /* The next maintenance transaction records only that one. */
    f->fake.n = 0;
    assert_int_equal(drive(f, NULL, NULL), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin delivered commit");
    assert_string_equal(f->fake.stmts[1].params[1], "{99}");
}

/* The array literal holds any int8, however many: sized for the longest. */
static void test_delivered_literal_extremes(void **state)
{
    fixture_t *f = *state;
    char want[4096];
    size_t n = 0;
    n += (size_t)snprintf(want + n, sizeof(want) - n, "{");
    for (int i = 0; i < 100; i++) {
        int64_t id = i % 2 ? INT64_MIN : INT64_MAX;
        assert_int_equal(nt_outbox_delivered(&f->outbox, id), 0);
        n += (size_t)snprintf(want + n, sizeof(want) - n, "%s%" PRId64, i ? "," : "", id);
    }
    snprintf(want + n, sizeof(want) - n, "}");
    assert_int_equal(drive(f, NULL, NULL), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin delivered commit");
    assert_string_equal(f->fake.stmts[1].params[1], want);
}

/* ---- (c) a unique violation on the fast path ------------------------------------------------- */

static void test_unique_violation_takes_staging_path(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 1);
    server_t srv = {.error_at = 2, .sqlstate = "23505"}; /* the second COPY */
    assert_int_equal(drive(f, &f->batch, &srv), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin copy copy stage stage_copy stage_copy stage_copy merge "
                                  "checkpoint rules seal commit");
    assert_copy_stmt(f, 1, "needletrace.", NT_BATCH_RAW);
    assert_copy_stmt(f, 2, "needletrace.", NT_BATCH_EVENTS);

    const char *stage = f->fake.stmts[3].sql;
    assert_int_equal(strncmp(stage, "ROLLBACK TO SAVEPOINT nt_fast;", 30), 0);
    for (int i = 0; i < NT_BATCH__TABLES; i++) {
        char want[256];
        snprintf(want, sizeof(want),
                 "CREATE TEMP TABLE IF NOT EXISTS nt_stage_%s (LIKE needletrace.%s INCLUDING "
                 "DEFAULTS) ON COMMIT DELETE ROWS;",
                 f->batch.tables[i].table, f->batch.tables[i].table);
        assert_non_null(strstr(stage, want));
    }
    assert_copy_stmt(f, 4, "nt_stage_", NT_BATCH_RAW);
    assert_copy_stmt(f, 5, "nt_stage_", NT_BATCH_EVENTS);
    assert_copy_stmt(f, 6, "nt_stage_", NT_BATCH_QUARANTINE);
    /* Copies: raw, events (failed), then all three again. */
    assert_int_equal(f->fake.n_copies, 5);
    assert_copy_data(f, 2, NT_BATCH_RAW);
    assert_copy_data(f, 3, NT_BATCH_EVENTS);
    assert_copy_data(f, 4, NT_BATCH_QUARANTINE);

    /* events first, then the raw messages that stored an event now (or conflict), quarantine */
    const char *merge = f->fake.stmts[7].sql;
    const char *at[NT_BATCH__TABLES];
    for (int i = 0; i < NT_BATCH__TABLES; i++) {
        const nt_batch_table_t *tb = &f->batch.tables[i];
        char want[2048];
        if (i == NT_BATCH_RAW) {
            snprintf(want, sizeof(want), "INSERT INTO needletrace.raw_messages (%s, conflicting)",
                     tb->columns);
        } else if (i == NT_BATCH_EVENTS) {
            /* partitioned: the identities event_keys does not hold, once each */
            snprintf(want, sizeof(want),
                     "INSERT INTO needletrace.events (%s) SELECT %s FROM (SELECT DISTINCT ON "
                     "(s.clinic_id, s.device_serial, s.boot_id, s.seq) s.* FROM nt_stage_events s "
                     "WHERE NOT EXISTS (SELECT 1 FROM needletrace.event_keys k ",
                     tb->columns, tb->columns);
        } else {
            snprintf(want, sizeof(want),
                     "INSERT INTO needletrace.%s (%s) SELECT %s FROM nt_stage_%s ON CONFLICT DO "
                     "NOTHING;",
                     tb->table, tb->columns, tb->columns, tb->table);
        }
        at[i] = strstr(merge, want);
        assert_non_null(at[i]);
    }
    assert_true(at[NT_BATCH_EVENTS] < at[NT_BATCH_RAW] &&
                at[NT_BATCH_RAW] < at[NT_BATCH_QUARANTINE]);
    assert_non_null(strstr(merge, "bool_or(k.tx = txid_current())"));
    assert_non_null(strstr(merge, "WHERE conflicting DO NOTHING;"));
    assert_checkpoint(f, 8);
    assert_call(f, 9, SQL_RULES, 1);
    assert_call(f, 10, SQL_SEAL, 5);
    assert_string_equal(f->fake.stmts[11].sql, "COMMIT");

    /* The next transaction on the same txn takes the fast path again. */
    f->fake.n = 0;
    f->fake.n_copies = 0;
    assert_int_equal(drive(f, &f->batch, NULL), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin copy copy copy checkpoint rules seal commit");
}

/* Staging tables only for the tables with rows. */
static void test_staging_skips_empty_tables(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    server_t srv = {.error_at = 1, .sqlstate = "23505"}; /* the first COPY */
    assert_int_equal(drive(f, &f->batch, &srv), NT_TXN_COMMITTED);
    assert_string_equal(
        f->trace, "begin copy stage stage_copy stage_copy merge checkpoint rules seal commit");
    assert_null(strstr(f->fake.stmts[2].sql, "quarantine"));
    assert_null(strstr(f->fake.stmts[5].sql, "quarantine"));
    assert_non_null(strstr(f->fake.stmts[5].sql, "nt_stage_events"));
}

/* A unique violation on the staging path is not handled twice: rollback. */
static void test_unique_violation_in_stage_copy_rolls_back(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    /* The first COPY, then the second stage_copy. */
    server_t srv = {.error_at = 1, .sqlstate = "23505", .error2_at = 4, .sqlstate2 = "23505"};
    assert_int_equal(drive(f, &f->batch, &srv), NT_TXN_ROLLED_BACK);
    assert_string_equal(f->trace, "begin copy stage stage_copy stage_copy rollback");
    assert_string_equal(f->txn.error, "a second failure");
    assert_string_equal(last_stmt(&f->fake)->sql, "ROLLBACK");
}

/* A unique violation at the merge is another transaction storing the same event meanwhile: the
 * batch rolls back as transient (40001), never as the rows' fault (isolated as poison). */
static void test_unique_violation_in_merge_is_transient(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    /* The first COPY, then the merge (statement 5). */
    server_t srv = {.error_at = 1, .sqlstate = "23505", .error2_at = 5, .sqlstate2 = "23505"};
    assert_int_equal(drive(f, &f->batch, &srv), NT_TXN_ROLLED_BACK);
    assert_string_equal(f->trace, "begin copy stage stage_copy stage_copy merge rollback");
    assert_string_equal(f->txn.sqlstate, "40001");
    assert_non_null(strstr(f->txn.error, "another transaction stored some of the batch's events"));
    assert_int_equal(nt_pqutil_classify(f->txn.sqlstate), NT_PQ_TRANSIENT);
}

/* A row no partition of events takes (the default partition detached): operational (NT005), never
 * isolated as the rows' fault. */
static void test_no_partition_is_operational(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    server_t srv = {.error_at = 1,
                    .sqlstate = "23514",
                    .message = "no partition of relation \"events\" found for row"};
    assert_int_equal(drive(f, &f->batch, &srv), NT_TXN_ROLLED_BACK);
    assert_string_equal(f->txn.sqlstate, "NT005");
    assert_non_null(strstr(f->txn.error, "the events table has no partition for a row"));
    assert_int_equal(nt_pqutil_classify(f->txn.sqlstate), NT_PQ_OPERATIONAL);
}

/* Another check violation stays the rows' fault (isolated). */
static void test_check_violation_stays_data(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    server_t srv = {.error_at = 1, .sqlstate = "23514"};
    assert_int_equal(drive(f, &f->batch, &srv), NT_TXN_ROLLED_BACK);
    assert_string_equal(f->txn.sqlstate, "23514");
    assert_int_equal(nt_pqutil_classify(f->txn.sqlstate), NT_PQ_DATA);
}

/* ---- (d) any other error --------------------------------------------------------------------- */

static void test_other_error_rolls_back(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    assert_int_equal(nt_outbox_delivered(&f->outbox, 5), 0);
    nt_outbox_tick(&f->outbox, T0);
    nt_outbox_request_undelivered(&f->outbox);
    /* A maintenance transaction that fails at undelivered, after delivered and gaps were taken. */
    server_t srv = {.error_at = 3, .sqlstate = "22003"};
    assert_int_equal(drive(f, NULL, &srv), NT_TXN_ROLLED_BACK);
    assert_string_equal(f->trace, "begin delivered gaps undelivered rollback");
    assert_string_equal(last_stmt(&f->fake)->sql, "ROLLBACK");
    assert_int_equal(last_stmt(&f->fake)->nparams, 0);
    assert_string_equal(f->txn.sqlstate, "22003");
    assert_string_equal(f->txn.error, "a failure the server reported");

    nt_outbox_aborted(&f->outbox);
    assert_true(nt_outbox_due(&f->outbox));
    assert_int_equal(f->outbox.n_delivered, 1);
    assert_true(f->outbox.gaps_due);
    assert_true(f->outbox.undelivered_wanted);
    /* Even a commit right after (a batch) does not settle what the rolled back one took. */
    f->fake.n = 0;
    assert_int_equal(drive(f, &f->batch, NULL), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin copy copy checkpoint rules seal commit");
    nt_outbox_committed(&f->outbox, T0 + 1);
    assert_int_equal(f->outbox.n_delivered, 1);
    assert_true(f->outbox.gaps_due);

    /* The retry runs everything again and commits. */
    f->fake.n = 0;
    assert_int_equal(drive(f, NULL, NULL), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin delivered gaps undelivered commit");
}

static void test_error_in_copy_rolls_back(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 1);
    server_t srv = {.error_at = 1, .sqlstate = "22003"};
    assert_int_equal(drive(f, &f->batch, &srv), NT_TXN_ROLLED_BACK);
    assert_string_equal(f->trace, "begin copy rollback");
    assert_int_equal(f->fake.n_copies, 1);
}

static void test_error_in_commit_rolls_back(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    server_t srv = {.error_at = 6, .sqlstate = "40001"}; /* serialization failure at COMMIT */
    assert_int_equal(drive(f, &f->batch, &srv), NT_TXN_ROLLED_BACK);
    assert_string_equal(f->trace, "begin copy copy checkpoint rules seal commit rollback");
}

/* Only the first failure of a command is kept. */
static void test_first_error_kept(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    assert_int_equal(nt_txn_begin(&f->txn, &f->batch), 0);
    nt_txn_error(&f->txn, "42P01", "relation does not exist");
    nt_txn_error(&f->txn, "25P02", "current transaction is aborted");
    assert_string_equal(f->txn.sqlstate, "42P01");
    assert_string_equal(f->txn.error, "relation does not exist");
    assert_int_equal(nt_txn_done(&f->txn), NT_TXN_PENDING);
    assert_string_equal(nt_txn_step_name(&f->txn), "rollback");
    /* An error or rows during ROLLBACK change nothing. */
    nt_txn_error(&f->txn, "XX000", "other");
    PGresult *res = alert_rows(4, 2, 1);
    nt_txn_rows(&f->txn, res);
    PQclear(res);
    assert_int_equal(f->outbox.alerts.n, 0);
    assert_int_equal(nt_txn_done(&f->txn), NT_TXN_ROLLED_BACK);
}

/* ---- (e) maintenance transactions ------------------------------------------------------------ */

static void test_maintenance_deliveries_only(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(nt_outbox_delivered(&f->outbox, 31), 0);
    assert_int_equal(nt_outbox_delivered(&f->outbox, 32), 0);
    assert_int_equal(drive(f, NULL, NULL), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin delivered commit");
    assert_int_equal(f->fake.n, 3);
    assert_string_equal(f->fake.stmts[0].sql, "BEGIN");
    assert_int_equal(f->fake.stmts[0].nparams, 0);
    assert_call(f, 1, SQL_DELIVERED, 2);
    assert_string_equal(f->fake.stmts[1].params[1], "{31,32}");
    assert_string_equal(f->fake.stmts[2].sql, "COMMIT");
    assert_int_equal(f->fake.n_copies, 0);
    nt_outbox_committed(&f->outbox, T0);
    assert_false(nt_outbox_due(&f->outbox));
}

static void test_maintenance_gaps_and_undelivered(void **state)
{
    fixture_t *f = *state;
    nt_outbox_tick(&f->outbox, T0);
    nt_outbox_request_undelivered(&f->outbox);
    assert_int_equal(drive(f, NULL, NULL), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin gaps undelivered commit");
    assert_string_equal(f->fake.stmts[0].sql, "BEGIN");
}

/* ---- (f) alert rows -------------------------------------------------------------------------- */

static void test_rules_rows_collected(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    server_t srv = {
        .error_at = -1, .rows_step = "rules", .rows_ncols = 4, .rows_n = 3, .rows_first_id = 700};
    assert_int_equal(drive(f, &f->batch, &srv), NT_TXN_COMMITTED);
    assert_int_equal(f->outbox.alerts.n, 3);
    for (int i = 0; i < 3; i++) {
        const nt_alert_t *a = &f->outbox.alerts.items[i];
        char clinic[32], payload[64];
        snprintf(clinic, sizeof(clinic), "clinic-%d", i);
        snprintf(payload, sizeof(payload), "{\"alert_id\":%d}", 700 + i);
        assert_int_equal(a->alert_id, 700 + i);
        assert_string_equal(a->clinic_id, clinic);
        assert_string_equal(a->rule, "SEQUENCE_GAP");
        assert_string_equal(a->payload, payload);
    }
    nt_outbox_committed(&f->outbox, T0);
    assert_int_equal(f->outbox.alerts.n, 3); /* until published */
    nt_outbox_published(&f->outbox);
}

/* The undelivered page's rows count for paging; a full page asks for the next. */
static void test_undelivered_rows_page(void **state)
{
    fixture_t *f = *state;
    nt_outbox_request_undelivered(&f->outbox);
    server_t srv = {.error_at = -1,
                    .rows_step = "undelivered",
                    .rows_ncols = 4,
                    .rows_n = NT_OUTBOX_PAGE,
                    .rows_first_id = 1};
    assert_int_equal(drive(f, NULL, &srv), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin undelivered commit");
    assert_int_equal(f->outbox.alerts.n, NT_OUTBOX_PAGE);
    nt_outbox_committed(&f->outbox, T0);
    assert_true(f->outbox.undelivered_more);
    nt_outbox_published(&f->outbox);
}

/* Rows of a step that does not return alerts are not alerts. */
static void test_rows_of_other_steps_ignored(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    server_t srv = {.error_at = -1,
                    .rows_step = "checkpoint",
                    .rows_ncols = 4,
                    .rows_n = 2,
                    .rows_first_id = 1};
    assert_int_equal(drive(f, &f->batch, &srv), NT_TXN_COMMITTED);
    assert_int_equal(f->outbox.alerts.n, 0);
}

static void test_wrong_column_count_rolls_back(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    server_t srv = {
        .error_at = -1, .rows_step = "rules", .rows_ncols = 3, .rows_n = 2, .rows_first_id = 1};
    assert_int_equal(drive(f, &f->batch, &srv), NT_TXN_ROLLED_BACK);
    assert_string_equal(f->trace, "begin copy copy checkpoint rules rollback");
    assert_int_equal(f->outbox.alerts.n, 0);
    assert_string_equal(f->txn.sqlstate, "XX000");

    f->fake.n = 0;
    srv.rows_ncols = 5;
    assert_int_equal(drive(f, &f->batch, &srv), NT_TXN_ROLLED_BACK);
    assert_string_equal(f->trace, "begin copy copy checkpoint rules rollback");
    assert_int_equal(f->outbox.alerts.n, 0);
}

/* ---- (g) the connection fails ---------------------------------------------------------------- */

static void test_send_failure(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    f->fake.fail_send_rc = NT_EIO;

    f->fake.fail_send_at = 0; /* BEGIN */
    assert_int_equal(drive(f, &f->batch, NULL), NT_EIO);

    f->fake.n = 0;
    f->fake.fail_send_at = 3; /* checkpoint, sent from nt_txn_done after the second COPY */
    assert_int_equal(drive(f, &f->batch, NULL), NT_EIO);
    assert_string_equal(f->trace, "begin copy copy");

    f->fake.n = 0;
    f->fake.fail_send_at = 2; /* the second COPY, sent by the copy step again */
    assert_int_equal(drive(f, &f->batch, NULL), NT_EIO);
    assert_string_equal(f->trace, "begin copy");

    f->fake.n = 0;
    f->fake.fail_send_at = 6; /* COMMIT */
    assert_int_equal(drive(f, &f->batch, NULL), NT_EIO);
    assert_string_equal(f->trace, "begin copy copy checkpoint rules seal");
    assert_string_equal(last_stmt(&f->fake)->sql, "COMMIT");

    /* ROLLBACK itself */
    f->fake.n = 0;
    f->fake.fail_send_at = 2;
    f->fake.fail_send_rc = NT_EDB;
    server_t srv = {.error_at = 1, .sqlstate = "22003"};
    assert_int_equal(drive(f, &f->batch, &srv), NT_EDB);
    assert_string_equal(last_stmt(&f->fake)->sql, "ROLLBACK");
}

static void test_put_copy_failure(void **state)
{
    fixture_t *f = *state;
    make_batch(f, 0);
    f->fake.fail_put = NT_EIO;
    assert_int_equal(drive(f, &f->batch, NULL), NT_EIO);
    assert_string_equal(f->trace, "begin copy");
    assert_int_equal(f->fake.n_copies, 1);
}

/* A maintenance transaction runs only the kinds of bookkeeping in its mask: a kind that keeps
 * failing is left out by the sink, and the others still run. */
static void test_maintenance_mask(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(nt_outbox_delivered(&f->outbox, 7), 0);
    nt_outbox_tick(&f->outbox, T0);
    nt_outbox_request_undelivered(&f->outbox);
    assert_true(f->outbox.gaps_due);
    f->txn.maint_mask = NT_TXN_MAINT_RECORD | NT_TXN_MAINT_UNDELIVERED;
    assert_int_equal(drive(f, NULL, NULL), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin delivered undelivered commit");

    /* The step in flight names its kind (what the sink backs off when it fails). */
    f->fake.n = 0;
    f->txn.maint_mask = NT_TXN_MAINT_ALL;
    server_t srv = {.error_at = 2, .sqlstate = "22003"};
    assert_int_equal(drive(f, NULL, &srv), NT_TXN_ROLLED_BACK);
    assert_string_equal(f->trace, "begin delivered gaps rollback");
    assert_int_equal(nt_txn_step_kind(&f->txn), NT_TXN_MAINT_GAPS);
}

/* The replica's liveness: the heartbeat first (alone when nothing else is due), the stop mark
 * last (with the deliveries still waiting); neither ever rides in a batch's transaction. */
static void test_heartbeat_and_stop_mark(void **state)
{
    fixture_t *f = *state;
    f->txn.maint_mask = NT_TXN_MAINT_HEARTBEAT;
    assert_int_equal(drive(f, NULL, NULL), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin heartbeat commit");
    assert_string_equal(f->fake.stmts[1].sql, "SELECT needletrace.collector_heartbeat($1)");
    assert_int_equal(f->fake.stmts[1].nparams, 1);
    assert_string_equal(f->fake.stmts[1].params[0], COLLECTOR);

    f->fake.n = 0;
    assert_int_equal(nt_outbox_delivered(&f->outbox, 9), 0);
    f->txn.maint_mask = NT_TXN_MAINT_STOPPED | NT_TXN_MAINT_RECORD;
    assert_int_equal(drive(f, NULL, NULL), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin delivered stopped commit");
    assert_string_equal(f->fake.stmts[2].sql, "SELECT needletrace.collector_stopped($1)");

    f->fake.n = 0;
    f->txn.maint_mask = NT_TXN_MAINT_HEARTBEAT | NT_TXN_MAINT_STOPPED;
    server_t srv = {.error_at = 1, .sqlstate = "42883"};
    assert_int_equal(drive(f, NULL, &srv), NT_TXN_ROLLED_BACK);
    assert_string_equal(f->trace, "begin heartbeat rollback");
    assert_int_equal(nt_txn_step_kind(&f->txn), NT_TXN_MAINT_HEARTBEAT);

    f->fake.n = 0;
    make_batch(f, 0);
    f->txn.maint_mask = NT_TXN_MAINT_HEARTBEAT | NT_TXN_MAINT_STOPPED;
    assert_int_equal(drive(f, &f->batch, NULL), NT_TXN_COMMITTED);
    assert_string_equal(f->trace, "begin copy copy checkpoint rules seal commit");
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_fast_path_commit),
        T(test_gate_before_checkpoint),
        T(test_fast_path_three_tables),
        T(test_outbox_work_in_order),
        T(test_delivered_literal_extremes),
        T(test_unique_violation_takes_staging_path),
        T(test_staging_skips_empty_tables),
        T(test_unique_violation_in_merge_is_transient),
        T(test_no_partition_is_operational),
        T(test_check_violation_stays_data),
        T(test_unique_violation_in_stage_copy_rolls_back),
        T(test_other_error_rolls_back),
        T(test_error_in_copy_rolls_back),
        T(test_error_in_commit_rolls_back),
        T(test_first_error_kept),
        T(test_maintenance_deliveries_only),
        T(test_maintenance_gaps_and_undelivered),
        T(test_rules_rows_collected),
        T(test_undelivered_rows_page),
        T(test_rows_of_other_steps_ignored),
        T(test_wrong_column_count_rolls_back),
        T(test_send_failure),
        T(test_put_copy_failure),
        T(test_maintenance_mask),
        T(test_heartbeat_and_stop_mark),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
