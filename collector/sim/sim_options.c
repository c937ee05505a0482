/* sim_options.c -- the flags of `needletrace simulate`: one option table for parsing, checks and
 * usage. */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "needletrace/opts.h"
#include "sim.h"

#define SIM_PROG "needletrace simulate"

/* 1 when s is a clinic id prefix: 1 or more identifier characters, of any length (the
 * length of the clinic ids it makes is checked once every option is known). */
static int sim__prefix_valid(const char *s)
{
    size_t len = strlen(s);
    if (len == 0) {
        return 0;
    }
    for (size_t off = 0; off < len; off += NT_IDENT_MAX_ID_LEN) {
        size_t n = len - off < NT_IDENT_MAX_ID_LEN ? len - off : NT_IDENT_MAX_ID_LEN;
        if (!nt_ident_id_valid(s + off, n)) {
            return 0;
        }
    }
    return 1;
}

/* 1 when s is a GTIN-14 with a valid check digit. */
static int sim__gtin_valid(const char *s)
{
    return nt_ident_gtin_valid(s, strlen(s));
}

/* 1 when s is a GS1 lot: 1-20 printable ASCII characters other than space. */
static int sim__lot_valid(const char *s)
{
    return nt_ident_gs1_text_valid(s, strlen(s));
}

/* 1 when s is not empty. */
static int sim__nonempty(const char *s)
{
    return s[0] != '\0';
}

#define SIM_OFF(field) offsetof(nt_sim_options_t, field)
#define SIM_U32(name, field, lo, hi, arg, help, expected)                                          \
    {                                                                                              \
        name, NT_OPT_U32, SIM_OFF(field), lo, hi, 0, 0, NULL, arg, help, expected                  \
    }
#define SIM_U64(name, field, lo, hi, arg, help, expected)                                          \
    {                                                                                              \
        name, NT_OPT_U64, SIM_OFF(field), lo, hi, 0, 0, NULL, arg, help, expected                  \
    }
#define SIM_DBL(name, field, lo, hi, arg, help, expected)                                          \
    {                                                                                              \
        name, NT_OPT_DOUBLE, SIM_OFF(field), 0, 0, lo, hi, NULL, arg, help, expected               \
    }
#define SIM_STR(name, field, check, arg, help, expected)                                           \
    {                                                                                              \
        name, NT_OPT_STRING, SIM_OFF(field), 0, 0, 0, 0, check, arg, help, expected                \
    }
#define SIM_RATE(name, field, help) SIM_DBL(name, field, 0, 1, "F", help, "a fraction from 0 to 1")
#define SIM_TEXT(text)                                                                             \
    {                                                                                              \
        NULL, NT_OPT_TEXT, 0, 0, 0, 0, 0, NULL, NULL, text, NULL                                   \
    }

static const nt_opt_t sim_options[] = {
    SIM_U32("clinics", clinics, 1, SIM_MAX_CLINICS, "N", "clinics in the fleet (default 3)",
            "an integer from 1 to 10000"),
    SIM_U32("devices", devices, 1, SIM_MAX_DEVICES_PER_CLINIC, "N",
            "handpieces per clinic (default 10)", "an integer from 1 to 10000"),
    SIM_U64("events", events, 1, UINT64_C(1000000000000), "N",
            "total events to generate (default 10000, or no limit\n"
            "when only --duration is given)",
            "an integer from 1 to 1000000000000"),
    SIM_DBL("duration", duration_s, 0.001, 1e7, "SECONDS",
            "stop generating after this long; with --events,\n"
            "whichever comes first ends the run",
            "a number of seconds from 0.001 to 10000000"),
    SIM_U32("events-per-message", events_per_message, 1, NT_MAX_EVENTS, "N",
            "events per message, 1..1000 (default 10)", "an integer from 1 to 1000"),
    SIM_DBL("rate", rate, 0, 1e7, "N",
            "messages per second across the fleet, duplicates\n"
            "included; 0 = as fast as possible (default 0)",
            "a number of messages per second from 0 to 10000000"),
    SIM_U64("seed", seed, 0, UINT64_MAX, "N", "seed of every random choice (default 1)",
            "an unsigned 64-bit integer"),
    SIM_RATE("malformed-rate", malformed_rate,
             "share of messages published as undecodable bytes (0..1)"),
    SIM_RATE("spoof-rate", spoof_rate,
             "share of messages whose payload serial differs from\n"
             "the topic serial (0..1)"),
    SIM_RATE("duplicate-rate", duplicate_rate, "share of messages published twice (0..1)"),
    SIM_STR("clinic-prefix", clinic_prefix, sim__prefix_valid, "S",
            "clinic ids are S-<seed>-<i> (default \"clinic\")",
            "1 or more characters of [A-Za-z0-9._-]"),
    {"qos", NT_OPT_INT, SIM_OFF(qos), 0, 1, 0, 0, NULL, "0|1",
     "MQTT QoS of the publishes (default 1)", "0 or 1"},
    /* The device clock must stay inside what the validator accepts. */
    {"fixed-time-ms", NT_OPT_I64, SIM_OFF(fixed_time_ms), (uint64_t)NT_MIN_DEVICE_TIME_MS,
     (uint64_t)NT_MAX_DEVICE_TIME_MS - UINT64_C(1000000000000), 0, 0, NULL, "MS",
     "device clock starts at MS (Unix ms) and advances 1 ms\n"
     "per event, instead of the wall clock (for tests)",
     "Unix milliseconds from 946684800000 to 3102444800000"},
    SIM_STR("dump", dump_path, sim__nonempty, "FILE",
            "also write every publish to FILE as u32 topic length,\n"
            "topic, u32 payload length, payload (big endian)",
            "a file name"),
    {"help", NT_OPT_HELP, 0, 0, 0, 0, 0, NULL, NULL, "show this help", NULL},
    SIM_TEXT("\n"
             "compliance violations, each a probability from 0 to 1 (default 0); the summary's\n"
             "\"expected\".\"alerts_by_rule\" gives the alerts a correct collector raises,\n"
             "including the gaps left by lost, malformed and spoofed messages and the needling\n"
             "without a cartridge when such a message held the mount:\n"),
    SIM_RATE("reuse-rate", reuse_rate,
             "per mount: re-mount a cartridge already mounted in an\n"
             "earlier session (of any handpiece) instead of a new one"),
    SIM_RATE("expired-rate", expired_rate, "per new cartridge: expired 1..400 days ago"),
    SIM_RATE("unsealed-rate", unsealed_rate, "per new cartridge: sterile barrier broken"),
    SIM_RATE("recalled-rate", recalled_rate, "per new cartridge: from the recalled lot"),
    SIM_RATE("too-deep-rate", too_deep_rate,
             "per needle setting: deeper than the treatment area allows"),
    SIM_RATE("no-cartridge-rate", no_cartridge_rate,
             "per session: needling with no cartridge mounted"),
    SIM_RATE("gap-rate", gap_rate, "per message: lost by the handpiece (its seqs are skipped)"),
    SIM_RATE("skew-rate", skew_rate,
             "per message: device clock 1 hour ahead for its events\n"
             "(not with --fixed-time-ms)"),
    SIM_STR("recalled-gtin", recalled_gtin, sim__gtin_valid, "G",
            "GTIN of the recalled lot (default 07612345000121)",
            "a GTIN of 14 digits with a valid check digit"),
    SIM_STR("recalled-lot", recalled_lot, sim__lot_valid, "L",
            "recalled lot number, 1..20 printable characters\n"
            "(default \"RCL-0001\"); insert (G, L) into\n"
            "needletrace.recalled_lots before publishing",
            "1 to 20 printable ASCII characters other than space"),
    {NULL, NT_OPT_END, 0, 0, 0, 0, 0, NULL, NULL, NULL, NULL},
};

