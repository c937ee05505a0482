/* sim_oracle.c -- the rule oracle: the counts and alerts a correct collector must end with,
 * computed from what the simulator sent, independently of the collector's decoder and rules.
 *
 * It restates DESIGN.md sections 1 and 3 on its own (only identifier syntax is shared, through
 * ident): a bug in the collector's rules then shows as a difference, not as agreement. */
#include <string.h>

#include "sim.h"

/* Default maximum depth per treatment area as seeded by the migration (DESIGN.md section 3),
 * in um. The simulator never uses clinic overrides; the model maximum applies on top. */
static const uint32_t sim_area_max_um[11] = {
    500,  /* AREA_UNSPECIFIED (never generated) */
    750,  /* FOREHEAD */
    500,  /* PERIORBITAL */
    750,  /* NOSE */
    1500, /* CHEEKS */
    750,  /* PERIORAL */
    1500, /* CHIN */
    1000, /* NECK */
    1000, /* DECOLLETAGE */
    1500, /* SCALP */
    2500, /* BODY */
};

/* The deepest setting allowed in an area: its default policy, within the model's maximum. */
uint32_t nt_sim__depth_limit(uint32_t area)
{
    uint32_t max = area < NT_ARRAY_SIZE(sim_area_max_um) ? sim_area_max_um[area] : 0;
    return max < SIM_MODEL_MAX_DEPTH_UM ? max : SIM_MODEL_MAX_DEPTH_UM;
}

/* DEPTH_OUT_OF_RANGE: once per (session, area, depth) found too deep. */
static void sim__expect_depth(nt_sim_t *s, nt_sim_device_t *d, uint32_t area, uint32_t depth_um)
{
    if (depth_um <= nt_sim__depth_limit(area)) {
        return;
    }
    for (uint32_t i = 0; i < d->x_deep_n; i++) {
        if (d->x_deep[i][0] == area && d->x_deep[i][1] == depth_um) {
            return;
        }
    }
    /* A session shows at most one (area, depth) per setting. */
    if (d->x_deep_n < SIM_MAX_SETTINGS) {
        d->x_deep[d->x_deep_n][0] = area;
        d->x_deep[d->x_deep_n][1] = depth_um;
        d->x_deep_n++;
    }
    s->alerts_by_rule[SIM_RULE_DEPTH_OUT_OF_RANGE]++;
}

/* The cartridge rules of an accepted mount: reused, expired, barrier broken, recalled. */
static void sim__expect_mount(nt_sim_t *s, nt_sim_device_t *d, const Needletrace__V1__Event *ev)
{
    const Needletrace__V1__Cartridge *c = ev->cartridge_mounted->cartridge;
    d->x_mounted = 1;
    if (!d->cart.reused) {
        nt_sim__pool_add(s, d); /* its first accepted mount */
    } else if (d->cart.first_device != d->global || d->cart.first_session != d->sessions) {
        s->alerts_by_rule[SIM_RULE_CARTRIDGE_REUSED]++;
    }
    if (c->expiry_yyyymmdd < nt_sim__yyyymmdd(ev->device_time_ms, 0)) {
        s->alerts_by_rule[SIM_RULE_CARTRIDGE_EXPIRED]++;
    }
    if (!c->sterile_barrier_intact) {
        s->alerts_by_rule[SIM_RULE_STERILE_BARRIER_BROKEN]++;
    }
    if (strcmp(c->gtin, s->recalled_gtin) == 0 && strcmp(c->lot, s->opt.recalled_lot) == 0) {
        s->alerts_by_rule[SIM_RULE_CARTRIDGE_RECALLED]++;
    }
}

/* Applies the event rules of DESIGN.md section 3 as the collector does (accepted events in
 * publish order, which is seq order per device). */
void nt_sim__expect_event(nt_sim_t *s, nt_sim_device_t *d, const Needletrace__V1__Event *ev)
{
    switch (ev->body_case) {
    case NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_MOUNTED:
        sim__expect_mount(s, d, ev);
        break;
    case NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_UNMOUNTED:
        d->x_mounted = 0;
        break;
    case NEEDLETRACE__V1__EVENT__BODY_NEEDLE_SETTING:
        sim__expect_depth(s, d, (uint32_t)ev->needle_setting->area, ev->needle_setting->depth_um);
        break;
    case NEEDLETRACE__V1__EVENT__BODY_NEEDLE_ACTIVITY:
        sim__expect_depth(s, d, (uint32_t)ev->needle_activity->area, ev->needle_activity->depth_um);
        if (!d->x_mounted && !d->x_nocart_raised) {
            d->x_nocart_raised = 1;
            s->alerts_by_rule[SIM_RULE_NEEDLING_WITHOUT_CARTRIDGE]++;
        }
        break;
    default:
        break;
    }
}

/* The message rules of an accepted message: SEQUENCE_GAP, then CLOCK_SKEW once per boot. */
void nt_sim__expect_message(nt_sim_t *s, nt_sim_device_t *d, uint64_t first_seq, int ahead)
{
    /* SEQUENCE_GAP: seqs this message skips over were lost or rejected, and are never
     * accepted later (publishes go in seq order per device): one gap. */
    if (first_seq > d->x_high_seq + 1) {
        s->alerts_by_rule[SIM_RULE_SEQUENCE_GAP]++;
    }
    d->x_high_seq = d->seq;
    /* CLOCK_SKEW: once per boot. */
    if (ahead && !d->x_skewed) {
        d->x_skewed = 1;
        s->alerts_by_rule[SIM_RULE_CLOCK_SKEW]++;
    }
}

/* Counts a published message where a correct collector stores it: quarantine or events. */
void nt_sim__expect_stored(nt_sim_t *s, const nt_sim_device_t *d, int malformed, int spoof,
                           uint32_t n, const uint64_t kinds[SIM_KINDS])
{
    if (malformed) {
        s->expected_not_protobuf++;
    } else if (spoof) {
        s->expected_serial_mismatch++;
    } else {
        s->expected_raw++;
        s->expected_events += n;
        s->events_by_clinic[d->clinic] += n;
        for (int k = 0; k < SIM_KINDS; k++) {
            s->events_by_kind[k] += kinds[k];
        }
    }
}

/* Total alerts a correct collector raises. */
uint64_t nt_sim__expected_alerts(const nt_sim_t *s)
{
    uint64_t total = 0;
    for (int r = 0; r < SIM_RULES; r++) {
        total += s->alerts_by_rule[r];
    }
    return total;
}
