//! Cutting a `COPY … FROM STDIN` byte stream into rows and reading each
//! row's shard-key field, for text, CSV and binary formats — on bytes
//! alone, as the stream arrives (a row may span CopyData messages), so
//! the proxy can send every row to its node without holding the input.

use std::borrow::Cow;

/// COPY data formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Csv,
    Binary,
}

/// The options of a COPY statement that shape its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub format: Format,
    pub delimiter: u8,
    pub quote: u8,
    pub escape: u8,
    pub null: Vec<u8>,
    pub header: bool,
}

impl Options {
    pub fn new(format: Format) -> Self {
        let csv = format == Format::Csv;
        Self {
            format,
            delimiter: if csv { b',' } else { b'\t' },
            quote: b'"',
            escape: b'"',
            null: if csv { Vec::new() } else { b"\\N".to_vec() },
            header: false,
        }
    }
}

/// A row's shard-key field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    Null,
    /// Text and CSV: the field's text, unescaped.
    Text(Cow<'a, [u8]>),
    /// Binary: the field's bytes.
    Binary(&'a [u8]),
}

/// What the splitter found in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Bytes every node needs (a header line, the binary header or trailer).
    Everyone(&'a [u8]),
    /// One row (its bytes as sent), its key field and its line number.
    Row {
        bytes: &'a [u8],
        key: Key<'a>,
        line: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("COPY line {line}: {message}")]
pub struct CopyError {
    pub line: u64,
    pub message: String,
}

/// Splits one COPY stream.
pub struct Splitter {
    opts: Options,
    key_index: usize,
    buf: Vec<u8>,
    /// Scan state of the partial row at the front of `buf` (CSV quotes).
    scanned: usize,
    in_quotes: bool,
    line: u64,
    header_left: bool,
    binary_header_left: bool,
    done: bool,
}

impl Splitter {
    /// `key_index`: the 0-based position of the shard key among the
    /// columns the COPY sends.
    pub fn new(opts: Options, key_index: usize) -> Self {
        Self {
            header_left: opts.header && opts.format != Format::Binary,
            binary_header_left: opts.format == Format::Binary,
            opts,
            key_index,
            buf: Vec::new(),
            scanned: 0,
            in_quotes: false,
            line: 0,
            done: false,
        }
    }

    /// Feeds a chunk; calls `sink` for every complete piece.
    pub fn feed(&mut self, data: &[u8], sink: &mut dyn FnMut(Piece<'_>)) -> Result<(), CopyError> {
        if self.done {
            return Ok(());
        }
        self.buf.extend_from_slice(data);
        let used = match self.opts.format {
            Format::Binary => self.binary(sink)?,
            _ => self.lines(sink)?,
        };
        self.buf.drain(..used);
        self.scanned -= used.min(self.scanned);
        Ok(())
    }

    /// The end of the stream: a last text row without a newline is still a
    /// row; anything else left over is an error.
    pub fn finish(&mut self, sink: &mut dyn FnMut(Piece<'_>)) -> Result<(), CopyError> {
        if self.done || self.buf.is_empty() {
            return if self.opts.format == Format::Binary && !self.done {
                Err(self.error("binary COPY data ended without its trailer"))
            } else {
                Ok(())
            };
        }
        if self.opts.format == Format::Binary {
            return Err(self.error("binary COPY data ended inside a row"));
        }
        if self.in_quotes {
            return Err(self.error("unterminated CSV quoted field"));
        }
        self.buf.push(b'\n');
        let used = self.lines(sink)?;
        self.buf.drain(..used);
        Ok(())
    }

    fn error(&self, message: &str) -> CopyError {
        CopyError {
            line: self.line.max(1),
            message: message.to_string(),
        }
    }

    /// Text and CSV: complete lines from the front of the buffer.
    fn lines(&mut self, sink: &mut dyn FnMut(Piece<'_>)) -> Result<usize, CopyError> {
        let mut start = 0;
        loop {
            let Some(end) = self.row_end(start) else {
                return Ok(start);
            };
            self.line += 1;
            let row = &self.buf[start..=end];
            if self.header_left {
                self.header_left = false;
                sink(Piece::Everyone(row));
            } else if self.opts.format == Format::Text && trim_eol(row) == b"\\." {
                // End-of-data marker: nothing after it counts.
                self.done = true;
                return Ok(self.buf.len());
            } else {
                let key = match self.opts.format {
                    Format::Csv => csv_field(trim_eol(row), self.key_index, &self.opts),
                    _ => text_field(trim_eol(row), self.key_index, &self.opts),
                };
                let Some(key) = key else {
                    return Err(CopyError {
                        line: self.line,
                        message: "missing data for the shard key column".into(),
                    });
                };
                sink(Piece::Row {
                    bytes: row,
                    key,
                    line: self.line,
                });
            }
            start = end + 1;
            self.scanned = start;
            self.in_quotes = false;
        }
    }

    /// The index of the newline that ends the row starting at `start`.
    fn row_end(&mut self, start: usize) -> Option<usize> {
        if self.opts.format != Format::Csv {
            return self.buf[start..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|i| start + i);
        }
        let (q, e) = (self.opts.quote, self.opts.escape);
        let mut i = self.scanned.max(start);
        while i < self.buf.len() {
            let b = self.buf[i];
            if self.in_quotes {
                if b == e && e != q && i + 1 < self.buf.len() {
                    i += 2;
                    continue;
                }
                if b == e && e != q {
                    // The escaped byte has not arrived yet.
                    break;
                }
                if b == q {
                    self.in_quotes = false;
                }
            } else if b == q {
                self.in_quotes = true;
            } else if b == b'\n' {
                return Some(i);
            }
            i += 1;
        }
        self.scanned = i;
        None
    }

    /// Binary: the file header, tuples, the trailer.
    fn binary(&mut self, sink: &mut dyn FnMut(Piece<'_>)) -> Result<usize, CopyError> {
        const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
        let mut at = 0;
        if self.binary_header_left {
            if self.buf.len() < 19 {
                return Ok(0);
            }
            if &self.buf[..11] != SIGNATURE {
                return Err(self.error("binary COPY data does not start with the PGCOPY signature"));
            }
            let ext = u32::from_be_bytes(self.buf[15..19].try_into().unwrap()) as usize;
            if self.buf.len() < 19 + ext {
                return Ok(0);
            }
            sink(Piece::Everyone(&self.buf[..19 + ext]));
            self.binary_header_left = false;
            at = 19 + ext;
        }
        loop {
            let Some(n) = self.buf.get(at..at + 2) else {
                return Ok(at);
            };
            let fields = i16::from_be_bytes([n[0], n[1]]);
            if fields == -1 {
                sink(Piece::Everyone(&self.buf[at..at + 2]));
                self.done = true;
                return Ok(self.buf.len());
            }
            let mut p = at + 2;
            let mut key: Option<Option<(usize, usize)>> = None;
            for f in 0..fields.max(0) as usize {
                let Some(l) = self.buf.get(p..p + 4) else {
                    return Ok(at);
                };
                let len = i32::from_be_bytes(l.try_into().unwrap());
                p += 4;
                let span = if len < 0 {
                    None
                } else {
                    let end = p + len as usize;
                    if end > self.buf.len() {
                        return Ok(at);
                    }
                    let s = Some((p, end));
                    p = end;
                    s
                };
                if f == self.key_index {
                    key = Some(span);
                }
            }
            self.line += 1;
            let key = match key {
                None => {
                    return Err(CopyError {
                        line: self.line,
                        message: "missing data for the shard key column".into(),
                    })
                }
                Some(None) => Key::Null,
                Some(Some((s, e))) => Key::Binary(&self.buf[s..e]),
            };
            sink(Piece::Row {
                bytes: &self.buf[at..p],
                key,
                line: self.line,
            });
            at = p;
        }
    }
}

fn trim_eol(row: &[u8]) -> &[u8] {
    let row = row.strip_suffix(b"\n").unwrap_or(row);
    row.strip_suffix(b"\r").unwrap_or(row)
}

/// Field `index` of a text-format row, unescaped; None if the row is shorter.
fn text_field<'a>(row: &'a [u8], index: usize, opts: &Options) -> Option<Key<'a>> {
    let mut fields = row.split(|b| *b == opts.delimiter);
    let raw = fields.nth(index)?;
    if raw == opts.null.as_slice() {
        return Some(Key::Null);
    }
    if !raw.contains(&b'\\') {
        return Some(Key::Text(Cow::Borrowed(raw)));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' || i + 1 == raw.len() {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'x' => {
                let digits: Vec<u8> = raw[i..]
                    .iter()
                    .take(2)
                    .take_while(|d| d.is_ascii_hexdigit())
                    .copied()
                    .collect();
                i += digits.len();
                out.push(
                    u8::from_str_radix(std::str::from_utf8(&digits).ok()?, 16).unwrap_or(b'x'),
                );
            }
            b'0'..=b'7' => {
                let mut v = (c - b'0') as u32;
                let mut k = 0;
                while k < 2 && i < raw.len() && (b'0'..=b'7').contains(&raw[i]) {
                    v = v * 8 + (raw[i] - b'0') as u32;
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    Some(Key::Text(Cow::Owned(out)))
}

/// Field `index` of a CSV row, unquoted; None if the row is shorter.
fn csv_field<'a>(row: &'a [u8], index: usize, opts: &Options) -> Option<Key<'a>> {
    let (d, q, e) = (opts.delimiter, opts.quote, opts.escape);
    let mut i = 0;
    let mut field = 0;
    loop {
        // One field from `i`.
        let mut quoted = false;
        let mut value: Vec<u8> = Vec::new();
        let start = i;
        let mut in_q = false;
        while i < row.len() {
            let b = row[i];
            if in_q {
                if b == e
                    && i + 1 < row.len()
                    && (row[i + 1] == q || row[i + 1] == e)
                    && (e != q || row[i + 1] == q)
                {
                    value.push(row[i + 1]);
                    i += 2;
                    continue;
                }
                if b == q {
                    in_q = false;
                } else {
                    value.push(b);
                }
            } else if b == q {
                in_q = true;
                quoted = true;
            } else if b == d {
                break;
            } else {
                value.push(b);
            }
            i += 1;
        }
        if field == index {
            if !quoted && row[start..i] == *opts.null.as_slice() {
                return Some(Key::Null);
            }
            return Some(Key::Text(Cow::Owned(value)));
        }
        if i >= row.len() {
            return None;
        }
        i += 1; // the delimiter
        field += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row's bytes and its key (None: NULL).
    type Rows = Vec<(Vec<u8>, Option<Vec<u8>>)>;

    /// Feeds `data` in chunks of `chunk` bytes; returns (rows with keys, shared pieces).
    fn split(
        opts: Options,
        key: usize,
        data: &[u8],
        chunk: usize,
    ) -> Result<(Rows, usize), CopyError> {
        let mut s = Splitter::new(opts, key);
        let mut rows = Vec::new();
        let mut everyone = 0;
        let mut sink = |p: Piece<'_>| match p {
            Piece::Everyone(_) => everyone += 1,
            Piece::Row { bytes, key, .. } => rows.push((
                bytes.to_vec(),
                match key {
                    Key::Null => None,
                    Key::Text(t) => Some(t.into_owned()),
                    Key::Binary(b) => Some(b.to_vec()),
                },
            )),
        };
        for c in data.chunks(chunk.max(1)) {
            s.feed(c, &mut sink)?;
        }
        s.finish(&mut sink)?;
        Ok((rows, everyone))
    }

    #[test]
    fn text_rows_in_any_chunking() {
        let data = b"1\ta\\tb\n2\t\\N\n\\x33\tlast";
        for chunk in [1, 2, 3, 7, 100] {
            let (rows, _) = split(Options::new(Format::Text), 0, data, chunk).unwrap();
            let keys: Vec<_> = rows.iter().map(|r| r.1.clone().unwrap()).collect();
            assert_eq!(
                keys,
                vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()],
                "chunk {chunk}"
            );
            assert_eq!(rows[2].0, b"\\x33\tlast\n");
            let (rows, _) = split(Options::new(Format::Text), 1, data, chunk).unwrap();
            assert_eq!(rows[0].1.as_deref(), Some(&b"a\tb"[..]));
            assert_eq!(rows[1].1, None);
        }
        let e = split(Options::new(Format::Text), 3, b"1\t2\n", 4).unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn csv_quotes_span_lines_and_chunks() {
        let mut o = Options::new(Format::Csv);
        o.header = true;
        let data = b"id,note\n\"1\",\"two\nlines, \"\"quoted\"\"\"\n2,\n,x\n";
        for chunk in [1, 5, 64] {
            let (rows, everyone) = split(o.clone(), 0, data, chunk).unwrap();
            assert_eq!(everyone, 1);
            assert_eq!(rows.len(), 3);
            assert_eq!(rows[0].1.as_deref(), Some(&b"1"[..]));
            assert_eq!(rows[2].1, None, "unquoted empty is NULL");
            let (rows, _) = split(o.clone(), 1, data, chunk).unwrap();
            assert_eq!(rows[0].1.as_deref(), Some(&b"two\nlines, \"quoted\""[..]));
        }
    }

    #[test]
    fn binary_tuples_and_trailer() {
        let mut data = b"PGCOPY\n\xff\r\n\0".to_vec();
        data.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        for (id, name) in [(7i64, Some("a")), (8, None)] {
            data.extend_from_slice(&2i16.to_be_bytes());
            data.extend_from_slice(&8i32.to_be_bytes());
            data.extend_from_slice(&id.to_be_bytes());
            match name {
                Some(n) => {
                    data.extend_from_slice(&(n.len() as i32).to_be_bytes());
                    data.extend_from_slice(n.as_bytes());
                }
                None => data.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        data.extend_from_slice(&(-1i16).to_be_bytes());
        for chunk in [1, 3, 1000] {
            let (rows, everyone) = split(Options::new(Format::Binary), 0, &data, chunk).unwrap();
            assert_eq!(everyone, 2, "header and trailer go to every node");
            assert_eq!(rows[1].1.as_deref(), Some(&8i64.to_be_bytes()[..]));
            let (rows, _) = split(Options::new(Format::Binary), 1, &data, chunk).unwrap();
            assert_eq!(rows[1].1, None);
        }
        assert!(split(Options::new(Format::Binary), 0, &data[..30], 7).is_err());
    }
}
