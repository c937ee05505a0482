/* alert.h -- a compliance alert on its way out, and a list of them.
 *
 * The database raises alerts (rules.sql) in the transaction that carries the triggering event;
 * after the commit the outbox (outbox.h) hands them to the publisher (publisher.h), which
 * sends each to clinics/{clinic_id}/alerts/{rule} and reports the broker's PUBACK back, so
 * that the next transaction records the delivery. */
#ifndef NEEDLETRACE_ALERT_H
#define NEEDLETRACE_ALERT_H

#include <stddef.h>
#include <stdint.h>

/* The rules of DESIGN section 3, by the names stored in alerts.rule. */
#define NT_RULE_MAP(XX)                                                                            \
    XX(CARTRIDGE_REUSED)                                                                           \
    XX(CARTRIDGE_EXPIRED)                                                                          \
    XX(STERILE_BARRIER_BROKEN)                                                                     \
    XX(CARTRIDGE_RECALLED)                                                                         \
    XX(DEPTH_OUT_OF_RANGE)                                                                         \
    XX(NEEDLING_WITHOUT_CARTRIDGE)                                                                 \
    XX(SEQUENCE_GAP)                                                                               \
    XX(CLOCK_SKEW)

enum {
#define NT__RULE_ENUM(name) NT_RULE_##name,
    NT_RULE_MAP(NT__RULE_ENUM)
#undef NT__RULE_ENUM
        NT_RULE__COUNT
};

/* The rule names, indexed by NT_RULE_* ("CARTRIDGE_REUSED", ...). */
extern const char *const nt_alert_rules[NT_RULE__COUNT];

/* One alert raised (or found undelivered) by a committed transaction. */
typedef struct {
    int64_t alert_id;
    const char *clinic_id;
    const char *rule;
    const char *payload; /* JSON, as specified in DESIGN section 7 */
} nt_alert_t;

/* A growable list of alerts that owns its strings. */
typedef struct {
    nt_alert_t *items;
    size_t n, cap;
} nt_alert_list_t;

/* An empty list; allocates nothing. */
void nt_alert_list_init(nt_alert_list_t *l);
/* Appends copies of the strings. 0 or NT_ENOMEM (the list is unchanged then). */
int nt_alert_list_push(nt_alert_list_t *l, int64_t alert_id, const char *clinic_id,
                       const char *rule, const char *payload);
/* Drops every alert (keeps the array for reuse). */
void nt_alert_list_clear(nt_alert_list_t *l);
/* Drops everything; the list is empty (as after init) afterwards. */
void nt_alert_list_close(nt_alert_list_t *l);

#endif
