/* mqttsrc.h -- the MQTT source: libmosquitto on a libuv loop, appending every message to the
 * journal.
 *
 * Persistent session, fixed client id, QoS 1. mosquitto_threaded_set(true) makes the
 * PUBACKs queue instead of going out at once: the source reads a burst of messages,
 * appends them to the journal, fdatasyncs it, and only then lets libmosquitto write
 * (mosquitto_loop_write), so nothing is acknowledged before it is durable. A failed
 * journal write never acks: the socket is shut down and the broker redelivers. */
#ifndef NEEDLETRACE_MQTTSRC_H
#define NEEDLETRACE_MQTTSRC_H

#include <uv.h>

#include "needletrace/config.h"
#include "needletrace/journal.h"

typedef struct nt_mqttsrc_s nt_mqttsrc_t;

/* Called after each journal sync that made new records durable. */
typedef void (*nt_mqttsrc_synced_cb)(nt_mqttsrc_t *m, void *data);

int nt_mqttsrc_init(uv_loop_t *loop, nt_mqttsrc_t **out, const nt_config_t *cfg,
                    nt_journal_t *journal, nt_mqttsrc_synced_cb on_synced, void *data);
/* Called after every successful (re)connection, once the subscription is sent. */
typedef void (*nt_mqttsrc_connected_cb)(nt_mqttsrc_t *m, void *data);
/* Called when the broker acknowledged (PUBACK) the publication of an alert. */
typedef void (*nt_mqttsrc_published_cb)(nt_mqttsrc_t *m, int64_t alert_id, void *data);

/* Called once when the journal refused a write: nothing unsynced was acknowledged and the
 * connection is dropped; the owner should stop (a restart reopens and recovers the journal). */
typedef void (*nt_mqttsrc_failed_cb)(nt_mqttsrc_t *m, void *data);

/* Sets the alert publisher's callbacks and the failure callback (before nt_mqttsrc_start). */
void nt_mqttsrc_set_callbacks(nt_mqttsrc_t *m, nt_mqttsrc_connected_cb on_connected,
                              nt_mqttsrc_published_cb on_published, nt_mqttsrc_failed_cb on_failed);

/* Publishes one alert at QoS 1 on topic (payload: JSON). Returns 0 when it was handed to the
 * broker connection (on_published follows the PUBACK; libmosquitto resends after a
 * reconnect), 1 when the alert is already in flight, NT_EAGAIN when not connected or too
 * many alerts are in flight (the caller publishes it again later), NT_EINVAL on a bad
 * argument. */
int nt_mqttsrc_publish_alert(nt_mqttsrc_t *m, int64_t alert_id, const char *topic,
                             const char *payload, size_t payload_len);

/* Connects (asynchronously, retrying with backoff) and subscribes. */
int nt_mqttsrc_start(nt_mqttsrc_t *m);
/* Re-checks the journal bound; resumes reading if it dropped below it. Call after release. */
void nt_mqttsrc_poke(nt_mqttsrc_t *m);
/* Stops reading new messages; journals and acks what was read. Stays connected. */
void nt_mqttsrc_pause(nt_mqttsrc_t *m);
int nt_mqttsrc_ready(const nt_mqttsrc_t *m);
/* Disconnects cleanly and closes handles; frees itself when they are closed. */
void nt_mqttsrc_close(nt_mqttsrc_t *m);

#endif
