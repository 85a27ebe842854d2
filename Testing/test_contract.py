"""The model file: export round trip, metadata validation, and refusal of everything that is not ours."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from LayerEnsemblesLib import cli
from LayerEnsemblesLib.contract import (
    METADATA_FILE,
    ClassInfo,
    ModelMetadata,
    default_classes,
    export_model,
    load_model,
    read_metadata,
)
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.networks import LayerEnsembleUNet


def tiny_network(spatial_dims: int = 3, seed: int = 0) -> LayerEnsembleUNet:
    torch.manual_seed(seed)
    return LayerEnsembleUNet(spatial_dims, 1, 3, depth=3, base_channels=4).eval()


def metadata_for(network: LayerEnsembleUNet, **overrides) -> ModelMetadata:
    fields = dict(
        spatial_dims=network.spatial_dims,
        in_channels=1,
        classes=default_classes(["background", "anterior", "posterior"]),
        head_names=list(network.head_names),
        head_strides=list(network.head_strides),
        patch_size=[16] * network.spatial_dims,
        size_divisor=[network.size_divisor] * network.spatial_dims,
        target_spacing=[1.0, 1.0, 1.0],
        orientation="RAS",
        name="contract-test",
        provenance={"dataset": "unit test", "epochs": 0},
    )
    fields.update(overrides)
    return ModelMetadata(**fields)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One exported 3D model shared by the read-only tests (scripting is the slow part)."""
    network = tiny_network()
    metadata = metadata_for(network, skip_heads=2, aula_threshold=0.8)
    return (
        network,
        metadata,
        export_model(network, metadata, tmp_path_factory.mktemp("exported") / "model.pt"),
    )


@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_exported_model_matches_the_eager_model(tmp_path, spatial_dims):
    network = tiny_network(spatial_dims)
    path = export_model(network, metadata_for(network), tmp_path / "model.pt")
    module, metadata = load_model(path)
    # a different size from the export check: the archive must not have baked in shapes
    x = torch.randn(2, 1, *([8, 12, 20][:spatial_dims] if spatial_dims == 3 else [12, 20]))
    with torch.no_grad():
        expected, actual = network(x), module(x)
    assert len(actual) == metadata.num_heads == 6
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape
        assert float((a - e).abs().max()) < 1e-4


def test_metadata_round_trips_through_the_archive(exported):
    _, written, path = exported
    assert read_metadata(path) == written
    assert load_model(path)[1] == written
    raw = zipfile.ZipFile(path).read(
        next(n for n in zipfile.ZipFile(path).namelist() if n.endswith(METADATA_FILE))
    )
    assert json.loads(raw)["format"] == "layer-ensembles-model"


