"""The model file is untrusted input: one validator of its metadata, one document, read with a limit.

Each bad document is refused in one line that names the field, by every reader the same way: the
contract's reader, the TorchScript loader, the Predictor, ``layer-ensembles info`` and the Slicer
model summary (all go through ``metadata_schema.check_document``).
"""

from __future__ import annotations

import copy
import io
import json
import math
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from conftest import make_tiny_model
from LayerEnsemblesLib.contract import (
    MAX_METADATA_BYTES,
    METADATA_FILE,
    ModelMetadata,
    load_model,
    read_metadata,
)
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.inference import Predictor
from LayerEnsemblesLib.scene.runtime import model_summary


@pytest.fixture(scope="module")
def document(tiny_model_file) -> dict:
    return json.loads(read_metadata(tiny_model_file).to_json())


def _edited(document: dict, path: str, value) -> dict:
    """A copy of ``document`` with the field at ``path`` (``a.b[2]``-style, ``-`` deletes) replaced."""
    edited = copy.deepcopy(document)
    parts = path.replace("]", "").replace("[", ".").split(".")
    target = edited
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last = parts[-1]
    key = int(last) if isinstance(target, list) else last
    if value == "-":
        del target[key]
    else:
        target[key] = value
    return edited


NAN = float("nan")
# (field path, bad value, text the one-line message must contain); several per class of problem
BAD_FIELDS = {
    "type": [
        ("in_channels", "1", "in_channels must be positive"),
        ("spatial_dims", True, "spatial_dims must be 2 or 3, not True"),
        ("patch_size", ["16", 16, 16], "patch_size[0] must be an integer"),
        ("aula_threshold", "0.9", "aula_threshold must be null or a number in [0, 1], not '0.9'"),
        ("skip_heads", 1.0, "skip_heads 1.0 must leave at least one"),
        ("classes.1.value", "1", "classes[1].value must be an integer in 0..255"),
        ("name", 7, "name must be a non-empty one-line text"),
        ("pad_to_patch", "yes", "pad_to_patch must be true or false, not 'yes'"),
    ],
    "structure": [
        (
            "classes",
            {"background": 0},
            "classes must be a list of {name, value, color} objects, not an object",
        ),
        ("normalization", ["percentile_zscore"], "normalization must be an object with a method, not a list"),
        ("classes.1", ["structure1", 1], "classes[1] must be an object with name, value and color"),
        ("provenance", [], "provenance must be an object, not a list"),
        ("head_strides", 4, "head_strides must be a list of equal length"),
        ("head_names", "-", "head_names is missing"),
    ],
    "range": [
        ("head_strides.1", 0, "head_strides[1] must be a positive integer, not 0"),
        ("head_strides.2", -4, "head_strides[2] must be a positive integer, not -4"),
        ("target_spacing.1", NAN, "target_spacing[1] must be a positive finite number of mm, not nan"),
        ("target_spacing.0", math.inf, "target_spacing[0] must be a positive finite number of mm, not inf"),
        ("target_spacing.2", 0, "target_spacing[2] must be a positive finite number of mm, not 0"),
        ("target_spacing.2", None, "target_spacing[2] may be null only for a 2D model (its slices are kept)"),
        ("target_spacing.1", None, "target_spacing[1] must be a positive finite number of mm, not None"),
        ("orientation", "RAX", "orientation must be null or a code such as RAS"),
        ("orientation", "RAR", "orientation must be null or a code such as RAS"),
        ("orientation", "ras", "orientation must be null or a code such as RAS"),
        (
            "normalization",
            {"method": "percentile_zscore", "lower": -1, "upper": 99},
            "normalization.lower must be a percentile in [0, 100], not -1",
        ),
        (
            "normalization",
            {"method": "percentile_zscore", "lower": 1, "upper": 250},
            "normalization.upper must be a percentile in [0, 100], not 250",
        ),
        (
            "normalization",
            {"method": "percentile_zscore", "lower": 90, "upper": 10},
            "lower percentile 90 must be below upper 10",
        ),
        (
            "normalization",
            {"method": "ct_window", "center": 40, "width": 0},
            "normalization.width must be a positive finite number",
        ),
        ("format_version", 0, "format_version must be an integer >= 1, not 0"),
        ("format_version", -3, "format_version must be an integer >= 1, not -3"),
        ("format_version", "1", "format_version must be an integer >= 1, not '1'"),
        ("classes.1.value", 256, "classes[1].value must be an integer in 0..255"),
        ("classes.2.value", -1, "classes[2].value must be an integer in 0..255"),
        ("classes.1.color", [300, 0, 0], "classes[1].color must be three integers in 0..255"),
        ("aula_threshold", NAN, "aula_threshold must be null or a number in [0, 1], not nan"),
        ("skip_heads", -1, "skip_heads -1 must leave at least one"),
        ("in_channels", 0, "in_channels must be positive"),
        ("patch_size", [14, 16, 16], "patch_size [14, 16, 16] must be a multiple of size_divisor"),
        ("samples", 0, "samples must be an integer in 1..127"),
        ("pad_value", NAN, "pad_value must be null or a finite number, not nan"),
        (
            "normalization",
            {"method": "clip_zscore", "lower": 0, "upper": 100, "mean": 0},
            "clip_zscore needs finite numbers ['std']",
        ),
        (
            "normalization",
            {"method": "clip_zscore", "lower": 100, "upper": 0, "mean": 0, "std": 1},
            "clip_zscore needs lower <= upper",
        ),
        (
            "normalization",
            {"method": "per_channel", "channels": [{"method": "zscore"}] * 2},
            "normalization.channels must list one normalization per input channel (1)",
        ),
        (
            "normalization",
            {"method": "per_channel", "channels": [{"method": "minmax"}]},
            "normalization.channels[0].method 'minmax' must be one of",
        ),
    ],
    "duplicates": [
        ("classes.2.name", "structure1", "classes[2].name 'structure1' duplicates classes[1]"),
        ("classes.2.name", "STRUCTURE1 ", "classes[2].name 'STRUCTURE1 ' duplicates classes[1]"),
        ("classes.2.value", 1, "classes[2].value 1 duplicates classes[1]"),
        ("head_names.3", "encoder0", "head_names[3] 'encoder0' appears twice"),
        ("classes.1.name", "union", "'union' is reserved"),
        ("classes.1.name", "two\nlines", "classes[1].name must be a non-empty one-line text"),
    ],
}
CASES = [(kind, *case) for kind, cases in BAD_FIELDS.items() for case in cases]


