/* registry.h -- the pens the device registry refused, remembered by the collector.
 *
 * The registry itself is a table every replica shares (needletrace.devices): each batch
 * transaction admits its pens there (admit_devices, in evaluate_rules), and when one is registered
 * to another clinic, retired, or unknown under unknown_devices = quarantine, the transaction is
 * refused with SQLSTATE NT002 and one line per refused pen in its DETAIL:
 *
 *     "<serial> <clinic the message came under> <reason> <registered clinic or ->"
 *
 * The sink hands that DETAIL to nt_registry_refused() and commits the batch again: while a pen's
 * verdict is remembered (NT_REGISTRY_TTL_US), nt_registry_check() quarantines its messages with
 * the reason (clinic_mismatch, device_retired, unknown_device) as they are added to a batch. A
 * verdict expires after that time; a pen still refused costs one more refused transaction then.
 * The table is bounded (NT_REGISTRY_SLOTS; a serial sits in one of 8 slots from its hash): a
 * verdict pushed out by another pen's is learned again the same way. Nothing here is evidence: the
 * database decides, this only saves refused transactions: a batch carries the verdicts it was
 * built with (nt_batch_t.refusals), its transaction confirms them first (confirm_refusals), and
 * when one no longer holds the transaction is refused with NT003, the verdict forgotten
 * (nt_registry_forget) and the batch built again -- so a pen moved, registered or put back in
 * service is never quarantined for a verdict the registry no longer gives. Single-threaded (the
 * loop's). */
#ifndef NEEDLETRACE_REGISTRY_H
#define NEEDLETRACE_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "needletrace/common.h"
#include "needletrace/reason.h"

#define NT_REGISTRY_SLOTS    16384u /* 2.4 MiB once the first pen is refused */
#define NT_REGISTRY_TTL_US   (30 * INT64_C(1000000))
#define NT_REGISTRY_SQLSTATE "NT002"
/* The verdicts a batch was built with no longer hold (a pen registered, moved, put back in
 * service, or the setting changed): DETAIL holds their serials, one per line. */
#define NT_REGISTRY_CHANGED_SQLSTATE "NT003"

typedef struct {
    char serial[NT_MAX_ID_LEN + 1];     /* "" when the slot is free */
    char registered[NT_MAX_ID_LEN + 1]; /* the pen's clinic, "" when it has none (unknown) */
    nt_reason_t reason; /* for a message under another clinic than registered (or any) */
    int64_t until_us;   /* monotonic time the verdict expires */
} nt_registry_entry_t;

typedef struct {
    nt_registry_entry_t *slots; /* NT_REGISTRY_SLOTS, allocated on first use */
    uint64_t refused_total;     /* new verdicts learned */
    uint32_t seed;              /* of the slot hash, random per process */
} nt_registry_t;

void nt_registry_init(nt_registry_t *r);
void nt_registry_free(nt_registry_t *r);

/* Learns the verdicts of an NT002 DETAIL (see above) at monotonic time now_us, logging each pen
 * whose verdict is new or changed (warn). Returns the number of lines understood (0: nothing
 * could be learned -- the caller must not retry at once), or NT_ENOMEM. Malformed lines are
 * skipped. */
int nt_registry_refused(nt_registry_t *r, const char *detail, int64_t now_us);

/* Forgets the verdicts of the serials in an NT003 DETAIL (one per line). Returns how many were
 * remembered. */
int nt_registry_forget(nt_registry_t *r, const char *detail);

/* The verdict for a message of pen serial under clinic at now_us: NT_REASON_OK when nothing
 * refused is remembered for it (or it is under its registered clinic, for clinic_mismatch), else
 * the reason, with a sentence for the quarantine row's detail in detail. */
nt_reason_t nt_registry_check(const nt_registry_t *r, const char *clinic, const char *serial,
                              int64_t now_us, char *detail, size_t detail_len);

#endif
