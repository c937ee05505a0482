/* http.h -- a minimal HTTP/1.1 listener on the loop: /metrics, /healthz, /readyz.
 *
 * GET only, one request per connection (Connection: close), request head bounded to
 * 4 KiB and read within 5 s, at most 64 clients at once. Anything else gets 400/404/405. */
#ifndef NEEDLETRACE_HTTP_H
#define NEEDLETRACE_HTTP_H

#include <uv.h>

typedef struct nt_http_s nt_http_t;

/* Returns 1 when the service is ready (broker and database connected, journal below
 * its bound); reason gets a short explanation when not ready. */
typedef int (*nt_http_ready_cb)(void *data, char *reason, size_t reason_len);

/* Binds host:port and starts listening. NT_EIO (logged by the caller) if bind fails. */
int nt_http_start(uv_loop_t *loop, nt_http_t **out, const char *host, int port,
                  nt_http_ready_cb ready, void *data);
/* Stops listening, closes every client; frees itself once all handles are closed. */
void nt_http_stop(nt_http_t *h);

#endif
