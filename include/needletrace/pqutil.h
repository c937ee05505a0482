/* pqutil.h -- small helpers shared by every libpq user: server messages made fit for one log
 * line, and a notice processor that sends server notices to the log.
 *
 * Plain functions over strings: they need no connection and do not include libpq-fe.h. */
#ifndef NEEDLETRACE_PQUTIL_H
#define NEEDLETRACE_PQUTIL_H

#include <stddef.h>

/* Copies the first line of a libpq message (PQerrorMessage, PQresultErrorMessage or a
 * notice) into buf, without libpq's "ERROR:  " or "FATAL:  " prefix and without trailing
 * spaces, tabs or carriage returns; a line longer than len - 1 bytes is cut. libpq_message
 * may be NULL (treated as ""). Returns buf, always NUL-terminated when len > 0. Never fails.
 * See also nt_pqutil_notice(). */
const char *nt_pqutil_message(const char *libpq_message, char *buf, size_t len);

/* A libpq notice processor (PQsetNoticeProcessor(conn, nt_pqutil_notice, "module")): logs
 * the first line of each server notice or warning at warn level as "server: <message>",
 * under the module named by arg (a string that outlives the connection; NULL = "db"),
 * instead of libpq's default printing to stderr. */
void nt_pqutil_notice(void *arg, const char *message);

/* What a failed statement's SQLSTATE says about the data that caused it. */
typedef enum {
    NT_PQ_DATA = 0,    /* the rows: a value, a constraint, a rule's exception -- retrying the same
                        * rows fails again, another batch without them may succeed */
    NT_PQ_TRANSIENT,   /* a conflict with another transaction (serialization failure, deadlock,
                        * lock timeout, cancelled statement): the same rows may succeed later */
    NT_PQ_OPERATIONAL, /* the database or its configuration (resources, privileges, missing
                        * objects, shutdown, internal error): no row is to blame */
} nt_pq_class_t;

/* Classifies a five-character SQLSTATE (NULL or malformed: NT_PQ_OPERATIONAL). Data: classes 21,
 * 22, 23, 27, 2F, 38, 39, 44 and P0 (PL/pgSQL: RAISE, ASSERT). Transient: class 40, 55P03 and
 * 57014. Everything else is operational. Never fails. */
nt_pq_class_t nt_pqutil_classify(const char *sqlstate);

/* The libpq keyword/value pair that pins the client encoding of a connection to UTF8: appended
 * after the configured connection string, so that it wins. */
#define NT_PQUTIL_ENCODING_KEY   "client_encoding"
#define NT_PQUTIL_ENCODING_VALUE "UTF8"

#endif
