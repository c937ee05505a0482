/* batch.c -- turns journal records into binary COPY rows for raw_messages, events and quarantine.
 */
#include "needletrace/batch.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/ident.h"

/* Column lists in COPY order. Each must match, one for one, the fields that the row
 * writers below emit (RAW_NCOLS, EVENT_NCOLS, QUARANTINE_NCOLS). */
#define RAW_NCOLS 14
static const char raw_columns[] =
    "clinic_id, device_serial, payload_sha256, received_at, topic, payload, boot_id, "
    "event_count, first_seq, last_seq, device_model, firmware_version, collector_id, "
    "journal_pos";

/* The events columns in COPY order: one list makes both the enum of column positions that
 * the per-kind writers below name and the column list sent with COPY. */
#define EVENT_COLUMN_MAP(XX)                                                                       \
    XX(CLINIC_ID, clinic_id)                                                                       \
    XX(DEVICE_SERIAL, device_serial)                                                               \
    XX(BOOT_ID, boot_id)                                                                           \
    XX(SEQ, seq)                                                                                   \
    XX(KIND, kind)                                                                                 \
    XX(DEVICE_TIME, device_time)                                                                   \
    XX(RECEIVED_AT, received_at)                                                                   \
    XX(SESSION_ID, session_id)                                                                     \
    XX(PAYLOAD_SHA256, payload_sha256)                                                             \
    XX(COLLECTOR_ID, collector_id)                                                                 \
    XX(OPERATOR_ID, operator_id)                                                                   \
    XX(PATIENT_REF, patient_ref)                                                                   \
    XX(MOTOR_SECONDS, motor_seconds)                                                               \
    XX(GTIN, gtin)                                                                                 \
    XX(LOT, lot)                                                                                   \
    XX(CARTRIDGE_SERIAL, cartridge_serial)                                                         \
    XX(EXPIRY, expiry)                                                                             \
    XX(NEEDLE_COUNT, needle_count)                                                                 \
    XX(STERILE_BARRIER_INTACT, sterile_barrier_intact)                                             \
    XX(MOTOR_MS, motor_ms)                                                                         \
    XX(DEPTH_UM, depth_um)                                                                         \
    XX(STROKE_RATE_HZ, stroke_rate_hz)                                                             \
    XX(AREA, area)                                                                                 \
    XX(DURATION_MS, duration_ms)                                                                   \
    XX(BATTERY_PCT, battery_pct)                                                                   \
    XX(TEMPERATURE_DC, temperature_dc)                                                             \
    XX(MOTOR_SECONDS_TOTAL, motor_seconds_total)                                                   \
    XX(FAULT_CODE, fault_code)                                                                     \
    XX(FAULT_MESSAGE, fault_message)                                                               \
    XX(DEVICE_MODEL, device_model)

enum {
#define BATCH__EVENT_COL_ENUM(name, column) EV_##name,
    EVENT_COLUMN_MAP(BATCH__EVENT_COL_ENUM)
#undef BATCH__EVENT_COL_ENUM
        EVENT_NCOLS
};

/* ", clinic_id, device_serial, ...": the list starts at event_columns_list + 2. */
static const char event_columns_list[] =
#define BATCH__EVENT_COL_NAME(name, column) ", " #column
    EVENT_COLUMN_MAP(BATCH__EVENT_COL_NAME)
#undef BATCH__EVENT_COL_NAME
    ;
#define event_columns (event_columns_list + 2)

#define QUARANTINE_NCOLS 11
static const char quarantine_columns[] =
    "clinic_id, message_key, received_at, topic, payload, payload_sha256, reason, detail, "
    "device_serial, collector_id, journal_pos";

#define DETAIL_LEN 512

typedef struct {
    const char *s;
    size_t len;
} name_t;

#define NAME(lit)                                                                                  \
    {                                                                                              \
        lit, sizeof(lit) - 1                                                                       \
    }

