/* test_http.c -- unit tests of the HTTP listener's request parsing and routing (no loop, no
 * socket): nt_http_head_end, nt_http_parse_request, nt_http_route. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/http.h"

/* Parses the NUL-terminated head s; returns the result code. */
static int parse(const char *s, nt_http_request_t *req)
{
    return nt_http_parse_request(s, strlen(s), req);
}

/* Parses s, which must be well formed, and returns its route. */
static nt_http_route_t route_of(const char *s)
{
    nt_http_request_t req;
    assert_int_equal(parse(s, &req), 0);
    return nt_http_route(&req);
}

static void test_get_metrics(void **state)
{
    nt_http_request_t req;
    assert_int_equal(parse("GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", &req), 0);
    assert_int_equal(req.method_len, 3);
    assert_memory_equal(req.method, "GET", 3);
    assert_int_equal(req.target_len, 8);
    assert_int_equal(req.path_len, 8);
    assert_null(req.query);
    assert_int_equal(req.version_minor, 1);
    assert_int_equal(nt_http_route(&req), NT_HTTP_ROUTE_METRICS);
}

static void test_health_and_ready(void **state)
{
    assert_int_equal(route_of("GET /healthz HTTP/1.1\r\n\r\n"), NT_HTTP_ROUTE_HEALTHZ);
    assert_int_equal(route_of("GET /readyz HTTP/1.1\r\n\r\n"), NT_HTTP_ROUTE_READYZ);
}

static void test_unknown_path(void **state)
{
    assert_int_equal(route_of("GET / HTTP/1.1\r\n\r\n"), NT_HTTP_ROUTE_NOT_FOUND);
    assert_int_equal(route_of("GET /metricsx HTTP/1.1\r\n\r\n"), NT_HTTP_ROUTE_NOT_FOUND);
    assert_int_equal(route_of("GET /metrics/ HTTP/1.1\r\n\r\n"), NT_HTTP_ROUTE_NOT_FOUND);
    assert_int_equal(route_of("GET /METRICS HTTP/1.1\r\n\r\n"), NT_HTTP_ROUTE_NOT_FOUND);
    assert_int_equal(route_of("GET /readyzz HTTP/1.1\r\n\r\n"), NT_HTTP_ROUTE_NOT_FOUND);
}

static void test_bad_method(void **state)
{
    /* a well-formed method other than GET: 405, whatever the path */
    assert_int_equal(route_of("POST /metrics HTTP/1.1\r\n\r\n"), NT_HTTP_ROUTE_METHOD_NOT_ALLOWED);
    assert_int_equal(route_of("HEAD /healthz HTTP/1.1\r\n\r\n"), NT_HTTP_ROUTE_METHOD_NOT_ALLOWED);
    assert_int_equal(route_of("get /metrics HTTP/1.1\r\n\r\n"), NT_HTTP_ROUTE_METHOD_NOT_ALLOWED);
    assert_int_equal(route_of("GETS /nowhere HTTP/1.1\r\n\r\n"), NT_HTTP_ROUTE_METHOD_NOT_ALLOWED);
}

static void test_malformed_request_line(void **state)
{
    static const char *const bad[] = {
        "\r\n\r\n",                       /* empty request line */
        "GET\r\n\r\n",                    /* no target */
        " GET /metrics HTTP/1.1\r\n\r\n", /* empty method */
        "G(T /metrics HTTP/1.1\r\n\r\n",  /* not a token */
        "GET  /metrics HTTP/1.1\r\n\r\n", /* two spaces */
        "GET metrics HTTP/1.1\r\n\r\n",   /* not origin-form */
        "GET http://x/metrics HTTP/1.1\r\n\r\n",
        "GET * HTTP/1.1\r\n\r\n",
        "GET /metrics\r\n\r\n",          /* HTTP/0.9 */
        "GET /metrics HTTP/2.0\r\n\r\n", /* other versions */
        "GET /metrics HTTP/1.10\r\n\r\n",
        "GET /metrics http/1.1\r\n\r\n",
        "GET /metrics HTTP/1.1 \r\n\r\n",    /* trailing space */
        "GET /met\x01rics HTTP/1.1\r\n\r\n", /* control character in the target */
        "GET /met\x7frics HTTP/1.1\r\n\r\n",
        "GET /metrics HTTP/1.1", /* no line end at all */
    };
    nt_http_request_t req;
    for (size_t i = 0; i < NT_ARRAY_SIZE(bad); i++) {
        print_message("case %zu\n", i);
        assert_int_equal(parse(bad[i], &req), NT_EINVAL);
    }
}

