/* config_internal.h -- what the configuration files share: the key table (config_keys.c),
 * setting and describing one key (config.c), used by the loaders (config_load.c) and the
 * printers (config_print.c). Not a public header. */
#ifndef NEEDLETRACE_CONFIG_INTERNAL_H
#define NEEDLETRACE_CONFIG_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "needletrace/config.h"

#define NT_CONFIG__KIB (INT64_C(1) << 10)
#define NT_CONFIG__MIB (INT64_C(1) << 20)
#define NT_CONFIG__GIB (INT64_C(1) << 30)
#define NT_CONFIG__TIB (INT64_C(1) << 40)

#define NT_CONFIG__ENV_PREFIX "NEEDLETRACE_"
#define NT_CONFIG__ENV_FILE   "NEEDLETRACE_CONFIG"
#define NT_CONFIG__REDACTED   "<redacted>"

typedef enum { NT_CONFIG__STRING, NT_CONFIG__INT, NT_CONFIG__SIZE } nt_config__type_t;

enum {
    NT_CONFIG__OPTIONAL = 1, /* string: an empty value unsets it (NULL) */
    NT_CONFIG__SECRET = 2,   /* string: environment only, redacted when printed */
    NT_CONFIG__CONNINFO = 4, /* string: a libpq connection string; a password in it is refused
                                on the command line and in a file others may read, and the
                                value is never quoted in a message */
};

/* Returns NULL when value is acceptable, else why not (a static phrase). */
typedef const char *(*nt_config__check_fn)(const char *value);

/* One key of the table: the one place a key is declared. */
typedef struct {
    const char *section;
    const char *key;
    nt_config__type_t type;
    const char *def;     /* default, written as in the file; NULL = unset or computed */
    const char *def_doc; /* how a computed default is described in --help, else NULL */
    size_t offset;       /* of a char * (strings) or an int64_t (int, size) in nt_config_t */
    int64_t min;         /* int and size: inclusive range */
    int64_t max;
    unsigned flags;
    nt_config__check_fn check;
    const char *help;
} nt_config__key_t;

/* Every key, in the order of nt_config_t (config_keys.c). */
extern const nt_config__key_t nt_config__keys[];
extern const size_t nt_config__nkeys;

/* The string field of cfg that k describes. */
static inline char **nt_config__str(nt_config_t *cfg, const nt_config__key_t *k)
{
    return (char **)(void *)((char *)cfg + k->offset);
}

static inline char *const *nt_config__cstr(const nt_config_t *cfg, const nt_config__key_t *k)
{
    return (char *const *)(const void *)((const char *)cfg + k->offset);
}

/* The int or size field of cfg that k describes. */
static inline int64_t *nt_config__num(nt_config_t *cfg, const nt_config__key_t *k)
{
    return (int64_t *)(void *)((char *)cfg + k->offset);
}

static inline int64_t nt_config__cnum(const nt_config_t *cfg, const nt_config__key_t *k)
{
    return *(const int64_t *)(const void *)((const char *)cfg + k->offset);
}

/* ---- config_keys.c: values ------------------------------------------------------------- */

/* Returns 1 for a character of a host name or an identifier, [A-Za-z0-9._-], else 0. */
int nt_config__is_id_char(char c);

/* Parses an optionally negative decimal integer that fits int64_t, nothing else. Returns 0
 * with *out set, or NT_EINVAL. */
int nt_config__parse_int(const char *s, int64_t *out);

/* Writes a size as its shortest exact form: "1GiB", "512KiB" or plain bytes. */
void nt_config__fmt_size(int64_t v, char *buf, size_t len);

/* Splits mqtt[s]://host[:port][/] into host (hostlen bytes), *port (default 1883 or 8883)
 * and *tls. Returns NULL, or why the URL is not acceptable (a static phrase). */
const char *nt_config__parse_url(const char *url, char *host, size_t hostlen, int *port, int *tls);

/* Splits an HTTP listen address: IP:port, [IPv6]:port, *:port, localhost:port, or "off"
 * (host "" and port 0). Returns NULL, or why not (a static phrase). */
const char *nt_config__parse_listen(const char *v, char *host, size_t hostlen, int *port);

/* ---- config.c: keys -------------------------------------------------------------------- */

/* snprintf into err (when err != NULL and errlen > 0). */
void nt_config__errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes `invalid value "V" for S.K (ORIGIN): WHY` into err (a secret's value redacted) and
 * returns NT_ECONFIG. */
int nt_config__bad(char *err, size_t errlen, const nt_config__key_t *k, const char *value,
                   const char *origin, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* 1 when the libpq connection string or URI sets a password, else 0 (also when it does not
 * parse: nt_config_validate() says so). */
int nt_config__conninfo_has_password(const char *conninfo);

/* Where a password inside a connection string belongs instead, for messages. */
#define NT_CONFIG__PASSWORD_PLACES                                                                 \
    "the environment (NEEDLETRACE_DATABASE_URL), database.password_file, or a PGPASSFILE or "      \
    "~/.pgpass file"

/* Writes the flag ("--mqtt-url") or environment variable ("NEEDLETRACE_MQTT_URL") of k. */
void nt_config__flag_name(const nt_config__key_t *k, char *buf, size_t len);
void nt_config__env_name(const nt_config__key_t *k, char *buf, size_t len);

/* The key named "section.key", or NULL. */
const nt_config__key_t *nt_config__find(const char *section_key);

/* Sets key k of cfg from its text form after checking it; on failure the old value stays.
 * origin names where the value came from, for the message. Returns 0, NT_ECONFIG (message in
 * err) or NT_ENOMEM. */
int nt_config__set(nt_config_t *cfg, const nt_config__key_t *k, const char *value,
                   const char *origin, char *err, size_t errlen);

#endif
