"""``layer-ensembles demo --out DIR``: the shipped hippocampus model on a real brain MRI, end to end.

The MNI152 2009 T1 template that the ``nilearn`` wheel ships is a real 1 mm whole-brain MRI that any
machine can install from PyPI. The hippocampus model was trained on crops around the hippocampus,
so the demo shows the crop-to-ROI workflow that whole-brain scans need: it crops a box around each
hippocampus (MNI coordinates), then runs ``segment`` on both crops, which writes the segmentations,
heatmaps, reports and a summary ranked by AULA.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputError
from ..fileio import atomic_write_image
from . import segment

DEMO_MODEL = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "hippocampus_le3d.pt"
TEMPLATE = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
# approximate centres of the left and right hippocampus in MNI space (RAS, mm)
HIPPOCAMPUS_CENTRES_RAS = {
    "left_hippocampus": (-26.0, -22.0, -14.0),
    "right_hippocampus": (28.0, -22.0, -14.0),
}
# about the median size of the training crops (x, y, z), mm at 1 mm spacing
CROP_SIZE = (36, 50, 36)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="segment both hippocampi of the MNI152 template with the shipped model",
        description="Crop the MNI152 2009 T1 template (shipped by nilearn) around the left and right "
        "hippocampus and segment both crops with the shipped hippocampus model.",
    )
    parser.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    parser.add_argument(
        "--model", default=str(DEMO_MODEL), help="model file (default: the shipped demo model)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(run=run)


def template_path() -> Path:
    """The template inside the installed nilearn package (an optional extra: `pip install .[demo]`)."""
    try:
        import nilearn
    except ModuleNotFoundError:
        raise InputError(
            "the demo needs nilearn for its MNI152 template: pip install 'layer-ensembles[demo]'"
        ) from None
    path = Path(nilearn.__file__).parent / TEMPLATE
    if not path.is_file():
        raise InputError(f"{path}: MNI152 template not found in this nilearn version")
    return path


def crop_around(
    image: sitk.Image, centre_ras: tuple[float, float, float], size: tuple[int, int, int]
) -> sitk.Image:
    """A box of ``size`` voxels centred on a RAS point (ITK works in LPS, hence the sign flips)."""
    centre_lps = (-centre_ras[0], -centre_ras[1], centre_ras[2])
    centre = image.TransformPhysicalPointToIndex(centre_lps)
    start = [max(0, min(c - s // 2, n - s)) for c, s, n in zip(centre, size, image.GetSize(), strict=False)]
    return sitk.RegionOfInterest(image, list(size), start)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not Path(args.model).is_file():
        raise InputError(f"{args.model}: demo model not found (train and export one, or pass --model)")
    template = sitk.ReadImage(str(template_path()))
    inputs = []
    for name, centre in HIPPOCAMPUS_CENTRES_RAS.items():
        path = out / "inputs" / f"mni152_{name}.nii.gz"
        atomic_write_image(path, crop_around(template, centre, CROP_SIZE), overwrite=args.overwrite)
        inputs.append(str(path))
    parser = argparse.ArgumentParser()
    segment.add_parser(parser.add_subparsers())
    segment_args = parser.parse_args(
        [
            "segment",
            *inputs,
            "--model",
            args.model,
            "--out",
            str(out),
            "--device",
            args.device,
            "--maps",
            "all",
        ]
        + (["--overwrite"] if args.overwrite else [])
    )
    status = segment.run(segment_args)
    print(f"\nOutputs in {out}/ (load the inputs and *_seg / *_agreement files in 3D Slicer):")
    for path in inputs:
        case = segment.case_name(Path(path))
        report_path = out / f"{case}_report.json"
        if report_path.is_file():
            report = json.loads(report_path.read_text())
            print(
                f"  {case}: AULA {report['score']:.3f} ({report.get('score_name', 'aula_norm_union')}) "
                f"-> {report['decision']} (threshold {report['threshold']:.3f}); "
                f"{report.get('estimated_dice_text', '')}"
            )
    return status
