//! Label selectors (`metav1.LabelSelector`, as controllers and affinity terms select pods) and
//! node selector terms (`nodeSelectorTerms`, as node affinity selects nodes).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

#[derive(Clone, Debug)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A compiled label selector; an empty one selects everything.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    labels: Vec<(String, String)>,
    requirements: Vec<Requirement>,
    /// A nil selector (as opposed to an empty one) selects nothing.
    nothing: bool,
}

impl Selector {
    pub fn new(sel: &LabelSelector) -> Result<Self, String> {
        let labels = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut requirements = Vec::new();
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            requirements.push(match e.operator.as_str() {
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                other => return Err(format!("{other:?} is not a valid label selector operator")),
            });
        }
        Ok(Self {
            labels,
            requirements,
            nothing: false,
        })
    }

    /// An absent selector, as affinity terms and spread constraints read one: it selects
    /// nothing. A selector that does not compile is treated the same.
    pub fn optional(sel: Option<&LabelSelector>) -> Self {
        match sel.map(Self::new) {
            Some(Ok(s)) => s,
            _ => Self::none(),
        }
    }

    /// Selects nothing.
    pub fn none() -> Self {
        Self {
            nothing: true,
            ..Self::default()
        }
    }

    /// Adds `key in (value)`, or `key notin (value)` when `equal` is false (matchLabelKeys and
    /// mismatchLabelKeys of affinity terms and spread constraints).
    pub fn require(&mut self, key: &str, value: &str, equal: bool) {
        let v = vec![value.to_string()];
        self.requirements.push(if equal {
            Requirement::In(key.into(), v)
        } else {
            Requirement::NotIn(key.into(), v)
        });
    }

    pub fn is_empty(&self) -> bool {
        !self.nothing && self.labels.is_empty() && self.requirements.is_empty()
    }

    /// One `key=value` every selected object carries, to narrow a lookup by an index.
    pub fn anchor(&self) -> Option<(&str, &str)> {
        self.labels.first().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn matches(&self, labels: &Option<BTreeMap<String, String>>) -> bool {
        match labels {
            Some(l) => self.matches_map(l),
            None => self.matches_map(&BTreeMap::new()),
        }
    }

    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        if self.nothing {
            return false;
        }
        let get = |k: &str| labels.get(k);
        self.labels.iter().all(|(k, v)| get(k) == Some(v))
            && self.requirements.iter().all(|r| match r {
                Requirement::In(k, vs) => get(k).is_some_and(|v| vs.contains(v)),
                Requirement::NotIn(k, vs) => get(k).is_none_or(|v| !vs.contains(v)),
                Requirement::Exists(k) => get(k).is_some(),
                Requirement::DoesNotExist(k) => get(k).is_none(),
            })
    }
}

/// Whether `sel` selects `labels`; a selector that does not compile selects nothing.
pub fn selects(sel: &LabelSelector, labels: &Option<BTreeMap<String, String>>) -> bool {
    Selector::new(sel).is_ok_and(|s| s.matches(labels))
}

/// One node selector requirement against a label (or field) value.
pub fn requirement_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node selector term selects the node: every expression over its labels and every
/// field requirement (`metadata.name`) holds. A term with neither selects nothing.
pub fn term_matches(t: &NodeSelectorTerm, node: &str, labels: &BTreeMap<String, String>) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_holds(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let field = (r.key == "metadata.name").then_some(node);
            requirement_holds(r, field)
        })
}

/// Whether any of `terms` selects the node (the terms of a node selector are ORed).
pub fn terms_match(
    terms: &[NodeSelectorTerm],
    node: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    terms.iter().any(|t| term_matches(t, node, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn match_labels_and_expressions() {
        let sel = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert!(selects(&sel, &labels(&[("app", "web"), ("tier", "a")])));
        assert!(!selects(&sel, &labels(&[("app", "web"), ("tier", "c")])));
        assert!(!selects(
            &sel,
            &labels(&[("app", "web"), ("tier", "a"), ("canary", "1")])
        ));
        assert!(!selects(&sel, &labels(&[("tier", "a")])));
        assert!(!selects(&sel, &None));
        assert!(selects(&LabelSelector::default(), &None));
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "x".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(!selects(&bad, &labels(&[("x", "1")])));
        assert!(!Selector::optional(None).matches(&labels(&[("x", "1")])));
        let mut keyed = Selector::optional(Some(&LabelSelector::default()));
        keyed.require("rev", "2", true);
        assert!(keyed.matches(&labels(&[("rev", "2")])));
        assert!(!keyed.matches(&labels(&[("rev", "1")])));
    }

    #[test]
    fn node_selector_terms() {
        let terms: Vec<NodeSelectorTerm> = serde_json::from_value(json!([
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]},
                                  {"key": "cores", "operator": "Gt", "values": ["4"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["special"]}]},
        ]))
        .unwrap();
        let l = |z: &str, c: &str| labels(&[("zone", z), ("cores", c)]).unwrap();
        assert!(terms_match(&terms, "n1", &l("a", "8")));
        assert!(!terms_match(&terms, "n1", &l("a", "4")));
        assert!(!terms_match(&terms, "n1", &l("c", "8")));
        assert!(terms_match(&terms, "special", &l("c", "1")));
        assert!(!terms_match(
            &[NodeSelectorTerm::default()],
            "n",
            &l("a", "8")
        ));
    }
}
