#!/usr/bin/env python3
"""make_corpus_journal.py -- writes the seed corpus of fuzz_journal.c into tests/fuzz/corpus_journal/:
a clean segment with a few records, a torn tail, a flipped bit with valid records after it, an
unwritten page after a power cut (a 4096-aligned page of zeros with a valid record after it), two
and three segments (one with a bad record in an older segment), a header written by the input,
a segment that is not contiguous and one of another journal.

Input format (fuzz_journal.c): byte 0 = number of segments - 1; per segment a mode byte, a
2-byte little-endian length and that many bytes (mode 0: records after a header the target
writes; 1: the whole file; 2: header with a wrong start; 3: header with another journal id).
Run: python3 tests/fuzz/make_corpus_journal.py"""
import os
import struct


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def record(us, topic, payload):
    body = struct.pack("<qH", us, len(topic)) + topic + payload
    return struct.pack("<II", len(body), crc32c(body)) + body


def records(first, n):
    out = b""
    for i in range(first, first + n):
        topic = b"clinics/c%d/handpieces/pen-%d/telemetry" % (i % 3, i)
        out += record(1700000000000000 + i * 1000, topic, bytes((i * 7 + k) & 0xFF for k in range(i * 5 % 40)))
    return out


def seg(mode, data):
    return bytes([mode]) + struct.pack("<H", len(data)) + data


def header(start, journal_id=0x6E74667A7A6A726E):
    return b"NTJ1" + struct.pack("<IQQQ", 1, journal_id, start, 0)


def flip(data, at, mask=0x10):
    b = bytearray(data)
    b[at] ^= mask
    return bytes(b)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(here, "corpus_journal")
    os.makedirs(out, exist_ok=True)
    five = records(0, 5)
    first = len(records(0, 1))
    seeds = {
        "clean_one_segment": bytes([0]) + seg(0, five),
        "empty_segment": bytes([0]) + seg(0, b""),
        "torn_tail_partial": bytes([0]) + seg(0, five + records(5, 1)[:-3]),
        "torn_tail_zeros": bytes([0]) + seg(0, five + bytes(40)),
        "flipped_bit_mid": bytes([0]) + seg(0, flip(five, first + 12)),
        # file bytes 32..4095 records (the last one cut by the page), 4096..8191 zeros, then one
        # record: 8182 bytes of input, under the smoke test's -max_len=8192
        "unwritten_page": bytes([0]) + seg(0, records(0, 80)[: 4096 - 32] + bytes(4096)
                                           + record(1, b"", b"")),
        "bad_length_mid": bytes([0]) + seg(0, flip(five, first + 1, 0x01)),
        "two_segments": bytes([1]) + seg(0, records(0, 3)) + seg(0, records(3, 3)),
        "older_bad": bytes([2]) + seg(0, records(0, 3)) + seg(0, flip(records(3, 3), 20))
        + seg(0, records(6, 2)),
        "raw_header": bytes([0]) + seg(1, header(0) + five),
        "not_contiguous": bytes([1]) + seg(0, records(0, 2)) + seg(2, records(2, 2)),
        "other_journal": bytes([1]) + seg(0, records(0, 2)) + seg(3, records(2, 2)),
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
