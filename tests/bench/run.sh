#!/usr/bin/env bash
# run.sh -- the needletrace benchmark: broker drain rate, PostgreSQL COPY rate, the collector's
# publish->committed rate with its time per stage, publish->commit latency, event->alert-on-MQTT
# latency, peak RSS, a memory soak, latency next to 1,000 lossy pens and scale-out over 1, 2 and
# 3 replicas, all in one run on loopback.
#
# usage: tests/bench/run.sh [BUILD_DIR]        (default: ./build of the repository)
#
# Starts its own mosquitto and PostgreSQL (fsync on) in a temp dir, measures, prints the
# figures, the ratios and PASS/MISS against the targets of issues 2 and 3, and stops everything.
# Exit 0 whenever it could measure (a missed target is a figure, not a failure); non-zero only
# when something broke. See tests/bench/README.md for what each figure means.
#
# Knobs (environment):
#   BENCH_EVENTS_1=400000    events (= messages) in each 1-event-message run
#   BENCH_EVENTS_50=1500000  events in each 50-event-message run (and in the COPY runs)
#   BENCH_LAT_S=15           duration of the latency run at half the maximum rate
#   BENCH_ALERT_RATE=0.02    --too-deep-rate of the latency run: the share of needle settings
#                            that violate the depth policy (each raises one alert, measured (f))
#   BENCH_PGSS=1             load pg_stat_statements (track = all) and print the statements
#                            that took the most time during the latency run (costs a little
#                            throughput in every run, so off by default)
#   BENCH_CLINICS=10 BENCH_DEVICES=20   the simulated fleet (clinics x handpieces each)
#   BENCH_PERF=1             also sample the collector, its PostgreSQL backend and mosquitto
#                            with `perf record` during each (c) run and print the top symbols
#   BENCH_COLLECTOR_ENV="NEEDLETRACE_BATCH_MAX_DELAY_MS=10 ..."  extra collector settings, for
#                            every collector of the run (NEEDLETRACE_LOG_LEVEL=debug logs one
#                            line per commit)
#   BENCH_SOAK_S=60          (g) memory soak: seconds at half the 1-event maximum, VmRSS every
#                            5 s (the issue's figure is 600); 0 skips
#   BENCH_LOSSY_PENS=1000    (h) lossy pens holding open gaps next to the healthy pen; 0 skips
#   BENCH_LOSSY_BEFORE=50 BENCH_LOSSY_S=15   (h) seqs each lossy pen sends first (seq 2 never),
#                            seconds of healthy traffic (as tests/bench/lossy.sh)
#   BENCH_SCALE_EVENTS=200000  (i) events per scale-out run (10-event messages); 0 skips
#   NT_KEEP=1                keep the temp dir (logs, dumps, perf data)
#
# The phases live in lib/: servers.sh (bench_tool, mosquitto, PostgreSQL), measure.sh (CPU,
# metrics, stage counters, perf), phases.sh ((a), (b), (c), (e)), latency.sh ((d) + (f)),
# soak.sh ((g)), lossy.sh ((h), shared with lossy.sh), scale.sh ((i)), report.sh (the figures).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/../.." && pwd)
BUILD=${1:-$ROOT/build}
BUILD=$(cd "$BUILD" 2>/dev/null && pwd) || {
    echo "bench: build directory not found: ${1:-$ROOT/build}" >&2
    exit 2
}

# ---- settings: the knobs above, read once here (only TOOL is set later, by bench_build_tool) --
EVENTS_1=${BENCH_EVENTS_1:-400000}         # events (= messages) in each 1-event-message run
EVENTS_50=${BENCH_EVENTS_50:-1500000}      # events in each 50-event-message run and the COPY runs
LAT_S=${BENCH_LAT_S:-15}                   # seconds of the latency run (d)+(f)
ALERT_RATE=${BENCH_ALERT_RATE:-0.02}       # --too-deep-rate of the latency run
CLINICS=${BENCH_CLINICS:-10}               # the simulated fleet: clinics...
DEVICES=${BENCH_DEVICES:-20}               # ...x handpieces each
PGSS=${BENCH_PGSS:-0}                      # 1: pg_stat_statements during the latency run
PERF=${BENCH_PERF:-0}                      # 1: perf record during each (c) and (d) run
COLLECTOR_ENV=${BENCH_COLLECTOR_ENV:-}     # extra VAR=VALUE words for every collector
SOAK_S=${BENCH_SOAK_S:-60}                 # seconds of the memory soak (g); 0 skips it
LOSSY_PENS=${BENCH_LOSSY_PENS:-1000}       # lossy pens of (h); 0 skips it
LOSSY_BEFORE=${BENCH_LOSSY_BEFORE:-50}     # seqs each lossy pen sends before the measurement
LOSSY_HEALTHY_S=${BENCH_LOSSY_S:-15}       # seconds of the healthy pen's traffic in (h)
SCALE_EVENTS=${BENCH_SCALE_EVENTS:-200000} # events per scale-out run (i); 0 skips it
TOOL=""                                    # the bench_tool binary (bench_build_tool)

# ---- results: every figure, filled in by the phases, read by the report ----------------------
# Keys: busy_before fsync (machine); a1_* a50_* (a); b1 b2 b_events_s (b); c1_* c50_* (c, with
# c1_st_* c50_st_* the stages and c1_us_* c50_us_* the CPU per event); lat_* d_* (d); f_* er_*
# sb_mean (f); rss_* syncs batches received committed_events (e); g_* soak_* (g); h_* (h);
# i_skipped i1_* i2_* i3_* (i).
declare -A R=()

export NT_TEST_NAME=bench
# shellcheck source=../integration/lib.sh
source "$ROOT/tests/integration/lib.sh"
# shellcheck source=lib/measure.sh
source "$BENCH_DIR/lib/measure.sh"
# shellcheck source=lib/servers.sh
source "$BENCH_DIR/lib/servers.sh"
# shellcheck source=lib/phases.sh
source "$BENCH_DIR/lib/phases.sh"
# shellcheck source=lib/latency.sh
source "$BENCH_DIR/lib/latency.sh"
# shellcheck source=lib/soak.sh
source "$BENCH_DIR/lib/soak.sh"
# shellcheck source=lib/lossy.sh
source "$BENCH_DIR/lib/lossy.sh"
# shellcheck source=lib/scale.sh
source "$BENCH_DIR/lib/scale.sh"
# shellcheck source=lib/report.sh
source "$BENCH_DIR/lib/report.sh"
# shellcheck source=../integration/lib/pub.sh
source "$NT_LIB_DIR/pub.sh"

main() {
    local t0
    nt_setup "$BUILD/needletrace"
    bench_check_tools
    bench_build_tool
    t0=$SECONDS
    phase_machine
    bench_start_broker
    bench_start_pg
    phase_drain      # (a)
    phase_copy       # (b)
    phase_collector  # (c)
    phase_latency    # (d) + (f)
    phase_soak       # (g), the same collector
    phase_rss        # (e), stops the collector
    phase_lossy      # (h), a fresh database and a collector of its own
    phase_scale      # (i), a fresh database and fresh replicas per replica count
    report
    printf 'whole benchmark: %s s\n' "$((SECONDS - t0))"
    report_extras
}

main "$@"
exit 0
