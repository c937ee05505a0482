/* sim.h -- internal declarations shared by the files of `needletrace simulate`.
 *
 * sim_main.c runs the command; sim_options.c parses its flags; sim_fleet.c models the fleet
 * (devices, sessions, cartridges, events, deterministic randomness); sim_message.c turns a
 * device's next events into one published message with its faults; sim_oracle.c counts what
 * a correct collector must end with (independently of the collector's decoder and rules);
 * sim_mqtt.c is the threaded MQTT client with its flow control; sim_output.c writes the JSON
 * summary and the dump file. */
#ifndef NEEDLETRACE_SIM_H
#define NEEDLETRACE_SIM_H

#include <mosquitto.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>

#include "needletrace/common.h"
#include "needletrace/config.h"
#include "needletrace/decoder.h"
#include "needletrace/ident.h"
#include "needletrace/v1/telemetry.pb-c.h"

#define SIM_MODULE                 "simulate"
#define SIM_WINDOW                 1000u /* messages handed to libmosquitto and not yet done */
#define SIM_MAX_CLINICS            10000u
#define SIM_MAX_DEVICES_PER_CLINIC 10000u
#define SIM_MAX_FLEET              100000u    /* clinics x devices */
#define SIM_ACK_DEADLINE_US        60000000LL /* final wait for PUBACKs, and for any stalled window */
#define SIM_CONNECT_DEADLINE_US    15000000LL
#define SIM_KINDS                  8
#define SIM_DEVICE_MODEL           "NP-300"
#define SIM_FIRMWARE               "2.4.1"
#define SIM_PATIENTS_PER_CLINIC    500u
#define SIM_OPERATORS_PER_CLINIC   12u
#define SIM_MODEL_MAX_DEPTH_UM     2500u      /* the NP-300's mechanical maximum */
#define SIM_MAX_SETTINGS           3u         /* needle settings per session */
#define SIM_GS1_TEXT_LEN           20u        /* GS1 AI (10) lot and (21) serial */
#define SIM_REUSE_POOL             4096u      /* cartridges remembered for re-mounting */
#define SIM_SKEW_MS                3600000LL  /* a skewed clock runs 1 h ahead */
#define SIM_SKEW_BOUND_MS          300000LL   /* the collector's default clock-skew bound */
#define SIM_DEFAULT_RECALLED_LOT   "RCL-0001" /* never produced for a new cartridge */
#define SIM_RULES                  8
#define SIM_CATALOGUE_LEN          5u

/* Compliance rules in DESIGN.md section 3 order: nt_sim_t.alerts_by_rule indexes this. */
enum {
    SIM_RULE_CARTRIDGE_REUSED,
    SIM_RULE_CARTRIDGE_EXPIRED,
    SIM_RULE_STERILE_BARRIER_BROKEN,
    SIM_RULE_CARTRIDGE_RECALLED,
    SIM_RULE_DEPTH_OUT_OF_RANGE,
    SIM_RULE_NEEDLING_WITHOUT_CARTRIDGE,
    SIM_RULE_SEQUENCE_GAP,
    SIM_RULE_CLOCK_SKEW,
};

typedef struct {
    uint32_t clinics;
    uint32_t devices; /* per clinic */
    uint64_t events;  /* 0 = no limit (only with a duration) */
    double duration_s;
    uint32_t events_per_message;
    double rate;
    uint64_t seed;
    double malformed_rate;
    double duplicate_rate;
    double spoof_rate;
    const char *clinic_prefix;
    int qos;
    const char *dump_path;
    int64_t fixed_time_ms; /* 0 = wall clock */
    /* Compliance violations, each a probability (see the option table). */
    double reuse_rate;
    double expired_rate;
    double unsealed_rate;
    double recalled_rate;
    double too_deep_rate;
    double no_cartridge_rate;
    double gap_rate;
    double skew_rate;
    const char *recalled_gtin; /* NULL = the first GTIN of the catalogue */
    const char *recalled_lot;
} nt_sim_options_t;

