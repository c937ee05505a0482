/* mqttconn.c -- one libmosquitto connection on the loop: connect, reconnect, keepalive, TLS. */
#include "needletrace/mqttconn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "needletrace/common.h"
#include "needletrace/fdwatch.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"

/* Addresses of the broker's name tried in turn (then it is looked up again). */
#define MQTTCONN_ADDRS 8
/* Our own publications (alerts) awaiting their PUBACK, at most. */
#define MQTTCONN_SEND_MAXIMUM 4096
/* Room in a PUBLISH packet beside its topic and payload: fixed header (5 bytes at most), topic
 * length (2), packet identifier (2), property length (4) and the properties a broker forwards
 * (user properties, content type, subscription identifier...). */
#define MQTTCONN_PACKET_HEADROOM 4096u
/* The largest packet the broker may send us (MQTT v5 maximum packet size, in CONNECT): a payload
 * at the wire contract's bound on the longest topic the decoder reads. A v5 broker drops a larger
 * message for this client instead of sending it (mosquitto 2.0: "Dropping too large outgoing
 * PUBLISH"); libmosquitto itself does not check what it receives, it allocates whatever length a
 * packet announces. A payload a little over the bound still fits, and reaches quarantine as
 * payload_too_large. */
#define MQTTCONN_MAXIMUM_PACKET_SIZE                                                               \
    (NT_MAX_PAYLOAD_BYTES + NT_MAX_TOPIC_LEN + MQTTCONN_PACKET_HEADROOM)

typedef enum {
    MQTTCONN_IDLE = 0,   /* not started, or waiting for the reconnect timer */
    MQTTCONN_RESOLVING,  /* looking the broker's name up (uv_getaddrinfo, off the loop) */
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
    uv_timer_t connect_timer;   /* bounds one attempt: lookup, TCP, TLS, CONNACK */
    uv_getaddrinfo_t resolver;
    int resolving;         /* a lookup is in flight: it holds the connection open until it ends */
    int handles_open;      /* timers, plus 1 while resolving; freed at 0 */
    int64_t last_write_us; /* monotonic time of the last write to the broker */
    int at_boundary;       /* the last write left no packet half written */
    char addrs[MQTTCONN_ADDRS][INET6_ADDRSTRLEN]; /* the broker's addresses, last lookup */
    int naddrs;
    int next_addr; /* the next to try; a new lookup once all were tried */

    mqttconn_state_t state;
    int held;          /* nt_mqttconn_hold: never connect again */
    int want_read;     /* the owner's last wish, also applied to the next socket */
    int configured;    /* CONNECT properties handed to libmosquitto */
    unsigned attempts; /* failed connection attempts since the last success */
    int tls_handshake; /* TLS: the handshake of this socket is not done yet (mqttconn__tls_step) */
    int tcp_up;        /* TLS: the socket's TCP connection is established */
    char last_error[160]; /* libmosquitto's last error log line of this attempt (the TLS reason) */
    char topic[NT_MAX_TOPIC_LEN + 64];
};

static void mqttconn__schedule_reconnect(nt_mqttconn_t *c);
static void mqttconn__on_connect_timer(uv_timer_t *t);

/* One of the connection's handles (or its lookup) is done; the last one frees it. */
static void mqttconn__unref(nt_mqttconn_t *c)
{
    if (--c->handles_open == 0) {
        if (c->cbs.on_closed != NULL) {
            c->cbs.on_closed(c, c->data);
        }
        mosquitto_property_free_all(&c->connect_props);
        mosquitto_destroy(c->mosq);
        free(c);
    }
}

static void mqttconn__timer_closed(uv_handle_t *h)
{
    mqttconn__unref(h->data);
}

