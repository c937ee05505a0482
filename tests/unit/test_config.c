/* test_config.c -- unit tests of the configuration table, loaders, validation and printing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "needletrace/common.h"
#include "needletrace/config.h"

static char tmpdir[256];
static char errbuf[1024];

static int setup_dir(void **state)
{
    const char *base = getenv("TMPDIR");
    int n = snprintf(tmpdir, sizeof(tmpdir) - 7, "%s/nt_test_config.",
                     base != NULL && base[0] != '\0' ? base : "/tmp");
    if (n < 0 || (size_t)n + 7 > sizeof(tmpdir)) {
        return -1;
    }
    memset(tmpdir + n, 'X', 6); /* the template mkdtemp fills in */
    tmpdir[n + 6] = '\0';
    if (mkdtemp(tmpdir) == NULL) {
        return -1;
    }
    return 0;
}

static int teardown_dir(void **state)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes text to tmpdir/name and returns the path (static buffer, one at a time per slot). */
static const char *write_file(const char *name, const char *text)
{
    static char paths[4][512];
    static int slot;
    char *path = paths[slot++ % 4];
    snprintf(path, 512, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    return path;
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (strstr(haystack, needle) == NULL) {
        fail_msg("\"%s\" does not contain \"%s\"", haystack, needle);
    }
}

static void assert_lacks(const char *haystack, const char *needle)
{
    if (strstr(haystack, needle) != NULL) {
        fail_msg("\"%s\" contains \"%s\"", haystack, needle);
    }
}

/* Sets one key and expects NT_ECONFIG with the key and the value in the message. */
static void expect_bad(const char *key, const char *value)
{
    nt_config_t cfg;
    nt_config_init(&cfg);
    errbuf[0] = '\0';
    int rc = nt_config_set(&cfg, key, value, "test", errbuf, sizeof(errbuf));
    if (rc != NT_ECONFIG) {
        fail_msg("%s = \"%s\" was accepted", key, value);
    }
    assert_contains(errbuf, key);
    assert_contains(errbuf, "(test)");
    assert_contains(errbuf, "invalid value \"");
    nt_config_close(&cfg);
}

static void expect_good(const char *key, const char *value)
{
    nt_config_t cfg;
    nt_config_init(&cfg);
    int rc = nt_config_set(&cfg, key, value, "test", errbuf, sizeof(errbuf));
    if (rc != 0) {
        fail_msg("%s = \"%s\" was refused: %s", key, value, errbuf);
    }
    nt_config_close(&cfg);
}

/* Loads with the given argv and envp; returns the status, the message in errbuf. */
static int load(nt_config_t *cfg, int argc, char **argv, char *const *envp)
{
    errbuf[0] = '\0';
    return nt_config_load(cfg, &argc, argv, envp, errbuf, sizeof(errbuf));
}

static char *dump_to_string(const nt_config_t *cfg)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    nt_config_dump(cfg, f);
    assert_int_equal(fclose(f), 0);
    return buf;
}

/* ---- defaults ------------------------------------------------------------------------------- */

static void test_defaults(void **state)
{
    nt_config_t cfg;
    nt_config_init(&cfg);
    assert_string_equal(cfg.mqtt_url, "mqtt://127.0.0.1:1883");
    assert_null(cfg.mqtt_client_id);
    assert_null(cfg.mqtt_share_group);
    assert_string_equal(cfg.mqtt_topic, "clinics/+/handpieces/+/telemetry");
    assert_null(cfg.mqtt_username);
    assert_null(cfg.mqtt_password_file);
    assert_null(cfg.mqtt_password);
    assert_null(cfg.mqtt_ca_file);
    assert_null(cfg.mqtt_cert_file);
    assert_null(cfg.mqtt_key_file);
    assert_int_equal(cfg.mqtt_keepalive_s, 30);
    assert_int_equal(cfg.mqtt_session_expiry_s, 86400);
    assert_int_equal(cfg.mqtt_reconnect_min_ms, 250);
    assert_int_equal(cfg.mqtt_reconnect_max_ms, 30000);
    assert_string_equal(cfg.database_url, "postgresql:///needletrace");
    assert_int_equal(cfg.database_statement_timeout_ms, 30000);
    assert_int_equal(cfg.database_watchdog_ms, 120000);
    assert_string_equal(cfg.journal_dir, "/var/lib/needletrace/journal");
    assert_int_equal(cfg.journal_max_bytes, INT64_C(1) << 30);
    assert_int_equal(cfg.journal_segment_bytes, INT64_C(64) << 20);
    assert_int_equal(cfg.batch_max_events, 5000);
    assert_int_equal(cfg.batch_max_bytes, 1 << 20);
    assert_int_equal(cfg.batch_max_delay_ms, 10);
    assert_string_equal(cfg.http_listen, "127.0.0.1:9464");
    assert_string_equal(cfg.log_level, "info");
    assert_string_equal(cfg.log_format, "json");

    /* collector.id: the host name reduced to [A-Za-z0-9._-]{1,64}. */
    assert_non_null(cfg.collector_id);
    size_t n = strlen(cfg.collector_id);
    assert_true(n >= 1 && n <= 64);
    assert_int_equal(strspn(cfg.collector_id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                              "0123456789._-"),
                     n);
    char host[256] = "";
    gethostname(host, sizeof(host));
    if (host[0] != '\0' && strlen(host) <= 64 &&
        strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") ==
            strlen(host)) {
        assert_string_equal(cfg.collector_id, host);
    }

    assert_int_equal(nt_config_validate(&cfg, errbuf, sizeof(errbuf)), 0);
    assert_string_equal(cfg.mqtt_host, "127.0.0.1");
    assert_int_equal(cfg.mqtt_port, 1883);
    assert_int_equal(cfg.mqtt_tls, 0);
    assert_string_equal(cfg.http_host, "127.0.0.1");
    assert_int_equal(cfg.http_port, 9464);
    assert_non_null(cfg.mqtt_client_id);
    assert_true(strlen(cfg.mqtt_client_id) <= 64);
    assert_int_equal(strncmp(cfg.mqtt_client_id, "needletrace", 11), 0);
    nt_config_close(&cfg);
    assert_null(cfg.mqtt_url);
    nt_config_close(&cfg); /* twice is harmless */
}

