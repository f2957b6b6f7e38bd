//! Kubernetes protobuf bodies (`application/vnd.kubernetes.protobuf`, which kubectl's typed
//! commands send and Go clients ask for) for the built-in kinds: requests decoded into JSON and
//! responses encoded from it, by `strake-protobuf` with the JSON names of the kinds' generated
//! schemas. Built once, on the first protobuf body.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};
use strake_apimachinery::ApiError;
use strake_protobuf::{Codec, DecodeError, EncodeError};

struct Table {
    codec: Codec,
    /// (apiVersion, kind) → message (schema) name.
    messages: HashMap<(String, String), String>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut schemas = Map::new();
        let mut messages = HashMap::new();
        for def in strake_kinds::builtin() {
            if let Some((root, defs)) = def.strategy.definitions() {
                // The kind's list, where protobuf has one (review kinds have none).
                messages.insert(
                    (def.api_version(), format!("{}List", def.kind)),
                    format!("{root}List"),
                );
                messages.insert((def.api_version(), def.kind.clone()), root);
                schemas.extend(defs);
            }
        }
        // Bodies of deletes and of subresources.
        for (av, kind, (root, defs)) in [
            (
                "meta.k8s.io/v1",
                "DeleteOptions",
                strake_kinds::typed::schema_definitions::<
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions,
                >(),
            ),
            (
                "v1",
                "DeleteOptions",
                strake_kinds::typed::schema_definitions::<
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions,
                >(),
            ),
            (
                "v1",
                "Binding",
                strake_kinds::typed::schema_definitions::<k8s_openapi::api::core::v1::Binding>(),
            ),
            (
                "policy/v1",
                "Eviction",
                strake_kinds::typed::schema_definitions::<k8s_openapi::api::policy::v1::Eviction>(),
            ),
            (
                "authentication.k8s.io/v1",
                "TokenRequest",
                strake_kinds::typed::schema_definitions::<
                    k8s_openapi::api::authentication::v1::TokenRequest,
                >(),
            ),
            (
                "autoscaling/v1",
                "Scale",
                strake_kinds::typed::schema_definitions::<k8s_openapi::api::autoscaling::v1::Scale>(
                ),
            ),
            (
                "v1",
                "Status",
                strake_kinds::typed::schema_definitions::<
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Status,
                >(),
            ),
        ] {
            messages.insert((av.to_string(), kind.to_string()), root);
            schemas.extend(defs);
        }
        let codec = Codec::new(&schemas);
        messages.retain(|_, m| codec.knows(m));
        Table { codec, messages }
    })
}

/// Decodes an enveloped protobuf body into the JSON the rest of the server reads.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let t = table();
    let message_of =
        |av: &str, kind: &str| t.messages.get(&(av.to_string(), kind.to_string())).cloned();
    t.codec.decode_envelope(body, &message_of).map_err(|e| match e {
        DecodeError::UnknownType { .. } => ApiError::UnsupportedMediaType {
            got: format!("application/vnd.kubernetes.protobuf ({e})"),
            accepted: "application/json, application/yaml, and application/vnd.kubernetes.protobuf for built-in kinds",
        },
        other => ApiError::BadRequest(format!("the protobuf body cannot be decoded: {other}")),
    })
}

/// Whether responses of this kind can be sent as protobuf.
pub fn encodes(api_version: &str, kind: &str) -> bool {
    table()
        .messages
        .contains_key(&(api_version.to_string(), kind.to_string()))
}

/// Encodes an object, a list or a Status as an enveloped protobuf body.
pub fn encode(v: &Value) -> Result<Vec<u8>, EncodeError> {
    let t = table();
    let message_of =
        |av: &str, kind: &str| t.messages.get(&(av.to_string(), kind.to_string())).cloned();
    t.codec.encode_envelope(v, &message_of)
}
