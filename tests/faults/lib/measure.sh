# shellcheck shell=bash
# shellcheck disable=SC2034,SC2153 # FT_REPS, FT_NOTES... are set by the fault functions; FT_OUT
# and FT_SEED come from row.sh
# measure.sh -- one row of the fault suite: its own environment (the integration harness's
# PostgreSQL, mosquitto, collector and alert subscriber), the publisher and its oracle, the
# fault's end, and the accounting that turns the database and what the alert subscriber
# received into the row's figures (written as one JSON object to $FT_OUT).
#
# A message counts as sent when the publisher had it acknowledged (PUBACK): every simulation
# must exit 0, which it does only once the broker acknowledged every publish. Each publish is
# identified by (topic, SHA-256 of the payload), read from the simulation's --dump file, and
# must be in raw_messages (with its events) or in quarantine exactly once:
#   lost    = sent messages in neither table
#   doubled = extra copies of sent messages in the two tables, plus event rows beyond what the
#             oracle expects
# Alerts are identified by (rule, clinic, device, boot, seq), in the database and in the JSON
# the subscriber received: expected (the oracle), raised (rows), delivered (distinct alerts
# received), duplicates (deliveries of an alert received before).
# Sourced by tests/faults/row.sh after tests/integration/lib.sh.

FT_REPS=1
FT_STATUS=ok          # ok | FAIL | pending (a command the fault needs is not there yet)
declare -ga FT_NOTES=()
declare -ga FT_SIM_PIDS=() FT_SIM_OUT=()
declare -ga FT_LOSS_OK_CHUNKS=() # chunks whose loss is expected and reported (db restore)
FT_FAULT_END_MS=""
FT_DEATHS=0 # times ft__revive found the collector dead
FT_LAST_DEATH=""
FT_RECOVER_MS=""
FT_RNG=${FT_SEED:-1}
FT_SUB=faults
declare -ga FT_EXTRA_PIDS=() FT_C1_ENV=()
FT_MOUNT=""

# The violations every simulation injects, so that each fault also meets every rule.
FT_VIOLATIONS=(--reuse-rate 0.05 --expired-rate 0.02 --unsealed-rate 0.02 --too-deep-rate 0.03
    --no-cartridge-rate 0.02 --gap-rate 0.005 --skew-rate 0.005 --malformed-rate 0.005
    --spoof-rate 0.005)

# ---- randomness, notes ------------------------------------------------------------------------
# ft_rand LO HI: a number in [LO, HI] from the row's own generator (seeded by FT_SEED, so that a
# row replays with --seed; bash's RANDOM is also used by the harness for ports).
ft_rand() {
    FT_RNG=$(((FT_RNG * 6364136223846793005 + 1442695040888963407) & 0x7fffffffffffffff))
    FT_RAND=$(($1 + (FT_RNG >> 17) % ($2 - $1 + 1)))
}

ft_note() {
    FT_NOTES+=("$*")
    nt_log "note: $*"
}

# ft_fail TEXT: the row fails (figures are still taken and printed).
ft_fail() {
    [[ $FT_STATUS == pending ]] || FT_STATUS=FAIL
    ft_note "FAIL: $*"
}

# ft_pending TEXT: the row cannot be completed until a command lands on main (its figures are
# still printed; the row reads "pending", not FAIL, and does not pass either).
ft_pending() {
    FT_STATUS=pending
    ft_note "pending: $*"
}

# ---- environment -----------------------------------------------------------------------------
# ft_begin: temp dir, PostgreSQL, mosquitto, schema, a 2 s sequence gap bound (SEQUENCE_GAP
# fires in seconds, not minutes) and a persistent QoS 1 subscriber on the alert topics.
ft_begin() {
    nt_setup "$NT_BIN"
    trap ft__cleanup EXIT
    FT_FAULT_LIB=$(dirname "$NT_BIN")/libntfault.so
    nt_start_pg
    nt_start_broker
    nt_migrate
    nt_sql "UPDATE needletrace.settings SET value = '2 seconds' WHERE key = 'sequence_gap_after'"
    nt_start_alert_sub "$FT_SUB" -c
}

