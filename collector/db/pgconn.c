/* pgconn.c -- one non-blocking libpq connection on the loop: connect, watchdog, reconnect. */
#include "needletrace/pgconn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/bgcall.h"
#include "needletrace/common.h"
#include "needletrace/fdwatch.h"
#include "needletrace/log.h"
#include "needletrace/metrics.h"
#include "needletrace/pglookup.h"
#include "needletrace/pgparams.h"
#include "needletrace/pqutil.h"

typedef enum {
    PGCONN_WAITING = 0, /* disconnected; the retry timer will connect */
    PGCONN_RESOLVING,   /* looking the host names up (pglookup.h) */
    PGCONN_CONNECTING,  /* PQconnectPoll in progress */
    PGCONN_READY,       /* connected */
    PGCONN_CLOSED,
} pgconn_state_t;

struct nt_pgconn_s {
    uv_loop_t *loop;
    nt_pgparams_t params;
    uint32_t reconnect_min_ms;
    uint32_t reconnect_max_ms;
    int secondary; /* leaves needletrace_db_connected to the first connection */
    nt_pgconn_cbs_t cbs;
    void *data;

    PGconn *conn;
    nt_fdwatch_t watch;
    uv_timer_t retry_timer;
    uv_timer_t watchdog;
    uint64_t watchdog_ms;
    int handles_open;
    pgconn_state_t state;
    int in_flight;       /* a command was sent and has not finished */
    int cancelling;      /* the watchdog fired and sent a cancel request: in its grace */
    nt_bgcall_t *cancel; /* the cancel request in flight (NULL when none) */
    nt_bgcall_t *lookup; /* the host name lookup in flight (NULL when none) */
    char addrs[512];     /* the addresses last looked up, as logged */
    unsigned attempts;   /* consecutive failures, for the backoff */
    char error[512];
    char detail[32768]; /* the DETAIL of the last error result ("" when it had none) */
};

static void pgconn__on_io(nt_fdwatch_t *w, int status, int events, void *data);

static void pgconn__timer_closed(uv_handle_t *h)
{
    nt_pgconn_t *c = h->data;
    if (--c->handles_open == 0) {
        nt_pgparams_close(&c->params);
        free(c);
    }
}

/* libpq's last error, as one line. */
static const char *pgconn__pq_error(nt_pgconn_t *c)
{
    return nt_pqutil_message(c->conn != NULL ? PQerrorMessage(c->conn) : "out of memory", c->error,
                             sizeof(c->error));
}

/* Watches libpq's current socket; re-reads PQsocket every time, as it may change while
 * connecting. Returns 0, or NT_EDB after the connection was dropped. */
static int pgconn__watch(nt_pgconn_t *c, int events)
{
    int fd = PQsocket(c->conn);
    if (fd < 0) {
        nt_pgconn_fail(c, "connection has no socket");
        return NT_EDB;
    }
    if (nt_fdwatch_set(&c->watch, fd, events) != 0) {
        nt_pgconn_fail(c, "could not watch the database socket");
        return NT_EDB;
    }
    return 0;
}

/* Server notices (e.g. from the rule functions) are routine here: logged at debug level. */
static void pgconn__notice(void *arg, const char *message)
{
    char buf[512];
    nt_log(NT_LOG_DEBUG, "db", "server notice: %s", nt_pqutil_message(message, buf, sizeof(buf)));
}

static void pgconn__on_retry_timer(uv_timer_t *t)
{
    nt_pgconn_t *c = t->data;
    if (c->state == PGCONN_WAITING) {
        nt_pgconn_connect(c);
    } else if (c->state == PGCONN_READY && c->cbs.on_retry != NULL) {
        c->cbs.on_retry(c, c->data);
    }
}

static void pgconn__schedule_retry(nt_pgconn_t *c)
{
    uint64_t delay = nt_backoff_ms(c->reconnect_min_ms, c->reconnect_max_ms, c->attempts++);
    uv_timer_start(&c->retry_timer, pgconn__on_retry_timer, delay, 0);
}

