//! frontend (in progress)
