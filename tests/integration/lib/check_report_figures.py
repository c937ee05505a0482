#!/usr/bin/env python3
"""check_report_figures.py REPORT.json DIR -- the figures of an audit report against those the
test computed itself, in SQL over needletrace.events with each clinic's local dates (files in DIR,
'|'-separated, written by test_audit_report.sh's figures_expected). The report gathers them from
the rows its verification reads; this is the plain definition. Prints each difference; exit 1
when there is one."""
import json
import sys


def rows(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("|") for line in f if line.strip()]


def main():
    report = json.load(open(sys.argv[1], encoding="utf-8"))
    d = sys.argv[2]
    bad = []

    s = report["summary"][0]
    want = rows(f"{d}/summary.txt")[0]
    got = [str(s[k]) for k in ("events", "pens", "clinics", "sessions", "cartridges_used")]
    if got != want:
        bad.append(f"summary (events pens clinics sessions cartridges): report {got}, SQL {want}")

    want = {(r[0], r[1]): r[2:] for r in rows(f"{d}/pens.txt")}
    got = {(p["clinic_id"], p["pen"]): [str(p["events"]), str(p["boots"]), p["clock_ahead"],
                                        p["clock_behind"]] for p in report["pens"]}
    for k in sorted(set(want) | set(got)):
        if want.get(k) != got.get(k):
            bad.append(f"pen {k}: report {got.get(k)}, SQL {want.get(k)}")

    want = {(r[0], r[1], r[2]): r[3] for r in rows(f"{d}/depth.txt")}
    got = {}
    for r in report["depth"]:
        k = (r["area"], str(r["limit_um"]), "" if r["bucket_um"] is None else str(r["bucket_um"]))
        got[k] = str(int(got.get(k, "0")) + r["samples"])
    for k in sorted(set(want) | set(got)):
        if want.get(k) != got.get(k):
            bad.append(f"depth {k}: report {got.get(k)}, SQL {want.get(k)}")

    want = {(r[0], r[1], r[2]): r[3] for r in rows(f"{d}/sessions.txt")}
    for r in report["sessions"]:
        k = (r["clinic_id"], r["pen"], r["session_id"])
        if k not in want:
            bad.append(f"session {k}: in the report, no event of it in the period")
        elif r["depth_used_vs_limit"] != want[k]:
            bad.append(f"session {k}: report {r['depth_used_vs_limit']!r}, SQL {want[k]!r}")
    started = {(r[0], r[1], r[2]) for r in rows(f"{d}/started.txt")}
    missing = started - {(r["clinic_id"], r["pen"], r["session_id"]) for r in report["sessions"]}
    if missing:
        bad.append(f"{len(missing)} session(s) started in the period not in the report, e.g. "
                   f"{sorted(missing)[0]}")

    listed = [tuple(r) for r in rows(f"{d}/listed.txt")]
    got = [(r["clinic_id"], r["pen"], r["session_id"]) for r in report["sessions"]]
    if got != listed:
        first = next((i for i, (x, y) in enumerate(zip(got, listed)) if x != y),
                     min(len(got), len(listed)))
        bad.append(f"sessions listed: report {len(got)}, SQL {len(listed)}; first difference at "
                   f"{first}: report {got[first:first + 1]}, SQL {listed[first:first + 1]}")

    for b in bad[:20]:
        print(b)
    if len(bad) > 20:
        print(f"... and {len(bad) - 20} more")
    print(f"{len(report['pens'])} pens, {len(report['depth'])} depth rows, "
          f"{len(report['sessions'])} sessions compared: {len(bad)} difference(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
