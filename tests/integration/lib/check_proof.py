#!/usr/bin/env python3
"""check_proof.py PROOF.json [SIGNED_OUT] -- checks a `needletrace audit prove` document with
the standard library only (README, "Checking a proof"):
  each row's leaf = sha256(0x00 || 'e' || record bytes), and the leaf is in its chunk;
  the chunk's hash = sha256(0x01 || its leaves) is listed; the root = sha256(0x02 || the chunks'
  hashes) is the one in the entry's text; sha256(entry text) = entry hash; each later entry links
  to the one before (its prev field); the digest names the chain's head at or after the last one.
Writes the digest's signed text to SIGNED_OUT (for an Ed25519 check with openssl). Prints what it
checked; exit 0 when everything holds, 1 with the first failure."""
import hashlib
import json
import sys


def h(b):
    return hashlib.sha256(b).digest()


def fail(msg):
    print("PROOF FAILS:", msg)
    sys.exit(1)


doc = json.load(open(sys.argv[1]))
rows = 0
heads = {}
for b in doc["batches"]:
    f = b["entry_text"].split("|")
    collector, seq, root, prev = f[1], int(f[2]), f[10], f[11]
    if h(b["entry_text"].encode()).hex() != b["entry_hash"]:
        fail("entry %s#%d: its hash" % (collector, seq))
    chunks = [bytes.fromhex(x) for x in b["chunk_hashes"]]
    if h(b"\x02" + b"".join(chunks)).hex() != root:
        fail("entry %s#%d: the chunks do not give its root" % (collector, seq))
    for r in b["rows"]:
        leaf = h(b"\x00e" + bytes.fromhex(r["record"]))
        if leaf.hex() != r["leaf"] or r["leaf"] not in r["chunk_leaves"]:
            fail("row %s: its leaf is not in its chunk" % r["ident"])
        if h(b"\x01" + b"".join(bytes.fromhex(x) for x in r["chunk_leaves"])) != chunks[r["chunk"]]:
            fail("row %s: its chunk's hash" % r["ident"])
        rows += 1
    last = b["entry_hash"]
    for text in b["chain_after"]:
        g = text.split("|")
        if g[11] != last:
            fail("chain %s: entry #%s does not link to the one before" % (collector, g[2]))
        last = h(text.encode()).hex()
        seq = int(g[2])
    heads[collector] = (seq, last)
d = doc["digest"]
if d is None:
    fail("no digest")
named = {}
for line in d["signed"].split("\n"):
    if line.startswith("head="):
        c, s, e, _ = line[5:].split(" ")
        named[c] = (int(s), e)
for c, (seq, last) in heads.items():
    if c not in named or named[c][0] < seq:
        fail("the digest does not name chain %s at or after #%d" % (c, seq))
    if named[c][0] == seq and named[c][1] != last:
        fail("the digest's head of %s differs from the chain" % c)
if len(sys.argv) > 2:
    open(sys.argv[2], "w").write(d["signed"])
    open(sys.argv[2] + ".sig", "wb").write(bytes.fromhex(d["signature"]))
print("proof holds: %d row(s) in %d batch(es), chained to the digest of %s"
      % (rows, len(doc["batches"]), d["signed"].split("\n")[2]))