/* TreatmentArea values as stored in events.area: the enum name, lower case, no prefix. */
static const name_t area_names[] = {
    NAME("unspecified"), NAME("forehead"), NAME("periorbital"), NAME("nose"),
    NAME("cheeks"),      NAME("perioral"), NAME("chin"),        NAME("neck"),
    NAME("decolletage"), NAME("scalp"),    NAME("body"),
};

/* Per-message values shared by every row of that message. */
typedef struct {
    const char *clinic_id;
    size_t clinic_len;
    const char *serial;
    size_t serial_len;
    const char *collector_id;
    size_t collector_len;
    uint8_t sha[SHA256_DIGEST_LENGTH];
    int64_t boot_id;
    int64_t received_us;
    const char *device_model;
} msg_ctx_t;

/* Writes n SQL NULL fields at once. */
static void batch__nulls(nt_copybuf_t *c, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        nt_copybuf_null(c);
    }
}

/* A protobuf string as text; protobuf-c never leaves strings NULL, but be safe. */
static void batch__str(nt_copybuf_t *c, const char *s)
{
    if (s == NULL) {
        nt_copybuf_bytes(c, "", 0);
        return;
    }
    nt_copybuf_bytes(c, s, strlen(s));
}

/* An optional id (proto3: empty = not set) as text or NULL. */
static void batch__opt_str(nt_copybuf_t *c, const char *s)
{
    if (s == NULL || s[0] == '\0') {
        nt_copybuf_null(c);
        return;
    }
    nt_copybuf_bytes(c, s, strlen(s));
}

static void batch__area(nt_copybuf_t *c, Needletrace__V1__TreatmentArea area)
{
    if ((unsigned)area >= NT_ARRAY_SIZE(area_names)) {
        nt_copybuf_null(c);
        return;
    }
    nt_copybuf_bytes(c, area_names[area].s, area_names[area].len);
}

/* ---- events rows: the common columns, then one writer per kind --------------------------------
 */

/* An events row being written: the writer names the column it fills next (batch__at pads
 * the columns before it with NULL) and batch__end pads the rest, so no NULL is counted by
 * hand; copybuf checks that the row ends up with exactly EVENT_NCOLS fields. */
typedef struct {
    nt_copybuf_t *c;
    unsigned col; /* next column to write */
} batch__row_t;

static void batch__at(batch__row_t *r, unsigned col)
{
    if (col > r->col) {
        batch__nulls(r->c, col - r->col);
        r->col = col;
    }
}

static void batch__end(batch__row_t *r)
{
    batch__at(r, EVENT_NCOLS);
}

/* The six cartridge columns: gtin, lot, cartridge_serial, expiry, needle_count,
 * sterile_barrier_intact. An absent cartridge (or an unset expiry) is NULL. */
static void batch__cartridge(batch__row_t *r, const Needletrace__V1__Cartridge *ca)
{
    if (ca == NULL) {
        return; /* batch__at / batch__end pad them */
    }
    batch__at(r, EV_GTIN);
    batch__str(r->c, ca->gtin);
    batch__str(r->c, ca->lot);
    batch__str(r->c, ca->serial);
    if (ca->expiry_yyyymmdd == 0) {
        nt_copybuf_null(r->c);
    } else {
        nt_copybuf_date_yyyymmdd(r->c, ca->expiry_yyyymmdd);
    }
    nt_copybuf_int4(r->c, (int32_t)ca->needle_count);
    nt_copybuf_bool(r->c, ca->sterile_barrier_intact);
    r->col = EV_STERILE_BARRIER_INTACT + 1;
}

static void batch__needle(batch__row_t *r, uint32_t depth_um, uint32_t stroke_rate_hz,
                          Needletrace__V1__TreatmentArea area)
{
    batch__at(r, EV_DEPTH_UM);
    nt_copybuf_int4(r->c, (int32_t)depth_um);
    nt_copybuf_int4(r->c, (int32_t)stroke_rate_hz);
    batch__area(r->c, area);
    r->col = EV_AREA + 1;
}

