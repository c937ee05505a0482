/* bench_tool.c -- the measuring instruments of tests/bench/run.sh: a counting MQTT subscriber,
 * a binary COPY loader and an fdatasync probe.
 *
 *   bench_tool count --port P [--host H] [--topic T] --count N [--timeout S]
 *       Connects (MQTT v5, receive-maximum 65535, clean start), subscribes to T at QoS 1,
 *       prints "ready" once the broker granted the subscription, then counts messages
 *       (acknowledging each burst, nothing else) until N arrived. Prints one JSON line with
 *       the rate between the first and the last message. Exit 1 on a timeout.
 *
 *   bench_tool copy --conninfo S --dump FILE [--batch-events N] [--batch-bytes B] [--raw]
 *       Reads a `needletrace simulate --dump` file, turns every message into rows with
 *       nt_batch (the collector's own decoder and COPY encoder, not timed), then times
 *       binary COPY into needletrace.events (and needletrace.raw_messages with --raw).
 *       --batch-events 0 (default): one COPY, one transaction. N > 0: one transaction per
 *       batch of at most N events / B payload bytes, as the collector cuts them.
 *
 *   bench_tool fsync --dir D [--count N] [--bytes B]
 *       N times: write B bytes at the end of a scratch file in D and fdatasync it. Prints
 *       the latency percentiles of each write+fdatasync.
 *
 *   bench_tool alerts --port P [--host H] [--topic T] [--timeout S]
 *       Subscribes (MQTT v5, clean start, QoS 1) to T (default clinics/+/alerts/#), prints
 *       "ready" once granted, then one JSON line per message received:
 *       {"recv_us":<wall clock (CLOCK_REALTIME) in us when it arrived>,"alert":<payload>}
 *       (the payload is the collector's alert JSON, copied verbatim). Runs until SIGTERM or
 *       SIGINT (or S seconds, default 3600), then prints {"summary":{"messages":..,"cpu_s":..}}.
 *
 * Every mode prints its result as one JSON object on stdout; errors go to stderr. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "needletrace/batch.h"
#include "needletrace/common.h"

#define BENCH_BURST_MESSAGES 4096
#define BENCH_SEND_CHUNK     (1024u * 1024u)

static double bench__mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void bench__usage(FILE *out)
{
    fputs("usage: bench_tool count --port P [--host H] [--topic T] --count N [--timeout S]\n"
          "       bench_tool copy --conninfo S --dump FILE [--batch-events N] [--batch-bytes B]"
          " [--raw]\n"
          "       bench_tool fsync --dir D [--count N] [--bytes B]\n"
          "       bench_tool alerts --port P [--host H] [--topic T] [--timeout S]\n",
          out);
}

/* Parses an unsigned decimal in [lo, hi] or exits 2 naming the flag. */
static uint64_t bench__num(const char *s, const char *flag, uint64_t lo, uint64_t hi)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < lo || v > hi) {
        fprintf(stderr,
                "bench_tool: invalid value \"%s\" for %s: expected %" PRIu64 "..%" PRIu64 "\n", s,
                flag, lo, hi);
        exit(2);
    }
    return (uint64_t)v;
}

/* ---- count ---------------------------------------------------------------------------------- */

typedef struct {
    uint64_t want;
    uint64_t got;
    uint64_t bytes;
    double first_s;
    double last_s;
    int subscribed; /* 1 granted, -1 refused */
    int connect_rc; /* -1 until CONNACK */
} count_t;

static void count__on_connect(struct mosquitto *mosq, void *data, int rc, int flags,
                              const mosquitto_property *props)
{
    count_t *c = data;
    c->connect_rc = rc;
}

static void count__on_subscribe(struct mosquitto *mosq, void *data, int mid, int n,
                                const int *granted, const mosquitto_property *props)
{
    count_t *c = data;
    c->subscribed = (n >= 1 && granted[0] <= 2) ? 1 : -1;
}

static void count__on_message(struct mosquitto *mosq, void *data,
                              const struct mosquitto_message *msg, const mosquitto_property *props)
{
    count_t *c = data;
    double now = bench__mono_s();
    if (c->got == 0) {
        c->first_s = now;
    }
    c->last_s = now;
    c->got++;
    c->bytes += msg->payloadlen > 0 ? (uint64_t)msg->payloadlen : 0;
}

