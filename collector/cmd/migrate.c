/* migrate.c -- `needletrace migrate`: create or upgrade the schema (the library is
 * collector/db/migrations.c). */
#include "needletrace/migrations.h"

#include <stdio.h>

#include "needletrace/cmd.h"
#include "needletrace/config.h"

static void migrate__usage(FILE *out)
{
    fprintf(out, "usage: needletrace migrate [--config FILE] [--<section>-<key> VALUE]...\n"
                 "\n"
                 "Creates or upgrades the needletrace schema in [database] admin_url (else\n"
                 "[database] url), connected as the role that owns the schema: applies, in\n"
                 "order and each in its own transaction, every migration not yet recorded in\n"
                 "needletrace.schema_migrations, and creates the login-less roles\n"
                 "needletrace_collector, needletrace_auditor, needletrace_staff and\n"
                 "needletrace_registrar (README, Security model: how to give them logins).\n"
                 "Safe to run concurrently and repeatedly.\n");
}

/* `needletrace migrate`: 0 when the schema is up to date, 2 on bad usage or configuration,
 * 1 when the database could not be migrated (the reason is logged by nt_migrations_apply). */
int nt_cmd_migrate(int argc, char **argv, char *const *envp)
{
    nt_config_t cfg;
    int rc = nt_cmd_begin(&argc, argv, envp, migrate__usage, &cfg);
    if (rc != NT_CMD_CONTINUE) {
        return rc;
    }
    if (argc > 1) {
        fprintf(stderr, "needletrace: migrate: %s \"%s\"\n",
                argv[1][0] == '-' ? "unknown option" : "unexpected argument", argv[1]);
        nt_config_close(&cfg);
        return 2;
    }
    /* as the owner: database.admin_url when set (the collector's own login cannot migrate) */
    rc = nt_migrations_apply(cfg.database_admin_url != NULL ? cfg.database_admin_url
                                                            : cfg.database_url,
                             cfg.database_password);
    nt_config_close(&cfg);
    if (rc != 0) {
        return 1;
    }
    printf("schema is up to date (%zu migrations)\n", nt_migrations_count);
    return 0;
}
