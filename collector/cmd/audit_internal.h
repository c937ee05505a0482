/* audit_internal.h -- what the parts of `needletrace audit` share. */
#ifndef NEEDLETRACE_AUDIT_INTERNAL_H
#define NEEDLETRACE_AUDIT_INTERNAL_H

#include <libpq-fe.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "needletrace/digest.h"

/* A connection that joins the check of the batches' rows once it is free (the report's third,
 * after it has read the sessions started in the period): set conn (NULL: none will come) and
 * done under mu, then signal cv. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    PGconn *conn;
    int done;      /* conn is set (or none will come) */
    int exhausted; /* every piece of the check is taken: nobody waits any more */
} nt_audit_late_t;

/* The report's figures over the period's events, gathered from the rows the verification reads
 * (audit_agg.c). */
typedef struct nt_audit_agg nt_audit_agg_t;

typedef struct {
    PGconn *conn;
    PGconn *conn2; /* a second connection in the same snapshot (NULL: none): verify checks the
                    * batches' rows on both at once */
    PGconn *conn3; /* report: a third one in the same snapshot (NULL: none): it reads the
                    * sessions started in the period, then joins the verification (late) */
    nt_audit_late_t *late;          /* report: a connection that may join the batches' check */
    const char *from, *to, *clinic; /* filters of the entries checked (NULL: none) */
    size_t findings;
    int failed;          /* a query failed (printed): no verdict */
    char legacy_tx[24];  /* the genesis entry's tx: rows at or below it predate the ledger */
    FILE *out;           /* where verify writes (NULL: stdout) */
    nt_audit_agg_t *agg; /* report: the figures, gathered from the events rows checked (NULL:
                          * none gathered) */
} nt_audit_t;

/* One ledger entry as stored (text; hashes in hex). */
typedef struct {
    char collector[65], seq[24], tx[24], journal_id[24], from[24], to[24];
    int64_t n_raw, n_events, n_quarantine, n_messages;
    char root[65], prev[65], hash[65], committed[40];
} nt_audit_entry_t;

