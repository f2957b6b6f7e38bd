//! Request bodies to JSON values: media types, size bounds, positions of syntax errors,
//! duplicate and unknown fields under `fieldValidation`, and the typed round trip that gives a
//! built-in kind its canonical form.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// Largest request body accepted (as kube-apiserver: 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// How the client wants unknown and duplicate fields handled (`fieldValidation`; default Warn).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
            ))),
        }
    }

    /// Turns findings into warnings, or into a 400 under Strict.
    pub fn judge(self, findings: Vec<String>) -> Result<Vec<String>, ApiError> {
        match self {
            Self::Ignore => Ok(Vec::new()),
            Self::Warn => Ok(findings),
            Self::Strict if findings.is_empty() => Ok(findings),
            Self::Strict => Err(ApiError::BadRequest(format!(
                "strict decoding error: {}",
                findings.join(", ")
            ))),
        }
    }
}

/// The body formats a write accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Yaml,
    Protobuf,
}

impl BodyFormat {
    /// From a Content-Type's media type; a missing one means JSON (the Python client sends none).
    pub fn from_media_type(ct: &str) -> Option<Self> {
        match ct {
            "" | "application/json" | "*/*" => Some(Self::Json),
            "application/yaml" | "application/x-yaml" | "text/yaml" => Some(Self::Yaml),
            "application/vnd.kubernetes.protobuf" => Some(Self::Protobuf),
            _ => None,
        }
    }
}

/// Parses a JSON body, naming the line and column of a syntax error and every duplicate field.
pub fn parse_json(body: &[u8]) -> Result<(Value, Vec<String>), ApiError> {
    let mut dups = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = serde::de::DeserializeSeed::deserialize(
        DupSeed {
            path: String::new(),
            dups: &mut dups,
        },
        &mut de,
    )
    .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    de.end()
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    Ok((
        v,
        dups.into_iter()
            .map(|d| format!("duplicate field \"{d}\""))
            .collect(),
    ))
}

/// Parses a YAML body (one document) into JSON.
pub fn parse_yaml(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::BadRequest(format!("the YAML body is not UTF-8: {e}")))?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid YAML: {e}")))
}

/// A JSON value deserializer that records duplicate object keys by path.
struct DupSeed<'a> {
    path: String,
    dups: &'a mut Vec<String>,
}

impl<'de> serde::de::DeserializeSeed<'de> for DupSeed<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for DupSeed<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let path = format!("{}[{}]", self.path, out.len());
            match seq.next_element_seed(DupSeed {
                path,
                dups: &mut *self.dups,
            })? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            let v = map.next_value_seed(DupSeed {
                path: path.clone(),
                dups: &mut *self.dups,
            })?;
            if out.insert(key, v).is_some() {
                self.dups.push(path);
            }
        }
        Ok(Value::Object(out))
    }
}

/// Paths of fields present in `input` but dropped by decoding into a typed object (`typed`).
/// Nulls are not fields (kubectl sends `creationTimestamp: null`).
pub fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(t) => unknown_fields(v, t, &p, out),
                    // An empty object or list decodes to an absent optional field: not unknown.
                    None if v.as_object().is_some_and(|m| m.is_empty())
                        || v.as_array().is_some_and(|a| a.is_empty()) => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes into `K`, naming the field of a type error (a 400, as upstream's decode errors).
pub fn typed<K: DeserializeOwned>(kind: &str, v: Value) -> Result<K, ApiError> {
    serde_path_to_error::deserialize::<_, K>(v).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "(root)".to_string()
        } else {
            path
        };
        ApiError::BadRequest(format!(
            "{kind} in the request body is invalid: {path}: {}",
            e.inner()
        ))
    })
}

/// The round trip of a built-in kind: decode into `K`, report fields `K` does not know, and
/// return the canonical JSON with `apiVersion` and `kind` set.
pub fn round_trip<K: DeserializeOwned + Serialize>(
    kind: &str,
    api_version: &str,
    input: Value,
) -> Result<(Value, Vec<String>), ApiError> {
    let obj: K = typed(kind, input.clone())?;
    let mut out = serde_json::to_value(&obj)
        .map_err(|e| ApiError::Internal(format!("encoding {kind}: {e}")))?;
    if let Value::Object(m) = &mut out {
        m.insert("apiVersion".into(), api_version.into());
        m.insert("kind".into(), kind.into());
    }
    let mut unknown = Vec::new();
    unknown_fields(&input, &out, "", &mut unknown);
    Ok((
        out,
        unknown
            .into_iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    #[test]
    fn syntax_errors_carry_a_position_and_duplicates_are_found() {
        let err = parse_json(b"{\"a\":\n  tru}").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        let (v, dups) =
            parse_json(br#"{"metadata":{"name":"a","name":"b"},"spec":{"x":[{"k":1,"k":2}]}}"#)
                .unwrap();
        assert_eq!(v["metadata"]["name"], "b");
        assert_eq!(
            dups,
            [
                "duplicate field \"metadata.name\"",
                "duplicate field \"spec.x[0].k\""
            ]
        );
    }

    #[test]
    fn the_typed_round_trip_names_bad_and_unknown_fields() {
        let bad = json!({"metadata": {"name": "p"}, "spec": {"containers": "oops"}});
        let err = round_trip::<Pod>("Pod", "v1", bad).unwrap_err().to_string();
        assert!(err.contains("spec.containers"), "{err}");
        let v = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "creationTimestamp": null}, "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolcy": "Always"}], "bogus": 1}});
        let (out, unknown) = round_trip::<Pod>("Pod", "v1", v).unwrap();
        assert_eq!(
            unknown,
            [
                "unknown field \"spec.bogus\"",
                "unknown field \"spec.containers[0].imagePullPolcy\""
            ]
        );
        assert_eq!(out["kind"], "Pod");
        assert!(
            FieldValidation::Strict
                .judge(unknown.clone())
                .unwrap_err()
                .to_string()
                .contains("strict decoding error")
        );
        assert_eq!(
            FieldValidation::Ignore.judge(unknown).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn yaml_bodies() {
        let v =
            parse_yaml(b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: '1'\n")
                .unwrap();
        assert_eq!(v["data"]["a"], "1");
        assert!(parse_yaml(b"a: [1, 2").is_err());
    }
}
