/* batch.h -- turns journal records into the rows of one database transaction.
 *
 * Plain data, no I/O: each record is decoded and validated (decoder.h); an accepted
 * message becomes one raw_messages row (payload + SHA-256) and one events row per event,
 * a rejected one becomes one quarantine row (raw bytes, topic, reason, detail). The
 * rows accumulate as binary COPY streams, one per target table, which the database sink
 * sends as they are. */
#ifndef NEEDLETRACE_BATCH_H
#define NEEDLETRACE_BATCH_H

#include "needletrace/arena.h"
#include "needletrace/copybuf.h"
#include "needletrace/decoder.h"
#include "needletrace/journal.h"
#include "needletrace/registry.h"

enum { NT_BATCH_RAW = 0, NT_BATCH_EVENTS, NT_BATCH_QUARANTINE, NT_BATCH__TABLES };

typedef struct {
    const char *table;   /* unqualified table name in schema needletrace, e.g. "events" */
    const char *columns; /* column list in COPY order, e.g. "clinic_id, device_serial, ..." */
    nt_copybuf_t buf;    /* buf.rows == 0: nothing to send for this table */
} nt_batch_table_t;

typedef struct {
    nt_batch_table_t tables[NT_BATCH__TABLES];
    nt_arena_t arena;
    char collector_id[NT_MAX_ID_LEN + 1];
    uint64_t first_pos; /* journal position of the first record added */
    uint64_t end_pos;   /* journal position just past the last record added */
    uint32_t messages;  /* records added */
    uint32_t accepted;  /* of which accepted */
    uint32_t events;    /* events rows */
    uint32_t rejected;  /* quarantine rows */
    uint32_t rejected_by_reason[NT_REASON__COUNT];
    size_t bytes;                  /* payload + topic bytes added */
    int64_t oldest_received_us;    /* receive time of the first record (0 when empty) */
    const nt_registry_t *registry; /* pens refused by the device registry; NULL: none */
    /* The verdicts of the registry the batch quarantined messages for, one "serial clinic
     * reason" line each (distinct), for its transaction to confirm (registry.h). */
    char *refusals;
    size_t refusals_len, refusals_cap;
    uint32_t nrefusals;
} nt_batch_t;

/* Distinct (pen, clinic) verdicts of the registry one batch quarantines for; beyond, its messages
 * go as events and the database refuses them again (registry.h). */
#define NT_BATCH_MAX_REFUSALS 256u

/* Initialises an empty batch for this collector. 0 or NT_ENOMEM. */
int nt_batch_init(nt_batch_t *b, const char *collector_id);
/* Empties the batch (keeps its memory) for the next transaction. */
void nt_batch_reset(nt_batch_t *b);
void nt_batch_close(nt_batch_t *b);

/* Decodes rec and appends its rows. The record is copied; rec may be reused after.
 * Returns 0 (accepted or quarantined: both are rows), NT_ENOMEM, or NT_ECORRUPT when a row
 * writer produced a row of the wrong width (a bug; the record is not added). */
int nt_batch_add(nt_batch_t *b, const nt_journal_record_t *rec);

/* Appends rec as a quarantine row with the given reason (not NT_REASON_OK) and detail,
 * without decoding it: a message the database refused (NT_REASON_DB_REJECTED). Returns 0,
 * NT_EINVAL, NT_ENOMEM or NT_ECORRUPT as nt_batch_add. */
int nt_batch_add_quarantined(nt_batch_t *b, const nt_journal_record_t *rec, nt_reason_t reason,
                             const char *detail);

/* Terminates the COPY streams. Call once, after the last add. 0, NT_ENOMEM, or NT_ECORRUPT
 * when a row of the wrong width was written (see nt_copybuf_finish). */
int nt_batch_finish(nt_batch_t *b);

#endif