/* Prints a finding and counts it. */
void nt_audit__finding(nt_audit_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Why a query failed: res's message, else the connection's (no result: out of memory, or the
 * connection lost), else that none was given; each ends with a newline. */
const char *nt_audit__why(PGconn *conn, const PGresult *res);
/* Runs a query (results in binary when binary); NULL after printing the error. */
PGresult *nt_audit__query(nt_audit_t *a, const char *sql, int n, const char *const *values,
                          int binary);
/* Every entry (or, with filtered, those the filters select), by collector and seq; NULL after
 * printing the error. */
nt_audit_entry_t *nt_audit__entries(nt_audit_t *a, size_t *n, int filtered);
/* Rows of a batch at most (the collector's batch.max_events is 100,000 at most): stored leaves
 * longer than this many hashes are not read. */
#define NT_AUDIT_MAX_BATCH_ROWS 1048576
/* The rows an entry claims, or -1 when one of its counts is negative or they are more than
 * NT_AUDIT_MAX_BATCH_ROWS (no leaves of any length are as it says: its rows differ). */
int64_t nt_audit__claimed(const nt_audit_entry_t *e);
/* An entry's stored leaves (32 bytes each; none when longer than NT_AUDIT_MAX_BATCH_ROWS hashes,
 * a finding printed, as for leaves that are not as many as the entry counts); NULL after printing
 * the error. */
unsigned char *nt_audit__leaves(nt_audit_t *a, const nt_audit_entry_t *e, size_t *n);
/* The text an entry's hash is taken over (011_ledger.sql, ledger_entry_text). */
void nt_audit__entry_text(const nt_audit_entry_t *e, char *text, size_t len);
/* n bytes as lower-case hex into out (2n + 1 bytes, NUL-terminated). */
void nt_audit__hex(const unsigned char *in, size_t n, char *out);
/* s as a JSON string (quotes, backslashes and control characters escaped). */
void nt_audit__json_str(FILE *out, const char *s);
/* The entry's hash recomputed, and its link to prev (NULL: the first checked of its chain). */
void nt_audit__check_link(nt_audit_t *a, const nt_audit_entry_t *e, const nt_audit_entry_t *prev);
/* A digest's head still in the ledger as it was. */
void nt_audit__check_head(nt_audit_t *a, const char *digest, const nt_digest_head_t *h);
/* The rows of entry e (not the genesis) recomputed and compared with its stored leaves and root,
 * row by row, each difference named: the rows checked (0 after a failure: a->failed). */
size_t nt_audit__entry_rows(nt_audit_t *a, const nt_audit_entry_t *e);
/* The rows of the n entries sel (none the genesis) against their stored leaves, on a->conn and
 * a->conn2 at once; an entry whose rows differ in any way goes to nt_audit__entry_rows, which
 * names each difference. The rows checked; a->failed after a failure (printed). */
size_t nt_audit__batches(nt_audit_t *a, const nt_audit_entry_t *const *sel, size_t n);
/* The events rows no checked entry seals (those from before the ledger; with findings, any
 * outside the checked batches) into a->agg, which the batches' check has filled with the others:
 * the figures are of every row. 0, or -1 (printed, a->failed). */
int nt_audit__agg_rest(nt_audit_t *a);
/* The root of sorted leaves (011_ledger.sql). */
int nt_audit__root(const unsigned char *leaves, size_t n, unsigned char out[32]);
/* Chains one digest may name. */
#define NT_AUDIT_MAX_HEADS 4096

/* The columns of version 1 of the ledger's leaves, per table, as in 011_ledger.sql's ledger_rows:
 * never change them (a new version gets new lists and a new tag). */
#define NT_AUDIT_RAW_V1                                                                            \
    "r.clinic_id, r.device_serial, r.payload_sha256, r.received_at, r.topic, "                     \
    "r.payload, r.boot_id, r.event_count, r.first_seq, r.last_seq, r.device_model, "               \
    "r.firmware_version, r.collector_id, r.journal_pos, r.inserted_at, r.conflicting, "            \
    "r.legacy, r.tx"
#define NT_AUDIT_QUARANTINE_V1                                                                     \
    "q.clinic_id, q.message_key, q.received_at, q.topic, q.payload, q.payload_sha256, "            \
    "q.reason, q.detail, q.device_serial, q.collector_id, q.journal_pos, "                         \
    "q.inserted_at, q.tx"
#define NT_AUDIT_EVENTS_V1                                                                         \
    "e.clinic_id, e.device_serial, e.boot_id, e.seq, e.kind, e.device_time, e.received_at, "       \
    "e.session_id, e.payload_sha256, e.collector_id, e.operator_id, e.patient_ref, "               \
    "e.motor_seconds, e.gtin, e.lot, e.cartridge_serial, e.expiry, e.needle_count, "               \
    "e.sterile_barrier_intact, e.motor_ms, e.depth_um, e.stroke_rate_hz, e.area, e.duration_ms, "  \
    "e.battery_pct, e.temperature_dc, e.motor_seconds_total, e.fault_code, e.fault_message, "      \
    "e.inserted_at, e.tx, e.device_model"

/* One section of the audit report: its name (CSV/JSON), title (HTML) and query. */
typedef struct {
    int nparams; /* of $1 clinic, $2 from, $3 to: the first nparams */
    int lane;    /* the connection it runs on (0: a->conn, 1: a->conn2 when there is one) */
    const char *name, *title, *sql; /* sql NULL: its rows come from the report's shared query */
    const char *cols;               /* then its column names, comma-separated */
} report__section_t;

/* `audit report`: the report of the clinic (a->clinic, NULL: all) over local dates [from, to] in
 * format html|csv|json to out, its verification against digests (may be NULL). 0 or 1. */
int nt_audit__report(nt_audit_t *a, const char *format, const char *from, const char *to,
                     const char *digests, const char *pub, FILE *out);
/* The HTML of the report's sections (audit_report_html.c). 0, or 1 when out failed. */
int nt_audit__report_html(FILE *out, const report__section_t *sec, PGresult *const *res, size_t n,
                          const char *verification);

/* An array in binary, as array_recv reads it (one dimension, from 1), of elements of type oid. */
typedef struct {
    unsigned char *b;
    size_t len, cap;
    uint32_t n, oid;
    int oom;
} nt_audit_arr_t;
void nt_audit__arr_init(nt_audit_arr_t *a, uint32_t elem_oid);
/* An element: len bytes at p, or NULL (len -1). */
void nt_audit__arr_add(nt_audit_arr_t *a, const void *p, int32_t len);
void nt_audit__arr_i64(nt_audit_arr_t *a, int64_t v);
/* Ready to send: 0, or -1 (out of memory, or larger than a parameter may be). */
int nt_audit__arr_finish(nt_audit_arr_t *a);
void nt_audit__arr_free(nt_audit_arr_t *a);
/* The same for n arrays at once (their element types elem_oid[i]); finish: -1 when one fails. */
void nt_audit__arrs_init(nt_audit_arr_t *a, int n, const uint32_t *elem_oid);
int nt_audit__arrs_finish(nt_audit_arr_t *a, int n);
void nt_audit__arrs_free(nt_audit_arr_t *a, int n);

/* The figures of the events whose device time (microseconds since 2000-01-01 UTC) is in [lo, hi)
 * (their clinic's own bounds when given by nt_audit__agg_bound), of clinic (NULL: every one; it
 * must outlive the aggregate). NULL when out of memory. */
nt_audit_agg_t *nt_audit__agg_new(const char *clinic, int64_t lo, int64_t hi);
int nt_audit__agg_bound(nt_audit_agg_t *g, const char *clinic, int64_t lo, int64_t hi);
/* An empty one with g's filters (for a worker; merged back by nt_audit__agg_merge, freed after
 * it; g's bounds are not changed meanwhile). */
nt_audit_agg_t *nt_audit__agg_child(const nt_audit_agg_t *g);
/* One events row: its ncols fields (NT_AUDIT_EVENTS_V1 in order) f, their lengths (-1 NULL) in
 * len, in binary. 0, or -1 (nt_audit__agg_error says why). */
int nt_audit__agg_row(nt_audit_agg_t *g, int ncols, const unsigned char *const *f,
                      const int32_t *len);
int nt_audit__agg_merge(nt_audit_agg_t *into, nt_audit_agg_t *from);
/* Why it failed; NULL when it did not. */
const char *nt_audit__agg_error(const nt_audit_agg_t *g);
void nt_audit__agg_free(nt_audit_agg_t *g);
/* The figures as arrays in binary: per pen and boot (clinic, serial, boot, rows, and device and
 * reception times of the rows furthest ahead and behind); per clinic, area and bucket (clinic,
 * area, bucket, rows). 0, or -1. */
int nt_audit__agg_pens(const nt_audit_agg_t *g, nt_audit_arr_t out[8]);
int nt_audit__agg_depth(const nt_audit_agg_t *g, nt_audit_arr_t out[4]);
/* The sessions' depth used against the limit that limit_sql gives for $1 clinics and $2 areas (in
 * their order): into the last column of each row of started (the sessions started in the period,
 * text, clinic, pen and session first), and for every other session with events in the period
 * into out (clinic, serial, session, depth used). 0, or -1 (printed). */
int nt_audit__agg_sessions(nt_audit_agg_t *g, PGconn *conn, const char *limit_sql,
                           PGresult *started, nt_audit_arr_t out[4]);
/* The session_started rows and the cartridges (gtin, serial) mounted. */
void nt_audit__agg_counts(const nt_audit_agg_t *g, int64_t *started, int64_t *cartridges);

/* `audit prove --session`: the JSON proof to out; 0, or 1 (printed). */
int nt_audit__prove(nt_audit_t *a, const char *session, const char *digests, const char *pub,
                    FILE *out);
/* `audit verify`: 0 when nothing is found, 1 otherwise (findings printed). */
int nt_audit__verify(nt_audit_t *a, const char *digests, const char *pub);

#endif
