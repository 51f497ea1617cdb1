#!/usr/bin/env python3
"""A real driver's own test suite — asyncpg's — direct, through shardcast and
through PgBouncer, in one run.

asyncpg's tests cover what drivers lean on and poolers tend to break:
prepared statements and their cache (invalidated by schema changes),
pipelined execution, cursors, COPY, LISTEN/NOTIFY, cancellation, timeouts,
type codecs decided by server parameters. Its test base runs against an
existing server when PGHOST is set.

Fetches what it needs once (pip: asyncpg and the test dependencies, the
asyncpg sdist for its tests; apt-get: pgbouncer) into
integration-tests/bench/.driver-suite/, starts its own PostgreSQL 15 node
(initdb/pg_ctl as user postgres, a temp dir, a free port) per target — one
direct, one behind shardcast (one node, transaction pooling), one behind
PgBouncer (pool_mode = transaction) — and runs every test module against each
in turn, each module with a time limit, so a hang costs that module, not the
run. Prints passed/total per target and the
ratio to direct, then the tests whose outcome differs from direct.

Environment: MODULE_TIMEOUT (seconds per module, 120), PROFILE (debug |
release: which shardcast build, debug), MODULES (space-separated module
names, all by default), TARGETS (default "direct shardcast pgbouncer"; without
direct, only the failures are listed), KEEP (1: leave the temp dirs),
ASYNCPG (0.30.0).
"""

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE = os.path.join(ROOT, "integration-tests", "bench", ".driver-suite")
PGBIN = "/usr/lib/postgresql/15/bin"
VERSION = os.environ.get("ASYNCPG", "0.30.0")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pgbench_compare import as_postgres, free_port, run, wait_port  # noqa: E402
MODULE_TIMEOUT = int(os.environ.get("MODULE_TIMEOUT", "120"))
PROFILE = os.environ.get("PROFILE", "debug")

procs = []
cleanup_dirs = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def fetch_suite():
    """asyncpg (installed) and its sdist's tests (cached); idempotent."""
    try:
        import asyncpg  # noqa: F401
        import distro  # noqa: F401

        have = asyncpg.__version__ == VERSION
    except ImportError:
        have = False
    if not have:
        log(f"installing asyncpg {VERSION} and test dependencies (pip)...")
        run([sys.executable, "-m", "pip", "install", "-q", f"asyncpg=={VERSION}", "distro", "wheel"])
    tests = os.path.join(CACHE, f"asyncpg-{VERSION}", "tests")
    if not os.path.isdir(tests):
        os.makedirs(CACHE, exist_ok=True)
        sdist = os.path.join(CACHE, f"asyncpg-{VERSION}.tar.gz")
        if not os.path.exists(sdist):
            log(f"downloading the asyncpg {VERSION} sdist for its tests (pip download)...")
            run([sys.executable, "-m", "pip", "download", "-q", f"asyncpg=={VERSION}", "--no-binary", ":all:",
                 "--no-deps", "--no-build-isolation", "-d", CACHE])
        with tarfile.open(sdist) as t:
            members = [m for m in t.getmembers() if m.name.startswith(f"asyncpg-{VERSION}/tests/")]
            t.extractall(CACHE, members=members)
    # Run from a directory without the sdist's uncompiled `asyncpg/`, so
    # the installed (compiled) package is the one under test.
    return os.path.dirname(tests)


def start_node():
    d = tempfile.mkdtemp(prefix="sc-suite-node-")
    cleanup_dirs.append(d)
    os.chmod(d, 0o777)
    data = os.path.join(d, "data")
    if os.geteuid() == 0:
        run(["chown", "postgres", d])
    run(as_postgres([f"{PGBIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8",
                     "--locale=C"]))
    port = free_port()
    opts = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={d} -c fsync=off "
            "-c synchronous_commit=off -c max_connections=300 -c max_prepared_transactions=20")
    run(as_postgres([f"{PGBIN}/pg_ctl", "-D", data, "-l", os.path.join(d, "log"), "-w", "-o", opts, "start"]))
    procs.append(("pg", data))
    return port


