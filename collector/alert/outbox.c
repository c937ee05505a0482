/* outbox.c -- alert bookkeeping for the next transaction: deliveries, gap checks, paging. */
#include "needletrace/outbox.h"

#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/metrics.h"

void nt_outbox_init(nt_outbox_t *o, int64_t now_us)
{
    memset(o, 0, sizeof(*o));
    o->gaps_checked_us = now_us - NT_OUTBOX_GAP_CHECK_US;
    o->undelivered_at_us = now_us;
    nt_alert_list_init(&o->alerts);
}

void nt_outbox_close(nt_outbox_t *o)
{
    nt_alert_list_close(&o->alerts);
    free(o->delivered);
    o->delivered = NULL;
    o->n_delivered = o->cap_delivered = 0;
    free(o->refused);
    o->refused = NULL;
    o->n_refused = o->cap_refused = 0;
}

int nt_outbox_delivered(nt_outbox_t *o, int64_t alert_id)
{
    if (nt_grow(&o->delivered, &o->cap_delivered, o->n_delivered + 1, sizeof(*o->delivered), 64) !=
        0) {
        return NT_ENOMEM;
    }
    o->delivered[o->n_delivered++] = alert_id;
    return 0;
}

int nt_outbox_refused(nt_outbox_t *o, int64_t alert_id)
{
    if (nt_grow(&o->refused, &o->cap_refused, o->n_refused + 1, sizeof(*o->refused), 16) != 0) {
        return NT_ENOMEM;
    }
    o->refused[o->n_refused++] = alert_id;
    return 0;
}

void nt_outbox_request_undelivered(nt_outbox_t *o)
{
    o->undelivered_wanted = 1;
}

void nt_outbox_tick(nt_outbox_t *o, int64_t now_us)
{
    if (o->n_delivered > 0) {
        o->deliveries_aged = 1;
    }
    if (now_us - o->gaps_checked_us >= NT_OUTBOX_GAP_CHECK_US) {
        o->gaps_due = 1;
    }
    if (o->undelivered_more || now_us - o->undelivered_at_us >= NT_OUTBOX_UNDELIVERED_EVERY_US) {
        o->undelivered_more = 0;
        o->undelivered_wanted = 1;
    }
}

int nt_outbox_due_now(const nt_outbox_t *o)
{
    return o->gaps_due || o->n_refused > 0 || o->undelivered_wanted ||
           o->n_delivered >= NT_OUTBOX_DELIVERED_BATCH ||
           (o->n_delivered > 0 && o->deliveries_aged);
}

int nt_outbox_due(const nt_outbox_t *o)
{
    return o->gaps_due || o->n_delivered > 0 || o->n_refused > 0 || o->undelivered_wanted;
}

size_t nt_outbox_take_delivered(nt_outbox_t *o, const int64_t **ids)
{
    o->delivered_in_txn = o->n_delivered;
    *ids = o->delivered;
    return o->n_delivered;
}

size_t nt_outbox_take_refused(nt_outbox_t *o, const int64_t **ids)
{
    o->refused_in_txn = o->n_refused;
    *ids = o->refused;
    return o->n_refused;
}

void nt_outbox_take_gaps(nt_outbox_t *o)
{
    o->gaps_in_txn = 1;
}

void nt_outbox_take_undelivered(nt_outbox_t *o)
{
    o->undelivered_in_txn = 1;
    o->undelivered_first = o->alerts.n;
}

int nt_outbox_collect(nt_outbox_t *o, int64_t alert_id, const char *clinic_id, const char *rule,
                      const char *payload)
{
    return nt_alert_list_push(&o->alerts, alert_id, clinic_id, rule, payload);
}

void nt_outbox_committed(nt_outbox_t *o, int64_t now_us)
{
    /* The alerts before a fetched page were raised by this transaction (its rules or its gap
     * check); the page holds alerts raised before, here or by another replica. */
    size_t raised = o->undelivered_in_txn ? o->undelivered_first : o->alerts.n;
    for (size_t i = 0; i < raised && i < o->alerts.n; i++) {
        const nt_alert_t *a = &o->alerts.items[i];
        nt_metrics.alerts_raised[nt_metrics_alert_label(a->rule, a->payload)]++;
    }
    if (o->delivered_in_txn > 0) {
        memmove(o->delivered, o->delivered + o->delivered_in_txn,
                (o->n_delivered - o->delivered_in_txn) * sizeof(*o->delivered));
        o->n_delivered -= o->delivered_in_txn;
        o->delivered_in_txn = 0;
        o->deliveries_aged = o->n_delivered > 0 && o->deliveries_aged;
    }
    if (o->refused_in_txn > 0) {
        memmove(o->refused, o->refused + o->refused_in_txn,
                (o->n_refused - o->refused_in_txn) * sizeof(*o->refused));
        o->n_refused -= o->refused_in_txn;
        o->refused_in_txn = 0;
    }
    if (o->gaps_in_txn) {
        o->gaps_due = 0;
        o->gaps_checked_us = now_us;
        o->gaps_in_txn = 0;
    }
    if (o->undelivered_in_txn) {
        o->undelivered_wanted = 0;
        o->undelivered_in_txn = 0;
        o->undelivered_at_us = now_us;
        /* A full page: more are waiting; fetch the next page at the next tick, once the
         * deliveries of this one are recorded. */
        o->undelivered_more = o->alerts.n - o->undelivered_first >= NT_OUTBOX_PAGE;
    }
}

void nt_outbox_published(nt_outbox_t *o)
{
    nt_alert_list_clear(&o->alerts);
}

void nt_outbox_aborted(nt_outbox_t *o)
{
    o->delivered_in_txn = 0;
    o->refused_in_txn = 0;
    o->undelivered_in_txn = 0;
    o->gaps_in_txn = 0;
    nt_alert_list_clear(&o->alerts);
}
