"""Results bundles: one case's head outputs on disk, so that a saved result can still be recombined.

A bundle holds what :class:`~.results.InferenceSession` keeps after the forward pass: each ensemble
member's blended logits at its native resolution (the deep heads are tiny), the network geometry, the
input grid every output is returned on, the model's metadata document and identity, and the head
range, threshold and maps that were current. :func:`load_bundle` rebuilds the session without the
network, so ``load_bundle(path).recombine(...)`` runs the very code a fresh prediction runs and gives
the same segmentation, maps and AULA bit for bit (on the same device type).

The file is one ``torch.save`` zip of plain tensors and one JSON string; it is read with
``torch.load(weights_only=True)`` after a CRC check of the zip, so a damaged or foreign file is refused
in one line and nothing is ever unpickled. A member is stored in half precision only when that
round-trips exactly; otherwise in float32. Written to a temporary file and renamed into place.
"""

from __future__ import annotations

import json
import pickle
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..contract import ModelMetadata
from ..devices import resolve_device
from ..errors import InputError, first_line
from ..fileio import Output, write_outputs, zip_output
from ..grids import ImageGrid, place_on_grid
from ..preprocessing import NetworkGeometry
from .reduction import HeadStream
from .results import (
    InferenceSession,
    Prediction,
    build_prediction,
    resolve_head_range,
    resolve_maps,
    resolve_threshold,
)

BUNDLE_FORMAT = "layer-ensembles-heads"
BUNDLE_VERSION = 1
BUNDLE_SUFFIX = "_heads.pt"
LOGIT_DTYPES = {"float32": torch.float32, "float64": torch.float64}  # what the engine's heads are computed in


def save_bundle(prediction: Prediction, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``prediction``'s head outputs and everything needed to recombine them; returns the path."""
    return write_outputs([(Path(path), bundle_output(prediction))], overwrite)[0]


def bundle_output(prediction: Prediction) -> Output:
    """The bundle as an output to write with a case's other files (all of them or none)."""
    session = prediction.session
    stream = session.stream
    logits = [_compact(t.detach().cpu()) for t in stream.logits]
    document = {
        "metadata": json.loads(session.metadata.to_json()),
        "member_names": list(session.member_names),
        "model_identity": prediction.model_identity,
        "source": session.source,
        "head_range": list(prediction.head_range),
        "threshold": prediction.threshold,
        "threshold_source": prediction.threshold_source,
        "maps": list(prediction.maps),
        "stream": {
            "full_shape": list(stream.full_shape),
            "crop": [[part.start, part.stop] for part in stream.crop],
            "slicewise": bool(stream.slicewise),
            "num_classes": int(stream.num_classes),
            "dtype": str(stream.logits[0].dtype).removeprefix("torch."),
        },
        "network": {
            "reference": _grid(session.geometry.reference),
            "padding": [list(p) for p in session.geometry.padding],
            "shape": list(session.geometry.shape),
        },
        "input_grid": _grid(session.reference),
        "window": session.window,
        "device_report": session.device_info,
        "forward_timings": session.forward_timings,
        "warnings": list(session.warnings),
    }
    payload = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "logits": logits,
        "document": json.dumps(document, allow_nan=True, default=_plain),
    }

    def write(temporary: Path) -> None:
        with open(
            temporary, "wb"
        ) as handle:  # a file object: records are named archive/..., not by the temp name
            torch.save(payload, handle)

    return zip_output(write)


def load_bundle(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    head_range: Sequence[int | None] | None = None,
    threshold: float | None = None,
    maps: Sequence[str] | str | None = None,
) -> Prediction:
    """The :class:`Prediction` a bundle was saved from, ready to recombine without the network.

    ``head_range``, ``threshold`` and ``maps`` replace the saved ones (a reopened scene's own choice),
    so the first result costs one reduction, not two. ``device`` is where recombination runs.
    """
    start = time.perf_counter()
    path = Path(path)
    payload = _read_payload(path)
    try:
        document = json.loads(payload["document"])
        metadata = ModelMetadata.from_dict(document["metadata"], f"{path} (model metadata)")
        session = _session(document, payload["logits"], metadata, path, resolve_device(device))
        saved_range = tuple(int(v) for v in document["head_range"])
        saved_maps = resolve_maps(document["maps"])
        saved_threshold = float(document["threshold"]), str(document["threshold_source"])
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise InputError(
            f"{path}: damaged results bundle ({type(error).__name__}: {first_line(error)})"
        ) from None
    count = len(session.member_names)
    if not 0 <= saved_range[0] < saved_range[1] <= count:
        raise InputError(f"{path}: damaged results bundle (head range {saved_range} out of bounds)")
    if head_range is not None:
        saved_range = resolve_head_range(count, metadata.skip_heads, None, head_range, str(path))
    if threshold is not None:
        saved_threshold = resolve_threshold(threshold, metadata, str(path))
    wanted = saved_maps if maps is None else resolve_maps(maps)
    timings = {"load": time.perf_counter() - start}
    return build_prediction(session, saved_range, wanted, *saved_threshold, None, start, timings)


