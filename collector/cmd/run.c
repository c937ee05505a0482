/* run.c -- `needletrace run`: wires the journal, the MQTT source, the database sink, the alert
 * publisher and the HTTP listener on one loop, and stops them cleanly. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "needletrace/cmd.h"
#include "needletrace/common.h"
#include "needletrace/config.h"
#include "needletrace/digester.h"
#include "needletrace/http.h"
#include "needletrace/journal.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"
#include "needletrace/mqttsrc.h"
#include "needletrace/pgsink.h"
#include "needletrace/publisher.h"

/* SIGTERM must end the process within 10 s; keep a margin for closing. */
#define RUN_DRAIN_DEADLINE_MS 8000
/* After the teardown, how long the loop may wait for a name lookup that cannot be cancelled. */
#define RUN_HARD_STOP_MS 1000

typedef struct {
    uv_loop_t loop;
    nt_config_t cfg;
    nt_journal_t *journal;
    nt_mqttsrc_t *src;
    nt_pgsink_t *sink;
    nt_publisher_t *publisher;
    nt_digester_t *digester; /* periodic signed digests of the ledger (NULL: none) */
    nt_http_t *http;
    uv_signal_t sigterm;
    uv_signal_t sigint;
    uv_timer_t deadline;
    uv_timer_t drain_poll; /* a graceful stop waits for the PUBACKs of alerts in flight */
    uv_timer_t hard_stop;  /* after the teardown: ends the loop even if a lookup still runs */
    int loop_busy;         /* the loop could not be closed (a name lookup was still running) */
    int handles;           /* signals and timers initialised */
    int stopping;
    int stopped;
    int exit_code; /* 0, or 1 after a runtime failure */
} run_t;

/* ---- the pipeline's wiring --------------------------------------------------------------------
 */

static void run__on_synced(nt_mqttsrc_t *m, void *data)
{
    run_t *r = data;
    nt_pgsink_wakeup(r->sink);
}

static void run__on_commit(nt_pgsink_t *s, uint64_t checkpoint, void *data)
{
    run_t *r = data;
    nt_mqttsrc_poke(r->src);
}

/* Publishes alerts after the transaction that raised them committed; an alert that cannot be
 * handed to the broker now stays undelivered in the database and is published once the
 * broker connection is back (nt_pgsink_request_undelivered on connect). */
static void run__on_alerts(nt_pgsink_t *s, const nt_alert_t *alerts, size_t n, void *data)
{
    run_t *r = data;
    if (r->stopping) {
        return; /* stopping: they stay undelivered; the next start (or a replica) publishes them */
    }
    size_t deferred = nt_publisher_publish_all(r->publisher, alerts, n);
    if (deferred > 0) {
        nt_log(NT_LOG_WARN, "run",
               "%zu alerts wait for the broker connection: they stay undelivered in the "
               "database and are published as soon as they can be",
               deferred);
        if (nt_mqttsrc_ready(r->src)) {
            /* Connected but too many in flight: fetch them again at the next tick. */
            nt_pgsink_request_undelivered(r->sink);
        }
    }
}

/* Whether alerts can reach the broker now (the sink's heartbeat says so to the other replicas). */
static int run__can_publish(void *data)
{
    run_t *r = data;
    return r->src != NULL && nt_mqttsrc_ready(r->src);
}

static void run__on_mqtt_connected(nt_mqttsrc_t *m, void *data)
{
    run_t *r = data;
    nt_pgsink_request_undelivered(r->sink);
}

static void run__on_alert_delivered(int64_t alert_id, int refused, void *data)
{
    run_t *r = data;
    nt_pgsink_alert_delivered(r->sink, alert_id, refused);
}

static int run__ready(void *data, char *reason, size_t len)
{
    run_t *r = data;
    if (r->stopping) {
        snprintf(reason, len, "shutting down");
        return 0;
    }
    const char *journal = nt_mqttsrc_journal_failure(r->src);
    if (journal != NULL) {
        snprintf(reason, len, "the journal cannot be written (retrying): %s", journal);
        return 0;
    }
    if (!nt_mqttsrc_ready(r->src)) {
        snprintf(reason, len, "not connected to the broker");
        return 0;
    }
    if (!nt_pgsink_ready(r->sink)) {
        snprintf(reason, len, "not connected to the database");
        return 0;
    }
    if (nt_pgsink_stalled(r->sink, reason, len)) {
        return 0;
    }
    if (nt_journal_full(r->journal)) {
        snprintf(reason, len,
                 "journal is full: PUBACKs held back until the database catches up (backpressure)");
        return 0;
    }
    return 1;
}

