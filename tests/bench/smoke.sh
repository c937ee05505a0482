#!/usr/bin/env bash
# smoke.sh BUILD_DIR -- the benchmark at a tiny size (ctest bench_smoke): every phase runs, counts
# exactly (run.sh fails when a run's rows differ from simulate's expectation) and prints every
# figure. The figures themselves mean nothing at this size (and under the sanitizers).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
BENCH_EVENTS_1=${BENCH_EVENTS_1:-5000} BENCH_EVENTS_50=${BENCH_EVENTS_50:-20000} \
    BENCH_LAT_S=${BENCH_LAT_S:-3} BENCH_SOAK_S=${BENCH_SOAK_S:-10} \
    BENCH_LOSSY_PENS=${BENCH_LOSSY_PENS:-100} BENCH_LOSSY_S=${BENCH_LOSSY_S:-3} \
    BENCH_SCALE_EVENTS=${BENCH_SCALE_EVENTS:-5000} \
    bash "$here/run.sh" "${1:?usage: smoke.sh BUILD_DIR}" 2>&1 | tee "$out"
missing=0
for want in '^\(a\) broker drain' '^\(b\) PostgreSQL binary COPY' '^\(c\) collector' \
    '^\(c\) per stage' '^    db_copy ' '^\(d\) publish->commit latency' '^\(f\) event->alert' \
    '^\(e\) collector peak RSS' '^\(g\) memory soak' '^\(h\) lossy pens' '^\(i\) scale-out' \
    '^    3 replica'; do
    if ! grep -qE "$want" "$out"; then
        echo "bench smoke: the report lacks a line matching: $want" >&2
        missing=1
    fi
done
exit "$missing"
