/* registry.c -- the pens the device registry refused, remembered (registry.h). */
#include "needletrace/registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "needletrace/ident.h"
#include "needletrace/log.h"

void nt_registry_init(nt_registry_t *r)
{
    memset(r, 0, sizeof(*r));
    if (getrandom(&r->seed, sizeof(r->seed), GRND_NONBLOCK) != (ssize_t)sizeof(r->seed)) {
        r->seed = (uint32_t)nt_mono_us() ^ (uint32_t)getpid();
    }
}

void nt_registry_free(nt_registry_t *r)
{
    free(r->slots);
    r->slots = NULL;
}

/* FNV-1a of the serial: its first slot; it may sit in any of the REGISTRY__WAYS from there. */
#define REGISTRY__WAYS 8u
static uint32_t registry__home(const nt_registry_t *r, const char *serial)
{
    uint32_t h = 2166136261u ^ r->seed; /* seeded: serials that collide cannot be chosen */
    for (const unsigned char *p = (const unsigned char *)serial; *p != '\0'; p++) {
        h = (h ^ *p) * 16777619u;
    }
    return h;
}

/* The slot holding serial, or NULL. */
static nt_registry_entry_t *registry__find(const nt_registry_t *r, const char *serial)
{
    uint32_t h = registry__home(r, serial);
    for (uint32_t i = 0; i < REGISTRY__WAYS; i++) {
        nt_registry_entry_t *e = &r->slots[(h + i) % NT_REGISTRY_SLOTS];
        if (strcmp(e->serial, serial) == 0) {
            return e;
        }
    }
    return NULL;
}

/* The slot for serial: its own, else a free or expired one, else the one expiring first. */
static nt_registry_entry_t *registry__place(nt_registry_t *r, const char *serial, int64_t now_us)
{
    nt_registry_entry_t *e = registry__find(r, serial);
    if (e != NULL) {
        return e;
    }
    uint32_t h = registry__home(r, serial);
    nt_registry_entry_t *best = NULL;
    for (uint32_t i = 0; i < REGISTRY__WAYS; i++) {
        e = &r->slots[(h + i) % NT_REGISTRY_SLOTS];
        if (e->serial[0] == '\0' || e->until_us <= now_us) {
            return e;
        }
        if (best == NULL || e->until_us < best->until_us) {
            best = e;
        }
    }
    return best;
}

static nt_reason_t registry__reason(const char *name)
{
    if (strcmp(name, "clinic_mismatch") == 0) {
        return NT_REASON_CLINIC_MISMATCH;
    }
    if (strcmp(name, "device_retired") == 0) {
        return NT_REASON_DEVICE_RETIRED;
    }
    if (strcmp(name, "unknown_device") == 0) {
        return NT_REASON_UNKNOWN_DEVICE;
    }
    return NT_REASON_OK;
}

/* New verdicts logged one by one per refusal; the rest are counted in one line. */
#define REGISTRY__LOG_LINES 10

/* One line "serial clinic reason registered": 1 learned, 0 skipped (malformed). *logged counts
 * the new verdicts of this refusal (logged up to REGISTRY__LOG_LINES). */
static int registry__line(nt_registry_t *r, const char *line, size_t len, int64_t now_us,
                          int *logged)
{
    char buf[4 * (NT_MAX_ID_LEN + 1) + 32];
    if (len >= sizeof(buf)) {
        return 0;
    }
    memcpy(buf, line, len);
    buf[len] = '\0';
    char *save = NULL;
    const char *serial = strtok_r(buf, " ", &save);
    const char *clinic = strtok_r(NULL, " ", &save);
    const char *why = strtok_r(NULL, " ", &save);
    const char *registered = strtok_r(NULL, " ", &save);
    nt_reason_t reason = why != NULL ? registry__reason(why) : NT_REASON_OK;
    if (registered == NULL || strtok_r(NULL, " ", &save) != NULL || reason == NT_REASON_OK ||
        !nt_ident_id_valid_str(serial) || !nt_ident_id_valid_str(clinic) ||
        (strcmp(registered, "?") != 0 && !nt_ident_id_valid_str(registered))) {
        return 0;
    }
    if (strcmp(registered, "?") == 0) {
        registered = "";
    }
    nt_registry_entry_t *e = registry__place(r, serial, now_us);
    int same = strcmp(e->serial, serial) == 0 && e->reason == reason &&
               strcmp(e->registered, registered) == 0 && e->until_us > now_us;
    if (!same && ++*logged <= REGISTRY__LOG_LINES) {
        nt_log(NT_LOG_WARN, "registry",
               "the device registry refuses pen %s under clinic %s (%s%s%s): its messages are "
               "quarantined",
               serial, clinic, why, *registered != '\0' ? ", registered to clinic " : "",
               registered);
    }
    snprintf(e->serial, sizeof(e->serial), "%s", serial);
    snprintf(e->registered, sizeof(e->registered), "%s", registered);
    e->reason = reason;
    e->until_us = now_us + NT_REGISTRY_TTL_US;
    return 1;
}

