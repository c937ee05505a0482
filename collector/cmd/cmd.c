/* cmd.c -- the preamble the subcommands share: --help, configuration, log settings. */
#include "needletrace/cmd.h"

#include <string.h>

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
