use prost::Message;
use serde_json::json;

use super::*;

fn schemas() -> Map<String, Value> {
    let mut generator =
        schemars::SchemaGenerator::new(schemars::generate::SchemaSettings::openapi3());
    generator.subschema_for::<k8s_openapi::api::apps::v1::Deployment>();
    generator.subschema_for::<k8s_openapi::api::core::v1::Secret>();
    generator.subschema_for::<k8s_openapi::api::core::v1::ConfigMap>();
    generator.subschema_for::<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview>();
    generator.take_definitions(true).into_iter().collect()
}

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(unknown.encode_to_vec());
    out
}

fn message_of(api_version: &str, kind: &str) -> Option<String> {
    let (group, version) = api_version.split_once('/').unwrap_or(("core", api_version));
    let group = group.trim_end_matches(".k8s.io");
    Some(format!("io.k8s.api.{group}.{version}.{kind}"))
}

#[test]
fn the_table_covers_the_built_in_kinds() {
    assert!(MESSAGES.len() > 500);
    let d = Decoder::new(&schemas());
    for m in [
        "io.k8s.api.core.v1.Pod",
        "io.k8s.api.apps.v1.Deployment",
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "io.k8s.api.batch.v1.CronJob",
    ] {
        assert!(d.knows(m), "{m}");
    }
}

#[test]
fn a_deployment_as_kubectl_create_sends_it() {
    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    let deploy = apps::Deployment {
        metadata: Some(meta::ObjectMeta {
            name: Some("web".into()),
            namespace: Some(String::new()),
            labels: [("app".to_string(), "web".to_string())].into(),
            creation_timestamp: Some(meta::Time {
                seconds: Some(0),
                nanos: Some(0),
            }),
            ..Default::default()
        }),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(meta::LabelSelector {
                match_labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta {
                    labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    containers: vec![core::Container {
                        name: Some("nginx".into()),
                        image: Some("nginx:1".into()),
                        ports: vec![core::ContainerPort {
                            container_port: Some(80),
                            ..Default::default()
                        }],
                        resources: Some(core::ResourceRequirements {
                            limits: [(
                                "cpu".to_string(),
                                k8s_pb::apimachinery::pkg::api::resource::Quantity {
                                    string: Some("500m".into()),
                                },
                            )]
                            .into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    host_ipc: Some(false),
                    ..Default::default()
                }),
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: Some("RollingUpdate".into()),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_surge: Some(k8s_pb::apimachinery::pkg::util::intstr::IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: Some("25%".into()),
                    }),
                    max_unavailable: Some(k8s_pb::apimachinery::pkg::util::intstr::IntOrString {
                        r#type: Some(0),
                        int_val: Some(1),
                        str_val: Some(String::new()),
                    }),
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let body = envelope("apps/v1", "Deployment", deploy.encode_to_vec());
    let v = Decoder::new(&schemas())
        .decode_envelope(&body, &message_of)
        .unwrap();
    assert_eq!(v["apiVersion"], "apps/v1");
    assert_eq!(v["kind"], "Deployment");
    assert_eq!(
        v["metadata"],
        json!({"name": "web", "labels": {"app": "web"}}),
        "empty strings and a zero time are absent"
    );
    assert_eq!(v["spec"]["replicas"], 0, "an explicit zero is kept");
    assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "web");
    let c = &v["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        (c["name"].as_str(), c["ports"][0]["containerPort"].as_i64()),
        (Some("nginx"), Some(80))
    );
    assert_eq!(
        c["resources"]["limits"]["cpu"], "500m",
        "quantities are strings"
    );
    assert_eq!(
        v["spec"]["template"]["spec"]["hostIPC"], false,
        "acronym names match their JSON names"
    );
    assert_eq!(
        v["spec"]["strategy"]["rollingUpdate"],
        json!({"maxSurge": "25%", "maxUnavailable": 1}),
        "int-or-string"
    );
    let typed: k8s_openapi::api::apps::v1::Deployment =
        serde_json::from_value(v).expect("the JSON is a valid Deployment");
    assert_eq!(typed.metadata.name.as_deref(), Some("web"));
}

#[test]
fn secrets_carry_bytes_as_base64() {
    use k8s_pb::api::core::v1 as core;
    let s = core::Secret {
        metadata: Some(k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("s".into()),
            ..Default::default()
        }),
        data: [("k".to_string(), b"hunter2".to_vec())].into(),
        r#type: Some("Opaque".into()),
        ..Default::default()
    };
    let v = Decoder::new(&schemas())
        .decode_envelope(&envelope("v1", "Secret", s.encode_to_vec()), &message_of)
        .unwrap();
    assert_eq!(v["data"]["k"], "aHVudGVyMg==");
    assert_eq!(v["type"], "Opaque");
}

#[test]
fn bad_bodies_are_refused_with_where() {
    let d = Decoder::new(&schemas());
    assert_eq!(
        d.decode_envelope(b"{}", &message_of),
        Err(DecodeError::NoEnvelope)
    );
    let truncated = envelope("v1", "ConfigMap", vec![0x0a, 0x10, 0x01]);
    assert!(
        matches!(
            d.decode_envelope(&truncated, &message_of),
            Err(DecodeError::Malformed { .. })
        ),
        "{:?}",
        d.decode_envelope(&truncated, &message_of)
    );
    assert!(matches!(
        d.decode_envelope(&envelope("v1", "Nonsense", vec![]), &message_of),
        Err(DecodeError::UnknownType { .. })
    ));
    let mut cut = envelope("v1", "ConfigMap", vec![]);
    cut.truncate(cut.len() - 3);
    assert!(d.decode_envelope(&cut, &message_of).is_err());
}
