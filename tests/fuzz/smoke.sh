#!/usr/bin/env bash
# smoke.sh -- runs a libFuzzer binary for a bounded time on a scratch corpus; fails on any crash.
#
# usage: smoke.sh FUZZER [SECONDS [CORPUS_DIR]]   (SECONDS defaults to 30)
# The scratch corpus starts from the seeds in CORPUS_DIR (default: tests/fuzz/corpus/ next to
# this script), if present, and is deleted afterwards together with any crash artifacts (their
# contents are printed first, in base64).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 ]]; then
    echo "usage: $0 FUZZER [SECONDS [CORPUS_DIR]]" >&2
    exit 2
fi
fuzzer=$1
seconds=${2:-30}
if [[ ! -x $fuzzer ]]; then
    echo "smoke.sh: fuzzer \"$fuzzer\" is not an executable file" >&2
    exit 2
fi
if ! [[ $seconds =~ ^[0-9]+$ ]] || [[ $seconds -eq 0 ]]; then
    echo "smoke.sh: seconds must be a positive integer, got \"$seconds\"" >&2
    exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
seeds=${3:-$here/corpus}
work=$(mktemp -d)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/corpus" "$work/artifacts"
if [[ -d $seeds ]]; then
    find "$seeds" -maxdepth 1 -type f -exec cp {} "$work/corpus/" \;
fi

status=0
"$fuzzer" "$work/corpus" \
    -max_total_time="$seconds" \
    -max_len=8192 \
    -timeout=10 \
    -rss_limit_mb=2048 \
    -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" >"$work/log" 2>&1 || status=$?
grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' \
    "$work/log" || true

if [[ $status -ne 0 ]] || compgen -G "$work/artifacts/*" >/dev/null; then
    echo "smoke.sh: fuzzer failed (exit $status); last lines of its log:" >&2
    tail -n 60 "$work/log" >&2
    for f in "$work"/artifacts/*; do
        [[ -e $f ]] || continue
        echo "smoke.sh: crash input $(basename "$f") (base64):" >&2
        base64 -w0 "$f" >&2
        echo >&2
    done
    exit 1
fi
echo "smoke.sh: no crash in ${seconds}s, corpus grew to $(find "$work/corpus" -type f | wc -l) inputs"
