/* syncer.h -- the journal's fdatasync on a thread of its own, so that the loop keeps serving the
 * database (and everything else) while the disk works: one sync at a time, completion on the loop.
 */
#ifndef NEEDLETRACE_SYNCER_H
#define NEEDLETRACE_SYNCER_H

#include <uv.h>

#include "needletrace/journal.h"

typedef struct nt_syncer_s nt_syncer_t;

/* Called on the loop thread once the sync started by nt_syncer_start has run. */
typedef void (*nt_syncer_done_cb)(nt_syncer_t *s, void *data);

/* 0 or NT_ENOMEM. Without a thread (pthread_create failed) syncs run on the loop thread. */
int nt_syncer_init(uv_loop_t *loop, nt_syncer_t **out, nt_syncer_done_cb done, void *data);

/* Runs nt_journal_sync_run(req) on the syncer's thread; done follows on the loop. req must stay
 * valid until then. One at a time: never while nt_syncer_busy. */
void nt_syncer_start(nt_syncer_t *s, nt_journal_sync_req_t *req);

/* 1 from nt_syncer_start until its done callback has been called. */
int nt_syncer_busy(const nt_syncer_t *s);

/* Waits for the running sync, if any, and calls done now (before returning). */
void nt_syncer_settle(nt_syncer_t *s);

/* Settles, stops the thread and closes the loop handle; frees itself once closed. */
void nt_syncer_close(nt_syncer_t *s);

#endif
