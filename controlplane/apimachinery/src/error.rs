//! API errors and their one mapping to Kubernetes `Status` objects and HTTP codes. No other
//! place builds a `Status`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One field-level validation failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.containers[0].image`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// Kubernetes cause type (`FieldValueRequired`, `FieldValueInvalid`, ...).
    pub reason: &'static str,
}

impl FieldError {
    pub fn required(field: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: "Required value".into(),
            reason: "FieldValueRequired",
        }
    }
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            reason: "FieldValueInvalid",
        }
    }
    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            reason: "FieldValueForbidden",
        }
    }
    /// The same cause with a more specific message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            field: field.into(),
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                list.join(", ")
            ),
            reason: "FieldValueNotSupported",
        }
    }
    pub fn duplicate(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            reason: "FieldValueDuplicate",
        }
    }
}

/// A resource and its group, printed as upstream prints it (`deployments.apps`, `pods`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl GroupResource {
    pub fn new(group: impl Into<String>, resource: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            resource: resource.into(),
        }
    }
}

impl std::fmt::Display for GroupResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// Every way an API request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        resource: GroupResource,
        name: String,
    },
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        resource: GroupResource,
        name: String,
    },
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {message}")]
    Conflict {
        resource: GroupResource,
        name: String,
        message: String,
    },
    /// `kind` is qualified by its group as upstream prints it (`Deployment.apps`).
    #[error("{kind} \"{name}\" is invalid: {}", summarize(.causes))]
    Invalid {
        kind: String,
        group: String,
        name: String,
        causes: Vec<FieldError>,
    },
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {accepted}; got {got:?}"
    )]
    UnsupportedMediaType { got: String, accepted: &'static str },
    #[error("the request body is too large: limit is {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Expired(String),
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{0}")]
    ServiceUnavailable(String),
    /// 429: the request is refused for now (an eviction a disruption budget forbids); each
    /// cause is (reason, message).
    #[error("{message}")]
    TooManyRequests {
        message: String,
        causes: Vec<(String, String)>,
    },
    /// The request could not be served in time (upstream's 504 for a too-new resourceVersion).
    #[error("{0}")]
    Timeout(String),
    #[error("Internal error occurred: {0}")]
    Internal(String),
    /// A refusal with the code and reason another party chose (an admission webhook's).
    #[error("{message}")]
    Refused {
        code: u16,
        reason: String,
        message: String,
    },
}

fn summarize(causes: &[FieldError]) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

impl From<crate::storage::StorageError> for ApiError {
    /// Storage errors that reach a client without a more specific meaning (the registry turns
    /// `NotFound`, `AlreadyExists` and `Conflict` into errors naming the object first).
    fn from(e: crate::storage::StorageError) -> Self {
        use crate::storage::StorageError as S;
        match e {
            S::Compacted {
                requested,
                compacted,
            } => ApiError::Expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            S::FutureRevision { requested, current } => ApiError::Timeout(format!(
                "Too large resource version: {requested}, current: {current}"
            )),
            S::TooLarge { size, max } => ApiError::TooLarge {
                limit: max.min(size),
            },
            S::Unavailable(m) => ApiError::ServiceUnavailable(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl ApiError {
    pub fn code(&self) -> StatusCode {
        use ApiError::*;
        match self {
            NotFound { .. } | NoRoute => StatusCode::NOT_FOUND,
            AlreadyExists { .. } | Conflict { .. } => StatusCode::CONFLICT,
            Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            BadRequest(_) => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden(_) => StatusCode::FORBIDDEN,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Expired(_) => StatusCode::GONE,
            ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Refused { code, .. } => StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_REQUEST),
        }
    }

    fn reason(&self) -> &str {
        use ApiError::*;
        match self {
            Refused { reason, .. } => reason.as_str(),
            NotFound { .. } | NoRoute => "NotFound",
            AlreadyExists { .. } => "AlreadyExists",
            Conflict { .. } => "Conflict",
            Invalid { .. } => "Invalid",
            BadRequest(_) => "BadRequest",
            Unauthorized => "Unauthorized",
            Forbidden(_) => "Forbidden",
            MethodNotAllowed => "MethodNotAllowed",
            UnsupportedMediaType { .. } => "UnsupportedMediaType",
            TooLarge { .. } => "RequestEntityTooLarge",
            Expired(_) => "Expired",
            ServiceUnavailable(_) => "ServiceUnavailable",
            TooManyRequests { .. } => "TooManyRequests",
            Timeout(_) => "Timeout",
            NotAcceptable(_) => "NotAcceptable",
            Internal(_) => "InternalError",
        }
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        use ApiError::*;
        let details = match self {
            NotFound { resource, name }
            | AlreadyExists { resource, name }
            | Conflict { resource, name, .. } => {
                let mut d = json!({"name": name, "kind": resource.resource});
                if !resource.group.is_empty() {
                    d["group"] = resource.group.clone().into();
                }
                Some(d)
            }
            Invalid {
                kind,
                group,
                name,
                causes,
            } => Some(json!({
                "name": name,
                "group": group,
                "kind": kind.split('.').next().unwrap_or(kind),
                "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
            })),
            TooManyRequests { causes, .. } if !causes.is_empty() => Some(json!({
                "causes": causes.iter().map(|(r, m)| json!({"reason": r, "message": m})).collect::<Vec<_>>(),
            })),
            _ => None,
        };
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        if let Some(d) = details {
            status["details"] = d;
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, ApiError::Internal(_)) {
            tracing::warn!(error = %self, "internal error");
        }
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        (
            self.code(),
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_every_field() {
        let e = ApiError::Invalid {
            kind: "Pod".into(),
            group: String::new(),
            name: "p".into(),
            causes: vec![
                FieldError::required("spec.containers"),
                FieldError::invalid("metadata.name", "bad"),
            ],
        };
        let s = e.status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["reason"], "Invalid");
        assert!(
            s["message"]
                .as_str()
                .unwrap()
                .contains("spec.containers: Required value")
        );
        assert_eq!(s["details"]["causes"][1]["field"], "metadata.name");
    }

    #[test]
    fn not_found_shape() {
        let s = ApiError::NotFound {
            resource: GroupResource::new("", "pods"),
            name: "x".into(),
        }
        .status();
        assert_eq!(s["message"], "pods \"x\" not found");
        assert_eq!(s["details"]["kind"], "pods");
        let s = ApiError::NotFound {
            resource: GroupResource::new("apps", "deployments"),
            name: "x".into(),
        }
        .status();
        assert_eq!(s["message"], "deployments.apps \"x\" not found");
        assert_eq!(s["details"]["group"], "apps");
        assert_eq!(s["status"], "Failure");
    }
}
