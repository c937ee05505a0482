/* log.c -- one structured logger: JSON lines or logfmt on stderr, one write(2) per line. */
#include "needletrace/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "needletrace/common.h"

nt_log_level_t nt_log__level = NT_LOG_INFO;
static nt_log_format_t log_format = NT_LOG_JSON;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void nt_log_setup(nt_log_level_t level, nt_log_format_t format)
{
    nt_log__level = level;
    log_format = format;
}

int nt_log_level_parse(const char *s, nt_log_level_t *out)
{
    if (strcasecmp(s, "warning") == 0) {
        *out = NT_LOG_WARN;
        return 0;
    }
    for (size_t i = 0; i < NT_ARRAY_SIZE(level_names); i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (nt_log_level_t)i;
            return 0;
        }
    }
    return NT_EINVAL;
}

int nt_log_format_parse(const char *s, nt_log_format_t *out)
{
    if (strcasecmp(s, "json") == 0) {
        *out = NT_LOG_JSON;
    } else if (strcasecmp(s, "text") == 0 || strcasecmp(s, "logfmt") == 0) {
        *out = NT_LOG_TEXT;
    } else {
        return NT_EINVAL;
    }
    return 0;
}

/* Appends s to buf[*len..cap) escaped for a JSON (or quoted logfmt) string. */
static void log__escape(char *buf, size_t *len, size_t cap, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    for (; *s != '\0' && *len + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[(*len)++] = '\\';
            buf[(*len)++] = (char)c;
        } else if (c == '\n') {
            buf[(*len)++] = '\\';
            buf[(*len)++] = 'n';
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(buf + *len, "\\u00", 4);
            buf[*len + 4] = hex[c >> 4];
            buf[*len + 5] = hex[c & 15];
            *len += 6;
        } else {
            buf[(*len)++] = (char)c;
        }
    }
}

void nt_log__write(nt_log_level_t level, const char *module, const char *fmt, ...)
{
    char msg[2048];
    char line[4608];
    size_t len = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char when[96];
    snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (long)(ts.tv_nsec / 1000000) % 1000);
    const char *lvl = level_names[level <= NT_LOG_ERROR ? level : NT_LOG_ERROR];

    if (log_format == NT_LOG_JSON) {
        len = (size_t)snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\",\"module\":\"",
                               when, lvl);
        log__escape(line, &len, sizeof(line) - 16, module);
        memcpy(line + len, "\",\"msg\":\"", 9);
        len += 9;
        log__escape(line, &len, sizeof(line) - 4, msg);
        memcpy(line + len, "\"}\n", 3);
        len += 3;
    } else {
        len = (size_t)snprintf(line, sizeof(line), "ts=%s level=%s module=%s msg=\"", when, lvl,
                               module);
        log__escape(line, &len, sizeof(line) - 3, msg);
        memcpy(line + len, "\"\n", 2);
        len += 2;
    }
    ssize_t rc = write(STDERR_FILENO, line, len);
    (void)rc;
}
