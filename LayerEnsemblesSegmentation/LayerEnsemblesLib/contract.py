"""The model file: a TorchScript archive plus one JSON metadata document.

Everything a consumer (the CLI, the Slicer module, a colleague's script) needs to apply a model lives
in the archive, so that preprocessing at inference is reproducible from the file alone. Loading never
unpickles: only ``torch.jit.load`` touches a model file. The format is documented for outside
producers in ``docs/model-contract.md``; keep the two in step.
"""

from __future__ import annotations

import copy
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from .errors import InputError, first_line
from .fileio import atomic_write_bytes
from .metadata_schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    HEAD_UPSAMPLING,
    MEMBER_HEAD_FIELDS,
    PER_CHANNEL,
    check_document,
)

METADATA_FILE = "layer_ensembles.json"
MAX_METADATA_BYTES = 1 << 20  # the shipped model's document is 2.4 kB; anything near this is not metadata
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
    target_spacing: list[float | None] | None = None  # (x, y, z) mm; a 2D model may leave z None
    orientation: str | None = None
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"method": "percentile_zscore", "lower": 0.5, "upper": 99.5}
    )
    patch_size: list[int] = field(default_factory=list)
    size_divisor: list[int] = field(default_factory=list)
    # padding of the normalised input: at least to the patch size (as nnU-Net and MONAI do, so that a small
    # image is never seen through a smaller window), and with this value instead of each channel's minimum
    pad_to_patch: bool = False
    pad_value: float | None = None
    aula_threshold: float | None = None
    quality_map: dict[str, Any] | None = None  # score -> estimated Dice; see LayerEnsemblesLib.quality
    decision_score: str = "aula_norm_union"  # see LayerEnsemblesLib.decision_scores
    kind: str = "layer_ensemble"
    members: int = 1
    samples: int = 1
    # a deep ensemble of layer ensembles (nnU-Net's folds): each member's own heads, shallow to deep, reached
    # through the archive's ``member_heads(x, member)`` method; ``forward`` still returns the final heads
    member_heads: int = 1
    member_head_names: list[str] = field(default_factory=list)
    member_head_strides: list[int] = field(default_factory=list)
    member_skip_heads: int = 0
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
        document = asdict(self)
        if self.member_heads == 1:  # a model without member heads is written as before these fields existed
            for name in ("member_heads", *MEMBER_HEAD_FIELDS):
                document.pop(name)
        return json.dumps(document, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, document: Any, source: str = "metadata") -> ModelMetadata:
        """The metadata of a parsed JSON document, after :func:`check_document` has vetted every field."""
        check_document(document, source)
        document = copy.deepcopy(document)
        known = set(cls.__dataclass_fields__)
        class_fields = set(ClassInfo.__dataclass_fields__)
        document["classes"] = [
            ClassInfo(**{k: v for k, v in c.items() if k in class_fields}) for c in document["classes"]
        ]
        return cls(**{k: v for k, v in document.items() if k in known})

    def validate(self, source: str = "metadata") -> None:
        """Reject documents a consumer could not apply, so errors surface at load time, not mid-run."""
        try:
            document = json.loads(self.to_json())  # what a reader will see, NaN included
        except (TypeError, ValueError) as error:  # e.g. numpy integers in a size list
            raise InputError(
                f"{source}: invalid metadata: not JSON-serialisable ({first_line(error)})"
            ) from None
        check_document(document, source)


def channel_normalizations(normalization: dict[str, Any], channels: int) -> list[dict[str, Any]]:
    """One normalisation per input channel: the shared one repeated, or the per-channel list."""
    if normalization.get("method") == PER_CHANNEL:
        return list(normalization["channels"])
    return [normalization] * channels


def default_classes(names: list[str]) -> list[ClassInfo]:
    return [ClassInfo(n, i, list(DEFAULT_COLORS[i % len(DEFAULT_COLORS)])) for i, n in enumerate(names)]


def export_model(
    model: torch.nn.Module,
    metadata: ModelMetadata,
    path: str | Path,
    overwrite: bool = False,
    check_shape: list[int] | None = None,
    trace: bool | None = None,
) -> Path:
    """Script ``model`` (trace it only when it sets ``export_by_tracing`` or ``trace=True``) and write it
    with ``metadata`` embedded.

    The saved archive is reloaded and compared with the eager model on the patch size and on a second
    size (see :mod:`.scripting`) before it is written to a temporary name and renamed into place.
    ``check_shape`` ([N, C, *spatial]) replaces the patch size as the first check input.
    """
    from .scripting import archive_bytes, check_shapes

    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists (pass overwrite to replace it)")
    metadata.validate(str(path))
    first = list(check_shape[2:]) if check_shape else list(metadata.patch_size)
    data = archive_bytes(
        model,
        metadata.in_channels,
        check_shapes(first, metadata.size_divisor),
        metadata.num_heads,
        {METADATA_FILE: metadata.to_json()},
        trace,
        str(path),
    )
    atomic_write_bytes(path, data, overwrite=overwrite)
    return path