static void test_client_id_from_collector_id(void **state)
{
    nt_config_t cfg;
    char *argv1[] = {"run", "--collector-id", "replica-2", NULL};
    assert_int_equal(load(&cfg, 3, argv1, NULL), 0);
    assert_string_equal(cfg.collector_id, "replica-2");
    assert_string_equal(cfg.mqtt_client_id, "needletrace-replica-2");
    nt_config_close(&cfg);

    char *argv2[] = {"run", "--collector-id=needletrace-eu-1", NULL};
    assert_int_equal(load(&cfg, 2, argv2, NULL), 0);
    assert_string_equal(cfg.mqtt_client_id, "needletrace-eu-1");
    nt_config_close(&cfg);

    /* 64-character ids: the client id stays within 64 and still tells them apart. */
    char a[] = "clinic-server-0123456789-0123456789-0123456789-0123456789-aaaaaa";
    char b[] = "clinic-server-0123456789-0123456789-0123456789-0123456789-bbbbbb";
    char *argv3[] = {"run", "--collector-id", a, NULL};
    char *argv4[] = {"run", "--collector-id", b, NULL};
    char client_a[80];
    assert_int_equal(load(&cfg, 3, argv3, NULL), 0);
    assert_true(strlen(cfg.mqtt_client_id) <= 64);
    assert_int_equal(strncmp(cfg.mqtt_client_id, "needletrace-clinic-server", 25), 0);
    snprintf(client_a, sizeof(client_a), "%s", cfg.mqtt_client_id);
    nt_config_close(&cfg);
    assert_int_equal(load(&cfg, 3, argv4, NULL), 0);
    assert_true(strlen(cfg.mqtt_client_id) <= 64);
    assert_string_not_equal(cfg.mqtt_client_id, client_a);
    nt_config_close(&cfg);

    /* An explicit client id wins. */
    char *argv5[] = {"run", "--mqtt-client-id", "fixed.1", NULL};
    assert_int_equal(load(&cfg, 3, argv5, NULL), 0);
    assert_string_equal(cfg.mqtt_client_id, "fixed.1");
    nt_config_close(&cfg);
}

/* ---- the file ------------------------------------------------------------------------------- */

static void test_file_parsing(void **state)
{
    const char *path = write_file("ok.conf", "\xef\xbb\xbf# a comment\n"
                                             "; another comment\n"
                                             "\n"
                                             "[mqtt]\n"
                                             "url = mqtts://broker.example:8884\n"
                                             "  topic=clinics/c1/handpieces/+/telemetry  \n"
                                             "\tusername\t=\t\"ingest\"\n"
                                             "share_group = 'fleet'\n"
                                             "keepalive_s = 60\r\n"
                                             "[ journal ]\n"
                                             "dir = \" /spool/with space \"\n"
                                             "max_bytes = 2GiB\n"
                                             "[log]\n"
                                             "level = debug\n"
                                             "batch.max_events = 250\n"
                                             "[http]\n"
                                             "listen = off\n"
                                             "[mqtt]\n"
                                             "share_group =\n");
    nt_config_t cfg;
    nt_config_init(&cfg);
    assert_int_equal(nt_config_load_file(&cfg, path, errbuf, sizeof(errbuf)), 0);
    assert_string_equal(cfg.mqtt_url, "mqtts://broker.example:8884");
    assert_string_equal(cfg.mqtt_topic, "clinics/c1/handpieces/+/telemetry");
    assert_string_equal(cfg.mqtt_username, "ingest");
    assert_null(cfg.mqtt_share_group); /* set, then unset by an empty value */
    assert_int_equal(cfg.mqtt_keepalive_s, 60);
    assert_string_equal(cfg.journal_dir, " /spool/with space ");
    assert_int_equal(cfg.journal_max_bytes, INT64_C(2) << 30);
    assert_string_equal(cfg.log_level, "debug");
    assert_int_equal(cfg.batch_max_events, 250);
    assert_int_equal(nt_config_validate(&cfg, errbuf, sizeof(errbuf)), 0);
    assert_string_equal(cfg.mqtt_host, "broker.example");
    assert_int_equal(cfg.mqtt_port, 8884);
    assert_int_equal(cfg.mqtt_tls, 1);
    assert_int_equal(cfg.http_port, 0);
    nt_config_close(&cfg);
}

static void expect_file_error(const char *text, const char *line, const char *needle)
{
    const char *path = write_file("bad.conf", text);
    char where[600];
    nt_config_t cfg;
    nt_config_init(&cfg);
    errbuf[0] = '\0';
    assert_int_equal(nt_config_load_file(&cfg, path, errbuf, sizeof(errbuf)), NT_ECONFIG);
    snprintf(where, sizeof(where), "%s:%s)", path, line);
    assert_contains(errbuf, where);
    assert_contains(errbuf, needle);
    nt_config_close(&cfg);
}

