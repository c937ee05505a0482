# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # R, the figures, is an associative array declared in run.sh
# measure.sh -- the benchmark's instruments: float arithmetic, CPU seconds of processes and of
# the whole machine, the collector's counters, evaluate_rules call statistics and perf sampling.
# Sourced by tests/bench/run.sh (after tests/integration/lib.sh).

PERF_PID="" # the running perf record (perf_start .. perf_stop)

# f EXPR: evaluates a floating-point awk expression, prints it with %.Nf (default 0 decimals).
f() {
    awk -v d="${2:-0}" "BEGIN { printf \"%.*f\", d, ($1) }"
}

# pct CPU_SECONDS_EXPR WALL: CPU use in percent of one core.
pct() {
    f "100 * ($1) / $2"
    printf '%%'
}

# others CPU_SECONDS_EXPR WALL: the CPU of everything but the measured processes (kernel
# threads, this script, other workloads), flagged when it is large enough to skew the run.
others() {
    local p
    p=$(f "100 * ($1) / $2")
    printf 'everything else %s%% (over %s s, of %s%%)' "$p" "$2" "$(($(nproc) * 100))"
    if ((p > 25)); then
        printf ' <- DISTURBED by other load'
    fi
}

# Succeeds when the awk condition holds.
cond() {
    awk "BEGIN { exit !($1) }"
}

now_s() {
    printf '%s\n' "${EPOCHREALTIME/,/.}"
}

# CPU seconds (user + system) used so far by the given pids (dead ones count 0).
cpu_s() {
    local pid total=0 t
    for pid in "$@"; do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null) || t=0
        total=$((total + ${t:-0}))
    done
    f "$total / $(getconf CLK_TCK)" 3
}

# CPU seconds the whole machine has been busy (all CPUs, every process and the kernel).
machine_busy_s() {
    awk '$1 == "cpu" { print ($2 + $3 + $4 + $7 + $8 + $9) / '"$(getconf CLK_TCK)"'; exit }' /proc/stat
}

# The postmaster and all its children (one per line).
pg_pids() {
    local pm
    pm=$(head -n 1 "$NT_PG_DIR/data/postmaster.pid")
    printf '%s\n' "$pm"
    pgrep -P "$pm" || true
}

# Reads the children's CPU time that `times` wrote into FILE (second line): seconds.
times_s() {
    awk 'NR == 2 { n = split($0, a, /[ms]+/); t = 0
                   for (i = 1; i + 1 <= n; i += 2) t += a[i] * 60 + a[i + 1]; print t }' "$1"
}

# metric NAME [COLLECTOR]: prints the counter needletrace_NAME (unlabelled, an integer) of the
# collector (bench by default); fails when it cannot be read.
metric() {
    local v
    v=$(nt_http "${2:-bench}" /metrics | metric__find needletrace_"$1") || return 1
    [[ $v =~ ^[0-9]+$ ]] || return 1
    printf '%s\n' "$v"
}

# metric_labelled NAME LABELS [COLLECTOR]: prints the sample needletrace_NAME{LABELS}, LABELS
# as the collector prints them (e.g. 'stage="receive"'), a float; fails when it is absent.
metric_labelled() {
    local v
    v=$(nt_http "${3:-bench}" /metrics | metric__find "needletrace_$1{$2}") || return 1
    [[ -n $v ]] || return 1
    printf '%s\n' "$v"
}

# metric__find SERIES: reads a /metrics text on stdin and prints the value of SERIES (the name
# with its {labels}, exactly as printed), when it is a number. Reads it to the end: leaving early
# broke the pipe under curl, whose exit 23 failed the pipeline (pipefail) now and then.
metric__find() {
    awk -v n="$1" '!found && $1 == n && $2 ~ /^[-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$/ {
        print $2; found = 1 }'
}

# The collector's stages, each a needletrace_stage_seconds_total{stage="..."} counter (seconds
# spent in it): MQTT receive + journal append (loop thread), journal fdatasync (its own thread),
# journal records -> COPY rows, COPY (both DB connections), the checkpoint move (with the wait
# for the batch before), evaluate_rules, COMMIT.
STAGES=(receive journal_sync decode_encode db_copy db_checkpoint db_rules db_commit)

