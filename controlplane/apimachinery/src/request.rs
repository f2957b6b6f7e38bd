//! Each request is parsed once, at the boundary, into a [`RequestInfo`]: verb, group, version,
//! resource, subresource, namespace and name, every segment percent-decoded once and checked, so
//! an encoded `/` (`%2F`) or a `..` can never reach another object's key. Authorization and
//! admission read this value; nothing downstream looks at the raw path again.

use http::Method;

use crate::error::ApiError;

/// The Kubernetes verb of a resource request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }

    /// Whether the verb changes stored state (and so honours `dryRun`).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Verb::Create | Verb::Update | Verb::Patch | Verb::Delete | Verb::DeleteCollection
        )
    }
}

/// A request for an API resource, fully parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    pub verb: Verb,
    /// Empty for the core group (`/api/v1`).
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    /// The plural resource name (`pods`).
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// What a path addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A resource request.
    Resource(RequestInfo),
    /// `/api`, `/apis`, `/apis/{group}`, `/api/v1`, `/apis/{group}/{version}`: discovery.
    Discovery {
        group: Option<String>,
        version: Option<String>,
        legacy_core: bool,
    },
    /// Anything else (`/version`, `/healthz`, `/openapi/...`, `/strake/...`).
    NonResource(String),
}

/// Segments after `namespaces/{ns}` that address the namespace itself, not a resource in it.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Decodes one percent-encoded path segment and refuses anything that is not a plain name.
fn segment(raw: &str) -> Result<String, ApiError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => out.push(b),
                None => {
                    return Err(ApiError::BadRequest(format!(
                        "invalid percent-encoding in path segment {raw:?}"
                    )));
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out)
        .map_err(|_| ApiError::BadRequest(format!("path segment {raw:?} is not UTF-8")))?;
    if let Some(problem) = path_segment_problem(&s) {
        return Err(ApiError::BadRequest(format!(
            "invalid name {s:?} in the request path: {problem}"
        )));
    }
    Ok(s)
}

/// Why `s` cannot be a name in a URL path (upstream's `IsValidPathSegmentName`), if it cannot.
pub fn path_segment_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("may not be empty");
    }
    if s == "." || s == ".." {
        return Some("may not be '.' or '..'");
    }
    if s.contains('/') {
        return Some("may not contain '/'");
    }
    if s.contains('%') {
        return Some("may not contain '%'");
    }
    if s.chars().any(char::is_control) {
        return Some("may not contain control characters");
    }
    None
}

