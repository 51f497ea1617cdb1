#!/usr/bin/env python3
"""Client scaling: shardcast vs PgBouncer as clients grow (issue 12).

Reuses pgbench_compare.py's setup (its own PostgreSQL node with pgbench data,
PgBouncer 1.18 in transaction pooling and shardcast on one node, both with 20
server connections) and runs `pgbench -S` at each client count, -M simple and
-M extended, the two proxies alternating within each round. Prints
throughput, p50/p99 latency, proxy CPU per transaction and proxy resident
memory per client count, the ratios shardcast/PgBouncer measured in the same
run, and fairness: longest/mean latency for both, and shardcast's
longest/mean wait for a pooled connection (from its /metrics histogram).
Before that, resident memory with idle clients connected (startup handshake
only) to proxies started for it, to estimate bytes per idle client. Writes
an SVG plot of throughput and p99 against clients for both (no plotting
library needed).

Environment: COUNTS ("16 100 300 1000 2000"), SECONDS_PER_RUN (10), ROUNDS
(3), MODES ("simple extended"), IDLE ("1000 10000"), SVG (output path,
integration-tests/bench/client_scaling.svg), SCALE (10).
"""

import os
import resource
import socket
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgbench_compare as pc  # noqa: E402

COUNTS = [int(x) for x in os.environ.get("COUNTS", "16 100 300 1000 2000").split()]
MODES = os.environ.get("MODES", "simple extended").split()
IDLE = [int(x) for x in os.environ.get("IDLE", "1000 10000").split()]
SVG = os.environ.get("SVG", os.path.join(pc.ROOT, "integration-tests", "bench", "client_scaling.svg"))


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def idle_clients(port, db, n):
    """Opens n connections that finish the startup handshake and stay idle."""
    socks = []
    body = b"user\0postgres\0database\0" + db.encode() + b"\0\0"
    msg = struct.pack("!ii", 8 + len(body), 196608) + body
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(msg)
        socks.append(s)
    for s in socks:
        buf = b""
        while b"Z\x00\x00\x00\x05" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("a client was closed during startup")
            buf += chunk
    return socks


