#!/usr/bin/env python3
"""check_proof.py PROOF.json [SIGNED_OUT] -- checks a `needletrace audit prove` document with
the standard library only (README, "Checking a proof"):
  each row's leaf = sha256(0x00 || 'e' || record bytes), and the leaf is in its chunk;
  the chunk's hash = sha256(0x01 || its leaves) is listed; the root = sha256(0x02 || the chunks'
  hashes) is the one in the entry's text; sha256(entry text) = entry hash; the entries after it
  follow one by one (same chain, seq + 1, prev = the hash before) and end exactly at the head the
  digest signed for that chain. It proves the rows are sealed, not that the session is complete.
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
d = doc.get("digest")
if d is None:
    fail("no digest")
named = {}
for line in d["signed"].split("\n"):
    if line.startswith("head="):
        c, s_, e, _ = line[5:].split(" ")
        named[c] = (int(s_), e)
rows = 0
if not doc.get("batches"):
    fail("no batch")
for b in doc["batches"]:
    f = b["entry_text"].split("|")
    collector, seq, root = f[1], int(f[2]), f[10]
    if f[0] != "needletrace-ledger-v1" or len(f) != 14:
        fail("not a ledger entry: %r" % b["entry_text"][:60])
    if h(b["entry_text"].encode()).hex() != b["entry_hash"]:
        fail("entry %s#%d: its hash" % (collector, seq))
    chunks = [bytes.fromhex(x) for x in b["chunk_hashes"]]
    if any(len(c) != 32 for c in chunks) or h(b"\x02" + b"".join(chunks)).hex() != root:
        fail("entry %s#%d: the chunks do not give its root" % (collector, seq))
    if not b["rows"]:
        fail("entry %s#%d: no row" % (collector, seq))
    for r in b["rows"]:
        leaf = h(b"\x00e" + bytes.fromhex(r["record"]))
        k = r.get("chunk", -1)
        if leaf.hex() != r["leaf"] or r["leaf"] not in r.get("chunk_leaves", []) or \
                not 0 <= k < len(chunks):
            fail("row %s: its leaf is not in its chunk" % r["ident"])
        if h(b"\x01" + b"".join(bytes.fromhex(x) for x in r["chunk_leaves"])) != chunks[k]:
            fail("row %s: its chunk's hash" % r["ident"])
        rows += 1
    # from this entry, link by link, exactly to the head the digest signed for this chain
    last, at = b["entry_hash"], seq
    for text in b["chain_after"]:
        g = text.split("|")
        if g[1] != collector or int(g[2]) != at + 1 or g[11] != last:
            fail("chain %s: entry #%s does not follow #%d" % (collector, g[2], at))
        last, at = h(text.encode()).hex(), at + 1
    if named.get(collector) != (at, last):
        fail("chain %s: the entries end at #%d, the digest signed %s" % (collector, at,
             named.get(collector)))
if len(sys.argv) > 2:
    open(sys.argv[2], "w").write(d["signed"])
    open(sys.argv[2] + ".sig", "wb").write(bytes.fromhex(d["signature"]))
print("proof holds: %d row(s) in %d batch(es), each chained to the digest of %s"
      % (rows, len(doc["batches"]), d["signed"].split("\n")[2]))