/* A cartridge as mounted, with where it was first mounted in an accepted message. */
typedef struct {
    char gtin[16];
    char lot[SIM_GS1_TEXT_LEN + 1];
    char serial[24];
    uint32_t expiry_yyyymmdd;
    uint32_t needles;
    int sealed;
    int reused;             /* taken from the reuse pool, not fresh */
    uint32_t first_device;  /* global index of the device of its first accepted mount */
    uint32_t first_session; /* and that device's session number */
} nt_sim_cartridge_t;

/* Where a device is in its session cycle: nt_sim__next_event dispatches on it. */
typedef enum {
    SIM_IDLE = 0,
    SIM_MOUNT,
    SIM_SETTING,
    SIM_ACTIVITY,
    SIM_UNMOUNT,
    SIM_END,
    SIM_PHASES
} nt_sim_phase_t;

typedef struct {
    uint64_t rng;
    uint64_t boot_id;
    uint64_t seq;    /* last seq generated */
    int64_t last_ms; /* last device_time_ms generated */
    uint32_t clinic; /* clinic index */
    uint32_t global; /* index in the whole fleet */
    nt_sim_phase_t phase;
    uint32_t sessions; /* sessions started so far */
    uint32_t cartridges;
    uint32_t settings_left;
    uint32_t activities_left;
    uint32_t area;
    uint32_t depth_um;
    uint32_t stroke_hz;
    uint64_t session_motor_ms;
    uint64_t total_motor_ms;
    uint32_t battery_pct;
    int32_t temperature_dc;
    int no_cartridge;        /* this session mounts no cartridge (--no-cartridge-rate) */
    int64_t base_ms;         /* device time of the event being generated, before any skew */
    nt_sim_cartridge_t cart; /* the mounted cartridge */
    char serial[48];         /* NP<seed>-<clinic>-<device>: at most 34 characters */
    char session_id[NT_MAX_SESSION_ID_LEN + 1];
    /* What a correct collector knows of this device, from accepted messages only (kept by
     * sim_oracle.c). */
    uint64_t x_high_seq; /* highest accepted seq of the boot */
    int x_skewed;        /* CLOCK_SKEW already raised for the boot */
    int x_mounted;       /* the session's latest accepted mount/unmount is a mount */
    int x_nocart_raised; /* NEEDLING_WITHOUT_CARTRIDGE already raised for the session */
    uint32_t x_deep_n;   /* (area, depth) pairs of the session already found too deep */
    uint32_t x_deep[SIM_MAX_SETTINGS][2];
} nt_sim_device_t;

/* One event of the message being built, with the storage its pointers refer to. */
typedef struct {
    Needletrace__V1__Event ev;
    union {
        Needletrace__V1__SessionStarted started;
        Needletrace__V1__SessionEnded ended;
        Needletrace__V1__CartridgeMounted mounted;
        Needletrace__V1__CartridgeUnmounted unmounted;
        Needletrace__V1__NeedleSetting setting;
        Needletrace__V1__NeedleActivity activity;
        Needletrace__V1__DeviceStatus status;
        Needletrace__V1__DeviceFault fault;
    } body;
    Needletrace__V1__Cartridge cartridge;
    char session_id[NT_MAX_SESSION_ID_LEN + 1];
    char operator_id[16];
    char patient_ref[24];
    char gtin[16];
    char lot[SIM_GS1_TEXT_LEN + 1];
    char cartridge_serial[24];
} nt_sim_slot_t;

/* The MQTT client: its network thread updates the counters under lock. */
typedef struct {
    struct mosquitto *mosq;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int connack; /* -1 until the first CONNACK, then its return code */
    int connected;
    uint64_t sent; /* publishes handed to libmosquitto */
    uint64_t done; /* of which acknowledged (QoS 1) or written (QoS 0) */
    uint64_t lost; /* connection losses */
} nt_sim_mqtt_t;

/* Token bucket of the --rate limit. */
typedef struct {
    double rate;
    double burst;
    double tokens;
    int64_t last_us;
} nt_sim_bucket_t;

