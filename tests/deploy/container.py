"""Build deploy/Dockerfile and run the image without a container engine's daemon or an OCI runtime.

Docker Hub may be out of reach, so the base (``PYTHON_IMAGE``) is a Debian made by ``debootstrap``
and imported with ``podman import``; ``podman build --isolation=chroot`` builds ours on it; and
``buildah run --isolation chroot`` runs a command in the image's own filesystem, as its own user
and environment (starting containers with a runtime needs cgroups and rlimits that not every
machine grants). The base takes minutes to make, so it is cached by its inputs, as a tarball
under the user's cache folder and as an image in podman's store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: What debootstrap makes: a minimal Debian with the interpreter and its venv module as
#: ``python``, the same Python (3.11) the official slim image ships.
SUITE = "bookworm"
INCLUDE = ("python3", "python3-venv", "python-is-python3")
#: Left out of the base, as slim images leave them out: apt's downloads and lists, documentation.
TRIM = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
#: Bumped when how the base is made changes without its other inputs changing.
RECIPE = 1
IMAGE = "localhost/session-broker:test"
TOOLS = ("podman", "buildah", "debootstrap")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _run(*command: str, timeout: float = 900, **kwargs: object) -> str:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def base_key() -> str:
    """A digest of everything the base is made from."""
    architecture = _run("dpkg", "--print-architecture").strip()
    inputs = {"suite": SUITE, "include": INCLUDE, "trim": TRIM, "arch": architecture}
    inputs["recipe"] = RECIPE
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def cache_folder() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "session-broker" / "image-base"


def _make_base_tarball(tarball: Path) -> None:
    """debootstrap a minimal Debian and pack it (a minute or more: it downloads ~60 packages)."""
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent) as scratch:
        rootfs = Path(scratch) / "rootfs"
        _run(
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(INCLUDE)}",
            SUITE,
            str(rootfs),
            timeout=1800,
        )
        for folder in TRIM:
            for entry in (rootfs / folder).glob("*"):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                elif entry.name != "lock":
                    entry.unlink()
        partial = Path(scratch) / "base.tar"
        _run("tar", "-C", str(rootfs), "-cf", str(partial), ".")
        partial.replace(tarball)  # whole or not at all: an interrupted run leaves no tarball


def base_image() -> str:
    """The base image's name in podman's store, made (or imported from the cache) if missing."""
    key = base_key()
    name = f"localhost/session-broker-base:{key}"
    if subprocess.run(["podman", "image", "exists", name], check=False).returncode == 0:
        return name
    tarball = cache_folder() / f"{key}.tar"
    if not tarball.exists():
        _make_base_tarball(tarball)
    _run("podman", "import", str(tarball), name)
    return name


def _pip_setting(env_name: str, config_name: str) -> str:
    """This machine's pip setting, from the environment or pip's configuration files."""
    if value := os.environ.get(env_name):
        return value
    result = subprocess.run(
        ["python3", "-m", "pip", "config", "get", config_name],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def pip_build_options() -> list[str]:
    """The build's pip uses this machine's index and trusts its certificate store: the bundle's
    folder is mounted read-only into the build and named by PIP_CERT (a TLS-inspecting proxy's
    CA lives there, not in the base image)."""
    options: list[str] = []
    if (cert := _pip_setting("PIP_CERT", "global.cert")) and Path(cert).is_file():
        folder = Path(cert).resolve().parent
        options += ["--volume", f"{folder}:{folder}:ro", "--build-arg", f"PIP_CERT={cert}"]
    index = _pip_setting("PIP_INDEX_URL", "global.index-url")
    if index.startswith(("http://", "https://")):
        options += ["--build-arg", f"PIP_INDEX_URL={index}"]
    return options


def build_image(base: str) -> str:
    """Build deploy/Dockerfile on ``base``; podman's layer cache makes a rebuild of unchanged
    sources quick. Returns the image's name."""
    _run(
        "podman",
        "build",
        "--isolation=chroot",
        "--network=host",
        "--pull=never",
        "--layers",
        *pip_build_options(),
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--file",
        str(ROOT / "deploy" / "Dockerfile"),
        "--ignorefile",
        str(ROOT / "deploy" / "Dockerfile.dockerignore"),
        "--tag",
        IMAGE,
        str(ROOT),
        timeout=1200,
    )
    return IMAGE


@dataclass(frozen=True)
class ImageConfig:
    """What ``docker run`` would start, as whom and with what, and the image's size."""

    entrypoint: list[str]
    cmd: list[str]
    user: str
    env: dict[str, str]
    size_bytes: int


def image_config(image: str) -> ImageConfig:
    inspected = json.loads(_run("podman", "image", "inspect", image))[0]
    config = inspected["Config"]
    return ImageConfig(
        entrypoint=config.get("Entrypoint") or [],
        cmd=config.get("Cmd") or [],
        user=config.get("User", ""),
        env=dict(e.split("=", 1) for e in config.get("Env", [])),
        size_bytes=int(inspected["Size"]),
    )


@contextmanager
def working_container(image: str) -> Iterator[tuple[str, Path]]:
    """A buildah working container of ``image`` and its root filesystem mounted on the host;
    removed afterwards."""
    container = _run("buildah", "from", "--pull=never", "--quiet", image).strip()
    try:
        rootfs = Path(_run("buildah", "mount", container).strip())
        yield container, rootfs
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


def run_command(container: str, env: dict[str, str], command: list[str]) -> list[str]:
    """The command line that runs ``command`` in the container as the image's user, sharing the
    host's network, with ``env`` added to the image's environment."""
    settings = [option for name, value in env.items() for option in ("--env", f"{name}={value}")]
    return [
        "buildah",
        "run",
        "--isolation",
        "chroot",
        "--network",
        "host",
        *settings,
        container,
        "--",
        *command,
    ]
