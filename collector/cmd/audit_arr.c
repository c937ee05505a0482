/* audit_arr.c -- arrays in binary, as PostgreSQL's array_recv reads them: the audit report hands
 * its figures to the server this way (one dimension from 1, each element its length and bytes),
 * no text to quote or parse on either side. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "audit_internal.h"

void nt_audit__arr_init(nt_audit_arr_t *a, uint32_t elem_oid)
{
    memset(a, 0, sizeof(*a));
    a->oid = elem_oid;
}

static void arr__put(nt_audit_arr_t *a, const void *p, size_t n)
{
    if (a->oom) {
        return;
    }
    if (a->cap - a->len < n) {
        size_t cap = a->cap > 0 ? a->cap : 4096;
        while (cap - a->len < n && cap < SIZE_MAX / 2) {
            cap *= 2;
        }
        unsigned char *b = cap - a->len >= n ? realloc(a->b, cap) : NULL;
        if (b == NULL) {
            a->oom = 1;
            return;
        }
        a->b = b;
        a->cap = cap;
    }
    memcpy(a->b + a->len, p, n);
    a->len += n;
}

static void arr__u32(nt_audit_arr_t *a, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    arr__put(a, b, 4);
}

void nt_audit__arr_add(nt_audit_arr_t *a, const void *p, int32_t len)
{
    if (a->len == 0) { /* one dimension, its length patched when finished, from 1 */
        arr__u32(a, 1);
        arr__u32(a, 0);
        arr__u32(a, a->oid);
        arr__u32(a, 0);
        arr__u32(a, 1);
    }
    arr__u32(a, len < 0 ? 0xffffffffu : (uint32_t)len);
    if (len > 0) {
        arr__put(a, p, (size_t)len);
    }
    a->n++;
}

void nt_audit__arr_i64(nt_audit_arr_t *a, int64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++) {
        b[i] = (unsigned char)((uint64_t)v >> (56 - 8 * i));
    }
    nt_audit__arr_add(a, b, 8);
}

int nt_audit__arr_finish(nt_audit_arr_t *a)
{
    if (a->len == 0) { /* no element: no dimension */
        arr__u32(a, 0);
        arr__u32(a, 0);
        arr__u32(a, a->oid);
    } else if (!a->oom) {
        for (int i = 0; i < 4; i++) {
            a->b[12 + i] = (unsigned char)(a->n >> (24 - 8 * i));
        }
    }
    return a->oom || a->len >= (1u << 30) ? -1 : 0; /* a parameter is a palloc: 1 GiB at most */
}

void nt_audit__arr_free(nt_audit_arr_t *a)
{
    free(a->b);
    memset(a, 0, sizeof(*a));
}

void nt_audit__arrs_init(nt_audit_arr_t *a, int n, const uint32_t *elem_oid)
{
    for (int i = 0; i < n; i++) {
        nt_audit__arr_init(&a[i], elem_oid[i]);
    }
}

int nt_audit__arrs_finish(nt_audit_arr_t *a, int n)
{
    int rc = 0;
    for (int i = 0; i < n; i++) {
        rc |= nt_audit__arr_finish(&a[i]);
    }
    return rc;
}

void nt_audit__arrs_free(nt_audit_arr_t *a, int n)
{
    for (int i = 0; i < n; i++) {
        nt_audit__arr_free(&a[i]);
    }
}
