//! `heliosdb_cdc._native`: the compiled codec of the capture hot path.
//!
//! A [`RowCodec`] is made per relation (from its Relation message) by
//! `heliosdb_cdc/postgres/_codec.py`. `change` turns one pgoutput INSERT, UPDATE or
//! DELETE message (protocol v1 layout, outside streamed transactions) into the
//! event's key JSON and the whole event JSON, byte for byte what the pure-Python
//! decoder writes, without a Python object per column. It returns `None` for what
//! it does not handle (a malformed message, binary-format columns, a column count
//! that is not the relation's): the caller then runs the pure-Python path, which is
//! the reference and says what is wrong.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

mod encode;

const OP_INSERT: u8 = 1;
const OP_UPDATE: u8 = 2;
const OP_DELETE: u8 = 3;

/// What `change` gives Python: (op code, key JSON, event JSON).
type Change<'py> = (u8, Bound<'py, PyBytes>, Bound<'py, PyBytes>);

/// One column of a TupleData: 'n' null, 'u' unchanged TOAST, 't' text.
#[derive(Clone, Copy)]
enum Col<'a> {
    Null,
    Unchanged,
    Text(&'a [u8]),
}

fn be_i32(buf: &[u8], pos: usize) -> Option<i32> {
    Some(i32::from_be_bytes(buf.get(pos..pos + 4)?.try_into().ok()?))
}

/// TupleData at `pos`, when it has exactly `ncols` columns in text format.
fn parse_tuple(buf: &[u8], mut pos: usize, ncols: usize) -> Option<(Vec<Col<'_>>, usize)> {
    let n = i16::from_be_bytes(buf.get(pos..pos + 2)?.try_into().ok()?);
    if n < 0 || n as usize != ncols {
        return None;
    }
    pos += 2;
    let mut cols = Vec::with_capacity(ncols);
    for _ in 0..ncols {
        let kind = *buf.get(pos)?;
        pos += 1;
        match kind {
            b't' => {
                let len = be_i32(buf, pos)?;
                pos += 4;
                if len < 0 {
                    return None;
                }
                let end = pos.checked_add(len as usize)?;
                cols.push(Col::Text(buf.get(pos..end)?));
                pos = end;
            }
            b'n' => cols.push(Col::Null),
            b'u' => cols.push(Col::Unchanged),
            _ => return None, // 'b' binary (never requested) or garbage: Python decides
        }
    }
    Some((cols, pos))
}

/// A tuple's values encoded once: their JSON in `buf`, `spans[i]` the range of
/// column `i` (`None`: unchanged TOAST, absent).
struct Encoded {
    buf: Vec<u8>,
    spans: Vec<Option<(usize, usize)>>,
}

#[pyclass(module = "heliosdb_cdc._native", frozen)]
struct RowCodec {
    heads: Vec<Vec<u8>>,       // '"name":' per column
    kinds: Vec<u8>,            // encode::* per column
    fallbacks: Vec<Py<PyAny>>, // the Python encoder per column (bytes -> bytes)
    key_idx: Vec<usize>,       // replica identity columns
    op_heads: [Vec<u8>; 3],    // ',"operation":"INSERT","database":..,"table":..,"key":' per op
    table: Py<PyString>,       // the Record's table
}

/// (op code, key JSON, event JSON) of one change, before they become Python objects.
type Encoded3 = (u8, Vec<u8>, Vec<u8>);

/// The parts of the event JSON that are the same for a whole transaction.
struct Txn<'a> {
    id_prefix: &'a [u8], // '{"event_id":"evt_<commit LSN>_'
    mid: &'a [u8],       // '","timestamp":"...","sequence":'
    tail: &'a [u8],      // ',"transaction_id":"txn_<xid>"}'
}

