/* pqutil.c -- libpq messages trimmed to one line, and server notices sent to the log. */
#include "needletrace/pqutil.h"

#include <stdio.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/log.h"

/* See pqutil.h. */
const char *nt_pqutil_message(const char *libpq_message, char *buf, size_t len)
{
    static const char *const prefixes[] = {"ERROR:  ", "FATAL:  "};
    const char *msg = libpq_message != NULL ? libpq_message : "";
    if (len == 0) {
        return buf;
    }
    for (size_t i = 0; i < NT_ARRAY_SIZE(prefixes); i++) {
        if (strncmp(msg, prefixes[i], strlen(prefixes[i])) == 0) {
            msg += strlen(prefixes[i]);
        }
    }
    size_t n = strcspn(msg, "\r\n");
    if (n > len - 1) {
        n = len - 1;
    }
    while (n > 0 && (msg[n - 1] == '\r' || msg[n - 1] == ' ' || msg[n - 1] == '\t')) {
        n--;
    }
    memcpy(buf, msg, n);
    buf[n] = '\0';
    return buf;
}

/* See pqutil.h. */
void nt_pqutil_notice(void *arg, const char *message)
{
    char buf[512];
    nt_log(NT_LOG_WARN, arg != NULL ? (const char *)arg : "db", "server: %s",
           nt_pqutil_message(message, buf, sizeof(buf)));
}

nt_pq_class_t nt_pqutil_classify(const char *sqlstate)
{
    static const char *const data_classes[] = {"21", "22", "23", "27", "2F",
                                               "38", "39", "44", "P0"};
    if (sqlstate == NULL || strlen(sqlstate) != 5) {
        return NT_PQ_OPERATIONAL;
    }
    if (strncmp(sqlstate, "40", 2) == 0 || strcmp(sqlstate, "55P03") == 0 ||
        strcmp(sqlstate, "57014") == 0) {
        return NT_PQ_TRANSIENT;
    }
    if (strcmp(sqlstate, "NT002") == 0 || strcmp(sqlstate, "NT003") == 0) {
        return NT_PQ_DATA; /* the device registry refuses a pen of the batch (registry.h) */
    }
    for (size_t i = 0; i < NT_ARRAY_SIZE(data_classes); i++) {
        if (strncmp(sqlstate, data_classes[i], 2) == 0) {
            return NT_PQ_DATA;
        }
    }
    return NT_PQ_OPERATIONAL;
}
