/* metrics.h -- process-wide counters and gauges, rendered by the HTTP listener.
 *
 * Everything runs on one libuv thread, so plain integers suffice. */
#ifndef NEEDLETRACE_METRICS_H
#define NEEDLETRACE_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include "needletrace/reason.h"

/* Where the collector spends its time, per stage (needletrace_stage_seconds_total{stage}). */
typedef enum {
    NT_STAGE_RECEIVE = 0,   /* reading messages from the broker and appending them to the journal */
    NT_STAGE_JOURNAL_SYNC,  /* fdatasync of the journal (on its own thread) */
    NT_STAGE_DECODE_ENCODE, /* journal records read, decoded and written as COPY rows */
    NT_STAGE_DB_COPY,       /* COPY statements (and the staging path's merge), send to result */
    NT_STAGE_DB_CHECKPOINT, /* the checkpoint move, waiting for the batch before it included */
    NT_STAGE_DB_RULES,      /* evaluate_rules */
    NT_STAGE_DB_COMMIT,     /* COMMIT */
    NT_STAGE__COUNT
} nt_stage_t;

typedef struct {
    /* mqtt source */
    uint64_t mqtt_messages_received;
    uint64_t mqtt_bytes_received;
    uint64_t mqtt_connects;
    uint64_t mqtt_connection_losses;
    int mqtt_connected;
    int backpressure; /* 1 while PUBACKs are held back because the journal is over its bound */
    uint64_t backpressure_episodes;
    int journal_failed; /* 1 while the journal refuses writes */
    uint64_t journal_failures;
    /* journal */
    uint64_t journal_syncs;
    uint64_t journal_bytes;      /* gauge */
    uint64_t journal_end;        /* gauge: durable end position */
    uint64_t journal_checkpoint; /* gauge: position committed to the database */
    /* database sink */
    int db_connected;
    uint64_t db_connects;
    uint64_t db_errors;
    uint64_t db_batches;
    uint64_t db_batches_fallback;     /* took the staging + ON CONFLICT path (duplicates) */
    uint64_t db_isolations;           /* refused batches retried smaller to find the poison */
    int db_stalled;                   /* 1 while batches fail for a reason no message causes */
    int db_checkpoint_mismatch;       /* 1 while ingest is stopped (checkpoint vs journal) */
    int db_slow;                      /* 1 from a statement cancelled as too slow to a commit */
    uint64_t db_statement_timeouts;   /* statements cancelled (SQLSTATE 57014) */
    uint64_t db_cancel_requests;      /* cancel requests sent by the watchdog */
    uint64_t db_maintenance_failures; /* alert bookkeeping transactions rolled back */
    uint64_t db_messages;             /* records committed (accepted + quarantined) */
    uint64_t db_events; /* event rows sent in committed batches (duplicates included) */
    uint64_t db_quarantined;
    uint64_t db_quarantined_by_reason[NT_REASON__COUNT];
    uint64_t db_commit_us_sum; /* time from batch start to commit */
    uint64_t db_last_commit_unix_us;
    uint64_t stage_us[NT_STAGE__COUNT]; /* time spent per stage (nt_stage_t) */
    /* http listener */
    uint64_t http_connections_open;      /* gauge */
    uint64_t http_connections_evicted;   /* closed to admit a new one at the cap */
    uint64_t http_connections_timed_out; /* header or response deadline passed */
} nt_metrics_t;

extern nt_metrics_t nt_metrics;

/* Writes the Prometheus text exposition of nt_metrics into buf; returns its length
 * (truncated to buflen - 1). */
size_t nt_metrics_render(char *buf, size_t buflen);

#endif
