"""``layer-ensembles``: one console command, one module per sub-command.

Each sub-command module defines ``add_parser(subparsers)`` and ``run(args) -> int`` and is imported
only when its command runs, so ``layer-ensembles info`` does not pay for scipy or matplotlib.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import InputError

COMMANDS = {
    "train": "LayerEnsemblesLib.commands.train",
    "export": "LayerEnsemblesLib.commands.export",
    "info": "LayerEnsemblesLib.commands.info",
    "segment": "LayerEnsemblesLib.commands.segment",
    "evaluate": "LayerEnsemblesLib.commands.evaluate",
    "calibrate": "LayerEnsemblesLib.commands.calibrate",
    "demo": "LayerEnsemblesLib.commands.demo",
    "review": "LayerEnsemblesLib.commands.review",
}


def _available_commands() -> dict[str, object]:
    modules = {}
    for name, module_name in COMMANDS.items():
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:  # a real missing dependency inside the command
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layer-ensembles",
        description="Layer Ensembles: single-pass segmentation uncertainty (Kushibar et al., MICCAI 2022).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in _available_commands().values():
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
