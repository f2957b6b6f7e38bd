//! The admission webhook configurations: upstream's defaults (failurePolicy Fail, matchPolicy
//! Equivalent, empty selectors, a 10 s timeout, reinvocationPolicy Never, rule scope `*`) and
//! validation, so a configuration the API server could not call is refused when written, with
//! upstream's messages, rather than failing every write it matches.

use std::collections::BTreeSet;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhookConfiguration,
    WebhookClientConfig,
};
use strake_apimachinery::FieldError;
use strake_apimachinery::validation::is_dns1123_subdomain;

/// What both kinds of webhook have, for validation.
struct Webhook<'a> {
    name: &'a str,
    client: &'a WebhookClientConfig,
    rules: Option<&'a [RuleWithOperations]>,
    failure_policy: Option<&'a str>,
    match_policy: Option<&'a str>,
    side_effects: &'a str,
    timeout: Option<i32>,
    versions: &'a [String],
}

fn not_supported(errs: &mut Vec<FieldError>, path: String, v: Option<&str>, allowed: &[&str]) {
    if let Some(v) = v
        && !allowed.contains(&v)
    {
        errs.push(FieldError::not_supported(path, v, allowed));
    }
}

fn validate_client(errs: &mut Vec<FieldError>, c: &WebhookClientConfig, path: &str) {
    match (&c.url, &c.service) {
        (Some(_), Some(_)) | (None, None) => errs.push(
            FieldError::required(path)
                .with_message("Required value: exactly one of url or service is required"),
        ),
        (Some(url), None) => {
            let p = format!("{path}.url");
            match url.split_once("://") {
                Some(("https", rest)) if !rest.is_empty() => {
                    if url.contains('#') || url.contains('?') {
                        errs.push(FieldError::invalid(
                            p,
                            format!("Invalid value: {url:?}: fragments and query parameters are not permitted"),
                        ));
                    }
                }
                _ => errs.push(FieldError::invalid(
                    p,
                    format!("Invalid value: {url:?}: 'https' is the only allowed URL scheme"),
                )),
            }
        }
        (None, Some(s)) => {
            let p = format!("{path}.service");
            if s.name.is_empty() {
                errs.push(FieldError::required(format!("{p}.name")));
            }
            if s.namespace.is_empty() {
                errs.push(FieldError::required(format!("{p}.namespace")));
            }
            if let Some(path) = &s.path
                && !path.starts_with('/')
            {
                errs.push(FieldError::invalid(
                    format!("{p}.path"),
                    format!("Invalid value: {path:?}: must start with a '/'"),
                ));
            }
            if let Some(port) = s.port
                && !(1..=65535).contains(&port)
            {
                errs.push(FieldError::invalid(
                    format!("{p}.port"),
                    format!("Invalid value: {port}: port is not valid: must be between 1 and 65535, inclusive"),
                ));
            }
        }
    }
}

fn validate_rules(errs: &mut Vec<FieldError>, rules: &[RuleWithOperations], path: &str) {
    for (i, r) in rules.iter().enumerate() {
        let p = format!("{path}[{i}]");
        for (field, list) in [
            ("operations", &r.operations),
            ("apiGroups", &r.api_groups),
            ("apiVersions", &r.api_versions),
            ("resources", &r.resources),
        ] {
            if list.as_ref().is_none_or(Vec::is_empty) {
                errs.push(FieldError::required(format!("{p}.{field}")));
            }
        }
        for (j, op) in r.operations.iter().flatten().enumerate() {
            not_supported(
                errs,
                format!("{p}.operations[{j}]"),
                Some(op),
                &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"],
            );
        }
        not_supported(
            errs,
            format!("{p}.scope"),
            r.scope.as_deref(),
            &["*", "Cluster", "Namespaced"],
        );
    }
}

