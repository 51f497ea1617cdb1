//! analyzer (in progress)
