/* mqttsrc.c -- the MQTT source: reads a burst of messages, journals them, syncs, then acks. */
#include "needletrace/mqttsrc.h"

#include <mosquitto.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"
#include "needletrace/mqttconn.h"
#include "needletrace/syncer.h"

/* One burst of reads is bounded so that a busy broker cannot starve the loop, and so
 * that the journal never overshoots its bound by more than one burst. */
#define MQTTSRC_BURST_MESSAGES 512
#define MQTTSRC_BURST_BYTES    (8u * 1024u * 1024u)
/* Longest wait between two tries of a journal that refuses writes. */
#define MQTTSRC_RETRY_MAX_MS 10000

struct nt_mqttsrc_s {
    nt_mqttconn_t *conn;
    nt_journal_t *journal;
    const nt_config_t *cfg;
    nt_mqttsrc_synced_cb on_synced;
    nt_mqttsrc_connected_cb on_connected;
    void *data;
    nt_mqttsrc_puback_cb on_puback;
    void *puback_data;
    uv_timer_t retry_timer; /* while the journal refuses writes: tries it again */
    int refs;               /* the connection and the retry timer; freed when both closed */
    nt_syncer_t *syncer;    /* runs the journal's fdatasync off the loop */
    nt_journal_sync_req_t sreq;
    int syncing;          /* a sync runs: no reads, no writes until it is done */
    int settling;         /* mqttsrc__sync waits for it on the loop thread */
    int force_after_sync; /* the write after it may not be held back (mqttsrc__flush force) */
    uint64_t sync_covers; /* the records appended before the running sync began */

    int full;          /* journal over its bound: PUBACKs held back (backpressure) */
    int overflow;      /* far over it (a broker ignoring the receive maximum): disconnected */
    int failed;        /* the journal refused a write or sync: never ack, connection held */
    int episode;       /* from a failure until a sync succeeds again (one ERROR log) */
    int reading;       /* inside nt_mqttconn_read (libmosquitto's callbacks) */
    unsigned retries;  /* journal retries since it failed */
    uint64_t unsynced; /* records appended since the last sync */
    uint64_t unacked;  /* messages read since the last write to the broker (PUBACKs queued) */
    uint64_t burst_bytes;
    uint64_t received;
    int64_t failed_at_us;
    char retry_error[512]; /* the last retry failure logged, "" when none */
};

static void mqttsrc__fail(nt_mqttsrc_t *m);

/* Journal bytes past which the broker is not keeping to the receive maximum: the bound plus as
 * many of the largest messages as it may send unacknowledged. */
static uint64_t mqttsrc__hard_cap(const nt_mqttsrc_t *m)
{
    return (uint64_t)m->cfg->journal_max_bytes +
           (uint64_t)m->cfg->mqtt_receive_maximum * (NT_MAX_PAYLOAD_BYTES + 1024u);
}

/* Makes every appended record durable and tells the owner. 0, or NT_EIO (then nothing
 * appended since the last successful sync may ever be acknowledged). */
static void mqttsrc__synced(nt_mqttsrc_t *m)
{
    if (m->episode) {
        m->episode = 0;
        m->retries = 0;
        nt_metrics.journal_failed = 0;
        nt_log(NT_LOG_INFO, "mqtt", "the journal takes writes again (after %lld s)",
               (long long)((nt_mono_us() - m->failed_at_us) / 1000000));
    }
    nt_metrics.journal_syncs++;
    nt_metrics.journal_end = nt_journal_end(m->journal);
    nt_metrics.journal_bytes = nt_journal_bytes(m->journal);
    m->on_synced(m, m->data);
}

/* The same, on the loop thread (after the running sync, if any, is done): for the rare paths
 * that must be durable before they return (a lost connection, a graceful stop). */
