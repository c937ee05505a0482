/* cmd.c -- what the subcommands share: --help, configuration, log settings, and the blocking
 * database connection of the commands that are database clients. */
#include "needletrace/cmd.h"

#include <string.h>

#include "needletrace/common.h"
#include "needletrace/pqutil.h"

/* libpq's own connect_timeout default is "wait forever"; a conninfo that sets one wins. */
#define CMD__CONNECT_TIMEOUT "10"

/* See cmd.h. */
int nt_cmd_wants_help_with(int argc, char **argv, nt_cmd_takes_value_fn takes_value)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            return 0;
        }
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            return 1;
        }
        if (takes_value != NULL && takes_value(argv[i])) {
            i++;
        }
    }
    return 0;
}

/* See cmd.h. */
int nt_cmd_wants_help(int argc, char **argv)
{
    return nt_cmd_wants_help_with(argc, argv, NULL);
}

/* See cmd.h. */
int nt_cmd_begin_with(int *argc, char **argv, char *const *envp, nt_cmd_usage_fn usage,
                      nt_cmd_takes_value_fn takes_value, nt_config_t *cfg)
{
    char err[1024];
    if (nt_cmd_wants_help_with(*argc, argv, takes_value)) {
        usage(stdout);
        fputs("\nConfiguration keys (file [section] key, environment, flag):\n", stdout);
        nt_config_help(stdout);
        return 0;
    }
    if (nt_config_load(cfg, argc, argv, envp, err, sizeof(err)) != 0) {
        fprintf(stderr, "needletrace: %s\n", err); /* nt_config_load freed cfg */
        return 2;
    }
    nt_config_setup_log(cfg);
    return NT_CMD_CONTINUE;
}

/* See cmd.h. */
int nt_cmd_begin(int *argc, char **argv, char *const *envp, nt_cmd_usage_fn usage, nt_config_t *cfg)
{
    return nt_cmd_begin_with(argc, argv, envp, usage, NULL, cfg);
}

/* See cmd.h. */
int nt_cmd_connect(const char *conninfo, const char *password, const char *application_name,
                   PGconn **out)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (opts == NULL) {
        /* The parser's message may quote the string, password and all: keep it out. */
        fprintf(stderr, "needletrace: invalid value for database.url: not a valid libpq "
                        "connection string or URI\n");
        PQfreemem(perr);
        return NT_ECONFIG;
    }
    PQconninfoFree(opts);

    /* Later entries override earlier ones, and dbname expands into the whole conninfo: a
     * connect_timeout or keepalive setting in database.url wins over ours (not one from a
     * service file or the environment: libpq fills only what is unset) (TCP keepalives: a
     * server gone without a word, a power cut, is noticed within about two minutes, not the
     * system's two hours, by a command waiting on a long query); client_encoding is ours (UTF-8
     * in, UTF-8 out, whatever PGCLIENTENCODING says); a NULL password is ignored. */
    const char *const keys[] = {"connect_timeout",  "keepalives",
                                "keepalives_idle",  "keepalives_interval",
                                "keepalives_count", "fallback_application_name",
                                "dbname",           NT_PQUTIL_ENCODING_KEY,
                                "password",         NULL};
    const char *const values[] = {
        CMD__CONNECT_TIMEOUT,     "1",      "60", "10", "6", application_name, conninfo,
        NT_PQUTIL_ENCODING_VALUE, password, NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    if (conn == NULL) {
        fprintf(stderr, "needletrace: could not connect to the database: out of memory\n");
        return NT_EDB;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        char buf[512];
        /* libpq says "connection to server at "H", port P failed: FATAL:  why": the target is
         * named below already, keep the why. */
        const char *why = PQerrorMessage(conn);
        const char *failed = strstr(why, " failed: ");
        if (strncmp(why, "connection to server ", 21) == 0 && failed != NULL &&
            failed < why + strcspn(why, "\n")) {
            why = failed + 9;
        }
        const char *host = PQhost(conn);
        const char *port = PQport(conn);
        const char *db = PQdb(conn);
        const char *user = PQuser(conn);
        fprintf(stderr,
                "needletrace: could not connect to database \"%s\" on %s%s%s as user \"%s\": %s\n",
                db != NULL ? db : "", host != NULL && host[0] != '\0' ? host : "localhost",
                port != NULL && port[0] != '\0' ? ":" : "", port != NULL ? port : "",
                user != NULL ? user : "", nt_pqutil_message(why, buf, sizeof(buf)));
        PQfinish(conn);
        return NT_EDB;
    }
    PQsetNoticeProcessor(conn, nt_pqutil_notice, (void *)"cmd");
    *out = conn;
    return 0;
}
