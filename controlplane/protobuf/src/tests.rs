use prost::Message;
use serde_json::json;

use super::*;

fn schemas() -> Map<String, Value> {
    let mut generator =
        schemars::SchemaGenerator::new(schemars::generate::SchemaSettings::openapi3());
    generator.subschema_for::<k8s_openapi::api::apps::v1::Deployment>();
    generator.subschema_for::<k8s_openapi::api::core::v1::Secret>();
    generator.subschema_for::<k8s_openapi::api::core::v1::Pod>();
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
    let d = Codec::new(&schemas());
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
    let v = Codec::new(&schemas())
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
    let v = Codec::new(&schemas())
        .decode_envelope(&envelope("v1", "Secret", s.encode_to_vec()), &message_of)
        .unwrap();
    assert_eq!(v["data"]["k"], "aHVudGVyMg==");
    assert_eq!(v["type"], "Opaque");
}

#[test]
fn bad_bodies_are_refused_with_where() {
    let d = Codec::new(&schemas());
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

fn pod_json() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-0",
            "namespace": "default",
            "uid": "0b0f6f47-4a0e-4d43-9b1f-1a2b3c4d5e6f",
            "resourceVersion": "42",
            "creationTimestamp": "2026-12-03T10:11:12Z",
            "labels": {"app": "web", "tier": "front"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "u1", "controller": true}],
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "time": "2026-12-03T10:11:12Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}}}]
        },
        "spec": {
            "containers": [{
                "name": "nginx",
                "image": "nginx:1",
                "args": ["-g", "daemon off;"],
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 5}
            }],
            "terminationGracePeriodSeconds": 30,
            "hostNetwork": false,
            "securityContext": {"runAsUser": -1}
        },
        "status": {
            "phase": "Running",
            "podIP": "10.42.0.5",
            "startTime": "2026-12-03T10:11:13Z",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-03T10:11:14Z"}]
        }
    })
}

#[test]
fn encoded_objects_decode_with_upstream_messages() {
    let c = Codec::new(&schemas());
    let bytes = c.encode_envelope(&pod_json(), &message_of).unwrap();
    assert!(bytes.starts_with(MAGIC));
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(&bytes[4..]).unwrap();
    let tm = unknown.type_meta.unwrap();
    assert_eq!(
        (tm.api_version.as_deref(), tm.kind.as_deref()),
        (Some("v1"), Some("Pod"))
    );
    let pod = k8s_pb::api::core::v1::Pod::decode(unknown.raw.unwrap().as_slice()).unwrap();
    let meta = pod.metadata.unwrap();
    assert_eq!(meta.name.as_deref(), Some("web-0"));
    assert_eq!(meta.labels["tier"], "front");
    assert_eq!(
        meta.creation_timestamp.unwrap().seconds,
        Some(1_796_292_672)
    );
    assert_eq!(meta.owner_references[0].controller, Some(true));
    assert_eq!(
        meta.managed_fields[0]
            .fields_v1
            .as_ref()
            .unwrap()
            .raw
            .as_deref(),
        Some(br#"{"f:metadata":{"f:labels":{"f:app":{}}}}"#.as_slice())
    );
    let spec = pod.spec.unwrap();
    let ctr = &spec.containers[0];
    assert_eq!(ctr.args, vec!["-g", "daemon off;"]);
    assert_eq!(ctr.ports[0].container_port, Some(80));
    assert_eq!(
        ctr.resources.as_ref().unwrap().limits["memory"]
            .string
            .as_deref(),
        Some("64Mi")
    );
    let port = ctr
        .readiness_probe
        .as_ref()
        .and_then(|p| p.handler.as_ref())
        .and_then(|h| h.http_get.as_ref())
        .and_then(|g| g.port.as_ref())
        .unwrap();
    assert_eq!(
        (port.r#type, port.str_val.as_deref()),
        (Some(1), Some("http"))
    );
    assert_eq!(spec.host_network, Some(false), "explicit false is written");
    assert_eq!(
        spec.security_context.unwrap().run_as_user,
        Some(-1),
        "negative ints"
    );
    assert_eq!(pod.status.unwrap().pod_ip.as_deref(), Some("10.42.0.5"));
}

#[test]
fn json_survives_a_round_trip_through_protobuf() {
    let c = Codec::new(&schemas());
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s", "annotations": {"a": "b"}},
        "data": {"k": "aHVudGVyMg==", "e": ""},
        "type": "Opaque"
    });
    let deploy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "generation": 3},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "k", "operator": "In", "values": ["a", "b"]}]},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}
        },
        "status": {"observedGeneration": 3, "conditions": [{"type": "Available", "status": "True", "lastUpdateTime": "2026-01-02T03:04:05Z"}]}
    });
    for v in [pod_json(), secret, deploy] {
        let bytes = c.encode_envelope(&v, &message_of).unwrap();
        let back = c.decode_envelope(&bytes, &message_of).unwrap();
        let mut want = v.clone();
        // An empty string is not written back, as Go's JSON omits it.
        if let Some(d) = want.get_mut("data") {
            d["e"] = json!("");
        }
        assert_eq!(back, want, "{}", v["kind"]);
    }
}