# The EXIT trap: whatever lib.sh cannot know of (proxies, lock sessions, a tmpfs), then lib.sh's.
ft__cleanup() {
    local rc=$? pid name
    set +e
    for pid in "${FT_EXTRA_PIDS[@]}"; do
        nt__stop_pid "$pid" 2
    done
    if [[ -n $FT_MOUNT ]]; then
        for name in "${!NT_CPID[@]}"; do
            nt__stop_pid "${NT_CPID[$name]}" 10
        done
        umount -l "$FT_MOUNT" 2>/dev/null
    fi
    # the logs outlive the temp dir, next to the row's JSON (run.sh keeps them when a row fails)
    mkdir -p "${FT_OUT%.json}.logs" # FT_OUT: set by run.sh, checked by row.sh
    cp "$NT_TMP"/*.log "$NT_TMP"/*.out "$NT_TMP"/pg/postgres.log "${FT_OUT%.json}.logs/" 2>/dev/null
    (exit "$rc")
    nt__cleanup
}

# ft_bg NAME COMMAND...: a helper process (proxy, lock session) stopped by the trap; sets FT_PID.
ft_bg() {
    local name=$1
    shift
    "$@" >"$NT_TMP/$name.out" 2>>"$NT_TMP/$name.log" &
    FT_PID=$!
    FT_EXTRA_PIDS+=("$FT_PID")
}

# ft_metric NAME: needletrace_NAME from c1's /metrics.
ft_metric() {
    nt_http c1 /metrics | awk -v n="needletrace_$1" '$1 == n { print $2 }'
}

# ft_pick SHORT LONG: the figure of the mode (FT_MODE short or long).
ft_pick() {
    if [[ ${FT_MODE:-short} == long ]]; then
        echo "$2"
    else
        echo "$1"
    fi
}

# ft_sleep_ms MS: waits MS milliseconds -- only to place a fault at a (seeded) moment, never to
# let something happen.
ft_sleep_ms() {
    sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"
}

# ft_lock TABLE SECONDS: a session holds TABLE in EXCLUSIVE mode (reads go on, writes wait) for
# SECONDS or until ft_unlock; returns once the lock is held. Sets FT_LOCK_PID.
ft_lock() {
    ft_bg "lock-$1" env PGAPPNAME=ft-lock psql -X -q -h 127.0.0.1 -p "$NT_PG_PORT" -U postgres \
        -d needletrace -c "BEGIN; LOCK TABLE needletrace.$1 IN EXCLUSIVE MODE;
                           SELECT pg_sleep($2); COMMIT;"
    FT_LOCK_PID=$FT_PID
    nt_wait_for "lock on $1 held" 20 nt_sql_eq 1 "SELECT count(*) FROM pg_stat_activity
        WHERE application_name = 'ft-lock' AND query LIKE '%pg_sleep%' AND state = 'active'"
}

# ft_unlock: ends the lock session (its backend, which pg_sleep would keep).
ft_unlock() {
    nt_sql "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = 'ft-lock'" >/dev/null || true
    nt__wait_quiet 10 nt_pid_dead "$FT_LOCK_PID" || true
}

# ft__waiting_on_lock PATTERN: a backend other than the lock's waits for a lock running a
# query that matches PATTERN (LIKE).
ft__waiting_on_lock() {
    nt_sql_ge 1 "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'
        AND application_name <> 'ft-lock' AND query LIKE '$1'"
}

# ft_hold_alive SECONDS [COMMAND...]: keeps the fault for SECONDS while checking every 0.2 s
# that the collector lives (if it died, the row fails and it is started again, so that what
# it lost can still be counted) and running COMMAND, if any, at each check.
ft_hold_alive() {
    local end pid rc
    end=$(($(nt_now_ms) + $1 * 1000))
    shift
    while (($(nt_now_ms) < end)); do
        ft__revive "during the fault"
        if (($#)); then
            "$@" || true
        fi
        sleep 0.2
    done
}

# ft__revive WHEN: if c1 died, the row fails and c1 is started again.
ft__revive() {
    local pid rc=0
    pid=$(nt_collector_pid c1)
    if [[ -n $pid ]] && ! nt_pid_alive "$pid"; then
        wait "$pid" || rc=$?
        unset "NT_CPID[c1]"
        ((FT_DEATHS++ > 0)) || ft_fail "the collector exited (code $rc) $1; started again"
        FT_LAST_DEATH="exit code $rc $1"
        nt_start_collector c1 "${FT_C1_ENV[@]}" >/dev/null
    fi
}

# ft_start_c1 [VAR=VALUE...]: the collector, remembered with its environment for restarts.
ft_start_c1() {
    FT_C1_ENV=("$@")
    nt_start_collector c1 "$@"
}

# ft_has_journal_cmd: the binary has `needletrace journal` (issue 8, point 2).
ft_has_journal_cmd() {
    "$NT_BIN" --help 2>&1 | grep -qE '^ +journal( |$)'
}

# ---- the publisher ---------------------------------------------------------------------------
# ft_sim_bg ARGS...: one more simulation (chunk) in the background, seeded from the row's seed,
# with the violations and a dump of every publish. Sets FT_CHUNK to its index.
ft_sim_bg() {
    local i=${#FT_SIM_OUT[@]}
    FT_CHUNK=$i
    FT_SIM_OUT+=("$NT_TMP/sim-$i.json")
    nt_log "simulation $i (seed $((FT_SEED * 100 + i))): $*"
    "$NT_BIN" simulate --clinics 2 --devices 4 --events-per-message 5 \
        --seed "$((FT_SEED * 100 + i))" --dump "$NT_TMP/sim-$i.dump" "${FT_VIOLATIONS[@]}" "$@" \
        >"$NT_TMP/sim-$i.json" 2>>"$NT_TMP/simulate.log" &
    FT_SIM_PIDS+=("$!")
    NT_BG_PIDS+=("$!")
}

# ft_sim ARGS...: a simulation in the foreground (waits for every PUBACK).
ft_sim() {
    ft_sim_bg "$@"
    ft_wait_sims 120
}

# ft_wait_sims DEADLINE: every simulation has exited; one that failed makes the row fail (its
# messages may not all have been acknowledged, so they are counted as sent anyway).
ft_wait_sims() {
    local i pid rc
    for i in "${!FT_SIM_PIDS[@]}"; do
        pid=${FT_SIM_PIDS[$i]}
        [[ -n $pid ]] || continue
        if ! nt__wait_quiet "$1" nt_pid_dead "$pid"; then
            ft_fail "simulation $i still publishing after $1 s"
            continue
        fi
        rc=0
        wait "$pid" || rc=$?
        FT_SIM_PIDS[i]=""
        if ((rc != 0)) || ! jq -e .expected "${FT_SIM_OUT[$i]}" >/dev/null 2>&1; then
            ft_fail "simulation $i failed (exit $rc): not every publish was acknowledged"
            jq -n '{messages_published: 0, events_generated: 0, expected: {raw_messages: 0,
                events: 0, quarantine: 0, alerts: 0}}' >"${FT_SIM_OUT[$i]}"
        fi
    done
}

# ft_expect FILTER [CHUNK...]: an oracle figure summed over the chunks (all by default).
ft_expect() {
    local filter=$1 files=() c
    shift
    if (($#)); then
        for c in "$@"; do
            files+=("${FT_SIM_OUT[$c]}")
        done
    else
        files=("${FT_SIM_OUT[@]}")
    fi
    ((${#files[@]})) || {
        echo 0
        return
    }
    jq -s "map($filter // 0) | add" "${files[@]}"
}

# ---- the fault's end and recovery ------------------------------------------------------------
ft_fault_end() {
    FT_FAULT_END_MS=$(nt_now_ms)
    nt_log "fault over"
    ft__revive "during the fault"
}

# Messages stored (raw + quarantine), for the waits.
ft__stored() {
    local c cond=true
    for c in "${FT_LOSS_OK_CHUNKS[@]}"; do
        cond="$cond AND topic NOT LIKE '%/NP$((FT_SEED * 100 + c))-%'"
    done
    nt_sql "SELECT (SELECT count(*) FROM needletrace.raw_messages WHERE $cond) +
                   (SELECT count(*) FROM needletrace.quarantine WHERE $cond)"
}

ft__stored_ge() {
    local v
    v=$(ft__stored) || return 1
    echo "$v"
    ((v >= $1))
}

# Alerts in the database that the subscriber has not received; prints the number.
ft__undelivered() {
    ft__load_received || return 1
    nt_sql "SELECT count(*) FROM needletrace.alerts a WHERE NOT EXISTS (
                SELECT 1 FROM faultsuite.received r WHERE (r.rule, r.clinic_id, r.device_serial,
                r.boot_id, r.seq) = (a.rule, a.clinic_id, a.device_serial, a.boot_id, a.seq))"
}

ft__all_delivered() {
    local n
    n=$(ft__undelivered) || return 1
    echo "$n undelivered"
    ((n == 0))
}

# ft_settle DEADLINE: the publishers are done; waits until every sent message is stored (the
# recovery time is taken then, from the fault's end), the counts stand still, the alerts have
# settled and reached the subscriber. Never fails the test: the figures tell.
ft_settle() {
    local deadline=$1 want t
    local quiet=30 c chunks=()
    if [[ $FT_STATUS == pending ]]; then
        deadline=10 # the collector cannot recover without the missing command
    fi
    ft_wait_sims "$deadline"
    if [[ $FT_STATUS != ok ]]; then
        deadline=$((deadline < 30 ? deadline : 30)) # already failed: the figures, not a wait
        quiet=10
    fi
    [[ -n $FT_FAULT_END_MS ]] || FT_FAULT_END_MS=$(nt_now_ms)
    for c in "${!FT_SIM_OUT[@]}"; do
        [[ " ${FT_LOSS_OK_CHUNKS[*]:-} " == *" $c "* ]] || chunks+=("$c")
    done
    want=$(($(ft_expect .expected.raw_messages "${chunks[@]}") +
        $(ft_expect .expected.quarantine "${chunks[@]}")))
    if nt__wait_quiet "$deadline" ft__stored_ge "$want"; then
        t=$(nt_now_ms)
        FT_RECOVER_MS=$((t > FT_FAULT_END_MS ? t - FT_FAULT_END_MS : 0))
    else
        ft_note "stored $(ft__stored) of $want messages after ${deadline} s"
    fi
    rm -f "$NT_TMP/.counts_state"
    nt__wait_quiet 15 nt__counts_settled 0 0 0 || true
    nt_wait_alerts_settled "$(ft_expect .expected.alerts)" "$quiet" || true
    nt__wait_quiet "$quiet" ft__all_delivered || true
}

# ---- accounting ------------------------------------------------------------------------------
# What the subscriber received, as rows of faultsuite.received (reloaded at every call).
ft__load_received() {
    nt_sql "CREATE SCHEMA IF NOT EXISTS faultsuite;
            CREATE TABLE IF NOT EXISTS faultsuite.received (rule text, clinic_id text,
                device_serial text, boot_id bigint, seq bigint);
            TRUNCATE faultsuite.received" >/dev/null || return 1
    cut -d' ' -f2- "$NT_TMP/alerts-$FT_SUB.out" 2>/dev/null |
        jq -r '[.rule, .clinic_id, .device_serial, .boot_id, .seq] | @tsv' 2>/dev/null |
        psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$NT_PG_PORT" -U postgres -d needletrace \
            -c '\copy faultsuite.received FROM STDIN'
}

# Every publish of every chunk, as rows of faultsuite.sent.
ft__load_sent() {
    local i
    nt_sql "CREATE SCHEMA IF NOT EXISTS faultsuite;
            DROP TABLE IF EXISTS faultsuite.sent;
            CREATE TABLE faultsuite.sent (chunk int, topic text, sha bytea)" >/dev/null
    for i in "${!FT_SIM_OUT[@]}"; do
        [[ -s $NT_TMP/sim-$i.dump ]] || continue
        "$NT_PY" "$FT_DIR/lib/ftdump.py" "$i" "$NT_TMP/sim-$i.dump" |
            psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$NT_PG_PORT" -U postgres \
                -d needletrace -c '\copy faultsuite.sent FROM STDIN'
    done
}

# Prints "lost lost_expected doubled_messages sent" from faultsuite.sent.
ft__message_figures() {
    local ok_chunks=${FT_LOSS_OK_CHUNKS[*]:-}
    ok_chunks=${ok_chunks// /,}
    nt_sql "WITH s AS (SELECT DISTINCT chunk, topic, sha FROM faultsuite.sent),
            m AS (SELECT s.chunk,
                (SELECT count(*) FROM needletrace.raw_messages r
                  WHERE r.payload_sha256 = s.sha AND r.topic = s.topic) +
                (SELECT count(*) FROM needletrace.quarantine q
                  WHERE q.payload_sha256 = s.sha AND q.topic = s.topic) AS n FROM s)
            SELECT count(*) FILTER (WHERE n = 0 AND chunk <> ALL (ARRAY[${ok_chunks:-}]::int[]))
                   || ' ' || count(*) FILTER (WHERE n = 0 AND chunk = ANY (ARRAY[${ok_chunks:-}]::int[]))
                   || ' ' || coalesce(sum(greatest(n - 1, 0)), 0) || ' ' || count(*) FROM m"
}

# Prints "delivered duplicates": alerts of the database the subscriber received, and the
# deliveries of an alert received before (any alert, also one a restore took away).
ft__delivery_figures() {
    ft__load_received >/dev/null || return 1
    nt_sql "WITH d AS (SELECT rule, clinic_id, device_serial, boot_id, seq, count(*) AS n
                         FROM faultsuite.received GROUP BY 1, 2, 3, 4, 5)
            SELECT (SELECT count(*) FROM d JOIN needletrace.alerts a USING (rule, clinic_id,
                        device_serial, boot_id, seq) WHERE $(ft__counted)) || ' ' ||
                   (SELECT coalesce(sum(n - 1), 0) FROM d)"
}

# ft__counted: the SQL condition on device_serial of the rows the figures count: every row but
# those of the chunks whose loss is expected (each simulation's serials are NP<seed>-...).
ft__counted() {
    local c cond=true
    for c in "${FT_LOSS_OK_CHUNKS[@]}"; do
        cond="$cond AND device_serial NOT LIKE 'NP$((FT_SEED * 100 + c))-%'"
    done
    printf '%s\n' "$cond"
}

# ft_term_c1 WHEN: SIGTERM to c1, which must exit 0 within 10 s (the row fails otherwise; after
# 30 s it is killed). Sets NT_EXIT_CODE and NT_EXIT_MS.
ft_term_c1() {
    local pid t0 rc=0
    pid=$(nt_collector_pid c1)
    t0=$(nt_now_ms)
    kill -TERM "$pid" 2>/dev/null || true
    if ! nt__wait_quiet 30 nt_pid_dead "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        nt__wait_quiet 10 nt_pid_dead "$pid" || true
    fi
    NT_EXIT_MS=$(($(nt_now_ms) - t0))
    wait "$pid" || rc=$?
    NT_EXIT_CODE=$rc
    unset "NT_CPID[c1]"
    nt_log "collector c1 exited with code $rc, ${NT_EXIT_MS} ms after SIGTERM ($1)"
    ((rc == 0 && NT_EXIT_MS <= 10000)) ||
        ft_fail "SIGTERM $1: exit code $rc after ${NT_EXIT_MS} ms (SIGKILL after 30 s)"
}

# ft_finish_row FAULT: stops the collectors (SIGTERM: exit 0 within 10 s, as always), takes the
# figures and writes the row to $FT_OUT.
ft_finish_row() {
    local fault=$1 name lost lost_ok dup_msgs sent events exp_events doubled exp_alerts raised
    local delivered dups undelivered rules_exp rules_got ok_chunks
    if [[ -n $(nt_collector_pid c1) ]]; then
        ft_term_c1 "at the end"
    fi
    if grep -lqE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$NT_TMP"/*.log 2>/dev/null; then
        ft_fail "sanitizer report in $(grep -lE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' \
            "$NT_TMP"/*.log | xargs -n1 basename | tr '\n' ' ')"
    fi
    ((FT_DEATHS <= 1)) ||
        ft_note "the collector exited $FT_DEATHS times in all (last: $FT_LAST_DEATH)"
    ft__load_sent
    read -r lost lost_ok dup_msgs sent <<<"$(ft__message_figures)"
    events=$(nt_sql "SELECT count(*) FROM needletrace.events WHERE $(ft__counted)")
    ok_chunks=()
    for name in "${!FT_SIM_OUT[@]}"; do
        [[ " ${FT_LOSS_OK_CHUNKS[*]:-} " == *" $name "* ]] || ok_chunks+=("$name")
    done
    exp_events=$(ft_expect .expected.events "${ok_chunks[@]}")
    exp_alerts=$(ft_expect .expected.alerts "${ok_chunks[@]}")
    doubled=$dup_msgs
    if ((events > exp_events)); then
        doubled=$((doubled + events - exp_events))
    fi
    if ((lost == 0 && events < exp_events)); then
        ft_fail "every message stored but $events of $exp_events events"
    fi
    raised=$(nt_sql "SELECT count(*) FROM needletrace.alerts WHERE $(ft__counted)")
    read -r delivered dups <<<"$(ft__delivery_figures)"
    undelivered=$(ft__undelivered)
    if ((raised != exp_alerts && ${#FT_LOSS_OK_CHUNKS[@]} == 0)); then
        rules_exp=$(nt_expected_alerts_by_rule "${FT_SIM_OUT[@]}")
        rules_got=$(nt_alerts_by_rule)
        ft_note "alerts by rule: expected $rules_exp; raised $rules_got"
    fi
    if ((lost != 0 || doubled != 0 || raised != exp_alerts || undelivered != 0)) &&
        [[ $FT_STATUS == ok ]]; then
        FT_STATUS=FAIL
    fi
    ((lost_ok == 0)) || ft_note "expected, reported loss: $lost_ok acknowledged messages" \
        "restored away from the database and no longer in the journal"
    jq -n --arg fault "$fault" --argjson reps "$FT_REPS" --argjson sent "$sent" \
        --argjson events "$events" --argjson exp_events "$exp_events" --argjson lost "$lost" \
        --argjson lost_ok "$lost_ok" --argjson doubled "$doubled" \
        --argjson exp_alerts "$exp_alerts" --argjson raised "$raised" \
        --argjson delivered "$delivered" --argjson dups "$dups" \
        --argjson undelivered "$undelivered" --arg recover "${FT_RECOVER_MS:-}" \
        --arg status "$FT_STATUS" --argjson seed "$FT_SEED" \
        --args '{fault: $fault, reps: $reps, sent: $sent, events: $events,
            expected_events: $exp_events, lost: $lost, lost_expected: $lost_ok,
            doubled: $doubled, alerts_expected: $exp_alerts, alerts_raised: $raised,
            alerts_delivered: $delivered, alert_duplicates: $dups, undelivered: $undelivered,
            recover_ms: (if $recover == "" then null else ($recover | tonumber) end),
            status: $status, seed: $seed, notes: $ARGS.positional}' "${FT_NOTES[@]}" >"$FT_OUT"
    nt_log "row: $(jq -c 'del(.notes)' "$FT_OUT")"
}
