/* test_fdwatch.c -- unit tests of the per-socket poll handle (fdwatch) over a real libuv loop
 * and socketpairs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "needletrace/common.h"
#include "needletrace/fdwatch.h"

typedef struct {
    uv_loop_t loop;
    nt_fdwatch_t w;
    int calls;
    int last_status;
    int last_events;
    int last_fd;
    nt_fdwatch_t *last_w;
    void *last_data;
    int drain; /* read what is readable in the callback */
} fixture_t;

static void on_event(nt_fdwatch_t *w, int status, int events, void *data)
{
    fixture_t *f = data;
    f->calls++;
    f->last_status = status;
    f->last_events = events;
    f->last_fd = w->fd;
    f->last_w = w;
    f->last_data = data;
    if (f->drain && (events & UV_READABLE)) {
        char buf[64];
        (void)!read(w->fd, buf, sizeof(buf));
    }
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    nt_fdwatch_init(&f->w, &f->loop, on_event, f);
    f->drain = 1;
    f->last_fd = -2;
    *state = f;
    return 0;
}

/* Drops the watch, runs the loop until no handle is left, and closes it: valgrind then sees
 * every poll handle freed. */
static int teardown(void **state)
{
    fixture_t *f = *state;
    nt_fdwatch_drop(&f->w);
    while (uv_run(&f->loop, UV_RUN_DEFAULT) != 0) {
    }
    assert_int_equal(uv_loop_alive(&f->loop), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs the loop without blocking until f->calls reaches want or ms pass. Returns f->calls. */
static int run_until_calls(fixture_t *f, int want, int ms)
{
    int64_t deadline = now_ms() + ms;
    while (f->calls < want && now_ms() < deadline) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        if (f->calls < want) {
            usleep(1000);
        }
    }
    return f->calls;
}

static void pair(int sv[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
}

static void put_byte(int fd)
{
    assert_int_equal(write(fd, "x", 1), 1);
}

static void test_init_watches_nothing(void **state)
{
    fixture_t *f = *state;
    assert_false(nt_fdwatch_active(&f->w));
    assert_null(f->w.poll);
    assert_int_equal(f->w.fd, -1);
    nt_fdwatch_drop(&f->w); /* no-op */
    nt_fdwatch_drop(&f->w);
    assert_false(nt_fdwatch_active(&f->w));
}

static void test_readable_after_write(void **state)
{
    fixture_t *f = *state;
    int sv[2];
    pair(sv);
    assert_int_equal(nt_fdwatch_set(&f->w, sv[0], UV_READABLE), 0);
    assert_true(nt_fdwatch_active(&f->w));
    assert_int_equal(f->w.fd, sv[0]);
    assert_int_equal(f->w.events, UV_READABLE);

    /* Nothing written yet: nothing reported. */
    assert_int_equal(run_until_calls(f, 1, 50), 0);

    put_byte(sv[1]);
    assert_int_equal(run_until_calls(f, 1, 2000), 1);
    assert_int_equal(f->last_status, 0);
    assert_true(f->last_events & UV_READABLE);
    assert_int_equal(f->last_fd, sv[0]);
    assert_ptr_equal(f->last_w, &f->w);
    assert_ptr_equal(f->last_data, f);

    /* Drained in the callback: no further report until the next write. */
    assert_int_equal(run_until_calls(f, 2, 50), 1);
    put_byte(sv[1]);
    assert_int_equal(run_until_calls(f, 2, 2000), 2);

    nt_fdwatch_drop(&f->w);
    close(sv[0]);
    close(sv[1]);
}

static void test_writable(void **state)
{
    fixture_t *f = *state;
    int sv[2];
    pair(sv);
    assert_int_equal(nt_fdwatch_set(&f->w, sv[0], UV_WRITABLE), 0);
    assert_int_equal(run_until_calls(f, 1, 2000), 1);
    assert_int_equal(f->last_status, 0);
    assert_true(f->last_events & UV_WRITABLE);
    assert_false(f->last_events & UV_READABLE);
    nt_fdwatch_drop(&f->w);
    close(sv[0]);
    close(sv[1]);
}

static void test_zero_events_stops_without_closing(void **state)
{
    fixture_t *f = *state;
    int sv[2];
    pair(sv);
    assert_int_equal(nt_fdwatch_set(&f->w, sv[0], UV_READABLE), 0);
    uv_poll_t *handle = f->w.poll;
    assert_int_equal(nt_fdwatch_set(&f->w, sv[0], 0), 0);
    assert_true(nt_fdwatch_active(&f->w));
    assert_ptr_equal(f->w.poll, handle);
    assert_int_equal(f->w.fd, sv[0]);
    assert_int_equal(f->w.events, 0);
    assert_false(uv_is_active((uv_handle_t *)handle));
    assert_false(uv_is_closing((uv_handle_t *)handle));

    f->drain = 0;
    put_byte(sv[1]);
    assert_int_equal(run_until_calls(f, 1, 100), 0);

    /* Watching again uses the same handle and sees the byte that waited. */
    f->drain = 1;
    assert_int_equal(nt_fdwatch_set(&f->w, sv[0], UV_READABLE), 0);
    assert_ptr_equal(f->w.poll, handle);
    assert_true(uv_is_active((uv_handle_t *)handle));
    assert_int_equal(run_until_calls(f, 1, 2000), 1);
    assert_true(f->last_events & UV_READABLE);

    /* A new handle for a fresh fd with events 0 is made, but not started. */
    nt_fdwatch_drop(&f->w);
    assert_int_equal(nt_fdwatch_set(&f->w, sv[0], 0), 0);
    assert_non_null(f->w.poll);
    assert_false(uv_is_active((uv_handle_t *)f->w.poll));

    nt_fdwatch_drop(&f->w);
    close(sv[0]);
    close(sv[1]);
}

static void test_other_fd_replaces_handle(void **state)
{
    fixture_t *f = *state;
    int a[2], b[2];
    pair(a);
    pair(b);
    assert_int_equal(nt_fdwatch_set(&f->w, a[0], UV_READABLE), 0);
    uv_poll_t *old = f->w.poll;

    /* The same fd again keeps the handle, whatever the events. */
    assert_int_equal(nt_fdwatch_set(&f->w, a[0], UV_READABLE | UV_WRITABLE), 0);
    assert_ptr_equal(f->w.poll, old);
    assert_int_equal(nt_fdwatch_set(&f->w, a[0], UV_READABLE), 0);
    assert_ptr_equal(f->w.poll, old);

    assert_int_equal(nt_fdwatch_set(&f->w, b[0], UV_READABLE), 0);
    assert_true(f->w.poll != old);
    assert_true(uv_is_closing((uv_handle_t *)old)); /* freed by the loop */
    assert_int_equal(f->w.fd, b[0]);
    assert_true(nt_fdwatch_active(&f->w));

    /* The old socket is no longer reported. */
    f->drain = 0;
    put_byte(a[1]);
    assert_int_equal(run_until_calls(f, 1, 100), 0);

    f->drain = 1;
    put_byte(b[1]);
    assert_int_equal(run_until_calls(f, 1, 2000), 1);
    assert_int_equal(f->last_fd, b[0]);
    assert_true(f->last_events & UV_READABLE);
    assert_int_equal(run_until_calls(f, 2, 50), 1);

    nt_fdwatch_drop(&f->w);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
}

static void test_drop_then_close(void **state)
{
    fixture_t *f = *state;
    int sv[2];
    pair(sv);
    assert_int_equal(nt_fdwatch_set(&f->w, sv[0], UV_READABLE | UV_WRITABLE), 0);
    uv_poll_t *handle = f->w.poll;
    int old_fd = sv[0];
    put_byte(sv[1]);
    nt_fdwatch_drop(&f->w);
    assert_false(nt_fdwatch_active(&f->w));
    assert_null(f->w.poll);
    assert_int_equal(f->w.fd, -1);
    assert_int_equal(f->w.events, 0);
    assert_true(uv_is_closing((uv_handle_t *)handle));
    close(sv[0]);

    /* Readable and writable, but dropped: no callback, and the handle is freed. */
    assert_int_equal(run_until_calls(f, 1, 100), 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_false(uv_loop_alive(&f->loop));

    /* A socket that gets the same number is watched with a fresh handle. */
    int sv2[2];
    pair(sv2);
    int fd = sv2[0];
    assert_int_equal(fd, old_fd);
    assert_int_equal(nt_fdwatch_set(&f->w, fd, UV_READABLE), 0);
    put_byte(sv2[1]);
    assert_int_equal(run_until_calls(f, 1, 2000), 1);
    assert_int_equal(f->last_fd, fd);

    nt_fdwatch_drop(&f->w);
    close(sv[1]);
    close(sv2[0]);
    close(sv2[1]);
}

static void test_bad_fd(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(nt_fdwatch_set(&f->w, -1, UV_READABLE), NT_EINVAL);
    assert_false(nt_fdwatch_active(&f->w));
    assert_int_equal(f->w.fd, -1);

    /* A failed set leaves an existing watch alone. */
    int sv[2];
    pair(sv);
    assert_int_equal(nt_fdwatch_set(&f->w, sv[0], UV_READABLE), 0);
    uv_poll_t *handle = f->w.poll;
    assert_int_equal(nt_fdwatch_set(&f->w, -1, UV_READABLE), NT_EINVAL);
    assert_ptr_equal(f->w.poll, handle);
    assert_int_equal(f->w.fd, sv[0]);
    put_byte(sv[1]);
    assert_int_equal(run_until_calls(f, 1, 2000), 1);

    /* A regular file cannot be polled: NT_EIO, and nothing is watched then. */
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    assert_int_equal(nt_fdwatch_set(&f->w, fileno(tmp), UV_READABLE), NT_EIO);
    assert_false(nt_fdwatch_active(&f->w));
    assert_null(f->w.poll);
    assert_int_equal(f->w.fd, -1);
    fclose(tmp);

    close(sv[0]);
    close(sv[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_init_watches_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readable_after_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zero_events_stops_without_closing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_fd_replaces_handle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drop_then_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_fd, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
