/* bgcall.h -- one blocking call on a thread of its own, its end reported on the loop, and the loop
 * never waiting for it.
 *
 * For the few calls libpq and libc only offer blocking: a cancel request (PQcancel: a connect
 * and a write to the server, which may hang on a dead network for the kernel's connect timeout)
 * and a host name lookup (getaddrinfo: the resolver's timeouts and retries). The call runs on a
 * detached thread; when it returns, done runs on the loop. The owner bounds the wait with its
 * own timer and abandons the call when it stops caring (or closes): done then never runs, the
 * call finishes on its thread and frees what it holds there. The loop is never kept alive by a
 * call in flight, so a stop is never held up by a lookup or a cancel that hangs: the owner's
 * timer that bounds the wait is what keeps the loop running until done.
 *
 * The handle lives on the loop's thread: nt_bgcall_start and nt_bgcall_abandon are called there,
 * done runs there; fn and (after an abandon) free_arg run on the call's thread. */
#ifndef NEEDLETRACE_BGCALL_H
#define NEEDLETRACE_BGCALL_H

#include <uv.h>

typedef struct nt_bgcall_s nt_bgcall_t;

/* The blocking call, on its thread: reads and writes arg only. */
typedef void (*nt_bgcall_fn)(void *arg);
/* Frees arg once the call is over: on the loop after done, or on the call's thread after an
 * abandon. */
typedef void (*nt_bgcall_free_fn)(void *arg);
/* On the loop, after fn returned: arg holds its result (valid during the call only). Not called
 * after nt_bgcall_abandon(). The call is over when it returns: c is freed. */
typedef void (*nt_bgcall_done_cb)(nt_bgcall_t *c, void *arg, void *data);

/* Starts fn(arg) on a new thread. Returns 0 with *out set; or NT_ENOMEM / NT_EIO (the thread
 * could not be created) -- then nothing runs, no callback comes, and arg is the caller's again
 * (not freed). */
int nt_bgcall_start(uv_loop_t *loop, nt_bgcall_fn fn, void *arg, nt_bgcall_free_fn free_arg,
                    nt_bgcall_done_cb done, void *data, nt_bgcall_t **out);

/* The owner no longer waits for c: done will not run; c and arg are freed when fn returns.
 * Only before done ran. */
void nt_bgcall_abandon(nt_bgcall_t *c);

#endif