static int mqttsrc__sync(nt_mqttsrc_t *m)
{
    m->settling = 1; /* the caller writes, or not: mqttsrc__on_sync_done must not */
    nt_syncer_settle(m->syncer);
    m->settling = 0;
    if (m->failed) {
        return NT_EIO;
    }
    if (m->unsynced == 0) {
        return 0;
    }
    int rc = nt_journal_sync(m->journal);
    if (rc != 0) {
        return rc;
    }
    m->unsynced = 0;
    mqttsrc__synced(m);
    return 0;
}

/* Whether libmosquitto may write now. Its one queue holds PUBACKs, pings and our publications in
 * order; while the journal is over its bound the PUBACKs of what was read are held back, so that
 * the broker sends no more than the receive maximum -- except once per keep-alive interval
 * (mqttsrc__keepalive), so that the connection lives. Before CONNACK the queue holds no PUBACK. */
static int mqttsrc__may_write(const nt_mqttsrc_t *m)
{
    return !m->full || m->unacked == 0 || !nt_mqttconn_connected(m->conn);
}

/* Lets libmosquitto write (PUBACKs included) when allowed, or always with force. */
static int mqttsrc__write(nt_mqttsrc_t *m, int force)
{
    if (!force && !mqttsrc__may_write(m)) {
        return 0;
    }
    int rc = nt_mqttconn_write(m->conn);
    if (rc == 0 && !nt_mqttconn_want_write(m->conn)) {
        m->unacked = 0;
    }
    return rc;
}

/* Starts making every appended record durable on the sync thread; reading and writing wait for
 * it (mqttsrc__on_sync_done). 0, or NT_EIO (the journal failed: mqttsrc__fail ran). */
static int mqttsrc__sync_start(nt_mqttsrc_t *m, int force)
{
    if (nt_journal_sync_begin(m->journal, &m->sreq) != 0) {
        mqttsrc__fail(m); /* never acknowledge: the broker redelivers */
        return NT_EIO;
    }
    m->syncing = 1;
    m->force_after_sync = force;
    m->sync_covers = m->unsynced;
    nt_syncer_start(m->syncer, &m->sreq);
    return 0;
}

/* Makes every appended record durable, then lets libmosquitto write (PUBACKs included) when
 * allowed, or always with force. This is the only place that releases acknowledgements: while
 * records are not durable, the write waits for their sync (group commit: whatever was read
 * before the sync began is acknowledged by one fdatasync). Returns 0, or NT_EIO / NT_EMQTT when
 * nothing more can be written on this connection. */
static int mqttsrc__flush(nt_mqttsrc_t *m, int force)
{
    if (m->failed) {
        return NT_EIO;
    }
    if (m->syncing) {
        m->force_after_sync |= force;
        return 0;
    }
    if (m->unsynced > 0) {
        return mqttsrc__sync_start(m, force);
    }
    return mqttsrc__write(m, force);
}

static void mqttsrc__watch(nt_mqttsrc_t *m);

/* The sync thread is done (loop thread): the records it covered are durable and their PUBACKs
 * go out, or the journal failed and none ever will. */
static void mqttsrc__on_sync_done(nt_syncer_t *sy, void *data)
{
    nt_mqttsrc_t *m = data;
    m->syncing = 0;
    nt_metrics.stage_us[NT_STAGE_JOURNAL_SYNC] += (uint64_t)m->sreq.took_us;
    if (m->failed) {
        return; /* failed meanwhile: nothing of it is acknowledged */
    }
    if (nt_journal_sync_end(m->journal, &m->sreq) != 0) {
        mqttsrc__fail(m);
        return;
    }
    m->unsynced -= m->sync_covers < m->unsynced ? m->sync_covers : m->unsynced;
    m->sync_covers = 0;
    mqttsrc__synced(m);
    if (m->settling) {
        return;
    }
    int force = m->force_after_sync;
    m->force_after_sync = 0;
    if (nt_mqttconn_open(m->conn) && mqttsrc__flush(m, force) != 0) {
        return;
    }
    mqttsrc__watch(m);
}

