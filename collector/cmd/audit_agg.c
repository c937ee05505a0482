/* audit_agg.c -- the audit report's figures over the period's events, gathered from the rows
 * `audit verify` reads anyway (their COPY in binary, audit_verify_batches.c): per pen and boot
 * (events, clock ahead and behind), per clinic, area and depth bucket (needle settings and
 * activity), per session and area (the deepest setting), the sessions started and the cartridges
 * mounted. One read of the events for the verification and the report, not three; the server then
 * only puts the figures in order (audit_report.c, which hands them over as arrays in binary).
 * A worker per connection fills its own; they are merged at the end. Keys are a pen's and a
 * clinic's text (untrusted): tables are keyed with SipHash under a key drawn per process, so no
 * set of serials can be chosen to collide. */
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "audit_internal.h"
#include "needletrace/arena.h"

/* The columns of NT_AUDIT_EVENTS_V1 read here (their index in it). */
enum {
    AGG__CLINIC = 0,
    AGG__SERIAL = 1,
    AGG__BOOT = 2,
    AGG__KIND = 4,
    AGG__DEVICE_TIME = 5,
    AGG__RECEIVED = 6,
    AGG__SESSION = 7,
    AGG__GTIN = 13,
    AGG__CARTRIDGE = 15,
    AGG__DEPTH = 20,
    AGG__AREA = 22,
    AGG__COLS = 23, /* a row has at least this many */
};

/* An entry of a table: its key's hash and bytes, and what the table keeps of it. */
typedef struct agg__ent {
    uint64_t h;
    int64_t v[8];
    void *ext; /* sessions: their areas (agg__areas_t); pens: the session of their last row */
    uint32_t klen;
    unsigned char key[];
} agg__ent_t;

typedef struct {
    agg__ent_t **slot;
    size_t cap, n;
    agg__ent_t *last; /* the entry found last: rows of one message share their pen and session */
} agg__map_t;

/* A session's areas: each (an entry of the aggregate's areas table) with its deepest setting. */
typedef struct {
    uint32_t n, cap;
    struct {
        const agg__ent_t *area;
        int has; /* a depth was set (max ignores NULLs) */
        int32_t max;
    } it[];
} agg__areas_t;

struct nt_audit_agg {
    const char *clinic; /* the report's clinic (NULL: all) */
    int64_t lo, hi;     /* the period in UTC, device time in microseconds since 2000 */
    agg__map_t *bounds; /* per clinic with a zone: v[0] lo, v[1] hi (shared by the children) */
    int child;
    uint64_t k[2]; /* SipHash key */
    nt_arena_t arena;
    agg__map_t pens;     /* clinic, serial, boot: v[0] rows, v[1] has clock, v[2..4] ahead as
                          * dt - ra, dt, ra; v[5..7] behind as ra - dt, dt, ra */
    agg__map_t depth;    /* clinic, area, bucket: v[0] rows */
    agg__map_t sessions; /* clinic, serial, session: ext its areas */
    agg__map_t areas;    /* area: interned */
    agg__map_t carts;    /* gtin, serial of each cartridge mounted */
    int64_t started;     /* session_started rows */
    int failed;          /* AGG__OOM or AGG__AREAS */
};

enum { AGG__OOM = 1, AGG__AREAS = 2 };

/* Areas of a session at most (the schema allows 11): more only in a record altered by hand, whose
 * figures are refused rather than taking time quadratic in them. */
#define AGG__MAX_AREAS 64

/* ---- SipHash-1-3 (Aumasson, Bernstein: "SipHash: a fast short-input PRF") ---- */

static uint64_t agg__rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

#define AGG__SIPROUND                                                                              \
    do {                                                                                           \
        v0 += v1, v1 = agg__rotl(v1, 13), v1 ^= v0, v0 = agg__rotl(v0, 32);                        \
        v2 += v3, v3 = agg__rotl(v3, 16), v3 ^= v2;                                                \
        v0 += v3, v3 = agg__rotl(v3, 21), v3 ^= v0;                                                \
        v2 += v1, v1 = agg__rotl(v1, 17), v1 ^= v2, v2 = agg__rotl(v2, 32);                        \
    } while (0)

