#!/usr/bin/env python3
"""The simulator's comparison table: predictive vs reactive vs oracle vs off
on seeds 1-5, then the scale run (1,000 nodes x 100,000 partitions x 1 day).

    python3 integration-tests/bench/sim_table.py            # builds release first
    SKIP_BUILD=1 NODES=100 PARTITIONS=10000 SEEDS=1,2,3,4,5 python3 integration-tests/bench/sim_table.py
    SCALE=0 ...                                              # skip the scale run

Prints a Markdown table (per seed and total) and the ratios the issue asks
for: predictive/reactive overload node-seconds (target <= 0.2), bytes moved
(<= 1.25x), predictive/oracle overload (<= 1.5x).
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "shardcast")
TRACES = os.environ.get("TRACES", os.path.join(ROOT, "..", "shared", "traces"))
NODES = int(os.environ.get("NODES", "100"))
PARTS = int(os.environ.get("PARTITIONS", "10000"))
DAYS = os.environ.get("DAYS", "1")
SEEDS = [int(s) for s in os.environ.get("SEEDS", "1,2,3,4,5").split(",")]
POLICIES = ["predictive", "reactive", "oracle", "off"]


def simulate(policy, seed, nodes=NODES, parts=PARTS):
    out = subprocess.run(
        [BIN, "simulate", "--traces", TRACES, "--nodes", str(nodes), "--partitions", str(parts),
         "--policy", policy, "--seed", str(seed), "--days", DAYS, "--json"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    if not os.environ.get("SKIP_BUILD"):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    rows = {}
    for seed in SEEDS:
        for p in POLICIES:
            rows[(seed, p)] = simulate(p, seed)
            r = rows[(seed, p)]
            print(f"seed {seed} {p:10s} overload {r['overload_node_seconds']:>8.0f} node-s  "
                  f"slo {r['slo_violations']:>10d}  moves {r['migrations']['moves']:>5d} "
                  f"splits {r['migrations']['splits']:>4d} merges {r['migrations']['merges']:>4d}  "
                  f"{r['bytes_moved'] / 1e9:8.1f} GB  {r['wall_seconds']:.1f} s", file=sys.stderr)
    print(f"\n{NODES} nodes x {PARTS} partitions x {DAYS} day(s), mean utilization 0.6, threshold 0.8\n")
    print("| seed | policy | overload node-s | requests over SLO | moves | splits | merges | GB moved |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    total = {p: {"o": 0.0, "s": 0, "b": 0, "m": 0, "sp": 0, "me": 0} for p in POLICIES}
    for seed in SEEDS:
        for p in POLICIES:
            r = rows[(seed, p)]
            t = total[p]
            t["o"] += r["overload_node_seconds"]
            t["s"] += r["slo_violations"]
            t["b"] += r["bytes_moved"]
            t["m"] += r["migrations"]["moves"]
            t["sp"] += r["migrations"]["splits"]
            t["me"] += r["migrations"]["merges"]
            print(f"| {seed} | {p} | {r['overload_node_seconds']:.0f} | {r['slo_violations']:,} | "
                  f"{r['migrations']['moves']} | {r['migrations']['splits']} | {r['migrations']['merges']} | "
                  f"{r['bytes_moved'] / 1e9:.1f} |")
    for p in POLICIES:
        t = total[p]
        print(f"| **all** | **{p}** | **{t['o']:.0f}** | **{t['s']:,}** | {t['m']} | {t['sp']} | {t['me']} | "
              f"{t['b'] / 1e9:.1f} |")
    pr, re, orc = total["predictive"], total["reactive"], total["oracle"]
    ratio = lambda a, b: a / b if b else float("nan")
    print(f"\npredictive / reactive overload node-seconds: {ratio(pr['o'], re['o']):.2f}x (target <= 0.2x)")
    print(f"predictive / reactive bytes moved:           {ratio(pr['b'], re['b']):.2f}x (target <= 1.25x)")
    print(f"predictive / oracle overload node-seconds:   {ratio(pr['o'], orc['o']):.2f}x (target <= 1.5x)")
    print(f"predictive / reactive requests over the SLO: {ratio(pr['s'], re['s']):.2f}x")
    if os.environ.get("SCALE", "1") != "0":
        r = simulate("predictive", 1, nodes=1000, parts=100000)
        print(f"\nscale: 1,000 nodes x 100,000 partitions x {DAYS} day(s), predictive: "
              f"{r['wall_seconds']:.1f} s wall (2 days of warm-up included; target < 60 s), "
              f"{r['migrations']['moves']} moves, {r['bytes_moved'] / 1e9:.0f} GB moved")


if __name__ == "__main__":
    main()