/* ---- stopping ---------------------------------------------------------------------------------
 */

static void run__on_hard_stop(uv_timer_t *t)
{
    uv_stop(t->loop);
}

/* Closes everything that is open; the loop then ends once the handles are closed. The one
 * teardown, for every way out. */
static void run__finish(run_t *r)
{
    if (r->stopped) {
        return;
    }
    r->stopped = 1;
    nt_digester_close(r->digester);
    r->digester = NULL;
    nt_publisher_close(r->publisher);
    r->publisher = NULL;
    if (r->src != NULL) {
        nt_mqttsrc_close(r->src);
        r->src = NULL;
    }
    if (r->sink != NULL) {
        nt_pgsink_close(r->sink);
        r->sink = NULL;
    }
    if (r->http != NULL) {
        nt_http_close(r->http);
        r->http = NULL;
    }
    if (r->handles) {
        uv_timer_stop(&r->deadline);
        uv_timer_stop(&r->drain_poll);
        uv_close((uv_handle_t *)&r->deadline, NULL);
        uv_close((uv_handle_t *)&r->drain_poll, NULL);
        uv_close((uv_handle_t *)&r->sigterm, NULL);
        uv_close((uv_handle_t *)&r->sigint, NULL);
        /* A name lookup already running on libuv's thread pool cannot be cancelled and keeps
         * the loop alive until the resolver gives up: do not wait for it. */
        uv_timer_start(&r->hard_stop, run__on_hard_stop, RUN_HARD_STOP_MS, 0);
        uv_unref((uv_handle_t *)&r->hard_stop);
    }
}

static void run__on_recorded(nt_pgsink_t *s, int status, void *data)
{
    run_t *r = data;
    if (status != 0) {
        nt_log(NT_LOG_WARN, "run",
               "could not record the last alert deliveries: those alerts are published again "
               "after the restart (at least once)");
    }
    nt_log(NT_LOG_INFO, "run",
           "everything journaled before the stop is committed (journal position %llu); exiting",
           (unsigned long long)nt_metrics.journal_checkpoint);
    run__finish(r);
}

/* Waits until the broker answered every alert in flight (or the connection is gone), then
 * records those deliveries, so that a restart does not publish them again. */
static void run__on_drain_poll(uv_timer_t *t)
{
    run_t *r = t->data;
    /* While the journal is over its bound the PUBACKs of what was read are held back, and our
     * publications wait behind them: not worth waiting for (published again after the start). */
    if (nt_publisher_in_flight(r->publisher) > 0 && nt_mqttsrc_ready(r->src) &&
        !nt_journal_full(r->journal)) {
        return;
    }
    uv_timer_stop(&r->drain_poll);
    nt_pgsink_record_deliveries(r->sink, run__on_recorded, r);
}

static void run__on_drained(nt_pgsink_t *s, int status, void *data)
{
    run_t *r = data;
    if (status != 0) {
        nt_log(NT_LOG_WARN, "run",
               "exiting without committing: ingest is stopped (see the checkpoint error above); "
               "the journal keeps its positions [%llu, %llu)",
               (unsigned long long)nt_journal_start(r->journal),
               (unsigned long long)nt_journal_end(r->journal));
        run__finish(r);
        return;
    }
    uv_timer_start(&r->drain_poll, run__on_drain_poll, 0, 20);
}

static void run__on_deadline(uv_timer_t *t)
{
    run_t *r = t->data;
    nt_log(NT_LOG_WARN, "run",
           "could not commit everything within %d ms; %llu journaled bytes stay in the journal and "
           "are committed at the next start",
           RUN_DRAIN_DEADLINE_MS,
           (unsigned long long)(nt_journal_end(r->journal) - nt_metrics.journal_checkpoint));
    run__finish(r);
}

