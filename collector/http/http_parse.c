/* http_parse.c -- the request head of the HTTP listener, parsed and routed: plain functions
 * over bytes, with no loop and no socket (see http.h). */
#include "needletrace/http.h"

#include <string.h>

#include "needletrace/common.h"

/* Returns 1 for a token character of RFC 9110 (method and field names), else 0. */
static int http__is_tchar(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* See http.h. */
size_t nt_http_head_end(const char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (buf[i] != '\n') {
            continue;
        }
        if (i + 1 < len && buf[i + 1] == '\n') {
            return i + 2;
        }
        if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n') {
            return i + 3;
        }
    }
    return 0;
}

/* Parses "METHOD SP request-target SP HTTP/1.x" in [p, line_end) (line_end at the '\n').
 * Returns 0 or NT_EINVAL. */
static int http__parse_request_line(const char *p, const char *line_end, nt_http_request_t *out)
{
    out->method = p;
    while (p < line_end && http__is_tchar(*p)) {
        p++;
    }
    out->method_len = (size_t)(p - out->method);
    if (out->method_len == 0 || *p != ' ') {
        return NT_EINVAL;
    }
    out->target = ++p;
    while (p < line_end && *p != ' ' && (unsigned char)*p > 0x20 && *p != 0x7f) {
        p++;
    }
    out->target_len = (size_t)(p - out->target);
    if (out->target_len == 0 || out->target[0] != '/' || *p != ' ') {
        return NT_EINVAL;
    }
    p++;
    size_t rest = (size_t)(line_end - p);
    if (rest > 0 && p[rest - 1] == '\r') {
        rest--;
    }
    if (rest != 8 || (memcmp(p, "HTTP/1.1", 8) != 0 && memcmp(p, "HTTP/1.0", 8) != 0)) {
        return NT_EINVAL;
    }
    out->version_minor = p[7] - '0';
    const char *query = memchr(out->target, '?', out->target_len);
    out->path_len = query != NULL ? (size_t)(query - out->target) : out->target_len;
    out->query = query != NULL ? query + 1 : NULL;
    out->query_len = query != NULL ? out->target_len - out->path_len - 1 : 0;
    return 0;
}

/* Checks the header fields from p to end: "name:" with a token name, up to the empty line (or
 * the end). Returns 0 or NT_EINVAL. */
static int http__check_fields(const char *p, const char *end)
{
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL) {
            break;
        }
        size_t n = (size_t)(eol - p);
        if (n > 0 && p[n - 1] == '\r') {
            n--;
        }
        if (n == 0) {
            break; /* the empty line ending the head */
        }
        size_t name_len = 0;
        while (name_len < n && http__is_tchar(p[name_len])) {
            name_len++;
        }
        if (name_len == 0 || name_len == n || p[name_len] != ':') {
            return NT_EINVAL;
        }
        p = eol + 1;
    }
    return 0;
}

/* See http.h. */
int nt_http_parse_request(const char *head, size_t len, nt_http_request_t *out)
{
    if (len > NT_HTTP_HEAD_MAX) {
        return NT_ETOOBIG;
    }
    memset(out, 0, sizeof(*out));
    const char *line_end = memchr(head, '\n', len);
    if (line_end == NULL) {
        return NT_EINVAL;
    }
    int rc = http__parse_request_line(head, line_end, out);
    if (rc != 0) {
        return rc;
    }
    return http__check_fields(line_end + 1, head + len);
}

/* See http.h. */
nt_http_route_t nt_http_route(const nt_http_request_t *req)
{
    static const struct {
        const char *path;
        nt_http_route_t route;
    } routes[] = {
        {"/metrics", NT_HTTP_ROUTE_METRICS},
        {"/healthz", NT_HTTP_ROUTE_HEALTHZ},
        {"/readyz", NT_HTTP_ROUTE_READYZ},
    };
    if (req->method_len != 3 || memcmp(req->method, "GET", 3) != 0) {
        return NT_HTTP_ROUTE_METHOD_NOT_ALLOWED;
    }
    for (size_t i = 0; i < NT_ARRAY_SIZE(routes); i++) {
        if (req->path_len == strlen(routes[i].path) &&
            memcmp(req->target, routes[i].path, req->path_len) == 0) {
            return routes[i].route;
        }
    }
    return NT_HTTP_ROUTE_NOT_FOUND;
}
