#!/usr/bin/env python3
"""Online migration: write pause at cut-over, copy throughput, and the
latency of other partitions' queries while a partition is copied.

Starts two PostgreSQL nodes and shardcast (helpers shared with
pgbench_compare.py and copy_compare.py), creates table
t (id bigint, v bigint, pad text) with ROWS rows in PARTITIONS partitions
(loaded straight onto each partition's node), then measures, in this run:

1. Write pause at cut-over: MOVES moves (each partition in turn to the other
   node) while pgbench writes (UPDATE ... WHERE id = :id) at LOAD_RATE tx/s
   on random keys of every partition, through the proxy. Reports p50 / p99 /
   max of the migrations' `pause_ms` (how long the migrator held writes to
   the partition) and the slowest write the clients saw.
   Target: max pause <= 100 ms.
2. Copy throughput: in alternating rounds (pipe, move, pipe, move, ...), one
   partition's rows piped between the same two servers with
   `psql -c "COPY (SELECT * FROM t WHERE hash in range) TO STDOUT (FORMAT
   binary)" | psql -c "COPY t_pipe FROM STDIN (FORMAT binary)"` (t_pipe:
   `LIKE t INCLUDING ALL` on the receiving node, truncated before each
   round), then the same partition moved by shardcast. Move copy time = time
   between the `step="copying"` and `step="catching_up"` lines of the
   proxy's log (this includes the migrator's count(*) of the range and the
   target's commit). Ratio = median pipe seconds / median copy seconds.
   Target: >= 0.8x. For diagnosis only, each round also times the same pipe
   into t itself on the target (its other rows and indexes, and the fence
   trigger a node gets at its first move, with shardcast.migrator = on).
3. Latency of other partitions: pgbench (custom script: SELECT + UPDATE by
   key, keys drawn from KEYS keys outside the moving partition, at LOAD_RATE
   tx/s; latency from the per-transaction log, which under --rate includes
   the schedule lag) runs LOAD_SECS without migration, then while one
   partition moves back and forth until its copy steps add up to at least
   LOAD_SECS. p99 of transactions scheduled inside a copy step (timed from
   the proxy log) vs p99 of those before any move.
   Target: during / before <= 1.5x.

Copies run at shardcast's default `[migration] copy_rate`; COPY_RATE (e.g.
"8MB") throttles the copies of (3) only, through a second proxy with that
setting. The report also names, for the slowest transactions, the step the
migrator was in, the pause of every move of the run, what the PostgreSQL
logs say (fence refusals, autovacuum runs cancelled by a waiting lock, lock
waits over 1 s: the nodes run with log_lock_waits = on), and the CPU other
processes used meanwhile (the figures mean little if the machine was busy
with something else).

Environment: ROWS (1000000), PARTITIONS (8), MOVES (40), ROUNDS (7),
LOAD_SECS (30), LOAD_RATE (1000), CLIENTS (4), KEYS (1024), COPY_RATE
(unset: default), SKIP_BUILD (1: use the existing target/release binary),
QUICK (1: a ~1-minute smoke run: ROWS 200000, MOVES 20, ROUNDS 3,
LOAD_SECS 4). The default run takes about 3-4 minutes plus the build.
"""

import datetime
import glob
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import pgbench_compare as pc  # noqa: E402
import copy_compare as cc  # noqa: E402

QUICK = os.environ.get("QUICK") == "1"


def env(name, default, quick):
    return int(os.environ.get(name, quick if QUICK else default))


ROWS = env("ROWS", 1_000_000, 200_000)
PARTITIONS = env("PARTITIONS", 8, 8)
MOVES = env("MOVES", 40, 20)
ROUNDS = env("ROUNDS", 7, 3)
LOAD_SECS = env("LOAD_SECS", 30, 4)
LOAD_RATE = env("LOAD_RATE", 1000, 1000)
CLIENTS = env("CLIENTS", 4, 4)
KEYS = env("KEYS", 1024, 1024)
COPY_RATE = os.environ.get("COPY_RATE")
CHUNK_SECS = 5

SCHEMA = """
CREATE TABLE t (id bigint PRIMARY KEY, v bigint NOT NULL DEFAULT 0, pad text NOT NULL);
CREATE INDEX ON t (hashint8extended(id, 0));
CREATE TABLE t_pipe (LIKE t INCLUDING ALL);
"""

PAUSE_TARGET_MS = 100.0
COPY_TARGET = 0.8
LATENCY_TARGET = 1.5

