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

#endif
