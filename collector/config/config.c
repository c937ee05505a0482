/* config.c -- the table of configuration keys and its loaders: defaults < file < environment <
 * flags. */
#include "needletrace/config.h"

#include "needletrace/ident.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "needletrace/common.h"
#include "needletrace/log.h"

#define CONFIG__KIB (INT64_C(1) << 10)
#define CONFIG__MIB (INT64_C(1) << 20)
#define CONFIG__GIB (INT64_C(1) << 30)
#define CONFIG__TIB (INT64_C(1) << 40)

#define CONFIG__ENV_PREFIX    "NEEDLETRACE_"
#define CONFIG__ENV_FILE      "NEEDLETRACE_CONFIG"
#define CONFIG__REDACTED      "<redacted>"
#define CONFIG__CLIENT_PREFIX "needletrace"

typedef enum { CONFIG__STRING, CONFIG__INT, CONFIG__SIZE } config__type_t;

enum {
    CONFIG__OPTIONAL = 1, /* string: an empty value unsets it (NULL) */
    CONFIG__SECRET = 2,   /* string: environment only, redacted when printed */
};

/* Returns NULL when value is acceptable, else why not (a static phrase). */
typedef const char *(*config__check_fn)(const char *value);

typedef struct {
    const char *section;
    const char *key;
    config__type_t type;
    const char *def;     /* default, written as in the file; NULL = unset or computed */
    const char *def_doc; /* how a computed default is described in --help, else NULL */
    size_t offset;       /* of a char * (strings) or an int64_t (int, size) in nt_config_t */
    int64_t min;         /* int and size: inclusive range */
    int64_t max;
    unsigned flags;
    config__check_fn check;
    const char *help;
} config__key_t;

static const char *config__check_url(const char *v);
static const char *config__check_id(const char *v);
static const char *config__check_topic(const char *v);
static const char *config__check_listen(const char *v);
static const char *config__check_level(const char *v);
static const char *config__check_format(const char *v);

#define CONFIG__STR(sec, key, field, def, doc, flags, check, help)                                 \
    {                                                                                              \
        sec, key, CONFIG__STRING, def, doc, offsetof(nt_config_t, field), 0, 0, flags, check, help \
    }
#define CONFIG__NUM(sec, key, type, field, def, min, max, help)                                    \
    {                                                                                              \
        sec, key, type, def, NULL, offsetof(nt_config_t, field), min, max, 0, NULL, help           \
    }

/* Every key, in the order of nt_config_t: the one place a key is declared. */
static const config__key_t config__keys[] = {
    CONFIG__STR("mqtt", "url", mqtt_url, "mqtt://127.0.0.1:1883", NULL, 0, config__check_url,
                "Broker to subscribe to: mqtt://host[:port] (default port 1883) or "
                "mqtts://host[:port] for TLS (default port 8883). IPv6 addresses go in "
                "brackets: mqtt://[::1]:1883."),
    CONFIG__STR("mqtt", "client_id", mqtt_client_id, NULL, "needletrace-<collector.id>", 0,
                config__check_id,
                "Fixed MQTT client id, so the broker keeps this collector's persistent session. "
                "1-64 characters of [A-Za-z0-9._-]."),
    CONFIG__STR("mqtt", "share_group", mqtt_share_group, NULL, NULL, CONFIG__OPTIONAL,
                config__check_id,
                "When set, subscribe as $share/<group>/<topic> so that several replicas split "
                "the messages. 1-64 characters of [A-Za-z0-9._-]. Unset: plain subscription."),
    CONFIG__STR("mqtt", "topic", mqtt_topic, "clinics/+/handpieces/+/telemetry", NULL, 0,
                config__check_topic, "Topic filter to subscribe to (QoS 1)."),
    CONFIG__STR("mqtt", "username", mqtt_username, NULL, NULL, CONFIG__OPTIONAL, NULL,
                "User name for the broker. Unset: connect without credentials."),
    CONFIG__STR("mqtt", "password_file", mqtt_password_file, NULL, NULL, CONFIG__OPTIONAL, NULL,
                "File whose first line is the broker password (a mounted secret). Needs "
                "mqtt.username."),
    CONFIG__STR("mqtt", "password", mqtt_password, NULL, NULL, CONFIG__OPTIONAL | CONFIG__SECRET,
                NULL,
                "Broker password. Accepted only from the environment "
                "(NEEDLETRACE_MQTT_PASSWORD), never from the file or the command line; "
                "prefer mqtt.password_file."),
    CONFIG__STR("mqtt", "ca_file", mqtt_ca_file, NULL, NULL, CONFIG__OPTIONAL, NULL,
                "PEM file of the CA(s) that signed the broker's certificate. Needs mqtts://."),
    CONFIG__STR("mqtt", "cert_file", mqtt_cert_file, NULL, NULL, CONFIG__OPTIONAL, NULL,
                "PEM client certificate for mutual TLS. Needs mqtt.key_file and mqtts://."),
    CONFIG__STR("mqtt", "key_file", mqtt_key_file, NULL, NULL, CONFIG__OPTIONAL, NULL,
                "PEM private key of mqtt.cert_file. Needs mqtt.cert_file and mqtts://."),
    CONFIG__NUM("mqtt", "keepalive_s", CONFIG__INT, mqtt_keepalive_s, "30", 5, 3600,
                "MQTT keep-alive interval in seconds."),
    CONFIG__NUM("mqtt", "session_expiry_s", CONFIG__INT, mqtt_session_expiry_s, "86400", 0,
                INT64_C(4294967295),
                "MQTT v5 session expiry interval in seconds: how long the broker keeps the "
                "session (and queues QoS 1 messages) while the collector is away."),
    CONFIG__NUM("mqtt", "reconnect_min_ms", CONFIG__INT, mqtt_reconnect_min_ms, "250", 10, 600000,
                "First delay before reconnecting to the broker, in milliseconds; doubles after "
                "each failure (with jitter)."),
    CONFIG__NUM("mqtt", "reconnect_max_ms", CONFIG__INT, mqtt_reconnect_max_ms, "30000", 10,
                3600000,
                "Cap of the reconnect delay, in milliseconds. Must not be below "
                "mqtt.reconnect_min_ms."),
    CONFIG__STR("collector", "id", collector_id, NULL, "the host name, sanitised", 0,
                config__check_id,
                "This replica's id: names its checkpoint in the database and derives the MQTT "
                "client id. Must be stable across restarts and unique per journal. 1-64 "
                "characters of [A-Za-z0-9._-]."),
    CONFIG__STR("database", "url", database_url, "postgresql:///needletrace", NULL, 0, NULL,
                "libpq connection string or URI. A password in it is redacted when printed; "
                "prefer a ~/.pgpass file or PGPASSWORD."),
    CONFIG__STR("journal", "dir", journal_dir, "/var/lib/needletrace/journal", NULL, 0, NULL,
                "Durable spool directory (created with mode 0700). One collector per directory."),
    CONFIG__NUM("journal", "max_bytes", CONFIG__SIZE, journal_max_bytes, "1GiB", 64 * CONFIG__KIB,
                1024 * CONFIG__TIB,
                "Spool bound: at this size the collector stops reading from the broker "
                "(backpressure) until the database catches up."),
    CONFIG__NUM("journal", "segment_bytes", CONFIG__SIZE, journal_segment_bytes, "64MiB",
                64 * CONFIG__KIB, CONFIG__GIB,
                "Size at which the journal rolls over to a new segment file."),
    CONFIG__NUM("batch", "max_events", CONFIG__INT, batch_max_events, "5000", 1, 100000,
                "Commit a database transaction once it holds this many events."),
    CONFIG__NUM("batch", "max_bytes", CONFIG__SIZE, batch_max_bytes, "1MiB", 4 * CONFIG__KIB,
                64 * CONFIG__MIB, "Commit a database transaction once it holds this many bytes."),
    CONFIG__NUM("batch", "max_delay_ms", CONFIG__INT, batch_max_delay_ms, "10", 0, 10000,
                "Commit at the latest this many milliseconds after the oldest waiting message."),
    CONFIG__STR("http", "listen", http_listen, "127.0.0.1:9464", NULL, 0, config__check_listen,
                "Address of the /metrics, /healthz and /readyz listener: IP:port, [IPv6]:port, "
                "*:port (all interfaces), or off."),
    CONFIG__STR("log", "level", log_level, "info", NULL, 0, config__check_level,
                "Minimum level logged: debug, info, warn or error."),
    CONFIG__STR("log", "format", log_format, "json", NULL, 0, config__check_format,
                "Log line format on stderr: json (one object per line) or text (logfmt)."),
};

