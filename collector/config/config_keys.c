/* config_keys.c -- the table of configuration keys and the checks of their values: the one
 * place a key is declared (key, type, default, limits, help). */
#include <arpa/inet.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "config_internal.h"
#include "needletrace/common.h"
#include "needletrace/config.h"
#include "needletrace/ident.h"
#include "needletrace/log.h"

static const char *config__check_url(const char *v);
static const char *config__check_id(const char *v);
static const char *config__check_topic(const char *v);
static const char *config__check_listen(const char *v);
static const char *config__check_pub_topic(const char *v);
static const char *config__check_level(const char *v);
static const char *config__check_format(const char *v);

#define CONFIG__STR(sec, key, field, def, doc, flags, check, help)                                 \
    {                                                                                              \
        sec, key, NT_CONFIG__STRING, def, doc, offsetof(nt_config_t, field), 0, 0, flags, check,   \
            help                                                                                   \
    }
#define CONFIG__NUM(sec, key, type, field, def, min, max, help)                                    \
    {                                                                                              \
        sec, key, type, def, NULL, offsetof(nt_config_t, field), min, max, 0, NULL, help           \
    }

/* Every key, in the order of nt_config_t: the one place a key is declared. */
const nt_config__key_t nt_config__keys[] = {
    CONFIG__STR("mqtt", "url", mqtt_url, "mqtt://127.0.0.1:1883", NULL, 0, config__check_url,
                "Broker to subscribe to: mqtt://host[:port] (default port 1883) or "
                "mqtts://host[:port] for TLS (default port 8883). IPv6 addresses go in "
                "brackets: mqtt://[::1]:1883."),
    CONFIG__STR("mqtt", "client_id", mqtt_client_id, NULL, "needletrace-<collector.id>", 0,
                config__check_id,
                "Fixed MQTT client id, so the broker keeps this collector's persistent session. "
                "1-64 characters of [A-Za-z0-9._-]."),
    CONFIG__STR("mqtt", "share_group", mqtt_share_group, NULL, NULL, NT_CONFIG__OPTIONAL,
                config__check_id,
                "When set, subscribe as $share/<group>/<topic> so that several replicas split "
                "the messages. 1-64 characters of [A-Za-z0-9._-]. Unset: plain subscription."),
    CONFIG__STR("mqtt", "topic", mqtt_topic, "clinics/+/handpieces/+/telemetry", NULL, 0,
                config__check_topic, "Topic filter to subscribe to (QoS 1)."),
    CONFIG__STR("mqtt", "username", mqtt_username, NULL, NULL, NT_CONFIG__OPTIONAL, NULL,
                "User name for the broker. Unset: connect without credentials."),
    CONFIG__STR("mqtt", "password_file", mqtt_password_file, NULL, NULL, NT_CONFIG__OPTIONAL, NULL,
                "File whose first line is the broker password (a mounted secret). Needs "
                "mqtt.username."),
    CONFIG__STR("mqtt", "password", mqtt_password, NULL, NULL,
                NT_CONFIG__OPTIONAL | NT_CONFIG__SECRET, NULL,
                "Broker password. Accepted only from the environment "
                "(NEEDLETRACE_MQTT_PASSWORD), never from the file or the command line; "
                "prefer mqtt.password_file."),
    CONFIG__STR("mqtt", "ca_file", mqtt_ca_file, NULL, NULL, NT_CONFIG__OPTIONAL, NULL,
                "PEM file of the CA(s) that signed the broker's certificate. Needs mqtts://."),
    CONFIG__STR("mqtt", "cert_file", mqtt_cert_file, NULL, NULL, NT_CONFIG__OPTIONAL, NULL,
                "PEM client certificate for mutual TLS. Needs mqtt.key_file and mqtts://."),
    CONFIG__STR("mqtt", "key_file", mqtt_key_file, NULL, NULL, NT_CONFIG__OPTIONAL, NULL,
                "PEM private key of mqtt.cert_file. Needs mqtt.cert_file and mqtts://. An "
                "encrypted key needs mqtt.key_password_file: the collector never asks for a "
                "passphrase on the terminal."),
    CONFIG__STR("mqtt", "key_password_file", mqtt_key_password_file, NULL, NULL,
                NT_CONFIG__OPTIONAL, NULL,
                "File whose first line is the passphrase of an encrypted mqtt.key_file (a "
                "mounted secret). Needs mqtt.key_file."),
    CONFIG__NUM("mqtt", "keepalive_s", NT_CONFIG__INT, mqtt_keepalive_s, "30", 5, 3600,
                "MQTT keep-alive interval in seconds."),
    CONFIG__NUM("mqtt", "session_expiry_s", NT_CONFIG__INT, mqtt_session_expiry_s, "86400", 0,
                INT64_C(4294967295),
                "MQTT v5 session expiry interval in seconds: how long the broker keeps the "
                "session (and queues QoS 1 messages) while the collector is away."),
    CONFIG__NUM("mqtt", "receive_maximum", NT_CONFIG__INT, mqtt_receive_maximum, "1000", 1, 65535,
                "MQTT v5 receive maximum: messages the broker may send before their PUBACK. "
                "The flow control of backpressure: while the journal is over journal.max_bytes "
                "the collector stays connected and reads (keep-alive, PUBACKs of alerts) but "
                "acknowledges nothing, so the broker sends at most this many more and queues "
                "the rest."),
    CONFIG__NUM("mqtt", "connect_timeout_ms", NT_CONFIG__INT, mqtt_connect_timeout_ms, "10000", 100,
                600000,
                "How long one connection attempt to the broker (name lookup, TCP, TLS, CONNACK) "
                "may take before it is abandoned and retried with backoff."),
    CONFIG__NUM("mqtt", "reconnect_min_ms", NT_CONFIG__INT, mqtt_reconnect_min_ms, "250", 10,
                600000,
                "First delay before reconnecting to the broker, in milliseconds; doubles after "
                "each failure (with jitter)."),
    CONFIG__NUM("mqtt", "reconnect_max_ms", NT_CONFIG__INT, mqtt_reconnect_max_ms, "30000", 10,
                3600000,
                "Cap of the reconnect delay, in milliseconds. Must not be below "
                "mqtt.reconnect_min_ms."),
    CONFIG__STR("collector", "id", collector_id, NULL, "the host name, sanitised", 0,
                config__check_id,
                "This replica's id: names its checkpoint in the database and derives the MQTT "
                "client id. Must be stable across restarts and unique per journal. 1-64 "
                "characters of [A-Za-z0-9._-]."),
    CONFIG__STR("database", "url", database_url, "postgresql:///needletrace", NULL,
                NT_CONFIG__CONNINFO, NULL,
                "libpq connection string or URI. A password in it is accepted from the "
                "environment, or from a configuration file that only its owner can read (mode "
                "0600 or 0400), never from the command line; it is redacted when printed. "
                "Prefer database.password_file, or a PGPASSFILE or ~/.pgpass file."),
    CONFIG__NUM("database", "statement_timeout_ms", NT_CONFIG__INT, database_statement_timeout_ms,
                "30000", 0, 3600000,
                "PostgreSQL statement_timeout of the collector's connection, in milliseconds: a "
                "statement that runs longer (e.g. waiting for a lock) is cancelled by the server, "
                "and its batch is retried in smaller batches while /readyz says the database is "
                "slow. 0: no timeout."),
    CONFIG__NUM("database", "watchdog_ms", NT_CONFIG__INT, database_watchdog_ms, "120000", 1000,
                86400000,
                "A transaction without an answer from the database for this long has its "
                "statement cancelled (a cancel request); without an answer 5 s later the "
                "connection is dropped and made again. Must exceed "
                "database.statement_timeout_ms."),
    CONFIG__NUM("database", "connections", NT_CONFIG__INT, database_connections, "2", 1, 2,
                "Database connections of the collector. With 2, the next batch's transaction "
                "runs on the second while the first commits (batches still commit one after the "
                "other, in journal order: each waits for the checkpoint of the one before). 1: "
                "one transaction at a time."),
    CONFIG__STR("database", "admin_url", database_admin_url, NULL, NULL,
                NT_CONFIG__OPTIONAL | NT_CONFIG__CONNINFO, NULL,
                "Connection of `needletrace migrate`: the role that owns "
                "the schema. Unset: database.url. `run` never uses it: the collector connects "
                "with database.url as a member of needletrace_collector (README, Security)."),
    CONFIG__NUM("database", "allow_privileged", NT_CONFIG__INT, database_allow_privileged, "0", 0,
                1,
                "1 lets `needletrace run` write as a superuser or as a member of the role that "
                "owns the evidence tables (it could disable their triggers or truncate them). "
                "0 (default): it refuses to start so connected, naming the role."),
    CONFIG__STR("database", "password_file", database_password_file, NULL, NULL,
                NT_CONFIG__OPTIONAL, NULL,
                "File whose first line is the database password (a mounted secret), given to "
                "libpq as its password keyword; never printed or logged. Not with a password "
                "in database.url."),
    CONFIG__STR("journal", "dir", journal_dir, "/var/lib/needletrace/journal", NULL, 0, NULL,
                "Durable spool directory (created with mode 0700). One collector per directory."),
    CONFIG__NUM("journal", "max_bytes", NT_CONFIG__SIZE, journal_max_bytes, "1GiB",
                64 * NT_CONFIG__KIB, 1024 * NT_CONFIG__TIB,
                "Spool bound: at this size the collector stops reading from the broker "
                "(backpressure) until the database catches up."),
    CONFIG__NUM("journal", "segment_bytes", NT_CONFIG__SIZE, journal_segment_bytes, "64MiB",
                64 * NT_CONFIG__KIB, NT_CONFIG__GIB,
                "Size at which the journal rolls over to a new segment file."),
    CONFIG__NUM("batch", "max_events", NT_CONFIG__INT, batch_max_events, "5000", 1, 100000,
                "Commit a database transaction once it holds this many events."),
    CONFIG__NUM("batch", "max_bytes", NT_CONFIG__SIZE, batch_max_bytes, "1MiB", 4 * NT_CONFIG__KIB,
                64 * NT_CONFIG__MIB,
                "Commit a database transaction once it holds this many bytes."),
    CONFIG__NUM("batch", "max_delay_ms", NT_CONFIG__INT, batch_max_delay_ms, "10", 0, 10000,
                "Commit at the latest this many milliseconds after the oldest waiting message."),
    CONFIG__STR("http", "listen", http_listen, "127.0.0.1:9464", NULL, 0, config__check_listen,
                "Address of the /metrics, /healthz and /readyz listener: IP:port, [IPv6]:port, "
                "*:port (all interfaces), or off."),
    CONFIG__STR("log", "level", log_level, "info", NULL, 0, config__check_level,
                "Minimum level logged: debug, info, warn or error."),
    CONFIG__STR("log", "format", log_format, "json", NULL, 0, config__check_format,
                "Log line format on stderr: json (one object per line) or text (logfmt)."),
    CONFIG__STR("audit", "signing_key_file", audit_signing_key_file, NULL, NULL,
                NT_CONFIG__OPTIONAL, NULL,
                "Ed25519 private key (PEM; `needletrace audit keygen`) the collector signs its "
                "periodic digests of the ledger's chain heads with. Unset: no digests."),
    CONFIG__STR("audit", "digest_dir", audit_digest_dir, NULL, NULL, NT_CONFIG__OPTIONAL, NULL,
                "Directory the signed digests are written to (digest-<time>.json); mount one "
                "the database's administrators cannot write."),
    CONFIG__STR("audit", "digest_topic", audit_digest_topic, NULL, NULL, NT_CONFIG__OPTIONAL,
                config__check_pub_topic,
                "MQTT topic prefix: each digest is also published, retained, QoS 1, on "
                "<topic>/<collector.id>. Unset: not published."),
    CONFIG__NUM("audit", "digest_interval_s", NT_CONFIG__INT, audit_digest_interval_s, "300", 10,
                86400, "Seconds between two digests (one is written only when a chain moved)."),
};

