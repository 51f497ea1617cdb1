//! The router: finds the shard key in a statement and decides where it goes.
//!
//! `sql` turns statement text into a [`Shape`]: what kind of command it is,
//! which sharded table it touches, and where its key comes from (a literal,
//! or a `$n` parameter that Bind will supply). Shapes are cached per
//! normalised text, so a statement seen before costs a lexer pass, not a parse.

mod cache;
pub mod keys;
pub mod lexer;
pub mod sql;

pub use sql::{Analysis, Analyzer, Command, KeyRef, KeyValue, RouteError, Shape, Target};
#[cfg(test)]
mod tests;
