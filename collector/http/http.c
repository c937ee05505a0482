/* http.c -- the metrics and health listener: a minimal HTTP/1.1 server on the libuv loop. The
 * request head is parsed and routed by http_parse.c. */
#include "needletrace/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "needletrace/common.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"

/* A request head must be complete this long after the accept, however slowly its bytes trickle
 * in (an idle connection, a slow-loris): the header deadline. */
#define HTTP__HEAD_TIMEOUT_MS 5000
/* The response must be written and the peer gone this long after it was queued. */
#define HTTP__RESPONSE_TIMEOUT_MS 5000
/* Open connections at most. A new connection beyond it closes the oldest one still waiting for
 * its request head (or, when none is, the oldest at all): a probe is always admitted, however
 * many idle connections hold the listener. */
#define HTTP__MAX_CLIENTS 64
#define HTTP__METRICS_MAX (64 * 1024)
#define HTTP__BACKLOG     128

typedef struct http__client_s http__client_t;

struct nt_http_s {
    uv_loop_t *loop;
    uv_tcp_t server;
    nt_http_ready_cb ready;
    void *data;
    http__client_t *clients; /* doubly linked, newest first, every client not yet freed */
    int nopen;               /* not closing: what HTTP__MAX_CLIENTS bounds */
    int stopping;
    int server_closed;
};

typedef enum {
    HTTP__READING,  /* collecting the request head */
    HTTP__WRITING,  /* response queued */
    HTTP__DRAINING, /* response sent and FIN queued: discard input until the peer closes */
    HTTP__CLOSING,  /* handles closing; freed when both close callbacks ran */
} http__state_t;

struct http__client_s {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t write_req;
    uv_shutdown_t shutdown_req;
    nt_http_t *h;
    http__client_t *prev;
    http__client_t *next;
    http__state_t state;
    int open_handles; /* 2 until the close callbacks ran */
    int peer_done;    /* read EOF or error: the peer sends nothing more */
    size_t len;       /* bytes of head[] filled */
    char *response;   /* heap, owned until the client is freed */
    char head[NT_HTTP_HEAD_MAX];
};

static void http__maybe_free_server(nt_http_t *h)
{
    if (h->stopping && h->server_closed && h->clients == NULL) {
        free(h);
    }
}

static void http__client_closed(uv_handle_t *handle)
{
    http__client_t *c = handle->data;
    if (--c->open_handles > 0) {
        return;
    }
    nt_http_t *h = c->h;
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        h->clients = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    free(c->response);
    free(c);
    http__maybe_free_server(h);
}

/* Closes both handles; pending write/shutdown callbacks run (cancelled) before the frees. */
static void http__client_close(http__client_t *c)
{
    if (c->state == HTTP__CLOSING) {
        return;
    }
    c->state = HTTP__CLOSING;
    c->h->nopen--;
    nt_metrics.http_connections_open = (uint64_t)c->h->nopen;
    uv_close((uv_handle_t *)&c->timer, http__client_closed);
    uv_close((uv_handle_t *)&c->tcp, http__client_closed);
}

static void http__on_timeout(uv_timer_t *timer)
{
    nt_metrics.http_connections_timed_out++;
    http__client_close(timer->data);
}

static void http__on_shutdown(uv_shutdown_t *req, int status)
{
    http__client_t *c = req->data;
    if (status < 0 && c->state != HTTP__CLOSING) {
        http__client_close(c);
    }
}

static void http__on_write(uv_write_t *req, int status)
{
    http__client_t *c = req->data;
    if (c->state == HTTP__CLOSING) {
        return;
    }
    if (status < 0 || c->peer_done) {
        http__client_close(c);
        return;
    }
    /* Half-close and read until the peer's FIN, so unread input cannot turn our close
     * into a reset that discards the response at the client (a "lingering close"). */
    c->state = HTTP__DRAINING;
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, http__on_shutdown) != 0) {
        http__client_close(c);
    }
}

static const char *http__reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 431:
        return "Request Header Fields Too Large";
    case 503:
        return "Service Unavailable";
    default:
        return "Internal Server Error";
    }
}