#[test]
fn a_list_encodes_its_items_without_their_type() {
    let c = Codec::new(&schemas());
    let list = json!({
        "apiVersion": "v1", "kind": "ConfigMapList",
        "metadata": {"resourceVersion": "7", "continue": "abc"},
        "items": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"x": "1"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}}
        ]
    });
    let bytes = c.encode_envelope(&list, &message_of).unwrap();
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(&bytes[4..]).unwrap();
    let l = k8s_pb::api::core::v1::ConfigMapList::decode(unknown.raw.unwrap().as_slice()).unwrap();
    assert_eq!(l.metadata.unwrap().r#continue.as_deref(), Some("abc"));
    assert_eq!(l.items.len(), 2);
    assert_eq!(l.items[0].data["x"], "1");
}

#[test]
fn json_that_does_not_fit_its_message_is_refused_with_its_path() {
    let c = Codec::new(&schemas());
    let bad = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": 5}});
    assert_eq!(
        c.encode_envelope(&bad, &message_of),
        Err(EncodeError::Invalid {
            path: ".metadata.name".into(),
            problem: "expected a string, found a number".into()
        })
    );
    let big =
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 1u64 << 40}});
    assert!(matches!(
        c.encode_envelope(&big, &message_of),
        Err(EncodeError::Invalid { .. })
    ));
    assert!(matches!(
        c.encode_envelope(&json!({"kind": "Nope", "apiVersion": "v1"}), &message_of),
        Err(EncodeError::UnknownType { .. })
    ));
}

#[test]
fn go_durations_parse_as_go_prints_them() {
    use crate::encode::parse_go_duration as p;
    assert_eq!(p("0s"), Some(0));
    assert_eq!(p("1h2m3s"), Some(3_723_000_000_000));
    assert_eq!(p("1.5s"), Some(1_500_000_000));
    assert_eq!(p("-300ms"), Some(-300_000_000));
    assert_eq!(p("12"), None);
    assert_eq!(p("1x"), None);
    assert_eq!(go_duration(300_000_000), "300ms");
    assert_eq!(go_duration(1_500), "1.5µs");
    assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    assert_eq!(go_duration(-90_000_000_000), "-1m30s");
    assert_eq!(go_duration(i64::MAX), "2562047h47m16.854775807s");
    assert_eq!(go_duration(i64::MIN), "-2562047h47m16.854775808s");
    for ns in [
        0,
        1,
        1_500,
        1_500_000_000,
        3_723_000_000_000,
        90_000_000_000,
        i64::MAX,
        i64::MIN,
    ] {
        assert_eq!(p(&go_duration(ns)), Some(ns));
    }
}

#[test]
fn watch_frames_carry_an_upstream_watch_event() {
    let c = Codec::new(&schemas());
    let obj = c.encode_envelope(&pod_json(), &message_of).unwrap();
    let frame = watch_frame("ADDED", &obj);
    let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4);
    let ev = k8s_pb::apimachinery::pkg::apis::meta::v1::WatchEvent::decode(&frame[4..]).unwrap();
    assert_eq!(ev.r#type.as_deref(), Some("ADDED"));
    let raw = ev.object.unwrap().raw.unwrap();
    assert_eq!(raw, obj);
    let back = c.decode_envelope(&raw, &message_of).unwrap();
    assert_eq!(back["metadata"]["name"], "web-0");
}