/* ---- small helpers -------------------------------------------------------------------------- */

static void config__errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void config__errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int config__bad(char *err, size_t errlen, const config__key_t *k, const char *value,
                       const char *origin, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* Writes `invalid value "V" for S.K (ORIGIN): WHY` (secrets redacted) and returns NT_ECONFIG. */
static int config__bad(char *err, size_t errlen, const config__key_t *k, const char *value,
                       const char *origin, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if ((k->flags & CONFIG__SECRET) && value != NULL && value[0] != '\0') {
        value = CONFIG__REDACTED;
    }
    config__errf(err, errlen, "invalid value \"%.200s%s\" for %s.%s (%s): %s",
                 value != NULL ? value : "", value != NULL && strlen(value) > 200 ? "..." : "",
                 k->section, k->key, origin, why);
    return NT_ECONFIG;
}

/* A character of a host name or an identifier: [A-Za-z0-9._-]. */
static int config__is_id_char(char c)
{
    return nt_ident_is_alnum((unsigned char)c) || c == '.' || c == '_' || c == '-';
}

static char **config__str(nt_config_t *cfg, const config__key_t *k)
{
    return (char **)(void *)((char *)cfg + k->offset);
}

static char *const *config__cstr(const nt_config_t *cfg, const config__key_t *k)
{
    return (char *const *)(const void *)((const char *)cfg + k->offset);
}

static int64_t *config__num(nt_config_t *cfg, const config__key_t *k)
{
    return (int64_t *)(void *)((char *)cfg + k->offset);
}

static int64_t config__cnum(const nt_config_t *cfg, const config__key_t *k)
{
    return *(const int64_t *)(const void *)((const char *)cfg + k->offset);
}

static void config__free_string(char **p, int secret)
{
    if (*p != NULL && secret) {
        explicit_bzero(*p, strlen(*p));
    }
    free(*p);
    *p = NULL;
}

/* "--mqtt-url", "NEEDLETRACE_MQTT_URL" and "mqtt.url" for key k. */
static void config__flag_name(const config__key_t *k, char *buf, size_t len)
{
    snprintf(buf, len, "--%s-%s", k->section, k->key);
    for (char *p = buf + 2; *p != '\0'; p++) {
        if (*p == '_') {
            *p = '-';
        }
    }
}

static void config__env_name(const config__key_t *k, char *buf, size_t len)
{
    snprintf(buf, len, CONFIG__ENV_PREFIX "%s_%s", k->section, k->key);
    for (char *p = buf; *p != '\0'; p++) {
        if (*p >= 'a' && *p <= 'z') {
            *p = (char)(*p - 'a' + 'A');
        }
    }
}

static const config__key_t *config__find(const char *section_key)
{
    for (size_t i = 0; i < NT_ARRAY_SIZE(config__keys); i++) {
        const config__key_t *k = &config__keys[i];
        size_t sl = strlen(k->section);
        if (strncmp(section_key, k->section, sl) == 0 && section_key[sl] == '.' &&
            strcmp(section_key + sl + 1, k->key) == 0) {
            return k;
        }
    }
    return NULL;
}

/* config__find for a key this file names itself: it exists, or the table is broken. */
static const config__key_t *config__key(const char *section_key)
{
    const config__key_t *k = config__find(section_key);
    if (k == NULL) {
        abort();
    }
    return k;
}

static const config__key_t *config__find_env(const char *name, size_t len)
{
    char buf[96];
    for (size_t i = 0; i < NT_ARRAY_SIZE(config__keys); i++) {
        config__env_name(&config__keys[i], buf, sizeof(buf));
        if (strlen(buf) == len && memcmp(buf, name, len) == 0) {
            return &config__keys[i];
        }
    }
    return NULL;
}

/* name is the flag without its leading "--" and without any "=value". */
static const config__key_t *config__find_flag(const char *name, size_t len)
{
    char buf[96];
    for (size_t i = 0; i < NT_ARRAY_SIZE(config__keys); i++) {
        config__flag_name(&config__keys[i], buf, sizeof(buf));
        if (strlen(buf + 2) == len && memcmp(buf + 2, name, len) == 0) {
            return &config__keys[i];
        }
    }
    return NULL;
}

static int config__section_known(const char *name, size_t len)
{
    for (size_t i = 0; i < NT_ARRAY_SIZE(config__keys); i++) {
        if (strlen(config__keys[i].section) == len &&
            memcmp(config__keys[i].section, name, len) == 0) {
            return 1;
        }
    }
    return 0;
}

/* 1 when the flag name (without "--") starts with "<known section>-": it claims to be a key. */
static int config__flag_in_section(const char *name, size_t len)
{
    const char *dash = memchr(name, '-', len);
    return dash != NULL && config__section_known(name, (size_t)(dash - name));
}

/* Writes a size as its shortest exact form: "1GiB", "512KiB" or plain bytes. */
static void config__fmt_size(int64_t v, char *buf, size_t len)
{
    static const struct {
        const char *suffix;
        int64_t mult;
    } units[] = {
        {"TiB", CONFIG__TIB}, {"GiB", CONFIG__GIB}, {"MiB", CONFIG__MIB}, {"KiB", CONFIG__KIB}};
    for (size_t i = 0; i < NT_ARRAY_SIZE(units); i++) {
        if (v != 0 && v % units[i].mult == 0) {
            snprintf(buf, len, "%" PRId64 "%s", v / units[i].mult, units[i].suffix);
            return;
        }
    }
    snprintf(buf, len, "%" PRId64, v);
}

/* Parses an optionally negative decimal integer that fits int64_t; nothing else allowed. */
static int config__parse_int(const char *s, int64_t *out)
{
    int neg = 0;
    uint64_t v = 0;
    if (*s == '-') {
        neg = 1;
        s++;
    }
    if (*s < '0' || *s > '9') {
        return NT_EINVAL;
    }
    for (; *s >= '0' && *s <= '9'; s++) {
        v = v * 10 + (uint64_t)(*s - '0');
        if (v > (uint64_t)INT64_MAX) {
            return NT_EINVAL;
        }
    }
    if (*s != '\0') {
        return NT_EINVAL;
    }
    *out = neg ? -(int64_t)v : (int64_t)v;
    return 0;
}

/* Parses a byte count with an optional unit (B, KiB..TiB binary, KB..TB decimal, any case,
 * optionally after spaces). Digits only before the unit: no sign, no fraction, no
 * whitespace around. Returns 0 with *out set, or NT_EINVAL (*out untouched) when malformed
 * or above INT64_MAX. */
int nt_config_parse_size(const char *s, int64_t *out)
{
    static const struct {
        const char *suffix;
        int64_t mult;
    } units[] = {
        {"", 1},
        {"B", 1},
        {"KiB", CONFIG__KIB},
        {"MiB", CONFIG__MIB},
        {"GiB", CONFIG__GIB},
        {"TiB", CONFIG__TIB},
        {"KB", INT64_C(1000)},
        {"MB", INT64_C(1000000)},
        {"GB", INT64_C(1000000000)},
        {"TB", INT64_C(1000000000000)},
    };
    uint64_t v = 0;
    if (s == NULL || *s < '0' || *s > '9') {
        return NT_EINVAL;
    }
    for (; *s >= '0' && *s <= '9'; s++) {
        v = v * 10 + (uint64_t)(*s - '0');
        if (v > (uint64_t)INT64_MAX) {
            return NT_EINVAL;
        }
    }
    if (*s == ' ') {
        while (*s == ' ') {
            s++;
        }
        if (*s == '\0') {
            return NT_EINVAL; /* "1 " */
        }
    }
    for (size_t i = 0; i < NT_ARRAY_SIZE(units); i++) {
        if (strcasecmp(s, units[i].suffix) == 0) {
            if (v > (uint64_t)(INT64_MAX / units[i].mult)) {
                return NT_EINVAL;
            }
            *out = (int64_t)v * units[i].mult;
            return 0;
        }
    }
    return NT_EINVAL;
}

/* ---- value checks --------------------------------------------------------------------------- */

/* Parses "1".."65535" from s up to end (or NUL when end is NULL). */
static int config__parse_port(const char *s, const char *end, int *port)
{
    long v = 0;
    const char *p = s;
    if (end == NULL) {
        end = s + strlen(s);
    }
    if (p == end || end - p > 5) {
        return NT_EINVAL;
    }
    for (; p < end; p++) {
        if (*p < '0' || *p > '9') {
            return NT_EINVAL;
        }
        v = v * 10 + (*p - '0');
    }
    if (v < 1 || v > 65535) {
        return NT_EINVAL;
    }
    *port = (int)v;
    return 0;
}

/* Splits mqtt[s]://host[:port][/]; returns NULL or why the URL is not acceptable. */
static const char *config__parse_url(const char *url, char *host, size_t hostlen, int *port,
                                     int *tls)
{
    const char *p;
    const char *h;
    const char *hend;
    if (strncasecmp(url, "mqtt://", 7) == 0) {
        *tls = 0;
        *port = 1883;
        p = url + 7;
    } else if (strncasecmp(url, "mqtts://", 8) == 0) {
        *tls = 1;
        *port = 8883;
        p = url + 8;
    } else {
        return "expected mqtt://host[:port] or mqtts://host[:port]";
    }
    if (strchr(p, '@') != NULL) {
        return "credentials in the URL are not accepted; use mqtt.username and "
               "mqtt.password_file";
    }
    if (*p == '[') {
        char addr[INET6_ADDRSTRLEN];
        unsigned char bin[16];
        h = p + 1;
        hend = strchr(h, ']');
        if (hend == NULL) {
            return "an IPv6 address needs a closing ]";
        }
        if ((size_t)(hend - h) >= sizeof(addr)) {
            return "invalid IPv6 address";
        }
        memcpy(addr, h, (size_t)(hend - h));
        addr[hend - h] = '\0';
        if (inet_pton(AF_INET6, addr, bin) != 1) {
            return "invalid IPv6 address";
        }
        p = hend + 1;
    } else {
        h = p;
        while (*p != '\0' && *p != ':' && *p != '/') {
            if (!config__is_id_char(*p)) {
                return "invalid character in the host name";
            }
            p++;
        }
        hend = p;
    }
    if (hend == h) {
        return "missing host";
    }
    if ((size_t)(hend - h) >= hostlen) {
        return "host name too long";
    }
    if (*p == ':') {
        const char *pend = p + 1;
        while (*pend != '\0' && *pend != '/') {
            pend++;
        }
        if (config__parse_port(p + 1, pend, port) != 0) {
            return "the port must be a number from 1 to 65535";
        }
        p = pend;
    }
    if (*p == '/' && p[1] == '\0') {
        p++;
    }
    if (*p != '\0') {
        return "unexpected text after host and port (no path allowed)";
    }
    memcpy(host, h, (size_t)(hend - h));
    host[hend - h] = '\0';
    return NULL;
}

/* Splits host:port or "off" (port 0) for the HTTP listener; returns NULL or why not. */
static const char *config__parse_listen(const char *v, char *host, size_t hostlen, int *port)
{
    char addr[INET6_ADDRSTRLEN];
    unsigned char bin[16];
    const char *colon;
    int family = AF_INET;
    if (strcasecmp(v, "off") == 0) {
        host[0] = '\0';
        *port = 0;
        return NULL;
    }
    if (v[0] == '[') {
        const char *close = strchr(v, ']');
        if (close == NULL || close[1] != ':') {
            return "expected [IPv6]:port";
        }
        if ((size_t)(close - v - 1) >= sizeof(addr)) {
            return "invalid IPv6 address";
        }
        memcpy(addr, v + 1, (size_t)(close - v - 1));
        addr[close - v - 1] = '\0';
        colon = close + 1;
        family = AF_INET6;
    } else {
        colon = strrchr(v, ':');
        if (colon == NULL) {
            return "expected host:port or off";
        }
        if (memchr(v, ':', (size_t)(colon - v)) != NULL) {
            return "an IPv6 address must be written in brackets: [::1]:9464";
        }
        if ((size_t)(colon - v) >= sizeof(addr)) {
            return "expected an IP address, localhost or * as host";
        }
        memcpy(addr, v, (size_t)(colon - v));
        addr[colon - v] = '\0';
        if (addr[0] == '\0' || strcmp(addr, "*") == 0) {
            strcpy(addr, "0.0.0.0");
        } else if (strcasecmp(addr, "localhost") == 0) {
            strcpy(addr, "127.0.0.1");
        }
    }
    if (inet_pton(family, addr, bin) != 1) {
        return "expected an IP address, localhost or * as host";
    }
    if (config__parse_port(colon + 1, NULL, port) != 0) {
        return "the port must be a number from 1 to 65535";
    }
    if (strlen(addr) >= hostlen) {
        return "invalid address";
    }
    strcpy(host, addr);
    return NULL;
}

static const char *config__check_url(const char *v)
{
    char host[256];
    int port;
    int tls;
    return config__parse_url(v, host, sizeof(host), &port, &tls);
}

static const char *config__check_id(const char *v)
{
    return nt_ident_id_valid_str(v) ? NULL : "expected 1-64 characters of [A-Za-z0-9._-]";
}

static const char *config__check_topic(const char *v)
{
    if (strlen(v) > NT_MAX_TOPIC_LEN) {
        return "a topic filter is at most 512 bytes";
    }
    if (strncmp(v, "$share/", 7) == 0) {
        return "set mqtt.share_group instead of writing $share/ in the topic";
    }
    for (const char *level = v;;) {
        const char *end = strchr(level, '/');
        size_t n = end != NULL ? (size_t)(end - level) : strlen(level);
        if (memchr(level, '+', n) != NULL && n != 1) {
            return "+ must occupy a whole topic level";
        }
        if (memchr(level, '#', n) != NULL && (n != 1 || end != NULL)) {
            return "# must be the whole last topic level";
        }
        if (end == NULL) {
            break;
        }
        level = end + 1;
    }
    return NULL;
}

static const char *config__check_listen(const char *v)
{
    char host[64];
    int port;
    return config__parse_listen(v, host, sizeof(host), &port);
}

static const char *config__check_level(const char *v)
{
    nt_log_level_t level;
    return nt_log_level_parse(v, &level) == 0 ? NULL : "expected debug, info, warn or error";
}

static const char *config__check_format(const char *v)
{
    nt_log_format_t format;
    return nt_log_format_parse(v, &format) == 0 ? NULL : "expected json or text";
}

/* ---- setting one key ------------------------------------------------------------------------ */

static int config__set(nt_config_t *cfg, const config__key_t *k, const char *value,
                       const char *origin, char *err, size_t errlen)
{
    if (k->flags & CONFIG__SECRET) {
        char env[96];
        config__env_name(k, env, sizeof(env));
        if (strcmp(origin, env) != 0) {
            return config__bad(err, errlen, k, value, origin,
                               "a secret is accepted only from the environment: set %s or "
                               "mqtt.password_file",
                               env);
        }
    }
    if (k->type == CONFIG__STRING) {
        char **slot = config__str(cfg, k);
        const char *why = NULL;
        if (value[0] == '\0') {
            if (!(k->flags & CONFIG__OPTIONAL)) {
                return config__bad(err, errlen, k, value, origin, "must not be empty");
            }
            config__free_string(slot, k->flags & CONFIG__SECRET);
            return 0;
        }
        if (!(k->flags & CONFIG__SECRET)) {
            for (const char *p = value; *p != '\0'; p++) {
                if ((unsigned char)*p < 0x20 || *p == 0x7f) {
                    return config__bad(err, errlen, k, value, origin,
                                       "control characters are not allowed");
                }
            }
        }
        if (k->check != NULL && (why = k->check(value)) != NULL) {
            return config__bad(err, errlen, k, value, origin, "%s", why);
        }
        char *copy = strdup(value);
        if (copy == NULL) {
            config__errf(err, errlen, "could not set %s.%s: out of memory", k->section, k->key);
            return NT_ENOMEM;
        }
        config__free_string(slot, k->flags & CONFIG__SECRET);
        *slot = copy;
        return 0;
    }

    int64_t v;
    if (k->type == CONFIG__INT) {
        if (config__parse_int(value, &v) != 0 || v < k->min || v > k->max) {
            return config__bad(err, errlen, k, value, origin,
                               "expected an integer from %" PRId64 " to %" PRId64, k->min, k->max);
        }
    } else {
        char lo[32];
        char hi[32];
        if (nt_config_parse_size(value, &v) != 0) {
            return config__bad(err, errlen, k, value, origin,
                               "expected a size such as 1048576, 512MiB or 1GiB");
        }
        if (v < k->min || v > k->max) {
            config__fmt_size(k->min, lo, sizeof(lo));
            config__fmt_size(k->max, hi, sizeof(hi));
            return config__bad(err, errlen, k, value, origin, "expected a size from %s to %s", lo,
                               hi);
        }
    }
    *config__num(cfg, k) = v;
    return 0;
}

/* Sets one key from its text form after checking it; on failure the old value stays.
 * An empty value unsets an optional string. mqtt.password is accepted only when origin is
 * "NEEDLETRACE_MQTT_PASSWORD" (what nt_config_load_env passes). Returns 0, NT_ECONFIG
 * (message in err) or NT_ENOMEM. err may be NULL. */
int nt_config_set(nt_config_t *cfg, const char *section_key, const char *value, const char *origin,
                  char *err, size_t errlen)
{
    const config__key_t *k = config__find(section_key);
    if (origin == NULL) {
        origin = "configuration";
    }
    if (k == NULL) {
        config__errf(err, errlen, "unknown configuration key \"%.100s\" (%s)", section_key, origin);
        return NT_ECONFIG;
    }
    return config__set(cfg, k, value != NULL ? value : "", origin, err, errlen);
}

/* ---- defaults ------------------------------------------------------------------------------- */

/* The host name reduced to [A-Za-z0-9._-]{1,64} (other characters become '-'). */
static void config__default_collector_id(char *buf, size_t len)
{
    char host[256];
    size_t n = 0;
    if (gethostname(host, sizeof(host)) != 0) {
        host[0] = '\0';
    }
    host[sizeof(host) - 1] = '\0';
    for (; host[n] != '\0' && n < NT_MAX_ID_LEN && n + 1 < len; n++) {
        buf[n] = config__is_id_char(host[n]) ? host[n] : '-';
    }
    buf[n] = '\0';
    if (n == 0) {
        snprintf(buf, len, "needletrace");
    }
}

/* "needletrace-<id>" (or the id itself when it already starts with "needletrace"), at most
 * 64 characters: a longer id keeps its first 43 characters plus an 8-digit hash of it all,
 * so two long ids that differ only at the end still give different client ids. */
static char *config__default_client_id(const char *id)
{
    char buf[NT_MAX_ID_LEN + 1];
    size_t n = strlen(id);
    if (strncmp(id, CONFIG__CLIENT_PREFIX, strlen(CONFIG__CLIENT_PREFIX)) == 0) {
        snprintf(buf, sizeof(buf), "%s", id);
    } else if (n + strlen(CONFIG__CLIENT_PREFIX "-") <= NT_MAX_ID_LEN) {
        snprintf(buf, sizeof(buf), CONFIG__CLIENT_PREFIX "-%s", id);
    } else {
        uint32_t h = 2166136261u; /* FNV-1a */
        for (size_t i = 0; i < n; i++) {
            h = (h ^ (unsigned char)id[i]) * 16777619u;
        }
        snprintf(buf, sizeof(buf), CONFIG__CLIENT_PREFIX "-%.43s-%08" PRIx32, id, h);
    }
    return strdup(buf);
}

/* Fills cfg with every default; collector.id from the host name, mqtt.client_id left NULL
 * for nt_config_validate() to derive. Aborts only if memory runs out at start-up. */
void nt_config_init(nt_config_t *cfg)
{
    char err[512];
    char id[NT_MAX_ID_LEN + 1];
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NT_ARRAY_SIZE(config__keys); i++) {
        const config__key_t *k = &config__keys[i];
        if (k->def != NULL && config__set(cfg, k, k->def, "default", err, sizeof(err)) != 0) {
            /* Only out of memory at start-up (the defaults are checked by the unit tests). */
            fprintf(stderr, "needletrace: %s\n", err);
            abort();
        }
    }
    config__default_collector_id(id, sizeof(id));
    cfg->collector_id = strdup(id);
    if (cfg->collector_id == NULL) {
        fprintf(stderr, "needletrace: could not set collector.id: out of memory\n");
        abort();
    }
}