/* A cancel request on its thread: PQcancel's result. */
typedef struct {
    PGcancel *cancel;
    int pid;
    int ok;
    char err[256];
} pgconn__cancel_t;

static void pgconn__cancel_run(void *arg)
{
    pgconn__cancel_t *x = arg;
    x->ok = PQcancel(x->cancel, x->err, sizeof(x->err));
}

static void pgconn__cancel_free(void *arg)
{
    pgconn__cancel_t *x = arg;
    PQfreeCancel(x->cancel);
    free(x);
}

static void pgconn__cancel_done(nt_bgcall_t *b, void *arg, void *data)
{
    nt_pgconn_t *c = data;
    pgconn__cancel_t *x = arg;
    c->cancel = NULL;
    if (!x->ok) {
        char buf[256];
        nt_log(NT_LOG_WARN, "db", "could not send the cancel request for backend %d: %s", x->pid,
               nt_pqutil_message(x->err, buf, sizeof(buf)));
    }
}

/* Stops waiting for a cancel request in flight; it is still sent, on its thread. */
static void pgconn__forget_cancel(nt_pgconn_t *c)
{
    nt_bgcall_abandon(c->cancel);
    c->cancel = NULL;
    c->cancelling = 0;
}

/* Sends a cancel request for the statement in flight, without blocking the loop. 0, or NT_E*
 * when it could not be started (the caller drops the connection). */
static int pgconn__send_cancel(nt_pgconn_t *c)
{
    pgconn__cancel_t *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        return NT_ENOMEM;
    }
    x->cancel = PQgetCancel(c->conn);
    x->pid = PQbackendPID(c->conn);
    if (x->cancel == NULL) {
        free(x);
        return NT_EDB;
    }
    nt_bgcall_abandon(c->cancel); /* an older one, still in flight */
    int rc = nt_bgcall_start(c->loop, pgconn__cancel_run, x, pgconn__cancel_free,
                             pgconn__cancel_done, c, &c->cancel);
    if (rc != 0) {
        c->cancel = NULL;
        pgconn__cancel_free(x);
    }
    return rc;
}

static void pgconn__on_watchdog(uv_timer_t *t)
{
    nt_pgconn_t *c = t->data;
    char why[128];
    if (c->cancelling) {
        snprintf(why, sizeof(why),
                 "no answer from the database within %llu s, nor %d s after a cancel request",
                 (unsigned long long)(c->watchdog_ms / 1000), NT_PGCONN_CANCEL_GRACE_MS / 1000);
        nt_pgconn_fail(c, why);
        return;
    }
    snprintf(why, sizeof(why),
             c->state == PGCONN_RESOLVING ? "the lookup of the database host took more than %llu s"
                                          : "no answer from the database within %llu s",
             (unsigned long long)(c->watchdog_ms / 1000));
    if (c->state != PGCONN_READY || !c->in_flight || pgconn__send_cancel(c) != 0) {
        nt_pgconn_fail(c, why);
        return;
    }
    nt_metrics.db_cancel_requests++;
    nt_log(NT_LOG_WARN, "db", "%s; cancelling its statement (backend %d)", why,
           PQbackendPID(c->conn));
    c->cancelling = 1;
    uv_timer_start(&c->watchdog, pgconn__on_watchdog, NT_PGCONN_CANCEL_GRACE_MS, 0);
}

void nt_pgconn_fail(nt_pgconn_t *c, const char *why)
{
    if (c->state == PGCONN_CLOSED || c->state == PGCONN_WAITING) {
        return;
    }
    if (!c->secondary) {
        nt_metrics.db_errors++;
    }
    int connecting = c->state == PGCONN_CONNECTING || c->state == PGCONN_RESOLVING;
    if (c->secondary) {
        /* the first connection says whether the database is reachable */
        nt_log(connecting ? NT_LOG_DEBUG : NT_LOG_WARN, "db",
               "%s the second database connection: %s; connecting it again",
               connecting ? "could not make" : "lost", why);
    } else if (connecting && c->attempts > 0) {
        nt_log(NT_LOG_DEBUG, "db", "could not connect to the database: %s", why);
    } else if (connecting) {
        nt_log(NT_LOG_WARN, "db", "could not connect to the database: %s; retrying", why);
    } else {
        nt_log(NT_LOG_WARN, "db", "lost the database connection: %s; retrying from the checkpoint",
               why);
    }
    nt_fdwatch_drop(&c->watch);
    uv_timer_stop(&c->watchdog);
    pgconn__forget_cancel(c);
    nt_bgcall_abandon(c->lookup);
    c->lookup = NULL;
    if (c->conn != NULL) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
    if (!c->secondary) {
        nt_metrics.db_connected = 0;
    }
    c->in_flight = 0;
    c->state = PGCONN_WAITING;
    pgconn__schedule_retry(c);
    if (c->cbs.on_lost != NULL) {
        c->cbs.on_lost(c, c->data);
    }
}