void nt_mqttconn_lost(nt_mqttconn_t *c, const char *why)
{
    if (c->state == MQTTCONN_CONNECTED) {
        nt_metrics.mqtt_connection_losses++;
        nt_log(NT_LOG_WARN, "mqtt", "lost connection to broker %s:%d: %s", c->cfg->mqtt_host,
               c->cfg->mqtt_port, why);
    } else if (c->state == MQTTCONN_CONNECTING || c->state == MQTTCONN_RESOLVING) {
        nt_log(c->attempts == 0 ? NT_LOG_WARN : NT_LOG_DEBUG, "mqtt",
               "could not connect to broker %s:%d: %s", c->cfg->mqtt_host, c->cfg->mqtt_port, why);
    }
    nt_metrics.mqtt_connected = 0;
    nt_fdwatch_drop(&c->watch);
    uv_timer_stop(&c->connect_timer);
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
    c->naddrs = 0; /* the next connection looks the name up again */
    uv_timer_stop(&c->connect_timer);
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
    nt_mqttconn_t *c = data;
    if (level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING)) {
        nt_log(NT_LOG_DEBUG, "mqtt", "libmosquitto: %s", str);
    }
    if ((level & MOSQ_LOG_ERR) && c->last_error[0] == '\0') {
        /* The first error of an attempt names its cause (OpenSSL's reason for a TLS failure);
         * the lines after it repeat or follow from it. */
        snprintf(c->last_error, sizeof(c->last_error), "%s", str);
    }
}

/* ---- connecting ------------------------------------------------------------------------------ */

/* What to poll for while the TLS handshake is under way. libmosquitto's own answer
 * (mosquitto_want_write) stays true from the handshake's first WANT_WRITE until its first
 * SSL_write, after the handshake: polling for it would wake the loop at once, again and again,
 * while the handshake waits for the broker. Writable only until TCP is up, then only when
 * OpenSSL asks to write; readable always (the broker's handshake messages, or its close). */
static int mqttconn__tls_events(nt_mqttconn_t *c)
{
    SSL *ssl = mosquitto_ssl_get(c->mosq);
    int write = !c->tcp_up || (ssl != NULL && SSL_want_write(ssl));
    return UV_READABLE | (write ? UV_WRITABLE : 0);
}

/* The reason of a failed attempt: libmosquitto's logged error when it gave one. */
static void mqttconn__tls_lost(nt_mqttconn_t *c, const char *what)
{
    char why[256];
    snprintf(why, sizeof(why), "%s%s%s", what, c->last_error[0] != '\0' ? ": " : "", c->last_error);
    nt_mqttconn_abort(c);
    nt_mqttconn_lost(c, why);
}

/* One step of the TLS handshake, on an event of the socket. Every step either moves the
 * handshake on (libmosquitto's read drives it: its write does nothing until it is done) or
 * ends the attempt: a failed TCP connect (SO_ERROR), the broker closing or resetting the
 * socket, or a TLS error. libmosquitto 2.0 itself reports a refused or reset socket during the
 * handshake as success (SSL_ERROR_SYSCALL), which would poll an error forever; hence the checks
 * of the socket before each step. */
static void mqttconn__tls_step(nt_mqttconn_t *c, int status, int events)
{
    int fd = mosquitto_socket(c->mosq);
    if (fd < 0) {
        nt_mqttconn_lost(c, "connection closed during the TLS handshake");
        return;
    }
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
        err = errno;
    }
    if (err != 0 || status < 0) {
        mqttconn__tls_lost(c, err != 0 ? strerror(err) : uv_strerror(status));
        return;
    }
    if (!c->tcp_up) {
        if (!(events & UV_WRITABLE)) {
            nt_mqttconn_watch(c, c->want_read, 1);
            return;
        }
        c->tcp_up = 1;
    }
    if (events & UV_READABLE) {
        char b;
        ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            mqttconn__tls_lost(c, n == 0 ? "the broker closed the connection during the TLS "
                                           "handshake"
                                         : strerror(errno));
            return;
        }
    }
    int rc = mosquitto_loop_read(c->mosq, 1);
    if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(c->mosq) < 0) {
        mqttconn__tls_lost(c, rc == MOSQ_ERR_ERRNO     ? strerror(errno)
                              : rc == MOSQ_ERR_SUCCESS ? "TLS handshake failed"
                                                       : mosquitto_strerror(rc));
        return;
    }
    SSL *ssl = mosquitto_ssl_get(c->mosq);
    if (ssl == NULL || SSL_is_init_finished(ssl)) {
        c->tls_handshake = 0; /* CONNECT goes out next, CONNACK as without TLS */
        nt_log(NT_LOG_DEBUG, "mqtt", "TLS handshake with %s:%d done (%s)", c->cfg->mqtt_host,
               c->cfg->mqtt_port, ssl != NULL ? SSL_get_version(ssl) : "?");
    }
    nt_mqttconn_watch(c, c->want_read, 1);
}

