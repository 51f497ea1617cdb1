#!/usr/bin/env bash
# Runs the proxy on config/shardcast.toml against the local PostgreSQL
# (127.0.0.1:5432): creates the shard databases and tables, writes sample
# rows, shows where they landed, and keeps serving on 127.0.0.1:6432.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "demo: starting the local PostgreSQL cluster"
  pg_ctlcluster --skip-systemctl-redirect 15 main start || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
cargo build --release --quiet
exec target/release/shardcast demo --config "${1:-config/shardcast.toml}"