/* Starts libpq's asynchronous connect with the parameters as they are. */
static void pgconn__start(nt_pgconn_t *c)
{
    c->state = PGCONN_CONNECTING;
    c->conn = PQconnectStartParams(c->params.keys, c->params.values, 0);
    if (c->conn == NULL || PQstatus(c->conn) == CONNECTION_BAD) {
        nt_pgconn_fail(c, pgconn__pq_error(c));
        return;
    }
    PQsetNoticeProcessor(c->conn, pgconn__notice, c);
    pgconn__watch(c, UV_WRITABLE);
}

/* Logs the addresses looked up, when they changed. */
static void pgconn__log_addrs(nt_pgconn_t *c, const nt_pglookup_t *l)
{
    char buf[sizeof(c->addrs)];
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < l->nhosts; i++) {
        for (size_t a = 0; l->hosts[i].resolve && a < l->naddrs; a++) {
            if (l->addrs[a].host == i && len < sizeof(buf)) {
                len += (size_t)snprintf(buf + len, sizeof(buf) - len, "%s%s=%s", len ? ", " : "",
                                        l->hosts[i].name, l->addrs[a].addr);
            }
        }
    }
    if (strcmp(buf, c->addrs) != 0) {
        nt_log(c->secondary ? NT_LOG_DEBUG : NT_LOG_INFO, "db", "database host addresses: %s%s%s",
               buf, l->failed > 0 ? "; could not look up " : "", l->failed > 0 ? l->error : "");
        snprintf(c->addrs, sizeof(c->addrs), "%s", buf);
    }
}

/* On the lookup's thread. */
static void pgconn__lookup_run(void *arg)
{
    nt_pglookup_run(arg);
}

/* The lookup ended: connect to the addresses found (the names stay the hosts, for TLS), or fail
 * (retried after the backoff; logged once in a row, by nt_pgconn_fail). */
static void pgconn__looked_up(nt_bgcall_t *b, void *arg, void *data)
{
    nt_pgconn_t *c = data;
    nt_pglookup_t *l = arg;
    char why[400];
    c->lookup = NULL;
    if (nt_pgparams_set_addrs(&c->params, l->hosts, l->nhosts, l->addrs, l->naddrs) != 0) {
        snprintf(why, sizeof(why), "could not look up the database host %s", l->error);
        nt_pgconn_fail(c, why);
        return;
    }
    pgconn__log_addrs(c, l);
    pgconn__start(c);
}

/* Looks the host names up first when the connection parameters have some (pglookup.h): on a
 * thread of its own, bounded by the connect watchdog. */
void nt_pgconn_connect(nt_pgconn_t *c)
{
    uv_timer_stop(&c->retry_timer);
    c->state = PGCONN_RESOLVING;
    nt_pgconn_arm_watchdog(c, NT_PGCONN_CONNECT_TIMEOUT_MS);
    nt_pglookup_t *l = calloc(1, sizeof(*l));
    int n = l != NULL ? nt_pgparams_hosts(&c->params, l->hosts, NT_PGLOOKUP_MAX_HOSTS) : NT_ENOMEM;
    if (n < 0) {
        free(l);
        nt_pgconn_fail(c, n == NT_ECONFIG ? "database.url has a port list that does not match its "
                                            "host list"
                          : n == NT_ETOOBIG ? "database.url has too many hosts"
                                            : nt_strerror(n));
        return;
    }
    l->nhosts = (size_t)n;
    if (!nt_pglookup_needed(l)) {
        free(l);
        pgconn__start(c); /* a socket, or addresses given: libpq looks nothing up */
        return;
    }
    int rc =
        nt_bgcall_start(c->loop, pgconn__lookup_run, l, free, pgconn__looked_up, c, &c->lookup);
    if (rc != 0) {
        free(l);
        nt_pgconn_fail(c, "could not start the database host lookup");
    }
}

