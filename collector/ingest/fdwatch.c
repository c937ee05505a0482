/* fdwatch.c -- a fresh uv_poll_t per library-owned socket (see fdwatch.h). */
#include "needletrace/fdwatch.h"

#include <stdlib.h>

#include "needletrace/common.h"

static void fdwatch__closed(uv_handle_t *h)
{
    free(h);
}

static void fdwatch__on_poll(uv_poll_t *h, int status, int events)
{
    nt_fdwatch_t *w = h->data;
    w->cb(w, status, events, w->data);
}

void nt_fdwatch_init(nt_fdwatch_t *w, uv_loop_t *loop, nt_fdwatch_cb cb, void *data)
{
    w->loop = loop;
    w->poll = NULL;
    w->fd = -1;
    w->events = 0;
    w->cb = cb;
    w->data = data;
}

void nt_fdwatch_drop(nt_fdwatch_t *w)
{
    if (w->poll != NULL) {
        uv_poll_stop(w->poll);
        uv_close((uv_handle_t *)w->poll, fdwatch__closed);
        w->poll = NULL;
    }
    w->fd = -1;
    w->events = 0;
}

int nt_fdwatch_set(nt_fdwatch_t *w, int fd, int events)
{
    if (fd < 0) {
        return NT_EINVAL;
    }
    if (w->poll == NULL || w->fd != fd) {
        nt_fdwatch_drop(w);
        uv_poll_t *p = malloc(sizeof(*p));
        if (p == NULL) {
            return NT_ENOMEM;
        }
        if (uv_poll_init_socket(w->loop, p, fd) != 0) {
            free(p);
            return NT_EIO;
        }
        p->data = w;
        w->poll = p;
        w->fd = fd;
    }
    w->events = events;
    if (events == 0) {
        uv_poll_stop(w->poll);
    } else {
        uv_poll_start(w->poll, events, fdwatch__on_poll);
    }
    return 0;
}

int nt_fdwatch_active(const nt_fdwatch_t *w)
{
    return w->poll != NULL;
}