/* Frees (and zeroes) every string and clears the derived fields. Idempotent. */
void nt_config_free(nt_config_t *cfg)
{
    for (size_t i = 0; i < NT_ARRAY_SIZE(config__keys); i++) {
        const config__key_t *k = &config__keys[i];
        if (k->type == CONFIG__STRING) {
            config__free_string(config__str(cfg, k), 1);
        }
    }
    memset(cfg->mqtt_host, 0, sizeof(cfg->mqtt_host));
    memset(cfg->http_host, 0, sizeof(cfg->http_host));
    cfg->mqtt_port = 0;
    cfg->mqtt_tls = 0;
    cfg->http_port = 0;
}

/* ---- the file ------------------------------------------------------------------------------- */

static char *config__trim(char *s)
{
    char *end;
    while (*s == ' ' || *s == '\t') {
        s++;
    }
    end = s + strlen(s);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r')) {
        *--end = '\0';
    }
    return s;
}

/* Handles one non-blank, non-comment line; *section is the current [section]. */
static int config__file_line(nt_config_t *cfg, char *s, char *section, size_t section_len,
                             const char *origin, char *err, size_t errlen)
{
    char full[160];
    if (*s == '[') {
        char *close = strchr(s, ']');
        if (close == NULL || *config__trim(close + 1) != '\0') {
            config__errf(err, errlen, "syntax error in configuration file (%s): expected [section]",
                         origin);
            return NT_ECONFIG;
        }
        *close = '\0';
        char *name = config__trim(s + 1);
        if (!config__section_known(name, strlen(name)) || strlen(name) >= section_len) {
            config__errf(err, errlen, "unknown configuration section \"%.100s\" (%s)", name,
                         origin);
            return NT_ECONFIG;
        }
        strcpy(section, name);
        return 0;
    }
    char *eq = strchr(s, '=');
    if (eq == NULL) {
        config__errf(err, errlen,
                     "syntax error in configuration file (%s): expected \"key = value\" or "
                     "\"[section]\"",
                     origin);
        return NT_ECONFIG;
    }
    *eq = '\0';
    char *key = config__trim(s);
    char *value = config__trim(eq + 1);
    size_t vlen = strlen(value);
    if (*key == '\0') {
        config__errf(err, errlen,
                     "syntax error in configuration file (%s): missing key before =", origin);
        return NT_ECONFIG;
    }
    if (vlen >= 2 && (value[0] == '"' || value[0] == '\'') && value[vlen - 1] == value[0]) {
        value[vlen - 1] = '\0';
        value++;
    }
    if (strchr(key, '.') != NULL) {
        snprintf(full, sizeof(full), "%.150s", key);
    } else if (section[0] == '\0') {
        config__errf(err, errlen,
                     "unknown configuration key \"%.100s\" (%s): keys follow a [section] line", key,
                     origin);
        return NT_ECONFIG;
    } else {
        snprintf(full, sizeof(full), "%s.%.100s", section, key);
    }
    return nt_config_set(cfg, full, value, origin, err, errlen);
}

