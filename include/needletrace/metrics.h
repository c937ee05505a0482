/* metrics.h -- process-wide counters, gauges and histograms, rendered by the HTTP listener.
 *
 * Everything runs on one libuv thread, so plain integers suffice: counting is an increment (a
 * histogram observation a scan of its bucket bounds), with no lock and no allocation. */
#ifndef NEEDLETRACE_METRICS_H
#define NEEDLETRACE_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include "needletrace/alert.h"
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

/* The severities of alerts.severity, then one for any other. */
#define NT_METRICS_SEVERITIES 4
/* Alert label sets: a rule of NT_RULE_MAP (or NT_RULE__COUNT for any other) times a severity;
 * see nt_metrics_alert_label(). */
#define NT_METRICS_ALERT_LABELS ((NT_RULE__COUNT + 1) * NT_METRICS_SEVERITIES)

/* A Prometheus histogram: observations per bucket (not cumulative; the renderer adds them up),
 * bucket i holding bound[i-1] < v <= bound[i] and the last one what is above every bound. */
#define NT_METRICS_HIST_BUCKETS 17 /* at most 16 bounds, then +Inf */
typedef struct {
    uint64_t bucket[NT_METRICS_HIST_BUCKETS];
    uint64_t count;
    uint64_t sum;
} nt_metrics_hist_t;

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
    /* alerts, by nt_metrics_alert_label() */
    uint64_t alerts_raised[NT_METRICS_ALERT_LABELS];    /* by committed transactions */
    uint64_t alerts_delivered[NT_METRICS_ALERT_LABELS]; /* PUBACKs of the broker */
    /* committed batches (nt_metrics_batch_committed) */
    nt_metrics_hist_t batch_events;    /* events per batch */
    nt_metrics_hist_t batch_commit_us; /* transaction begin to its COMMIT's answer, in µs */
    uint64_t journal_max_bytes;        /* gauge: journal.max_bytes (the fill ratio's base) */
} nt_metrics_t;

extern nt_metrics_t nt_metrics;

/* The index into alerts_raised / alerts_delivered of an alert of this rule (a name of
 * NT_RULE_MAP, or any other) whose payload (the JSON of alert_payload(), DESIGN section 7)
 * names its severity ("severity":"critical"; info, warning, critical, else other). Never fails;
 * NULLs count as other. */
unsigned nt_metrics_alert_label(const char *rule, const char *payload);

/* A batch of events events committed, commit_us after its transaction began: observed by the
 * histograms batch_events and batch_commit_us. */
void nt_metrics_batch_committed(uint64_t events, uint64_t commit_us);

/* Writes the Prometheus text exposition of nt_metrics into buf; returns its length
 * (truncated to buflen - 1). */
size_t nt_metrics_render(char *buf, size_t buflen);

#endif
