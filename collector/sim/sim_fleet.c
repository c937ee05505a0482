/* sim_fleet.c -- the simulated fleet: handpieces, their sessions, cartridges and events, all
 * derived from the seed. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sim.h"

/* The cartridge catalogue: GTIN without its check digit (13 digits) and needle count. */
static const struct {
    const char *gtin13;
    uint32_t needles;
} sim_catalogue[SIM_CATALOGUE_LEN] = {
    {"0761234500012", 12}, {"0761234500029", 16}, {"0761234500036", 36},
    {"0761234500043", 42}, {"0890123400017", 16},
};

/* Device faults reported now and then: code and message. */
static const struct {
    uint32_t code;
    const char *message;
} sim_faults[] = {
    {101, "motor stall detected"},
    {205, "battery temperature above limit"},
    {310, "depth sensor out of calibration"},
    {412, "cartridge contact intermittent"},
};

/* Writes the 14-digit GTIN for a 13-digit base: appends the GS1 mod-10 check digit. */
static void sim__gtin(const char *base13, char out[16])
{
    memcpy(out, base13, 13);
    out[13] = nt_ident_gtin_check_digit(base13);
    out[14] = '\0';
}

/* Breaks a Unix time in ms, shifted by days, into UTC calendar fields. */
static void sim__calendar(int64_t unix_ms, int days, struct tm *tm)
{
    time_t t = (time_t)(unix_ms / 1000) + (time_t)days * 86400;
    gmtime_r(&t, tm);
}

/* The UTC date, shifted by days, of a Unix time in ms, as yyyymmdd. */
uint32_t nt_sim__yyyymmdd(int64_t unix_ms, int days)
{
    struct tm tm;
    sim__calendar(unix_ms, days, &tm);
    return (uint32_t)(tm.tm_year + 1900) * 10000u + (uint32_t)(tm.tm_mon + 1) * 100u +
           (uint32_t)tm.tm_mday;
}

/* Allocates the arrays of the fleet and of one message. 0 or NT_ENOMEM. */
static int sim__alloc(nt_sim_t *s, const nt_sim_options_t *opt)
{
    s->devices = calloc(s->ndevices, sizeof(*s->devices));
    s->clinic_ids = calloc(opt->clinics, sizeof(*s->clinic_ids));
    s->events_by_clinic = calloc(opt->clinics, sizeof(*s->events_by_clinic));
    s->slots = calloc(opt->events_per_message, sizeof(*s->slots));
    s->event_ptrs = calloc(opt->events_per_message, sizeof(*s->event_ptrs));
    s->payload_cap = NT_MAX_PAYLOAD_BYTES + 64;
    s->payload = malloc(s->payload_cap);
    if (opt->reuse_rate > 0) {
        s->pool = calloc(SIM_REUSE_POOL, sizeof(*s->pool));
    }
    if (s->devices == NULL || s->clinic_ids == NULL || s->events_by_clinic == NULL ||
        s->slots == NULL || s->event_ptrs == NULL || s->payload == NULL ||
        (opt->reuse_rate > 0 && s->pool == NULL)) {
        return NT_ENOMEM;
    }
    for (uint32_t i = 0; i < opt->events_per_message; i++) {
        s->event_ptrs[i] = &s->slots[i].ev;
    }
    return 0;
}

/* Derives device g of the fleet: serial, boot id, its own random stream, battery. */
static void sim__init_device(nt_sim_t *s, uint64_t fleet, uint32_t g)
{
    const nt_sim_options_t *opt = &s->opt;
    nt_sim_device_t *d = &s->devices[g];
    d->global = g;
    d->clinic = g / opt->devices;
    snprintf(d->serial, sizeof(d->serial), "NP%" PRIu64 "-%" PRIu32 "-%" PRIu32, opt->seed,
             d->clinic, g % opt->devices);
    uint64_t st = sim__mix64(fleet) ^ ((uint64_t)g * 0xd1b54a32d192ed03ULL);
    d->boot_id = sim__next(&st) & NT_MAX_BOOT_ID; /* what the decoder accepts */
    if (d->boot_id == 0) {
        d->boot_id = 1;
    }
    d->rng = sim__mix64(sim__mix64(fleet) + g + 1);
    d->battery_pct = sim__range(&d->rng, 40, 100);
    d->temperature_dc = (int32_t)sim__range(&d->rng, 220, 300);
    d->phase = SIM_IDLE;
}

