//! PostgreSQL's own 64-bit hash functions (seed 0), reimplemented bit for bit
//! so that a partition's rows can be selected on the server with
//! `WHERE hashint8extended(key, 0) BETWEEN lo AND hi`.
//!
//! These are Bob Jenkins' lookup3 as PostgreSQL uses it (`hash_bytes_extended`
//! and `hash_bytes_uint32_extended` in `src/common/hashfn.c`), with seed 0 the
//! seed-mixing step is skipped. The 64-bit result is `(b << 32) | c`,
//! read as a signed int8 like the SQL functions return it.

const INIT: u32 = 0x9e37_79b9;

#[inline(always)]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline(always)]
fn finish(mut a: u32, mut b: u32, mut c: u32) -> i64 {
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    (((b as u64) << 32) | c as u64) as i64
}

/// `hash_bytes_uint32_extended(k, 0)`.
#[inline]
pub fn hash_uint32(k: u32) -> i64 {
    let init = INIT.wrapping_add(4).wrapping_add(3_923_095);
    finish(init.wrapping_add(k), init, init)
}

/// `hash_bytes_extended(bytes, len, 0)`.
pub fn hash_bytes(k: &[u8]) -> i64 {
    let init = INIT.wrapping_add(k.len() as u32).wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    let word = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let mut rest = k;
    while rest.len() >= 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    // The tail, little-endian; the lowest byte of c stays for the length.
    let byte = |i: usize, shift: u32| (rest[i] as u32) << shift;
    let n = rest.len();
    if n >= 11 {
        c = c.wrapping_add(byte(10, 24));
    }
    if n >= 10 {
        c = c.wrapping_add(byte(9, 16));
    }
    if n >= 9 {
        c = c.wrapping_add(byte(8, 8));
    }
    if n >= 8 {
        b = b.wrapping_add(byte(7, 24));
    }
    if n >= 7 {
        b = b.wrapping_add(byte(6, 16));
    }
    if n >= 6 {
        b = b.wrapping_add(byte(5, 8));
    }
    if n >= 5 {
        b = b.wrapping_add(byte(4, 0));
    }
    if n >= 4 {
        a = a.wrapping_add(byte(3, 24));
    }
    if n >= 3 {
        a = a.wrapping_add(byte(2, 16));
    }
    if n >= 2 {
        a = a.wrapping_add(byte(1, 8));
    }
    if n >= 1 {
        a = a.wrapping_add(byte(0, 0));
    }
    finish(a, b, c)
}

/// `hashint8extended(v, 0)`: the high half is folded into the low half
/// (complemented for negatives), so an int8 in int4 range hashes like the int4.
#[inline]
pub fn hash_int8(v: i64) -> i64 {
    let lo = v as u32;
    let hi = (v >> 32) as u32;
    hash_uint32(lo ^ if v >= 0 { hi } else { !hi })
}

/// `hashint4extended(v, 0)`.
#[inline]
pub fn hash_int4(v: i32) -> i64 {
    hash_uint32(v as u32)
}

/// `hashtextextended(s, 0)` for a deterministic collation: the hash of the bytes.
#[inline]
pub fn hash_text(s: &[u8]) -> i64 {
    hash_bytes(s)
}

/// `uuid_hash_extended(u, 0)`: the hash of the 16 bytes.
#[inline]
pub fn hash_uuid(u: &[u8; 16]) -> i64 {
    hash_bytes(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Values read off PostgreSQL 15 (`SELECT hashint8extended(42, 0)` etc.).
    #[test]
    fn known_values() {
        for (v, want) in KNOWN_INT8 {
            assert_eq!(hash_int8(*v), *want, "hashint8extended({v}, 0)");
        }
        for (v, want) in KNOWN_TEXT {
            assert_eq!(hash_text(v.as_bytes()), *want, "hashtextextended('{v}', 0)");
        }
    }

    const KNOWN_INT8: &[(i64, i64)] = &[
        (0, 4154612158245552303),
        (1, -3670598878359251130),
        (-1, -1888257769727981238),
        (42, 8010225493015854792),
        (2147483647, -9109110466470504941),
        (-2147483648, 1977219185673256887),
        (4294967296, -3670598878359251130),
        (-9223372036854775808, -9109110466470504941),
        (9223372036854775807, 1977219185673256887),
        (123456789012, 5990271995538752477),
    ];
    const KNOWN_TEXT: &[(&str, i64)] = &[
        ("", -6939563903564495251),
        ("a", 3591986179850072241),
        ("ab", 2833316173711343549),
        ("abc", -6747756470228489321),
        ("abcd", -1038429303365892052),
        ("hello world", 6947366892317592103),
        ("twelve bytes", -7123776401673968163),
        ("thirteen byte", -1147533121609491268),
        ("ünïcødé ☃", -6637862787014564606),
        (
            "a longer string that spans several blocks!",
            -2694176195936772851,
        ),
    ];

    proptest! {
        #[test]
        fn int8_in_int4_range_hashes_like_int4(v in any::<i32>()) {
            prop_assert_eq!(hash_int8(v as i64), hash_int4(v));
        }

        #[test]
        fn text_hash_depends_on_every_byte(s in proptest::collection::vec(any::<u8>(), 1..40), i in any::<usize>()) {
            let mut t = s.clone();
            let i = i % t.len();
            t[i] ^= 1;
            prop_assert_ne!(hash_text(&s), hash_text(&t));
        }
    }
}
