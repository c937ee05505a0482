/* sim_message.c -- one simulated message: a device's next events, its faults (lost, malformed,
 * spoofed, duplicated, skewed), its encoding and its publishes. */
#include <inttypes.h>
#include <string.h>

#include "needletrace/log.h"
#include "sim.h"

/* The faults of one message, all drawn before it is generated. */
typedef struct {
    int malformed; /* published as undecodable bytes */
    int spoof;     /* the payload names another handpiece */
    int duplicate; /* published twice */
    int dropped;   /* lost by the handpiece: never published */
    int skewed;    /* device clock 1 h ahead */
    int accepted;  /* reaches the rules: not lost, decodable, from the handpiece it claims */
    uint64_t spoof_pick;
} sim_faults_t;

/* Draws the faults of the next message, always the same draws whatever the rates. */
static sim_faults_t sim__draw_faults(nt_sim_t *s)
{
    const nt_sim_options_t *o = &s->opt;
    sim_faults_t f;
    double u_malformed = sim__uniform(&s->rng);
    double u_spoof = sim__uniform(&s->rng);
    double u_duplicate = sim__uniform(&s->rng);
    f.spoof_pick = sim__next(&s->rng);
    f.malformed = u_malformed < o->malformed_rate;
    f.spoof = !f.malformed && u_spoof < o->spoof_rate;
    f.duplicate = u_duplicate < o->duplicate_rate;
    /* Violations draw from their own stream (see nt_sim_t.vrng). */
    f.dropped = sim__uniform(&s->vrng) < o->gap_rate;
    f.skewed = sim__uniform(&s->vrng) < o->skew_rate;
    f.accepted = !f.dropped && !f.malformed && !f.spoof;
    return f;
}

/* Generates the device's next n events into the slots, counting kinds[], and feeds those of
 * an accepted message to the oracle. Returns 1 when an event's clock runs past the skew bound
 * ahead of the wall clock. */
static int sim__fill_events(nt_sim_t *s, nt_sim_device_t *d, const sim_faults_t *f, uint32_t n,
                            uint64_t kinds[SIM_KINDS])
{
    const nt_sim_options_t *o = &s->opt;
    int64_t wall_ms = nt_now_us() / 1000;
    int64_t now_ms = o->fixed_time_ms != 0 ? s->start_ms + (int64_t)s->events_generated : wall_ms;
    int ahead = 0;
    for (uint32_t i = 0; i < n; i++) {
        nt_sim_slot_t *slot = &s->slots[i];
        int64_t t = o->fixed_time_ms != 0 ? now_ms + i : now_ms;
        /* Monotonic per device; a skewed message jumps ahead without moving the clock. */
        d->last_ms = t > d->last_ms ? t : d->last_ms;
        d->base_ms = d->last_ms;
        needletrace__v1__event__init(&slot->ev);
        kinds[nt_sim__next_event(s, d, slot)]++;
        slot->ev.seq = ++d->seq;
        slot->ev.device_time_ms = d->base_ms + (f->skewed ? SIM_SKEW_MS : 0);
        /* The collector receives the message at wall_ms at the earliest. */
        ahead |= slot->ev.device_time_ms - wall_ms > SIM_SKEW_BOUND_MS;
        if (f->accepted) {
            nt_sim__expect_event(s, d, &slot->ev);
        }
    }
    return ahead;
}

/* Encodes the message of n events into s->payload (with the malformed tail when asked).
 * Returns its length, or 0 when it exceeds the payload limit (logged). */
