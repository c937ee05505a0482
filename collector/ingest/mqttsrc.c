/* mqttsrc.c -- the MQTT source: reads a burst of messages, journals them, syncs, then acks. */
#include "needletrace/mqttsrc.h"

#include <mosquitto.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"
#include "needletrace/mqttconn.h"

/* One burst of reads is bounded so that a busy broker cannot starve the loop, and so
 * that the journal never overshoots its bound by more than one burst. */
#define MQTTSRC_BURST_MESSAGES 4096
#define MQTTSRC_BURST_BYTES    (8u * 1024u * 1024u)

struct nt_mqttsrc_s {
    nt_mqttconn_t *conn;
    nt_journal_t *journal;
    nt_mqttsrc_synced_cb on_synced;
    nt_mqttsrc_connected_cb on_connected;
    nt_mqttsrc_failed_cb on_failed;
    void *data;
    nt_mqttsrc_puback_cb on_puback;
    void *puback_data;

    int paused;         /* nt_mqttsrc_pause: never read again */
    int full;           /* journal at its bound: reading suspended */
    int journal_failed; /* an append or sync failed: never ack, drop the connection */
    uint64_t unsynced;  /* records appended since the last sync */
    uint64_t burst_bytes;
    uint64_t received;
};

/* Makes every appended record durable and tells the owner. 0, or NT_EIO (then nothing
 * appended since the last successful sync may ever be acknowledged). */
static int mqttsrc__sync(nt_mqttsrc_t *m)
{
    if (m->unsynced == 0) {
        return 0;
    }
    int rc = nt_journal_sync(m->journal);
    if (rc != 0) {
        return rc;
    }
    m->unsynced = 0;
    nt_metrics.journal_syncs++;
    nt_metrics.journal_end = nt_journal_end(m->journal);
    nt_metrics.journal_bytes = nt_journal_bytes(m->journal);
    m->on_synced(m, m->data);
    return 0;
}

/* Makes every appended record durable, then lets libmosquitto write (PUBACKs included).
 * This is the only place that releases acknowledgements. Returns 0, or NT_EIO / NT_EMQTT
 * when nothing more can be written on this connection. */
static int mqttsrc__flush(nt_mqttsrc_t *m)
{
    if (m->journal_failed) {
        return NT_EIO;
    }
    int rc = mqttsrc__sync(m);
    if (rc != 0) {
        /* Never acknowledge: cut the connection so the broker redelivers. */
        m->journal_failed = 1;
        nt_log(NT_LOG_ERROR, "mqtt",
               "could not sync the journal: %s; dropping the broker connection without "
               "acknowledging %llu messages",
               nt_journal_error(m->journal), (unsigned long long)m->unsynced);
        nt_mqttconn_abort(m->conn);
        return NT_EIO;
    }
    return nt_mqttconn_write(m->conn);
}

/* Watches the socket for what the source wants now (or remembers it for the next socket). */
static void mqttsrc__watch(nt_mqttsrc_t *m)
{
    int want_read = !m->paused && !m->full;
    if (nt_mqttconn_open(m->conn)) {
        nt_mqttconn_watch(m->conn, want_read);
    } else {
        nt_mqttconn_want_read(m->conn, want_read);
    }
}

static void mqttsrc__on_message(nt_mqttconn_t *c, const struct mosquitto_message *msg, void *data)
{
    nt_mqttsrc_t *m = data;
    m->received++;
    if (m->journal_failed) {
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
        m->journal_failed = 1;
        nt_log(NT_LOG_ERROR, "mqtt",
               "could not append to the journal: %s; dropping the broker connection without "
               "acknowledging",
               nt_journal_error(m->journal));
        nt_mqttconn_abort(m->conn);
        return;
    }
    m->unsynced++;
    m->burst_bytes += len + topic_len;
    nt_metrics.mqtt_messages_received++;
    nt_metrics.mqtt_bytes_received += len;
}

/* The connection is gone. Records appended in a burst that never synced are harmless (never
 * acked): the broker redelivers them. Make them durable anyway so the counters stay honest. */
