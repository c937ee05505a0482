#!/usr/bin/env bash
# check_format.sh -- every C file is formatted with the root .clang-format (shared/STYLE.md).
# Exits 77 (skipped) when clang-format is not installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
command -v clang-format >/dev/null 2>&1 || {
    echo "clang-format not found: skipped"
    exit 77
}
mapfile -t files < <(find collector include tests -name '*.[ch]' | sort)
clang-format --dry-run --Werror "${files[@]}"
echo "format ok: ${#files[@]} files"