impl RowCodec {
    fn encode_tuple(&self, py: Python<'_>, cols: &[Col<'_>]) -> PyResult<Encoded> {
        let mut buf = Vec::with_capacity(cols.len() * 16);
        let mut spans = Vec::with_capacity(cols.len());
        for (i, col) in cols.iter().enumerate() {
            let start = buf.len();
            match *col {
                Col::Null => buf.extend_from_slice(b"null"),
                Col::Unchanged => {
                    spans.push(None);
                    continue;
                }
                Col::Text(text) => {
                    if !encode::encode(self.kinds[i], text, &mut buf) {
                        let res = self.fallbacks[i].call1(py, (PyBytes::new(py, text),))?;
                        let res = res.bind(py).cast::<PyBytes>()?;
                        buf.extend_from_slice(res.as_bytes());
                    }
                }
            }
            spans.push(Some((start, buf.len())));
        }
        Ok(Encoded { buf, spans })
    }

    /// `{"a":1,"b":2}` of the columns in `idx` that are present; `absent_null`: an
    /// unchanged column is written as null (the INSERT key) instead of left out.
    fn object(
        &self,
        enc: &Encoded,
        idx: impl Iterator<Item = usize>,
        absent_null: bool,
        out: &mut Vec<u8>,
    ) {
        out.push(b'{');
        let mut first = true;
        for i in idx {
            let span = enc.spans[i];
            if span.is_none() && !absent_null {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&self.heads[i]);
            match span {
                Some((s, e)) => out.extend_from_slice(&enc.buf[s..e]),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
    }

    /// An UPDATE's value: the new row, then the unchanged TOASTed columns taken from
    /// the full old row (in column order, after the others, as the Python path does).
    fn update_value(&self, new: &Encoded, old: &Encoded, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        let n = self.heads.len();
        let fill = (0..n).filter(|&i| new.spans[i].is_none() && old.spans[i].is_some());
        for (i, enc) in (0..n)
            .filter(|&i| new.spans[i].is_some())
            .map(|i| (i, new))
            .chain(fill.map(|i| (i, old)))
        {
            if !first {
                out.push(b',');
            }
            first = false;
            let (s, e) = enc.spans[i].unwrap_or((0, 0));
            out.extend_from_slice(&self.heads[i]);
            out.extend_from_slice(&enc.buf[s..e]);
        }
        out.push(b'}');
    }

    /// `(op, key JSON, event JSON)` of one I/U/D message, or `None`: use the Python path.
    ///
    /// The event is `id_prefix + index (6 digits) + mid + seq + op head + key +
    /// ',"value":' + value + ',"old_value":' + old + txn_tail`.
    /// `encode_change`, with a panic (a bug) handed to the Python path like any row this
    /// codec does not handle, never raised into capture.
    fn guarded_change(
        &self,
        py: Python<'_>,
        buf: &[u8],
        txn: &Txn<'_>,
        index: u64,
        seq: u64,
    ) -> PyResult<Option<Encoded3>> {
        let run = std::panic::AssertUnwindSafe(|| self.encode_change(py, buf, txn, index, seq));
        std::panic::catch_unwind(run).unwrap_or(Ok(None))
    }

    fn encode_change(
        &self,
        py: Python<'_>,
        buf: &[u8],
        txn: &Txn<'_>,
        index: u64,
        seq: u64,
    ) -> PyResult<Option<Encoded3>> {
        let n = self.heads.len();
        let tag = match buf.first() {
            Some(&t) => t,
            None => return Ok(None),
        };
        let mut key = Vec::with_capacity(64);
        let mut value = Vec::with_capacity(256);
        let mut old = Vec::new();
        let op = match tag {
            b'I' => {
                if buf.get(5) != Some(&b'N') {
                    return Ok(None);
                }
                let Some((cols, _)) = parse_tuple(buf, 6, n) else {
                    return Ok(None);
                };
                let enc = self.encode_tuple(py, &cols)?;
                self.object(&enc, self.key_idx.iter().copied(), true, &mut key);
                self.object(&enc, 0..n, false, &mut value);
                old.extend_from_slice(b"null");
                OP_INSERT
            }
            b'U' => {
                let mut pos = 5;
                let mut old_tuple = None;
                let old_kind = match buf.get(pos) {
                    Some(&k) if k == b'K' || k == b'O' => k,
                    Some(_) => 0,
                    None => return Ok(None),
                };
                if old_kind != 0 {
                    let Some((cols, p)) = parse_tuple(buf, pos + 1, n) else {
                        return Ok(None);
                    };
                    old_tuple = Some(cols);
                    pos = p;
                }
                if buf.get(pos) != Some(&b'N') {
                    return Ok(None);
                }
                let Some((new_cols, _)) = parse_tuple(buf, pos + 1, n) else {
                    return Ok(None);
                };
                let new = self.encode_tuple(py, &new_cols)?;
                self.object(&new, self.key_idx.iter().copied(), false, &mut key);
                match old_tuple {
                    None => {
                        self.object(&new, 0..n, false, &mut value);
                        old.extend_from_slice(b"null");
                    }
                    Some(cols) => {
                        let o = self.encode_tuple(py, &cols)?;
                        if old_kind == b'O' {
                            self.update_value(&new, &o, &mut value);
                            self.object(&o, 0..n, false, &mut old);
                        } else {
                            self.object(&new, 0..n, false, &mut value);
                            self.object(&o, self.key_idx.iter().copied(), false, &mut old);
                        }
                    }
                }
                OP_UPDATE
            }
            b'D' => {
                let old_kind = match buf.get(5) {
                    Some(&k) if k == b'K' || k == b'O' => k,
                    _ => return Ok(None),
                };
                let Some((cols, _)) = parse_tuple(buf, 6, n) else {
                    return Ok(None);
                };
                let o = self.encode_tuple(py, &cols)?;
                self.object(&o, self.key_idx.iter().copied(), false, &mut key);
                value.extend_from_slice(b"null");
                if old_kind == b'O' {
                    self.object(&o, 0..n, false, &mut old);
                } else {
                    old.extend_from_slice(&key);
                }
                OP_DELETE
            }
            _ => return Ok(None),
        };
        let head = &self.op_heads[(op - 1) as usize];
        let mut body = Vec::with_capacity(
            txn.id_prefix.len()
                + txn.mid.len()
                + head.len()
                + key.len()
                + value.len()
                + old.len()
                + txn.tail.len()
                + 64,
        );
        body.extend_from_slice(txn.id_prefix);
        body.extend_from_slice(format!("{index:06}").as_bytes());
        body.extend_from_slice(txn.mid);
        body.extend_from_slice(seq.to_string().as_bytes());
        body.extend_from_slice(head);
        body.extend_from_slice(&key);
        body.extend_from_slice(b",\"value\":");
        body.extend_from_slice(&value);
        body.extend_from_slice(b",\"old_value\":");
        body.extend_from_slice(&old);
        body.extend_from_slice(txn.tail);
        Ok(Some((op, key, body)))
    }
}

#[pymethods]
impl RowCodec {
    /// `(op, key JSON, event JSON)` of one I/U/D message, or `None`: use the Python path.
    ///
    /// The event is `id_prefix + index (6 digits) + mid + seq + op head + key +
    /// ',"value":' + value + ',"old_value":' + old + txn_tail`.
    #[allow(clippy::too_many_arguments)]
    fn change<'py>(
        &self,
        py: Python<'py>,
        buf: &[u8],
        id_prefix: &[u8],
        index: u64,
        mid: &[u8],
        seq: u64,
        txn_tail: &[u8],
    ) -> PyResult<Option<Change<'py>>> {
        let txn = Txn {
            id_prefix,
            mid,
            tail: txn_tail,
        };
        Ok(self
            .guarded_change(py, buf, &txn, index, seq)?
            .map(|(op, key, body)| (op, PyBytes::new(py, &key), PyBytes::new(py, &body))))
    }

    #[new]
    fn new(
        heads: Vec<Vec<u8>>,
        kinds: Vec<u8>,
        fallbacks: Vec<Py<PyAny>>,
        key_idx: Vec<usize>,
        op_heads: [Vec<u8>; 3],
        table: Py<PyString>,
    ) -> PyResult<Self> {
        let n = heads.len();
        if kinds.len() != n || fallbacks.len() != n || key_idx.iter().any(|&i| i >= n) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "RowCodec: heads, kinds and fallbacks differ in length or a key index is out of range",
            ));
        }
        Ok(RowCodec {
            heads,
            kinds,
            fallbacks,
            key_idx,
            op_heads,
            table,
        })
    }
}