static void mqttconn__on_io(nt_fdwatch_t *w, int status, int events, void *data)
{
    nt_mqttconn_t *c = data;
    if (c->tls_handshake && c->state == MQTTCONN_CONNECTING) {
        mqttconn__tls_step(c, status, events);
        return;
    }
    c->cbs.on_io(c, status, events, c->data);
}

/* Hands the CONNECT properties (session expiry, maximum packet size) to libmosquitto once. Its only
 * v5 connect call that takes them, mosquitto_connect_bind_v5, also connects -- blocking. It stores
 * the properties before it checks its arguments, so a call with a keep-alive it refuses (1 s: below
 * its minimum of 5) stores them without touching the network; mosquitto_connect_bind_async then
 * connects with them. 0 or NT_EMQTT. (A libmosquitto that stopped keeping them would start sessions
 * that do not outlive a disconnect: the broker-restart and kill -9 tests would lose messages.) */
static int mqttconn__prime(nt_mqttconn_t *c)
{
    if (c->configured) {
        return 0;
    }
    int rc = mosquitto_connect_bind_v5(c->mosq, "localhost", 1883, 1, NULL, c->connect_props);
    if (rc != MOSQ_ERR_INVAL) {
        nt_log(NT_LOG_ERROR, "mqtt", "could not hand the CONNECT properties to libmosquitto: %s",
               mosquitto_strerror(rc));
        return NT_EMQTT;
    }
    c->configured = 1;
    return 0;
}

/* Starts the TCP connection to addr (a numeric address, or the name itself for TLS, whose
 * certificate check needs it) without blocking: the CONNECT packet waits for the socket. */
static void mqttconn__open_socket(nt_mqttconn_t *c, const char *addr)
{
    if (mqttconn__prime(c) != 0) {
        nt_mqttconn_lost(c, "libmosquitto refused the CONNECT properties");
        return;
    }
    uv_timer_start(&c->connect_timer, mqttconn__on_connect_timer,
                   (uint64_t)c->cfg->mqtt_connect_timeout_ms, 0);
    c->last_error[0] = '\0';
    int rc = mosquitto_connect_bind_async(c->mosq, addr, c->cfg->mqtt_port,
                                          (int)c->cfg->mqtt_keepalive_s, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        nt_mqttconn_lost(c, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
        return;
    }
    c->state = MQTTCONN_CONNECTING;
    c->tls_handshake = c->cfg->mqtt_tls;
    c->tcp_up = 0;
    nt_mqttconn_watch(c, c->want_read, 1);
}

static void mqttconn__on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    nt_mqttconn_t *c = req->data;
    c->resolving = 0;
    c->naddrs = 0;
    c->next_addr = 0;
    for (struct addrinfo *ai = status == 0 ? res : NULL; ai != NULL && c->naddrs < MQTTCONN_ADDRS;
         ai = ai->ai_next) {
        struct sockaddr_storage ss;
        memcpy(&ss, ai->ai_addr, ai->ai_addrlen < sizeof(ss) ? ai->ai_addrlen : sizeof(ss));
        char *out = c->addrs[c->naddrs];
        int rc =
            ai->ai_family == AF_INET6  ? uv_ip6_name((const struct sockaddr_in6 *)(const void *)&ss,
                                                     out, sizeof(c->addrs[0]))
            : ai->ai_family == AF_INET ? uv_ip4_name((const struct sockaddr_in *)(const void *)&ss,
                                                     out, sizeof(c->addrs[0]))
                                       : -1;
        if (rc == 0) {
            c->naddrs++;
        }
    }
    uv_freeaddrinfo(res);
    if (c->state == MQTTCONN_RESOLVING) {
        if (c->naddrs == 0) {
            char why[512];
            snprintf(why, sizeof(why), "could not look up \"%s\": %s", c->cfg->mqtt_host,
                     status < 0 ? uv_strerror(status) : "no address");
            nt_mqttconn_lost(c, why);
        } else {
            const char *addr = c->addrs[c->next_addr++];
            mqttconn__open_socket(c, c->cfg->mqtt_tls ? c->cfg->mqtt_host : addr);
        }
    }
    mqttconn__unref(c); /* the lookup's hold on the connection */
}