/* Applies the file at path line by line, stopping at the first error, whose message
 * names "path:line". Keys are "key" under a [section] line or "section.key" anywhere; a
 * value may be quoted with "..." or '...'. Returns 0 or NT_ECONFIG (NT_ENOMEM). */
int nt_config_load_file(nt_config_t *cfg, const char *path, char *err, size_t errlen)
{
    char section[32] = "";
    char origin[4200];
    char *line = NULL;
    size_t cap = 0;
    unsigned lineno = 0;
    int rc = 0;
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        config__errf(err, errlen, "could not open configuration file \"%s\": %s", path,
                     strerror(errno));
        return NT_ECONFIG;
    }
    for (;;) {
        errno = 0;
        ssize_t n = getline(&line, &cap, f);
        if (n < 0) {
            if (ferror(f)) {
                config__errf(err, errlen, "could not read configuration file \"%s\": %s", path,
                             strerror(errno != 0 ? errno : EIO));
                rc = NT_ECONFIG;
            }
            break;
        }
        lineno++;
        snprintf(origin, sizeof(origin), "%s:%u", path, lineno);
        if ((size_t)n != strlen(line)) {
            config__errf(err, errlen, "syntax error in configuration file (%s): NUL byte in line",
                         origin);
            rc = NT_ECONFIG;
            break;
        }
        char *s = line;
        if (lineno == 1 && memcmp(s, "\xef\xbb\xbf", 3) == 0) {
            s += 3; /* UTF-8 byte order mark */
        }
        s = config__trim(s);
        if (*s == '\0' || *s == '#' || *s == ';') {
            continue;
        }
        rc = config__file_line(cfg, s, section, sizeof(section), origin, err, errlen);
        if (rc != 0) {
            break;
        }
    }
    free(line);
    fclose(f);
    return rc;
}

