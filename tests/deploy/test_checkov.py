"""checkov over what we ship: the chart rendered with every value set, every kustomize overlay
and the Dockerfile. Every finding is either fixed or accepted with a reason in
deploy/checkov-accepted.yaml, and every accepted entry still matches a finding (so the list
cannot outlive its reasons).

checkov pins versions that clash with ours, so it lives in its own virtual environment:
``$CHECKOV`` (.ci/run keeps one in the user's cache), else ``.checkov-venv/bin/checkov``
(``python3 -m venv .checkov-venv && .checkov-venv/bin/pip install checkov``), else ``checkov`` on
PATH. Without it
the test skips with a reason, except in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT, VALUE_SETS, Build, unavailable

ACCEPTED = ROOT / "deploy" / "checkov-accepted.yaml"
OVERLAYS = ("dev", "ha", "external", "monitoring")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def checkov() -> str:
    candidates = [os.environ.get("CHECKOV", ""), str(ROOT / ".checkov-venv" / "bin" / "checkov")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("checkov")
    if found is None:
        unavailable("checkov is not installed (see this module's docstring)")
    assert found is not None
    return found


def failed_checks(folder: Path) -> list[dict[str, Any]]:
    """checkov's failed checks on the Kubernetes manifests and Dockerfiles under ``folder``,
    offline (--skip-download: no policy or guideline download)."""
    result = subprocess.run(
        [checkov(), "--directory", str(folder), "--framework", "kubernetes", "dockerfile",
         "--skip-download", "--quiet", "--compact", "--output", "json"],
        capture_output=True, text=True, timeout=500, check=False,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr  # 1: some check failed
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    return [check for report in reports for check in report["results"]["failed_checks"]]


def test_every_finding_is_fixed_or_accepted(render: Any, build: Build, tmp_path: Path) -> None:
    """checkov finds nothing beyond the accepted list, and every accepted entry still fires."""
    for name, values in VALUE_SETS.items():
        docs, _ = render(values)
        (tmp_path / f"chart-{name}.yaml").write_text(yaml.safe_dump_all(docs))
    for overlay in OVERLAYS:
        docs = build(ROOT / "deploy" / "kubernetes" / "overlays" / overlay)
        (tmp_path / f"kustomize-{overlay}.yaml").write_text(yaml.safe_dump_all(docs))
    shutil.copy(ROOT / "deploy" / "Dockerfile", tmp_path / "Dockerfile")

    accepted: dict[str, dict[str, str]] = yaml.safe_load(ACCEPTED.read_text())
    for check_id, entry in accepted.items():
        assert entry.get("reason", "").strip(), f"{check_id} is accepted without a reason"
    unexplained, used = [], set()
    for finding in failed_checks(tmp_path):
        entry = accepted.get(finding["check_id"])
        if entry is not None and re.match(entry.get("where", ""), finding["resource"]):
            used.add(finding["check_id"])
        else:
            unexplained.append(
                f"{finding['check_id']} {finding['check_name']}: {finding['resource']} "
                f"({Path(finding['file_path']).name})"
            )
    assert unexplained == [], "\n".join(unexplained)
    assert set(accepted) == used, f"accepted but no longer found: {set(accepted) - used}"
