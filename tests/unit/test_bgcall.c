/* test_bgcall.c -- unit tests of the blocking call on a thread of its own (bgcall.h): its result
 * comes back on the loop; an abandoned call never calls back and frees its argument on its
 * thread; the loop never waits for a call in flight. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "needletrace/bgcall.h"
#include "needletrace/common.h"

typedef struct {
    int sleep_ms;
    int result;
} call_t;

static atomic_int freed;
static int done_calls;
static int done_result;

static void run(void *arg)
{
    call_t *x = arg;
    if (x->sleep_ms > 0) {
        usleep((useconds_t)x->sleep_ms * 1000);
    }
    x->result = 42;
}

static void release(void *arg)
{
    free(arg);
    atomic_fetch_add(&freed, 1);
}

/* data: the owner's deadline timer, which keeps the loop alive meanwhile. */
static void done(nt_bgcall_t *c, void *arg, void *data)
{
    done_calls++;
    done_result = ((call_t *)arg)->result;
    uv_close((uv_handle_t *)data, NULL);
}

static void on_deadline(uv_timer_t *t)
{
    fail_msg("the call did not come back within 3 s");
}

static int64_t ms_now(void)
{
    return nt_mono_us() / 1000;
}

/* Waits (up to 3 s) until free_arg ran n times in all. */
static void wait_freed(int n)
{
    int64_t end = ms_now() + 3000;
    while (atomic_load(&freed) < n && ms_now() < end) {
        usleep(1000);
    }
    assert_int_equal(atomic_load(&freed), n);
}

static void reset(void)
{
    atomic_store(&freed, 0);
    done_calls = 0;
    done_result = 0;
}

/* The result comes back on the loop; the owner's timer (bounding the wait) keeps the loop
 * alive, the call does not. */
static void test_result_on_the_loop(void **state)
{
    (void)state;
    reset();
    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_timer_t deadline;
    uv_timer_init(&loop, &deadline);
    uv_timer_start(&deadline, on_deadline, 3000, 0);
    call_t *x = calloc(1, sizeof(*x));
    x->sleep_ms = 50;
    nt_bgcall_t *c;
    assert_int_equal(nt_bgcall_start(&loop, run, x, release, done, &deadline, &c), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(done_calls, 1);
    assert_int_equal(done_result, 42);
    wait_freed(1);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void on_abandon_timer(uv_timer_t *t)
{
    nt_bgcall_abandon(t->data);
    uv_close((uv_handle_t *)t, NULL);
}

/* A call that takes 500 ms, abandoned after 20 ms: the loop ends at once, done never runs, the
 * argument is freed on the call's thread when it returns. */
static void test_abandoned_call(void **state)
{
    (void)state;
    reset();
    uv_loop_t loop;
    uv_loop_init(&loop);
    call_t *x = calloc(1, sizeof(*x));
    x->sleep_ms = 500;
    nt_bgcall_t *c;
    assert_int_equal(nt_bgcall_start(&loop, run, x, release, done, NULL, &c), 0);
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    t.data = c;
    uv_timer_start(&t, on_abandon_timer, 20, 0);
    int64_t t0 = ms_now();
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(ms_now() - t0 < 300); /* the loop did not wait for the call */
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(atomic_load(&freed), 0);
    wait_freed(1);
    assert_int_equal(done_calls, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_result_on_the_loop),
        cmocka_unit_test(test_abandoned_call),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