static void test_file_errors(void **state)
{
    expect_file_error("[mqtt]\nurl = mqtt://b\n\n# x\nurll = mqtt://c\n", "5",
                      "unknown configuration key \"mqtt.urll\"");
    expect_file_error("[mqtt]\n[queue]\nx = 1\n", "2", "unknown configuration section \"queue\"");
    expect_file_error("url = mqtt://b\n", "1", "unknown configuration key \"url\"");
    expect_file_error("[journal]\nmax_bytes = 1XB\n", "2",
                      "invalid value \"1XB\" for journal.max_bytes");
    expect_file_error("[journal]\njust some words\n", "2", "syntax error");
    expect_file_error("[journal\n", "1", "syntax error");
    expect_file_error("[log]\n = info\n", "2", "missing key");
    expect_file_error("[mqtt]\nkeepalive_s = 30 # half a minute\n", "2",
                      "invalid value \"30 # half a minute\" for mqtt.keepalive_s");

    nt_config_t cfg;
    nt_config_init(&cfg);
    char missing[600];
    snprintf(missing, sizeof(missing), "%s/does-not-exist.conf", tmpdir);
    assert_int_equal(nt_config_load_file(&cfg, missing, errbuf, sizeof(errbuf)), NT_ECONFIG);
    assert_contains(errbuf, "could not open configuration file");
    assert_contains(errbuf, "does-not-exist.conf");
    nt_config_close(&cfg);
}

/* ---- unknown keys in each source ------------------------------------------------------------ */

static void test_unknown_keys(void **state)
{
    nt_config_t cfg;
    nt_config_init(&cfg);
    assert_int_equal(nt_config_set(&cfg, "mqtt.nope", "1", "x.conf:3", errbuf, sizeof(errbuf)),
                     NT_ECONFIG);
    assert_string_equal(errbuf, "unknown configuration key \"mqtt.nope\" (x.conf:3)");
    assert_int_equal(nt_config_set(&cfg, "url", "1", "test", errbuf, sizeof(errbuf)), NT_ECONFIG);

    char *env[] = {"HOME=/root", "NEEDLETRACE_MQTT_URLL=mqtt://x", NULL};
    assert_int_equal(nt_config_load_env(&cfg, env, errbuf, sizeof(errbuf)), NT_ECONFIG);
    assert_contains(errbuf, "unknown configuration key \"NEEDLETRACE_MQTT_URLL\"");
    nt_config_close(&cfg);

    /* Via nt_config_load the same errors come out, and cfg is left with nothing to free. */
    char *argv[] = {"run", NULL};
    assert_int_equal(load(&cfg, 1, argv, env), NT_ECONFIG);
    assert_contains(errbuf, "NEEDLETRACE_MQTT_URLL");

    char *argv2[] = {"run", "--journal-max-byte", "1GiB", NULL};
    assert_int_equal(load(&cfg, 3, argv2, NULL), NT_ECONFIG);
    assert_contains(errbuf, "unknown configuration key \"--journal-max-byte\"");
    char *argv3[] = {"run", "--mqtt-urll=mqtt://x", NULL};
    assert_int_equal(load(&cfg, 2, argv3, NULL), NT_ECONFIG);
    assert_contains(errbuf, "\"--mqtt-urll\"");
}

static void test_env(void **state)
{
    char *env[] = {"PATH=/bin",
                   "NEEDLETRACE_CONFIG=/nonexistent/ignored/by/load_env",
                   "NEEDLETRACE_MQTT_URL=mqtts://[2001:db8::1]",
                   "NEEDLETRACE_MQTT_CLIENT_ID=pen-collector",
                   "NEEDLETRACE_COLLECTOR_ID=site-7",
                   "NEEDLETRACE_JOURNAL_MAX_BYTES=512MiB",
                   "NEEDLETRACE_BATCH_MAX_DELAY_MS=0",
                   "NEEDLETRACE_LOG_FORMAT=text",
                   "needletrace_lower_case=ignored",
                   NULL};
    nt_config_t cfg;
    nt_config_init(&cfg);
    assert_int_equal(nt_config_load_env(&cfg, env, errbuf, sizeof(errbuf)), 0);
    assert_string_equal(cfg.mqtt_client_id, "pen-collector");
    assert_string_equal(cfg.collector_id, "site-7");
    assert_int_equal(cfg.journal_max_bytes, INT64_C(512) << 20);
    assert_int_equal(cfg.batch_max_delay_ms, 0);
    assert_string_equal(cfg.log_format, "text");
    assert_int_equal(nt_config_validate(&cfg, errbuf, sizeof(errbuf)), 0);
    assert_string_equal(cfg.mqtt_host, "2001:db8::1");
    assert_int_equal(cfg.mqtt_port, 8883);
    assert_int_equal(cfg.mqtt_tls, 1);

    char *bad[] = {"NEEDLETRACE_MQTT_KEEPALIVE_S=forever", NULL};
    assert_int_equal(nt_config_load_env(&cfg, bad, errbuf, sizeof(errbuf)), NT_ECONFIG);
    assert_string_equal(errbuf, "invalid value \"forever\" for mqtt.keepalive_s "
                                "(NEEDLETRACE_MQTT_KEEPALIVE_S): expected an integer from 5 "
                                "to 3600");
    nt_config_close(&cfg);
}

/* ---- bad values ----------------------------------------------------------------------------- */