static void mqttconn__on_connect_timer(uv_timer_t *t)
{
    nt_mqttconn_t *c = t->data;
    if (c->state == MQTTCONN_RESOLVING || c->state == MQTTCONN_CONNECTING) {
        char why[96];
        snprintf(why, sizeof(why), "no answer within %lld ms",
                 (long long)c->cfg->mqtt_connect_timeout_ms);
        if (c->state == MQTTCONN_CONNECTING) {
            nt_mqttconn_abort(c);
        }
        nt_mqttconn_lost(c, why);
    }
}

/* One connection attempt, every step off the loop: the name is looked up on libuv's thread pool
 * (libmosquitto's own lookup would block), then libmosquitto opens a non-blocking socket to the
 * address found; the connect timer bounds the whole attempt. */
static void mqttconn__connect(nt_mqttconn_t *c)
{
    if (c->held || c->state == MQTTCONN_CLOSING) {
        return;
    }
    if (c->resolving) {
        mqttconn__schedule_reconnect(c); /* an abandoned lookup has not ended yet */
        return;
    }
    c->state = MQTTCONN_RESOLVING; /* a lookup is bounded by the resolver's own timeouts */
    struct in6_addr a6;
    struct in_addr a4;
    if (inet_pton(AF_INET, c->cfg->mqtt_host, &a4) == 1 ||
        inet_pton(AF_INET6, c->cfg->mqtt_host, &a6) == 1) {
        mqttconn__open_socket(c, c->cfg->mqtt_host); /* numeric: nothing to look up */
        return;
    }
    if (c->next_addr < c->naddrs && !c->cfg->mqtt_tls) {
        /* The last lookup gave more than one address: try the next before looking up again. */
        mqttconn__open_socket(c, c->addrs[c->next_addr++]);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    c->resolver.data = c;
    int rc = uv_getaddrinfo(c->loop, &c->resolver, mqttconn__on_resolved, c->cfg->mqtt_host, NULL,
                            &hints);
    if (rc != 0) {
        char why[512];
        snprintf(why, sizeof(why), "could not look up \"%s\": %s", c->cfg->mqtt_host,
                 uv_strerror(rc));
        nt_mqttconn_lost(c, why);
        return;
    }
    c->resolving = 1;
    c->handles_open++;
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

/* ---- the client key's passphrase ---------------------------------------------------------------
 */

/* Copies the passphrase of mqtt.key_password_file into OpenSSL's buffer. Never the terminal:
 * without one the answer is "none", and an encrypted key fails to load. */
static int mqttconn__passphrase(const char *password, char *buf, int size)
{
    size_t n = password != NULL ? strlen(password) : 0;
    if (n == 0 || size <= 0 || n >= (size_t)size) {
        return 0;
    }
    memcpy(buf, password, n);
    return (int)n;
}

/* libmosquitto's pw_callback: its userdata is the struct mosquitto, whose own userdata is us. */
static int mqttconn__pw_callback(char *buf, int size, int rwflag, void *userdata)
{
    const nt_mqttconn_t *c = mosquitto_userdata(userdata);
    return mqttconn__passphrase(c->cfg->mqtt_key_password, buf, size);
}

typedef struct {
    const char *password;
    int asked; /* the key is encrypted: OpenSSL asked for its passphrase */
} mqttconn__ask_t;

static int mqttconn__probe_callback(char *buf, int size, int rwflag, void *userdata)
{
    mqttconn__ask_t *ask = userdata;
    ask->asked = 1;
    return mqttconn__passphrase(ask->password, buf, size);
}

/* Loads mqtt.key_file once at start-up, so that a key that cannot be used is a clear error now
 * rather than a TLS failure at every connection attempt: encrypted without
 * mqtt.key_password_file, a passphrase that does not decrypt it, or unreadable. 0 or NT_ECONFIG
 * (logged). */
static int mqttconn__check_key(const nt_mqttconn_t *c)
{
    const char *path = c->cfg->mqtt_key_file;
    mqttconn__ask_t ask = {c->cfg->mqtt_key_password, 0};
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        nt_log(NT_LOG_ERROR, "mqtt", "could not load the TLS client key \"%s\" (mqtt.key_file): %s",
               path, strerror(errno));
        return NT_ECONFIG;
    }
    ERR_clear_error();
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, mqttconn__probe_callback, &ask);
    fclose(f);
    if (key != NULL) {
        EVP_PKEY_free(key);
        return 0;
    }
    char reason[256];
    ERR_error_string_n(ERR_peek_last_error(), reason, sizeof(reason));
    ERR_clear_error();
    nt_log(NT_LOG_ERROR, "mqtt", "could not load the TLS client key \"%s\" (mqtt.key_file): %s",
           path,
           !ask.asked             ? reason
           : ask.password == NULL ? "it is encrypted and mqtt.key_password_file is not set (the "
                                    "collector never asks for a passphrase on the terminal)"
                                  : "the passphrase in mqtt.key_password_file does not decrypt it");
    return NT_ECONFIG;
}