/* One pass of the client loop, collector style: read a burst of packets, then write
 * (the PUBACKs of the whole burst leave together). Returns 0, or -1 on a lost connection. */
static int count__pump(struct mosquitto *mosq, int timeout_ms)
{
    struct pollfd pfd = {.fd = mosquitto_socket(mosq), .events = POLLIN};
    if (pfd.fd < 0) {
        return -1;
    }
    if (mosquitto_want_write(mosq)) {
        pfd.events |= POLLOUT;
    }
    int n = poll(&pfd, 1, timeout_ms);
    if (n < 0 && errno != EINTR) {
        return -1;
    }
    if (n > 0 && (pfd.revents & (POLLIN | POLLERR | POLLHUP))) {
        for (int i = 0; i < BENCH_BURST_MESSAGES; i++) {
            errno = 0;
            int rc = mosquitto_loop_read(mosq, 1);
            if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(mosq) < 0) {
                return -1;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }
        }
    }
    if (mosquitto_want_write(mosq) && mosquitto_loop_write(mosq, 1) != MOSQ_ERR_SUCCESS) {
        return -1;
    }
    return 0;
}

static int bench__count(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    const char *topic = "clinics/+/handpieces/+/telemetry";
    int port = 0;
    uint64_t want = 0;
    double timeout_s = 120;
    static const struct option opts[] = {
        {"host", required_argument, NULL, 'H'},    {"port", required_argument, NULL, 'p'},
        {"topic", required_argument, NULL, 't'},   {"count", required_argument, NULL, 'n'},
        {"timeout", required_argument, NULL, 'T'}, {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'H':
            host = optarg;
            break;
        case 'p':
            port = (int)bench__num(optarg, "--port", 1, 65535);
            break;
        case 't':
            topic = optarg;
            break;
        case 'n':
            want = bench__num(optarg, "--count", 1, UINT64_MAX / 2);
            break;
        case 'T':
            timeout_s = (double)bench__num(optarg, "--timeout", 1, 86400);
            break;
        default:
            bench__usage(stderr);
            return 2;
        }
    }
    if (port == 0 || want == 0) {
        bench__usage(stderr);
        return 2;
    }

    mosquitto_lib_init();
    count_t c = {.want = want, .connect_rc = -1};
    char client_id[64];
    snprintf(client_id, sizeof(client_id), "nt-bench-count-%ld", (long)getpid());
    struct mosquitto *mosq = mosquitto_new(client_id, true, &c);
    if (mosq == NULL) {
        fprintf(stderr, "bench_tool: could not create the mqtt client: %s\n", strerror(errno));
        return 1;
    }
    mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_int_option(mosq, MOSQ_OPT_RECEIVE_MAXIMUM, 65535);
    mosquitto_int_option(mosq, MOSQ_OPT_TCP_NODELAY, 1);
    /* As the collector: queue PUBACKs and send them once per burst, not one write each. */
    mosquitto_threaded_set(mosq, true);
    mosquitto_connect_v5_callback_set(mosq, count__on_connect);
    mosquitto_subscribe_v5_callback_set(mosq, count__on_subscribe);
    mosquitto_message_v5_callback_set(mosq, count__on_message);

    int code = 1;
    int rc = mosquitto_connect_bind_v5(mosq, host, port, 60, NULL, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "bench_tool: could not connect to broker %s:%d: %s\n", host, port,
                rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
        goto out;
    }
    double deadline = bench__mono_s() + 15;
    while (c.connect_rc < 0 && bench__mono_s() < deadline) {
        if (count__pump(mosq, 100) != 0) {
            break;
        }
    }
    if (c.connect_rc != 0) {
        fprintf(stderr, "bench_tool: broker %s:%d did not accept the connection (%d)\n", host, port,
                c.connect_rc);
        goto out;
    }
    rc = mosquitto_subscribe_v5(mosq, NULL, topic, 1, 0, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "bench_tool: could not subscribe to %s: %s\n", topic,
                mosquitto_strerror(rc));
        goto out;
    }
    while (c.subscribed == 0 && bench__mono_s() < deadline) {
        if (count__pump(mosq, 100) != 0) {
            break;
        }
    }
    if (c.subscribed != 1) {
        fprintf(stderr, "bench_tool: the broker did not grant the subscription to %s\n", topic);
        goto out;
    }
    printf("ready\n");
    fflush(stdout);

    deadline = bench__mono_s() + timeout_s;
    double misc_at = bench__mono_s() + 1;
    while (c.got < c.want) {
        if (count__pump(mosq, 200) != 0) {
            fprintf(stderr, "bench_tool: lost the broker connection after %" PRIu64 " messages\n",
                    c.got);
            goto out;
        }
        double now = bench__mono_s();
        if (now >= misc_at) {
            mosquitto_loop_misc(mosq);
            misc_at = now + 1;
        }
        if (now >= deadline) {
            fprintf(stderr,
                    "bench_tool: timed out after %.0f s with %" PRIu64 " of %" PRIu64 " messages\n",
                    timeout_s, c.got, c.want);
            goto out;
        }
    }
    /* Acknowledge the last burst before leaving, so the publisher's final wait ends. */
    while (mosquitto_want_write(mosq) && mosquitto_loop_write(mosq, 1) == MOSQ_ERR_SUCCESS) {
    }
    double span = c.last_s - c.first_s;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    printf("{\"messages\":%" PRIu64 ",\"payload_bytes\":%" PRIu64
           ",\"first_to_last_s\":%.6f,\"msgs_per_s\":%.1f,\"cpu_s\":%.3f}\n",
           c.got, c.bytes, span, span > 0 ? (double)(c.got - 1) / span : 0.0, cpu);
    code = 0;
    mosquitto_disconnect(mosq);
    mosquitto_loop_write(mosq, 1);
