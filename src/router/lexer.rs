//! A small PostgreSQL lexer that normalises a statement: literals become
//! markers, comments and runs of whitespace become one space. Two texts
//! that differ only in their literals normalise alike, so the router parses
//! a statement's shape once and afterwards only re-reads the literals.

use std::borrow::Cow;

/// What kind of literal a marker stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LitKind {
    Number,
    /// `'...'`, with `''` doubled quotes.
    Str,
    /// `E'...'`, with backslash escapes.
    EStr,
    /// `$tag$...$tag$`.
    Dollar,
    /// `B'..'`, `X'..'`, `U&'..'`: never a shard key.
    Other,
}

/// One literal: its byte range in the original text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lit {
    pub start: usize,
    pub end: usize,
    pub kind: LitKind,
}

/// A normalised statement.
#[derive(Debug, Default)]
pub struct Normalized {
    /// The cache key: the text with literals replaced by `\u{1}` (numbers)
    /// or `\u{2}` (strings) and comments/whitespace collapsed.
    pub key: String,
    pub lits: Vec<Lit>,
    /// Lower-cased unquoted identifiers and keywords, for the fallback when
    /// the parser cannot read a statement.
    pub words: Vec<(usize, usize)>,
    /// Byte offsets of top-level `;` in the original text.
    pub semicolons: Vec<usize>,
}

const SPACE: u8 = 1;
const IDENT_START: u8 = 2;
const IDENT: u8 = 4;

/// Byte classes, looked up once per byte on the hot path.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        if c.is_ascii_whitespace() {
            t[i] = SPACE;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            t[i] = IDENT_START | IDENT;
        }
        if c.is_ascii_digit() || c == b'$' {
            t[i] = IDENT;
        }
        i += 1;
    }
    t
};