typedef struct {
    nt_sim_options_t opt;
    uint32_t ndevices;
    nt_sim_device_t *devices;
    char (*clinic_ids)[NT_MAX_ID_LEN + 1];
    nt_sim_slot_t *slots;
    Needletrace__V1__Event **event_ptrs;
    uint8_t *payload;
    size_t payload_cap;
    uint64_t rng;     /* scheduling and fault decisions */
    uint64_t vrng;    /* violation decisions: a separate stream, so that with every violation
                       * rate at 0 the traffic is exactly what it was without them */
    uint64_t key;     /* fleet key for cartridge serials and patient references */
    int64_t start_ms; /* device clock at start (wall clock or --fixed-time-ms) */
    char gtins[SIM_CATALOGUE_LEN][16];
    char recalled_gtin[16];
    nt_sim_cartridge_t *pool; /* cartridges mounted in accepted messages, for --reuse-rate */
    uint32_t pool_len;
    uint32_t pool_next; /* ring position of the next insertion once full */
    FILE *dump;
    /* counters */
    uint64_t messages_published;
    uint64_t duplicates_published;
    uint64_t messages_generated;
    uint64_t messages_dropped;
    uint64_t events_generated;
    uint64_t expected_raw;
    uint64_t expected_events;
    uint64_t expected_not_protobuf;
    uint64_t expected_serial_mismatch;
    uint64_t *events_by_clinic;
    uint64_t events_by_kind[SIM_KINDS];
    uint64_t alerts_by_rule[SIM_RULES];
    int warned_clock_ahead;
} nt_sim_t;

/* Set by SIGINT: stop generating, finish what is in flight. */
extern volatile sig_atomic_t nt_sim__interrupted;

/* ---- deterministic randomness (splitmix64) ---------------------------------------------- */

/* The splitmix64 finaliser: a bijection on 64-bit values. */
static inline uint64_t sim__mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Advances a splitmix64 generator and returns its next value. */
static inline uint64_t sim__next(uint64_t *state)
{
    *state += 0x9e3779b97f4a7c15ULL;
    return sim__mix64(*state);
}

/* Returns a uniform integer in [lo, hi] (hi >= lo). */
static inline uint32_t sim__range(uint64_t *state, uint32_t lo, uint32_t hi)
{
    return lo + (uint32_t)(sim__next(state) % ((uint64_t)hi - lo + 1));
}

