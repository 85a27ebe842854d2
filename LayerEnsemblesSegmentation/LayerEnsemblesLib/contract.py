"""The model file: a TorchScript archive plus one JSON metadata document.

Everything a consumer (the CLI, the Slicer module, a colleague's script) needs to apply a model lives
in the archive, so that preprocessing at inference is reproducible from the file alone. Loading never
unpickles: only ``torch.jit.load`` touches a model file. The format is documented for outside
producers in ``docs/model-contract.md``; keep the two in step.
"""

from __future__ import annotations

import copy
import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import InputError, first_line
from .fileio import atomic_write_bytes

METADATA_FILE = "layer_ensembles.json"
FORMAT_NAME = "layer-ensembles-model"
FORMAT_VERSION = 1
MODEL_KINDS = ("layer_ensemble", "deep_ensemble", "mc_dropout")
NORMALIZATION_METHODS = ("percentile_zscore", "ct_window", "zscore", "none")
HEAD_UPSAMPLING = "linear_align_corners_false"
DEFAULT_COLORS = [
    (0, 0, 0),
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
]


@dataclass
class ClassInfo:
    name: str
    value: int
    color: list[int]


@dataclass
class ModelMetadata:
    """The contract's JSON document. Field meanings are in docs/model-contract.md."""

    spatial_dims: int
    in_channels: int
    classes: list[ClassInfo]
    head_names: list[str]
    head_strides: list[int]
    skip_heads: int = 0
    target_spacing: list[float] | None = None
    orientation: str | None = None
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"method": "percentile_zscore", "lower": 0.5, "upper": 99.5}
    )
    patch_size: list[int] = field(default_factory=list)
    size_divisor: list[int] = field(default_factory=list)
    aula_threshold: float | None = None
    quality_map: dict[str, Any] | None = None  # score -> estimated Dice; see LayerEnsemblesLib.quality
    decision_score: str = "aula_norm_union"  # see LayerEnsemblesLib.decision_scores
    kind: str = "layer_ensemble"
    members: int = 1
    samples: int = 1
    head_upsampling: str = HEAD_UPSAMPLING
    name: str = "model"
    provenance: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_heads(self) -> int:
        return len(self.head_names)

    @property
    def foreground_classes(self) -> list[ClassInfo]:
        return [c for c in self.classes if c.value != 0]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, document: dict[str, Any], source: str = "metadata") -> ModelMetadata:
        document = copy.deepcopy(document)
        if document.get("format") != FORMAT_NAME:
            raise InputError(f"{source}: not a layer-ensembles model (format is {document.get('format')!r})")
        version = document.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise InputError(
                f"{source}: format version {version!r} is newer than this reader ({FORMAT_VERSION})"
            )
        try:
            document["classes"] = [ClassInfo(**c) for c in document["classes"]]
            known = {f for f in cls.__dataclass_fields__}
            metadata = cls(**{k: v for k, v in document.items() if k in known})
        except (KeyError, TypeError) as error:
            raise InputError(f"{source}: malformed metadata ({error})") from None
        metadata.validate(source)
        return metadata

    def validate(self, source: str = "metadata") -> None:
        """Reject documents a consumer could not apply, so errors surface at load time, not mid-run."""
        problems = []
        if self.spatial_dims not in (2, 3):
            problems.append(f"spatial_dims must be 2 or 3, not {self.spatial_dims}")
        if self.in_channels < 1:
            problems.append("in_channels must be positive")
        if len(self.classes) < 2:
            problems.append("at least two classes (background and one structure) are needed")
        values = [c.value for c in self.classes]
        if len(set(values)) != len(values) or 0 not in values:
            problems.append("class values must be unique and include 0 (background)")
        if len(self.head_names) != len(self.head_strides) or not self.head_names:
            problems.append("head_names and head_strides must be non-empty and of equal length")
        if not 0 <= self.skip_heads < max(len(self.head_names), 1):
            problems.append(
                f"skip_heads {self.skip_heads} must leave at least one of {len(self.head_names)} heads"
            )
        if self.kind not in MODEL_KINDS:
            problems.append(f"kind {self.kind!r} is not one of {MODEL_KINDS}")
        if self.normalization.get("method") not in NORMALIZATION_METHODS:
            problems.append(f"normalization method must be one of {NORMALIZATION_METHODS}")
        for name in ("patch_size", "size_divisor"):
            value = getattr(self, name)
            if len(value) != self.spatial_dims or any(v < 1 for v in value):
                problems.append(f"{name} must hold {self.spatial_dims} positive integers")
        if self.target_spacing is not None and (
            len(self.target_spacing) != 3 or min(self.target_spacing) <= 0
        ):
            problems.append("target_spacing must be null or three positive numbers (x, y, z in mm)")
        if self.aula_threshold is not None and not 0 <= self.aula_threshold <= 1:
            problems.append("aula_threshold must be in [0, 1]")
        from .quality import calibration_problems  # decision_score and quality_map

        problems += calibration_problems(self.decision_score, self.quality_map)
        if self.head_upsampling != HEAD_UPSAMPLING:
            problems.append(f"head_upsampling {self.head_upsampling!r} is not supported")
        if problems:
            raise InputError(f"{source}: invalid metadata: {'; '.join(problems)}")


