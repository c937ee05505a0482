/* config.h -- configuration: defaults < INI file < NEEDLETRACE_* environment < command-line flags.
 *
 * Every key lives in a section and is declared once in a table in config.c (key, type,
 * default, offset, help). The same key is set
 *   in the file as        [section]\nkey = value
 *   in the environment as NEEDLETRACE_<SECTION>_<KEY>   (upper case)
 *   on the command line   --<section>-<key> VALUE or --<section>-<key>=VALUE
 *                         (underscores in key become dashes: --journal-max-bytes 2GiB)
 * The file is named by --config FILE or NEEDLETRACE_CONFIG; without either, no file is read.
 * An unknown key (in any of the three) or a bad value is an error that names it.
 * A password inside database.url is refused on the command line (any user can read it there),
 * and in a file that others than its owner may read (mode other than 0600/0400); the
 * environment, database.password_file and libpq's PGPASSFILE / ~/.pgpass are the places. */
#ifndef NEEDLETRACE_CONFIG_H
#define NEEDLETRACE_CONFIG_H

#include <stdint.h>
#include <stdio.h>

typedef struct {
    /* [mqtt] */
    char *mqtt_url;       /* mqtt://host:port | mqtts://host:port; default mqtt://127.0.0.1:1883 */
    char *mqtt_client_id; /* default: needletrace-<collector id> */
    char *mqtt_share_group;   /* NULL = plain subscription */
    char *mqtt_topic;         /* default clinics/+/handpieces/+/telemetry */
    char *mqtt_username;      /* NULL = none */
    char *mqtt_password_file; /* secret read from this file (first line) */
    char *mqtt_password;      /* env NEEDLETRACE_MQTT_PASSWORD only; never from a flag */
    char *mqtt_ca_file;
    char *mqtt_cert_file;
    char *mqtt_key_file;
    char *mqtt_key_password_file;    /* passphrase of an encrypted mqtt_key_file (first line) */
    int64_t mqtt_keepalive_s;        /* default 30, 5..3600 */
    int64_t mqtt_session_expiry_s;   /* MQTT v5 session expiry; default 86400 */
    int64_t mqtt_receive_maximum;    /* default 1000, 1..65535 */
    int64_t mqtt_connect_timeout_ms; /* default 10000 */
    int64_t mqtt_reconnect_min_ms;   /* default 250 */
    int64_t mqtt_reconnect_max_ms;   /* default 30000 */
    /* [collector] */
    char *collector_id; /* default: host name; [A-Za-z0-9._-]{1,64} */
    /* [database] */
    char *database_url; /* libpq conninfo or URI; default postgresql:///needletrace */
    int64_t database_statement_timeout_ms; /* server-side statement_timeout; default 30000, 0 off */
    int64_t database_watchdog_ms; /* no answer this long: cancel, then reconnect; default 120000 */
    int64_t database_connections; /* 1, or 2: the next batch's transaction overlaps a commit */
    char *database_admin_url;     /* migrate's connection (the owner); NULL: database_url */
    int64_t database_allow_privileged; /* 1: run may write as a superuser or the tables' owner */
    char *database_password_file;      /* password read from this file (first line), for libpq */
    /* [journal] */
    char *journal_dir;             /* default /var/lib/needletrace/journal */
    int64_t journal_max_bytes;     /* default 1 GiB; accepts 512MiB, 1GiB, 1048576 */
    int64_t journal_segment_bytes; /* default 64 MiB */
    /* [batch] */
    int64_t batch_max_events;   /* default 5000 */
    int64_t batch_max_bytes;    /* default 1 MiB */
    int64_t batch_max_delay_ms; /* default 10 */
    /* [http] */
    char *http_listen; /* host:port, default 127.0.0.1:9464; "off" disables */
    /* [log] */
    char *log_level;  /* debug|info|warn|error, default info */
    char *log_format; /* json|text, default json */
    /* [audit] */
    char *audit_signing_key_file;    /* Ed25519 key of the periodic digests; NULL: none */
    char *audit_digest_dir;          /* where they are written; NULL: not written */
    char *audit_digest_topic;        /* retained on <topic>/<collector id>; NULL: not published */
    int64_t audit_digest_interval_s; /* default 300 */

    /* Derived by nt_config_validate(): */
    char mqtt_host[256];
    int mqtt_port;
    int mqtt_tls;
    char http_host[64];
    int http_port;
    /* Secrets read by nt_config_validate() from their files: never printed or logged. */
    char *mqtt_key_password; /* from mqtt.key_password_file; NULL: none */
    char *database_password; /* from database.password_file; NULL: none */
} nt_config_t;

/* Fills cfg with the defaults (strings are heap copies owned by cfg). */
void nt_config_init(nt_config_t *cfg);
/* Frees every string; cfg may be re-initialised afterwards. */
void nt_config_close(nt_config_t *cfg);

/* Sets "section.key" (e.g. "journal.max_bytes") from a string. origin is used in the
 * error message ("NEEDLETRACE_JOURNAL_MAX_BYTES", "/etc/needletrace.conf:12", "--journal-dir").
 * Returns 0, or NT_ECONFIG with err = e.g. `invalid value "12x" for journal.max_bytes
 * (NEEDLETRACE_JOURNAL_MAX_BYTES): expected a size such as 1048576, 512MiB or 1GiB`. */
int nt_config_set(nt_config_t *cfg, const char *section_key, const char *value, const char *origin,
                  char *err, size_t errlen);

/* Reads an INI file: [section] lines, key = value lines, # or ; comments, blank lines. */
int nt_config_load_file(nt_config_t *cfg, const char *path, char *err, size_t errlen);

/* Applies every NEEDLETRACE_* variable of envp (NULL-terminated). NEEDLETRACE_CONFIG and
 * NEEDLETRACE_MQTT_PASSWORD are recognised; any other unknown NEEDLETRACE_* is an error. */
int nt_config_load_env(nt_config_t *cfg, char *const *envp, char *err, size_t errlen);

/* The whole sequence for a command: init, --config / NEEDLETRACE_CONFIG file, env, then
 * the --<section>-<key> flags of argv. Consumed flags are removed from argv and *argc is
 * updated (argv[0] and anything else stay, in order, for the command to parse).
 * Then nt_config_validate(). Returns 0 or NT_ECONFIG with a message naming the key. */
int nt_config_load(nt_config_t *cfg, int *argc, char **argv, char *const *envp, char *err,
                   size_t errlen);

/* Checks cross-field rules and fills the derived fields (mqtt host/port/tls, http
 * host/port, client id default). Reads the password files if set (error names them):
 * mqtt.password_file, mqtt.key_password_file, database.password_file. */
int nt_config_validate(nt_config_t *cfg, char *err, size_t errlen);

/* Applies log.level and log.format (validated by nt_config_set) to the process logger. */
void nt_config_setup_log(const nt_config_t *cfg);

/* Prints the effective configuration as INI (secrets shown as "<redacted>"). */
void nt_config_dump(const nt_config_t *cfg, FILE *out);

/* Prints every key with its env name, default and help (for --help). */
void nt_config_help(FILE *out);

/* Parses a byte size: "1048576", "512KiB", "64MiB", "1GiB" (also KB/MB/GB as 1000-based).
 * Returns 0 or NT_EINVAL. */
int nt_config_parse_size(const char *s, int64_t *out);

#endif
