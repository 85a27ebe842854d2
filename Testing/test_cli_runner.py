"""CLI tests run this checkout: one helper (``cli_runner``) puts it first on ``PYTHONPATH``."""

from __future__ import annotations

import re
from pathlib import Path

from cli_runner import imports_this_checkout

TESTING = Path(__file__).resolve().parent
# torchrun starts the CLI itself (test_ddp); it gets the same environment from cli_runner
LAUNCHERS = {"cli_runner.py", "test_ddp.py", "test_cli_runner.py", "test_segment_archive.py"}  # torchrun -m


def test_the_cli_subprocess_imports_this_checkout():
    assert imports_this_checkout()


def test_no_test_starts_the_cli_on_its_own():
    """A test running ``-m LayerEnsemblesLib.cli`` itself may test an installed copy instead."""
    pattern = re.compile(r'"LayerEnsemblesLib\.cli"|\["layer-ensembles"')
    offenders = [
        path.name
        for path in sorted(TESTING.glob("test_*.py"))
        if path.name not in LAUNCHERS and pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    assert "cli_environment()" in (TESTING / "test_ddp.py").read_text(encoding="utf-8")
    assert "cli_environment(" in (TESTING / "test_segment_archive.py").read_text(encoding="utf-8")
