#!/usr/bin/env bash
# run.sh -- the fault suite (issue 8): drives the real collector, a real mosquitto and a real
# PostgreSQL through each fault and prints one table row per fault.
#
#   tests/faults/run.sh [--short|--long] [--only FAULT]... [--seed N] [--bin PATH] [--list] [--keep]
#
#   --short      a few repetitions and short outages (default; ~4 minutes; in .ci/run)
#   --long       the figures for the issue: 100 kills, 60 s outages, 10 broker restarts...
#   --only F     run fault F only (repeatable); --list prints the faults
#   --seed N     replay a run: every random choice (kill moments, publishers) derives from N
#   --bin PATH   the needletrace binary (default: $NT_BIN, else build/needletrace)
#   --keep       keep the logs directory (kept anyway when a row does not pass)
#
# Each fault runs in its own environment (tests/faults/row.sh: temp dir, servers on free loopback
# ports, everything stopped by a trap). Exit 0 only if every row reads 0 lost, 0 doubled, alerts
# raised == expected and every raised alert delivered (status ok); README.md explains the table.
set -euo pipefail

FT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$FT_DIR/../.." && pwd)

# The rows, in order: name and what the table calls it in the notes.
FT_SHORT=(kill9 pg_down pg_slow broker_restart net_cut_both disk_full torn_tail flipped_bit
    db_restore db_restore_replay blackhole sigterm)
FT_LONG=(kill9 pg_down pg_slow broker_restart net_cut_both net_cut_broker net_cut_db disk_full
    torn_tail flipped_bit db_restore db_restore_replay blackhole sigterm)

usage() {
    sed -n '3,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

MODE=short
SEED=""
BIN=${NT_BIN:-$ROOT/build/needletrace}
KEEP=0
declare -a ONLY=()

parse_args() {
    while (($#)); do
        case $1 in
        --short | --long) MODE=${1#--} ;;
        --only) ONLY+=("${2:?--only needs a fault}") && shift ;;
        --seed) SEED=${2:?--seed needs a number} && shift ;;
        --bin) BIN=${2:?--bin needs a path} && shift ;;
        --keep) KEEP=1 ;;
        --list) printf '%s\n' "${FT_LONG[@]}" && exit 0 ;;
        -h | --help) usage 0 ;;
        *) echo "run.sh: unknown option \"$1\"" >&2 && usage 2 ;;
        esac
        shift
    done
    [[ -z $SEED || $SEED =~ ^[0-9]{1,9}$ ]] || {
        echo "run.sh: --seed must be an integer from 0 to 999999999" >&2
        exit 2
    }
    [[ -x $BIN ]] || {
        echo "run.sh: needletrace binary not found: $BIN (build it, or pass --bin)" >&2
        exit 2
    }
}

# run_row NAME SEED: runs one row; its JSON lands in $LOGS/NAME.json (written here on a harness
# failure, with the last FAIL line as the note).
run_row() {
    local name=$1 seed=$2 t0=$SECONDS rc=0 why
    printf '==> %-18s seed %-10s ' "$name" "$seed"
    FT_OUT=$LOGS/$name.json FT_SEED=$seed FT_MODE=$MODE \
        bash "$FT_DIR/row.sh" "$name" "$BIN" >"$LOGS/$name.log" 2>&1 || rc=$?
    if [[ ! -s $LOGS/$name.json ]]; then
        why=$(grep -m1 '^FAIL' "$LOGS/$name.log" || tail -n 1 "$LOGS/$name.log")
        jq -n --arg f "$name" --argjson s "$seed" --arg why "harness (exit $rc): $why" \
            '{fault: $f, seed: $s, status: "FAIL", reps: 0, notes: [$why]}' >"$LOGS/$name.json"
    fi
    printf '%-8s %4ss\n' "$(jq -r .status "$LOGS/$name.json")" "$((SECONDS - t0))"
}

# The table: one row per fault, then the notes of each row.
print_table() {
    local f
    printf '\nneedletrace fault suite, %s, seed %s, %s\n' "$MODE" "$SEED" "$BIN"
    printf '%-18s %5s %7s %9s %6s %7s %7s %7s %9s %5s %9s  %s\n' fault reps sent committed \
        lost doubled 'al.exp' raised delivered 'dup.d' 'recover' status
    for f in "${ROWS[@]}"; do
        jq -r '[.fault, (.reps // 0), (.sent // "-"), (.events // "-"),
                (if .lost == null then "-" elif (.lost_expected // 0) > 0
                 then "\(.lost)+\(.lost_expected)r" else .lost end),
                (.doubled // "-"), (.alerts_expected // "-"), (.alerts_raised // "-"),
                (.alerts_delivered // "-"), (.alert_duplicates // "-"),
                (if .recover_ms == null then "-" else "\(.recover_ms / 1000 * 10 | round / 10)s" end),
                .status] | @tsv' "$LOGS/$f.json" |
            awk -F'\t' '{ printf "%-18s %5s %7s %9s %6s %7s %7s %7s %9s %5s %9s  %s\n",
                          $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 }'
    done
    printf '\nnotes:\n'
    for f in "${ROWS[@]}"; do
        jq -r '.fault as $f | (.notes // [])[] | "  \($f): \(.)"' "$LOGS/$f.json"
    done
}

main() {
    local i name ok=1
    parse_args "$@"
    [[ -n $SEED ]] || SEED=$((($(date +%s) * 7919 + $$) % 1000000))
    if ((${#ONLY[@]})); then
        for name in "${ONLY[@]}"; do
            [[ " ${FT_LONG[*]} " == *" $name "* ]] || {
                echo "run.sh: unknown fault \"$name\" (see --list)" >&2
                exit 2
            }
        done
        ROWS=("${ONLY[@]}")
    elif [[ $MODE == long ]]; then
        ROWS=("${FT_LONG[@]}")
    else
        ROWS=("${FT_SHORT[@]}")
    fi
    LOGS=$(mktemp -d "${TMPDIR:-/tmp}/nt-faults.XXXXXX")
    echo "fault suite: ${#ROWS[@]} faults, --$MODE, seed $SEED (replay: --seed $SEED), logs in $LOGS"
    for i in "${!ROWS[@]}"; do
        # a row's seed depends only on the run's seed and the fault, not on --only
        name=${ROWS[$i]}
        run_row "$name" "$(((SEED + $(cksum <<<"$name" | cut -d' ' -f1)) % 1000000000))"
        [[ $(jq -r .status "$LOGS/$name.json") == ok ]] || ok=0
    done
    print_table
    if ((ok)); then
        ((KEEP)) || rm -rf "$LOGS"
        echo "ALL ROWS PASSED"
        exit 0
    fi
    echo "SOME ROWS DID NOT PASS (logs: $LOGS; lost/doubled/alerts above, reasons in the notes)"
    exit 1
}

main "$@"
