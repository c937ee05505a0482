/* simulate.c -- `needletrace simulate`: a seeded virtual fleet of handpieces sending telemetry. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <mosquitto.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "needletrace/cmd.h"
#include "needletrace/common.h"
#include "needletrace/config.h"
#include "needletrace/decoder.h"
#include "needletrace/log.h"
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
#define SIM_DEFAULT_RECALLED_LOT   "RCL-0001" /* never produced by sim__new_cartridge */
#define SIM_RULES                  8

/* Event kinds in proto field order: body_case - 10 indexes this table. */
static const char *const sim_kind_names[SIM_KINDS] = {
    "session_started", "session_ended",   "cartridge_mounted", "cartridge_unmounted",
    "needle_setting",  "needle_activity", "device_status",     "device_fault"};

/* Compliance rules in DESIGN.md section 3 order: sim_t.alerts_by_rule indexes this table. */
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

static const char *const sim_rule_names[SIM_RULES] = {
    "CARTRIDGE_REUSED",   "CARTRIDGE_EXPIRED",  "STERILE_BARRIER_BROKEN",
    "CARTRIDGE_RECALLED", "DEPTH_OUT_OF_RANGE", "NEEDLING_WITHOUT_CARTRIDGE",
    "SEQUENCE_GAP",       "CLOCK_SKEW"};

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

/* The cartridge catalogue: GTIN without its check digit (13 digits) and needle count. */
static const struct {
    const char *gtin13;
    uint32_t needles;
} sim_catalogue[] = {
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
    /* Compliance violations, each a probability (see sim__usage). */
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
} sim_options_t;

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
} sim_cartridge_t;

typedef enum {
    SIM_IDLE = 0,
    SIM_MOUNT,
    SIM_SETTING,
    SIM_ACTIVITY,
    SIM_UNMOUNT,
    SIM_END,
} sim_phase_t;

typedef struct {
    uint64_t rng;
    uint64_t boot_id;
    uint64_t seq;    /* last seq generated */
    int64_t last_ms; /* last device_time_ms generated */
    uint32_t clinic; /* clinic index */
    uint32_t global; /* index in the whole fleet */
    sim_phase_t phase;
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
    int no_cartridge;     /* this session mounts no cartridge (--no-cartridge-rate) */
    int64_t base_ms;      /* device time of the event being generated, before any skew */
    sim_cartridge_t cart; /* the mounted cartridge */
    char serial[48];      /* NP<seed>-<clinic>-<device>: at most 34 characters */
    char session_id[NT_MAX_SESSION_ID_LEN + 1];
    /* What a correct collector knows of this device, from accepted messages only. */
    uint64_t x_high_seq; /* highest accepted seq of the boot */
    int x_skewed;        /* CLOCK_SKEW already raised for the boot */
    int x_mounted;       /* the session's latest accepted mount/unmount is a mount */
    int x_nocart_raised; /* NEEDLING_WITHOUT_CARTRIDGE already raised for the session */
    uint32_t x_deep_n;   /* (area, depth) pairs of the session already found too deep */
    uint32_t x_deep[SIM_MAX_SETTINGS][2];
} sim_device_t;

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
} sim_slot_t;

typedef struct {
    struct mosquitto *mosq;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int connack; /* -1 until the first CONNACK, then its return code */
    int connected;
    uint64_t sent; /* publishes handed to libmosquitto */
    uint64_t done; /* of which acknowledged (QoS 1) or written (QoS 0) */
    uint64_t lost; /* connection losses */
} sim_mqtt_t;

typedef struct {
    double rate;
    double burst;
    double tokens;
    int64_t last_us;
} sim_bucket_t;

typedef struct {
    sim_options_t opt;
    uint32_t ndevices;
    sim_device_t *devices;
    char (*clinic_ids)[NT_MAX_ID_LEN + 1];
    sim_slot_t *slots;
    Needletrace__V1__Event **event_ptrs;
    uint8_t *payload;
    size_t payload_cap;
    uint64_t rng;     /* scheduling and fault decisions */
    uint64_t vrng;    /* violation decisions: a separate stream, so that with every violation
                       * rate at 0 the traffic is exactly what it was without them */
    uint64_t key;     /* fleet key for cartridge serials and patient references */
    int64_t start_ms; /* device clock at start (wall clock or --fixed-time-ms) */
    char gtins[NT_ARRAY_SIZE(sim_catalogue)][16];
    char recalled_gtin[16];
    sim_cartridge_t *pool; /* cartridges mounted in accepted messages, for --reuse-rate */
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
} sim_t;

static volatile sig_atomic_t sim_interrupted;

/* ---- deterministic randomness ----------------------------------------------------------- */

/* The splitmix64 finaliser: a bijection on 64-bit values. */
static uint64_t sim__mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Advances a splitmix64 generator and returns its next value. */
static uint64_t sim__next(uint64_t *state)
{
    *state += 0x9e3779b97f4a7c15ULL;
    return sim__mix64(*state);
}

/* Returns a uniform integer in [lo, hi] (hi >= lo). */
static uint32_t sim__range(uint64_t *state, uint32_t lo, uint32_t hi)
{
    return lo + (uint32_t)(sim__next(state) % ((uint64_t)hi - lo + 1));
}

/* Returns a uniform double in [0, 1). */
static double sim__uniform(uint64_t *state)
{
    return (double)(sim__next(state) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- option parsing ----------------------------------------------------------------------- */

/* Prints the usage text, then every configuration key (nt_config_help). */
static void sim__usage(FILE *out)
{
    fputs("usage: needletrace simulate [options] [configuration flags]\n"
          "\n"
          "Publishes telemetry from a virtual fleet of microneedling handpieces, deterministic\n"
          "by seed, and prints on stdout, as one JSON object, the counts a correct collector\n"
          "must end with in PostgreSQL.\n"
          "\n"
          "options:\n"
          "  --clinics N              clinics in the fleet (default 3)\n"
          "  --devices N              handpieces per clinic (default 10)\n"
          "  --events N               total events to generate (default 10000, or no limit\n"
          "                           when only --duration is given)\n"
          "  --duration SECONDS       stop generating after this long; with --events,\n"
          "                           whichever comes first ends the run\n"
          "  --events-per-message N   events per message, 1..1000 (default 10)\n"
          "  --rate N                 messages per second across the fleet, duplicates\n"
          "                           included; 0 = as fast as possible (default 0)\n"
          "  --seed N                 seed of every random choice (default 1)\n"
          "  --malformed-rate F       share of messages published as undecodable bytes (0..1)\n"
          "  --spoof-rate F           share of messages whose payload serial differs from\n"
          "                           the topic serial (0..1)\n"
          "  --duplicate-rate F       share of messages published twice (0..1)\n"
          "  --clinic-prefix S        clinic ids are S-<seed>-<i> (default \"clinic\")\n"
          "  --qos 0|1                MQTT QoS of the publishes (default 1)\n"
          "  --fixed-time-ms MS       device clock starts at MS (Unix ms) and advances 1 ms\n"
          "                           per event, instead of the wall clock (for tests)\n"
          "  --dump FILE              also write every publish to FILE as u32 topic length,\n"
          "                           topic, u32 payload length, payload (big endian)\n"
          "  -h, --help               show this help\n"
          "\n"
          "compliance violations, each a probability from 0 to 1 (default 0); the summary's\n"
          "\"expected\".\"alerts_by_rule\" gives the alerts a correct collector raises,\n"
          "including the gaps left by lost, malformed and spoofed messages and the needling\n"
          "without a cartridge when such a message held the mount:\n"
          "  --reuse-rate F           per mount: re-mount a cartridge already mounted in an\n"
          "                           earlier session (of any handpiece) instead of a new one\n"
          "  --expired-rate F         per new cartridge: expired 1..400 days ago\n"
          "  --unsealed-rate F        per new cartridge: sterile barrier broken\n"
          "  --recalled-rate F        per new cartridge: from the recalled lot\n"
          "  --too-deep-rate F        per needle setting: deeper than the treatment area allows\n"
          "  --no-cartridge-rate F    per session: needling with no cartridge mounted\n"
          "  --gap-rate F             per message: lost by the handpiece (its seqs are skipped)\n"
          "  --skew-rate F            per message: device clock 1 hour ahead for its events\n"
          "                           (not with --fixed-time-ms)\n"
          "  --recalled-gtin G        GTIN of the recalled lot (default 07612345000121)\n"
          "  --recalled-lot L         recalled lot number, 1..20 printable characters\n"
          "                           (default \"RCL-0001\"); insert (G, L) into\n"
          "                           needletrace.recalled_lots before publishing\n"
          "\n"
          "configuration flags (broker address, TLS, credentials; also NEEDLETRACE_* env):\n",
          out);
    nt_config_help(out);
}

/* Reports a bad option value on stderr; returns 2 (the exit code for bad usage). */
static int sim__bad_value(const char *value, const char *flag, const char *expected)
{
    fprintf(stderr, "needletrace simulate: invalid value \"%s\" for %s: expected %s\n", value, flag,
            expected);
    return 2;
}

/* Parses a decimal unsigned integer in [lo, hi]. 0 or NT_EINVAL. */
static int sim__parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    if (s[0] < '0' || s[0] > '9') {
        return NT_EINVAL;
    }
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi) {
        return NT_EINVAL;
    }
    *out = (uint64_t)v;
    return 0;
}