def default_classes(names: list[str]) -> list[ClassInfo]:
    return [ClassInfo(n, i, list(DEFAULT_COLORS[i % len(DEFAULT_COLORS)])) for i, n in enumerate(names)]


def export_model(
    model: torch.nn.Module,
    metadata: ModelMetadata,
    path: str | Path,
    overwrite: bool = False,
    check_shape: list[int] | None = None,
) -> Path:
    """Script (or, for hooked models, trace) ``model`` and write it with ``metadata`` embedded.

    The archive is checked against the eager model on a random input before it is written, because a
    trace can silently bake in shapes; it is written to a temporary name and renamed into place.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists (pass overwrite to replace it)")
    metadata.validate(str(path))
    model = model.eval().cpu()
    shape = check_shape or [1, metadata.in_channels, *metadata.patch_size]
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    try:
        scripted = torch.jit.script(model)
    except Exception:  # hooks and Python-side dicts cannot be scripted: trace instead
        scripted = torch.jit.trace(model, example, check_trace=False, strict=False)
    with torch.no_grad():
        expected = model(example)
        actual = scripted(example)
    if len(expected) != len(actual) or len(actual) != metadata.num_heads:
        raise InputError(
            f"{path}: the model returns {len(actual)} outputs but the metadata declares "
            f"{metadata.num_heads} heads"
        )
    worst = max(float((a - e).abs().max()) for a, e in zip(actual, expected, strict=True))
    if worst > 1e-4:
        raise InputError(f"{path}: exported model differs from the eager model by {worst:.2e}")
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files={METADATA_FILE: metadata.to_json()})
    atomic_write_bytes(path, buffer.getvalue(), overwrite=overwrite)
    return path


def read_metadata(path: str | Path) -> ModelMetadata:
    """Read only the metadata, without building the network (fast, for ``info`` and the Slicer summary)."""
    path = _check_archive(Path(path))
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(f"extra/{METADATA_FILE}")]
        if not names:
            raise InputError(
                f"{path}: TorchScript archive without layer-ensembles metadata ({METADATA_FILE})"
            )
        document = archive.read(names[0])
    return _parse(document, path)


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.jit.ScriptModule, ModelMetadata]:
    """Load a model file as TorchScript (never by unpickling) and return it with its metadata."""
    path = _check_archive(Path(path))
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except RuntimeError as error:
        raise InputError(
            f"{path}: corrupt or unsupported TorchScript archive ({first_line(error)})"
        ) from None
    if not extra[METADATA_FILE]:
        raise InputError(f"{path}: TorchScript archive without layer-ensembles metadata ({METADATA_FILE})")
    metadata = _parse(extra[METADATA_FILE], path)
    module.eval()
    return module, metadata


def _parse(document: str | bytes, path: Path) -> ModelMetadata:
    try:
        parsed = json.loads(document)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: metadata is not valid JSON ({error})") from None
    return ModelMetadata.from_dict(parsed, str(path))


def _check_archive(path: Path) -> Path:
    """Say what a file is when it is not one of ours, before torch tries (and before any unpickling)."""
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic[:1] == b"\x80":
        raise InputError(
            f"{path}: a pickle file (a checkpoint or state dict), not a TorchScript model; "
            "export it with `layer-ensembles export`"
        )
    if magic != b"PK\x03\x04":
        raise InputError(
            f"{path}: not a TorchScript archive (expected a zip file from `layer-ensembles export`)"
        )
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: truncated or corrupt archive")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if any(n.endswith("/data.pkl") for n in names) and not any(
            n.endswith("/constants.pkl") for n in names
        ):
            raise InputError(
                f"{path}: a torch.save checkpoint (zip of pickles), not a TorchScript model; "
                "export it with `layer-ensembles export`"
            )
        # torch.jit.load does not verify checksums: a damaged weight would load silently as wrong numbers
        try:
            damaged = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise InputError(f"{path}: truncated or corrupt archive ({error})") from None
        if damaged is not None:
            raise InputError(f"{path}: corrupt archive ({damaged} fails its checksum)")
    return path