/* The typed body columns (operator_id ... fault_message) of ev's kind. */
static void batch__event_body(batch__row_t *r, const Needletrace__V1__Event *ev)
{
    switch (ev->body_case) {
    case NEEDLETRACE__V1__EVENT__BODY_SESSION_STARTED:
        batch__at(r, EV_OPERATOR_ID);
        batch__str(r->c, ev->session_started->operator_id);
        batch__str(r->c, ev->session_started->patient_ref);
        r->col = EV_PATIENT_REF + 1;
        break;
    case NEEDLETRACE__V1__EVENT__BODY_SESSION_ENDED:
        batch__at(r, EV_MOTOR_SECONDS);
        nt_copybuf_int8(r->c, ev->session_ended->motor_seconds);
        r->col = EV_MOTOR_SECONDS + 1;
        break;
    case NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_MOUNTED:
        batch__cartridge(r, ev->cartridge_mounted->cartridge);
        break;
    case NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_UNMOUNTED:
        batch__cartridge(r, ev->cartridge_unmounted->cartridge);
        batch__at(r, EV_MOTOR_MS);
        nt_copybuf_int8(r->c, ev->cartridge_unmounted->motor_ms);
        r->col = EV_MOTOR_MS + 1;
        break;
    case NEEDLETRACE__V1__EVENT__BODY_NEEDLE_SETTING:
        batch__needle(r, ev->needle_setting->depth_um, ev->needle_setting->stroke_rate_hz,
                      ev->needle_setting->area);
        break;
    case NEEDLETRACE__V1__EVENT__BODY_NEEDLE_ACTIVITY:
        batch__needle(r, ev->needle_activity->depth_um, ev->needle_activity->stroke_rate_hz,
                      ev->needle_activity->area);
        nt_copybuf_int8(r->c, ev->needle_activity->duration_ms);
        r->col = EV_DURATION_MS + 1;
        break;
    case NEEDLETRACE__V1__EVENT__BODY_DEVICE_STATUS:
        batch__at(r, EV_BATTERY_PCT);
        nt_copybuf_int2(r->c, (int16_t)ev->device_status->battery_pct);
        nt_copybuf_int4(r->c, ev->device_status->temperature_dc);
        nt_copybuf_int8(r->c, (int64_t)ev->device_status->motor_seconds_total);
        r->col = EV_MOTOR_SECONDS_TOTAL + 1;
        break;
    case NEEDLETRACE__V1__EVENT__BODY_DEVICE_FAULT:
        batch__at(r, EV_FAULT_CODE);
        nt_copybuf_int8(r->c, ev->device_fault->code);
        batch__str(r->c, ev->device_fault->message);
        r->col = EV_FAULT_MESSAGE + 1;
        break;
    default:
        break;
    }
}

/* The session id of an event whose kind has one, else NULL. */
static const char *batch__session_id(const Needletrace__V1__Event *ev)
{
    switch (ev->body_case) {
    case NEEDLETRACE__V1__EVENT__BODY_SESSION_STARTED:
        return ev->session_started->session_id;
    case NEEDLETRACE__V1__EVENT__BODY_SESSION_ENDED:
        return ev->session_ended->session_id;
    case NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_MOUNTED:
        return ev->cartridge_mounted->session_id;
    case NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_UNMOUNTED:
        return ev->cartridge_unmounted->session_id;
    case NEEDLETRACE__V1__EVENT__BODY_NEEDLE_SETTING:
        return ev->needle_setting->session_id;
    case NEEDLETRACE__V1__EVENT__BODY_NEEDLE_ACTIVITY:
        return ev->needle_activity->session_id;
    default:
        return NULL;
    }
}

