# shellcheck shell=bash disable=SC2034
# deploy/packages.sh -- the Debian packages needletrace builds, runs and tests with, and one
# function that installs those missing. Sourced by deploy/demo.sh and tests/run.sh.

# Run-time and build dependencies (deploy/demo.sh).
NT_PACKAGES_RUN=(build-essential cmake pkg-config libmosquitto-dev mosquitto mosquitto-clients
    libuv1-dev libprotobuf-c-dev protobuf-c-compiler libpq-dev postgresql libssl-dev jq curl
    procps iproute2 openssl)
# Everything the test suite needs on top (tests/run.sh).
NT_PACKAGES_TEST=("${NT_PACKAGES_RUN[@]}" clang libcmocka-dev valgrind
    python3-paho-mqtt python3-protobuf protobuf-compiler chromium)

# nt_install_missing PACKAGE...: apt-get installs the packages that are not installed yet
# (apt-get update first); sudo when not root, never prompting in CI or without a terminal.
# Prints what it installs; returns non-zero when installation fails.
nt_install_missing() {
    local missing=() p sudo=()
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    if ((${#missing[@]} == 0)); then
        echo "all $# required packages are installed"
        return 0
    fi
    echo "installing missing packages: ${missing[*]}"
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || {
            echo "error: not root and no sudo; install as root: apt-get install ${missing[*]}" >&2
            return 1
        }
        sudo=(sudo)
        if [[ ${CI:-} == true || ! -t 0 ]]; then
            sudo=(sudo -n)
        fi
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q || return 1
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}
