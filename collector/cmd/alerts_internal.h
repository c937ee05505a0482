/* alerts_internal.h -- what the two halves of `needletrace alerts` share: the parsed options
 * (alerts.c parses the command line) and the queries that use them (alerts_db.c). */
#ifndef NEEDLETRACE_ALERTS_INTERNAL_H
#define NEEDLETRACE_ALERTS_INTERNAL_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

/* Widest cells of the table (characters); longer values end in an ellipsis. --json is whole. */
#define NT_ALERTS__MAX_SESSION 36
#define NT_ALERTS__MAX_STATE   64
#define NT_ALERTS__MAX_DETAILS 72

/* `alerts list` options, checked. */
typedef struct {
    int open;
    int json;
    const char *clinic;   /* NULL = every clinic */
    const char *rule_arg; /* --rule as typed */
    const char *rule;     /* the canonical rule name, NULL = every rule */
    const char *since;    /* NULL = no lower bound (the server parses it) */
    const char *limit_arg;
    long limit;
} nt_alerts__list_opts_t;

/* `alerts ack` options, checked. */
typedef struct {
    int64_t alert_id;
    const char *alert_arg; /* as typed, for messages */
    const char *by;
    const char *note;
    const char *clinic; /* NULL = any clinic */
} nt_alerts__ack_opts_t;

/* Decodes the UTF-8 sequence at the NUL-terminated s into *cp; returns its length in bytes,
 * 0 when invalid (see nt_ident_utf8_decode). */
size_t nt_alerts__utf8_decode(const unsigned char *s, uint32_t *cp);

/* Returns 1 for Unicode category Cc (C0 controls, DEL, C1 controls), else 0. */
int nt_alerts__is_control(uint32_t cp);

/* `alerts list`: prints the table (or JSON lines) to stdout. Returns 0; NT_EINVAL when the
 * server rejects --since; NT_EDB or NT_ENOMEM; each after printing why to stderr. */
int nt_alerts__list(PGconn *conn, const nt_alerts__list_opts_t *o);

/* `alerts ack`: records one acknowledgement and prints it. Returns 0; NT_ENOENT when no such
 * alert; NT_EINVAL when the id is ambiguous without --clinic; NT_EDB; each after printing
 * why to stderr. */
int nt_alerts__ack(PGconn *conn, const nt_alerts__ack_opts_t *o);

#endif