/* Parses a finite decimal number in [lo, hi]. 0 or NT_EINVAL. */
static int sim__parse_double(const char *s, double lo, double hi, double *out)
{
    if (s[0] == '\0' || s[0] == ' ' || s[0] == '\t') {
        return NT_EINVAL;
    }
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    /* NaN fails both comparisons; infinities fail the bounds. */
    if (errno != 0 || *end != '\0' || !(v >= lo && v <= hi)) {
        return NT_EINVAL;
    }
    *out = v;
    return 0;
}

/* 1 when s is non-empty and only [A-Za-z0-9._-]. */
static int sim__id_chars(const char *s)
{
    if (*s == '\0') {
        return 0;
    }
    for (; *s != '\0'; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-')) {
            return 0;
        }
    }
    return 1;
}

/* The GS1 mod-10 check digit of 13 digits. */
static char sim__gtin_check_digit(const char *base13)
{
    unsigned sum = 0;
    for (int i = 0; i < 13; i++) {
        unsigned digit = (unsigned)(base13[12 - i] - '0');
        sum += digit * ((i % 2 == 0) ? 3u : 1u);
    }
    return (char)('0' + (10 - sum % 10) % 10);
}

/* 1 when s is 14 digits whose last is the GS1 check digit of the first 13 (what the
 * validator accepts as a GTIN). */
static int sim__gtin_valid(const char *s)
{
    for (int i = 0; i < 14; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
    }
    return s[14] == '\0' && s[13] == sim__gtin_check_digit(s);
}

/* 1 when s is what the validator accepts as a GS1 lot: 1-20 characters 0x21-0x7e. */
static int sim__gs1_text_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > SIM_GS1_TEXT_LEN) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e) {
            return 0;
        }
    }
    return 1;
}

enum {
    SIM_OPT_CLINICS = 256,
    SIM_OPT_DEVICES,
    SIM_OPT_EVENTS,
    SIM_OPT_DURATION,
    SIM_OPT_EPM,
    SIM_OPT_RATE,
    SIM_OPT_SEED,
    SIM_OPT_MALFORMED,
    SIM_OPT_DUPLICATE,
    SIM_OPT_SPOOF,
    SIM_OPT_PREFIX,
    SIM_OPT_QOS,
    SIM_OPT_FIXED_TIME,
    SIM_OPT_DUMP,
    SIM_OPT_REUSE,
    SIM_OPT_EXPIRED,
    SIM_OPT_UNSEALED,
    SIM_OPT_RECALLED,
    SIM_OPT_TOO_DEEP,
    SIM_OPT_NO_CARTRIDGE,
    SIM_OPT_GAP,
    SIM_OPT_SKEW,
    SIM_OPT_RECALLED_GTIN,
    SIM_OPT_RECALLED_LOT,
};

