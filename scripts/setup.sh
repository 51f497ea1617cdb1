#!/usr/bin/env bash
# Installs what shardcast's demo and tests need, if missing. Idempotent.
# Needs: a Rust toolchain (cargo). Installs: PostgreSQL 15 server binaries and
# client tools (psql, pgbench), cargo-nextest.
set -euo pipefail

need_apt=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client-15)
command -v pgbench >/dev/null 2>&1 || need_apt+=(postgresql-15)
command -v runuser >/dev/null 2>&1 || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
id postgres >/dev/null 2>&1 || { echo "setup: the 'postgres' user is missing (it comes with postgresql-15)"; exit 1; }

command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust from rustup.rs first"; exit 1; }
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install cargo-nextest --locked --quiet
fi
