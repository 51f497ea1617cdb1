#!/usr/bin/env bash
# The whole test suite: unit tests and end-to-end tests. The end-to-end tests
# start their own PostgreSQL servers (initdb + pg_ctl as user postgres, on
# free loopback ports) and the proxy, and tear them down afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo nextest run --no-fail-fast "$@"
