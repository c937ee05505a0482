#!/usr/bin/env bash
# tests/run.sh -- the whole test suite in one command (README command 2; .ci/run calls it).
#
#   1. installs the Debian packages it needs, only if some are missing;
#   2. gcc build with -Werror in build/, then `ctest -L 'unit|valgrind'` there (unit tests, and
#      the unit tests and the collector under valgrind);
#   3. clang build with -Werror, ASan+UBSan and the libFuzzer target in build-asan/, then every
#      ctest there: unit, integration (real mosquitto + PostgreSQL), fuzz smoke; then, as steps
#      of their own, the short fault suite (ctest -L faults: tests/faults/run.sh --short) and
#      the 1-minute soak (ctest -L soak: tests/soak/run.sh --minutes 1), both against the
#      sanitizer build;
#   4. prints a summary; exits non-zero if anything failed.
#
# Works as root (CI) and as a normal user (sudo is used to install packages if needed).
# Honours CI=true (no prompts, no colour) and NO_COLOR. JOBS overrides the build parallelism.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

if [[ -t 1 && ${CI:-} != true && -z ${NO_COLOR:-} ]]; then
    C_OK=$'\e[32m' C_BAD=$'\e[31m' C_HEAD=$'\e[1m' C_OFF=$'\e[0m'
else
    C_OK='' C_BAD='' C_HEAD='' C_OFF=''
fi

say() {
    printf '%s==> %s%s\n' "$C_HEAD" "$*" "$C_OFF"
}

# ---- dependencies ----------------------------------------------------------------------------
# shellcheck source-path=SCRIPTDIR source=../deploy/packages.sh
source "$ROOT/deploy/packages.sh"

# ---- steps -----------------------------------------------------------------------------------
declare -a STEP_NAMES=() STEP_RESULTS=() STEP_TIMES=()

# step NAME COMMAND...: runs a step, records its result and duration; never exits.
step() {
    local name=$1 t0=$SECONDS rc=0
    shift
    say "$name"
    "$@" || rc=$?
    STEP_NAMES+=("$name")
    STEP_TIMES+=("$((SECONDS - t0))")
    if ((rc == 0)); then
        STEP_RESULTS+=("ok")
    else
        STEP_RESULTS+=("FAILED (exit $rc)")
    fi
    return "$rc"
}

skip() {
    STEP_NAMES+=("$1")
    STEP_TIMES+=(0)
    STEP_RESULTS+=("skipped: $2")
}

# configure DIR COMPILER CMAKE_ARGS...: a build dir configured with another compiler is
# recreated (CMake cannot switch compilers in place).
configure() {
    local dir=$1 cc=$2 cached
    shift 2
    if [[ -f $dir/CMakeCache.txt ]]; then
        cached=$(sed -n 's/^CMAKE_C_COMPILER:[A-Z]*=//p' "$dir/CMakeCache.txt")
        if [[ -n $cached && $(basename "$cached") != "$cc"* ]]; then
            echo "$dir was configured with $cached; recreating it for $cc"
            rm -rf "$dir"
        fi
    fi
    CC=$cc cmake -S "$ROOT" -B "$dir" -DCMAKE_C_COMPILER="$cc" "$@"
}

build() {
    cmake --build "$1" --parallel "$JOBS"
}

run_ctest() {
    local dir=$1
    shift
    (cd "$dir" && ctest --output-on-failure --parallel "$JOBS" "$@")
}

main() {
    local t0=$SECONDS failed=0 i
    cd "$ROOT"
    say "needletrace test suite in $ROOT (CI=${CI:-false}, $(id -un), $JOBS jobs)"
    step "dependencies" nt_install_missing "${NT_PACKAGES_TEST[@]}" || {
        echo "cannot continue without the dependencies" >&2
        exit 1
    }

    # 1. gcc, -Werror, unit tests and valgrind
    if step "gcc: configure build/" configure build gcc -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DNT_WERROR=ON -DNT_SANITIZE=OFF -DNT_FUZZ=OFF &&
        step "gcc: build" build build; then
        step "gcc: ctest -L 'unit|valgrind' (unit, valgrind)" run_ctest build -L 'unit|valgrind' || true
    else
        skip "gcc: ctest -L 'unit|valgrind' (unit, valgrind)" "build failed"
    fi

    # 2. clang, -Werror, ASan+UBSan, libFuzzer; everything
    if step "clang+asan: configure build-asan/" configure build-asan clang \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNT_WERROR=ON -DNT_SANITIZE=ON -DNT_FUZZ=ON &&
        step "clang+asan: build" build build-asan; then
        ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1} \
            UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
            step "clang+asan: ctest (unit, integration, fuzz)" run_ctest build-asan \
            -LE 'faults|soak' || true
        step "clang+asan: fault suite (ctest -L faults)" run_ctest build-asan -L faults || true
        step "clang+asan: soak smoke (ctest -L soak)" run_ctest build-asan -L soak || true
    else
        skip "clang+asan: ctest (unit, integration, fuzz)" "build failed"
        skip "clang+asan: fault suite (ctest -L faults)" "build failed"
        skip "clang+asan: soak smoke (ctest -L soak)" "build failed"
    fi

    # summary
    printf '\n%s==> summary%s\n' "$C_HEAD" "$C_OFF"
    for i in "${!STEP_NAMES[@]}"; do
        if [[ ${STEP_RESULTS[$i]} == ok ]]; then
            printf '  %s%-8s%s %-48s %5ss\n' "$C_OK" ok "$C_OFF" "${STEP_NAMES[$i]}" "${STEP_TIMES[$i]}"
        else
            failed=1
            printf '  %s%-8s%s %-48s %5ss  %s\n' "$C_BAD" FAIL "$C_OFF" "${STEP_NAMES[$i]}" \
                "${STEP_TIMES[$i]}" "${STEP_RESULTS[$i]}"
        fi
    done
    printf '  total %ss\n' "$((SECONDS - t0))"
    if ((failed)); then
        printf '%sFAILED%s (details above; integration logs are printed by the failing test)\n' \
            "$C_BAD" "$C_OFF"
        exit 1
    fi
    printf '%sALL PASSED%s\n' "$C_OK" "$C_OFF"
}

main "$@"