/* Commits what is durable (within the deadline), then finishes. */
static void run__drain(run_t *r)
{
    uv_timer_start(&r->deadline, run__on_deadline, RUN_DRAIN_DEADLINE_MS, 0);
    nt_pgsink_drain(r->sink, run__on_drained, r);
}

static void run__on_refused_timer(uv_timer_t *t)
{
    run__finish(t->data);
}

/* The database role may rewrite the evidence (logged by the sink): a configuration error. The
 * journal keeps what was received; the teardown runs from the loop, not inside the sink. */
static void run__on_role_refused(nt_pgsink_t *s, void *data)
{
    run_t *r = data;
    r->exit_code = 2;
    if (!r->stopped) {
        uv_timer_start(&r->deadline, run__on_refused_timer, 0, 0);
    }
}

static void run__on_signal(uv_signal_t *h, int signum)
{
    run_t *r = h->data;
    if (r->stopping) {
        nt_log(NT_LOG_WARN, "run", "received %s again: exiting now; the journal keeps the rest",
               strsignal(signum));
        run__finish(r);
        return;
    }
    r->stopping = 1;
    nt_log(NT_LOG_INFO, "run",
           "received %s: committing what is journaled and recording the alerts the broker "
           "acknowledged, then disconnecting (within %d ms)",
           strsignal(signum), RUN_DRAIN_DEADLINE_MS);
    run__drain(r);
}

/* ---- starting ---------------------------------------------------------------------------------
 */

/* Creates the stages on the loop. 0, or 1 after logging what failed (run__finish then closes
 * what was made). */
static int run__open(run_t *r)
{
    nt_pgsink_options_t sopts = {
        .conninfo = r->cfg.database_url,
        .collector_id = r->cfg.collector_id,
        .max_events = (uint32_t)r->cfg.batch_max_events,
        .max_bytes = (uint32_t)r->cfg.batch_max_bytes,
        .max_delay_ms = (uint32_t)r->cfg.batch_max_delay_ms,
        .reconnect_min_ms = (uint32_t)r->cfg.mqtt_reconnect_min_ms,
        .reconnect_max_ms = (uint32_t)r->cfg.mqtt_reconnect_max_ms,
        .statement_timeout_ms = (uint64_t)r->cfg.database_statement_timeout_ms,
        .watchdog_ms = (uint64_t)r->cfg.database_watchdog_ms,
        .connections = (uint32_t)r->cfg.database_connections,
        .allow_privileged = r->cfg.database_allow_privileged != 0,
        .password = r->cfg.database_password,
    };
    int rc = nt_pgsink_init(&r->loop, &r->sink, &sopts, r->journal, run__on_commit, r);
    if (rc != 0) {
        nt_log(NT_LOG_ERROR, "run", "could not start the database sink: %s", nt_strerror(rc));
        return 1;
    }
    nt_pgsink_set_alerts_cb(r->sink, run__on_alerts);
    nt_pgsink_set_refused_cb(r->sink, run__on_role_refused);
    nt_pgsink_set_publish_check(r->sink, run__can_publish);
    if (nt_mqttsrc_init(&r->loop, &r->src, &r->cfg, r->journal, run__on_synced, r) != 0) {
        return 1; /* logged by the source */
    }
    nt_mqttsrc_set_connected_cb(r->src, run__on_mqtt_connected);
    if (nt_publisher_init(&r->publisher, r->src, run__on_alert_delivered, r) != 0) {
        nt_log(NT_LOG_ERROR, "run", "could not start the alert publisher: out of memory");
        return 1;
    }
    if (nt_digester_start(&r->loop, &r->cfg, r->src, &r->digester) != 0) {
        nt_log(NT_LOG_ERROR, "run", "could not start the ledger digests: out of memory");
        return 1;
    }
    if (r->cfg.http_port > 0 &&
        nt_http_start(&r->loop, &r->http, r->cfg.http_host, r->cfg.http_port, run__ready, r) != 0) {
        nt_log(NT_LOG_ERROR, "run", "could not listen on %s for metrics and health",
               r->cfg.http_listen);
        return 1;
    }
    uv_signal_init(&r->loop, &r->sigterm);
    uv_signal_init(&r->loop, &r->sigint);
    uv_timer_init(&r->loop, &r->deadline);
    uv_timer_init(&r->loop, &r->drain_poll);
    uv_timer_init(&r->loop, &r->hard_stop);
    r->handles = 1;
    r->sigterm.data = r->sigint.data = r->deadline.data = r->drain_poll.data = r->hard_stop.data =
        r;
    uv_signal_start(&r->sigterm, run__on_signal, SIGTERM);
    uv_signal_start(&r->sigint, run__on_signal, SIGINT);
    return 0;
}

