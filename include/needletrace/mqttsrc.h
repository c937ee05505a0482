/* mqttsrc.h -- the MQTT source: every message the broker delivers is appended to the journal,
 * and acknowledged only once durable.
 *
 * The connection (mqttconn.h) runs libmosquitto in threaded mode, so PUBACKs queue instead of
 * going out at once: the source reads a burst of messages, appends them to the journal,
 * fdatasyncs it once, and only then lets libmosquitto write (mqttsrc__flush is the one place
 * that does), so nothing is acknowledged before it is durable. A failed journal write never
 * acks: the socket is shut down and the broker redelivers. While the journal is at its bound
 * the source stops reading (backpressure: the broker queues). */
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
/* Called once when the journal refused a write: nothing unsynced was acknowledged, the
 * connection is dropped and not made again; the owner should stop (a restart reopens and
 * recovers the journal). */
typedef void (*nt_mqttsrc_failed_cb)(nt_mqttsrc_t *m, void *data);
/* Called when the broker answered one of our publications (reason >= 128: refused). */
typedef void (*nt_mqttsrc_puback_cb)(void *data, int mid, int reason);

/* Creates the source and its broker connection (mqttconn.h) from cfg, which must outlive it.
 * Returns 0, NT_ENOMEM or NT_ECONFIG (logged here). Nothing is connected before _start. */
int nt_mqttsrc_init(uv_loop_t *loop, nt_mqttsrc_t **out, const nt_config_t *cfg,
                    nt_journal_t *journal, nt_mqttsrc_synced_cb on_synced, void *data);

/* Sets the connection and failure callbacks (before nt_mqttsrc_start); either may be NULL. */
void nt_mqttsrc_set_callbacks(nt_mqttsrc_t *m, nt_mqttsrc_connected_cb on_connected,
                              nt_mqttsrc_failed_cb on_failed);

/* Sets who hears about the broker's PUBACKs of our publications (the alert publisher). */
void nt_mqttsrc_set_puback_cb(nt_mqttsrc_t *m, nt_mqttsrc_puback_cb cb, void *data);

/* Publishes payload at QoS 1 on the source's connection and writes it out (after the journal
 * sync that every write waits for). *mid names it in the PUBACK callback. Returns 0, or
 * NT_EAGAIN when not connected or refused by libmosquitto (publish it again later). */
int nt_mqttsrc_publish(nt_mqttsrc_t *m, const char *topic, const void *payload, size_t len,
                       int *mid);

/* Connects (asynchronously, retrying with backoff) and subscribes. 0. */
int nt_mqttsrc_start(nt_mqttsrc_t *m);
/* Re-checks the journal bound; resumes reading if it dropped below it. Call after release. */
void nt_mqttsrc_poke(nt_mqttsrc_t *m);
/* Stops reading new messages; journals and acks what was read. Stays connected. */
void nt_mqttsrc_pause(nt_mqttsrc_t *m);
/* 1 when connected to the broker. */
int nt_mqttsrc_ready(const nt_mqttsrc_t *m);
/* Syncs and acks what was read, disconnects cleanly (the session stays); the source is freed
 * once the loop closed its handles. No callback runs after the call. */
void nt_mqttsrc_close(nt_mqttsrc_t *m);

#endif
