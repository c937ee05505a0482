/* metrics.c -- the process-wide counters and their Prometheus text rendering. */
#include "needletrace/metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <string.h>

#include "needletrace/common.h"

nt_metrics_t nt_metrics;

/* ---- alerts and batches, counted --------------------------------------------------------------
 */

static const char *const metrics__severities[NT_METRICS_SEVERITIES] = {"info", "warning",
                                                                       "critical", "other"};
#define METRICS__SEVERITY_OTHER (NT_METRICS_SEVERITIES - 1)

/* See metrics.h. */
unsigned nt_metrics_alert_label(const char *rule, const char *payload)
{
    static const char key[] = "\"severity\":\"";
    unsigned r = NT_RULE__COUNT;
    unsigned sev = METRICS__SEVERITY_OTHER;
    for (unsigned i = 0; rule != NULL && i < NT_RULE__COUNT; i++) {
        if (strcmp(rule, nt_alert_rules[i]) == 0) {
            r = i;
            break;
        }
    }
    /* The payload's first "severity" is the alert's own: it comes before "details". */
    const char *v = payload != NULL ? strstr(payload, key) : NULL;
    for (unsigned i = 0; v != NULL && i < METRICS__SEVERITY_OTHER; i++) {
        size_t n = strlen(metrics__severities[i]);
        if (strncmp(v + sizeof(key) - 1, metrics__severities[i], n) == 0 &&
            v[sizeof(key) - 1 + n] == '"') {
            sev = i;
            break;
        }
    }
    return r * NT_METRICS_SEVERITIES + sev;
}

/* Upper bounds of the histogram buckets, with their le labels. */
typedef struct {
    size_t n;
    uint64_t bound[NT_METRICS_HIST_BUCKETS - 1];
    const char *le[NT_METRICS_HIST_BUCKETS - 1];
} metrics__bounds_t;

/* Events per committed batch (batch.max_events is at most 100000). */
static const metrics__bounds_t metrics__batch_events_bounds = {
    13,
    {1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000},
    {"1", "10", "50", "100", "250", "500", "1000", "2500", "5000", "10000", "25000", "50000",
     "100000"},
};

/* Begin to commit, in µs (rendered in seconds). */
static const metrics__bounds_t metrics__commit_bounds = {
    16,
    {1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000,
     10000000, 30000000, 60000000, 120000000},
    {"0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
     "10", "30", "60", "120"},
};

static void metrics__observe(nt_metrics_hist_t *h, const metrics__bounds_t *b, uint64_t v)
{
    size_t i = 0;
    while (i < b->n && v > b->bound[i]) {
        i++;
    }
    h->bucket[i]++;
    h->count++;
    h->sum += v;
}

/* See metrics.h. */
void nt_metrics_batch_committed(uint64_t events, uint64_t commit_us)
{
    metrics__observe(&nt_metrics.batch_events, &metrics__batch_events_bounds, events);
    metrics__observe(&nt_metrics.batch_commit_us, &metrics__commit_bounds, commit_us);
}

/* ---- rendering ----------------------------------------------------------------------------------
 */

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

/* The metrics and health listener. */
static void metrics__render_http(metrics__out_t *o, const nt_metrics_t *m)
{
    metrics__one(o, "http_connections_open", "gauge",
                 "Connections open on the metrics and health listener.", m->http_connections_open);
    metrics__one(o, "http_connections_evicted_total", "counter",
                 "Listener connections closed to admit a new one at the connection cap (the "
                 "oldest still waiting for its request first).",
                 m->http_connections_evicted);
    metrics__one(o, "http_connections_timed_out_total", "counter",
                 "Listener connections closed at the header deadline (no complete request 5 s "
                 "after the accept) or the response deadline.",
                 m->http_connections_timed_out);
}

/* needletrace_NAME{rule,severity} of counts (by nt_metrics_alert_label): every rule of
 * NT_RULE_MAP at warning and critical, zeros included; any other label only when counted. */
static void metrics__render_alert_counts(metrics__out_t *o, const char *name, const char *help,
                                         const uint64_t *counts)
{
    metrics__printf(o, "# HELP needletrace_%s %s\n# TYPE needletrace_%s counter\n", name, help,
                    name);
    for (unsigned r = 0; r <= NT_RULE__COUNT; r++) {
        for (unsigned sev = 0; sev < NT_METRICS_SEVERITIES; sev++) {
            uint64_t n = counts[r * NT_METRICS_SEVERITIES + sev];
            int always = r < NT_RULE__COUNT && (sev == 1 || sev == 2);
            if (n == 0 && !always) {
                continue;
            }
            metrics__printf(o, "needletrace_%s{rule=\"%s\",severity=\"%s\"} %" PRIu64 "\n", name,
                            r < NT_RULE__COUNT ? nt_alert_rules[r] : "other",
                            metrics__severities[sev], n);
        }
    }
}