static void run__usage(FILE *out)
{
    fprintf(out, "usage: needletrace run [--config FILE] [--SECTION-KEY VALUE]...\n\n"
                 "Runs the collector: subscribes to the broker, journals every message, writes\n"
                 "it to PostgreSQL. Stops cleanly on SIGTERM or SIGINT.\n");
}

/* Runs the pipeline until it is stopped; returns the exit code. */
static int run__serve(run_t *r)
{
    nt_journal_options_t jopts = {r->cfg.journal_dir, (uint64_t)r->cfg.journal_max_bytes,
                                  (uint64_t)r->cfg.journal_segment_bytes};
    char err[640] = "";
    if (nt_journal_init(&r->journal, &jopts, err, sizeof(err)) != 0) {
        nt_log(NT_LOG_ERROR, "run", "could not open the journal in \"%s\": %s", r->cfg.journal_dir,
               err);
        return 1;
    }
    nt_metrics.journal_end = nt_journal_end(r->journal);
    nt_metrics.journal_bytes = nt_journal_bytes(r->journal);
    uv_loop_init(&r->loop);
    int code = 1;
    if (run__open(r) != 0) {
        run__finish(r);
    } else {
        nt_log(NT_LOG_INFO, "run",
               "needletrace collector \"%s\" starting: broker %s, journal \"%s\" (%llu bytes to "
               "replay at most), http %s",
               r->cfg.collector_id, r->cfg.mqtt_url, r->cfg.journal_dir,
               (unsigned long long)(nt_journal_end(r->journal) - nt_journal_start(r->journal)),
               r->cfg.http_port > 0 ? r->cfg.http_listen : "off");
        nt_pgsink_start(r->sink);
        nt_mqttsrc_start(r->src);
        code = -1;
    }
    uv_run(&r->loop, UV_RUN_DEFAULT);
    if (r->handles) {
        uv_close((uv_handle_t *)&r->hard_stop, NULL);
        uv_run(&r->loop, UV_RUN_NOWAIT);
    }
    if (uv_loop_close(&r->loop) == UV_EBUSY) {
        r->loop_busy = 1;
        nt_log(NT_LOG_WARN, "run",
               "a name lookup of the broker is still running: exiting without waiting for it");
    }
    /* Records appended but not yet synced were never acknowledged; sync them anyway, so that a
     * restart commits them without waiting for the broker to redeliver. */
    if (nt_journal_sync(r->journal) != 0) {
        nt_log(NT_LOG_WARN, "run", "could not sync the journal at exit: %s",
               nt_journal_error(r->journal));
    }
    nt_journal_close(r->journal);
    return code < 0 ? r->exit_code : code;
}

int nt_cmd_run(int argc, char **argv, char *const *envp)
{
    run_t r;
    memset(&r, 0, sizeof(r));
    int code = nt_cmd_begin(&argc, argv, envp, run__usage, &r.cfg);
    if (code != NT_CMD_CONTINUE) {
        return code;
    }
    if (argc > 1) {
        fprintf(stderr,
                "needletrace: unexpected argument \"%s\" for run (see needletrace run --help)\n",
                argv[1]);
        nt_config_close(&r.cfg);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    srandom((unsigned)(nt_now_us() ^ getpid()));
    code = run__serve(&r);
    nt_config_close(&r.cfg);
    if (r.loop_busy) {
        /* libuv joins its thread pool at exit, which would wait for the lookup. The journal is
         * closed and everything else is released; only the lookup's thread remains. */
        fflush(NULL);
        _exit(code);
    }
    return code;
}