/* Prints the usage text from the option table, then every configuration key. */
void nt_sim__usage(FILE *out)
{
    fputs("usage: needletrace simulate [options] [configuration flags]\n"
          "\n"
          "Publishes telemetry from a virtual fleet of microneedling handpieces, deterministic\n"
          "by seed, and prints on stdout, as one JSON object, the counts a correct collector\n"
          "must end with in PostgreSQL.\n"
          "\n"
          "options:\n",
          out);
    nt_opts_usage(sim_options, out);
    fputs("\n"
          "configuration flags (broker address, TLS, credentials; also NEEDLETRACE_* env):\n",
          out);
    nt_config_help(out);
}

/* Checks what no single option decides: the fleet size, the longest clinic id, --skew-rate
 * against --fixed-time-ms. Returns 0, or 2 after printing the problem on stderr. */
static int sim__check_options(const nt_sim_options_t *opt)
{
    if ((uint64_t)opt->clinics * opt->devices > SIM_MAX_FLEET) {
        fprintf(stderr,
                SIM_PROG ": fleet of %" PRIu32 " clinics with %" PRIu32
                         " devices each is too large: at most %u devices in total\n",
                opt->clinics, opt->devices, SIM_MAX_FLEET);
        return 2;
    }
    char longest[160];
    int n = snprintf(longest, sizeof(longest), "%s-%" PRIu64 "-%" PRIu32, opt->clinic_prefix,
                     opt->seed, opt->clinics - 1);
    if (n < 0 || (size_t)n > NT_MAX_ID_LEN) {
        fprintf(stderr,
                SIM_PROG ": invalid value \"%s\" for --clinic-prefix: expected a prefix short "
                         "enough for clinic ids of at most 64 characters\n",
                opt->clinic_prefix);
        return 2;
    }
    if (opt->skew_rate > 0 && opt->fixed_time_ms != 0) {
        fprintf(stderr, SIM_PROG ": --skew-rate cannot be used with --fixed-time-ms\n"
                                 "Clock skew is measured against the collector's receive time, "
                                 "which a fixed device clock does not follow.\n");
        return 2;
    }
    return 0;
}

/* Parses the flags into opt over its defaults. 0, or 2 after printing the problem on stderr. */
int nt_sim__parse_options(int argc, char **argv, nt_sim_options_t *opt)
{
    *opt = (nt_sim_options_t){
        .clinics = 3,
        .devices = 10,
        .events = 10000,
        .events_per_message = 10,
        .seed = 1,
        .clinic_prefix = "clinic",
        .qos = 1,
        .recalled_lot = SIM_DEFAULT_RECALLED_LOT,
    };
    _Static_assert(NT_ARRAY_SIZE(sim_options) <= NT_OPTS_MAX + 1, "too many options");

    char err[512];
    uint64_t seen = 0;
    if (nt_opts_parse(sim_options, argc, argv, opt, &seen, SIM_PROG, err, sizeof(err)) != 0) {
        fprintf(stderr, SIM_PROG ": %s\n", err);
        return 2;
    }
    int code = sim__check_options(opt);
    if (code != 0) {
        return code;
    }
    if (opt->duration_s > 0 && !nt_opts_given(sim_options, seen, "events")) {
        opt->events = 0;
    }
    return 0;
}