/* Derives the fleet from the options. 0 or NT_ENOMEM (not logged); nt_sim__free either way. */
int nt_sim__init(nt_sim_t *s, const nt_sim_options_t *opt)
{
    memset(s, 0, sizeof(*s));
    s->opt = *opt;
    s->ndevices = opt->clinics * opt->devices;
    if (sim__alloc(s, opt) != 0) {
        return NT_ENOMEM;
    }

    /* Every random choice derives from the seed and the clinic prefix, so two fleets that
     * differ only by prefix (e.g. parallel simulators) share no boot ids or cartridges. */
    uint64_t fleet = opt->seed;
    for (const char *p = opt->clinic_prefix; *p != '\0'; p++) {
        fleet = sim__mix64(fleet ^ (unsigned char)*p);
    }
    s->rng = sim__mix64(fleet ^ 0x5851f42d4c957f2dULL);
    s->key = sim__mix64(fleet + 0x2545f4914f6cdd1dULL);
    s->vrng = sim__mix64(fleet ^ 0x3c6ef372fe94f82bULL);
    s->start_ms = opt->fixed_time_ms != 0 ? opt->fixed_time_ms : nt_now_us() / 1000;
    for (size_t i = 0; i < SIM_CATALOGUE_LEN; i++) {
        sim__gtin(sim_catalogue[i].gtin13, s->gtins[i]);
    }
    snprintf(s->recalled_gtin, sizeof(s->recalled_gtin), "%s",
             opt->recalled_gtin != NULL ? opt->recalled_gtin : s->gtins[0]);
    for (uint32_t c = 0; c < opt->clinics; c++) {
        snprintf(s->clinic_ids[c], sizeof(s->clinic_ids[c]), "%s-%" PRIu64 "-%" PRIu32,
                 opt->clinic_prefix, opt->seed, c);
    }
    for (uint32_t g = 0; g < s->ndevices; g++) {
        sim__init_device(s, fleet, g);
    }
    return 0;
}

/* Frees what nt_sim__init allocated (also after it failed half-way). */
void nt_sim__free(nt_sim_t *s)
{
    free(s->devices);
    free(s->clinic_ids);
    free(s->events_by_clinic);
    free(s->slots);
    free(s->event_ptrs);
    free(s->payload);
    free(s->pool);
}

/* ---- cartridges and settings -------------------------------------------------------------- */

/* Fills slot's cartridge from the device's mounted cartridge. */
static void sim__fill_cartridge(const nt_sim_device_t *d, nt_sim_slot_t *slot)
{
    needletrace__v1__cartridge__init(&slot->cartridge);
    memcpy(slot->gtin, d->cart.gtin, sizeof(slot->gtin));
    memcpy(slot->lot, d->cart.lot, sizeof(slot->lot));
    memcpy(slot->cartridge_serial, d->cart.serial, sizeof(slot->cartridge_serial));
    slot->cartridge.gtin = slot->gtin;
    slot->cartridge.lot = slot->lot;
    slot->cartridge.serial = slot->cartridge_serial;
    slot->cartridge.expiry_yyyymmdd = d->cart.expiry_yyyymmdd;
    slot->cartridge.needle_count = d->cart.needles;
    slot->cartridge.sterile_barrier_intact = d->cart.sealed;
}

/* Picks a new cartridge for the device: product, lot, unique serial, expiry; sealed. */
static void sim__new_cartridge(const nt_sim_t *s, nt_sim_device_t *d)
{
    struct tm tm;
    nt_sim_cartridge_t *c = &d->cart;
    uint32_t product = sim__range(&d->rng, 0, SIM_CATALOGUE_LEN - 1);
    memcpy(c->gtin, s->gtins[product], sizeof(c->gtin));
    c->needles = sim_catalogue[product].needles;
    /* Made 2..30 weeks ago; lot L<yyww><n>. */
    sim__calendar(s->start_ms, -7 * (int)sim__range(&d->rng, 2, 30), &tm);
    uint32_t n = sim__range(&d->rng, 1, 3);
    snprintf(c->lot, sizeof(c->lot), "L%02d%02d%" PRIu32, tm.tm_year % 100, tm.tm_yday / 7 + 1, n);
    if (strcmp(c->lot, s->opt.recalled_lot) == 0) {
        /* Only --recalled-rate cartridges come from the recalled lot. */
        snprintf(c->lot, sizeof(c->lot), "L%02d%02d%" PRIu32, tm.tm_year % 100, tm.tm_yday / 7 + 1,
                 n + 3);
    }
    /* Expires 1..2 years from now. */
    c->expiry_yyyymmdd = nt_sim__yyyymmdd(s->start_ms, (int)sim__range(&d->rng, 366, 730));
    /* Unique per (device, cartridge) in the run: the mix is a bijection, and the input
     * differs for every device (< 2^24) and cartridge number (< 2^40). */
    uint64_t id = sim__mix64(s->key ^ (((uint64_t)d->global << 40) | d->cartridges));
    snprintf(c->serial, sizeof(c->serial), "C%016" PRIx64, id);
    d->cartridges++;
    c->sealed = 1;
    c->reused = 0;
    c->first_device = 0;
    c->first_session = 0;
}