/* Watches the socket for what the source wants now (or remembers it for the next socket). */
static void mqttsrc__watch(nt_mqttsrc_t *m)
{
    int want_read = !m->failed && !m->syncing;
    if (nt_mqttconn_open(m->conn)) {
        nt_mqttconn_watch(m->conn, want_read, !m->syncing && mqttsrc__may_write(m));
    } else {
        nt_mqttconn_want_read(m->conn, want_read);
    }
}

/* ---- a journal that cannot be written ------------------------------------------------------ */

static void mqttsrc__on_retry(uv_timer_t *t)
{
    nt_mqttsrc_t *m = t->data;
    if (!m->failed) {
        return;
    }
    if (nt_journal_resume(m->journal) != 0) {
        const char *why = nt_journal_error(m->journal);
        uint64_t delay = nt_backoff_ms(1000, MQTTSRC_RETRY_MAX_MS, m->retries++);
        int again = strcmp(why, m->retry_error) == 0;
        nt_log(again ? NT_LOG_DEBUG : NT_LOG_WARN, "mqtt",
               "the journal still cannot be written: %s; trying again in %llu ms", why,
               (unsigned long long)delay);
        snprintf(m->retry_error, sizeof(m->retry_error), "%s", why);
        uv_timer_start(&m->retry_timer, mqttsrc__on_retry, delay, 0);
        return;
    }
    m->failed = 0;
    m->retry_error[0] = '\0';
    nt_metrics.journal_bytes = nt_journal_bytes(m->journal);
    nt_log(NT_LOG_INFO, "mqtt",
           "the journal is open on a fresh segment at position %llu: reconnecting to the broker, "
           "which redelivers what was not acknowledged",
           (unsigned long long)nt_journal_end(m->journal));
    nt_mqttconn_unhold(m->conn);
}

/* The journal refused a write or sync: what was read since the last sync is not durable and its
 * PUBACKs sit in libmosquitto's queue, so nothing may be written on this connection again. Cut it
 * (the broker redelivers everything unacknowledged; libmosquitto empties its queue when it
 * reconnects), hold the reconnect, and try the journal again with backoff on a fresh segment
 * (nt_journal_resume): ENOSPC is backpressure, not an exit. */
static void mqttsrc__fail(nt_mqttsrc_t *m)
{
    if (m->failed) {
        return;
    }
    m->failed = 1;
    nt_metrics.journal_failures++;
    int first = !m->episode;
    if (first) {
        m->episode = 1;
        m->failed_at_us = nt_mono_us();
        nt_metrics.journal_failed = 1;
    }
    /* Once per episode: failing again right after a retry is the same story. */
    nt_log(first ? NT_LOG_ERROR : NT_LOG_DEBUG, "mqtt",
           "the journal cannot be written: %s; dropping the broker connection without "
           "acknowledging the %llu messages read since the last sync (the broker redelivers "
           "them) and retrying on a fresh segment until the journal takes writes again",
           nt_journal_error(m->journal), (unsigned long long)m->unsynced);
    m->unsynced = 0;
    nt_mqttconn_hold(m->conn);
    nt_mqttconn_abort(m->conn);
    if (!m->reading && nt_mqttconn_open(m->conn)) {
        nt_mqttconn_lost(m->conn, "the journal cannot be written");
    }
    uv_timer_start(&m->retry_timer, mqttsrc__on_retry,
                   nt_backoff_ms(1000, MQTTSRC_RETRY_MAX_MS, m->retries++), 0);
}

/* ---- the connection's callbacks ----------------------------------------------------------------
 */