out:
    mosquitto_destroy(mosq);
    mosquitto_lib_cleanup();
    return code;
}

/* ---- copy ----------------------------------------------------------------------------------- */

/* One COPY stream (complete: header, tuples, trailer) for one table. */
typedef struct {
    const char *table;
    const char *columns;
    uint8_t *data;
    size_t len;
} stream_t;

/* One transaction: its streams in send order (raw_messages first, as the collector). */
typedef struct {
    stream_t streams[2];
    int nstreams;
    uint32_t events;
    uint32_t messages;
} txn_t;

typedef struct {
    txn_t *txns;
    size_t ntxns;
    size_t cap;
    uint64_t events;
    uint64_t messages;
    uint64_t rejected;
    uint64_t stream_bytes;
} plan_t;

static uint32_t bench__be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Reads a whole file into memory. 0 or -1 (reported). */
static int bench__slurp(const char *path, uint8_t **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "bench_tool: could not open \"%s\": %s\n", path, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (buf != NULL && got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n <= 0) {
            fprintf(stderr, "bench_tool: could not read \"%s\": %s\n", path,
                    n < 0 ? strerror(errno) : "short read");
            free(buf);
            close(fd);
            return -1;
        }
        got += (size_t)n;
    }
    close(fd);
    if (buf == NULL) {
        fprintf(stderr, "bench_tool: out of memory reading \"%s\"\n", path);
        return -1;
    }
    *out = buf;
    *len = got;
    return 0;
}

/* Copies one finished table stream of b into s. 0 or -1. */
static int bench__take_stream(stream_t *s, const nt_batch_table_t *t)
{
    s->table = t->table;
    s->columns = t->columns;
    s->len = t->buf.len;
    s->data = malloc(s->len);
    if (s->data == NULL) {
        return -1;
    }
    memcpy(s->data, t->buf.data, s->len);
    return 0;
}

