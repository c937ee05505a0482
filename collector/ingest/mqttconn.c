/* mqttconn.c -- one libmosquitto connection on the loop: connect, reconnect, keepalive, TLS. */
#include "needletrace/mqttconn.h"

#include <errno.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "needletrace/common.h"
#include "needletrace/fdwatch.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"

#define MQTTCONN_RECEIVE_MAXIMUM 65535
/* Our own publications (alerts) awaiting their PUBACK, at most. */
#define MQTTCONN_SEND_MAXIMUM 4096

typedef enum {
    MQTTCONN_IDLE = 0,   /* not started, or waiting for the reconnect timer */
    MQTTCONN_CONNECTING, /* socket open, CONNACK not yet received */
    MQTTCONN_CONNECTED,
    MQTTCONN_CLOSING,
} mqttconn_state_t;

struct nt_mqttconn_s {
    uv_loop_t *loop;
    const nt_config_t *cfg;
    nt_mqttconn_cbs_t cbs;
    void *data;

    struct mosquitto *mosq;
    mosquitto_property *connect_props;
    nt_fdwatch_t watch;         /* a fresh poll handle per socket */
    uv_timer_t misc_timer;      /* 1 s: mosquitto_loop_misc (keepalive) */
    uv_timer_t reconnect_timer; /* backoff between connection attempts */
    int handles_open;

    mqttconn_state_t state;
    int held;          /* nt_mqttconn_hold: never connect again */
    int want_read;     /* the owner's last wish, also applied to the next socket */
    int configured;    /* host, port and CONNECT properties handed to libmosquitto */
    unsigned attempts; /* failed connection attempts since the last success */
    char topic[NT_MAX_TOPIC_LEN + 64];
};

static void mqttconn__schedule_reconnect(nt_mqttconn_t *c);

static void mqttconn__timer_closed(uv_handle_t *h)
{
    nt_mqttconn_t *c = h->data;
    if (--c->handles_open == 0) {
        if (c->cbs.on_closed != NULL) {
            c->cbs.on_closed(c, c->data);
        }
        mosquitto_property_free_all(&c->connect_props);
        mosquitto_destroy(c->mosq);
        free(c);
    }
}

void nt_mqttconn_lost(nt_mqttconn_t *c, const char *why)
{
    if (c->state == MQTTCONN_CONNECTED) {
        nt_metrics.mqtt_connection_losses++;
        nt_log(NT_LOG_WARN, "mqtt", "lost connection to broker %s:%d: %s", c->cfg->mqtt_host,
               c->cfg->mqtt_port, why);
    } else if (c->state == MQTTCONN_CONNECTING) {
        nt_log(c->attempts == 0 ? NT_LOG_WARN : NT_LOG_DEBUG, "mqtt",
               "could not connect to broker %s:%d: %s", c->cfg->mqtt_host, c->cfg->mqtt_port, why);
    }
    nt_metrics.mqtt_connected = 0;
    nt_fdwatch_drop(&c->watch);
    if (c->cbs.on_lost != NULL) {
        c->cbs.on_lost(c, c->data);
    }
    if (c->state != MQTTCONN_CLOSING && c->state != MQTTCONN_IDLE) {
        c->state = MQTTCONN_IDLE;
        mqttconn__schedule_reconnect(c);
    }
}

/* ---- libmosquitto callbacks ------------------------------------------------------------------ */

static void mqttconn__on_message(struct mosquitto *mosq, void *data,
                                 const struct mosquitto_message *msg, const mosquitto_property *p)
{
    nt_mqttconn_t *c = data;
    c->cbs.on_message(c, msg, c->data);
}

