//! The Access Pattern Analyzer: records every routed request per partition
//! and forecasts each partition's load.

pub mod eval;
pub mod forecast;
pub mod recorder;

pub use recorder::{Recorder, Request, RequestKind};
