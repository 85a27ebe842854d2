"""The one check of a model's metadata document, by type and range, before anything uses it.

A model file is untrusted input: its JSON document decides how images are resampled, normalised,
tiled and labelled. Every reader (``info``, ``segment``, ``evaluate``, ``calibrate``, the Slicer model
summary, the review app) goes through :func:`check_document`, so they all accept and refuse the same
files, and a bad file is refused at load time with one line naming the field, e.g.
``model.pt: invalid metadata: head_strides[2] must be a positive integer, not 0``, instead of a
TorchScript or ITK message in the middle of a run. Field meanings: docs/model-contract.md.

No torch here: the check must run where only the metadata is read (the Slicer summary before torch is
installed).
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import InputError

FORMAT_NAME = "layer-ensembles-model"
FORMAT_VERSION = 1
MODEL_KINDS = ("layer_ensemble", "deep_ensemble", "mc_dropout")
NORMALIZATION_METHODS = ("percentile_zscore", "ct_window", "zscore", "clip_zscore", "none")
PER_CHANNEL = "per_channel"  # {"method": "per_channel", "channels": [one normalisation per input channel]}
HEAD_UPSAMPLING = "linear_align_corners_false"
UNION_NAME = "union"  # the reports' name for the union of the foreground classes
# With no calibrated threshold in the model, 0.90 separates the paper's two worked examples (normalised
# AULA 7.84/8 = 0.98 for an easy case and 7.01/8 = 0.876 for a hard one) and matches the 0.90 Dice the
# paper used as its quality bar for the combined cardiac structures. Calibrate per model when possible.
DEFAULT_AULA_THRESHOLD = 0.90
MAX_ENSEMBLE_MEMBERS = 127  # the reduction's int32 fixed-point sums stay exact up to 127 members
MAX_LABEL_VALUE = 255  # segmentations are written as UInt8
MAX_PATCH_SIDE = 4096  # a window side beyond this is a typo, not a patch
MAX_CHANNELS = 64
ORIENTATION_AXES = ("RL", "AP", "SI")
MEMBER_HEAD_FIELDS = ("member_head_names", "member_head_strides", "member_skip_heads")
REQUIRED = ("spatial_dims", "in_channels", "classes", "head_names", "head_strides")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _Problems(list):
    """Problems found so far, each ``field: what is wrong``; the first one per field is enough."""

    def add(self, field: str, message: str) -> None:
        self.append(f"{field} {message}")


def check_document(document: Any, source: str = "metadata") -> None:
    """Raise ``InputError`` (one line naming each bad field) unless ``document`` is a usable model."""
    if not isinstance(document, dict):
        raise InputError(
            f"{source}: invalid metadata: the document must be a JSON object, not {_kind(document)}"
        )
    if document.get("format") != FORMAT_NAME:
        raise InputError(f"{source}: not a layer-ensembles model (format is {_show(document.get('format'))})")
    version = document.get("format_version")
    if not _is_int(version) or version < 1:
        raise InputError(
            f"{source}: invalid metadata: format_version must be an integer >= 1, not {_show(version)}"
        )
    if version > FORMAT_VERSION:
        raise InputError(f"{source}: format version {version} is newer than this reader ({FORMAT_VERSION})")
    problems = _Problems()
    for name in REQUIRED:
        if name not in document:
            problems.add(name, "is missing")
    if not problems:
        _check_fields(document, problems)
    if problems:
        raise InputError(f"{source}: invalid metadata: {'; '.join(problems)}")


def _check_fields(document: dict[str, Any], problems: _Problems) -> None:
    get = document.get
    dims = get("spatial_dims")
    if not _is_int(dims) or dims not in (2, 3):
        problems.add("spatial_dims", f"must be 2 or 3, not {_show(dims)}")
        dims = None
    channels = get("in_channels")
    if not _is_int(channels) or not 1 <= channels <= MAX_CHANNELS:
        problems.add(
            "in_channels", f"must be positive (an integer in 1..{MAX_CHANNELS}), not {_show(channels)}"
        )
    _check_string(problems, "name", get("name", "model"))
    kind = get("kind", "layer_ensemble")
    if kind not in MODEL_KINDS:
        problems.add("kind", f"{_show(kind)} is not one of {', '.join(MODEL_KINDS)}")
    if get("head_upsampling", HEAD_UPSAMPLING) != HEAD_UPSAMPLING:
        problems.add(
            "head_upsampling", f"{_show(get('head_upsampling'))} is not supported ({HEAD_UPSAMPLING})"
        )
    if not isinstance(get("provenance", {}), dict):
        problems.add("provenance", f"must be an object, not {_kind(get('provenance'))}")
    _check_classes(get("classes"), problems)
    divisor = _check_sizes(document, dims, problems)
    _check_heads(document, kind, divisor, problems)
    _check_spacing(get("target_spacing"), dims, problems)
    _check_orientation(get("orientation"), problems)
    normalization = get("normalization", {"method": "percentile_zscore"})
    if isinstance(normalization, dict) and normalization.get("method") == PER_CHANNEL:
        entries = normalization.get("channels")
        if not isinstance(entries, list) or (_is_int(channels) and len(entries) != channels):
            problems.add(
                "normalization.channels", f"must list one normalization per input channel ({channels})"
            )
        else:
            for index, entry in enumerate(entries):
                _check_normalization(entry, problems, f"normalization.channels[{index}]")
    else:
        _check_normalization(normalization, problems)
    if not isinstance(get("pad_to_patch", False), bool):
        problems.add("pad_to_patch", f"must be true or false, not {_show(get('pad_to_patch'))}")
    pad_value = get("pad_value")
    if pad_value is not None and not _is_number(pad_value):
        problems.add("pad_value", f"must be null or a finite number, not {_show(pad_value)}")
    from .quality import calibration_problems  # decision_score and quality_map (numpy only)

    problems.extend(calibration_problems(get("decision_score", "aula_norm_union"), get("quality_map")))
    threshold = get("aula_threshold")
    if threshold is not None and (not _is_number(threshold) or not 0 <= threshold <= 1):
        problems.add("aula_threshold", f"must be null or a number in [0, 1], not {_show(threshold)}")


def _check_classes(classes: Any, problems: _Problems) -> None:
    if not isinstance(classes, list):
        problems.add("classes", f"must be a list of {{name, value, color}} objects, not {_kind(classes)}")
        return
    if len(classes) < 2:
        problems.add("classes", "needs at least two classes (background and one structure)")
        return
    names: dict[str, int] = {}
    values: dict[int, int] = {}
    for index, entry in enumerate(classes):
        field = f"classes[{index}]"
        if not isinstance(entry, dict):
            problems.add(field, f"must be an object with name, value and color, not {_kind(entry)}")
            continue
        name, value, color = entry.get("name"), entry.get("value"), entry.get("color")
        if _check_string(problems, f"{field}.name", name):
            key = name.strip().casefold()
            if key in names:
                problems.add(f"{field}.name", f"{name!r} duplicates classes[{names[key]}]")
            names.setdefault(key, index)
        if not _is_int(value) or not 0 <= value <= MAX_LABEL_VALUE:
            problems.add(
                f"{field}.value",
                f"must be an integer in 0..{MAX_LABEL_VALUE} (labels are written as UInt8), "
                f"not {_show(value)}",
            )
        elif value in values:
            problems.add(
                f"{field}.value", f"{value} duplicates classes[{values[value]}] (class values must be unique)"
            )
        else:
            values[value] = index
            if value != 0 and isinstance(name, str) and name.strip().casefold() == UNION_NAME:
                problems.add(f"{field}.name", f"{UNION_NAME!r} is reserved for the union of the classes")
        if not (
            isinstance(color, list) and len(color) == 3 and all(_is_int(c) and 0 <= c <= 255 for c in color)
        ):
            problems.add(f"{field}.color", f"must be three integers in 0..255 (RGB), not {_show(color)}")
    if values and 0 not in values:
        problems.add("classes", "must include 0 (the background value)")


def _check_sizes(document: dict[str, Any], dims: int | None, problems: _Problems) -> list[int] | None:
    """patch_size and size_divisor: ``dims`` positive integers each; returns the divisor when valid."""
    checked = {}
    for name in ("patch_size", "size_divisor"):
        value = document.get(name, [])
        expected = dims if dims is not None else "2 or 3"
        if not isinstance(value, list) or (dims is not None and len(value) != dims):
            problems.add(name, f"must hold {expected} positive integers, not {_show(value)}")
            continue
        for index, side in enumerate(value):
            if not _is_int(side) or not 1 <= side <= MAX_PATCH_SIDE:
                problems.add(
                    f"{name}[{index}]", f"must be an integer in 1..{MAX_PATCH_SIDE}, not {_show(side)}"
                )
                break
        else:
            checked[name] = value
    patch, divisor = checked.get("patch_size"), checked.get("size_divisor")
    if patch is not None and divisor is not None and len(patch) == len(divisor):
        if any(p % d for p, d in zip(patch, divisor, strict=True)):
            problems.add("patch_size", f"{patch} must be a multiple of size_divisor {divisor}")
    return divisor


def _check_head_list(
    document: dict[str, Any], prefix: str, divisor: list[int] | None, problems: _Problems
) -> tuple[list, list] | None:
    """``<prefix>head_names``, ``<prefix>head_strides`` and ``<prefix>skip_heads``: the model's own head
    list (prefix ``""``) or each deep-ensemble member's (prefix ``"member_"``); both mean the same."""
    names_field, strides_field, skip_field = (
        f"{prefix}{n}" for n in ("head_names", "head_strides", "skip_heads")
    )
    names, strides = document.get(names_field), document.get(strides_field)
    if not isinstance(names, list) or not names:
        problems.add(names_field, f"must be a non-empty list of names, not {_show(names)}")
        return None
    seen: set[str] = set()
    for index, name in enumerate(names):
        if _check_string(problems, f"{names_field}[{index}]", name):
            if name in seen:
                problems.add(f"{names_field}[{index}]", f"{name!r} appears twice")
            seen.add(name)
    if not isinstance(strides, list) or len(strides) != len(names):
        problems.add(
            strides_field,
            f"must be a list of equal length to {names_field} ({len(names)}), not {_show(strides)}",
        )
        return None
    for index, stride in enumerate(strides):
        if not _is_int(stride) or stride < 1:
            problems.add(f"{strides_field}[{index}]", f"must be a positive integer, not {_show(stride)}")
            return None
        if divisor is not None and any(d % stride for d in divisor):
            problems.add(f"{strides_field}[{index}]", f"{stride} must divide the size divisor {divisor}")
            return None
    skip = document.get(skip_field, 0)
    if not _is_int(skip) or not 0 <= skip < len(names):
        problems.add(skip_field, f"{_show(skip)} must leave at least one of {len(names)} heads")
    return names, strides