/// From just inside an opening `quote`, the index just past the closing one
/// (a doubled quote is part of the text; with `backslash`, so is any
/// backslash-escaped byte). Unterminated text runs to the end.
fn skip_quoted(b: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
        } else if b[i] == quote {
            if b.get(i + 1) != Some(&quote) {
                return i + 1;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    b.len()
}

fn is_ident_start(c: u8) -> bool {
    CLASS[c as usize] & IDENT_START != 0
}

fn is_ident_char(c: u8) -> bool {
    CLASS[c as usize] & IDENT != 0
}

/// Normalises `sql`. Never fails: unterminated quotes run to the end.
pub fn normalize(sql: &str) -> Normalized {
    let mut n = Normalized::default();
    normalize_into(sql, &mut n);
    n
}

/// Normalises into `n`, reusing its buffers (no allocation once warm).
pub fn normalize_into(sql: &str, n: &mut Normalized) {
    n.key.clear();
    n.lits.clear();
    n.words.clear();
    n.semicolons.clear();
    n.key.reserve(sql.len());
    let b = sql.as_bytes();
    let mut i = 0;
    let mut pending_space = false;
    let push_space = |n: &mut Normalized, pending: &mut bool| {
        if *pending && !n.key.is_empty() {
            n.key.push(' ');
        }
        *pending = false;
    };
    while i < b.len() {
        let c = b[i];
        // Whitespace and comments.
        if CLASS[c as usize] & SPACE != 0 {
            pending_space = true;
            i += 1;
            continue;
        }
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            pending_space = true;
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            // PostgreSQL block comments nest.
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            pending_space = true;
            continue;
        }
        push_space(n, &mut pending_space);
        let next = b.get(i + 1).copied().unwrap_or(0);
        let prefixed_string = next == b'\'' && matches!(c | 0x20, b'e' | b'b' | b'x' | b'n');
        let unicode_string = c | 0x20 == b'u' && next == b'&' && b.get(i + 2) == Some(&b'\'');
        // Identifiers and keywords, the most common token, first.
        if is_ident_start(c) && !prefixed_string && !unicode_string {
            let start = i;
            let mut ascii = true;
            while i < b.len() && is_ident_char(b[i]) {
                ascii &= b[i] < 0x80;
                i += 1;
            }
            let at = n.key.len();
            let word = &sql[start..i];
            if ascii {
                n.key.push_str(word);
                n.key[at..].make_ascii_lowercase();
            } else {
                for ch in word.chars() {
                    n.key.extend(ch.to_lowercase());
                }
            }
            n.words.push((at, n.key.len()));
            continue;
        }
        // String literals, with their prefixes.
        if c == b'\'' || prefixed_string {
            let kind = match c.to_ascii_uppercase() {
                b'\'' | b'N' => LitKind::Str,
                b'E' => LitKind::EStr,
                _ => LitKind::Other,
            };
            let start = i;
            let open = if c == b'\'' { 1 } else { 2 };
            i = skip_quoted(b, i + open, b'\'', kind == LitKind::EStr);
            n.lits.push(Lit {
                start,
                end: i,
                kind,
            });
            n.key.push('\u{2}');
            continue;
        }
        if unicode_string {
            let start = i;
            i = skip_quoted(b, i + 3, b'\'', false);
            n.lits.push(Lit {
                start,
                end: i,
                kind: LitKind::Other,
            });
            n.key.push('\u{2}');
            continue;
        }
        // Dollar: a parameter `$1`, or a dollar-quoted string `$tag$...$tag$`.
        if c == b'$' {
            if b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                let start = i;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                n.key.push_str(&sql[start..i]);
                continue;
            }
            let mut j = i + 1;
            while j < b.len() && b[j] != b'$' && is_ident_char(b[j]) {
                j += 1;
            }
            if j < b.len() && b[j] == b'$' {
                let tag = &sql[i..=j];
                let body = j + 1;
                let close = sql[body..].find(tag).map(|p| body + p);
                let end = close.map(|p| p + tag.len()).unwrap_or(b.len());
                n.lits.push(Lit {
                    start: i,
                    end,
                    kind: LitKind::Dollar,
                });
                n.key.push('\u{2}');
                i = end;
                continue;
            }
        }
        // Quoted identifiers are copied as they are.
        if c == b'"' {
            let start = i;
            i = skip_quoted(b, i + 1, b'"', false);
            n.key.push_str(&sql[start..i]);
            continue;
        }
        // Numbers (not inside identifiers: those are consumed below).
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                // An exponent sign belongs to the number.
                if (b[i] == b'e' || b[i] == b'E') && matches!(b.get(i + 1), Some(b'+') | Some(b'-'))
                {
                    i += 1;
                }
                i += 1;
            }
            n.lits.push(Lit {
                start,
                end: i,
                kind: LitKind::Number,
            });
            n.key.push('\u{1}');
            continue;
        }
        // Operators and punctuation: copied (a char at a time, UTF-8 safe).
        if c == b';' {
            n.semicolons.push(i);
        }
        if c < 0x80 {
            n.key.push(c as char);
            i += 1;
        } else {
            let ch = sql[i..].chars().next().expect("in bounds");
            n.key.push(ch);
            i += ch.len_utf8();
        }
    }
}

impl Normalized {
    /// The words (lower-cased identifiers and keywords) in order.
    pub fn words(&self) -> impl Iterator<Item = &str> {
        self.words.iter().map(|(s, e)| &self.key[*s..*e])
    }
}

/// The statements of a query string, split at top-level `;` (not inside
/// strings or comments); empty statements are dropped.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let n = normalize(sql);
    let mut out = Vec::with_capacity(n.semicolons.len() + 1);
    let mut at = 0;
    for &i in n.semicolons.iter().chain(std::iter::once(&sql.len())) {
        let piece = sql[at..i].trim();
        if !piece.is_empty() {
            out.push(piece);
        }
        at = (i + 1).min(sql.len());
    }
    out
}

/// The text to parse on a cache miss: the original with literal `k` replaced
/// by the placeholder `$<PLACEHOLDER_BASE + k>`, so the parsed shape says
/// which literal is the key without depending on its value.
pub fn placeholder_text(sql: &str, lits: &[Lit]) -> String {
    let mut out = String::with_capacity(sql.len() + lits.len() * 6);
    let mut at = 0;
    for (k, l) in lits.iter().enumerate() {
        out.push_str(&sql[at..l.start]);
        out.push_str(&format!(" ${}", PLACEHOLDER_BASE + k));
        at = l.end;
    }
    out.push_str(&sql[at..]);
    out
}