/* Queues one complete response (head + body) and stops reading the request. */
static void http__respond(http__client_t *c, int status, const char *content_type, const char *body,
                          size_t body_len)
{
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n"
                     "%s"
                     "Connection: close\r\n"
                     "\r\n",
                     status, http__reason(status), content_type, body_len,
                     status == 405 ? "Allow: GET\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof(head)) {
        http__client_close(c);
        return;
    }
    c->response = malloc((size_t)n + body_len);
    if (c->response == NULL) {
        nt_log(NT_LOG_WARN, "http", "could not answer a request: out of memory");
        http__client_close(c);
        return;
    }
    memcpy(c->response, head, (size_t)n);
    memcpy(c->response + n, body, body_len);
    uv_buf_t buf = uv_buf_init(c->response, (unsigned int)((size_t)n + body_len));
    c->state = HTTP__WRITING;
    c->write_req.data = c;
    uv_timer_start(&c->timer, http__on_timeout, HTTP__RESPONSE_TIMEOUT_MS, 0);
    if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &buf, 1, http__on_write) != 0) {
        http__client_close(c);
    }
}

static void http__respond_text(http__client_t *c, int status, const char *text)
{
    http__respond(c, status, "text/plain; charset=utf-8", text, strlen(text));
}

/* Answers GET /metrics with the rendered counters. */
static void http__respond_metrics(http__client_t *c)
{
    char *body = malloc(HTTP__METRICS_MAX);
    if (body == NULL) {
        nt_log(NT_LOG_WARN, "http", "could not render metrics: out of memory");
        http__client_close(c);
        return;
    }
    size_t n = nt_metrics_render(body, HTTP__METRICS_MAX);
    http__respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", body, n);
    free(body);
}

/* Answers GET /readyz: 200, or 503 with the reason the ready callback gives. */
static void http__respond_ready(http__client_t *c)
{
    char reason[200] = "";
    if (c->h->ready == NULL || c->h->ready(c->h->data, reason, sizeof(reason))) {
        http__respond_text(c, 200, "ready\n");
        return;
    }
    char body[256];
    reason[sizeof(reason) - 1] = '\0';
    snprintf(body, sizeof(body), "not ready: %s\n", reason[0] != '\0' ? reason : "unknown reason");
    http__respond_text(c, 503, body);
}

/* Checks the head [head, head + len) (ending in an empty line) and answers it. */
static void http__handle(http__client_t *c, const char *head, size_t len)
{
    nt_http_request_t req;
    int rc = nt_http_parse_request(head, len, &req);
    if (rc == NT_ETOOBIG) {
        http__respond_text(c, 431, "request header too large\n");
        return;
    }
    if (rc != 0) {
        http__respond_text(c, 400, "bad request\n");
        return;
    }
    switch (nt_http_route(&req)) {
    case NT_HTTP_ROUTE_METHOD_NOT_ALLOWED:
        http__respond_text(c, 405, "method not allowed\n");
        break;
    case NT_HTTP_ROUTE_METRICS:
        http__respond_metrics(c);
        break;
    case NT_HTTP_ROUTE_HEALTHZ:
        http__respond_text(c, 200, "ok\n");
        break;
    case NT_HTTP_ROUTE_READYZ:
        http__respond_ready(c);
        break;
    case NT_HTTP_ROUTE_NOT_FOUND:
    default:
        http__respond_text(c, 404, "not found\n");
        break;
    }
}

static void http__on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    http__client_t *c = handle->data;
    if (c->state != HTTP__READING) {
        /* Draining: whatever arrives is discarded into the (no longer needed) head buffer. */
        *buf = uv_buf_init(c->head, sizeof(c->head));
        return;
    }
    *buf = uv_buf_init(c->head + c->len, (unsigned int)(sizeof(c->head) - c->len));
}

/* Takes n new bytes at head[len] of a client still reading its request head: answers once the
 * head is complete, 431 once the buffer is full without it. */
