"""Uncertainty from nnU-Net's decoder heads on the hippocampus development data, end to end.

1. The 150 labelled cases (MSD Task04 subset) are laid out as an nnU-Net v2 raw dataset (symlinks).
2. ``nnUNetv2_plan_and_preprocess`` plans 3d_fullres; nnU-Net's trainer trains one fold with a
   shortened official trainer (default ``nnUNetTrainer_100epochs``; nnU-Net's validation Dice of the
   fold must reach ``--min-dice``, 0.85 by default, or the script stops).
3. ``layer-ensembles convert nnunet`` makes the layer ensemble of that fold (its decoder heads), and the
   plain baseline (the same archive restricted to its deepest head) is derived from it.
4. ``layer-ensembles evaluate --shifts all`` runs both on the fold's validation cases, clean and under
   the synthetic shifts, and writes the failure-detection report (AULA from the heads against the
   same model's entropy) to ``docs/evaluation/hippocampus_nnunet_fold0``.

A fold takes hours on a CPU; run it on a GPU (``--device cuda``)::

    python Testing/reproduce_nnunet_evaluation.py --work /tmp/nnunet_hippo --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "Task04_Hippocampus_dev"
DATASET_ID = 4
DATASET_NAME = "Dataset004_Hippocampus"
CONFIGURATION = "3d_fullres"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def write_raw(data: Path, raw: Path) -> list[str]:
    """nnU-Net v2's raw layout over the MSD files (symlinks; nothing is copied)."""
    description = json.loads((data / "dataset.json").read_text())
    folder = raw / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    cases = []
    for entry in description["training"]:
        image, label = (data / entry["image"]).resolve(), (data / entry["label"]).resolve()
        case = image.name.removesuffix(".nii.gz")
        for link, target in (
            (folder / "imagesTr" / f"{case}_0000.nii.gz", image),
            (folder / "labelsTr" / label.name, label),
        ):
            if not link.exists():
                link.symlink_to(target)
        cases.append(case)
    labels = {name: int(value) for value, name in description["labels"].items()}
    dataset = {
        "channel_names": {"0": "MRI"},
        "labels": labels,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": DATASET_NAME,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return cases


CPU_PLANS = "nnUNetPlans_cpu"


def write_cpu_plans(folder: Path) -> None:
    """A plans variant a CPU trains in under an hour: nnU-Net's planned topology, half the features, batch 2.

    Stages, kernels, strides, patch, spacing, normalisation and the preprocessed data are nnU-Net's own;
    only the widths (32..256 -> 16..128) and the batch (5 -> 2) change, which cuts an iteration on one core
    from about 8 s to about 1.2 s. nnU-Net trains it with ``-p nnUNetPlans_cpu``, as any custom plans.
    """
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["plans_name"] = CPU_PLANS
    configuration = plans["configurations"][CONFIGURATION]
    configuration["batch_size"] = 2
    kwargs = configuration["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [max(1, f // 2) for f in kwargs["features_per_stage"]]
    (folder / f"{CPU_PLANS}.json").write_text(json.dumps(plans, indent=4))


def run(command: list[str], env: dict[str, str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, env=env, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, required=True, help="nnU-Net's raw/preprocessed/results folders")
    parser.add_argument("--trainer", default="nnUNetTrainer_100epochs")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument(
        "--plans", default="nnUNetPlans", choices=["nnUNetPlans", CPU_PLANS],
        help=f"nnU-Net's plans, or {CPU_PLANS} (half the features, batch 2) for a CPU",
    )  # fmt: skip
    parser.add_argument("--device", default="cuda", help="cuda or cpu (training and evaluation)")
    parser.add_argument("--min-dice", type=float, default=0.85)
    parser.add_argument("--severities", default="2,3", help="shift severities (default 2,3)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "evaluation" / "hippocampus_nnunet_fold0")
    args = parser.parse_args()
    env = dict(os.environ)
    for name in ("raw", "preprocessed", "results"):
        (args.work / name).mkdir(parents=True, exist_ok=True)
        env[f"nnUNet_{name}"] = str(args.work / name)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "LayerEnsemblesSegmentation"), env.get("PYTHONPATH")) if p
    )
    bin_dir = Path(sys.executable).parent
    write_raw(args.data, args.work / "raw")
    if not (args.work / "preprocessed" / DATASET_NAME / "nnUNetPlans.json").is_file():
        run(
            [
                str(bin_dir / "nnUNetv2_plan_and_preprocess"),
                "-d",
                str(DATASET_ID),
                "-c",
                CONFIGURATION,
                "-np",
                "2",
            ],
            env,
        )
    if args.plans == CPU_PLANS:
        write_cpu_plans(args.work / "preprocessed" / DATASET_NAME)
    model = args.work / "results" / DATASET_NAME / f"{args.trainer}__{args.plans}__{CONFIGURATION}"
    fold = model / f"fold_{args.fold}"
    if not (fold / "checkpoint_final.pth").is_file():
        # nnU-Net's trainer, imported from its module (see make_nnunet_fixture.train_fold for why)
        run(
            [sys.executable, str(FIXTURES / "make_nnunet_fixture.py"), "--train-fold", str(args.fold),
             "--trainer", args.trainer, "--dataset-name", DATASET_NAME, "--device", args.device,
             "--plans", args.plans],
            env,
        )  # fmt: skip
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    dice = float(summary["foreground_mean"]["Dice"])
    print(f"nnU-Net validation Dice of fold {args.fold}: {dice:.3f}")
    if dice < args.min_dice:
        print(f"below {args.min_dice}: train longer (--trainer nnUNetTrainer_250epochs)")
        return 1
    splits = json.loads((args.work / "preprocessed" / DATASET_NAME / "splits_final.json").read_text())
    split = args.work / "split.json"
    split.write_text(json.dumps({"validation": splits[args.fold]["val"]}, indent=2))
    cli = [sys.executable, "-m", "LayerEnsemblesLib.cli"]
    le = args.work / f"nnunet_fold{args.fold}_le.pt"
    plain = args.work / f"nnunet_fold{args.fold}_plain.pt"
    run(
        [*cli, "convert", "nnunet", str(model), "--folds", str(args.fold), "--out", str(le), "--overwrite"],
        env,
    )
    run(
        [sys.executable, "-c",
         "import sys; from LayerEnsemblesLib.evaluation.baselines import export_plain;"
         f"export_plain({str(le)!r}, {str(plain)!r}, overwrite=True)"],
        env,
    )  # fmt: skip
    run(
        [*cli, "evaluate", "--model", f"nnU-Net-LE={le}", "--model", f"nnU-Net-plain={plain}",
         "--dataset", str(args.data / "dataset.json"), "--cases", f"{split}:validation", "--shifts", "all",
         "--severities", args.severities, "--pair-curves", "--device", args.device, "--out", str(args.out),
         "--overwrite"],
        env,
    )  # fmt: skip
    print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
