/* test_metrics.c -- unit tests of the metrics: the alert labels, the histograms (buckets
 * cumulative, le inclusive, +Inf equal to _count), quarantine reasons generated from
 * NT_REASON_MAP, the journal fill ratio, reconnects, and the size of the whole exposition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/alert.h"
#include "needletrace/metrics.h"
#include "needletrace/reason.h"

#define RENDER_MAX (64 * 1024) /* what the HTTP listener gives the exposition */

static char *render(void)
{
    char *buf = malloc(RENDER_MAX);
    assert_non_null(buf);
    size_t n = nt_metrics_render(buf, RENDER_MAX);
    assert_true(n < RENDER_MAX - 1); /* never truncated */
    return buf;
}

static void assert_line(const char *text, const char *line)
{
    char want[512];
    snprintf(want, sizeof(want), "\n%s\n", line);
    if (strstr(text, want) == NULL) {
        fail_msg("no line \"%s\" in the exposition", line);
    }
}

static void assert_no(const char *text, const char *part)
{
    if (strstr(text, part) != NULL) {
        fail_msg("\"%s\" is in the exposition", part);
    }
}

/* The value of the sample whose name and labels are exactly series, or -1. */
static long long sample(const char *text, const char *series)
{
    char want[512];
    snprintf(want, sizeof(want), "\n%s ", series);
    const char *p = strstr(text, want);
    return p != NULL ? strtoll(p + strlen(want), NULL, 10) : -1;
}

static int reset(void **state)
{
    memset(&nt_metrics, 0, sizeof(nt_metrics));
    return 0;
}

static void test_alert_label(void **state)
{
    static const char *const sev[] = {"info", "warning", "critical"};
    for (unsigned r = 0; r < NT_RULE__COUNT; r++) {
        for (unsigned s = 0; s < 3; s++) {
            char payload[256];
            snprintf(payload, sizeof(payload),
                     "{\"alert_id\":7,\"rule\":\"%s\",\"severity\":\"%s\",\"clinic_id\":\"c\","
                     "\"details\":{\"severity\":\"info\"}}",
                     nt_alert_rules[r], sev[s]);
            assert_int_equal(nt_metrics_alert_label(nt_alert_rules[r], payload),
                             r * NT_METRICS_SEVERITIES + s);
        }
    }
    unsigned other_rule = NT_RULE__COUNT * NT_METRICS_SEVERITIES;
    assert_int_equal(nt_metrics_alert_label("NEW_RULE", "{\"severity\":\"warning\"}"),
                     other_rule + 1);
    assert_int_equal(nt_metrics_alert_label("CLOCK_SKEW", "{\"severity\":\"warn\"}"),
                     NT_RULE_CLOCK_SKEW * NT_METRICS_SEVERITIES + 3);
    assert_int_equal(nt_metrics_alert_label("CLOCK_SKEW", "{\"severity\":\"criticalx\"}"),
                     NT_RULE_CLOCK_SKEW * NT_METRICS_SEVERITIES + 3);
    assert_int_equal(nt_metrics_alert_label(NULL, NULL), other_rule + 3);
    assert_true(nt_metrics_alert_label(NULL, NULL) < NT_METRICS_ALERT_LABELS);
}

static void test_alerts_rendered(void **state)
{
    nt_metrics.alerts_raised[nt_metrics_alert_label("DEPTH_OUT_OF_RANGE",
                                                    "{\"severity\":\"critical\"}")] += 3;
    nt_metrics.alerts_delivered[nt_metrics_alert_label("NEW_RULE", "{\"severity\":\"info\"}")]++;
    char *text = render();
    assert_line(text, "# TYPE needletrace_alerts_raised_total counter");
    assert_line(
        text,
        "needletrace_alerts_raised_total{rule=\"DEPTH_OUT_OF_RANGE\",severity=\"critical\"} 3");
    /* every rule at warning and critical, zeros included */
    for (unsigned r = 0; r < NT_RULE__COUNT; r++) {
        char line[256];
        snprintf(line, sizeof(line),
                 "needletrace_alerts_delivered_total{rule=\"%s\",severity=\"warning\"}",
                 nt_alert_rules[r]);
        assert_true(sample(text, line) >= 0);
    }
    assert_line(text, "needletrace_alerts_delivered_total{rule=\"other\",severity=\"info\"} 1");
    assert_no(text, "needletrace_alerts_raised_total{rule=\"other\"");
    assert_no(text, "severity=\"info\"} 0");
    free(text);
}

static void test_quarantine_reasons_from_the_map(void **state)
{
    nt_metrics.db_quarantined_by_reason[NT_REASON_DB_REJECTED] = 2;
    char *text = render();
    for (int r = 1; r < NT_REASON__COUNT; r++) {
        char series[128];
        snprintf(series, sizeof(series), "needletrace_db_quarantined_total{reason=\"%s\"}",
                 nt_reason_name((nt_reason_t)r));
        assert_int_equal(sample(text, series), r == NT_REASON_DB_REJECTED ? 2 : 0);
    }
    assert_no(text, "reason=\"ok\"");
    free(text);
}