def start_shardcast(node_port, db):
    d = tempfile.mkdtemp(prefix="sc-suite-proxy-")
    cleanup_dirs.append(d)
    port, admin = free_port(), free_port()
    cfg = f"""[proxy]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
database = "{db}"

[[nodes]]
name = "n0"
url = "postgres://postgres@127.0.0.1:{node_port}/{db}"

[pool]
size = 40
"""
    path = os.path.join(d, "shardcast.toml")
    with open(path, "w") as f:
        f.write(cfg)
    out = open(os.path.join(d, "log"), "w")
    # A copy: a rebuild during the run must not change what is measured.
    binary = os.path.join(d, "shardcast")
    shutil.copy(os.path.join(ROOT, "target", PROFILE, "shardcast"), binary)
    p = subprocess.Popen([binary, "run", "--config", path], stdout=out, stderr=out,
                         env={**os.environ, "SHARDCAST_LOG": os.environ.get("SHARDCAST_LOG", "warn")})
    procs.append(("proc", p))
    wait_port(port, timeout=30)
    return port


def start_pgbouncer(node_port, db):
    if not shutil.which("pgbouncer"):
        log("installing pgbouncer (apt-get)...")
        subprocess.run(["apt-get", "install", "-y", "-qq", "pgbouncer"], check=True, capture_output=True)
    d = tempfile.mkdtemp(prefix="sc-suite-pgb-")
    cleanup_dirs.append(d)
    port = free_port()
    with open(os.path.join(d, "users.txt"), "w") as f:
        f.write('"postgres" ""\n')
    with open(os.path.join(d, "pgb.ini"), "w") as f:
        f.write(f"""[databases]
* = host=127.0.0.1 port={node_port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {d}/users.txt
pool_mode = transaction
default_pool_size = 40
max_client_conn = 2000
ignore_startup_parameters = extra_float_digits,options
logfile = {d}/pgb.log
""")
    if os.geteuid() == 0:
        run(["chown", "-R", "postgres", d])
    p = subprocess.Popen(as_postgres(["pgbouncer", os.path.join(d, "pgb.ini")]), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    procs.append(("proc", p))
    wait_port(port, timeout=30)
    return port


# Runs one module and appends "outcome<TAB>test id<TAB>reason" per test as
# it ends, so that a module killed for a hang still says what it finished.
RUNNER = r"""
import sys, unittest, traceback
out = open(sys.argv[2], "a", buffering=1)
def line(outcome, test, err=""):
    reason = ""
    if err:
        reason = "".join(traceback.format_exception_only(err[0], err[1])).strip().splitlines()[-1][:300]
    out.write(f"{outcome}\t{test.id()}\t{reason}\n")
class Result(unittest.TextTestResult):
    def addSuccess(self, t): super().addSuccess(t); line("ok", t)
    def addFailure(self, t, e): super().addFailure(t, e); line("FAIL", t, e)
    def addError(self, t, e): super().addError(t, e); line("ERROR", t, e)
    def addSkip(self, t, r): super().addSkip(t, r); line("skipped", t)
    def addExpectedFailure(self, t, e): super().addExpectedFailure(t, e); line("ok", t)
    def addUnexpectedSuccess(self, t): super().addUnexpectedSuccess(t); line("FAIL", t)
suite = unittest.defaultTestLoader.loadTestsFromName(sys.argv[1])
unittest.TextTestRunner(resultclass=Result, verbosity=0).run(suite)
"""


def run_module(suite_dir, module, port, db):
    """{test id: (outcome, reason)} for one module; a module that times out
    gets a TIMEOUT entry (its unfinished tests are missing, so not passed)."""
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "postgres", "PGDATABASE": db}
    env.pop("PGPASSWORD", None)
    runner = os.path.join(suite_dir, "runner.py")
    with open(runner, "w") as f:
        f.write(RUNNER)
    fd, path = tempfile.mkstemp(prefix="sc-suite-results-")
    os.close(fd)
    cmd = [sys.executable, runner, f"tests.{module}", path]
    try:
        subprocess.run(cmd, cwd=suite_dir, env=env, capture_output=True, text=True, timeout=MODULE_TIMEOUT)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    results = {}
    with open(path) as f:
        for ln in f:
            parts = ln.rstrip("\n").split("\t")
            if len(parts) == 3:
                results[parts[1]] = (parts[0], parts[2])
    os.unlink(path)
    if timed_out:
        results[f"tests.{module} (timed out after {MODULE_TIMEOUT}s)"] = ("TIMEOUT", "")
    return results


