/* devices.c -- `needletrace devices`: the device registry (needletrace.devices): list the pens,
 * register one to its clinic, move it to another, retire it or put it back in service. Every
 * change is stamped by the database with the role that made it and kept in
 * needletrace.device_changes. The collector quarantines what a pen publishes under another
 * clinic's topic, or once retired (010_registry_roles.sql). */
#include <stdio.h>
#include <string.h>

#include "needletrace/cmd.h"
#include "needletrace/common.h"
#include "needletrace/config.h"
#include "needletrace/ident.h"

#define DEVICES__SYNOPSIS                                                                          \
    "usage: needletrace devices list [--clinic ID] [--json]\n"                                     \
    "       needletrace devices add SERIAL --clinic ID [--model MODEL]\n"                          \
    "       needletrace devices move SERIAL --clinic ID\n"                                         \
    "       needletrace devices retire SERIAL\n"                                                   \
    "       needletrace devices activate SERIAL\n"

static void devices__usage(FILE *out)
{
    fputs(DEVICES__SYNOPSIS
          "\n"
          "The device registry in [database] url: which clinic each pen belongs to. A pen's\n"
          "messages under another clinic's topic are quarantined (clinic_mismatch), as are a\n"
          "retired pen's (device_retired) and, with the setting unknown_devices = 'quarantine'\n"
          "(the production choice; default 'register': a new pen is registered to the clinic\n"
          "it is first seen under), an unregistered pen's (unknown_device). A change applies\n"
          "to the collectors' next batch. Changes need a login that is a member of\n"
          "needletrace_registrar; list needs read access (registrar, staff or auditor).\n"
          "\n"
          "list      every pen (or a clinic's), as an aligned table or JSON lines\n"
          "add       registers SERIAL to clinic ID (again with the same clinic: no change)\n"
          "move      moves a registered pen to clinic ID\n"
          "retire    its messages are quarantined from now on\n"
          "activate  puts a retired pen back in service\n"
          "Serials, clinic ids and models are 1-64 characters of [A-Za-z0-9._-].\n"
          "Exit codes: 0 done, 1 refused or failed (the message says why), 2 bad usage.\n",
          out);
}

typedef struct {
    const char *verb;
    const char *serial;
    const char *clinic;
    const char *model;
    int json;
} devices__opts_t;

static int devices__takes_value(const char *arg)
{
    return strcmp(arg, "--clinic") == 0 || strcmp(arg, "--model") == 0 ||
           strcmp(arg, "--config") == 0;
}

/* Prints "needletrace: devices: WHAT WHY" and the synopsis; returns 2. */
static int devices__bad(const char *what, const char *why)
{
    fprintf(stderr, "needletrace: devices: %s%s%s\n" DEVICES__SYNOPSIS, what, *why ? " " : "", why);
    return 2;
}

/* Parses argv (after the configuration flags were taken out). 0 or 2 (printed). */
static int devices__parse(int argc, char **argv, devices__opts_t *o)
{
    memset(o, 0, sizeof(*o));
    if (argc < 2) {
        return devices__bad("missing a subcommand", "");
    }
    o->verb = argv[1];
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--clinic") == 0 || strcmp(argv[i], "--model") == 0) {
            if (i + 1 >= argc) {
                return devices__bad(argv[i], "needs a value");
            }
            *(argv[i][2] == 'c' ? &o->clinic : &o->model) = argv[i + 1];
            i++;
        } else if (strcmp(argv[i], "--json") == 0) {
            o->json = 1;
        } else if (argv[i][0] == '-' || o->serial != NULL) {
            return devices__bad(argv[i], "is not expected here");
        } else {
            o->serial = argv[i];
        }
    }
    int is_list = strcmp(o->verb, "list") == 0;
    int needs_clinic = strcmp(o->verb, "add") == 0 || strcmp(o->verb, "move") == 0;
    if (!is_list && !needs_clinic && strcmp(o->verb, "retire") != 0 &&
        strcmp(o->verb, "activate") != 0) {
        return devices__bad(o->verb, "is not a subcommand");
    }
    if (is_list ? o->serial != NULL : o->serial == NULL) {
        return devices__bad(o->verb, is_list ? "takes no SERIAL" : "needs a SERIAL");
    }
    if ((needs_clinic && o->clinic == NULL) || (!needs_clinic && !is_list && o->clinic != NULL)) {
        return devices__bad(o->verb, needs_clinic ? "needs --clinic ID" : "takes no --clinic");
    }
    if ((o->model != NULL && strcmp(o->verb, "add") != 0) || (o->json && !is_list)) {
        return devices__bad(o->verb, "takes no such option (--model is for add, --json for list)");
    }
    const char *ids[3][2] = {{"SERIAL", o->serial}, {"--clinic", o->clinic}, {"--model", o->model}};
    for (int i = 0; i < 3; i++) {
        if (ids[i][1] != NULL && !nt_ident_id_valid_str(ids[i][1])) {
            return devices__bad(ids[i][0], "must be 1-64 characters of [A-Za-z0-9._-]");
        }
    }
    return 0;
}

/* Runs one statement; NULL after printing the error. */
static PGresult *devices__exec(PGconn *conn, const char *sql, int n, const char *const *values)
{
    PGresult *res = PQexecParams(conn, sql, n, NULL, values, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        fprintf(stderr, "needletrace: devices: %s%s", PQresultErrorMessage(res),
                state != NULL && strcmp(state, "42501") == 0
                    ? "needletrace: (changes need a login that is a member of "
                      "needletrace_registrar)\n"
                    : "");
        PQclear(res);
        return NULL;
    }
    return res;
}

