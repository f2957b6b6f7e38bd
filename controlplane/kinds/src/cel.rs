//! `x-kubernetes-validations`: the CEL rules a CRD's structural schema attaches to a node,
//! evaluated with `self` bound to the value at that node (and `oldSelf` to the stored value on
//! an update, for transition rules), by the `cel-interpreter` crate.
//!
//! Upstream's Kubernetes CEL libraries (`quantity()`, `isURL()`, `lowerAscii()`, `format`...)
//! are not there. A rule that calls a function this evaluator lacks is not evaluated, so
//! third-party CRDs that use them still install and their objects still write; such rules are
//! logged when first seen. As upstream ratchets, a rule that does not read `oldSelf` is not
//! re-checked on an update that leaves its value unchanged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cel_interpreter::{Context, Program, Value as Cel};
use serde_json::Value;
use strake_apimachinery::FieldError;

/// Rules are compiled once per text, for every object they check.
fn compiled(rule: &str) -> Result<Arc<Program>, String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Program>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(rule) {
        return Ok(p.clone());
    }
    // The parser panics on some malformed input (an unreachable branch in its generated
    // code); that is a rule that does not compile, not a server failure.
    let parsed = std::panic::catch_unwind(|| Program::compile(rule))
        .map_err(|_| "the rule cannot be parsed".to_string())?;
    let program = Arc::new(parsed.map_err(|e| e.to_string())?);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    // Bounded: CRDs' rules are few; a table that grows past this starts over.
    if cache.len() > 4096 {
        cache.clear();
    }
    cache.insert(rule.to_string(), program.clone());
    Ok(program)
}

fn uses_old_self(p: &Program) -> bool {
    p.references().has_variable("oldSelf")
}

/// The functions the evaluator has (its default context), and the macros the parser expands.
const SUPPORTED: &[&str] = &[
    "contains",
    "size",
    "max",
    "min",
    "startsWith",
    "endsWith",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "matches",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
];

/// The functions a rule calls that the evaluator lacks.
fn unsupported(p: &Program) -> Vec<String> {
    p.references()
        .functions()
        .into_iter()
        // Operators (`_||_`, `!_`, `@not_strictly_false`) are the interpreter's own.
        .filter(|f| f.starts_with(|c: char| c.is_ascii_alphabetic()))
        .filter(|f| f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .filter(|f| !SUPPORTED.contains(f))
        .map(str::to_string)
        .collect()
}

/// A JSON value as CEL sees it: integers are `int`, as Kubernetes types them, not the `uint`
/// serde would make of a non-negative one (`self.replicas + 1` would fail).
fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Cel::Int(i),
            (None, Some(u)) => Cel::UInt(u),
            _ => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(m) => Cel::Map(cel_interpreter::objects::Map {
            map: Arc::new(
                m.iter()
                    .map(|(k, v)| {
                        (
                            cel_interpreter::objects::Key::String(Arc::new(k.clone())),
                            to_cel(v),
                        )
                    })
                    .collect(),
            ),
        }),
    }
}

/// Problems with the rules of a schema (rules that do not compile), by path in the schema.
pub fn check_rules(schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for (i, r) in rules.iter().enumerate() {
            let at = format!("{path}.x-kubernetes-validations[{i}].rule");
            match r.get("rule").and_then(Value::as_str) {
                None | Some("") => errs.push(FieldError::required(at)),
                Some(rule) => {
                    if let Err(e) = compiled(rule) {
                        errs.push(FieldError::invalid(
                            at,
                            format!("Invalid value: {rule:?}: compilation failed: {e}"),
                        ));
                    }
                }
            }
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, s) in props {
            check_rules(s, &format!("{path}.properties[{k}]"), errs);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(s) = schema.get(key).filter(|s| s.is_object()) {
            check_rules(s, &format!("{path}.{key}"), errs);
        }
    }
}

/// Evaluates every rule in `schema` against `v` (and `old`, the stored value, on an update),
/// collecting a failure per broken rule at its field path.
pub fn evaluate(
    v: &Value,
    old: Option<&Value>,
    schema: &Value,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    if v.is_null() {
        return;
    }
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for r in rules {
            evaluate_rule(r, v, old, path, errs);
        }
    }
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, item) in m {
                if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(k)).or(extra) {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    evaluate(item, old.and_then(|o| o.get(k)), s, &p, errs);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    // Items have no old value to compare with unless they are keyed (upstream
                    // correlates map-lists by key); transition rules skip them.
                    evaluate(item, None, s, &format!("{path}[{i}]"), errs);
                }
            }
        }
        _ => {}
    }
}