int nt_registry_refused(nt_registry_t *r, const char *detail, int64_t now_us)
{
    if (r->slots == NULL) {
        r->slots = calloc(NT_REGISTRY_SLOTS, sizeof(*r->slots));
        if (r->slots == NULL) {
            return NT_ENOMEM;
        }
    }
    int learned = 0, logged = 0;
    for (const char *p = detail != NULL ? detail : ""; *p != '\0';) {
        const char *nl = strchr(p, '\n');
        size_t len = nl != NULL ? (size_t)(nl - p) : strlen(p);
        learned += registry__line(r, p, len, now_us, &logged);
        p += len + (nl != NULL);
    }
    r->refused_total += (uint64_t)logged;
    if (logged > REGISTRY__LOG_LINES) {
        nt_log(NT_LOG_WARN, "registry",
               "... and %d more pens refused by the device registry: their messages are "
               "quarantined",
               logged - REGISTRY__LOG_LINES);
    }
    return learned;
}

int nt_registry_forget(nt_registry_t *r, const char *detail)
{
    int n = 0;
    for (const char *p = detail != NULL && r->slots != NULL ? detail : ""; *p != '\0';) {
        const char *nl = strchr(p, '\n');
        size_t len = nl != NULL ? (size_t)(nl - p) : strlen(p);
        char serial[NT_MAX_ID_LEN + 1];
        if (len > 0 && len <= NT_MAX_ID_LEN) {
            memcpy(serial, p, len);
            serial[len] = '\0';
            nt_registry_entry_t *e = registry__find(r, serial);
            if (e != NULL) {
                nt_log(NT_LOG_INFO, "registry",
                       "the device registry changed for pen %s: its messages are no longer "
                       "quarantined as %s",
                       serial, nt_reason_name(e->reason));
                memset(e, 0, sizeof(*e));
                n++;
            }
        }
        p += len + (nl != NULL);
    }
    return n;
}

nt_reason_t nt_registry_check(const nt_registry_t *r, const char *clinic, const char *serial,
                              int64_t now_us, char *detail, size_t detail_len)
{
    if (r->slots == NULL) {
        return NT_REASON_OK;
    }
    const nt_registry_entry_t *e = registry__find(r, serial);
    if (e == NULL || e->until_us <= now_us) {
        return NT_REASON_OK;
    }
    switch (e->reason) {
    case NT_REASON_CLINIC_MISMATCH:
        if (strcmp(e->registered, clinic) == 0) {
            return NT_REASON_OK; /* the pen, in its own clinic */
        }
        snprintf(detail, detail_len, "pen %s is registered to clinic %s, not %s", serial,
                 e->registered, clinic);
        return NT_REASON_CLINIC_MISMATCH;
    case NT_REASON_DEVICE_RETIRED:
        snprintf(detail, detail_len, "pen %s is retired in the device registry", serial);
        return NT_REASON_DEVICE_RETIRED;
    case NT_REASON_UNKNOWN_DEVICE:
        snprintf(detail, detail_len,
                 "pen %s is not in the device registry (unknown_devices = quarantine)", serial);
        return NT_REASON_UNKNOWN_DEVICE;
    default:
        return NT_REASON_OK;
    }
}
