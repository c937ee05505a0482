/* arena.c -- a bump allocator over a list of chunks, reset once per batch. */
#include "needletrace/arena.h"

#include <stdint.h>
#include <stdlib.h>

#define NT_ARENA_ALIGN         16u
#define NT_ARENA_DEFAULT_CHUNK ((size_t)1 << 20)
#define NT_ARENA_DEFAULT_LIMIT ((size_t)64 << 20)

/* One block of memory. data is 16-byte aligned; size bytes are usable from it. */
struct nt_arena_chunk_s {
    nt_arena_chunk_t *next; /* older chunk */
    size_t size;
    size_t used;
    unsigned char *data;
};

static size_t arena__round(size_t n)
{
    return (n + (NT_ARENA_ALIGN - 1)) & ~(size_t)(NT_ARENA_ALIGN - 1);
}

/* Allocates a chunk with size usable bytes, or NULL. size is a multiple of 16. */
static nt_arena_chunk_t *arena__chunk_new(size_t size)
{
    size_t header = sizeof(nt_arena_chunk_t) + NT_ARENA_ALIGN;
    if (size > SIZE_MAX - header) {
        return NULL;
    }
    unsigned char *raw = malloc(header + size);
    if (raw == NULL) {
        return NULL;
    }
    nt_arena_chunk_t *c = (nt_arena_chunk_t *)(void *)raw;
    uintptr_t start = (uintptr_t)(raw + sizeof(nt_arena_chunk_t));
    uintptr_t aligned = (start + (NT_ARENA_ALIGN - 1)) & ~(uintptr_t)(NT_ARENA_ALIGN - 1);
    c->next = NULL;
    c->size = size;
    c->used = 0;
    c->data = raw + sizeof(nt_arena_chunk_t) + (size_t)(aligned - start);
    return c;
}

static void *arena__pb_alloc(void *data, size_t size)
{
    return nt_arena_alloc(data, size);
}

/* Arena memory is released all at once by nt_arena_reset(); single frees do nothing. */
static void arena__pb_free(void *data, void *ptr)
{
    (void)data;
    (void)ptr;
}

/* Initialises an empty arena (no memory is allocated until the first nt_arena_alloc()).
 * chunk_bytes 0 = 1 MiB, limit_bytes 0 = 64 MiB. The arena must not be moved after this
 * call: a->allocator points back to it. */
void nt_arena_init(nt_arena_t *a, size_t chunk_bytes, size_t limit_bytes)
{
    if (chunk_bytes == 0) {
        chunk_bytes = NT_ARENA_DEFAULT_CHUNK;
    }
    if (chunk_bytes > SIZE_MAX / 2) {
        chunk_bytes = SIZE_MAX / 2;
    }
    a->head = NULL;
    a->chunk_bytes = arena__round(chunk_bytes);
    a->used_bytes = 0;
    a->limit_bytes = limit_bytes ? limit_bytes : NT_ARENA_DEFAULT_LIMIT;
    a->allocator.alloc = arena__pb_alloc;
    a->allocator.free = arena__pb_free;
    a->allocator.allocator_data = a;
}

/* Returns n bytes of 16-byte aligned memory valid until the next nt_arena_reset() or
 * nt_arena_close(); n 0 returns a distinct non-NULL pointer. Returns NULL when the
 * allocation would take the bytes handed out since the last reset past limit_bytes, or
 * when the system is out of memory. A request larger than chunk_bytes gets a chunk of
 * its own, so the chunk being filled stays in use. */
void *nt_arena_alloc(nt_arena_t *a, size_t n)
{
    if (n > SIZE_MAX - NT_ARENA_ALIGN) {
        return NULL;
    }
    size_t rn = arena__round(n ? n : 1);
    if (a->used_bytes > a->limit_bytes || rn > a->limit_bytes - a->used_bytes) {
        return NULL;
    }
    nt_arena_chunk_t *c = a->head;
    if (c == NULL || c->size - c->used < rn) {
        if (rn > a->chunk_bytes) {
            c = arena__chunk_new(rn);
            if (c == NULL) {
                return NULL;
            }
            if (a->head != NULL) {
                /* Behind the head: the head keeps its free space for small requests. */
                c->next = a->head->next;
                a->head->next = c;
            } else {
                a->head = c;
            }
        } else {
            c = arena__chunk_new(a->chunk_bytes);
            if (c == NULL) {
                return NULL;
            }
            c->next = a->head;
            a->head = c;
        }
    }
    void *p = c->data + c->used;
    c->used += rn;
    a->used_bytes += rn;
    return p;
}

/* Forgets every allocation. Keeps the oldest chunk of the normal size for reuse (so a
 * batch that fits one chunk never calls malloc again) and frees every other chunk. */
void nt_arena_reset(nt_arena_t *a)
{
    nt_arena_chunk_t *keep = NULL;
    for (nt_arena_chunk_t *c = a->head; c != NULL; c = c->next) {
        if (c->size == a->chunk_bytes) {
            keep = c; /* the last match is the oldest */
        }
    }
    nt_arena_chunk_t *c = a->head;
    while (c != NULL) {
        nt_arena_chunk_t *next = c->next;
        if (c != keep) {
            free(c);
        }
        c = next;
    }
    if (keep != NULL) {
        keep->next = NULL;
        keep->used = 0;
    }
    a->head = keep;
    a->used_bytes = 0;
}

/* Frees all memory. The arena stays initialised and may be used again. */
void nt_arena_close(nt_arena_t *a)
{
    nt_arena_chunk_t *c = a->head;
    while (c != NULL) {
        nt_arena_chunk_t *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->used_bytes = 0;
}