/* Closes the batch into one transaction of the plan. 0 or -1. */
static int bench__cut(plan_t *p, nt_batch_t *b, int with_raw)
{
    if (b->messages == 0) {
        return 0;
    }
    if (nt_batch_finish(b) != 0) {
        fprintf(stderr, "bench_tool: out of memory finishing a batch\n");
        return -1;
    }
    if (p->ntxns == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        txn_t *t = realloc(p->txns, cap * sizeof(*t));
        if (t == NULL) {
            return -1;
        }
        p->txns = t;
        p->cap = cap;
    }
    txn_t *t = &p->txns[p->ntxns++];
    memset(t, 0, sizeof(*t));
    if (with_raw && bench__take_stream(&t->streams[t->nstreams++], &b->tables[NT_BATCH_RAW]) != 0) {
        return -1;
    }
    if (bench__take_stream(&t->streams[t->nstreams++], &b->tables[NT_BATCH_EVENTS]) != 0) {
        return -1;
    }
    for (int i = 0; i < t->nstreams; i++) {
        p->stream_bytes += t->streams[i].len;
    }
    t->events = b->events;
    t->messages = b->messages;
    p->events += b->events;
    p->messages += b->messages;
    p->rejected += b->rejected;
    nt_batch_reset(b);
    return 0;
}

/* Runs one command that must return PGRES_COMMAND_OK. 0 or -1 (reported). */
static int bench__exec(PGconn *conn, const char *sql)
{
    PGresult *r = PQexec(conn, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) {
        fprintf(stderr, "bench_tool: %s failed: %s", sql, PQerrorMessage(conn));
    }
    PQclear(r);
    return ok ? 0 : -1;
}

static int bench__send_stream(PGconn *conn, const stream_t *s)
{
    char sql[1024];
    snprintf(sql, sizeof(sql), "COPY needletrace.%s (%s) FROM STDIN (FORMAT binary)", s->table,
             s->columns);
    PGresult *r = PQexec(conn, sql);
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        fprintf(stderr, "bench_tool: %s failed: %s", sql, PQerrorMessage(conn));
        PQclear(r);
        return -1;
    }
    PQclear(r);
    for (size_t off = 0; off < s->len; off += BENCH_SEND_CHUNK) {
        size_t n = s->len - off < BENCH_SEND_CHUNK ? s->len - off : BENCH_SEND_CHUNK;
        if (PQputCopyData(conn, (const char *)s->data + off, (int)n) != 1) {
            fprintf(stderr, "bench_tool: could not send COPY data: %s", PQerrorMessage(conn));
            return -1;
        }
    }
    if (PQputCopyEnd(conn, NULL) != 1) {
        fprintf(stderr, "bench_tool: could not end COPY: %s", PQerrorMessage(conn));
        return -1;
    }
    int rc = 0;
    while ((r = PQgetResult(conn)) != NULL) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            fprintf(stderr, "bench_tool: COPY into needletrace.%s failed: %s", s->table,
                    PQerrorMessage(conn));
            rc = -1;
        }
        PQclear(r);
    }
    return rc;
}

