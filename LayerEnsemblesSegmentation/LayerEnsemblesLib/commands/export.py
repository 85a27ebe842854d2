"""``layer-ensembles export RUN_DIR``: write a training run's checkpoint as a TorchScript model file."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a training run as a model file (TorchScript + metadata)"
    )
    parser.add_argument("run_dir", help="a folder written by `layer-ensembles train`")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--out", help="the model file to write (default RUN_DIR/model.pt)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    parser.add_argument("--skip-heads", type=int, help="default number of shallow heads the engine drops")
    parser.add_argument("--name", help="model name shown in Slicer and reports")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training import export_run

    path = export_run(
        args.run_dir,
        args.out,
        checkpoint=args.checkpoint,
        overwrite=args.overwrite,
        skip_heads=args.skip_heads,
        name=args.name,
    )
    print(path)
    return 0
