"""The installed distribution: the Lua scripts and the console ship inside the wheel, and CI
tests that wheel."""

from __future__ import annotations

import os
from importlib import resources

import pytest

import broker
from broker.preamble import OPERATIONS, PRELUDE


def test_every_script_is_package_data_when_installed() -> None:
    """In CI the broker is imported from the installed wheel, whose broker/lua holds each script."""
    if os.environ.get("CI") != "true" and "site-packages" not in (broker.__file__ or ""):
        pytest.skip("running from a source tree (editable install); CI checks the wheel")
    assert "site-packages" in (broker.__file__ or "")
    folder = resources.files("broker").joinpath("lua")
    for name in (PRELUDE, *(f"{op}.lua" for op in OPERATIONS)):
        assert folder.joinpath(name).is_file(), name


def test_console_files_are_package_data_when_installed() -> None:
    """The web console's page, stylesheet and script ship in the wheel, beside proxy/ops."""
    if os.environ.get("CI") != "true" and "site-packages" not in (broker.__file__ or ""):
        pytest.skip("running from a source tree (editable install); CI checks the wheel")
    from proxy.ops.console import ASSETS

    folder = resources.files("proxy.ops").joinpath("ui")
    for name in ASSETS:
        assert folder.joinpath(name).is_file(), name
