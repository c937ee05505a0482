/* mqttsrc.c -- the MQTT source: libmosquitto driven by libuv, journaling before acknowledging. */
#include "needletrace/mqttsrc.h"

#include <errno.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "needletrace/common.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"

/* One burst of reads is bounded so that a busy broker cannot starve the loop, and so
 * that the journal never overshoots its bound by more than one burst. */
#define MQTTSRC_BURST_MESSAGES  4096
#define MQTTSRC_BURST_BYTES     (8u * 1024u * 1024u)
#define MQTTSRC_RECEIVE_MAXIMUM 65535
/* Alerts awaiting their PUBACK, at most; the rest wait in the database (undelivered). */
#define MQTTSRC_MAX_ALERTS_IN_FLIGHT 4096
#define MQTTSRC_ALERT_SLOTS          8192 /* open addressing, twice the bound */

typedef enum {
    MQTTSRC_IDLE = 0,   /* not started, or waiting for the reconnect timer */
    MQTTSRC_CONNECTING, /* socket open, CONNACK not yet received */
    MQTTSRC_CONNECTED,
    MQTTSRC_CLOSING,
} mqttsrc_state_t;

struct nt_mqttsrc_s {
    uv_loop_t *loop;
    const nt_config_t *cfg;
    nt_journal_t *journal;
    nt_mqttsrc_synced_cb on_synced;
    void *data;

    struct mosquitto *mosq;
    mosquitto_property *connect_props;
    uv_poll_t *poll; /* a fresh handle per connection; NULL when no socket */
    int poll_fd;
    uv_timer_t misc_timer;      /* 1 s: mosquitto_loop_misc (keepalive) */
    uv_timer_t reconnect_timer; /* backoff between connection attempts */
    int handles_open;

    mqttsrc_state_t state;
    int paused;                   /* nt_mqttsrc_pause: never read again */
    int full;                     /* journal at its bound: reading suspended */
    int journal_failed;           /* an append or sync failed: never ack, drop the connection */
    int configured;               /* host, port and CONNECT properties handed to libmosquitto */
    unsigned attempts;            /* failed connection attempts since the last success */
    uint64_t unsynced;            /* records appended since the last sync */
    uint64_t burst_bytes;         /* bytes appended in the current burst */
    uint64_t kill_before_journal; /* test hook: SIGKILL at this message number */
    uint64_t received;
    char topic[NT_MAX_TOPIC_LEN + 64];

    /* alert publisher */
    nt_mqttsrc_connected_cb on_connected;
    nt_mqttsrc_published_cb on_published;
    nt_mqttsrc_failed_cb on_failed;
    struct {
        int64_t alert_id; /* 0 = free */
        int mid;
    } alerts[MQTTSRC_ALERT_SLOTS];
    unsigned alerts_in_flight;
};

static void mqttsrc__schedule_reconnect(nt_mqttsrc_t *m);
static void mqttsrc__update_poll(nt_mqttsrc_t *m);

static void mqttsrc__poll_closed(uv_handle_t *h)
{
    free(h);
}

static void mqttsrc__timer_closed(uv_handle_t *h)
{
    nt_mqttsrc_t *m = h->data;
    if (--m->handles_open == 0) {
        mosquitto_property_free_all(&m->connect_props);
        mosquitto_destroy(m->mosq);
        free(m);
    }
}

/* Stops watching the socket. Must run before libmosquitto's fd number can be reused. */
static void mqttsrc__drop_poll(nt_mqttsrc_t *m)
{
    if (m->poll != NULL) {
        uv_poll_stop(m->poll);
        uv_close((uv_handle_t *)m->poll, mqttsrc__poll_closed);
        m->poll = NULL;
        m->poll_fd = -1;
    }
}

