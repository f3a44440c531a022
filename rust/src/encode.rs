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
/// Arrays (PostgreSQL's text form, `{1,NULL,"a b"}`, nested for more dimensions) of
/// elements converted like these: `ARRAY + A_*`.
pub const ARRAY: u8 = 16;
pub const A_INT: u8 = 0;
pub const A_FLOAT: u8 = 1;
pub const A_NUMERIC: u8 = 2;
pub const A_BOOL: u8 = 3;
pub const A_STR: u8 = 4;
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
        k if (ARRAY..=ARRAY + A_STR).contains(&k) => array(k - ARRAY, text, out),
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
    // PostgreSQL's shape, as the Python encoder reads it: the date's first dash (after the
    // year's first digit), then `-MM-DD` and a space; anything else goes to Python
    if !s.is_ascii() {
        return false;
    }
    let Some(dash) = b.iter().skip(1).position(|&c| c == b'-').map(|i| i + 1) else {
        return false;
    };
    let i = dash + 6;
    if b.len() <= i || b[i] != b' ' {
        return false;
    }
    let mut t = Vec::with_capacity(b.len());
    t.extend_from_slice(&b[..i]);
    t.push(b'T');
    t.extend_from_slice(&b[i + 1..]);
    json_str(&t, out);
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

/// A JSON array from PostgreSQL's array text, as psycopg2's parser and the element
/// converter give it; anything unusual (bounds prefix `[1:2]=`, spaces outside quotes,
/// non-canonical numbers, `null` spelled otherwise than `NULL`) goes to Python.
fn array(elem: u8, b: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let mut pos = 0;
    if array_level(elem, b, &mut pos, out, 0) && pos == b.len() {
        return true;
    }
    out.truncate(start);
    false
}

fn array_level(elem: u8, b: &[u8], pos: &mut usize, out: &mut Vec<u8>, depth: u32) -> bool {
    if depth > 64 || b.get(*pos) != Some(&b'{') {
        return false;
    }
    *pos += 1;
    out.push(b'[');
    if b.get(*pos) == Some(&b'}') {
        *pos += 1;
        out.push(b']');
        return true;
    }
    loop {
        match b.get(*pos) {
            Some(b'{') => {
                if !array_level(elem, b, pos, out, depth + 1) {
                    return false;
                }
            }
            Some(b'"') => {
                *pos += 1;
                let mut s = Vec::new();
                loop {
                    match b.get(*pos) {
                        None => return false,
                        Some(b'\\') => {
                            let Some(&c) = b.get(*pos + 1) else {
                                return false;
                            };
                            s.push(c);
                            *pos += 2;
                        }
                        Some(b'"') => {
                            *pos += 1;
                            break;
                        }
                        Some(&c) => {
                            s.push(c);
                            *pos += 1;
                        }
                    }
                }
                if !array_element(elem, &s, out) {
                    return false;
                }
            }
            Some(_) => {
                let st = *pos;
                while let Some(&c) = b.get(*pos) {
                    if c == b',' || c == b'}' {
                        break;
                    }
                    if matches!(c, b'{' | b'"' | b'\\') || c.is_ascii_whitespace() {
                        return false;
                    }
                    *pos += 1;
                }
                let tok = &b[st..*pos];
                if tok == b"NULL" {
                    out.extend_from_slice(b"null");
                } else if tok.is_empty()
                    || tok.eq_ignore_ascii_case(b"null")
                    || !array_element(elem, tok, out)
                {
                    return false;
                }
            }
            None => return false,
        }
        match b.get(*pos) {
            Some(b',') => {
                *pos += 1;
                out.push(b',');
            }
            Some(b'}') => {
                *pos += 1;
                out.push(b']');
                return true;
            }
            _ => return false,
        }
    }
}

/// `-?(0|[1-9][0-9]*)` and, with `fraction`, an optional `.[0-9]+`: the text Python's
/// int()/Decimal() then JSON give back unchanged.
fn canonical_number(s: &[u8], fraction: bool) -> bool {
    let s = s.strip_prefix(b"-").unwrap_or(s);
    let (int, frac) = match s.iter().position(|&c| c == b'.') {
        Some(i) if fraction => (&s[..i], Some(&s[i + 1..])),
        Some(_) => return false,
        None => (s, None),
    };
    let int_ok =
        int == b"0" || (!int.is_empty() && int[0] != b'0' && int.iter().all(u8::is_ascii_digit));
    int_ok && frac.is_none_or(|f| !f.is_empty() && f.iter().all(u8::is_ascii_digit))
}

fn array_element(elem: u8, s: &[u8], out: &mut Vec<u8>) -> bool {
    match elem {
        A_INT if canonical_number(s, false) && s != b"-0" => {
            out.extend_from_slice(s);
            true
        }
        A_FLOAT => float(s, out),
        A_NUMERIC => match s {
            b"NaN" | b"Infinity" | b"-Infinity" => {
                quoted_ascii(s, out);
                true
            }
            _ if canonical_number(s, true) => {
                out.extend_from_slice(s);
                true
            }
            _ => false,
        },
        A_BOOL => {
            out.extend_from_slice(if s == b"t" { b"true" } else { b"false" });
            true
        }
        A_STR => match std::str::from_utf8(s) {
            Ok(_) => {
                json_str(s, out);
                true
            }
            Err(_) => false,
        },
        _ => false,
    }
}
