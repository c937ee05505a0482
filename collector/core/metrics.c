/* metrics.c -- the process-wide counters and their Prometheus text rendering. */
#include "needletrace/metrics.h"

#include <inttypes.h>
#include <stdarg.h>

nt_metrics_t nt_metrics;

typedef struct {
    char *buf;
    size_t cap;
    size_t len;
} metrics__out_t;

static void metrics__printf(metrics__out_t *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void metrics__printf(metrics__out_t *o, const char *fmt, ...)
{
    if (o->len + 1 >= o->cap) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    if (n > 0) {
        o->len += (size_t)n;
        if (o->len >= o->cap) {
            o->len = o->cap - 1;
        }
    }
}

static void metrics__one(metrics__out_t *o, const char *name, const char *type, const char *help,
                         uint64_t value)
{
    metrics__printf(
        o, "# HELP needletrace_%s %s\n# TYPE needletrace_%s %s\nneedletrace_%s %" PRIu64 "\n", name,
        help, name, type, name, value);
}

size_t nt_metrics_render(char *buf, size_t buflen)
{
    metrics__out_t o = {buf, buflen, 0};
    const nt_metrics_t *m = &nt_metrics;
    if (buflen == 0) {
        return 0;
    }
    buf[0] = '\0';
    metrics__one(&o, "mqtt_messages_received_total", "counter", "Messages read from the broker.",
                 m->mqtt_messages_received);
    metrics__one(&o, "mqtt_bytes_received_total", "counter", "Payload bytes read from the broker.",
                 m->mqtt_bytes_received);
    metrics__one(&o, "mqtt_connects_total", "counter", "Successful broker connections.",
                 m->mqtt_connects);
    metrics__one(&o, "mqtt_connection_losses_total", "counter", "Broker connections lost.",
                 m->mqtt_connection_losses);
    metrics__one(&o, "mqtt_connected", "gauge", "1 while connected to the broker.",
                 (uint64_t)m->mqtt_connected);
    metrics__one(&o, "backpressure", "gauge",
                 "1 while PUBACKs are held back because the journal is over its bound.",
                 (uint64_t)m->backpressure);
    metrics__one(&o, "backpressure_episodes_total", "counter",
                 "Times the journal went over its bound.", m->backpressure_episodes);
    metrics__one(&o, "journal_failed", "gauge",
                 "1 while the journal refuses writes (disk full, I/O error): nothing is read.",
                 (uint64_t)m->journal_failed);
    metrics__one(&o, "journal_failures_total", "counter", "Times a journal write or sync failed.",
                 m->journal_failures);
    metrics__one(&o, "journal_syncs_total", "counter", "fdatasync calls on the journal.",
                 m->journal_syncs);
    metrics__one(&o, "journal_bytes", "gauge", "Bytes held by the journal.", m->journal_bytes);
    metrics__one(&o, "journal_end_position", "gauge", "Durable end of the journal.",
                 m->journal_end);
    metrics__one(&o, "journal_checkpoint_position", "gauge",
                 "Journal position committed to the database.", m->journal_checkpoint);
    metrics__one(&o, "db_connected", "gauge", "1 while connected to the database.",
                 (uint64_t)m->db_connected);
    metrics__one(&o, "db_connects_total", "counter", "Successful database connections.",
                 m->db_connects);
    metrics__one(&o, "db_errors_total", "counter", "Database errors (batches retried).",
                 m->db_errors);
    metrics__one(&o, "db_batches_total", "counter", "Committed batches.", m->db_batches);
    metrics__one(&o, "db_batches_fallback_total", "counter",
                 "Batches that held duplicates and took the staging path.", m->db_batches_fallback);
    metrics__one(&o, "db_isolations_total", "counter",
                 "Refused batches retried in smaller batches to isolate the message refused.",
                 m->db_isolations);
    metrics__one(&o, "db_stalled", "gauge",
                 "1 while the database refuses batches for a reason no message causes.",
                 (uint64_t)m->db_stalled);
    metrics__one(&o, "db_checkpoint_mismatch", "gauge",
                 "1 while ingest is stopped because the database checkpoint does not fit the "
                 "journal (see the log; resolve with needletrace journal accept).",
                 (uint64_t)m->db_checkpoint_mismatch);
    metrics__one(&o, "db_slow", "gauge",
                 "1 from a statement cancelled for running too long (database.statement_timeout_ms "
                 "or the watchdog) until the next commit; batches are retried smaller meanwhile.",
                 (uint64_t)m->db_slow);
    metrics__one(&o, "db_statement_timeouts_total", "counter",
                 "Statements cancelled for running too long (SQLSTATE 57014).",
                 m->db_statement_timeouts);
    metrics__one(&o, "db_cancel_requests_total", "counter",
                 "Cancel requests the watchdog sent for a statement without an answer.",
                 m->db_cancel_requests);
    metrics__one(&o, "db_maintenance_failures_total", "counter",
                 "Alert bookkeeping transactions rolled back (retried after a backoff).",
                 m->db_maintenance_failures);
    metrics__one(&o, "db_messages_total", "counter",
                 "Messages committed (accepted or quarantined).", m->db_messages);
    metrics__one(&o, "db_events_total", "counter",
                 "Event rows sent in committed batches (duplicates included).", m->db_events);
    metrics__printf(&o, "# HELP needletrace_db_quarantined_total Messages quarantined, by reason.\n"
                        "# TYPE needletrace_db_quarantined_total counter\n");
    for (int r = 1; r < NT_REASON__COUNT; r++) {
        metrics__printf(&o, "needletrace_db_quarantined_total{reason=\"%s\"} %" PRIu64 "\n",
                        nt_reason_name((nt_reason_t)r), m->db_quarantined_by_reason[r]);
    }
    metrics__one(&o, "db_last_commit_timestamp_seconds", "gauge", "Time of the last commit.",
                 m->db_last_commit_unix_us / 1000000);
    static const char *const stages[NT_STAGE__COUNT] = {
        "receive",       "journal_sync", "decode_encode", "db_copy",
        "db_checkpoint", "db_rules",     "db_commit"};
    metrics__printf(&o, "# HELP needletrace_stage_seconds_total Time spent per stage of the "
                        "pipeline (database stages: statement sent to result, both connections).\n"
                        "# TYPE needletrace_stage_seconds_total counter\n");
    for (int i = 0; i < NT_STAGE__COUNT; i++) {
        metrics__printf(&o,
                        "needletrace_stage_seconds_total{stage=\"%s\"} %" PRIu64 ".%06" PRIu64 "\n",
                        stages[i], m->stage_us[i] / 1000000, m->stage_us[i] % 1000000);
    }
    metrics__one(&o, "http_connections_open", "gauge",
                 "Connections open on the metrics and health listener.", m->http_connections_open);
    metrics__one(&o, "http_connections_evicted_total", "counter",
                 "Listener connections closed to admit a new one at the connection cap (the "
                 "oldest still waiting for its request first).",
                 m->http_connections_evicted);
    metrics__one(&o, "http_connections_timed_out_total", "counter",
                 "Listener connections closed at the header deadline (no complete request 5 s "
                 "after the accept) or the response deadline.",
                 m->http_connections_timed_out);
    return o.len;
}