static void test_bad_values(void **state)
{
    expect_bad("mqtt.keepalive_s", "abc");
    expect_bad("mqtt.keepalive_s", "4");
    expect_bad("mqtt.keepalive_s", "3601");
    expect_bad("mqtt.keepalive_s", "30s");
    expect_bad("mqtt.keepalive_s", "");
    expect_bad("mqtt.keepalive_s", " 30");
    expect_bad("mqtt.keepalive_s", "99999999999999999999999");
    expect_good("mqtt.keepalive_s", "5");
    expect_good("mqtt.keepalive_s", "3600");
    expect_bad("mqtt.session_expiry_s", "-1");
    expect_bad("mqtt.session_expiry_s", "4294967296");
    expect_good("mqtt.session_expiry_s", "0");
    expect_good("mqtt.session_expiry_s", "4294967295");
    expect_bad("batch.max_events", "0");
    expect_bad("batch.max_events", "100001");
    expect_good("batch.max_events", "1");
    expect_good("batch.max_events", "100000");
    expect_bad("batch.max_bytes", "4095");
    expect_good("batch.max_bytes", "4KiB");
    expect_good("batch.max_bytes", "64MiB");
    expect_bad("batch.max_bytes", "67108865");
    expect_bad("batch.max_delay_ms", "10001");
    expect_bad("batch.max_delay_ms", "-1");
    expect_good("batch.max_delay_ms", "10000");
    expect_bad("journal.max_bytes", "1XB");
    expect_bad("journal.max_bytes", "-1");
    expect_bad("journal.max_bytes", "1KiB");
    expect_bad("journal.segment_bytes", "2GiB");
    expect_bad("log.level", "verbose");
    expect_bad("log.level", "");
    expect_good("log.level", "warning");
    expect_good("log.level", "ERROR");
    expect_bad("log.format", "xml");
    expect_good("log.format", "text");
    expect_bad("collector.id", "clinic 7");
    expect_bad("collector.id", "clinic/7");
    expect_bad("collector.id",
               "a1234567890123456789012345678901234567890123456789012345678901234"); /* 65 */
    expect_good("collector.id", "a123456789012345678901234567890123456789012345678901234567890123");
    expect_bad("mqtt.client_id", "with space");
    expect_bad("mqtt.share_group", "a/b");
    expect_bad("mqtt.topic", "");
    expect_bad("mqtt.topic", "clinics/a+/x");
    expect_bad("mqtt.topic", "clinics/#/x");
    expect_bad("mqtt.topic", "$share/g/clinics/#");
    expect_good("mqtt.topic", "clinics/#");
    expect_good("mqtt.topic", "#");
    expect_bad("journal.dir", "");
    expect_bad("database.url", "");
    expect_bad("journal.dir", "/var/lib/x\nbad");
    expect_bad("http.listen", "9464");
    expect_bad("http.listen", "localhost");
    expect_bad("http.listen", "1.2.3.4:0");
    expect_bad("http.listen", "1.2.3.4:65536");
    expect_bad("http.listen", "metrics.example:9464");
    expect_bad("http.listen", "::1:9464");
    expect_good("http.listen", "[::1]:9464");
    expect_good("http.listen", "*:9464");
    expect_good("http.listen", "localhost:9464");
    expect_good("http.listen", "OFF");

    /* The message has the exact shape: invalid value "X" for KEY (ORIGIN): WHY. */
    nt_config_t cfg;
    nt_config_init(&cfg);
    assert_int_equal(nt_config_set(&cfg, "journal.max_bytes", "12x",
                                   "NEEDLETRACE_JOURNAL_MAX_BYTES", errbuf, sizeof(errbuf)),
                     NT_ECONFIG);
    assert_string_equal(errbuf, "invalid value \"12x\" for journal.max_bytes "
                                "(NEEDLETRACE_JOURNAL_MAX_BYTES): expected a size such as "
                                "1048576, 512MiB or 1GiB");
    /* A refused value leaves the old one in place. */
    assert_int_equal(cfg.journal_max_bytes, INT64_C(1) << 30);
    nt_config_close(&cfg);
}

/* ---- precedence ----------------------------------------------------------------------------- */

static void test_precedence(void **state)
{
    const char *path = write_file("prec.conf", "[mqtt]\n"
                                               "url = mqtt://from-file\n"
                                               "keepalive_s = 10\n"
                                               "[log]\n"
                                               "level = debug\n"
                                               "format = text\n"
                                               "[journal]\n"
                                               "dir = /file/journal\n");
    char envcfg[600];
    snprintf(envcfg, sizeof(envcfg), "NEEDLETRACE_CONFIG=%s", path);
    char *env[] = {envcfg, "NEEDLETRACE_MQTT_URL=mqtt://from-env",
                   "NEEDLETRACE_MQTT_KEEPALIVE_S=20", "NEEDLETRACE_LOG_LEVEL=warn", NULL};
    char *argv[] = {"run", "--mqtt-url", "mqtt://from-flag:1999", "--log-level=error", NULL};
    nt_config_t cfg;
    assert_int_equal(load(&cfg, 4, argv, env), 0);
    assert_string_equal(cfg.mqtt_url, "mqtt://from-flag:1999"); /* flag > env > file */
    assert_string_equal(cfg.mqtt_host, "from-flag");
    assert_int_equal(cfg.mqtt_port, 1999);
    assert_int_equal(cfg.mqtt_keepalive_s, 20);                         /* env > file */
    assert_string_equal(cfg.log_level, "error");                        /* flag > env > file */
    assert_string_equal(cfg.log_format, "text");                        /* file > default */
    assert_string_equal(cfg.journal_dir, "/file/journal");              /* file > default */
    assert_string_equal(cfg.database_url, "postgresql:///needletrace"); /* default */
    nt_config_close(&cfg);

    /* --config wins over NEEDLETRACE_CONFIG. */
    const char *other = write_file("other.conf", "[journal]\ndir = /other/journal\n");
    char *argv2[] = {"run", "--config", (char *)other, NULL};
    assert_int_equal(load(&cfg, 3, argv2, env), 0);
    assert_string_equal(cfg.journal_dir, "/other/journal");
    assert_string_equal(cfg.mqtt_url, "mqtt://from-env");
    nt_config_close(&cfg);

    /* A missing file named by --config is an error naming it. */
    char *argv3[] = {"run", "--config=/nonexistent/needletrace.conf", NULL};
    assert_int_equal(load(&cfg, 2, argv3, NULL), NT_ECONFIG);
    assert_contains(errbuf, "/nonexistent/needletrace.conf");
    char *argv4[] = {"run", "--config", NULL};
    assert_int_equal(load(&cfg, 2, argv4, NULL), NT_ECONFIG);
    assert_contains(errbuf, "--config");
    char *argv5[] = {"run", "--journal-dir", NULL};
    assert_int_equal(load(&cfg, 2, argv5, NULL), NT_ECONFIG);
    assert_contains(errbuf, "journal.dir (--journal-dir)");
}

