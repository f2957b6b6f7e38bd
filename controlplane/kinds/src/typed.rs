//! Built-in kinds through their typed k8s-openapi structs: a [`Kind`] supplies defaults,
//! validation and Table cells over the typed value, and [`Typed`] turns that into the JSON
//! [`Strategy`] the registry calls. [`entry`] builds the kind's table entry from the constants
//! k8s-openapi carries (group, version, kind, plural, scope).

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use strake_apimachinery::decode::{FieldValidation, round_trip};
use strake_apimachinery::resource::{ALL_VERBS, ScalePaths};
use strake_apimachinery::{
    ApiError, Column, FieldError, NameRule, ResourceDef, Strategy, Subresource,
};

/// What is specific to a built-in kind, over its typed form. Every hook has a default.
pub trait Kind:
    k8s_openapi::Resource
    + k8s_openapi::ListableResource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + schemars::JsonSchema
    + Serialize
    + DeserializeOwned
    + Clone
    + Send
    + Sync
    + 'static
{
    /// Fills defaults at creation (and on updates, for fields a client may drop).
    fn defaults(&mut self) {}
    /// Kind-specific validation; metadata names are checked by the registry.
    fn validate(&self) -> Vec<FieldError> {
        Vec::new()
    }
    /// Rules on an update (immutable fields); by default the create rules.
    fn validate_update(&self, _old: &Self) -> Vec<FieldError> {
        self.validate()
    }
    /// Carries over or converts fields on an update (after the generic metadata rules).
    fn prepare_update(&mut self, _old: &Self) {}
    /// Grace period of a delete, or `None` to delete at once.
    fn grace(&self, _requested: Option<i64>) -> Option<i64> {
        None
    }
    /// Whether something besides metadata finalizers holds a terminating object.
    fn holds_deletion(&self) -> bool {
        false
    }
    /// Converts this kind's JSON form into the stored kind's, for an entry that shares another
    /// resource's storage ([`Entry::stored_as`]).
    fn to_storage(obj: Value) -> Value {
        obj
    }
    /// Converts the stored kind's JSON form into this kind's.
    fn from_storage(obj: Value) -> Value {
        obj
    }
    /// Table columns beyond Name and Age, with where Age goes (upstream's order).
    fn columns() -> Vec<Column> {
        vec![name_column(), age_column()]
    }
    /// One cell per column.
    fn cells(&self) -> Vec<Value> {
        vec![name_cell(self.metadata()), age_cell(self.metadata())]
    }
}

pub fn name_column() -> Column {
    Column::new(
        "Name",
        "string",
        "Name must be unique within a namespace.",
        0,
    )
}

pub fn age_column() -> Column {
    Column::new(
        "Age",
        "string",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    )
}

pub fn col(name: &str, description: &str) -> Column {
    Column::new(name, "string", description, 0)
}

pub fn wide(name: &str, description: &str) -> Column {
    Column::new(name, "string", description, 1)
}

pub fn name_cell(m: &ObjectMeta) -> Value {
    json!(m.name.clone().unwrap_or_default())
}

pub fn age_cell(m: &ObjectMeta) -> Value {
    json!(human_age(m.creation_timestamp.as_ref()))
}

/// A human duration as kubectl prints it: 42s, 5m10s, 3h, 2d.
pub fn human_age(created: Option<&Time>) -> String {
    let Some(t) = created else {
        return "<unknown>".into();
    };
    human_duration(Timestamp::now().duration_since(t.0).as_secs().max(0))
}

pub fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 8 * 86400 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `<none>` for an empty value, as kubectl prints it.
pub fn or_none(s: impl Into<String>) -> Value {
    let s = s.into();
    json!(if s.is_empty() {
        "<none>".to_string()
    } else {
        s
    })
}

/// The JSON strategy of a typed kind.
pub struct Typed<K> {
    reset_status: bool,
    _kind: PhantomData<fn() -> K>,
}

fn to_typed<K: Kind>(v: &Value) -> Option<K> {
    serde_json::from_value(v.clone()).ok()
}

fn write_back<K: Kind>(obj: &mut Value, typed: &K) {
    if let Ok(mut v) = serde_json::to_value(typed) {
        v["apiVersion"] = obj["apiVersion"].clone();
        v["kind"] = obj["kind"].clone();
        *obj = v;
    }
}

impl<K: Kind> Strategy for Typed<K> {
    fn decode(
        &self,
        def: &ResourceDef,
        obj: Value,
        mode: FieldValidation,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let (v, unknown) = round_trip::<K>(&def.kind, &def.api_version(), obj)?;
        Ok((v, mode.judge(unknown)?))
    }

