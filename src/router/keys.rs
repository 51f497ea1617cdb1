//! Shard-key values: from SQL literals and Bind parameters to a typed key,
//! and from a key to its PostgreSQL hash.

use crate::config::KeyType;
use crate::ring::hash;

use super::sql::{KeyValue, RouteError};

/// A key from literal text (a number's digits or a string's content), read
/// the way PostgreSQL would read it for a column of `key_type`.
pub fn key_from_text(text: &str, key_type: KeyType) -> Result<KeyValue, RouteError> {
    match key_type {
        KeyType::Bigint | KeyType::Integer => {
            let t = text.trim();
            let v: i64 = t.parse().map_err(|_| {
                RouteError::BadKey(format!(
                    "invalid input syntax for type {}: \"{t}\"",
                    type_name(key_type)
                ))
            })?;
            if key_type == KeyType::Integer && i32::try_from(v).is_err() {
                return Err(RouteError::BadKey(format!(
                    "value \"{t}\" is out of range for type integer"
                )));
            }
            Ok(KeyValue::Int(v))
        }
        KeyType::Text => Ok(KeyValue::Text(text.to_string())),
        KeyType::Uuid => parse_uuid(text).map(KeyValue::Uuid).ok_or_else(|| {
            RouteError::BadKey(format!("invalid input syntax for type uuid: \"{text}\""))
        }),
    }
}

fn type_name(t: KeyType) -> &'static str {
    match t {
        KeyType::Bigint => "bigint",
        KeyType::Integer => "integer",
        KeyType::Text => "text",
        KeyType::Uuid => "uuid",
    }
}

/// PostgreSQL's accepted uuid spellings: 32 hex digits, optionally in
/// braces, with hyphens allowed after any group of four digits.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let s = s.trim();
    let s = s
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(s);
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut since_hyphen = 0;
    for c in s.chars() {
        if c == '-' {
            if n == 0 || since_hyphen % 4 != 0 || since_hyphen == 0 {
                return None;
            }
            since_hyphen = 0;
            continue;
        }
        let d = c.to_digit(16)? as u8;
        if n >= 32 {
            return None;
        }
        out[n / 2] |= if n % 2 == 0 { d << 4 } else { d };
        n += 1;
        since_hyphen += 1;
    }
    (n == 32 && !s.ends_with('-')).then_some(out)
}

/// A Bind parameter as a key: text format parses like a literal; binary is
/// big-endian int2/int4/int8 by length, raw bytes for text, 16 bytes for uuid.
pub fn key_from_param(
    bytes: Option<&[u8]>,
    binary: bool,
    key_type: KeyType,
) -> Result<KeyValue, RouteError> {
    let Some(b) = bytes else {
        return Ok(KeyValue::Null);
    };
    if !binary {
        let text = std::str::from_utf8(b)
            .map_err(|_| RouteError::BadKey("parameter is not valid UTF-8".into()))?;
        return key_from_text(text, key_type);
    }
    match key_type {
        KeyType::Bigint | KeyType::Integer => match b.len() {
            2 => Ok(KeyValue::Int(i16::from_be_bytes([b[0], b[1]]) as i64)),
            4 => Ok(KeyValue::Int(
                i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64
            )),
            8 => {
                let v = i64::from_be_bytes(b.try_into().expect("length 8"));
                if key_type == KeyType::Integer && i32::try_from(v).is_err() {
                    return Err(RouteError::BadKey(format!(
                        "value {v} is out of range for type integer"
                    )));
                }
                Ok(KeyValue::Int(v))
            }
            n => Err(RouteError::BadKey(format!(
                "binary integer parameter of {n} bytes"
            ))),
        },
        KeyType::Text => String::from_utf8(b.to_vec())
            .map(KeyValue::Text)
            .map_err(|_| RouteError::BadKey("text parameter is not valid UTF-8".into())),
        KeyType::Uuid => b
            .try_into()
            .map(KeyValue::Uuid)
            .map_err(|_| RouteError::BadKey(format!("binary uuid parameter of {} bytes", b.len()))),
    }
}

/// The key's PostgreSQL hash; None for NULL (no shard owns it).
#[inline]
pub fn hash_key(key: &KeyValue, key_type: KeyType) -> Option<i64> {
    Some(match (key, key_type) {
        (KeyValue::Null, _) => return None,
        (KeyValue::Int(v), KeyType::Integer) => hash::hash_int4(*v as i32),
        (KeyValue::Int(v), _) => hash::hash_int8(*v),
        (KeyValue::Text(s), _) => hash::hash_text(s.as_bytes()),
        (KeyValue::Uuid(u), _) => hash::hash_uuid(u),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers() {
        assert_eq!(key_from_text("42", KeyType::Bigint), Ok(KeyValue::Int(42)));
        assert_eq!(
            key_from_text(" -7 ", KeyType::Integer),
            Ok(KeyValue::Int(-7))
        );
        assert!(key_from_text("3000000000", KeyType::Integer).is_err());
        assert!(key_from_text("abc", KeyType::Bigint).is_err());
        assert_eq!(
            key_from_param(Some(&5i32.to_be_bytes()), true, KeyType::Bigint),
            Ok(KeyValue::Int(5))
        );
        assert_eq!(
            key_from_param(Some(b"12"), false, KeyType::Integer),
            Ok(KeyValue::Int(12))
        );
        assert_eq!(
            key_from_param(None, false, KeyType::Integer),
            Ok(KeyValue::Null)
        );
    }

    #[test]
    fn uuids() {
        let want = parse_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        for s in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        ] {
            assert_eq!(parse_uuid(s), Some(want), "{s}");
        }
        for s in [
            "",
            "a0eebc99",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "-a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "zz",
        ] {
            assert_eq!(parse_uuid(s), None, "{s}");
        }
        assert_eq!(want[0], 0xa0);
        assert_eq!(want[15], 0x11);
    }

    #[test]
    fn integer_keys_hash_like_the_column_type() {
        // An integer column hashes with hashint4extended, which for values in
        // int4 range equals hashint8extended.
        assert_eq!(
            hash_key(&KeyValue::Int(5), KeyType::Integer),
            hash_key(&KeyValue::Int(5), KeyType::Bigint)
        );
        assert_eq!(hash_key(&KeyValue::Null, KeyType::Bigint), None);
    }
}
