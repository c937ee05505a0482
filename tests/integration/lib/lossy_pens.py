#!/usr/bin/env python3
"""lossy_pens.py -- publishes "lossy" pens next to one healthy pen, for test_lossy_pens.sh and
tests/bench/lossy.sh (issue 7, items 8 and 9).

Each lossy pen (one boot) sends seqs 1..--before except --missing (that one seq is never sent:
the pen leaves one hole), in messages of --events-per-message events, all pens first; then,
for --seconds, the healthy pen publishes one 1-event message every 1/--healthy-rate s (seqs
1, 2, 3... no gaps) while the lossy pens keep sending --trickle more events each, spread over
the same time. Every event is a device_status (no rule looks at it) whose device time is the
wall clock when it is published, so events.device_time is its publish time. With --fill, it
only sends each lossy pen's missing seq; --phase first/then splits the run after the first part
(so that a caller can wait for it to commit).

The messages are encoded here by hand (the protobuf wire format of
proto/needletrace/v1/telemetry.proto: varints and length-delimited fields), independently of
the collector's code. QoS 1; exits after the broker acknowledged every publish. Prints one JSON
object: what it published, per kind of pen.
"""
import argparse
import json
import sys
import time

import paho.mqtt.client as mqtt


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, n):
    return varint(num << 3) + varint(n)


def field_bytes(num, b):
    return varint((num << 3) | 2) + varint(len(b)) + b


def event(seq, time_ms):
    status = field_varint(1, 80) + field_varint(2, 310) + field_varint(3, 1000 + seq)
    return field_varint(1, seq) + field_varint(2, time_ms) + field_bytes(16, status)


def telemetry(serial, boot_id, seqs):
    now_ms = int(time.time() * 1000)
    msg = (field_bytes(1, serial.encode()) + field_bytes(2, b"NP-300") +
           field_bytes(3, b"2.4.1") + field_varint(4, boot_id))
    for s in seqs:
        msg += field_bytes(5, event(s, now_ms))
    return msg


def chunks(seqs, n):
    for i in range(0, len(seqs), n):
        yield seqs[i:i + n]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--prefix", default="lossy",
                    help="clinic ids PREFIX-<n> (100 pens each) and PREFIX-healthy; serials "
                         "PREFIX-LP-<n> and PREFIX-HP")
    ap.add_argument("--pens", type=int, default=1000, help="lossy pens")
    ap.add_argument("--before", type=int, default=50, help="last seq of the first part")
    ap.add_argument("--missing", type=int, default=2, help="the seq each lossy pen never sends")
    ap.add_argument("--trickle", type=int, default=5, help="events per lossy pen afterwards")
    ap.add_argument("--events-per-message", type=int, default=25)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--healthy-rate", type=float, default=20.0, help="messages per second")
    ap.add_argument("--phase", choices=["both", "first", "then"], default="both",
                    help="first: only the lossy pens' first part; then: only the rest")
    ap.add_argument("--fill", action="store_true",
                    help="only send every lossy pen's missing seq (late), nothing else")
    a = ap.parse_args()

    cli = mqtt.Client(client_id="lossy-pens-%d" % int(time.time() * 1000), clean_session=True)
    cli.max_inflight_messages_set(1000)
    cli.connect(a.host, a.port, keepalive=60)
    cli.loop_start()
    pending = []

    def publish(clinic, serial, boot_id, seqs):
        topic = "clinics/%s/handpieces/%s/telemetry" % (clinic, serial)
        pending.append(cli.publish(topic, telemetry(serial, boot_id, seqs), qos=1))

    pens = [("%s-%d" % (a.prefix, i // 100), "%s-LP-%d" % (a.prefix, i), 1000 + i)
            for i in range(a.pens)]
    if a.fill:
        for clinic, serial, boot_id in pens:
            publish(clinic, serial, boot_id, [a.missing])
        for p in pending:
            p.wait_for_publish()
        json.dump({"lossy_pens": a.pens, "lossy_events": a.pens}, sys.stdout)
        print()
        return
    first = [s for s in range(1, a.before + 1) if s != a.missing]
    for clinic, serial, boot_id in pens if a.phase != "then" else []:
        for part in chunks(first, a.events_per_message):
            publish(clinic, serial, boot_id, part)
    for p in pending:
        p.wait_for_publish()
    pending.clear()
    if a.phase == "first":
        json.dump({"lossy_pens": a.pens, "lossy_events": a.pens * len(first)}, sys.stdout)
        print()
        return

    # The healthy pen, and the lossy pens' trickle spread over the same time.
    ticks = max(1, int(a.seconds * a.healthy_rate))
    trickle = [(pen, s) for s in range(a.before + 1, a.before + a.trickle + 1) for pen in pens]
    per_tick = -(-len(trickle) // ticks) if trickle else 0
    t0 = time.monotonic()
    for i in range(ticks):
        publish("%s-healthy" % a.prefix, "%s-HP" % a.prefix, 7, [i + 1])
        batch, trickle = trickle[:per_tick], trickle[per_tick:]
        for (clinic, serial, boot_id), s in batch:
            publish(clinic, serial, boot_id, [s])
        wait = t0 + (i + 1) / a.healthy_rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    for p in pending:
        p.wait_for_publish()
    cli.loop_stop()
    cli.disconnect()
    json.dump({"lossy_pens": a.pens,
               "lossy_events": a.pens * ((len(first) if a.phase == "both" else 0) + a.trickle),
               "healthy_events": ticks, "missing_seq": a.missing}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