/// Records of the run of I/U/D messages at `payloads[start..]`, appended to `out`.
///
/// `codecs` maps relation oid -> RowCodec. The run stops at the first payload that is
/// not an I/U/D message of a relation in `codecs`, or that a codec hands back (the
/// Python path takes it); returns how many payloads it consumed. Records are
/// `record_cls` instances (a tuple subclass: `Record`) or plain tuples when it is None,
/// `(seq, lsn, ts_us, op, table, key, body, index)`, with `index` and `seq` counting on
/// from the given ones.
#[pyfunction]
#[pyo3(signature = (payloads, start, codecs, id_prefix, index, mid, seq, txn_tail, lsn, ts_us, record_cls, out))]
#[allow(clippy::too_many_arguments)]
fn decode_run(
    py: Python<'_>,
    payloads: &Bound<'_, PyList>,
    start: usize,
    codecs: &Bound<'_, PyDict>,
    id_prefix: &[u8],
    index: u64,
    mid: &[u8],
    seq: u64,
    txn_tail: &[u8],
    lsn: u64,
    ts_us: i64,
    record_cls: Option<Bound<'_, PyAny>>,
    out: &Bound<'_, PyList>,
) -> PyResult<usize> {
    let txn = Txn {
        id_prefix,
        mid,
        tail: txn_tail,
    };
    let tuple_new = match &record_cls {
        Some(_) => Some(py.get_type::<PyTuple>().getattr("__new__")?),
        None => None,
    };
    let lsn_obj = lsn.into_pyobject(py)?;
    let ts_obj = ts_us.into_pyobject(py)?;
    let n = payloads.len();
    let mut i = start;
    let mut last_oid = u32::MAX;
    let mut codec_obj: Option<Bound<'_, RowCodec>> = None;
    while i < n {
        let item = payloads.get_item(i)?;
        let Ok(payload) = item.cast::<PyBytes>() else {
            break;
        };
        let buf = payload.as_bytes();
        if buf.len() < 6 || !matches!(buf[0], b'I' | b'U' | b'D') {
            break;
        }
        let oid = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if oid != last_oid || codec_obj.is_none() {
            match codecs.get_item(oid)? {
                Some(c) => match c.cast_into::<RowCodec>() {
                    Ok(c) => codec_obj = Some(c),
                    Err(_) => break,
                },
                None => break,
            }
            last_oid = oid;
        }
        let Some(codec_ref) = codec_obj.as_ref() else {
            break;
        };
        let codec = codec_ref.get();
        let k = (i - start) as u64;
        let Ok(Some((op, key, body))) = codec.guarded_change(py, buf, &txn, index + k, seq + k)
        else {
            break; // the Python path takes it (and reports what is wrong with it)
        };
        let fields = PyTuple::new(
            py,
            [
                (seq + k).into_pyobject(py)?.into_any(),
                lsn_obj.clone().into_any(),
                ts_obj.clone().into_any(),
                op.into_pyobject(py)?.into_any(),
                codec.table.bind(py).clone().into_any(),
                PyBytes::new(py, &key).into_any(),
                PyBytes::new(py, &body).into_any(),
                (index + k).into_pyobject(py)?.into_any(),
            ],
        )?;
        match (&tuple_new, &record_cls) {
            (Some(new), Some(cls)) => out.append(new.call1((cls, fields))?)?,
            _ => out.append(fields)?,
        }
        i += 1;
    }
    Ok(i - start)
}