loads = []  # running pgbench processes, stopped at exit
exiting = threading.Event()


def psql(port, sql):
    try:
        return cc.psql(port, "bench", sql)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"psql on port {port} failed: {sql[:200]}: {e.stderr.strip()}") from None


def maintain(ports, truncate_pipe=False):
    """Untimed housekeeping between measurements (one statement per call:
    VACUUM cannot run inside the implicit transaction of a multi-statement -c)."""
    for port in ports:
        if truncate_pipe:
            psql(port, "TRUNCATE t_pipe")
        psql(port, "VACUUM t")
        psql(port, "CHECKPOINT")


# --- shardcast -------------------------------------------------------------

class Proxy:
    def __init__(self, node_ports, copy_rate=None):
        d = tempfile.mkdtemp(prefix="sc-bench-proxy-")
        pc.cleanup_dirs.append(d)
        self.port, self.admin = pc.free_port(), pc.free_port()
        cfg = f"""[proxy]
listen = "127.0.0.1:{self.port}"
admin_listen = "127.0.0.1:{self.admin}"
database = "app"

[[tables]]
name = "t"
shard_key = "id"
key_type = "bigint"

[sharding]
partitions = {PARTITIONS}

[pool]
size = 20
"""
        if copy_rate:
            cfg += f'\n[migration]\ncopy_rate = "{copy_rate}"\n'
        self.names = []
        for i, p in enumerate(node_ports):
            self.names.append(f"n{i}")
            cfg += f'\n[[nodes]]\nname = "n{i}"\nurl = "postgres://postgres@127.0.0.1:{p}/bench"\n'
        self.ports = dict(zip(self.names, node_ports))
        path = os.path.join(d, "shardcast.toml")
        with open(path, "w") as f:
            f.write(cfg)
        self.log_path = os.path.join(d, "log")
        log = open(self.log_path, "w")
        e = dict(os.environ, SHARDCAST_LOG="info", NO_COLOR="1", RUST_LOG_STYLE="never")
        p = subprocess.Popen([os.path.join(pc.ROOT, "target/release/shardcast"), "run", "--config", path],
                             stdout=log, stderr=log, env=e)
        pc.procs.append(("proc", p))
        self.proc = p
        pc.wait_port(self.port)
        pc.wait_port(self.admin)

    def stop(self):
        """SIGTERM: the proxy leaves the catalog's proxy list, so clean-ups do not wait for it."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)

    def http(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def routing(self):
        status, v = self.http("GET", "/api/routing")
        assert status == 200, v
        return v

    def partition(self, pid):
        return next(p for p in self.routing()["partitions"] if p["id"] == pid)

    def other(self, node):
        return next(n for n in self.names if n != node)

    def move(self, pid, to, poll=0.2):
        """Moves partition `pid` to node `to`; returns the finished migration."""
        for attempt in range(100):
            status, v = self.http("POST", "/api/migrations", {"kind": "move", "partition": pid, "to": to})
            if status == 202:
                break
            # The previous migration may still hold the (max_concurrent) slot.
            if status in (409, 503) or "already" in str(v) or "busy" in str(v) or "concurrent" in str(v):
                time.sleep(0.2)
                continue
            raise RuntimeError(f"move of partition {pid} to {to} refused: {status} {v}")
        else:
            raise RuntimeError(f"move of partition {pid} to {to} refused: {status} {v}")
        mid = v["id"]
        while True:
            status, m = self.http("GET", f"/api/migrations/{mid}")
            if status == 200 and m["state"] in ("done", "aborted"):
                return m
            time.sleep(poll)

    def steps(self, mid):
        """{step: unix time} of migration `mid`'s `migration step` log lines."""
        out = {}
        with open(self.log_path, errors="replace") as f:
            for line in f:
                line = re.sub(r"\x1b\[[0-9;]*m", "", line)
                if "migration step" not in line or not re.search(rf"\bmigration={mid}\b", line):
                    continue
                st = re.search(r'step="?([a-z_]+)', line)
                out[st.group(1)] = parse_ts(line.split()[0])
        return out

    def timeline(self):
        """[(unix time, migration, step)] of every migration's steps, with
        "cut over" (committed) as `cleaning_up` and "migration done" as `done`."""
        out = []
        with open(self.log_path, errors="replace") as f:
            for line in f:
                line = re.sub(r"\x1b\[[0-9;]*m", "", line)
                m = re.search(r"\bmigration=(\d+)", line)
                if not m:
                    continue
                if "migration step" in line:
                    step = re.search(r'step="?([a-z_]+)', line).group(1)
                elif " cut over " in line:
                    step = "cleaning_up"
                elif "migration done" in line:
                    step = "done"
                else:
                    continue
                out.append((parse_ts(line.split()[0]), int(m.group(1)), step))
        return sorted(out)

    def log_problems(self):
        """WARN/ERROR lines of the proxy's log."""
        with open(self.log_path, errors="replace") as f:
            return [re.sub(r"\x1b\[[0-9;]*m", "", x).rstrip() for x in f
                    if re.search(r"\b(WARN|ERROR)\b", re.sub(r"\x1b\[[0-9;]*m", "", x))]


