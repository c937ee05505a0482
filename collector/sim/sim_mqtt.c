/* sim_mqtt.c -- the simulator's MQTT client: threaded libmosquitto, TLS and credentials from the
 * configuration, the in-flight window and the --rate token bucket. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "needletrace/log.h"
#include "sim.h"

/* A lower-case description of a libmosquitto return code (errno's for MOSQ_ERR_ERRNO). */
static const char *sim__mosq_error(int rc)
{
    switch (rc) {
    case MOSQ_ERR_ERRNO:
        return strerror(errno);
    case MOSQ_ERR_EAI:
        return "could not resolve host name";
    case MOSQ_ERR_NOMEM:
        return "out of memory";
    case MOSQ_ERR_PROTOCOL:
        return "protocol error";
    case MOSQ_ERR_INVAL:
        return "invalid argument";
    case MOSQ_ERR_NO_CONN:
        return "not connected";
    case MOSQ_ERR_CONN_LOST:
        return "connection lost";
    case MOSQ_ERR_TLS:
        return "TLS error";
    case MOSQ_ERR_PAYLOAD_SIZE:
        return "payload too large";
    case MOSQ_ERR_KEEPALIVE:
        return "keepalive timeout";
    case MOSQ_ERR_CONN_REFUSED:
        return "connection refused by the broker";
    default:
        return mosquitto_strerror(rc);
    }
}

/* A lower-case description of an MQTT 3.1.1 CONNACK return code. */
static const char *sim__connack_error(int rc)
{
    switch (rc) {
    case 1:
        return "unacceptable protocol version";
    case 2:
        return "client identifier rejected";
    case 3:
        return "server unavailable";
    case 4:
        return "bad user name or password";
    case 5:
        return "not authorized";
    default:
        return mosquitto_connack_string(rc);
    }
}

/* Initialises the lock and the condition (on CLOCK_MONOTONIC); connects nothing. */
void nt_sim__mqtt_init(nt_sim_mqtt_t *m)
{
    memset(m, 0, sizeof(*m));
    m->connack = -1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->cond, &ca);
    pthread_condattr_destroy(&ca);
}

/* Destroys the lock and the condition, once the network thread is stopped. */
void nt_sim__mqtt_close(nt_sim_mqtt_t *m)
{
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->lock);
}

/* Network thread: records the CONNACK result and wakes the main thread. */
static void sim__on_connect(struct mosquitto *mosq, void *data, int rc)
{
    nt_sim_mqtt_t *m = data;
    pthread_mutex_lock(&m->lock);
    int first = m->connack < 0;
    m->connack = rc;
    m->connected = rc == 0;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    if (rc != 0) {
        nt_log(NT_LOG_ERROR, SIM_MODULE, "broker refused the connection: %s",
               sim__connack_error(rc));
    } else if (!first) {
        nt_log(NT_LOG_INFO, SIM_MODULE, "reconnected to broker");
    }
}

/* Network thread: notes a lost connection (libmosquitto reconnects by itself). */
static void sim__on_disconnect(struct mosquitto *mosq, void *data, int rc)
{
    nt_sim_mqtt_t *m = data;
    pthread_mutex_lock(&m->lock);
    int was_connected = m->connected;
    m->connected = 0;
    if (rc != 0 && was_connected) {
        m->lost++;
    }
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    /* A refused CONNACK was already reported; failed reconnects are not news. */
    if (rc != 0 && was_connected) {
        nt_log(NT_LOG_WARN, SIM_MODULE, "lost connection to broker: %s; reconnecting",
               sim__mosq_error(rc));
    }
}

