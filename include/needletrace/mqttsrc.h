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
