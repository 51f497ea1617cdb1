//! End-to-end tests against real PostgreSQL servers (see `harness`).
