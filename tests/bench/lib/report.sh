# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # R, the figures, is an associative array declared in run.sh
# report.sh -- prints the figures in R: one block per phase, the ratios and the PASS/MISS
# verdicts against the targets (issue 2, item 9; issue 3, item 8; the soak's drift), then the
# optional extras.
# Sourced by tests/bench/run.sh (after measure.sh).

verdict() {
    if cond "$1"; then printf 'PASS'; else printf 'MISS'; fi
}

# MISS as well when an alert the run raised never arrived (or could not be matched).
alert_verdict() {
    if [[ ${R[f_p99]} == - ]] || ((R[f_joined] < R[f_raised])) || ((R[f_raised] == 0)); then
        printf 'MISS (%s of %s raised alerts measured)' "${R[f_joined]}" "${R[f_raised]}"
    else
        verdict "${R[f_p99]} < 500"
    fi
}

# report: the block of figures, each phase's lines separated by an empty line.
report() {
    echo
    report__header
    echo
    report__drain
    echo
    report__copy
    echo
    report__collector
    echo
    report__stages
    echo
    report__latency
    echo
    report__alerts
    echo
    report__rss
    echo
    report__soak
    echo
    report__lossy
    echo
    report__scale
    echo
    report__targets
}

# report__header: the title, the machine, the fleet and the disk.
report__header() {
    cat <<EOF
==================== needletrace benchmark ====================
machine     $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo); other processes used ${R[busy_before]}% CPU just before the run
fleet       $CLINICS clinics x $DEVICES handpieces; publisher = needletrace simulate (QoS 1, 1000 in flight)
disk        write 4 KiB + fdatasync in the temp dir: p50 $(jq -r .p50_us <<<"${R[fsync]}") us, p99 $(jq -r .p99_us <<<"${R[fsync]}") us
EOF
}

# report__drain: (a) broker drain.
report__drain() {
    cat <<EOF
(a) broker drain: mosquitto -> a QoS 1 subscriber that only counts (MQTT v5, receive-maximum 65535)
    1-event messages   $(f "${R[a1_msgs_s]}") msgs/s = $(f "${R[a1_events_s]}") events/s   (${R[a1_msgs]} messages, first->last ${R[a1_span]} s)
                       cpu: ${R[a1_cpu]}
    50-event messages  $(f "${R[a50_msgs_s]}") msgs/s = $(f "${R[a50_events_s]}") events/s   (${R[a50_msgs]} messages, first->last ${R[a50_span]} s)
                       cpu: ${R[a50_cpu]}
EOF
}

# report__copy: (b) PostgreSQL COPY.
report__copy() {
    cat <<EOF
(b) PostgreSQL binary COPY into a freshly migrated needletrace.events (fsync on, synchronous_commit on)
    one COPY, one txn  $(f "${R[b_events_s]}") events/s   ($(jq -r .events <<<"${R[b1]}") events, $(jq -r .seconds <<<"${R[b1]}") s, $(f "$(jq -r .stream_bytes <<<"${R[b1]}") / 1048576" 1) MiB of COPY data)
    collector-shaped   $(f "$(jq -r .events_per_s <<<"${R[b2]}")") events/s   (raw_messages + events, $(jq -r .transactions <<<"${R[b2]}") txns of <= 5000 events / 1 MiB, $(jq -r .seconds <<<"${R[b2]}") s)
    decode + encode    $(jq -r .build_us_per_event <<<"${R[b1]}") us/event with nt_batch (CPU the collector spends per event, not timed above)
EOF
}