static int bench__copy(int argc, char **argv)
{
    const char *conninfo = NULL;
    const char *dump = NULL;
    uint64_t batch_events = 0;
    uint64_t batch_bytes = 1024 * 1024;
    int with_raw = 0;
    static const struct option opts[] = {
        {"conninfo", required_argument, NULL, 'c'},
        {"dump", required_argument, NULL, 'd'},
        {"batch-events", required_argument, NULL, 'e'},
        {"batch-bytes", required_argument, NULL, 'b'},
        {"raw", no_argument, NULL, 'r'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            conninfo = optarg;
            break;
        case 'd':
            dump = optarg;
            break;
        case 'e':
            batch_events = bench__num(optarg, "--batch-events", 0, 10000000);
            break;
        case 'b':
            batch_bytes = bench__num(optarg, "--batch-bytes", 4096, 1u << 30);
            break;
        case 'r':
            with_raw = 1;
            break;
        default:
            bench__usage(stderr);
            return 2;
        }
    }
    if (conninfo == NULL || dump == NULL) {
        bench__usage(stderr);
        return 2;
    }

    uint8_t *file = NULL;
    size_t file_len = 0;
    if (bench__slurp(dump, &file, &file_len) != 0) {
        return 1;
    }

    /* Build every stream first: decoding and encoding are the collector's CPU, not COPY's. */
    int code = 1;
    plan_t plan;
    memset(&plan, 0, sizeof(plan));
    nt_batch_t b;
    PGconn *conn = NULL;
    if (nt_batch_init(&b, "bench") != 0) {
        fprintf(stderr, "bench_tool: out of memory\n");
        free(file);
        return 1;
    }
    double build0 = bench__mono_s();
    int64_t received_us = nt_now_us();
    size_t off = 0;
    uint64_t pos = 0;
    while (off < file_len) {
        if (file_len - off < 4) {
            goto truncated;
        }
        uint32_t tl = bench__be32(file + off);
        if (file_len - off - 4 < (size_t)tl + 4) {
            goto truncated;
        }
        const char *topic = (const char *)file + off + 4;
        uint32_t pl = bench__be32(file + off + 4 + tl);
        if (file_len - off - 8 - tl < pl) {
            goto truncated;
        }
        const uint8_t *payload = file + off + 8 + tl;
        off += 8 + (size_t)tl + pl;
        uint64_t rec_len = 8 + 10 + (uint64_t)tl + pl; /* as the journal frames it */
        nt_journal_record_t rec = {
            .pos = pos,
            .next_pos = pos + rec_len,
            .received_us = received_us,
            .topic = topic,
            .topic_len = tl,
            .payload = payload,
            .payload_len = pl,
        };
        pos += rec_len;
        if (nt_batch_add(&b, &rec) != 0) {
            fprintf(stderr, "bench_tool: out of memory building the COPY streams\n");
            goto out;
        }
        if (batch_events > 0 && (b.events >= batch_events || b.bytes >= batch_bytes) &&
            bench__cut(&plan, &b, with_raw) != 0) {
            goto out;
        }
    }
    if (bench__cut(&plan, &b, with_raw) != 0) {
        goto out;
    }
    double build_s = bench__mono_s() - build0;
    if (plan.rejected > 0) {
        fprintf(stderr, "bench_tool: %" PRIu64 " of %" PRIu64 " messages in \"%s\" were rejected\n",
                plan.rejected, plan.messages, dump);
        goto out;
    }
    if (plan.events == 0) {
        fprintf(stderr, "bench_tool: \"%s\" holds no events\n", dump);
        goto out;
    }

    conn = PQconnectdb(conninfo);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "bench_tool: could not connect to the database: %s", PQerrorMessage(conn));
        goto out;
    }
    double t0 = bench__mono_s();
    for (size_t i = 0; i < plan.ntxns; i++) {
        const txn_t *t = &plan.txns[i];
        if (bench__exec(conn, "BEGIN") != 0) {
            goto out;
        }
        for (int k = 0; k < t->nstreams; k++) {
            if (bench__send_stream(conn, &t->streams[k]) != 0) {
                goto out;
            }
        }
        if (bench__exec(conn, "COMMIT") != 0) {
            goto out;
        }
    }
    double secs = bench__mono_s() - t0;
    printf("{\"transactions\":%zu,\"messages\":%" PRIu64 ",\"events\":%" PRIu64
           ",\"stream_bytes\":%" PRIu64 ",\"tables\":\"%s\",\"seconds\":%.6f"
           ",\"events_per_s\":%.1f,\"messages_per_s\":%.1f,\"build_s\":%.6f"
           ",\"build_us_per_event\":%.3f}\n",
           plan.ntxns, plan.messages, plan.events, plan.stream_bytes,
           with_raw ? "raw_messages+events" : "events", secs, (double)plan.events / secs,
           (double)plan.messages / secs, build_s, build_s * 1e6 / (double)plan.events);
    code = 0;
    goto out;

truncated:
    fprintf(stderr, "bench_tool: \"%s\" is truncated at byte %zu\n", dump, off);
out:
    PQfinish(conn);
    for (size_t i = 0; i < plan.ntxns; i++) {
        for (int k = 0; k < plan.txns[i].nstreams; k++) {
            free(plan.txns[i].streams[k].data);
        }
    }
    free(plan.txns);
    nt_batch_close(&b);
    free(file);
    return code;
}

/* ---- fsync ---------------------------------------------------------------------------------- */

