"""A kopf operator that reconciles a CRD with a structural schema and writes its status.
Run by kopf: kopf run --standalone -n NS kopf_operator.py
"""
import kopf


@kopf.on.create("strake.dev", "v1", "greetings")
def create(spec, name, patch, **_):
    patch.status["message"] = f"hello, {spec['who']} ({spec.get('times', 1)}x)"
    patch.status["phase"] = "Greeted"