# report__collector: (c) the collector.
report__collector() {
    cat <<EOF
(c) collector publish->committed (simulate start -> commit of the run's last event)
    1-event messages   ${R[c1_msgs_s]} msgs/s = ${R[c1_events_s]} events/s   (${R[c1_events]} events in ${R[c1_s]} s; simulate done after ${R[c1_pub_s]} s)
                       cpu: ${R[c1_cpu]}
    50-event messages  ${R[c50_msgs_s]} msgs/s = ${R[c50_events_s]} events/s   (${R[c50_events]} events in ${R[c50_s]} s; simulate done after ${R[c50_pub_s]} s)
                       cpu: ${R[c50_cpu]}
    collector totals   ${R[received]} messages received, ${R[syncs]} journal fdatasyncs ($(f "${R[received]} / (${R[syncs]} > 0 ? ${R[syncs]} : 1)" 1) msgs/sync), ${R[batches]} db transactions ($(f "${R[committed_events]} / (${R[batches]} > 0 ? ${R[batches]} : 1)" 1) events/txn)
EOF
}

# report__stages: (c) per stage and per process, microseconds per event, both runs.
report__stages() {
    local s
    printf '%s\n' "(c) per stage: the collector's needletrace_stage_seconds_total over each run, in us per event"
    printf '    %-16s %9s %9s\n' stage 1-event 50-event
    for s in "${STAGES[@]}"; do
        printf '    %-16s %9s %9s   %s\n' "$s" "${R[c1_st_$s]}" "${R[c50_st_$s]}" \
            "$(report__stage_what "$s")"
    done
    printf '    %-16s %9s %9s\n' "sum of stages" "${R[c1_st_sum]}" "${R[c50_st_sum]}"
    for s in collector postgres mosquitto simulate; do
        printf '    %-16s %9s %9s   CPU (user + system) of the process over the run\n' "cpu $s" \
            "${R[c1_us_$s]}" "${R[c50_us_$s]}"
    done
    if [[ ${R[c1_st_receive]} == n/a && ${R[c50_st_receive]} == n/a ]]; then
        printf '    %s\n' "n/a: this collector does not expose needletrace_stage_seconds_total (a binary older than the stage counters)"
    fi
    cat <<EOF
    A stage is wall time on its thread(s), waits included (journal_sync runs on its own thread,
    db_* on both database connections), so the stages need not add up to the collector's CPU.
EOF
}

# report__stage_what STAGE: what the stage counts.
report__stage_what() {
    case $1 in
    receive) printf 'reading MQTT messages, appending them to the journal (loop thread)' ;;
    journal_sync) printf 'journal fdatasync (its own thread)' ;;
    decode_encode) printf 'journal records decoded into COPY rows' ;;
    db_copy) printf 'COPY statements, send to result (both connections)' ;;
    db_checkpoint) printf 'checkpoint move, with the wait for the batch before it' ;;
    db_rules) printf 'evaluate_rules' ;;
    db_commit) printf 'COMMIT' ;;
    esac
}

# report__latency: (d) publish->commit latency.
report__latency() {
    cat <<EOF
(d) publish->commit latency at half the 1-event maximum: target ${R[lat_rate]} msgs/s, achieved ${R[d_sim_rate]} msgs/s, ${R[lat_events]} events
    by inserted_at     p50 ${R[d_p50]} ms, p99 ${R[d_p99]} ms
    by commit time     p50 ${R[d_cp50]} ms, p99 ${R[d_cp99]} ms, max ${R[d_cmax]} ms
                       cpu: ${R[d_cpu]}
    inserted_at defaults to now(), the start of the committing transaction, so the first line
    leaves out the COPY and COMMIT (WAL fdatasync) and slightly understates; the second uses
    pg_xact_commit_timestamp(xmin), the real commit time (track_commit_timestamp = on).
    device_time is the wall clock in whole ms when simulate generated the event (just before publishing).
EOF
}

