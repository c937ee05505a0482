/* main.c -- the needletrace binary: dispatches to the subcommands of cmd.h. */
#include <stdio.h>
#include <string.h>

#include "needletrace/cmd.h"

#ifndef NT_VERSION
#define NT_VERSION "0.1.0"
#endif

extern char **environ;

static void main__usage(FILE *out)
{
    fprintf(out, "usage: needletrace COMMAND [OPTIONS]\n\n"
                 "Telemetry collector for microneedling handpiece fleets.\n\n"
                 "commands:\n"
                 "  run           run the collector service\n"
                 "  migrate       create or upgrade the database schema\n"
                 "  simulate      publish telemetry from a simulated fleet\n"
                 "  check-config  validate the configuration and print it\n"
                 "  alerts        list and acknowledge compliance alerts\n"
                 "  devices       the device registry: which clinic each pen belongs to\n"
                 "  audit         verify the tamper-evident ledger, sign digests of it\n"
                 "  journal       check a journal directory, salvage a damaged one, accept a\n"
                 "                journal that does not fit the database's checkpoint\n"
                 "  version       print the version\n\n"
                 "Run 'needletrace COMMAND --help' for the options of a command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        main__usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "run") == 0) {
        return nt_cmd_run(argc - 1, argv + 1, environ);
    }
    if (strcmp(cmd, "migrate") == 0) {
        return nt_cmd_migrate(argc - 1, argv + 1, environ);
    }
    if (strcmp(cmd, "simulate") == 0) {
        return nt_cmd_simulate(argc - 1, argv + 1, environ);
    }
    if (strcmp(cmd, "check-config") == 0) {
        return nt_cmd_check_config(argc - 1, argv + 1, environ);
    }
    if (strcmp(cmd, "alerts") == 0) {
        return nt_cmd_alerts(argc - 1, argv + 1, environ);
    }
    if (strcmp(cmd, "audit") == 0) {
        return nt_cmd_audit(argc - 1, argv + 1, environ);
    }
    if (strcmp(cmd, "devices") == 0) {
        return nt_cmd_devices(argc - 1, argv + 1, environ);
    }
    if (strcmp(cmd, "journal") == 0) {
        if (argc > 2 && strcmp(argv[2], "accept") == 0) {
            return nt_cmd_journal_accept(argc - 2, argv + 2, environ);
        }
        return nt_cmd_journal(argc - 1, argv + 1, environ);
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("needletrace %s\n", NT_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        main__usage(stdout);
        return 0;
    }
    fprintf(stderr, "needletrace: unknown command \"%s\"\n", cmd);
    main__usage(stderr);
    return 2;
}
