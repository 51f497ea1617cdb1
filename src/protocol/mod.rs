//! The PostgreSQL v3 wire protocol as bytes in, bytes out — no sockets, no
//! routing. Frames are kept whole (`tag + length + body` as one `Bytes`) so
//! the proxy forwards what it does not need to rewrite without re-encoding,
//! and the codec can be unit-tested (or fuzzed) on byte strings alone.

pub mod copy;
pub mod framing;
pub mod messages;
pub mod params;
pub mod rows;
pub mod sqlstate;
pub mod startup;

pub use framing::{try_frame, Frame, ProtocolError, MAX_MESSAGE_LEN};