def node_logs(names):
    """What the PostgreSQL nodes' logs say (log_lock_waits is on): ERROR/FATAL
    lines, fence refusals (SC001) among them, autovacuum runs cancelled
    because a lock request waited deadlock_timeout (1 s) behind them, and lock
    waits longer than deadlock_timeout with their statements."""
    out = {"errors": [], "fenced": 0, "av_cancelled": [], "lock_waits": []}
    for kind, data in pc.procs:
        if kind != "pg":
            continue
        try:
            node = names.get(int(open(os.path.join(data, "postmaster.pid")).read().split("\n")[3]), "?")
            with open(os.path.join(os.path.dirname(data), "log"), errors="replace") as f:
                log = f.read().splitlines()
        except (OSError, ValueError, IndexError):
            continue
        for i, x in enumerate(log):
            pid = re.search(r"\[(\d+)\]", x)
            following = [y for y in log[i + 1:i + 6] if pid and f"[{pid.group(1)}]" in y]
            if re.search(r"\b(ERROR|FATAL|PANIC):", x):
                ctx = next((y.split("CONTEXT:")[1].strip() for y in following[:1] if "CONTEXT:" in y), "")
                out["errors"].append(f"{node}: {x.strip()}" + (f" / {ctx}" if ctx else ""))
                if "does not serve" in x:
                    out["fenced"] += 1
                if "canceling autovacuum task" in x:
                    out["av_cancelled"].append(f"{node} {x.split()[1]}: {ctx}")
            m = re.search(r"process \d+ acquired (\w+) on relation \d+ of database \d+ after ([\d.]+) ms", x)
            if m:
                stmt = next((y.split("STATEMENT:")[1].strip() for y in following if "STATEMENT:" in y), "?")
                out["lock_waits"].append(f"{node} {x.split()[1]}: {m.group(1)} after {float(m.group(2)):.0f} ms "
                                         f"for: {stmt[:100]}")
    return out


def cpu_snapshot(proxies):
    """(machine busy CPU s, CPU s of this benchmark's processes): this script
    and its waited-for children (psql, pgbench), the proxies, and each
    PostgreSQL postmaster with its exited backends."""
    ours = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
    for p in proxies:
        # A stopped proxy was waited for: RUSAGE_CHILDREN has it.
        if p.proc.poll() is None:
            ours += pc.proc_cpu(p.proc.pid)
    tick = os.sysconf("SC_CLK_TCK")
    for kind, data in pc.procs:
        if kind != "pg":
            continue
        try:
            pid = int(open(os.path.join(data, "postmaster.pid")).readline())
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            ours += sum(int(x) for x in f[11:15]) / tick
            for kid in open(f"/proc/{pid}/task/{pid}/children").read().split():
                k = open(f"/proc/{kid}/stat").read().rsplit(")", 1)[1].split()
                ours += (int(k[11]) + int(k[12])) / tick
        except (OSError, ValueError):
            pass
    return pc.machine_cpu(), ours


def parse_ts(s):
    # tracing's RFC 3339 timestamp, e.g. 2025-01-01T10:00:00.123456Z
    s = s.rstrip("Z")
    frac = ""
    if "." in s:
        s, frac = s.split(".")
    t = datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp()
    return t + (float("0." + frac) if frac else 0.0)


def copy_secs(proxy, m):
    st = proxy.steps(m["id"])
    if "copying" in st and "catching_up" in st:
        return st["catching_up"] - st["copying"], st
    return None, st


# --- load ------------------------------------------------------------------

