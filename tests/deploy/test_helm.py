"""The Helm chart: it lints strictly, renders offline with several value sets (Helm 4 as a
library, ``helm-python-sdk``: no helm binary, no cluster), every render validates strictly against
the Kubernetes schemas, its values schema refuses typos and secrets, and its workloads agree with
the kustomize overlays' so that the two install paths cannot drift apart."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.settings import HELP, SECRET_SETTINGS
from tests.deploy.conftest import (
    CHART,
    EXTERNAL,
    NAMESPACE,
    PROXY_LABELS,
    RELEASE,
    VALUE_SETS,
    Build,
    Manifest,
    containers,
    of_kind,
    one,
    validate_all,
)

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
#: What the release's objects are called (the chart's fullname for RELEASE).
FULLNAME = f"{RELEASE}-session-broker"

#: Settings that are secrets: the chart reads each from a Secret, never from values.
SECRET_SETTINGS = SECRET_SETTINGS
#: Settings the chart derives from its own values (ports, sessions mount, Redis shape).
CHART_SETTINGS = {
    "SESSIONS_FILE",
    "LISTEN",
    "ADMIN_LISTEN",
    "REDIS_SENTINELS",
    "REDIS_SENTINEL_MASTER",
    "REDIS_CLUSTER",
}
#: The kustomize overlay that installs the same shape as each value set.
OVERLAY_OF = {"defaults": "dev", "sentinel": "ha", "external": "external"}
#: Labels only Helm sets (release bookkeeping), and kustomize's part-of label.
BOOKKEEPING_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/part-of",
}


def test_chart_lints_strictly(helm: Any) -> None:
    """``helm lint --strict``: no error and no warning, with every value set."""
    for name, values in VALUE_SETS.items():
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
        assert report["errors"] == [], name
        findings = [m for m in report["messages"] if m["severity"] >= 2]
        assert findings == [], name


@pytest.mark.parametrize("value_set", [pytest.param(n, id=n) for n in VALUE_SETS])
def test_every_render_validates(render: Any, validator: Any, value_set: str) -> None:
    """Each value set renders; every manifest validates strictly (an unknown field is an error)
    against the oldest and newest Kubernetes schemas known; the ServiceMonitor, a CRD, selects
    the ops Service."""
    docs, notes = render(VALUE_SETS[value_set])
    validate_all(docs, validator)
    assert {doc["kind"] for doc in docs} >= {"Deployment", "Service", "ConfigMap"}
    assert notes.strip()


def test_what_each_value_set_installs(render: Any) -> None:
    """The Redis shape, autoscaler, budget, policies and monitoring come and go with values."""
    kinds = {name: sorted(d["kind"] for d in render(v)[0]) for name, v in VALUE_SETS.items()}
    assert kinds["defaults"].count("StatefulSet") == 1
    assert kinds["sentinel"].count("PodDisruptionBudget") == 2  # the proxies' and Redis'
    assert "StatefulSet" not in kinds["external"]
    assert {"ServiceMonitor"} <= set(kinds["monitoring"])
    assert kinds["monitoring"].count("NetworkPolicy") == 3  # proxy, ops from monitoring, Redis
    fixed = kinds["fixed-replicas"]
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"):
        assert kind not in fixed
    deployment = of_kind(render(VALUE_SETS["fixed-replicas"])[0], "Deployment")[0]
    assert deployment["spec"]["replicas"] == 2


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"replicaCunt": 2}, id="top-level"),
        pytest.param({"redis": {"mod": "sentinel"}}, id="nested"),
        pytest.param({"settings": {"UPSTREAM_URL": "https://a", "LOG_LEVL": "info"}}, id="setting"),
        pytest.param({"redis": {"mode": "sentinal"}}, id="enum"),
        pytest.param({"redis": {"mode": "external"}}, id="external-without-its-secret"),
    ],
)  # fmt: skip
def test_a_typo_in_values_is_an_error(helm: Any, render: Any, values: dict[str, Any]) -> None:
    """values.schema.json refuses an unknown key at any depth, a misspelt setting, a value out
    of its choices, and an external Redis with no Secret for its URL."""
    with pytest.raises(helm.HelmValuesError):
        render(values)


@pytest.mark.parametrize("setting", sorted(SECRET_SETTINGS))
def test_no_secret_in_values(helm: Any, render: Any, setting: str) -> None:
    """A secret setting given as a value is refused: secrets come from Secrets."""
    with pytest.raises(helm.HelmValuesError):
        render({"settings": {"UPSTREAM_URL": "https://a.example", setting: "s3cr3t-value"}})


def test_values_schema_knows_every_setting() -> None:
    """The settings the values accept are exactly the replica's, less secrets and the ones the
    chart derives; the default values pass the same schema's settings."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    accepted = set(schema["properties"]["settings"]["properties"])
    assert accepted == set(HELP) - SECRET_SETTINGS - CHART_SETTINGS
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(defaults["settings"]) <= accepted


def test_secret_settings_come_from_secrets(render: Any) -> None:
    """Each secret setting named in values is read from its Secret's key (required), the
    sessions file from a Secret mounted as a folder; no secret is a literal anywhere."""
    docs, _ = render(EXTERNAL)
    container = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert refs == {
        "REDIS_URL": {"name": "session-broker-env-secrets", "key": "REDIS_URL", "optional": False},
        "PROXY_API_KEYS": {
            "name": "session-broker-env-secrets",
            "key": "PROXY_API_KEYS",
            "optional": False,
        },
        "ADMIN_TOKEN": {"name": "session-broker-admin", "key": "ADMIN_TOKEN", "optional": False},
    }
    settings = of_kind(docs, "ConfigMap")[0]["data"]
    assert not SECRET_SETTINGS & settings.keys()
    assert not of_kind(docs, "Secret")
    _, defaults_notes = render({})
    assert "port-forward" in defaults_notes


