# shellcheck shell=bash
# lib.sh -- the integration-test harness: a real PostgreSQL and a real mosquitto on free
# loopback ports in a temp dir, the collector under test, polling helpers and assertions.
#
# Sourced by every tests/integration/test_*.sh (and by deploy/demo.sh), which is run as
#   bash tests/integration/test_X.sh /path/to/needletrace
# Typical use:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   nt_setup "$@"          # temp dir + EXIT trap that stops everything, pass or fail
#   nt_start_pg; nt_start_broker; nt_migrate
#   nt_start_collector c1; nt_wait_collector_ready c1
#   nt_simulate "$NT_TMP/sim.json" --clinics 2 --devices 3 --events 1000 --seed 7
#   nt_wait_counts "$NT_TMP/sim.json"      # waits for, then asserts, the exact counts
#   nt_finish
#
# Everything listens on 127.0.0.1 only. Synchronisation is always a polled condition with
# a deadline (nt_wait_for), never a bare sleep.
#
# Knobs (environment): NT_KEEP=1 keeps the temp dir; NT_LOG_LEVEL sets the collector's log
# level (default info); NT_PG_USER overrides the user PostgreSQL runs as when root.

# The harness is split by concern under lib/; this file only sources the parts, so that every
# `source .../lib.sh` (the tests, deploy/demo.sh, tests/bench/run.sh) gets all of it:
#   core.sh       globals, output, nt_fail, free ports, nt_wait_for / nt_hold, stopping pids
#   setup.sh      nt_setup and the one EXIT trap (nt__cleanup) that stops everything
#   assert.sh     nt_expect_eq / nt_expect_true, the sanitizer check, nt_finish
#   db.sh         PostgreSQL: nt_start_pg, nt_stop_pg, nt_psql, nt_sql...
#   broker.sh     mosquitto: nt_start_broker, nt_stop_broker, nt_restart_broker
#   collector.sh  needletrace run: nt_start_collector, nt_wait_collector_ready, nt_stop_collector
#   simulate.sh   needletrace simulate and its JSON summary
#   counts.sh     rows in the database against the simulator's expected counts
#   alerts.sh     compliance rules and alerts (test_rules_*.sh)

# For shellcheck -x, SCRIPTDIR is the directory of the script it checks: the tests', deploy/ or
# tests/bench/; these paths lead to lib/ from each.
# shellcheck source-path=SCRIPTDIR source-path=SCRIPTDIR/../tests/integration
# shellcheck source-path=SCRIPTDIR/../integration
NT_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/lib" && pwd)
# shellcheck source=lib/core.sh
source "$NT_LIB_DIR/core.sh"
# shellcheck source=lib/setup.sh
source "$NT_LIB_DIR/setup.sh"
# shellcheck source=lib/assert.sh
source "$NT_LIB_DIR/assert.sh"
# shellcheck source=lib/db.sh
source "$NT_LIB_DIR/db.sh"
# shellcheck source=lib/broker.sh
source "$NT_LIB_DIR/broker.sh"
# shellcheck source=lib/collector.sh
source "$NT_LIB_DIR/collector.sh"
# shellcheck source=lib/simulate.sh
source "$NT_LIB_DIR/simulate.sh"
# shellcheck source=lib/counts.sh
source "$NT_LIB_DIR/counts.sh"
# shellcheck source=lib/alerts.sh
source "$NT_LIB_DIR/alerts.sh"
