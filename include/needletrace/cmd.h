/* cmd.h -- the subcommands of the needletrace binary. Each returns the process exit code:
 * 0 success, 2 bad usage or configuration (the message names the key), 1 runtime failure. */
#ifndef NEEDLETRACE_CMD_H
#define NEEDLETRACE_CMD_H

int nt_cmd_run(int argc, char **argv, char *const *envp);
int nt_cmd_migrate(int argc, char **argv, char *const *envp);
int nt_cmd_simulate(int argc, char **argv, char *const *envp);
int nt_cmd_check_config(int argc, char **argv, char *const *envp);
int nt_cmd_alerts(int argc, char **argv, char *const *envp);

#endif
