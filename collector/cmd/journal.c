/* journal.c -- `needletrace journal check|salvage`: reports the damage in a journal directory and
 * copies every valid record of a damaged one to a new journal. This file is the command line
 * and the printing; the scan and the copy are collector/ingest/journal_scan.c and
 * journal_salvage.c. */
#include "needletrace/journal.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "needletrace/cmd.h"
#include "needletrace/common.h"
#include "needletrace/config.h"
#include "needletrace/opts.h"

#define JOURNAL_CMD__SYNOPSIS                                                                      \
    "usage: needletrace journal check [--journal-dir DIR | --config FILE]\n"                       \
    "       needletrace journal salvage --out NEWDIR [--journal-dir DIR | --config FILE]\n"        \
    "       needletrace journal accept [--reason TEXT] [--config FILE]\n"                          \
    "       needletrace journal --help\n"

static void journal_cmd__usage(FILE *out)
{
    fputs(JOURNAL_CMD__SYNOPSIS, out);
    fputs("\n"
          "Inspects the journal in journal.dir (--journal-dir DIR, NEEDLETRACE_JOURNAL_DIR, or\n"
          "[journal] dir in the --config FILE). Both subcommands only read it (they take its lock\n"
          "shared, so they refuse while a collector runs on it).\n"
          "\n"
          "check    scans every segment and prints its start position, valid records and bytes,\n"
          "         and every damaged stretch: its byte offset in the file, the reason, the bytes\n"
          "         unreadable and how many valid records follow it. A torn tail (bad bytes at\n"
          "         the end of the newest segment, no valid record after them) is what a crash\n"
          "         mid-write leaves: the collector cuts it at its next start. So is an unwritten\n"
          "         page after a power cut: in the newest segment, bad bytes that hold a whole\n"
          "         4096-byte page of zeros (4096-aligned) before valid records, which were\n"
          "         written after the last sync and never acknowledged; the collector cuts the\n"
          "         segment there. Anything else is corruption: the collector refuses to start\n"
          "         until the journal is salvaged.\n"
          "salvage  copies every valid record, in order (receive time, topic, payload), to a new\n"
          "         journal with a new id in NEWDIR, reports the records copied and the byte\n"
          "         ranges lost per segment, and says what to do next. The old directory is left\n"
          "         as it was.\n"
          "  --out NEWDIR          the new journal directory: must not exist (created 0700)\n"
          "\n"
          "Exit status: 0 success (check: the collector can start on the journal, a torn tail\n"
          "or an unwritten page included), 1 corruption found (check) or a failure, 2 bad usage\n"
          "or configuration.\n",
          out);
}

/* ---- options -------------------------------------------------------------------------------- */

typedef struct {
    const char *out;
} journal_cmd__opts_t;

static const nt_opt_t journal_cmd__check_options[] = {
    {.type = NT_OPT_END},
};

static const nt_opt_t journal_cmd__salvage_options[] = {
    {.name = "out",
     .type = NT_OPT_STRING,
     .offset = offsetof(journal_cmd__opts_t, out),
     .arg = "NEWDIR",
     .help = "the new journal directory"},
    {.type = NT_OPT_END},
};

/* Options that take a value: a "-h" after one of them is its value, not a request for help. */
static int journal_cmd__takes_value(const char *a)
{
    return strcmp(a, "--out") == 0 || strcmp(a, "--config") == 0;
}

/* Parses the subcommand's arguments (argv[0] is the subcommand). 0, or 2 after printing why. */
static int journal_cmd__parse(const nt_opt_t *table, int argc, char **argv, journal_cmd__opts_t *o)
{
    char prog[64];
    char err[512];
    snprintf(prog, sizeof(prog), "needletrace journal %s", argv[0]);
    if (nt_opts_parse(table, argc, argv, o, NULL, prog, err, sizeof(err)) != 0) {
        fprintf(stderr, "needletrace: journal %s: %s\n", argv[0], err);
        return 2;
    }
    return 0;
}

/* ---- check ---------------------------------------------------------------------------------- */

/* The state column of a segment. */
static const char *journal_cmd__seg_state(const nt_journal_segment_report_t *s)
{
    if (s->header_error[0] != '\0') {
        return "BAD";
    }
    if (s->ndamage == 0) {
        return "ok";
    }
    if (s->damage[0].unwritten_page) {
        return "power cut"; /* cut at its first damage: what follows does not count */
    }
    return s->ndamage == 1 && s->damage[0].torn_tail ? "torn tail" : "DAMAGED";
}

/* Prints one segment's line and its problems; cut: the collector cuts the segment at its first
 * damage (an unwritten page after a power cut) at its next start. */
