/* sim_main.c -- `needletrace simulate`: a seeded virtual fleet of handpieces sending telemetry,
 * and the counts a correct collector must end with. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "needletrace/cmd.h"
#include "needletrace/log.h"
#include "sim.h"

volatile sig_atomic_t nt_sim__interrupted;

/* SIGINT: stop generating, then finish normally (the handler resets itself). */
static void sim__on_sigint(int sig)
{
    (void)sig;
    nt_sim__interrupted = 1;
}

/* Logs progress at debug level. */
static void sim__log_progress(const nt_sim_t *s, nt_sim_mqtt_t *m)
{
    uint64_t pending = nt_sim__mqtt_pending(m);
    nt_log(NT_LOG_DEBUG, SIM_MODULE,
           "published %" PRIu64 " messages with %" PRIu64 " events, %" PRIu64
           " awaiting acknowledgement",
           s->messages_published, s->events_generated, pending);
}

/* Generates and publishes until --events or --duration is reached, or SIGINT. Returns 0, or
 * 1 after a failure (logged where it happened). */
static int sim__generate(nt_sim_t *s, nt_sim_mqtt_t *m, int64_t start_us)
{
    const nt_sim_options_t *o = &s->opt;
    nt_sim_bucket_t bucket = {
        .rate = o->rate,
        .burst = o->rate / 10 > 1 ? o->rate / 10 : 1, /* 100 ms */
        .tokens = 1,
        .last_us = nt_mono_us(),
    };
    int64_t end_us = o->duration_s > 0 ? start_us + (int64_t)(o->duration_s * 1e6) : INT64_MAX;
    int64_t next_progress_us = start_us + 1000000;
    while (!nt_sim__interrupted && (o->events == 0 || s->events_generated < o->events)) {
        int64_t now = nt_mono_us();
        if (now >= end_us) {
            break;
        }
        if (now >= next_progress_us) {
            next_progress_us = now + 1000000;
            sim__log_progress(s, m);
        }
        if (nt_sim__step(s, m, &bucket) != 0) {
            return 1;
        }
    }
    return 0;
}

/* Waits for every publish to be done. Returns 0, or 1 after the deadline (logged). */
static int sim__drain(const nt_sim_t *s, nt_sim_mqtt_t *m)
{
    if (nt_sim__interrupted) {
        nt_log(NT_LOG_INFO, SIM_MODULE, "interrupted: waiting for the messages in flight");
    }
    if (nt_sim__mqtt_wait(m, 0, SIM_ACK_DEADLINE_US) == 0) {
        return 0;
    }
    nt_log(NT_LOG_ERROR, SIM_MODULE,
           "%" PRIu64 " of %" PRIu64 " messages were not %s by the broker within %d s",
           nt_sim__mqtt_pending(m), s->messages_published,
           s->opt.qos == 1 ? "acknowledged" : "sent", (int)(SIM_ACK_DEADLINE_US / 1000000));
    return 1;
}

/* Runs the simulation against a connected client. Returns the exit code. */
static int sim__run(nt_sim_t *s, nt_sim_mqtt_t *m)
{
    const nt_sim_options_t *o = &s->opt;
    int64_t start_us = nt_mono_us();
    nt_log(NT_LOG_INFO, SIM_MODULE,
           "simulating %" PRIu32 " clinics with %" PRIu32 " handpieces each, seed %" PRIu64,
           o->clinics, o->devices, o->seed);
    if (sim__generate(s, m, start_us) != 0 || sim__drain(s, m) != 0) {
        return 1;
    }
    double elapsed_s = (double)(nt_mono_us() - start_us) / 1e6;
    if (nt_sim__dump_close(s, 1) != 0) {
        return 1;
    }
    nt_log(NT_LOG_INFO, SIM_MODULE,
           "published %" PRIu64 " messages (%" PRIu64 " duplicates) with %" PRIu64
           " events in %.3f s (%.0f messages/s); expected %" PRIu64 " raw messages, %" PRIu64
           " events, %" PRIu64 " quarantined, %" PRIu64 " alerts",
           s->messages_published, s->duplicates_published, s->events_generated, elapsed_s,
           elapsed_s > 0 ? (double)s->messages_published / elapsed_s : 0.0, s->expected_raw,
           s->expected_events, s->expected_not_protobuf + s->expected_serial_mismatch,
           nt_sim__expected_alerts(s));
    nt_sim__print_json(s, elapsed_s);
    return 0;
}

/* Connects, runs with SIGINT caught (a second ^C kills) and disconnects. Returns the exit
 * code. */
static int sim__connect_and_run(nt_sim_t *s, nt_sim_mqtt_t *m, const nt_config_t *cfg)
{
    struct sigaction sa, old_sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = sim__on_sigint;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    nt_sim__interrupted = 0;

    int code = 1;
    mosquitto_lib_init();
    if (nt_sim__mqtt_start(m, cfg, s->opt.seed) == 0) {
        sigaction(SIGINT, &sa, &old_sa);
        code = sim__run(s, m);
        sigaction(SIGINT, &old_sa, NULL);
        nt_sim__mqtt_stop(m);
    }
    mosquitto_lib_cleanup();
    return code;
}

/* `needletrace simulate`: loads the configuration (broker address and credentials), parses
 * the simulation flags, publishes the fleet's telemetry and prints the expected counts as
 * JSON on stdout. Returns 0, 1 (runtime failure, e.g. broker unreachable or messages not
 * acknowledged) or 2 (bad usage or configuration). */
int nt_cmd_simulate(int argc, char **argv, char *const *envp)
{
    /* Answered here: simulate's usage lists the configuration keys its own way. */
    if (nt_cmd_wants_help(argc, argv)) {
        nt_sim__usage(stdout);
        return 0;
    }
    nt_config_t cfg;
    int code = nt_cmd_begin(&argc, argv, envp, nt_sim__usage, &cfg);
    if (code != NT_CMD_CONTINUE) {
        return code;
    }
    nt_sim_options_t opt;
    code = nt_sim__parse_options(argc, argv, &opt);
    if (code != 0) {
        nt_config_close(&cfg);
        return code;
    }

    nt_sim_t s;
    nt_sim_mqtt_t m;
    nt_sim__mqtt_init(&m);
    code = 1;
    if (nt_sim__init(&s, &opt) != 0) {
        nt_log(NT_LOG_ERROR, SIM_MODULE, "could not allocate a fleet of %" PRIu32 " devices: %s",
               opt.clinics * opt.devices, nt_strerror(NT_ENOMEM));
    } else if (nt_sim__dump_open(&s) == 0) {
        code = sim__connect_and_run(&s, &m, &cfg);
    }
    nt_sim__dump_close(&s, 0);
    nt_sim__free(&s);
    nt_sim__mqtt_close(&m);
    nt_config_close(&cfg);
    return code;
}
