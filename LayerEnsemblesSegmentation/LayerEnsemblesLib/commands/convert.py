"""``layer-ensembles convert nnunet|dynunet``: an existing trained model as a layer-ensemble file."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a trained nnU-Net v2 or MONAI DynUNet model (its decoder heads, no retraining)",
    )
    sources = parser.add_subparsers(dest="source", required=True)
    nnunet = sources.add_parser(
        "nnunet", help="an nnU-Net v2 model folder (plans.json, dataset.json, fold_N/checkpoint_*.pth)"
    )
    nnunet.add_argument(
        "results_dir", help="the model folder (Trainer__Plans__configuration) or the dataset folder above it"
    )
    nnunet.add_argument("--configuration", help="e.g. 3d_fullres (needed when several were trained)")
    nnunet.add_argument(
        "--folds",
        nargs="+",
        default=["0"],
        help="fold(s) to convert (default 0); several, or 'all' (every fold_N): a deep ensemble of the "
        "folds, each member with its heads (one fold's layer ensemble from it: segment --member K, "
        "evaluate --model NAME=FILE#member=K)",
    )
    nnunet.add_argument("--checkpoint", choices=("final", "best"), default="final")
    dynunet = sources.add_parser("dynunet", help="a MONAI DynUNet state dict and its NET.json description")
    dynunet.add_argument("checkpoint", help="the state dict (.pt/.pth), read with weights_only=True")
    dynunet.add_argument("--config", required=True, help="NET.json: constructor arguments and preprocessing")
    for sub in (nnunet, dynunet):
        sub.add_argument("--out", required=True, help="the model file to write")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing model file")
        sub.add_argument("--name", help="model name shown in Slicer and reports")
        sub.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.source == "nnunet":
        from ..convert.nnunet import convert_nnunet

        path = convert_nnunet(
            args.results_dir,
            args.out,
            configuration=args.configuration,
            folds=args.folds,
            checkpoint=args.checkpoint,
            overwrite=args.overwrite,
            name=args.name,
        )
    else:
        from ..convert.dynunet import convert_dynunet

        path = convert_dynunet(
            args.checkpoint, args.config, args.out, overwrite=args.overwrite, name=args.name
        )
    print(path)
    return 0