/* ---- the environment ------------------------------------------------------------------------ */

/* Applies NEEDLETRACE_<SECTION>_<KEY> variables in envp order; the origin in messages is
 * the variable's name. envp may be NULL. Returns 0 or NT_ECONFIG (NT_ENOMEM). */
int nt_config_load_env(nt_config_t *cfg, char *const *envp, char *err, size_t errlen)
{
    char origin[96];
    if (envp == NULL) {
        return 0;
    }
    for (; *envp != NULL; envp++) {
        const char *e = *envp;
        const char *eq = strchr(e, '=');
        if (strncmp(e, CONFIG__ENV_PREFIX, strlen(CONFIG__ENV_PREFIX)) != 0 || eq == NULL) {
            continue;
        }
        size_t n = (size_t)(eq - e);
        if (n == strlen(CONFIG__ENV_FILE) && memcmp(e, CONFIG__ENV_FILE, n) == 0) {
            continue;
        }
        const config__key_t *k = config__find_env(e, n);
        if (k == NULL) {
            config__errf(err, errlen, "unknown configuration key \"%.*s\" (environment)",
                         (int)(n > 100 ? 100 : n), e);
            return NT_ECONFIG;
        }
        config__env_name(k, origin, sizeof(origin));
        int rc = config__set(cfg, k, eq + 1, origin, err, errlen);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

/* ---- the command line ----------------------------------------------------------------------- */

/* Walks argv for --config and --<section>-<key> flags. With apply == 0 it only finds the
 * --config file (*path) and reports malformed flags; with apply == 1 it sets the keys and
 * removes every consumed argument from argv, keeping the others in order. */
static int config__scan_argv(nt_config_t *cfg, int *argc, char **argv, const char **path, int apply,
                             char *err, size_t errlen)
{
    char origin[96];
    int out = 1;
    int i = 1;
    if (argv == NULL || *argc < 1) {
        return 0;
    }
    for (; i < *argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            break;
        }
        if (strncmp(a, "--", 2) != 0) {
            if (apply) {
                argv[out++] = argv[i];
            }
            continue;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t n = eq != NULL ? (size_t)(eq - name) : strlen(name);
        int is_config = n == 6 && memcmp(name, "config", 6) == 0;
        const config__key_t *k = is_config ? NULL : config__find_flag(name, n);
        if (!is_config && k == NULL) {
            if (config__flag_in_section(name, n)) {
                config__errf(err, errlen, "unknown configuration key \"--%.*s\" (command line)",
                             (int)(n > 100 ? 100 : n), name);
                return NT_ECONFIG;
            }
            if (apply) {
                argv[out++] = argv[i];
            }
            continue;
        }
        const char *value = eq != NULL ? eq + 1 : NULL;
        if (value == NULL) {
            if (i + 1 >= *argc) {
                if (is_config) {
                    config__errf(err, errlen, "missing file name after --config");
                    return NT_ECONFIG;
                }
                config__flag_name(k, origin, sizeof(origin));
                return config__bad(err, errlen, k, "", origin, "missing value after the flag");
            }
            value = argv[++i];
        }
        if (is_config) {
            if (value[0] == '\0') {
                config__errf(err, errlen, "missing file name after --config");
                return NT_ECONFIG;
            }
            if (!apply) {
                *path = value;
            }
            continue;
        }
        if (apply) {
            config__flag_name(k, origin, sizeof(origin));
            int rc = config__set(cfg, k, value, origin, err, errlen);
            if (rc != 0) {
                return rc;
            }
        }
    }
    if (apply) {
        for (; i < *argc; i++) {
            argv[out++] = argv[i];
        }
        argv[out] = NULL;
        *argc = out;
    }
    return 0;
}

void nt_config_setup_log(const nt_config_t *cfg)
{
    nt_log_level_t level = NT_LOG_INFO;
    nt_log_format_t format = NT_LOG_JSON;
    if (cfg->log_level != NULL) {
        nt_log_level_parse(cfg->log_level, &level);
    }
    if (cfg->log_format != NULL) {
        nt_log_format_parse(cfg->log_format, &format);
    }
    nt_log_setup(level, format);
}

/* See config.h. Flags are --<section>-<key> VALUE or --<section>-<key>=VALUE, and --config
 * FILE (which wins over NEEDLETRACE_CONFIG). Scanning stops at "--". A flag naming a known
 * section but no known key ("--journal-dir-x") is an unknown key; other flags ("--seed")
 * are left for the command. argv[*argc] is NULL afterwards. argc and argv may be NULL.
 * On failure cfg has been freed (calling nt_config_free again is harmless). */
int nt_config_load(nt_config_t *cfg, int *argc, char **argv, char *const *envp, char *err,
                   size_t errlen)
{
    const char *path = NULL;
    int no_args = 0;
    int *pargc = argc;
    int rc;
    if (argc == NULL || argv == NULL) {
        pargc = &no_args;
    }
    nt_config_init(cfg);
    for (char *const *e = envp; e != NULL && *e != NULL; e++) {
        size_t n = strlen(CONFIG__ENV_FILE);
        if (strncmp(*e, CONFIG__ENV_FILE, n) == 0 && (*e)[n] == '=' && (*e)[n + 1] != '\0') {
            path = *e + n + 1;
        }
    }
    rc = config__scan_argv(cfg, pargc, argv, &path, 0, err, errlen);
    if (rc == 0 && path != NULL) {
        rc = nt_config_load_file(cfg, path, err, errlen);
    }
    if (rc == 0) {
        rc = nt_config_load_env(cfg, envp, err, errlen);
    }
    if (rc == 0) {
        rc = config__scan_argv(cfg, pargc, argv, NULL, 1, err, errlen);
    }
    if (rc == 0) {
        rc = nt_config_validate(cfg, err, errlen);
    }
    if (rc != 0) {
        nt_config_free(cfg);
    }
    return rc;
}

/* ---- cross-field validation ----------------------------------------------------------------- */

/* Reads the first line of path into a new string. NULL with *why set on failure. */
static char *config__read_secret(const char *path, const char **why)
{
    char *line = NULL;
    size_t cap = 0;
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        *why = strerror(errno);
        return NULL;
    }
    ssize_t n = getline(&line, &cap, f);
    if (n < 0) {
        *why = ferror(f) ? strerror(errno) : "the file is empty";
        fclose(f);
        free(line);
        return NULL;
    }
    fclose(f);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) {
        line[--n] = '\0';
    }
    if (n == 0 || (size_t)n != strlen(line)) {
        *why = n == 0 ? "its first line is empty" : "its first line holds a NUL byte";
        explicit_bzero(line, cap);
        free(line);
        return NULL;
    }
    return line;
}