# report__alerts: (f) event->alert on MQTT.
report__alerts() {
    cat <<EOF
(f) event->alert-on-MQTT latency, same run as (d) (--too-deep-rate $ALERT_RATE): a QoS 1 subscriber on clinics/+/alerts/#
    alerts             ${R[f_expected]} expected by simulate, ${R[f_raised]} raised, ${R[f_distinct]} received (${R[f_rx]} deliveries), ${R[f_joined]} joined with their event
    event->alert       p50 ${R[f_p50]} ms, p99 ${R[f_p99]} ms, max ${R[f_max]} ms   (alert receive time - triggering event's device_time)
    legs p50 / p99     event->txn start ${R[f_w50]} / ${R[f_w99]} ms, txn start->commit ${R[f_t50]} / ${R[f_t99]} ms, commit->received ${R[f_o50]} / ${R[f_o99]} ms
    transactions       ${R[f_ntxn]} in the run, ${R[f_ev_txn]} events/txn, start->commit p50 ${R[f_txn50]} ms, p99 ${R[f_txn99]} ms, max ${R[f_txnmax]} ms
    evaluate_rules     ${R[er_calls]} calls, mean ${R[er_mean]} ms/call (${R[er_self_mean]} ms outside the functions it calls; settle_boots mean ${R[sb_mean]} ms)
    The legs: inserted_at (now() = the start of the event's transaction), the commit timestamp,
    the subscriber's wall clock on arrival. The alert is raised in the event's own transaction.
EOF
}

# report__rss: (e) peak RSS.
report__rss() {
    local rss_mib
    rss_mib=$(f "${R[rss_kb]} / 1024" 1)
    cat <<EOF
(e) collector peak RSS (VmHWM at the end)  $rss_mib MiB   (VmRSS now $(f "${R[rss_now_kb]} / 1024" 1) MiB)
EOF
}

# report__soak: (g) memory soak.
report__soak() {
    if ((R[g_skipped])); then
        printf '(g) memory soak: skipped (BENCH_SOAK_S=0)\n'
        return 0
    fi
    cat <<EOF
(g) memory soak: collector VmRSS every $SOAK_EVERY s for $SOAK_S s at half the 1-event maximum (target ${R[g_rate]} msgs/s, achieved ${R[soak_sim_rate]} msgs/s, ${R[soak_events]} events)
    VmRSS              at 0 s $(report__mib "${R[g_first]}") MiB; after the warm-up (${R[g_warm_s]} s: the sample at ${R[g_warm_t]} s) $(report__mib "${R[g_warm]}") MiB
    from it on         min $(report__mib "${R[g_min]}"), max $(report__mib "${R[g_max]}"), last $(report__mib "${R[g_last]}") MiB   (${R[g_n]} samples; last vs warm-up ${R[g_change]}%)
    drift              (max - min) / warm-up value = ${R[g_drift]}%   target within +-5%   $(soak_verdict)
    peak VmHWM         $(report__mib "${R[rss_kb]}") MiB (at the end, (e))   target <= 64 MiB   $(verdict "${R[rss_kb]} <= 65536")
                       cpu: ${R[soak_cpu]}
EOF
}

# report__mib KIB: as MiB with one decimal; as it is when not a number ("-").
report__mib() {
    if [[ $1 =~ ^[0-9]+$ ]]; then f "$1 / 1024" 1; else printf '%s' "$1"; fi
}

# report__soak_target: the soak's line of the targets block.
report__soak_target() {
    printf '%s\n' "memory soak ($SOAK_S s; the issue's figure is BENCH_SOAK_S=600)"
    if ((R[g_skipped])); then
        printf '    VmRSS drift after the warm-up         skipped (BENCH_SOAK_S=0)\n'
    else
        printf '    VmRSS drift after the warm-up         %s%%   target within +-5%%   %s\n' \
            "${R[g_drift]}" "$(soak_verdict)"
    fi
}

# soak_verdict: PASS/MISS of the soak's drift; MISS when no sample came after the warm-up.
soak_verdict() {
    if ((R[g_skipped])); then
        printf 'n/a (skipped)'
    elif [[ ${R[g_drift]} == - ]]; then
        printf 'MISS (no sample after the warm-up: BENCH_SOAK_S too short)'
    else
        verdict "${R[g_drift]} <= 5"
    fi
}

# report__lossy: (h) latency next to lossy pens.
report__lossy() {
    if ((R[h_skipped])); then
        printf '(h) lossy pens: skipped (BENCH_LOSSY_PENS=0)\n'
        return 0
    fi
    cat <<EOF
(h) lossy pens holding open gaps (tests/bench/lossy.sh at one size; fresh database, a collector of its own)
    lossy pens         $LOSSY_PENS, each sent seqs 1..$LOSSY_BEFORE but 2 first (${R[h_holes]} holes open, sequence_gap_after 10 min), then 5 more events during the healthy pen's $LOSSY_HEALTHY_S s
    healthy pen        publish->commit p50 ${R[h_p50]} ms, p99 ${R[h_p99]} ms   (${R[h_healthy]} 1-event messages at 20/s; device time = publish time, commit time = pg_xact_commit_timestamp)
    per call           check_sequence_gaps ${R[h_gmean]} ms (${R[h_gc]} calls), evaluate_rules ${R[h_emean]} ms (${R[h_ec]} calls), during the healthy pen's traffic
    holes falling due  the gap checks that alerted them (sequence_gap_after 1 s): ${R[h_dc]} calls, mean ${R[h_dmean]} ms; ${R[h_gaps]} SEQUENCE_GAP alerts
EOF
}

# report__scale: (i) scale-out.
report__scale() {
    local n
    if ((R[i_skipped])); then
        printf '(i) scale-out: skipped (BENCH_SCALE_EVENTS=0)\n'
        return 0
    fi
    printf '%s\n' "(i) scale-out: replicas on one shared subscription (\$share/bench/...), one PostgreSQL; $SCALE_EVENTS events in 10-event messages, simulate start -> last commit"
    for n in "${SCALE_REPLICAS[@]}"; do
        printf '    %d replica(s)       %s events/s = %s msgs/s, x%s of 1 replica   (%s events in %s s; per replica %s)\n' \
            "$n" "${R[i${n}_events_s]}" "${R[i${n}_msgs_s]}" "${R[i${n}_ratio]}" \
            "${R[i${n}_events]}" "${R[i${n}_s]}" "${R[i${n}_split]}"
        printf '                       cpu: %s\n' "${R[i${n}_cpu]}"
    done
    printf '    %s\n' "On 2 cores more replicas share the same CPUs, so this shows overhead, not gain (this machine: $(nproc) CPUs)."
}

# report__targets: the ratios and the PASS/MISS verdicts against the targets.
report__targets() {
    local ratio_ca ratio_cb ratio_cb2 rss_mib
    ratio_ca=$(f "${R[c1_msgs_s]} / ${R[a1_msgs_s]}" 2)
    ratio_cb=$(f "${R[c50_events_s]} / ${R[b_events_s]}" 2)
    ratio_cb2=$(f "${R[c50_events_s]} / $(jq -r .events_per_s <<<"${R[b2]}")" 2)
    rss_mib=$(f "${R[rss_kb]} / 1024" 1)
    cat <<EOF
ratios and targets (issue 2, item 9)
    c/a 1-event msgs/s vs broker drain    $ratio_ca   target >= 0.80         $(verdict "$ratio_ca >= 0.8")
    c/b 50-event events/s vs one COPY     $ratio_cb   (no target)
    c/b 50-event vs collector-shaped COPY $ratio_cb2   (no target)
    50-event events/s committed           ${R[c50_events_s]}   target >= 80000     $(verdict "${R[c50_events_s]} >= 80000")
    collector peak RSS                    $rss_mib MiB   target <= 64 MiB   $(verdict "${R[rss_kb]} <= 65536")
ratios and targets (issue 3, item 8)
    event->alert-on-MQTT p99 at half load ${R[f_p99]} ms   target < 500 ms   $(alert_verdict)
$(report__soak_target)
===============================================================
EOF
}

# report_extras: with BENCH_PGSS=1 the top statements of the latency run; with BENCH_PERF=1 the
# perf summaries of the collector runs.
report_extras() {
    local run
    if [[ $PGSS == 1 ]]; then
        printf '\npg_stat_statements during the latency run (d)+(f), by total time (track = all)\n'
        sed 's/^/  /' "$NT_TMP/pgss.top" 2>/dev/null || true
    fi
    if [[ $PERF == 1 ]]; then
        for run in bench1 bench50 benchlat; do
            printf '\nperf: self time during the %s run (collector, its backend, mosquitto)\n' "$run"
            cat "$NT_TMP/perf-$run.top" 2>/dev/null || true
        done
    fi
}