fn validate(hooks: Vec<Webhook<'_>>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut names = BTreeSet::new();
    for (i, w) in hooks.into_iter().enumerate() {
        let p = format!("webhooks[{i}]");
        if w.name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name")));
        } else if !is_dns1123_subdomain(w.name) || w.name.split('.').count() < 3 {
            errs.push(FieldError::invalid(
                format!("{p}.name"),
                format!("Invalid value: {:?}: should be a domain with at least three segments separated by dots", w.name),
            ));
        } else if !names.insert(w.name) {
            errs.push(FieldError::duplicate(
                format!("{p}.name"),
                format!("Duplicate value: {:?}", w.name),
            ));
        }
        validate_client(&mut errs, w.client, &format!("{p}.clientConfig"));
        validate_rules(
            &mut errs,
            w.rules.unwrap_or_default(),
            &format!("{p}.rules"),
        );
        not_supported(
            &mut errs,
            format!("{p}.failurePolicy"),
            w.failure_policy,
            &["Fail", "Ignore"],
        );
        not_supported(
            &mut errs,
            format!("{p}.matchPolicy"),
            w.match_policy,
            &["Equivalent", "Exact"],
        );
        if w.side_effects.is_empty() {
            errs.push(FieldError::required(format!("{p}.sideEffects")));
        } else {
            not_supported(
                &mut errs,
                format!("{p}.sideEffects"),
                Some(w.side_effects),
                &["None", "NoneOnDryRun"],
            );
        }
        if let Some(t) = w.timeout
            && !(1..=30).contains(&t)
        {
            errs.push(FieldError::invalid(
                format!("{p}.timeoutSeconds"),
                format!("Invalid value: {t}: the timeout value must be between 1 and 30 seconds"),
            ));
        }
        if !w.versions.iter().any(|v| v == "v1" || v == "v1beta1") {
            errs.push(
                FieldError::required(format!("{p}.admissionReviewVersions"))
                    .with_message("Required value: must include at least one of v1, v1beta1"),
            );
        }
    }
    errs
}

/// Upstream's defaults of one webhook's common fields.
macro_rules! default_webhook {
    ($w:expr) => {{
        let w = $w;
        w.failure_policy.get_or_insert_with(|| "Fail".into());
        w.match_policy.get_or_insert_with(|| "Equivalent".into());
        w.namespace_selector.get_or_insert_with(Default::default);
        w.object_selector.get_or_insert_with(Default::default);
        w.timeout_seconds.get_or_insert(10);
        for r in w.rules.iter_mut().flatten() {
            r.scope.get_or_insert_with(|| "*".into());
        }
        if let Some(s) = &mut w.client_config.service {
            s.port.get_or_insert(443);
        }
    }};
}

/// A webhook's fields, seen for validation.
macro_rules! view {
    ($w:expr) => {
        Webhook {
            name: &$w.name,
            client: &$w.client_config,
            rules: $w.rules.as_deref(),
            failure_policy: $w.failure_policy.as_deref(),
            match_policy: $w.match_policy.as_deref(),
            side_effects: &$w.side_effects,
            timeout: $w.timeout_seconds,
            versions: &$w.admission_review_versions,
        }
    };
}

impl crate::typed::Kind for MutatingWebhookConfiguration {
    fn defaults(&mut self) {
        for w in self.webhooks.iter_mut().flatten() {
            default_webhook!(&mut *w);
            w.reinvocation_policy.get_or_insert_with(|| "Never".into());
        }
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = validate(self.webhooks.iter().flatten().map(|w| view!(w)).collect());
        for (i, w) in self.webhooks.iter().flatten().enumerate() {
            not_supported(
                &mut errs,
                format!("webhooks[{i}].reinvocationPolicy"),
                w.reinvocation_policy.as_deref(),
                &["IfNeeded", "Never"],
            );
        }
        errs
    }
}

impl crate::typed::Kind for ValidatingWebhookConfiguration {
    fn defaults(&mut self) {
        for w in self.webhooks.iter_mut().flatten() {
            default_webhook!(&mut *w);
        }
    }

    fn validate(&self) -> Vec<FieldError> {
        validate(self.webhooks.iter().flatten().map(|w| view!(w)).collect())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::typed::Kind;

    #[test]
    fn webhooks_are_defaulted_and_bad_ones_named() {
        let mut c: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": "x"},
            "webhooks": [{
                "name": "a.example.com", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                "clientConfig": {"service": {"namespace": "n", "name": "s"}},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            }]
        }))
        .unwrap();
        c.defaults();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let w = &c.webhooks.as_ref().unwrap()[0];
        assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(w.timeout_seconds, Some(10));
        assert_eq!(w.client_config.service.as_ref().unwrap().port, Some(443));
        let bad: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": "x"},
            "webhooks": [{
                "name": "short", "sideEffects": "Some", "admissionReviewVersions": ["v2"],
                "timeoutSeconds": 60,
                "clientConfig": {"url": "http://hook"},
                "rules": [{"operations": ["PATCH"], "apiGroups": [""], "apiVersions": ["v1"]}],
            }]
        }))
        .unwrap();
        let fields: Vec<String> = bad.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "webhooks[0].name",
                "webhooks[0].clientConfig.url",
                "webhooks[0].rules[0].resources",
                "webhooks[0].rules[0].operations[0]",
                "webhooks[0].sideEffects",
                "webhooks[0].timeoutSeconds",
                "webhooks[0].admissionReviewVersions",
            ]
        );
    }
}