/* One step of the asynchronous connect; on_connected once it is done. */
static void pgconn__connect_poll(nt_pgconn_t *c)
{
    switch (PQconnectPoll(c->conn)) {
    case PGRES_POLLING_READING:
        pgconn__watch(c, UV_READABLE);
        return;
    case PGRES_POLLING_WRITING:
        pgconn__watch(c, UV_WRITABLE);
        return;
    case PGRES_POLLING_FAILED:
        nt_pgconn_fail(c, pgconn__pq_error(c));
        return;
    default:
        break;
    }
    if (PQsetnonblocking(c->conn, 1) != 0) {
        nt_pgconn_fail(c, pgconn__pq_error(c));
        return;
    }
    if (!c->secondary) {
        nt_metrics.db_connects++; /* the first connection's (the second's are logged at debug) */
    }
    c->state = PGCONN_READY;
    if (pgconn__watch(c, UV_READABLE) == 0 && c->cbs.on_connected != NULL) {
        c->cbs.on_connected(c, c->data);
    }
}

/* Hands one result of the command in flight to the owner. */
static void pgconn__result(nt_pgconn_t *c, const PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    switch (st) {
    case PGRES_COPY_IN:
        c->cbs.on_copy_in(c, c->data);
        return;
    case PGRES_TUPLES_OK:
        c->cbs.on_rows(c, res, c->data);
        return;
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
        return;
    default: {
        const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
        snprintf(c->detail, sizeof(c->detail), "%s", detail != NULL ? detail : "");
        c->cbs.on_error(c, code != NULL ? code : "XX000", msg != NULL ? msg : PQresStatus(st),
                        c->data);
        return;
    }
    }
}

/* Reads what arrived and hands over every complete result; on_done when a command ends. */
static void pgconn__read(nt_pgconn_t *c)
{
    if (!PQconsumeInput(c->conn)) {
        nt_pgconn_fail(c, pgconn__pq_error(c));
        return;
    }
    while (c->conn != NULL && c->in_flight && !PQisBusy(c->conn)) {
        PGresult *res = PQgetResult(c->conn);
        if (res == NULL) {
            c->in_flight = 0;
            c->cbs.on_done(c, c->data); /* may send the next command */
            continue;
        }
        pgconn__result(c, res);
        PQclear(res);
        if (c->conn != NULL && PQflush(c->conn) == 1) {
            pgconn__watch(c, UV_READABLE | UV_WRITABLE);
        }
    }
    if (c->conn != NULL && PQstatus(c->conn) == CONNECTION_BAD) {
        nt_pgconn_fail(c, pgconn__pq_error(c));
    }
}

static void pgconn__on_io(nt_fdwatch_t *w, int status, int events, void *data)
{
    nt_pgconn_t *c = data;
    if (c->state == PGCONN_CONNECTING) {
        pgconn__connect_poll(c);
        return;
    }
    if (c->state != PGCONN_READY) {
        return;
    }
    if (status < 0) {
        events = UV_READABLE; /* let libpq report the error */
    }
    if (events & UV_WRITABLE) {
        int rc = PQflush(c->conn);
        if (rc < 0) {
            nt_pgconn_fail(c, pgconn__pq_error(c));
            return;
        }
        if (rc == 0 && pgconn__watch(c, UV_READABLE) != 0) {
            return;
        }
    }
    if (events & UV_READABLE) {
        pgconn__read(c);
    }
}

/* ---- public ---------------------------------------------------------------------------------- */

