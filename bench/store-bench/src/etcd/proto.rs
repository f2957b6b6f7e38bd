//! Just enough protobuf for the etcd v3 calls the benchmark makes, written by hand: the wire
//! format (varints and length-delimited fields, unknown fields skipped) and the few messages
//! of etcd's `api/etcdserverpb/rpc.proto` and `api/mvccpb/kv.proto` that we send or read.
//! Field numbers are those of the .proto files; fields we never use are left out and skipped
//! when decoding, as any protobuf reader does with fields it does not know.

use std::fmt;

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The message whose encoding is malformed (the innermost one, for embedded messages).
    pub message: &'static str,
    /// Byte offset in that message's own encoding.
    pub offset: usize,
    pub problem: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed {} at byte {}: {}",
            self.message, self.offset, self.problem
        )
    }
}

impl std::error::Error for DecodeError {}

/// A field's value as found on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// Wire type 0: int32/64, uint32/64, bool, enum.
    Varint(u64),
    /// Wire type 1: fixed64, sfixed64, double.
    Fixed64(u64),
    /// Wire type 2: bytes, string, embedded messages, packed repeated fields.
    Bytes(&'a [u8]),
    /// Wire type 5: fixed32, sfixed32, float.
    Fixed32(u32),
}

impl Value<'_> {
    fn wire_type(&self) -> u8 {
        match self {
            Value::Varint(_) => 0,
            Value::Fixed64(_) => 1,
            Value::Bytes(_) => 2,
            Value::Fixed32(_) => 5,
        }
    }
}

// ---- encoding ----

/// Appends `v` as a base-128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

/// A `bytes`/`string` field; proto3 leaves an empty one out.
pub fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    put_tag(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A `bool`; proto3 leaves `false` out.
pub fn put_bool(out: &mut Vec<u8>, field: u32, b: bool) {
    if b {
        put_tag(out, field, 0);
        out.push(1);
    }
}

/// A `uint64`/`int64` (negative int64s take ten bytes, as protobuf specifies); 0 is left out.
pub fn put_u64(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_tag(out, field, 0);
        put_varint(out, v);
    }
}

/// An embedded message; always written, since its presence means something.
pub fn put_message<M: Message>(out: &mut Vec<u8>, field: u32, message: &M) {
    let start = out.len();
    message.encode_fields(out);
    let body_len = out.len() - start;
    // Write the tag and length after the body, then rotate them in front of it.
    put_tag(out, field, 2);
    put_varint(out, body_len as u64);
    let prefix_len = out.len() - start - body_len;
    out[start..].rotate_right(prefix_len);
}

// ---- decoding ----

/// Reads one message's fields in order.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], message: &'static str) -> Reader<'a> {
        Reader {
            buf,
            pos: 0,
            message,
        }
    }

    fn error(&self, at: usize, problem: impl Into<String>) -> DecodeError {
        DecodeError {
            message: self.message,
            offset: at,
            problem: problem.into(),
        }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.error(start, "truncated varint"));
            };
            self.pos += 1;
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && b > 1 {
                return Err(self.error(start, "varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.error(start, "varint longer than 10 bytes"))
    }

    /// The next `n` bytes; an error names the field that starts at `at`.
    fn take(&mut self, at: usize, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let left = self.buf.len() - start;
        if n > left {
            return Err(self.error(
                at,
                format!("truncated {what}: {n} bytes announced, {left} left"),
            ));
        }
        self.pos = start + n;
        Ok(&self.buf[start..start + n])
    }

    /// The next field, or `None` at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>, DecodeError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(self.error(at, format!("invalid field number {field}")));
        }
        let field = field as u32;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                let b = self.take(at, 8, "fixed64")?;
                Value::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len)
                    .map_err(|_| self.error(at, format!("length {len} does not fit")))?;
                Value::Bytes(self.take(at, len, "length-delimited field")?)
            }
            5 => {
                let b = self.take(at, 4, "fixed32")?;
                Value::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
            }
            3 | 4 => {
                return Err(self.error(
                    at,
                    format!("field {field} uses the deprecated group encoding"),
                ));
            }
            other => {
                return Err(self.error(at, format!("field {field} has invalid wire type {other}")));
            }
        };
        Ok(Some((field, value)))
    }
}

/// A message we can write and read.
pub trait Message: Default {
    /// The message's name in the .proto file, for errors.
    const NAME: &'static str;

    /// Appends the message's fields (without any tag or length of its own).
    fn encode_fields(&self, out: &mut Vec<u8>);

