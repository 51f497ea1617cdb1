//! End-to-end tests against real PostgreSQL servers (see `harness`).
//! Each test starts its own nodes and proxy on free ports, so tests run in
//! parallel and clean up after themselves.

mod harness;

mod clients;
mod copy;
mod databases;
mod differential;
mod failures;
mod forecast;
mod hash_compat;
mod migration;
mod migration_faults;
mod multiwrite;
mod notify;
mod params;
mod pinning;
mod pipeline;
mod planning;
mod pooling;
mod prepared;
mod routing;
mod transactions;