static void mqttsrc__on_message(nt_mqttconn_t *c, const struct mosquitto_message *msg, void *data)
{
    nt_mqttsrc_t *m = data;
    m->received++;
    m->unacked++;
    if (m->failed) {
        return;
    }
    size_t topic_len = msg->topic != NULL ? strlen(msg->topic) : 0;
    size_t len = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
    if (len > NT_MAX_PAYLOAD_BYTES) {
        /* Bounded evidence: the first 256 KiB + 1 bytes reach quarantine as payload_too_large. */
        nt_log(NT_LOG_WARN, "mqtt",
               "message of %zu bytes on \"%.128s\" exceeds the %u-byte limit; journaling its "
               "first %u bytes for quarantine",
               len, msg->topic != NULL ? msg->topic : "", NT_MAX_PAYLOAD_BYTES,
               NT_MAX_PAYLOAD_BYTES + 1);
        len = NT_MAX_PAYLOAD_BYTES + 1;
    }
    int rc = nt_journal_append(m->journal, nt_now_us(), msg->topic != NULL ? msg->topic : "",
                               topic_len > 65535 ? 65535 : topic_len, msg->payload, len);
    if (rc != 0) {
        mqttsrc__fail(m);
        return;
    }
    m->unsynced++;
    m->burst_bytes += len + topic_len;
    nt_metrics.mqtt_messages_received++;
    nt_metrics.mqtt_bytes_received += len;
}

/* The connection is gone: libmosquitto drops the queued PUBACKs when it reconnects, and the
 * broker redelivers what they would have acknowledged. Records appended in a burst that never
 * synced are harmless (never acked); make them durable anyway so the counters stay honest. */
static void mqttsrc__on_lost(nt_mqttconn_t *c, void *data)
{
    nt_mqttsrc_t *m = data;
    m->unacked = 0;
    if (!m->failed && mqttsrc__sync(m) != 0) {
        mqttsrc__fail(m);
    }
}

static void mqttsrc__on_connected(nt_mqttconn_t *c, void *data)
{
    nt_mqttsrc_t *m = data;
    if (m->on_connected != NULL) {
        m->on_connected(m, m->data);
    }
}

static void mqttsrc__on_published(nt_mqttconn_t *c, int mid, int reason, void *data)
{
    nt_mqttsrc_t *m = data;
    if (m->on_puback != NULL) {
        m->on_puback(m->puback_data, mid, reason);
    }
}

/* Every second (after libmosquitto's keep-alive work): while PUBACKs are held back, ping once per
 * keep-alive interval (2 s early) ahead of them, so that the broker and libmosquitto both see the
 * connection alive; where that cannot be done (TLS), write the queue -- PUBACKs included -- once
 * per interval instead. */
static void mqttsrc__on_tick(nt_mqttconn_t *c, void *data)
{
    nt_mqttsrc_t *m = data;
    int64_t interval_us = (m->cfg->mqtt_keepalive_s - 2) * INT64_C(1000000);
    if (!mqttsrc__may_write(m) && nt_mono_us() - nt_mqttconn_last_write_us(c) >= interval_us) {
        int rc = nt_mqttconn_ping(c);
        if (rc == NT_EMQTT || (rc != 0 && mqttsrc__flush(m, 1) != 0)) {
            return; /* the connection is gone */
        }
    }
    nt_mqttsrc_poke(m);
}

static void mqttsrc__unref(nt_mqttsrc_t *m)
{
    if (--m->refs == 0) {
        free(m);
    }
}

/* The connection's handles are closed: nothing can call the source any more. */
static void mqttsrc__on_closed(nt_mqttconn_t *c, void *data)
{
    mqttsrc__unref(data);
}

static void mqttsrc__retry_closed(uv_handle_t *h)
{
    mqttsrc__unref(h->data);
}

/* Reads up to one burst of packets, journals them, syncs once, then acks them all (unless
 * PUBACKs are held back). libmosquitto reads one packet per mosquitto_loop_read() call and its
 * errno is no guide (the wake-up socketpair of threaded mode fills up), so the socket's receive
 * queue tells when the burst is over. */
