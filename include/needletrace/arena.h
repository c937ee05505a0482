/* arena.h -- a bump allocator for protobuf-c decoding, reset once per batch. */
#ifndef NEEDLETRACE_ARENA_H
#define NEEDLETRACE_ARENA_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

typedef struct nt_arena_chunk_s nt_arena_chunk_t;

typedef struct {
    nt_arena_chunk_t *head;       /* chunk being filled; older chunks behind it */
    size_t chunk_bytes;           /* size of a normal chunk */
    size_t used_bytes;            /* bytes handed out since the last reset */
    size_t limit_bytes;           /* allocations past this fail (protobuf-c then fails cleanly) */
    ProtobufCAllocator allocator; /* pass to protobuf_c_message_unpack() */
} nt_arena_t;

/* Initialises an empty arena. chunk_bytes 0 = 1 MiB, limit_bytes 0 = 64 MiB. */
void nt_arena_init(nt_arena_t *a, size_t chunk_bytes, size_t limit_bytes);
/* Returns 16-byte aligned memory valid until the next reset, or NULL past the limit. */
void *nt_arena_alloc(nt_arena_t *a, size_t n);
/* Forgets every allocation; keeps the first chunk for reuse, frees the others. */
void nt_arena_reset(nt_arena_t *a);
/* Frees all memory. */
void nt_arena_close(nt_arena_t *a);

#endif
