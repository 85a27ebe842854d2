"""Deep ensembles whose members keep their heads, and the member view (``load_model(path, member=k)``).

The contract's ``member_heads`` fields are checked by type and range like every other field; a real
archive of two real layer-ensemble networks (:class:`HeadsEnsemble`) is read as a deep ensemble
unchanged, and its member view computes exactly what that member's own layer-ensemble file computes.
The same on nnU-Net's folds: test_nnunet_members.py.
"""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_runner import run_cli
from conftest import make_tiny_model
from engine_models import error_lines
from LayerEnsemblesLib.contract import METADATA_FILE, ModelMetadata, export_model, load_model, read_metadata
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.evaluation import baselines
from LayerEnsemblesLib.evaluation.runner import load_methods, parse_method
from LayerEnsemblesLib.inference import Predictor
from LayerEnsemblesLib.members import HeadsEnsemble
from LayerEnsemblesLib.networks import LayerEnsembleUNet

SEEDS = (3, 4)


def member_network(seed: int) -> LayerEnsembleUNet:
    """The same network ``make_tiny_model(seed=seed)`` exports."""
    torch.manual_seed(seed)
    return LayerEnsembleUNet(3, 1, 3, depth=3, base_channels=4).eval()


def members_metadata(single: ModelMetadata, members: int) -> ModelMetadata:
    """A deep ensemble of ``members`` copies of ``single``'s head list."""
    metadata = copy.deepcopy(single)
    metadata.kind = "deep_ensemble"
    metadata.head_names = [f"fold_{i}" for i in range(members)]
    metadata.head_strides = [1] * members
    metadata.members = members
    metadata.skip_heads = 0
    metadata.member_heads = single.num_heads
    metadata.member_head_names = list(single.head_names)
    metadata.member_head_strides = list(single.head_strides)
    metadata.member_skip_heads = single.skip_heads
    metadata.name = "two-folds"
    return metadata


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two single layer-ensemble files and the deep ensemble of the same two networks, members with heads."""
    folder = tmp_path_factory.mktemp("members")
    singles = [make_tiny_model(folder / f"fold{s}.pt", seed=s, skip_heads=2) for s in SEEDS]
    metadata = members_metadata(read_metadata(singles[0]), len(SEEDS))
    ensemble = export_model(HeadsEnsemble([member_network(s) for s in SEEDS]), metadata, folder / "folds.pt")
    return singles, ensemble


@pytest.fixture(scope="module")
def document(files) -> dict:
    return json.loads(read_metadata(files[1]).to_json())


# --- the contract's fields -------------------------------------------------------------------------


def test_member_fields_round_trip_and_files_without_them_read_as_before(files, document, tiny_model_file):
    metadata = ModelMetadata.from_dict(document)
    assert metadata.member_heads == 6 and metadata.member_head_strides == [1, 2, 4, 2, 1, 1]
    assert metadata.member_skip_heads == 2 and metadata.member_head_names[0] == "encoder0"
    plain = json.loads(read_metadata(tiny_model_file).to_json())
    assert not any(k.startswith("member_") for k in plain)  # written exactly as before the fields existed
    assert ModelMetadata.from_dict(plain).member_heads == 1


BAD_MEMBER_FIELDS = [
    ({"member_heads": 0}, "member_heads must be an integer in 1..127, not 0"),
    ({"member_heads": "6"}, "member_heads must be an integer in 1..127, not '6'"),
    ({"member_heads": True}, "member_heads must be an integer in 1..127, not True"),
    ({"member_heads": 5}, "member_head_names must name member_heads (5) heads, not 6"),
    ({"member_head_names": "encoder0"}, "member_head_names must be a non-empty list of names"),
    ({"member_head_strides": [1, 2, 4, 2, 1]}, "member_head_strides must be a list of equal length"),
    ({"member_head_strides": [1, 2, 4, 2, 1, 0]}, "member_head_strides[5] must be a positive integer, not 0"),
    ({"member_head_strides": [1, 2, 4, 2, 1, 8]}, "member_head_strides[5] 8 must divide the size divisor"),
    ({"member_head_strides": [1, 2, 4, 2, 1, 2]}, "the last (deepest) head is the member's output"),
    ({"member_skip_heads": 6}, "member_skip_heads 6 must leave at least one of 6 heads"),
    ({"member_skip_heads": -1}, "member_skip_heads -1 must leave at least one"),
    (
        {"kind": "mc_dropout", "head_names": ["x"], "head_strides": [1], "members": 1},
        "only for deep_ensemble",
    ),
    ({"member_heads": 1}, "member_head_names is only meaningful with member_heads > 1"),
]


@pytest.mark.parametrize("edit, message", BAD_MEMBER_FIELDS, ids=[str(e) for e, _ in BAD_MEMBER_FIELDS])
def test_each_bad_member_field_is_named_in_one_line(document, edit, message):
    with pytest.raises(InputError) as caught:
        ModelMetadata.from_dict({**document, **edit}, "folds.pt")
    text = str(caught.value)
    assert message in text and text.startswith("folds.pt: ") and "\n" not in text, text


def test_member_names_repeat_is_refused(document):
    names = list(document["member_head_names"])
    names[3] = names[0]
    with pytest.raises(InputError, match=r"member_head_names\[3\] 'encoder0' appears twice"):
        ModelMetadata.from_dict({**document, "member_head_names": names}, "folds.pt")


# --- a real archive ---------------------------------------------------------------------------------


def test_the_archive_is_still_a_deep_ensemble_of_final_heads(files):
    singles, ensemble = files
    module, metadata = load_model(ensemble)
    assert metadata.kind == "deep_ensemble" and metadata.num_heads == 2
    x = torch.randn(1, 1, 24, 16, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = module(x)
        for single, output in zip(singles, outputs, strict=True):
            assert torch.equal(output, load_model(single)[0](x)[-1])


@pytest.mark.parametrize("member", [0, 1, "fold_1"])
def test_the_member_view_is_that_members_own_layer_ensemble(files, member):
    singles, ensemble = files
    index = 1 if member == "fold_1" else member
    single_module, single_metadata = load_model(singles[index])
    view, metadata = load_model(ensemble, member=member)
    assert metadata.kind == "layer_ensemble" and metadata.members == 1 and metadata.member_heads == 1
    for field in ("head_names", "head_strides", "skip_heads", "patch_size", "normalization", "classes"):
        assert getattr(metadata, field) == getattr(single_metadata, field), field
    assert metadata.provenance["member"].startswith(f"{index} (fold_{index}) of the 2 members")
    assert read_metadata(ensemble, member) == metadata
    x = torch.randn(1, 1, 16, 24, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        heads, expected = view(x), single_module(x)
    assert len(heads) == 6 and all(torch.equal(a, b) for a, b in zip(heads, expected, strict=True))


def test_a_member_prediction_equals_the_members_own_file(files):
    singles, ensemble = files
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(20, 24, 28)).astype(np.float32))
    ours = Predictor(ensemble, device="cpu", member=1).predict(image, maps=("agreement", "entropy"))
    theirs = Predictor(singles[1], device="cpu").predict(image, maps=("agreement", "entropy"))
    ours_report, theirs_report = ours.to_report(), theirs.to_report()
    for report in (ours_report, theirs_report):
        for key in ("model", "timings", "device_report"):
            report.pop(key, None)
    assert ours_report == theirs_report and ours.score == theirs.score  # AULA, decision, heads: all of it
    for name in ("probabilities", "segmentation"):
        assert np.array_equal(
            sitk.GetArrayFromImage(getattr(ours, name)), sitk.GetArrayFromImage(getattr(theirs, name))
        ), name
    assert ours.model_identity["member"] == 1 and "member" not in theirs.model_identity


def test_bad_members_are_refused_in_one_line_by_every_reader(files, tmp_path):
    singles, ensemble = files
    cases = [
        (ensemble, 2, "member 2 is out of range (the deep ensemble has 2 members, 0..1: fold_0, fold_1)"),
        (ensemble, "fold_7", "member 'fold_7' is neither an index nor one of fold_0, fold_1"),
        (singles[0], 0, "a layer_ensemble model without member heads"),
    ]
    for path, member, message in cases:
        for reader in (
            read_metadata,
            lambda p, m: load_model(p, "cpu", m),
            lambda p, m: Predictor(p, "cpu", member=m),
        ):
            with pytest.raises(InputError) as caught:
                reader(path, member)
            assert message in str(caught.value) and "\n" not in str(caught.value)
    result = run_cli(
        "segment", tmp_path / "x.nrrd", "--model", ensemble, "--member", "5", "--out", tmp_path / "o"
    )
    assert result.returncode == 2 and len(error_lines(result.stderr)) == 1
    assert "member 5 is out of range" in result.stderr


def test_an_archive_without_the_method_is_refused(files, tmp_path):
    """An outside producer that declares member heads but exports no ``member_heads`` method."""
    singles, _ = files
    plain = baselines.export_deep_ensemble(singles, tmp_path / "plain.pt")
    metadata = members_metadata(read_metadata(singles[0]), 2)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.load(str(plain)), buffer, _extra_files={METADATA_FILE: metadata.to_json()})
    (tmp_path / "declared.pt").write_bytes(buffer.getvalue())
    assert load_model(tmp_path / "declared.pt")[1].member_heads == 6  # the ensemble itself loads
    with pytest.raises(InputError, match="declares member heads but the archive has no member_heads method"):
        load_model(tmp_path / "declared.pt", member=0)
    with pytest.raises(InputError, match="a deep_ensemble model without member heads"):
        read_metadata(plain, 0)


def test_evaluate_names_a_member_with_a_suffix(files):
    _, ensemble = files
    assert parse_method(f"LE={ensemble}#member=fold_1") == ("LE", ensemble, "fold_1")
    assert parse_method(f"DE={ensemble}") == ("DE", ensemble, None)
    methods = load_methods([f"DE={ensemble}", f"LE={ensemble}#member=1"])
    assert [(m.metadata.kind, m.member) for m in methods] == [("deep_ensemble", None), ("layer_ensemble", 1)]
    assert methods[1].has_aula and methods[1].ensemble_size == 4
    with pytest.raises(InputError, match="give the member after #member="):
        parse_method(f"LE={ensemble}#member=")


def test_a_resume_refuses_another_member_under_the_same_name(files, tmp_path):
    from LayerEnsemblesLib.evaluation.runner import check_resume_models

    _, ensemble = files
    first = load_methods([f"LE={ensemble}#member=0"])[0]
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({"methods": [{"name": "LE", "sha256": first.sha256, "member": 0}]}))
    check_resume_models(run_file, [first])  # the same member: resumable
    with pytest.raises(InputError, match="method 'LE' was run as member 0, now as member 1"):
        check_resume_models(run_file, load_methods([f"LE={ensemble}#member=1"]))


def test_a_member_bundle_records_the_member_and_the_review_refuses_it_for_the_whole_file(files, tmp_path):
    """`segment --member --save-heads` keeps the member's heads; the review, which runs whole files, does
    not take that bundle up as the loaded deep ensemble's result."""
    from LayerEnsemblesLib.inference.bundle import load_bundle

    _, ensemble = files
    image = sitk.GetImageFromArray(np.random.default_rng(2).normal(size=(16, 20, 24)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "case.nrrd"))
    result = run_cli(
        "segment", tmp_path / "case.nrrd", "--model", ensemble, "--member", "1", "--out", tmp_path / "o",
        "--save-heads", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "o" / "case_report.json").read_text())
    bundle = load_bundle(report["bundle"])
    assert bundle.metadata.kind == "layer_ensemble" and bundle.metadata.num_heads == 6
    assert bundle.model_identity["member"] == 1
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    from LayerEnsemblesLib.review.controller import ReviewController
    from LayerEnsemblesLib.scene import add_volume_from_image, create_scene

    context = create_scene()
    controller = ReviewController(context, bundle_folder=tmp_path / "kept")
    errors: list[str] = []
    controller.subscribe("error", errors.append)
    try:
        assert controller.load_model(ensemble)
        volume = add_volume_from_image(context.scene, image, "case")
        nodes = context.scene.GetNumberOfNodes()
        assert not controller.add_from_bundle(volume, report["bundle"])
        assert "made with member 1 of two-folds alone" in errors[-1] and "\n" not in errors[-1]
        assert context.scene.GetNumberOfNodes() == nodes and controller.state.cases == []
    finally:
        controller.close()
