//! PostgreSQL's own 64-bit hash functions (seed 0), reimplemented bit for bit
//! so that a partition's rows can be selected on the server with
//! `WHERE hashint8extended(key, 0) BETWEEN lo AND hi`.

/// `hashint8extended(v, 0)`.
pub fn hash_int8(_v: i64) -> i64 {
    todo!("helper: lookup3 port")
}

/// `hashint4extended(v, 0)`.
pub fn hash_int4(_v: i32) -> i64 {
    todo!("helper: lookup3 port")
}

/// `hashtextextended(s, 0)` for a deterministic collation: the hash of the bytes.
pub fn hash_text(_s: &[u8]) -> i64 {
    todo!("helper: lookup3 port")
}

/// `uuid_hash_extended(u, 0)`: the hash of the 16 bytes.
pub fn hash_uuid(_u: &[u8; 16]) -> i64 {
    todo!("helper: lookup3 port")
}