/* Writes one events row: the ten common columns, then the body columns of its kind. */
static void batch__event(nt_copybuf_t *c, const msg_ctx_t *m, const Needletrace__V1__Event *ev)
{
    const char *kind = nt_decoder_event_kind(ev);
    batch__row_t r = {c, 0};
    nt_copybuf_row(c, EVENT_NCOLS);
    nt_copybuf_bytes(c, m->clinic_id, m->clinic_len);
    nt_copybuf_bytes(c, m->serial, m->serial_len);
    nt_copybuf_int8(c, m->boot_id);
    nt_copybuf_int8(c, (int64_t)ev->seq);
    nt_copybuf_bytes(c, kind, strlen(kind));
    nt_copybuf_timestamptz(c, (int64_t)((uint64_t)ev->device_time_ms * 1000u));
    nt_copybuf_timestamptz(c, m->received_us);
    batch__opt_str(c, batch__session_id(ev));
    nt_copybuf_bytes(c, m->sha, sizeof(m->sha));
    nt_copybuf_bytes(c, m->collector_id, m->collector_len);
    r.col = EV_COLLECTOR_ID + 1;
    batch__event_body(&r, ev);
    if (ev->body_case == NEEDLETRACE__V1__EVENT__BODY_NEEDLE_SETTING ||
        ev->body_case == NEEDLETRACE__V1__EVENT__BODY_NEEDLE_ACTIVITY) {
        /* what DEPTH_OUT_OF_RANGE needs of the message, on the row it judges */
        batch__at(&r, EV_DEVICE_MODEL);
        batch__str(c, m->device_model); /* "" when the pen sent none, as in raw_messages */
        r.col = EV_DEVICE_MODEL + 1;
    }
    batch__end(&r);
}

/* Rows of an accepted message: one raw_messages row, one events row per event.
 * Returns the number of event rows written. */
static uint32_t batch__add_accepted(nt_batch_t *b, const nt_journal_record_t *rec,
                                    const nt_message_t *msg)
{
    const Needletrace__V1__Telemetry *t = msg->msg;
    msg_ctx_t m;
    m.clinic_id = msg->topic.clinic_id;
    m.clinic_len = strlen(msg->topic.clinic_id);
    m.serial = msg->topic.device_serial;
    m.serial_len = strlen(msg->topic.device_serial);
    m.collector_id = b->collector_id;
    m.collector_len = strlen(b->collector_id);
    m.boot_id = (int64_t)t->boot_id;
    m.received_us = rec->received_us;
    m.device_model = t->device_model;
    SHA256(rec->payload, rec->payload_len, m.sha);

    nt_copybuf_t *raw = &b->tables[NT_BATCH_RAW].buf;
    nt_copybuf_row(raw, RAW_NCOLS);
    nt_copybuf_bytes(raw, m.clinic_id, m.clinic_len);
    nt_copybuf_bytes(raw, m.serial, m.serial_len);
    nt_copybuf_bytes(raw, m.sha, sizeof(m.sha));
    nt_copybuf_timestamptz(raw, rec->received_us);
    nt_copybuf_bytes(raw, rec->topic, rec->topic_len);
    nt_copybuf_bytes(raw, rec->payload, rec->payload_len);
    nt_copybuf_int8(raw, m.boot_id);
    nt_copybuf_int4(raw, (int32_t)t->n_events);
    if (t->n_events > 0) {
        nt_copybuf_int8(raw, (int64_t)t->events[0]->seq);
        nt_copybuf_int8(raw, (int64_t)t->events[t->n_events - 1]->seq);
    } else {
        batch__nulls(raw, 2);
    }
    batch__str(raw, t->device_model);
    batch__str(raw, t->firmware_version);
    nt_copybuf_bytes(raw, m.collector_id, m.collector_len);
    nt_copybuf_int8(raw, (int64_t)rec->pos);

    nt_copybuf_t *evbuf = &b->tables[NT_BATCH_EVENTS].buf;
    for (size_t i = 0; i < t->n_events; i++) {
        batch__event(evbuf, &m, t->events[i]);
    }
    return (uint32_t)t->n_events;
}

/* Writes s[0..len) as a text field. When it is not valid UTF-8 or holds a NUL, writes an
 * escaped form instead: valid sequences as they are, every other byte, every NUL and
 * every backslash as \xNN. Returns 0 or NT_ENOMEM (arena exhausted). */
