"""nnU-Net v2 model folders as layer ensembles, without retraining.

nnU-Net trains with deep supervision: its decoder has one 1x1 segmentation layer per stage
(``UNetDecoder.seg_layers``), all loaded at inference, and ``decoder.deep_supervision = True`` makes
the network return every one of them. The network is rebuilt with nnU-Net's own code (the trainer's
``build_network_architecture`` from the plans), the weights are loaded from the checkpoint with
``torch.load(weights_only=True)``, and the metadata is reproduced from ``plans.json`` and
``dataset.json``: spacing, nnU-Net's axis transpose (done inside the archive), the normalisation per
channel, patch size, classes and label values.

nnunetv2 and dynamic_network_architectures are imported only here, lazily: the Slicer runtime never
needs them; the archive is plain TorchScript.

What is not reproduced (said in the archive's provenance and in docs/nnunet.md): nnU-Net's crop to the
non-zero region and normalisation inside it (``use_mask_for_norm``), its third-order resampling (ours
is linear), padding with zeros to the patch size (ours pads with the minimum to the size divisor),
mirroring test-time augmentation, and logit averaging across folds (ours averages probabilities).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..contract import DEFAULT_COLORS, ClassInfo, ModelMetadata
from ..errors import InputError, first_line
from ..fileio import read_json_object
from .heads import DecoderHeads, export_checked, export_fold_ensemble, isotropic_strides, probe_strides

CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
MODEL_FOLDER = re.compile(r"^(?P<trainer>.+)__(?P<plans>.+)__(?P<configuration>.+)$")
# nnU-Net trains its coarsest decoder output with deep-supervision weight 0 (1e-6 under DDP):
# that head was never trained, so the engine drops it by default.
UNTRAINED_COARSEST_HEADS = 1
# nnU-Net's checkpoints pickle numpy scalars in their training log; these are plain values, not code
NUMPY_SAFE_NAMES = ("scalar", "dtype")


@dataclass
class NnunetModel:
    """One trained configuration: its folder, plans, dataset description and folds."""

    folder: Path
    trainer: str
    plans: dict[str, Any]
    dataset: dict[str, Any]
    configuration: str


def find_model_folder(results: str | Path, configuration: str | None) -> NnunetModel:
    """Accept a model folder (``Trainer__Plans__configuration``) or the dataset folder above it."""
    results = Path(results)
    if not results.is_dir():
        raise InputError(f"{results}: not a folder (give an nnU-Net results or model folder)")
    if (results / "plans.json").is_file():
        folder = results
    else:
        trained = sorted(
            p
            for p in results.iterdir()
            if p.is_dir() and MODEL_FOLDER.match(p.name) and (p / "plans.json").is_file()
        )
        if not trained:
            raise InputError(
                f"{results}: not an nnU-Net model folder (no plans.json here, and no "
                "Trainer__Plans__configuration folder below it)"
            )
        configurations = sorted({MODEL_FOLDER.match(p.name)["configuration"] for p in trained})
        if configuration is None:
            if len(trained) > 1:
                raise InputError(f"{results}: several trained models; choose one with --configuration "
                                 f"({', '.join(configurations)})")  # fmt: skip
            folder = trained[0]
        else:
            matching = [p for p in trained if MODEL_FOLDER.match(p.name)["configuration"] == configuration]
            if not matching:
                raise InputError(
                    f"{results}: configuration {configuration!r} was not trained here "
                    f"(trained: {', '.join(configurations)})"
                )
            if len(matching) > 1:
                raise InputError(
                    f"{results}: configuration {configuration!r} was trained by several trainers or plans "
                    f"({', '.join(p.name for p in matching)}); give that model folder itself"
                )
            folder = matching[0]
    missing = "not found: not an nnU-Net model folder"
    plans = read_json_object(folder / "plans.json", missing)
    dataset = read_json_object(folder / "dataset.json", missing)
    match = MODEL_FOLDER.match(folder.name)
    trainer = match["trainer"] if match else "?"
    available = sorted(plans.get("configurations", {}))
    if configuration is None:
        if match is None or match["configuration"] not in available:
            raise InputError(
                f"{folder}: cannot tell the configuration from the folder name; pass --configuration"
            )
        configuration = match["configuration"]
    if configuration not in available:
        raise InputError(
            f"{folder}: configuration {configuration!r} is not in plans.json ({', '.join(available)})"
        )
    if match is not None and match["configuration"] != configuration:
        raise InputError(
            f"{folder}: this folder holds configuration {match['configuration']!r}, not {configuration!r}"
        )
    return NnunetModel(folder, trainer, plans, dataset, configuration)


def resolve_folds(model: NnunetModel, folds: list[str], checkpoint: str) -> list[str]:
    """Fold names (``0``..``4`` or ``all`` for nnU-Net's train-on-everything fold) that have the checkpoint.

    ``["all"]`` means every ``fold_N`` folder with the checkpoint, as nnUNetPredictor's auto-detection
    (nnU-Net's ``fold_all`` is not one of them; ask for it with ``--folds fold_all``).
    """
    name = CHECKPOINTS[checkpoint]
    if folds == ["all"]:
        found = sorted(
            (p.name[len("fold_") :] for p in model.folder.glob("fold_*") if (p / name).is_file()),
            key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0),
        )
        found = [f for f in found if f != "all"]
        if not found:
            raise InputError(f"{model.folder}: no fold_N/{name} found (this configuration is not trained)")
        return found
    resolved = []
    for fold in folds:
        fold = fold.removeprefix("fold_")
        if not (model.folder / f"fold_{fold}").is_dir():
            raise InputError(f"{model.folder}: fold {fold} is missing (no fold_{fold} folder)")
        if not (model.folder / f"fold_{fold}" / name).is_file():
            raise InputError(f"{model.folder / f'fold_{fold}'}: no {name} (training unfinished?)")
        resolved.append(fold)
    return resolved


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``, allowing numpy scalars and dtypes only (the log pickles them)."""
    # numpy >= 2 pickles numpy._core.multiarray.scalar (numpy.core before); both are the same function
    multiarray = getattr(np, "_core", None) or np.core
    safe: list[Any] = [getattr(multiarray.multiarray, n) for n in NUMPY_SAFE_NAMES]
    safe += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    try:
        with torch.serialization.safe_globals(safe):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling refusal becomes one line
        raise InputError(
            f"{path}: refused to load with weights_only=True ({first_line(error)}); "
            "only tensors and plain values are loaded from nnU-Net checkpoints"
        ) from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise InputError(f"{path}: not an nnU-Net checkpoint (no 'network_weights')")
    return checkpoint


def _plans_manager_class():
    """nnU-Net prints path warnings on import; the converter does not need its data folders."""
    with contextlib.redirect_stdout(io.StringIO()):
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    return PlansManager


def find_trainer_class(name: str, source: str) -> Any:
    """The trainer class, importing only the nnunetv2 module that defines it.

    nnU-Net's own lookup imports every trainer module until it finds the name, so one trainer whose
    optional dependencies do not import (e.g. Primus without a working torchvision) breaks the lookup
    of all. The module is found by its source text first; nnU-Net's lookup (which also searches
    ``nnUNet_extTrainer``) is the fallback.
    """
    import nnunetv2

    root = Path(nnunetv2.__file__).parent
    definition = re.compile(rf"^class\s+{re.escape(name)}\s*\(", re.MULTILINE)
    for path in sorted((root / "training" / "nnUNetTrainer").rglob("*.py")):
        if definition.search(path.read_text(encoding="utf-8", errors="ignore")):
            module = ".".join(("nnunetv2", *path.relative_to(root).with_suffix("").parts))
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    found = getattr(importlib.import_module(module), name, None)
            except Exception as error:  # noqa: BLE001 - a trainer whose own imports fail
                raise InputError(
                    f"{source}: nnU-Net trainer {name!r} cannot be imported ({first_line(error)})"
                ) from None
            if found is not None:
                return found
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

            return recursive_find_trainer_class_by_name(name)
    except Exception:  # noqa: BLE001 - nnU-Net raises RuntimeError or AssertionError for unknown names
        return None


def _require_nnunet() -> None:
    try:
        import nnunetv2  # noqa: F401
    except ModuleNotFoundError:
        raise InputError(
            "converting nnU-Net models needs nnunetv2: pip install 'layer-ensembles[nnunet]'"
        ) from None


def build_network(model: NnunetModel, checkpoint: dict[str, Any], source: str) -> tuple[nn.Module, Any, Any]:
    """nnU-Net's own network for this configuration, with the checkpoint's weights, deep supervision on."""
    plans_manager = _plans_manager_class()(model.plans)
    configuration = plans_manager.get_configuration(model.configuration)
    if configuration.previous_stage_name is not None:
        raise InputError(
            f"{model.folder}: a cascade configuration ({model.configuration}) takes the previous stage's "
            "segmentation as input; convert a single-stage configuration (e.g. 3d_fullres) instead"
        )
    labels = plans_manager.get_label_manager(model.dataset)
    if labels.has_regions:
        raise InputError(
            f"{model.folder}: a region-based model (overlapping regions with sigmoid outputs); "
            "only label-based (softmax) nnU-Net models can be converted"
        )
    trainer_name = checkpoint.get("trainer_name", model.trainer)
    trainer = find_trainer_class(trainer_name, source)
    if trainer is None:
        raise InputError(
            f"{source}: unknown nnU-Net trainer {trainer_name!r} (not in the installed nnunetv2 nor "
            "in nnUNet_extTrainer); install the package that defines it"
        )
    channels = len(model.dataset.get("channel_names", model.dataset.get("modality", {})))
    try:
        network = trainer.build_network_architecture(
            plans_manager,
            configuration,
            channels,
            labels.num_segmentation_heads,
            enable_deep_supervision=True,
        )
    except Exception as error:  # noqa: BLE001 - a plan naming an architecture that is not installed
        raise InputError(
            f"{source}: cannot build the network {configuration.network_arch_class_name!r} "
            f"({first_line(error)})"
        ) from None
    decoder = getattr(network, "decoder", None)
    if decoder is None or not hasattr(decoder, "deep_supervision") or not hasattr(decoder, "seg_layers"):
        raise InputError(
            f"{source}: architecture {configuration.network_arch_class_name!r} has no decoder with "
            "deep-supervision outputs (decoder.seg_layers); it cannot be a layer ensemble"
        )
    try:
        network.load_state_dict(checkpoint["network_weights"])
    except RuntimeError as error:
        raise InputError(f"{source}: weights do not fit the planned network ({first_line(error)})") from None
    network.eval()
    return network, plans_manager, configuration


def _all_decoder_outputs(network: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    outputs = network(x)
    return list(outputs)[::-1]  # nnU-Net returns full resolution first; the contract wants shallow first


def normalization_for(
    plans_manager: Any, configuration: Any, source: str
) -> tuple[dict[str, Any], list[str]]:
    """The contract's per-channel normalisation reproducing nnU-Net's schemes, and any caveats."""
    properties = plans_manager.foreground_intensity_properties_per_channel
    channels, notes = [], []
    for index, (scheme, masked) in enumerate(
        zip(configuration.normalization_schemes, configuration.use_mask_for_norm, strict=True)
    ):
        if scheme == "ZScoreNormalization":
            channels.append({"method": "zscore"})
            if masked:
                notes.append(
                    f"channel {index}: nnU-Net normalises inside the non-zero region only "
                    "(use_mask_for_norm); here over the whole image"
                )
        elif scheme == "CTNormalization":
            stats = properties[str(index)]
            channels.append(
                {
                    "method": "clip_zscore",
                    "lower": float(stats["percentile_00_5"]),
                    "upper": float(stats["percentile_99_5"]),
                    "mean": float(stats["mean"]),
                    "std": float(stats["std"]),
                }
            )
        elif scheme == "NoNormalization":
            channels.append({"method": "none"})
        else:
            raise InputError(f"{source}: nnU-Net normalisation {scheme!r} (channel {index}) is not supported")
    if len(channels) == 1:
        return channels[0], notes
    return {"method": "per_channel", "channels": channels}, notes


def convert_nnunet(
    results: str | Path,
    out: str | Path,
    configuration: str | None = None,
    folds: list[str] | None = None,
    checkpoint: str = "final",
    overwrite: bool = False,
    name: str | None = None,
) -> Path:
    """Write the folder's fold(s) as a layer-ensemble archive (one fold) or a deep ensemble (several)."""
    _require_nnunet()
    if checkpoint not in CHECKPOINTS:
        raise InputError(f"checkpoint {checkpoint!r}: choose one of {sorted(CHECKPOINTS)}")
    model = find_model_folder(results, configuration)
    fold_names = resolve_folds(model, folds or ["0"], checkpoint)
    members, metadata, second_shape = [], None, None
    for fold in fold_names:
        path = model.folder / f"fold_{fold}" / CHECKPOINTS[checkpoint]
        state = load_checkpoint(path)
        network, plans_manager, config = build_network(model, state, str(path))
        heads, fold_metadata, second_shape = _wrap(network, plans_manager, config, model, str(path))
        fold_metadata.provenance.update(_provenance(model, fold, checkpoint, state))
        for note in fold_metadata.provenance.get("not_reproduced", []) if not members else []:
            warnings.warn(f"{model.folder}: not reproduced: {note}", RuntimeWarning, stacklevel=2)
        members.append(heads)
        metadata = metadata or fold_metadata
    assert metadata is not None and second_shape is not None
    metadata.name = name or f"nnunet-{model.plans.get('dataset_name', 'model')}-{model.configuration}"
    if len(members) == 1:
        return export_checked(members[0], metadata, out, overwrite, second_shape)
    metadata.provenance["converted_from"] = (
        f"nnU-Net configuration {model.configuration}, folds {', '.join(fold_names)} ({model.folder})"
    )
    metadata.provenance["fold"] = ", ".join(fold_names)
    return export_fold_ensemble(
        members, metadata, out, [f"fold_{f}" for f in fold_names], overwrite, second_shape
    )


def _wrap(
    network: nn.Module, plans_manager: Any, configuration: Any, model: NnunetModel, source: str
) -> tuple[DecoderHeads, ModelMetadata, list[int]]:
    forward_axes = list(plans_manager.transpose_forward)
    backward_axes = list(plans_manager.transpose_backward)
    patch = list(configuration.patch_size)  # in nnU-Net's (transposed) axis order
    spatial_dims = len(patch)
    channels = len(model.dataset.get("channel_names", model.dataset.get("modality", {})))
    strides = probe_strides(network, _all_decoder_outputs, [1, channels, *patch], source)
    divisor_network = [
        int(np.prod([p[a] for p in configuration.pool_op_kernel_sizes])) for a in range(spatial_dims)
    ]
    if spatial_dims == 3:
        axes = forward_axes
        to_engine = backward_axes  # network axis order -> engine (z, y, x) order
    else:
        if forward_axes[0] != 0:
            raise InputError(
                f"{source}: a 2D configuration slicing along array axis {forward_axes[0]} (transpose "
                f"{forward_axes}); the engine runs 2D models on axial slices (axis 0)"
            )
        axes = [a - 1 for a in forward_axes[1:]]
        to_engine = [axes.index(a) for a in range(2)]
    engine_strides = [[s[a] for a in to_engine] for s in strides]
    finest, scales = isotropic_strides(engine_strides)
    heads = DecoderHeads(network, _all_decoder_outputs, axes if axes != sorted(axes) else None, scales)
    spacing_network = list(configuration.spacing)
    if spatial_dims == 3:
        spacing_zyx: list[float | None] = [spacing_network[a] for a in backward_axes]
    else:  # nnU-Net resamples a 2D configuration's slices in-plane only: the slice spacing (z) is kept
        spacing_zyx = [None, *[spacing_network[axes.index(a)] for a in range(2)]]
    normalization, notes = normalization_for(plans_manager, configuration, source)
    labels = plans_manager.get_label_manager(model.dataset)
    classes = _classes(model.dataset, labels, source)
    metadata = ModelMetadata(
        spatial_dims=spatial_dims,
        in_channels=channels,
        classes=classes,
        head_names=[f"decoder{i}" for i in range(len(strides))],
        head_strides=finest,
        skip_heads=UNTRAINED_COARSEST_HEADS if len(strides) > 1 else 0,
        target_spacing=spacing_zyx[::-1],
        orientation=None,
        normalization=normalization,
        patch_size=[patch[a] for a in to_engine],
        size_divisor=[divisor_network[a] for a in to_engine],
        pad_to_patch=True,  # nnU-Net pads images smaller than the patch, with zeros after normalisation
        pad_value=0.0,
        provenance={"not_reproduced": notes} if notes else {},
    )
    second = [p + d for p, d in zip(metadata.patch_size, metadata.size_divisor, strict=True)]
    if spatial_dims == 2:
        second = [2, channels, *second]
    else:
        second = [1, channels, *second]
    return heads, metadata, second


def _classes(dataset: dict[str, Any], labels: Any, source: str) -> list[ClassInfo]:
    names = {int(v): k for k, v in dataset["labels"].items() if k != "ignore"}
    values = [int(v) for v in labels.all_labels if v != labels.ignore_label]
    if values != list(range(len(values))):
        raise InputError(f"{source}: label values {values} are not consecutive from 0 as nnU-Net requires")
    return [ClassInfo(names[v], v, list(DEFAULT_COLORS[v % len(DEFAULT_COLORS)])) for v in values]


def _provenance(model: NnunetModel, fold: str, checkpoint: str, state: dict[str, Any]) -> dict[str, Any]:
    import nnunetv2  # noqa: PLC0415

    try:
        from importlib.metadata import version

        nnunet_version = version("nnunetv2")
    except Exception:  # noqa: BLE001
        nnunet_version = getattr(nnunetv2, "__version__", "?")
    return {
        "converted_from": f"nnU-Net configuration {model.configuration}, fold {fold} ({model.folder})",
        "nnunet_dataset": model.plans.get("dataset_name", "?"),
        "nnunet_trainer": state.get("trainer_name", model.trainer),
        "nnunet_plans": model.plans.get("plans_name", "?"),
        "configuration": model.configuration,
        "fold": fold,
        "checkpoint": CHECKPOINTS[checkpoint],
        "epochs": int(state.get("current_epoch", 0)),
        "nnunet_version": nnunet_version,
        "library_version": __version__,
        "torch_version": torch.__version__,
        "converted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