/* ---- sizes ---------------------------------------------------------------------------------- */

static void test_parse_size(void **state)
{
    static const struct {
        const char *in;
        int64_t out;
    } good[] = {
        {"0", 0},
        {"1048576", 1048576},
        {"512KiB", 512 * 1024},
        {"64MiB", INT64_C(64) << 20},
        {"1GiB", INT64_C(1) << 30},
        {"2TiB", INT64_C(2) << 40},
        {"1KB", 1000},
        {"5MB", 5000000},
        {"1GB", 1000000000},
        {"100B", 100},
        {"64 MiB", INT64_C(64) << 20},
        {"1gib", INT64_C(1) << 30},
        {"9223372036854775807", INT64_MAX},
        {"8589934591GiB", INT64_C(8589934591) << 30},
    };
    static const char *const bad[] = {
        "",
        "1XB",
        "-1",
        "+1",
        " 1",
        "1.5GiB",
        "GiB",
        "1 ",
        "1GiBx",
        "0x10",
        "1KiBB",
        "9223372036854775808",
        "99999999999999999999",
        "8589934592GiB",
        "9000000000000TB",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        int64_t v = -1;
        if (nt_config_parse_size(good[i].in, &v) != 0) {
            fail_msg("\"%s\" was refused", good[i].in);
        }
        assert_int_equal(v, good[i].out);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t v = 42;
        if (nt_config_parse_size(bad[i], &v) != NT_EINVAL) {
            fail_msg("\"%s\" was accepted", bad[i]);
        }
        assert_int_equal(v, 42);
    }
}

/* ---- URLs and cross-field rules ------------------------------------------------------------- */

static void expect_url(const char *url, const char *host, int port, int tls)
{
    nt_config_t cfg;
    nt_config_init(&cfg);
    if (nt_config_set(&cfg, "mqtt.url", url, "test", errbuf, sizeof(errbuf)) != 0) {
        fail_msg("%s refused: %s", url, errbuf);
    }
    assert_int_equal(nt_config_validate(&cfg, errbuf, sizeof(errbuf)), 0);
    assert_string_equal(cfg.mqtt_host, host);
    assert_int_equal(cfg.mqtt_port, port);
    assert_int_equal(cfg.mqtt_tls, tls);
    nt_config_close(&cfg);
}

static void test_urls(void **state)
{
    expect_url("mqtt://broker", "broker", 1883, 0);
    expect_url("mqtts://broker", "broker", 8883, 1);
    expect_url("mqtt://10.0.0.5:1234", "10.0.0.5", 1234, 0);
    expect_url("mqtts://broker.example.org:443/", "broker.example.org", 443, 1);
    expect_url("MQTT://Broker_1", "Broker_1", 1883, 0);
    expect_url("mqtt://[::1]", "::1", 1883, 0);
    expect_url("mqtts://[fe80::1]:8884", "fe80::1", 8884, 1);
    expect_url("mqtt://b:65535", "b", 65535, 0);

    expect_bad("mqtt.url", "http://broker:1883");
    expect_bad("mqtt.url", "broker:1883");
    expect_bad("mqtt.url", "tcp://broker");
    expect_bad("mqtt.url", "mqtt://");
    expect_bad("mqtt.url", "mqtt://:1883");
    expect_bad("mqtt.url", "mqtt://broker:0");
    expect_bad("mqtt.url", "mqtt://broker:65536");
    expect_bad("mqtt.url", "mqtt://broker:12x");
    expect_bad("mqtt.url", "mqtt://broker:");
    expect_bad("mqtt.url", "mqtt://broker/telemetry");
    expect_bad("mqtt.url", "mqtt://user:pw@broker");
    expect_bad("mqtt.url", "mqtt://[::1");
    expect_bad("mqtt.url", "mqtt://[not-v6]:1883");
    expect_bad("mqtt.url", "mqtt://bro ker");
    expect_bad("mqtt.url", "");

    nt_config_t cfg;
    nt_config_init(&cfg);
    assert_int_equal(nt_config_set(&cfg, "mqtt.url", "mqtt://b:1x", "NEEDLETRACE_MQTT_URL", errbuf,
                                   sizeof(errbuf)),
                     NT_ECONFIG);
    assert_string_equal(errbuf,
                        "invalid value \"mqtt://b:1x\" for mqtt.url (NEEDLETRACE_MQTT_URL): "
                        "the port must be a number from 1 to 65535");
    nt_config_close(&cfg);
}