static void mqttconn__on_connect(struct mosquitto *mosq, void *data, int rc, int flags,
                                 const mosquitto_property *props)
{
    nt_mqttconn_t *c = data;
    if (rc != 0) {
        nt_log(NT_LOG_ERROR, "mqtt", "broker %s:%d refused the connection: %s", c->cfg->mqtt_host,
               c->cfg->mqtt_port, mosquitto_reason_string(rc));
        /* libmosquitto keeps the socket; the read path notices the close. */
        mosquitto_disconnect(mosq);
        return;
    }
    c->state = MQTTCONN_CONNECTED;
    c->attempts = 0;
    nt_metrics.mqtt_connected = 1;
    nt_metrics.mqtt_connects++;
    nt_log(NT_LOG_INFO, "mqtt",
           "connected to broker %s:%d as \"%s\" (session %s); subscribing to %s", c->cfg->mqtt_host,
           c->cfg->mqtt_port, c->cfg->mqtt_client_id, (flags & 1) ? "resumed" : "new", c->topic);
    int src = mosquitto_subscribe_v5(mosq, NULL, c->topic, 1, 0, NULL);
    if (src != MOSQ_ERR_SUCCESS) {
        nt_log(NT_LOG_ERROR, "mqtt", "could not subscribe to %s: %s", c->topic,
               mosquitto_strerror(src));
        mosquitto_disconnect(mosq);
        return;
    }
    if (c->cbs.on_connected != NULL) {
        c->cbs.on_connected(c, c->data);
    }
}

static void mqttconn__on_subscribe(struct mosquitto *mosq, void *data, int mid, int count,
                                   const int *granted, const mosquitto_property *props)
{
    nt_mqttconn_t *c = data;
    if (count < 1 || granted[0] > 1) {
        nt_log(NT_LOG_ERROR, "mqtt", "broker refused the subscription to %s (reason %d)", c->topic,
               count > 0 ? granted[0] : -1);
        mosquitto_disconnect(mosq);
        return;
    }
    nt_log(NT_LOG_DEBUG, "mqtt", "subscribed to %s at qos %d", c->topic, granted[0]);
}

static void mqttconn__on_publish(struct mosquitto *mosq, void *data, int mid, int reason,
                                 const mosquitto_property *props)
{
    nt_mqttconn_t *c = data;
    if (c->cbs.on_published != NULL) {
        c->cbs.on_published(c, mid, reason, c->data);
    }
}

static void mqttconn__on_log(struct mosquitto *mosq, void *data, int level, const char *str)
{
    if (level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING)) {
        nt_log(NT_LOG_DEBUG, "mqtt", "libmosquitto: %s", str);
    }
}

/* ---- connecting ------------------------------------------------------------------------------ */

static void mqttconn__on_io(nt_fdwatch_t *w, int status, int events, void *data)
{
    nt_mqttconn_t *c = data;
    c->cbs.on_io(c, status, events, c->data);
}

