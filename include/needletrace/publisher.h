/* publisher.h -- the MQTT side of the alert path: publishes committed alerts and reports which
 * ones the broker acknowledged.
 *
 * Each alert goes out at QoS 1 on clinics/{clinic_id}/alerts/{rule} over the MQTT source's
 * connection. The publisher keeps the alerts awaiting their PUBACK (at most
 * NT_PUBLISHER_MAX_IN_FLIGHT, by alert id); a PUBACK calls on_delivered, which the outbox
 * records in the database. An alert that cannot be handed over now (not connected, too many in
 * flight) stays undelivered in the database and is fetched again by the outbox. */
#ifndef NEEDLETRACE_PUBLISHER_H
#define NEEDLETRACE_PUBLISHER_H

#include <stddef.h>
#include <stdint.h>

#include "needletrace/alert.h"
#include "needletrace/mqttsrc.h"

#define NT_PUBLISHER_MAX_IN_FLIGHT 4096

typedef struct nt_publisher_s nt_publisher_t;

/* The broker answered the publication of the alert: refused = 0, it acknowledged it (its
 * delivery may be recorded); refused = 1, it refused it (PUBACK reason >= 128: retried later). */
typedef void (*nt_publisher_delivered_cb)(int64_t alert_id, int refused, void *data);

/* Creates a publisher over src (which must outlive it) and registers for src's PUBACKs.
 * Returns 0 or NT_ENOMEM. */
int nt_publisher_init(nt_publisher_t **out, nt_mqttsrc_t *src, nt_publisher_delivered_cb cb,
                      void *data);

/* Builds the topic clinics/{clinic_id}/alerts/{rule} into buf. Returns 0, NT_EINVAL when
 * clinic_id is not an identifier of the wire contract or rule not 1-64 characters of [A-Z0-9_]
 * (both come from the database, and must never add topic levels or wildcards), or NT_ETOOBIG
 * when the topic does not fit in len bytes. */
int nt_publisher_topic(const nt_alert_t *a, char *buf, size_t len);

/* Publishes one alert. Returns 0 when it was handed to the broker connection (libmosquitto
 * resends it after a reconnect), 1 when it is already in flight, NT_EAGAIN when it cannot go
 * now (publish it again later), NT_EINVAL on a bad alert (id <= 0, payload over 256 KiB, a
 * topic that does not fit). */
int nt_publisher_publish(nt_publisher_t *p, const nt_alert_t *a);

/* Publishes every alert of the array; returns how many had to wait (NT_EAGAIN). Other
 * failures are logged here. */
size_t nt_publisher_publish_all(nt_publisher_t *p, const nt_alert_t *alerts, size_t n);

/* Alerts awaiting their PUBACK. */
unsigned nt_publisher_in_flight(const nt_publisher_t *p);

/* Frees the publisher (unregisters from the source first). NULL is a no-op. */
void nt_publisher_close(nt_publisher_t *p);

/* ---- the in-flight table (internal; exposed for unit tests) ------------------------------------
 * Open addressing with linear probing, twice as many slots as the bound, so a probe always ends. */
#define NT_PUBLISHER__SLOTS (2 * NT_PUBLISHER_MAX_IN_FLIGHT)

typedef struct {
    struct {
        int64_t alert_id; /* 0 = free */
        int mid;
        unsigned label; /* nt_metrics_alert_label(), counted when the broker acknowledges it */
    } slots[NT_PUBLISHER__SLOTS];
    unsigned n;
} nt_publisher__table_t;

/* The slot holding alert_id, or the free slot where it would go. */
unsigned nt_publisher__find(const nt_publisher__table_t *t, int64_t alert_id);
/* Puts (alert_id, mid) into the free slot i found by nt_publisher__find (label 0). */
void nt_publisher__put(nt_publisher__table_t *t, unsigned i, int64_t alert_id, int mid);
/* The alert id published as mid and removes it, or 0 when none. */
int64_t nt_publisher__take_mid(nt_publisher__table_t *t, int mid);

#endif