# stage_snapshot [COLLECTOR]: the collector's stage counters, in the order of STAGES, from one
# scrape of /metrics, space separated; "-" for each one it does not expose (a binary older
# than the counters) or when /metrics cannot be read. Never fails.
stage_snapshot() {
    local text s v out=()
    text=$(nt_http "${1:-bench}" /metrics 2>/dev/null) || text=""
    for s in "${STAGES[@]}"; do
        v=$(metric__find "needletrace_stage_seconds_total{stage=\"$s\"}" <<<"$text")
        out+=("${v:--}")
    done
    printf '%s\n' "${out[*]}"
}

# stage_figures KEY EVENTS SNAPSHOT0 SNAPSHOT1: stores each stage's microseconds per event over
# the run in R[KEY_st_STAGE] ("n/a" where a snapshot lacks the counter), their sum in
# R[KEY_st_sum] (n/a unless every stage is there).
stage_figures() {
    local key=$1 events=$2 s i=0 sum=0 all=1
    local -a a b
    read -r -a a <<<"$3"
    read -r -a b <<<"$4"
    for s in "${STAGES[@]}"; do
        if [[ ${a[i]:--} == - || ${b[i]:--} == - ]] || ((events == 0)); then
            R[${key}_st_$s]=n/a
            all=0
        else
            R[${key}_st_$s]=$(f "(${b[i]} - ${a[i]}) * 1e6 / $events" 2)
            sum=$(f "$sum + ${R[${key}_st_$s]}" 2)
        fi
        i=$((i + 1))
    done
    if ((all)); then R[${key}_st_sum]=$sum; else R[${key}_st_sum]=n/a; fi
}
# fn_stats FUNCTION: calls, total and self time so far (ms) of a needletrace PL/pgSQL function
# (pg_stat_user_functions), "calls|total|self", to subtract afterwards.
fn_stats() {
    nt_sql "SELECT coalesce(sum(calls), 0) || '|' || coalesce(sum(total_time), 0) || '|' ||
                   coalesce(sum(self_time), 0)
              FROM pg_stat_user_functions
             WHERE schemaname = 'needletrace' AND funcname = '$1'"
}

# perf_start NAME PID...: samples the pids (with call graphs) until perf_stop.
perf_start() {
    local name=$1 pids
    shift
    pids=$(
        IFS=,
        printf '%s' "$*"
    )
    perf record -F 499 -g -o "$NT_TMP/perf-$name.data" -p "$pids" >"$NT_TMP/perf-$name.log" 2>&1 &
    PERF_PID=$!
    NT_BG_PIDS+=("$PERF_PID")
    sleep 0.3 # perf attaches asynchronously
}

# perf_stop NAME: stops the sampling; writes the share of samples per process and the top
# symbols (self time) of each process to $NT_TMP/perf-NAME.top.
perf_stop() {
    local name=$1 data=$NT_TMP/perf-$1.data comm
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    {
        printf '  samples by process:'
        perf report -i "$data" --stdio --no-children -g none --sort comm 2>/dev/null |
            awk '!/^#/ && NF >= 2 { printf "  %s %s", $2, $1 } END { printf "\n" }'
        for comm in needletrace postgres mosquitto; do
            printf '  top symbols of %s (%% of its own samples):\n' "$comm"
            # comm must stay in the sort keys: without it perf merges the other processes'
            # samples of the same symbol into the filtered list.
            perf report -i "$data" --stdio --no-children -g none --comms "$comm" \
                --sort comm,dso,symbol --percentage relative 2>/dev/null |
                awk '!/^#/ && NF > 0' | head -n 10 |
                sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/^/    /'
        done
    } >"$NT_TMP/perf-$name.top" || true
}

# r_split ROW KEY...: stores the |-separated fields of ROW (one row of nt_sql) in R[KEY], in
# order; keys without a field get an empty value.
r_split() {
    local row=$1 i=0 k
    local -a v=()
    shift
    IFS='|' read -r -a v <<<"$row"
    for k in "$@"; do
        # shellcheck disable=SC2004 # R is associative: the key is the value of k
        R[$k]=${v[i]:-}
        i=$((i + 1))
    done
}