static void mqttsrc__read_burst(nt_mqttsrc_t *m)
{
    uint64_t start = m->received;
    m->burst_bytes = 0;
    int rc;
    int64_t t0 = nt_mono_us();
    do {
        m->reading = 1;
        rc = nt_mqttconn_read(m->conn);
        m->reading = 0;
    } while (rc == 0 && nt_mqttconn_open(m->conn) && !m->failed &&
             m->received - start < MQTTSRC_BURST_MESSAGES && m->burst_bytes < MQTTSRC_BURST_BYTES &&
             (m->full || !nt_journal_full(m->journal)) && nt_mqttconn_pending(m->conn) > 0);
    nt_metrics.stage_us[NT_STAGE_RECEIVE] += (uint64_t)(nt_mono_us() - t0);
    if (m->failed) {
        nt_mqttconn_lost(m->conn, "the journal cannot be written");
        return;
    }
    if (rc != 0 || !nt_mqttconn_open(m->conn)) {
        return; /* whatever this burst appended was never acknowledged: redelivered */
    }
    if (!m->full && nt_journal_full(m->journal)) {
        /* Before the flush: this burst's PUBACKs are the first held back. */
        m->full = 1;
        nt_metrics.backpressure = 1;
        nt_metrics.backpressure_episodes++;
        nt_log(NT_LOG_WARN, "mqtt",
               "journal is full (%llu bytes): holding PUBACKs back until the database catches up "
               "(the broker may send at most mqtt.receive_maximum = %lld messages unacknowledged)",
               (unsigned long long)nt_journal_bytes(m->journal),
               (long long)m->cfg->mqtt_receive_maximum);
    }
    if (mqttsrc__flush(m, 0) == 0 && m->full && !m->overflow &&
        nt_journal_bytes(m->journal) > mqttsrc__hard_cap(m)) {
        /* More than a broker that keeps to the receive maximum can send (QoS 0 is not flow
         * controlled): cut the connection, acknowledging nothing more, and stay away until the
         * journal is below its bound again. The broker keeps the session. */
        m->overflow = 1;
        nt_log(NT_LOG_WARN, "mqtt",
               "journal at %llu bytes while PUBACKs are held back: the broker sends more than "
               "the receive maximum allows; disconnecting until the journal is below its bound",
               (unsigned long long)nt_journal_bytes(m->journal));
        nt_mqttconn_hold(m->conn);
        nt_mqttconn_abort(m->conn);
        nt_mqttconn_lost(m->conn, "the broker ignores the receive maximum");
    }
}

static void mqttsrc__on_io(nt_mqttconn_t *c, int status, int events, void *data)
{
    nt_mqttsrc_t *m = data;
    if (m->failed) {
        nt_mqttconn_lost(c, "the journal cannot be written");
        return;
    }
    if (status < 0) {
        events = UV_READABLE; /* let libmosquitto find out what happened on the socket */
    }
    if ((events & UV_WRITABLE) && mqttsrc__flush(m, 0) != 0) {
        return;
    }
    if ((events & UV_READABLE) && nt_mqttconn_open(c) && !m->syncing) {
        mqttsrc__read_burst(m);
    }
    mqttsrc__watch(m);
}

/* ---- public ---------------------------------------------------------------------------------- */

int nt_mqttsrc_init(uv_loop_t *loop, nt_mqttsrc_t **out, const nt_config_t *cfg,
                    nt_journal_t *journal, nt_mqttsrc_synced_cb on_synced, void *data)
{
    static const nt_mqttconn_cbs_t cbs = {
        .on_io = mqttsrc__on_io,
        .on_message = mqttsrc__on_message,
        .on_connected = mqttsrc__on_connected,
        .on_lost = mqttsrc__on_lost,
        .on_published = mqttsrc__on_published,
        .on_tick = mqttsrc__on_tick,
        .on_closed = mqttsrc__on_closed,
    };
    nt_mqttsrc_t *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        nt_log(NT_LOG_ERROR, "mqtt", "could not create the mqtt source: %s",
               nt_strerror(NT_ENOMEM));
        return NT_ENOMEM;
    }
    m->journal = journal;
    m->cfg = cfg;
    nt_metrics.journal_max_bytes = (uint64_t)cfg->journal_max_bytes;
    m->on_synced = on_synced;
    m->data = data;
    int rc = nt_syncer_init(loop, &m->syncer, mqttsrc__on_sync_done, m);
    if (rc != 0) {
        nt_log(NT_LOG_ERROR, "mqtt", "could not create the journal's sync thread: %s",
               nt_strerror(rc));
        free(m);
        return rc;
    }
    rc = nt_mqttconn_init(loop, &m->conn, cfg, &cbs, m);
    if (rc != 0) {
        nt_syncer_close(m->syncer);
        free(m);
        return rc;
    }
    uv_timer_init(loop, &m->retry_timer);
    m->retry_timer.data = m;
    m->refs = 2;
    *out = m;
    return 0;
}