static void test_cross_field(void **state)
{
    nt_config_t cfg;

    char *tls_plain[] = {"run", "--mqtt-ca-file", "/ca.pem", NULL};
    assert_int_equal(load(&cfg, 3, tls_plain, NULL), NT_ECONFIG);
    assert_contains(errbuf, "for mqtt.url (mqtt.ca_file is set)");
    assert_contains(errbuf, "mqtts://");

    char *cert_only[] = {"run", "--mqtt-url", "mqtts://b", "--mqtt-cert-file", "/c.pem", NULL};
    assert_int_equal(load(&cfg, 5, cert_only, NULL), NT_ECONFIG);
    assert_contains(errbuf, "for mqtt.cert_file (mqtt.key_file is not set)");

    char *key_only[] = {"run", "--mqtt-url", "mqtts://b", "--mqtt-key-file", "/k.pem", NULL};
    assert_int_equal(load(&cfg, 5, key_only, NULL), NT_ECONFIG);
    assert_contains(errbuf, "mqtt.key_file");

    char *mtls[] = {"run",       "--mqtt-url",
                    "mqtts://b", "--mqtt-cert-file",
                    "/c.pem",    "--mqtt-key-file",
                    "/k.pem",    "--mqtt-ca-file",
                    "/ca.pem",   NULL};
    assert_int_equal(load(&cfg, 9, mtls, NULL), 0);
    assert_int_equal(cfg.mqtt_tls, 1);
    nt_config_close(&cfg);

    char *backoff[] = {"run", "--mqtt-reconnect-min-ms", "5000", "--mqtt-reconnect-max-ms", "1000",
                       NULL};
    assert_int_equal(load(&cfg, 5, backoff, NULL), NT_ECONFIG);
    assert_contains(errbuf, "mqtt.reconnect_min_ms");

    /* The journal bound needs room for two segments (the newest is never deleted). */
    char *small_journal[] = {"run", "--journal-max-bytes", "32MiB", NULL};
    assert_int_equal(load(&cfg, 3, small_journal, NULL), NT_ECONFIG);
    assert_contains(errbuf, "journal.max_bytes");
    assert_contains(errbuf, "twice journal.segment_bytes");
    char *journal_ok[] = {"run", "--journal-max-bytes", "32MiB", "--journal-segment-bytes", "16MiB",
                          NULL};
    assert_int_equal(load(&cfg, 5, journal_ok, NULL), 0);
    nt_config_close(&cfg);

    /* The watchdog leaves the server's statement timeout room to fire first; 0 turns it off. */
    char *watchdog[] = {"run", "--database-watchdog-ms", "30000", NULL};
    assert_int_equal(load(&cfg, 3, watchdog, NULL), NT_ECONFIG);
    assert_contains(errbuf, "for database.watchdog_ms (database.statement_timeout_ms is 30000)");
    assert_contains(errbuf, "must exceed database.statement_timeout_ms");
    char *no_timeout[] = {
        "run", "--database-watchdog-ms", "3000", "--database-statement-timeout-ms", "0", NULL};
    assert_int_equal(load(&cfg, 5, no_timeout, NULL), 0);
    assert_int_equal(cfg.database_statement_timeout_ms, 0);
    assert_int_equal(cfg.database_watchdog_ms, 3000);
    nt_config_close(&cfg);

    /* A connection string libpq cannot parse is refused at once, and not quoted. */
    char *bad_url[] = {"run", "--database-url", "host='open password=s3cret", NULL};
    assert_int_equal(load(&cfg, 3, bad_url, NULL), NT_ECONFIG);
    assert_contains(errbuf, "database.url");
    assert_contains(errbuf, "not a valid libpq connection string or URI");
    assert_null(strstr(errbuf, "s3cret"));

    char *listen[] = {"run", "--http-listen", "[::]:9100", NULL};
    assert_int_equal(load(&cfg, 3, listen, NULL), 0);
    assert_string_equal(cfg.http_host, "::");
    assert_int_equal(cfg.http_port, 9100);
    nt_config_close(&cfg);

    char *listen_any[] = {"run", "--http-listen", ":9100", NULL};
    assert_int_equal(load(&cfg, 3, listen_any, NULL), 0);
    assert_string_equal(cfg.http_host, "0.0.0.0");
    nt_config_close(&cfg);

    /* Direct assignments are checked again by nt_config_validate. */
    nt_config_init(&cfg);
    free(cfg.journal_dir);
    cfg.journal_dir = NULL;
    assert_int_equal(nt_config_validate(&cfg, errbuf, sizeof(errbuf)), NT_ECONFIG);
    assert_contains(errbuf, "journal.dir");
    nt_config_close(&cfg);
    nt_config_init(&cfg);
    cfg.batch_max_events = 0;
    assert_int_equal(nt_config_validate(&cfg, errbuf, sizeof(errbuf)), NT_ECONFIG);
    assert_contains(errbuf, "batch.max_events");
    nt_config_close(&cfg);
}

/* ---- passwords ------------------------------------------------------------------------------ */

