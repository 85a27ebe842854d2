"""The training loop: deep supervision of every head, validation, checkpoints, resume and DDP.

One code path serves a laptop CPU run, a single GPU and ``torchrun --nproc_per_node N``: every rank
reads and preprocesses the data the same way and trains on its share of each epoch's patches; only
rank 0 validates, logs and writes files. A run folder holds ``config.json`` (resolved options and a
data summary), ``split.json``, ``log.txt``, ``metrics.jsonl``, ``best.pt``/``last.pt`` and, at the
end, the exported ``model.pt``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..augment import AugmentationSettings, Augmenter
from ..data import (
    CaseCache,
    DatasetSource,
    PatchDataset,
    image_channels,
    majority_orientation,
    make_split,
    median_spacing,
    read_dataset_json,
    read_folders,
)
from ..errors import InputError
from ..fileio import atomic_write_json, atomic_write_text
from ..losses import DeepSupervisionLoss, resolve_head_weights
from . import distributed
from .checkpointing import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from .config import TrainConfig
from .export import CONFIG_FILE, build_metadata, build_network, export_run, read_run_config
from .rundir import ReplacedRun, check_metrics_log, read_split, run_guarded
from .validation import validate

RUN_FILES = (CONFIG_FILE, "split.json", "log.txt", "metrics.jsonl", "best.pt", "last.pt", "model.pt")
MAX_PATCH = {3: 128, 2: 256}  # cap on the automatic patch size per axis


class RunLog:
    """A concise log: one line per event, to ``log.txt`` and (optionally) the terminal."""

    def __init__(self, path: Path | None, echo: bool) -> None:
        self.path, self.echo = path, echo

    def __call__(self, message: str) -> None:
        if self.path is None:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {message}"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if self.echo:
            print(line, file=sys.stderr, flush=True)


def train(config: TrainConfig | dict, overwrite: bool = False, progress: bool = True) -> Path:
    """Train a new run into ``config.out`` and return the run folder (which ends with ``model.pt``).

    Refuses a folder that already holds a run unless ``overwrite`` (which deletes that run's files).
    """
    config = TrainConfig.from_dict(config) if isinstance(config, dict) else dataclasses.replace(config)
    config.validate()
    context = distributed.setup(config.device)
    try:
        run_dir = Path(config.out)
        existing = [name for name in RUN_FILES if (run_dir / name).exists()]
        if existing and not overwrite:
            raise InputError(
                f"{run_dir}: already holds a training run ({', '.join(existing)}); "
                "use --resume to continue it or --overwrite to replace it"
            )
        # the old run is moved aside, not deleted, and comes back if the new one fails before it starts
        replaced = ReplacedRun(run_dir, existing if context.is_main else [])
        distributed.barrier(context)  # every rank has looked before rank 0 moves anything
        if context.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            replaced.move_aside()
        distributed.barrier(context)
        new_run = lambda: _run(config, context, None, progress, replaced.discard)  # noqa: E731
        return run_guarded(replaced, RUN_FILES, new_run)
    finally:
        distributed.cleanup(context)


def resume(
    run_dir: str | Path,
    epochs: int | None = None,
    device: str | None = None,
    amp: str | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Continue a run from ``last.pt`` (optionally for more epochs, or on another device)."""
    run_dir = Path(run_dir)
    config, _ = read_run_config(run_dir)
    overrides = {
        k: v for k, v in dict(epochs=epochs, device=device, amp=amp, threads=threads).items() if v is not None
    }
    config = dataclasses.replace(config, out=str(run_dir), **overrides)
    config.validate()
    # damaged bookkeeping is refused before anything in the folder changes
    read_split(run_dir)
    check_metrics_log(run_dir)
    context = distributed.setup(config.device)
    try:
        state = load_checkpoint(run_dir / "last.pt", map_location="cpu")
        return _run(config, context, state, progress)
    finally:
        distributed.cleanup(context)


def read_source(config: TrainConfig) -> DatasetSource:
    if config.dataset:
        return read_dataset_json(config.dataset)
    return read_folders(config.images, config.labels, config.class_names)


def resolve_amp(setting: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision only on CUDA: bf16 where the GPU supports it, else fp16 (with a GradScaler)."""
    if device.type != "cuda" or setting == "off":
        return None
    if setting == "fp16" or (setting == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _automatic_patch_size(cases, spatial_dims: int, divisor: int) -> list[int]:
    """The median network-space shape, rounded up to the size divisor and capped (array order)."""
    shapes = np.array([c.label.shape for c in cases])
    if spatial_dims == 2:
        shapes = shapes[:, 1:]
    cap = MAX_PATCH[spatial_dims] // divisor * divisor
    return [int(min(cap, math.ceil(s / divisor) * divisor)) for s in np.median(shapes, axis=0)]


def _run(
    config: TrainConfig,
    context: distributed.DistributedContext,
    state: dict | None,
    progress: bool,
    started: Callable[[], None] = lambda: None,
) -> Path:
    run_dir = Path(config.out)
    log = RunLog(run_dir / "log.txt" if context.is_main else None, echo=progress)
    if config.threads:
        torch.set_num_threads(config.threads)
    _seed_everything(config.seed)
    source = read_source(config)
    cases = sorted(source.cases, key=lambda c: c.case_id)
    split_seed = config.seed if config.split_seed is None else config.split_seed
    if config.max_cases and config.max_cases < len(cases):
        random.Random(split_seed).shuffle(cases)
        cases = sorted(cases[: config.max_cases], key=lambda c: c.case_id)
    if state is None:
        split = make_split([c.case_id for c in cases], config.validation_fraction, split_seed)
    else:
        split = read_split(run_dir)
    by_id = {c.case_id: c for c in cases}
    missing = [i for i in split["train"] + split["validation"] if i not in by_id]
    if missing:
        raise InputError(f"{run_dir / 'split.json'}: case(s) {missing[:3]} are no longer in the data")
    train_files = [by_id[i] for i in split["train"]]
    validation_files = [by_id[i] for i in split["validation"]]

    if config.orientation == "auto":
        config.orientation = majority_orientation(train_files)
    if config.target_spacing == "median":
        config.target_spacing = median_spacing(train_files)
    data = {
        "name": source.name,
        "licence": source.licence,
        "origin": source.origin,
        "class_names": source.class_names,
        "class_values": source.class_values,
        "in_channels": image_channels(train_files[0]),
        "num_cases": len(cases),
        "num_train": len(train_files),
        "num_validation": len(validation_files),
    }
    network = build_network(config, len(source.class_names), data["in_channels"])
    metadata = build_metadata(config, data, network)
    if state is None:
        log(
            f"new run in {run_dir}: {len(train_files)} training and {len(validation_files)} validation cases "
            f"from {source.origin}"
        )
    else:
        log(f"resuming {run_dir} after epoch {state['epoch']}")
    cache = CaseCache(metadata, source.class_values)
    train_cases = cache.get_all(train_files, progress and context.is_main, "preprocessing training cases")
    validation_cases = (
        cache.get_all(validation_files, progress, "preprocessing validation cases") if context.is_main else []
    )
    if not config.patch_size:
        config.patch_size = _automatic_patch_size(train_cases, config.spatial_dims, config.size_divisor)
        metadata = build_metadata(config, data, network)
    if context.is_main:
        atomic_write_json(run_dir / CONFIG_FILE, {"config": config.to_dict(), "data": data}, overwrite=True)
        atomic_write_json(run_dir / "split.json", split, overwrite=True)
    started()  # everything is checked and preprocessed: the new run replaces the old one from here
    return _optimise(config, context, state, progress, log, train_cases, validation_cases, data)


def _optimise(
    config: TrainConfig,
    context: distributed.DistributedContext,
    state: dict | None,
    progress: bool,
    log: RunLog,
    train_cases,
    validation_cases,
    data: dict[str, Any],
) -> Path:
    run_dir, device = Path(config.out), context.device
    torch.manual_seed(config.seed)  # identical initial weights on every rank and every rerun
    network = build_network(config, len(data["class_names"]), data["in_channels"]).to(device)
    model = (
        DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
        if context.distributed
        else network
    )
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_class(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    iterations = config.iterations_per_epoch or max(
        1, math.ceil(len(train_cases) / (config.batch_size * context.world_size))
    )
    total_steps = iterations * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config.schedule, total_steps))
    amp_dtype = resolve_amp(config.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    weights = resolve_head_weights(config.head_weights, network_heads := len(network.head_names))
    loss_function = DeepSupervisionLoss(weights)
    augmenter = Augmenter(AugmentationSettings(flip_axes=config.flip_axes)) if config.augment else None

    start_epoch, best_metric, best_epoch = 0, -math.inf, None
    if state is not None:
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        start_epoch, best_epoch = int(state["epoch"]), state.get("best_epoch")
        best_metric = float(state.get("best_metric", -math.inf))
        if context.is_main:
            _truncate_metrics(run_dir / "metrics.jsonl", start_epoch)

    dataset_length = iterations * config.batch_size * context.world_size
    dataset = PatchDataset(
        train_cases,
        config.patch_size,
        config.spatial_dims,
        dataset_length,
        config.foreground_probability,
        config.seed,
    )
    sampler = DistributedSampler(
        dataset,
        num_replicas=context.world_size,
        rank=context.rank,
        shuffle=True,
        seed=config.seed,
        drop_last=True,
    )
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    if context.is_main and start_epoch == 0:
        log(
            f"network: {config.spatial_dims}D, depth {config.depth}, {network_heads} heads, "
            f"{sum(p.numel() for p in network.parameters()):,} parameters; patch {config.patch_size}, "
            f"batch {config.batch_size} x {context.world_size} rank(s), {iterations} iterations/epoch; "
            f"device {device}, amp {amp_dtype or 'off'}; head weights {[round(w, 3) for w in weights]}"
        )

    for epoch in range(start_epoch, config.epochs):
        started = time.time()
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([config.seed, epoch, context.rank]).generate_state(1)[0])
        )
        model.train()
        loss_sum = torch.zeros((), device=device)
        head_sum = torch.zeros(network_heads, device=device)
        bar = _progress_bar(iterations, f"epoch {epoch + 1}/{config.epochs}", progress and context.is_main)
        for step, (image, label) in enumerate(loader):
            image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
            if augmenter is not None:
                image, label = augmenter(image, label, generator)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = model(image)
            loss, per_head = loss_function(outputs, label)
            diverged_here = not bool(torch.isfinite(loss.detach()))
            if distributed.any_rank(diverged_here, context):  # every rank stops, none waits for the others
                where = (
                    f"loss {float(loss.detach())}" if diverged_here else "a non-finite loss on another rank"
                )
                raise InputError(
                    f"{run_dir}: training diverged ({where}) at epoch {epoch + 1}, step {step + 1}; "
                    "try a lower --lr"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach()
            head_sum += per_head
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if bar is not None:
            bar.close()
        train_loss = float(distributed.mean_over_ranks(loss_sum / iterations, context))
        head_losses = distributed.mean_over_ranks(head_sum / iterations, context).tolist()

        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_head_loss": [None if math.isnan(v) else v for v in head_losses],
            "lr": scheduler.get_last_lr()[0],
        }
        if context.is_main:
            validated = bool(validation_cases) and (
                (epoch + 1) % config.validate_every == 0 or epoch + 1 == config.epochs
            )
            record["val"] = (
                validate(
                    network,
                    validation_cases,
                    config.spatial_dims,
                    config.patch_size,
                    data["class_names"],
                    config.skip_heads,
                    device,
                    amp_dtype,
                )
                if validated
                else None
            )
            record["seconds"] = round(time.time() - started, 2)
            metric = record["val"]["ensemble_dice"] if record["val"] else None
            improved = (metric is not None and metric > best_metric) or not validation_cases
            if improved:
                best_metric, best_epoch = (metric if metric is not None else -train_loss), epoch + 1
            checkpoint = {
                "epoch": epoch + 1,
                "model": network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "best_metric": best_metric,
                "best_epoch": best_epoch,
                "metrics": record,
                "rng": rng_state(),
            }
            save_checkpoint(run_dir / "last.pt", checkpoint)
            if improved:
                save_checkpoint(run_dir / "best.pt", checkpoint)
            with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            log(_epoch_line(record, config.epochs, best_metric, best_epoch))
        distributed.barrier(context)

    if context.is_main:
        model_path = export_run(run_dir, run_dir / "model.pt", checkpoint="best", overwrite=True)
        best = (
            f"best ensemble Dice {best_metric:.4f} at epoch {best_epoch}"
            if validation_cases
            else "no validation cases: exported the last epoch"
        )
        last_validation = record.get("val") if config.epochs > start_epoch else None
        if last_validation:
            by_skip = " ".join(f"{d:.3f}" for d in last_validation["ensemble_dice_by_skip"])
            log(f"last epoch's ensemble Dice when skipping 0, 1, ... shallow heads: {by_skip}")
        log(f"done: {best}; exported {model_path}")
    distributed.barrier(context)
    return run_dir


def _schedule(kind: str, total_steps: int):
    """Learning-rate factor per optimiser step: cosine or polynomial decay to zero, or constant."""
    if kind == "cosine":
        return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if kind == "poly":
        return lambda step: (1 - min(step, total_steps) / total_steps) ** 0.9
    return lambda step: 1.0


def _progress_bar(total: int, description: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return None
    return tqdm(total=total, desc=description, leave=False, disable=None)


def _epoch_line(record: dict[str, Any], epochs: int, best_metric: float, best_epoch: int | None) -> str:
    line = f"epoch {record['epoch']}/{epochs}  loss {record['train_loss']:.4f}  lr {record['lr']:.2e}"
    validation = record.get("val")
    if validation:
        heads = " ".join(f"{d:.2f}" for d in validation["head_dice"])
        line += (
            f"  val ensemble Dice {validation['ensemble_dice']:.4f} (best {best_metric:.4f} @ {best_epoch})"
            f"  heads [{heads}]"
        )
    return line + f"  {record['seconds']:.1f} s"


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """On resume, drop records of epochs after the checkpoint (they will be trained again)."""
    if not path.is_file():
        return
    kept = [json.dumps(record) for record in check_metrics_log(path.parent) if record["epoch"] <= last_epoch]
    atomic_write_text(path, "".join(line + "\n" for line in kept), overwrite=True)