static uint64_t agg__sip(const uint64_t k[2], const unsigned char *p, size_t n)
{
    uint64_t v0 = k[0] ^ 0x736f6d6570736575ull, v1 = k[1] ^ 0x646f72616e646f6dull;
    uint64_t v2 = k[0] ^ 0x6c7967656e657261ull, v3 = k[1] ^ 0x7465646279746573ull;
    size_t whole = n & ~(size_t)7;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = 0;
        for (int b = 7; b >= 0; b--) {
            m = m << 8 | p[i + (size_t)b]; /* little-endian, whatever the machine */
        }
        v3 ^= m;
        AGG__SIPROUND;
        v0 ^= m;
    }
    uint64_t last = (uint64_t)n << 56;
    for (size_t i = whole; i < n; i++) {
        last |= (uint64_t)p[i] << (8 * (i - whole));
    }
    v3 ^= last;
    AGG__SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    AGG__SIPROUND;
    AGG__SIPROUND;
    AGG__SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- tables ---- */

/* The entry of key (klen bytes), made (zeroed) when absent and make is set; NULL when absent or
 * out of memory (g->failed). */
static agg__ent_t *agg__find(nt_audit_agg_t *g, agg__map_t *m, const unsigned char *key,
                             size_t klen, int make)
{
    if (m->last != NULL && m->last->klen == klen && memcmp(m->last->key, key, klen) == 0) {
        return m->last;
    }
    uint64_t h = agg__sip(g->k, key, klen);
    for (size_t i = m->cap > 0 ? (size_t)h & (m->cap - 1) : 0; m->cap > 0;
         i = (i + 1) & (m->cap - 1)) {
        agg__ent_t *e = m->slot[i];
        if (e == NULL) {
            break;
        }
        if (e->h == h && e->klen == klen && memcmp(e->key, key, klen) == 0) {
            return m->last = e;
        }
    }
    if (!make) {
        return NULL;
    }
    if (2 * (m->n + 1) > m->cap) { /* at most half full */
        size_t cap = m->cap > 0 ? 2 * m->cap : 64;
        agg__ent_t **slot = calloc(cap, sizeof(*slot));
        if (slot == NULL) {
            g->failed = AGG__OOM;
            return NULL;
        }
        for (size_t k = 0; k < m->cap; k++) {
            if (m->slot[k] != NULL) {
                size_t j = (size_t)m->slot[k]->h & (cap - 1);
                while (slot[j] != NULL) {
                    j = (j + 1) & (cap - 1);
                }
                slot[j] = m->slot[k];
            }
        }
        free(m->slot);
        m->slot = slot;
        m->cap = cap;
    }
    agg__ent_t *e = klen <= UINT32_MAX ? nt_arena_alloc(&g->arena, sizeof(*e) + klen) : NULL;
    if (e == NULL) {
        g->failed = AGG__OOM;
        return NULL;
    }
    memset(e, 0, sizeof(*e));
    e->h = h;
    e->klen = (uint32_t)klen;
    memcpy(e->key, key, klen);
    size_t i = (size_t)h & (m->cap - 1);
    while (m->slot[i] != NULL) {
        i = (i + 1) & (m->cap - 1);
    }
    m->slot[i] = e;
    m->n++;
    return m->last = e;
}

/* A key: its fields one after the other, each its length (4 bytes, 0xffffffff NULL) and bytes
 * (no two keys alike whatever the bytes); on the stack, on the heap when longer (a value of any
 * length: the figures never fail for a row the schema would refuse). */
typedef struct {
    unsigned char *b;
    size_t len, cap;
    int oom;
    unsigned char inl[480];
} agg__key_t;

static void agg__key_init(agg__key_t *k)
{
    k->b = k->inl;
    k->len = 0;
    k->cap = sizeof(k->inl);
    k->oom = 0;
}

static void agg__key_done(agg__key_t *k)
{
    if (k->b != k->inl) {
        free(k->b);
    }
    agg__key_init(k);
}