/// Parses method, path and the `watch` query flag into what the request addresses.
pub fn parse(method: &Method, path: &str, watch: bool) -> Result<Target, ApiError> {
    let trimmed = path.trim_end_matches('/');
    let raw: Vec<&str> = trimmed.split('/').skip(1).collect();
    let (group, version, rest) = match raw.as_slice() {
        ["api"] => {
            return Ok(Target::Discovery {
                group: None,
                version: None,
                legacy_core: true,
            });
        }
        ["apis"] => {
            return Ok(Target::Discovery {
                group: None,
                version: None,
                legacy_core: false,
            });
        }
        ["api", v] => {
            return Ok(Target::Discovery {
                group: Some(String::new()),
                version: Some(segment(v)?),
                legacy_core: true,
            });
        }
        ["apis", g] => {
            return Ok(Target::Discovery {
                group: Some(segment(g)?),
                version: None,
                legacy_core: false,
            });
        }
        ["apis", g, v] => {
            return Ok(Target::Discovery {
                group: Some(segment(g)?),
                version: Some(segment(v)?),
                legacy_core: false,
            });
        }
        ["api", v, rest @ ..] => (String::new(), segment(v)?, rest),
        ["apis", g, v, rest @ ..] => (segment(g)?, segment(v)?, rest),
        _ => return Ok(Target::NonResource(path.to_string())),
    };
    let mut parts: Vec<String> = rest.iter().map(|s| segment(s)).collect::<Result<_, _>>()?;
    // The legacy watch prefix: /api/v1/watch/namespaces/x/pods.
    let mut watch = watch;
    if parts.first().is_some_and(|p| p == "watch") {
        parts.remove(0);
        watch = true;
    }
    let mut namespace = None;
    if parts.len() > 2
        && parts[0] == "namespaces"
        && !NAMESPACE_SUBRESOURCES.contains(&parts[2].as_str())
    {
        namespace = Some(parts[1].clone());
        parts.drain(..2);
    }
    let (resource, name, subresource) = match parts.as_slice() {
        [r] => (r.clone(), None, None),
        [r, n] => (r.clone(), Some(n.clone()), None),
        [r, n, s] => (r.clone(), Some(n.clone()), Some(s.clone())),
        _ => return Err(ApiError::NoRoute),
    };
    let verb = match (method.clone(), name.is_some()) {
        (Method::GET | Method::HEAD, _) if watch => Verb::Watch,
        (Method::GET | Method::HEAD, true) => Verb::Get,
        (Method::GET | Method::HEAD, false) => Verb::List,
        (Method::POST, _) => Verb::Create,
        (Method::PUT, _) => Verb::Update,
        (Method::PATCH, _) => Verb::Patch,
        (Method::DELETE, true) => Verb::Delete,
        (Method::DELETE, false) => Verb::DeleteCollection,
        _ => return Err(ApiError::MethodNotAllowed),
    };
    Ok(Target::Resource(RequestInfo {
        verb,
        group,
        version,
        namespace,
        resource,
        name,
        subresource,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: Method, path: &str) -> RequestInfo {
        match parse(&method, path, false).unwrap() {
            Target::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn resource_paths() {
        let r = info(
            Method::GET,
            "/apis/apps/v1/namespaces/web/deployments/api/scale",
        );
        assert_eq!(
            (r.group.as_str(), r.version.as_str(), r.resource.as_str()),
            ("apps", "v1", "deployments")
        );
        assert_eq!(
            (
                r.namespace.as_deref(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            (Some("web"), Some("api"), Some("scale"))
        );
        assert_eq!(r.verb, Verb::Get);
        let r = info(Method::GET, "/api/v1/pods");
        assert_eq!(
            (r.verb, r.namespace, r.resource.as_str()),
            (Verb::List, None, "pods")
        );
        let r = info(Method::DELETE, "/api/v1/namespaces/x/configmaps");
        assert_eq!(r.verb, Verb::DeleteCollection);
        let r = info(Method::GET, "/api/v1/watch/namespaces/x/pods");
        assert_eq!((r.verb, r.namespace.as_deref()), (Verb::Watch, Some("x")));
    }

    #[test]
    fn the_namespace_itself_and_its_subresources() {
        let r = info(Method::GET, "/api/v1/namespaces/x");
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref(), r.namespace),
            ("namespaces", Some("x"), None)
        );
        let r = info(Method::PUT, "/api/v1/namespaces/x/finalize");
        assert_eq!(
            (
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("namespaces", Some("x"), Some("finalize"))
        );
        let r = info(Method::GET, "/api/v1/namespaces/x/status");
        assert_eq!(r.subresource.as_deref(), Some("status"));
    }

    #[test]
    fn encoded_slashes_and_dot_segments_never_reach_a_key() {
        for bad in [
            "/api/v1/namespaces/default/pods/a%2Fb",
            "/api/v1/namespaces/%2E%2E/pods/x",
            "/api/v1/namespaces/default/pods/..",
            "/api/v1/namespaces/a%25b/pods",
            "/api/v1/namespaces/default/pods/%zz",
        ] {
            assert!(
                matches!(
                    parse(&Method::GET, bad, false),
                    Err(ApiError::BadRequest(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            parse(&Method::GET, "/api/v1/namespaces/a/pods/b/c/d", false),
            Err(ApiError::NoRoute)
        ));
    }

    #[test]
    fn discovery_and_other_paths() {
        assert_eq!(
            parse(&Method::GET, "/apis/apps", false).unwrap(),
            Target::Discovery {
                group: Some("apps".into()),
                version: None,
                legacy_core: false
            }
        );
        assert_eq!(
            parse(&Method::GET, "/api/", false).unwrap(),
            Target::Discovery {
                group: None,
                version: None,
                legacy_core: true
            }
        );
        assert_eq!(
            parse(&Method::GET, "/version", false).unwrap(),
            Target::NonResource("/version".into())
        );
    }
}
