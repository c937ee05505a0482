#!/usr/bin/env bash
# row.sh -- one fault of the suite, in an environment of its own (temp dir, PostgreSQL, mosquitto,
# collector), stopped by the EXIT trap pass or fail; writes the row as JSON to FT_OUT.
#
#   FT_OUT=FILE FT_SEED=N FT_MODE=short|long bash tests/faults/row.sh FAULT /path/to/needletrace
#
# Run by tests/faults/run.sh, which prints the table; FAULT is one of run.sh --list.
# shellcheck source-path=SCRIPTDIR
# shellcheck disable=SC2034 # FT_RNG and NT_TEST_NAME are read by the sourced files
set -euo pipefail
FT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FT_FAULTLIB_DIR=$(cd "$FT_DIR/../fault" && pwd) # ntproxy.py, ntblackhole.py (read by lib/)
export FT_FAULTLIB_DIR
# shellcheck source=../integration/lib.sh
source "$FT_DIR/../integration/lib.sh"
# shellcheck source=../integration/lib/pub.sh
source "$FT_DIR/../integration/lib/pub.sh"
# shellcheck source=lib/measure.sh
source "$FT_DIR/lib/measure.sh"
# shellcheck source=lib/faults_process.sh
source "$FT_DIR/lib/faults_process.sh"
# shellcheck source=lib/faults_db.sh
source "$FT_DIR/lib/faults_db.sh"
# shellcheck source=lib/faults_net.sh
source "$FT_DIR/lib/faults_net.sh"
# shellcheck source=lib/faults_disk.sh
source "$FT_DIR/lib/faults_disk.sh"

FAULT=${1:?usage: row.sh FAULT NEEDLETRACE_BINARY}
NT_BIN=${2:?usage: row.sh FAULT NEEDLETRACE_BINARY}
: "${FT_OUT:?FT_OUT must name the row file}" "${FT_SEED:?FT_SEED must be set}"
NT_TEST_NAME=$FAULT
declare -F "fault_$FAULT" >/dev/null || {
    echo "row.sh: unknown fault \"$FAULT\"" >&2
    exit 2
}
nt_find_python hashlib
FT_RNG=$FT_SEED
"fault_$FAULT"
