"""Reproduce the paper's comparison on the hippocampus data: LE against Plain, Deep Ensembles and MC dropout.

Given the training run of the layer-ensemble model (its ``config.json`` and ``split.json``), this
script trains the baselines with the same architecture, preprocessing, epochs and held-out split:

- Deep Ensembles: M (default 5) plain networks (only the deepest head trained, ``head_weights="last"``)
  with different seeds, exported as one ``deep_ensemble`` model file;
- MC dropout: one plain network trained with dropout, exported as an ``mc_dropout`` model file with
  T (default 10) samples;
- Plain: the first ensemble member on its own (a network trained without deep supervision), and
  ``LE-last-head``, the layer ensemble restricted to its deepest head;

then runs ``layer-ensembles evaluate`` (the same code path a user runs) on the validation cases,
clean and with every synthetic shift at every severity, and writes the report into ``--out``.
Trained runs and exported files are kept in ``--work``; a rerun reuses what is already there.

Example (a GPU makes the trainings minutes instead of hours)::

    python Testing/reproduce_evaluation.py \\
        --le-run runs/hippocampus-le --dataset ../shared/data/Task04_Hippocampus_dev/dataset.json \\
        --work runs/baselines --out LayerEnsemblesSegmentation/Resources/evaluation --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LayerEnsemblesSegmentation"))

from LayerEnsemblesLib.evaluation import baselines  # noqa: E402
from LayerEnsemblesLib.training import TrainConfig, read_run_config, resume, train  # noqa: E402


def _split(run: Path) -> dict:
    return json.loads((run / "split.json").read_text(encoding="utf-8"))


def train_baseline(
    base: TrainConfig,
    out: Path,
    seed: int,
    split_seed: int,
    dropout: float,
    name: str,
    epochs: int | None,
    device: str | None,
    threads: int | None = None,
) -> Path:
    """Train one plain network like the layer ensemble (same split); reuse a finished run.

    An interrupted run (``last.pt`` without ``model.pt``) is resumed, so that CPU training can be
    spread over several sessions.
    """
    model = out / "model.pt"
    if model.is_file():
        print(f"reusing {model}", flush=True)
        return model
    if (out / "last.pt").is_file():
        print(f"resuming {name} in {out}", flush=True)
        resume(out, epochs=epochs, device=device, threads=threads)
        return model
    config = dataclasses.replace(
        base, out=str(out), seed=seed, split_seed=split_seed, head_weights="last", dropout=dropout, name=name,
        epochs=epochs or base.epochs, device=device or base.device, threads=threads or base.threads,
        # only the deepest head is trained, so it alone must choose the best checkpoint
        skip_heads=2 * base.depth - 1,
    )  # fmt: skip
    print(f"training {name} into {out}", flush=True)
    train(config, overwrite=True)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--le-run", required=True, type=Path, help="the layer ensemble's training run folder")
    parser.add_argument("--le-model", type=Path, help="the LE model file (default: LE_RUN/model.pt)")
    parser.add_argument("--dataset", required=True, help="the dataset.json the layer ensemble was trained on")
    parser.add_argument("--work", required=True, type=Path, help="folder for the baselines' runs and files")
    parser.add_argument("--out", required=True, type=Path, help="folder for cases.csv and the report")
    parser.add_argument("--members", type=int, default=5, help="deep-ensemble members M (default 5)")
    parser.add_argument("--samples", type=int, default=10, help="MC-dropout samples T (default 10)")
    parser.add_argument("--dropout", type=float, default=0.2, help="dropout rate of the MC-dropout network")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the layer ensemble's)")
    parser.add_argument("--device", help="training and evaluation device (default: the LE run's / auto)")
    parser.add_argument("--shifts", default="all", help="synthetic shifts for the evaluation (default all)")
    parser.add_argument("--severities", default="1,2,3", help="shift severities (default 1,2,3)")
    parser.add_argument("--dice-threshold", default="0.8", help="QC threshold on mean Dice (default 0.8)")
    parser.add_argument("--no-le-last-head", action="store_true", help="leave out the LE-last-head method")
    parser.add_argument(
        "--train-only",
        help="train (or resume) only these runs, comma-separated "
        "(plain-seed0, ..., dropout), then stop; lets several processes share the work",
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted evaluation in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an evaluation in --out")
    args = parser.parse_args(argv)

    base, _ = read_run_config(args.le_run)
    le_model = args.le_model or args.le_run / "model.pt"
    split_seed = base.seed if getattr(base, "split_seed", None) is None else base.split_seed
    base = dataclasses.replace(base, dataset=args.dataset, images=None, labels=None)
    args.work.mkdir(parents=True, exist_ok=True)

    runs = {f"plain-seed{i}": (1000 + i, 0.0) for i in range(args.members)}
    runs["dropout"] = (2000, args.dropout)

    def train_run(name: str) -> Path:
        seed, dropout = runs[name]
        work = args.work / name
        return train_baseline(base, work, seed, split_seed, dropout, name, args.epochs, args.device)

    if args.train_only:
        chosen = args.train_only.split(",")
        unknown = sorted(set(chosen) - set(runs))
        if unknown:
            choices = ", ".join(runs)
            raise SystemExit(f"--train-only: unknown run(s) {', '.join(unknown)}; choose from {choices}")
        for name in chosen:
            train_run(name)
        return 0

    members = [train_run(f"plain-seed{i}") for i in range(args.members)]
    dropout_run = train_run("dropout")
    expected = _split(args.le_run)["validation"]
    for model in [*members, dropout_run]:
        if _split(model.parent)["validation"] != expected:
            raise SystemExit(f"{model.parent}: its validation split differs from {args.le_run}; refusing to "
                             "evaluate on cases a baseline was trained on")  # fmt: skip

    files = {
        "DE": args.work / f"deep_ensemble_m{args.members}.pt",
        "MCD": args.work / f"mc_dropout_t{args.samples}.pt",
        "Plain": args.work / "plain.pt",
        "LE-last-head": args.work / "le_last_head.pt",
    }
    if not files["DE"].is_file():
        baselines.export_deep_ensemble(members, files["DE"], name=f"deep-ensemble-m{args.members}")
    if not files["MCD"].is_file():
        name = f"mc-dropout-t{args.samples}"
        baselines.export_mc_dropout(dropout_run, files["MCD"], samples=args.samples, name=name)
    if not files["Plain"].is_file():
        baselines.export_plain(members[0], files["Plain"], name="plain")
    if not files["LE-last-head"].is_file():
        baselines.export_plain(le_model, files["LE-last-head"], name="le-last-head")

    methods = ["LE", "Plain", "DE", "MCD"] + ([] if args.no_le_last_head else ["LE-last-head"])
    command = [sys.executable, "-m", "LayerEnsemblesLib.cli", "evaluate", "--model", f"LE={le_model}"]
    for name in methods[1:]:
        command += ["--model", f"{name}={files[name]}"]
    command += [
        "--dataset", args.dataset, "--cases", f"{args.le_run / 'split.json'}:validation",
        "--shifts", args.shifts, "--severities", args.severities, "--dice-threshold", args.dice_threshold,
        "--reference", "LE", "--out", str(args.out),
    ]  # fmt: skip
    if args.device:
        command += ["--device", args.device]
    if args.resume:
        command.append("--resume")
    if args.overwrite:
        command.append("--overwrite")
    print(" ".join(command), flush=True)
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "LayerEnsemblesSegmentation")}
    return subprocess.call(command, env=environment)


if __name__ == "__main__":
    sys.exit(main())
