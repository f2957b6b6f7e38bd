//! The runtime resource table: one entry per served group/version/resource, holding what
//! routing, discovery, OpenAPI, field selectors, Table output, namespace teardown and
//! authorization need, plus the kind's [`Strategy`]. Built-in kinds and CRDs live in the same
//! table; CRDs come and go at runtime, so readers take a cheap snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::decode::FieldValidation;
use crate::error::{ApiError, FieldError, GroupResource};

/// A column of Table output (`kubectl get`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: String,
    pub format: String,
    pub description: String,
    /// 0: always shown; 1: only with `-o wide`.
    pub priority: i32,
}

impl Column {
    pub fn new(name: &str, ty: &str, description: &str, priority: i32) -> Self {
        let format = if name == "Name" { "name" } else { "" };
        Self {
            name: name.into(),
            ty: ty.into(),
            format: format.into(),
            description: description.into(),
            priority,
        }
    }
}

/// A subresource as discovery lists it. Behaviour: `status` and `scale` are generic; the others
/// are served by handlers the API server registers under the same name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subresource {
    pub name: String,
    /// The kind of the subresource's body (`Scale`, `Binding`, `Eviction`...).
    pub kind: String,
    /// Its group and version when they differ from the parent's (`autoscaling/v1` for scale).
    pub group_version: Option<(String, String)>,
    pub verbs: Vec<String>,
}

impl Subresource {
    pub fn new(name: &str, kind: &str, verbs: &[&str]) -> Self {
        Self {
            name: name.into(),
            kind: kind.into(),
            group_version: None,
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
        }
    }
    pub fn status(kind: &str) -> Self {
        Self::new("status", kind, &["get", "patch", "update"])
    }
    pub fn scale() -> Self {
        Self {
            group_version: Some(("autoscaling".into(), "v1".into())),
            ..Self::new("scale", "Scale", &["get", "patch", "update"])
        }
    }
    /// `pods/eviction`, whose body is a policy/v1 Eviction: discovery says so, and kubectl
    /// drain evicts (honouring disruption budgets) only when it does.
    pub fn eviction() -> Self {
        Self {
            group_version: Some(("policy".into(), "v1".into())),
            ..Self::new("eviction", "Eviction", &["create"])
        }
    }

    /// `serviceaccounts/token`: a TokenRequest (authentication.k8s.io/v1).
    pub fn token() -> Self {
        Self {
            group_version: Some(("authentication.k8s.io".into(), "v1".into())),
            ..Self::new("token", "TokenRequest", &["create"])
        }
    }
}

/// Where the scale subresource finds replicas and the selector (JSON pointers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    /// A label selector object (`/spec/selector`) or, for CRDs, a string path in status.
    pub selector: Option<String>,
}

impl Default for ScalePaths {
    fn default() -> Self {
        Self {
            spec_replicas: "/spec/replicas".into(),
            status_replicas: "/status/replicas".into(),
            selector: Some("/spec/selector".into()),
        }
    }
}

/// Which write a request is: the main object, or one of the generic subresources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
    /// `pods/binding`: a main write that may set what updates may not (the node), validated
    /// by the create rules.
    Binding,
}

/// How names of a kind are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most kinds).
    Subdomain,
    /// RFC 1123 label (namespaces, services).
    Label,
    /// Anything that is a valid path segment (RBAC roles, `system:` names).
    PathSegment,
}