/* Appends n bytes (the key's room grown as needed; k->oom when it cannot be). */
static void agg__append(agg__key_t *k, const unsigned char *p, size_t n)
{
    if (k->oom || n == 0) {
        return;
    }
    if (k->cap - k->len < n) {
        size_t cap = k->len + n < (SIZE_MAX >> 2) ? 2 * (k->len + n) : 0;
        unsigned char *b = cap > 0 ? malloc(cap) : NULL;
        if (b == NULL) {
            k->oom = 1;
            return;
        }
        memcpy(b, k->b, k->len);
        if (k->b != k->inl) {
            free(k->b);
        }
        k->b = b;
        k->cap = cap;
    }
    memcpy(k->b + k->len, p, n);
    k->len += n;
}

static void agg__field(agg__key_t *k, const unsigned char *p, int32_t len)
{
    uint32_t l = len < 0 ? 0xffffffffu : (uint32_t)len;
    unsigned char w[4] = {(unsigned char)(l >> 24), (unsigned char)(l >> 16),
                          (unsigned char)(l >> 8), (unsigned char)l};
    agg__append(k, w, 4);
    agg__append(k, p, len < 0 ? 0 : (size_t)len);
}

/* Field i of a key (its bytes; *len -1 when NULL); the key's end when there is none. */
static const unsigned char *agg__key_get(const agg__ent_t *e, int i, int32_t *len)
{
    size_t at = 0;
    for (;;) {
        uint32_t l = (uint32_t)e->key[at] << 24 | (uint32_t)e->key[at + 1] << 16 |
                     (uint32_t)e->key[at + 2] << 8 | e->key[at + 3];
        size_t body = l == 0xffffffffu ? 0 : l;
        if (i-- == 0) {
            *len = l == 0xffffffffu ? -1 : (int32_t)l;
            return e->key + at + 4;
        }
        at += 4 + body;
    }
}

static int64_t agg__be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        v = v << 8 | p[i];
    }
    return n == 4 ? (int64_t)(int32_t)(uint32_t)v : (int64_t)v;
}

nt_audit_agg_t *nt_audit__agg_new(const char *clinic, int64_t lo, int64_t hi)
{
    nt_audit_agg_t *g = calloc(1, sizeof(*g));
    agg__map_t *bounds = calloc(1, sizeof(*bounds));
    if (g == NULL || bounds == NULL) {
        free(g);
        free(bounds);
        return NULL;
    }
    g->clinic = clinic;
    g->lo = lo;
    g->hi = hi;
    g->bounds = bounds;
    if (getrandom(g->k, sizeof(g->k), GRND_NONBLOCK) != (ssize_t)sizeof(g->k)) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        g->k[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
        g->k[1] = (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)g;
    }
    nt_arena_init(&g->arena, 4u << 20, SIZE_MAX / 2);
    return g;
}

int nt_audit__agg_bound(nt_audit_agg_t *g, const char *clinic, int64_t lo, int64_t hi)
{
    agg__key_t k;
    agg__key_init(&k);
    agg__field(&k, (const unsigned char *)clinic, (int32_t)strlen(clinic));
    agg__ent_t *e = k.oom ? NULL : agg__find(g, g->bounds, k.b, k.len, 1);
    agg__key_done(&k);
    if (e == NULL) {
        return -1;
    }
    if (e->v[2]) {
        return -2; /* twice: which zone would be the clinic's? */
    }
    e->v[0] = lo;
    e->v[1] = hi;
    e->v[2] = 1;
    return 0;
}

nt_audit_agg_t *nt_audit__agg_child(const nt_audit_agg_t *g)
{
    nt_audit_agg_t *c = calloc(1, sizeof(*c));
    agg__map_t *bounds = calloc(1, sizeof(*bounds));
    if (c == NULL || bounds == NULL) {
        free(c);
        free(bounds);
        return NULL;
    }
    *c = (nt_audit_agg_t){.clinic = g->clinic, .lo = g->lo, .hi = g->hi, .child = 1};
    memcpy(c->k, g->k, sizeof(c->k));
    /* its own view of the bounds (the cache of the last found is per table) */
    *bounds = *g->bounds;
    bounds->last = NULL;
    c->bounds = bounds;
    nt_arena_init(&c->arena, 4u << 20, SIZE_MAX / 2);
    return c;
}

