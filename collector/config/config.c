/* config.c -- setting one configuration key, defaults, and the cross-field checks that make a
 * configuration whole (the key table is in config_keys.c, the loaders in config_load.c). */
#include "needletrace/config.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config_internal.h"
#include "needletrace/common.h"
#include "needletrace/log.h"

#define CONFIG__CLIENT_PREFIX "needletrace"

/* ---- keys ----------------------------------------------------------------------------------- */

/* See config_internal.h. */
void nt_config__errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* See config_internal.h. */
int nt_config__bad(char *err, size_t errlen, const nt_config__key_t *k, const char *value,
                   const char *origin, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if ((k->flags & (NT_CONFIG__SECRET | NT_CONFIG__CONNINFO)) && value != NULL &&
        value[0] != '\0') {
        value = NT_CONFIG__REDACTED;
    }
    nt_config__errf(err, errlen, "invalid value \"%.200s%s\" for %s.%s (%s): %s",
                    value != NULL ? value : "", value != NULL && strlen(value) > 200 ? "..." : "",
                    k->section, k->key, origin, why);
    return NT_ECONFIG;
}

static void config__free_string(char **p, int secret)
{
    if (*p != NULL && secret) {
        explicit_bzero(*p, strlen(*p));
    }
    free(*p);
    *p = NULL;
}

/* See config_internal.h. */
int nt_config__conninfo_has_password(const char *conninfo)
{
    char *perr = NULL;
    int found = 0;
    PQconninfoOption *parsed = PQconninfoParse(conninfo, &perr);
    if (parsed == NULL) {
        PQfreemem(perr);
        return 0;
    }
    for (const PQconninfoOption *o = parsed; o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "password") == 0 && o->val != NULL && o->val[0] != '\0') {
            found = 1;
        }
    }
    PQconninfoFree(parsed);
    return found;
}

/* See config_internal.h. */
void nt_config__flag_name(const nt_config__key_t *k, char *buf, size_t len)
{
    snprintf(buf, len, "--%s-%s", k->section, k->key);
    for (char *p = buf + 2; *p != '\0'; p++) {
        if (*p == '_') {
            *p = '-';
        }
    }
}

/* See config_internal.h. */
void nt_config__env_name(const nt_config__key_t *k, char *buf, size_t len)
{
    snprintf(buf, len, NT_CONFIG__ENV_PREFIX "%s_%s", k->section, k->key);
    for (char *p = buf; *p != '\0'; p++) {
        if (*p >= 'a' && *p <= 'z') {
            *p = (char)(*p - 'a' + 'A');
        }
    }
}

/* See config_internal.h. */
const nt_config__key_t *nt_config__find(const char *section_key)
{
    for (size_t i = 0; i < nt_config__nkeys; i++) {
        const nt_config__key_t *k = &nt_config__keys[i];
        size_t sl = strlen(k->section);
        if (strncmp(section_key, k->section, sl) == 0 && section_key[sl] == '.' &&
            strcmp(section_key + sl + 1, k->key) == 0) {
            return k;
        }
    }
    return NULL;
}

/* nt_config__find for a key this file names itself: it exists, or the table is broken. */
static const nt_config__key_t *config__key(const char *section_key)
{
    const nt_config__key_t *k = nt_config__find(section_key);
    if (k == NULL) {
        abort();
    }
    return k;
}

/* ---- setting one key ------------------------------------------------------------------------ */

/* Sets the string key k from value (already allowed from origin). 0, NT_ECONFIG or NT_ENOMEM. */
static int config__set_string(nt_config_t *cfg, const nt_config__key_t *k, const char *value,
                              const char *origin, char *err, size_t errlen)
{
    char **slot = nt_config__str(cfg, k);
    const char *why = NULL;
    if (value[0] == '\0') {
        if (!(k->flags & NT_CONFIG__OPTIONAL)) {
            return nt_config__bad(err, errlen, k, value, origin, "must not be empty");
        }
        config__free_string(slot, k->flags & NT_CONFIG__SECRET);
        return 0;
    }
    if (!(k->flags & NT_CONFIG__SECRET)) {
        for (const char *p = value; *p != '\0'; p++) {
            if ((unsigned char)*p < 0x20 || *p == 0x7f) {
                return nt_config__bad(err, errlen, k, value, origin,
                                      "control characters are not allowed");
            }
        }
    }
    if (k->check != NULL && (why = k->check(value)) != NULL) {
        return nt_config__bad(err, errlen, k, value, origin, "%s", why);
    }
    char *copy = strdup(value);
    if (copy == NULL) {
        nt_config__errf(err, errlen, "could not set %s.%s: out of memory", k->section, k->key);
        return NT_ENOMEM;
    }
    config__free_string(slot, k->flags & NT_CONFIG__SECRET);
    *slot = copy;
    return 0;
}

