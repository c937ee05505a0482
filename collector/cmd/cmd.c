/* cmd.c -- the preamble the subcommands share: --help, configuration, log settings. */
#include "needletrace/cmd.h"

#include <string.h>

int nt_cmd_wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            return 0;
        }
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            return 1;
        }
    }
    return 0;
}

int nt_cmd_begin(int *argc, char **argv, char *const *envp, nt_cmd_usage_fn usage, nt_config_t *cfg)
{
    char err[1024];
    if (nt_cmd_wants_help(*argc, argv)) {
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