/* Turns the device's new cartridge into one of the recalled lot. */
static void sim__recall_cartridge(const nt_sim_t *s, nt_sim_cartridge_t *c)
{
    memcpy(c->gtin, s->recalled_gtin, sizeof(c->gtin));
    snprintf(c->lot, sizeof(c->lot), "%s", s->opt.recalled_lot);
    for (size_t i = 0; i < SIM_CATALOGUE_LEN; i++) {
        if (strcmp(s->gtins[i], c->gtin) == 0) {
            c->needles = sim_catalogue[i].needles;
        }
    }
}

/* Picks the cartridge the device mounts: one already used in an earlier session
 * (--reuse-rate), else a new one, possibly expired, unsealed or from the recalled lot. */
static void sim__mount_cartridge(nt_sim_t *s, nt_sim_device_t *d)
{
    const nt_sim_options_t *o = &s->opt;
    /* Always the same draws, whatever is injected. */
    double u_reuse = sim__uniform(&s->vrng);
    double u_expired = sim__uniform(&s->vrng);
    double u_unsealed = sim__uniform(&s->vrng);
    double u_recalled = sim__uniform(&s->vrng);
    uint64_t pick = sim__next(&s->vrng);
    int days_ago = (int)sim__range(&s->vrng, 1, 400);

    /* Before the first accepted mount there is nothing to reuse: a new cartridge then. */
    if (u_reuse < o->reuse_rate && s->pool_len > 0) {
        d->cart = s->pool[pick % s->pool_len];
        d->cart.reused = 1;
        return;
    }
    sim__new_cartridge(s, d);
    nt_sim_cartridge_t *c = &d->cart;
    if (u_recalled < o->recalled_rate) {
        sim__recall_cartridge(s, c);
    }
    if (u_expired < o->expired_rate) {
        /* Relative to the unskewed device clock; the validator wants 2000-2099. */
        c->expiry_yyyymmdd = nt_sim__yyyymmdd(d->base_ms, -days_ago);
        if (c->expiry_yyyymmdd < 20000101u) {
            c->expiry_yyyymmdd = 20000101u;
        }
    }
    if (u_unsealed < o->unsealed_rate) {
        c->sealed = 0;
    }
}

/* Picks a new needle setting: area, a depth within the area's default maximum (or, at
 * --too-deep-rate, 50..1000 um beyond it), speed. */
static void sim__new_setting(nt_sim_t *s, nt_sim_device_t *d)
{
    d->area = sim__range(&d->rng, 1, 10);
    uint32_t max = nt_sim__depth_limit(d->area); /* every area's default is within the model's */
    d->depth_um = 50u * sim__range(&d->rng, 250 / 50, max / 50);
    d->stroke_hz = sim__range(&d->rng, 50, 150);

    double u_deep = sim__uniform(&s->vrng);
    uint32_t beyond = 50u * sim__range(&s->vrng, 1, 20);
    if (u_deep < s->opt.too_deep_rate) {
        uint32_t deep = nt_sim__depth_limit(d->area) + beyond;
        d->depth_um = deep < NT_MAX_DEPTH_UM ? deep : NT_MAX_DEPTH_UM;
    }
}

/* Remembers a cartridge first mounted in an accepted message, for --reuse-rate. */
void nt_sim__pool_add(nt_sim_t *s, const nt_sim_device_t *d)
{
    if (s->pool == NULL) {
        return;
    }
    nt_sim_cartridge_t *slot;
    if (s->pool_len < SIM_REUSE_POOL) {
        slot = &s->pool[s->pool_len++];
    } else {
        slot = &s->pool[s->pool_next];
        s->pool_next = (s->pool_next + 1) % SIM_REUSE_POOL;
    }
    *slot = d->cart;
    slot->first_device = d->global;
    slot->first_session = d->sessions;
}