static int batch__safe_text(nt_batch_t *b, nt_copybuf_t *c, const char *s, size_t len)
{
    if (memchr(s, '\0', len) == NULL && nt_ident_utf8_valid(s, len)) {
        nt_copybuf_bytes(c, s, len);
        return 0;
    }
    static const char hex[] = "0123456789abcdef";
    char *out = nt_arena_alloc(&b->arena, len * 4 + 1);
    if (out == NULL) {
        return NT_ENOMEM;
    }
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        uint8_t ch = (uint8_t)s[i];
        uint32_t cp;
        size_t n = nt_ident_utf8_decode(s + i, len - i, &cp);
        if (ch != '\0' && ch != '\\' && n > 0) {
            memcpy(out + o, s + i, n);
            o += n;
            i += n;
            continue;
        }
        out[o++] = '\\';
        out[o++] = 'x';
        out[o++] = hex[ch >> 4];
        out[o++] = hex[ch & 0xf];
        i++;
    }
    nt_copybuf_bytes(c, out, o);
    return 0;
}

/* SHA-256 over topic || 0x00 || payload: the quarantine key of a message. */
static int batch__message_key(const nt_journal_record_t *rec, uint8_t out[SHA256_DIGEST_LENGTH])
{
    static const uint8_t zero = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        return NT_ENOMEM;
    }
    int ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
             EVP_DigestUpdate(ctx, rec->topic, rec->topic_len) && EVP_DigestUpdate(ctx, &zero, 1) &&
             EVP_DigestUpdate(ctx, rec->payload, rec->payload_len) &&
             EVP_DigestFinal_ex(ctx, out, NULL);
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : NT_ENOMEM;
}

/* The quarantine row of a rejected message. Returns 0 or NT_ENOMEM. */
static int batch__add_rejected(nt_batch_t *b, const nt_journal_record_t *rec, nt_reason_t reason,
                               const char *detail)
{
    nt_topic_t topic;
    int parsed = nt_decoder_topic_parse(rec->topic, rec->topic_len, &topic) == 0;
    uint8_t key[SHA256_DIGEST_LENGTH];
    uint8_t sha[SHA256_DIGEST_LENGTH];
    if (batch__message_key(rec, key) != 0) {
        return NT_ENOMEM;
    }
    SHA256(rec->payload, rec->payload_len, sha);

    nt_copybuf_t *q = &b->tables[NT_BATCH_QUARANTINE].buf;
    nt_copybuf_row(q, QUARANTINE_NCOLS);
    nt_copybuf_text(q, parsed ? topic.clinic_id : "");
    nt_copybuf_bytes(q, key, sizeof(key));
    nt_copybuf_timestamptz(q, rec->received_us);
    if (batch__safe_text(b, q, rec->topic, rec->topic_len) != 0) {
        return NT_ENOMEM;
    }
    nt_copybuf_bytes(q, rec->payload, rec->payload_len);
    nt_copybuf_bytes(q, sha, sizeof(sha));
    nt_copybuf_text(q, nt_reason_name(reason));
    if (batch__safe_text(b, q, detail, strlen(detail)) != 0) {
        return NT_ENOMEM;
    }
    nt_copybuf_text(q, parsed ? topic.device_serial : NULL);
    nt_copybuf_text(q, b->collector_id);
    nt_copybuf_int8(q, (int64_t)rec->pos);
    return 0;
}

/* Names the three tables and their COPY column lists and writes the stream headers.
 * collector_id longer than NT_MAX_ID_LEN is cut. 0 or NT_ENOMEM (nothing left allocated). */
int nt_batch_init(nt_batch_t *b, const char *collector_id)
{
    static const char *const names[NT_BATCH__TABLES] = {"raw_messages", "events", "quarantine"};
    static const char *const columns[NT_BATCH__TABLES] = {raw_columns, event_columns,
                                                          quarantine_columns};
    memset(b, 0, sizeof(*b));
    size_t n = strlen(collector_id);
    if (n > NT_MAX_ID_LEN) {
        n = NT_MAX_ID_LEN;
    }
    memcpy(b->collector_id, collector_id, n);
    b->collector_id[n] = '\0';
    nt_arena_init(&b->arena, 0, 0);
    int rc = 0;
    for (int i = 0; i < NT_BATCH__TABLES; i++) {
        b->tables[i].table = names[i];
        b->tables[i].columns = columns[i];
        nt_copybuf_init(&b->tables[i].buf);
        nt_copybuf_reset(&b->tables[i].buf);
        if (b->tables[i].buf.oom) {
            rc = NT_ENOMEM;
        }
    }
    if (rc != 0) {
        nt_batch_close(b);
    }
    return rc;
}

