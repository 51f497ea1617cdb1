//! Result-set messages the proxy looks inside when it merges rows from
//! several nodes: RowDescription, DataRow, ParameterDescription, and the
//! extended-protocol messages it sends on its own behalf.

use super::framing::{Frame, ProtocolError, Reader};

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
}

/// The columns of a RowDescription (`T`).
pub fn columns(f: &Frame) -> Result<Vec<Column>, ProtocolError> {
    let mut r = Reader::new(b'T', f.body());
    let n = r.i16()?;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let name = r.cstr()?.to_string();
        r.i32()?; // table oid
        r.i16()?; // attnum
        let type_oid = r.i32()? as u32;
        r.i16()?; // typlen
        r.i32()?; // typmod
        r.i16()?; // format
        out.push(Column { name, type_oid });
    }
    Ok(out)
}

/// The same RowDescription with the result formats a Bind asked for
/// (none: all text; one: all alike; else one per column).
pub fn with_formats(f: &Frame, formats: &[i16]) -> Result<Frame, ProtocolError> {
    let body = f.body();
    let mut out = body.to_vec();
    let mut r = Reader::new(b'T', body);
    let n = r.i16()?;
    for i in 0..n as usize {
        r.cstr()?;
        r.bytes(16)?;
        let at = body.len() - r.rest().len();
        r.i16()?;
        let code = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => formats.get(i).copied().unwrap_or(0),
        };
        out[at..at + 2].copy_from_slice(&code.to_be_bytes());
    }
    Ok(Frame::new(b'T', &out))
}

/// The values of a DataRow (`D`); None is SQL NULL.
pub fn values(f: &Frame) -> Result<Vec<Option<&[u8]>>, ProtocolError> {
    let mut r = Reader::new(b'D', f.body());
    let n = r.i16()?;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = r.i32()?;
        out.push(if len < 0 {
            None
        } else {
            Some(r.bytes(len as usize)?)
        });
    }
    Ok(out)
}

/// The parameter type OIDs of a ParameterDescription (`t`).
pub fn parameter_types(f: &Frame) -> Result<Vec<u32>, ProtocolError> {
    let mut r = Reader::new(b't', f.body());
    let n = r.i16()?;
    (0..n).map(|_| r.i32().map(|v| v as u32)).collect()
}

/// The parameter-type section of a Parse (`i16 count, i32 oids…`).
pub fn param_types_section(oids: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + oids.len() * 4);
    out.extend_from_slice(&(oids.len() as i16).to_be_bytes());
    for o in oids {
        out.extend_from_slice(&o.to_be_bytes());
    }
    out
}

/// A Bind of the unnamed portal to the unnamed statement: `params` is the
/// parameter section of a client's Bind (formats and values) and
/// `result_formats` the result format codes to ask for.
pub fn encode_bind(params: &[u8], result_formats: &[i16]) -> Frame {
    encode_bind_portal("", params, result_formats)
}

/// The same, binding portal `portal`.
pub fn encode_bind_portal(portal: &str, params: &[u8], result_formats: &[i16]) -> Frame {
    let mut body =
        Vec::with_capacity(portal.len() + 3 + params.len() + 2 + result_formats.len() * 2);
    body.extend_from_slice(portal.as_bytes());
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(params);
    body.extend_from_slice(&(result_formats.len() as i16).to_be_bytes());
    for f in result_formats {
        body.extend_from_slice(&f.to_be_bytes());
    }
    Frame::new(b'B', &body)
}

/// Execute the unnamed portal, all rows.
pub fn encode_execute() -> Frame {
    Frame::new(b'E', &[0, 0, 0, 0, 0])
}

pub fn encode_sync() -> Frame {
    Frame::new(b'S', &[])
}

/// An empty parameter section: no formats, no values.
pub const NO_PARAMS: &[u8] = &[0, 0, 0, 0];

#[cfg(test)]
mod tests {
    use super::*;

    fn row_description(cols: &[(&str, u32)]) -> Frame {
        let mut b = Vec::new();
        b.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for (name, oid) in cols {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&[0; 6]);
            b.extend_from_slice(&oid.to_be_bytes());
            b.extend_from_slice(&[0, 8, 255, 255, 255, 255, 0, 0]);
        }
        Frame::new(b'T', &b)
    }

    #[test]
    fn row_descriptions_read_and_take_formats() {
        let t = row_description(&[("id", 20), ("owner", 25)]);
        let cols = columns(&t).unwrap();
        assert_eq!(
            cols[1],
            Column {
                name: "owner".into(),
                type_oid: 25
            }
        );
        let bin = with_formats(&t, &[1]).unwrap();
        assert_eq!(columns(&bin).unwrap(), cols);
        assert_eq!(&bin.bytes[bin.bytes.len() - 2..], &[0, 1]);
        let mixed = with_formats(&t, &[0, 1]).unwrap();
        assert_eq!(&mixed.bytes[mixed.bytes.len() - 2..], &[0, 1]);
        assert!(columns(&Frame::new(b'T', &[0, 3, b'x'])).is_err());
    }

    #[test]
    fn data_rows_and_nulls() {
        let mut b = vec![0, 2, 0, 0, 0, 2, b'4', b'2'];
        b.extend_from_slice(&(-1i32).to_be_bytes());
        let f = Frame::new(b'D', &b);
        let v = values(&f).unwrap();
        assert_eq!(v, vec![Some(&b"42"[..]), None]);
        assert!(values(&Frame::new(b'D', &[0, 1, 0, 0, 0, 9])).is_err());
    }
}