void nt_audit__agg_free(nt_audit_agg_t *g)
{
    if (g == NULL) {
        return;
    }
    agg__map_t *maps[] = {&g->pens, &g->depth, &g->sessions, &g->areas, &g->carts};
    for (size_t k = 0; k < g->sessions.cap; k++) {
        if (g->sessions.slot[k] != NULL) {
            free(g->sessions.slot[k]->ext);
        }
    }
    for (size_t m = 0; m < sizeof(maps) / sizeof(maps[0]); m++) {
        free(maps[m]->slot);
    }
    if (!g->child) {
        free(g->bounds->slot);
    }
    free(g->bounds);
    nt_arena_close(&g->arena);
    free(g);
}

/* Session e's area (an entry of g's areas) at its deepest: depth (has: set) taken in. */
static void agg__area(nt_audit_agg_t *g, agg__ent_t *e, const agg__ent_t *area, int has,
                      int32_t depth)
{
    agg__areas_t *a = e->ext;
    uint32_t i = 0;
    while (a != NULL && i < a->n && a->it[i].area != area) {
        i++;
    }
    if (a == NULL || i == a->n) {
        if (a != NULL && a->n == AGG__MAX_AREAS) {
            g->failed = AGG__AREAS;
            return;
        }
        if (a == NULL || a->n == a->cap) {
            uint32_t cap = a != NULL ? 2 * a->cap : 4;
            agg__areas_t *b = realloc(a, sizeof(*a) + cap * sizeof(a->it[0]));
            if (b == NULL) {
                g->failed = AGG__OOM;
                return;
            }
            b->n = a != NULL ? b->n : 0;
            b->cap = cap;
            e->ext = a = b;
        }
        a->it[a->n].area = area;
        a->it[a->n].has = 0;
        a->it[a->n].max = 0;
        i = a->n++;
    }
    if (has && (!a->it[i].has || depth > a->it[i].max)) {
        a->it[i].has = 1;
        a->it[i].max = depth;
    }
}

/* A pen-boot's clock: the row with the device furthest ahead (dt - ra) and behind (ra - dt),
 * kept by their times (the server takes the difference: an interval as it prints them). */
static void agg__clock(agg__ent_t *e, int64_t dt, int64_t ra)
{
    int64_t ahead, behind;
    if (__builtin_sub_overflow(dt, ra, &ahead)) {
        ahead = dt > ra ? INT64_MAX : INT64_MIN;
    }
    behind = ahead == INT64_MIN ? INT64_MAX : -ahead;
    if (!e->v[1] || ahead > e->v[2]) {
        e->v[2] = ahead, e->v[3] = dt, e->v[4] = ra;
    }
    if (!e->v[1] || behind > e->v[5]) {
        e->v[5] = behind, e->v[6] = dt, e->v[7] = ra;
    }
    e->v[1] = 1;
}

static int agg__is(const unsigned char *p, int32_t len, const char *s)
{
    return len >= 0 && (size_t)len == strlen(s) && memcmp(p, s, (size_t)len) == 0;
}

