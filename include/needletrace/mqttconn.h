/* mqttconn.h -- one MQTT connection on the loop: libmosquitto client, connect, reconnect, TLS.
 *
 * Owns the libmosquitto handle (MQTT v5, fixed client id, persistent session with an expiry,
 * QoS 1, credentials and TLS from the configuration), connects without ever blocking the loop
 * (the name is looked up with uv_getaddrinfo, the socket is non-blocking, mqtt.connect_timeout_ms
 * bounds an attempt), reconnects with capped exponential backoff and jitter, keeps the session
 * alive (mosquitto_loop_misc every second) and subscribes to the configured topic (as
 * $share/<group>/... when a share group is set) after every CONNACK.
 *
 * It never decides when to read or to write: the owner (the MQTT source) is told when the
 * socket is ready and calls nt_mqttconn_read() / nt_mqttconn_write() itself, so that the rule
 * "nothing is acknowledged before it is durable" lives in the owner alone. libmosquitto runs
 * in threaded mode: the PUBACK of a received message only goes out at the next write. */
#ifndef NEEDLETRACE_MQTTCONN_H
#define NEEDLETRACE_MQTTCONN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "needletrace/config.h"

struct mosquitto_message;
typedef struct nt_mqttconn_s nt_mqttconn_t;

/* What the connection tells its owner. Every callback may be NULL but on_io and on_message. */
typedef struct {
    /* The socket is ready (UV_READABLE / UV_WRITABLE; status < 0: polling failed, read to let
     * libmosquitto find out what happened). */
    void (*on_io)(nt_mqttconn_t *c, int status, int events, void *data);
    /* A PUBLISH arrived (called from inside nt_mqttconn_read). */
    void (*on_message)(nt_mqttconn_t *c, const struct mosquitto_message *msg, void *data);
    /* The broker accepted the connection and the subscription was sent. */
    void (*on_connected)(nt_mqttconn_t *c, void *data);
    /* The connection is gone; a reconnect is scheduled after this returns (unless held). */
    void (*on_lost)(nt_mqttconn_t *c, void *data);
    /* The broker answered a QoS 1 publication of ours (reason >= 128: refused). */
    void (*on_published)(nt_mqttconn_t *c, int mid, int reason, void *data);
    /* Every second while a socket is open, after the keepalive work. */
    void (*on_tick)(nt_mqttconn_t *c, void *data);
    /* After nt_mqttconn_close, once the loop closed every handle: the last callback, after
     * which the connection is freed (the owner may free itself here). */
    void (*on_closed)(nt_mqttconn_t *c, void *data);
} nt_mqttconn_cbs_t;

/* Creates the client from cfg (which must outlive the connection). Returns 0, NT_ENOMEM, or
 * NT_ECONFIG when libmosquitto refused the credentials or TLS settings (logged here). */
int nt_mqttconn_init(uv_loop_t *loop, nt_mqttconn_t **out, const nt_config_t *cfg,
                     const nt_mqttconn_cbs_t *cbs, void *data);

/* Starts the keepalive timer and the first connection attempt. 0. */
int nt_mqttconn_start(nt_mqttconn_t *c);

/* Sets what the owner wants to hear about: UV_READABLE when want_read, UV_WRITABLE whenever
 * libmosquitto has bytes to write and may_write allows it (before CONNACK the socket is always
 * read and written: only CONNECT and CONNACK pass). want_read also applies to the socket of the
 * next connection attempt (1 until the owner says otherwise). Returns 0, or NT_EMQTT when the
 * connection was lost (the loss is handled: on_lost was called). */
int nt_mqttconn_watch(nt_mqttconn_t *c, int want_read, int may_write);

/* Records whether the owner wants to read, for the socket of the next connection attempt,
 * without touching the current one (for use while no socket is open). */
void nt_mqttconn_want_read(nt_mqttconn_t *c, int want_read);

/* Reads one packet (messages go to on_message). Returns 0, or NT_EMQTT when the connection
 * was lost (handled, on_lost called). */
int nt_mqttconn_read(nt_mqttconn_t *c);

/* Writes what libmosquitto queued (PUBACKs, publications, pings). The owner calls it only
 * once every message read so far is durable. 0, or NT_EMQTT when the connection was lost. */
int nt_mqttconn_write(nt_mqttconn_t *c);

/* Sends a PINGREQ ahead of what libmosquitto has queued (its one queue keeps packets in order, so
 * its own PINGREQ waits behind the PUBACKs an owner holds back): written straight to the socket,
 * only at a packet boundary (the last write left nothing half written) and only in plain TCP (a
 * TLS stream belongs to libmosquitto). The PINGRESP is read as usual, which keeps both the broker's
 * and libmosquitto's keep-alive satisfied. 0; NT_EAGAIN when it cannot be done now (then write
 * the queue instead); NT_EMQTT when only half of it went out (the connection was cut: lost). */
int nt_mqttconn_ping(nt_mqttconn_t *c);

/* 1 when libmosquitto has bytes queued for the broker. */
int nt_mqttconn_want_write(const nt_mqttconn_t *c);

/* Bytes waiting in the socket's receive queue (0 when unknown or not connected). */
int nt_mqttconn_pending(const nt_mqttconn_t *c);

/* Publishes payload at QoS 1 on topic (retained when retain); *mid gets the message id that
 * on_published will name. Returns 0, or NT_EAGAIN when not connected or libmosquitto refused (try
 * again later). The bytes go out at the owner's next nt_mqttconn_write(). */
int nt_mqttconn_publish(nt_mqttconn_t *c, const char *topic, const void *payload, size_t len,
                        int retain, int *mid);

/* Cuts the connection at once (shutdown(2) on the socket), without a DISCONNECT: the broker
 * then redelivers everything not acknowledged. The loss is noticed by the next read. */
void nt_mqttconn_abort(nt_mqttconn_t *c);

/* Handles the loss of the connection: logs why, drops the socket watch, calls on_lost and
 * schedules a reconnect (unless held or closing). Safe to call more than once. */
void nt_mqttconn_lost(nt_mqttconn_t *c, const char *why);

/* No further connection attempts (e.g. while the journal cannot be written). */
void nt_mqttconn_hold(nt_mqttconn_t *c);

/* Ends a hold: connects at once when no attempt is under way. */
void nt_mqttconn_unhold(nt_mqttconn_t *c);

/* Monotonic time (nt_mono_us) of the last write to the broker; 0 before the first. */
int64_t nt_mqttconn_last_write_us(const nt_mqttconn_t *c);

/* 1 after CONNACK, until the connection is lost or closed. */
int nt_mqttconn_connected(const nt_mqttconn_t *c);

/* 1 while a socket is open and watched (connecting or connected). */
int nt_mqttconn_open(const nt_mqttconn_t *c);

/* The subscription topic (with $share/<group>/ when set), for log messages. */
const char *nt_mqttconn_topic(const nt_mqttconn_t *c);

/* Closes the socket and the handles and frees the connection once the loop has closed them;
 * no callback but on_closed runs after the call. With graceful, first sends DISCONNECT (keeping the
 * session) when connected: only when the owner made everything it read durable, since that write
 * also sends the queued PUBACKs. */
void nt_mqttconn_close(nt_mqttconn_t *c, int graceful);

#endif