    fn prepare_create(&self, obj: &mut Value) {
        if self.reset_status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        if let Some(mut k) = to_typed::<K>(obj) {
            k.defaults();
            write_back(obj, &k);
        }
    }

    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        match to_typed::<K>(obj) {
            Some(k) => k.validate(),
            None => vec![FieldError::invalid(
                "(root)",
                format!("the object is not a valid {}", K::KIND),
            )],
        }
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        match (to_typed::<K>(new), to_typed::<K>(old)) {
            (Some(n), Some(o)) => n.validate_update(&o),
            _ => vec![FieldError::invalid(
                "(root)",
                format!("the object is not a valid {}", K::KIND),
            )],
        }
    }

    fn prepare_update(&self, new: &mut Value, old: &Value) {
        if let (Some(mut n), Some(o)) = (to_typed::<K>(new), to_typed::<K>(old)) {
            n.defaults();
            n.prepare_update(&o);
            write_back(new, &n);
        }
    }

    fn grace_period(&self, obj: &Value, requested: Option<i64>) -> Option<i64> {
        to_typed::<K>(obj).and_then(|k| k.grace(requested))
    }

    fn holds_deletion(&self, obj: &Value) -> bool {
        to_typed::<K>(obj).is_some_and(|k| k.holds_deletion())
    }

    fn definitions(&self) -> Option<(String, serde_json::Map<String, Value>)> {
        Some(schema_definitions::<K>())
    }

    fn storage_form(&self, obj: Value) -> Value {
        K::to_storage(obj)
    }

    fn served_form(&self, obj: Value) -> Value {
        K::from_storage(obj)
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        match to_typed::<K>(obj) {
            Some(k) => k.cells(),
            None => vec![obj["metadata"]["name"].clone()],
        }
    }
}

/// A typed kind's OpenAPI v3 schemas, generated from its k8s-openapi type (never copied): the
/// root schema's name and every schema by name.
pub fn schema_definitions<K: schemars::JsonSchema>() -> (String, serde_json::Map<String, Value>) {
    let mut generator =
        schemars::SchemaGenerator::new(schemars::generate::SchemaSettings::openapi3());
    generator.subschema_for::<K>();
    let defs: serde_json::Map<String, Value> =
        generator.take_definitions(true).into_iter().collect();
    (K::schema_name().into_owned(), defs)
}

/// Builds a kind's table entry.
pub struct Entry {
    def: ResourceDef,
}

/// The entry of a typed kind, with what k8s-openapi knows about it filled in.
pub fn entry<K: Kind>() -> Entry {
    let namespaced =
        TypeId::of::<K::Scope>() == TypeId::of::<k8s_openapi::NamespaceResourceScope>();
    Entry {
        def: ResourceDef {
            group: K::GROUP.into(),
            version: K::VERSION.into(),
            kind: K::KIND.into(),
            list_kind: K::LIST_KIND.into(),
            plural: K::URL_PATH_SEGMENT.into(),
            singular: K::KIND.to_ascii_lowercase(),
            short_names: Vec::new(),
            categories: Vec::new(),
            namespaced,
            verbs: ALL_VERBS.iter().map(|v| v.to_string()).collect(),
            subresources: Vec::new(),
            scale: None,
            selectable_fields: Vec::new(),
            columns: K::columns(),
            name_rule: NameRule::Subdomain,
            generation: false,
            strategy: Arc::new(Typed::<K> {
                reset_status: false,
                _kind: PhantomData,
            }),
            storage_version: None,
            stored_as: None,
            crd: None,
            delete_returns_object: false,
        },
    }
}

impl Entry {
    pub fn short(mut self, names: &[&str]) -> Self {
        self.def.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn categories(mut self, c: &[&str]) -> Self {
        self.def.categories = c.iter().map(|s| s.to_string()).collect();
        self
    }
    /// A status subresource: main writes keep status, status writes keep the rest, generation
    /// tracks the spec, and a create starts with no status.
    pub fn status<K: Kind>(mut self) -> Self {
        self.def
            .subresources
            .push(Subresource::status(&self.def.kind));
        self.def.generation = true;
        self.def.strategy = Arc::new(Typed::<K> {
            reset_status: true,
            _kind: PhantomData,
        });
        self
    }
    pub fn scale(mut self) -> Self {
        self.def.subresources.push(Subresource::scale());
        self.def.scale = Some(ScalePaths::default());
        self
    }
    pub fn subresource(mut self, s: Subresource) -> Self {
        self.def.subresources.push(s);
        self
    }
    pub fn sub(mut self, name: &str, kind: &str, verbs: &[&str]) -> Self {
        self.def
            .subresources
            .push(Subresource::new(name, kind, verbs));
        self
    }
    pub fn fields(mut self, f: &[&str]) -> Self {
        self.def.selectable_fields = f.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn names(mut self, rule: NameRule) -> Self {
        self.def.name_rule = rule;
        self
    }
    pub fn verbs(mut self, v: &[&str]) -> Self {
        self.def.verbs = v.iter().map(|s| s.to_string()).collect();
        self
    }
    /// Serves the objects of another typed kind's resource, converted by this kind's
    /// `to_storage` and `from_storage`.
    pub fn stored_as<S: Kind>(mut self) -> Self {
        self.def.stored_as = Some(strake_apimachinery::StoredAs {
            group: S::GROUP.into(),
            plural: S::URL_PATH_SEGMENT.into(),
            api_version: S::API_VERSION.into(),
            kind: S::KIND.into(),
        });
        self
    }
    pub fn returns_deleted_object(mut self) -> Self {
        self.def.delete_returns_object = true;
        self
    }
    pub fn build(self) -> ResourceDef {
        self.def
    }
}
