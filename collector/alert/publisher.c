/* publisher.c -- publishes committed alerts over MQTT and reports the broker's PUBACKs. */
#include "needletrace/publisher.h"

#include <mosquitto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/ident.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"

struct nt_publisher_s {
    nt_mqttsrc_t *src;
    nt_publisher_delivered_cb on_delivered;
    void *data;
    nt_publisher__table_t table;
};

/* ---- the in-flight table --------------------------------------------------------------------- */

static unsigned publisher__hash(int64_t alert_id)
{
    return (unsigned)(((uint64_t)alert_id * 0x9E3779B97F4A7C15ull) >> 51) % NT_PUBLISHER__SLOTS;
}

unsigned nt_publisher__find(const nt_publisher__table_t *t, int64_t alert_id)
{
    unsigned i = publisher__hash(alert_id);
    while (t->slots[i].alert_id != 0 && t->slots[i].alert_id != alert_id) {
        i = (i + 1) % NT_PUBLISHER__SLOTS;
    }
    return i;
}

void nt_publisher__put(nt_publisher__table_t *t, unsigned i, int64_t alert_id, int mid)
{
    t->slots[i].alert_id = alert_id;
    t->slots[i].mid = mid;
    t->slots[i].label = 0;
    t->n++;
}

/* Empties slot i, re-inserting the cluster behind it (deletion under linear probing). */
static void publisher__remove(nt_publisher__table_t *t, unsigned i)
{
    t->slots[i].alert_id = 0;
    t->n--;
    for (unsigned j = (i + 1) % NT_PUBLISHER__SLOTS; t->slots[j].alert_id != 0;
         j = (j + 1) % NT_PUBLISHER__SLOTS) {
        int64_t id = t->slots[j].alert_id;
        int mid = t->slots[j].mid;
        unsigned label = t->slots[j].label;
        t->slots[j].alert_id = 0;
        unsigned k = nt_publisher__find(t, id);
        t->slots[k].alert_id = id;
        t->slots[k].mid = mid;
        t->slots[k].label = label;
    }
}

/* The alert id published as mid (and its label) and removes it, or 0 when none. */
static int64_t publisher__take(nt_publisher__table_t *t, int mid, unsigned *label)
{
    for (unsigned i = 0; i < NT_PUBLISHER__SLOTS; i++) {
        if (t->slots[i].alert_id != 0 && t->slots[i].mid == mid) {
            int64_t id = t->slots[i].alert_id;
            *label = t->slots[i].label;
            publisher__remove(t, i);
            return id;
        }
    }
    return 0;
}

int64_t nt_publisher__take_mid(nt_publisher__table_t *t, int mid)
{
    unsigned label;
    return publisher__take(t, mid, &label);
}

/* ---- publishing ------------------------------------------------------------------------------ */

static void publisher__on_puback(void *data, int mid, int reason)
{
    nt_publisher_t *p = data;
    unsigned label = 0;
    int64_t id = publisher__take(&p->table, mid, &label);
    if (id == 0) {
        return;
    }
    if (reason >= 128) {
        /* Refused (e.g. not authorised): stays undelivered, retried after a growing delay. */
        nt_log(NT_LOG_WARN, "mqtt", "broker refused alert %lld: %s", (long long)id,
               mosquitto_reason_string(reason));
    } else if (label < NT_METRICS_ALERT_LABELS) {
        nt_metrics.alerts_delivered[label]++;
    }
    if (p->on_delivered != NULL) {
        p->on_delivered(id, reason >= 128, p->data);
    }
}

int nt_publisher_init(nt_publisher_t **out, nt_mqttsrc_t *src, nt_publisher_delivered_cb cb,
                      void *data)
{
    nt_publisher_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return NT_ENOMEM;
    }
    p->src = src;
    p->on_delivered = cb;
    p->data = data;
    nt_mqttsrc_set_puback_cb(src, publisher__on_puback, p);
    *out = p;
    return 0;
}

/* 1 when rule can be a topic level of its own: 1-64 characters of [A-Z0-9_] (the form of the
 * rule names; a rule added by a newer migration passes, a '/', '+' or '#' never does). */
static int publisher__rule_valid(const char *rule)
{
    size_t n = strnlen(rule, 65);
    if (n == 0 || n > 64) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = rule[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_')) {
            return 0;
        }
    }
    return 1;
}

int nt_publisher_topic(const nt_alert_t *a, char *buf, size_t len)
{
    /* Both come from the database: never let them add topic levels or wildcards. */
    if (!nt_ident_id_valid_str(a->clinic_id) || !publisher__rule_valid(a->rule)) {
        return NT_EINVAL;
    }
    int n = snprintf(buf, len, "clinics/%s/alerts/%s", a->clinic_id, a->rule);
    return n < 0 || (size_t)n >= len ? NT_ETOOBIG : 0;
}

int nt_publisher_publish(nt_publisher_t *p, const nt_alert_t *a)
{
    char topic[NT_MAX_TOPIC_LEN];
    size_t len = strlen(a->payload);
    if (a->alert_id <= 0 || len > NT_MAX_PAYLOAD_BYTES ||
        nt_publisher_topic(a, topic, sizeof(topic)) != 0) {
        return NT_EINVAL;
    }
    unsigned i = nt_publisher__find(&p->table, a->alert_id);
    if (p->table.slots[i].alert_id == a->alert_id) {
        return 1;
    }
    if (p->table.n >= NT_PUBLISHER_MAX_IN_FLIGHT) {
        return NT_EAGAIN;
    }
    int mid = 0;
    int rc = nt_mqttsrc_publish(p->src, topic, a->payload, len, 0, &mid);
    if (rc != 0) {
        return rc;
    }
    nt_publisher__put(&p->table, i, a->alert_id, mid);
    p->table.slots[i].label = nt_metrics_alert_label(a->rule, a->payload);
    return 0;
}

size_t nt_publisher_publish_all(nt_publisher_t *p, const nt_alert_t *alerts, size_t n)
{
    size_t deferred = 0;
    for (size_t i = 0; i < n; i++) {
        int rc = nt_publisher_publish(p, &alerts[i]);
        if (rc == NT_EAGAIN) {
            deferred++;
        } else if (rc < 0) {
            nt_log(NT_LOG_ERROR, "alerts", "could not publish alert %lld: %s",
                   (long long)alerts[i].alert_id, nt_strerror(rc));
        }
    }
    return deferred;
}

unsigned nt_publisher_in_flight(const nt_publisher_t *p)
{
    return p->table.n;
}

void nt_publisher_close(nt_publisher_t *p)
{
    if (p == NULL) {
        return;
    }
    nt_mqttsrc_set_puback_cb(p->src, NULL, NULL);
    free(p);
}
