//! JSON to protobuf: the inverse of decoding, for response bodies. Fields are written in field
//! number order, as gogo-protobuf writes them; JSON properties the message does not declare
//! (apiVersion and kind inside a list's items, say) are not written.

use serde_json::Value;

use crate::{Codec, EncodeError, Field, FieldType, MAGIC};

/// Appends protobuf's base-128 varint.
pub(crate) fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, tag: u32, wire: u8) {
    varint(out, (u64::from(tag) << 3) | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, tag: u32, b: &[u8]) {
    key(out, tag, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn varint_field(out: &mut Vec<u8>, tag: u32, v: u64) {
    key(out, tag, 0);
    varint(out, v);
}

/// Wraps a message's bytes in the `k8s\0` envelope (`runtime.Unknown`).
pub fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut type_meta = Vec::with_capacity(api_version.len() + kind.len() + 4);
    bytes_field(&mut type_meta, 1, api_version.as_bytes());
    bytes_field(&mut type_meta, 2, kind.as_bytes());
    let mut out = Vec::with_capacity(raw.len() + type_meta.len() + 16);
    out.extend_from_slice(MAGIC);
    bytes_field(&mut out, 1, &type_meta);
    bytes_field(&mut out, 2, raw);
    // contentEncoding and contentType are written empty, as the upstream serializer writes them.
    bytes_field(&mut out, 3, b"");
    bytes_field(&mut out, 4, b"");
    out
}

impl Codec {
    /// Encodes a JSON value as the named message.
    pub fn encode_message(&self, name: &str, v: &Value) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.write_message(&mut out, name, v, &mut String::new())?;
        Ok(out)
    }

    /// Encodes an object as an enveloped body; `message_of(apiVersion, kind)` names its message.
    pub fn encode_envelope(
        &self,
        v: &Value,
        message_of: &dyn Fn(&str, &str) -> Option<String>,
    ) -> Result<Vec<u8>, EncodeError> {
        let api_version = v["apiVersion"].as_str().unwrap_or_default();
        let kind = v["kind"].as_str().unwrap_or_default();
        let message = message_of(api_version, kind)
            .filter(|m| self.knows(m))
            .ok_or_else(|| EncodeError::UnknownType {
                api_version: api_version.into(),
                kind: kind.into(),
            })?;
        let raw = self.encode_message(&message, v)?;
        Ok(envelope(api_version, kind, &raw))
    }

    fn write_message(
        &self,
        out: &mut Vec<u8>,
        name: &str,
        v: &Value,
        path: &mut String,
    ) -> Result<(), EncodeError> {
        // An absent message, as a zero time decodes.
        if v.is_null() {
            return Ok(());
        }
        if self.write_special(out, name, v, path)? {
            return Ok(());
        }
        let fields = self
            .messages
            .get(name)
            .ok_or_else(|| EncodeError::Invalid {
                path: path.clone(),
                problem: format!("unknown message {name}"),
            })?;
        let obj = match v {
            Value::Object(m) => m,
            other => return Err(mismatch(path, "an object", other)),
        };
        for (tag, f) in fields {
            if f.inline {
                let mut inner = Vec::new();
                self.write_message(&mut inner, f.ty.message().unwrap_or_default(), v, path)?;
                if !inner.is_empty() {
                    bytes_field(out, *tag, &inner);
                }
                continue;
            }
            let Some(fv) = obj.get(&f.json) else { continue };
            if fv.is_null() {
                continue;
            }
            let len = path.len();
            path.push('.');
            path.push_str(&f.json);
            let r = self.write_field(out, *tag, f, fv, path);
            path.truncate(len);
            r?;
        }
        Ok(())
    }

    fn write_field(
        &self,
        out: &mut Vec<u8>,
        tag: u32,
        f: &Field,
        v: &Value,
        path: &mut String,
    ) -> Result<(), EncodeError> {
        match f.ty {
            FieldType::MapString | FieldType::MapBytes | FieldType::MapMessage(_) => {
                let Value::Object(m) = v else {
                    return Err(mismatch(path, "an object", v));
                };
                // Sorted keys, so the same object always encodes to the same bytes.
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                for k in keys {
                    let mut entry = Vec::new();
                    bytes_field(&mut entry, 1, k.as_bytes());
                    let val = &m[k];
                    match f.ty {
                        FieldType::MapString => {
                            bytes_field(&mut entry, 2, string(val, path)?.as_bytes())
                        }
                        FieldType::MapBytes => bytes_field(&mut entry, 2, &unbase64(val, path)?),
                        FieldType::MapMessage(msg) => {
                            let mut inner = Vec::new();
                            self.write_message(&mut inner, msg, val, path)?;
                            bytes_field(&mut entry, 2, &inner);
                        }
                        _ => unreachable!("a map type"),
                    }
                    bytes_field(out, tag, &entry);
                }
                Ok(())
            }
            _ if f.repeated => {
                let Value::Array(items) = v else {
                    return Err(mismatch(path, "a list", v));
                };
                for item in items {
                    self.write_scalar(out, tag, f.ty, item, path)?;
                }
                Ok(())
            }
            ty => self.write_scalar(out, tag, ty, v, path),
        }
    }

    fn write_scalar(
        &self,
        out: &mut Vec<u8>,
        tag: u32,
        ty: FieldType,
        v: &Value,
        path: &mut String,
    ) -> Result<(), EncodeError> {
        match ty {
            FieldType::String => bytes_field(out, tag, string(v, path)?.as_bytes()),
            FieldType::Bytes => bytes_field(out, tag, &unbase64(v, path)?),
            FieldType::Bool => {
                let b = v.as_bool().ok_or_else(|| mismatch(path, "a boolean", v))?;
                varint_field(out, tag, u64::from(b));
            }
            FieldType::Int32 | FieldType::Int64 => {
                let n = integer(v, path)?;
                if ty == FieldType::Int32 && i32::try_from(n).is_err() {
                    return Err(EncodeError::Invalid {
                        path: path.clone(),
                        problem: format!("{n} does not fit in 32 bits"),
                    });
                }
                // Negative values are sign-extended to ten bytes, as protobuf's int32 is.
                varint_field(out, tag, n as u64);
            }
            FieldType::Double => {
                let d = v.as_f64().ok_or_else(|| mismatch(path, "a number", v))?;
                key(out, tag, 1);
                out.extend_from_slice(&d.to_bits().to_le_bytes());
            }
            FieldType::Message(m) => {
                let mut inner = Vec::new();
                self.write_message(&mut inner, m, v, path)?;
                bytes_field(out, tag, &inner);
            }
            FieldType::MapString | FieldType::MapBytes | FieldType::MapMessage(_) => {
                unreachable!("maps are written by write_field")
            }
        }
        Ok(())
    }

    /// Messages whose JSON form is not an object of their fields; the inverse of
    /// `Codec::special`. Returns whether `name` was one.
    fn write_special(
        &self,
        out: &mut Vec<u8>,
        name: &str,
        v: &Value,
        path: &mut String,
    ) -> Result<bool, EncodeError> {
        let short = name.rsplit('.').next().unwrap_or(name);
        let meta = name.starts_with("io.k8s.apimachinery.");
        match (meta, short) {
            (true, "Time" | "MicroTime") => {
                let s = string(v, path)?;
                let ts: jiff::Timestamp = s.parse().map_err(|e| EncodeError::Invalid {
                    path: path.clone(),
                    problem: format!("{s:?} is not an RFC 3339 time: {e}"),
                })?;
                // Protobuf's Timestamp counts nanoseconds forward within the second; jiff gives a
                // time before 1970 a negative fraction, so borrow a second for it.
                let (mut secs, mut nanos) = (ts.as_second(), ts.subsec_nanosecond());
                if nanos < 0 {
                    secs -= 1;
                    nanos += 1_000_000_000;
                }
                varint_field(out, 1, secs as u64);
                if nanos != 0 {
                    varint_field(out, 2, nanos as i64 as u64);
                }
            }
            (true, "Quantity") => {
                let s = match v {
                    Value::Number(n) => n.to_string(),
                    other => string(other, path)?.to_string(),
                };
                bytes_field(out, 1, s.as_bytes());
            }
            (true, "IntOrString") => match v {
                Value::String(s) => {
                    varint_field(out, 1, 1);
                    bytes_field(out, 3, s.as_bytes());
                }
                other => {
                    varint_field(out, 1, 0);
                    let n = integer(other, path)?;
                    varint_field(out, 2, n as u64);
                }
            },
            (true, "RawExtension" | "FieldsV1") => {
                bytes_field(out, 1, &serde_json::to_vec(v).unwrap_or_default())
            }
            (true, "Duration") => {
                let s = string(v, path)?;
                let ns = parse_go_duration(s).ok_or_else(|| EncodeError::Invalid {
                    path: path.clone(),
                    problem: format!("{s:?} is not a duration"),
                })?;
                varint_field(out, 1, ns as u64);
            }
            (false, "JSON") if name.contains("apiextensions") => {
                bytes_field(out, 1, &serde_json::to_vec(v).unwrap_or_default())
            }
            (false, "ExtraValue") => {
                let Value::Array(items) = v else {
                    return Err(mismatch(path, "a list", v));
                };
                for item in items {
                    bytes_field(out, 1, string(item, path)?.as_bytes());
                }
            }
            (false, "JSONSchemaPropsOrBool") => match v {
                Value::Bool(b) => varint_field(out, 1, u64::from(*b)),
                schema => {
                    varint_field(out, 1, 1);
                    let mut inner = Vec::new();
                    let props = name.replace(short, "JSONSchemaProps");
                    self.write_message(&mut inner, &props, schema, path)?;
                    bytes_field(out, 2, &inner);
                }
            },
            (false, "JSONSchemaPropsOrArray" | "JSONSchemaPropsOrStringArray") => {
                let props = name.replace(short, "JSONSchemaProps");
                match v {
                    Value::Array(items) => {
                        for item in items {
                            if short == "JSONSchemaPropsOrArray" {
                                let mut inner = Vec::new();
                                self.write_message(&mut inner, &props, item, path)?;
                                bytes_field(out, 2, &inner);
                            } else {
                                bytes_field(out, 2, string(item, path)?.as_bytes());
                            }
                        }
                    }
                    schema => {
                        let mut inner = Vec::new();
                        self.write_message(&mut inner, &props, schema, path)?;
                        bytes_field(out, 1, &inner);
                    }
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

fn mismatch(path: &str, want: &str, got: &Value) -> EncodeError {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    EncodeError::Invalid {
        path: path.to_string(),
        problem: format!("expected {want}, found {got}"),
    }
}

fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str, EncodeError> {
    v.as_str().ok_or_else(|| mismatch(path, "a string", v))
}

fn integer(v: &Value, path: &str) -> Result<i64, EncodeError> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
        .ok_or_else(|| mismatch(path, "an integer", v))
}

fn unbase64(v: &Value, path: &str) -> Result<Vec<u8>, EncodeError> {
    use base64::Engine;
    let s = string(v, path)?;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| EncodeError::Invalid {
            path: path.to_string(),
            problem: format!("not base64: {e}"),
        })
}

/// Go's duration syntax (`1h2m3.5s`, `300ms`, `-1.5h`) in nanoseconds, exactly.
pub(crate) fn parse_go_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int, after) = rest.split_at(int_end);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(a) => {
                let end = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(end)
            }
            None => ("", after),
        };
        if int.is_empty() && fraction.is_empty() {
            return None;
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let scale: u128 = match &after[..unit_end] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &after[unit_end..];
        let whole: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        total = total.checked_add(whole.checked_mul(scale)?)?;
        // The fraction's digits beyond nanoseconds are dropped, as Go drops them.
        let mut place = scale;
        for d in fraction.bytes() {
            place /= 10;
            if place == 0 {
                break;
            }
            total += u128::from(d - b'0') * place;
        }
        if total > 1u128 << 63 {
            return None;
        }
    }
    let total = i128::try_from(total).ok()?;
    i64::try_from(if neg { -total } else { total }).ok()
}

/// One frame of a protobuf watch stream (`;stream=watch`): a big-endian 4-byte length, then a
/// `metav1.WatchEvent` without the envelope, whose object is the enveloped object.
pub fn watch_frame(event_type: &str, enveloped_object: &[u8]) -> Vec<u8> {
    let mut raw_ext = Vec::with_capacity(enveloped_object.len() + 8);
    bytes_field(&mut raw_ext, 1, enveloped_object);
    let mut event = Vec::with_capacity(raw_ext.len() + event_type.len() + 8);
    bytes_field(&mut event, 1, event_type.as_bytes());
    bytes_field(&mut event, 2, &raw_ext);
    let mut out = Vec::with_capacity(event.len() + 4);
    out.extend_from_slice(&(event.len() as u32).to_be_bytes());
    out.extend_from_slice(&event);
    out
}