/* Re-checks every value (fields may have been assigned directly), then the cross-field
 * rules, derives mqtt host/port/tls, http host/port (port 0 = off) and the default client
 * id, and reads mqtt.password_file into mqtt_password. Safe to call again. Returns 0,
 * NT_ECONFIG or NT_ENOMEM. */
int nt_config_validate(nt_config_t *cfg, char *err, size_t errlen)
{
    static const char *const origin = "configuration";
    const config__key_t *k;
    const char *why;

    /* Every value again, for fields assigned directly rather than through nt_config_set. */
    for (size_t i = 0; i < NT_ARRAY_SIZE(config__keys); i++) {
        k = &config__keys[i];
        if (k->type == CONFIG__STRING) {
            const char *v = *config__str(cfg, k);
            if (v == NULL || v[0] == '\0') {
                if (!(k->flags & CONFIG__OPTIONAL) &&
                    k->offset != offsetof(nt_config_t, mqtt_client_id)) {
                    return config__bad(err, errlen, k, "", origin, "must not be empty");
                }
            } else if (k->check != NULL && (why = k->check(v)) != NULL) {
                return config__bad(err, errlen, k, v, origin, "%s", why);
            }
        } else {
            int64_t v = *config__num(cfg, k);
            if (v < k->min || v > k->max) {
                char value[32];
                snprintf(value, sizeof(value), "%" PRId64, v);
                return config__bad(err, errlen, k, value, origin,
                                   "expected a value from %" PRId64 " to %" PRId64, k->min, k->max);
            }
        }
    }

    if (cfg->mqtt_client_id == NULL || cfg->mqtt_client_id[0] == '\0') {
        char *id = config__default_client_id(cfg->collector_id);
        if (id == NULL) {
            config__errf(err, errlen, "could not set mqtt.client_id: out of memory");
            return NT_ENOMEM;
        }
        free(cfg->mqtt_client_id);
        cfg->mqtt_client_id = id;
    }

    why = config__parse_url(cfg->mqtt_url, cfg->mqtt_host, sizeof(cfg->mqtt_host), &cfg->mqtt_port,
                            &cfg->mqtt_tls);
    if (why != NULL) {
        return config__bad(err, errlen, config__key("mqtt.url"), cfg->mqtt_url, origin, "%s", why);
    }
    if (!cfg->mqtt_tls) {
        const char *tls_key = cfg->mqtt_ca_file != NULL     ? "mqtt.ca_file is set"
                              : cfg->mqtt_cert_file != NULL ? "mqtt.cert_file is set"
                              : cfg->mqtt_key_file != NULL  ? "mqtt.key_file is set"
                                                            : NULL;
        if (tls_key != NULL) {
            return config__bad(err, errlen, config__key("mqtt.url"), cfg->mqtt_url, tls_key,
                               "TLS files need an mqtts:// URL");
        }
    }
    if (cfg->mqtt_cert_file != NULL && cfg->mqtt_key_file == NULL) {
        return config__bad(err, errlen, config__key("mqtt.cert_file"), cfg->mqtt_cert_file,
                           "mqtt.key_file is not set", "a client certificate needs its key");
    }
    if (cfg->mqtt_key_file != NULL && cfg->mqtt_cert_file == NULL) {
        return config__bad(err, errlen, config__key("mqtt.key_file"), cfg->mqtt_key_file,
                           "mqtt.cert_file is not set", "a client key needs its certificate");
    }
    if (cfg->mqtt_reconnect_min_ms > cfg->mqtt_reconnect_max_ms) {
        char value[32];
        char with[64];
        snprintf(value, sizeof(value), "%" PRId64, cfg->mqtt_reconnect_min_ms);
        snprintf(with, sizeof(with), "mqtt.reconnect_max_ms is %" PRId64,
                 cfg->mqtt_reconnect_max_ms);
        return config__bad(err, errlen, config__key("mqtt.reconnect_min_ms"), value, with,
                           "must not exceed mqtt.reconnect_max_ms");
    }
    /* The newest segment is never deleted: with less than two segments of room, a full
     * journal could stay full after everything was committed. */
    if (cfg->journal_max_bytes < 2 * cfg->journal_segment_bytes) {
        char value[32];
        char with[64];
        snprintf(value, sizeof(value), "%" PRId64, cfg->journal_max_bytes);
        snprintf(with, sizeof(with), "journal.segment_bytes is %" PRId64,
                 cfg->journal_segment_bytes);
        return config__bad(err, errlen, config__key("journal.max_bytes"), value, with,
                           "must be at least twice journal.segment_bytes");
    }

    why = config__parse_listen(cfg->http_listen, cfg->http_host, sizeof(cfg->http_host),
                               &cfg->http_port);
    if (why != NULL) {
        return config__bad(err, errlen, config__key("http.listen"), cfg->http_listen, origin, "%s",
                           why);
    }

    if (cfg->mqtt_password_file != NULL) {
        char *secret = config__read_secret(cfg->mqtt_password_file, &why);
        if (secret == NULL) {
            return config__bad(err, errlen, config__key("mqtt.password_file"),
                               cfg->mqtt_password_file, origin, "could not read the password: %s",
                               why);
        }
        if (cfg->mqtt_password != NULL && strcmp(cfg->mqtt_password, secret) != 0) {
            explicit_bzero(secret, strlen(secret));
            free(secret);
            return config__bad(err, errlen, config__key("mqtt.password"), cfg->mqtt_password,
                               "mqtt.password_file is also set", "set only one of the two");
        }
        config__free_string(&cfg->mqtt_password, 1);
        cfg->mqtt_password = secret;
    }
    if (cfg->mqtt_password != NULL && cfg->mqtt_username == NULL) {
        k = config__key(cfg->mqtt_password_file != NULL ? "mqtt.password_file" : "mqtt.password");
        return config__bad(err, errlen, k,
                           cfg->mqtt_password_file != NULL ? cfg->mqtt_password_file
                                                           : cfg->mqtt_password,
                           "mqtt.username is not set", "a password needs a user name");
    }
    return 0;
}

