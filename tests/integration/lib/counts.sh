# shellcheck shell=bash
# counts.sh -- what the database holds against what the simulator says it sent: waiting for
# the row counts to settle and asserting them exactly, duplicate keys, breakdowns by column.
# Part of tests/integration/lib.sh.

# Prints events raw quarantine, space separated.
nt_counts() {
    nt_sql "SELECT (SELECT count(*) FROM needletrace.events) || ' ' ||
                   (SELECT count(*) FROM needletrace.raw_messages) || ' ' ||
                   (SELECT count(*) FROM needletrace.quarantine)"
}

# Succeeds when the counts are at least the targets and have stayed the same over the last
# six polls (about 1.2 s: the collector has drained); prints them. The state lives in a file
# because nt_wait_for runs the command in a subshell.
nt__counts_settled() {
    local e=$1 r=$2 q=$3 c prev="" streak=0 state="$NT_TMP/.counts_state" ce cr cq
    c=$(nt_counts) || return 1
    printf '%s\n' "$c"
    if [[ -f $state ]]; then
        IFS='|' read -r prev streak <"$state"
    fi
    if [[ $c == "$prev" ]]; then
        streak=$((streak + 1))
    else
        streak=0
    fi
    printf '%s|%s\n' "$c" "$streak" >"$state"
    read -r ce cr cq <<<"$c"
    ((ce >= e && cr >= r && cq >= q && streak >= 6))
}

# nt_wait_totals EVENTS RAW QUARANTINE [DEADLINE]: waits until the database holds at least
# these counts and they have stopped moving, then asserts they are exact.
nt_wait_totals() {
    local e=$1 r=$2 q=$3 deadline=${4:-300} ce cr cq
    rm -f "$NT_TMP/.counts_state"
    nt_wait_for "events >= $e, raw_messages >= $r, quarantine >= $q, then no change for 1.2 s" \
        "$deadline" nt__counts_settled "$e" "$r" "$q"
    read -r ce cr cq <<<"$NT_LAST"
    nt_expect_eq "events rows" "$e" "$ce"
    nt_expect_eq "raw_messages rows" "$r" "$cr"
    nt_expect_eq "quarantine rows" "$q" "$cq"
}

# nt_wait_counts SUMMARY_JSON... [-- DEADLINE]: nt_wait_totals with the sums of the summaries'
# expected counts.
nt_wait_counts() {
    local deadline=300 files=()
    while (($#)); do
        if [[ $1 == -- ]]; then
            deadline=$2
            break
        fi
        files+=("$1")
        shift
    done
    nt_wait_totals "$(nt_json_sum .expected.events "${files[@]}")" \
        "$(nt_json_sum .expected.raw_messages "${files[@]}")" \
        "$(nt_json_sum .expected.quarantine "${files[@]}")" "$deadline"
}

# nt_check_no_duplicate_keys: no (clinic_id, device_serial, boot_id, seq) twice in events.
nt_check_no_duplicate_keys() {
    nt_expect_eq "duplicate event keys" 0 "$(nt_sql "SELECT count(*) FROM (
        SELECT 1 FROM needletrace.events GROUP BY clinic_id, device_serial, boot_id, seq
        HAVING count(*) > 1) d")"
}

# nt_check_breakdown LABEL JSON_FILTER SQL_COLUMN TABLE SUMMARY_JSON...: compares a
# key->count map of the summaries (summed) with SELECT col, count(*) GROUP BY col.
nt_check_breakdown() {
    local label=$1 filter=$2 col=$3 table=$4 want got
    shift 4
    want=$(jq -rs "map($filter // {} | to_entries) | add | group_by(.key)
                   | map({key: .[0].key, value: (map(.value) | add)}) | map(select(.value > 0))
                   | sort_by(.key) | map(\"\(.key)=\(.value)\") | join(\" \")" "$@")
    got=$(nt_sql "SELECT coalesce(string_agg(k || '=' || n, ' ' ORDER BY k COLLATE \"C\"), '')
                  FROM (SELECT $col::text AS k, count(*) AS n FROM needletrace.$table
                        GROUP BY 1) s")
    nt_expect_eq "$label" "$want" "$got"
}