const size_t nt_config__nkeys = NT_ARRAY_SIZE(nt_config__keys);

/* ---- values --------------------------------------------------------------------------------- */

/* A character of a host name or an identifier: [A-Za-z0-9._-]. */
int nt_config__is_id_char(char c)
{
    return nt_ident_is_alnum((unsigned char)c) || c == '.' || c == '_' || c == '-';
}

/* Writes a size as its shortest exact form: "1GiB", "512KiB" or plain bytes. */
void nt_config__fmt_size(int64_t v, char *buf, size_t len)
{
    static const struct {
        const char *suffix;
        int64_t mult;
    } units[] = {{"TiB", NT_CONFIG__TIB},
                 {"GiB", NT_CONFIG__GIB},
                 {"MiB", NT_CONFIG__MIB},
                 {"KiB", NT_CONFIG__KIB}};
    for (size_t i = 0; i < NT_ARRAY_SIZE(units); i++) {
        if (v != 0 && v % units[i].mult == 0) {
            snprintf(buf, len, "%" PRId64 "%s", v / units[i].mult, units[i].suffix);
            return;
        }
    }
    snprintf(buf, len, "%" PRId64, v);
}

/* Parses an optionally negative decimal integer that fits int64_t; nothing else allowed. */
int nt_config__parse_int(const char *s, int64_t *out)
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
        {"KiB", NT_CONFIG__KIB},
        {"MiB", NT_CONFIG__MIB},
        {"GiB", NT_CONFIG__GIB},
        {"TiB", NT_CONFIG__TIB},
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