/* ---- printing ------------------------------------------------------------------------------- */

/* Copies a libpq conninfo string or URI with any password replaced by <redacted>. */
static void config__redact_conninfo(const char *in, char *out, size_t outlen)
{
    size_t o = 0;
    const char *p = in;
    const char *scheme = strstr(in, "://");
    const char *user_end = NULL; /* URI: the '@' ending a user:password part */
    const char *pw = NULL;
    if (scheme != NULL &&
        (strncmp(in, "postgresql://", 13) == 0 || strncmp(in, "postgres://", 11) == 0)) {
        const char *auth = scheme + 3;
        size_t auth_len = strcspn(auth, "/?#");
        for (size_t i = auth_len; i > 0; i--) {
            if (auth[i - 1] == '@') {
                user_end = auth + i - 1;
                break;
            }
        }
        if (user_end != NULL) {
            pw = memchr(auth, ':', (size_t)(user_end - auth));
        }
    }
    while (*p != '\0' && o + 1 < outlen) {
        if (pw != NULL && p == pw + 1) {
            o += (size_t)snprintf(out + o, outlen - o, CONFIG__REDACTED);
            p = user_end;
            continue;
        }
        if (strncasecmp(p, "password", 8) == 0 && (p == in || strchr(" \t?&", p[-1]) != NULL)) {
            const char *q = p + 8;
            while (*q == ' ' || *q == '\t') {
                q++;
            }
            if (*q == '=') {
                q++;
                while (*q == ' ' || *q == '\t') {
                    q++;
                }
                o +=
                    (size_t)snprintf(out + o, outlen - o, "%.*s" CONFIG__REDACTED, (int)(q - p), p);
                if (*q == '\'') {
                    for (q++; *q != '\0' && *q != '\''; q++) {
                        if (*q == '\\' && q[1] != '\0') {
                            q++;
                        }
                    }
                    if (*q == '\'') {
                        q++;
                    }
                } else {
                    q += strcspn(q, " \t&");
                }
                p = q;
                continue;
            }
        }
        out[o++] = *p++;
    }
    if (o >= outlen) {
        o = outlen - 1;
    }
    out[o] = '\0';
}

