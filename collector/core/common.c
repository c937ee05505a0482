/* common.c -- error strings and clocks shared by every module. */
#include "needletrace/common.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *nt_strerror(int err)
{
    switch (err) {
    case NT_OK:
        return "success";
#define NT__ERRNO_CASE(name, value, text)                                                          \
    case NT_##name:                                                                                \
        return text;
        NT_ERRNO_MAP(NT__ERRNO_CASE)
#undef NT__ERRNO_CASE
    }
    return "unknown error";
}

int64_t nt_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t nt_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

uint64_t nt_backoff_ms(uint64_t min_ms, uint64_t max_ms, unsigned attempt)
{
    uint64_t delay = min_ms > 0 ? min_ms : 1;
    for (unsigned i = 0; i < attempt && delay < max_ms; i++) {
        delay *= 2;
    }
    if (delay > max_ms) {
        delay = max_ms;
    }
    return delay / 2 + (uint64_t)random() % (delay / 2 + 1);
}

int nt_grow(void *items_ptr, size_t *cap, size_t need, size_t elem_size, size_t first_cap)
{
    if (need <= *cap) {
        return 0;
    }
    size_t n = *cap != 0 ? *cap : first_cap != 0 ? first_cap : 1;
    while (n < need) {
        if (n > SIZE_MAX / 2) {
            return NT_ENOMEM;
        }
        n *= 2;
    }
    if (elem_size != 0 && n > SIZE_MAX / elem_size) {
        return NT_ENOMEM;
    }
    void *old;
    memcpy(&old, items_ptr, sizeof(old));
    void *p = realloc(old, n * elem_size);
    if (p == NULL) {
        return NT_ENOMEM;
    }
    memcpy(items_ptr, &p, sizeof(p));
    *cap = n;
    return 0;
}
