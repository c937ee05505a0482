/* mqttsrc.h -- the MQTT source: every message the broker delivers is appended to the journal,
 * and acknowledged only once durable.
 *
 * The connection (mqttconn.h) runs libmosquitto in threaded mode, so PUBACKs queue instead of
 * going out at once: the source reads a burst of messages, appends them to the journal,
 * fdatasyncs it once, and only then lets libmosquitto write (mqttsrc__flush is the one place
 * that does), so nothing is acknowledged before it is durable.
 *
 * Faults: a journal write or sync that fails is never acknowledged: the socket is cut (the broker
 * redelivers), no reconnect is made while the journal refuses writes, and the journal is tried
 * again with backoff on a fresh segment until it takes writes (disk full is backpressure, not an
 * exit); then the source reconnects by itself. While the journal is over its bound (journal full)
 * the source keeps reading -- keep-alive, PUBACKs of alerts, the messages the broker may still
 * send -- but holds PUBACKs back except once per keep-alive interval: the MQTT v5 receive maximum
 * (mqtt.receive_maximum) then bounds what comes in, and the connection stays up. */
#ifndef NEEDLETRACE_MQTTSRC_H
#define NEEDLETRACE_MQTTSRC_H

#include <uv.h>

#include "needletrace/config.h"
#include "needletrace/journal.h"

typedef struct nt_mqttsrc_s nt_mqttsrc_t;

/* Called after each journal sync that made new records durable. */
typedef void (*nt_mqttsrc_synced_cb)(nt_mqttsrc_t *m, void *data);
/* Called after every successful (re)connection, once the subscription is sent. */
typedef void (*nt_mqttsrc_connected_cb)(nt_mqttsrc_t *m, void *data);
/* Called when the broker answered one of our publications (reason >= 128: refused). */
typedef void (*nt_mqttsrc_puback_cb)(void *data, int mid, int reason);

/* Creates the source and its broker connection (mqttconn.h) from cfg, which must outlive it.
 * Returns 0, NT_ENOMEM or NT_ECONFIG (logged here). Nothing is connected before _start. */
int nt_mqttsrc_init(uv_loop_t *loop, nt_mqttsrc_t **out, const nt_config_t *cfg,
                    nt_journal_t *journal, nt_mqttsrc_synced_cb on_synced, void *data);

/* Sets who hears about each successful (re)connection (before nt_mqttsrc_start; may be NULL). */
void nt_mqttsrc_set_connected_cb(nt_mqttsrc_t *m, nt_mqttsrc_connected_cb on_connected);

/* Sets who hears about the broker's PUBACKs of our publications (the alert publisher). */
void nt_mqttsrc_set_puback_cb(nt_mqttsrc_t *m, nt_mqttsrc_puback_cb cb, void *data);

/* Publishes payload at QoS 1 on the source's connection and writes it out (after the journal
 * sync that every write waits for). *mid names it in the PUBACK callback. Returns 0, or
 * NT_EAGAIN when not connected or refused by libmosquitto (publish it again later). */
int nt_mqttsrc_publish(nt_mqttsrc_t *m, const char *topic, const void *payload, size_t len,
                       int retain, int *mid);

/* Connects (asynchronously, retrying with backoff) and subscribes. 0. */
int nt_mqttsrc_start(nt_mqttsrc_t *m);
/* Re-checks the journal bound; acknowledges at full speed again once below it. Call after release.
 */
void nt_mqttsrc_poke(nt_mqttsrc_t *m);
/* 1 when connected to the broker and the journal takes writes. */
int nt_mqttsrc_ready(const nt_mqttsrc_t *m);
/* Why the journal refuses writes (the source retries it), or NULL while it takes them. */
const char *nt_mqttsrc_journal_failure(const nt_mqttsrc_t *m);
/* Syncs and acks what was read, disconnects cleanly (the session stays); the source is freed
 * once the loop closed its handles. No callback runs after the call. */
void nt_mqttsrc_close(nt_mqttsrc_t *m);

#endif
