//! JSON merge patch (RFC 7386), the rule by which configuration layers fold into one document.

use serde_json::{Map, Value};

/// Applies `patch` to `base` as RFC 7386 says: an object patch merges key by key, recursively; a
/// `null` member deletes that key; anything else (a string, a number, an array) replaces the
/// target whole, so lists are never merged element by element.
pub fn merge(base: &Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut out = match base {
        Value::Object(base) => base.clone(),
        _ => Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            out.remove(key);
        } else {
            let merged = merge(out.get(key).unwrap_or(&Value::Null), value);
            out.insert(key.clone(), merged);
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nested_objects_merge_null_deletes_and_arrays_replace() {
        let base = json!({
            "machine": {"hostname": "a", "kernel": {"args": ["x", "y"]}, "time": {"disabled": false}},
            "cluster": {"name": "lab"}
        });
        let patch = json!({
            "machine": {"hostname": null, "kernel": {"args": ["z"]}, "time": {"servers": ["ntp"]}},
            "cluster": {"token": "t"}
        });
        assert_eq!(
            merge(&base, &patch),
            json!({
                "machine": {"kernel": {"args": ["z"]}, "time": {"disabled": false, "servers": ["ntp"]}},
                "cluster": {"name": "lab", "token": "t"}
            })
        );
    }

    /// The examples of RFC 7386, appendix A.
    #[test]
    fn rfc_7386_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (base, patch, want) in cases {
            assert_eq!(merge(&base, &patch), want, "{base} + {patch}");
        }
    }
}
