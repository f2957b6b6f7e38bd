//! Kubernetes protobuf bodies (`application/vnd.kubernetes.protobuf`). Decoding them needs the
//! field numbers of every built-in type; until that table exists, such bodies are refused with
//! a 415 that names the media types we accept, and clients that fall back to JSON do so.

use serde_json::Value;
use strake_apimachinery::ApiError;

/// The envelope's magic prefix.
const MAGIC: &[u8] = b"k8s\0";

pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    if !body.starts_with(MAGIC) {
        return Err(ApiError::BadRequest(
            "the protobuf body does not start with the Kubernetes envelope prefix \"k8s\\0\""
                .into(),
        ));
    }
    Err(ApiError::UnsupportedMediaType {
        got: "application/vnd.kubernetes.protobuf".into(),
        accepted: "application/json, application/yaml (protobuf request bodies are not supported yet)",
    })
}
