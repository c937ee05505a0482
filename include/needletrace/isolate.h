/* isolate.h -- finding the message a database refuses, so that it never stalls the others.
 *
 * When a batch transaction rolls back on an error that the rows caused (a data exception, a
 * constraint, an exception raised by a rule: nt_pqutil_classify() says NT_PQ_DATA), the sink
 * retries at once with batches of half the size, from the same journal position, until a batch
 * of one message fails: that message is the poison. It is then committed as a quarantine row
 * (reason db_rejected, the SQLSTATE and message in detail) and everything else commits as usual.
 * Each poison costs about log2(batch size) rolled-back transactions.
 *
 * A failure the rows did not cause (resources, privileges, a missing table: NT_PQ_OPERATIONAL),
 * a quarantine row that fails too, or messages of more than NT_ISOLATE_MAX_STREAK different pens
 * quarantined in a row with nothing else committed (the database refuses everything: no message
 * is to blame; one pen's backlog of refused messages is not that) is not attributed: the sink
 * backs off and says so (log, metric, /readyz) until a batch commits. A conflict with another
 * transaction (NT_PQ_TRANSIENT) is retried after a backoff; when the same batch is refused
 * NT_ISOLATE_MAX_REPEAT times in a row, that is reported as stalled too.
 *
 * Plain bookkeeping over journal positions: no I/O, unit-testable. */
#ifndef NEEDLETRACE_ISOLATE_H
#define NEEDLETRACE_ISOLATE_H

#include <stddef.h>
#include <stdint.h>

#define NT_ISOLATE_NONE       UINT64_MAX
#define NT_ISOLATE_MAX_STREAK 16u /* pens in a row: beyond, the database refuses everything */
#define NT_ISOLATE_MAX_REPEAT 5u  /* the same batch refused this often in a row: say so */

typedef struct {
    uint64_t until;      /* while batches start below this position, they hold <= limit messages */
    uint32_t limit;      /* 0: not isolating */
    uint64_t poison_pos; /* the record to quarantine as db_rejected, NT_ISOLATE_NONE when none */
    char detail[512];    /* its detail: "SQLSTATE 22003: bigint out of range" */
    unsigned streak;     /* pens whose messages were quarantined in a row, nothing else committed */
    char device[65];     /* the pen of the poison (from its topic), "" when unknown */
    char last_device[65]; /* the pen of the last message quarantined */
    uint64_t fail_pos;    /* where the last refused batch started... */
    unsigned fail_count;  /* ...and how many times in a row a batch refused there */
    int stalled;          /* an unattributed failure: backing off until a batch commits */
    char stall[512];      /* why, for the log and /readyz */
} nt_isolate_t;

typedef enum {
    NT_ISOLATE_RETRY = 0,   /* retry at once: smaller batches, or the poison quarantined */
    NT_ISOLATE_BACKOFF = 1, /* retry after a backoff (transient, or stalled: see x->stall) */
} nt_isolate_action_t;

/* Nothing isolated, nothing stalled. */
void nt_isolate_init(nt_isolate_t *x);

/* A batch transaction holding the n messages at journal positions [first, end) rolled back with
 * sqlstate and message. Decides what to do (see above) and returns it; x->stalled and x->stall
 * say when the failure is not attributed. */
nt_isolate_action_t nt_isolate_failed(nt_isolate_t *x, uint64_t first, uint64_t end, uint32_t n,
                                      const char *sqlstate, const char *message);

/* The most messages a batch that starts at journal position pos may hold (0: no bound). */
uint32_t nt_isolate_limit(const nt_isolate_t *x, uint64_t pos);

/* 1 when the record at pos is the poison, to be added as a quarantine row with x->detail. */
int nt_isolate_is_poison(const nt_isolate_t *x, uint64_t pos);

/* Names the pen (device serial) of the poison, once its record is read ("" when unknown). */
void nt_isolate_set_device(nt_isolate_t *x, const char *device_serial);

/* A batch holding [first, end) committed. Returns 1 when it held the poison (now quarantined). */
int nt_isolate_committed(nt_isolate_t *x, uint64_t first, uint64_t end);

#endif
