"""The Kubernetes manifests: every overlay builds with kustomize and validates strictly against the
Kubernetes schemas, offline; a policy holds for every workload; the proxy's settings, probes,
shutdown timing, sessions Secret and network policies agree with what the code does."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest

from proxy.config.loading import load_settings
from proxy.config.settings import HELP, Settings
from tests.deploy.conftest import (
    OLDEST_KUBERNETES,
    PROXY_LABELS,
    REDIS_LABELS,
    WORKLOAD_KINDS,
    Build,
    Manifest,
    containers,
    of_kind,
    one,
    proxy,
    settings_of,
    validate_all,
)

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
OVERLAYS = ("dev", "ha", "external", "monitoring")

#: Seconds of the proxy's preStop hook (the Service stops routing to a stopping pod meanwhile).
PRESTOP = ["sleep", "5"]
#: Settings that hold secrets: never a literal value in a manifest.
SECRET_SETTINGS = {"SESSIONS", "PROXY_API_KEYS", "REDIS_SENTINEL_PASSWORD"}

OVERLAY_PARAMS = [pytest.param(name, id=name) for name in OVERLAYS]


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_overlay_builds_and_validates(build: Build, validator: Any, overlay: str) -> None:
    """The overlay renders with kustomize; every manifest validates strictly (an unknown field is
    an error) against the oldest and newest Kubernetes schemas known; the ServiceMonitor, a CRD,
    selects the ops Service."""
    validate_all(build(KUBERNETES / "overlays" / overlay), validator)


def test_base_builds_and_validates(build: Build, validator: Any) -> None:
    """The base alone renders and validates too (an overlay of one's own starts from it)."""
    docs = build(KUBERNETES / "base")
    validate_all(docs, validator)
    assert {doc["kind"] for doc in docs} == {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
    }


def test_strict_validation_rejects_a_misspelt_field(build: Build, validator: Any) -> None:
    """The validation above can fail: a misspelt field in the Deployment is an error."""
    deployment = copy.deepcopy(proxy(build(KUBERNETES / "base")))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(validator.ValidationError):
        validator.validate(deployment, OLDEST_KUBERNETES, strict=True)


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_every_workload_is_locked_down(build: Build, overlay: str) -> None:
    """Every workload: non-root with the RuntimeDefault seccomp profile and no service account
    token; every container a read-only root filesystem, no privilege escalation, no capabilities,
    CPU and memory requests and a memory limit; every long-running container readiness and
    liveness probes."""
    workloads = [
        doc for doc in build(KUBERNETES / "overlays" / overlay) if doc["kind"] in WORKLOAD_KINDS
    ]
    assert workloads
    for workload in workloads:
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in containers(workload):
            where = f"{name} container {container['name']}"
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), where
            assert "memory" in resources["limits"], where
        for container in pod["containers"]:
            where = f"{name} container {container['name']}"
            assert "readinessProbe" in container, where
            assert "livenessProbe" in container, where


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_sessions_come_from_a_secret_mounted_as_a_folder(build: Build, overlay: str) -> None:
    """The proxy reads SESSIONS_FILE from the sessions Secret, mounted as a folder (a subPath
    mount would never see the Secret's updates, defeating live reload); no secret-bearing
    setting has a literal value anywhere."""
    docs = build(KUBERNETES / "overlays" / overlay)
    pod = proxy(docs)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    sessions_file = settings_of(docs)["SESSIONS_FILE"]
    mounts = [
        m
        for m in pod["containers"][0]["volumeMounts"]
        if "secret" in volumes[m["name"]]
        and volumes[m["name"]]["secret"]["secretName"] == "session-broker-sessions"
    ]
    assert len(mounts) == 1
    assert "subPath" not in mounts[0]
    assert mounts[0]["readOnly"] is True
    folder, _, file_name = sessions_file.rpartition("/")
    assert folder == mounts[0]["mountPath"]
    items = volumes[mounts[0]["name"]]["secret"].get("items", [{"path": file_name}])
    assert file_name in {item["path"] for item in items}
    assert not SECRET_SETTINGS & settings_of(docs).keys()
    for workload in (d for d in docs if d["kind"] in WORKLOAD_KINDS):
        for container in containers(workload):
            literal = {e["name"] for e in container.get("env", []) if "value" in e}
            assert not SECRET_SETTINGS & literal
    secrets = [
        s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == "session-broker-sessions"
    ]
    for secret in secrets:  # only the dev overlay ships one (example sessions)
        assert not secret["metadata"]["name"].endswith(tuple("0123456789"))  # no hash suffix
        assert "sessions.json" in secret["data"]


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_proxy_probes_shutdown_and_spread(build: Build, overlay: str) -> None:
    """Three replicas; readiness on /readyz and liveness on /healthz of the ADMIN_LISTEN port;
    the grace period covers the preStop pause plus SHUTDOWN_GRACE; spread across nodes; the
    settings in the ConfigMap are ones the proxy accepts."""
    docs = build(KUBERNETES / "overlays" / overlay)
    deployment = proxy(docs)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    settings = settings_of(docs)
    assert set(settings) <= set(HELP)
    parsed: Settings = load_settings(settings | {"SESSIONS": "placeholder"})
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"proxy": parsed.listen_address.port, "ops": parsed.admin_address.port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert deployment["spec"]["replicas"] == 3
    assert container["lifecycle"]["preStop"]["exec"]["command"] == PRESTOP
    assert pod["terminationGracePeriodSeconds"] > int(PRESTOP[1]) + parsed.shutdown_grace
    assert deployment["spec"]["template"]["metadata"]["labels"] == PROXY_LABELS
    spread = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in spread


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_autoscaler_and_disruption_budget(build: Build, overlay: str) -> None:
    """The autoscaler scales the proxy Deployment from three; the budget covers its pods."""
    docs = build(KUBERNETES / "overlays" / overlay)
    hpa = one(docs, "HorizontalPodAutoscaler", "session-broker")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "session-broker",
    }
    assert hpa["spec"]["minReplicas"] == 3
    pdb = one(docs, "PodDisruptionBudget", "session-broker")
    assert pdb["spec"]["selector"]["matchLabels"] == PROXY_LABELS
    assert pdb["spec"]["maxUnavailable"] == 1