/* Sets the int or size key k from value. 0 or NT_ECONFIG. */
static int config__set_number(nt_config_t *cfg, const nt_config__key_t *k, const char *value,
                              const char *origin, char *err, size_t errlen)
{
    int64_t v;
    if (k->type == NT_CONFIG__INT) {
        if (nt_config__parse_int(value, &v) != 0 || v < k->min || v > k->max) {
            return nt_config__bad(err, errlen, k, value, origin,
                                  "expected an integer from %" PRId64 " to %" PRId64, k->min,
                                  k->max);
        }
    } else {
        char lo[32];
        char hi[32];
        if (nt_config_parse_size(value, &v) != 0) {
            return nt_config__bad(err, errlen, k, value, origin,
                                  "expected a size such as 1048576, 512MiB or 1GiB");
        }
        if (v < k->min || v > k->max) {
            nt_config__fmt_size(k->min, lo, sizeof(lo));
            nt_config__fmt_size(k->max, hi, sizeof(hi));
            return nt_config__bad(err, errlen, k, value, origin, "expected a size from %s to %s",
                                  lo, hi);
        }
    }
    *nt_config__num(cfg, k) = v;
    return 0;
}

/* See config_internal.h. A secret is accepted only when origin is its environment variable. */
int nt_config__set(nt_config_t *cfg, const nt_config__key_t *k, const char *value,
                   const char *origin, char *err, size_t errlen)
{
    if (k->flags & NT_CONFIG__SECRET) {
        char env[96];
        nt_config__env_name(k, env, sizeof(env));
        if (strcmp(origin, env) != 0) {
            return nt_config__bad(err, errlen, k, value, origin,
                                  "a secret is accepted only from the environment: set %s or "
                                  "mqtt.password_file",
                                  env);
        }
    }
    if (k->type == NT_CONFIG__STRING) {
        return config__set_string(cfg, k, value, origin, err, errlen);
    }
    return config__set_number(cfg, k, value, origin, err, errlen);
}

/* Sets one key from its text form after checking it; on failure the old value stays.
 * An empty value unsets an optional string. mqtt.password is accepted only when origin is
 * "NEEDLETRACE_MQTT_PASSWORD" (what nt_config_load_env passes). Returns 0, NT_ECONFIG
 * (message in err) or NT_ENOMEM. err may be NULL. */