static void journal_cmd__print_segment(const nt_journal_segment_report_t *s, int cut)
{
    printf("%-24s %20" PRIu64 " %10" PRIu64 " %12" PRIu64 "  %s\n", s->name, s->start, s->records,
           s->file_bytes, journal_cmd__seg_state(s));
    if (s->header_error[0] != '\0') {
        printf("  problem: the segment %s\n", s->header_error);
    }
    for (size_t k = 0; k < s->ndamage; k++) {
        const nt_journal_damage_t *d = &s->damage[k];
        printf("  problem at offset %" PRIu64 ": %s; %" PRIu64 " bytes unreadable; ", d->offset,
               d->reason, d->bytes);
        if (d->unsure) {
            printf("valid records may follow (the search for them gave up)\n");
        } else if (d->torn_tail) {
            printf("no valid record follows (torn tail)\n");
        } else if (d->unwritten_page && k == 0 && cut) {
            printf("%" PRIu64 " valid-looking records follow, never acknowledged: the page at "
                   "offset %" PRIu64 " is all zeros (unwritten page after a power cut: the "
                   "collector cuts here at start)\n",
                   d->records_after, d->zero_page);
        } else if (d->unwritten_page) {
            printf("%" PRIu64 " valid records follow; the page at offset %" PRIu64
                   " is all zeros (unwritten page after a power cut)\n",
                   d->records_after, d->zero_page);
        } else {
            printf("%" PRIu64 " valid records follow\n", d->records_after);
        }
    }
}

/* Prints the report of nt_journal_check() and what it means for the collector. */
static void journal_cmd__print_report(const char *dir, const nt_journal_report_t *r)
{
    uint64_t records = 0;
    uint64_t bytes = 0;
    printf("journal \"%s\": id %016" PRIx64 ", segments: %zu\n", dir, r->id, r->nsegs);
    if (r->nsegs == 0) {
        printf("no segment yet: the collector creates the first one when it starts\n");
    } else {
        printf("%-24s %20s %10s %12s  %s\n", "segment", "start", "records", "bytes", "state");
    }
    for (size_t i = 0; i < r->nsegs; i++) {
        journal_cmd__print_segment(&r->segs[i],
                                   r->state == NT_JOURNAL_POWER_CUT && i + 1 == r->nsegs);
        records += r->segs[i].records;
        bytes += r->segs[i].record_bytes;
    }
    printf("total: %" PRIu64 " valid records, %" PRIu64 " bytes of records\n", records, bytes);
    if (r->missing_bytes > 0) {
        printf("missing: %" PRIu64 " positions between segments are in no segment file\n",
               r->missing_bytes);
    }
    if (r->leftovers > 0) {
        printf("note: %zu *.ntj.tmp files of an interrupted segment creation (the collector "
               "removes them at its next start)\n",
               r->leftovers);
    }
    switch (r->state) {
    case NT_JOURNAL_CLEAN:
        printf("result: clean\n");
        break;
    case NT_JOURNAL_TORN_TAIL:
        printf("result: %s; the collector cuts it at its next start (a crash mid-write leaves "
               "one)\n",
               r->verdict);
        break;
    case NT_JOURNAL_POWER_CUT:
        printf("result: %s; the collector cuts the segment there at its next start (pages "
               "written after the last sync reach the disk in any order: the broker sends those "
               "records again)\n",
               r->verdict);
        break;
    case NT_JOURNAL_CORRUPT:
        printf("result: CORRUPT: %s\n"
               "The collector refuses to start on this journal. Copy every valid record to a new\n"
               "journal with:\n"
               "  needletrace journal salvage --journal-dir %s --out NEWDIR\n",
               r->verdict, dir);
        break;
    }
}

/* `journal check`: 0 when the collector can start on the journal, 1 when it is corrupt or
 * cannot be read, 2 on bad usage. */
static int journal_cmd__check(const nt_config_t *cfg, int argc, char **argv)
{
    journal_cmd__opts_t o = {0};
    char err[1024];
    nt_journal_report_t *r = NULL;
    int rc = journal_cmd__parse(journal_cmd__check_options, argc, argv, &o);
    if (rc != 0) {
        return rc;
    }
    if (nt_journal_check(cfg->journal_dir, &r, err, sizeof(err)) != 0) {
        fprintf(stderr, "needletrace: journal check: %s\n", err);
        return 1;
    }
    journal_cmd__print_report(cfg->journal_dir, r);
    rc = r->state == NT_JOURNAL_CORRUPT ? 1 : 0;
    nt_journal_report_free(r);
    return rc;
}

/* ---- salvage -------------------------------------------------------------------------------- */

