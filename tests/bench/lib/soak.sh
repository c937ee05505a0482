# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # R, the figures, is an associative array declared in run.sh
# soak.sh -- (g) memory soak: the collector of phase_collector at half the 1-event maximum of (c)
# for BENCH_SOAK_S seconds, its VmRSS sampled every SOAK_EVERY seconds; the drift once a warm-up
# of 20% of the time is over. Figures in R.
# Sourced by tests/bench/run.sh (after tests/integration/lib.sh, measure.sh and phases.sh).

SOAK_EVERY=5 # seconds between two VmRSS samples

# phase_soak: the soak run, with the collector of phase_collector still running (it runs before
# phase_rss, whose VmHWM then covers the soak too). BENCH_SOAK_S=0 skips it.
phase_soak() {
    R[g_skipped]=0
    if ((SOAK_S == 0)); then
        R[g_skipped]=1
        return 0
    fi
    R[g_rate]=$(f "${R[c1_msgs_s]} / 2 >= 1 ? ${R[c1_msgs_s]} / 2 : 1")
    R[g_events]=$((R[g_rate] * SOAK_S))
    : >"$NT_TMP/soak.rss"
    nt_log "(g) soak: ${R[g_events]} 1-event messages at ${R[g_rate]} messages/s ($SOAK_S s), VmRSS every $SOAK_EVERY s"
    COLLECT_DURING=soak__sample
    bench_collect soak "${R[g_events]}" 1 204 benchsoak "${R[g_rate]}"
    COLLECT_DURING=""
    soak__figures "$NT_TMP/soak.rss"
}

# soak__sample COLLECTOR_PID T0 (bench_collect's COLLECT_DURING): one VmRSS sample at T0 and
# every SOAK_EVERY seconds after it up to T0 + SOAK_S, each as "NOMINAL_S KB" in soak.rss.
soak__sample() {
    local cpid=$1 t0=$2 i=0 at now rss
    while ((i * SOAK_EVERY <= SOAK_S)); do
        # Periodic sampling, not a wait for a condition: sleep until the sample is due.
        at=$(f "$t0 + $i * $SOAK_EVERY" 3)
        now=$(now_s)
        if cond "$at > $now"; then
            sleep "$(f "$at - $now" 3)"
        fi
        nt__check_collectors "the soak's VmRSS sample at $((i * SOAK_EVERY)) s"
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$cpid/status" 2>/dev/null) || rss=""
        [[ $rss =~ ^[0-9]+$ ]] || nt_fail "could not read the collector's VmRSS (pid $cpid) during the soak"
        printf '%s %s\n' "$((i * SOAK_EVERY))" "$rss" >>"$NT_TMP/soak.rss"
        i=$((i + 1))
    done
}

# soak__figures SAMPLES: the first sample at or after the warm-up (20% of SOAK_S), then min, max
# and last from it on, the drift (max - min) / that first value and the change last vs first
# (both in %), and the sample at 0 s.
soak__figures() {
    local row
    R[g_warm_s]=$(f "$SOAK_S * 0.2" 1)
    row=$(awk -v w="${R[g_warm_s]}" '
        NR == 1 { first = $2 }
        $1 >= w { n++; if (n == 1) { wt = $1; warm = $2; min = $2; max = $2 }
                  if ($2 < min) min = $2; if ($2 > max) max = $2; last = $2 }
        END { if (n == 0) { printf "0|-|-|-|-|-|-|-|%s\n", first; exit }
              printf "%d|%s|%s|%s|%s|%s|%.2f|%+.2f|%s\n", n, wt, warm, min, max, last,
                     100 * (max - min) / warm, 100 * (last - warm) / warm, first }' "$1")
    r_split "$row" g_n g_warm_t g_warm g_min g_max g_last g_drift g_change g_first
}
