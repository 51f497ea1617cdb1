#!/usr/bin/env bash
# Instructions per transaction in the proxy, counted by callgrind (steady
# where throughput on a shared machine is not): one throwaway PostgreSQL
# node, shardcast under valgrind, `pgbench -S` with 4 clients, counters
# zeroed after a warm-up. Usage:
#   integration-tests/bench/callgrind_per_tx.sh [BINARY] [simple|extended|prepared] [TX_PER_CLIENT]
# Compare two builds by running it on each binary in the same session.
set -euo pipefail
BIN=${1:-target/release/shardcast}
MODE=${2:-simple}
N=${3:-3000}
PGBIN=/usr/lib/postgresql/15/bin
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
D=$(mktemp -d); chmod 777 "$D"
trap 'as_pg $PGBIN/pg_ctl -D $D/data -m immediate stop >/dev/null 2>&1 || true; kill $VP 2>/dev/null || true; rm -rf $D' EXIT
as_pg $PGBIN/initdb -D "$D/data" -A trust -U postgres --no-sync -E UTF8 --locale=C >/dev/null
PORT=$(free_port)
as_pg $PGBIN/pg_ctl -D "$D/data" -l "$D/log" -w -o "-p $PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$D -c fsync=off" start >/dev/null
psql -h 127.0.0.1 -p "$PORT" -U postgres -qc "CREATE DATABASE bench"
pgbench -i -q -s 1 -h 127.0.0.1 -p "$PORT" -U postgres bench >/dev/null 2>&1
PP=$(free_port); AP=$(free_port)
cat > "$D/sc.toml" <<EOT
[proxy]
listen = "127.0.0.1:$PP"
admin_listen = "127.0.0.1:$AP"
database = "app"
[[nodes]]
name = "n0"
url = "postgres://postgres@127.0.0.1:$PORT/bench"
[[tables]]
name = "pgbench_accounts"
shard_key = "aid"
key_type = "integer"
EOT
valgrind --tool=callgrind --callgrind-out-file="$D/cg.out" "$BIN" run --config "$D/sc.toml" > "$D/sc.log" 2>&1 &
VP=$!
for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$PP) 2>/dev/null && break; sleep 0.3; done
pgbench -S -M "$MODE" -c 4 -j 1 -t 200 -h 127.0.0.1 -p "$PP" -U postgres app >/dev/null 2>&1
callgrind_control -z $VP >/dev/null 2>&1
pgbench -S -M "$MODE" -c 4 -j 1 -t "$N" -h 127.0.0.1 -p "$PP" -U postgres app >/dev/null 2>&1
callgrind_control -d $VP >/dev/null 2>&1
sleep 1
IR=$(grep -h '^summary:\|^totals:' "$D/cg.out.1" | head -1 | awk '{print $2}')
echo "$MODE: $(( IR / (4 * N) )) instructions per transaction in the proxy ($BIN)"
