"""The one way tests run ``layer-ensembles``: a subprocess that imports THIS checkout first.

A test that ran ``sys.executable -m LayerEnsemblesLib.cli`` without setting ``PYTHONPATH`` would test
whatever copy of the package is installed in the environment (another checkout, an old release) and
pass or fail for the wrong reasons. Every CLI test goes through :func:`run_cli` (or, for shell
pipelines, :func:`cli_command` and :func:`cli_environment`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "LayerEnsemblesSegmentation"


def cli_environment(**extra: str) -> dict[str, str]:
    """The environment with this checkout's engine first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(MODULE_DIR), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def cli_command(*arguments) -> list[str]:
    return [sys.executable, "-m", "LayerEnsemblesLib.cli", *[str(a) for a in arguments]]


def run_cli(*arguments, timeout: int = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``layer-ensembles ARGUMENTS`` as a user would and return the finished process."""
    return subprocess.run(
        cli_command(*arguments),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=cli_environment(**(env or {})),
        timeout=timeout,
    )


def imports_this_checkout() -> bool:
    """What the subprocess imports: used by a test that guards the helper itself."""
    script = "import LayerEnsemblesLib, sys; sys.stdout.write(LayerEnsemblesLib.__file__)"
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=cli_environment(), timeout=60
    )
    return Path(completed.stdout).resolve().is_relative_to(MODULE_DIR.resolve())