static void mqttconn__connect(nt_mqttconn_t *c)
{
    if (c->held) {
        return;
    }
    c->state = MQTTCONN_CONNECTING;
    int rc;
    if (!c->configured) {
        /* libmosquitto 2.0 has no asynchronous v5 connect: the first attempt stores host,
         * port and CONNECT properties (session expiry) with a blocking TCP connect; every
         * later attempt reuses them without blocking. */
        c->configured = 1;
        rc = mosquitto_connect_bind_v5(c->mosq, c->cfg->mqtt_host, c->cfg->mqtt_port,
                                       (int)c->cfg->mqtt_keepalive_s, NULL, c->connect_props);
    } else {
        rc = mosquitto_reconnect_async(c->mosq);
    }
    if (rc != MOSQ_ERR_SUCCESS) {
        nt_mqttconn_lost(c, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
        return;
    }
    nt_mqttconn_watch(c, c->want_read);
}

static void mqttconn__on_reconnect_timer(uv_timer_t *t)
{
    mqttconn__connect(t->data);
}

static void mqttconn__schedule_reconnect(nt_mqttconn_t *c)
{
    uint64_t delay = nt_backoff_ms((uint64_t)c->cfg->mqtt_reconnect_min_ms,
                                   (uint64_t)c->cfg->mqtt_reconnect_max_ms, c->attempts++);
    uv_timer_start(&c->reconnect_timer, mqttconn__on_reconnect_timer, delay, 0);
}

static void mqttconn__on_misc_timer(uv_timer_t *t)
{
    nt_mqttconn_t *c = t->data;
    if (!nt_fdwatch_active(&c->watch)) {
        return;
    }
    int rc = mosquitto_loop_misc(c->mosq);
    if (rc != MOSQ_ERR_SUCCESS) {
        nt_mqttconn_lost(c, mosquitto_strerror(rc));
        return;
    }
    if (mosquitto_socket(c->mosq) < 0) {
        nt_mqttconn_lost(c, "keepalive timed out");
        return;
    }
    if (c->cbs.on_tick != NULL) {
        c->cbs.on_tick(c, c->data);
    }
}

/* Options, callbacks and credentials of a new client. 0 or NT_ECONFIG (logged). */
static int mqttconn__configure(nt_mqttconn_t *c)
{
    const nt_config_t *cfg = c->cfg;
    mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_int_option(c->mosq, MOSQ_OPT_RECEIVE_MAXIMUM, MQTTCONN_RECEIVE_MAXIMUM);
    mosquitto_int_option(c->mosq, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_int_option(c->mosq, MOSQ_OPT_SEND_MAXIMUM, MQTTCONN_SEND_MAXIMUM);
    /* Threaded mode makes libmosquitto queue PUBACKs until the owner calls loop_write. */
    mosquitto_threaded_set(c->mosq, true);
    mosquitto_property_add_int32(&c->connect_props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
                                 (uint32_t)cfg->mqtt_session_expiry_s);
    mosquitto_message_v5_callback_set(c->mosq, mqttconn__on_message);
    mosquitto_connect_v5_callback_set(c->mosq, mqttconn__on_connect);
    mosquitto_subscribe_v5_callback_set(c->mosq, mqttconn__on_subscribe);
    mosquitto_publish_v5_callback_set(c->mosq, mqttconn__on_publish);
    mosquitto_log_callback_set(c->mosq, mqttconn__on_log);

    int rc = MOSQ_ERR_SUCCESS;
    if (cfg->mqtt_username != NULL) {
        rc = mosquitto_username_pw_set(c->mosq, cfg->mqtt_username, cfg->mqtt_password);
    }
    if (rc == MOSQ_ERR_SUCCESS && cfg->mqtt_tls) {
        rc = mosquitto_tls_set(c->mosq, cfg->mqtt_ca_file,
                               cfg->mqtt_ca_file ? NULL : "/etc/ssl/certs", cfg->mqtt_cert_file,
                               cfg->mqtt_key_file, NULL);
    }
    if (rc != MOSQ_ERR_SUCCESS) {
        nt_log(NT_LOG_ERROR, "mqtt", "could not configure the mqtt client: %s",
               mosquitto_strerror(rc));
        return NT_ECONFIG;
    }
    if (cfg->mqtt_share_group != NULL) {
        snprintf(c->topic, sizeof(c->topic), "$share/%s/%s", cfg->mqtt_share_group,
                 cfg->mqtt_topic);
    } else {
        snprintf(c->topic, sizeof(c->topic), "%s", cfg->mqtt_topic);
    }
    return 0;
}

/* ---- public ---------------------------------------------------------------------------------- */

int nt_mqttconn_init(uv_loop_t *loop, nt_mqttconn_t **out, const nt_config_t *cfg,
                     const nt_mqttconn_cbs_t *cbs, void *data)
{
    nt_mqttconn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        nt_log(NT_LOG_ERROR, "mqtt", "could not create the mqtt client: %s",
               nt_strerror(NT_ENOMEM));
        return NT_ENOMEM;
    }
    c->loop = loop;
    c->cfg = cfg;
    c->cbs = *cbs;
    c->data = data;
    c->want_read = 1;
    nt_fdwatch_init(&c->watch, loop, mqttconn__on_io, c);

    mosquitto_lib_init();
    /* clean_session=false: a persistent session, so the broker queues while we are away. */
    c->mosq = mosquitto_new(cfg->mqtt_client_id, false, c);
    if (c->mosq == NULL) {
        nt_log(NT_LOG_ERROR, "mqtt", "could not create the mqtt client: %s", strerror(errno));
        free(c);
        return NT_ENOMEM;
    }
    int rc = mqttconn__configure(c);
    if (rc != 0) {
        mosquitto_property_free_all(&c->connect_props);
        mosquitto_destroy(c->mosq);
        free(c);
        return rc;
    }
    uv_timer_init(loop, &c->misc_timer);
    uv_timer_init(loop, &c->reconnect_timer);
    c->misc_timer.data = c;
    c->reconnect_timer.data = c;
    c->handles_open = 2;
    *out = c;
    return 0;
}

int nt_mqttconn_start(nt_mqttconn_t *c)
{
    uv_timer_start(&c->misc_timer, mqttconn__on_misc_timer, 1000, 1000);
    mqttconn__connect(c);
    return 0;
}

int nt_mqttconn_watch(nt_mqttconn_t *c, int want_read)
{
    c->want_read = want_read;
    int fd = mosquitto_socket(c->mosq);
    if (fd < 0) {
        nt_mqttconn_lost(c, "connection closed");
        return NT_EMQTT;
    }
    int events = (want_read ? UV_READABLE : 0) | (mosquitto_want_write(c->mosq) ? UV_WRITABLE : 0);
    if (nt_fdwatch_set(&c->watch, fd, events) != 0) {
        mosquitto_disconnect(c->mosq);
        nt_mqttconn_lost(c, "could not watch the broker socket");
        return NT_EMQTT;
    }
    return 0;
}

void nt_mqttconn_want_read(nt_mqttconn_t *c, int want_read)
{
    c->want_read = want_read;
}

int nt_mqttconn_read(nt_mqttconn_t *c)
{
    int rc = mosquitto_loop_read(c->mosq, 1);
    if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(c->mosq) < 0) {
        nt_mqttconn_lost(c, rc == MOSQ_ERR_SUCCESS ? "connection closed"
                            : rc == MOSQ_ERR_ERRNO ? strerror(errno)
                                                   : mosquitto_strerror(rc));
        return NT_EMQTT;
    }
    return 0;
}