    /// Takes in one field if it knows it, and ignores it otherwise.
    fn merge_field(&mut self, field: u32, value: Value<'_>) -> Result<(), FieldError>;

    /// The message alone (the gRPC layer encodes straight behind its own prefix instead).
    #[cfg(test)]
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_fields(&mut out);
        out
    }

    /// Decodes one message, skipping fields it does not know.
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut message = Self::default();
        merge_from(&mut message, buf)?;
        Ok(message)
    }
}

/// Reads the fields of `buf` into `into`, skipping those it does not know.
fn merge_from<M: Message>(into: &mut M, buf: &[u8]) -> Result<(), DecodeError> {
    let mut reader = Reader::new(buf, M::NAME);
    loop {
        let at = reader.pos;
        let Some((field, value)) = reader.next_field()? else {
            return Ok(());
        };
        into.merge_field(field, value).map_err(|e| match e {
            FieldError::Nested(inner) => inner,
            FieldError::WrongType { expected } => reader.error(
                at,
                format!(
                    "field {field} has wire type {}, expected {expected}",
                    value.wire_type()
                ),
            ),
        })?;
    }
}

/// Why a known field could not be taken in.
#[derive(Debug)]
pub enum FieldError {
    WrongType {
        expected: u8,
    },
    /// An embedded message failed to decode.
    Nested(DecodeError),
}

fn as_varint(value: Value<'_>) -> Result<u64, FieldError> {
    match value {
        Value::Varint(v) => Ok(v),
        _ => Err(FieldError::WrongType { expected: 0 }),
    }
}

fn as_bytes(value: Value<'_>) -> Result<&[u8], FieldError> {
    match value {
        Value::Bytes(b) => Ok(b),
        _ => Err(FieldError::WrongType { expected: 2 }),
    }
}

/// Decodes an embedded message, merging it into `into` as protobuf does for repeated
/// occurrences of a singular message field.
fn merge_message<M: Message>(into: &mut M, value: Value<'_>) -> Result<(), FieldError> {
    merge_from(into, as_bytes(value)?).map_err(FieldError::Nested)
}

fn decode_message<M: Message>(value: Value<'_>) -> Result<M, FieldError> {
    let mut message = M::default();
    merge_message(&mut message, value)?;
    Ok(message)
}

// ---- etcd messages (etcdserverpb and mvccpb) ----

/// `etcdserverpb.ResponseHeader`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHeader {
    pub cluster_id: u64,
    pub member_id: u64,
    pub revision: i64,
    pub raft_term: u64,
}

impl Message for ResponseHeader {
    const NAME: &'static str = "ResponseHeader";

    fn encode_fields(&self, out: &mut Vec<u8>) {
        put_u64(out, 1, self.cluster_id);
        put_u64(out, 2, self.member_id);
        put_u64(out, 3, self.revision as u64);
        put_u64(out, 4, self.raft_term);
    }

    fn merge_field(&mut self, field: u32, value: Value<'_>) -> Result<(), FieldError> {
        match field {
            1 => self.cluster_id = as_varint(value)?,
            2 => self.member_id = as_varint(value)?,
            3 => self.revision = as_varint(value)? as i64,
            4 => self.raft_term = as_varint(value)?,
            _ => {}
        }
        Ok(())
    }
}

/// `mvccpb.KeyValue`; the revisions, version and lease are skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl Message for KeyValue {
    const NAME: &'static str = "KeyValue";

    fn encode_fields(&self, out: &mut Vec<u8>) {
        put_bytes(out, 1, &self.key);
        put_bytes(out, 5, &self.value);
    }

    fn merge_field(&mut self, field: u32, value: Value<'_>) -> Result<(), FieldError> {
        match field {
            1 => self.key = as_bytes(value)?.to_vec(),
            5 => self.value = as_bytes(value)?.to_vec(),
            _ => {}
        }
        Ok(())
    }
}

/// `etcdserverpb.PutRequest` (no lease, no prev_kv).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl Message for PutRequest {
    const NAME: &'static str = "PutRequest";

    fn encode_fields(&self, out: &mut Vec<u8>) {
        put_bytes(out, 1, &self.key);
        put_bytes(out, 2, &self.value);
    }

    fn merge_field(&mut self, field: u32, value: Value<'_>) -> Result<(), FieldError> {
        match field {
            1 => self.key = as_bytes(value)?.to_vec(),
            2 => self.value = as_bytes(value)?.to_vec(),
            _ => {}
        }
        Ok(())
    }
}