/* Rewinds the streams to their headers (keeping their memory) and zeroes the counters. */
void nt_batch_reset(nt_batch_t *b)
{
    for (int i = 0; i < NT_BATCH__TABLES; i++) {
        nt_copybuf_reset(&b->tables[i].buf);
    }
    nt_arena_reset(&b->arena);
    b->first_pos = 0;
    b->end_pos = 0;
    b->messages = 0;
    b->accepted = 0;
    b->events = 0;
    b->rejected = 0;
    memset(b->rejected_by_reason, 0, sizeof(b->rejected_by_reason));
    b->bytes = 0;
    b->oldest_received_us = 0;
    b->refusals_len = 0;
    b->nrefusals = 0;
    if (b->refusals != NULL) {
        b->refusals[0] = '\0';
    }
}

/* Frees the streams and the arena. */
void nt_batch_close(nt_batch_t *b)
{
    for (int i = 0; i < NT_BATCH__TABLES; i++) {
        nt_copybuf_close(&b->tables[i].buf);
    }
    nt_arena_close(&b->arena);
    free(b->refusals);
    b->refusals = NULL;
    b->refusals_len = b->refusals_cap = 0;
}

/* The state of the streams before a record, to cut them back to if its rows cannot be added. */
typedef struct {
    size_t len[NT_BATCH__TABLES];
    uint32_t rows[NT_BATCH__TABLES];
} batch__mark_t;

/* Marks where the next record's rows start. 0, or NT_ENOMEM when a stream is out of memory. */
static int batch__mark(nt_batch_t *b, batch__mark_t *m)
{
    for (int i = 0; i < NT_BATCH__TABLES; i++) {
        nt_copybuf_t *c = &b->tables[i].buf;
        if (c->oom && c->rows == 0) {
            nt_copybuf_reset(c); /* the header of the last reset did not fit: retry */
        }
        if (c->oom) {
            return NT_ENOMEM;
        }
        m->len[i] = c->len;
        m->rows[i] = c->rows;
    }
    return 0;
}

/* All or nothing: when a stream could not grow (or a row came out of the wrong width), every
 * stream is cut back to the mark, so the batch stays valid (and sendable) without the record;
 * otherwise the record is counted. Returns rc, or the streams' own failure. */
static int batch__settle(nt_batch_t *b, const batch__mark_t *m, const nt_journal_record_t *rec,
                         nt_reason_t reason, uint32_t events, int rc)
{
    for (int i = 0; i < NT_BATCH__TABLES; i++) {
        const nt_copybuf_t *c = &b->tables[i].buf;
        if (c->oom) {
            rc = NT_ENOMEM;
        } else if (rc == 0 && (c->miscounted || c->fields_due != 0)) {
            rc = NT_ECORRUPT; /* a row writer's bug: never send a shifted row */
        }
    }
    if (rc != 0) {
        for (int i = 0; i < NT_BATCH__TABLES; i++) {
            b->tables[i].buf.len = m->len[i];
            b->tables[i].buf.rows = m->rows[i];
            b->tables[i].buf.oom = 0;
            b->tables[i].buf.fields_due = 0;
            b->tables[i].buf.miscounted = 0;
        }
        return rc;
    }
    if (b->messages == 0) {
        b->first_pos = rec->pos;
        b->oldest_received_us = rec->received_us;
    }
    b->end_pos = rec->next_pos;
    b->messages++;
    b->bytes += rec->topic_len + rec->payload_len;
    if (reason == NT_REASON_OK) {
        b->accepted++;
        b->events += events;
    } else {
        b->rejected++;
        if ((unsigned)reason < NT_REASON__COUNT) {
            b->rejected_by_reason[reason]++;
        }
    }
    return 0;
}