int nt_config_set(nt_config_t *cfg, const char *section_key, const char *value, const char *origin,
                  char *err, size_t errlen)
{
    const nt_config__key_t *k = nt_config__find(section_key);
    if (origin == NULL) {
        origin = "configuration";
    }
    if (k == NULL) {
        nt_config__errf(err, errlen, "unknown configuration key \"%.100s\" (%s)", section_key,
                        origin);
        return NT_ECONFIG;
    }
    return nt_config__set(cfg, k, value != NULL ? value : "", origin, err, errlen);
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
        buf[n] = nt_config__is_id_char(host[n]) ? host[n] : '-';
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
    for (size_t i = 0; i < nt_config__nkeys; i++) {
        const nt_config__key_t *k = &nt_config__keys[i];
        if (k->def != NULL && nt_config__set(cfg, k, k->def, "default", err, sizeof(err)) != 0) {
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
void nt_config_close(nt_config_t *cfg)
{
    for (size_t i = 0; i < nt_config__nkeys; i++) {
        const nt_config__key_t *k = &nt_config__keys[i];
        if (k->type == NT_CONFIG__STRING) {
            config__free_string(nt_config__str(cfg, k), 1);
        }
    }
    config__free_string(&cfg->mqtt_key_password, 1);
    config__free_string(&cfg->database_password, 1);
    memset(cfg->mqtt_host, 0, sizeof(cfg->mqtt_host));
    memset(cfg->http_host, 0, sizeof(cfg->http_host));
    cfg->mqtt_port = 0;
    cfg->mqtt_tls = 0;
    cfg->http_port = 0;
}

/* See config.h. An unparsable level or format (only possible for fields assigned directly)
 * leaves the default, info or json. */
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

/* Re-checks every value, for fields assigned directly rather than through nt_config_set
 * (mqtt.client_id may be empty: it is derived). Returns 0 or NT_ECONFIG. */
static int config__recheck_values(const nt_config_t *cfg, char *err, size_t errlen)
{
    static const char *const origin = "configuration";
    const char *why;
    for (size_t i = 0; i < nt_config__nkeys; i++) {
        const nt_config__key_t *k = &nt_config__keys[i];
        if (k->type == NT_CONFIG__STRING) {
            const char *v = *nt_config__cstr(cfg, k);
            if (v == NULL || v[0] == '\0') {
                if (!(k->flags & NT_CONFIG__OPTIONAL) &&
                    k->offset != offsetof(nt_config_t, mqtt_client_id)) {
                    return nt_config__bad(err, errlen, k, "", origin, "must not be empty");
                }
            } else if (k->check != NULL && (why = k->check(v)) != NULL) {
                return nt_config__bad(err, errlen, k, v, origin, "%s", why);
            }
            continue;
        }
        int64_t v = nt_config__cnum(cfg, k);
        if (v < k->min || v > k->max) {
            char value[32];
            snprintf(value, sizeof(value), "%" PRId64, v);
            return nt_config__bad(err, errlen, k, value, origin,
                                  "expected a value from %" PRId64 " to %" PRId64, k->min, k->max);
        }
    }
    return 0;
}

/* Derives mqtt.client_id from collector.id when it is not set. Returns 0 or NT_ENOMEM. */
static int config__derive_client_id(nt_config_t *cfg, char *err, size_t errlen)
{
    if (cfg->mqtt_client_id != NULL && cfg->mqtt_client_id[0] != '\0') {
        return 0;
    }
    char *id = config__default_client_id(cfg->collector_id);
    if (id == NULL) {
        nt_config__errf(err, errlen, "could not set mqtt.client_id: out of memory");
        return NT_ENOMEM;
    }
    free(cfg->mqtt_client_id);
    cfg->mqtt_client_id = id;
    return 0;
}

/* The [mqtt] rules: the URL (deriving host, port and TLS), TLS files only with mqtts://, a
 * certificate and its key together, reconnect_min_ms <= reconnect_max_ms. 0 or NT_ECONFIG. */
static int config__check_mqtt(nt_config_t *cfg, char *err, size_t errlen)
{
    const char *why = nt_config__parse_url(cfg->mqtt_url, cfg->mqtt_host, sizeof(cfg->mqtt_host),
                                           &cfg->mqtt_port, &cfg->mqtt_tls);
    if (why != NULL) {
        return nt_config__bad(err, errlen, config__key("mqtt.url"), cfg->mqtt_url, "configuration",
                              "%s", why);
    }
    if (!cfg->mqtt_tls) {
        const char *tls_key = cfg->mqtt_ca_file != NULL     ? "mqtt.ca_file is set"
                              : cfg->mqtt_cert_file != NULL ? "mqtt.cert_file is set"
                              : cfg->mqtt_key_file != NULL  ? "mqtt.key_file is set"
                                                            : NULL;
        if (tls_key != NULL) {
            return nt_config__bad(err, errlen, config__key("mqtt.url"), cfg->mqtt_url, tls_key,
                                  "TLS files need an mqtts:// URL");
        }
    }
    if (cfg->mqtt_cert_file != NULL && cfg->mqtt_key_file == NULL) {
        return nt_config__bad(err, errlen, config__key("mqtt.cert_file"), cfg->mqtt_cert_file,
                              "mqtt.key_file is not set", "a client certificate needs its key");
    }
    if (cfg->mqtt_key_file != NULL && cfg->mqtt_cert_file == NULL) {
        return nt_config__bad(err, errlen, config__key("mqtt.key_file"), cfg->mqtt_key_file,
                              "mqtt.cert_file is not set", "a client key needs its certificate");
    }
    if (cfg->mqtt_reconnect_min_ms > cfg->mqtt_reconnect_max_ms) {
        char value[32];
        char with[64];
        snprintf(value, sizeof(value), "%" PRId64, cfg->mqtt_reconnect_min_ms);
        snprintf(with, sizeof(with), "mqtt.reconnect_max_ms is %" PRId64,
                 cfg->mqtt_reconnect_max_ms);
        return nt_config__bad(err, errlen, config__key("mqtt.reconnect_min_ms"), value, with,
                              "must not exceed mqtt.reconnect_max_ms");
    }
    return 0;
}

/* The journal bound against the segment size. 0 or NT_ECONFIG. */
static int config__check_journal(const nt_config_t *cfg, char *err, size_t errlen)
{
    /* The newest segment is never deleted: with less than two segments of room, a full
     * journal could stay full after everything was committed. */
    if (cfg->journal_max_bytes < 2 * cfg->journal_segment_bytes) {
        char value[32];
        char with[64];
        snprintf(value, sizeof(value), "%" PRId64, cfg->journal_max_bytes);
        snprintf(with, sizeof(with), "journal.segment_bytes is %" PRId64,
                 cfg->journal_segment_bytes);
        return nt_config__bad(err, errlen, config__key("journal.max_bytes"), value, with,
                              "must be at least twice journal.segment_bytes");
    }
    return 0;
}

/* The connection string parses (without quoting it: it may hold a password), and the watchdog
 * gives the server's statement timeout room to fire first. 0 or NT_ECONFIG. */
static int config__check_database(const nt_config_t *cfg, char *err, size_t errlen)
{
    char *perr = NULL;
    PQconninfoOption *parsed = PQconninfoParse(cfg->database_url, &perr);
    if (parsed == NULL) {
        PQfreemem(perr);
        return nt_config__bad(err, errlen, config__key("database.url"), NT_CONFIG__REDACTED,
                              "configuration", "not a valid libpq connection string or URI");
    }
    PQconninfoFree(parsed);
    if (cfg->database_admin_url != NULL) {
        parsed = PQconninfoParse(cfg->database_admin_url, &perr);
        if (parsed == NULL) {
            PQfreemem(perr);
            return nt_config__bad(err, errlen, config__key("database.admin_url"),
                                  NT_CONFIG__REDACTED, "configuration",
                                  "not a valid libpq connection string or URI");
        }
        PQconninfoFree(parsed);
    }
    if (cfg->database_statement_timeout_ms != 0 &&
        cfg->database_watchdog_ms <= cfg->database_statement_timeout_ms) {
        char value[32];
        char with[80];
        snprintf(value, sizeof(value), "%" PRId64, cfg->database_watchdog_ms);
        snprintf(with, sizeof(with), "database.statement_timeout_ms is %" PRId64,
                 cfg->database_statement_timeout_ms);
        return nt_config__bad(err, errlen, config__key("database.watchdog_ms"), value, with,
                              "must exceed database.statement_timeout_ms");
    }
    return 0;
}

/* Derives http host and port (0 = off) from http.listen. 0 or NT_ECONFIG. */
static int config__check_http(nt_config_t *cfg, char *err, size_t errlen)
{
    const char *why = nt_config__parse_listen(cfg->http_listen, cfg->http_host,
                                              sizeof(cfg->http_host), &cfg->http_port);
    if (why != NULL) {
        return nt_config__bad(err, errlen, config__key("http.listen"), cfg->http_listen,
                              "configuration", "%s", why);
    }
    return 0;
}

/* Reads mqtt.password_file (when set) into mqtt_password; an mqtt.password from the
 * environment must then be the same. Returns 0 or NT_ECONFIG (the message names the file and
 * why it could not be read). */
static int config__read_password(nt_config_t *cfg, char *err, size_t errlen)
{
    const char *why;
    if (cfg->mqtt_password_file == NULL) {
        return 0;
    }
    char *secret = config__read_secret(cfg->mqtt_password_file, &why);
    if (secret == NULL) {
        return nt_config__bad(err, errlen, config__key("mqtt.password_file"),
                              cfg->mqtt_password_file, "configuration",
                              "could not read the password: %s", why);
    }
    if (cfg->mqtt_password != NULL && strcmp(cfg->mqtt_password, secret) != 0) {
        explicit_bzero(secret, strlen(secret));
        free(secret);
        return nt_config__bad(err, errlen, config__key("mqtt.password"), cfg->mqtt_password,
                              "mqtt.password_file is also set", "set only one of the two");
    }
    config__free_string(&cfg->mqtt_password, 1);
    cfg->mqtt_password = secret;
    return 0;
}

/* Reads the first line of the file that key_name names (path) into *out, replacing what was
 * there. Returns 0 or NT_ECONFIG (the message names the file and why it could not be read). */
static int config__read_secret_into(const char *key_name, const char *path, char **out, char *err,
                                    size_t errlen)
{
    const char *why;
    char *secret = config__read_secret(path, &why);
    if (secret == NULL) {
        return nt_config__bad(err, errlen, config__key(key_name), path, "configuration",
                              "could not read it: %s", why);
    }
    config__free_string(out, 1);
    *out = secret;
    return 0;
}

/* Reads mqtt.key_password_file (the passphrase of an encrypted client key) and
 * database.password_file. 0 or NT_ECONFIG. */
static int config__read_other_secrets(nt_config_t *cfg, char *err, size_t errlen)
{
    int rc;
    if (cfg->mqtt_key_password_file != NULL) {
        if (cfg->mqtt_key_file == NULL) {
            return nt_config__bad(err, errlen, config__key("mqtt.key_password_file"),
                                  cfg->mqtt_key_password_file, "mqtt.key_file is not set",
                                  "a key passphrase needs its key");
        }
        rc = config__read_secret_into("mqtt.key_password_file", cfg->mqtt_key_password_file,
                                      &cfg->mqtt_key_password, err, errlen);
        if (rc != 0) {
            return rc;
        }
    }
    if (cfg->database_password_file != NULL) {
        if (nt_config__conninfo_has_password(cfg->database_url)) {
            return nt_config__bad(err, errlen, config__key("database.password_file"),
                                  cfg->database_password_file, "database.url holds a password",
                                  "set only one of the two");
        }
        return config__read_secret_into("database.password_file", cfg->database_password_file,
                                        &cfg->database_password, err, errlen);
    }
    return 0;
}

/* A password (from the file or the environment) needs a user name. 0 or NT_ECONFIG. */
static int config__check_credentials(const nt_config_t *cfg, char *err, size_t errlen)
{
    if (cfg->mqtt_password == NULL || cfg->mqtt_username != NULL) {
        return 0;
    }
    if (cfg->mqtt_password_file != NULL) {
        return nt_config__bad(err, errlen, config__key("mqtt.password_file"),
                              cfg->mqtt_password_file, "mqtt.username is not set",
                              "a password needs a user name");
    }
    return nt_config__bad(err, errlen, config__key("mqtt.password"), cfg->mqtt_password,
                          "mqtt.username is not set", "a password needs a user name");
}

/* Re-checks every value (fields may have been assigned directly), then the cross-field
 * rules, derives mqtt host/port/tls, http host/port (port 0 = off) and the default client
 * id, and reads mqtt.password_file into mqtt_password, mqtt.key_password_file into
 * mqtt_key_password and database.password_file into database_password. Safe to call again. Returns
 * 0, NT_ECONFIG or NT_ENOMEM, the first problem found in err. */
int nt_config_validate(nt_config_t *cfg, char *err, size_t errlen)
{
    int rc;
    if ((rc = config__recheck_values(cfg, err, errlen)) != 0 ||
        (rc = config__derive_client_id(cfg, err, errlen)) != 0 ||
        (rc = config__check_mqtt(cfg, err, errlen)) != 0 ||
        (rc = config__check_journal(cfg, err, errlen)) != 0 ||
        (rc = config__check_database(cfg, err, errlen)) != 0 ||
        (rc = config__check_http(cfg, err, errlen)) != 0 ||
        (rc = config__read_password(cfg, err, errlen)) != 0 ||
        (rc = config__read_other_secrets(cfg, err, errlen)) != 0 ||
        (rc = config__check_credentials(cfg, err, errlen)) != 0) {
        return rc;
    }
    return 0;
}