/// What is specific to a kind. Objects travel as JSON; built-in kinds implement this by way of
/// their typed k8s-openapi structs, CRDs by their structural schema.
pub trait Strategy: Send + Sync + 'static {
    /// Checks the object's structure (types, unknown fields under `mode`) and returns it in
    /// canonical form, with the warnings to send. A wrong type is a 400 naming the field.
    fn decode(
        &self,
        def: &ResourceDef,
        obj: Value,
        mode: FieldValidation,
    ) -> Result<(Value, Vec<String>), ApiError>;

    /// Fills defaults and resets what a create may not set (status, for most kinds).
    fn prepare_create(&self, _obj: &mut Value) {}

    /// Kind-specific validation of a new object (metadata names are checked by the registry).
    fn validate(&self, _obj: &Value) -> Vec<FieldError> {
        Vec::new()
    }

    /// Kind-specific rules on an update: immutable fields, allowed transitions.
    fn validate_update(&self, new: &Value, _old: &Value) -> Vec<FieldError> {
        self.validate(new)
    }

    /// Adjusts an update before validation (defaults for fields a client may have dropped).
    fn prepare_update(&self, _new: &mut Value, _old: &Value) {}

    /// The grace period of a delete, or `None` to delete at once.
    fn grace_period(&self, _obj: &Value, _requested: Option<i64>) -> Option<i64> {
        None
    }

    /// The cells of this object's Table row, one per column of its entry.
    fn cells(&self, obj: &Value) -> Vec<Value>;

    /// Whether something other than `metadata.finalizers` still holds a terminating object
    /// (a namespace's `spec.finalizers`).
    fn holds_deletion(&self, _obj: &Value) -> bool {
        false
    }

    /// The kind's OpenAPI schema, when the strategy knows one (CRDs).
    fn schema(&self) -> Option<Value> {
        None
    }

    /// Converts an object of this resource into the form of the resource whose storage it
    /// shares ([`ResourceDef::stored_as`]); identity otherwise.
    fn storage_form(&self, obj: Value) -> Value {
        obj
    }

    /// Converts a stored object of the sharing resource into this one's form.
    fn served_form(&self, obj: Value) -> Value {
        obj
    }

    /// The OpenAPI v3 component schemas of a typed kind: its own schema's name, and every
    /// schema it references by that name (`#/components/schemas/...`).
    fn definitions(&self) -> Option<(String, serde_json::Map<String, Value>)> {
        None
    }
}

/// The resource whose storage an entry shares: its key prefix and the type of what is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAs {
    pub group: String,
    pub plural: String,
    pub api_version: String,
    pub kind: String,
}

/// One served group/version/resource.
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub verbs: Vec<String>,
    pub subresources: Vec<Subresource>,
    /// Scale subresource paths, when it has one.
    pub scale: Option<ScalePaths>,
    /// Field selectors beyond `metadata.name` and `metadata.namespace`, as dotted paths.
    pub selectable_fields: Vec<String>,
    pub columns: Vec<Column>,
    pub name_rule: NameRule,
    /// Whether the spec is tracked by `metadata.generation` (kinds with a status subresource).
    pub generation: bool,
    pub strategy: Arc<dyn Strategy>,
    /// The version stored objects are kept in (CRDs with several versions); `None`: this one.
    pub storage_version: Option<String>,
    /// Another resource whose stored objects this one serves, converted by the strategy, as
    /// upstream serves events.k8s.io/v1 Events from the core Events: one set of objects, two
    /// forms.
    pub stored_as: Option<StoredAs>,
    /// The CRD this entry came from, if any.
    pub crd: Option<String>,
    /// A delete answers with the deleted object rather than a `Status` (pods, services).
    pub delete_returns_object: bool,
}

impl std::fmt::Debug for ResourceDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ResourceDef({}/{} {})",
            self.group, self.version, self.plural
        )
    }
}

/// The verbs every regular resource serves.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn group_resource(&self) -> GroupResource {
        GroupResource::new(&self.group, &self.plural)
    }

    /// The kind as upstream names it in errors: `Deployment.apps`, `Pod`.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.iter().any(|s| s.name == name)
    }

    pub fn serves(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }

    /// The store key prefix of this resource (all versions of a group/resource share it),
    /// narrowed to a namespace when given. Non-core groups are part of the key.
    pub fn key_prefix(&self, namespace: Option<&str>) -> String {
        let (group, plural) = match &self.stored_as {
            Some(s) => (s.group.as_str(), s.plural.as_str()),
            None => (self.group.as_str(), self.plural.as_str()),
        };
        let base = if group.is_empty() {
            format!("/registry/{plural}/")
        } else {
            format!("/registry/{group}/{plural}/")
        };
        match namespace {
            Some(ns) if self.namespaced => format!("{base}{ns}/"),
            _ => base,
        }
    }

    /// A stored object as this resource serves it: converted from the resource whose storage
    /// it shares, or set to this version of a multi-version resource.
    pub fn served(&self, stored: Value) -> Value {
        if self.stored_as.is_none() && self.storage_version.is_none() {
            return stored;
        }
        let mut v = if self.stored_as.is_some() {
            self.strategy.served_form(stored)
        } else {
            stored
        };
        v["apiVersion"] = self.api_version().into();
        v["kind"] = self.kind.clone().into();
        v
    }

    /// An object as it is stored: converted to the sharing resource's form, typed with the
    /// stored apiVersion and kind.
    pub fn stored(&self, obj: Value) -> Value {
        let (mut v, api_version, kind) = match &self.stored_as {
            Some(s) => (
                self.strategy.storage_form(obj),
                s.api_version.clone(),
                s.kind.clone(),
            ),
            None => (
                obj,
                self.storage_version
                    .as_ref()
                    .map_or_else(|| self.api_version(), |v| format!("{}/{v}", self.group)),
                self.kind.clone(),
            ),
        };
        v["apiVersion"] = api_version.into();
        v["kind"] = kind.into();
        v
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> Vec<u8> {
        format!("{}{name}", self.key_prefix(namespace)).into_bytes()
    }

    pub fn not_found(&self, name: &str) -> ApiError {
        ApiError::NotFound {
            resource: self.group_resource(),
            name: name.into(),
        }
    }

    pub fn conflict(&self, name: &str) -> ApiError {
        ApiError::Conflict {
            resource: self.group_resource(),
            name: name.into(),
            message: "the object has been modified; please apply your changes to the latest version and try again".into(),
        }
    }

    pub fn invalid(&self, name: &str, causes: Vec<FieldError>) -> ApiError {
        ApiError::Invalid {
            kind: self.qualified_kind(),
            group: self.group.clone(),
            name: name.into(),
            causes,
        }
    }
}

