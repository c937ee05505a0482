/* common.c -- error strings and clocks shared by every module. */
#include "needletrace/common.h"

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
