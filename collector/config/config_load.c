/* config_load.c -- the configuration loaders: the file, the NEEDLETRACE_* environment and the
 * --section-key flags, and nt_config_load() that applies them in order. */
#include "needletrace/config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config_internal.h"
#include "needletrace/common.h"

static const nt_config__key_t *config__find_env(const char *name, size_t len)
{
    char buf[96];
    for (size_t i = 0; i < nt_config__nkeys; i++) {
        nt_config__env_name(&nt_config__keys[i], buf, sizeof(buf));
        if (strlen(buf) == len && memcmp(buf, name, len) == 0) {
            return &nt_config__keys[i];
        }
    }
    return NULL;
}

/* name is the flag without its leading "--" and without any "=value". */
static const nt_config__key_t *config__find_flag(const char *name, size_t len)
{
    char buf[96];
    for (size_t i = 0; i < nt_config__nkeys; i++) {
        nt_config__flag_name(&nt_config__keys[i], buf, sizeof(buf));
        if (strlen(buf + 2) == len && memcmp(buf + 2, name, len) == 0) {
            return &nt_config__keys[i];
        }
    }
    return NULL;
}

static int config__section_known(const char *name, size_t len)
{
    for (size_t i = 0; i < nt_config__nkeys; i++) {
        if (strlen(nt_config__keys[i].section) == len &&
            memcmp(nt_config__keys[i].section, name, len) == 0) {
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

/* A password inside a connection string is accepted from a file only when no one but its owner
 * can read the file (mode & 077 == 0: 0600, 0400). Returns 0 or NT_ECONFIG. */
static int config__file_conninfo(const char *full, const char *value, unsigned mode,
                                 const char *origin, char *err, size_t errlen)
{
    const nt_config__key_t *k = nt_config__find(full);
    if (k == NULL || !(k->flags & NT_CONFIG__CONNINFO) || (mode & 077) == 0 ||
        !nt_config__conninfo_has_password(value)) {
        return 0;
    }
    return nt_config__bad(err, errlen, k, value, origin,
                          "a password in a configuration file is accepted only when no one but "
                          "the file's owner can read it (mode 0600 or 0400; this file has %04o): "
                          "chmod 600 the file, or put the password in " NT_CONFIG__PASSWORD_PLACES,
                          mode & 07777);
}

/* Handles one non-blank, non-comment line of a file of that mode; *section is the current
 * [section]. */
static int config__file_line(nt_config_t *cfg, char *s, char *section, size_t section_len,
                             unsigned mode, const char *origin, char *err, size_t errlen)
{
    char full[160];
    if (*s == '[') {
        char *close = strchr(s, ']');
        if (close == NULL || *config__trim(close + 1) != '\0') {
            nt_config__errf(err, errlen,
                            "syntax error in configuration file (%s): expected [section]", origin);
            return NT_ECONFIG;
        }
        *close = '\0';
        char *name = config__trim(s + 1);
        if (!config__section_known(name, strlen(name)) || strlen(name) >= section_len) {
            nt_config__errf(err, errlen, "unknown configuration section \"%.100s\" (%s)", name,
                            origin);
            return NT_ECONFIG;
        }
        strcpy(section, name);
        return 0;
    }
    char *eq = strchr(s, '=');
    if (eq == NULL) {
        nt_config__errf(err, errlen,
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
        nt_config__errf(err, errlen,
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
        nt_config__errf(err, errlen,
                        "unknown configuration key \"%.100s\" (%s): keys follow a [section] line",
                        key, origin);
        return NT_ECONFIG;
    } else {
        snprintf(full, sizeof(full), "%s.%.100s", section, key);
    }
    if (config__file_conninfo(full, value, mode, origin, err, errlen) != 0) {
        return NT_ECONFIG;
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
    struct stat st;
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        nt_config__errf(err, errlen, "could not open configuration file \"%s\": %s", path,
                        strerror(errno));
        return NT_ECONFIG;
    }
    if (fstat(fileno(f), &st) != 0) {
        nt_config__errf(err, errlen, "could not open configuration file \"%s\": %s", path,
                        strerror(errno));
        fclose(f);
        return NT_ECONFIG;
    }
    for (;;) {
        errno = 0;
        ssize_t n = getline(&line, &cap, f);
        if (n < 0) {
            if (ferror(f)) {
                nt_config__errf(err, errlen, "could not read configuration file \"%s\": %s", path,
                                strerror(errno != 0 ? errno : EIO));
                rc = NT_ECONFIG;
            }
            break;
        }
        lineno++;
        snprintf(origin, sizeof(origin), "%s:%u", path, lineno);
        if ((size_t)n != strlen(line)) {
            nt_config__errf(err, errlen,
                            "syntax error in configuration file (%s): NUL byte in line", origin);
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
        rc = config__file_line(cfg, s, section, sizeof(section), (unsigned)st.st_mode, origin, err,
                               errlen);
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
        if (strncmp(e, NT_CONFIG__ENV_PREFIX, strlen(NT_CONFIG__ENV_PREFIX)) != 0 || eq == NULL) {
            continue;
        }
        size_t n = (size_t)(eq - e);
        if (n == strlen(NT_CONFIG__ENV_FILE) && memcmp(e, NT_CONFIG__ENV_FILE, n) == 0) {
            continue;
        }
        const nt_config__key_t *k = config__find_env(e, n);
        if (k == NULL) {
            nt_config__errf(err, errlen, "unknown configuration key \"%.*s\" (environment)",
                            (int)(n > 100 ? 100 : n), e);
            return NT_ECONFIG;
        }
        nt_config__env_name(k, origin, sizeof(origin));
        int rc = nt_config__set(cfg, k, eq + 1, origin, err, errlen);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

/* ---- the command line ----------------------------------------------------------------------- */

/* Handles argv[*i], an argument starting with "--". *ours becomes 1 when it is --config or a
 * key's flag (consumed, with *i moved past a separate value), 0 when it is left for the
 * command. With apply == 0 only --config is recorded (*path); with apply == 1 only keys are
 * set. Returns 0, NT_ECONFIG (a flag of a known section but no known key, a missing value, a
 * bad value) or NT_ENOMEM. */
static int config__one_flag(nt_config_t *cfg, int argc, char **argv, int *i, const char **path,
                            int apply, int *ours, char *err, size_t errlen)
{
    char origin[96];
    const char *name = argv[*i] + 2;
    const char *eq = strchr(name, '=');
    size_t n = eq != NULL ? (size_t)(eq - name) : strlen(name);
    int is_config = n == 6 && memcmp(name, "config", 6) == 0;
    const nt_config__key_t *k = is_config ? NULL : config__find_flag(name, n);
    *ours = 0;
    if (!is_config && k == NULL) {
        if (config__flag_in_section(name, n)) {
            nt_config__errf(err, errlen, "unknown configuration key \"--%.*s\" (command line)",
                            (int)(n > 100 ? 100 : n), name);
            return NT_ECONFIG;
        }
        return 0;
    }
    *ours = 1;
    const char *value = eq != NULL ? eq + 1 : NULL;
    if (value == NULL) {
        if (*i + 1 >= argc) {
            if (is_config) {
                nt_config__errf(err, errlen, "missing file name after --config");
                return NT_ECONFIG;
            }
            nt_config__flag_name(k, origin, sizeof(origin));
            return nt_config__bad(err, errlen, k, "", origin, "missing value after the flag");
        }
        value = argv[++*i];
    }
    if (is_config) {
        if (value[0] == '\0') {
            nt_config__errf(err, errlen, "missing file name after --config");
            return NT_ECONFIG;
        }
        if (!apply) {
            *path = value;
        }
        return 0;
    }
    if (!apply) {
        return 0;
    }
    nt_config__flag_name(k, origin, sizeof(origin));
    if ((k->flags & NT_CONFIG__CONNINFO) && nt_config__conninfo_has_password(value)) {
        return nt_config__bad(err, errlen, k, value, origin,
                              "a password is not accepted on the command line, where every user "
                              "of the machine can read it; put it in " NT_CONFIG__PASSWORD_PLACES);
    }
    return nt_config__set(cfg, k, value, origin, err, errlen);
}

/* Walks argv for --config and --<section>-<key> flags, up to "--". With apply == 0 it only
 * finds the --config file (*path) and reports malformed flags; with apply == 1 it sets the
 * keys and removes every consumed argument from argv, keeping the others in order. Returns 0,
 * NT_ECONFIG or NT_ENOMEM. */
static int config__scan_argv(nt_config_t *cfg, int *argc, char **argv, const char **path, int apply,
                             char *err, size_t errlen)
{
    int out = 1;
    int i = 1;
    if (argv == NULL || *argc < 1) {
        return 0;
    }
    for (; i < *argc; i++) {
        int ours = 0;
        if (strcmp(argv[i], "--") == 0) {
            break;
        }
        if (strncmp(argv[i], "--", 2) == 0) {
            int rc = config__one_flag(cfg, *argc, argv, &i, path, apply, &ours, err, errlen);
            if (rc != 0) {
                return rc;
            }
        }
        if (!ours && apply) {
            argv[out++] = argv[i];
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

/* See config.h. Flags are --<section>-<key> VALUE or --<section>-<key>=VALUE, and --config
 * FILE (which wins over NEEDLETRACE_CONFIG). Scanning stops at "--". A flag naming a known
 * section but no known key ("--journal-dir-x") is an unknown key; other flags ("--seed")
 * are left for the command. argv[*argc] is NULL afterwards. argc and argv may be NULL.
 * On failure cfg has been freed (calling nt_config_close again is harmless). */
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
        size_t n = strlen(NT_CONFIG__ENV_FILE);
        if (strncmp(*e, NT_CONFIG__ENV_FILE, n) == 0 && (*e)[n] == '=' && (*e)[n + 1] != '\0') {
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
        nt_config_close(cfg);
    }
    return rc;
}
