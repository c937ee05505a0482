#!/usr/bin/env python3
"""ftdump.py -- what a simulation published, from its --dump file, one line per publish:

    ftdump.py CHUNK DUMP_FILE

prints "CHUNK<TAB>topic<TAB>\\x<sha256 of the payload in hex>" for every publish in the file
(u32 topic length, topic, u32 payload length, payload, big endian), ready for COPY ... FROM
STDIN. The fault suite matches these lines with raw_messages and quarantine (payload_sha256).
"""
import hashlib
import struct
import sys


def main():
    chunk, path = sys.argv[1], sys.argv[2]
    out = sys.stdout
    with open(path, "rb") as f:
        data = f.read()
    off = 0
    while off < len(data):
        (tlen,) = struct.unpack_from(">I", data, off)
        topic = data[off + 4:off + 4 + tlen].decode("utf-8", "backslashreplace")
        off += 4 + tlen
        (plen,) = struct.unpack_from(">I", data, off)
        payload = data[off + 4:off + 4 + plen]
        off += 4 + plen
        topic = topic.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        out.write("%s\t%s\t\\\\x%s\n" % (chunk, topic, hashlib.sha256(payload).hexdigest()))


if __name__ == "__main__":
    main()