/* The rest of a row in the period (k holds its clinic): its pen, depth, session, cartridge. */
static void agg__in(nt_audit_agg_t *g, agg__key_t *k, int64_t dt, const unsigned char *const *f,
                    const int32_t *len)
{
    agg__field(k, f[AGG__SERIAL], len[AGG__SERIAL]);
    size_t pen_len = k->len;
    agg__field(k, f[AGG__BOOT], len[AGG__BOOT]);
    agg__ent_t *e = k->oom ? NULL : agg__find(g, &g->pens, k->b, k->len, 1), *pen = e;
    if (e == NULL) {
        g->failed = AGG__OOM;
        return;
    }
    e->v[0]++;
    if (len[AGG__RECEIVED] == 8) {
        agg__clock(e, dt, agg__be(f[AGG__RECEIVED], 8));
    }
    int needle = agg__is(f[AGG__KIND], len[AGG__KIND], "needle_setting") ||
                 agg__is(f[AGG__KIND], len[AGG__KIND], "needle_activity");
    int has = len[AGG__DEPTH] == 4;
    int32_t depth = has ? (int32_t)agg__be(f[AGG__DEPTH], 4) : 0;
    const agg__ent_t *area = NULL;
    if (needle) { /* the depth chart: per clinic, area ('unspecified' when none) and bucket */
        agg__key_t a, d;
        agg__key_init(&a);
        agg__key_init(&d);
        if (len[AGG__AREA] >= 0) {
            agg__field(&a, f[AGG__AREA], len[AGG__AREA]);
        } else {
            agg__field(&a, (const unsigned char *)"unspecified", 11);
        }
        area = a.oom ? NULL : agg__find(g, &g->areas, a.b, a.len, 1);
        agg__field(&d, f[AGG__CLINIC], len[AGG__CLINIC]);
        agg__append(&d, a.b, a.len);
        int32_t bu = has ? depth / 250 * 250 : 0;
        unsigned char bucket[4] = {(unsigned char)((uint32_t)bu >> 24),
                                   (unsigned char)((uint32_t)bu >> 16),
                                   (unsigned char)((uint32_t)bu >> 8), (unsigned char)bu};
        agg__field(&d, bucket, has ? 4 : -1);
        e = area == NULL || a.oom || d.oom ? NULL : agg__find(g, &g->depth, d.b, d.len, 1);
        agg__key_done(&a);
        agg__key_done(&d);
        if (e == NULL) {
            g->failed = AGG__OOM;
            return;
        }
        e->v[0]++;
    }
    if (len[AGG__SESSION] >= 0) { /* the session's areas */
        k->len = pen_len;
        agg__field(k, f[AGG__SESSION], len[AGG__SESSION]);
        /* the pen's session of its row before, most often (a table far larger than a cache) */
        agg__ent_t *last = pen->ext;
        e = k->oom ? NULL
            : last != NULL && last->klen == k->len && memcmp(last->key, k->b, k->len) == 0
                ? last
                : agg__find(g, &g->sessions, k->b, k->len, 1);
        pen->ext = e;
        if (e == NULL) {
            g->failed = AGG__OOM;
            return;
        }
        if (needle) {
            agg__area(g, e, area, has, depth);
        }
    }
    if (agg__is(f[AGG__KIND], len[AGG__KIND], "session_started")) {
        g->started++;
    } else if (agg__is(f[AGG__KIND], len[AGG__KIND], "cartridge_mounted")) {
        k->len = 0;
        agg__field(k, f[AGG__GTIN], len[AGG__GTIN]);
        agg__field(k, f[AGG__CARTRIDGE], len[AGG__CARTRIDGE]);
        if (k->oom || agg__find(g, &g->carts, k->b, k->len, 1) == NULL) {
            g->failed = AGG__OOM;
        }
    }
}

int nt_audit__agg_row(nt_audit_agg_t *g, int ncols, const unsigned char *const *f,
                      const int32_t *len)
{
    if (g->failed || ncols < AGG__COLS || len[AGG__DEVICE_TIME] != 8) {
        return 0; /* not in the period (no device time): as the query's filter says */
    }
    if (g->clinic != NULL && !agg__is(f[AGG__CLINIC], len[AGG__CLINIC], g->clinic)) {
        return 0;
    }
    int64_t dt = agg__be(f[AGG__DEVICE_TIME], 8), lo = g->lo, hi = g->hi;
    agg__key_t k;
    agg__key_init(&k);
    agg__field(&k, f[AGG__CLINIC], len[AGG__CLINIC]); /* NULL too: in UTC, as before */
    const agg__ent_t *b =
        g->bounds->n > 0 && !k.oom ? agg__find(g, g->bounds, k.b, k.len, 0) : NULL;
    if (dt >= (b != NULL ? b->v[0] : lo) && dt < (b != NULL ? b->v[1] : hi)) {
        agg__in(g, &k, dt, f, len);
    }
    g->failed = g->failed ? g->failed : k.oom ? AGG__OOM : 0;
    agg__key_done(&k);
    return g->failed ? -1 : 0;
}

