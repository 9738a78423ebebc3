#!/usr/bin/env python3
"""Markdown summary of one scale-out run directory (BENCH_RESULTS of bench/run.sh,
bench/mints.sh and bench/otp_latency.sh run with the same BENCH_STORE/BENCH_NODES).

    scaleout_report.py DIR

Reads what is there: throughput.tsv and store-cpu.tsv (run.sh), counts/
inbound-counts.json (run.sh's count phase), mints.jsonl and mint-counts.json
(mints.sh), otp-latency.json (otp_latency.sh), meta.tsv. Prints medians of the
timed runs, ratios against Postfix (and, with two nodes, against the one-node
figure measured in the same run through the same HAProxy), CPU per message,
and the counted round trips and S3 requests per unit. Writes nothing else.
"""

import json
import os
import statistics
import sys
from collections import defaultdict


def load_tsv(path, width):
    rows = []
    if not os.path.exists(path):
        return rows
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if len(f) >= width:
            rows.append(f)
    return rows


def median_run(runs):
    """The run with the median rate (odd counts: the middle one)."""
    runs = sorted(runs, key=lambda r: r["rate"])
    return runs[len(runs) // 2]


def main(d):
    meta = dict(r[:2] for r in load_tsv(os.path.join(d, "meta.tsv"), 2))
    out = []
    tp = defaultdict(list)
    for f in load_tsv(os.path.join(d, "throughput.tsv"), 6):
        target, mode, run, count, secs, ok = f[:6]
        cpu = f[6] if len(f) > 6 and f[6] else None
        if ok != "1":
            continue
        tp[(target, mode)].append({"run": run, "rate": int(count) / float(secs), "count": int(count),
                                   "cpu": float(cpu) if cpu else None})
    scpu = {}
    num = lambda x: float(x) if x else None
    for f in load_tsv(os.path.join(d, "store-cpu.tsv"), 6):
        scpu[(f[0], f[1], f[2])] = (num(f[3]), num(f[4]), num(f[5]))
    if tp:
        analyze = {"1": "; ANALYZE after each warm-up", "0": "; no ANALYZE (autovacuum is off on this server)"}.get(meta.get("pg_analyze"), "")
        out.append(f"Store `{meta.get('store', '?')}`, {meta.get('nodes', '?')} node(s){analyze}; load {meta.get('load', '?')}; "
                   f"{meta.get('messages', '?')} messages × {meta.get('repeats', '?')} runs per server and mode, "
                   f"{meta.get('sessions', '?')} sessions, {meta.get('size', '?')} bytes.\n")
        out.append("| mode | target | msg/s (median) | every run | / Postfix | server CPU µs/msg | PostgreSQL CPU µs/msg | s3s-fs CPU µs/msg | HAProxy CPU µs/msg |")
        out.append("|---|---|---:|---|---:|---:|---:|---:|---:|")
        for mode in ("per-connection", "persistent"):
            pf = tp.get(("postfix", mode))
            pf_rate = median_run(pf)["rate"] if pf else None
            for target in ("postfix", "agentkeys-1", "agentkeys"):
                runs = tp.get((target, mode))
                if not runs:
                    continue
                m = median_run(runs)
                every = ", ".join(f"{r['rate']:.0f}" for r in sorted(runs, key=lambda r: r["run"]))
                ratio = f"{m['rate'] / pf_rate:.2f}" if pf_rate and target != "postfix" else "–"
                cpu = f"{m['cpu'] * 1e6 / m['count']:.0f}" if m["cpu"] is not None else "–"
                pg, s3, h = scpu.get((target, mode, m["run"]), (None, None, None))
                per = lambda x: f"{x * 1e6 / m['count']:.0f}" if x is not None else "–"
                st = f"{per(pg)} | {per(s3)}"
                hp = per(h)
                name = {"postfix": "Postfix", "agentkeys-1": "AgentKeys, HAProxy → node A only",
                        "agentkeys": "AgentKeys" + (", HAProxy → both nodes" if meta.get("nodes") == "2" else "")}[target]
                out.append(f"| {mode} | {name} | {m['rate']:.0f} | {every} | {ratio} | {cpu} | {st} | {hp} |")
            one, two = tp.get(("agentkeys-1", mode)), tp.get(("agentkeys", mode))
            if one and two:
                out.append(f"| {mode} | two nodes / one node | {median_run(two)['rate'] / median_run(one)['rate']:.2f} | | | | | | |")
        out.append("")
        if meta.get("accounting"):
            out.append(f"Accounting: {meta['accounting']}.\n")
        waits = defaultdict(lambda: defaultdict(int))
        import glob
        for f in glob.glob(os.path.join(d, "pg-waits-*.txt")):
            name = os.path.basename(f)[len("pg-waits-"):-len(".txt")]
            target_mode = name.rsplit("-", 1)[0]
            for line in open(f):
                line = line.strip()
                if line:
                    waits[target_mode][line] += 1
        if waits:
            out.append("PostgreSQL backends of our database that were not idle, sampled every 0.2 s during the timed runs "
                       "(`pg_stat_activity`; share of samples, top 6):\n")
            for tm in sorted(waits):
                total = sum(waits[tm].values())
                top = sorted(waits[tm].items(), key=lambda kv: -kv[1])[:6]
                out.append(f"- {tm} ({total} samples): " + ", ".join(f"`{k}` {100 * v / total:.0f} %" for k, v in top))
            out.append("")
    for name, label in (("counts/inbound-counts.json", "accepted message"), ("mint-counts.json", "mint")):
        p = os.path.join(d, name)
        if not os.path.exists(p):
            continue
        c = json.load(open(p))
        idle = c["idle"]
        out.append(f"Counted per {label} (counting proxies, untimed node; idle rate over {idle['seconds']:g} s subtracted):\n")
        out.append("| phase | units | PG round trips | PG executes | S3 requests | S3 PUT | S3 GET | S3 HEAD | S3 DELETE | S3 LIST |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        ic = idle["counts"]
        out.append(f"| idle, per second | – | {ic.get('pg_round_trips', 0) / idle['seconds']:.1f} | "
                   f"{ic.get('pg_executes', 0) / idle['seconds']:.1f} | {ic.get('s3_requests', 0) / idle['seconds']:.1f} | "
                   f"{ic.get('s3_PUT', 0) / idle['seconds']:.1f} | {ic.get('s3_GET', 0) / idle['seconds']:.1f} | "
                   f"{ic.get('s3_HEAD', 0) / idle['seconds']:.1f} | {ic.get('s3_DELETE', 0) / idle['seconds']:.1f} | "
                   f"{ic.get('s3_LIST', 0) / idle['seconds']:.1f} |")
        for phase, v in c.items():
            if phase == "idle":
                continue
            u = v["per_unit"]
            out.append(f"| {phase} | {v['units']} | {u['pg_round_trips']:.2f} | {u['pg_executes']:.2f} | {u['s3_requests']:.2f} | "
                       f"{u['s3_PUT']:.2f} | {u['s3_GET']:.2f} | {u['s3_HEAD']:.2f} | {u['s3_DELETE']:.2f} | {u['s3_LIST']:.2f} |")
        out.append("")
        out.append("<details><summary>Statements executed (count phase, all phases)</summary>\n")
        tot = defaultdict(int)
        for phase, v in c.items():
            for s, n in v.get("statements", {}).items():
                tot[(phase, s)] += n
        for (phase, s), n in sorted(tot.items(), key=lambda kv: (kv[0][0], -kv[1])):
            out.append(f"- {phase}: {n} × `{s[:150]}`")
        out.append("\n</details>\n")
    p = os.path.join(d, "mints.md")
    if os.path.exists(p):
        out.append(open(p).read())
    p = os.path.join(d, "otp-latency.json")
    if os.path.exists(p):
        o = json.load(open(p))
        out.append("| measurement | n | p50 | p90 | p99 | max |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for k, name in (("extract_otp", "`250` → `extract_otp` returns the code"), ("peer_bare_sse_event", "peer: `250` → bare SSE event")):
            s = o[k]
            out.append(f"| {name} | {s['n']} | {s['p50_ms']:.2f} ms | {s['p90_ms']:.2f} ms | {s['p99_ms']:.2f} ms | {s['max_ms']:.2f} ms |")
        out.append(f"\nWrong codes: {o['wrong_codes']}; {o['elapsed_s']:.1f} s.\n")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
