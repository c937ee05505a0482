/* syncer.c -- a thread that runs the journal's fdatasync, one request at a time (see syncer.h). */
#include "needletrace/syncer.h"

#include <pthread.h>
#include <stdlib.h>

#include "needletrace/common.h"
#include "needletrace/log.h"

struct nt_syncer_s {
    uv_async_t async; /* wakes the loop when a sync has run */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    nt_journal_sync_req_t *req; /* the request to run (thread side), NULL when none */
    int busy;                   /* started, done not yet called (loop side) */
    int finished;               /* the request has run (set by the thread) */
    int quit;
    int threaded; /* the thread runs */
    nt_syncer_done_cb done;
    void *data;
};

static void *syncer__main(void *arg)
{
    nt_syncer_t *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (s->req == NULL && !s->quit) {
            pthread_cond_wait(&s->cond, &s->mu);
        }
        if (s->req == NULL) {
            break; /* quit, nothing left to run */
        }
        nt_journal_sync_req_t *req = s->req;
        pthread_mutex_unlock(&s->mu);
        nt_journal_sync_run(req);
        pthread_mutex_lock(&s->mu);
        s->req = NULL;
        s->finished = 1;
        pthread_cond_broadcast(&s->cond);
        uv_async_send(&s->async);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Calls done when the sync has finished and done was not called yet. */
static void syncer__complete(nt_syncer_t *s)
{
    pthread_mutex_lock(&s->mu);
    int now = s->busy && s->finished;
    if (now) {
        s->busy = 0;
        s->finished = 0;
    }
    pthread_mutex_unlock(&s->mu);
    if (now) {
        s->done(s, s->data);
    }
}

static void syncer__on_async(uv_async_t *a)
{
    syncer__complete(a->data);
}

int nt_syncer_init(uv_loop_t *loop, nt_syncer_t **out, nt_syncer_done_cb done, void *data)
{
    nt_syncer_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return NT_ENOMEM;
    }
    s->done = done;
    s->data = data;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    uv_async_init(loop, &s->async, syncer__on_async);
    s->async.data = s;
    int err = pthread_create(&s->thread, NULL, syncer__main, s);
    if (err != 0) {
        nt_log(NT_LOG_WARN, "journal",
               "could not start the journal's sync thread (error %d): syncing on the main loop",
               err);
    }
    s->threaded = err == 0;
    *out = s;
    return 0;
}

void nt_syncer_start(nt_syncer_t *s, nt_journal_sync_req_t *req)
{
    pthread_mutex_lock(&s->mu);
    s->busy = 1;
    s->finished = 0;
    if (s->threaded) {
        s->req = req;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->mu);
        return;
    }
    pthread_mutex_unlock(&s->mu);
    nt_journal_sync_run(req);
    s->finished = 1;
    uv_async_send(&s->async); /* done on the next turn of the loop, as with the thread */
}

int nt_syncer_busy(const nt_syncer_t *s)
{
    return s->busy;
}

void nt_syncer_settle(nt_syncer_t *s)
{
    pthread_mutex_lock(&s->mu);
    while (s->busy && !s->finished) {
        pthread_cond_wait(&s->cond, &s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    syncer__complete(s);
}

static void syncer__closed(uv_handle_t *h)
{
    nt_syncer_t *s = h->data;
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
    free(s);
}

void nt_syncer_close(nt_syncer_t *s)
{
    nt_syncer_settle(s);
    if (s->threaded) {
        pthread_mutex_lock(&s->mu);
        s->quit = 1;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
        s->threaded = 0;
    }
    uv_close((uv_handle_t *)&s->async, syncer__closed);
}
