//! The `scale` subresource's view of any kind that has one (Deployments, ReplicaSets,
//! StatefulSets, ReplicationControllers, CRDs with `subresources.scale`), read and written
//! through the paths its table entry names. The API server serves it; the autoscaler writes
//! through it, so both see the same replicas and selector.

use serde_json::{Value, json};
use strake_apimachinery::{ApiError, Part, Registry, ResourceDef, WriteOptions};

fn pointer_i64(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

/// The autoscaling/v1 Scale view of an object.
pub fn scale_of(def: &ResourceDef, obj: &Value) -> Value {
    let paths = def.scale.clone().unwrap_or_default();
    let selector = match paths.selector.as_deref().and_then(|p| obj.pointer(p)) {
        Some(Value::String(s)) => s.clone(),
        Some(sel @ Value::Object(_)) => serde_json::from_value(sel.clone())
            .map(|s| crate::selector_string(&s))
            .unwrap_or_default(),
        _ => String::new(),
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"], "uid": obj["metadata"]["uid"],
            "resourceVersion": obj["metadata"]["resourceVersion"], "creationTimestamp": obj["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": pointer_i64(obj, &paths.spec_replicas)},
        "status": {"replicas": pointer_i64(obj, &paths.status_replicas), "selector": selector},
    })
}

/// Sets the value at a JSON pointer, making the objects on the way.
pub fn set_pointer(obj: &mut Value, pointer: &str, v: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            cur[*p] = v;
            return;
        }
        if !cur[*p].is_object() {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
}

/// Writes `replicas` into the object's spec, under the object's resourceVersion `rv` when
/// given (a stale one is a 409); returns the Scale view of what was written.
pub async fn set_replicas(
    reg: &Registry,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    replicas: i64,
    rv: Option<String>,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let paths = def.scale.clone().unwrap_or_default();
    let out = reg
        .update_with(def, ns, name, Part::Main, opts, |mut obj| {
            // The Scale's resourceVersion is the object's: a precondition.
            if let Some(rv) = &rv {
                obj["metadata"]["resourceVersion"] = rv.clone().into();
            }
            set_pointer(&mut obj, &paths.spec_replicas, replicas.into());
            Ok(obj)
        })
        .await?;
    Ok(scale_of(def, &out))
}
