/* config_print.c -- the configuration printed: the effective values as a loadable file
 * (secrets redacted) and every key's documentation for --help. */
#include "needletrace/config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config_internal.h"
#include "needletrace/common.h"

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
            o += (size_t)snprintf(out + o, outlen - o, NT_CONFIG__REDACTED);
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
                o += (size_t)snprintf(out + o, outlen - o, "%.*s" NT_CONFIG__REDACTED, (int)(q - p),
                                      p);
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
 * password inside database.url or database.admin_url as <redacted>. The secrets read from files
 * (database and key passwords) are not keys: never printed. */
void nt_config_dump(const nt_config_t *cfg, FILE *out)
{
    const char *section = "";
    fprintf(out, "# needletrace effective configuration\n");
    for (size_t i = 0; i < nt_config__nkeys; i++) {
        const nt_config__key_t *k = &nt_config__keys[i];
        if (strcmp(section, k->section) != 0) {
            section = k->section;
            fprintf(out, "\n[%s]\n", section);
        }
        if (k->type != NT_CONFIG__STRING) {
            char buf[32];
            if (k->type == NT_CONFIG__SIZE) {
                nt_config__fmt_size(nt_config__cnum(cfg, k), buf, sizeof(buf));
            } else {
                snprintf(buf, sizeof(buf), "%" PRId64, nt_config__cnum(cfg, k));
            }
            fprintf(out, "%s = %s\n", k->key, buf);
            continue;
        }
        const char *v = *nt_config__cstr(cfg, k);
        if (k->flags & NT_CONFIG__SECRET) {
            fprintf(out, "# %s %s\n", k->key,
                    v != NULL ? "= " NT_CONFIG__REDACTED " (environment or password_file only)"
                              : "is not set");
        } else if (v == NULL) {
            fprintf(out, "# %s is not set%s%s%s\n", k->key, k->def_doc != NULL ? " (default " : "",
                    k->def_doc != NULL ? k->def_doc : "", k->def_doc != NULL ? ")" : "");
        } else if (k->flags & NT_CONFIG__CONNINFO) {
            char *redacted = malloc(strlen(v) + 64);
            if (redacted == NULL) {
                fprintf(out, "%s = " NT_CONFIG__REDACTED "\n", k->key);
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
                 "--config FILE or\n" NT_CONFIG__ENV_FILE " ([section] key = value) < environment "
                 "variables < command-line flags.\n");
    for (size_t i = 0; i < nt_config__nkeys; i++) {
        const nt_config__key_t *k = &nt_config__keys[i];
        nt_config__env_name(k, env, sizeof(env));
        nt_config__flag_name(k, flag, sizeof(flag));
        fprintf(out, "\n  %s.%s\n      env %s", k->section, k->key, env);
        if (k->flags & NT_CONFIG__SECRET) {
            fprintf(out, " (environment only)\n");
        } else {
            fprintf(out, ", flag %s\n", flag);
        }
        if (k->type == NT_CONFIG__STRING) {
            fprintf(out, "      default: %s\n",
                    k->def != NULL       ? k->def
                    : k->def_doc != NULL ? k->def_doc
                                         : "unset");
        } else if (k->type == NT_CONFIG__INT) {
            fprintf(out, "      default: %s (%" PRId64 " to %" PRId64 ")\n", k->def, k->min,
                    k->max);
        } else {
            char lo[32];
            char hi[32];
            nt_config__fmt_size(k->min, lo, sizeof(lo));
            nt_config__fmt_size(k->max, hi, sizeof(hi));
            fprintf(out, "      default: %s (%s to %s; 1048576, 512KiB, 64MiB, 1GiB, 1GB)\n",
                    k->def, lo, hi);
        }
        fprintf(out, "      %s\n", k->help);
    }
}
