/* cmd.h -- the subcommands of the needletrace binary, and the preamble they share.
 *
 * Each nt_cmd_* returns the process exit code: 0 success, 2 bad usage or configuration (the
 * message names the key or option), 1 runtime failure. */
#ifndef NEEDLETRACE_CMD_H
#define NEEDLETRACE_CMD_H

#include <libpq-fe.h>
#include <stdio.h>

#include "needletrace/config.h"

/* The subcommands: argv[0] is the command's name, envp the environment to read NEEDLETRACE_*
 * from. Each returns 0, 2 or 1 as above; --help prints the usage and the configuration keys
 * to stdout and returns 0. */
/* `needletrace run`: the service; returns when stopped by SIGTERM or SIGINT (0) or on a fatal
 * failure (1). */
int nt_cmd_run(int argc, char **argv, char *const *envp);
/* `needletrace migrate`: applies the pending migrations (nt_migrations_apply); 1 when the
 * database could not be migrated (the reason logged). */
int nt_cmd_migrate(int argc, char **argv, char *const *envp);
/* `needletrace simulate`: publishes a simulated fleet's telemetry and prints the counts. */
int nt_cmd_simulate(int argc, char **argv, char *const *envp);
/* `needletrace check-config`: prints the effective configuration; 1 when a path it names
 * (journal directory, TLS files) is unusable. */
int nt_cmd_check_config(int argc, char **argv, char *const *envp);
/* `needletrace alerts list|ack`: 1 when the database is unreachable or the alert unknown. */
int nt_cmd_alerts(int argc, char **argv, char *const *envp);
/* `needletrace audit verify|digest|keygen`: the ledger's checks; 1 on findings or failure. */
int nt_cmd_audit(int argc, char **argv, char *const *envp);
/* `needletrace devices list|add|move|retire|activate`: the device registry; 1 when refused. */
int nt_cmd_devices(int argc, char **argv, char *const *envp);
/* `needletrace journal check|salvage`: check 1 when the journal is corrupt (the collector would
 * refuse to start on it); 1 when it cannot be read (a collector runs on it) or salvage fails. */
int nt_cmd_journal(int argc, char **argv, char *const *envp);

/* `needletrace journal accept`: after the collector stopped ingesting because its checkpoint does
 * not fit its journal (checkpoint.h), resets the checkpoint to the journal's start and records
 * the decision in needletrace.checkpoint_resets; 0 also when there is nothing to accept; 1 when
 * the journal cannot be opened (a collector runs on it) or the database fails. */
int nt_cmd_journal_accept(int argc, char **argv, char *const *envp);

/* Prints a command's usage (--help to stdout, after a usage error to stderr). */
typedef void (*nt_cmd_usage_fn)(FILE *out);

/* nt_cmd_begin() returns this when the command should go on. */
#define NT_CMD_CONTINUE (-1)

/* Returns 1 when arg is an option of the command that takes the next argument as its value
 * (so that a "-h" after it is that value, not a request for help), else 0. */
typedef int (*nt_cmd_takes_value_fn)(const char *arg);

/* Returns 1 when argv[1..argc) asks for help (--help or -h) before any "--", else 0. */
int nt_cmd_wants_help(int argc, char **argv);

/* As nt_cmd_wants_help(), but the argument after an option for which takes_value returns 1
 * is skipped. takes_value may be NULL (nothing skipped). Returns 1 or 0. */
int nt_cmd_wants_help_with(int argc, char **argv, nt_cmd_takes_value_fn takes_value);

/* The preamble every command that reads the configuration shares: answers --help / -h by
 * printing usage(stdout) and the configuration keys; loads the configuration (defaults <
 * file < NEEDLETRACE_* environment < --section-key flags, which are removed from argv and
 * *argc) and applies its log settings. Returns NT_CMD_CONTINUE with *cfg loaded (the caller
 * calls nt_config_close), or the exit code to return at once: 0 after --help, 2 after a
 * configuration error, printed as "needletrace: <message naming the key>" (cfg is then
 * already freed). See also nt_config_load(). */
int nt_cmd_begin(int *argc, char **argv, char *const *envp, nt_cmd_usage_fn usage,
                 nt_config_t *cfg);

/* nt_cmd_begin() for a command whose own options take values: the help request is found by
 * nt_cmd_wants_help_with(argc, argv, takes_value). Same returns as nt_cmd_begin(). */
int nt_cmd_begin_with(int *argc, char **argv, char *const *envp, nt_cmd_usage_fn usage,
                      nt_cmd_takes_value_fn takes_value, nt_config_t *cfg);

/* The blocking connection of the commands that are database clients (alerts, journal accept):
 * connects to conninfo (a libpq string or URI) as application_name (unless conninfo names one),
 * with a 10 s connect timeout (unless conninfo sets one), client_encoding UTF8 and password as
 * libpq's password keyword (database.password_file's, cfg->database_password; NULL: none).
 * Returns 0 with *out set; NT_ECONFIG when conninfo is not valid libpq syntax, NT_EDB when the
 * server could not be reached or refused us: both after printing to stderr an error that names
 * the target (never the password). */
int nt_cmd_connect(const char *conninfo, const char *password, const char *application_name,
                   PGconn **out);

#endif