static void mqttsrc__on_lost(nt_mqttconn_t *c, void *data)
{
    nt_mqttsrc_t *m = data;
    if (!m->journal_failed && mqttsrc__sync(m) != 0) {
        nt_log(NT_LOG_ERROR, "mqtt",
               "could not sync the journal: %s; the broker redelivers the %llu unacknowledged "
               "messages",
               nt_journal_error(m->journal), (unsigned long long)m->unsynced);
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

static void mqttsrc__on_tick(nt_mqttconn_t *c, void *data)
{
    nt_mqttsrc_poke(data);
}

/* The connection's handles are closed: nothing can call the source any more. */
static void mqttsrc__on_closed(nt_mqttconn_t *c, void *data)
{
    free(data);
}

/* Reads up to one burst of packets, journals them, syncs once, then acks them all.
 * libmosquitto reads one packet per mosquitto_loop_read() call and its errno is no
 * guide (the wake-up socketpair of threaded mode fills up), so the socket's receive
 * queue tells when the burst is over. */
static void mqttsrc__read_burst(nt_mqttsrc_t *m)
{
    uint64_t start = m->received;
    m->burst_bytes = 0;
    do {
        if (nt_mqttconn_read(m->conn) != 0) {
            return; /* whatever this burst appended was never acknowledged: redelivered */
        }
    } while (nt_mqttconn_open(m->conn) && !m->journal_failed &&
             m->received - start < MQTTSRC_BURST_MESSAGES && m->burst_bytes < MQTTSRC_BURST_BYTES &&
             !nt_journal_full(m->journal) && nt_mqttconn_pending(m->conn) > 0);
    if (!nt_mqttconn_open(m->conn) || mqttsrc__flush(m) != 0) {
        return;
    }
    if (!m->full && nt_journal_full(m->journal)) {
        m->full = 1;
        nt_metrics.backpressure = 1;
        nt_metrics.backpressure_episodes++;
        nt_log(NT_LOG_WARN, "mqtt",
               "journal is full (%llu bytes): pausing reads from the broker until the database "
               "catches up",
               (unsigned long long)nt_journal_bytes(m->journal));
    }
}

/* The journal refused a write: nothing read since the last sync is acknowledged; drop the
 * connection (the broker redelivers), never reconnect, and let the owner stop the process. */
static void mqttsrc__journal_failed(nt_mqttsrc_t *m)
{
    nt_mqttconn_hold(m->conn);
    nt_mqttconn_lost(m->conn, "the journal cannot be written");
    if (m->on_failed != NULL) {
        nt_mqttsrc_failed_cb cb = m->on_failed;
        m->on_failed = NULL;
        cb(m, m->data);
    }
}

static void mqttsrc__on_io(nt_mqttconn_t *c, int status, int events, void *data)
{
    nt_mqttsrc_t *m = data;
    if (m->journal_failed) {
        mqttsrc__journal_failed(m);
        return;
    }
    if (status < 0) {
        events = UV_READABLE; /* let libmosquitto find out what happened on the socket */
    }
    if ((events & UV_WRITABLE) && mqttsrc__flush(m) != 0) {
        return;
    }
    if ((events & UV_READABLE) && nt_mqttconn_open(c)) {
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
    m->on_synced = on_synced;
    m->data = data;
    int rc = nt_mqttconn_init(loop, &m->conn, cfg, &cbs, m);
    if (rc != 0) {
        free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void nt_mqttsrc_set_callbacks(nt_mqttsrc_t *m, nt_mqttsrc_connected_cb on_connected,
                              nt_mqttsrc_failed_cb on_failed)
{
    m->on_connected = on_connected;
    m->on_failed = on_failed;
}

void nt_mqttsrc_set_puback_cb(nt_mqttsrc_t *m, nt_mqttsrc_puback_cb cb, void *data)
{
    m->on_puback = cb;
    m->puback_data = data;
}

int nt_mqttsrc_publish(nt_mqttsrc_t *m, const char *topic, const void *payload, size_t len,
                       int *mid)
{
    int rc = nt_mqttconn_publish(m->conn, topic, payload, len, mid);
    if (rc != 0) {
        return rc;
    }
    if (mqttsrc__flush(m) == 0) {
        mqttsrc__watch(m);
    }
    return 0;
}

int nt_mqttsrc_start(nt_mqttsrc_t *m)
{
    return nt_mqttconn_start(m->conn);
}

void nt_mqttsrc_poke(nt_mqttsrc_t *m)
{
    if (m->full && !nt_journal_full(m->journal)) {
        m->full = 0;
        nt_metrics.backpressure = 0;
        nt_log(NT_LOG_INFO, "mqtt", "journal below its bound again (%llu bytes): resuming reads",
               (unsigned long long)nt_journal_bytes(m->journal));
    }
    if (nt_mqttconn_open(m->conn) && nt_mqttconn_want_write(m->conn) && mqttsrc__flush(m) != 0) {
        return;
    }
    mqttsrc__watch(m);
}

void nt_mqttsrc_pause(nt_mqttsrc_t *m)
{
    m->paused = 1;
    if (!nt_mqttconn_open(m->conn) || mqttsrc__flush(m) == 0) {
        mqttsrc__watch(m);
    }
}

int nt_mqttsrc_ready(const nt_mqttsrc_t *m)
{
    return nt_mqttconn_connected(m->conn);
}

void nt_mqttsrc_close(nt_mqttsrc_t *m)
{
    /* DISCONNECT only after everything read is durable: its write also sends the PUBACKs. */
    int graceful =
        nt_mqttconn_connected(m->conn) && nt_mqttconn_open(m->conn) && mqttsrc__flush(m) == 0;
    nt_mqttconn_close(m->conn, graceful); /* frees m in mqttsrc__on_closed */
}