fn evaluate_rule(
    r: &Value,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    let Some(rule) = r.get("rule").and_then(Value::as_str) else {
        return;
    };
    let at = {
        let fp = r.get("fieldPath").and_then(Value::as_str).unwrap_or("");
        match (path.is_empty(), fp.trim_start_matches('.')) {
            (true, "") => "<root>".to_string(),
            (true, f) => f.to_string(),
            (false, "") => path.to_string(),
            (false, f) => format!("{path}.{f}"),
        }
    };
    let program = match compiled(rule) {
        Ok(p) => p,
        Err(e) => {
            errs.push(FieldError::invalid(
                at,
                format!("rule {rule:?} does not compile: {e}"),
            ));
            return;
        }
    };
    let missing = unsupported(&program);
    if !missing.is_empty() {
        static LOGGED: OnceLock<Mutex<std::collections::HashSet<String>>> = OnceLock::new();
        let mut logged = LOGGED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if logged.len() < 4096 && logged.insert(rule.to_string()) {
            tracing::warn!(rule, functions = ?missing, "a CRD validation rule calls functions this server lacks; it is not evaluated");
        }
        return;
    }
    let optional_old = r.get("optionalOldSelf") == Some(&Value::Bool(true));
    let transition = uses_old_self(&program);
    if transition && old.is_none() && !optional_old {
        // A transition rule: it holds only between an old and a new value.
        return;
    }
    if !transition && old == Some(v) {
        // Ratcheting: an unchanged value that passed before is not judged again by a rule
        // added or tightened since.
        return;
    }
    let mut ctx = Context::default();
    ctx.add_variable_from_value("self", to_cel(v));
    match old {
        Some(o) => ctx.add_variable_from_value("oldSelf", to_cel(o)),
        None if optional_old => ctx.add_variable_from_value("oldSelf", Cel::Null),
        None => {}
    }
    let failed = |detail: Option<String>| {
        let message = r
            .get("message")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("failed rule: {rule}"));
        let message = match detail {
            Some(d) => format!("Invalid value: {message}: {d}"),
            None => format!("Invalid value: {message}"),
        };
        let reason = match r.get("reason").and_then(Value::as_str) {
            Some("FieldValueRequired") => "FieldValueRequired",
            Some("FieldValueForbidden") => "FieldValueForbidden",
            Some("FieldValueDuplicate") => "FieldValueDuplicate",
            _ => "FieldValueInvalid",
        };
        FieldError {
            field: at.clone(),
            message,
            reason,
        }
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| program.execute(&ctx)));
    let Ok(result) = result else {
        errs.push(failed(Some("evaluating the rule failed".into())));
        return;
    };
    match result {
        Ok(Cel::Bool(true)) => {}
        Ok(Cel::Bool(false)) => errs.push(failed(None)),
        Ok(other) => errs.push(failed(Some(format!(
            "the rule evaluated to {other:?}, not a boolean"
        )))),
        Err(e) => errs.push(failed(Some(format!("evaluating the rule failed: {e}")))),
    }
}

/// Evaluates a boolean CEL expression with JSON variables bound (an admission webhook's
/// `matchConditions` over `object`, `oldObject` and `request`). An expression that does not
/// compile, calls a function this evaluator lacks, or does not give a bool is an error naming
/// why.
pub fn evaluate_bool(expression: &str, vars: &[(&str, &Value)]) -> Result<bool, String> {
    match evaluate_json(expression, vars)? {
        Value::Bool(b) => Ok(b),
        other => Err(format!("gave {other}, not a bool")),
    }
}

