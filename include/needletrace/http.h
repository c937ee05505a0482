/* http.h -- a minimal HTTP/1.1 listener on the loop: /metrics, /healthz, /readyz.
 *
 * GET only, one request per connection (Connection: close), request head bounded to
 * 4 KiB (431 beyond) and complete within 5 s of the accept however slowly it trickles (the
 * header deadline), the response written within 5 s. At most 64 connections are open: a new
 * one beyond closes the oldest still waiting for its request, so idle connections never keep a
 * probe out. A request already there at the accept, or at the moment its connection would be
 * closed to make room, is answered at once. Anything else gets 400/404/405. */
#ifndef NEEDLETRACE_HTTP_H
#define NEEDLETRACE_HTTP_H

#include <stddef.h>
#include <uv.h>

/* Largest request head (request line + header fields + the empty line) read, in bytes. */
#define NT_HTTP_HEAD_MAX 4096

typedef struct nt_http_s nt_http_t;

/* ---- parsing (plain functions over bytes: no loop, no socket) ---------------------------- */

/* What a request asks for, by nt_http_route(). */
typedef enum {
    NT_HTTP_ROUTE_METRICS,            /* GET /metrics: 200, Prometheus text */
    NT_HTTP_ROUTE_HEALTHZ,            /* GET /healthz: 200 */
    NT_HTTP_ROUTE_READYZ,             /* GET /readyz: 200 or 503 */
    NT_HTTP_ROUTE_NOT_FOUND,          /* GET of any other path: 404 */
    NT_HTTP_ROUTE_METHOD_NOT_ALLOWED, /* any method but GET: 405 */
} nt_http_route_t;

/* A parsed request line. Pointers point into the head passed to nt_http_parse_request(). */
typedef struct {
    const char *method; /* a token, e.g. "GET" (not NUL-terminated) */
    size_t method_len;
    const char *target; /* origin-form request target as sent: path and query */
    size_t target_len;
    size_t path_len;   /* bytes of target before any '?' */
    const char *query; /* after the '?', NULL when there is none */
    size_t query_len;
    int version_minor; /* 0 for HTTP/1.0, 1 for HTTP/1.1 */
} nt_http_request_t;

/* Returns the length of the request head at buf (through the empty line that ends it: "\n\n"
 * or "\n\r\n"), or 0 while that line has not arrived within len bytes. */
size_t nt_http_head_end(const char *buf, size_t len);

/* Parses a request head of len bytes (normally nt_http_head_end() of them): the request line
 * "METHOD SP /target SP HTTP/1.x" (CRLF or LF), then header fields "name: value" whose names
 * are tokens with no space before the colon (no obs-fold), up to the empty line. Header values
 * are not interpreted. Returns 0 with *out filled; NT_EINVAL when the head is malformed (the
 * server answers 400); NT_ETOOBIG when len exceeds NT_HTTP_HEAD_MAX (431). *out is undefined
 * after a failure. See also nt_http_route(). */
int nt_http_parse_request(const char *head, size_t len, nt_http_request_t *out);

/* Returns what a parsed request asks for: any method but GET is METHOD_NOT_ALLOWED (whatever
 * the path); otherwise the path (the query string is ignored) selects METRICS, HEALTHZ,
 * READYZ or NOT_FOUND. Never fails. */
nt_http_route_t nt_http_route(const nt_http_request_t *req);

/* ---- the listener ------------------------------------------------------------------------ */

/* Returns 1 when the service is ready (broker and database connected, journal below
 * its bound); reason gets a short explanation when not ready. */
typedef int (*nt_http_ready_cb)(void *data, char *reason, size_t reason_len);

/* Binds host:port and starts listening. NT_EIO (logged by the caller) if bind fails. */
int nt_http_start(uv_loop_t *loop, nt_http_t **out, const char *host, int port,
                  nt_http_ready_cb ready, void *data);
/* Stops listening, closes every client; frees itself once all handles are closed. */
void nt_http_close(nt_http_t *h);

#endif