def ingress_ports(policy: Manifest) -> set[int]:
    return {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}


@pytest.mark.parametrize("overlay", OVERLAY_PARAMS)
def test_network_policies(build: Build, overlay: str) -> None:
    """Proxy pods admit the proxy port from anywhere and nothing else (but the ops port from
    the monitoring namespace where monitoring is on); Redis pods admit proxy pods and each other
    only; the proxy Service exposes the proxy port only."""
    docs = build(KUBERNETES / "overlays" / overlay)
    policies = of_kind(docs, "NetworkPolicy")
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress"]
    on_proxy = [p for p in policies if p["spec"]["podSelector"]["matchLabels"] == PROXY_LABELS]
    open_to_all = [p for p in on_proxy if all("from" not in r for r in p["spec"]["ingress"])]
    assert [ingress_ports(p) for p in open_to_all] == [{8080}]
    for policy in on_proxy:
        if policy not in open_to_all:
            assert ingress_ports(policy) == {9090}
            sources = [s for r in policy["spec"]["ingress"] for s in r["from"]]
            assert sources == [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ]
    service = one(docs, "Service", "session-broker")
    assert [p["port"] for p in service["spec"]["ports"]] == [8080]
    redis_pods = [w for w in of_kind(docs, "StatefulSet") if w["metadata"]["name"] == "redis"]
    on_redis = [p for p in policies if p["spec"]["podSelector"]["matchLabels"] == REDIS_LABELS]
    assert len(on_redis) == len(redis_pods)
    for policy in on_redis:
        for rule in policy["spec"]["ingress"]:
            assert rule["from"], "a Redis policy rule must name its sources"
            for source in rule["from"]:
                assert source["podSelector"]["matchLabels"] in (PROXY_LABELS, REDIS_LABELS)


def test_dev_runs_redis_with_append_only_persistence(build: Build) -> None:
    """dev: one Redis with AOF on a persistent volume; the proxy's REDIS_URL names its Service."""
    docs = build(KUBERNETES / "overlays" / "dev")
    redis = one(docs, "StatefulSet", "redis")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--dir") + 1] == "/data"
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    service = one(docs, "Service", "redis")
    assert (
        settings_of(docs)["REDIS_URL"] == f"redis://redis:{service['spec']['ports'][0]['port']}/0"
    )


def test_ha_points_the_proxy_at_every_sentinel(build: Build) -> None:
    """ha: three Redis pods, each with a sentinel; REDIS_SENTINELS names each pod's sentinel by
    its stable name under the headless Service; no REDIS_URL (the sentinels name the master)."""
    docs = build(KUBERNETES / "overlays" / "ha")
    redis = one(docs, "StatefulSet", "redis")
    headless = one(docs, "Service", redis["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    sentinel_port = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "sentinel")
    names = [f"redis-{n}.{headless['metadata']['name']}" for n in range(redis["spec"]["replicas"])]
    settings = settings_of(docs)
    assert settings["REDIS_SENTINELS"].split(",") == [f"{n}:{sentinel_port}" for n in names]
    assert "REDIS_URL" not in settings
    parsed = load_settings(settings | {"SESSIONS": "placeholder"})
    assert parsed.broker().redis_sentinel_master == "mymaster"
    assert {c["name"] for c in redis["spec"]["template"]["spec"]["containers"]} == {
        "redis",
        "sentinel",
    }


def test_ha_configuration_script() -> None:
    """The script that writes each Redis pod's configuration is valid sh and sets up AOF,
    hostname announcement and the sentinel quorum of two."""
    script = KUBERNETES / "components" / "redis-sentinel" / "configure.sh"
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=30)
    text = script.read_text()
    for line in (
        "appendonly yes",
        "replica-announce-ip $SELF",
        "sentinel resolve-hostnames yes",
        "sentinel announce-hostnames yes",
        "sentinel monitor mymaster $MASTER 6379 2",
        'echo "replicaof $MASTER 6379"',
    ):
        assert line in text, line


def test_external_requires_the_redis_secret(build: Build) -> None:
    """external: no Redis in the cluster, and the Secret with REDIS_URL is required (without it
    a replica would quietly run the embedded store, shared with nobody)."""
    docs = build(KUBERNETES / "overlays" / "external")
    assert not of_kind(docs, "StatefulSet")
    assert "REDIS_URL" not in settings_of(docs)
    sources = proxy(docs)["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    secret = next(s["secretRef"] for s in sources if "secretRef" in s)
    assert secret == {"name": "session-broker-env-secrets", "optional": False}
