//! PostgreSQL text values to JSON, one function per encoder of
//! `heliosdb_cdc/postgres/_types.py`.
//!
//! Each encoder appends the JSON of one value to `out` and returns `true`, or
//! returns `false` (having written nothing) when the value is outside what it
//! handles: the caller then runs the Python encoder of that column, which is the
//! reference (and raises the error the pure-Python path raises). To align an
//! encoder with a change in `_types.py`, change its function here and the kind
//! mapping in `heliosdb_cdc/postgres/_codec.py`; the equivalence tests in
//! `tests/test_codec.py` compare both paths byte for byte.

/// Encoder kinds; the numbers are `_codec.py`'s `KIND_*` constants.
pub const VERBATIM: u8 = 0; // integers: the text is the JSON number
pub const NUMERIC: u8 = 1; // numeric: verbatim, NaN/Infinity as strings
pub const BOOL: u8 = 2;
pub const STR: u8 = 3; // text and every type without its own encoder
pub const FLOAT: u8 = 4; // real, double precision: orjson's float form
pub const TIMESTAMPTZ: u8 = 5; // UTC timestamptz ("... +00") only
pub const TIMESTAMP: u8 = 6;
pub const BYTEA: u8 = 7; // hex format only
pub const DATE: u8 = 8; // quoted as is; BC dates go to Python
pub const PYTHON: u8 = 255; // always the Python encoder

/// Append the JSON of `text` (a value of encoder `kind`); `false`: use Python.
#[inline]
pub fn encode(kind: u8, text: &[u8], out: &mut Vec<u8>) -> bool {
    match kind {
        VERBATIM => {
            out.extend_from_slice(text);
            true
        }
        NUMERIC => {
            match text {
                b"NaN" | b"Infinity" | b"-Infinity" => quoted_ascii(text, out),
                _ => out.extend_from_slice(text),
            }
            true
        }
        BOOL => {
            out.extend_from_slice(if text == b"t" { b"true" } else { b"false" });
            true
        }
        STR => match std::str::from_utf8(text) {
            Ok(s) => {
                json_str(s.as_bytes(), out);
                true
            }
            Err(_) => false,
        },
        FLOAT => float(text, out),
        TIMESTAMPTZ => timestamptz(text, out),
        TIMESTAMP => timestamp(text, out),
        BYTEA => bytea(text, out),
        DATE => {
            if text.ends_with(b" BC")
                || !text.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            {
                return false;
            }
            quoted_ascii(text, out);
            true
        }
        _ => false,
    }
}

fn quoted_ascii(text: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    out.extend_from_slice(text);
    out.push(b'"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A JSON string as orjson writes it: `"` and `\` escaped, control characters as
/// `\b \t \n \f \r` or `\u00XX`, everything else (DEL, non-ASCII) as is.
pub fn json_str(s: &[u8], out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &c) in s.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(c >> 4) as usize]);
            out.push(HEX[(c & 15) as usize]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

/// `float(text)` then orjson: the shortest round-trip digits, positional for
/// decimal exponents -5..15, else `1.5e+16` / `1e-7`; not finite: the text as a string.
fn float(text: &[u8], out: &mut Vec<u8>) -> bool {
    // PostgreSQL's float output; anything else (spaces, '_', ...) is left to Python
    if text.is_empty()
        || !text
            .iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return match text {
            b"NaN" | b"Infinity" | b"-Infinity" => {
                quoted_ascii(text, out);
                true
            }
            _ => false,
        };
    }
    // only ASCII digits, signs, dots and e: valid UTF-8
    let Ok(f) = std::str::from_utf8(text).unwrap_or("").parse::<f64>() else {
        return false;
    };
    if !f.is_finite() {
        quoted_ascii(text, out); // overflow, e.g. 1e400: Python gives inf, then the text
        return true;
    }
    let mut buf = ryu::Buffer::new();
    let s = buf.format_finite(f).as_bytes();
    match s.iter().position(|&c| c == b'e') {
        Some(e) if s.get(e + 1) != Some(&b'-') => {
            out.extend_from_slice(&s[..=e]);
            out.push(b'+');
            out.extend_from_slice(&s[e + 1..]);
        }
        _ => out.extend_from_slice(s),
    }
    true
}

/// UTC (`2026-01-04 12:00:00.5+00`, the session's zone): `"2026-01-04T12:00:00.5Z"`.
fn timestamptz(b: &[u8], out: &mut Vec<u8>) -> bool {
    let n = b.len();
    if n < 11 || b[10] != b' ' || !b.ends_with(b"+00") {
        return false;
    }
    out.push(b'"');
    out.extend_from_slice(&b[..10]);
    out.push(b'T');
    if n - 3 > 11 {
        out.extend_from_slice(&b[11..n - 3]);
    }
    out.extend_from_slice(b"Z\"");
    true
}

/// `2026-01-04 12:00:00` -> `"2026-01-04T12:00:00"` (the first space), infinities as they
/// are; BC timestamps (their year's spelling) go to Python.
fn timestamp(b: &[u8], out: &mut Vec<u8>) -> bool {
    let Ok(s) = std::str::from_utf8(b) else {
        return false;
    };
    if s.ends_with(" BC") {
        return false;
    }
    if s == "infinity" || s == "-infinity" {
        json_str(b, out);
        return true;
    }
    match b.iter().position(|&c| c == b' ') {
        Some(i) => {
            let mut t = Vec::with_capacity(b.len());
            t.extend_from_slice(&b[..i]);
            t.push(b'T');
            t.extend_from_slice(&b[i + 1..]);
            json_str(&t, out);
        }
        None => json_str(b, out),
    }
    true
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn unhex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// bytea in hex format (`\x0102`) -> its bytes in base64; the escape format goes to Python.
fn bytea(b: &[u8], out: &mut Vec<u8>) -> bool {
    if !b.starts_with(b"\\x") || b.len() % 2 != 0 {
        return false;
    }
    let hex = &b[2..];
    let mut raw = Vec::with_capacity(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        match (unhex(pair[0]), unhex(pair[1])) {
            (Some(h), Some(l)) => raw.push(h << 4 | l),
            _ => return false,
        }
    }
    out.reserve(raw.len() / 3 * 4 + 6);
    out.push(b'"');
    for chunk in raw.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        out.push(B64[(v >> 18) as usize & 63]);
        out.push(B64[(v >> 12) as usize & 63]);
        out.push(if n > 1 {
            B64[(v >> 6) as usize & 63]
        } else {
            b'='
        });
        out.push(if n > 2 { B64[v as usize & 63] } else { b'=' });
    }
    out.push(b'"');
    true
}