static int devices__list(PGconn *conn, const devices__opts_t *o)
{
    static const char sql[] =
        "SELECT device_serial, clinic_id, coalesce(device_model, '-'), status,\n"
        "       to_char(registered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),\n"
        "       registered_by, row_to_json(d)::text\n"
        "  FROM needletrace.devices d\n"
        " WHERE $1::text IS NULL OR clinic_id = $1::text\n"
        " ORDER BY clinic_id, device_serial";
    const char *values[1] = {o->clinic};
    PGresult *res = devices__exec(conn, sql, 1, values);
    if (res == NULL) {
        return 1;
    }
    if (!o->json) {
        printf("%-20s %-16s %-12s %-8s %-20s %s\n", "SERIAL", "CLINIC", "MODEL", "STATUS",
               "REGISTERED", "BY");
    }
    for (int r = 0; r < PQntuples(res); r++) {
        if (o->json) {
            printf("%s\n", PQgetvalue(res, r, 6));
        } else {
            printf("%-20s %-16s %-12s %-8s %-20s %s\n", PQgetvalue(res, r, 0),
                   PQgetvalue(res, r, 1), PQgetvalue(res, r, 2), PQgetvalue(res, r, 3),
                   PQgetvalue(res, r, 4), PQgetvalue(res, r, 5));
        }
    }
    PQclear(res);
    return 0;
}

/* add: registers the pen, or says where it already is. */
static int devices__add(PGconn *conn, const devices__opts_t *o)
{
    static const char sql[] =
        "WITH ins AS (INSERT INTO needletrace.devices (device_serial, clinic_id, device_model)\n"
        "             VALUES ($1, $2, $3) ON CONFLICT (device_serial) DO NOTHING\n"
        "             RETURNING clinic_id)\n"
        "SELECT 'added', clinic_id FROM ins\n"
        "UNION ALL\n"
        "SELECT 'exists', d.clinic_id FROM needletrace.devices d\n"
        " WHERE d.device_serial = $1 AND NOT EXISTS (SELECT 1 FROM ins)";
    const char *values[3] = {o->serial, o->clinic, o->model};
    PGresult *res = devices__exec(conn, sql, 3, values);
    if (res == NULL) {
        return 1;
    }
    int rc = 0;
    if (PQntuples(res) != 1) {
        fprintf(stderr, "needletrace: devices add: could not register %s (try again)\n", o->serial);
        rc = 1;
    } else if (strcmp(PQgetvalue(res, 0, 0), "added") == 0) {
        printf("pen %s registered to clinic %s\n", o->serial, o->clinic);
    } else if (strcmp(PQgetvalue(res, 0, 1), o->clinic) == 0) {
        printf("pen %s is already registered to clinic %s\n", o->serial, o->clinic);
    } else {
        fprintf(stderr,
                "needletrace: devices add: pen %s is registered to clinic %s; to move it: "
                "needletrace devices move %s --clinic %s\n",
                o->serial, PQgetvalue(res, 0, 1), o->serial, o->clinic);
        rc = 1;
    }
    PQclear(res);
    return rc;
}

/* move, retire, activate: one update of a registered pen; prints what changed. */
static int devices__change(PGconn *conn, const devices__opts_t *o)
{
    static const char sql[] =
        "WITH old AS (SELECT clinic_id, status FROM needletrace.devices\n"
        "              WHERE device_serial = $1 FOR UPDATE)\n"
        "UPDATE needletrace.devices d\n"
        "   SET clinic_id = coalesce($2, d.clinic_id), status = coalesce($3, d.status)\n"
        "  FROM old WHERE d.device_serial = $1\n"
        "RETURNING old.clinic_id, d.clinic_id, old.status, d.status";
    const char *status = strcmp(o->verb, "retire") == 0     ? "retired"
                         : strcmp(o->verb, "activate") == 0 ? "active"
                                                            : NULL;
    const char *values[3] = {o->serial, o->clinic, status};
    PGresult *res = devices__exec(conn, sql, 3, values);
    if (res == NULL) {
        return 1;
    }
    if (PQntuples(res) != 1) {
        fprintf(stderr,
                "needletrace: devices %s: pen %s is not registered (needletrace devices add %s "
                "--clinic ID)\n",
                o->verb, o->serial, o->serial);
        PQclear(res);
        return 1;
    }
    if (status == NULL) {
        printf("pen %s moved from clinic %s to clinic %s\n", o->serial, PQgetvalue(res, 0, 0),
               PQgetvalue(res, 0, 1));
    } else {
        printf("pen %s (clinic %s): %s -> %s\n", o->serial, PQgetvalue(res, 0, 1),
               PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 3));
    }
    PQclear(res);
    return 0;
}

/* `needletrace devices`. */
int nt_cmd_devices(int argc, char **argv, char *const *envp)
{
    nt_config_t cfg;
    int rc = nt_cmd_begin_with(&argc, argv, envp, devices__usage, devices__takes_value, &cfg);
    if (rc != NT_CMD_CONTINUE) {
        return rc;
    }
    devices__opts_t o;
    if (devices__parse(argc, argv, &o) != 0) {
        nt_config_close(&cfg);
        return 2;
    }
    PGconn *conn = NULL;
    rc = nt_cmd_connect(cfg.database_url, cfg.database_password, "needletrace-devices", &conn);
    nt_config_close(&cfg);
    if (rc != 0) {
        return rc == NT_ECONFIG ? 2 : 1;
    }
    rc = strcmp(o.verb, "list") == 0  ? devices__list(conn, &o)
         : strcmp(o.verb, "add") == 0 ? devices__add(conn, &o)
                                      : devices__change(conn, &o);
    PQfinish(conn);
    return rc;
}