/* Options, callbacks and credentials of a new client. 0 or NT_ECONFIG (logged). */
static int mqttconn__configure(nt_mqttconn_t *c)
{
    const nt_config_t *cfg = c->cfg;
    mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_int_option(c->mosq, MOSQ_OPT_RECEIVE_MAXIMUM, (int)cfg->mqtt_receive_maximum);
    mosquitto_int_option(c->mosq, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_int_option(c->mosq, MOSQ_OPT_SEND_MAXIMUM, MQTTCONN_SEND_MAXIMUM);
    /* Threaded mode makes libmosquitto queue PUBACKs until the owner calls loop_write. */
    mosquitto_threaded_set(c->mosq, true);
    int rc = mosquitto_property_add_int32(&c->connect_props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
                                          (uint32_t)cfg->mqtt_session_expiry_s);
    if (rc == MOSQ_ERR_SUCCESS) {
        rc = mosquitto_property_add_int32(&c->connect_props, MQTT_PROP_MAXIMUM_PACKET_SIZE,
                                          MQTTCONN_MAXIMUM_PACKET_SIZE);
    }
    mosquitto_message_v5_callback_set(c->mosq, mqttconn__on_message);
    mosquitto_connect_v5_callback_set(c->mosq, mqttconn__on_connect);
    mosquitto_subscribe_v5_callback_set(c->mosq, mqttconn__on_subscribe);
    mosquitto_publish_v5_callback_set(c->mosq, mqttconn__on_publish);
    mosquitto_log_callback_set(c->mosq, mqttconn__on_log);

    if (rc == MOSQ_ERR_SUCCESS && cfg->mqtt_username != NULL) {
        rc = mosquitto_username_pw_set(c->mosq, cfg->mqtt_username, cfg->mqtt_password);
    }
    if (rc == MOSQ_ERR_SUCCESS && cfg->mqtt_tls) {
        /* Always our passphrase callback: OpenSSL's own would prompt on the terminal. */
        rc = mosquitto_tls_set(c->mosq, cfg->mqtt_ca_file,
                               cfg->mqtt_ca_file ? NULL : "/etc/ssl/certs", cfg->mqtt_cert_file,
                               cfg->mqtt_key_file, mqttconn__pw_callback);
    }
    if (rc != MOSQ_ERR_SUCCESS) {
        nt_log(NT_LOG_ERROR, "mqtt", "could not configure the mqtt client: %s",
               mosquitto_strerror(rc));
        return NT_ECONFIG;
    }
    if (cfg->mqtt_tls && cfg->mqtt_key_file != NULL && mqttconn__check_key(c) != 0) {
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
    uv_timer_init(loop, &c->connect_timer);
    c->misc_timer.data = c;
    c->reconnect_timer.data = c;
    c->connect_timer.data = c;
    c->handles_open = 3;
    *out = c;
    return 0;
}

int nt_mqttconn_start(nt_mqttconn_t *c)
{
    uv_timer_start(&c->misc_timer, mqttconn__on_misc_timer, 1000, 1000);
    mqttconn__connect(c);
    return 0;
}

int nt_mqttconn_watch(nt_mqttconn_t *c, int want_read, int may_write)
{
    c->want_read = want_read;
    int fd = mosquitto_socket(c->mosq);
    if (fd < 0) {
        nt_mqttconn_lost(c, "connection closed");
        return NT_EMQTT;
    }
    /* Before CONNACK the queue holds only CONNECT (a reconnect clears libmosquitto's queue):
     * always written. The socket reads until CONNACK whatever the owner wants. */
    if (c->state != MQTTCONN_CONNECTED) {
        may_write = 1;
        want_read = 1;
    }
    int events = c->tls_handshake && c->state == MQTTCONN_CONNECTING
                     ? mqttconn__tls_events(c)
                     : (want_read ? UV_READABLE : 0) |
                           (may_write && mosquitto_want_write(c->mosq) ? UV_WRITABLE : 0);
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
    if (!mosquitto_want_write(c->mosq) || (c->tls_handshake && c->state == MQTTCONN_CONNECTING)) {
        return 0;
    }
    /* libmosquitto writes each queued packet with a write of its own: a burst's PUBACKs would
     * leave as thousands of 4-byte segments, each waking the broker. Corked, they leave as full
     * segments when the burst is written. */
    int fd = mosquitto_socket(c->mosq);
    int on = 1, off = 0;
    int corked = fd >= 0 && setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof(on)) == 0;
    int rc = mosquitto_loop_write(c->mosq, 1);
    if (corked && mosquitto_socket(c->mosq) == fd) {
        setsockopt(fd, IPPROTO_TCP, TCP_CORK, &off, sizeof(off));
    }
    c->last_write_us = nt_mono_us();
    c->at_boundary = !mosquitto_want_write(c->mosq);
    if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(c->mosq) < 0) {
        nt_mqttconn_lost(c, rc != MOSQ_ERR_SUCCESS ? mosquitto_strerror(rc) : "connection closed");
        return NT_EMQTT;
    }
    return 0;
}