/* Finds the host at p (a name of [A-Za-z0-9._-] or a bracketed IPv6 address): [*h, *hend) is
 * the host, *rest what follows it. Returns NULL, or why the host is not acceptable. */
static const char *config__url_host(const char *p, const char **h, const char **hend,
                                    const char **rest)
{
    if (*p == '[') {
        char addr[INET6_ADDRSTRLEN];
        unsigned char bin[16];
        *h = p + 1;
        *hend = strchr(*h, ']');
        if (*hend == NULL) {
            return "an IPv6 address needs a closing ]";
        }
        if ((size_t)(*hend - *h) >= sizeof(addr)) {
            return "invalid IPv6 address";
        }
        memcpy(addr, *h, (size_t)(*hend - *h));
        addr[*hend - *h] = '\0';
        if (inet_pton(AF_INET6, addr, bin) != 1) {
            return "invalid IPv6 address";
        }
        *rest = *hend + 1;
        return NULL;
    }
    *h = p;
    while (*p != '\0' && *p != ':' && *p != '/') {
        if (!nt_config__is_id_char(*p)) {
            return "invalid character in the host name";
        }
        p++;
    }
    *hend = p;
    *rest = p;
    return NULL;
}

/* See config_internal.h. */
const char *nt_config__parse_url(const char *url, char *host, size_t hostlen, int *port, int *tls)
{
    const char *p;
    const char *h;
    const char *hend;
    const char *why;
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
    if ((why = config__url_host(p, &h, &hend, &p)) != NULL) {
        return why;
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

/* See config_internal.h. */
const char *nt_config__parse_listen(const char *v, char *host, size_t hostlen, int *port)
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
    return nt_config__parse_url(v, host, sizeof(host), &port, &tls);
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

/* A topic to publish on: no wildcard, not a $ topic, room for "/<collector id>". */
static const char *config__check_pub_topic(const char *v)
{
    if (*v == '\0' || strlen(v) > 200) {
        return "a digest topic is 1-200 bytes";
    }
    if (strpbrk(v, "+#") != NULL || *v == '$') {
        return "a topic to publish on has no + or # and does not start with $";
    }
    return nt_ident_utf8_valid(v, strlen(v)) ? NULL : "not valid UTF-8";
}

static const char *config__check_listen(const char *v)
{
    char host[64];
    int port;
    return nt_config__parse_listen(v, host, sizeof(host), &port);
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
