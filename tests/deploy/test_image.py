"""The container image and the compose fleet, checked by reading them (test_image_built.py builds
and runs the image): no stage installs a toolchain, the final one runs as an unprivileged user with
the console script as entrypoint; the compose file runs three replicas behind a round-robin
balancer on one Redis."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.cli import _parser
from proxy.config.loading import load_settings
from proxy.config.settings import HELP

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
#: Packages that bring a compiler or build toolchain into an image.
TOOLCHAINS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cc|make|cmake|rustc|cargo)\b")
#: The uid the Kubernetes manifests run the proxy as.
KUBERNETES_UID = 10001


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def stages() -> list[Stage]:
    """The Dockerfile's stages, each with its instructions (continuation lines joined)."""
    text = (DEPLOY / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    arguments: dict[str, str] = {}
    found: list[Stage] = []
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not found:
            name, _, default = args.partition("=")
            arguments[name] = default
        elif keyword == "FROM":
            base, _, name = args.partition(" AS ")
            for key, value in arguments.items():
                base = base.replace(f"${{{key}}}", value)
            found.append(Stage(base.strip(), name.strip()))
        else:
            found[-1].instructions.append((keyword, args))
    return found


def test_final_stage_runs_unprivileged_without_compilers() -> None:
    """Multi-stage on a slim Python base; no stage installs a toolchain or any package (the
    dependencies are wheels only); the final stage takes only the built environment from the
    build stage and switches to the non-root uid the Kubernetes manifests expect before anything
    runs."""
    build, final = stages()[0], stages()[-1]
    assert len(stages()) >= 2
    assert "slim" in final.base
    assert final.base == build.base  # the environment's interpreter path holds
    assert TOOLCHAINS.search("apt-get install --yes build-essential")  # the check below can bite
    for stage in (build, final):
        for run in stage.all("RUN"):
            assert not TOOLCHAINS.search(run), run
            assert "apt-get install" not in run, run
    assert any("--only-binary=:all:" in run for run in build.all("RUN"))
    copies = final.all("COPY")
    assert copies == [f"--from={build.name} /opt/session-broker /opt/session-broker"]
    users = final.all("USER")
    assert users, "the final stage must set a USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) == KUBERNETES_UID
    last_user = max(i for i, (kw, _) in enumerate(final.instructions) if kw == "USER")
    assert all(kw != "RUN" for kw, _ in final.instructions[last_user:])


def test_entrypoint_is_the_console_script_serving() -> None:
    """ENTRYPOINT is the distribution's console script and CMD its ``serve`` command; the ports
    exposed are the proxy's and the ops endpoints' defaults."""
    final = stages()[-1]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert final.all("ENTRYPOINT") == ['["session-broker"]']
    assert "session-broker" in project["scripts"]
    assert final.all("CMD") == ['["serve"]']
    assert _parser().parse_args(["serve"]).command == "serve"
    defaults = load_settings({})
    exposed = {int(port) for args in final.all("EXPOSE") for port in args.split()}
    assert exposed == {defaults.listen_address.port, defaults.admin_address.port}


def test_build_stage_copies_what_the_wheel_needs() -> None:
    """The build stage copies every package of the wheel, the Lua scripts it force-includes and
    the files its metadata reads, and the ignore file lets them into the build context."""
    build = stages()[0]
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    needed = {
        *wheel["targets"]["wheel"]["packages"],
        *wheel["targets"]["wheel"]["force-include"],
        "pyproject.toml",
        "README.md",
    }
    copied = {
        Path(src).as_posix().rstrip("/")
        for args in build.all("COPY")
        for src in shlex.split(args)[:-1]
    }
    assert needed <= copied
    assert any("pip wheel --no-deps --wheel-dir /tmp/wheels ." in run for run in build.all("RUN"))
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 :]  # everything excluded, then these let back in
    for path in needed:
        assert f"!{path}" in ignore or f"!{path}/" in ignore, path


@pytest.fixture
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return document


def test_compose_runs_three_replicas_on_one_redis(compose: dict[str, Any]) -> None:
    """Three replicas built from deploy/Dockerfile share the Redis service (append-only) and a
    sessions folder; their settings are ones the proxy accepts; compose waits longer than
    SHUTDOWN_GRACE before killing one."""
    services = compose["services"]
    replicas = {
        name: s
        for name, s in services.items()
        if s.get("build", {}).get("dockerfile") == "deploy/Dockerfile"
    }
    assert len(replicas) == 3
    assert "--appendonly" in services["redis"]["command"]
    for name, service in replicas.items():
        env = service["environment"]
        assert set(env) <= set(HELP), name
        assert env["REDIS_URL"].startswith("redis://redis:")
        settings = load_settings(env | {"UPSTREAM_URL": "https://api.example.com"})
        folder, _, _ = (
            settings.sessions_file.rpartition("/") if settings.sessions_file else ("", "", "")
        )
        mounts = [v.split(":") for v in service["volumes"]]
        assert [m[1] for m in mounts] == [folder]  # the folder, so in-place edits are seen
        assert mounts[0][-1] == "ro"
        grace = int(service["stop_grace_period"].rstrip("s"))
        assert grace > settings.shutdown_grace
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
    assert (DEPLOY / compose["x-replica"]["build"]["context"] / "deploy" / "Dockerfile").is_file()


def test_compose_balances_round_robin_over_the_three(compose: dict[str, Any]) -> None:
    """The balancer waits for the three replicas to be healthy and its nginx upstream lists
    exactly them, on the proxy port, with no balancing method other than round-robin."""
    services = compose["services"]
    balancer = services["balancer"]
    replicas = sorted(n for n, s in services.items() if "build" in s)
    assert sorted(balancer["depends_on"]) == replicas
    source, target, _ = balancer["volumes"][0].split(":")
    assert target == "/etc/nginx/nginx.conf"
    conf = (DEPLOY / source).read_text()
    upstream = re.search(r"upstream \w+ \{(.*?)\}", conf, flags=re.DOTALL)
    assert upstream is not None
    servers = re.findall(r"^\s*server ([\w.-]+):(\d+);", upstream.group(1), flags=re.MULTILINE)
    port = str(load_settings({}).listen_address.port)
    assert sorted(servers) == [(name, port) for name in replicas]
    for method in ("least_conn", "ip_hash", "hash ", "random"):
        assert method not in upstream.group(1)
    assert "proxy_buffering off;" in conf  # streams pass through as they come