/// JSON string of `text` (UTF-8) as orjson writes it; for tests and the Python side.
#[pyfunction]
fn json_string<'py>(py: Python<'py>, text: &str) -> Bound<'py, PyBytes> {
    let mut out = Vec::with_capacity(text.len() + 2);
    encode::json_str(text.as_bytes(), &mut out);
    PyBytes::new(py, &out)
}

/// The JSON of one value of encoder `kind`, or `None` where the Python encoder decides.
#[pyfunction]
fn encode_value<'py>(py: Python<'py>, kind: u8, text: &[u8]) -> Option<Bound<'py, PyBytes>> {
    let mut out = Vec::new();
    encode::encode(kind, text, &mut out).then(|| PyBytes::new(py, &out))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RowCodec>()?;
    m.add_function(wrap_pyfunction!(json_string, m)?)?;
    m.add_function(wrap_pyfunction!(decode_run, m)?)?;
    m.add_function(wrap_pyfunction!(encode_value, m)?)?;
    m.add("KIND_VERBATIM", encode::VERBATIM)?;
    m.add("KIND_NUMERIC", encode::NUMERIC)?;
    m.add("KIND_BOOL", encode::BOOL)?;
    m.add("KIND_STR", encode::STR)?;
    m.add("KIND_FLOAT", encode::FLOAT)?;
    m.add("KIND_TIMESTAMPTZ", encode::TIMESTAMPTZ)?;
    m.add("KIND_TIMESTAMP", encode::TIMESTAMP)?;
    m.add("KIND_BYTEA", encode::BYTEA)?;
    m.add("KIND_DATE", encode::DATE)?;
    m.add("KIND_ARRAY", encode::ARRAY)?;
    m.add("ARRAY_INT", encode::A_INT)?;
    m.add("ARRAY_FLOAT", encode::A_FLOAT)?;
    m.add("ARRAY_NUMERIC", encode::A_NUMERIC)?;
    m.add("ARRAY_BOOL", encode::A_BOOL)?;
    m.add("ARRAY_STR", encode::A_STR)?;
    m.add("KIND_PYTHON", encode::PYTHON)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // what `heliosdb_cdc/postgres/_codec.py` expects (RowCodec's arguments, decode_run's):
    // a module built from other sources is not used
    m.add("ABI", 2)?;
    Ok(())
}