/* Returns a uniform double in [0, 1). */
static inline double sim__uniform(uint64_t *state)
{
    return (double)(sim__next(state) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- sim_options.c ------------------------------------------------------------------------ */

/* Prints the usage text, then every configuration key (nt_config_help). */
void nt_sim__usage(FILE *out);

/* Parses simulate's own flags (what the configuration loader left in argv) into opt, with
 * the defaults for flags not given. Returns 0, or 2 (the exit code for bad usage) after
 * printing the problem, naming the option, on stderr. */
int nt_sim__parse_options(int argc, char **argv, nt_sim_options_t *opt);

/* ---- sim_fleet.c -------------------------------------------------------------------------- */

/* Allocates the fleet and the per-message scratch space and derives every device from the
 * seed. 0 or NT_ENOMEM (not logged; call nt_sim__free either way). */
int nt_sim__init(nt_sim_t *s, const nt_sim_options_t *opt);

/* Frees what nt_sim__init allocated (also after it failed half-way). */
void nt_sim__free(nt_sim_t *s);

/* Generates the device's next event into slot (seq and time are set by the caller), from
 * d->base_ms. Returns the kind index (body_case - 10). */
int nt_sim__next_event(nt_sim_t *s, nt_sim_device_t *d, nt_sim_slot_t *slot);

/* Remembers the device's cartridge, first mounted in an accepted message, for
 * --reuse-rate (no-op when the rate is 0). */
void nt_sim__pool_add(nt_sim_t *s, const nt_sim_device_t *d);

/* The UTC date, shifted by days, of a Unix time in ms, as yyyymmdd. */
uint32_t nt_sim__yyyymmdd(int64_t unix_ms, int days);

/* ---- sim_oracle.c ------------------------------------------------------------------------- */

/* The deepest setting allowed in an area: its default policy, within the model's maximum. */
uint32_t nt_sim__depth_limit(uint32_t area);

/* Applies the event rules to one event of an accepted message, in publish order, and counts
 * the alerts a correct collector raises. */
void nt_sim__expect_event(nt_sim_t *s, nt_sim_device_t *d, const Needletrace__V1__Event *ev);

/* Applies the message rules (SEQUENCE_GAP, CLOCK_SKEW) to an accepted message whose first
 * seq is first_seq; ahead is 1 when an event's clock runs past the skew bound. */
void nt_sim__expect_message(nt_sim_t *s, nt_sim_device_t *d, uint64_t first_seq, int ahead);

/* Counts a published message of n events (kinds[] per kind) where it must end up: the
 * quarantine (malformed, spoofed) or the raw messages and events. */
void nt_sim__expect_stored(nt_sim_t *s, const nt_sim_device_t *d, int malformed, int spoof,
                           uint32_t n, const uint64_t kinds[SIM_KINDS]);

/* Total alerts a correct collector raises. */
uint64_t nt_sim__expected_alerts(const nt_sim_t *s);

/* ---- sim_message.c ------------------------------------------------------------------------ */

/* Generates, encodes and publishes the next message of a randomly chosen device, with its
 * faults, and counts what a correct collector must store. Returns 0, or a negative NT_E*
 * (logged). */
int nt_sim__step(nt_sim_t *s, nt_sim_mqtt_t *m, nt_sim_bucket_t *bucket);

/* ---- sim_mqtt.c --------------------------------------------------------------------------- */

/* Initialises the client's lock and condition (CLOCK_MONOTONIC); no connection yet. */
void nt_sim__mqtt_init(nt_sim_mqtt_t *m);

/* Destroys what nt_sim__mqtt_init created (after nt_sim__mqtt_stop). */
void nt_sim__mqtt_close(nt_sim_mqtt_t *m);

/* Creates the client from the configuration (broker, credentials, TLS), connects, starts the
 * network thread and waits for the CONNACK. 0, or NT_EMQTT / NT_ENOMEM (logged); on failure
 * m->mosq is NULL. Call mosquitto_lib_init() first. */
int nt_sim__mqtt_start(nt_sim_mqtt_t *m, const nt_config_t *cfg, uint64_t seed);

/* Disconnects cleanly and stops the network thread (no-op when not started). */
void nt_sim__mqtt_stop(nt_sim_mqtt_t *m);

/* Publishes one message once fewer than SIM_WINDOW are in flight; at QoS 0 waits out a
 * disconnection. Returns 0, or NT_EMQTT (logged). */
int nt_sim__mqtt_publish(nt_sim_mqtt_t *m, const char *topic, const uint8_t *payload, size_t len,
                         int qos);

/* Publishes handed to libmosquitto and not yet done. */
uint64_t nt_sim__mqtt_pending(nt_sim_mqtt_t *m);

/* Waits until at most max_outstanding publishes are not yet done, or timeout_us passed.
 * Returns 0, or NT_EAGAIN on timeout (not logged). */
int nt_sim__mqtt_wait(nt_sim_mqtt_t *m, uint64_t max_outstanding, int64_t timeout_us);

/* Takes one token from the bucket, sleeping until one is available (no-op at rate 0). */
void nt_sim__bucket_take(nt_sim_bucket_t *b);

/* ---- sim_output.c ------------------------------------------------------------------------- */

/* Opens the --dump file, if any, into s->dump. 0 or NT_EIO (logged). */
int nt_sim__dump_open(nt_sim_t *s);

/* Appends one publish to the dump file, if any: u32 topic length, topic, u32 payload length,
 * payload (big endian). 0 or NT_EIO (logged). */
int nt_sim__dump_write(nt_sim_t *s, const char *topic, const uint8_t *payload, size_t len);

/* Closes the dump file, if any. 0, or NT_EIO when the last writes failed (logged when
 * report is 1). */
int nt_sim__dump_close(nt_sim_t *s, int report);

/* Prints the summary on stdout as one JSON object: what was published and the counts a
 * correct collector must end with. */
void nt_sim__print_json(const nt_sim_t *s, double elapsed_s);

#endif