void nt_mqttsrc_set_connected_cb(nt_mqttsrc_t *m, nt_mqttsrc_connected_cb on_connected)
{
    m->on_connected = on_connected;
}

void nt_mqttsrc_set_puback_cb(nt_mqttsrc_t *m, nt_mqttsrc_puback_cb cb, void *data)
{
    m->on_puback = cb;
    m->puback_data = data;
}

int nt_mqttsrc_publish(nt_mqttsrc_t *m, const char *topic, const void *payload, size_t len,
                       int retain, int *mid)
{
    int rc = nt_mqttconn_publish(m->conn, topic, payload, len, retain, mid);
    if (rc != 0) {
        return rc;
    }
    if (mqttsrc__flush(m, 0) == 0) {
        mqttsrc__watch(m);
    }
    return 0;
}

int nt_mqttsrc_start(nt_mqttsrc_t *m)
{
    if (nt_journal_failed(m->journal)) {
        /* Opened on a full disk: connect only once the journal takes writes. */
        nt_mqttconn_hold(m->conn);
        mqttsrc__fail(m);
    }
    return nt_mqttconn_start(m->conn);
}

void nt_mqttsrc_poke(nt_mqttsrc_t *m)
{
    /* Hysteresis: acknowledging resumes an eighth below the bound, so that a journal at its
     * bound does not flap (and log) at every commit. */
    uint64_t max = (uint64_t)m->cfg->journal_max_bytes;
    if (m->full && nt_journal_bytes(m->journal) <= max - max / 8) {
        m->full = 0;
        nt_metrics.backpressure = 0;
        nt_log(NT_LOG_INFO, "mqtt",
               "journal below its bound again (%llu bytes): acknowledging at full speed%s",
               (unsigned long long)nt_journal_bytes(m->journal),
               m->overflow ? "; reconnecting to the broker" : "");
        if (m->overflow) {
            m->overflow = 0;
            nt_mqttconn_unhold(m->conn);
        }
    }
    if (nt_mqttconn_open(m->conn) && nt_mqttconn_want_write(m->conn) && mqttsrc__flush(m, 0) != 0) {
        return;
    }
    mqttsrc__watch(m);
}

int nt_mqttsrc_ready(const nt_mqttsrc_t *m)
{
    return nt_mqttconn_connected(m->conn) && !m->failed;
}

const char *nt_mqttsrc_journal_failure(const nt_mqttsrc_t *m)
{
    return m->failed ? nt_journal_error(m->journal) : NULL;
}

void nt_mqttsrc_close(nt_mqttsrc_t *m)
{
    /* DISCONNECT only after everything read is durable: its write also sends the PUBACKs. */
    int graceful = nt_mqttconn_connected(m->conn) && nt_mqttconn_open(m->conn) &&
                   mqttsrc__sync(m) == 0 && mqttsrc__write(m, 1) == 0;
    nt_syncer_close(m->syncer);
    nt_mqttconn_close(m->conn, graceful);
    uv_timer_stop(&m->retry_timer);
    uv_close((uv_handle_t *)&m->retry_timer, mqttsrc__retry_closed); /* m freed once both closed */
}
