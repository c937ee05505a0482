/* check_config.c -- `needletrace check-config`: load and validate the configuration, check the
 * paths it names. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "needletrace/cmd.h"
#include "needletrace/common.h"
#include "needletrace/config.h"

#define CHECK_CONFIG__USAGE                                                                        \
    "usage: needletrace check-config [--config FILE] [--<section>-<key> VALUE]...\n"               \
    "\n"                                                                                           \
    "Loads the configuration exactly as `needletrace run` would (defaults, the file, the\n"        \
    "NEEDLETRACE_* environment, flags), validates it, checks that the journal directory is\n"      \
    "writable (or can be created) and that the TLS files are readable, then prints the\n"          \
    "effective configuration with secrets redacted.\n"                                             \
    "\n"                                                                                           \
    "Exit status: 0 configuration ok, 2 bad usage or configuration, 1 a path check failed.\n"

static void check_config__usage(FILE *out)
{
    fputs(CHECK_CONFIG__USAGE, out);
}

/* Proves that dir is writable by creating and removing a file in it (or, with subdir set, a
 * directory: dir is then the nearest existing ancestor of the journal directory). Unlike
 * access(2) this also holds for root and on read-only mounts. Returns 0, or NT_EIO after
 * printing the problem to stderr. */
static int check_config__probe(const char *dir, int subdir, const char *journal)
{
    char path[4200];
    int n = snprintf(path, sizeof(path), "%s/.needletrace-check.", dir);
    if (n < 0 || (size_t)n + 7 > sizeof(path)) {
        fprintf(stderr, "needletrace: journal.dir \"%s\" is too long\n", journal);
        return NT_EIO;
    }
    memset(path + n, 'X', 6); /* the template mkdtemp/mkostemp fill in */
    path[n + 6] = '\0';
    if (subdir) {
        if (mkdtemp(path) == NULL) {
            fprintf(stderr,
                    "needletrace: cannot create journal.dir \"%s\": \"%s\" is not writable: %s\n",
                    journal, dir, strerror(errno));
            return NT_EIO;
        }
        rmdir(path);
        return 0;
    }
    int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "needletrace: journal.dir \"%s\" is not writable: %s\n", dir,
                strerror(errno));
        return NT_EIO;
    }
    close(fd);
    unlink(path);
    return 0;
}

/* Checks that dir exists as a writable directory, or that its nearest existing ancestor is
 * a writable directory (so the collector can create it). Prints a line to stdout when the
 * directory does not exist yet. Returns 0, or NT_EIO after printing the problem to stderr. */
static int check_config__journal_dir(const char *dir)
{
    struct stat st;
    char *path = NULL;
    char *slash;
    int rc = NT_EIO;

    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            fprintf(stderr, "needletrace: journal.dir \"%s\" is not a directory\n", dir);
            return NT_EIO;
        }
        return check_config__probe(dir, 0, dir);
    }
    if (errno != ENOENT) {
        fprintf(stderr, "needletrace: could not access journal.dir \"%s\": %s\n", dir,
                strerror(errno));
        return NT_EIO;
    }

    /* Walk up to the nearest ancestor that exists. */
    path = strdup(dir);
    if (path == NULL) {
        fprintf(stderr, "needletrace: could not check journal.dir: out of memory\n");
        return NT_EIO;
    }
    for (;;) {
        size_t n = strlen(path);
        while (n > 1 && path[n - 1] == '/') {
            path[--n] = '\0';
        }
        slash = strrchr(path, '/');
        if (slash == NULL) {
            strcpy(path, ".");
        } else if (slash == path) {
            path[1] = '\0';
        } else {
            *slash = '\0';
        }
        if (stat(path, &st) == 0) {
            break;
        }
        if (errno != ENOENT || strcmp(path, ".") == 0 || strcmp(path, "/") == 0) {
            fprintf(stderr, "needletrace: could not access \"%s\" (parent of journal.dir): %s\n",
                    path, strerror(errno));
            goto done;
        }
    }
    if (!S_ISDIR(st.st_mode)) {
        fprintf(stderr,
                "needletrace: cannot create journal.dir \"%s\": \"%s\" is not a directory\n", dir,
                path);
        goto done;
    }
    if (check_config__probe(path, 1, dir) != 0) {
        goto done;
    }
    printf("# journal.dir \"%s\" does not exist yet; it will be created\n", dir);
    rc = 0;
done:
    free(path);
    return rc;
}

/* Checks that a configured file (NULL: not set) can be opened for reading. Returns 0, or
 * NT_EIO after printing why not to stderr. */
static int check_config__readable(const char *key, const char *path)
{
    if (path == NULL) {
        return 0;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "needletrace: could not open %s \"%s\": %s\n", key, path, strerror(errno));
        return NT_EIO;
    }
    close(fd);
    return 0;
}

/* `needletrace check-config [flags]`: returns 0 when the configuration is valid and its
 * paths usable, 2 on a configuration or usage error, 1 when a path check fails. Prints the
 * effective configuration and "configuration ok" to stdout, problems to stderr. */
int nt_cmd_check_config(int argc, char **argv, char *const *envp)
{
    nt_config_t cfg;
    int failed = 0;
    int rc = nt_cmd_begin(&argc, argv, envp, check_config__usage, &cfg);
    if (rc != NT_CMD_CONTINUE) {
        return rc;
    }
    if (argc > 1) {
        fprintf(stderr, "needletrace: check-config: unexpected argument \"%s\"\n", argv[1]);
        fprintf(stderr, "Try \"needletrace check-config --help\".\n");
        nt_config_close(&cfg);
        return 2;
    }

    nt_config_dump(&cfg, stdout);
    printf("\n");
    failed |= check_config__journal_dir(cfg.journal_dir) != 0;
    failed |= check_config__readable("mqtt.ca_file", cfg.mqtt_ca_file) != 0;
    failed |= check_config__readable("mqtt.cert_file", cfg.mqtt_cert_file) != 0;
    failed |= check_config__readable("mqtt.key_file", cfg.mqtt_key_file) != 0;
    nt_config_close(&cfg);
    if (failed) {
        fflush(stdout);
        fprintf(stderr, "needletrace: configuration is valid, but the checks above failed\n");
        return 1;
    }
    printf("configuration ok\n");
    return 0;
}
