# shellcheck shell=bash
# shellcheck disable=SC2034 # NT_LAST, NT_BG_PIDS... are read by the other files and the tests
# core.sh -- the harness's base: the temp dir and run-wide globals, log output, failing a
# test, free loopback ports, polling a condition under a deadline, and stopping processes.
# Part of tests/integration/lib.sh (which sources every file of lib/); needs nothing else
# but calls nt__check_collectors (collector.sh) from nt_wait_for.

# ---- globals ---------------------------------------------------------------------------------
NT_TMP=${NT_TMP:-}
NT_BIN=${NT_BIN:-}
NT_LAST=""
declare -ga NT_BG_PIDS=()       # other background processes (simulate), stopped at exit
NT_T0=$SECONDS

# ---- output ----------------------------------------------------------------------------------
nt_log() {
    printf '[%s +%ss] %s\n' "${NT_TEST_NAME:-nt}" "$((SECONDS - NT_T0))" "$*"
}

nt_dump_logs() {
    local f
    [[ -n $NT_TMP && -d $NT_TMP ]] || return 0
    while IFS= read -r f; do
        printf -- '----- last 40 lines of %s -----\n' "${f#"$NT_TMP"/}"
        tail -n 40 "$f" 2>/dev/null || true
    done < <(find "$NT_TMP" -maxdepth 2 -name '*.log' -type f 2>/dev/null | sort)
    printf -- '----- end of logs -----\n'
}

# Prints the message and the logs, then exits the test with status 1 (the trap cleans up).
nt_fail() {
    printf 'FAIL: %s\n' "$*" >&2
    nt_dump_logs >&2
    NT_LOGS_DUMPED=1
    exit 1
}

# ---- time, ports -----------------------------------------------------------------------------
# Milliseconds since the epoch (no fork; works whatever the locale's decimal separator).
nt_now_ms() {
    local t=${EPOCHREALTIME//[!0-9]/}
    printf '%s\n' "$((t / 1000))"
}

nt__port_in_use() {
    local p=$1
    if (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        return 0
    fi
    if command -v ss >/dev/null 2>&1; then
        [[ -n $(ss -Htan "( sport = :$p )" 2>/dev/null) ]] && return 0
    fi
    return 1
}

# Prints a TCP port on 127.0.0.1 that nothing listens on and that this test has not handed
# out before (remembered in $NT_TMP/ports, so it also works from a command substitution).
# Picks below the kernel's ephemeral range so outgoing connections do not collide.
nt_free_port() {
    local i p lo=20000 hi=32000 reg="$NT_TMP/ports"
    for ((i = 0; i < 200; i++)); do
        p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo)))
        if [[ -f $reg ]] && grep -qx "$p" "$reg"; then
            continue
        fi
        if nt__port_in_use "$p"; then
            continue
        fi
        printf '%s\n' "$p" >>"$reg"
        printf '%s\n' "$p"
        return 0
    done
    nt_fail "could not find a free loopback port"
}

# ---- waiting ---------------------------------------------------------------------------------
# nt_wait_for DESCRIPTION DEADLINE_S COMMAND...
# Runs COMMAND every 0.2 s until it exits 0 (its output is kept in NT_LAST). On timeout,
# prints the description, the command's last output and the logs, and fails the test.
nt_wait_for() {
    local desc=$1 deadline=$2 out="" end
    shift 2
    end=$(($(nt_now_ms) + deadline * 1000))
    while :; do
        if out=$("$@" 2>&1); then
            NT_LAST=$out
            return 0
        fi
        if (($(nt_now_ms) >= end)); then
            NT_LAST=$out
            nt_fail "timed out after ${deadline}s waiting for: $desc (last value: ${out:-<empty>})"
        fi
        nt__check_collectors "$desc"
        sleep 0.2
    done
}


# nt_hold DESCRIPTION DURATION_S COMMAND...: COMMAND must keep succeeding, checked every
# 0.2 s, for DURATION_S seconds (used to keep a fault in place while checking an invariant).
nt_hold() {
    local desc=$1 duration=$2 out="" end
    shift 2
    end=$(($(nt_now_ms) + duration * 1000))
    while (($(nt_now_ms) < end)); do
        if ! out=$("$@" 2>&1); then
            nt_fail "stopped holding: $desc (last value: ${out:-<empty>})"
        fi
        sleep 0.2
    done
}


# Waits quietly (no failure) for COMMAND to succeed; returns 1 on timeout.
nt__wait_quiet() {
    local deadline=$1 end
    shift
    end=$(($(nt_now_ms) + deadline * 1000))
    until "$@" >/dev/null 2>&1; do
        (($(nt_now_ms) < end)) || return 1
        sleep 0.2
    done
}


# ---- processes -------------------------------------------------------------------------------
# Stops a process: SIGTERM, up to $2 seconds, then SIGKILL. Reaps it if it is our child.
nt__stop_pid() {
    local pid=$1 grace=${2:-10} end
    [[ -n $pid ]] || return 0
    kill -0 "$pid" 2>/dev/null || {
        wait "$pid" 2>/dev/null || true
        return 0
    }
    kill -TERM "$pid" 2>/dev/null || true
    end=$(($(nt_now_ms) + grace * 1000))
    while nt_pid_alive "$pid" && (($(nt_now_ms) < end)); do
        sleep 0.1
    done
    if nt_pid_alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# Is the process alive (running, not a zombie)?
nt_pid_alive() {
    local pid=$1 state
    kill -0 "$pid" 2>/dev/null || return 1
    state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z && $state != X ]]
}

nt_pid_dead() {
    ! nt_pid_alive "$1"
}
