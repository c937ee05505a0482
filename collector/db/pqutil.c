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
