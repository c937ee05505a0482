/* outbox.h -- the database side of the alert path: what the next transaction must record or
 * fetch so that every alert is published, and published once.
 *
 * Plain bookkeeping over data, no I/O and no clock of its own (times are passed in), so that
 * the paging logic is unit-testable. The batch transaction (txn.h) asks it what to do:
 *   - record the deliveries the broker acknowledged (mark_alerts_delivered), and the ones it
 *     refused (mark_alerts_refused: retried after a growing delay, never first in line);
 *   - run the time-based sequence-gap check (check_sequence_gaps) every NT_OUTBOX_GAP_CHECK_US;
 *   - fetch undelivered alerts (undelivered_alerts, pages of NT_OUTBOX_PAGE): after the broker
 *     connection came back, after alerts had to wait, every NT_OUTBOX_UNDELIVERED_EVERY_US (for
 *     alerts a stopped replica left behind), and again at the next tick after a full page;
 * and collects the alerts the transaction raised or fetched. After COMMIT, nt_outbox_committed()
 * settles what the transaction did; after a rollback, nt_outbox_aborted() forgets it, and
 * everything is done again by a later transaction. */
#ifndef NEEDLETRACE_OUTBOX_H
#define NEEDLETRACE_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#include "needletrace/alert.h"

#define NT_OUTBOX_GAP_CHECK_US         (5 * 1000000)
#define NT_OUTBOX_PAGE                 1000
#define NT_OUTBOX_UNDELIVERED_EVERY_US (30 * 1000000)
#define NT_OUTBOX_DELIVERED_BATCH      256 /* deliveries that make bookkeeping due at once */

typedef struct {
    /* work waiting for a transaction */
    int64_t *delivered; /* alert ids acknowledged by the broker, not yet recorded */
    size_t n_delivered, cap_delivered;
    int deliveries_aged; /* a tick saw deliveries waiting: record them now */
    int64_t *refused;    /* alert ids the broker refused (PUBACK reason >= 128), not yet recorded */
    size_t n_refused, cap_refused;
    int gaps_due;
    int64_t gaps_checked_us; /* monotonic time of the last committed gap check */
    int undelivered_wanted;
    int undelivered_more;      /* the last fetch was a full page: fetch again at the next tick */
    int64_t undelivered_at_us; /* monotonic time of the last committed fetch */
    /* what the transaction in flight does */
    size_t delivered_in_txn; /* the first delivered[] ids it records */
    size_t refused_in_txn;   /* the first refused[] ids it records */
    int gaps_in_txn;
    int undelivered_in_txn;
    size_t undelivered_first; /* index in alerts where the fetched rows start */
    nt_alert_list_t alerts;   /* raised or fetched by the transaction in flight */
} nt_outbox_t;

/* An empty outbox at monotonic time now_us: the first gap check is due at the first tick. */
void nt_outbox_init(nt_outbox_t *o, int64_t now_us);
void nt_outbox_close(nt_outbox_t *o);

/* The broker acknowledged alert_id. 0, or NT_ENOMEM (then the delivery is not recorded and
 * the alert is published again later: at least once). */
int nt_outbox_delivered(nt_outbox_t *o, int64_t alert_id);
/* The broker refused alert_id. 0, or NT_ENOMEM (then it is retried at its normal time). */
int nt_outbox_refused(nt_outbox_t *o, int64_t alert_id);
/* Undelivered alerts should be fetched by the next transaction. */
void nt_outbox_request_undelivered(nt_outbox_t *o);
/* Marks the periodic work that fell due by now_us. */
void nt_outbox_tick(nt_outbox_t *o, int64_t now_us);
/* 1 when some bookkeeping waits for a transaction. */
int nt_outbox_due(const nt_outbox_t *o);
/* 1 when it should run now: as nt_outbox_due, but acknowledged deliveries alone wait until there
 * are NT_OUTBOX_DELIVERED_BATCH of them or a tick saw them (at most a tick, 1 s), so that a
 * stream of alerts does not add a commit after every batch. */
int nt_outbox_due_now(const nt_outbox_t *o);

/* For the transaction in flight: the deliveries it records (*ids, returns their count, 0 when
 * none); they are forgotten only at nt_outbox_committed. */
size_t nt_outbox_take_delivered(nt_outbox_t *o, const int64_t **ids);
/* The same for the refusals it records. */
size_t nt_outbox_take_refused(nt_outbox_t *o, const int64_t **ids);
/* The transaction in flight runs the gap check. */
void nt_outbox_take_gaps(nt_outbox_t *o);
/* The transaction in flight fetches a page of undelivered alerts. */
void nt_outbox_take_undelivered(nt_outbox_t *o);
/* Keeps an alert row of the transaction in flight. 0 or NT_ENOMEM. */
int nt_outbox_collect(nt_outbox_t *o, int64_t alert_id, const char *clinic_id, const char *rule,
                      const char *payload);

/* The transaction committed at now_us: its deliveries are recorded, its gap check done, its
 * page fetched (a full one asks for the next at the next tick), the alerts it raised counted
 * (needletrace_alerts_raised_total). The collected alerts stay in o->alerts for the caller to
 * publish, until nt_outbox_published(). */
void nt_outbox_committed(nt_outbox_t *o, int64_t now_us);
/* The collected alerts were handed over: forgets them. */
void nt_outbox_published(nt_outbox_t *o);
/* The transaction rolled back or its connection was lost: nothing of it happened. */
void nt_outbox_aborted(nt_outbox_t *o);

#endif