class Load:
    """pgbench through the proxy in back-to-back CHUNK_SECS runs until stopped,
    with per-transaction logs."""

    def __init__(self, proxy, script, name):
        self.d = tempfile.mkdtemp(prefix=f"sc-bench-{name}-")
        pc.cleanup_dirs.append(self.d)
        self.script = os.path.join(self.d, "script.sql")
        with open(self.script, "w") as f:
            f.write(script)
        self.proxy, self.name = proxy, name
        self.stop_flag = threading.Event()
        self.errors = []
        self.failed = 0
        self.runs = 0
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def start(self):
        self.thread.start()
        time.sleep(1.0)  # connections up, first transactions done

    def loop(self):
        i = 0
        while not self.stop_flag.is_set() and not exiting.is_set():
            i += 1
            p = subprocess.Popen(
                ["pgbench", "-n", "-f", self.script, "-c", str(CLIENTS), "-j", "2", "-T", str(CHUNK_SECS),
                 "-R", str(LOAD_RATE), f"--random-seed={1000 + i}", "-l", f"--log-prefix={self.d}/run{i:03}",
                 "-h", "127.0.0.1", "-p", str(self.proxy.port), "-U", "postgres", "app"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            loads.append(p)
            out, err = p.communicate()
            loads.remove(p)
            self.runs += 1
            m = re.search(r"number of failed transactions: (\d+)", out)
            self.failed += int(m.group(1)) if m else 0
            if p.returncode != 0 or (m and m.group(1) != "0"):
                self.errors.append(f"pgbench run {i} exit {p.returncode}: "
                                   + " | ".join(x for x in (err.strip().splitlines()[:5])))

    def stop(self):
        self.stop_flag.set()
        self.thread.join()

    def transactions(self):
        """[(scheduled start unix time, latency ms)] of every logged transaction.
        Under --rate, pgbench's latency runs from the scheduled start (it
        includes the schedule lag), so start = end - latency."""
        txs = []
        for fn in glob.glob(f"{self.d}/run*"):
            with open(fn) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 6 and parts[2].isdigit():
                        lat = int(parts[2]) / 1e6
                        txs.append((int(parts[4]) + int(parts[5]) / 1e6 - lat, lat * 1000.0))
        return txs


def where(timeline, t):
    """What the migrator was doing at time t: "migration M <step>" or "no migration"."""
    last = None
    for ts, mid, step in timeline:
        if ts > t:
            break
        last = (mid, step)
    if last is None or last[1] == "done":
        return "no migration running"
    return f"migration {last[0]} {last[1]}"


def slowest(txs, timeline, n=3):
    return "; ".join(f"{lat:.1f} ms ({where(timeline, t)})" for t, lat in sorted(txs, key=lambda x: -x[1])[:n])


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def case_expr(keys, lo, hi):
    """A pgbench expression mapping :r in lo..hi-1 to keys[:r] (a balanced tree of CASEs)."""
    if hi - lo == 1:
        return str(keys[lo])
    mid = (lo + hi) // 2
    return f"CASE WHEN :r < {mid} THEN {case_expr(keys, lo, mid)} ELSE {case_expr(keys, mid, hi)} END"


def pause_breakdown(catalog_port, ids):
    """{phase: [ms]} from the journal's `cut_over` lines of migrations `ids`
    ("writes held X ms (hold a ms, fence b ms, ...; N changed keys re-copied)"),
    or {} if the journal has no such lines."""
    if not ids:
        return {}
    try:
        rows = psql(catalog_port, "SELECT detail FROM shardcast.journal WHERE step = 'cut_over' "
                                  f"AND migration IN ({', '.join(str(i) for i in ids)})").splitlines()
    except RuntimeError:
        return {}
    out = {}
    for row in rows:
        inner = re.search(r"\((.*?)(;|\))", row)
        for what, ms in re.findall(r"([a-z][a-z ]*?) ([\d.]+) ms", inner.group(1) if inner else ""):
            out.setdefault(what.strip(), []).append(float(ms))
    return out


def verdict(ok):
    return "PASS" if ok else "FAIL"


# --- main ------------------------------------------------------------------

def main():
    t_start = time.time()
    if os.environ.get("SKIP_BUILD") != "1":
        print("building shardcast (release)...", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=pc.ROOT, check=True)
    print("starting two PostgreSQL nodes and shardcast...", file=sys.stderr)
    cc.SCHEMA = SCHEMA
    ports = [cc.start_node(), cc.start_node()]
    for port in ports:
        # Lock waits longer than deadlock_timeout (1 s) go to the node's log.
        psql(port, "ALTER SYSTEM SET log_lock_waits = on")
        psql(port, "SELECT pg_reload_conf()")
    proxy = Proxy(ports)
    proxies = [proxy]
    cpu0, t_cpu0 = cpu_snapshot(proxies), time.time()
    routing = proxy.routing()
    parts = routing["partitions"]
    # Load every partition's rows straight onto its node.
    t0 = time.time()
    for name in proxy.names:
        ranges = " OR ".join(f"(hashint8extended(g, 0) BETWEEN {p['lo']} AND {p['hi']})"
                             for p in parts if p["node"] == name)
        if ranges:
            psql(proxy.ports[name], f"INSERT INTO t SELECT g, 0, repeat(md5(g::text), 2) "
                                    f"FROM generate_series(1, {ROWS}) g WHERE {ranges}")
        psql(proxy.ports[name], "ANALYZE t")
    counts = {p["id"]: 0 for p in parts}
    for name in proxy.names:
        for p in parts:
            if p["node"] == name:
                counts[p["id"]] = int(psql(proxy.ports[name], f"SELECT count(*) FROM t WHERE hashint8extended(id, 0) "
                                                              f"BETWEEN {p['lo']} AND {p['hi']}"))
    assert sum(counts.values()) == ROWS, counts
    print(f"loaded {ROWS:,} rows into {len(parts)} partitions ({time.time() - t0:.1f}s): "
          + ", ".join(f"p{k}={v}@{next(p['node'] for p in parts if p['id'] == k)}" for k, v in counts.items()),
          file=sys.stderr)
    aborted = []
    all_moves = []

    def record(m, phase):
        all_moves.append((phase, m))
        if m["state"] != "done":
            aborted.append((phase, m))
            print(f"  migration {m['id']} ({phase}) ABORTED: {m.get('reason')}", file=sys.stderr)

    # --- (2) copy throughput: pipe vs move, alternating ------------------------
    p2 = parts[0]["id"]
    lo, hi = parts[0]["lo"], parts[0]["hi"]
    pipe_t, pipe_t_into_t, move_t, moved_rows, moved_bytes, api_t = [], [], [], [], [], []

    def pipe(sp, dp, table, options=""):
        cmd = (f"set -o pipefail; psql -X -h 127.0.0.1 -p {sp} -U postgres -d bench -v ON_ERROR_STOP=1 -qc "
               f"\"COPY (SELECT * FROM t WHERE hashint8extended(id, 0) BETWEEN {lo} AND {hi}) TO STDOUT (FORMAT binary)\" "
               f"| PGOPTIONS='{options}' psql -X -h 127.0.0.1 -p {dp} -U postgres -d bench -v ON_ERROR_STOP=1 "
               f"-c \"COPY {table} FROM STDIN (FORMAT binary)\"")
        t = time.perf_counter()
        out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
        took = time.perf_counter() - t
        if out.returncode != 0 or f"COPY {counts[p2]}" not in out.stdout:
            raise RuntimeError(f"pipe failed: {out.stdout} {out.stderr}")
        return took

    for r in range(ROUNDS):
        src = proxy.partition(p2)["node"]
        dst = proxy.other(src)
        sp, dp = proxy.ports[src], proxy.ports[dst]
        maintain(ports, truncate_pipe=True)
        pipe_t.append(pipe(sp, dp, "t_pipe"))
        maintain(ports, truncate_pipe=True)
        # Not a baseline of the targets: the same pipe into t itself on the
        # target (its other partitions' rows and indexes, and the fence
        # trigger the node has after its first move, which passes the
        # migrator's sessions), to show where a gap comes from.
        fenced = psql(dp, "SELECT count(*) FROM pg_trigger WHERE tgname = 'shardcast_fence'") != "0"
        pipe_t_into_t.append(pipe(sp, dp, "t", "-c shardcast.migrator=on"))
        pc.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(dp), "-U", "postgres", "-d", "bench", "-v", "ON_ERROR_STOP=1",
                "-c", "SET shardcast.migrator = 'on'",
                "-c", f"DELETE FROM t WHERE hashint8extended(id, 0) BETWEEN {lo} AND {hi}"])
        print(f"round {r + 1}: pipe {src}->{dst}: {pipe_t[-1]:.2f}s; same pipe into t: {pipe_t_into_t[-1]:.2f}s "
              f"(fence trigger: {fenced})", file=sys.stderr)
        maintain(ports, truncate_pipe=True)
        t = time.perf_counter()
        m = proxy.move(p2, dst)
        total = time.perf_counter() - t
        record(m, "copy")
        if m["state"] != "done":
            continue
        secs, st = copy_secs(proxy, m)
        if secs is None:
            raise RuntimeError(f"no copying/catching_up log lines for migration {m['id']}: {st}")
        move_t.append(secs)
        moved_rows.append(m["rows_copied"])
        moved_bytes.append(m["bytes_copied"])
        print(f"round {r + 1}: move {src}->{dst}: copy step {secs:.2f}s, whole move {total:.2f}s, "
              f"{m['rows_copied']} rows, {m['bytes_copied']} bytes, pause {m['pause_ms']:.1f} ms", file=sys.stderr)
        api_t.append(total)

    # --- (3) latency of other partitions during a copy ---------------------------
    p3 = parts[0]["id"]
    lo3, hi3 = parts[0]["lo"], parts[0]["hi"]
    keys = [int(x) for x in psql(ports[0], f"SELECT setseed(0.42); SELECT g FROM generate_series(1, {ROWS}) g "
                                           f"WHERE hashint8extended(g, 0) NOT BETWEEN {lo3} AND {hi3} "
                                           f"ORDER BY random() LIMIT {KEYS}").split()]
    assert len(keys) == KEYS
    script3 = (f"\\set r random(0, {KEYS - 1})\n\\set id {case_expr(keys, 0, KEYS)}\n"
               "SELECT v FROM t WHERE id = :id;\nUPDATE t SET v = v + 1 WHERE id = :id;\n")
    maintain(ports)
    # A throttled copy needs its own proxy (copy_rate is per proxy; the one
    # that accepts a move runs it); phases 1 and 2 keep the default.
    proxy3 = Proxy(ports, COPY_RATE) if COPY_RATE else proxy
    if proxy3 is not proxy:
        proxies.append(proxy3)
    load3 = Load(proxy3, script3, "other")
    load3.start()
    before = (time.time(), time.time() + LOAD_SECS)
    time.sleep(LOAD_SECS)
    windows, whole, moves3 = [], [], 0
    while sum(b - a for a, b in windows) < LOAD_SECS and moves3 < 100:
        to = proxy3.other(proxy3.partition(p3)["node"])
        m = proxy3.move(p3, to)
        record(m, "latency")
        moves3 += 1
        if m["state"] != "done":
            continue
        secs, st = copy_secs(proxy3, m)
        windows.append((st["copying"], st["catching_up"]))
        done = [ts for ts, mid, step in proxy3.timeline() if mid == m["id"] and step == "done"]
        whole.append((st.get("capturing", st["copying"]), done[0] if done else time.time()))
        print(f"latency phase: move {moves3} to {to}: copy step {secs:.2f}s, pause {m['pause_ms']:.1f} ms",
              file=sys.stderr)
    time.sleep(0.5)
    load3.stop()
    txs = load3.transactions()
    tx_before = [(t, lat) for t, lat in txs if before[0] <= t <= before[1]]
    tx_copy = [(t, lat) for t, lat in txs if any(a <= t <= b for a, b in windows)]
    tx_moving = [(t, lat) for t, lat in txs if any(a <= t <= b for a, b in whole)]
    lat_before = [lat for _, lat in tx_before]
    lat_copy = [lat for _, lat in tx_copy]
    lat_moving = [lat for _, lat in tx_moving]
    copy_window = sum(b - a for a, b in windows)
    timeline3 = proxy3.timeline()
    problems3 = []
    if proxy3 is not proxy:
        problems3 = proxy3.log_problems()
        proxy3.stop()

    # --- (1) pause at cut-over under write load ---------------------------------
    script1 = f"\\set id random(1, {ROWS})\nUPDATE t SET v = v + 1 WHERE id = :id;\n"
    maintain(ports)
    load1 = Load(proxy, script1, "writes")
    load1.start()
    pauses, t1 = [], time.time()
    for i in range(MOVES):
        pid = parts[(i + 1) % len(parts)]["id"]
        to = proxy.other(proxy.partition(pid)["node"])
        m = proxy.move(pid, to)
        record(m, "pause")
        if m["state"] == "done":
            pauses.append(m["pause_ms"])
            print(f"pause phase: move {i + 1}/{MOVES}: partition {pid} to {to}: pause {m['pause_ms']:.1f} ms, "
                  f"{m['rows_copied']} rows", file=sys.stderr)
    t1_end = time.time()
    time.sleep(0.5)
    load1.stop()
    txs1 = load1.transactions()
    tx1 = [(t, lat) for t, lat in txs1 if t1 <= t <= t1_end]
    lat1 = [lat for _, lat in tx1]
    # What the validation step of the cut-over costs on its own (it runs while writes are held).
    p = proxy.partition(parts[1]["id"])
    digest = (f"SELECT count(*), coalesce(bit_xor(hashtextextended(r::text, 0)), 0) FROM t AS r "
              f"WHERE hashint8extended(r.id, 0) BETWEEN {p['lo']} AND {p['hi']}")
    out = pc.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(proxy.ports[p["node"]]), "-U", "postgres", "-d", "bench",
                  "-c", "\\timing on", "-c", digest, "-c", digest]).stdout
    digest_ms = min(float(x) for x in re.findall(r"Time: ([\d.]+) ms", out))
    timeline = proxy.timeline()

    # Rows must still all be there, each once, on its owner.
    final = proxy.routing()["partitions"]
    total = 0
    for q in final:
        total += int(psql(proxy.ports[q["node"]], f"SELECT count(*) FROM t WHERE hashint8extended(id, 0) "
                                                  f"BETWEEN {q['lo']} AND {q['hi']}"))
    stray = sum(int(psql(port, "SELECT count(*) FROM t")) for port in ports) - total
    problems = proxy.log_problems() + problems3
    cpu1 = cpu_snapshot(proxies)
    busy, ours = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    pg = node_logs({port: name for name, port in proxy.ports.items()})
    av_counts = {name: psql(port, "SELECT autovacuum_count || ' autovacuums, ' || autoanalyze_count || ' autoanalyzes' "
                                  "FROM pg_stat_user_tables WHERE relname = 't'")
                 for name, port in proxy.ports.items()}

    # --- report ------------------------------------------------------------------
    print()
    print(f"Online migration, {ROWS:,} rows in {len(parts)} partitions (~{ROWS // len(parts):,} rows each) on 2 nodes; "
          f"{os.cpu_count()} cores shared by PostgreSQL x2, shardcast and pgbench; "
          f"copy_rate: default (1, 2), {COPY_RATE or 'default'} (3); load {LOAD_RATE} tx/s, {CLIENTS} clients (pgbench -R)")
    print()
    print(f"(1) write pause at cut-over, {len(pauses)} moves under write load "
          f"(UPDATE by random key over all partitions, {len(lat1):,} writes during the moves)")
    if pauses:
        mx = max(pauses)
        print(f"    pause_ms: n={len(pauses)} p50={pct(pauses, 0.5):.1f} p99={pct(pauses, 0.99):.1f} "
              f"max={mx:.1f}  -> {verdict(mx <= PAUSE_TARGET_MS)} (target max <= {PAUSE_TARGET_MS:.0f} ms)")
    every = [m["pause_ms"] for _, m in all_moves if m["state"] == "done" and m["pause_ms"] is not None]
    print(f"    pause_ms of every move of this run (phases 1-3; 2 and 3 without load on the moving partition): "
          f"n={len(every)} p50={pct(every, 0.5):.1f} p99={pct(every, 0.99):.1f} max={max(every):.1f}; "
          f"over 100 ms: {sum(x > PAUSE_TARGET_MS for x in every)}, over 1 s: {sum(x > 1000 for x in every)}")
    phases = pause_breakdown(ports[0], [m["id"] for ph, m in all_moves if ph == "pause" and m["state"] == "done"])
    if phases:
        print("    where the pause goes (journal's cut_over lines, phase 1 moves), median / max ms: "
              + ", ".join(f"{k} {statistics.median(v):.1f} / {max(v):.1f}" for k, v in phases.items()))
    print(f"    client write latency during the moves: p50={pct(lat1, 0.5):.2f} ms p99={pct(lat1, 0.99):.2f} ms "
          f"max={max(lat1) if lat1 else float('nan'):.1f} ms; failed writes {load1.failed}")
    print(f"    slowest writes (latency from the scheduled start, and what the migrator was doing then): "
          f"{slowest(tx1, timeline)}")
    print(f"    validation checksum of one partition (~{ROWS // len(parts):,} rows; runs on both nodes while writes "
          f"are held), alone on an idle node: {digest_ms:.0f} ms")
    print()
    print(f"(2) copy throughput, partition {p2}, median of {ROUNDS} alternating rounds (pipe, move, ...)")
    if move_t:
        pm, mm = statistics.median(pipe_t), statistics.median(move_t)
        ratio = pm / mm
        print(f"    rows={moved_rows[0]:,} bytes={moved_bytes[0]:,} (binary COPY stream)")
        print(f"    pipe (psql COPY TO | psql COPY FROM) median {pm:.2f} s  [{', '.join(f'{x:.2f}' for x in pipe_t)}]")
        print(f"    move copy step (log: copying -> catching_up) median {mm:.2f} s  "
              f"[{', '.join(f'{x:.2f}' for x in move_t)}]; whole move median {statistics.median(api_t):.2f} s")
        print(f"    ratio pipe/move = {ratio:.2f}x ({moved_bytes[0] / mm / 1e6:.0f} MB/s vs pipe "
              f"{moved_bytes[0] / pm / 1e6:.0f} MB/s)  -> {verdict(ratio >= COPY_TARGET)} (target >= {COPY_TARGET}x)")
        pt = statistics.median(pipe_t_into_t)
        print(f"    (not the target's baseline) the same pipe into t itself on the target (populated table, fence "
              f"trigger, migrator=on): median {pt:.2f} s [{', '.join(f'{x:.2f}' for x in pipe_t_into_t)}]; "
              f"ratio {pt / mm:.2f}x")
    print()
    print(f"(3) p99 latency of other partitions' queries (SELECT + UPDATE by key, {KEYS} keys outside partition {p3})")
    if lat_before and lat_copy:
        b99, c99 = pct(lat_before, 0.99), pct(lat_copy, 0.99)
        print(f"    before: {len(lat_before):,} tx in {LOAD_SECS}s, p50={pct(lat_before, 0.5):.2f} ms p99={b99:.2f} ms")
        print(f"    during copy: {len(lat_copy):,} tx in {copy_window:.1f}s of copy steps ({len(windows)} moves), "
              f"p50={pct(lat_copy, 0.5):.2f} ms p99={c99:.2f} ms")
        print(f"    during the whole moves (capturing -> done): {len(lat_moving):,} tx, p99={pct(lat_moving, 0.99):.2f} ms, "
              f"max={max(lat_moving):.1f} ms")
        print(f"    slowest before: {slowest(tx_before, timeline3)}")
        print(f"    slowest during the moves: {slowest(tx_moving, timeline3)}")
        print(f"    ratio p99 during/before = {c99 / b99:.2f}x  -> {verdict(c99 / b99 <= LATENCY_TARGET)} "
              f"(target <= {LATENCY_TARGET}x); failed transactions {load3.failed}")
    print()
    print(f"migrations: {len(all_moves)} run, {len(aborted)} aborted; rows after all moves: {total:,} "
          f"(expected {ROWS:,}), rows off their owner: {stray}; proxy log WARN/ERROR lines: {len(problems)}; "
          f"pgbench errors: {len(load1.errors) + len(load3.errors)}; wall time {time.time() - t_start:.0f}s")
    for phase, m in aborted:
        print(f"    aborted ({phase}) migration {m['id']} partition {m['partition']}: {m.get('reason')}")
    for e in (load1.errors + load3.errors)[:5]:
        print(f"    {e}")
    for x in problems[:10]:
        print(f"    proxy log: {x}")
    print(f"machine CPU while measuring: {busy:.0f} CPU-s busy in {time.time() - t_cpu0:.0f}s x "
          f"{os.cpu_count()} cores; this benchmark's processes {ours:.0f} CPU-s, other processes ~{max(0.0, busy - ours):.0f} CPU-s")
    print(f"PostgreSQL logs: {len(pg['errors'])} ERROR/FATAL lines, of which {pg['fenced']} writes refused by a fence "
          f"(SC001; the proxy holds and re-routes them) and {len(pg['av_cancelled'])} autovacuum runs of t cancelled "
          f"because a lock request waited deadlock_timeout (1 s) behind them; {len(pg['lock_waits'])} lock waits "
          f"> 1 s; autovacuum of t over the run: " + "; ".join(f"{k}: {v}" for k, v in av_counts.items()))
    for x in [x for x in pg["errors"] if "does not serve" not in x][:10]:
        print(f"    pg error: {x}")
    for x in pg["lock_waits"][:10]:
        print(f"    pg lock wait: {x}")


def stop_loads():
    exiting.set()
    for p in list(loads):
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=5)
        except Exception:
            pass


def cleanup():
    stop_loads()
    pc.cleanup()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: (cleanup(), sys.exit(1)))
    try:
        main()
    finally:
        cleanup()
