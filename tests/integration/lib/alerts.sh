# shellcheck shell=bash
# alerts.sh -- compliance rules and alerts (used by test_rules_*.sh): alerts by rule in the
# database, expected by the simulator and received by an MQTT subscriber; waiting for them
# to settle.
# Part of tests/integration/lib.sh.

# The rules of DESIGN §3, in that order.
NT_RULES=(CARTRIDGE_REUSED CARTRIDGE_EXPIRED STERILE_BARRIER_BROKEN CARTRIDGE_RECALLED
    DEPTH_OUT_OF_RANGE NEEDLING_WITHOUT_CARTRIDGE SEQUENCE_GAP CLOCK_SKEW)

# nt_alerts_by_rule: "RULE=n" for every rule (zeros included), in DESIGN order, then "other=n"
# when alerts with a rule name outside the list exist.
nt_alerts_by_rule() {
    local rules
    rules=$(printf "'%s'," "${NT_RULES[@]}")
    nt_sql "WITH a AS (SELECT rule, count(*) AS n FROM needletrace.alerts GROUP BY rule)
            SELECT concat_ws(' ',
                (SELECT string_agg(u.r || '=' || coalesce(a.n, 0), ' ' ORDER BY u.o)
                   FROM unnest(ARRAY[${rules%,}]) WITH ORDINALITY AS u(r, o)
                   LEFT JOIN a ON a.rule = u.r),
                (SELECT 'other=' || sum(a.n) FROM a WHERE a.rule <> ALL (ARRAY[${rules%,}])
                 HAVING sum(a.n) > 0))"
}

# nt_expected_alerts_by_rule SUMMARY_JSON...: the same, summed over simulate summaries'
# "expected"."alerts_by_rule" (a rule missing from a summary counts 0).
nt_expected_alerts_by_rule() {
    local rules
    rules=$(printf '"%s",' "${NT_RULES[@]}")
    jq -rs "[${rules%,}] as \$r | map(.expected.alerts_by_rule // {}) as \$s
            | \$r | map(. as \$k | \"\(\$k)=\(\$s | map(.[\$k] // 0) | add)\") | join(\" \")" "$@"
}

# Boots with a possible gap still open (settled_seq < max_seq): while any is open, the time-based
# SEQUENCE_GAP rule (and NEEDLING_WITHOUT_CARTRIDGE behind it) may still raise alerts.
nt_open_boots() {
    nt_sql "SELECT count(*) FROM needletrace.boot_progress WHERE settled_seq < max_seq"
}

# nt__alerts_settled MIN: every boot settled, at least MIN alerts, and the alert count unchanged
# over the last five polls; prints "alerts open_boots".
nt__alerts_settled() {
    local min=$1 v n open prev="" streak=0 state="$NT_TMP/.alerts_state"
    v=$(nt_sql "SELECT (SELECT count(*) FROM needletrace.alerts) || ' ' ||
                       (SELECT count(*) FROM needletrace.boot_progress WHERE settled_seq < max_seq)") ||
        return 1
    printf '%s\n' "$v"
    read -r n open <<<"$v"
    if [[ -f $state ]]; then
        IFS='|' read -r prev streak <"$state"
    fi
    if [[ $v == "$prev" ]]; then
        streak=$((streak + 1))
    else
        streak=0
    fi
    printf '%s|%s\n' "$v" "$streak" >"$state"
    ((open == 0 && n >= min && streak >= 5))
}

# nt_wait_alerts_settled MIN DEADLINE_S: waits until every boot is settled, at least MIN alerts
# exist and their count has stopped moving. Does not fail on timeout (the caller compares the
# figures, which says more than a timeout); returns 1 then. Sets NT_LAST to "alerts open_boots".
nt_wait_alerts_settled() {
    local min=$1 deadline=$2
    rm -f "$NT_TMP/.alerts_state"
    if nt__wait_quiet "$deadline" nt__alerts_settled "$min"; then
        NT_LAST=$(nt__alerts_settled "$min" 2>/dev/null | head -n 1)
        return 0
    fi
    NT_LAST=$(nt__alerts_settled "$min" 2>/dev/null | head -n 1)
    nt_log "alerts not settled after ${deadline}s (alerts, open boots: $NT_LAST; wanted >= $min alerts)"
    return 1
}

# nt_check_alerts_by_rule LABEL SUMMARY_JSON...: alerts per rule in the database (every rule,
# zeros included) equal the simulators' expected.alerts_by_rule summed.
nt_check_alerts_by_rule() {
    local label=$1
    shift
    nt_expect_eq "$label" "$(nt_expected_alerts_by_rule "$@")" "$(nt_alerts_by_rule)"
}

# nt_start_alert_sub NAME [mosquitto_sub options...]: subscribes to clinics/+/alerts/# at QoS 1
# (-v: "topic payload" lines to $NT_TMP/alerts-NAME.out) with client id nt-alerts-NAME and
# waits until the broker has logged the subscription. Extra options, e.g. -c for a persistent
# session. Sets NT_SUB_PID.
nt_start_alert_sub() {
    local name=$1
    shift
    mosquitto_sub -h 127.0.0.1 -p "$NT_BROKER_PORT" -q 1 -v -i "nt-alerts-$name" "$@" \
        -t 'clinics/+/alerts/#' >>"$NT_TMP/alerts-$name.out" 2>>"$NT_TMP/alerts-sub-$name.log" &
    NT_SUB_PID=$!
    NT_BG_PIDS+=("$NT_SUB_PID")
    nt_wait_for "alert subscriber nt-alerts-$name subscribed" 30 grep -qE \
        "^[0-9]+: nt-alerts-$name 1 clinics/\+/alerts/#" "$NT_TMP/broker.log"
    nt_log "alert subscriber nt-alerts-$name up (pid $NT_SUB_PID${*:+, $*})"
}

# nt_alert_sub_by_rule NAME: "RULE=n" per rule (zeros included) of the messages NAME received,
# counted by topic (clinics/{clinic}/alerts/{rule}); "other=n" for topics outside the rules.
nt_alert_sub_by_rule() {
    local rules
    rules=$(printf '%s ' "${NT_RULES[@]}")
    awk -v rules="${rules% }" '
        BEGIN { n = split(rules, r, " "); for (i = 1; i <= n; i++) c[r[i]] = 0 }
        { split($1, t, "/"); if (t[4] in c) c[t[4]]++; else other++ }
        END { s = ""; for (i = 1; i <= n; i++) s = s (i > 1 ? " " : "") r[i] "=" c[r[i]];
              if (other > 0) s = s " other=" other; print s }' "$NT_TMP/alerts-$1.out" 2>/dev/null
}