def _read_payload(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: results bundle not found")
    if not zipfile.is_zipfile(path):
        raise InputError(
            f"{path}: truncated, or not a results bundle (--save-heads writes a complete zip archive)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # torch.load checks no CRC: a flipped bit would load as wrong numbers
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise InputError(f"{path}: truncated or corrupt results bundle ({first_line(error)})") from None
    if damaged is not None:
        raise InputError(f"{path}: corrupt results bundle (checksum mismatch in {damaged})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            f"{path}: holds objects other than tensors and plain values (refused, not unpickled)"
        ) from None
    except Exception as error:  # noqa: BLE001 - any unpickling refusal or zip problem is one line
        raise InputError(
            f"{path}: not a readable results bundle ({type(error).__name__}: {first_line(error)})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{path}: not a layer-ensembles results bundle")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > BUNDLE_VERSION:
        raise InputError(
            f"{path}: results bundle version {version!r} is newer than this reader ({BUNDLE_VERSION})"
        )
    logits, text = payload.get("logits"), payload.get("document")
    if not isinstance(text, str) or not isinstance(logits, list) or not logits:
        raise InputError(f"{path}: damaged results bundle (head outputs or document missing)")
    if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in logits):
        raise InputError(f"{path}: damaged results bundle (head outputs are not float tensors)")
    return payload


def _session(
    document: dict[str, Any],
    logits: list[torch.Tensor],
    metadata: ModelMetadata,
    path: Path,
    device: torch.device,
) -> InferenceSession:
    stream_info = document["stream"]
    dtype = LOGIT_DTYPES[stream_info["dtype"]]
    full_shape = [int(s) for s in stream_info["full_shape"]]
    num_classes = int(stream_info["num_classes"])
    members = list(document["member_names"])
    crop = tuple(slice(int(a), int(b)) for a, b in stream_info["crop"])
    cropped = [len(range(size)[part]) for part, size in zip(crop, full_shape, strict=True)]
    problem = None
    if num_classes != metadata.num_classes or len(members) != len(logits):
        problem = "classes or members do not match the head outputs"
    elif any(t.dim() != 4 or t.shape[0] != num_classes for t in logits):
        problem = f"head outputs of shapes {[list(t.shape) for t in logits]}"
    elif any(not 0 < d <= f or f % d for t in logits for d, f in zip(t.shape[1:], full_shape, strict=True)):
        problem = f"head outputs do not divide the network shape {full_shape}"
    elif [int(s) for s in document["network"]["reference"]["size"]] != cropped[::-1]:
        problem = "the network geometry does not match the head outputs"
    if problem:
        raise InputError(f"{path}: damaged results bundle ({problem})")
    stream = HeadStream(
        [t.to(device=device, dtype=dtype) for t in logits],
        full_shape,
        crop,
        bool(stream_info["slicewise"]),
        num_classes,
    )
    network = document["network"]
    geometry = NetworkGeometry(
        _image_on(network["reference"]),
        [tuple(int(v) for v in p) for p in network["padding"]],
        tuple(int(s) for s in network["shape"]),
    )
    identity = dict(document.get("model_identity") or {})
    return InferenceSession(
        metadata,
        members,
        stream,
        geometry,
        _stored_grid(document["input_grid"]),
        str(document["source"]),
        str(identity.get("path", "")),
        dict(document.get("window") or {}),
        dict(document.get("device_report") or {}),
        dict(document.get("forward_timings") or {}),
        [str(w) for w in document.get("warnings") or []],
        identity,
    )


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """Half precision when every value survives the round trip exactly, else the tensor as it is."""
    if tensor.dtype in (torch.float32, torch.float64):
        half = tensor.to(torch.float16)
        if torch.equal(half.to(tensor.dtype), tensor):
            return half
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        return tensor.clone(memory_format=torch.contiguous_format)  # torch.save writes whole storages
    return tensor


def _grid(image: sitk.Image) -> dict[str, list[float] | list[int]]:
    return {
        "size": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
    }


def _image_on(grid: dict[str, Any]) -> sitk.Image:
    """An empty image on a stored grid: the engine reads only the geometry of its reference images."""
    stored = _stored_grid(grid)
    return place_on_grid(sitk.Image(list(stored.size), sitk.sitkUInt8), stored)


def _stored_grid(grid: dict[str, Any]) -> ImageGrid:
    """A stored grid without voxels: the input's is kept per case while a review has the case open."""
    size = [int(s) for s in grid["size"]]
    if len(size) != 3:
        raise ValueError(f"grid size {size}")
    return ImageGrid.from_lists(size, grid["spacing"], grid["origin"], grid["direction"])


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, torch.device)):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a results bundle")
