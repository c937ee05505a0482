#!/usr/bin/env bash
# test_audit_views.sh -- issue 11, point 8: the views that answer an auditor's questions directly,
# as the auditor's login reads them.
#   depth_exceedances: a sample beyond its area's limit (default policy), and one within its
#     clinic's raised area limit but beyond its pen model's maximum (limit_source 'model', as the
#     rule DEPTH_OUT_OF_RANGE says in its alert); samples within both limits are not listed.
#   cartridge_reuse: a cartridge mounted in two sessions (two pens) is listed with both mounts; a
#     cartridge mounted once is not.
#   completeness: per collector, received = stored + quarantined (+ redeliveries), as many raw
#     rows now as stored.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR/lib
source "$NT_LIB_DIR/pub.sh"
nt_setup "$@"

nt_start_pg
nt_start_broker
nt_migrate
nt_pub_setup
# Clinic CL-M raises periorbital to 0.9 mm; the pens' model (NP-300) may go to 0.6 mm only.
nt_sql "INSERT INTO needletrace.depth_policy_clinic (clinic_id, area, max_depth_um)
            VALUES ('CL-M', 'periorbital', 900);
        UPDATE needletrace.device_models SET max_depth_um = 600 WHERE device_model = 'NP-300'" \
    >/dev/null
nt_start_collector c1
nt_wait_collector_ready c1
T=$(($(nt_now_ms) - 3600000))
nt_pub deep CL-M HP-M1 1 3 "$T" --depth0 650 || nt_fail "could not publish HP-M1's settings"
nt_pub deep CL-M HP-M2 1 3 "$T" --depth0 550 || nt_fail "could not publish HP-M2's settings"
nt_pub deep CL-D HP-D1 1 2 "$T" --depth0 520 || nt_fail "could not publish HP-D1's settings"
nt_pub mount CL-D HP-D2 1 1 S-A 09506000134352 CART-R "$T" || nt_fail "mount 1"
nt_pub mount CL-D HP-D3 1 1 S-B 09506000134352 CART-R $((T + 60000)) || nt_fail "mount 2"
nt_pub mount CL-D HP-D3 1 2 S-B 09506000134352 CART-ONCE $((T + 120000)) || nt_fail "mount 3"
nt_wait_totals 11 6 0 60

auditor() { # as the auditor's login
    psql -X -q -At -v ON_ERROR_STOP=1 "$(nt_db_url nt_auditor)" -c "$1"
}
nt_expect_eq "depth_exceedances (serial seq depth limit source)" \
    "HP-D1 1 520 500 default|HP-D1 2 521 500 default|HP-M1 1 650 600 model|HP-M1 2 651 600 model|HP-M1 3 652 600 model" \
    "$(auditor "SELECT string_agg(concat_ws(' ', device_serial, seq, depth_um, limit_um,
                       limit_source), '|' ORDER BY device_serial, seq)
                  FROM needletrace.depth_exceedances")"
nt_expect_eq "HP-M1's limits: area (clinic policy) and model" "900 600 NP-300" \
    "$(auditor "SELECT DISTINCT concat_ws(' ', area_limit_um, model_limit_um, device_model)
                  FROM needletrace.depth_exceedances WHERE device_serial = 'HP-M1'")"
nt_wait_for "the alerts of HP-M1 (one per depth)" 30 nt_sql_eq 3 "SELECT count(*) FROM needletrace.alerts
    WHERE rule = 'DEPTH_OUT_OF_RANGE' AND device_serial = 'HP-M1'"
nt_expect_eq "the rule's alerts on HP-M1 applied the same limit" "600 model" \
    "$(nt_sql "SELECT string_agg(DISTINCT (details->>'limit_um') || ' ' ||
                      (details->>'limit_source'), '|')
                 FROM needletrace.alerts WHERE rule = 'DEPTH_OUT_OF_RANGE'
                  AND device_serial = 'HP-M1'")"
nt_expect_eq "alerts of HP-M2 (550-552 um: within the model's 600 and the clinic's 900)" 0 \
    "$(nt_sql "SELECT count(*) FROM needletrace.alerts WHERE device_serial = 'HP-M2'")"
nt_expect_eq "cartridge_reuse (serial session pen mounts)" \
    "CART-R S-A HP-D2 2|CART-R S-B HP-D3 2" \
    "$(auditor "SELECT string_agg(concat_ws(' ', cartridge_serial, session_id, device_serial,
                       mounts), '|' ORDER BY session_id) FROM needletrace.cartridge_reuse")"
nt_expect_eq "completeness (collector received stored quarantined redeliveries raw rows now)" \
    "it-c1 6 6 0 0 6" \
    "$(auditor "SELECT string_agg(concat_ws(' ', collector_id, messages_received, messages_stored,
                       messages_quarantined, redeliveries_skipped, raw_rows_now), '|')
                  FROM needletrace.completeness")"
nt_stop_collector c1
nt_finish