def _check_member_heads(
    document: dict[str, Any], kind: Any, divisor: list[int] | None, problems: _Problems
) -> None:
    """A deep ensemble whose members are layer ensembles: ``member_heads`` (H) heads per member, described
    once by ``member_head_names``, ``member_head_strides`` and ``member_skip_heads`` (every member has the
    same head list, as nnU-Net's folds do). Files without these fields are plain deep ensembles."""
    heads = document.get("member_heads", 1)
    if not _is_int(heads) or not 1 <= heads <= MAX_ENSEMBLE_MEMBERS:
        problems.add("member_heads", f"must be an integer in 1..{MAX_ENSEMBLE_MEMBERS}, not {_show(heads)}")
        return
    given = [f for f in MEMBER_HEAD_FIELDS if f in document]
    if heads == 1:
        if given:
            problems.add(given[0], "is only meaningful with member_heads > 1")
        return
    if kind != "deep_ensemble":
        problems.add("member_heads", f"({heads}) is only for deep_ensemble models, not {_show(kind)}")
        return
    checked = _check_head_list(document, "member_", divisor, problems)
    if checked is None:
        return
    names, strides = checked
    if len(names) != heads:
        problems.add("member_head_names", f"must name member_heads ({heads}) heads, not {len(names)}")
    elif strides[-1] != 1:
        problems.add(
            "member_head_strides",
            f"the last (deepest) head is the member's output and must have stride 1, not {strides[-1]}",
        )