/// A CEL value as JSON (what a message expression or a variable gives).
fn to_json(v: &Cel) -> Value {
    match v {
        Cel::Null => Value::Null,
        Cel::Bool(b) => Value::Bool(*b),
        Cel::Int(i) => Value::from(*i),
        Cel::UInt(u) => Value::from(*u),
        Cel::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Cel::String(s) => Value::String(s.to_string()),
        Cel::List(items) => Value::Array(items.iter().map(to_json).collect()),
        Cel::Map(m) => Value::Object(
            m.map
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        cel_interpreter::objects::Key::String(s) => s.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        other => Value::String(format!("{other:?}")),
    }
}

/// Evaluates a CEL expression with JSON variables bound and gives its value as JSON; an
/// expression that does not compile, calls a function this evaluator lacks, or fails is an
/// error naming why.
pub fn evaluate_json(expression: &str, vars: &[(&str, &Value)]) -> Result<Value, String> {
    let program = compiled(expression)?;
    let missing = unsupported(&program);
    if !missing.is_empty() {
        return Err(format!(
            "calls functions this server lacks: {}",
            missing.join(", ")
        ));
    }
    let mut ctx = Context::default();
    for (name, v) in vars {
        ctx.add_variable_from_value(*name, to_cel(v));
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| program.execute(&ctx))) {
        Ok(Ok(v)) => Ok(to_json(&v)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the evaluator failed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"},
                {"rule": "self.mode == oldSelf.mode", "message": "mode is immutable"},
                {"rule": "!has(self.tags) || self.tags.all(t, t.startsWith('x-'))", "fieldPath": ".tags", "reason": "FieldValueForbidden"}
            ],
            "properties": {
                "minReplicas": {"type": "integer"},
                "maxReplicas": {"type": "integer"},
                "mode": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string", "x-kubernetes-validations": [{"rule": "size(self) <= 8"}]}}
            }
        }}})
    }

    fn run(v: Value, old: Option<Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        evaluate(&v, old.as_ref(), &schema(), "", &mut errs);
        errs
    }

    #[test]
    fn rules_hold_or_name_the_field_and_message() {
        assert!(
            run(
                json!({"spec": {"minReplicas": 1, "maxReplicas": 3, "mode": "a"}}),
                None
            )
            .is_empty()
        );
        let errs = run(
            json!({"spec": {"minReplicas": 5, "maxReplicas": 3, "mode": "a", "tags": ["x-a", "b", "x-very-long"]}}),
            None,
        );
        let got: Vec<(&str, &str)> = errs.iter().map(|e| (e.field.as_str(), e.reason)).collect();
        assert_eq!(
            got,
            vec![
                ("spec", "FieldValueInvalid"),
                ("spec.tags", "FieldValueForbidden"),
                ("spec.tags[2]", "FieldValueInvalid"),
            ],
            "{errs:?}"
        );
        assert!(
            errs[0]
                .message
                .contains("minReplicas must not exceed maxReplicas")
        );
        assert!(errs[2].message.contains("failed rule: size(self) <= 8"));
    }

    #[test]
    fn transition_rules_apply_to_updates_only() {
        let new = json!({"spec": {"minReplicas": 1, "maxReplicas": 1, "mode": "b"}});
        assert!(run(new.clone(), None).is_empty(), "no old value on create");
        let errs = run(
            new.clone(),
            Some(json!({"spec": {"minReplicas": 1, "maxReplicas": 1, "mode": "a"}})),
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].message.contains("mode is immutable"));
        assert!(run(new.clone(), Some(new)).is_empty());
    }

    #[test]
    fn rules_that_do_not_compile_are_refused_with_their_place() {
        let mut errs = Vec::new();
        check_rules(
            &json!({"properties": {"spec": {"x-kubernetes-validations": [{"rule": "self.a >"}, {"rule": ""}]}}}),
            "spec.versions[0].schema.openAPIV3Schema",
            &mut errs,
        );
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule",
                "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[1].rule",
            ]
        );
    }

    #[test]
    fn integers_are_ints_and_unknown_functions_are_skipped() {
        let s = json!({"type": "object", "properties": {"n": {"type": "integer"}}, "x-kubernetes-validations": [
            {"rule": "self.n + 1 > 1 && self.n % 2 == 0"},
            {"rule": "self.name.lowerAscii() == 'x'"}
        ]});
        let mut errs = Vec::new();
        evaluate(&json!({"n": 2, "name": "Y"}), None, &s, "", &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        evaluate(&json!({"n": 3, "name": "Y"}), None, &s, "", &mut errs);
        assert_eq!(errs.len(), 1, "{errs:?}");
    }

    #[test]
    fn unchanged_values_are_not_judged_again() {
        let s = json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.n < 5"}]});
        let (bad, other) = (json!({"n": 9}), json!({"n": 8}));
        let mut errs = Vec::new();
        evaluate(&bad, Some(&bad), &s, "", &mut errs);
        assert!(errs.is_empty(), "ratcheted: {errs:?}");
        evaluate(&bad, Some(&other), &s, "", &mut errs);
        assert_eq!(errs.len(), 1, "a changed value is judged");
    }

    #[test]
    fn a_rule_that_fails_to_evaluate_is_a_failure_not_a_pass() {
        let s =
            json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.missing > 1"}]});
        let mut errs = Vec::new();
        evaluate(&json!({"spec": {}}), None, &s, "", &mut errs);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].message.contains("evaluating the rule failed"),
            "{errs:?}"
        );
    }
}