int nt_audit__agg_merge(nt_audit_agg_t *into, nt_audit_agg_t *from)
{
    for (size_t s = 0; s < from->pens.cap && !into->failed; s++) {
        const agg__ent_t *x = from->pens.slot[s];
        agg__ent_t *e = x != NULL ? agg__find(into, &into->pens, x->key, x->klen, 1) : NULL;
        if (e == NULL) {
            continue;
        }
        e->v[0] += x->v[0];
        if (x->v[1]) {
            agg__clock(e, x->v[3], x->v[4]);
            agg__clock(e, x->v[6], x->v[7]);
        }
    }
    for (size_t s = 0; s < from->depth.cap && !into->failed; s++) {
        const agg__ent_t *x = from->depth.slot[s];
        agg__ent_t *e = x != NULL ? agg__find(into, &into->depth, x->key, x->klen, 1) : NULL;
        if (e != NULL) {
            e->v[0] += x->v[0];
        }
    }
    for (size_t s = 0; s < from->sessions.cap && !into->failed; s++) {
        const agg__ent_t *x = from->sessions.slot[s];
        agg__ent_t *e = x != NULL ? agg__find(into, &into->sessions, x->key, x->klen, 1) : NULL;
        const agg__areas_t *a = x != NULL ? x->ext : NULL;
        for (uint32_t i = 0; e != NULL && a != NULL && i < a->n && !into->failed; i++) {
            const agg__ent_t *area =
                agg__find(into, &into->areas, a->it[i].area->key, a->it[i].area->klen, 1);
            if (area != NULL) {
                agg__area(into, e, area, a->it[i].has, a->it[i].max);
            }
        }
    }
    for (size_t s = 0; s < from->carts.cap && !into->failed; s++) {
        const agg__ent_t *x = from->carts.slot[s];
        if (x != NULL) {
            agg__find(into, &into->carts, x->key, x->klen, 1);
        }
    }
    into->started += from->started;
    if (!into->failed) {
        into->failed = from->failed;
    }
    return into->failed ? -1 : 0;
}

/* Adds field i of key e to arr. */
static void agg__put_field(nt_audit_arr_t *arr, const agg__ent_t *e, int i)
{
    int32_t l;
    const unsigned char *p = agg__key_get(e, i, &l);
    nt_audit__arr_add(arr, p, l);
}

/* Per pen and boot: clinic, serial, boot, rows, and the device's time and the reception's of
 * the row furthest ahead and of the row furthest behind (NULL when none has both). */
int nt_audit__agg_pens(const nt_audit_agg_t *g, nt_audit_arr_t out[8])
{
    static const uint32_t oid[8] = {25, 25, 20, 20, 1184, 1184, 1184, 1184};
    nt_audit__arrs_init(out, 8, oid);
    for (size_t s = 0; s < g->pens.cap; s++) {
        const agg__ent_t *e = g->pens.slot[s];
        if (e == NULL) {
            continue;
        }
        for (int i = 0; i < 3; i++) {
            agg__put_field(&out[i], e, i);
        }
        nt_audit__arr_i64(&out[3], e->v[0]);
        for (int i = 0; i < 4; i++) {
            if (e->v[1]) {
                nt_audit__arr_i64(&out[4 + i], e->v[i < 2 ? 3 + i : 4 + i]);
            } else {
                nt_audit__arr_add(&out[4 + i], NULL, -1);
            }
        }
    }
    return nt_audit__arrs_finish(out, 8);
}

/* Per clinic, area and depth bucket: clinic, area, bucket (NULL: no depth), rows. */
int nt_audit__agg_depth(const nt_audit_agg_t *g, nt_audit_arr_t out[4])
{
    static const uint32_t oid[4] = {25, 25, 23, 20};
    nt_audit__arrs_init(out, 4, oid);
    for (size_t s = 0; s < g->depth.cap; s++) {
        const agg__ent_t *e = g->depth.slot[s];
        if (e == NULL) {
            continue;
        }
        for (int i = 0; i < 3; i++) {
            agg__put_field(&out[i], e, i);
        }
        nt_audit__arr_i64(&out[3], e->v[0]);
    }
    return nt_audit__arrs_finish(out, 4);
}

void nt_audit__agg_counts(const nt_audit_agg_t *g, int64_t *started, int64_t *cartridges)
{
    *started = g->started;
    *cartridges = (int64_t)g->carts.n;
}

const char *nt_audit__agg_error(const nt_audit_agg_t *g)
{
    return g->failed == 0 ? NULL
           : g->failed == AGG__AREAS
               ? "a session has more treatment areas than the schema allows (the record was "
                 "altered by hand: audit verify names the rows)"
               : "out of memory";
}