/* Writes "key = value", quoting values the file parser would otherwise trim or unquote. */
static void config__dump_value(FILE *out, const char *key, const char *v)
{
    size_t n = strlen(v);
    int quote = n == 0 || v[0] == ' ' || v[0] == '\t' || v[n - 1] == ' ' || v[n - 1] == '\t' ||
                v[0] == '"' || v[0] == '\'';
    if (quote) {
        fprintf(out, "%s = \"%s\"\n", key, v);
    } else {
        fprintf(out, "%s = %s\n", key, v);
    }
}

/* Prints every key as a loadable INI file: unset keys and the password as comments, a
 * password inside database.url as <redacted>. */
void nt_config_dump(const nt_config_t *cfg, FILE *out)
{
    const char *section = "";
    fprintf(out, "# needletrace effective configuration\n");
    for (size_t i = 0; i < NT_ARRAY_SIZE(config__keys); i++) {
        const config__key_t *k = &config__keys[i];
        if (strcmp(section, k->section) != 0) {
            section = k->section;
            fprintf(out, "\n[%s]\n", section);
        }
        if (k->type != CONFIG__STRING) {
            char buf[32];
            if (k->type == CONFIG__SIZE) {
                config__fmt_size(config__cnum(cfg, k), buf, sizeof(buf));
            } else {
                snprintf(buf, sizeof(buf), "%" PRId64, config__cnum(cfg, k));
            }
            fprintf(out, "%s = %s\n", k->key, buf);
            continue;
        }
        const char *v = *config__cstr(cfg, k);
        if (k->flags & CONFIG__SECRET) {
            fprintf(out, "# %s %s\n", k->key,
                    v != NULL ? "= " CONFIG__REDACTED " (environment or password_file only)"
                              : "is not set");
        } else if (v == NULL) {
            fprintf(out, "# %s is not set%s%s%s\n", k->key, k->def_doc != NULL ? " (default " : "",
                    k->def_doc != NULL ? k->def_doc : "", k->def_doc != NULL ? ")" : "");
        } else if (strcmp(k->section, "database") == 0 && strcmp(k->key, "url") == 0) {
            char *redacted = malloc(strlen(v) + 64);
            if (redacted == NULL) {
                fprintf(out, "%s = " CONFIG__REDACTED "\n", k->key);
                continue;
            }
            config__redact_conninfo(v, redacted, strlen(v) + 64);
            config__dump_value(out, k->key, redacted);
            free(redacted);
        } else {
            config__dump_value(out, k->key, v);
        }
    }
}

/* Prints, for every key: its name, environment variable, flag, default, limits and help. */
void nt_config_help(FILE *out)
{
    char env[96];
    char flag[96];
    fprintf(out, "Configuration (later sources win): built-in defaults < the file named by "
                 "--config FILE or\n" CONFIG__ENV_FILE " ([section] key = value) < environment "
                 "variables < command-line flags.\n");
    for (size_t i = 0; i < NT_ARRAY_SIZE(config__keys); i++) {
        const config__key_t *k = &config__keys[i];
        config__env_name(k, env, sizeof(env));
        config__flag_name(k, flag, sizeof(flag));
        fprintf(out, "\n  %s.%s\n      env %s", k->section, k->key, env);
        if (k->flags & CONFIG__SECRET) {
            fprintf(out, " (environment only)\n");
        } else {
            fprintf(out, ", flag %s\n", flag);
        }
        if (k->type == CONFIG__STRING) {
            fprintf(out, "      default: %s\n",
                    k->def != NULL       ? k->def
                    : k->def_doc != NULL ? k->def_doc
                                         : "unset");
        } else if (k->type == CONFIG__INT) {
            fprintf(out, "      default: %s (%" PRId64 " to %" PRId64 ")\n", k->def, k->min,
                    k->max);
        } else {
            char lo[32];
            char hi[32];
            config__fmt_size(k->min, lo, sizeof(lo));
            config__fmt_size(k->max, hi, sizeof(hi));
            fprintf(out, "      default: %s (%s to %s; 1048576, 512KiB, 64MiB, 1GiB, 1GB)\n",
                    k->def, lo, hi);
        }
        fprintf(out, "      %s\n", k->help);
    }
}