def test_archive_loads_with_plain_torch_jit_load_without_our_package(tmp_path, exported):
    network, _, path = exported
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = network(x)
    torch.save({"x": x, "expected": expected}, tmp_path / "reference.pt")
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys, json
        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "LayerEnsemblesLib":
                    raise ImportError("our package must not be needed")
        sys.meta_path.insert(0, Refuse())
        import torch
        extra = {{"{METADATA_FILE}": ""}}
        module = torch.jit.load({str(path)!r}, _extra_files=extra)
        reference = torch.load({str(tmp_path / "reference.pt")!r}, weights_only=True)
        with torch.no_grad():
            outputs = module(reference["x"])
        worst = max(float((a - e).abs().max()) for a, e in zip(outputs, reference["expected"]))
        print(json.dumps({{"heads": len(outputs), "worst": worst,
                          "name": json.loads(extra["{METADATA_FILE}"])["name"],
                          "ours_loaded": any(m.startswith("LayerEnsemblesLib") for m in sys.modules)}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "heads": 6,
        "worst": pytest.approx(0, abs=1e-4),
        "name": "contract-test",
        "ours_loaded": False,
    }


def test_export_refuses_to_overwrite_and_checks_head_count(tmp_path):
    network = tiny_network()
    path = export_model(network, metadata_for(network), tmp_path / "model.pt")
    with pytest.raises(InputError, match="already exists"):
        export_model(network, metadata_for(network), path)
    export_model(network, metadata_for(network, name="second"), path, overwrite=True)
    assert read_metadata(path).name == "second"
    wrong = metadata_for(network, head_names=["a", "b"], head_strides=[1, 1])
    with pytest.raises(InputError, match="returns 6 outputs but the metadata declares 2 heads"):
        export_model(network, wrong, tmp_path / "wrong.pt")
    assert not (tmp_path / "wrong.pt").exists()


INVALID_FIELDS = [
    (dict(spatial_dims=4), "spatial_dims must be 2 or 3"),
    (dict(in_channels=0), "in_channels must be positive"),
    (dict(classes=[ClassInfo("background", 0, [0, 0, 0])]), "at least two classes"),
    (dict(classes=[ClassInfo("a", 1, [0, 0, 0]), ClassInfo("b", 2, [1, 1, 1])]), "include 0"),
    (dict(classes=[ClassInfo("a", 0, [0, 0, 0]), ClassInfo("b", 0, [1, 1, 1])]), "unique"),
    (dict(head_strides=[1, 2]), "equal length"),
    (dict(skip_heads=6), "must leave at least one"),
    (dict(kind="bagging"), "kind 'bagging'"),
    (dict(normalization={"method": "minmax"}), "normalization.method 'minmax' must be one of"),
    (dict(patch_size=[16, 16]), "patch_size must hold 3"),
    (dict(size_divisor=[4, 0, 4]), r"size_divisor\[1\] must be an integer"),
    (dict(target_spacing=[1.0, -1.0, 1.0]), "target_spacing"),
    (dict(aula_threshold=1.5), "aula_threshold"),
    (dict(head_upsampling="nearest"), "head_upsampling"),
]


@pytest.mark.parametrize("fields, message", INVALID_FIELDS)
def test_invalid_metadata_is_refused_with_a_named_problem(fields, message):
    metadata = metadata_for(tiny_network(), **fields)
    with pytest.raises(InputError, match=message) as caught:
        metadata.validate("model.pt")
    assert str(caught.value).startswith("model.pt: invalid metadata")
    assert "\n" not in str(caught.value)


def test_from_dict_refuses_foreign_newer_and_malformed_documents():
    document = json.loads(metadata_for(tiny_network()).to_json())
    assert ModelMetadata.from_dict(document) == metadata_for(tiny_network())
    with pytest.raises(InputError, match="not a layer-ensembles model"):
        ModelMetadata.from_dict({**document, "format": "other"}, "m.pt")
    with pytest.raises(InputError, match="newer than this reader"):
        ModelMetadata.from_dict({**document, "format_version": 99}, "m.pt")
    broken = dict(document)
    del broken["head_names"]
    with pytest.raises(InputError, match="head_names is missing"):
        ModelMetadata.from_dict(broken, "m.pt")


# --- files that are not our models ----------------------------------------------------------------


def _assert_one_line_naming(error: pytest.ExceptionInfo, path: Path, fragment: str) -> None:
    message = str(error.value)
    assert message.startswith(str(path)), message
    assert fragment in message, message
    assert "\n" not in message


def test_refuses_a_legacy_pickle_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": tiny_network().state_dict()}, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"
    for reader in (load_model, read_metadata):
        with pytest.raises(InputError) as error:
            reader(path)
        _assert_one_line_naming(error, path, "a pickle file")


def test_refuses_a_plain_state_dict(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tiny_network().state_dict(), path)
    with pytest.raises(InputError) as error:
        load_model(path)
    _assert_one_line_naming(error, path, "torch.save checkpoint")


def test_refuses_a_truncated_archive(tmp_path, exported):
    good = exported[2]
    path = tmp_path / "truncated.pt"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError) as error:
        load_model(path)
    _assert_one_line_naming(error, path, "truncated or corrupt")


def test_refuses_a_corrupted_archive_member(tmp_path, exported):
    good = exported[2]
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:  # flip bytes inside the largest stored tensor
        member = max(archive.infolist(), key=lambda i: i.file_size)
    name_length, extra_length = struct.unpack(
        "<HH", data[member.header_offset + 26 : member.header_offset + 30]
    )
    start = member.header_offset + 30 + name_length + extra_length  # the member's stored bytes
    data[start : start + 64] = bytes(255 - b for b in data[start : start + 64])
    path = tmp_path / "corrupt.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as error:
        load_model(path)
    _assert_one_line_naming(error, path, "corrupt")


def test_refuses_torchscript_without_our_metadata(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.jit.save(torch.jit.script(tiny_network()), str(path))
    for reader in (load_model, read_metadata):
        with pytest.raises(InputError) as error:
            reader(path)
        _assert_one_line_naming(error, path, "without layer-ensembles metadata")


def test_refuses_metadata_that_is_not_json(tmp_path):
    path = tmp_path / "garbled.pt"
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(tiny_network()), buffer, _extra_files={METADATA_FILE: "{not json"})
    path.write_bytes(buffer.getvalue())
    with pytest.raises(InputError) as error:
        load_model(path)
    _assert_one_line_naming(error, path, "not valid JSON")


def test_refuses_missing_and_non_zip_files(tmp_path):
    with pytest.raises(InputError, match="model file not found"):
        load_model(tmp_path / "absent.pt")
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(InputError) as error:
        load_model(text)
    _assert_one_line_naming(error, text, "not a TorchScript archive")


def test_info_command_prints_metadata_and_refuses_a_checkpoint(tmp_path, exported, capsys):
    network, metadata, model = exported
    assert cli.main(["info", str(model), "--json"]) == 0
    shown_document = json.loads(capsys.readouterr().out)
    assert shown_document == json.loads(metadata.to_json())  # the document as written
    # every field, except the member-head fields a model without member heads does not write
    assert shown_document == {
        k: v for k, v in dataclasses.asdict(metadata).items() if not k.startswith("member_")
    }
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save(network.state_dict(), checkpoint)
    shown = run_cli("info", model, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "contract-test" in shown.stdout and "kept heads:     4 (skip the first 2)" in shown.stdout
    refused = run_cli("info", checkpoint, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and str(checkpoint) in refused.stderr


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from LayerEnsemblesLib.fileio import atomic_write_text

    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "report.json", "{}")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_first_line_skips_blank_lines_of_torchscript_errors():
    from LayerEnsemblesLib.errors import first_line

    assert (
        first_line(RuntimeError("\n\nCan't redefine method: forward\nmore"))
        == "Can't redefine method: forward"
    )
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(ValueError("x" * 500)) == "x" * 160
