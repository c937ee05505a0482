/* crc32c.c -- CRC-32C (Castagnoli): slice-by-8 tables everywhere, the SSE4.2 instruction on x86_64.
 */
#include "needletrace/crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#define CRC32C_POLY 0x82F63B78u /* 0x1EDC6F41 bit-reflected */

/* Internal, non-static so that the unit tests can check each path against the other:
 * the table path, the instruction path (the table path where there is no instruction),
 * and whether the running CPU has the instruction. Same conventions as nt_crc32c(). */
uint32_t nt_crc32c__sw(uint32_t crc, const void *data, size_t len);
uint32_t nt_crc32c__hw(uint32_t crc, const void *data, size_t len);
int nt_crc32c__have_hw(void);

typedef uint32_t (*crc32c_fn)(uint32_t crc, const void *data, size_t len);

/* table[0][b] is the CRC of byte b; table[k][b] the CRC of byte b followed by k zero bytes. */
static uint32_t crc32c_table[8][256];
static crc32c_fn crc32c_impl;
static int crc32c_have_hw;
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;

static void crc32c__init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) {
            c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1u)));
        }
        crc32c_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        for (int k = 1; k < 8; k++) {
            uint32_t prev = crc32c_table[k - 1][n];
            crc32c_table[k][n] = (prev >> 8) ^ crc32c_table[0][prev & 0xffu];
        }
    }
    crc32c_impl = nt_crc32c__sw;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) {
        crc32c_have_hw = 1;
        crc32c_impl = nt_crc32c__hw;
    }
#endif
}

static inline uint32_t crc32c__le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The table path; also what nt_crc32c() uses on a CPU without SSE4.2. */
uint32_t nt_crc32c__sw(uint32_t crc, const void *data, size_t len)
{
    const unsigned char *p = data;
    uint32_t c = ~crc;

    pthread_once(&crc32c_once, crc32c__init);
    while (len >= 8) {
        uint32_t lo = c ^ crc32c__le32(p);
        uint32_t hi = crc32c__le32(p + 4);
        c = crc32c_table[7][lo & 0xffu] ^ crc32c_table[6][(lo >> 8) & 0xffu] ^
            crc32c_table[5][(lo >> 16) & 0xffu] ^ crc32c_table[4][lo >> 24] ^
            crc32c_table[3][hi & 0xffu] ^ crc32c_table[2][(hi >> 8) & 0xffu] ^
            crc32c_table[1][(hi >> 16) & 0xffu] ^ crc32c_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len > 0) {
        c = (c >> 8) ^ crc32c_table[0][(c ^ *p) & 0xffu];
        p++;
        len--;
    }
    return ~c;
}

#if defined(__x86_64__)
/* The instruction path: eight bytes per crc32 instruction. Only call it when
 * nt_crc32c__have_hw() says the CPU has SSE4.2. */
__attribute__((target("sse4.2"))) uint32_t nt_crc32c__hw(uint32_t crc, const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t c = (uint32_t)~crc;

    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, sizeof(v));
        c = _mm_crc32_u64(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len > 0) {
        c32 = _mm_crc32_u8(c32, *p);
        p++;
        len--;
    }
    return ~c32;
}
#else
/* No CRC instruction on this architecture: the table path. */
uint32_t nt_crc32c__hw(uint32_t crc, const void *data, size_t len)
{
    return nt_crc32c__sw(crc, data, len);
}
#endif

/* 1 when nt_crc32c() uses the SSE4.2 instruction on this CPU. */
int nt_crc32c__have_hw(void)
{
    pthread_once(&crc32c_once, crc32c__init);
    return crc32c_have_hw;
}

uint32_t nt_crc32c(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&crc32c_once, crc32c__init);
    return crc32c_impl(crc, data, len);
}