/* Alerts raised and delivered, by rule and severity. */
static void metrics__render_alerts(metrics__out_t *o, const nt_metrics_t *m)
{
    metrics__render_alert_counts(o, "alerts_raised_total",
                                 "Alerts raised by this collector's committed transactions, by "
                                 "rule and severity.",
                                 m->alerts_raised);
    metrics__render_alert_counts(o, "alerts_delivered_total",
                                 "Alerts the broker acknowledged (PUBACK), by rule and severity.",
                                 m->alerts_delivered);
}

/* A value in millionths (µs) as its decimal with six places ("1.250000"), for "%" PRIu64
 * ".%06" PRIu64. */
#define METRICS__MILLIONTHS(v) (v) / 1000000, (v) % 1000000

/* needletrace_NAME as a Prometheus histogram: cumulative _bucket{le} (+Inf last), _sum, _count;
 * with micro set, the observations are µs and rendered as seconds. */
static void metrics__render_hist(metrics__out_t *o, const char *name, const char *help,
                                 const nt_metrics_hist_t *h, const metrics__bounds_t *b, int micro)
{
    uint64_t cumulative = 0;
    metrics__printf(o, "# HELP needletrace_%s %s\n# TYPE needletrace_%s histogram\n", name, help,
                    name);
    for (size_t i = 0; i <= b->n; i++) {
        cumulative += h->bucket[i];
        metrics__printf(o, "needletrace_%s_bucket{le=\"%s\"} %" PRIu64 "\n", name,
                        i < b->n ? b->le[i] : "+Inf", cumulative);
    }
    if (micro) {
        metrics__printf(o, "needletrace_%s_sum %" PRIu64 ".%06" PRIu64 "\n", name,
                        METRICS__MILLIONTHS(h->sum));
    } else {
        metrics__printf(o, "needletrace_%s_sum %" PRIu64 "\n", name, h->sum);
    }
    metrics__printf(o, "needletrace_%s_count %" PRIu64 "\n", name, h->count);
}

/* The committed batches: their size and their commit latency. */
static void metrics__render_batches(metrics__out_t *o, const nt_metrics_t *m)
{
    metrics__render_hist(o, "batch_events",
                         "Events per committed batch (duplicates included; 0 for a batch of "
                         "quarantined messages only).",
                         &m->batch_events, &metrics__batch_events_bounds, 0);
    metrics__render_hist(o, "batch_commit_seconds",
                         "Time from a batch transaction's BEGIN to its COMMIT's answer.",
                         &m->batch_commit_us, &metrics__commit_bounds, 1);
}

/* The journal's fill and the reconnects to each peer. */
static void metrics__render_peers(metrics__out_t *o, const nt_metrics_t *m)
{
    uint64_t max = m->journal_max_bytes;
    /* parts per million, rounded (journal.max_bytes is at most 1 TiB: no overflow) */
    uint64_t ppm = max > 0 ? (m->journal_bytes * 1000000 + max / 2) / max : 0;
    metrics__printf(o,
                    "# HELP needletrace_journal_fill_ratio Journal bytes over journal.max_bytes "
                    "(1 and above: backpressure).\n"
                    "# TYPE needletrace_journal_fill_ratio gauge\n"
                    "needletrace_journal_fill_ratio %" PRIu64 ".%06" PRIu64 "\n",
                    METRICS__MILLIONTHS(ppm));
    metrics__printf(o,
                    "# HELP needletrace_reconnects_total Connections made again after one was "
                    "up, by peer (the database: its first connection).\n"
                    "# TYPE needletrace_reconnects_total counter\n"
                    "needletrace_reconnects_total{peer=\"mqtt\"} %" PRIu64 "\n"
                    "needletrace_reconnects_total{peer=\"database\"} %" PRIu64 "\n",
                    m->mqtt_connects > 0 ? m->mqtt_connects - 1 : 0,
                    m->db_connects > 0 ? m->db_connects - 1 : 0);
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
    metrics__render_http(&o, m);
    metrics__render_alerts(&o, m);
    metrics__render_batches(&o, m);
    metrics__render_peers(&o, m);
    return o.len;
}
