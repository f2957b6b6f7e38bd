//! Name and field validation shared by all kinds (Kubernetes naming rules).

use crate::error::FieldError;
use crate::request::path_segment_problem;
use crate::resource::NameRule;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// RFC 1123 label: lowercase alphanumerics and '-', starts and ends alphanumeric, at most 63.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Validates metadata common to every object.
pub fn validate_meta(
    meta: &ObjectMeta,
    namespaced: bool,
    rule: NameRule,
    errs: &mut Vec<FieldError>,
) {
    match meta.name.as_deref() {
        None | Some("") if meta.generate_name.as_deref().is_some_and(|g| !g.is_empty()) => {
            errs.push(FieldError::required("metadata.name"))
        }
        None | Some("") => errs.push(
            FieldError::required("metadata.name").with_message("name or generateName is required"),
        ),
        Some(n) => {
            let ok = match rule {
                NameRule::Label => is_dns1123_label(n),
                NameRule::Subdomain => is_dns1123_subdomain(n),
                NameRule::PathSegment => path_segment_problem(n).is_none(),
            };
            if !ok {
                let text = crate::registry::name_rule_text(rule);
                errs.push(FieldError::invalid(
                    "metadata.name",
                    format!("Invalid value: {n:?}: {text}"),
                ));
            }
        }
    }
    let annotation_bytes: usize = meta
        .annotations
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if annotation_bytes > 256 * 1024 {
        errs.push(FieldError::invalid(
            "metadata.annotations",
            format!("Too long: must have at most 262144 bytes, not {annotation_bytes}"),
        ));
    }
    for (k, _) in meta.annotations.iter().flatten() {
        if !valid_qualified_name(k) {
            errs.push(FieldError::invalid(format!("metadata.annotations[{k}]"), format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'")));
        }
    }
    if namespaced
        && let Some(ns) = meta.namespace.as_deref()
        && !is_dns1123_label(ns)
    {
        errs.push(FieldError::invalid(
            "metadata.namespace",
            format!("Invalid value: {ns:?}"),
        ));
    }
    for (k, v) in meta.labels.iter().flatten() {
        if !valid_qualified_name(k) {
            errs.push(FieldError::invalid(format!("metadata.labels[{k}]"), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
        if v.len() > 63 || !(v.is_empty() || valid_label_value(v)) {
            errs.push(FieldError::invalid(format!("metadata.labels[{k}]"), format!("Invalid value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'")));
        }
    }
}

fn valid_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    b.iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

fn valid_qualified_name(k: &str) -> bool {
    let name = match k.rsplit_once('/') {
        Some((prefix, name)) => {
            if !is_dns1123_subdomain(prefix) {
                return false;
            }
            name
        }
        None => k,
    };
    !name.is_empty() && name.len() <= 63 && valid_label_value(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns1123_label("web-1"));
        assert!(!is_dns1123_label("Web"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(valid_qualified_name("app.kubernetes.io/name"));
        assert!(!valid_qualified_name("bad key"));
    }
}