/// Placeholders at or above this number stand for literals, not parameters.
pub const PLACEHOLDER_BASE: usize = 1_000_000;

/// The value of a literal: a number's text, or a string's unescaped content.
/// Borrowed from `sql` unless unescaping changes it.
pub fn literal_value<'a>(sql: &'a str, l: &Lit) -> Option<Cow<'a, str>> {
    let raw = &sql[l.start..l.end];
    match l.kind {
        LitKind::Number if raw.contains('_') => Some(raw.replace('_', "").into()),
        LitKind::Number => Some(raw.into()),
        LitKind::Str => {
            let body = raw.strip_prefix(['N', 'n']).unwrap_or(raw);
            let inner = body.strip_prefix('\'')?.strip_suffix('\'')?;
            Some(if inner.contains("''") {
                inner.replace("''", "'").into()
            } else {
                inner.into()
            })
        }
        LitKind::EStr => {
            let inner = raw.get(2..raw.len().checked_sub(1)?)?;
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next()? {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        other => out.push(other),
                    },
                    '\'' => {
                        chars.next();
                        out.push('\'');
                    }
                    c => out.push(c),
                }
            }
            Some(out.into())
        }
        LitKind::Dollar => {
            let tag_end = raw[1..].find('$')? + 2;
            raw.get(tag_end..raw.len().checked_sub(tag_end)?)
                .map(Cow::Borrowed)
        }
        LitKind::Other => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_become_markers() {
        let a = normalize("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;");
        let b = normalize("select  abalance from pgbench_accounts -- hi\n where aid = 9;");
        assert_eq!(a.key, b.key);
        assert_eq!(a.lits.len(), 1);
        assert_eq!(
            literal_value(
                "… aid = 12345",
                &Lit {
                    start: 10,
                    end: 15,
                    kind: LitKind::Number
                }
            )
            .unwrap(),
            "12345"
        );
    }

    #[test]
    fn strings_comments_and_dollars() {
        let sql = "INSERT INTO t VALUES ('it''s', E'a\\'b', $q$x;y$q$, $1, /* c /* nested */ */ -5, 1.5e-3)";
        let n = normalize(sql);
        let vals: Vec<_> = n.lits.iter().map(|l| literal_value(sql, l)).collect();
        assert_eq!(
            vals,
            vec![
                Some("it's".into()),
                Some("a'b".into()),
                Some("x;y".into()),
                Some("5".into()),
                Some("1.5e-3".into())
            ]
        );
        assert!(n.key.contains("$1"));
        assert!(!n.key.contains("nested"));
    }

    #[test]
    fn identifiers_with_digits_are_not_numbers() {
        let n = normalize("SELECT t1.c2 FROM \"T 3\" t1");
        assert!(n.lits.is_empty());
        assert_eq!(
            n.words().collect::<Vec<_>>(),
            vec!["select", "t1", "c2", "from", "t1"]
        );
    }

    #[test]
    fn statements_split_outside_quotes() {
        assert_eq!(
            split_statements("SET a = 1; SET b = ';' ; -- c;\n;SELECT $$;$$"),
            vec!["SET a = 1", "SET b = ';'", "-- c;", "SELECT $$;$$"]
        );
    }

    #[test]
    fn placeholders_replace_literals() {
        let sql = "SELECT * FROM a WHERE id = 7 AND s = 'x'";
        let n = normalize(sql);
        assert_eq!(
            placeholder_text(sql, &n.lits),
            "SELECT * FROM a WHERE id =  $1000000 AND s =  $1000001"
        );
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for s in [
            "'abc", "E'ab\\", "$x$abc", "/* abc", "\"abc", "$", "U&'", "1e+", "é'",
        ] {
            let n = normalize(s);
            for l in &n.lits {
                let _ = literal_value(s, l);
            }
        }
    }
}
