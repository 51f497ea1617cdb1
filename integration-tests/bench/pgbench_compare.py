#!/usr/bin/env python3
"""Point-select throughput: direct vs PgBouncer vs shardcast (1 and 2 nodes).

Starts its own PostgreSQL nodes (initdb/pg_ctl as user postgres, temp dirs,
free ports), loads pgbench data on each, starts PgBouncer (transaction
pooling) in front of node 1 and shardcast with 1 and with 2 nodes
(pgbench_accounts sharded on aid), then runs `pgbench -S` against each target
in alternating rounds, for -M simple and -M extended. Prints tps (median of
rounds), p50/p99 latency (from per-transaction logs) and the ratios
shardcast/PgBouncer and shardcast/direct measured in this same run, plus the
CPU time per transaction of the proxy process and of the whole machine (less
noisy than throughput on a shared machine).

Environment: SECONDS_PER_RUN (10), ROUNDS (3), CLIENTS (16), THREADS (2),
SCALE (10), MODES ("simple extended"), RECORDER (on|off|both: compare the
proxy with the recorder on and off, for the analyzer's cost).
"""

import glob
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PGBIN = "/usr/lib/postgresql/15/bin"
SECS = int(os.environ.get("SECONDS_PER_RUN", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CLIENTS = int(os.environ.get("CLIENTS", "16"))
THREADS = int(os.environ.get("THREADS", "2"))
SCALE = int(os.environ.get("SCALE", "10"))
MODES = os.environ.get("MODES", "simple extended").split()
RECORDER = os.environ.get("RECORDER", "on")

procs = []
cleanup_dirs = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def as_postgres(args):
    return (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + args


def run(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def start_node():
    d = tempfile.mkdtemp(prefix="sc-bench-node-")
    cleanup_dirs.append(d)
    os.chmod(d, 0o777)
    data = os.path.join(d, "data")
    if os.geteuid() == 0:
        run(["chown", "postgres", d])
    run(as_postgres([f"{PGBIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"]))
    port = free_port()
    opts = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={d} -c fsync=off "
            "-c synchronous_commit=off -c max_connections=300 -c shared_buffers=128MB")
    run(as_postgres([f"{PGBIN}/pg_ctl", "-D", data, "-l", os.path.join(d, "log"), "-w", "-o", opts, "start"]))
    procs.append(("pg", data))
    run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-qc", "CREATE DATABASE bench"])
    run(["pgbench", "-i", "-q", "-s", str(SCALE), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "bench"])
    return port


def start_pgbouncer(node_port, max_clients=2000):
    d = tempfile.mkdtemp(prefix="sc-bench-pgb-")
    cleanup_dirs.append(d)
    port = free_port()
    with open(os.path.join(d, "users.txt"), "w") as f:
        f.write('"postgres" ""\n')
    with open(os.path.join(d, "pgb.ini"), "w") as f:
        f.write(f"""[databases]
app = host=127.0.0.1 port={node_port} dbname=bench user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {d}/users.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = {max_clients}
logfile = {d}/pgb.log
""")
    if os.geteuid() == 0:
        run(["chown", "-R", "postgres", d])
    # runuser resets the soft open-file limit to 1024: raise it for PgBouncer.
    nofile = max_clients + 200
    cmd = ["sh", "-c", f"ulimit -n {nofile} && exec pgbouncer {os.path.join(d, 'pgb.ini')}"]
    p = subprocess.Popen(as_postgres(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(("proc", p))
    wait_port(port)
    # runuser forks pgbouncer: measure the child's CPU.
    kids = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
    return port, int(kids[0]) if kids else p.pid


def start_shardcast(node_ports, recorder=True):
    d = tempfile.mkdtemp(prefix="sc-bench-proxy-")
    cleanup_dirs.append(d)
    port, admin = free_port(), free_port()
    cfg = f"""[proxy]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
database = "app"

[[tables]]
name = "pgbench_accounts"
shard_key = "aid"
key_type = "integer"

[pool]
size = 20

[recorder]
enabled = {"true" if recorder else "false"}
"""
    for i, p in enumerate(node_ports):
        cfg += f'\n[[nodes]]\nname = "n{i}"\nurl = "postgres://postgres@127.0.0.1:{p}/bench"\n'
    path = os.path.join(d, "shardcast.toml")
    with open(path, "w") as f:
        f.write(cfg)
    log = open(os.path.join(d, "log"), "w")
    p = subprocess.Popen([os.path.join(ROOT, "target/release/shardcast"), "run", "--config", path], stdout=log, stderr=log)
    procs.append(("proc", p))
    wait_port(port)
    ADMIN[p.pid] = admin
    return port, p.pid


# A started shardcast's admin port, by process id.
ADMIN = {}


def proc_cpu(pid):
    """CPU seconds (user + system) a process has used so far."""
    if pid is None:
        return 0.0
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu():
    """CPU seconds the whole machine has been busy (all cores)."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def pgbench(port, db, mode):
    d = tempfile.mkdtemp(prefix="sc-bench-log-")
    cleanup_dirs.append(d)
    out = subprocess.run(
        ["pgbench", "-n", "-S", "-M", mode, "-c", str(CLIENTS), "-j", str(THREADS), "-T", str(SECS),
         "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "--log", "--sampling-rate=0.2",
         f"--log-prefix={d}/tx", db],
        capture_output=True, text=True)
    if out.returncode != 0 or "number of failed transactions: 0 " not in out.stdout:
        raise RuntimeError(f"pgbench on port {port} failed:\n{out.stdout}\n{out.stderr}")
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))
    txs = int(re.search(r"number of transactions actually processed: (\d+)", out.stdout).group(1))
    lat = []
    for fn in glob.glob(f"{d}/tx*"):
        with open(fn) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    lat.append(int(parts[2]))
    return tps, txs, lat


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] / 1000.0 if xs else float("nan")


def main():
    if not shutil.which("pgbouncer"):
        print("installing pgbouncer (apt-get)...", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", "pgbouncer"], check=True, capture_output=True)
    print("building shardcast (release)...", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    print("starting two PostgreSQL nodes and loading pgbench data...", file=sys.stderr)
    n1, n2 = start_node(), start_node()
    targets = [("direct", (n1, None), "bench"), ("pgbouncer", start_pgbouncer(n1), "app")]
    if RECORDER in ("on", "both"):
        targets.append(("shardcast-1node", start_shardcast([n1]), "app"))
    if RECORDER in ("off", "both"):
        targets.append(("shardcast-1node-norec", start_shardcast([n1], recorder=False), "app"))
    targets.append(("shardcast-2nodes", start_shardcast([n1, n2]), "app"))

    results = {}
    for mode in MODES:
        for r in range(ROUNDS):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for name, (port, pid), db in order:
                p0, m0 = proc_cpu(pid), machine_cpu()
                tps, txs, lat = pgbench(port, db, mode)
                p1, m1 = proc_cpu(pid), machine_cpu()
                res = results.setdefault((mode, name), {"tps": [], "lat": [], "cpu": [], "mcpu": []})
                res["tps"].append(tps)
                res["lat"].extend(lat)
                res["cpu"].append((p1 - p0) / txs * 1e6)
                res["mcpu"].append((m1 - m0) / txs * 1e6)
                print(f"  {mode:8} round {r + 1} {name:22} {tps:10.0f} tps", file=sys.stderr)

    print(f"\npgbench -S, {CLIENTS} clients, {THREADS} threads, {SECS}s x {ROUNDS} alternating rounds, scale {SCALE}; "
          f"{os.cpu_count()} cores shared by everything\n")
    print("| mode | target | tps (median) | p50 ms | p99 ms | vs PgBouncer | vs direct | proxy CPU us/tx | machine CPU us/tx |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode in MODES:
        base_d = statistics.median(results[(mode, "direct")]["tps"])
        base_b = statistics.median(results[(mode, "pgbouncer")]["tps"])
        for name, _, _ in targets:
            res = results[(mode, name)]
            tps = statistics.median(res["tps"])
            print(f"| {mode} | {name} | {tps:.0f} | {pct(res['lat'], 0.5):.3f} | {pct(res['lat'], 0.99):.3f} "
                  f"| {tps / base_b:.2f}x | {tps / base_d:.2f}x "
                  f"| {statistics.median(res['cpu']):.1f} | {statistics.median(res['mcpu']):.1f} |")
    if RECORDER == "both":
        print()
        for mode in MODES:
            on = statistics.median(results[(mode, "shardcast-1node")]["tps"])
            off = statistics.median(results[(mode, "shardcast-1node-norec")]["tps"])
            c_on = statistics.median(results[(mode, "shardcast-1node")]["cpu"])
            c_off = statistics.median(results[(mode, "shardcast-1node-norec")]["cpu"])
            print(f"recorder cost, {mode}: throughput on/off = {on / off:.3f} ({(1 - on / off) * 100:+.1f}%); "
                  f"proxy CPU per transaction on/off = {c_on / c_off:.3f} ({(c_on / c_off - 1) * 100:+.1f}%)")


def cleanup(*_):
    for kind, p in reversed(procs):
        try:
            if kind == "proc":
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=5)
            else:
                subprocess.run(as_postgres([f"{PGBIN}/pg_ctl", "-D", p, "-m", "immediate", "stop"]), capture_output=True)
        except Exception:
            pass
    for d in cleanup_dirs:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: (cleanup(), sys.exit(1)))
    try:
        main()
    finally:
        cleanup()