#[test]
fn embedded_structs_are_flattened_even_when_nested_or_newer() {
    let mut generator =
        schemars::SchemaGenerator::new(schemars::generate::SchemaSettings::openapi3());
    generator.subschema_for::<k8s_openapi::api::core::v1::Pod>();
    generator
        .subschema_for::<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy>();
    // As in the server, which has every kind's schemas: RuleWithOperations, embedded in the
    // policy's NamedRuleWithOperations, has its own schema through the webhook configurations.
    generator.subschema_for::<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration>();
    let schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    let c = Codec::new(&schemas);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {
        "containers": [{"name": "c", "image": "i"}],
        "ephemeralContainers": [{"name": "debug", "image": "busybox", "targetContainerName": "c", "stdin": true}]}});
    let policy = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "v"}, "spec": {"matchConstraints": {"resourceRules": [
            {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["deployments"], "resourceNames": ["x"]}]}}});
    let message_of = |av: &str, kind: &str| -> Option<String> {
        Some(match (av, kind) {
            ("v1", "Pod") => "io.k8s.api.core.v1.Pod".into(),
            _ => "io.k8s.api.admissionregistration.v1.ValidatingAdmissionPolicy".into(),
        })
    };
    for v in [pod, policy] {
        let bytes = c.encode_envelope(&v, &message_of).unwrap();
        assert_eq!(c.decode_envelope(&bytes, &message_of).unwrap(), v);
    }
}

#[test]
fn times_with_nanoseconds_outside_a_second_are_refused() {
    let c = Codec::new(&serde_json::Map::new());
    let time = "io.k8s.apimachinery.pkg.apis.meta.v1.Time";
    // Found by the fuzzer: nanos = a huge varint, seconds = 1. It used to decode to the epoch,
    // which encodes as the zero time and came back as null.
    let bad = [0x10, 0xff, 0xff, 0xff, 0xff, 0xef, 0x01, 0x08, 0x01];
    let err = c.decode_message(time, &bad, 0).unwrap_err();
    assert!(err.to_string().contains("not within a second"), "{err}");
    // A good one still decodes, and round-trips.
    let good = [0x08, 0x80, 0xa3, 0xc5, 0xca, 0x06];
    let v = c.decode_message(time, &good, 0).unwrap();
    assert!(v.is_string(), "{v}");
    let again = c
        .decode_message(time, &c.encode_message(time, &v).unwrap(), 0)
        .unwrap();
    assert_eq!(again, v);
}

/// A message with a varint field 1 (seconds) and, if not zero, field 2 (nanoseconds).
fn time_message(secs: i64, nanos: u64) -> Vec<u8> {
    let mut out = vec![0x08];
    crate::encode::varint(&mut out, secs as u64);
    if nanos != 0 {
        out.push(0x10);
        crate::encode::varint(&mut out, nanos);
    }
    out
}

#[test]
fn times_outside_rfc_3339_years_are_refused() {
    let c = Codec::new(&serde_json::Map::new());
    let micro = "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime";
    // Found by the fuzzer: seconds far before year 0 decoded to "-2394-11-22T04:55:37.000000Z",
    // which is no RFC 3339 time and did not encode back.
    let err = c
        .decode_message(micro, &time_message(-137_702_401_463, 0), 0)
        .unwrap_err();
    assert!(
        err.to_string().contains("outside the years 0000 to 9999"),
        "{err}"
    );
    // Late in year 9999 is still a time.
    let v = c
        .decode_message(micro, &time_message(253_402_200_000, 0), 0)
        .unwrap();
    assert_eq!(v, "9999-12-30T20:00:00.000000Z");
}

#[test]
fn times_before_1970_count_their_fraction_forward() {
    // Found by the fuzzer: jiff gives a time before 1970 a negative fraction, which was
    // encoded as negative nanoseconds and did not decode back.
    let c = Codec::new(&serde_json::Map::new());
    let micro = "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime";
    for (s, secs, nanos) in [
        ("1969-12-31T23:59:59.000002Z", -1, 2000),
        ("1900-01-01T00:00:00.500000Z", -2_208_988_800, 500_000_000),
        ("1900-01-01T00:00:00.000000Z", -2_208_988_800, 0),
    ] {
        let bytes = c.encode_message(micro, &serde_json::json!(s)).unwrap();
        assert_eq!(bytes, time_message(secs, nanos), "{s}");
        assert_eq!(c.decode_message(micro, &bytes, 0).unwrap(), s);
    }
}
