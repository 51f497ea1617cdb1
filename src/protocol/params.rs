//! ParameterStatus bookkeeping, on bytes alone: the values of the server's
//! reported parameters (DateStyle, TimeZone, client_encoding, …) one party
//! holds — a server connection, or a client by what it has been told —
//! with an order-independent fingerprint, so that "does this server
//! connection hold what the client was told?" costs one compare per round.
//!
//! `application_name` is left out of the fingerprint and of the changes:
//! server connections carry the proxy's own name, clients theirs.

use std::hash::{Hash, Hasher};

use super::framing::{Frame, Reader};

/// Reported parameters and their values.
#[derive(Debug, Clone, Default)]
pub struct ParamSet {
    vals: Vec<(String, String)>,
    fp: u64,
}

/// Not compared between a client and a server connection.
const OWN_PER_SIDE: &str = "application_name";

fn entry_hash(name: &str, value: &str) -> u64 {
    if name == OWN_PER_SIDE {
        return 0;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    value.hash(&mut h);
    h.finish()
}

impl ParamSet {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut s = ParamSet::default();
        for (k, v) in pairs {
            s.set(k, v);
        }
        s
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vals
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Records a value; true if it changed.
    pub fn set(&mut self, name: &str, value: &str) -> bool {
        match self.vals.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) if v == value => false,
            Some((_, v)) => {
                self.fp = self
                    .fp
                    .wrapping_sub(entry_hash(name, v))
                    .wrapping_add(entry_hash(name, value));
                *v = value.to_string();
                true
            }
            None => {
                self.fp = self.fp.wrapping_add(entry_hash(name, value));
                self.vals.push((name.to_string(), value.to_string()));
                true
            }
        }
    }

    /// Records the value a `ParameterStatus` frame carries (other frames
    /// are ignored).
    #[inline]
    pub fn observe(&mut self, f: &Frame) {
        self.observe_message(&f.bytes);
    }

    /// `observe` for a whole message's bytes (header included).
    #[inline]
    pub fn observe_message(&mut self, m: &[u8]) {
        if m.first() == Some(&b'S') {
            let mut r = Reader::new(b'S', m.get(5..).unwrap_or_default());
            if let (Ok(k), Ok(v)) = (r.cstr(), r.cstr()) {
                self.set(k, v);
            }
        }
    }

    /// Equal fingerprints: the same values (application_name aside).
    #[inline]
    pub fn fingerprint(&self) -> u64 {
        self.fp
    }

    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vals.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The values of `other` that this set lacks or holds otherwise: what
    /// to report to a holder of `self` so that it holds `other`.
    pub fn changes_to<'a>(&self, other: &'a ParamSet) -> Vec<(&'a str, &'a str)> {
        other
            .pairs()
            .filter(|(k, v)| *k != OWN_PER_SIDE && self.get(k) != Some(v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::parameter_status;

    #[test]
    fn fingerprints_ignore_order_and_application_name() {
        let a = ParamSet::from_pairs([("DateStyle", "ISO, MDY"), ("TimeZone", "UTC")]);
        let mut b = ParamSet::from_pairs([("TimeZone", "UTC"), ("application_name", "x")]);
        assert_ne!(a.fingerprint(), b.fingerprint());
        b.observe(&parameter_status("DateStyle", "ISO, MDY"));
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert!(a.changes_to(&b).is_empty());
        b.observe(&parameter_status("DateStyle", "German, DMY"));
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.changes_to(&b), vec![("DateStyle", "German, DMY")]);
        assert!(!b.set("DateStyle", "German, DMY"));
        b.set("DateStyle", "ISO, MDY");
        assert_eq!(a.fingerprint(), b.fingerprint());
    }
}