int nt_mqttconn_ping(nt_mqttconn_t *c)
{
    static const unsigned char pingreq[2] = {0xC0, 0x00};
    int fd = mosquitto_socket(c->mosq);
    if (c->state != MQTTCONN_CONNECTED || !c->at_boundary || c->cfg->mqtt_tls || fd < 0) {
        return NT_EAGAIN;
    }
    ssize_t n = send(fd, pingreq, sizeof(pingreq), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n == 1) {
        /* Half a PINGREQ went out: nothing else may follow it on this connection. */
        nt_mqttconn_abort(c);
        nt_mqttconn_lost(c, "could not write a whole PINGREQ");
        return NT_EMQTT;
    }
    if (n != (ssize_t)sizeof(pingreq)) {
        return NT_EAGAIN; /* nothing written (socket buffer full): write the queue instead */
    }
    c->last_write_us = nt_mono_us();
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
                        int retain, int *mid)
{
    if (c->state != MQTTCONN_CONNECTED || !nt_fdwatch_active(&c->watch)) {
        return NT_EAGAIN;
    }
    int rc = mosquitto_publish_v5(c->mosq, mid, topic, (int)len, payload, 1, retain != 0, NULL);
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

void nt_mqttconn_unhold(nt_mqttconn_t *c)
{
    if (!c->held) {
        return;
    }
    c->held = 0;
    if (c->state == MQTTCONN_IDLE && !uv_is_active((uv_handle_t *)&c->reconnect_timer)) {
        c->attempts = 0;
        mqttconn__connect(c);
    }
}

int64_t nt_mqttconn_last_write_us(const nt_mqttconn_t *c)
{
    return c->last_write_us;
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
    uv_timer_stop(&c->connect_timer);
    if (c->resolving) {
        uv_cancel((uv_req_t *)&c->resolver); /* its callback still runs, and lets go of c */
    }
    uv_close((uv_handle_t *)&c->misc_timer, mqttconn__timer_closed);
    uv_close((uv_handle_t *)&c->reconnect_timer, mqttconn__timer_closed);
    uv_close((uv_handle_t *)&c->connect_timer, mqttconn__timer_closed);
}
