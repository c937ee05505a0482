/* digester.c -- the collector's periodic signed digests of the ledger (digester.h). */
#include "needletrace/digester.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/common.h"
#include "needletrace/digest.h"
#include "needletrace/log.h"
#include "needletrace/pqutil.h"

/* The first digest this long after the start: the collector's first batches are sealed by then. */
#define DIGESTER_FIRST_MS 5000

struct nt_digester_s {
    uv_loop_t *loop;
    const nt_config_t *cfg;
    nt_mqttsrc_t *src;
    uv_timer_t timer;
    uv_work_t work;
    int working; /* a digest is being made on the thread pool */
    int closing;
    /* the work's results (thread pool -> loop) */
    char *json;
    char *heads; /* the head lines of the text, to skip an unchanged digest */
    char *last;  /* the head lines of the last digest made */
    char path[4096];
    char err[600];
    char topic[256];
};

/* On the thread pool: read the heads, sign, write the file (blocking work, off the loop). */
static void digester__work(uv_work_t *w)
{
    nt_digester_t *d = w->data;
    const nt_config_t *cfg = d->cfg;
    d->err[0] = '\0';
    d->path[0] = '\0';
    const char *const keys[] = {"connect_timeout", "fallback_application_name",
                                "dbname",          NT_PQUTIL_ENCODING_KEY,
                                "password",        NULL};
    const char *const values[] = {"10",
                                  "needletrace-digest",
                                  cfg->database_url,
                                  NT_PQUTIL_ENCODING_VALUE,
                                  cfg->database_password,
                                  NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    char *text = NULL, time[40];
    size_t n = 0;
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        snprintf(d->err, sizeof(d->err), "could not connect to the database: %s",
                 conn != NULL ? PQerrorMessage(conn) : "out of memory");
        d->err[strcspn(d->err, "\n")] = '\0';
    } else if (nt_digest_from_db(conn, &text, time, sizeof(time), &n, d->err, sizeof(d->err)) ==
               0) {
        const char *heads = strstr(text, "\nhead=");
        d->heads = strdup(heads != NULL ? heads : "");
        if (d->heads != NULL && (d->last == NULL || strcmp(d->heads, d->last) != 0) &&
            (d->json = nt_digest_sign(cfg->audit_signing_key_file, text, d->err, sizeof(d->err))) !=
                NULL &&
            cfg->audit_digest_dir != NULL &&
            nt_digest_write(cfg->audit_digest_dir, time, d->json, d->path, sizeof(d->path), d->err,
                            sizeof(d->err)) != 0) {
            free(d->json);
            d->json = NULL;
        }
    }
    free(text);
    PQfinish(conn);
}

static void digester__closed(uv_handle_t *h)
{
    free(h->data);
}

/* Back on the loop: publish, log, keep the heads. */
static void digester__done(uv_work_t *w, int status)
{
    nt_digester_t *d = w->data;
    d->working = 0;
    if (d->err[0] != '\0') {
        nt_log(NT_LOG_WARN, "audit", "could not make a ledger digest: %s; trying again in %lld s",
               d->err, (long long)d->cfg->audit_digest_interval_s);
    } else if (d->json != NULL) {
        int mid = 0;
        int published =
            d->cfg->audit_digest_topic != NULL && !d->closing &&
            nt_mqttsrc_publish(d->src, d->topic, d->json, strlen(d->json), 1, &mid) == 0;
        nt_log(NT_LOG_INFO, "audit", "ledger digest signed%s%s%s%s", d->path[0] ? ": " : "",
               d->path, published ? ", published retained on " : "", published ? d->topic : "");
        if (d->cfg->audit_digest_topic == NULL || published) {
            free(d->last);
            d->last = d->heads; /* made: the next one only when a chain moves */
            d->heads = NULL;
        }
    }
    free(d->json);
    free(d->heads);
    d->json = NULL;
    d->heads = NULL;
    if (d->closing) {
        free(d->last);
        uv_close((uv_handle_t *)&d->timer, digester__closed);
    }
}

static void digester__tick(uv_timer_t *t)
{
    nt_digester_t *d = t->data;
    if (d->working) {
        return;
    }
    d->work.data = d;
    if (uv_queue_work(d->loop, &d->work, digester__work, digester__done) == 0) {
        d->working = 1;
    }
}

int nt_digester_start(uv_loop_t *loop, const nt_config_t *cfg, nt_mqttsrc_t *src,
                      nt_digester_t **out)
{
    *out = NULL;
    if (cfg->audit_signing_key_file == NULL) {
        return 0;
    }
    if (cfg->audit_digest_dir == NULL && cfg->audit_digest_topic == NULL) {
        nt_log(NT_LOG_WARN, "audit",
               "audit.signing_key_file is set but neither audit.digest_dir nor "
               "audit.digest_topic: no digest is made");
        return 0;
    }
    nt_digester_t *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        return NT_ENOMEM;
    }
    d->loop = loop;
    d->cfg = cfg;
    d->src = src;
    if (cfg->audit_digest_topic != NULL) {
        snprintf(d->topic, sizeof(d->topic), "%s/%s", cfg->audit_digest_topic, cfg->collector_id);
    }
    uv_timer_init(loop, &d->timer);
    d->timer.data = d;
    uint64_t every = (uint64_t)cfg->audit_digest_interval_s * 1000u;
    uv_timer_start(&d->timer, digester__tick, DIGESTER_FIRST_MS, every);
    *out = d;
    return 0;
}

void nt_digester_close(nt_digester_t *d)
{
    if (d == NULL) {
        return;
    }
    d->closing = 1;
    uv_timer_stop(&d->timer);
    if (!d->working) {
        free(d->last);
        uv_close((uv_handle_t *)&d->timer, digester__closed);
    }
}
