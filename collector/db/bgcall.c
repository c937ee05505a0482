/* bgcall.c -- one blocking call on a detached thread, reported on the loop (see bgcall.h). */
#include "needletrace/bgcall.h"

#include <pthread.h>
#include <stdlib.h>

#include "needletrace/common.h"

struct nt_bgcall_s {
    pthread_mutex_t lock;
    int refs;      /* the thread's and the loop's: the last one out frees */
    int abandoned; /* under lock: the loop no longer listens (async is closed or closing) */
    uv_async_t async;
    nt_bgcall_fn fn;
    void *arg;
    nt_bgcall_free_fn free_arg;
    nt_bgcall_done_cb done;
    void *data;
};

static void bgcall__unref(nt_bgcall_t *c)
{
    pthread_mutex_lock(&c->lock);
    int left = --c->refs;
    pthread_mutex_unlock(&c->lock);
    if (left == 0) {
        if (c->free_arg != NULL) {
            c->free_arg(c->arg);
        }
        pthread_mutex_destroy(&c->lock);
        free(c);
    }
}

static void bgcall__closed(uv_handle_t *h)
{
    bgcall__unref(h->data);
}

/* Stops listening: under the lock, so that the thread never signals a closed handle. */
static void bgcall__stop_listening(nt_bgcall_t *c)
{
    pthread_mutex_lock(&c->lock);
    c->abandoned = 1;
    pthread_mutex_unlock(&c->lock);
    uv_close((uv_handle_t *)&c->async, bgcall__closed);
}

static void bgcall__on_async(uv_async_t *a)
{
    nt_bgcall_t *c = a->data;
    if (c->abandoned) {
        return;
    }
    c->done(c, c->arg, c->data);
    bgcall__stop_listening(c);
}

static void *bgcall__thread(void *p)
{
    nt_bgcall_t *c = p;
    c->fn(c->arg);
    pthread_mutex_lock(&c->lock);
    if (!c->abandoned) {
        uv_async_send(&c->async);
    }
    pthread_mutex_unlock(&c->lock);
    bgcall__unref(c);
    return NULL;
}

int nt_bgcall_start(uv_loop_t *loop, nt_bgcall_fn fn, void *arg, nt_bgcall_free_fn free_arg,
                    nt_bgcall_done_cb done, void *data, nt_bgcall_t **out)
{
    nt_bgcall_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NT_ENOMEM;
    }
    if (pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c);
        return NT_ENOMEM;
    }
    c->refs = 2;
    c->fn = fn;
    c->arg = arg;
    c->free_arg = free_arg;
    c->done = done;
    c->data = data;
    uv_async_init(loop, &c->async, bgcall__on_async);
    c->async.data = c;
    uv_unref((uv_handle_t *)&c->async); /* the loop never waits for a call */

    pthread_attr_t attr;
    pthread_t tid;
    int rc = pthread_attr_init(&attr);
    if (rc == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&tid, &attr, bgcall__thread, c);
        pthread_attr_destroy(&attr);
    }
    if (rc != 0) {
        c->free_arg = NULL; /* arg stays the caller's */
        c->refs = 1;        /* the thread's never existed */
        bgcall__stop_listening(c);
        return NT_EIO;
    }
    *out = c;
    return 0;
}

void nt_bgcall_abandon(nt_bgcall_t *c)
{
    if (c != NULL && !c->abandoned) {
        bgcall__stop_listening(c);
    }
}