def test_notes_say_how_to_reach_proxy_admin_and_status(render: Any) -> None:
    """NOTES.txt: the sessions Secret to create, the proxy's address and port-forward, the
    admin API and the web console on the ops port, and ``session-broker status``."""
    _, notes = render(EXTERNAL)
    assert "create secret generic session-broker-sessions" in notes
    assert f"svc/{FULLNAME} 8080:8080" in notes
    assert f"deploy/{FULLNAME} 9090:9090" in notes
    assert "/admin/sessions" in notes
    assert "http://127.0.0.1:9090/ui/" in notes
    assert "session-broker-admin" in notes
    assert "session-broker status" in notes


def _without_bookkeeping(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_bookkeeping(v) for k, v in value.items() if k not in BOOKKEEPING_LABELS}
    if isinstance(value, list):
        return [_without_bookkeeping(v) for v in value]
    return value


def _renamed(doc: Manifest, names: dict[str, str]) -> Manifest:
    """``doc`` with the release's or kustomize's generated names mapped to the plain ones, and
    the labels only one of the two tools sets dropped."""
    text = json.dumps(doc)
    for pattern, plain in names.items():
        text = re.sub(pattern, plain, text)
    renamed: Manifest = _without_bookkeeping(json.loads(text))
    return renamed


def _workload(doc: Manifest, names: dict[str, str]) -> Manifest:
    """A workload as compared: renamed, without annotations (Helm's checksum of the settings)."""
    workload = _renamed(doc, names)
    workload["metadata"].pop("annotations", None)
    workload["spec"]["template"]["metadata"].pop("annotations", None)
    return workload


#: Chart names -> kustomize names (the chart's objects carry the release's name).
CHART_NAMES = {rf"\b{FULLNAME}-redis": "redis", rf"\b{FULLNAME}\b": "session-broker"}
#: kustomize's generated names carry a hash of their content.
KUSTOMIZE_NAMES = {r"\b(session-broker-settings|redis-sentinel-config)-[a-z0-9]{10}\b": r"\1"}


def _environment(container: dict[str, Any]) -> tuple[str, ...]:
    """Where a container's settings come from, in order: ConfigMaps and Secrets."""
    sources = [next(iter(s)) for s in container.pop("envFrom")]
    sources += [f"secret {e['name']}" for e in container.pop("env", [])]
    return tuple(sources)


@pytest.mark.parametrize("value_set", [pytest.param(n, id=n) for n in OVERLAY_OF])
def test_chart_and_kustomize_agree(render: Any, build: Build, value_set: str) -> None:
    """The chart and the kustomize overlay of the same Redis shape install the same workloads:
    pod and container security contexts, probes, ports, lifecycle, resources, volumes, spread
    and Redis' own; the same settings; the secrets from Secrets on both sides (kustomize reads a
    whole Secret, the chart named keys of Secrets)."""
    chart_docs, _ = render(VALUE_SETS[value_set])
    kustomize_docs = build(KUBERNETES / "overlays" / OVERLAY_OF[value_set])
    for kind in ("Deployment", "StatefulSet"):
        ours = [_workload(d, CHART_NAMES) for d in of_kind(chart_docs, kind)]
        theirs = [_workload(d, KUSTOMIZE_NAMES) for d in of_kind(kustomize_docs, kind)]
        assert len(ours) == len(theirs), kind
        for chart_doc, kustomize_doc in zip(ours, theirs, strict=True):
            chart_pod = chart_doc["spec"]["template"]["spec"]
            kustomize_pod = kustomize_doc["spec"]["template"]["spec"]
            if kind == "Deployment":
                chart_env = _environment(chart_pod["containers"][0])
                kustomize_env = _environment(kustomize_pod["containers"][0])
                assert chart_env[0] == kustomize_env[0] == "configMapRef"
                assert kustomize_env[1:] == ("secretRef",)
                assert {s.removeprefix("secret ") for s in chart_env[1:]} <= SECRET_SETTINGS
            assert chart_doc["spec"] == kustomize_doc["spec"], chart_doc["metadata"]["name"]

    def settings(docs: list[Manifest], names: dict[str, str]) -> dict[str, str]:
        renamed = [_renamed(m, names) for m in of_kind(docs, "ConfigMap")]
        found = [m for m in renamed if m["metadata"]["name"] == "session-broker-settings"]
        assert len(found) == 1
        data: dict[str, str] = found[0]["data"]
        return data

    assert settings(chart_docs, CHART_NAMES) == settings(kustomize_docs, KUSTOMIZE_NAMES)
    chart_hpa = of_kind(chart_docs, "HorizontalPodAutoscaler")[0]["spec"]
    kustomize_hpa = one(kustomize_docs, "HorizontalPodAutoscaler", "session-broker")["spec"]
    chart_hpa["scaleTargetRef"]["name"] = "session-broker"
    assert chart_hpa == kustomize_hpa
    budget = of_kind(chart_docs, "PodDisruptionBudget")[0]["spec"]
    assert PROXY_LABELS.items() <= budget["selector"]["matchLabels"].items()
    assert budget["maxUnavailable"] == 1
    for workload in of_kind(chart_docs, "Deployment") + of_kind(chart_docs, "StatefulSet"):
        assert all(c["securityContext"]["readOnlyRootFilesystem"] for c in containers(workload))
