"""The official Python client (`pip install kubernetes`) against a Strake API server.

Usage: python3 python_client.py KUBECONFIG NAMESPACE. Exits non-zero, naming the step, on the
first thing that does not behave as it does against kube-apiserver.
"""
import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

kubeconfig, ns = sys.argv[1], sys.argv[2]
config.load_kube_config(config_file=kubeconfig)
core = client.CoreV1Api()
apps = client.AppsV1Api()
batch = client.BatchV1Api()


def expect_status(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ApiException as e:
        assert e.status == code, f"{fn.__name__}: expected {code}, got {e.status}: {e.body}"
        return e
    raise AssertionError(f"{fn.__name__}: expected {code}, it succeeded")


core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
assert core.read_namespace(ns).status.phase == "Active"

# Watch config maps while they are created, changed and deleted.
events = []
ready = threading.Event()


def watcher():
    w = watch.Watch()
    ready.set()
    for ev in w.stream(core.list_namespaced_config_map, namespace=ns, timeout_seconds=20):
        events.append((ev["type"], ev["object"].metadata.name))
        if ev["type"] == "DELETED":
            w.stop()


t = threading.Thread(target=watcher)
t.start()
ready.wait()

# ConfigMap CRUD, every patch type, a stale replace (409), a bad name (422).
cm = core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings", labels={"app": "x"}), data={"a": "1"}))
assert cm.metadata.resource_version
got = core.read_namespaced_config_map("settings", ns)
assert got.data == {"a": "1"}
got.data["b"] = "2"
replaced = core.replace_namespaced_config_map("settings", ns, got)
stale = got
stale.data["c"] = "3"
expect_status(409, core.replace_namespaced_config_map, "settings", ns, stale)
core.patch_namespaced_config_map("settings", ns, {"data": {"smp": "1"}})
core.patch_namespaced_config_map("settings", ns, [{"op": "add", "path": "/data/json", "value": "1"}])
core.patch_namespaced_config_map("settings", ns, {"data": {"merge": "1"}}, _content_type="application/merge-patch+json")
after = core.read_namespaced_config_map("settings", ns)
assert {"a", "b", "smp", "json", "merge"} <= set(after.data), after.data
listed = core.list_namespaced_config_map(ns, label_selector="app=x")
assert [c.metadata.name for c in listed.items] == ["settings"], listed
e = expect_status(422, core.create_namespaced_config_map, ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Not_Valid")))
assert "metadata.name" in e.body, e.body
core.delete_namespaced_config_map("settings", ns)
t.join(30)
kinds = [k for k, _ in events]
assert kinds[0] == "ADDED" and "MODIFIED" in kinds and kinds[-1] == "DELETED", events

# Secrets, services, service accounts.
core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="creds"), string_data={"password": "hunter2"}))
assert core.read_namespaced_secret("creds", ns).data["password"] == "aHVudGVyMg=="
svc = core.create_namespaced_service(ns, client.V1Service(metadata=client.V1ObjectMeta(name="web"), spec=client.V1ServiceSpec(selector={"app": "web"}, ports=[client.V1ServicePort(port=80)])))
assert svc.spec.ports[0].target_port == 80, svc.spec.ports
core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="robot")))

# Deployments: create, scale through the subresource, status, delete.
dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="web"),
    spec=client.V1DeploymentSpec(
        selector=client.V1LabelSelector(match_labels={"app": "web"}),
        template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels={"app": "web"}), spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="busybox:1")])),
    ),
)
created = apps.create_namespaced_deployment(ns, dep)
assert created.spec.replicas == 1 and created.spec.strategy.type == "RollingUpdate"
apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 3}})
assert apps.read_namespaced_deployment_scale("web", ns).spec.replicas == 3
assert apps.read_namespaced_deployment("web", ns).metadata.generation == 2
apps.patch_namespaced_deployment_status("web", ns, {"status": {"observedGeneration": 2, "replicas": 3}})
assert apps.read_namespaced_deployment_status("web", ns).status.replicas == 3
bad = client.V1Deployment(metadata=client.V1ObjectMeta(name="bad"), spec=client.V1DeploymentSpec(selector=client.V1LabelSelector(match_labels={"app": "a"}), template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels={"app": "b"}), spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="x")]))))
e = expect_status(422, apps.create_namespaced_deployment, ns, bad)
assert "selector" in e.body, e.body
for kind in ("stateful_set", "replica_set", "daemon_set"):
    body = {"apiVersion": "apps/v1", "metadata": {"name": kind.replace("_", "")}, "spec": {"selector": {"matchLabels": {"app": "w"}}, "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}}
    if kind == "stateful_set":
        body["spec"]["serviceName"] = "w"
    getattr(apps, f"create_namespaced_{kind}")(ns, body)
    getattr(apps, f"read_namespaced_{kind}")(kind.replace("_", ""), ns)
apps.delete_namespaced_deployment("web", ns)
expect_status(404, apps.read_namespaced_deployment, "web", ns)

# Jobs and cron jobs.
batch.create_namespaced_job(ns, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1"}]}}}})
assert batch.read_namespaced_job("once", ns).spec.backoff_limit == 6
batch.create_namespaced_cron_job(ns, {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"}, "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox:1"}]}}}}}})
e = expect_status(422, batch.create_namespaced_cron_job, ns, {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "bad"}, "spec": {"schedule": "61 * * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "x"}]}}}}}})
assert "schedule" in e.body, e.body

core.delete_namespace(ns)
print("python client: CRUD, watch, patch types, 409, 422, scale, status: ok")