@pytest.mark.parametrize("kind, field, value, message", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_each_bad_field_is_named_in_one_line(document, kind, field, value, message):
    with pytest.raises(InputError) as caught:
        ModelMetadata.from_dict(_edited(document, field, value), "model.pt")
    text = str(caught.value)
    assert message in text, text
    assert text.startswith("model.pt: ") and "\n" not in text


@pytest.mark.parametrize("not_an_object", [[], "model", 3, None])
def test_a_document_that_is_not_an_object(not_an_object):
    with pytest.raises(InputError, match="the document must be a JSON object"):
        ModelMetadata.from_dict(not_an_object, "model.pt")


def test_the_good_document_passes_and_unknown_fields_are_ignored(document):
    assert ModelMetadata.from_dict({**document, "future_field": [1, 2]}).to_json() == json.dumps(
        document, indent=2, sort_keys=True
    )


# --- through real archives: every reader refuses the same way ------------------------------------


def _archive_with(base: Path, path: Path, text: str) -> Path:
    """``base``'s network saved with ``text`` as its metadata document (as an outside producer might)."""
    module = torch.jit.load(str(base))
    buffer = io.BytesIO()
    torch.jit.save(module, buffer, _extra_files={METADATA_FILE: text})
    path.write_bytes(buffer.getvalue())
    return path


ARCHIVE_CASES = [
    ("head_strides.1", 0, "head_strides[1] must be a positive integer, not 0"),
    ("target_spacing.1", NAN, "target_spacing[1] must be a positive finite number of mm, not nan"),
    ("classes.2.name", "structure1", "duplicates classes[1]"),
    ("normalization", ["percentile_zscore"], "normalization must be an object"),
]


@pytest.mark.parametrize("field, value, message", ARCHIVE_CASES, ids=[c[0] for c in ARCHIVE_CASES])
def test_every_reader_refuses_a_bad_archive_in_one_line(
    tiny_model_file, document, tmp_path, field, value, message
):
    path = _archive_with(tiny_model_file, tmp_path / "bad.pt", json.dumps(_edited(document, field, value)))
    expected = f"{path}: invalid metadata: "
    for reader in (read_metadata, load_model, lambda p: Predictor(p, device="cpu")):
        with pytest.raises(InputError) as caught:
            reader(path)
        assert str(caught.value).startswith(expected) and message in str(caught.value)
    assert model_summary(path) == {"text": str(caught.value)}
    shown = run_cli("info", path, timeout=120)
    assert shown.returncode == 2
    assert shown.stderr == f"error: {caught.value}\n"
    assert shown.stdout == ""


def _copy_with_member(base: Path, path: Path, name: str, data: bytes, compress: bool = False) -> Path:
    with zipfile.ZipFile(base) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        with pytest.warns(UserWarning) if name in source.namelist() else _nothing():
            target.writestr(
                name, data, compress_type=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            )
    return path


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _metadata_name(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return next(n for n in archive.namelist() if n.endswith(METADATA_FILE))


def test_a_second_metadata_document_is_refused_by_every_reader(tiny_model_file, document, tmp_path):
    other = json.dumps({**document, "aula_threshold": 0.1, "name": "other"}).encode()
    prefix = _metadata_name(tiny_model_file).split("/")[0]
    variants = {
        "same name twice": _metadata_name(tiny_model_file),
        "another folder": f"other/extra/{METADATA_FILE}",
        "beside it": f"{prefix}/{METADATA_FILE}",
    }
    for label, name in variants.items():
        path = _copy_with_member(tiny_model_file, tmp_path / f"{label}.pt", name, other)
        for reader in (read_metadata, load_model):
            with pytest.raises(InputError, match="2 metadata documents .* a model file holds exactly one"):
                reader(path)
        assert "exactly one" in model_summary(path)["text"], label


def test_a_document_outside_the_torchscript_folder_is_refused(tiny_model_file, tmp_path):
    with zipfile.ZipFile(tiny_model_file) as source, zipfile.ZipFile(tmp_path / "moved.pt", "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith(METADATA_FILE):
                info.filename = info.filename.replace("/extra/", "/code/extra/")
            target.writestr(info, data)
    with pytest.raises(InputError, match="where TorchScript keeps it"):
        read_metadata(tmp_path / "moved.pt")


@pytest.mark.parametrize("inflated_mb", [2, 64])
def test_an_inflating_metadata_document_is_refused_before_it_is_inflated(
    tiny_model_file, document, tmp_path, inflated_mb
):
    """A small file whose metadata inflates to many MB: refused from the zip directory, no allocation."""
    text = json.dumps(document) + " " * (inflated_mb << 20)
    path = tmp_path / "bomb.pt"
    name = _metadata_name(tiny_model_file)
    with zipfile.ZipFile(tiny_model_file) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            if info.filename == name:
                target.writestr(name, text, compress_type=zipfile.ZIP_DEFLATED)
            else:
                target.writestr(info, source.read(info))
    assert path.stat().st_size < tiny_model_file.stat().st_size + (1 << 20)  # small on disk
    for reader in (read_metadata, load_model):
        tracemalloc.start()
        expected = f"metadata document of .* bytes \\(the limit is {MAX_METADATA_BYTES}"
        with pytest.raises(InputError, match=expected):
            reader(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < (1 << 20), peak


def test_info_shows_exactly_the_metadata_inference_uses(tiny_model_file, tmp_path):
    shown = run_cli("info", tiny_model_file, "--json", timeout=120)
    assert shown.returncode == 0, shown.stderr
    predictor = Predictor(tiny_model_file, device="cpu")
    assert (
        ModelMetadata.from_dict(json.loads(shown.stdout))
        == predictor.metadata
        == load_model(tiny_model_file)[1]
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"target_spacing": [1.0, NAN, 1.0]}, r"target_spacing\[1\] must be a positive finite number"),
        ({"patch_size": [np.int64(16)] * 3}, "not JSON-serialisable"),
        ({"orientation": "XYZ"}, "orientation must be null or a code"),
    ],
)
def test_export_checks_with_the_same_validator_and_writes_nothing(tmp_path, overrides, message):
    path = tmp_path / "model.pt"
    with pytest.raises(InputError, match=message):
        make_tiny_model(path, **overrides)
    assert not path.exists()