static int agg__cmp_str(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

/* The limit of each clinic and area the sessions used (an entry of pairs each, v[0] its limit),
 * from the server: limit_sql, over $1 clinics and $2 areas, gives them in order. 0, or -1
 * (printed). */
static int agg__limits(nt_audit_agg_t *g, PGconn *conn, const char *limit_sql, agg__map_t *pairs)
{
    for (size_t s = 0; s < g->sessions.cap && !g->failed; s++) {
        const agg__ent_t *e = g->sessions.slot[s];
        const agg__areas_t *a = e != NULL ? e->ext : NULL;
        for (uint32_t i = 0; a != NULL && i < a->n && !g->failed; i++) {
            int32_t l;
            const unsigned char *clinic = agg__key_get(e, 0, &l);
            agg__key_t k;
            agg__key_init(&k);
            agg__field(&k, clinic, l);
            agg__append(&k, a->it[i].area->key, a->it[i].area->klen);
            if (k.oom || agg__find(g, pairs, k.b, k.len, 1) == NULL) {
                g->failed = AGG__OOM;
            }
            agg__key_done(&k);
        }
    }
    nt_audit_arr_t arr[2];
    static const uint32_t oid[2] = {25, 25};
    nt_audit__arrs_init(arr, 2, oid);
    agg__ent_t **order = calloc(pairs->n + 1, sizeof(*order));
    size_t n = 0;
    for (size_t s = 0; order != NULL && s < pairs->cap; s++) {
        if (pairs->slot[s] != NULL) {
            order[n++] = pairs->slot[s];
            agg__put_field(&arr[0], pairs->slot[s], 0);
            agg__put_field(&arr[1], pairs->slot[s], 1);
        }
    }
    int rc = order == NULL || g->failed || nt_audit__arrs_finish(arr, 2) != 0 ? -1 : 0;
    if (rc != 0) {
        fprintf(stderr, "needletrace: audit report: sessions: %s\n",
                g->failed ? nt_audit__agg_error(g)
                          : "out of memory, or more than a query's parameter may hold (1 GiB)");
    } else {
        const Oid types[2] = {1009, 1009}; /* text[] */
        const char *values[2] = {(const char *)arr[0].b, (const char *)arr[1].b};
        const int lens[2] = {(int)arr[0].len, (int)arr[1].len}, formats[2] = {1, 1};
        PGresult *res = PQexecParams(conn, limit_sql, 2, types, values, lens, formats, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != (int)n) {
            fprintf(stderr, "needletrace: audit report: the depth limits: %s",
                    PQresultStatus(res) == PGRES_TUPLES_OK ? "not one per area\n"
                                                           : nt_audit__why(conn, res));
            rc = -1;
        }
        for (size_t i = 0; rc == 0 && i < n; i++) {
            order[i]->v[0] = PQgetisnull(res, (int)i, 0)
                                 ? INT64_MIN
                                 : strtoll(PQgetvalue(res, (int)i, 0), NULL, 10);
        }
        PQclear(res);
    }
    free(order);
    nt_audit__arrs_free(arr, 2);
    return rc;
}

/* Session e's depth used against the limits: "area deepest/limit um" per area with a depth set,
 * in order, ", " between (string_agg's form before); NULL when none (*out stays NULL). 0, or -1
 * out of memory. */
static int agg__depth_text(nt_audit_agg_t *g, const agg__ent_t *e, agg__map_t *pairs, char **out)
{
    const agg__areas_t *a = e->ext;
    *out = NULL;
    if (a == NULL) {
        return 0;
    }
    char **part = calloc(a->n + 1, sizeof(*part));
    size_t n = 0, total = 0;
    int rc = part == NULL ? -1 : 0;
    int32_t cl;
    const unsigned char *clinic = agg__key_get(e, 0, &cl);
    for (uint32_t i = 0; rc == 0 && i < a->n; i++) {
        if (!a->it[i].has) {
            continue; /* max of no depth: NULL, left out by string_agg */
        }
        agg__key_t k;
        agg__key_init(&k);
        agg__field(&k, clinic, cl);
        agg__append(&k, a->it[i].area->key, a->it[i].area->klen);
        int oom = k.oom;
        const agg__ent_t *pair = oom ? NULL : agg__find(g, pairs, k.b, k.len, 0);
        agg__key_done(&k);
        if (oom) {
            rc = -1;
            break;
        }
        int32_t al;
        const unsigned char *area = agg__key_get(a->it[i].area, 0, &al);
        if (pair == NULL || pair->v[0] == INT64_MIN) {
            continue; /* no limit (NULL): the part is NULL, left out */
        }
        size_t len = (size_t)al + 64;
        part[n] = malloc(len);
        if (part[n] == NULL) {
            rc = -1;
            break;
        }
        memcpy(part[n], area, (size_t)al);
        total += (size_t)al +
                 (size_t)snprintf(part[n] + al, 64, " %" PRId32 "/%" PRId64 " um", a->it[i].max,
                                  pair->v[0]) +
                 2;
        n++;
    }
    if (rc == 0 && n > 0) {
        qsort(part, n, sizeof(*part), agg__cmp_str);
        *out = malloc(total + 1);
        size_t at = 0;
        for (size_t i = 0; *out != NULL && i < n; i++) {
            at += (size_t)sprintf(*out + at, "%s%s", i > 0 ? ", " : "", part[i]);
        }
        rc = *out == NULL ? -1 : 0;
    }
    for (size_t i = 0; part != NULL && i < n; i++) {
        free(part[i]);
    }
    free(part);
    return rc;
}

/* Row r of started (text: clinic, pen, session first): its session's entry, marked, and its
 * depth used as the last column. 0, or -1 out of memory. */
static int agg__started(nt_audit_agg_t *g, agg__map_t *pairs, PGresult *started, int r)
{
    agg__key_t k;
    agg__key_init(&k);
    for (int c = 0; c < 3; c++) {
        agg__field(&k, (const unsigned char *)PQgetvalue(started, r, c),
                   PQgetisnull(started, r, c) ? -1 : PQgetlength(started, r, c));
    }
    int oom = k.oom;
    agg__ent_t *e = oom ? NULL : agg__find(g, &g->sessions, k.b, k.len, 0);
    agg__key_done(&k);
    char *text = NULL;
    if (oom || (e != NULL && agg__depth_text(g, e, pairs, &text) != 0)) {
        return -1;
    }
    if (e != NULL) {
        e->v[0] = 1; /* in the report with its start */
    }
    int ok = PQsetvalue(started, r, PQnfields(started) - 1, text != NULL ? text : "",
                        text != NULL ? (int)strlen(text) : 0);
    free(text);
    return ok ? 0 : -1;
}

int nt_audit__agg_sessions(nt_audit_agg_t *g, PGconn *conn, const char *limit_sql,
                           PGresult *started, nt_audit_arr_t out[4])
{
    static const uint32_t oid[4] = {25, 25, 25, 25};
    nt_audit__arrs_init(out, 4, oid);
    agg__map_t pairs = {.n = 0};
    if (agg__limits(g, conn, limit_sql, &pairs) != 0) { /* printed */
        free(pairs.slot);
        return -1;
    }
    int rc = 0;
    for (int r = 0; rc == 0 && r < PQntuples(started); r++) {
        rc = agg__started(g, &pairs, started, r);
    }
    for (size_t s = 0; rc == 0 && s < g->sessions.cap; s++) {
        const agg__ent_t *e = g->sessions.slot[s];
        char *text = NULL;
        if (e == NULL || e->v[0]) {
            continue; /* none, or started in the period */
        }
        if (agg__depth_text(g, e, &pairs, &text) != 0) {
            rc = -1;
            break;
        }
        for (int i = 0; i < 3; i++) {
            agg__put_field(&out[i], e, i);
        }
        nt_audit__arr_add(&out[3], text, text != NULL ? (int32_t)strlen(text) : -1);
        free(text);
    }
    if (rc != 0) {
        fprintf(stderr, "needletrace: audit report: sessions: out of memory\n");
    }
    if (rc == 0 && nt_audit__arrs_finish(out, 4) != 0) {
        fprintf(stderr, "needletrace: audit report: sessions: out of memory, or more than a "
                        "query's parameter may hold (1 GiB)\n");
        rc = -1;
    }
    free(pairs.slot);
    return rc;
}