def _check_heads(document: dict[str, Any], kind: Any, divisor: list[int] | None, problems: _Problems) -> None:
    checked = _check_head_list(document, "", divisor, problems)
    if checked is None:
        return
    names, strides = checked
    members, samples = document.get("members", 1), document.get("samples", 1)
    for field, value in (("members", members), ("samples", samples)):
        if not _is_int(value) or not 1 <= value <= MAX_ENSEMBLE_MEMBERS:
            problems.add(field, f"must be an integer in 1..{MAX_ENSEMBLE_MEMBERS}, not {_show(value)}")
    if len(names) > MAX_ENSEMBLE_MEMBERS:
        problems.add("head_names", f"at most {MAX_ENSEMBLE_MEMBERS} heads are supported, not {len(names)}")
    if kind in ("deep_ensemble", "mc_dropout") and any(s != 1 for s in strides):
        problems.add("head_strides", f"a {kind} model's outputs must all have stride 1")
    if kind == "mc_dropout" and len(names) != 1:
        problems.add("head_names", "an mc_dropout model has exactly one output")
    if kind == "deep_ensemble" and _is_int(members) and members not in (1, len(names)):
        problems.add("members", f"({members}) must equal the number of outputs ({len(names)})")
    _check_member_heads(document, kind, divisor, problems)


