/* isolate.c -- bisects a refused batch down to the message the database refuses (isolate.h). */
#include "needletrace/isolate.h"

#include <stdio.h>
#include <string.h>

#include "needletrace/pqutil.h"

void nt_isolate_init(nt_isolate_t *x)
{
    memset(x, 0, sizeof(*x));
    x->poison_pos = NT_ISOLATE_NONE;
}

/* Not the rows' fault, or not one message's: back off and say why. */
static nt_isolate_action_t isolate__stall(nt_isolate_t *x, const char *why, const char *sqlstate,
                                          const char *message)
{
    x->stalled = 1;
    snprintf(x->stall, sizeof(x->stall), "%s (SQLSTATE %s: %s)", why, sqlstate, message);
    return NT_ISOLATE_BACKOFF;
}

/* Counts the refusals of batches that start at first, in a row. */
static void isolate__count(nt_isolate_t *x, uint64_t first)
{
    if (x->fail_count > 0 && x->fail_pos == first) {
        x->fail_count++;
    } else {
        x->fail_pos = first;
        x->fail_count = 1;
    }
}

nt_isolate_action_t nt_isolate_failed(nt_isolate_t *x, uint64_t first, uint64_t end, uint32_t n,
                                      const char *sqlstate, const char *message)
{
    isolate__count(x, first);
    switch (nt_pqutil_classify(sqlstate)) {
    case NT_PQ_TRANSIENT:
        if (x->fail_count >= NT_ISOLATE_MAX_REPEAT) {
            return isolate__stall(x, "the same batch keeps conflicting with other transactions",
                                  sqlstate, message);
        }
        return NT_ISOLATE_BACKOFF;
    case NT_PQ_OPERATIONAL:
        return isolate__stall(x, "the database refuses batches for a reason no message causes",
                              sqlstate, message);
    case NT_PQ_DATA:
        break;
    }
    if (n <= 1 && x->poison_pos == first) {
        return isolate__stall(x, "the database refuses even the quarantine row of a message",
                              sqlstate, message);
    }
    if (x->until < end) {
        x->until = end;
    }
    if (n <= 1) {
        if (x->streak >= NT_ISOLATE_MAX_STREAK) {
            return isolate__stall(x, "the database refuses every message", sqlstate, message);
        }
        x->poison_pos = first;
        x->device[0] = '\0';
        x->limit = 1;
        snprintf(x->detail, sizeof(x->detail), "SQLSTATE %s: %s", sqlstate, message);
        return NT_ISOLATE_RETRY;
    }
    x->limit = n / 2;
    return NT_ISOLATE_RETRY;
}

uint32_t nt_isolate_limit(const nt_isolate_t *x, uint64_t pos)
{
    return x->limit != 0 && pos < x->until ? x->limit : 0;
}

int nt_isolate_is_poison(const nt_isolate_t *x, uint64_t pos)
{
    return x->poison_pos != NT_ISOLATE_NONE && pos == x->poison_pos;
}

void nt_isolate_set_device(nt_isolate_t *x, const char *device_serial)
{
    snprintf(x->device, sizeof(x->device), "%s", device_serial != NULL ? device_serial : "");
}

int nt_isolate_committed(nt_isolate_t *x, uint64_t first, uint64_t end)
{
    int quarantined =
        x->poison_pos != NT_ISOLATE_NONE && x->poison_pos >= first && x->poison_pos < end;
    if (quarantined) {
        /* One pen's run of refused messages counts once: its data, not the database. */
        if (x->streak == 0 || x->device[0] == '\0' || strcmp(x->device, x->last_device) != 0) {
            x->streak++;
        }
        memcpy(x->last_device, x->device, sizeof(x->last_device));
    } else {
        x->streak = 0;
        x->last_device[0] = '\0';
    }
    if (x->poison_pos != NT_ISOLATE_NONE && end > x->poison_pos) {
        x->poison_pos = NT_ISOLATE_NONE; /* committed, or passed by a later checkpoint */
    }
    x->fail_count = 0;
    x->stalled = 0;
    x->stall[0] = '\0';
    /* Once the poison is out (or the refused range is behind), batches are whole again; another
     * poison in what follows is isolated the same way. */
    if (quarantined || end >= x->until) {
        x->limit = 0;
        x->until = 0;
    }
    return quarantined;
}