static void test_password(void **state)
{
    nt_config_t cfg;
    const char *pwfile = write_file("pw", "s3cret-pw\nsecond line\n");
    char *argv[] = {"run", "--mqtt-username", "ingest", "--mqtt-password-file", (char *)pwfile,
                    NULL};
    assert_int_equal(load(&cfg, 5, argv, NULL), 0);
    assert_string_equal(cfg.mqtt_password, "s3cret-pw");
    assert_int_equal(nt_config_validate(&cfg, errbuf, sizeof(errbuf)), 0); /* idempotent */
    char *dump = dump_to_string(&cfg);
    assert_lacks(dump, "s3cret-pw");
    assert_contains(dump, "<redacted>");
    free(dump);
    nt_config_close(&cfg);

    const char *crlf = write_file("pw-crlf", "crlf-pw\r\n");
    char *argv_crlf[] = {"run", "--mqtt-username", "u", "--mqtt-password-file", (char *)crlf, NULL};
    assert_int_equal(load(&cfg, 5, argv_crlf, NULL), 0);
    assert_string_equal(cfg.mqtt_password, "crlf-pw");
    nt_config_close(&cfg);

    const char *empty = write_file("pw-empty", "\nsecret on line two\n");
    char *argv_empty[] = {"run", "--mqtt-username", "u", "--mqtt-password-file", (char *)empty,
                          NULL};
    assert_int_equal(load(&cfg, 5, argv_empty, NULL), NT_ECONFIG);
    assert_contains(errbuf, "mqtt.password_file");
    assert_contains(errbuf, empty);
    assert_contains(errbuf, "empty");

    char *argv_missing[] = {
        "run", "--mqtt-username", "u", "--mqtt-password-file", "/nonexistent/pw", NULL};
    assert_int_equal(load(&cfg, 5, argv_missing, NULL), NT_ECONFIG);
    assert_contains(errbuf, "\"/nonexistent/pw\" for mqtt.password_file");

    /* From the environment. */
    char *env[] = {"NEEDLETRACE_MQTT_USERNAME=ingest", "NEEDLETRACE_MQTT_PASSWORD=env-pw", NULL};
    char *plain[] = {"run", NULL};
    assert_int_equal(load(&cfg, 1, plain, env), 0);
    assert_string_equal(cfg.mqtt_password, "env-pw");
    nt_config_close(&cfg);

    /* A password needs a user name. */
    char *env_nouser[] = {"NEEDLETRACE_MQTT_PASSWORD=env-pw", NULL};
    assert_int_equal(load(&cfg, 1, plain, env_nouser), NT_ECONFIG);
    assert_contains(errbuf, "mqtt.username is not set");
    assert_lacks(errbuf, "env-pw");

    /* Environment and file disagreeing is ambiguous. (argv above was compacted: a new one.) */
    char *argv_both[] = {"run", "--mqtt-username", "ingest", "--mqtt-password-file", (char *)pwfile,
                         NULL};
    assert_int_equal(load(&cfg, 5, argv_both, env), NT_ECONFIG);
    assert_contains(errbuf, "mqtt.password_file is also set");
    assert_lacks(errbuf, "env-pw");

    /* Refused as a flag and in the file, without echoing the secret. */
    char *flag[] = {"run", "--mqtt-password", "flag-pw", NULL};
    assert_int_equal(load(&cfg, 3, flag, NULL), NT_ECONFIG);
    assert_contains(errbuf, "mqtt.password (--mqtt-password)");
    assert_contains(errbuf, "NEEDLETRACE_MQTT_PASSWORD");
    assert_contains(errbuf, "password_file");
    assert_lacks(errbuf, "flag-pw");
    char *flag_eq[] = {"run", "--mqtt-password=flag-pw", NULL};
    assert_int_equal(load(&cfg, 2, flag_eq, NULL), NT_ECONFIG);
    assert_lacks(errbuf, "flag-pw");

    const char *conf = write_file("pw.conf", "[mqtt]\nusername = u\npassword = file-pw\n");
    nt_config_init(&cfg);
    assert_int_equal(nt_config_load_file(&cfg, conf, errbuf, sizeof(errbuf)), NT_ECONFIG);
    assert_contains(errbuf, "mqtt.password");
    assert_contains(errbuf, ":3)");
    assert_contains(errbuf, "NEEDLETRACE_MQTT_PASSWORD");
    assert_lacks(errbuf, "file-pw");
    assert_null(cfg.mqtt_password);
    nt_config_close(&cfg);
}

/* ---- argv ----------------------------------------------------------------------------------- */

static void test_argv_compaction(void **state)
{
    char *argv[] = {"simulate",
                    "--clinics",
                    "3",
                    "--mqtt-url",
                    "mqtt://b:1",
                    "positional",
                    "--journal-dir=/tmp/j",
                    "--seed=9",
                    "-v",
                    "--log-level",
                    "debug",
                    "--",
                    "--mqtt-url",
                    "after-dashes",
                    NULL};
    int argc = 14;
    nt_config_t cfg;
    assert_int_equal(nt_config_load(&cfg, &argc, argv, NULL, errbuf, sizeof(errbuf)), 0);
    static const char *const want[] = {"simulate",   "--clinics",  "3",
                                       "positional", "--seed=9",   "-v",
                                       "--",         "--mqtt-url", "after-dashes"};
    assert_int_equal(argc, 9);
    for (int i = 0; i < argc; i++) {
        assert_string_equal(argv[i], want[i]);
    }
    assert_null(argv[argc]);
    assert_string_equal(cfg.mqtt_url, "mqtt://b:1");
    assert_string_equal(cfg.journal_dir, "/tmp/j");
    assert_string_equal(cfg.log_level, "debug");
    nt_config_close(&cfg);

    /* Nothing to consume: argv is untouched. */
    char *argv2[] = {"check-config", NULL};
    argc = 1;
    assert_int_equal(nt_config_load(&cfg, &argc, argv2, NULL, errbuf, sizeof(errbuf)), 0);
    assert_int_equal(argc, 1);
    assert_string_equal(argv2[0], "check-config");
    nt_config_close(&cfg);

    /* No argv at all. */
    assert_int_equal(nt_config_load(&cfg, NULL, NULL, NULL, errbuf, sizeof(errbuf)), 0);
    nt_config_close(&cfg);
}