/* Called whenever the connection is gone (read/write error, CONNACK refusal, keepalive). */
static void mqttsrc__lost(nt_mqttsrc_t *m, const char *why)
{
    if (m->state == MQTTSRC_CONNECTED) {
        nt_metrics.mqtt_connection_losses++;
        nt_log(NT_LOG_WARN, "mqtt", "lost connection to broker %s:%d: %s", m->cfg->mqtt_host,
               m->cfg->mqtt_port, why);
    } else if (m->state == MQTTSRC_CONNECTING) {
        nt_log(m->attempts == 0 ? NT_LOG_WARN : NT_LOG_DEBUG, "mqtt",
               "could not connect to broker %s:%d: %s", m->cfg->mqtt_host, m->cfg->mqtt_port, why);
    }
    nt_metrics.mqtt_connected = 0;
    mqttsrc__drop_poll(m);
    /* Records appended in a burst that never synced are harmless (never acked): the
     * broker redelivers them. Make them durable anyway so the counters stay honest. */
    if (m->unsynced > 0 && !m->journal_failed && nt_journal_sync(m->journal) == 0) {
        m->unsynced = 0;
        nt_metrics.journal_syncs++;
        m->on_synced(m, m->data);
    }
    if (m->state != MQTTSRC_CLOSING) {
        m->state = MQTTSRC_IDLE;
        mqttsrc__schedule_reconnect(m);
    }
}

/* Makes every appended record durable, then lets libmosquitto write (PUBACKs included).
 * This is the only place that calls mosquitto_loop_write(). Returns 0 or -1 when the
 * connection was lost. */
static int mqttsrc__flush(nt_mqttsrc_t *m)
{
    if (m->journal_failed) {
        return -1;
    }
    if (m->unsynced > 0) {
        int rc = nt_journal_sync(m->journal);
        if (rc != 0) {
            /* Never acknowledge: cut the connection so the broker redelivers. */
            m->journal_failed = 1;
            nt_log(NT_LOG_ERROR, "mqtt",
                   "could not sync the journal: %s; dropping the broker connection without "
                   "acknowledging %llu messages",
                   nt_strerror(rc), (unsigned long long)m->unsynced);
            shutdown(mosquitto_socket(m->mosq), SHUT_RDWR);
            return -1;
        }
        m->unsynced = 0;
        nt_metrics.journal_syncs++;
        nt_metrics.journal_end = nt_journal_end(m->journal);
        nt_metrics.journal_bytes = nt_journal_bytes(m->journal);
        m->on_synced(m, m->data);
    }
    if (mosquitto_want_write(m->mosq)) {
        int rc = mosquitto_loop_write(m->mosq, 1);
        if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(m->mosq) < 0) {
            mqttsrc__lost(m, rc != MOSQ_ERR_SUCCESS ? mosquitto_strerror(rc) : "connection closed");
            return -1;
        }
    }
    return 0;
}

static void mqttsrc__on_message(struct mosquitto *mosq, void *data,
                                const struct mosquitto_message *msg, const mosquitto_property *p)
{
    nt_mqttsrc_t *m = data;
    m->received++;
    if (m->kill_before_journal != 0 && m->received == m->kill_before_journal) {
        nt_log(NT_LOG_WARN, "mqtt", "test hook: killing the process before journaling message %llu",
               (unsigned long long)m->received);
        raise(SIGKILL);
    }
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
               nt_strerror(rc));
        shutdown(mosquitto_socket(mosq), SHUT_RDWR);
        return;
    }
    m->unsynced++;
    m->burst_bytes += len + topic_len;
    nt_metrics.mqtt_messages_received++;
    nt_metrics.mqtt_bytes_received += len;
}

static void mqttsrc__on_connect(struct mosquitto *mosq, void *data, int rc, int flags,
                                const mosquitto_property *props)
{
    nt_mqttsrc_t *m = data;
    if (rc != 0) {
        nt_log(NT_LOG_ERROR, "mqtt", "broker %s:%d refused the connection: %s", m->cfg->mqtt_host,
               m->cfg->mqtt_port, mosquitto_reason_string(rc));
        /* libmosquitto keeps the socket; the read path notices the close. */
        mosquitto_disconnect(mosq);
        return;
    }
    m->state = MQTTSRC_CONNECTED;
    m->attempts = 0;
    nt_metrics.mqtt_connected = 1;
    nt_metrics.mqtt_connects++;
    if (m->cfg->mqtt_share_group != NULL) {
        snprintf(m->topic, sizeof(m->topic), "$share/%s/%s", m->cfg->mqtt_share_group,
                 m->cfg->mqtt_topic);
    } else {
        snprintf(m->topic, sizeof(m->topic), "%s", m->cfg->mqtt_topic);
    }
    nt_log(NT_LOG_INFO, "mqtt",
           "connected to broker %s:%d as \"%s\" (session %s); subscribing to %s", m->cfg->mqtt_host,
           m->cfg->mqtt_port, m->cfg->mqtt_client_id, (flags & 1) ? "resumed" : "new", m->topic);
    int src = mosquitto_subscribe_v5(mosq, NULL, m->topic, 1, 0, NULL);
    if (src != MOSQ_ERR_SUCCESS) {
        nt_log(NT_LOG_ERROR, "mqtt", "could not subscribe to %s: %s", m->topic,
               mosquitto_strerror(src));
        mosquitto_disconnect(mosq);
        return;
    }
    if (m->on_connected != NULL) {
        m->on_connected(m, m->data);
    }
}

