#!/usr/bin/env python3
"""Bulk load: COPY of N rows straight into one node vs through shardcast
into 1 and 2 nodes (the sharded COPY splits rows by key and feeds every
node in parallel, with two-phase commit at the end).

Starts its own PostgreSQL nodes and shardcast (helpers shared with
pgbench_compare.py), writes one TSV file, then runs psql's `\\copy` against
each target in alternating rounds (tables truncated before each run) and
prints rows/s (median of rounds) and the ratios measured in this same run.
Target (issue 8): shardcast into 2 nodes >= 1.5x the direct single node.

Environment: ROWS (1000000), ROUNDS (3).
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import pgbench_compare as pc  # noqa: E402

ROWS = int(os.environ.get("ROWS", "1000000"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SCHEMA = ("CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, qty integer NOT NULL, "
          "note text); CREATE INDEX ON items (hashint8extended(id, 0));")


def start_node():
    d = tempfile.mkdtemp(prefix="sc-bench-node-")
    pc.cleanup_dirs.append(d)
    os.chmod(d, 0o777)
    data = os.path.join(d, "data")
    if os.geteuid() == 0:
        pc.run(["chown", "postgres", d])
    pc.run(pc.as_postgres([f"{pc.PGBIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync",
                           "-E", "UTF8", "--locale=C"]))
    port = pc.free_port()
    opts = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={d} -c fsync=off "
            "-c synchronous_commit=off -c max_connections=100 -c shared_buffers=256MB "
            "-c max_prepared_transactions=10 -c max_wal_size=4GB")
    pc.run(pc.as_postgres([f"{pc.PGBIN}/pg_ctl", "-D", data, "-l", os.path.join(d, "log"), "-w", "-o", opts, "start"]))
    pc.procs.append(("pg", data))
    psql(port, "postgres", "CREATE DATABASE bench")
    psql(port, "bench", SCHEMA)
    return port


def psql(port, db, sql):
    return pc.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", db, "-v",
                   "ON_ERROR_STOP=1", "-qAtc", sql]).stdout.strip()


def start_shardcast(node_ports):
    d = tempfile.mkdtemp(prefix="sc-bench-proxy-")
    pc.cleanup_dirs.append(d)
    port, admin = pc.free_port(), pc.free_port()
    cfg = f"""[proxy]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
database = "app"

[[tables]]
name = "items"
shard_key = "id"
key_type = "bigint"
"""
    for i, p in enumerate(node_ports):
        cfg += f'\n[[nodes]]\nname = "n{i}"\nurl = "postgres://postgres@127.0.0.1:{p}/bench"\n'
    path = os.path.join(d, "shardcast.toml")
    with open(path, "w") as f:
        f.write(cfg)
    log = open(os.path.join(d, "log"), "w")
    p = subprocess.Popen([os.path.join(pc.ROOT, "target/release/shardcast"), "run", "--config", path],
                         stdout=log, stderr=log)
    pc.procs.append(("proc", p))
    pc.wait_port(port)
    return port


def timed_copy(port, db, path):
    t = time.perf_counter()
    out = pc.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", db, "-v",
                  "ON_ERROR_STOP=1", "-c", f"\\copy items from '{path}'"]).stdout
    took = time.perf_counter() - t
    if f"COPY {ROWS}" not in out:
        raise RuntimeError(f"unexpected COPY result: {out}")
    return took


def main():
    print("building shardcast (release)...", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=pc.ROOT, check=True)
    d = tempfile.mkdtemp(prefix="sc-bench-data-")
    pc.cleanup_dirs.append(d)
    os.chmod(d, 0o755)
    path = os.path.join(d, "items.tsv")
    with open(path, "w") as f:
        for i in range(1, ROWS + 1):
            f.write(f"{i}\tname-{i % 1000}\t{i % 97}\tsome note text for row {i}\n")
    size_mb = os.path.getsize(path) / 1e6
    print(f"data: {ROWS} rows, {size_mb:.0f} MB", file=sys.stderr)
    direct = start_node()
    n1 = start_node()
    n2 = start_node()
    sc1 = start_shardcast([direct])
    sc2 = start_shardcast([n1, n2])
    targets = {
        "direct (1 node)": (direct, "bench", [direct]),
        "shardcast, 1 node": (sc1, "app", [direct]),
        "shardcast, 2 nodes": (sc2, "app", [n1, n2]),
    }
    times = {k: [] for k in targets}
    for r in range(ROUNDS):
        for name, (port, db, nodes) in targets.items():
            for n in nodes:
                psql(n, "bench", "TRUNCATE items; CHECKPOINT")
            t = timed_copy(port, db, path)
            loaded = sum(int(psql(n, "bench", "SELECT count(*) FROM items")) for n in nodes)
            assert loaded == ROWS, f"{name}: {loaded} rows loaded"
            times[name].append(t)
            print(f"round {r + 1}: {name}: {t:.2f} s ({ROWS / t:,.0f} rows/s)", file=sys.stderr)
    base = statistics.median(times["direct (1 node)"])
    print(f"\nCOPY of {ROWS:,} rows ({size_mb:.0f} MB text), median of {ROUNDS} alternating rounds")
    print(f"{'target':<22} {'seconds':>8} {'rows/s':>12} {'vs direct':>10}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<22} {m:>8.2f} {ROWS / m:>12,.0f} {base / m:>9.2f}x")


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGTERM, lambda *a: (pc.cleanup(), sys.exit(1)))
    try:
        main()
    finally:
        pc.cleanup()