/* ---- events, one function per phase of the session cycle -------------------------------- */

/* A background event (status now and then, a fault rarely, at any point) drawn from u, or 0
 * when u asks for the session's next event. */
static int sim__background_event(nt_sim_device_t *d, nt_sim_slot_t *slot, double u)
{
    Needletrace__V1__Event *ev = &slot->ev;
    if (u < (d->phase == SIM_IDLE ? 0.12 : 0.02)) {
        needletrace__v1__device_status__init(&slot->body.status);
        slot->body.status.battery_pct = d->battery_pct;
        slot->body.status.temperature_dc = d->temperature_dc;
        slot->body.status.motor_seconds_total = d->total_motor_ms / 1000;
        ev->body_case = NEEDLETRACE__V1__EVENT__BODY_DEVICE_STATUS;
        ev->device_status = &slot->body.status;
        return 1;
    }
    if (u < (d->phase == SIM_IDLE ? 0.125 : 0.0225)) {
        uint32_t f = sim__range(&d->rng, 0, (uint32_t)NT_ARRAY_SIZE(sim_faults) - 1);
        needletrace__v1__device_fault__init(&slot->body.fault);
        slot->body.fault.code = sim_faults[f].code;
        slot->body.fault.message = (char *)sim_faults[f].message;
        ev->body_case = NEEDLETRACE__V1__EVENT__BODY_DEVICE_FAULT;
        ev->device_fault = &slot->body.fault;
        return 1;
    }
    return 0;
}

/* SIM_IDLE: starts a session (operator, pseudonymous patient; with or without cartridge). */
static void sim__event_start(nt_sim_t *s, nt_sim_device_t *d, nt_sim_slot_t *slot)
{
    d->sessions++;
    snprintf(d->session_id, sizeof(d->session_id), "%s-s%" PRIu32, d->serial, d->sessions);
    memcpy(slot->session_id, d->session_id, sizeof(slot->session_id));
    d->session_motor_ms = 0;
    d->settings_left = sim__range(&d->rng, 1, 3);
    snprintf(slot->operator_id, sizeof(slot->operator_id), "op-%02" PRIu32,
             sim__range(&d->rng, 1, SIM_OPERATORS_PER_CLINIC));
    uint64_t patient = sim__range(&d->rng, 1, SIM_PATIENTS_PER_CLINIC);
    uint64_t ref =
        sim__mix64(s->key ^ 0x7f4a7c159e3779b9ULL ^ ((uint64_t)d->clinic << 32 | patient));
    snprintf(slot->patient_ref, sizeof(slot->patient_ref), "p-%012" PRIx64,
             (uint64_t)(ref & 0xffffffffffffULL));
    needletrace__v1__session_started__init(&slot->body.started);
    slot->body.started.session_id = slot->session_id;
    slot->body.started.operator_id = slot->operator_id;
    slot->body.started.patient_ref = slot->patient_ref;
    slot->ev.body_case = NEEDLETRACE__V1__EVENT__BODY_SESSION_STARTED;
    slot->ev.session_started = &slot->body.started;
    d->no_cartridge = sim__uniform(&s->vrng) < s->opt.no_cartridge_rate;
    d->phase = d->no_cartridge ? SIM_SETTING : SIM_MOUNT;
    /* A new session: nothing mounted, nothing raised yet. */
    d->x_mounted = 0;
    d->x_nocart_raised = 0;
    d->x_deep_n = 0;
}

/* SIM_MOUNT: mounts a cartridge. */
static void sim__event_mount(nt_sim_t *s, nt_sim_device_t *d, nt_sim_slot_t *slot)
{
    sim__mount_cartridge(s, d);
    sim__fill_cartridge(d, slot);
    needletrace__v1__cartridge_mounted__init(&slot->body.mounted);
    slot->body.mounted.session_id = slot->session_id;
    slot->body.mounted.cartridge = &slot->cartridge;
    slot->ev.body_case = NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_MOUNTED;
    slot->ev.cartridge_mounted = &slot->body.mounted;
    d->phase = SIM_SETTING;
}