static int bench__cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int bench__fsync(int argc, char **argv)
{
    const char *dir = NULL;
    uint64_t count = 200;
    uint64_t bytes = 4096;
    static const struct option opts[] = {
        {"dir", required_argument, NULL, 'd'},
        {"count", required_argument, NULL, 'n'},
        {"bytes", required_argument, NULL, 'b'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'd':
            dir = optarg;
            break;
        case 'n':
            count = bench__num(optarg, "--count", 1, 1000000);
            break;
        case 'b':
            bytes = bench__num(optarg, "--bytes", 1, 64u * 1024 * 1024);
            break;
        default:
            bench__usage(stderr);
            return 2;
        }
    }
    if (dir == NULL) {
        bench__usage(stderr);
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/bench-fsync.%ld", dir, (long)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    uint8_t *buf = calloc(1, (size_t)bytes);
    double *lat = calloc((size_t)count, sizeof(double));
    int code = 1;
    if (fd < 0 || buf == NULL || lat == NULL) {
        fprintf(stderr, "bench_tool: could not create \"%s\": %s\n", path, strerror(errno));
        goto out;
    }
    /* The file exists on disk before the loop, as a journal segment does. */
    if (fsync(fd) != 0) {
        fprintf(stderr, "bench_tool: fsync \"%s\": %s\n", path, strerror(errno));
        goto out;
    }
    double total0 = bench__mono_s();
    for (uint64_t i = 0; i < count; i++) {
        double t0 = bench__mono_s();
        if (write(fd, buf, (size_t)bytes) != (ssize_t)bytes || fdatasync(fd) != 0) {
            fprintf(stderr, "bench_tool: write/fdatasync \"%s\": %s\n", path, strerror(errno));
            goto out;
        }
        lat[i] = (bench__mono_s() - t0) * 1e6;
    }
    double total = bench__mono_s() - total0;
    qsort(lat, (size_t)count, sizeof(double), bench__cmp_double);
    printf("{\"count\":%" PRIu64 ",\"bytes\":%" PRIu64
           ",\"mean_us\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f}\n",
           count, bytes, total * 1e6 / (double)count, lat[count / 2],
           lat[(size_t)((double)count * 0.99)], lat[count - 1]);
    code = 0;
out:
    if (fd >= 0) {
        close(fd);
        unlink(path);
    }
    free(buf);
    free(lat);
    return code;
}

/* ---- alerts --------------------------------------------------------------------------------- */

static volatile sig_atomic_t alerts__stop;

static void alerts__on_signal(int sig)
{
    alerts__stop = 1;
}

typedef struct {
    count_t c; /* connect/subscribe state, message count */
    int bad;   /* payloads that could not be written as JSON */
} alerts_t;

/* One line per alert, stamped with the wall clock right as the client hands it over (the
 * same clock as simulate's device_time, on the same host). */
static void alerts__on_message(struct mosquitto *mosq, void *data,
                               const struct mosquitto_message *msg, const mosquitto_property *props)
{
    alerts_t *a = data;
    int64_t recv_us = nt_now_us();
    a->c.got++;
    const char *p = msg->payload;
    int len = msg->payloadlen;
    /* The payload is one JSON object; anything else would break the line format. */
    if (len < 2 || p[0] != '{' || p[len - 1] != '}' || memchr(p, '\n', (size_t)len) != NULL) {
        a->bad++;
        fprintf(stderr, "bench_tool: alert payload on %s is not a one-line JSON object\n",
                msg->topic);
        return;
    }
    printf("{\"recv_us\":%" PRId64 ",\"alert\":%.*s}\n", recv_us, len, p);
}

static int bench__alerts(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    const char *topic = "clinics/+/alerts/#";
    int port = 0;
    double timeout_s = 3600;
    static const struct option opts[] = {
        {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},
        {"topic", required_argument, NULL, 't'},
        {"timeout", required_argument, NULL, 'T'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'H':
            host = optarg;
            break;
        case 'p':
            port = (int)bench__num(optarg, "--port", 1, 65535);
            break;
        case 't':
            topic = optarg;
            break;
        case 'T':
            timeout_s = (double)bench__num(optarg, "--timeout", 1, 86400);
            break;
        default:
            bench__usage(stderr);
            return 2;
        }
    }
    if (port == 0) {
        bench__usage(stderr);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = alerts__on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    mosquitto_lib_init();
    alerts_t a;
    memset(&a, 0, sizeof(a));
    a.c.connect_rc = -1;
    char client_id[64];
    snprintf(client_id, sizeof(client_id), "nt-bench-alerts-%ld", (long)getpid());
    struct mosquitto *mosq = mosquitto_new(client_id, true, &a);
    if (mosq == NULL) {
        fprintf(stderr, "bench_tool: could not create the mqtt client: %s\n", strerror(errno));
        return 1;
    }
    mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_int_option(mosq, MOSQ_OPT_RECEIVE_MAXIMUM, 65535);
    mosquitto_int_option(mosq, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_threaded_set(mosq, true);
    /* count_t is the first member: the connect and subscribe callbacks are shared. */
    mosquitto_connect_v5_callback_set(mosq, count__on_connect);
    mosquitto_subscribe_v5_callback_set(mosq, count__on_subscribe);
    mosquitto_message_v5_callback_set(mosq, alerts__on_message);

    int code = 1;
    int rc = mosquitto_connect_bind_v5(mosq, host, port, 60, NULL, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "bench_tool: could not connect to broker %s:%d: %s\n", host, port,
                rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
        goto out;
    }
    double deadline = bench__mono_s() + 15;
    while (a.c.connect_rc < 0 && bench__mono_s() < deadline) {
        if (count__pump(mosq, 100) != 0) {
            break;
        }
    }
    if (a.c.connect_rc != 0) {
        fprintf(stderr, "bench_tool: broker %s:%d did not accept the connection (%d)\n", host, port,
                a.c.connect_rc);
        goto out;
    }
    rc = mosquitto_subscribe_v5(mosq, NULL, topic, 1, 0, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "bench_tool: could not subscribe to %s: %s\n", topic,
                mosquitto_strerror(rc));
        goto out;
    }
    while (a.c.subscribed == 0 && bench__mono_s() < deadline) {
        if (count__pump(mosq, 100) != 0) {
            break;
        }
    }
    if (a.c.subscribed != 1) {
        fprintf(stderr, "bench_tool: the broker did not grant the subscription to %s\n", topic);
        goto out;
    }
    printf("ready\n");
    fflush(stdout);

    deadline = bench__mono_s() + timeout_s;
    double misc_at = bench__mono_s() + 1;
    while (!alerts__stop) {
        if (count__pump(mosq, 100) != 0) {
            fprintf(stderr, "bench_tool: lost the broker connection after %" PRIu64 " alerts\n",
                    a.c.got);
            goto out;
        }
        fflush(stdout);
        double now = bench__mono_s();
        if (now >= misc_at) {
            mosquitto_loop_misc(mosq);
            misc_at = now + 1;
        }
        if (now >= deadline) {
            fprintf(stderr, "bench_tool: no SIGTERM within %.0f s; stopping\n", timeout_s);
            break;
        }
    }
    while (mosquitto_want_write(mosq) && mosquitto_loop_write(mosq, 1) == MOSQ_ERR_SUCCESS) {
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    printf("{\"summary\":{\"messages\":%" PRIu64 ",\"not_json\":%d,\"cpu_s\":%.3f}}\n", a.c.got,
           a.bad, cpu);
    fflush(stdout);
    code = a.bad > 0 ? 1 : 0;
    mosquitto_disconnect(mosq);
    mosquitto_loop_write(mosq, 1);
out:
    mosquitto_destroy(mosq);
    mosquitto_lib_cleanup();
    return code;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        bench__usage(stderr);
        return 2;
    }
    const char *mode = argv[1];
    argv[1] = argv[0];
    if (strcmp(mode, "count") == 0) {
        return bench__count(argc - 1, argv + 1);
    }
    if (strcmp(mode, "copy") == 0) {
        return bench__copy(argc - 1, argv + 1);
    }
    if (strcmp(mode, "fsync") == 0) {
        return bench__fsync(argc - 1, argv + 1);
    }
    if (strcmp(mode, "alerts") == 0) {
        return bench__alerts(argc - 1, argv + 1);
    }
    if (strcmp(mode, "-h") == 0 || strcmp(mode, "--help") == 0) {
        bench__usage(stdout);
        return 0;
    }
    bench__usage(stderr);
    return 2;
}