static const struct option sim_long_options[] = {
    {"clinics", required_argument, NULL, SIM_OPT_CLINICS},
    {"devices", required_argument, NULL, SIM_OPT_DEVICES},
    {"events", required_argument, NULL, SIM_OPT_EVENTS},
    {"duration", required_argument, NULL, SIM_OPT_DURATION},
    {"events-per-message", required_argument, NULL, SIM_OPT_EPM},
    {"rate", required_argument, NULL, SIM_OPT_RATE},
    {"seed", required_argument, NULL, SIM_OPT_SEED},
    {"malformed-rate", required_argument, NULL, SIM_OPT_MALFORMED},
    {"duplicate-rate", required_argument, NULL, SIM_OPT_DUPLICATE},
    {"spoof-rate", required_argument, NULL, SIM_OPT_SPOOF},
    {"clinic-prefix", required_argument, NULL, SIM_OPT_PREFIX},
    {"qos", required_argument, NULL, SIM_OPT_QOS},
    {"fixed-time-ms", required_argument, NULL, SIM_OPT_FIXED_TIME},
    {"dump", required_argument, NULL, SIM_OPT_DUMP},
    {"reuse-rate", required_argument, NULL, SIM_OPT_REUSE},
    {"expired-rate", required_argument, NULL, SIM_OPT_EXPIRED},
    {"unsealed-rate", required_argument, NULL, SIM_OPT_UNSEALED},
    {"recalled-rate", required_argument, NULL, SIM_OPT_RECALLED},
    {"too-deep-rate", required_argument, NULL, SIM_OPT_TOO_DEEP},
    {"no-cartridge-rate", required_argument, NULL, SIM_OPT_NO_CARTRIDGE},
    {"gap-rate", required_argument, NULL, SIM_OPT_GAP},
    {"skew-rate", required_argument, NULL, SIM_OPT_SKEW},
    {"recalled-gtin", required_argument, NULL, SIM_OPT_RECALLED_GTIN},
    {"recalled-lot", required_argument, NULL, SIM_OPT_RECALLED_LOT},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* Parses simulate's own flags (what nt_config_load left in argv) into opt. Returns 0, or 2
 * after printing the problem on stderr. */
static int sim__parse_options(int argc, char **argv, sim_options_t *opt)
{
    int events_set = 0;
    uint64_t u;
    double d;

    *opt = (sim_options_t){
        .clinics = 3,
        .devices = 10,
        .events = 10000,
        .events_per_message = 10,
        .seed = 1,
        .clinic_prefix = "clinic",
        .qos = 1,
        .recalled_lot = SIM_DEFAULT_RECALLED_LOT,
    };

    opterr = 0;
    optind = 0; /* glibc: full re-initialisation, scanning from argv[1] */
    for (;;) {
        int idx = -1;
        int c = getopt_long(argc, argv, ":h", sim_long_options, &idx);
        if (c == -1) {
            break;
        }
        char flag[64];
        if (idx >= 0) {
            snprintf(flag, sizeof(flag), "--%s", sim_long_options[idx].name);
        } else if (optopt > 0 && optopt < 256) {
            snprintf(flag, sizeof(flag), "-%c", optopt);
        } else {
            snprintf(flag, sizeof(flag), "%s", argv[optind - 1]);
        }
        switch (c) {
        case SIM_OPT_CLINICS:
            if (sim__parse_u64(optarg, 1, SIM_MAX_CLINICS, &u) != 0) {
                return sim__bad_value(optarg, flag, "an integer from 1 to 10000");
            }
            opt->clinics = (uint32_t)u;
            break;
        case SIM_OPT_DEVICES:
            if (sim__parse_u64(optarg, 1, SIM_MAX_DEVICES_PER_CLINIC, &u) != 0) {
                return sim__bad_value(optarg, flag, "an integer from 1 to 10000");
            }
            opt->devices = (uint32_t)u;
            break;
        case SIM_OPT_EVENTS:
            if (sim__parse_u64(optarg, 1, UINT64_C(1000000000000), &u) != 0) {
                return sim__bad_value(optarg, flag, "an integer from 1 to 1000000000000");
            }
            opt->events = u;
            events_set = 1;
            break;
        case SIM_OPT_DURATION:
            if (sim__parse_double(optarg, 0.001, 1e7, &d) != 0) {
                return sim__bad_value(optarg, flag, "a number of seconds from 0.001 to 10000000");
            }
            opt->duration_s = d;
            break;
        case SIM_OPT_EPM:
            if (sim__parse_u64(optarg, 1, NT_MAX_EVENTS, &u) != 0) {
                return sim__bad_value(optarg, flag, "an integer from 1 to 1000");
            }
            opt->events_per_message = (uint32_t)u;
            break;
        case SIM_OPT_RATE:
            if (sim__parse_double(optarg, 0, 1e7, &d) != 0) {
                return sim__bad_value(optarg, flag,
                                      "a number of messages per second from 0 to 10000000");
            }
            opt->rate = d;
            break;
        case SIM_OPT_SEED:
            if (sim__parse_u64(optarg, 0, UINT64_MAX, &u) != 0) {
                return sim__bad_value(optarg, flag, "an unsigned 64-bit integer");
            }
            opt->seed = u;
            break;
        case SIM_OPT_MALFORMED:
        case SIM_OPT_DUPLICATE:
        case SIM_OPT_SPOOF:
            if (sim__parse_double(optarg, 0, 1, &d) != 0) {
                return sim__bad_value(optarg, flag, "a fraction from 0 to 1");
            }
            if (c == SIM_OPT_MALFORMED) {
                opt->malformed_rate = d;
            } else if (c == SIM_OPT_DUPLICATE) {
                opt->duplicate_rate = d;
            } else {
                opt->spoof_rate = d;
            }
            break;
        case SIM_OPT_REUSE:
        case SIM_OPT_EXPIRED:
        case SIM_OPT_UNSEALED:
        case SIM_OPT_RECALLED:
        case SIM_OPT_TOO_DEEP:
        case SIM_OPT_NO_CARTRIDGE:
        case SIM_OPT_GAP:
        case SIM_OPT_SKEW: {
            double *const rates[] = {
                &opt->reuse_rate,    &opt->expired_rate,  &opt->unsealed_rate,
                &opt->recalled_rate, &opt->too_deep_rate, &opt->no_cartridge_rate,
                &opt->gap_rate,      &opt->skew_rate,
            };
            if (sim__parse_double(optarg, 0, 1, &d) != 0) {
                return sim__bad_value(optarg, flag, "a fraction from 0 to 1");
            }
            *rates[c - SIM_OPT_REUSE] = d;
            break;
        }
        case SIM_OPT_RECALLED_GTIN:
            if (!sim__gtin_valid(optarg)) {
                return sim__bad_value(optarg, flag, "a GTIN of 14 digits with a valid check digit");
            }
            opt->recalled_gtin = optarg;
            break;
        case SIM_OPT_RECALLED_LOT:
            if (!sim__gs1_text_valid(optarg)) {
                return sim__bad_value(optarg, flag,
                                      "1 to 20 printable ASCII characters other than space");
            }
            opt->recalled_lot = optarg;
            break;
        case SIM_OPT_PREFIX:
            if (!sim__id_chars(optarg)) {
                return sim__bad_value(optarg, flag, "1 or more characters of [A-Za-z0-9._-]");
            }
            opt->clinic_prefix = optarg;
            break;
        case SIM_OPT_QOS:
            if (sim__parse_u64(optarg, 0, 1, &u) != 0) {
                return sim__bad_value(optarg, flag, "0 or 1");
            }
            opt->qos = (int)u;
            break;
        case SIM_OPT_FIXED_TIME:
            /* The device clock must stay inside what the validator accepts. */
            if (sim__parse_u64(optarg, (uint64_t)NT_MIN_DEVICE_TIME_MS,
                               (uint64_t)NT_MAX_DEVICE_TIME_MS - UINT64_C(1000000000000),
                               &u) != 0) {
                return sim__bad_value(optarg, flag,
                                      "Unix milliseconds from 946684800000 to 3102444800000");
            }
            opt->fixed_time_ms = (int64_t)u;
            break;
        case SIM_OPT_DUMP:
            if (optarg[0] == '\0') {
                return sim__bad_value(optarg, flag, "a file name");
            }
            opt->dump_path = optarg;
            break;
        case ':':
            fprintf(stderr, "needletrace simulate: option \"%s\" requires a value\n", flag);
            return 2;
        default:
            fprintf(stderr,
                    "needletrace simulate: unrecognized option \"%s\"\n"
                    "Try \"needletrace simulate --help\" for more information.\n",
                    flag);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "needletrace simulate: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    if ((uint64_t)opt->clinics * opt->devices > SIM_MAX_FLEET) {
        fprintf(stderr,
                "needletrace simulate: fleet of %" PRIu32 " clinics with %" PRIu32
                " devices each is too large: at most %u devices in total\n",
                opt->clinics, opt->devices, SIM_MAX_FLEET);
        return 2;
    }
    char longest[160];
    int n = snprintf(longest, sizeof(longest), "%s-%" PRIu64 "-%" PRIu32, opt->clinic_prefix,
                     opt->seed, opt->clinics - 1);
    if (n < 0 || (size_t)n > NT_MAX_ID_LEN) {
        return sim__bad_value(opt->clinic_prefix, "--clinic-prefix",
                              "a prefix short enough for clinic ids of at most 64 characters");
    }
    if (opt->duration_s > 0 && !events_set) {
        opt->events = 0;
    }
    if (opt->skew_rate > 0 && opt->fixed_time_ms != 0) {
        fprintf(stderr, "needletrace simulate: --skew-rate cannot be used with --fixed-time-ms\n"
                        "Clock skew is measured against the collector's receive time, which a "
                        "fixed device clock does not follow.\n");
        return 2;
    }
    return 0;
}

/* ---- fleet and event generation --------------------------------------------------------- */

/* Writes the 14-digit GTIN for a 13-digit base: appends the GS1 mod-10 check digit. */
static void sim__gtin(const char *base13, char out[16])
{
    memcpy(out, base13, 13);
    out[13] = sim__gtin_check_digit(base13);
    out[14] = '\0';
}

/* Breaks a Unix time in ms, shifted by days, into UTC calendar fields. */
static void sim__calendar(int64_t unix_ms, int days, struct tm *tm)
{
    time_t t = (time_t)(unix_ms / 1000) + (time_t)days * 86400;
    gmtime_r(&t, tm);
}

/* Allocates the fleet and the per-message scratch space. 0 or NT_ENOMEM. */
static int sim__init(sim_t *s, const sim_options_t *opt)
{
    memset(s, 0, sizeof(*s));
    s->opt = *opt;
    s->ndevices = opt->clinics * opt->devices;
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
    for (size_t i = 0; i < NT_ARRAY_SIZE(sim_catalogue); i++) {
        sim__gtin(sim_catalogue[i].gtin13, s->gtins[i]);
    }
    snprintf(s->recalled_gtin, sizeof(s->recalled_gtin), "%s",
             opt->recalled_gtin != NULL ? opt->recalled_gtin : s->gtins[0]);
    for (uint32_t c = 0; c < opt->clinics; c++) {
        snprintf(s->clinic_ids[c], sizeof(s->clinic_ids[c]), "%s-%" PRIu64 "-%" PRIu32,
                 opt->clinic_prefix, opt->seed, c);
    }
    for (uint32_t g = 0; g < s->ndevices; g++) {
        sim_device_t *d = &s->devices[g];
        d->global = g;
        d->clinic = g / opt->devices;
        snprintf(d->serial, sizeof(d->serial), "NP%" PRIu64 "-%" PRIu32 "-%" PRIu32, opt->seed,
                 d->clinic, g % opt->devices);
        uint64_t st = sim__mix64(fleet) ^ ((uint64_t)g * 0xd1b54a32d192ed03ULL);
        d->boot_id = sim__next(&st) & (uint64_t)INT64_MAX;
        if (d->boot_id == 0) {
            d->boot_id = 1;
        }
        d->rng = sim__mix64(sim__mix64(fleet) + g + 1);
        d->battery_pct = sim__range(&d->rng, 40, 100);
        d->temperature_dc = (int32_t)sim__range(&d->rng, 220, 300);
        d->phase = SIM_IDLE;
    }
    for (uint32_t i = 0; i < opt->events_per_message; i++) {
        s->event_ptrs[i] = &s->slots[i].ev;
    }
    return 0;
}

/* Frees what sim__init allocated (also after it failed half-way). */
static void sim__free(sim_t *s)
{
    free(s->devices);
    free(s->clinic_ids);
    free(s->events_by_clinic);
    free(s->slots);
    free(s->event_ptrs);
    free(s->payload);
    free(s->pool);
}

/* The UTC date, shifted by days, of a Unix time in ms, as yyyymmdd. */
static uint32_t sim__yyyymmdd(int64_t unix_ms, int days)
{
    struct tm tm;
    sim__calendar(unix_ms, days, &tm);
    return (uint32_t)(tm.tm_year + 1900) * 10000u + (uint32_t)(tm.tm_mon + 1) * 100u +
           (uint32_t)tm.tm_mday;
}

/* The deepest setting allowed in an area: its default policy, within the model's maximum. */
static uint32_t sim__depth_limit(uint32_t area)
{
    uint32_t max = area < NT_ARRAY_SIZE(sim_area_max_um) ? sim_area_max_um[area] : 0;
    return max < SIM_MODEL_MAX_DEPTH_UM ? max : SIM_MODEL_MAX_DEPTH_UM;
}

/* Fills slot's cartridge from the device's mounted cartridge. */
static void sim__fill_cartridge(const sim_device_t *d, sim_slot_t *slot)
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
static void sim__new_cartridge(const sim_t *s, sim_device_t *d)
{
    struct tm tm;
    sim_cartridge_t *c = &d->cart;
    uint32_t product = sim__range(&d->rng, 0, (uint32_t)NT_ARRAY_SIZE(sim_catalogue) - 1);
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
    c->expiry_yyyymmdd = sim__yyyymmdd(s->start_ms, (int)sim__range(&d->rng, 366, 730));
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

/* Picks the cartridge the device mounts: one already used in an earlier session
 * (--reuse-rate), else a new one, possibly expired, unsealed or from the recalled lot. */
static void sim__mount_cartridge(sim_t *s, sim_device_t *d)
{
    const sim_options_t *o = &s->opt;
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
    sim_cartridge_t *c = &d->cart;
    if (u_recalled < o->recalled_rate) {
        memcpy(c->gtin, s->recalled_gtin, sizeof(c->gtin));
        snprintf(c->lot, sizeof(c->lot), "%s", o->recalled_lot);
        for (size_t i = 0; i < NT_ARRAY_SIZE(sim_catalogue); i++) {
            if (strcmp(s->gtins[i], c->gtin) == 0) {
                c->needles = sim_catalogue[i].needles;
            }
        }
    }
    if (u_expired < o->expired_rate) {
        /* Relative to the unskewed device clock; the validator wants 2000-2099. */
        c->expiry_yyyymmdd = sim__yyyymmdd(d->base_ms, -days_ago);
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
static void sim__new_setting(sim_t *s, sim_device_t *d)
{
    d->area = sim__range(&d->rng, 1, 10);
    uint32_t max = sim_area_max_um[d->area];
    d->depth_um = 50u * sim__range(&d->rng, 250 / 50, max / 50);
    d->stroke_hz = sim__range(&d->rng, 50, 150);

    double u_deep = sim__uniform(&s->vrng);
    uint32_t beyond = 50u * sim__range(&s->vrng, 1, 20);
    if (u_deep < s->opt.too_deep_rate) {
        uint32_t deep = sim__depth_limit(d->area) + beyond;
        d->depth_um = deep < NT_MAX_DEPTH_UM ? deep : NT_MAX_DEPTH_UM;
    }
}

/* Remembers a cartridge first mounted in an accepted message, for --reuse-rate. */
static void sim__pool_add(sim_t *s, const sim_device_t *d)
{
    if (s->pool == NULL) {
        return;
    }
    sim_cartridge_t *slot;
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

/* DEPTH_OUT_OF_RANGE: once per (session, area, depth) found too deep. */
static void sim__expect_depth(sim_t *s, sim_device_t *d, uint32_t area, uint32_t depth_um)
{
    if (depth_um <= sim__depth_limit(area)) {
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

/* Applies the event rules of DESIGN.md section 3 to one event of an accepted message, as
 * the collector does (accepted events in publish order, which is seq order per device),
 * and counts the alerts raised. The message rules (gap, skew) are in sim__step. */
static void sim__expect_event(sim_t *s, sim_device_t *d, const Needletrace__V1__Event *ev)
{
    switch (ev->body_case) {
    case NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_MOUNTED: {
        const Needletrace__V1__Cartridge *c = ev->cartridge_mounted->cartridge;
        d->x_mounted = 1;
        if (!d->cart.reused) {
            sim__pool_add(s, d); /* its first accepted mount */
        } else if (d->cart.first_device != d->global || d->cart.first_session != d->sessions) {
            s->alerts_by_rule[SIM_RULE_CARTRIDGE_REUSED]++;
        }
        if (c->expiry_yyyymmdd < sim__yyyymmdd(ev->device_time_ms, 0)) {
            s->alerts_by_rule[SIM_RULE_CARTRIDGE_EXPIRED]++;
        }
        if (!c->sterile_barrier_intact) {
            s->alerts_by_rule[SIM_RULE_STERILE_BARRIER_BROKEN]++;
        }
        if (strcmp(c->gtin, s->recalled_gtin) == 0 && strcmp(c->lot, s->opt.recalled_lot) == 0) {
            s->alerts_by_rule[SIM_RULE_CARTRIDGE_RECALLED]++;
        }
        break;
    }
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

/* Generates the device's next event into slot (seq and time are set by the caller).
 * Returns the kind index (body_case - 10). */
static int sim__next_event(sim_t *s, sim_device_t *d, sim_slot_t *slot)
{
    Needletrace__V1__Event *ev = &slot->ev;
    double u = sim__uniform(&d->rng);

    /* Background events: status now and then, faults rarely, at any point. */
    if (u < (d->phase == SIM_IDLE ? 0.12 : 0.02)) {
        needletrace__v1__device_status__init(&slot->body.status);
        slot->body.status.battery_pct = d->battery_pct;
        slot->body.status.temperature_dc = d->temperature_dc;
        slot->body.status.motor_seconds_total = d->total_motor_ms / 1000;
        ev->body_case = NEEDLETRACE__V1__EVENT__BODY_DEVICE_STATUS;
        ev->device_status = &slot->body.status;
        return ev->body_case - 10;
    }
    if (u < (d->phase == SIM_IDLE ? 0.125 : 0.0225)) {
        uint32_t f = sim__range(&d->rng, 0, (uint32_t)NT_ARRAY_SIZE(sim_faults) - 1);
        needletrace__v1__device_fault__init(&slot->body.fault);
        slot->body.fault.code = sim_faults[f].code;
        slot->body.fault.message = (char *)sim_faults[f].message;
        ev->body_case = NEEDLETRACE__V1__EVENT__BODY_DEVICE_FAULT;
        ev->device_fault = &slot->body.fault;
        return ev->body_case - 10;
    }

    memcpy(slot->session_id, d->session_id, sizeof(slot->session_id));
    switch (d->phase) {
    case SIM_IDLE: {
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
        ev->body_case = NEEDLETRACE__V1__EVENT__BODY_SESSION_STARTED;
        ev->session_started = &slot->body.started;
        d->no_cartridge = sim__uniform(&s->vrng) < s->opt.no_cartridge_rate;
        d->phase = d->no_cartridge ? SIM_SETTING : SIM_MOUNT;
        /* A new session: nothing mounted, nothing raised yet. */
        d->x_mounted = 0;
        d->x_nocart_raised = 0;
        d->x_deep_n = 0;
        break;
    }
    case SIM_MOUNT:
        sim__mount_cartridge(s, d);
        sim__fill_cartridge(d, slot);
        needletrace__v1__cartridge_mounted__init(&slot->body.mounted);
        slot->body.mounted.session_id = slot->session_id;
        slot->body.mounted.cartridge = &slot->cartridge;
        ev->body_case = NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_MOUNTED;
        ev->cartridge_mounted = &slot->body.mounted;
        d->phase = SIM_SETTING;
        break;
    case SIM_SETTING:
        sim__new_setting(s, d);
        needletrace__v1__needle_setting__init(&slot->body.setting);
        slot->body.setting.session_id = slot->session_id;
        slot->body.setting.depth_um = d->depth_um;
        slot->body.setting.stroke_rate_hz = d->stroke_hz;
        slot->body.setting.area = (Needletrace__V1__TreatmentArea)d->area;
        ev->body_case = NEEDLETRACE__V1__EVENT__BODY_NEEDLE_SETTING;
        ev->needle_setting = &slot->body.setting;
        d->settings_left--;
        d->activities_left = sim__range(&d->rng, 2, 8);
        d->phase = SIM_ACTIVITY;
        break;
    case SIM_ACTIVITY: {
        uint32_t duration = sim__range(&d->rng, 1000, 5000);
        needletrace__v1__needle_activity__init(&slot->body.activity);
        slot->body.activity.session_id = slot->session_id;
        slot->body.activity.depth_um = d->depth_um;
        slot->body.activity.stroke_rate_hz = d->stroke_hz;
        slot->body.activity.area = (Needletrace__V1__TreatmentArea)d->area;
        slot->body.activity.duration_ms = duration;
        ev->body_case = NEEDLETRACE__V1__EVENT__BODY_NEEDLE_ACTIVITY;
        ev->needle_activity = &slot->body.activity;
        d->session_motor_ms += duration;
        d->total_motor_ms += duration;
        if (--d->activities_left == 0) {
            d->phase = d->settings_left > 0 ? SIM_SETTING : d->no_cartridge ? SIM_END : SIM_UNMOUNT;
        }
        break;
    }
    case SIM_UNMOUNT:
        sim__fill_cartridge(d, slot);
        needletrace__v1__cartridge_unmounted__init(&slot->body.unmounted);
        slot->body.unmounted.session_id = slot->session_id;
        slot->body.unmounted.cartridge = &slot->cartridge;
        slot->body.unmounted.motor_ms = (uint32_t)d->session_motor_ms;
        ev->body_case = NEEDLETRACE__V1__EVENT__BODY_CARTRIDGE_UNMOUNTED;
        ev->cartridge_unmounted = &slot->body.unmounted;
        d->phase = SIM_END;
        break;
    case SIM_END:
        needletrace__v1__session_ended__init(&slot->body.ended);
        slot->body.ended.session_id = slot->session_id;
        slot->body.ended.motor_seconds = (uint32_t)((d->session_motor_ms + 500) / 1000);
        ev->body_case = NEEDLETRACE__V1__EVENT__BODY_SESSION_ENDED;
        ev->session_ended = &slot->body.ended;
        d->phase = SIM_IDLE;
        /* Between sessions: the battery drains and recharges, the motor cools. */
        d->battery_pct = d->battery_pct > 20 ? d->battery_pct - sim__range(&d->rng, 1, 4) : 100;
        d->temperature_dc = (int32_t)sim__range(&d->rng, 200, 400);
        break;
    }
    return ev->body_case - 10;
}

/* ---- MQTT ----------------------------------------------------------------------------------- */

/* A lower-case description of a libmosquitto return code (errno's for MOSQ_ERR_ERRNO). */
static const char *sim__mosq_error(int rc)
{
    switch (rc) {
    case MOSQ_ERR_ERRNO:
        return strerror(errno);
    case MOSQ_ERR_EAI:
        return "could not resolve host name";
    case MOSQ_ERR_NOMEM:
        return "out of memory";
    case MOSQ_ERR_PROTOCOL:
        return "protocol error";
    case MOSQ_ERR_INVAL:
        return "invalid argument";
    case MOSQ_ERR_NO_CONN:
        return "not connected";
    case MOSQ_ERR_CONN_LOST:
        return "connection lost";
    case MOSQ_ERR_TLS:
        return "TLS error";
    case MOSQ_ERR_PAYLOAD_SIZE:
        return "payload too large";
    case MOSQ_ERR_KEEPALIVE:
        return "keepalive timeout";
    case MOSQ_ERR_CONN_REFUSED:
        return "connection refused by the broker";
    default:
        return mosquitto_strerror(rc);
    }
}

/* A lower-case description of an MQTT 3.1.1 CONNACK return code. */
static const char *sim__connack_error(int rc)
{
    switch (rc) {
    case 1:
        return "unacceptable protocol version";
    case 2:
        return "client identifier rejected";
    case 3:
        return "server unavailable";
    case 4:
        return "bad user name or password";
    case 5:
        return "not authorized";
    default:
        return mosquitto_connack_string(rc);
    }
}

/* Network thread: records the CONNACK result and wakes the main thread. */
static void sim__on_connect(struct mosquitto *mosq, void *data, int rc)
{
    sim_mqtt_t *m = data;
    pthread_mutex_lock(&m->lock);
    int first = m->connack < 0;
    m->connack = rc;
    m->connected = rc == 0;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    if (rc != 0) {
        nt_log(NT_LOG_ERROR, SIM_MODULE, "broker refused the connection: %s",
               sim__connack_error(rc));
    } else if (!first) {
        nt_log(NT_LOG_INFO, SIM_MODULE, "reconnected to broker");
    }
}

/* Network thread: notes a lost connection (libmosquitto reconnects by itself). */
static void sim__on_disconnect(struct mosquitto *mosq, void *data, int rc)
{
    sim_mqtt_t *m = data;
    pthread_mutex_lock(&m->lock);
    int was_connected = m->connected;
    m->connected = 0;
    if (rc != 0 && was_connected) {
        m->lost++;
    }
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    /* A refused CONNACK was already reported; failed reconnects are not news. */
    if (rc != 0 && was_connected) {
        nt_log(NT_LOG_WARN, SIM_MODULE, "lost connection to broker: %s; reconnecting",
               sim__mosq_error(rc));
    }
}

/* Network thread: a publish is done (PUBACK received at QoS 1, written at QoS 0). */
static void sim__on_publish(struct mosquitto *mosq, void *data, int mid)
{
    sim_mqtt_t *m = data;
    pthread_mutex_lock(&m->lock);
    m->done++;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

/* Publishes handed to libmosquitto and not yet done. Call with m->lock held. */
static uint64_t sim__pending_locked(const sim_mqtt_t *m)
{
    return m->sent > m->done ? m->sent - m->done : 0;
}

/* Absolute CLOCK_MONOTONIC deadline us_from_now ahead, for pthread_cond_timedwait. */
static struct timespec sim__deadline(int64_t us_from_now)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_nsec + (us_from_now % 1000000) * 1000;
    ts.tv_sec += (time_t)(us_from_now / 1000000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    return ts;
}

/* Waits until at most max_outstanding publishes are not yet done, or timeout_us passed.
 * Returns 0, or NT_EAGAIN on timeout. */
static int sim__wait_outstanding(sim_mqtt_t *m, uint64_t max_outstanding, int64_t timeout_us)
{
    struct timespec deadline = sim__deadline(timeout_us);
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    while (sim__pending_locked(m) > max_outstanding) {
        if (pthread_cond_timedwait(&m->cond, &m->lock, &deadline) == ETIMEDOUT) {
            rc = sim__pending_locked(m) > max_outstanding ? NT_EAGAIN : 0;
            break;
        }
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

/* Waits for the first CONNACK. Returns 0 when accepted, NT_EMQTT when refused or late. */
static int sim__wait_connack(sim_mqtt_t *m)
{
    struct timespec deadline = sim__deadline(SIM_CONNECT_DEADLINE_US);
    pthread_mutex_lock(&m->lock);
    while (m->connack < 0) {
        if (pthread_cond_timedwait(&m->cond, &m->lock, &deadline) == ETIMEDOUT) {
            break;
        }
    }
    int connack = m->connack;
    pthread_mutex_unlock(&m->lock);
    if (connack < 0) {
        nt_log(NT_LOG_ERROR, SIM_MODULE, "could not connect to broker: no CONNACK within %d s",
               (int)(SIM_CONNECT_DEADLINE_US / 1000000));
        return NT_EMQTT;
    }
    return connack == 0 ? 0 : NT_EMQTT;
}

/* Creates the client, connects and starts the network thread. 0, or NT_EMQTT / NT_ENOMEM
 * (logged); on failure m->mosq is NULL. */
static int sim__mqtt_start(sim_mqtt_t *m, const nt_config_t *cfg, uint64_t seed)
{
    char client_id[96];
    snprintf(client_id, sizeof(client_id), "needletrace-sim-%" PRIu64 "-%ld", seed, (long)getpid());

    m->mosq = mosquitto_new(client_id, true, m);
    if (m->mosq == NULL) {
        nt_log(NT_LOG_ERROR, SIM_MODULE, "could not create MQTT client: %s", strerror(errno));
        return errno == ENOMEM ? NT_ENOMEM : NT_EMQTT;
    }
    mosquitto_int_option(m->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    mosquitto_int_option(m->mosq, MOSQ_OPT_SEND_MAXIMUM, (int)SIM_WINDOW);
    mosquitto_connect_callback_set(m->mosq, sim__on_connect);
    mosquitto_disconnect_callback_set(m->mosq, sim__on_disconnect);
    mosquitto_publish_callback_set(m->mosq, sim__on_publish);
    mosquitto_reconnect_delay_set(m->mosq, 1, 30, true);

    int rc = MOSQ_ERR_SUCCESS;
    if (cfg->mqtt_username != NULL) {
        rc = mosquitto_username_pw_set(m->mosq, cfg->mqtt_username, cfg->mqtt_password);
        if (rc != MOSQ_ERR_SUCCESS) {
            nt_log(NT_LOG_ERROR, SIM_MODULE, "could not set MQTT credentials: %s",
                   sim__mosq_error(rc));
            goto err;
        }
    }
    if (cfg->mqtt_tls) {
        if (cfg->mqtt_ca_file == NULL) {
            mosquitto_int_option(m->mosq, MOSQ_OPT_TLS_USE_OS_CERTS, 1);
        }
        rc = mosquitto_tls_set(m->mosq, cfg->mqtt_ca_file, NULL, cfg->mqtt_cert_file,
                               cfg->mqtt_key_file, NULL);
        if (rc != MOSQ_ERR_SUCCESS) {
            nt_log(NT_LOG_ERROR, SIM_MODULE, "could not set up TLS for the broker connection: %s",
                   sim__mosq_error(rc));
            goto err;
        }
    }

    int keepalive = cfg->mqtt_keepalive_s > 0 ? (int)cfg->mqtt_keepalive_s : 30;
    rc = mosquitto_connect(m->mosq, cfg->mqtt_host, cfg->mqtt_port, keepalive);
    if (rc != MOSQ_ERR_SUCCESS) {
        nt_log(NT_LOG_ERROR, SIM_MODULE, "could not connect to broker \"%s:%d\": %s",
               cfg->mqtt_host, cfg->mqtt_port, sim__mosq_error(rc));
        goto err;
    }
    rc = mosquitto_loop_start(m->mosq);
    if (rc != MOSQ_ERR_SUCCESS) {
        nt_log(NT_LOG_ERROR, SIM_MODULE, "could not start the MQTT network thread: %s",
               sim__mosq_error(rc));
        goto err;
    }
    if (sim__wait_connack(m) != 0) {
        mosquitto_disconnect(m->mosq);
        mosquitto_loop_stop(m->mosq, true);
        goto err;
    }
    nt_log(NT_LOG_INFO, SIM_MODULE, "connected to broker \"%s:%d\" as \"%s\"", cfg->mqtt_host,
           cfg->mqtt_port, client_id);
    return 0;

err:
    mosquitto_destroy(m->mosq);
    m->mosq = NULL;
    return NT_EMQTT;
}

/* Disconnects cleanly and stops the network thread. */
static void sim__mqtt_stop(sim_mqtt_t *m)
{
    if (m->mosq == NULL) {
        return;
    }
    mosquitto_disconnect(m->mosq);
    mosquitto_loop_stop(m->mosq, false);
    mosquitto_destroy(m->mosq);
    m->mosq = NULL;
}

/* Sleeps for us microseconds (restarting after signals unless interrupted by SIGINT). */
static void sim__sleep_us(int64_t us)
{
    struct timespec ts = {.tv_sec = (time_t)(us / 1000000), .tv_nsec = (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !sim_interrupted) {
    }
}

/* Takes one token from the bucket, sleeping until one is available. */
static void sim__bucket_take(sim_bucket_t *b)
{
    if (b->rate <= 0) {
        return;
    }
    for (;;) {
        int64_t now = nt_mono_us();
        b->tokens += (double)(now - b->last_us) * b->rate / 1e6;
        b->last_us = now;
        if (b->tokens > b->burst) {
            b->tokens = b->burst;
        }
        if (b->tokens >= 1.0) {
            b->tokens -= 1.0;
            return;
        }
        int64_t wait_us = (int64_t)((1.0 - b->tokens) / b->rate * 1e6) + 1;
        sim__sleep_us(wait_us < 50 ? 50 : wait_us);
    }
}

/* Publishes one message (waiting for the rate limit and the in-flight window) and appends it
 * to the dump file if any. Returns 0, or NT_EMQTT / NT_EIO (logged). */
static int sim__publish(sim_t *s, sim_mqtt_t *m, sim_bucket_t *bucket, const char *topic,
                        const uint8_t *payload, size_t len)
{
    sim__bucket_take(bucket);
    if (sim__wait_outstanding(m, SIM_WINDOW - 1, SIM_ACK_DEADLINE_US) != 0) {
        nt_log(NT_LOG_ERROR, SIM_MODULE,
               "broker did not acknowledge any of %u messages in flight within %d s", SIM_WINDOW,
               (int)(SIM_ACK_DEADLINE_US / 1000000));
        return NT_EMQTT;
    }

    int64_t deadline = nt_mono_us() + SIM_ACK_DEADLINE_US;
    for (;;) {
        pthread_mutex_lock(&m->lock);
        m->sent++; /* before the call: the callback may run before it returns */
        pthread_mutex_unlock(&m->lock);
        int rc = mosquitto_publish(m->mosq, NULL, topic, (int)len, payload, s->opt.qos, false);
        /* At QoS 1, NO_CONN means the message was queued but could not be written yet:
         * libmosquitto sends it after reconnecting. Publishing it again would double it. */
        if (rc == MOSQ_ERR_SUCCESS || (rc == MOSQ_ERR_NO_CONN && s->opt.qos > 0)) {
            break;
        }
        pthread_mutex_lock(&m->lock);
        m->sent--;
        pthread_mutex_unlock(&m->lock);
        /* QoS 0 cannot be queued while disconnected: wait for the reconnection. */
        if (rc == MOSQ_ERR_NO_CONN && nt_mono_us() < deadline && !sim_interrupted) {
            sim__sleep_us(100000);
            continue;
        }
        nt_log(NT_LOG_ERROR, SIM_MODULE, "could not publish to \"%s\": %s", topic,
               sim__mosq_error(rc));
        return NT_EMQTT;
    }
    s->messages_published++;

    if (s->dump != NULL) {
        uint8_t hdr[4];
        uint32_t tl = (uint32_t)strlen(topic);
        hdr[0] = (uint8_t)(tl >> 24);
        hdr[1] = (uint8_t)(tl >> 16);
        hdr[2] = (uint8_t)(tl >> 8);
        hdr[3] = (uint8_t)tl;
        fwrite(hdr, 1, 4, s->dump);
        fwrite(topic, 1, tl, s->dump);
        hdr[0] = (uint8_t)(len >> 24);
        hdr[1] = (uint8_t)(len >> 16);
        hdr[2] = (uint8_t)(len >> 8);
        hdr[3] = (uint8_t)len;
        fwrite(hdr, 1, 4, s->dump);
        if (fwrite(payload, 1, len, s->dump) != len) {
            nt_log(NT_LOG_ERROR, SIM_MODULE, "could not write dump file \"%s\": %s",
                   s->opt.dump_path, strerror(errno));
            return NT_EIO;
        }
    }
    return 0;
}

/* Generates, encodes and publishes the next message of a randomly chosen device, with its
 * faults. Returns 0, or a negative NT_E* (logged). */
static int sim__step(sim_t *s, sim_mqtt_t *m, sim_bucket_t *bucket)
{
    const sim_options_t *o = &s->opt;
    sim_device_t *d = &s->devices[sim__next(&s->rng) % s->ndevices];
    double u_malformed = sim__uniform(&s->rng);
    double u_spoof = sim__uniform(&s->rng);
    double u_duplicate = sim__uniform(&s->rng);
    uint64_t spoof_pick = sim__next(&s->rng);
    int malformed = u_malformed < o->malformed_rate;
    int spoof = !malformed && u_spoof < o->spoof_rate;
    int duplicate = u_duplicate < o->duplicate_rate;
    /* Violations draw from their own stream (see sim_t.vrng). */
    int dropped = sim__uniform(&s->vrng) < o->gap_rate;
    int skewed = sim__uniform(&s->vrng) < o->skew_rate;
    /* What reaches the rules: not lost, decodable, and from the handpiece it claims. */
    int accepted = !dropped && !malformed && !spoof;

    uint32_t n = o->events_per_message;
    if (o->events != 0 && o->events - s->events_generated < n) {
        n = (uint32_t)(o->events - s->events_generated);
    }
    int64_t wall_ms = nt_now_us() / 1000;
    int64_t now_ms = o->fixed_time_ms != 0 ? s->start_ms + (int64_t)s->events_generated : wall_ms;
    uint64_t kinds[SIM_KINDS] = {0};
    int ahead = 0;
    for (uint32_t i = 0; i < n; i++) {
        sim_slot_t *slot = &s->slots[i];
        int64_t t = o->fixed_time_ms != 0 ? now_ms + i : now_ms;
        /* Monotonic per device; a skewed message jumps ahead without moving the clock. */
        d->last_ms = t > d->last_ms ? t : d->last_ms;
        d->base_ms = d->last_ms;
        needletrace__v1__event__init(&slot->ev);
        kinds[sim__next_event(s, d, slot)]++;
        slot->ev.seq = ++d->seq;
        slot->ev.device_time_ms = d->base_ms + (skewed ? SIM_SKEW_MS : 0);
        /* The collector receives the message at wall_ms at the earliest. */
        ahead |= slot->ev.device_time_ms - wall_ms > SIM_SKEW_BOUND_MS;
        if (accepted) {
            sim__expect_event(s, d, &slot->ev);
        }
    }
    if (accepted) {
        /* SEQUENCE_GAP: seqs this message skips over were lost or rejected, and are never
         * accepted later (publishes go in seq order per device): one gap. */
        if (s->slots[0].ev.seq > d->x_high_seq + 1) {
            s->alerts_by_rule[SIM_RULE_SEQUENCE_GAP]++;
        }
        d->x_high_seq = d->seq;
        if (ahead && !d->x_skewed) {
            d->x_skewed = 1;
            s->alerts_by_rule[SIM_RULE_CLOCK_SKEW]++;
        }
    }
    if (ahead && !skewed && !s->warned_clock_ahead) {
        s->warned_clock_ahead = 1;
        nt_log(NT_LOG_WARN, SIM_MODULE,
               "device clock runs more than %lld s ahead of the wall clock: the expected "
               "CLOCK_SKEW count assumes each message is received as soon as it is published",
               SIM_SKEW_BOUND_MS / 1000);
    }
    if (dropped) {
        /* Lost by the handpiece: its seqs are used up, nothing is published. */
        s->messages_generated++;
        s->messages_dropped++;
        s->events_generated += n;
        return 0;
    }

    Needletrace__V1__Telemetry msg = NEEDLETRACE__V1__TELEMETRY__INIT;
    char spoof_serial[NT_MAX_ID_LEN + 1];
    msg.device_serial = d->serial;
    if (spoof) {
        /* Another handpiece of the fleet claims to be this one (or, alone, a forged serial). */
        if (s->ndevices > 1) {
            uint32_t other =
                (uint32_t)((d->global + 1 + spoof_pick % (s->ndevices - 1)) % s->ndevices);
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
        return NT_ETOOBIG;
    }
    protobuf_c_message_pack(&msg.base, s->payload);
    if (malformed) {
        /* Field 5 (events), length-delimited, claiming 1000 bytes where none remain: no
         * protobuf decoder can accept this. */
        s->payload[len++] = 0x2a;
        s->payload[len++] = 0xe8;
        s->payload[len++] = 0x07;
    }

    char topic[NT_MAX_TOPIC_LEN];
    snprintf(topic, sizeof(topic), "clinics/%s/handpieces/%s/telemetry", s->clinic_ids[d->clinic],
             d->serial);

    s->messages_generated++;
    s->events_generated += n;
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

    int rc = sim__publish(s, m, bucket, topic, s->payload, len);
    if (rc == 0 && duplicate) {
        rc = sim__publish(s, m, bucket, topic, s->payload, len);
        if (rc == 0) {
            s->duplicates_published++;
        }
    }
    return rc;
}

/* Writes s as a JSON string (quotes included). */
static void sim__json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            fputc('\\', out);
            fputc(c, out);
        } else if (c < 0x20) {
            fprintf(out, "\\u%04x", c);
        } else {
            fputc(c, out);
        }
    }
    fputc('"', out);
}

/* Total alerts a correct collector raises. */
static uint64_t sim__expected_alerts(const sim_t *s)
{
    uint64_t total = 0;
    for (int r = 0; r < SIM_RULES; r++) {
        total += s->alerts_by_rule[r];
    }
    return total;
}

/* Prints the result object on stdout. */
static void sim__print_json(const sim_t *s, double elapsed_s)
{
    FILE *out = stdout;
    double rate = elapsed_s > 0 ? (double)s->messages_published / elapsed_s : 0.0;
    fprintf(out,
            "{\"seed\":%" PRIu64 ",\"clinics\":%" PRIu32 ",\"devices\":%" PRIu32
            ",\"messages_published\":%" PRIu64 ",\"duplicates_published\":%" PRIu64
            ",\"events_generated\":%" PRIu64 ",\"elapsed_s\":%.3f,\"rate_msgs_per_s\":%.1f",
            s->opt.seed, s->opt.clinics, s->ndevices, s->messages_published,
            s->duplicates_published, s->events_generated, elapsed_s, rate);
    fprintf(out,
            ",\"expected\":{\"raw_messages\":%" PRIu64 ",\"events\":%" PRIu64
            ",\"quarantine\":%" PRIu64 ",\"quarantine_by_reason\":{\"not_protobuf\":%" PRIu64
            ",\"serial_mismatch\":%" PRIu64 "},\"events_by_clinic\":{",
            s->expected_raw, s->expected_events,
            s->expected_not_protobuf + s->expected_serial_mismatch, s->expected_not_protobuf,
            s->expected_serial_mismatch);
    for (uint32_t c = 0; c < s->opt.clinics; c++) {
        fprintf(out, "%s\"%s\":%" PRIu64, c > 0 ? "," : "", s->clinic_ids[c],
                s->events_by_clinic[c]);
    }
    fputs("},\"events_by_kind\":{", out);
    for (int k = 0; k < SIM_KINDS; k++) {
        fprintf(out, "%s\"%s\":%" PRIu64, k > 0 ? "," : "", sim_kind_names[k],
                s->events_by_kind[k]);
    }
    fprintf(out, "},\"alerts\":%" PRIu64 ",\"alerts_by_rule\":{", sim__expected_alerts(s));
    for (int r = 0; r < SIM_RULES; r++) {
        fprintf(out, "%s\"%s\":%" PRIu64, r > 0 ? "," : "", sim_rule_names[r],
                s->alerts_by_rule[r]);
    }
    fprintf(out,
            "}},\"messages_dropped\":%" PRIu64 ",\"recalled_lot\":{\"gtin\":", s->messages_dropped);
    sim__json_string(out, s->recalled_gtin);
    fputs(",\"lot\":", out);
    sim__json_string(out, s->opt.recalled_lot);
    fputs("}}\n", out);
    fflush(out);
}

/* SIGINT: stop generating, then finish normally (the handler resets itself). */
static void sim__on_sigint(int sig)
{
    (void)sig;
    sim_interrupted = 1;
}

/* Runs the simulation against a connected client. Returns the exit code. */
static int sim__run(sim_t *s, sim_mqtt_t *m)
{
    const sim_options_t *o = &s->opt;
    sim_bucket_t bucket = {
        .rate = o->rate,
        .burst = o->rate / 10 > 1 ? o->rate / 10 : 1, /* 100 ms */
        .tokens = 1,
        .last_us = nt_mono_us(),
    };
    int64_t start_us = nt_mono_us();
    int64_t end_us = o->duration_s > 0 ? start_us + (int64_t)(o->duration_s * 1e6) : INT64_MAX;
    int64_t next_progress_us = start_us + 1000000;
    int rc = 0;

    nt_log(NT_LOG_INFO, SIM_MODULE,
           "simulating %" PRIu32 " clinics with %" PRIu32 " handpieces each, seed %" PRIu64,
           o->clinics, o->devices, o->seed);
    while (!sim_interrupted && (o->events == 0 || s->events_generated < o->events)) {
        int64_t now = nt_mono_us();
        if (now >= end_us) {
            break;
        }
        if (now >= next_progress_us) {
            next_progress_us = now + 1000000;
            pthread_mutex_lock(&m->lock);
            uint64_t pending = sim__pending_locked(m);
            pthread_mutex_unlock(&m->lock);
            nt_log(NT_LOG_DEBUG, SIM_MODULE,
                   "published %" PRIu64 " messages with %" PRIu64 " events, %" PRIu64
                   " awaiting acknowledgement",
                   s->messages_published, s->events_generated, pending);
        }
        rc = sim__step(s, m, &bucket);
        if (rc != 0) {
            return 1;
        }
    }
    if (sim_interrupted) {
        nt_log(NT_LOG_INFO, SIM_MODULE, "interrupted: waiting for the messages in flight");
    }

    if (sim__wait_outstanding(m, 0, SIM_ACK_DEADLINE_US) != 0) {
        pthread_mutex_lock(&m->lock);
        uint64_t pending = sim__pending_locked(m);
        pthread_mutex_unlock(&m->lock);
        nt_log(NT_LOG_ERROR, SIM_MODULE,
               "%" PRIu64 " of %" PRIu64 " messages were not %s by the broker within %d s", pending,
               s->messages_published, o->qos == 1 ? "acknowledged" : "sent",
               (int)(SIM_ACK_DEADLINE_US / 1000000));
        return 1;
    }
    double elapsed_s = (double)(nt_mono_us() - start_us) / 1e6;
    if (s->dump != NULL) {
        FILE *f = s->dump;
        s->dump = NULL;
        if (fclose(f) != 0) {
            nt_log(NT_LOG_ERROR, SIM_MODULE, "could not write dump file \"%s\": %s", o->dump_path,
                   strerror(errno));
            return 1;
        }
    }
    nt_log(NT_LOG_INFO, SIM_MODULE,
           "published %" PRIu64 " messages (%" PRIu64 " duplicates) with %" PRIu64
           " events in %.3f s (%.0f messages/s); expected %" PRIu64 " raw messages, %" PRIu64
           " events, %" PRIu64 " quarantined, %" PRIu64 " alerts",
           s->messages_published, s->duplicates_published, s->events_generated, elapsed_s,
           elapsed_s > 0 ? (double)s->messages_published / elapsed_s : 0.0, s->expected_raw,
           s->expected_events, s->expected_not_protobuf + s->expected_serial_mismatch,
           sim__expected_alerts(s));
    sim__print_json(s, elapsed_s);
    return 0;
}

/* 1 when argv asks for help (before any "--"). */
static int sim__wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            return 0;
        }
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            return 1;
        }
    }
    return 0;
}

/* `needletrace simulate`: loads the configuration (broker address and credentials), parses
 * the simulation flags, publishes the fleet's telemetry and prints the expected counts as
 * JSON on stdout. Returns 0, 1 (runtime failure, e.g. broker unreachable or messages not
 * acknowledged) or 2 (bad usage or configuration). */
int nt_cmd_simulate(int argc, char **argv, char *const *envp)
{
    if (sim__wants_help(argc, argv)) {
        sim__usage(stdout);
        return 0;
    }

    nt_config_t cfg;
    char err[512];
    memset(&cfg, 0, sizeof(cfg));
    if (nt_config_load(&cfg, &argc, argv, envp, err, sizeof(err)) != 0) {
        fprintf(stderr, "needletrace: %s\n", err);
        nt_config_free(&cfg);
        return 2;
    }
    nt_config_setup_log(&cfg);

    sim_options_t opt;
    int code = sim__parse_options(argc, argv, &opt);
    if (code != 0) {
        nt_config_free(&cfg);
        return code;
    }

    sim_t s;
    sim_mqtt_t m;
    memset(&m, 0, sizeof(m));
    m.connack = -1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&m.lock, NULL);
    pthread_cond_init(&m.cond, &ca);
    pthread_condattr_destroy(&ca);

    struct sigaction sa, old_sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = sim__on_sigint;
    sa.sa_flags = SA_RESETHAND; /* a second ^C kills */
    sigemptyset(&sa.sa_mask);
    sim_interrupted = 0;

    code = 1;
    if (sim__init(&s, &opt) != 0) {
        nt_log(NT_LOG_ERROR, SIM_MODULE, "could not allocate a fleet of %" PRIu32 " devices: %s",
               opt.clinics * opt.devices, nt_strerror(NT_ENOMEM));
        goto out;
    }
    if (opt.dump_path != NULL) {
        s.dump = fopen(opt.dump_path, "wb");
        if (s.dump == NULL) {
            nt_log(NT_LOG_ERROR, SIM_MODULE, "could not open dump file \"%s\": %s", opt.dump_path,
                   strerror(errno));
            goto out;
        }
    }
    mosquitto_lib_init();
    if (sim__mqtt_start(&m, &cfg, opt.seed) == 0) {
        sigaction(SIGINT, &sa, &old_sa);
        code = sim__run(&s, &m);
        sigaction(SIGINT, &old_sa, NULL);
        sim__mqtt_stop(&m);
    }
    mosquitto_lib_cleanup();

out:
    if (s.dump != NULL) {
        fclose(s.dump);
    }
    sim__free(&s);
    pthread_cond_destroy(&m.cond);
    pthread_mutex_destroy(&m.lock);
    nt_config_free(&cfg);
    return code;
}
