/* fdwatch.h -- watches one socket that a library owns (libmosquitto's, libpq's) on the loop.
 *
 * Such libraries may close a socket and open another, which can get the same number. A
 * uv_poll_t must never outlive its socket, so the watch keeps a fresh poll handle per socket:
 * nt_fdwatch_set() with another fd (or after nt_fdwatch_drop) closes the old handle first. */
#ifndef NEEDLETRACE_FDWATCH_H
#define NEEDLETRACE_FDWATCH_H

#include <uv.h>

typedef struct nt_fdwatch_s nt_fdwatch_t;

/* Called with UV_READABLE / UV_WRITABLE, or with status < 0 when polling failed (the
 * callback should then let the library find out what happened on its socket). */
typedef void (*nt_fdwatch_cb)(nt_fdwatch_t *w, int status, int events, void *data);

struct nt_fdwatch_s {
    uv_loop_t *loop;
    uv_poll_t *poll; /* NULL when no socket is watched */
    int fd;          /* -1 when none */
    int events;      /* what is being watched */
    nt_fdwatch_cb cb;
    void *data;
};

/* Initialises a watch with no socket. Allocates nothing. */
void nt_fdwatch_init(nt_fdwatch_t *w, uv_loop_t *loop, nt_fdwatch_cb cb, void *data);

/* Watches fd for events (UV_READABLE | UV_WRITABLE; 0 stops watching but keeps the handle).
 * A different fd than before replaces the handle. Returns 0, NT_EINVAL for fd < 0, or
 * NT_ENOMEM / NT_EIO when the handle could not be made (nothing is watched then). */
int nt_fdwatch_set(nt_fdwatch_t *w, int fd, int events);

/* Stops watching and closes the handle (freed by the loop). Call before the library closes
 * the socket, or right after; never touches the socket itself. No-op when nothing is watched. */
void nt_fdwatch_drop(nt_fdwatch_t *w);

/* 1 when a socket is being watched (the owner's notion of "connected at socket level"). */
int nt_fdwatch_active(const nt_fdwatch_t *w);

#endif