static void http__take(http__client_t *c, size_t n)
{
    size_t before = c->len;
    c->len += n;
    /* Search from just before the new bytes: the terminator may straddle two reads. */
    size_t from = before >= 3 ? before - 3 : 0;
    size_t end = nt_http_head_end(c->head + from, c->len - from);
    /* After a response is queued, reading goes on (discarding) so that the peer's FIN or
     * reset is seen. */
    if (end != 0) {
        http__handle(c, c->head, from + end);
    } else if (c->len == sizeof(c->head)) {
        http__respond_text(c, 431, "request header too large\n");
    }
}

static void http__on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    http__client_t *c = stream->data;
    if (c->state == HTTP__CLOSING) {
        return;
    }
    if (nread < 0) {
        /* EOF or error: libuv reads no more. A peer that half-closes mid-request gets a
         * 400 attempt; a response being written is finished first (on_write closes). */
        c->peer_done = 1;
        uv_read_stop(stream);
        if (nread == UV_EOF && c->state == HTTP__READING && c->len > 0) {
            http__respond_text(c, 400, "bad request\n");
        } else if (c->state != HTTP__WRITING) {
            http__client_close(c);
        }
        return;
    }
    if (c->state != HTTP__READING || nread == 0) {
        return;
    }
    http__take(c, (size_t)nread);
}

/* Reads, now, what a connection still reading its request head holds, and answers a request
 * that is complete: at the accept (a probe sends its request at once), and before the
 * connection is closed to make room (its request may have arrived since), so that a burst of
 * new connections never drops a request that is there. Nothing there, or EOF, is left to the
 * read callback. */
static void http__read_now(http__client_t *c)
{
    uv_os_fd_t fd;
    if (c->state != HTTP__READING || c->len >= sizeof(c->head) ||
        uv_fileno((const uv_handle_t *)&c->tcp, &fd) != 0) {
        return;
    }
    ssize_t n = recv(fd, c->head + c->len, sizeof(c->head) - c->len, MSG_DONTWAIT);
    if (n > 0) {
        http__take(c, (size_t)n);
    }
}

static void http__free_handle(uv_handle_t *handle)
{
    free(handle);
}

/* Accepts and immediately closes a connection beyond the client limit. */
static void http__reject(nt_http_t *h)
{
    uv_tcp_t *t = malloc(sizeof(*t));
    if (t == NULL) {
        return;
    }
    if (uv_tcp_init(h->loop, t) != 0) {
        free(t);
        return;
    }
    uv_accept((uv_stream_t *)&h->server, (uv_stream_t *)t);
    uv_close((uv_handle_t *)t, http__free_handle);
}

/* The connection to close for a new one at the cap: the oldest still reading its request head
 * (idle or trickling) once what it sent is read (a complete request is answered instead, and
 * the next oldest taken), else the oldest draining, else the oldest writing. NULL when none is
 * open. */
static http__client_t *http__victim(nt_http_t *h)
{
    static const int rank[] = {[HTTP__READING] = 0, [HTTP__DRAINING] = 1, [HTTP__WRITING] = 2};
    for (;;) {
        http__client_t *best = NULL;
        for (http__client_t *c = h->clients; c != NULL; c = c->next) {
            /* newest first: a later one of the same rank is older */
            if (c->state != HTTP__CLOSING &&
                (best == NULL || rank[c->state] <= rank[best->state])) {
                best = c;
            }
        }
        if (best == NULL || best->state != HTTP__READING) {
            return best;
        }
        http__read_now(best);
        if (best->state == HTTP__READING) {
            return best; /* still no request: an idle connection, or a slow one */
        }
    }
}