/* ---- printing ------------------------------------------------------------------------------- */

static void test_dump_round_trip(void **state)
{
    char *argv[] = {"run",       "--mqtt-url",          "mqtts://broker:8884", "--mqtt-share-group",
                    "fleet",     "--mqtt-ca-file",      "/etc/ssl/ca.pem",     "--journal-dir",
                    " /padded ", "--journal-max-bytes", "300000000",           NULL};
    /* A password in the URL: from the environment (refused as a flag). */
    char *env[] = {"NEEDLETRACE_DATABASE_URL="
                   "postgresql://audit:hunter2@db.example:5432/needletrace?sslmode=require",
                   NULL};
    nt_config_t cfg;
    assert_int_equal(load(&cfg, 11, argv, env), 0);
    char *dump = dump_to_string(&cfg);
    assert_contains(dump, "[mqtt]\n");
    assert_contains(dump, "url = mqtts://broker:8884\n");
    assert_contains(dump, "max_bytes = 300000000\n");
    assert_contains(dump, "segment_bytes = 64MiB\n");
    assert_contains(dump,
                    "postgresql://audit:<redacted>@db.example:5432/needletrace?sslmode=require");
    assert_lacks(dump, "hunter2");
    assert_contains(dump, "# username is not set");

    /* The dump is itself a valid configuration file giving the same values (readable by its
     * owner alone: it holds a URL with a (redacted) password). */
    const char *path = write_file("dump.conf", dump);
    assert_int_equal(chmod(path, 0600), 0);
    nt_config_t again;
    nt_config_init(&again);
    assert_int_equal(nt_config_load_file(&again, path, errbuf, sizeof(errbuf)), 0);
    assert_string_equal(again.mqtt_url, cfg.mqtt_url);
    assert_string_equal(again.mqtt_share_group, cfg.mqtt_share_group);
    assert_string_equal(again.mqtt_client_id, cfg.mqtt_client_id);
    assert_string_equal(again.collector_id, cfg.collector_id);
    assert_string_equal(again.journal_dir, " /padded ");
    assert_int_equal(again.journal_max_bytes, 300000000);
    assert_int_equal(again.journal_segment_bytes, cfg.journal_segment_bytes);
    assert_null(again.mqtt_username);
    nt_config_close(&again);
    free(dump);
    nt_config_close(&cfg);

    /* Keyword conninfo: the password value is redacted, quoted or not. */
    static const struct {
        const char *in;
        const char *secret;
        const char *kept;
    } conninfo[] = {
        {"host=db user=u password=hunter2 dbname=n", "hunter2", "dbname=n"},
        {"host=db password = 'hun ter\\'2' dbname=n", "hun ter", "dbname=n"},
        {"postgresql://db/n?user=u&password=hunter2&sslmode=require", "hunter2",
         "&sslmode=require"},
    };
    for (size_t i = 0; i < sizeof(conninfo) / sizeof(conninfo[0]); i++) {
        nt_config_init(&cfg);
        assert_int_equal(
            nt_config_set(&cfg, "database.url", conninfo[i].in, "test", errbuf, sizeof(errbuf)), 0);
        dump = dump_to_string(&cfg);
        assert_lacks(dump, conninfo[i].secret);
        assert_contains(dump, "password");
        assert_contains(dump, conninfo[i].kept);
        free(dump);
        nt_config_close(&cfg);
    }
}

static void test_help(void **state)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    nt_config_help(f);
    assert_int_equal(fclose(f), 0);
    static const char *const keys[] = {
        "mqtt.url",
        "mqtt.client_id",
        "mqtt.share_group",
        "mqtt.topic",
        "mqtt.username",
        "mqtt.password_file",
        "mqtt.password",
        "mqtt.ca_file",
        "mqtt.cert_file",
        "mqtt.key_file",
        "mqtt.keepalive_s",
        "mqtt.session_expiry_s",
        "mqtt.reconnect_min_ms",
        "mqtt.reconnect_max_ms",
        "collector.id",
        "database.url",
        "database.statement_timeout_ms",
        "database.watchdog_ms",
        "journal.dir",
        "journal.max_bytes",
        "journal.segment_bytes",
        "batch.max_events",
        "batch.max_bytes",
        "batch.max_delay_ms",
        "http.listen",
        "log.level",
        "log.format",
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        char line[64];
        snprintf(line, sizeof(line), "\n  %s\n", keys[i]);
        assert_contains(buf, line);
    }
    assert_contains(buf, "NEEDLETRACE_JOURNAL_MAX_BYTES, flag --journal-max-bytes");
    assert_contains(buf, "NEEDLETRACE_MQTT_CLIENT_ID");
    assert_contains(buf, "NEEDLETRACE_COLLECTOR_ID");
    assert_contains(buf, "NEEDLETRACE_MQTT_PASSWORD (environment only)");
    assert_lacks(buf, "--mqtt-password\n");
    assert_contains(buf, "default: 1GiB");
    assert_contains(buf, "default: mqtt://127.0.0.1:1883");
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_client_id_from_collector_id),
        cmocka_unit_test(test_file_parsing),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_urls),
        cmocka_unit_test(test_cross_field),
        cmocka_unit_test(test_password),
        cmocka_unit_test(test_argv_compaction),
        cmocka_unit_test(test_dump_round_trip),
        cmocka_unit_test(test_help),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
