//! Kubernetes protobuf bodies (`application/vnd.kubernetes.protobuf`) to JSON and back: the
//! `k8s\0` envelope, the wire format, and every built-in message by its field numbers (a table
//! built from k8s-pb's sources) with the JSON names of its properties (from the kinds' OpenAPI
//! schemas). Owns the encoding only; what the JSON means is the API machinery's business.

mod encode;
mod wire;

pub use encode::{envelope, watch_frame};

use std::collections::HashMap;

use serde_json::{Map, Value};

/// A field's wire type, as the table records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    String,
    Bool,
    Int32,
    Int64,
    Double,
    Bytes,
    Message(&'static str),
    MapString,
    MapBytes,
    MapMessage(&'static str),
}

impl FieldType {
    fn message(self) -> Option<&'static str> {
        match self {
            FieldType::Message(m) => Some(m),
            _ => None,
        }
    }
}

/// One field of the table: number, Rust name, type, repeated.
pub type FieldEntry = (u32, &'static str, FieldType, bool);

include!(concat!(env!("OUT_DIR"), "/messages.rs"));

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("the body does not start with the Kubernetes protobuf envelope prefix \"k8s\\0\"")]
    NoEnvelope,
    #[error("malformed protobuf at byte {offset}: {problem}")]
    Malformed { offset: usize, problem: String },
    #[error("the envelope names no apiVersion and kind")]
    NoType,
    #[error("the protobuf body is a {kind} of {api_version}, which this server does not decode")]
    UnknownType { api_version: String, kind: String },
    #[error("the envelope's contentEncoding {0:?} is not supported")]
    Encoding(String),
}

/// Why a JSON value could not be encoded as its message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("{api_version} {kind} has no protobuf message")]
    UnknownType { api_version: String, kind: String },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
}

/// The envelope's magic prefix.
pub const MAGIC: &[u8] = b"k8s\0";

struct Field {
    json: String,
    ty: FieldType,
    repeated: bool,
    /// Embedded: its fields are written into the parent's JSON object.
    inline: bool,
}

/// Decodes protobuf messages into JSON and encodes JSON as them. Build it once: it joins the
/// field-number table with the JSON property names of the schemas it is given.
pub struct Codec {
    /// Each message's fields, sorted by number.
    messages: HashMap<&'static str, Vec<(u32, Field)>>,
}

