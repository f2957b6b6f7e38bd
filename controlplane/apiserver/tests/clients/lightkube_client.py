"""lightkube against a Strake API server: a watch without a resourceVersion starts with the
current objects as ADDED events, then follows changes. Usage: python3 lightkube_client.py KUBECONFIG NS
"""
import sys
import threading

from lightkube import Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace

kubeconfig, ns = sys.argv[1], sys.argv[2]
c = Client(config=KubeConfig.from_file(kubeconfig))
c.create(Namespace(metadata=ObjectMeta(name=ns)))
c.create(ConfigMap(metadata=ObjectMeta(name="before", namespace=ns), data={"a": "1"}))
seen = []


def later():
    c.create(ConfigMap(metadata=ObjectMeta(name="after", namespace=ns), data={"b": "2"}))


timer = threading.Timer(1.0, later)
timer.start()
for op, obj in c.watch(ConfigMap, namespace=ns):
    seen.append((op, obj.metadata.name))
    if obj.metadata.name == "after":
        break
assert seen[0] == ("ADDED", "before"), seen
assert ("ADDED", "after") in seen, seen
got = c.get(ConfigMap, "before", namespace=ns)
assert got.data == {"a": "1"}
c.patch(ConfigMap, "before", {"data": {"x": "y"}}, namespace=ns)
assert c.get(ConfigMap, "before", namespace=ns).data["x"] == "y"
listed = list(c.list(ConfigMap, namespace=ns))
assert {m.metadata.name for m in listed} == {"before", "after"}, listed
c.delete(Namespace, ns)
print("lightkube: watch starts with ADDED, get, patch, list: ok")