static void http__on_connection(uv_stream_t *server, int status)
{
    nt_http_t *h = server->data;
    if (status < 0 || h->stopping) {
        return;
    }
    if (h->nopen >= HTTP__MAX_CLIENTS) {
        http__client_t *victim = http__victim(h);
        if (victim == NULL) {
            http__reject(h);
            return;
        }
        nt_log(NT_LOG_DEBUG, "http", "closing the oldest of %d open connections for a new one",
               h->nopen);
        nt_metrics.http_connections_evicted++;
        http__client_close(victim);
    }
    http__client_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        http__reject(h);
        return;
    }
    if (uv_tcp_init(h->loop, &c->tcp) != 0) {
        free(c);
        http__reject(h);
        return;
    }
    uv_timer_init(h->loop, &c->timer); /* cannot fail */
    c->h = h;
    c->tcp.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    c->state = HTTP__READING;
    c->next = h->clients;
    if (h->clients != NULL) {
        h->clients->prev = c;
    }
    h->clients = c;
    h->nopen++;
    nt_metrics.http_connections_open = (uint64_t)h->nopen;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        uv_timer_start(&c->timer, http__on_timeout, HTTP__HEAD_TIMEOUT_MS, 0) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, http__on_alloc, http__on_read) != 0) {
        http__client_close(c);
        return;
    }
    http__read_now(c);
}

/* Opens a listening socket on host:port (a plain socket, so that a failure leaves no handle
 * to close). Returns 0 with *fd set; NT_EINVAL for an unusable address; NT_EIO with errno
 * telling why, and nothing left open. */
static int http__bind(const char *host, int port, int *fd)
{
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int one = 1;

    memset(&addr, 0, sizeof(addr));
    if (port < 1 || port > 65535) {
        return NT_EINVAL;
    }
    if (strchr(host, ':') != NULL) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)(void *)&addr;
        if (uv_ip6_addr(host, port, a6) != 0) {
            return NT_EINVAL;
        }
        addrlen = sizeof(*a6);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)(void *)&addr;
        if (uv_ip4_addr(host, port, a4) != 0) {
            return NT_EINVAL;
        }
        addrlen = sizeof(*a4);
    }
    *fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (*fd < 0) {
        return NT_EIO;
    }
    if (setsockopt(*fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(*fd, (struct sockaddr *)&addr, addrlen) != 0 || listen(*fd, HTTP__BACKLOG) != 0) {
        int saved = errno;
        close(*fd);
        errno = saved;
        return NT_EIO;
    }
    return 0;
}

/* Binds host:port and starts listening on loop. host is an IPv4 or IPv6 literal (no
 * brackets), as nt_config_validate() leaves in cfg->http_host. Returns 0 with *out set;
 * NT_EINVAL for an unusable address; NT_EIO if the socket cannot be bound or listened on,
 * with errno telling why, and nothing left open; NT_ENOMEM. ready may be NULL (always
 * ready). See also nt_http_close(). */
int nt_http_start(uv_loop_t *loop, nt_http_t **out, const char *host, int port,
                  nt_http_ready_cb ready, void *data)
{
    int fd;
    int rc = http__bind(host, port, &fd);
    if (rc != 0) {
        return rc;
    }

    nt_http_t *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        close(fd);
        return NT_ENOMEM;
    }
    h->loop = loop;
    h->ready = ready;
    h->data = data;
    if (uv_tcp_init(loop, &h->server) != 0) {
        close(fd);
        free(h);
        return NT_EIO;
    }
    h->server.data = h;
    rc = uv_tcp_open(&h->server, fd);
    if (rc != 0) {
        close(fd); /* not adopted by the handle */
    } else {
        rc = uv_listen((uv_stream_t *)&h->server, HTTP__BACKLOG, http__on_connection);
    }
    if (rc != 0) {
        /* h is freed by the close callback, when the loop runs next. */
        nt_http_close(h);
        errno = -rc;
        return NT_EIO;
    }
    *out = h;
    return 0;
}

static void http__server_closed(uv_handle_t *handle)
{
    nt_http_t *h = handle->data;
    h->server_closed = 1;
    http__maybe_free_server(h);
}

/* Stops accepting, closes every client (responses in flight are cut short) and frees h
 * once every handle's close callback has run on the loop. h must not be used after.
 * NULL is a no-op. */
void nt_http_close(nt_http_t *h)
{
    if (h == NULL || h->stopping) {
        return;
    }
    h->stopping = 1;
    uv_close((uv_handle_t *)&h->server, http__server_closed);
    for (http__client_t *c = h->clients; c != NULL; c = c->next) {
        http__client_close(c);
    }
}