/* Checks the histogram NAME: cumulative buckets, +Inf == _count; returns _count. */
static long long check_hist(const char *text, const char *name)
{
    char head[128];
    snprintf(head, sizeof(head), "\nneedletrace_%s_bucket{le=\"", name);
    long long prev = 0;
    const char *p = text;
    int inf = 0;
    while ((p = strstr(p, head)) != NULL) {
        p += strlen(head);
        inf = strncmp(p, "+Inf\"", 5) == 0;
        const char *v = strstr(p, "} ");
        assert_non_null(v);
        long long n = strtoll(v + 2, NULL, 10);
        assert_true(n >= prev);
        prev = n;
    }
    assert_true(inf); /* the last bucket is +Inf */
    char count[128];
    snprintf(count, sizeof(count), "needletrace_%s_count", name);
    assert_int_equal(sample(text, count), prev);
    return prev;
}

static void test_histograms(void **state)
{
    static const uint64_t events[] = {0, 1, 2, 10, 11, 5000, 5001, 100000, 100001, 7};
    static const uint64_t us[] = {999, 1000, 1001, 250000, 120000000, 130000000};
    uint64_t sum = 0;
    for (size_t i = 0; i < sizeof(events) / sizeof(events[0]); i++) {
        nt_metrics_batch_committed(events[i], us[i % 6]);
        sum += events[i];
    }
    char *text = render();
    assert_line(text, "# TYPE needletrace_batch_events histogram");
    assert_line(text, "# TYPE needletrace_batch_commit_seconds histogram");
    assert_int_equal(check_hist(text, "batch_events"), 10);
    assert_int_equal(check_hist(text, "batch_commit_seconds"), 10);
    /* le is inclusive: 0 and 1 in le="1"; 2, 7 and 10 too in le="10"; 100001 only in +Inf */
    assert_line(text, "needletrace_batch_events_bucket{le=\"1\"} 2");
    assert_line(text, "needletrace_batch_events_bucket{le=\"10\"} 5");
    assert_line(text, "needletrace_batch_events_bucket{le=\"100000\"} 9");
    assert_line(text, "needletrace_batch_events_bucket{le=\"+Inf\"} 10");
    char line[128];
    snprintf(line, sizeof(line), "needletrace_batch_events_sum %" PRIu64, sum);
    assert_line(text, line);
    /* 999 and 1000 µs in le="0.001" (twice each: 10 observations over 6 latencies) */
    assert_line(text, "needletrace_batch_commit_seconds_bucket{le=\"0.001\"} 4");
    assert_line(text, "needletrace_batch_commit_seconds_bucket{le=\"120\"} 9");
    assert_line(text, "needletrace_batch_commit_seconds_sum 250.506000");
    free(text);
}

static void test_fill_ratio_and_reconnects(void **state)
{
    char *text = render();
    assert_line(text, "needletrace_journal_fill_ratio 0.000000");
    assert_line(text, "needletrace_reconnects_total{peer=\"mqtt\"} 0");
    assert_line(text, "needletrace_reconnects_total{peer=\"database\"} 0");
    free(text);
    nt_metrics.journal_max_bytes = UINT64_C(1) << 30;
    nt_metrics.journal_bytes = UINT64_C(1) << 29;
    nt_metrics.mqtt_connects = 1;
    nt_metrics.db_connects = 4;
    text = render();
    assert_line(text, "needletrace_journal_fill_ratio 0.500000");
    assert_line(text, "needletrace_reconnects_total{peer=\"mqtt\"} 0");
    assert_line(text, "needletrace_reconnects_total{peer=\"database\"} 3");
    free(text);
    nt_metrics.journal_bytes = (UINT64_C(1) << 30) + (UINT64_C(1) << 28); /* overshoot */
    text = render();
    assert_line(text, "needletrace_journal_fill_ratio 1.250000");
    free(text);
}

/* Everything counted at once still fits the listener's buffer. */
static void test_size(void **state)
{
    for (unsigned i = 0; i < NT_METRICS_ALERT_LABELS; i++) {
        nt_metrics.alerts_raised[i] = UINT64_MAX;
        nt_metrics.alerts_delivered[i] = UINT64_MAX;
    }
    for (int r = 0; r < NT_REASON__COUNT; r++) {
        nt_metrics.db_quarantined_by_reason[r] = UINT64_MAX;
    }
    for (int i = 0; i < 1000; i++) {
        nt_metrics_batch_committed(UINT64_C(1) << 40, UINT64_C(1) << 40);
    }
    char *text = render();
    size_t n = strlen(text);
    print_message("exposition: %zu bytes\n", n);
    assert_true(n < RENDER_MAX / 2);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_alert_label, reset),
        cmocka_unit_test_setup(test_alerts_rendered, reset),
        cmocka_unit_test_setup(test_quarantine_reasons_from_the_map, reset),
        cmocka_unit_test_setup(test_histograms, reset),
        cmocka_unit_test_setup(test_fill_ratio_and_reconnects, reset),
        cmocka_unit_test_setup(test_size, reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
