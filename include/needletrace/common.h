/* common.h -- error codes, limits and small helpers shared by every needletrace module. */
#ifndef NEEDLETRACE_COMMON_H
#define NEEDLETRACE_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Error codes: 0 is success, every failure a negative NT_E* value. One X-macro
 * generates the enum and the string table behind nt_strerror(). */
#define NT_ERRNO_MAP(XX)                                                                           \
    XX(EINVAL, -1, "invalid argument")                                                             \
    XX(ENOMEM, -2, "out of memory")                                                                \
    XX(EIO, -3, "input/output error")                                                              \
    XX(ECORRUPT, -4, "corrupt data")                                                               \
    XX(EFULL, -5, "journal is full")                                                               \
    XX(ECONFIG, -6, "invalid configuration")                                                       \
    XX(ENOENT, -7, "not found")                                                                    \
    XX(EDB, -8, "database error")                                                                  \
    XX(EMQTT, -9, "broker error")                                                                  \
    XX(ETOOBIG, -10, "value too large")                                                            \
    XX(ECLOSED, -11, "already closed")                                                             \
    XX(EAGAIN, -12, "try again")

typedef enum {
    NT_OK = 0,
#define NT__ERRNO_ENUM(name, value, text) NT_##name = (value),
    NT_ERRNO_MAP(NT__ERRNO_ENUM)
#undef NT__ERRNO_ENUM
} nt_err_t;

/* Returns a static, lower-case description of an NT_E* code (or "unknown error"). */
const char *nt_strerror(int err);

/* Wire-contract limits (DESIGN.md section 1). */
#define NT_MAX_PAYLOAD_BYTES (256u * 1024u)
#define NT_MAX_EVENTS        1000u
#define NT_MAX_ID_LEN        64u /* clinic_id, device_serial */
#define NT_MAX_TOPIC_LEN     512u

/* Wall clock, Unix microseconds. */
int64_t nt_now_us(void);
/* Monotonic clock, microseconds. */
int64_t nt_mono_us(void);

/* Delay before retry number `attempt` (0 first): min_ms doubled per attempt, capped at max_ms,
 * with equal jitter (half fixed, half random) so that replicas do not retry in step. */
uint64_t nt_backoff_ms(uint64_t min_ms, uint64_t max_ms, unsigned attempt);

/* Makes room for at least `need` elements of elem_size bytes in a heap array of capacity *cap.
 * items_ptr is the address of the array's pointer (e.g. &list->items, any pointer type; the
 * pointer is read and written with memcpy, so no aliasing rule is broken). Doubles, starting at
 * first_cap. Returns 0 (nothing changes when it already fits), or NT_ENOMEM when the allocation
 * fails or the size would overflow (the array and *cap are then unchanged and still valid). */
int nt_grow(void *items_ptr, size_t *cap, size_t need, size_t elem_size, size_t first_cap);

#define NT_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
