"""``layer-ensembles train``: deep-supervision training of a layer-ensemble U-Net.

Runs alone or under ``torchrun --nproc_per_node N`` (DistributedDataParallel) with the same options.
"""

from __future__ import annotations

import argparse
import os

from ..errors import InputError


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults that say something (not None, False or a default the help already names)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def _spacing(text: str) -> list[float] | str | None:
    if text in ("median", "native"):
        return None if text == "native" else "median"
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 'median', 'native' or 'X,Y,Z' in mm") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three spacings X,Y,Z in mm")
    return values


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers like 48,64,48") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 40,400") from None


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a layer-ensemble network (deep supervision on every block)",
        description="Train a layer-ensemble U-Net. The run folder receives config.json, split.json, log.txt, "
        "metrics.jsonl, best.pt/last.pt and, at the end, the exported model.pt. Works under "
        "`torchrun --nproc_per_node N` for multi-GPU (or multi-process CPU) training.",
        formatter_class=_DefaultsFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", help="an MSD-style dataset.json")
    data.add_argument(
        "--images", help="folder of images (any SimpleITK format), paired with --labels by file name"
    )
    data.add_argument("--labels", help="folder of label images")
    data.add_argument(
        "--classes",
        help="folder mode: comma-separated class names for label values 0, 1, ... "
        "(default: the values found in the labels)",
    )
    data.add_argument("--max-cases", type=int, help="use a seeded subset of this many cases")
    data.add_argument(
        "--validation-fraction", type=float, default=0.2, help="cases held out, chosen by case id"
    )
    parser.add_argument("--out", required=True, help="the run folder")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from last.pt "
        "(its config.json applies; --epochs, --device, --amp and --threads may be changed)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in --out")

    net = parser.add_argument_group("network")
    net.add_argument(
        "--spatial-dims",
        type=int,
        choices=(2, 3),
        default=3,
        help="3D, or 2D trained on axial slices of the same preprocessed volumes",
    )
    net.add_argument("--depth", type=int, default=5, help="encoder blocks; heads = 2 x depth")
    net.add_argument(
        "--base-channels", type=int, default=16, help="channels of the first block (doubling per level)"
    )
    net.add_argument(
        "--norm",
        choices=("instance", "batch", "group", "none"),
        default="instance",
        help="normalisation layers",
    )
    net.add_argument(
        "--dropout", type=float, default=0.0, help="dropout rate in every block (for MC dropout)"
    )

    prep = parser.add_argument_group("preprocessing")
    prep.add_argument(
        "--target-spacing",
        type=_spacing,
        default="median",
        help="'median' of the training images, 'native', or X,Y,Z in mm",
    )
    prep.add_argument(
        "--orientation",
        default="auto",
        help="orientation code to reorient to (e.g. RAS), 'auto' (the data's most common) or 'none'",
    )
    prep.add_argument(
        "--normalization",
        choices=("percentile", "zscore", "ct", "none"),
        default="percentile",
        help="percentile clip (0.5-99.5) + z-score, z-score, or a CT window (--ct-window)",
    )
    prep.add_argument("--ct-window", type=_floats, help="CENTRE,WIDTH in HU for --normalization ct")
    prep.add_argument(
        "--patch-size",
        type=_ints,
        help="patch in array order (z,y,x; y,x for 2D); default: the median preprocessed volume, capped",
    )

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=None, help="epochs (default 50)")
    opt.add_argument("--batch-size", type=int, default=2, help="patches per step and process")
    opt.add_argument("--iterations", type=int, help="steps per epoch (default: one patch per training case)")
    opt.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    opt.add_argument("--weight-decay", type=float, default=1e-4, help="(decoupled, for AdamW)")
    opt.add_argument("--optimizer", choices=("adamw", "adam"), default="adamw", help="optimiser")
    opt.add_argument(
        "--schedule", choices=("cosine", "poly", "constant"), default="cosine", help="decay per step to zero"
    )
    opt.add_argument(
        "--head-weights",
        default="uniform",
        help="uniform (the paper), linear (growing with depth), last (a plain network) or w1,w2,...",
    )
    opt.add_argument(
        "--skip-heads", type=int, default=0, help="shallow heads left out of the validation ensemble"
    )
    opt.add_argument(
        "--foreground-probability",
        type=float,
        default=0.5,
        help="share of patches centred on a foreground voxel",
    )
    opt.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    opt.add_argument("--flip-axes", type=_ints, help="array axes that may be mirrored (default: all)")
    opt.add_argument("--validate-every", type=int, default=1, help="validate every N epochs")
    opt.add_argument(
        "--seed", type=int, default=0, help="seeds the split, initial weights, patches and augmentation"
    )

    run = parser.add_argument_group("execution")
    run.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default auto)")
    run.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "off"),
        default=None,
        help="mixed precision on CUDA (bf16 where supported, else fp16); ignored on CPU",
    )
    run.add_argument("--threads", type=int, help="CPU threads for torch")
    run.add_argument("--name", help="model name written into the exported model")
    run.add_argument("--quiet", action="store_true", help="no progress bar or log echo on the terminal")
    parser.set_defaults(run=run_command)


def _orientation(text: str) -> str | None:
    if text.lower() == "none":
        return None
    return "auto" if text.lower() == "auto" else text.upper()


def config_from_args(args: argparse.Namespace):
    from ..training import TrainConfig

    config = TrainConfig(
        out=args.out,
        dataset=args.dataset,
        images=args.images,
        labels=args.labels,
        class_names=[c.strip() for c in args.classes.split(",")] if args.classes else None,
        max_cases=args.max_cases,
        spatial_dims=args.spatial_dims,
        depth=args.depth,
        base_channels=args.base_channels,
        norm=args.norm,
        dropout=args.dropout,
        target_spacing=args.target_spacing,
        orientation=_orientation(args.orientation),
        normalization=args.normalization,
        ct_window=args.ct_window,
        patch_size=args.patch_size or [],
        epochs=50 if args.epochs is None else args.epochs,  # 0 is refused by validate, not defaulted
        batch_size=args.batch_size,
        iterations_per_epoch=args.iterations,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        schedule=args.schedule,
        head_weights=args.head_weights,
        foreground_probability=args.foreground_probability,
        augment=not args.no_augment,
        flip_axes=args.flip_axes,
        validation_fraction=args.validation_fraction,
        validate_every=args.validate_every,
        skip_heads=args.skip_heads,
        seed=args.seed,
        device=args.device or "auto",
        amp=args.amp or "auto",
        threads=args.threads,
        name=args.name,
    )
    config.validate("train options")
    return config


def run_command(args: argparse.Namespace) -> int:
    from ..training import resume, train

    if args.resume and args.overwrite:
        raise InputError(f"{args.out}: choose --resume or --overwrite, not both")
    if args.resume:
        run_dir = resume(
            args.out,
            epochs=args.epochs,
            device=args.device,
            amp=args.amp,
            threads=args.threads,
            progress=not args.quiet,
        )
    else:
        run_dir = train(config_from_args(args), overwrite=args.overwrite, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only the first process reports
        print(f"run: {run_dir}\nmodel: {run_dir / 'model.pt'}")
    return 0