/* Adds "serial clinic reason" to the batch's verdicts to confirm (once per line). 0, or -1 when
 * it is full or out of memory. */
static int batch__note_refusal(nt_batch_t *b, const nt_topic_t *t, const char *reason)
{
    char line[2 * NT_MAX_ID_LEN + 40];
    int n = snprintf(line, sizeof(line), "%s %s %s\n", t->device_serial, t->clinic_id, reason);
    if (n <= 0 || (size_t)n >= sizeof(line)) {
        return -1;
    }
    for (size_t at = 0; at < b->refusals_len;) {
        const char *nl = memchr(b->refusals + at, '\n', b->refusals_len - at);
        size_t len = (size_t)(nl - (b->refusals + at)) + 1;
        if (len == (size_t)n && memcmp(b->refusals + at, line, len) == 0) {
            return 0;
        }
        at += len;
    }
    if (b->nrefusals >= NT_BATCH_MAX_REFUSALS) {
        return -1;
    }
    if (b->refusals_len + (size_t)n + 1 > b->refusals_cap) {
        size_t cap = b->refusals_cap == 0 ? 1024 : b->refusals_cap * 2;
        char *p = realloc(b->refusals, cap);
        if (p == NULL) {
            return -1;
        }
        b->refusals = p;
        b->refusals_cap = cap;
    }
    memcpy(b->refusals + b->refusals_len, line, (size_t)n + 1);
    b->refusals_len += (size_t)n;
    b->nrefusals++;
    return 0;
}

/* The arena is reset first: the rows hold copies, so the decoded message is not needed after
 * the call. */
int nt_batch_add(nt_batch_t *b, const nt_journal_record_t *rec)
{
    batch__mark_t m;
    int rc = batch__mark(b, &m);
    if (rc != 0) {
        return rc;
    }
    nt_arena_reset(&b->arena);
    nt_message_t msg;
    char detail[DETAIL_LEN];
    detail[0] = '\0';
    nt_reason_t reason = nt_decoder_decode(&b->arena, rec->topic, rec->topic_len, rec->payload,
                                           rec->payload_len, &msg, detail, sizeof(detail));
    detail[sizeof(detail) - 1] = '\0';
    if (reason == NT_REASON_OK && b->registry != NULL && b->registry->slots != NULL) {
        /* a pen the device registry refused a moment ago (registry.h) */
        reason = nt_registry_check(b->registry, msg.topic.clinic_id, msg.topic.device_serial,
                                   nt_mono_us(), detail, sizeof(detail));
        if (reason != NT_REASON_OK &&
            batch__note_refusal(b, &msg.topic, nt_reason_name(reason)) != 0) {
            reason = NT_REASON_OK; /* not confirmable in this batch: sent as events */
        }
    }
    uint32_t events = 0;
    if (reason == NT_REASON_OK) {
        events = batch__add_accepted(b, rec, &msg);
    } else {
        rc = batch__add_rejected(b, rec, reason, detail);
    }
    return batch__settle(b, &m, rec, reason, events, rc);
}

int nt_batch_add_quarantined(nt_batch_t *b, const nt_journal_record_t *rec, nt_reason_t reason,
                             const char *detail)
{
    if (reason == NT_REASON_OK || detail == NULL) {
        return NT_EINVAL;
    }
    batch__mark_t m;
    int rc = batch__mark(b, &m);
    if (rc != 0) {
        return rc;
    }
    nt_arena_reset(&b->arena);
    rc = batch__add_rejected(b, rec, reason, detail);
    return batch__settle(b, &m, rec, reason, 0, rc);
}

/* Appends the trailer to all three streams. 0 or NT_ENOMEM. */
int nt_batch_finish(nt_batch_t *b)
{
    int rc = 0;
    for (int i = 0; i < NT_BATCH__TABLES; i++) {
        int trc = nt_copybuf_finish(&b->tables[i].buf);
        if (trc != 0 && rc == 0) {
            rc = trc;
        }
    }
    return rc;
}