/// `etcdserverpb.PutResponse` (prev_kv is skipped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutResponse {
    pub header: Option<ResponseHeader>,
}

impl Message for PutResponse {
    const NAME: &'static str = "PutResponse";

    fn encode_fields(&self, out: &mut Vec<u8>) {
        if let Some(header) = &self.header {
            put_message(out, 1, header);
        }
    }

    fn merge_field(&mut self, field: u32, value: Value<'_>) -> Result<(), FieldError> {
        if field == 1 {
            merge_message(self.header.get_or_insert_default(), value)?;
        }
        Ok(())
    }
}

/// `etcdserverpb.RangeRequest` for one key; `serializable: false` (the default) makes the
/// read linearizable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    pub serializable: bool,
}

impl Message for RangeRequest {
    const NAME: &'static str = "RangeRequest";

    fn encode_fields(&self, out: &mut Vec<u8>) {
        put_bytes(out, 1, &self.key);
        put_bool(out, 7, self.serializable);
    }

    fn merge_field(&mut self, field: u32, value: Value<'_>) -> Result<(), FieldError> {
        match field {
            1 => self.key = as_bytes(value)?.to_vec(),
            7 => self.serializable = as_varint(value)? != 0,
            _ => {}
        }
        Ok(())
    }
}

/// `etcdserverpb.RangeResponse` (`more` and `count` are skipped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub header: Option<ResponseHeader>,
    pub kvs: Vec<KeyValue>,
}

impl Message for RangeResponse {
    const NAME: &'static str = "RangeResponse";

    fn encode_fields(&self, out: &mut Vec<u8>) {
        if let Some(header) = &self.header {
            put_message(out, 1, header);
        }
        for kv in &self.kvs {
            put_message(out, 2, kv);
        }
    }

    fn merge_field(&mut self, field: u32, value: Value<'_>) -> Result<(), FieldError> {
        match field {
            1 => merge_message(self.header.get_or_insert_default(), value)?,
            2 => self.kvs.push(decode_message(value)?),
            _ => {}
        }
        Ok(())
    }
}

/// `etcdserverpb.RequestOp`, of which only the `request_put` arm of the oneof is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestOp {
    pub request_put: Option<PutRequest>,
}

impl Message for RequestOp {
    const NAME: &'static str = "RequestOp";

    fn encode_fields(&self, out: &mut Vec<u8>) {
        if let Some(put) = &self.request_put {
            put_message(out, 2, put);
        }
    }

    fn merge_field(&mut self, field: u32, value: Value<'_>) -> Result<(), FieldError> {
        if field == 2 {
            merge_message(self.request_put.get_or_insert_default(), value)?;
        }
        Ok(())
    }
}

/// `etcdserverpb.TxnRequest` with no compares, so `success` always runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnRequest {
    pub success: Vec<RequestOp>,
}

impl Message for TxnRequest {
    const NAME: &'static str = "TxnRequest";

    fn encode_fields(&self, out: &mut Vec<u8>) {
        for op in &self.success {
            put_message(out, 2, op);
        }
    }

    fn merge_field(&mut self, field: u32, value: Value<'_>) -> Result<(), FieldError> {
        if field == 2 {
            self.success.push(decode_message(value)?);
        }
        Ok(())
    }
}

/// `etcdserverpb.TxnResponse` (the per-op `responses` are skipped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnResponse {
    pub header: Option<ResponseHeader>,
    pub succeeded: bool,
}

impl Message for TxnResponse {
    const NAME: &'static str = "TxnResponse";

    fn encode_fields(&self, out: &mut Vec<u8>) {
        if let Some(header) = &self.header {
            put_message(out, 1, header);
        }
        put_bool(out, 2, self.succeeded);
    }

    fn merge_field(&mut self, field: u32, value: Value<'_>) -> Result<(), FieldError> {
        match field {
            1 => merge_message(self.header.get_or_insert_default(), value)?,
            2 => self.succeeded = as_varint(value)? != 0,
            _ => {}
        }
        Ok(())
    }
}

/// `etcdserverpb.StatusRequest`, which has no fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusRequest {}

impl Message for StatusRequest {
    const NAME: &'static str = "StatusRequest";

    fn encode_fields(&self, _out: &mut Vec<u8>) {}

    fn merge_field(&mut self, _field: u32, _value: Value<'_>) -> Result<(), FieldError> {
        Ok(())
    }
}

/// `etcdserverpb.StatusResponse`: who answered and whom it follows (the rest is skipped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusResponse {
    pub header: Option<ResponseHeader>,
    /// The member ID the responding member believes leads; 0 while there is none.
    pub leader: u64,
}