static void test_header_fields(void **state)
{
    nt_http_request_t req;
    assert_int_equal(parse("GET /healthz HTTP/1.1\r\nHost: a\r\nUser-Agent: curl/8\r\n"
                           "Accept: */*\r\nX-Empty:\r\n\r\n",
                           &req),
                     0);
    assert_int_equal(parse("GET /healthz HTTP/1.1\r\n Host: a\r\n\r\n", &req), NT_EINVAL);
    assert_int_equal(parse("GET /healthz HTTP/1.1\r\nHost : a\r\n\r\n", &req), NT_EINVAL);
    assert_int_equal(parse("GET /healthz HTTP/1.1\r\nHost\r\n\r\n", &req), NT_EINVAL);
    assert_int_equal(parse("GET /healthz HTTP/1.1\r\n: a\r\n\r\n", &req), NT_EINVAL);
    assert_int_equal(parse("GET /healthz HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n", &req),
                     NT_EINVAL);
    /* what follows the empty line is not part of the head */
    assert_int_equal(parse("GET /healthz HTTP/1.1\r\n\r\nnot a header", &req), 0);
}

static void test_header_too_large(void **state)
{
    nt_http_request_t req;
    size_t len = NT_HTTP_HEAD_MAX + 1;
    char *big = malloc(len + 1);
    assert_non_null(big);
    memset(big, 'a', len);
    memcpy(big, "GET /metrics HTTP/1.1\r\nX-Big: ", 30);
    memcpy(big + len - 4, "\r\n\r\n", 4);
    big[len] = '\0';
    assert_int_equal(nt_http_parse_request(big, len, &req), NT_ETOOBIG);
    /* exactly the limit is fine */
    memcpy(big + len - 5, "\r\n\r\n", 4);
    assert_int_equal(nt_http_parse_request(big, len - 1, &req), 0);
    /* a full buffer with no empty line: the head never ends (the server answers 431) */
    memset(big, 'a', len);
    memcpy(big, "GET /metrics HTTP/1.1\r\nX-Big: ", 30);
    assert_int_equal(nt_http_head_end(big, NT_HTTP_HEAD_MAX), 0);
    free(big);
}

static void test_versions(void **state)
{
    nt_http_request_t req;
    assert_int_equal(parse("GET /metrics HTTP/1.0\r\n\r\n", &req), 0);
    assert_int_equal(req.version_minor, 0);
    assert_int_equal(nt_http_route(&req), NT_HTTP_ROUTE_METRICS);
    assert_int_equal(parse("GET /metrics HTTP/1.1\r\n\r\n", &req), 0);
    assert_int_equal(req.version_minor, 1);
}

static void test_query_strings(void **state)
{
    nt_http_request_t req;
    assert_int_equal(parse("GET /metrics?name[]=x&y HTTP/1.1\r\n\r\n", &req), 0);
    assert_int_equal(nt_http_route(&req), NT_HTTP_ROUTE_METRICS);
    assert_int_equal(req.path_len, 8);
    assert_non_null(req.query);
    assert_int_equal(req.query_len, 10);
    assert_memory_equal(req.query, "name[]=x&y", 10);
    assert_int_equal(parse("GET /readyz? HTTP/1.1\r\n\r\n", &req), 0);
    assert_int_equal(nt_http_route(&req), NT_HTTP_ROUTE_READYZ);
    assert_non_null(req.query);
    assert_int_equal(req.query_len, 0);
    assert_int_equal(route_of("GET /?/metrics HTTP/1.1\r\n\r\n"), NT_HTTP_ROUTE_NOT_FOUND);
    assert_int_equal(route_of("GET /healthz?a?b HTTP/1.1\r\n\r\n"), NT_HTTP_ROUTE_HEALTHZ);
}

static void test_bare_lf(void **state)
{
    nt_http_request_t req;
    assert_int_equal(parse("GET /healthz HTTP/1.1\nHost: a\n\n", &req), 0);
    assert_int_equal(nt_http_route(&req), NT_HTTP_ROUTE_HEALTHZ);
}

static void test_head_end(void **state)
{
    static const char crlf[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
    static const char lf[] = "GET / HTTP/1.1\nHost: a\n\nbody";
    static const char mixed[] = "GET / HTTP/1.1\n\r\n";
    assert_int_equal(nt_http_head_end(crlf, strlen(crlf)), strlen(crlf) - 4);
    assert_int_equal(nt_http_head_end(lf, strlen(lf)), strlen(lf) - 4);
    assert_int_equal(nt_http_head_end(mixed, strlen(mixed)), strlen(mixed));
    /* incomplete: the terminator has not fully arrived */
    assert_int_equal(nt_http_head_end(crlf, 26), 0);
    assert_int_equal(nt_http_head_end(crlf, 27), 27);
    assert_int_equal(nt_http_head_end("GET / HTTP/1.1\r\n", 16), 0);
    assert_int_equal(nt_http_head_end("", 0), 0);
    /* "\r\n\r" alone is not an end */
    assert_int_equal(nt_http_head_end("GET / HTTP/1.1\r\n\r", 17), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_metrics),
        cmocka_unit_test(test_health_and_ready),
        cmocka_unit_test(test_unknown_path),
        cmocka_unit_test(test_bad_method),
        cmocka_unit_test(test_malformed_request_line),
        cmocka_unit_test(test_header_fields),
        cmocka_unit_test(test_header_too_large),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_query_strings),
        cmocka_unit_test(test_bare_lf),
        cmocka_unit_test(test_head_end),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