/* Prints what salvage copied and lost, per segment. */
static void journal_cmd__print_salvage(const char *dir, const char *out,
                                       const nt_journal_salvage_t *res)
{
    const nt_journal_report_t *r = res->report;
    printf("salvaged journal \"%s\" (id %016" PRIx64 ") into \"%s\" (new id %016" PRIx64 ")\n", dir,
           r->id, out, res->new_id);
    printf("%-24s %10s %12s\n", "segment", "copied", "bytes lost");
    for (size_t i = 0; i < r->nsegs; i++) {
        const nt_journal_segment_report_t *s = &r->segs[i];
        printf("%-24s %10" PRIu64 " %12" PRIu64 "\n", s->name, s->records, s->lost_bytes);
        if (s->header_error[0] != '\0') {
            printf("  the segment %s (its valid records were copied)\n", s->header_error);
        }
        for (size_t k = 0; k < s->ndamage; k++) {
            const nt_journal_damage_t *d = &s->damage[k];
            printf("  bytes %" PRIu64 " to %" PRIu64 " of the file (%" PRIu64 " bytes): %s\n",
                   d->offset, d->offset + d->bytes, d->bytes, d->reason);
        }
    }
    if (r->missing_bytes > 0) {
        printf("%" PRIu64 " positions between segments were in no segment file\n",
               r->missing_bytes);
    }
    printf("copied %" PRIu64 " records (%" PRIu64 " bytes), lost %" PRIu64
           " bytes; \"%s\" was not changed\n",
           res->records, res->record_bytes, res->lost_bytes, dir);
}

/* Prints what the operator must do with the salvaged journal. */
static void journal_cmd__print_next_steps(const char *dir, const char *out,
                                          const nt_journal_salvage_t *res)
{
    printf("\n"
           "Next steps (the new journal has a new id: positions changed, and the database's\n"
           "checkpoint belongs to the old journal id %016" PRIx64 "):\n"
           "  1. keep the collector stopped; move \"%s\" aside (keep it for analysis) and put\n"
           "     \"%s\" in its place, or set journal.dir to it;\n"
           "  2. run \"needletrace journal accept\": until the database accepts the new journal\n"
           "     id %016" PRIx64 ", the collector refuses to start on it;\n"
           "  3. start the collector: it replays the salvaged journal from its start; records the\n"
           "     database already holds are ignored, so nothing is doubled.\n",
           res->report->id, dir, out, res->new_id);
    if (res->lost_bytes > 0) {
        printf("The lost bytes held records, or parts of them, that could not be read: those the\n"
               "database committed before are safe there; the others are gone (the broker had\n"
               "their acknowledgement and will not send them again).\n");
    }
}

/* `journal salvage --out NEWDIR`: 0 when every valid record is copied, 1 on a failure, 2 on bad
 * usage (NEWDIR missing or already there). */
static int journal_cmd__salvage(const nt_config_t *cfg, int argc, char **argv)
{
    journal_cmd__opts_t o = {0};
    char err[1024];
    nt_journal_salvage_t res;
    int rc = journal_cmd__parse(journal_cmd__salvage_options, argc, argv, &o);
    if (rc != 0) {
        return rc;
    }
    if (o.out == NULL || o.out[0] == '\0') {
        fprintf(stderr, "needletrace: journal salvage: missing --out NEWDIR (the new journal "
                        "directory)\n");
        return 2;
    }
    nt_journal_options_t out = {.dir = o.out,
                                .max_bytes = (uint64_t)cfg->journal_max_bytes,
                                .segment_bytes = (uint64_t)cfg->journal_segment_bytes};
    struct stat st;
    int existed = stat(o.out, &st) == 0;
    rc = nt_journal_salvage(cfg->journal_dir, &out, &res, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "needletrace: journal salvage: %s\n", err);
        if (rc != NT_EINVAL && rc != NT_ENOENT && !existed && stat(o.out, &st) == 0) {
            fprintf(stderr,
                    "needletrace: \"%s\" may hold an incomplete journal: delete it before "
                    "trying again\n",
                    o.out);
        }
        return rc == NT_EINVAL ? 2 : 1;
    }
    journal_cmd__print_salvage(cfg->journal_dir, o.out, &res);
    journal_cmd__print_next_steps(cfg->journal_dir, o.out, &res);
    nt_journal_report_free(res.report);
    return 0;
}

/* ---- the command ---------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    int (*run)(const nt_config_t *cfg, int argc, char **argv);
} journal_cmd__sub_t;

static const journal_cmd__sub_t journal_cmd__subs[] = {
    {"check", journal_cmd__check},
    {"salvage", journal_cmd__salvage},
};

/* See cmd.h. */
int nt_cmd_journal(int argc, char **argv, char *const *envp)
{
    nt_config_t cfg;
    int rc =
        nt_cmd_begin_with(&argc, argv, envp, journal_cmd__usage, journal_cmd__takes_value, &cfg);
    if (rc != NT_CMD_CONTINUE) {
        return rc;
    }
    rc = -1;
    for (size_t i = 0; argc > 1 && i < NT_ARRAY_SIZE(journal_cmd__subs); i++) {
        if (strcmp(argv[1], journal_cmd__subs[i].name) == 0) {
            rc = journal_cmd__subs[i].run(&cfg, argc - 1, argv + 1);
        }
    }
    if (rc < 0) {
        if (argc > 1) {
            fprintf(stderr, "needletrace: journal: unknown subcommand \"%s\"\n", argv[1]);
        } else {
            fprintf(stderr, "needletrace: journal: missing subcommand\n");
        }
        fputs(JOURNAL_CMD__SYNOPSIS, stderr);
        rc = 2;
    }
    nt_config_close(&cfg);
    return rc;
}