def read_metadata(path: str | Path, member: int | str | None = None) -> ModelMetadata:
    """The metadata every reader uses (``info``, ``segment``, the Slicer summary), without the network.

    The archive must hold exactly one metadata document, at the place TorchScript reads it from, and
    its size is checked in the zip directory before a byte is inflated: a small file must not be able
    to make a reader allocate gigabytes, and a second document must not let two readers disagree.
    ``member`` (an index or a member name) gives the ``layer_ensemble`` metadata of that member of a
    deep ensemble with member heads (see :mod:`.members`).
    """
    metadata = _read_metadata(path)
    if member is None:
        return metadata
    from .members import member_metadata

    return member_metadata(metadata, member, str(path))


def _read_metadata(path: str | Path) -> ModelMetadata:
    path = _check_archive(Path(path))
    with zipfile.ZipFile(path) as archive:
        member = _metadata_member(archive, path)
        with archive.open(member) as handle:
            document = handle.read(MAX_METADATA_BYTES + 1)
    if len(document) > MAX_METADATA_BYTES:  # the directory's size was a lie
        raise InputError(f"{path}: metadata document larger than {MAX_METADATA_BYTES} bytes")
    return _parse(document, path)


def load_model(
    path: str | Path, device: str | torch.device = "cpu", member: int | str | None = None
) -> tuple[torch.jit.ScriptModule, ModelMetadata]:
    """Load a model file as TorchScript (never by unpickling) and return it with its metadata.

    The metadata comes from :func:`read_metadata`, the same bytes ``info`` shows; TorchScript is not
    asked to read the document again. ``member`` opens one member of a deep ensemble with member heads
    as a layer ensemble of its own (the member view of :mod:`.members`): its module runs that member
    only, and its metadata lists that member's heads. Every reader that loads through here (the
    Predictor, hence segment, evaluate and the review engine) takes the same view.
    """
    import torch  # here, not at import: reading metadata (the review server, Slicer's panel) needs no torch

    metadata = _read_metadata(path)
    if member is not None:  # a bad member is refused before the network is loaded
        from .members import member_index, member_metadata, member_view

        index = member_index(metadata, member, str(path))
        view_metadata = member_metadata(metadata, index, str(path))
    try:
        module = torch.jit.load(str(path), map_location=device)
    except RuntimeError as error:
        raise InputError(
            f"{path}: corrupt or unsupported TorchScript archive ({first_line(error)})"
        ) from None
    module.eval()
    if member is not None:
        return member_view(module, view_metadata, index, str(path))
    return module, metadata


def _metadata_member(archive: zipfile.ZipFile, path: Path) -> zipfile.ZipInfo:
    """The one ``<archive>/extra/layer_ensembles.json`` member, after its declared size is checked."""
    documents = [i for i in archive.infolist() if i.filename.rsplit("/", 1)[-1] == METADATA_FILE]
    if not documents:
        raise InputError(f"{path}: TorchScript archive without layer-ensembles metadata ({METADATA_FILE})")
    if len(documents) > 1:
        raise InputError(
            f"{path}: {len(documents)} metadata documents ({', '.join(i.filename for i in documents[:3])}); "
            "a model file holds exactly one"
        )
    member = documents[0]
    prefix = archive.infolist()[0].filename.split("/", 1)[0]
    if member.filename != f"{prefix}/extra/{METADATA_FILE}":
        raise InputError(
            f"{path}: metadata document at {member.filename}, not {prefix}/extra/{METADATA_FILE} "
            "where TorchScript keeps it"
        )
    if member.file_size > MAX_METADATA_BYTES:
        raise InputError(
            f"{path}: metadata document of {member.file_size} bytes (the limit is {MAX_METADATA_BYTES})"
        )
    return member


def _parse(document: str | bytes, path: Path) -> ModelMetadata:
    try:
        parsed = json.loads(document)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise InputError(f"{path}: metadata is not valid JSON ({first_line(error)})") from None
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
        _metadata_member(archive, path)  # sizes first: testzip below inflates every member
        # torch.jit.load does not verify checksums: a damaged weight would load silently as wrong numbers
        try:
            damaged = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise InputError(f"{path}: truncated or corrupt archive ({error})") from None
        if damaged is not None:
            raise InputError(f"{path}: corrupt archive ({damaged} fails its checksum)")
    return path