static void mqttsrc__on_subscribe(struct mosquitto *mosq, void *data, int mid, int count,
                                  const int *granted, const mosquitto_property *props)
{
    nt_mqttsrc_t *m = data;
    if (count < 1 || granted[0] > 1) {
        nt_log(NT_LOG_ERROR, "mqtt", "broker refused the subscription to %s (reason %d)", m->topic,
               count > 0 ? granted[0] : -1);
        mosquitto_disconnect(mosq);
        return;
    }
    nt_log(NT_LOG_DEBUG, "mqtt", "subscribed to %s at qos %d", m->topic, granted[0]);
}

static void mqttsrc__on_log(struct mosquitto *mosq, void *data, int level, const char *str)
{
    if (level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING)) {
        nt_log(NT_LOG_DEBUG, "mqtt", "libmosquitto: %s", str);
    }
}

/* Bytes waiting in the socket's receive queue (0 when unknown). */
static int mqttsrc__pending(nt_mqttsrc_t *m)
{
    int n = 0;
    if (ioctl(mosquitto_socket(m->mosq), FIONREAD, &n) != 0) {
        return 0;
    }
    return n;
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
        int rc = mosquitto_loop_read(m->mosq, 1);
        if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(m->mosq) < 0) {
            /* Whatever this burst appended was never acknowledged: the broker redelivers. */
            mqttsrc__lost(m, rc == MOSQ_ERR_SUCCESS ? "connection closed"
                             : rc == MOSQ_ERR_ERRNO ? strerror(errno)
                                                    : mosquitto_strerror(rc));
            return;
        }
    } while (m->poll != NULL && !m->journal_failed &&
             m->received - start < MQTTSRC_BURST_MESSAGES && m->burst_bytes < MQTTSRC_BURST_BYTES &&
             !nt_journal_full(m->journal) && mqttsrc__pending(m) > 0);
    if (m->poll == NULL) {
        return;
    }
    if (mqttsrc__flush(m) != 0) {
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
 * connection (the broker redelivers) and let the owner stop the process. */
static void mqttsrc__journal_failed(nt_mqttsrc_t *m)
{
    mqttsrc__lost(m, "the journal cannot be written");
    if (m->on_failed != NULL) {
        nt_mqttsrc_failed_cb cb = m->on_failed;
        m->on_failed = NULL;
        cb(m, m->data);
    }
}

static void mqttsrc__on_poll(uv_poll_t *h, int status, int events)
{
    nt_mqttsrc_t *m = h->data;
    if (m->journal_failed) {
        mqttsrc__journal_failed(m);
        return;
    }
    if (status < 0) {
        /* Let libmosquitto find out what happened on the socket. */
        events = UV_READABLE;
    }
    if ((events & UV_WRITABLE) && mqttsrc__flush(m) != 0) {
        return;
    }
    if (m->poll == NULL) {
        return;
    }
    if (events & UV_READABLE) {
        mqttsrc__read_burst(m);
    }
    if (m->poll != NULL) {
        mqttsrc__update_poll(m);
    }
}

static void mqttsrc__update_poll(nt_mqttsrc_t *m)
{
    int fd = mosquitto_socket(m->mosq);
    if (fd < 0) {
        mqttsrc__lost(m, "connection closed");
        return;
    }
    if (m->poll == NULL || m->poll_fd != fd) {
        mqttsrc__drop_poll(m);
        m->poll = malloc(sizeof(*m->poll));
        if (m->poll == NULL || uv_poll_init_socket(m->loop, m->poll, fd) != 0) {
            free(m->poll);
            m->poll = NULL;
            mosquitto_disconnect(m->mosq);
            mqttsrc__lost(m, "could not watch the broker socket");
            return;
        }
        m->poll->data = m;
        m->poll_fd = fd;
    }
    int events = 0;
    if (!m->paused && !m->full) {
        events |= UV_READABLE;
    }
    if (mosquitto_want_write(m->mosq)) {
        events |= UV_WRITABLE;
    }
    if (events == 0) {
        uv_poll_stop(m->poll);
    } else {
        uv_poll_start(m->poll, events, mqttsrc__on_poll);
    }
}

static void mqttsrc__connect(nt_mqttsrc_t *m)
{
    if (m->journal_failed) {
        return; /* the journal refuses appends until it is reopened: the owner stops */
    }
    m->state = MQTTSRC_CONNECTING;
    int rc;
    if (!m->configured) {
        /* libmosquitto 2.0 has no asynchronous v5 connect: the first attempt stores host,
         * port and CONNECT properties (session expiry) with a blocking TCP connect; every
         * later attempt reuses them without blocking. */
        m->configured = 1;
        rc = mosquitto_connect_bind_v5(m->mosq, m->cfg->mqtt_host, m->cfg->mqtt_port,
                                       (int)m->cfg->mqtt_keepalive_s, NULL, m->connect_props);
    } else {
        rc = mosquitto_reconnect_async(m->mosq);
    }
    if (rc != MOSQ_ERR_SUCCESS) {
        mqttsrc__lost(m, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
        return;
    }
    mqttsrc__update_poll(m);
}

static void mqttsrc__on_reconnect_timer(uv_timer_t *t)
{
    mqttsrc__connect(t->data);
}

static void mqttsrc__schedule_reconnect(nt_mqttsrc_t *m)
{
    uint64_t delay = nt_backoff_ms((uint64_t)m->cfg->mqtt_reconnect_min_ms,
                                   (uint64_t)m->cfg->mqtt_reconnect_max_ms, m->attempts++);
    uv_timer_start(&m->reconnect_timer, mqttsrc__on_reconnect_timer, delay, 0);
}

static void mqttsrc__on_misc_timer(uv_timer_t *t)
{
    nt_mqttsrc_t *m = t->data;
    if (m->poll == NULL) {
        return;
    }
    int rc = mosquitto_loop_misc(m->mosq);
    if (rc != MOSQ_ERR_SUCCESS) {
        mqttsrc__lost(m, mosquitto_strerror(rc));
        return;
    }
    if (mosquitto_socket(m->mosq) < 0) {
        mqttsrc__lost(m, "keepalive timed out");
        return;
    }
    nt_mqttsrc_poke(m);
}

static unsigned mqttsrc__slot(int64_t alert_id)
{
    return (unsigned)(((uint64_t)alert_id * 0x9E3779B97F4A7C15ull) >> 51) % MQTTSRC_ALERT_SLOTS;
}

/* The slot holding alert_id, or the free slot where it would go. */
static unsigned mqttsrc__find_alert(const nt_mqttsrc_t *m, int64_t alert_id)
{
    unsigned i = mqttsrc__slot(alert_id);
    while (m->alerts[i].alert_id != 0 && m->alerts[i].alert_id != alert_id) {
        i = (i + 1) % MQTTSRC_ALERT_SLOTS;
    }
    return i;
}

/* Removes the slot at i, re-inserting the cluster behind it (linear probing deletion). */
static void mqttsrc__forget_alert(nt_mqttsrc_t *m, unsigned i)
{
    m->alerts[i].alert_id = 0;
    m->alerts_in_flight--;
    for (unsigned j = (i + 1) % MQTTSRC_ALERT_SLOTS; m->alerts[j].alert_id != 0;
         j = (j + 1) % MQTTSRC_ALERT_SLOTS) {
        int64_t id = m->alerts[j].alert_id;
        int mid = m->alerts[j].mid;
        m->alerts[j].alert_id = 0;
        unsigned k = mqttsrc__find_alert(m, id);
        m->alerts[k].alert_id = id;
        m->alerts[k].mid = mid;
    }
}

static void mqttsrc__on_publish(struct mosquitto *mosq, void *data, int mid, int reason,
                                const mosquitto_property *props)
{
    nt_mqttsrc_t *m = data;
    for (unsigned i = 0; i < MQTTSRC_ALERT_SLOTS; i++) {
        if (m->alerts[i].alert_id != 0 && m->alerts[i].mid == mid) {
            int64_t id = m->alerts[i].alert_id;
            mqttsrc__forget_alert(m, i);
            if (reason >= 128) {
                /* Refused (e.g. not authorised): stays undelivered, retried later. */
                nt_log(NT_LOG_WARN, "mqtt", "broker refused alert %lld: %s", (long long)id,
                       mosquitto_reason_string(reason));
            } else if (m->on_published != NULL) {
                m->on_published(m, id, m->data);
            }
            return;
        }
    }
}

void nt_mqttsrc_set_callbacks(nt_mqttsrc_t *m, nt_mqttsrc_connected_cb on_connected,
                              nt_mqttsrc_published_cb on_published, nt_mqttsrc_failed_cb on_failed)
{
    m->on_connected = on_connected;
    m->on_published = on_published;
    m->on_failed = on_failed;
}

int nt_mqttsrc_publish_alert(nt_mqttsrc_t *m, int64_t alert_id, const char *topic,
                             const char *payload, size_t payload_len)
{
    if (alert_id <= 0 || topic == NULL || payload_len > NT_MAX_PAYLOAD_BYTES) {
        return NT_EINVAL;
    }
    unsigned i = mqttsrc__find_alert(m, alert_id);
    if (m->alerts[i].alert_id == alert_id) {
        return 1;
    }
    if (m->state != MQTTSRC_CONNECTED || m->poll == NULL ||
        m->alerts_in_flight >= MQTTSRC_MAX_ALERTS_IN_FLIGHT) {
        return NT_EAGAIN;
    }
    int mid = 0;
    int rc = mosquitto_publish_v5(m->mosq, &mid, topic, (int)payload_len, payload, 1, false, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        nt_log(NT_LOG_DEBUG, "mqtt", "could not publish alert %lld: %s", (long long)alert_id,
               mosquitto_strerror(rc));
        return NT_EAGAIN;
    }
    m->alerts[i].alert_id = alert_id;
    m->alerts[i].mid = mid;
    m->alerts_in_flight++;
    if (mqttsrc__flush(m) == 0 && m->poll != NULL) {
        mqttsrc__update_poll(m);
    }
    return 0;
}

int nt_mqttsrc_init(uv_loop_t *loop, nt_mqttsrc_t **out, const nt_config_t *cfg,
                    nt_journal_t *journal, nt_mqttsrc_synced_cb on_synced, void *data)
{
    nt_mqttsrc_t *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return NT_ENOMEM;
    }
    m->loop = loop;
    m->cfg = cfg;
    m->journal = journal;
    m->on_synced = on_synced;
    m->data = data;
    m->poll_fd = -1;
    const char *hook = getenv("NT_TEST_KILL_BEFORE_JOURNAL");
    if (hook != NULL) {
        m->kill_before_journal = strtoull(hook, NULL, 10);
    }

    mosquitto_lib_init();
    /* clean_session=false: a persistent session, so the broker queues while we are away. */
    m->mosq = mosquitto_new(cfg->mqtt_client_id, false, m);
    if (m->mosq == NULL) {
        nt_log(NT_LOG_ERROR, "mqtt", "could not create the mqtt client: %s", strerror(errno));
        free(m);
        return NT_ENOMEM;
    }
    mosquitto_int_option(m->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_int_option(m->mosq, MOSQ_OPT_RECEIVE_MAXIMUM, MQTTSRC_RECEIVE_MAXIMUM);
    mosquitto_int_option(m->mosq, MOSQ_OPT_TCP_NODELAY, 1);
    /* Threaded mode makes libmosquitto queue PUBACKs until we call loop_write. */
    mosquitto_threaded_set(m->mosq, true);
    mosquitto_property_add_int32(&m->connect_props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
                                 (uint32_t)cfg->mqtt_session_expiry_s);
    mosquitto_message_v5_callback_set(m->mosq, mqttsrc__on_message);
    mosquitto_connect_v5_callback_set(m->mosq, mqttsrc__on_connect);
    mosquitto_subscribe_v5_callback_set(m->mosq, mqttsrc__on_subscribe);
    mosquitto_publish_v5_callback_set(m->mosq, mqttsrc__on_publish);
    mosquitto_int_option(m->mosq, MOSQ_OPT_SEND_MAXIMUM, MQTTSRC_MAX_ALERTS_IN_FLIGHT);
    mosquitto_log_callback_set(m->mosq, mqttsrc__on_log);

    int rc = MOSQ_ERR_SUCCESS;
    if (cfg->mqtt_username != NULL) {
        rc = mosquitto_username_pw_set(m->mosq, cfg->mqtt_username, cfg->mqtt_password);
    }
    if (rc == MOSQ_ERR_SUCCESS && cfg->mqtt_tls) {
        rc = mosquitto_tls_set(m->mosq, cfg->mqtt_ca_file,
                               cfg->mqtt_ca_file ? NULL : "/etc/ssl/certs", cfg->mqtt_cert_file,
                               cfg->mqtt_key_file, NULL);
    }
    if (rc != MOSQ_ERR_SUCCESS) {
        nt_log(NT_LOG_ERROR, "mqtt", "could not configure the mqtt client: %s",
               mosquitto_strerror(rc));
        mosquitto_property_free_all(&m->connect_props);
        mosquitto_destroy(m->mosq);
        free(m);
        return NT_ECONFIG;
    }
    uv_timer_init(loop, &m->misc_timer);
    uv_timer_init(loop, &m->reconnect_timer);
    m->misc_timer.data = m;
    m->reconnect_timer.data = m;
    m->handles_open = 2;
    *out = m;
    return 0;
}

int nt_mqttsrc_start(nt_mqttsrc_t *m)
{
    uv_timer_start(&m->misc_timer, mqttsrc__on_misc_timer, 1000, 1000);
    mqttsrc__connect(m);
    return 0;
}

void nt_mqttsrc_poke(nt_mqttsrc_t *m)
{
    if (m->full && !nt_journal_full(m->journal)) {
        m->full = 0;
        nt_metrics.backpressure = 0;
        nt_log(NT_LOG_INFO, "mqtt", "journal below its bound again (%llu bytes): resuming reads",
               (unsigned long long)nt_journal_bytes(m->journal));
    }
    if (m->poll != NULL) {
        if (mosquitto_want_write(m->mosq) && mqttsrc__flush(m) != 0) {
            return;
        }
        if (m->poll != NULL) {
            mqttsrc__update_poll(m);
        }
    }
}

void nt_mqttsrc_pause(nt_mqttsrc_t *m)
{
    m->paused = 1;
    if (m->poll != NULL && mqttsrc__flush(m) == 0 && m->poll != NULL) {
        mqttsrc__update_poll(m);
    }
}

int nt_mqttsrc_ready(const nt_mqttsrc_t *m)
{
    return m->state == MQTTSRC_CONNECTED;
}

void nt_mqttsrc_close(nt_mqttsrc_t *m)
{
    int was_connected = m->state == MQTTSRC_CONNECTED;
    m->state = MQTTSRC_CLOSING;
    if (was_connected && m->poll != NULL && mqttsrc__flush(m) == 0) {
        /* DISCONNECT with reason 0 keeps the session (expiry as configured). */
        mosquitto_disconnect_v5(m->mosq, 0, NULL);
        mosquitto_loop_write(m->mosq, 1);
    }
    nt_metrics.mqtt_connected = 0;
    mqttsrc__drop_poll(m);
    uv_timer_stop(&m->misc_timer);
    uv_timer_stop(&m->reconnect_timer);
    uv_close((uv_handle_t *)&m->misc_timer, mqttsrc__timer_closed);
    uv_close((uv_handle_t *)&m->reconnect_timer, mqttsrc__timer_closed);
}