/* Network thread: a publish is done (PUBACK received at QoS 1, written at QoS 0). */
static void sim__on_publish(struct mosquitto *mosq, void *data, int mid)
{
    nt_sim_mqtt_t *m = data;
    pthread_mutex_lock(&m->lock);
    m->done++;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

/* Publishes handed to libmosquitto and not yet done. Call with m->lock held. */
static uint64_t sim__pending_locked(const nt_sim_mqtt_t *m)
{
    return m->sent > m->done ? m->sent - m->done : 0;
}

/* Publishes handed to libmosquitto and not yet done (takes the lock). */
uint64_t nt_sim__mqtt_pending(nt_sim_mqtt_t *m)
{
    pthread_mutex_lock(&m->lock);
    uint64_t pending = sim__pending_locked(m);
    pthread_mutex_unlock(&m->lock);
    return pending;
}

/* Absolute CLOCK_MONOTONIC deadline us_from_now ahead, for pthread_cond_timedwait. */
static struct timespec sim__deadline(int64_t us_from_now)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_nsec + (us_from_now % 1000000) * 1000;
    ts.tv_sec += (time_t)(us_from_now / 1000000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    return ts;
}

/* Waits until at most max_outstanding publishes are not yet done, or timeout_us passed.
 * Returns 0, or NT_EAGAIN on timeout. */
int nt_sim__mqtt_wait(nt_sim_mqtt_t *m, uint64_t max_outstanding, int64_t timeout_us)
{
    struct timespec deadline = sim__deadline(timeout_us);
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    while (sim__pending_locked(m) > max_outstanding) {
        if (pthread_cond_timedwait(&m->cond, &m->lock, &deadline) == ETIMEDOUT) {
            rc = sim__pending_locked(m) > max_outstanding ? NT_EAGAIN : 0;
            break;
        }
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

/* Waits for the first CONNACK. Returns 0 when accepted, NT_EMQTT when refused or late. */
static int sim__wait_connack(nt_sim_mqtt_t *m)
{
    struct timespec deadline = sim__deadline(SIM_CONNECT_DEADLINE_US);
    pthread_mutex_lock(&m->lock);
    while (m->connack < 0) {
        if (pthread_cond_timedwait(&m->cond, &m->lock, &deadline) == ETIMEDOUT) {
            break;
        }
    }
    int connack = m->connack;
    pthread_mutex_unlock(&m->lock);
    if (connack < 0) {
        nt_log(NT_LOG_ERROR, SIM_MODULE, "could not connect to broker: no CONNACK within %d s",
               (int)(SIM_CONNECT_DEADLINE_US / 1000000));
        return NT_EMQTT;
    }
    return connack == 0 ? 0 : NT_EMQTT;
}

/* Sets the credentials and TLS of the broker connection from the configuration. Returns 0,
 * or NT_EMQTT (logged). */
static int sim__mqtt_configure(nt_sim_mqtt_t *m, const nt_config_t *cfg)
{
    int rc;
    if (cfg->mqtt_username != NULL) {
        rc = mosquitto_username_pw_set(m->mosq, cfg->mqtt_username, cfg->mqtt_password);
        if (rc != MOSQ_ERR_SUCCESS) {
            nt_log(NT_LOG_ERROR, SIM_MODULE, "could not set MQTT credentials: %s",
                   sim__mosq_error(rc));
            return NT_EMQTT;
        }
    }
    if (cfg->mqtt_tls) {
        if (cfg->mqtt_ca_file == NULL) {
            mosquitto_int_option(m->mosq, MOSQ_OPT_TLS_USE_OS_CERTS, 1);
        }
        rc = mosquitto_tls_set(m->mosq, cfg->mqtt_ca_file, NULL, cfg->mqtt_cert_file,
                               cfg->mqtt_key_file, NULL);
        if (rc != MOSQ_ERR_SUCCESS) {
            nt_log(NT_LOG_ERROR, SIM_MODULE, "could not set up TLS for the broker connection: %s",
                   sim__mosq_error(rc));
            return NT_EMQTT;
        }
    }
    return 0;
}

/* Creates the client, connects and starts the network thread. 0, or NT_EMQTT / NT_ENOMEM
 * (logged); on failure m->mosq is NULL. */
int nt_sim__mqtt_start(nt_sim_mqtt_t *m, const nt_config_t *cfg, uint64_t seed)
{
    char client_id[96];
    snprintf(client_id, sizeof(client_id), "needletrace-sim-%" PRIu64 "-%ld", seed, (long)getpid());

    m->mosq = mosquitto_new(client_id, true, m);
    if (m->mosq == NULL) {
        nt_log(NT_LOG_ERROR, SIM_MODULE, "could not create MQTT client: %s", strerror(errno));
        return errno == ENOMEM ? NT_ENOMEM : NT_EMQTT;
    }
    mosquitto_int_option(m->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    mosquitto_int_option(m->mosq, MOSQ_OPT_SEND_MAXIMUM, (int)SIM_WINDOW);
    mosquitto_connect_callback_set(m->mosq, sim__on_connect);
    mosquitto_disconnect_callback_set(m->mosq, sim__on_disconnect);
    mosquitto_publish_callback_set(m->mosq, sim__on_publish);
    mosquitto_reconnect_delay_set(m->mosq, 1, 30, true);
    if (sim__mqtt_configure(m, cfg) != 0) {
        goto err;
    }

    int keepalive = cfg->mqtt_keepalive_s > 0 ? (int)cfg->mqtt_keepalive_s : 30;
    int rc = mosquitto_connect(m->mosq, cfg->mqtt_host, cfg->mqtt_port, keepalive);
    if (rc != MOSQ_ERR_SUCCESS) {
        nt_log(NT_LOG_ERROR, SIM_MODULE, "could not connect to broker \"%s:%d\": %s",
               cfg->mqtt_host, cfg->mqtt_port, sim__mosq_error(rc));
        goto err;
    }
    rc = mosquitto_loop_start(m->mosq);
    if (rc != MOSQ_ERR_SUCCESS) {
        nt_log(NT_LOG_ERROR, SIM_MODULE, "could not start the MQTT network thread: %s",
               sim__mosq_error(rc));
        goto err;
    }
    if (sim__wait_connack(m) != 0) {
        mosquitto_disconnect(m->mosq);
        mosquitto_loop_stop(m->mosq, true);
        goto err;
    }
    nt_log(NT_LOG_INFO, SIM_MODULE, "connected to broker \"%s:%d\" as \"%s\"", cfg->mqtt_host,
           cfg->mqtt_port, client_id);
    return 0;

err:
    mosquitto_destroy(m->mosq);
    m->mosq = NULL;
    return NT_EMQTT;
}

/* Disconnects cleanly and stops the network thread. */
void nt_sim__mqtt_stop(nt_sim_mqtt_t *m)
{
    if (m->mosq == NULL) {
        return;
    }
    mosquitto_disconnect(m->mosq);
    mosquitto_loop_stop(m->mosq, false);
    mosquitto_destroy(m->mosq);
    m->mosq = NULL;
}

/* Sleeps for us microseconds (restarting after signals unless interrupted by SIGINT). */
static void sim__sleep_us(int64_t us)
{
    struct timespec ts = {.tv_sec = (time_t)(us / 1000000), .tv_nsec = (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !nt_sim__interrupted) {
    }
}

/* Takes one token from the bucket, sleeping until one is available. */
void nt_sim__bucket_take(nt_sim_bucket_t *b)
{
    if (b->rate <= 0) {
        return;
    }
    for (;;) {
        int64_t now = nt_mono_us();
        b->tokens += (double)(now - b->last_us) * b->rate / 1e6;
        b->last_us = now;
        if (b->tokens > b->burst) {
            b->tokens = b->burst;
        }
        if (b->tokens >= 1.0) {
            b->tokens -= 1.0;
            return;
        }
        int64_t wait_us = (int64_t)((1.0 - b->tokens) / b->rate * 1e6) + 1;
        sim__sleep_us(wait_us < 50 ? 50 : wait_us);
    }
}

/* Publishes one message once the in-flight window has room. Returns 0, or NT_EMQTT (logged). */
int nt_sim__mqtt_publish(nt_sim_mqtt_t *m, const char *topic, const uint8_t *payload, size_t len,
                         int qos)
{
    if (nt_sim__mqtt_wait(m, SIM_WINDOW - 1, SIM_ACK_DEADLINE_US) != 0) {
        nt_log(NT_LOG_ERROR, SIM_MODULE,
               "broker did not acknowledge any of %u messages in flight within %d s", SIM_WINDOW,
               (int)(SIM_ACK_DEADLINE_US / 1000000));
        return NT_EMQTT;
    }

    int64_t deadline = nt_mono_us() + SIM_ACK_DEADLINE_US;
    for (;;) {
        pthread_mutex_lock(&m->lock);
        m->sent++; /* before the call: the callback may run before it returns */
        pthread_mutex_unlock(&m->lock);
        int rc = mosquitto_publish(m->mosq, NULL, topic, (int)len, payload, qos, false);
        /* At QoS 1, NO_CONN means the message was queued but could not be written yet:
         * libmosquitto sends it after reconnecting. Publishing it again would double it. */
        if (rc == MOSQ_ERR_SUCCESS || (rc == MOSQ_ERR_NO_CONN && qos > 0)) {
            break;
        }
        pthread_mutex_lock(&m->lock);
        m->sent--;
        pthread_mutex_unlock(&m->lock);
        /* QoS 0 cannot be queued while disconnected: wait for the reconnection. */
        if (rc == MOSQ_ERR_NO_CONN && nt_mono_us() < deadline && !nt_sim__interrupted) {
            sim__sleep_us(100000);
            continue;
        }
        nt_log(NT_LOG_ERROR, SIM_MODULE, "could not publish to \"%s\": %s", topic,
               sim__mosq_error(rc));
        return NT_EMQTT;
    }
    return 0;
}
