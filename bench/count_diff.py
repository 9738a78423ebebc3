#!/usr/bin/env python3
"""Turns snapshots of bench/wirecount.py's counters into per-unit counts.

    count_diff.py IDLE_SECONDS SNAP0 SNAP1 [LABEL:UNITS:SECONDS SNAP]...
    count_diff.py --brief FILE

SNAP0 → SNAP1 is an idle window of IDLE_SECONDS (what the node does on its
own: listener, queue runner, sweeps). Each LABEL phase is the difference from
the snapshot before it, over UNITS units of work (messages, mints) that took
SECONDS. "per_unit" is the phase's count minus the idle rate times its
duration, divided by UNITS: what one unit of work costs. Prints JSON.
"""

import json
import sys

KEYS = ("pg_round_trips", "pg_executes", "pg_simple_queries", "s3_requests", "s3_PUT", "s3_GET", "s3_HEAD",
        "s3_DELETE", "s3_LIST", "pg_connections", "http_connections")


def diff(a, b):
    out = {}
    for part in ("counts", "statements"):
        out[part] = {k: v - a[part].get(k, 0) for k, v in b[part].items() if v - a[part].get(k, 0)}
    return out


def main(argv):
    if argv[0] == "--brief":
        d = json.load(open(argv[1]))
        parts = []
        for label, phase in d.items():
            if label == "idle":
                c = phase["counts"]
                parts.append(f"idle {phase['seconds']:g}s: {c.get('pg_round_trips', 0)} PG round trips, "
                             f"{c.get('s3_requests', 0)} S3 requests")
            else:
                u = phase["per_unit"]
                parts.append(f"{label}: {u.get('pg_round_trips', 0):.2f} PG round trips and "
                             f"{u.get('s3_requests', 0):.2f} S3 requests per unit")
        print("; ".join(parts))
        return
    idle_s = float(argv[0])
    snaps = [json.loads(argv[1]), json.loads(argv[2])]
    idle = diff(snaps[0], snaps[1])
    out = {"idle": {"seconds": idle_s, **idle}}
    prev = snaps[1]
    rest = argv[3:]
    for i in range(0, len(rest), 2):
        label, units, secs = rest[i].split(":")
        units, secs = int(units), float(secs)
        snap = json.loads(rest[i + 1])
        d = diff(prev, snap)
        prev = snap
        per = {}
        for k in KEYS:
            gross = d["counts"].get(k, 0)
            net = gross - idle["counts"].get(k, 0) / idle_s * secs if idle_s else gross
            per[k] = round(net / units, 3) if units else None
        out[label] = {"units": units, "seconds": secs, "per_unit": per, **d}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
