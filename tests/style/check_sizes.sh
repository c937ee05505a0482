#!/usr/bin/env bash
# check_sizes.sh -- the size rules of the source tree (issue 6, shared/STYLE.md):
#   no C function over 100 lines, no source file (C, headers or SQL) over 900 lines;
# tests and benchmarks are exempt. Prints every offender and exits 1 if there is one; with -v,
# also prints the five longest functions and files.
#
# A function is counted from the line that opens its body ("{" in column 0, as clang-format
# writes every function here) to the "}" in column 0 that closes it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
verbose=${1:-}
fail=0

mapfile -t c_files < <(find collector include -name '*.[ch]' | sort)
mapfile -t sql_files < <(find collector -name '*.sql' | sort)

funcs=$(awk '
    FNR == 1 { inbody = 0 }
    /^[A-Za-z_].*\)[[:space:]]*$/ && !/;[[:space:]]*$/ { sig = $0; sigline = FNR }
    /^\{/ { inbody = 1; start = FNR; name = sig; sub(/\(.*/, "", name); sub(/.*[ *]/, "", name) }
    /^\}/ && inbody { printf "%d %s:%d %s\n", FNR - start - 1, FILENAME, start, name; inbody = 0 }
' "${c_files[@]}" | sort -rn)

while read -r n where name; do
    if ((n > 100)); then
        echo "function over 100 lines: $name ($where, $n lines)"
        fail=1
    fi
done <<<"$funcs"

while read -r n file; do
    [[ $file == total ]] && continue
    if ((n > 900)); then
        echo "file over 900 lines: $file ($n lines)"
        fail=1
    fi
done < <(wc -l "${c_files[@]}" "${sql_files[@]}")

if [[ $verbose == -v ]]; then
    echo "longest functions (body lines):"
    head -n 5 <<<"$funcs" | sed 's/^/  /'
    echo "longest files:"
    wc -l "${c_files[@]}" "${sql_files[@]}" | grep -v ' total$' | sort -rn | head -n 5 | sed 's/^/  /'
fi
if ((fail)); then
    exit 1
fi
echo "sizes ok: ${#c_files[@]} C files, ${#sql_files[@]} SQL files; no function over 100 lines, no file over 900"
