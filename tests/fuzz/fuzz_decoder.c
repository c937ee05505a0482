/* fuzz_decoder.c -- libFuzzer target for nt_decoder_decode(): no input may crash it, every detail
 * is a valid UTF-8 line, and an accepted message re-packs into one that is accepted again.
 *
 * Input: byte 0 is the topic length L, the next L bytes the topic, the rest the payload.
 * L = 255 means the fixed topic clinics/c1/handpieces/SN1/telemetry and the payload starts
 * at byte 1, so the fuzzer can reach validation without guessing a topic. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "needletrace/arena.h"
#include "needletrace/decoder.h"
#include "needletrace/ident.h"

#define FIXED_TOPIC "clinics/c1/handpieces/SN1/telemetry"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static nt_arena_t arena;
static int arena_ready;

/* A detail must be NUL-terminated within its buffer, valid UTF-8 and one line. */
static void check_detail(nt_reason_t r, const char *detail, size_t cap)
{
    const char *end = memchr(detail, '\0', cap);
    if (end == NULL) {
        abort();
    }
    size_t len = (size_t)(end - detail);
    if (!nt_ident_utf8_valid(detail, len) || memchr(detail, '\n', len) != NULL) {
        abort();
    }
    if ((r == NT_REASON_OK) != (len == 0)) {
        abort();
    }
    if (r < NT_REASON_OK || r >= NT_REASON__COUNT) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    if (!arena_ready) {
        nt_arena_init(&arena, 256 * 1024, 16u << 20);
        arena_ready = 1;
    }
    nt_arena_reset(&arena);

    /* Copy topic and payload into buffers of their exact size so that ASan sees any
     * read past either. */
    size_t tlen;
    const uint8_t *payload;
    char *topic;
    if (data[0] == 255) {
        tlen = strlen(FIXED_TOPIC);
        topic = malloc(tlen);
        if (topic == NULL) {
            return 0;
        }
        memcpy(topic, FIXED_TOPIC, tlen);
        payload = data + 1;
    } else {
        tlen = data[0];
        if (tlen > size - 1) {
            tlen = size - 1;
        }
        topic = malloc(tlen ? tlen : 1);
        if (topic == NULL) {
            return 0;
        }
        memcpy(topic, data + 1, tlen);
        payload = data + 1 + tlen;
    }
    size_t plen = (size_t)(data + size - payload);
    uint8_t *pbuf = malloc(plen ? plen : 1);
    if (pbuf == NULL) {
        free(topic);
        return 0;
    }
    memcpy(pbuf, payload, plen);

    char detail[256];
    nt_message_t out;
    nt_reason_t r =
        nt_decoder_decode(&arena, topic, tlen, pbuf, plen, &out, detail, sizeof(detail));
    check_detail(r, detail, sizeof(detail));
    (void)nt_reason_name(r);

    if (r == NT_REASON_OK) {
        /* Round trip: what was accepted, packed again, is accepted again, and packing
         * that gives the same bytes. */
        for (size_t i = 0; i < out.msg->n_events; i++) {
            if (nt_decoder_event_kind(out.msg->events[i])[0] == '\0') {
                abort();
            }
        }
        size_t len1 = protobuf_c_message_get_packed_size(&out.msg->base);
        /* Re-encoding may legitimately grow a message (protobuf-c writes a negative int32
         * as 10 bytes even if it arrived as 5), so only sizes within the limit are checked. */
        if (len1 <= NT_MAX_PAYLOAD_BYTES) {
            uint8_t *buf1 = malloc(len1 ? len1 : 1);
            if (buf1 == NULL) {
                abort();
            }
            if (protobuf_c_message_pack(&out.msg->base, buf1) != len1) {
                abort();
            }
            nt_message_t again;
            nt_reason_t r2 =
                nt_decoder_decode(&arena, topic, tlen, buf1, len1, &again, detail, sizeof(detail));
            if (r2 != NT_REASON_OK || again.msg->n_events != out.msg->n_events ||
                strcmp(again.topic.device_serial, out.topic.device_serial) != 0 ||
                strcmp(again.topic.clinic_id, out.topic.clinic_id) != 0) {
                abort();
            }
            size_t len2 = protobuf_c_message_get_packed_size(&again.msg->base);
            uint8_t *buf2 = malloc(len2 ? len2 : 1);
            if (buf2 == NULL) {
                abort();
            }
            if (protobuf_c_message_pack(&again.msg->base, buf2) != len2 || len2 != len1 ||
                memcmp(buf1, buf2, len1) != 0) {
                abort();
            }
            free(buf2);
            free(buf1);
        }
    }
    free(pbuf);
    free(topic);
    return 0;
}