int nt_pgconn_init(uv_loop_t *loop, nt_pgconn_t **out, const nt_pgconn_options_t *opts,
                   const nt_pgconn_cbs_t *cbs, void *data)
{
    nt_pgconn_t *c = calloc(1, sizeof(*c));
    char err[128];
    if (c == NULL) {
        return NT_ENOMEM;
    }
    int rc = nt_pgparams_init(&c->params, opts->conninfo,
                              opts->collector_id != NULL ? opts->collector_id : "",
                              opts->statement_timeout_ms, err, sizeof(err));
    if (rc != 0) {
        free(c);
        return rc;
    }
    if (opts->password != NULL) {
        nt_pgparams_set_password(&c->params, opts->password);
    }
    c->loop = loop;
    c->cbs = *cbs;
    c->data = data;
    c->secondary = opts->secondary;
    c->reconnect_min_ms = opts->reconnect_min_ms != 0 ? opts->reconnect_min_ms : 250;
    c->reconnect_max_ms =
        opts->reconnect_max_ms < c->reconnect_min_ms ? c->reconnect_min_ms : opts->reconnect_max_ms;
    nt_fdwatch_init(&c->watch, loop, pgconn__on_io, c);
    uv_timer_init(loop, &c->retry_timer);
    uv_timer_init(loop, &c->watchdog);
    c->retry_timer.data = c;
    c->watchdog.data = c;
    c->handles_open = 2;
    c->state = PGCONN_WAITING;
    *out = c;
    return 0;
}

int nt_pgconn_send(nt_pgconn_t *c, const char *sql, int nparams, const char *const *params)
{
    int ok = nparams == 0 ? PQsendQuery(c->conn, sql)
                          : PQsendQueryParams(c->conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (!ok) {
        nt_pgconn_fail(c, pgconn__pq_error(c));
        return NT_EDB;
    }
    c->in_flight = 1;
    return pgconn__watch(c, UV_READABLE | (PQflush(c->conn) == 1 ? UV_WRITABLE : 0));
}

int nt_pgconn_put_copy(nt_pgconn_t *c, const void *data, size_t len)
{
    if (PQputCopyData(c->conn, data, (int)len) != 1 || PQputCopyEnd(c->conn, NULL) != 1) {
        nt_pgconn_fail(c, pgconn__pq_error(c));
        return NT_EDB;
    }
    return 0;
}

void nt_pgconn_arm_watchdog(nt_pgconn_t *c, uint64_t ms)
{
    c->cancelling = 0;
    c->watchdog_ms = ms;
    uv_timer_start(&c->watchdog, pgconn__on_watchdog, ms, 0);
}

void nt_pgconn_disarm_watchdog(nt_pgconn_t *c)
{
    c->cancelling = 0;
    uv_timer_stop(&c->watchdog);
}

void nt_pgconn_backoff(nt_pgconn_t *c, int restart)
{
    if (restart || !uv_is_active((uv_handle_t *)&c->retry_timer)) {
        pgconn__schedule_retry(c);
    }
}

int nt_pgconn_backing_off(const nt_pgconn_t *c)
{
    return uv_is_active((const uv_handle_t *)&c->retry_timer);
}

void nt_pgconn_backoff_reset(nt_pgconn_t *c)
{
    c->attempts = 0;
}

const char *nt_pgconn_error_detail(const nt_pgconn_t *c)
{
    return c->detail;
}

int nt_pgconn_connected(const nt_pgconn_t *c)
{
    return c->state == PGCONN_READY;
}

void nt_pgconn_close(nt_pgconn_t *c)
{
    c->state = PGCONN_CLOSED;
    nt_fdwatch_drop(&c->watch);
    pgconn__forget_cancel(c);
    nt_bgcall_abandon(c->lookup);
    c->lookup = NULL;
    if (c->conn != NULL) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
    if (!c->secondary) {
        nt_metrics.db_connected = 0;
    }
    uv_timer_stop(&c->retry_timer);
    uv_timer_stop(&c->watchdog);
    uv_close((uv_handle_t *)&c->watchdog, pgconn__timer_closed);
    uv_close((uv_handle_t *)&c->retry_timer, pgconn__timer_closed);
}
