"""``layer-ensembles info MODEL``: the model's metadata in a readable form."""

from __future__ import annotations

import argparse

from ..contract import PER_CHANNEL, ModelMetadata, read_metadata


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("info", help="print a model file's metadata")
    parser.add_argument("model", help="a model file written by `layer-ensembles export`")
    parser.add_argument("--json", action="store_true", help="print the raw JSON document")
    parser.add_argument(
        "--member",
        metavar="K",
        help="show member K of a deep ensemble with member heads as its own layer ensemble",
    )
    parser.set_defaults(run=run)


def describe_normalization(normalization: dict) -> str:
    def one(entry: dict) -> str:
        settings = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} {v}"
            for k, v in sorted(entry.items())
            if k != "method"
        )
        return f"{entry.get('method')} ({settings})" if settings else str(entry.get("method"))

    if normalization.get("method") == PER_CHANNEL:
        return "; ".join(f"channel {i}: {one(e)}" for i, e in enumerate(normalization["channels"]))
    return one(normalization)


def describe_spacing(spacing: list[float | None] | None) -> str:
    """``native``, three values, or a 2D model's in-plane values with its slices kept (z null)."""
    if spacing is None:
        return "native mm (x, y, z)"
    if spacing[2] is None:
        return f"{spacing[:2]} mm (x, y) in-plane; slice spacing (z) native"
    return f"{spacing} mm (x, y, z)"


def describe(metadata: ModelMetadata) -> str:
    """A summary a radiologist or an engineer can read; the Slicer module shows the same text."""
    kept = metadata.num_heads - metadata.skip_heads
    # a 2D model's patch and divisor are per axial slice (y, x); the engine runs it slice by slice
    dims = "2D, slice by slice on axial (z) slices" if metadata.spatial_dims == 2 else "3D"
    patch_axes = "(y, x) per slice" if metadata.spatial_dims == 2 else "(z, y, x)"
    lines = [
        f"name:           {metadata.name} ({metadata.kind}, format v{metadata.format_version})",
        f"network:        {dims}, {metadata.in_channels} input channel(s)",
        "classes:        " + ", ".join(f"{c.value}={c.name}" for c in metadata.classes),
        f"heads:          {metadata.num_heads} ({', '.join(metadata.head_names)})",
        f"head strides:   {metadata.head_strides}",
        f"kept heads:     {kept} (skip the first {metadata.skip_heads})",
        f"target spacing: {describe_spacing(metadata.target_spacing)}",
        f"orientation:    {metadata.orientation or 'as given'}",
        f"normalisation:  {describe_normalization(metadata.normalization)}",
        f"patch size:     {metadata.patch_size} {patch_axes}, size divisor {metadata.size_divisor}",
        "AULA threshold: "
        + (
            f"{metadata.aula_threshold:.3f} (calibrated)"
            if metadata.aula_threshold is not None
            else "not calibrated"
        ),
        f"decision score: {metadata.decision_score}",
        "estimated Dice: "
        + (
            f"quality map with {len(metadata.quality_map['scores'])} knots "
            f"({metadata.quality_map['score']} -> {metadata.quality_map.get('metric', 'dice_mean')})"
            if metadata.quality_map
            else "no quality map (segment shows AULA alone)"
        ),
    ]
    if "converted_from" in metadata.provenance:
        lines.insert(1, f"converted from: {metadata.provenance['converted_from']}")
    if metadata.kind == "deep_ensemble" and metadata.member_heads > 1:
        kept = metadata.member_heads - metadata.member_skip_heads
        lines += [
            f"members:        {metadata.members} x {metadata.member_heads} heads "
            f"({', '.join(metadata.member_head_names)}); open one with --member K",
            f"member strides: {metadata.member_head_strides}, kept heads {kept} "
            f"(skip the first {metadata.member_skip_heads})",
        ]
    elif metadata.kind == "deep_ensemble":
        lines.append(f"members:        {metadata.members}")
    if metadata.kind == "mc_dropout":
        lines.append(f"samples:        {metadata.samples}")
    for key, value in sorted(metadata.provenance.items()):
        if key == "converted_from":
            continue
        lines.append(f"{key + ':':<15} {value}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    metadata = read_metadata(args.model, args.member)
    print(metadata.to_json() if args.json else describe(metadata))
    return 0