/* SIM_SETTING: a new needle setting, followed by 2..8 activities. */
static void sim__event_setting(nt_sim_t *s, nt_sim_device_t *d, nt_sim_slot_t *slot)
{
    sim__new_setting(s, d);
    needletrace__v1__needle_setting__init(&slot->body.setting);
    slot->body.setting.session_id = slot->session_id;
    slot->body.setting.depth_um = d->depth_um;
    slot->body.setting.stroke_rate_hz = d->stroke_hz;
    slot->body.setting.area = (Needletrace__V1__TreatmentArea)d->area;
    slot->ev.body_case = NEEDLETRACE__V1__EVENT__BODY_NEEDLE_SETTING;
    slot->ev.needle_setting = &slot->body.setting;
    d->settings_left--;
    d->activities_left = sim__range(&d->rng, 2, 8);
    d->phase = SIM_ACTIVITY;
}

/* SIM_ACTIVITY: 1-5 s of needling at the current setting. */
static void sim__event_activity(nt_sim_t *s, nt_sim_device_t *d, nt_sim_slot_t *slot)
{
    (void)s;
    uint32_t duration = sim__range(&d->rng, 1000, 5000);
    needletrace__v1__needle_activity__init(&slot->body.activity);
    slot->body.activity.session_id = slot->session_id;
    slot->body.activity.depth_um = d->depth_um;
    slot->body.activity.stroke_rate_hz = d->stroke_hz;
    slot->body.activity.area = (Needletrace__V1__TreatmentArea)d->area;
    slot->body.activity.duration_ms = duration;
    slot->ev.body_case = NEEDLETRACE__V1__EVENT__BODY_NEEDLE_ACTIVITY;
    slot->ev.needle_activity = &slot->body.activity;
    d->session_motor_ms += duration;
    d->total_motor_ms += duration;
    if (--d->activities_left == 0) {
        d->phase = d->settings_left > 0 ? SIM_SETTING : d->no_cartridge ? SIM_END : SIM_UNMOUNT;
    }
}

/* SIM_UNMOUNT: unmounts the cartridge. */
static void sim__event_unmount(nt_sim_t *s, nt_sim_device_t *d, nt_sim_slot_t *slot)
{
    (void)s;
    sim__fill_cartridge(d, slot);
    needletrace__v1__cartridge_unmounted__init(&slot->body.unmounted);
    slot->body.unmounted.session_id = slot->session_id;
    slot->body.unmounted.cartridge = &slot->cartridge;
    slot->body.unmounted.motor_ms = (uint32_t)d->session_motor_ms;
    slot->ev.body_case = NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_UNMOUNTED;
    slot->ev.cartridge_unmounted = &slot->body.unmounted;
    d->phase = SIM_END;
}

/* SIM_END: ends the session; between sessions the battery drains and recharges, the motor
 * cools. */
static void sim__event_end(nt_sim_t *s, nt_sim_device_t *d, nt_sim_slot_t *slot)
{
    (void)s;
    needletrace__v1__session_ended__init(&slot->body.ended);
    slot->body.ended.session_id = slot->session_id;
    slot->body.ended.motor_seconds = (uint32_t)((d->session_motor_ms + 500) / 1000);
    slot->ev.body_case = NEEDLETRACE__V1__EVENT__BODY_SESSION_ENDED;
    slot->ev.session_ended = &slot->body.ended;
    d->phase = SIM_IDLE;
    d->battery_pct = d->battery_pct > 20 ? d->battery_pct - sim__range(&d->rng, 1, 4) : 100;
    d->temperature_dc = (int32_t)sim__range(&d->rng, 200, 400);
}

/* The event each phase generates (and the phase it moves the device to). */
static void (*const sim_phase_events[SIM_PHASES])(nt_sim_t *, nt_sim_device_t *,
                                                  nt_sim_slot_t *) = {
    [SIM_IDLE] = sim__event_start,      [SIM_MOUNT] = sim__event_mount,
    [SIM_SETTING] = sim__event_setting, [SIM_ACTIVITY] = sim__event_activity,
    [SIM_UNMOUNT] = sim__event_unmount, [SIM_END] = sim__event_end,
};

/* Generates the device's next event into slot: a background one, else the one its phase
 * calls for. Returns the kind index (body_case - 10). */
int nt_sim__next_event(nt_sim_t *s, nt_sim_device_t *d, nt_sim_slot_t *slot)
{
    if (sim__background_event(d, slot, sim__uniform(&d->rng))) {
        return slot->ev.body_case - 10;
    }
    memcpy(slot->session_id, d->session_id, sizeof(slot->session_id));
    sim_phase_events[d->phase](s, d, slot);
    return slot->ev.body_case - 10;
}