int nt_mqttconn_write(nt_mqttconn_t *c)
{
    if (!mosquitto_want_write(c->mosq)) {
        return 0;
    }
    int rc = mosquitto_loop_write(c->mosq, 1);
    if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(c->mosq) < 0) {
        nt_mqttconn_lost(c, rc != MOSQ_ERR_SUCCESS ? mosquitto_strerror(rc) : "connection closed");
        return NT_EMQTT;
    }
    return 0;
}

int nt_mqttconn_want_write(const nt_mqttconn_t *c)
{
    return mosquitto_want_write(c->mosq);
}

int nt_mqttconn_pending(const nt_mqttconn_t *c)
{
    int n = 0;
    if (ioctl(mosquitto_socket(c->mosq), FIONREAD, &n) != 0) {
        return 0;
    }
    return n;
}

int nt_mqttconn_publish(nt_mqttconn_t *c, const char *topic, const void *payload, size_t len,
                        int *mid)
{
    if (c->state != MQTTCONN_CONNECTED || !nt_fdwatch_active(&c->watch)) {
        return NT_EAGAIN;
    }
    int rc = mosquitto_publish_v5(c->mosq, mid, topic, (int)len, payload, 1, false, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        nt_log(NT_LOG_DEBUG, "mqtt", "could not publish on %s: %s", topic, mosquitto_strerror(rc));
        return NT_EAGAIN;
    }
    return 0;
}

void nt_mqttconn_abort(nt_mqttconn_t *c)
{
    int fd = mosquitto_socket(c->mosq);
    if (fd >= 0) {
        shutdown(fd, SHUT_RDWR);
    }
}

void nt_mqttconn_hold(nt_mqttconn_t *c)
{
    c->held = 1;
    uv_timer_stop(&c->reconnect_timer);
}

int nt_mqttconn_connected(const nt_mqttconn_t *c)
{
    return c->state == MQTTCONN_CONNECTED;
}

int nt_mqttconn_open(const nt_mqttconn_t *c)
{
    return nt_fdwatch_active(&c->watch);
}

const char *nt_mqttconn_topic(const nt_mqttconn_t *c)
{
    return c->topic;
}

void nt_mqttconn_close(nt_mqttconn_t *c, int graceful)
{
    int was_connected = c->state == MQTTCONN_CONNECTED;
    c->state = MQTTCONN_CLOSING;
    if (graceful && was_connected && nt_fdwatch_active(&c->watch)) {
        /* DISCONNECT with reason 0 keeps the session (expiry as configured). */
        mosquitto_disconnect_v5(c->mosq, 0, NULL);
        mosquitto_loop_write(c->mosq, 1);
    }
    nt_metrics.mqtt_connected = 0;
    nt_fdwatch_drop(&c->watch);
    uv_timer_stop(&c->misc_timer);
    uv_timer_stop(&c->reconnect_timer);
    uv_close((uv_handle_t *)&c->misc_timer, mqttconn__timer_closed);
    uv_close((uv_handle_t *)&c->reconnect_timer, mqttconn__timer_closed);
}