static size_t sim__encode(nt_sim_t *s, const nt_sim_device_t *d, const sim_faults_t *f, uint32_t n)
{
    Needletrace__V1__Telemetry msg = NEEDLETRACE__V1__TELEMETRY__INIT;
    char spoof_serial[NT_MAX_ID_LEN + 1];
    msg.device_serial = (char *)d->serial;
    if (f->spoof) {
        /* Another handpiece of the fleet claims to be this one (or, alone, a forged serial). */
        if (s->ndevices > 1) {
            uint32_t other =
                (uint32_t)((d->global + 1 + f->spoof_pick % (s->ndevices - 1)) % s->ndevices);
            snprintf(spoof_serial, sizeof(spoof_serial), "%s", s->devices[other].serial);
        } else {
            snprintf(spoof_serial, sizeof(spoof_serial), "%sX", d->serial);
        }
        msg.device_serial = spoof_serial;
    }
    msg.device_model = SIM_DEVICE_MODEL;
    msg.firmware_version = SIM_FIRMWARE;
    msg.boot_id = d->boot_id;
    msg.n_events = n;
    msg.events = s->event_ptrs;

    size_t len = protobuf_c_message_get_packed_size(&msg.base);
    if (len > NT_MAX_PAYLOAD_BYTES) {
        nt_log(NT_LOG_ERROR, SIM_MODULE, "encoded message of %zu bytes exceeds the %u byte limit",
               len, NT_MAX_PAYLOAD_BYTES);
        return 0;
    }
    protobuf_c_message_pack(&msg.base, s->payload);
    if (f->malformed) {
        /* Field 5 (events), length-delimited, claiming 1000 bytes where none remain: no
         * protobuf decoder can accept this. */
        s->payload[len++] = 0x2a;
        s->payload[len++] = 0xe8;
        s->payload[len++] = 0x07;
    }
    return len;
}

/* Publishes one message (waiting for the rate limit and the in-flight window) and appends it
 * to the dump file if any. Returns 0, or NT_EMQTT / NT_EIO (logged). */
static int sim__publish(nt_sim_t *s, nt_sim_mqtt_t *m, nt_sim_bucket_t *bucket, const char *topic,
                        size_t len)
{
    nt_sim__bucket_take(bucket);
    int rc = nt_sim__mqtt_publish(m, topic, s->payload, len, s->opt.qos);
    if (rc != 0) {
        return rc;
    }
    s->messages_published++;
    return nt_sim__dump_write(s, topic, s->payload, len);
}

/* Warns once that the device clock runs ahead of the wall clock by itself (not --skew-rate). */
static void sim__warn_clock_ahead(nt_sim_t *s)
{
    if (s->warned_clock_ahead) {
        return;
    }
    s->warned_clock_ahead = 1;
    nt_log(NT_LOG_WARN, SIM_MODULE,
           "device clock runs more than %lld s ahead of the wall clock: the expected "
           "CLOCK_SKEW count assumes each message is received as soon as it is published",
           SIM_SKEW_BOUND_MS / 1000);
}

/* Generates, encodes and publishes the next message of a randomly chosen device, with its
 * faults. Returns 0, or a negative NT_E* (logged). */
int nt_sim__step(nt_sim_t *s, nt_sim_mqtt_t *m, nt_sim_bucket_t *bucket)
{
    const nt_sim_options_t *o = &s->opt;
    nt_sim_device_t *d = &s->devices[sim__next(&s->rng) % s->ndevices];
    sim_faults_t f = sim__draw_faults(s);

    uint32_t n = o->events_per_message;
    if (o->events != 0 && o->events - s->events_generated < n) {
        n = (uint32_t)(o->events - s->events_generated);
    }
    uint64_t kinds[SIM_KINDS] = {0};
    int ahead = sim__fill_events(s, d, &f, n, kinds);
    if (f.accepted) {
        nt_sim__expect_message(s, d, s->slots[0].ev.seq, ahead);
    }
    if (ahead && !f.skewed) {
        sim__warn_clock_ahead(s);
    }
    if (f.dropped) {
        /* Lost by the handpiece: its seqs are used up, nothing is published. */
        s->messages_generated++;
        s->messages_dropped++;
        s->events_generated += n;
        return 0;
    }

    size_t len = sim__encode(s, d, &f, n);
    if (len == 0) {
        return NT_ETOOBIG;
    }
    char topic[NT_MAX_TOPIC_LEN];
    snprintf(topic, sizeof(topic), "clinics/%s/handpieces/%s/telemetry", s->clinic_ids[d->clinic],
             d->serial);
    s->messages_generated++;
    s->events_generated += n;
    nt_sim__expect_stored(s, d, f.malformed, f.spoof, n, kinds);

    int rc = sim__publish(s, m, bucket, topic, len);
    if (rc == 0 && f.duplicate) {
        rc = sim__publish(s, m, bucket, topic, len);
        if (rc == 0) {
            s->duplicates_published++;
        }
    }
    return rc;
}