def _check_spacing(spacing: Any, dims: Any, problems: _Problems) -> None:
    """Three mm values (x, y, z); a 2D model may leave z null: its slices are kept as they are."""
    if spacing is None:
        return
    if not isinstance(spacing, list) or len(spacing) != 3:
        problems.add(
            "target_spacing", f"must be null or three positive numbers (x, y, z in mm), not {_show(spacing)}"
        )
        return
    for index, value in enumerate(spacing):
        if index == 2 and value is None:
            if dims == 3:
                problems.add("target_spacing[2]", "may be null only for a 2D model (its slices are kept)")
                return
            continue
        if not _is_number(value) or value <= 0:
            problems.add(
                f"target_spacing[{index}]", f"must be a positive finite number of mm, not {_show(value)}"
            )
            return


def _check_orientation(orientation: Any, problems: _Problems) -> None:
    """A DICOM-style code such as RAS or LPS: one letter for each of the three axes."""
    if orientation is None:
        return
    if (
        not isinstance(orientation, str)
        or len(orientation) != 3
        or sorted(next((i for i, pair in enumerate(ORIENTATION_AXES) if c in pair), 9) for c in orientation)
        != [0, 1, 2]
    ):
        problems.add(
            "orientation",
            "must be null or a code such as RAS or LPS (one of R/L, A/P, S/I each), "
            f"not {_show(orientation)}",
        )


def _check_normalization(normalization: Any, problems: _Problems, field: str = "normalization") -> None:
    if not isinstance(normalization, dict):
        problems.add(field, f"must be an object with a method, not {_kind(normalization)}")
        return
    method = normalization.get("method")
    if method not in NORMALIZATION_METHODS:
        known = ", ".join(
            (*NORMALIZATION_METHODS, PER_CHANNEL) if field == "normalization" else NORMALIZATION_METHODS
        )
        problems.add(f"{field}.method", f"{_show(method)} must be one of {known}")
        return
    if method == "percentile_zscore":
        lower, upper = normalization.get("lower", 0.5), normalization.get("upper", 99.5)
        for name, value in (("lower", lower), ("upper", upper)):
            if not _is_number(value) or not 0 <= value <= 100:
                problems.add(f"{field}.{name}", f"must be a percentile in [0, 100], not {_show(value)}")
                return
        if lower >= upper:
            problems.add(field, f"lower percentile {lower} must be below upper {upper}")
    elif method == "ct_window":
        center, width = normalization.get("center"), normalization.get("width")
        if not _is_number(center):
            problems.add(f"{field}.center", f"must be a finite number, not {_show(center)}")
        if not _is_number(width) or width <= 0:
            problems.add(f"{field}.width", f"must be a positive finite number, not {_show(width)}")
    elif method == "clip_zscore":  # fixed dataset statistics (nnU-Net's CT normalisation)
        values = {name: normalization.get(name) for name in ("lower", "upper", "mean", "std")}
        bad = [name for name, value in values.items() if not _is_number(value)]
        if bad:
            problems.add(field, f"clip_zscore needs finite numbers {bad}")
        elif values["lower"] > values["upper"] or values["std"] < 0:
            problems.add(field, f"clip_zscore needs lower <= upper and std >= 0, not {values}")


def _check_string(problems: _Problems, field: str, value: Any) -> bool:
    if not isinstance(value, str) or not value.strip() or _CONTROL.search(value) or len(value) > 200:
        problems.add(
            field, f"must be a non-empty one-line text of at most 200 characters, not {_show(value)}"
        )
        return False
    return True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
