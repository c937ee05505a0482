/* sim_output.c -- what the simulator writes: the JSON summary on stdout and the dump file. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "needletrace/alert.h"
#include "needletrace/decoder.h"
#include "needletrace/log.h"
#include "sim.h"

/* Compliance rules: the SIM_RULE_* order is DESIGN.md section 3's, as NT_RULE_* (alert.h). */
_Static_assert(SIM_RULES == NT_RULE__COUNT, "the simulator counts every rule");
#define sim_rule_names nt_alert_rules

/* Opens the --dump file, if any, into s->dump. 0 or NT_EIO (logged). */
int nt_sim__dump_open(nt_sim_t *s)
{
    if (s->opt.dump_path == NULL) {
        return 0;
    }
    s->dump = fopen(s->opt.dump_path, "wb");
    if (s->dump == NULL) {
        nt_log(NT_LOG_ERROR, SIM_MODULE, "could not open dump file \"%s\": %s", s->opt.dump_path,
               strerror(errno));
        return NT_EIO;
    }
    return 0;
}

/* Writes v as 4 bytes, big endian. */
static void sim__put_u32(FILE *f, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    fwrite(b, 1, 4, f);
}

/* Appends one publish to the dump file, if any. 0 or NT_EIO (logged). */
int nt_sim__dump_write(nt_sim_t *s, const char *topic, const uint8_t *payload, size_t len)
{
    if (s->dump == NULL) {
        return 0;
    }
    uint32_t tl = (uint32_t)strlen(topic);
    sim__put_u32(s->dump, tl);
    fwrite(topic, 1, tl, s->dump);
    sim__put_u32(s->dump, (uint32_t)len);
    if (fwrite(payload, 1, len, s->dump) != len) {
        nt_log(NT_LOG_ERROR, SIM_MODULE, "could not write dump file \"%s\": %s", s->opt.dump_path,
               strerror(errno));
        return NT_EIO;
    }
    return 0;
}

/* Closes the dump file, if any. 0, or NT_EIO (logged when report is 1). */
int nt_sim__dump_close(nt_sim_t *s, int report)
{
    if (s->dump == NULL) {
        return 0;
    }
    FILE *f = s->dump;
    s->dump = NULL;
    if (fclose(f) != 0) {
        if (report) {
            nt_log(NT_LOG_ERROR, SIM_MODULE, "could not write dump file \"%s\": %s",
                   s->opt.dump_path, strerror(errno));
        }
        return NT_EIO;
    }
    return 0;
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

/* Writes "name":count pairs, comma-separated, for n names. */
static void sim__json_counts(FILE *out, const char *const *names, const uint64_t *counts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        fprintf(out, "%s\"%s\":%" PRIu64, i > 0 ? "," : "", names[i], counts[i]);
    }
}

/* Prints the summary on stdout as one JSON object. */
void nt_sim__print_json(const nt_sim_t *s, double elapsed_s)
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
    const char *kinds[SIM_KINDS]; /* events_by_kind is indexed by body_case - 10 */
    for (unsigned k = 0; k < SIM_KINDS; k++) {
        kinds[k] = nt_decoder_kind_name(NEEDLETRACE__V1__EVENT__BODY_SESSION_STARTED + k);
    }
    sim__json_counts(out, kinds, s->events_by_kind, SIM_KINDS);
    fprintf(out, "},\"alerts\":%" PRIu64 ",\"alerts_by_rule\":{", nt_sim__expected_alerts(s));
    sim__json_counts(out, sim_rule_names, s->alerts_by_rule, SIM_RULES);
    fprintf(out,
            "}},\"messages_dropped\":%" PRIu64 ",\"recalled_lot\":{\"gtin\":", s->messages_dropped);
    sim__json_string(out, s->recalled_gtin);
    fputs(",\"lot\":", out);
    sim__json_string(out, s->opt.recalled_lot);
    fputs("}}\n", out);
    fflush(out);
}
