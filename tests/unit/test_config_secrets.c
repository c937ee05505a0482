/* test_config_secrets.c -- unit tests of where the configuration takes secrets from: a password
 * inside database.url (refused on the command line, and in a file others may read),
 * database.password_file and mqtt.key_password_file; no message or dump ever shows a secret. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "needletrace/common.h"
#include "needletrace/config.h"

static char tmpdir[256];
static char errbuf[1024];

static int setup_dir(void **state)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/nt_test_config_secrets.XXXXXX",
             base != NULL && base[0] != '\0' ? base : "/tmp");
    return mkdtemp(tmpdir) != NULL ? 0 : -1;
}

static int teardown_dir(void **state)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes text to tmpdir/name with the given mode and returns the path (one of four slots). */
static const char *write_file(const char *name, const char *text, mode_t mode)
{
    static char paths[4][512];
    static int slot;
    char *path = paths[slot++ % 4];
    snprintf(path, 512, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, mode), 0);
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

/* Loads with argv (NULL-terminated) and envp; returns the status, the message in errbuf. */
static int load(nt_config_t *cfg, char **argv, char *const *envp)
{
    int argc = 0;
    while (argv[argc] != NULL) {
        argc++;
    }
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

/* Where the password belongs, as every refusal says. */
static void assert_names_the_places(const char *msg)
{
    assert_contains(msg, "NEEDLETRACE_DATABASE_URL");
    assert_contains(msg, "database.password_file");
    assert_contains(msg, "PGPASSFILE");
    assert_contains(msg, "~/.pgpass");
}

/* ---- a password inside database.url ------------------------------------------------------- */

static void test_url_password_on_the_command_line(void **state)
{
    nt_config_t cfg;
    static const char *const refused[] = {
        "postgresql://audit:hunter2@db.example/needletrace",
        "host=db user=audit password=hunter2 dbname=needletrace",
        "postgresql://db.example/needletrace?user=audit&password=hunter2",
    };
    for (size_t i = 0; i < NT_ARRAY_SIZE(refused); i++) {
        char *argv[] = {"run", "--database-url", (char *)refused[i], NULL};
        assert_int_equal(load(&cfg, argv, NULL), NT_ECONFIG);
        assert_contains(errbuf, "database.url (--database-url)");
        assert_contains(errbuf, "not accepted on the command line");
        assert_names_the_places(errbuf);
        assert_lacks(errbuf, "hunter2");
        char flag_eq[128];
        snprintf(flag_eq, sizeof(flag_eq), "--database-url=%s", refused[i]);
        char *argv_eq[] = {"run", flag_eq, NULL};
        assert_int_equal(load(&cfg, argv_eq, NULL), NT_ECONFIG);
        assert_lacks(errbuf, "hunter2");
    }
    /* Without a password the flag is fine. */
    char *plain[] = {"run", "--database-url", "postgresql://audit@db.example/needletrace", NULL};
    assert_int_equal(load(&cfg, plain, NULL), 0);
    nt_config_close(&cfg);
    /* The environment is a place for it. */
    char *env[] = {"NEEDLETRACE_DATABASE_URL=postgresql://audit:hunter2@db.example/nt", NULL};
    char *run[] = {"run", NULL};
    assert_int_equal(load(&cfg, run, env), 0);
    char *dump = dump_to_string(&cfg);
    assert_lacks(dump, "hunter2");
    free(dump);
    nt_config_close(&cfg);
}

static void test_url_password_in_a_file(void **state)
{
    nt_config_t cfg;
    const char *text = "[database]\nurl = postgresql://audit:hunter2@db.example/needletrace\n";
    const char *open_file = write_file("open.conf", text, 0644);
    char *argv[] = {"run", "--config", (char *)open_file, NULL};
    assert_int_equal(load(&cfg, argv, NULL), NT_ECONFIG);
    assert_contains(errbuf, "database.url");
    assert_contains(errbuf, "open.conf:2");
    assert_contains(errbuf, "0644");
    assert_contains(errbuf, "chmod 600");
    assert_names_the_places(errbuf);
    assert_lacks(errbuf, "hunter2");

    const char *group = write_file("group.conf", text, 0640);
    char *argv_group[] = {"run", "--config", (char *)group, NULL};
    assert_int_equal(load(&cfg, argv_group, NULL), NT_ECONFIG);
    assert_contains(errbuf, "0640");

    static const mode_t private_modes[] = {0600, 0400};
    for (size_t i = 0; i < NT_ARRAY_SIZE(private_modes); i++) {
        const char *private_file = write_file("private.conf", text, private_modes[i]);
        char *argv_private[] = {"run", "--config", (char *)private_file, NULL};
        assert_int_equal(load(&cfg, argv_private, NULL), 0);
        assert_string_equal(cfg.database_url, "postgresql://audit:hunter2@db.example/needletrace");
        nt_config_close(&cfg);
        assert_int_equal(chmod(private_file, 0600), 0); /* writable again for the next round */
    }

    /* Any mode will do for a URL without a password. */
    const char *no_pw = write_file("nopw.conf", "[database]\nurl = postgresql:///nt\n", 0644);
    char *argv_no_pw[] = {"run", "--config", (char *)no_pw, NULL};
    assert_int_equal(load(&cfg, argv_no_pw, NULL), 0);
    nt_config_close(&cfg);
}

/* A bad value of database.url is never quoted: it may hold a password. */
static void test_url_never_quoted(void **state)
{
    nt_config_t cfg;
    nt_config_init(&cfg);
    assert_int_equal(nt_config_set(&cfg, "database.url", "host=db password=hunter2\x01", "test",
                                   errbuf, sizeof(errbuf)),
                     NT_ECONFIG);
    assert_contains(errbuf, "control characters");
    assert_contains(errbuf, "<redacted>");
    assert_lacks(errbuf, "hunter2");
    nt_config_close(&cfg);
}

/* ---- database.password_file ----------------------------------------------------------------- */

static void test_database_password_file(void **state)
{
    nt_config_t cfg;
    const char *pw = write_file("db-pw", "db-s3cret\nsecond line\n", 0600);
    char *argv[] = {"run",
                    "--database-url",
                    "postgresql://audit@db.example/nt",
                    "--database-password-file",
                    (char *)pw,
                    NULL};
    assert_int_equal(load(&cfg, argv, NULL), 0);
    assert_string_equal(cfg.database_password, "db-s3cret");
    assert_string_equal(cfg.database_password_file, pw);
    assert_int_equal(nt_config_validate(&cfg, errbuf, sizeof(errbuf)), 0); /* idempotent */
    assert_string_equal(cfg.database_password, "db-s3cret");
    char *dump = dump_to_string(&cfg);
    assert_lacks(dump, "db-s3cret");
    assert_contains(dump, "password_file = ");
    free(dump);
    nt_config_close(&cfg);
    assert_null(cfg.database_password);

    /* With a password in the URL too: which one? Refused, quoting neither. */
    char *env[] = {"NEEDLETRACE_DATABASE_URL=postgresql://audit:hunter2@db.example/nt", NULL};
    char *argv_both[] = {"run", "--database-password-file", (char *)pw, NULL};
    assert_int_equal(load(&cfg, argv_both, env), NT_ECONFIG);
    assert_contains(errbuf, "database.password_file (database.url holds a password)");
    assert_contains(errbuf, "set only one of the two");
    assert_lacks(errbuf, "hunter2");
    assert_lacks(errbuf, "db-s3cret");

    char *argv_missing[] = {"run", "--database-password-file", "/nonexistent/db-pw", NULL};
    assert_int_equal(load(&cfg, argv_missing, NULL), NT_ECONFIG);
    assert_contains(errbuf, "\"/nonexistent/db-pw\" for database.password_file");

    const char *empty = write_file("db-pw-empty", "\n", 0600);
    char *argv_empty[] = {"run", "--database-password-file", (char *)empty, NULL};
    assert_int_equal(load(&cfg, argv_empty, NULL), NT_ECONFIG);
    assert_contains(errbuf, "empty");
}

/* ---- mqtt.key_password_file ----------------------------------------------------------------- */

static void test_key_password_file(void **state)
{
    nt_config_t cfg;
    const char *pw = write_file("key-pw", "key-phrase\n", 0600);
    char *argv[] = {"run",       "--mqtt-url",
                    "mqtts://b", "--mqtt-cert-file",
                    "/c.pem",    "--mqtt-key-file",
                    "/k.pem",    "--mqtt-key-password-file",
                    (char *)pw,  NULL};
    assert_int_equal(load(&cfg, argv, NULL), 0);
    assert_string_equal(cfg.mqtt_key_password, "key-phrase");
    char *dump = dump_to_string(&cfg);
    assert_lacks(dump, "key-phrase");
    assert_contains(dump, "key_password_file = ");
    free(dump);
    nt_config_close(&cfg);
    assert_null(cfg.mqtt_key_password);

    char *no_key[] = {"run",      "--mqtt-url", "mqtts://b", "--mqtt-key-password-file",
                      (char *)pw, NULL};
    assert_int_equal(load(&cfg, no_key, NULL), NT_ECONFIG);
    assert_contains(errbuf, "mqtt.key_password_file (mqtt.key_file is not set)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_password_on_the_command_line),
        cmocka_unit_test(test_url_password_in_a_file),
        cmocka_unit_test(test_url_never_quoted),
        cmocka_unit_test(test_database_password_file),
        cmocka_unit_test(test_key_password_file),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
