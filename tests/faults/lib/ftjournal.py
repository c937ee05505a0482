#!/usr/bin/env python3
"""ftjournal.py -- reads and damages journal segments from outside the collector (the format of
include/needletrace/journal.h: a 32-byte header, then records u32 body_len | u32 crc32c | body).

    ftjournal.py tail SEGMENT        prints "records N tail_bytes T": whole records, and the
                                     bytes after the last of them (> 0: a torn tail)
    ftjournal.py flip SEGMENT SEED   flips one bit in the payload of a record in the middle
                                     third of the segment (chosen by SEED), with whole records
                                     after it; prints "offset O record R of N"
"""
import random
import struct
import sys

HEADER = 32
FRAME = 8


def records(data):
    """(offset, body_len) of every whole record, and the offset just past the last."""
    out = []
    off = HEADER
    while off + FRAME <= len(data):
        (blen,) = struct.unpack_from("<I", data, off)
        if blen == 0 or off + FRAME + blen > len(data):
            break
        out.append((off, blen))
        off += FRAME + blen
    return out, off


def main():
    cmd, path = sys.argv[1], sys.argv[2]
    with open(path, "rb") as f:
        data = bytearray(f.read())
    recs, end = records(data)
    if cmd == "tail":
        print("records %d tail_bytes %d" % (len(recs), len(data) - end))
        return
    if cmd != "flip" or len(recs) < 3:
        sys.exit("ftjournal: need 'tail' or 'flip' and a segment of 3 records or more")
    rng = random.Random(int(sys.argv[3]))
    n = len(recs)
    i = rng.randrange(n // 3, max(n // 3 + 1, 2 * n // 3))
    off, blen = recs[i]
    # the body: i64 received_us | u16 topic_len | topic | payload: flip a payload bit
    (tlen,) = struct.unpack_from("<H", data, off + FRAME + 8)
    first = off + FRAME + 10 + tlen
    last = off + FRAME + blen - 1
    pos = rng.randrange(first, last + 1) if last >= first else last
    data[pos] ^= 1 << rng.randrange(8)
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(bytes([data[pos]]))
    print("offset %d record %d of %d" % (pos, i, n))


if __name__ == "__main__":
    main()
