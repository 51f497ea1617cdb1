//! The Access Pattern Analyzer: records every routed request per partition
//! (`recorder`), forecasts each partition's load (`forecast`: the models,
//! `service`: the proxy's forecasting task), and checks the forecaster on
//! real traces (`eval`).

pub mod eval;
pub mod forecast;
pub mod recorder;
pub mod service;

pub use recorder::{Recorder, Request, RequestKind};
pub use service::Forecaster;