fn normalized(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

impl Codec {
    /// `schemas`: OpenAPI/JSON schemas by name (`io.k8s.api.core.v1.PodSpec`), whose
    /// `properties` give each field's JSON name.
    pub fn new(schemas: &Map<String, Value>) -> Self {
        let table: HashMap<&str, &[FieldEntry]> = MESSAGES.iter().copied().collect();
        let mut messages = HashMap::new();
        for (name, fields) in MESSAGES {
            let props: Vec<&String> = schemas
                .get(*name)
                .and_then(|s| s.get("properties"))
                .and_then(Value::as_object)
                .map(|p| p.keys().collect())
                .unwrap_or_default();
            let mut by_tag = Vec::with_capacity(fields.len());
            for (tag, rust, ty, repeated) in fields.iter() {
                let n = normalized(rust);
                // Without a schema (wrapper types), the Rust name in camelCase.
                let named = props.iter().find(|p| normalized(p) == n);
                // A Go struct embedded with `json:",inline"` (Probe's ProbeHandler, Volume's
                // VolumeSource) is a field in protobuf but its fields are the parent's in JSON.
                // gogo names an embedded field after its type (`volumeSource VolumeSource`,
                // `rule Rule`); where it does not (`handler ProbeHandler`), the inner fields are
                // the parent's JSON properties. Two thirds of them, as the protobuf table may be
                // a release newer than the schemas (EphemeralContainerCommon).
                // Only a message with a schema is judged: many plain fields are named after their
                // type too (`userInfo UserInfo`), and only the schema tells them apart.
                let inline = match (named, ty, repeated) {
                    (None, FieldType::Message(m), false) if !props.is_empty() => {
                        let short = m.rsplit('.').next().unwrap_or(m);
                        normalized(short) == n
                            || (table.get(m).is_some_and(|inner| {
                                let matched = inner
                                    .iter()
                                    .filter(|(_, r, _, _)| {
                                        props.iter().any(|p| normalized(p) == normalized(r))
                                    })
                                    .count();
                                matched > 0 && matched * 3 >= inner.len() * 2
                            }))
                    }
                    _ => false,
                };
                let json = named.map(|p| p.to_string()).unwrap_or_else(|| camel(rust));
                by_tag.push((
                    *tag,
                    Field {
                        json,
                        ty: *ty,
                        repeated: *repeated,
                        inline,
                    },
                ));
            }
            by_tag.sort_by_key(|(tag, _)| *tag);
            messages.insert(*name, by_tag);
        }
        Self { messages }
    }

    /// Whether the table knows a message.
    pub fn knows(&self, message: &str) -> bool {
        self.messages.contains_key(message)
    }

    /// Decodes an enveloped body; `message_of(apiVersion, kind)` names its message.
    pub fn decode_envelope(
        &self,
        body: &[u8],
        message_of: &dyn Fn(&str, &str) -> Option<String>,
    ) -> Result<Value, DecodeError> {
        let rest = body.strip_prefix(MAGIC).ok_or(DecodeError::NoEnvelope)?;
        // Unknown's own fields: typeMeta (1), raw (2), contentEncoding (3), contentType (4).
        let mut api_version = String::new();
        let mut kind = String::new();
        let mut raw: &[u8] = &[];
        let mut encoding = String::new();
        for item in wire::Fields::new(rest, MAGIC.len()) {
            let (tag, value) = item?;
            match (tag, value) {
                (1, wire::Value::Bytes(tm)) => {
                    for f in wire::Fields::new(tm, 0) {
                        match f? {
                            (1, wire::Value::Bytes(b)) => {
                                api_version = String::from_utf8_lossy(b).into_owned()
                            }
                            (2, wire::Value::Bytes(b)) => {
                                kind = String::from_utf8_lossy(b).into_owned()
                            }
                            _ => {}
                        }
                    }
                }
                (2, wire::Value::Bytes(b)) => raw = b,
                (3, wire::Value::Bytes(b)) => encoding = String::from_utf8_lossy(b).into_owned(),
                _ => {}
            }
        }
        if !encoding.is_empty() {
            return Err(DecodeError::Encoding(encoding));
        }
        if kind.is_empty() {
            return Err(DecodeError::NoType);
        }
        let message = message_of(&api_version, &kind)
            .filter(|m| self.knows(m))
            .ok_or_else(|| DecodeError::UnknownType {
                api_version: api_version.clone(),
                kind: kind.clone(),
            })?;
        let mut v = self.decode_message(&message, raw, 0)?;
        if let Value::Object(m) = &mut v {
            m.insert("apiVersion".into(), api_version.into());
            m.insert("kind".into(), kind.into());
        }
        Ok(v)
    }

    /// Decodes one message's bytes as JSON.
    pub fn decode_message(
        &self,
        name: &str,
        bytes: &[u8],
        offset: usize,
    ) -> Result<Value, DecodeError> {
        if let Some(v) = self.special(name, bytes, offset)? {
            return Ok(v);
        }
        let Some(fields) = self.messages.get(name) else {
            return Err(DecodeError::Malformed {
                offset,
                problem: format!("unknown message {name}"),
            });
        };
        let mut out = Map::new();
        for item in wire::Fields::new(bytes, offset) {
            let (tag, value) = item?;
            let Ok(i) = fields.binary_search_by_key(&tag, |(t, _)| *t) else {
                continue;
            };
            let f = &fields[i].1;
            let decoded = self.field_value(f, value, offset)?;
            if f.inline {
                if let Value::Object(inner) = decoded {
                    out.extend(inner);
                }
                continue;
            }
            match (&f.ty, f.repeated) {
                (FieldType::MapString | FieldType::MapBytes | FieldType::MapMessage(_), _) => {
                    let entry = out
                        .entry(f.json.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let (Value::Object(m), Value::Array(kv)) = (entry, decoded)
                        && let [Value::String(k), v] = kv.as_slice()
                    {
                        m.insert(k.clone(), v.clone());
                    }
                }
                (_, true) => match decoded {
                    // A packed repeated scalar decodes to a list of its values.
                    // An empty packed run adds nothing, as no element at all would.
                    Value::Array(vs) if vs.is_empty() => {}
                    Value::Array(vs)
                        if matches!(
                            f.ty,
                            FieldType::Int32
                                | FieldType::Int64
                                | FieldType::Bool
                                | FieldType::Double
                        ) =>
                    {
                        let list = out
                            .entry(f.json.clone())
                            .or_insert_with(|| Value::Array(Vec::new()));
                        if let Value::Array(l) = list {
                            l.extend(vs);
                        }
                    }
                    v => {
                        let list = out
                            .entry(f.json.clone())
                            .or_insert_with(|| Value::Array(Vec::new()));
                        if let Value::Array(l) = list {
                            l.push(v);
                        }
                    }
                },
                _ => {
                    // Gogo writes non-pointer fields even when empty; Go's JSON omits those.
                    if decoded == Value::String(String::new()) || decoded.is_null() {
                        continue;
                    }
                    out.insert(f.json.clone(), decoded);
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn field_value(
        &self,
        f: &Field,
        value: wire::Value<'_>,
        offset: usize,
    ) -> Result<Value, DecodeError> {
        use wire::Value as W;
        let bad = |what: &str| DecodeError::Malformed {
            offset,
            problem: format!("field {} is not {what}", f.json),
        };
        Ok(match (f.ty, value) {
            (FieldType::String, W::Bytes(b)) => {
                Value::String(String::from_utf8_lossy(b).into_owned())
            }
            (FieldType::Bytes, W::Bytes(b)) => Value::String(base64(b)),
            (FieldType::Bool, W::Varint(v)) => Value::Bool(v != 0),
            (FieldType::Int32, W::Varint(v)) => Value::from(v as i64 as i32),
            (FieldType::Int64, W::Varint(v)) => Value::from(v as i64),
            (FieldType::Double, W::Fixed64(v)) => {
                serde_json::Number::from_f64(f64::from_bits(v)).map_or(Value::Null, Value::Number)
            }
            (FieldType::Int32 | FieldType::Int64 | FieldType::Bool, W::Bytes(b)) if f.repeated => {
                // Packed repeated varints.
                let mut vals = Vec::new();
                let mut r = wire::Reader::new(b, offset);
                while !r.done() {
                    let v = r.varint()?;
                    vals.push(match f.ty {
                        FieldType::Bool => Value::Bool(v != 0),
                        FieldType::Int32 => Value::from(v as i64 as i32),
                        _ => Value::from(v as i64),
                    });
                }
                Value::Array(vals)
            }
            (FieldType::Message(m), W::Bytes(b)) => self.decode_message(m, b, offset)?,
            (
                FieldType::MapString | FieldType::MapBytes | FieldType::MapMessage(_),
                W::Bytes(b),
            ) => {
                let mut key = String::new();
                let mut val = match f.ty {
                    FieldType::MapMessage(m) => self.decode_message(m, &[], offset)?,
                    _ => Value::String(String::new()),
                };
                for item in wire::Fields::new(b, offset) {
                    match item? {
                        (1, W::Bytes(k)) => key = String::from_utf8_lossy(k).into_owned(),
                        (2, W::Bytes(v)) => {
                            val = match f.ty {
                                FieldType::MapString => {
                                    Value::String(String::from_utf8_lossy(v).into_owned())
                                }
                                FieldType::MapBytes => Value::String(base64(v)),
                                FieldType::MapMessage(m) => self.decode_message(m, v, offset)?,
                                _ => Value::Null,
                            }
                        }
                        _ => {}
                    }
                }
                Value::Array(vec![Value::String(key), val])
            }
            (FieldType::String | FieldType::Bytes | FieldType::Message(_), _) => {
                return Err(bad("length-delimited"));
            }
            (FieldType::Bool | FieldType::Int32 | FieldType::Int64, _) => {
                return Err(bad("a varint"));
            }
            (FieldType::Double, _) => return Err(bad("a double")),
            (FieldType::MapString | FieldType::MapBytes | FieldType::MapMessage(_), _) => {
                return Err(bad("a map entry"));
            }
        })
    }

    /// Messages whose JSON form is not an object of their fields.
    fn special(
        &self,
        name: &str,
        bytes: &[u8],
        offset: usize,
    ) -> Result<Option<Value>, DecodeError> {
        let short = name.rsplit('.').next().unwrap_or(name);
        let meta = name.starts_with("io.k8s.apimachinery.");
        let fields = || -> Result<HashMap<u32, wire::Value<'_>>, DecodeError> {
            wire::Fields::new(bytes, offset).collect::<Result<HashMap<_, _>, _>>()
        };
        let text = |v: Option<&wire::Value<'_>>| match v {
            Some(wire::Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        let int = |v: Option<&wire::Value<'_>>| match v {
            Some(wire::Value::Varint(x)) => *x as i64,
            _ => 0,
        };
        let raw_json = |v: Option<&wire::Value<'_>>| match v {
            Some(wire::Value::Bytes(b)) if !b.is_empty() => {
                serde_json::from_slice(b).unwrap_or(Value::Null)
            }
            _ => Value::Null,
        };
        Ok(Some(match (meta, short) {
            (true, "Time" | "MicroTime") => {
                let f = fields()?;
                let (secs, nanos) = (int(f.get(&1)), int(f.get(&2)));
                // As protobuf's Timestamp: nanoseconds within the second, or the value would
                // not survive the trip through its JSON form.
                if !(0..1_000_000_000).contains(&nanos) {
                    return Err(DecodeError::Malformed {
                        offset,
                        problem: format!("bad time: {nanos} nanoseconds is not within a second"),
                    });
                }
                // Years 0000 to 9999 only, as RFC 3339 writes them (and Go refuses to marshal
                // others): a year before 0 came out as "-2394-..." and did not encode back.
                if !(-62_167_219_200..=253_402_207_200).contains(&secs) {
                    return Err(DecodeError::Malformed {
                        offset,
                        problem: format!(
                            "bad time: {secs} seconds is outside the years 0000 to 9999"
                        ),
                    });
                }
                // Zero as the JSON form shows it: Time has whole seconds, MicroTime microseconds.
                let shown = if short == "Time" { 0 } else { nanos / 1000 };
                if secs == 0 && shown == 0 {
                    Value::Null
                } else {
                    let ts = jiff::Timestamp::new(secs, nanos as i32).map_err(|e| {
                        DecodeError::Malformed {
                            offset,
                            problem: format!("bad time: {e}"),
                        }
                    })?;
                    let fmt = if short == "Time" {
                        "%Y-%m-%dT%H:%M:%SZ"
                    } else {
                        "%Y-%m-%dT%H:%M:%S%.6fZ"
                    };
                    Value::String(ts.strftime(fmt).to_string())
                }
            }
            (true, "Quantity") => Value::String(text(fields()?.get(&1))),
            (true, "IntOrString") => {
                let f = fields()?;
                if int(f.get(&1)) == 1 {
                    Value::String(text(f.get(&3)))
                } else {
                    Value::from(int(f.get(&2)) as i32)
                }
            }
            (true, "RawExtension" | "FieldsV1") => raw_json(fields()?.get(&1)),
            (true, "Duration") => Value::String(go_duration(int(fields()?.get(&1)))),
            (false, "JSON") if name.contains("apiextensions") => raw_json(fields()?.get(&1)),
            (false, "ExtraValue") => {
                let items: Vec<Value> = wire::Fields::new(bytes, offset)
                    .filter_map(|f| match f {
                        Ok((1, wire::Value::Bytes(b))) => {
                            Some(Value::String(String::from_utf8_lossy(b).into_owned()))
                        }
                        _ => None,
                    })
                    .collect();
                Value::Array(items)
            }
            (false, "JSONSchemaPropsOrBool") => {
                let f = fields()?;
                match f.get(&2) {
                    Some(wire::Value::Bytes(b)) => self.decode_message(
                        &name.replace("JSONSchemaPropsOrBool", "JSONSchemaProps"),
                        b,
                        offset,
                    )?,
                    _ => Value::Bool(int(f.get(&1)) != 0),
                }
            }
            (false, "JSONSchemaPropsOrArray" | "JSONSchemaPropsOrStringArray") => {
                let props = name.replace(short, "JSONSchemaProps");
                let mut schema = None;
                let mut list = Vec::new();
                for f in wire::Fields::new(bytes, offset) {
                    match f? {
                        (1, wire::Value::Bytes(b)) => {
                            schema = Some(self.decode_message(&props, b, offset)?)
                        }
                        (2, wire::Value::Bytes(b)) if short == "JSONSchemaPropsOrArray" => {
                            list.push(self.decode_message(&props, b, offset)?)
                        }
                        (2, wire::Value::Bytes(b)) => {
                            list.push(Value::String(String::from_utf8_lossy(b).into_owned()))
                        }
                        _ => {}
                    }
                }
                schema.unwrap_or(Value::Array(list))
            }
            _ => return Ok(None),
        }))
    }
}

fn camel(rust: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for ch in rust.chars() {
        if ch == '_' {
            upper = true;
        } else if upper {
            out.extend(ch.to_uppercase());
            upper = false;
        } else {
            out.push(ch);
        }
    }
    out
}

fn base64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A duration in nanoseconds as Go's `time.Duration` prints it (`1h2m3s`, `1.5s`, `300ms`,
/// `0s`), exactly: integer arithmetic, fractions without trailing zeros.
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let u = ns.unsigned_abs();
    // `v` scaled down by 10^prec, with the fraction's trailing zeros dropped.
    let frac = |v: u64, prec: u32| -> String {
        let scale = 10u64.pow(prec);
        let (whole, part) = (v / scale, v % scale);
        if part == 0 {
            whole.to_string()
        } else {
            let digits = format!("{part:0width$}", width = prec as usize);
            format!("{whole}.{}", digits.trim_end_matches('0'))
        }
    };
    if u < 1_000 {
        return format!("{sign}{u}ns");
    }
    if u < 1_000_000 {
        return format!("{sign}{}µs", frac(u, 3));
    }
    if u < 1_000_000_000 {
        return format!("{sign}{}ms", frac(u, 6));
    }
    let (h, rest) = (u / 3_600_000_000_000, u % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let secs = frac(rest, 9);
    match (h, m) {
        (0, 0) => format!("{sign}{secs}s"),
        (0, m) => format!("{sign}{m}m{secs}s"),
        (h, m) => format!("{sign}{h}h{m}m{secs}s"),
    }
}

#[cfg(test)]
mod tests;