def modules(suite_dir):
    chosen = os.environ.get("MODULES")
    if chosen:
        return chosen.split()
    return sorted(f[:-3] for f in os.listdir(os.path.join(suite_dir, "tests"))
                  if f.startswith("test_") and f.endswith(".py"))


def run_target(name, suite_dir, port, db):
    log(f"running asyncpg's tests {name} ...")
    started = time.time()
    results = {}
    for m in modules(suite_dir):
        r = run_module(suite_dir, m, port, db)
        bad = sum(1 for v, _ in r.values() if v not in ("ok", "skipped"))
        log(f"  {name:<10} {m:<24} {len(r):>4} tests, {bad} not passed")
        results.update(r)
    log(f"  {name}: {time.time() - started:.0f} s")
    return results


def passed(r):
    return sum(1 for v, _ in r.values() if v == "ok")


def counted(r):
    """Tests that ran (skipped ones left out: the suite skips the same
    ones on every target, e.g. those that need to restart the server)."""
    return sum(1 for v, _ in r.values() if v != "skipped")


def main():
    suite_dir = fetch_suite()
    if PROFILE == "release":
        log("building shardcast (release)...")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    else:
        subprocess.run(["cargo", "build", "--quiet"], cwd=ROOT, check=True)
    # Each target gets its own node: the tests use the database "postgres"
    # by name and leave objects behind.
    targets = os.environ.get("TARGETS", "direct shardcast pgbouncer").split()
    results = {}
    for name in targets:
        log(f"starting a PostgreSQL 15 node for {name}...")
        node = start_node()
        if name == "direct":
            port = node
        elif name == "shardcast":
            port = start_shardcast(node, "postgres")
        else:
            port = start_pgbouncer(node, "postgres")
        results[name] = run_target(name, suite_dir, port, "postgres")
    if "direct" not in results:
        for name in targets:
            for t, (v, why) in sorted(results[name].items()):
                if v not in ("ok", "skipped"):
                    print(f"  {name} {t}: {v} {why}")
        return
    direct = results["direct"]
    print(f"\nasyncpg {VERSION} test suite ({len(direct)} tests; passed of those that ran, skipped left out)")
    print(f"{'target':<10} {'passed':>7} {'total':>6} {'ratio to direct':>16}")
    for name in targets:
        r = results[name]
        ratio = passed(r) / passed(direct) if passed(direct) else float("nan")
        print(f"{name:<10} {passed(r):>7} {counted(r):>6} {ratio:>15.3f}x")
    direct_outcome = {t: v for t, (v, _) in direct.items()}
    for name in targets[1:]:
        r = results[name]
        diffs = sorted((t, direct_outcome.get(t, "-"), v, why) for t, (v, why) in r.items()
                       if direct_outcome.get(t) != v)
        diffs += sorted((t, v, "-", "did not run") for t, v in direct_outcome.items() if t not in r)
        print(f"\n{name}: {len(diffs)} tests differ from direct")
        for t, d, v, why in diffs:
            print(f"  {t}: direct {d}, {name} {v}  {why}")


def cleanup():
    for kind, p in reversed(procs):
        if kind == "proc":
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        else:
            subprocess.run(as_postgres([f"{PGBIN}/pg_ctl", "-D", p, "-m", "immediate", "-w", "stop"]),
                           capture_output=True)
    if os.environ.get("KEEP") != "1":
        for d in cleanup_dirs:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
