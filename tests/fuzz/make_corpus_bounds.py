#!/usr/bin/env python3
"""make_corpus_bounds.py -- writes the fuzz corpus files of issue 7 into tests/fuzz/corpus/:
the numeric bounds (largest accepted value and one more) and small hostile messages (empty
events, floods of unknown fields, repeated bodies, tiny strings, nested unknown fields).

Format (fuzz_decoder.c): byte 0 = 255 (fixed topic clinics/c1/handpieces/SN1/telemetry), then
the payload. Hostile files stay within the 8 KiB that smoke.sh gives libFuzzer (-max_len=8192);
the unit tests (test_decoder.c, test_hostile_cost) decode the 256 KiB versions.
Run: python3 tests/fuzz/make_corpus_bounds.py"""
import os

T0 = 1700000000000


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(num, wire, value):
    tag = varint(num << 3 | wire)
    if wire == 0:
        return tag + varint(value)
    return tag + varint(len(value)) + value


def status(battery=80, temp=250, total=1000):
    body = field(1, 0, battery) + field(2, 0, temp & 0xFFFFFFFFFFFFFFFF) + field(3, 0, total)
    return field(16, 2, body)


def event(seq=1, time=T0, body=None):
    return field(1, 0, seq) + field(2, 0, time) + (body if body is not None else status())


def telemetry(events, boot_id=7, extra=b""):
    out = field(1, 2, b"SN1") + field(2, 2, b"NP-9") + field(3, 2, b"1.2.3") + field(4, 0, boot_id)
    for ev in events:
        out += field(5, 2, ev)
    return out + extra


def cartridge_unmounted(motor_ms=1000, needles=36):
    cart = (field(1, 2, b"04006381333931") + field(2, 2, b"LOT42") + field(3, 2, b"CART0001")
            + field(4, 0, 20271231) + field(5, 0, needles) + field(6, 0, 1))
    return field(13, 2, field(1, 2, b"S1") + field(2, 2, cart) + field(3, 0, motor_ms))


def activity(depth=500, rate=100, duration=1000):
    body = (field(1, 2, b"S1") + field(2, 0, depth) + field(3, 0, rate) + field(4, 0, 4)
            + field(5, 0, duration))
    return field(15, 2, body)


CAP = 8000
files = {
    "bound_seq_max": telemetry([event(seq=2**40)]),
    "bound_seq_over": telemetry([event(seq=2**40 + 1)]),
    "bound_seq_2p62": telemetry([event(seq=2**62)]),
    "bound_boot_id_max": telemetry([event()], boot_id=2**53 - 1),
    "bound_boot_id_over": telemetry([event()], boot_id=2**53),
    "bound_motor_total_max": telemetry([event(body=status(total=2**32 - 1))]),
    "bound_motor_total_over": telemetry([event(body=status(total=2**32))]),
    "bound_battery_over": telemetry([event(body=status(battery=101))]),
    "bound_temp_over": telemetry([event(body=status(temp=1501))]),
    "bound_temp_under": telemetry([event(body=status(temp=-401))]),
    "bound_time_over": telemetry([event(time=4102444800000)]),
    "bound_needles_over": telemetry([event(body=cartridge_unmounted(needles=257))]),
    "bound_motor_ms_max": telemetry([event(body=cartridge_unmounted(motor_ms=2**32 - 1))]),
    "bound_duration_over": telemetry([event(body=activity(duration=600001))]),
    "bound_depth_rate_max": telemetry([event(body=activity(depth=5000, rate=1000))]),
    "events_1001": telemetry([event(seq=i + 1, time=T0 + i) for i in range(1001)]),
    "hostile_empty_events": telemetry([b""] * ((CAP - 30) // 2)),
    "hostile_unknown_top": telemetry([event()], extra=b"\x30\x00" * ((CAP - 60) // 2)),
    "hostile_repeated_bodies": telemetry(
        [event(body=b"\x62\x02\x12\x00" * ((CAP - 60) // 4))]),
    "hostile_tiny_strings": telemetry([event()], extra=b"\x12\x01x" * ((CAP - 60) // 3)),
    "hostile_serial_mismatch_many_events": field(1, 2, b"SN2") + b"\x2a\x00" * 1500,
}

# Unknown fields nested in unknown fields (field 6, LEN), as deep as 8 KiB allows.
nested = b""
while len(nested) < CAP - 40:
    nested = field(6, 2, nested)
files["hostile_nested_unknown"] = telemetry([event()], extra=nested)

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
for name, payload in files.items():
    with open(os.path.join(here, name), "wb") as f:
        f.write(b"\xff" + payload)
