/* log.h -- one structured logger for the whole process: JSON lines or logfmt on stderr. */
#ifndef NEEDLETRACE_LOG_H
#define NEEDLETRACE_LOG_H

typedef enum { NT_LOG_DEBUG = 0, NT_LOG_INFO, NT_LOG_WARN, NT_LOG_ERROR } nt_log_level_t;
typedef enum { NT_LOG_JSON = 0, NT_LOG_TEXT } nt_log_format_t;

extern nt_log_level_t nt_log__level;

/* Sets the minimum level and the output format. Safe to call at any time. */
void nt_log_setup(nt_log_level_t level, nt_log_format_t format);

/* Parses "debug", "info", "warn"/"warning", "error" / "json", "text". 0 or NT_EINVAL. */
int nt_log_level_parse(const char *s, nt_log_level_t *out);
int nt_log_format_parse(const char *s, nt_log_format_t *out);

/* Writes one line: time, level, module and the formatted message (JSON-escaped in
 * json format). The level is checked before any formatting work is done. Messages
 * follow the PostgreSQL style: lower case, no trailing period, what failed and why. */
#define nt_log(level, module, ...)                                                                 \
    do {                                                                                           \
        if ((level) >= nt_log__level) {                                                            \
            nt_log__write((level), (module), __VA_ARGS__);                                         \
        }                                                                                          \
    } while (0)

void nt_log__write(nt_log_level_t level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