/// The served resources. Cloning is cheap; every clone sees later registrations.
#[derive(Clone, Default)]
pub struct ResourceTable {
    inner: Arc<RwLock<Arc<Entries>>>,
}

/// An immutable snapshot of the table.
#[derive(Default, Debug)]
pub struct Entries {
    defs: Vec<Arc<ResourceDef>>,
    by_path: BTreeMap<(String, String, String), usize>,
}

impl Entries {
    /// Every entry, in registration order (groups and their versions in preference order).
    pub fn all(&self) -> &[Arc<ResourceDef>] {
        &self.defs
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<ResourceDef>> {
        self.by_path
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .map(|&i| &self.defs[i])
    }

    /// The preferred (first registered) version of a group's kind.
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<&Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| d.group == group && d.kind == kind)
    }

    /// The entry for an apiVersion (`apps/v1`, `v1`) and kind.
    pub fn by_gvk(&self, api_version: &str, kind: &str) -> Option<&Arc<ResourceDef>> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        self.defs
            .iter()
            .find(|d| d.group == group && d.version == version && d.kind == kind)
    }

    /// Groups in preference order, each with its versions in preference order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for d in &self.defs {
            match out.iter_mut().find(|(g, _)| *g == d.group) {
                Some((_, versions)) if !versions.contains(&d.version) => {
                    versions.push(d.version.clone())
                }
                Some(_) => {}
                None => out.push((d.group.clone(), vec![d.version.clone()])),
            }
        }
        out
    }

    /// The resources of one group/version.
    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a Arc<ResourceDef>> + 'a {
        self.defs
            .iter()
            .filter(move |d| d.group == group && d.version == version)
    }

    /// One entry per namespaced group/resource (for namespace teardown): the preferred version.
    pub fn namespaced_resources(&self) -> Vec<Arc<ResourceDef>> {
        let mut seen = std::collections::HashSet::new();
        self.defs
            .iter()
            .filter(|d| d.namespaced && seen.insert((d.group.clone(), d.plural.clone())))
            .cloned()
            .collect()
    }
}

impl ResourceTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn snapshot(&self) -> Arc<Entries> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds or replaces the entry for the def's group/version/resource.
    pub fn register(&self, def: ResourceDef) {
        self.update(|defs| {
            let def = Arc::new(def);
            match defs.iter().position(|d| {
                d.group == def.group && d.version == def.version && d.plural == def.plural
            }) {
                Some(i) => defs[i] = def,
                None => defs.push(def),
            }
        });
    }

    /// Removes every entry that `drop` selects.
    pub fn remove_where(&self, drop: impl Fn(&ResourceDef) -> bool) {
        self.update(|defs| defs.retain(|d| !drop(d)));
    }

    fn update(&self, f: impl FnOnce(&mut Vec<Arc<ResourceDef>>)) {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let mut defs = guard.defs.clone();
        f(&mut defs);
        let by_path = defs
            .iter()
            .enumerate()
            .map(|(i, d)| ((d.group.clone(), d.version.clone(), d.plural.clone()), i))
            .collect();
        *guard = Arc::new(Entries { defs, by_path });
    }
}
