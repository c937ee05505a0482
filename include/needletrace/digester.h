/* digester.h -- the collector's periodic signed digests of the ledger's chain heads (digest.h):
 * every audit.digest_interval_s (the first 5 s after the start), when a chain moved, read on
 * libuv's thread pool with a connection of its own, signed with audit.signing_key_file, written
 * to audit.digest_dir and published retained (QoS 1) on audit.digest_topic/<collector.id>. A
 * failure is logged and tried again at the next interval; ingest never waits for a digest. */
#ifndef NEEDLETRACE_DIGESTER_H
#define NEEDLETRACE_DIGESTER_H

#include <uv.h>

#include "needletrace/config.h"
#include "needletrace/mqttsrc.h"

typedef struct nt_digester_s nt_digester_t;

/* Starts the digests when audit.signing_key_file is set (*out NULL otherwise). cfg and src must
 * outlive it. 0 or NT_ENOMEM. */
int nt_digester_start(uv_loop_t *loop, const nt_config_t *cfg, nt_mqttsrc_t *src,
                      nt_digester_t **out);
/* Stops it (a digest being made finishes first, unpublished); NULL is fine. */
void nt_digester_close(nt_digester_t *d);

#endif
