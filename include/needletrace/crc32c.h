/* crc32c.h -- CRC-32C (Castagnoli), as used by the journal's record framing. */
#ifndef NEEDLETRACE_CRC32C_H
#define NEEDLETRACE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extends crc (0 to start) over len bytes of data and returns the new CRC-32C.
 * Uses the SSE4.2 instruction when the CPU has it, a table otherwise; both give
 * identical results (crc32c("123456789") == 0xE3069283). */
uint32_t nt_crc32c(uint32_t crc, const void *data, size_t len);

#endif