impl Message for StatusResponse {
    const NAME: &'static str = "StatusResponse";

    fn encode_fields(&self, out: &mut Vec<u8>) {
        if let Some(header) = &self.header {
            put_message(out, 1, header);
        }
        put_u64(out, 4, self.leader);
    }

    fn merge_field(&mut self, field: u32, value: Value<'_>) -> Result<(), FieldError> {
        match field {
            1 => merge_message(self.header.get_or_insert_default(), value)?,
            4 => self.leader = as_varint(value)?,
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn varints_round_trip_at_every_width() {
        let samples = [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            (1 << 63) - 1,
            1 << 63,
            u64::MAX,
        ];
        for v in samples {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(
                buf.len(),
                (64 - v.leading_zeros() as usize).div_ceil(7).max(1)
            );
            let mut reader = Reader::new(&buf, "test");
            assert_eq!(reader.varint().unwrap(), v, "{v}");
            assert_eq!(reader.pos, buf.len());
        }
        let mut buf = Vec::new();
        put_varint(&mut buf, 300);
        assert_eq!(buf, [0xac, 0x02]);
    }

    #[test]
    fn requests_have_the_field_numbers_of_rpc_proto() {
        // PutRequest: key = 1, value = 2.
        assert_eq!(put("a", "bc").encode(), b"\x0a\x01a\x12\x02bc");
        // RangeRequest: key = 1, serializable = 7 (omitted when false, i.e. linearizable).
        let range = RangeRequest {
            key: b"k".to_vec(),
            serializable: false,
        };
        assert_eq!(range.encode(), b"\x0a\x01k");
        let range = RangeRequest {
            serializable: true,
            ..range
        };
        assert_eq!(range.encode(), b"\x0a\x01k\x38\x01");
        // TxnRequest.success = 2 of RequestOp, whose request_put = 2.
        let txn = TxnRequest {
            success: vec![RequestOp {
                request_put: Some(put("a", "b")),
            }],
        };
        assert_eq!(txn.encode(), b"\x12\x08\x12\x06\x0a\x01a\x12\x01b");
        assert_eq!(StatusRequest {}.encode(), b"");
    }

    #[test]
    fn messages_round_trip() {
        let header = Some(ResponseHeader {
            cluster_id: 0x1234_5678_9abc_def0,
            member_id: u64::MAX,
            revision: 42,
            raft_term: 7,
        });
        let range = RangeResponse {
            header: header.clone(),
            kvs: vec![
                KeyValue {
                    key: b"a".to_vec(),
                    value: vec![0xff; 300],
                },
                KeyValue {
                    key: b"b".to_vec(),
                    value: Vec::new(),
                },
            ],
        };
        assert_eq!(RangeResponse::decode(&range.encode()).unwrap(), range);

        let txn = TxnRequest {
            success: (0..100)
                .map(|i| RequestOp {
                    request_put: Some(put(&format!("key/{i}"), &"v".repeat(i))),
                })
                .collect(),
        };
        assert_eq!(TxnRequest::decode(&txn.encode()).unwrap(), txn);

        let request = RangeRequest {
            key: b"x".to_vec(),
            serializable: true,
        };
        assert_eq!(RangeRequest::decode(&request.encode()).unwrap(), request);
        let p = put("k", "v");
        assert_eq!(PutRequest::decode(&p.encode()).unwrap(), p);

        for response in [
            TxnResponse {
                header: header.clone(),
                succeeded: true,
            },
            TxnResponse::default(),
        ] {
            assert_eq!(TxnResponse::decode(&response.encode()).unwrap(), response);
        }
        let status = StatusResponse {
            header: header.clone(),
            leader: 0x8e9e_05c5_2164_694d,
        };
        assert_eq!(StatusResponse::decode(&status.encode()).unwrap(), status);
        let put_response = PutResponse { header };
        assert_eq!(
            PutResponse::decode(&put_response.encode()).unwrap(),
            put_response
        );
        // An empty message decodes to the defaults; a present but empty header stays present.
        assert_eq!(
            StatusResponse::decode(&[]).unwrap(),
            StatusResponse::default()
        );
        assert_eq!(
            PutResponse::decode(b"\x0a\x00").unwrap().header,
            Some(ResponseHeader::default())
        );
    }

    /// Appends a field of every wire type that none of our messages knows.
    fn unknown_fields(out: &mut Vec<u8>) {
        put_tag(out, 15, 0);
        put_varint(out, u64::MAX);
        put_tag(out, 16, 1);
        out.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        put_tag(out, 17, 2);
        put_varint(out, 3);
        out.extend_from_slice(b"xyz");
        put_tag(out, 1000, 5);
        out.extend_from_slice(&[9, 9, 9, 9]);
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped() {
        // A StatusResponse as etcd sends it: version (2), dbSize (3), raft fields (5..7),
        // errors (8), plus unknown fields before and after the two we read.
        let mut header = Vec::new();
        put_u64(&mut header, 1, 99);
        unknown_fields(&mut header);
        put_u64(&mut header, 2, 0xabc);
        let mut buf = Vec::new();
        unknown_fields(&mut buf);
        put_bytes(&mut buf, 1, &header);
        put_bytes(&mut buf, 2, b"3.4.23");
        put_u64(&mut buf, 3, 20480);
        put_u64(&mut buf, 4, 0xabc);
        put_u64(&mut buf, 5, 9);
        put_u64(&mut buf, 6, 2);
        put_u64(&mut buf, 7, 9);
        put_bytes(&mut buf, 8, b"alarm");
        unknown_fields(&mut buf);
        let status = StatusResponse::decode(&buf).unwrap();
        assert_eq!(status.leader, 0xabc);
        let header = status.header.unwrap();
        assert_eq!((header.cluster_id, header.member_id), (99, 0xabc));

        // A KeyValue with create_revision (2), mod_revision (3), version (4) and lease (6),
        // inside a RangeResponse with more (3) and count (4).
        let mut kv = Vec::new();
        put_bytes(&mut kv, 1, b"key");
        put_u64(&mut kv, 2, 5);
        put_u64(&mut kv, 3, 6);
        put_u64(&mut kv, 4, 1);
        unknown_fields(&mut kv);
        put_bytes(&mut kv, 5, b"value");
        put_u64(&mut kv, 6, 0x7777);
        let mut buf = Vec::new();
        put_bytes(&mut buf, 2, &kv);
        put_bool(&mut buf, 3, true);
        put_u64(&mut buf, 4, 1);
        let range = RangeResponse::decode(&buf).unwrap();
        assert_eq!(range.header, None);
        assert_eq!(
            range.kvs,
            [KeyValue {
                key: b"key".to_vec(),
                value: b"value".to_vec()
            }]
        );
    }

    #[test]
    fn truncated_and_malformed_input_is_an_error_not_a_panic() {
        let full = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 1 << 40,
                member_id: 3,
                revision: 10,
                raft_term: 2,
            }),
            kvs: vec![KeyValue {
                key: b"bench/put1/00000001".to_vec(),
                value: vec![b'x'; 256],
            }],
        }
        .encode();
        // A prefix that ends between two fields is a shorter valid message; every other
        // prefix is an error, and none panics.
        let header_end = 2 + usize::from(full[1]);
        for cut in 0..full.len() {
            let result = RangeResponse::decode(&full[..cut]);
            assert_eq!(
                result.is_ok(),
                cut == 0 || cut == header_end,
                "{cut}: {result:?}"
            );
        }
        let err = RangeResponse::decode(&full[..full.len() - 1]).unwrap_err();
        assert_eq!(err.message, "RangeResponse");
        assert!(err.problem.contains("truncated"), "{err}");

        let cases: [(&[u8], &str); 7] = [
            (b"\x08", "truncated varint"),
            (b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "overflows"),
            (b"\x09\x01\x02", "truncated fixed64"),
            (b"\x0d\x01", "truncated fixed32"),
            (b"\x0b", "group"),
            (b"\x0e", "invalid wire type 6"),
            (b"\x00\x00", "invalid field number 0"),
        ];
        for (bytes, problem) in cases {
            let err = StatusResponse::decode(bytes).unwrap_err();
            assert!(err.to_string().contains(problem), "{bytes:?}: {err}");
        }
        // A known field with the wrong wire type is named, and so is the nested message.
        let err = StatusResponse::decode(b"\x22\x00").unwrap_err();
        assert!(
            err.to_string()
                .contains("field 4 has wire type 2, expected 0"),
            "{err}"
        );
        let err = RangeResponse::decode(b"\x12\x02\x0a\x05").unwrap_err();
        assert_eq!(err.message, "KeyValue");
        assert!(err.problem.contains("truncated"), "{err}");
        let err = RangeResponse::decode(b"\x12\x02\x28\x01").unwrap_err();
        assert_eq!(err.message, "KeyValue");
        assert!(err.problem.contains("field 5 has wire type 0"), "{err}");
    }
}