def pool_waits(pid):
    """shardcast's pool-wait histogram (cumulative buckets, sum, count) from /metrics."""
    if pid not in pc.ADMIN:
        return None
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{pc.ADMIN[pid]}/metrics", timeout=10).read().decode()
    buckets, total, count = {}, 0.0, 0
    for line in text.splitlines():
        if line.startswith("shardcast_backend_pool_wait_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[float(le)] = buckets.get(float(le), 0) + int(float(line.split()[-1]))
        elif line.startswith("shardcast_backend_pool_wait_seconds_sum"):
            total += float(line.split()[-1])
        elif line.startswith("shardcast_backend_pool_wait_seconds_count"):
            count += int(float(line.split()[-1]))
    return buckets, total, count


def wait_spread(before, after):
    """(waits, mean ms, longest ms as the bound of the highest bucket used) between two scrapes."""
    if not before or not after:
        return None
    n = after[2] - before[2]
    if n <= 0:
        return (0, 0.0, 0.0)
    mean = (after[1] - before[1]) / n
    longest = min(le for le, c in after[0].items() if c - before[0].get(le, 0) >= n)
    return (n, mean * 1000, longest * 1000)


def svg(results):
    """Throughput and p99 against clients (log scale), both proxies, both modes."""
    w, h, m = 900, 360, 60
    xs = sorted({c for (_, _, c) in results})
    if not xs:
        return
    import math
    lx = lambda c: m + (math.log(c) - math.log(xs[0])) / max(1e-9, math.log(xs[-1]) - math.log(xs[0])) * (w / 2 - 2 * m)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">']
    colors = {("shardcast", "simple"): "#2a7", ("shardcast", "extended"): "#185",
              ("pgbouncer", "simple"): "#c74", ("pgbouncer", "extended"): "#a52"}
    for panel, key, title in ((0, "tps", "throughput (tps)"), (1, "p99", "p99 latency (ms)")):
        x0 = panel * w / 2
        vals = [r[key] for r in results.values()]
        top = max(vals) * 1.1 if vals else 1
        y = lambda v: h - m - v / top * (h - 2 * m)
        out.append(f'<text x="{x0 + m}" y="20" font-size="13">{title} vs clients</text>')
        out.append(f'<line x1="{x0 + m}" y1="{h - m}" x2="{x0 + w / 2 - m}" y2="{h - m}" stroke="#000"/>')
        out.append(f'<line x1="{x0 + m}" y1="{m}" x2="{x0 + m}" y2="{h - m}" stroke="#000"/>')
        for c in xs:
            out.append(f'<text x="{x0 + lx(c)}" y="{h - m + 15}" text-anchor="middle">{c}</text>')
        for k in range(5):
            v = top * k / 4
            out.append(f'<text x="{x0 + m - 5}" y="{y(v) + 4}" text-anchor="end">{v:.0f}</text>')
        for (target, mode), color in colors.items():
            pts = [(c, results[(target, mode, c)][key]) for c in xs if (target, mode, c) in results]
            if not pts:
                continue
            d = " ".join(f"{x0 + lx(c):.1f},{y(v):.1f}" for c, v in pts)
            dash = ' stroke-dasharray="5,3"' if mode == "extended" else ""
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for i, ((target, mode), color) in enumerate(colors.items()):
            out.append(f'<text x="{x0 + w / 2 - m - 150}" y="{m + 14 * i}" fill="{color}">{target} -M {mode}</text>')
    out.append("</svg>")
    with open(SVG, "w") as f:
        f.write("\n".join(out))


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the proxies inherit it
    if not pc.shutil.which("pgbouncer"):
        pc.subprocess.run(["apt-get", "install", "-y", "-qq", "pgbouncer"], check=True, capture_output=True)
    if not os.environ.get("SKIP_BUILD"):
        pc.subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=pc.ROOT, check=True)
    print("starting a PostgreSQL node and loading pgbench data...", file=sys.stderr)
    node = pc.start_node()
    limit = max(IDLE + COUNTS) + 100

    def start():
        return [("pgbouncer",) + pc.start_pgbouncer(node, limit), ("shardcast",) + pc.start_shardcast([node])]

    # Idle clients on processes of their own, stopped afterwards: neither
    # hides them behind memory a busy run left, nor leaves them to the load runs.
    print("idle clients (startup handshake done, then silent): resident memory of the proxy process")
    for name, port, pid in start() if IDLE else []:
        base = rss_kb(pid)
        for n in IDLE:
            socks = idle_clients(port, "app", n)
            time.sleep(1)
            grown = rss_kb(pid)
            print(f"  {name:10} {n:6} idle clients: {grown / 1024:.0f} MB ({(grown - base) * 1024 / n:.0f} bytes per client over {base / 1024:.0f} MB before)")
            for s in socks:
                s.close()
            time.sleep(1)
        os.kill(pid, pc.signal.SIGTERM)
    targets = start()
    results = {}
    for mode in MODES:
        for c in COUNTS:
            for r in range(pc.ROUNDS):
                order = targets if r % 2 == 0 else list(reversed(targets))
                for name, port, pid in order:
                    pc.CLIENTS, pc.THREADS = c, 2
                    p0, w0 = pc.proc_cpu(pid), pool_waits(pid)
                    tps, txs, lat = pc.pgbench(port, "app", mode)
                    p1, w1 = pc.proc_cpu(pid), pool_waits(pid)
                    res = results.setdefault((name, mode, c), {"tps": [], "lat": [], "cpu": [], "rss": [], "wait": []})
                    if wait_spread(w0, w1):
                        res["wait"].append(wait_spread(w0, w1))
                    res["tps"].append(tps)
                    res["lat"].extend(lat)
                    res["cpu"].append((p1 - p0) / txs * 1e6)
                    res["rss"].append(rss_kb(pid))
                    print(f"  {mode:8} {c:5} clients round {r + 1} {name:10} {tps:9.0f} tps", file=sys.stderr)
    summary = {}
    print(f"\npgbench -S, {pc.SECS}s x {pc.ROUNDS} alternating rounds, 2 pgbench threads, 20 server connections, "
          f"{os.cpu_count()} cores shared by everything\n")
    print("| mode | clients | shardcast tps | PgBouncer tps | ratio | shardcast p50/p99 ms | PgBouncer p50/p99 ms "
          "| proxy CPU µs/tx (sc / pgb) | RSS MB (sc / pgb) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode in MODES:
        for c in COUNTS:
            s, b = results[("shardcast", mode, c)], results[("pgbouncer", mode, c)]
            st, bt = statistics.median(s["tps"]), statistics.median(b["tps"])
            for name, res in (("shardcast", s), ("pgbouncer", b)):
                summary[(name, mode, c)] = {"tps": statistics.median(res["tps"]), "p99": pc.pct(res["lat"], 0.99)}
            print(f"| {mode} | {c} | {st:.0f} | {bt:.0f} | {st / bt:.2f}x "
                  f"| {pc.pct(s['lat'], 0.5):.2f} / {pc.pct(s['lat'], 0.99):.2f} "
                  f"| {pc.pct(b['lat'], 0.5):.2f} / {pc.pct(b['lat'], 0.99):.2f} "
                  f"| {statistics.median(s['cpu']):.1f} / {statistics.median(b['cpu']):.1f} "
                  f"| {max(s['rss']) / 1024:.0f} / {max(b['rss']) / 1024:.0f} |")
    print("\nFairness: longest / mean latency as pgbench saw it (both), and shardcast's longest / mean wait "
          "for a pooled connection (its /metrics histogram; longest = upper bound of the highest bucket used, "
          "buckets 1.25x apart)\n")
    print("| mode | clients | latency max/mean shardcast | latency max/mean PgBouncer | shardcast waits | mean wait ms | longest wait ms | longest/mean |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode in MODES:
        for c in COUNTS:
            s, b = results[("shardcast", mode, c)], results[("pgbouncer", mode, c)]
            spread = lambda lat: max(lat) / statistics.mean(lat) if lat else float("nan")
            waits = [w for w in s["wait"] if w[0] > 0]
            n = sum(w[0] for w in waits)
            mean = sum(w[0] * w[1] for w in waits) / n if n else 0.0
            longest = max((w[2] for w in waits), default=0.0)
            print(f"| {mode} | {c} | {spread(s['lat']):.1f} | {spread(b['lat']):.1f} | {n} | {mean:.2f} | {longest:.2f} "
                  f"| {longest / mean if mean else float('nan'):.1f} |")
    svg(summary)
    print(f"\nplot: {os.path.relpath(SVG, pc.ROOT)}")


if __name__ == "__main__":
    pc.signal.signal(pc.signal.SIGTERM, lambda *a: (pc.cleanup(), sys.exit(1)))
    try:
        main()
    finally:
        pc.cleanup()
