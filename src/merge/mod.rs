//! The query engine for reads that span shards. A SELECT without its
//! shard key runs on every node; when its answer is not simply the union
//! of the nodes' rows (aggregates, GROUP BY, ORDER BY, LIMIT, DISTINCT),
//! `plan` splits it into a partial query for the nodes and a final query
//! that one node runs over the gathered partial rows, and `run` carries
//! that out. Whatever cannot be combined exactly is refused with `0A000`:
//! a wrong answer is worse than a refusal.
//!
//! The frontend calls this room through one seam: [`plan`] to classify a
//! fan-out read, [`run`] to answer it on connections it checked out.

mod aggregate;
mod from;
pub mod hide;
pub mod plan;
pub mod render;
pub mod run;
pub mod split;

pub use plan::{plan, row_wise, Catalog, Fanout, Nested, Plan, Refusal};
pub use render::TypeNames;
pub use run::{run, run_nested, MergeError, Merged, Request};
