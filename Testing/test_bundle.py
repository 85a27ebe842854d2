"""Results bundles: saved head outputs that recombine without the network, bit for bit, and refuse bad files.

Every comparison is against a fresh ``Predictor.predict`` on the same image with a real exported model,
so a bundle that lost precision, geometry or a cache rule would show as a differing voxel or AULA.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_runner import run_cli
from engine_models import export_intensity_model, oblique_volume, sphere_image
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.inference import Predictor
from LayerEnsemblesLib.inference.bundle import BUNDLE_SUFFIX, load_bundle, save_bundle

ALL_MAPS = ("agreement", "entropy", "mutual_information", "variance")


def array_of(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def assert_identical(got, expected) -> None:
    """Segmentation, every map, probabilities, AULA and decision equal bit for bit, on the same grid."""
    assert got.head_range == expected.head_range and got.head_names == expected.head_names
    assert (array_of(got.segmentation) == array_of(expected.segmentation)).all()
    for image in (got.segmentation, *got.maps.values()):
        assert image.GetOrigin() == expected.segmentation.GetOrigin()
        assert image.GetSpacing() == expected.segmentation.GetSpacing()
        assert image.GetDirection() == expected.segmentation.GetDirection()
    assert set(got.maps) == set(expected.maps)
    for name in expected.maps:
        assert (array_of(got.maps[name]) == array_of(expected.maps[name])).all(), name
    assert (array_of(got.probabilities) == array_of(expected.probabilities)).all()
    assert got.aula == expected.aula
    assert got.aula.to_dict() == expected.aula.to_dict()
    assert (got.threshold, got.decision, got.reason) == (
        expected.threshold,
        expected.decision,
        expected.reason,
    )


@pytest.fixture(scope="module")
def predictor_3d(tiny_model_file):
    return Predictor(tiny_model_file, device="cpu", window_size=(32, 32, 32))


@pytest.fixture(scope="module")
def saved_3d(predictor_3d, tmp_path_factory):
    image = oblique_volume(seed=1)
    prediction = predictor_3d.predict(image, maps=ALL_MAPS, source="oblique.nii.gz")
    path = save_bundle(prediction, tmp_path_factory.mktemp("bundles") / f"oblique{BUNDLE_SUFFIX}")
    return image, prediction, path


def test_a_loaded_bundle_is_the_prediction_it_was_saved_from(saved_3d):
    _, prediction, path = saved_3d
    loaded = load_bundle(path)
    assert_identical(loaded, prediction)
    assert loaded.threshold_source == prediction.threshold_source
    assert loaded.source == "oblique.nii.gz"
    assert loaded.metadata == prediction.metadata
    report, original = loaded.to_report(), prediction.to_report()
    for key in ("heads", "aula", "classes", "maps", "geometry", "window", "model", "decision", "score"):
        assert report[key] == original[key], key


@pytest.mark.parametrize(
    ("head_range", "threshold"),
    [((0, 6), None), ((2, 6), 0.5), ((1, 4), 0.99), ((3, 5), 0.0), ((5, 6), None)],
)
def test_recombining_a_bundle_equals_a_fresh_prediction(saved_3d, predictor_3d, head_range, threshold):
    image, _, path = saved_3d
    fresh = predictor_3d.predict(image, head_range=head_range, threshold=threshold, maps=ALL_MAPS)
    recombined = load_bundle(path).recombine(head_range=head_range, threshold=threshold)
    assert_identical(recombined, fresh)


def test_a_bundle_loads_straight_into_another_head_range_threshold_and_maps(saved_3d, predictor_3d):
    image, _, path = saved_3d
    loaded = load_bundle(path, head_range=(2, None), threshold=0.25, maps="variance")
    fresh = predictor_3d.predict(image, head_range=(2, 6), threshold=0.25, maps=("variance",))
    assert_identical(loaded, fresh)
    assert loaded.threshold_source == "argument"
    with pytest.raises(InputError, match=r"oblique_heads\.pt: head range 4:9"):
        load_bundle(path, head_range=(4, 9))
    with pytest.raises(InputError, match="threshold 1.5 must be in"):
        load_bundle(path, threshold=1.5)


def test_a_bundle_recombines_step_by_step_like_a_fresh_prediction(saved_3d, predictor_3d):
    """The incremental (add one head, drop one head) path from a bundle ends where a fresh pass does."""
    image, _, path = saved_3d
    current = load_bundle(path)
    for head_range in [(1, 6), (1, 5), (2, 5), (2, 6), (0, 6)]:
        current = current.recombine(head_range=head_range, maps=("agreement", "variance"))
    fresh = predictor_3d.predict(image, maps=("agreement", "variance"))
    assert_identical(current, fresh)
    skipped = current.recombine(skip_heads=4, maps=("entropy",))
    assert_identical(skipped, predictor_3d.predict(image, skip_heads=4, maps=("entropy",)))


def test_bundles_of_a_2d_model_recombine_bit_for_bit(tiny_model_file_2d, tmp_path):
    predictor = Predictor(tiny_model_file_2d, device="cpu")
    image = oblique_volume(seed=2, size_zyx=(7, 30, 26))
    path = save_bundle(predictor.predict(image, maps=ALL_MAPS), tmp_path / "slices_heads.pt")
    loaded = load_bundle(path)
    for head_range, threshold in [((0, 6), None), ((2, 5), 0.4), ((4, 6), 0.95)]:
        fresh = predictor.predict(image, head_range=head_range, threshold=threshold, maps=ALL_MAPS)
        assert_identical(loaded.recombine(head_range=head_range, threshold=threshold), fresh)


def test_deep_ensemble_bundle_with_stride_one_members(tmp_path):
    model = export_intensity_model(
        tmp_path / "de.pt", strides=[1, 1, 1], offsets=[0.0, 0.3, -0.3], kind="deep_ensemble"
    )
    predictor = Predictor(model, device="cpu")
    image, _ = sphere_image(noise=0.3, seed=2, spacing=(1.2, 0.8, 1.0))
    path = save_bundle(predictor.predict(image, maps=ALL_MAPS), tmp_path / "de_heads.pt")
    assert_identical(
        load_bundle(path).recombine(head_range=(1, 3)),
        predictor.predict(image, head_range=(1, 3), maps=ALL_MAPS),
    )


def test_head_outputs_are_stored_losslessly_and_half_precision_only_when_exact(saved_3d, tmp_path):
    _, prediction, path = saved_3d
    payload = torch.load(path, weights_only=True)
    originals = prediction.session.stream.logits
    assert len(payload["logits"]) == len(originals) == 6
    for stored, original in zip(payload["logits"], originals, strict=True):
        assert stored.shape == original.shape
        assert torch.equal(stored.to(original.dtype), original)  # lossless, whatever the dtype
    # a model whose logits are small multiples of 1/4 is exactly representable in half precision
    model = export_intensity_model(tmp_path / "exact.pt", strides=[1, 2], offsets=[0.0, 0.25])
    mask_image = sitk.Cast(sphere_image(noise=0.0)[0] > 0.5, sitk.sitkFloat32)
    exact = Predictor(model, device="cpu", window_size=(32, 36, 40)).predict(
        mask_image
    )  # one window: no blending
    exact_path = save_bundle(exact, tmp_path / "exact_heads.pt")
    stored = torch.load(exact_path, weights_only=True)["logits"]
    assert all(t.dtype == torch.float16 for t in stored)
    assert_identical(load_bundle(exact_path), exact)


def test_float16_head_outputs_halve_the_bundle_and_still_recombine_exactly(
    tiny_model_file, saved_3d, tmp_path
):
    image, full_precision, full_path = saved_3d
    predictor = Predictor(tiny_model_file, device="cpu", window_size=(32, 32, 32), head_precision="float16")
    prediction = predictor.predict(image, maps=ALL_MAPS)
    assert prediction.to_report()["window"]["head_precision"] == "float16"
    path = save_bundle(prediction, tmp_path / "half_heads.pt")
    assert all(t.dtype == torch.float16 for t in torch.load(path, weights_only=True)["logits"])
    assert path.stat().st_size < 0.6 * full_path.stat().st_size
    for head_range, threshold in [((0, 6), None), ((2, 5), 0.3)]:
        fresh = predictor.predict(image, head_range=head_range, threshold=threshold, maps=ALL_MAPS)
        assert_identical(load_bundle(path).recombine(head_range=head_range, threshold=threshold), fresh)
    # rounding the logits once moves almost no voxel's label
    same = array_of(prediction.segmentation) == array_of(full_precision.segmentation)
    assert same.mean() > 0.99
    with pytest.raises(InputError, match="head precision"):
        Predictor(tiny_model_file, device="cpu", head_precision="int8")


def test_the_bundle_names_its_model_and_geometry(saved_3d, tiny_model_file):
    _, prediction, path = saved_3d
    loaded = load_bundle(path)
    digest = hashlib.sha256(tiny_model_file.read_bytes()).hexdigest()
    assert loaded.model_identity == {
        "path": str(tiny_model_file),
        "name": "tiny-test-model",
        "sha256": digest,
    }
    assert loaded.to_report()["model"]["sha256"] == digest
    document = json.loads(torch.load(path, weights_only=True)["document"])
    assert document["input_grid"]["direction"] == list(prediction.segmentation.GetDirection())
    assert document["head_range"] == [0, 6] and document["maps"] == list(ALL_MAPS)


def test_an_existing_bundle_is_replaced_only_when_asked(saved_3d):
    _, prediction, path = saved_3d
    before = path.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        save_bundle(prediction, path)
    assert path.read_bytes() == before
    save_bundle(prediction.recombine(head_range=(2, 6)), path, overwrite=True)
    assert load_bundle(path).head_range == (2, 6)
    save_bundle(prediction, path, overwrite=True)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


class _Trap:
    """Unpickling this would create a file: proof that loading never unpickles foreign objects."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _damaged_bundles(good, folder):
    """name -> a file that must be refused, made from the good bundle or from scratch."""
    data = good.read_bytes()
    files = {}
    files["truncated"] = data[: len(data) // 2]
    flipped = bytearray(data)
    with zipfile.ZipFile(good) as archive:  # flip one byte inside the largest stored record
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    name_length, extra_length = np.frombuffer(data[info.header_offset + 26 : info.header_offset + 30], "<u2")
    offset = info.header_offset + 30 + int(name_length) + int(extra_length) + info.compress_size // 2
    flipped[offset] ^= 0xFF
    files["flipped"] = bytes(flipped)
    files["empty"] = b""
    files["text"] = b"not a bundle at all\n"
    files["pickle"] = pickle.dumps({"format": "layer-ensembles-heads"})
    (folder / "model.pt").write_bytes(b"")
    trap = folder / "trap.pt"
    torch.save(
        {"format": "layer-ensembles-heads", "format_version": 1, "logits": _Trap(folder / "sprung")}, trap
    )
    files["trap"] = trap.read_bytes()
    other = folder / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    files["foreign"] = other.read_bytes()
    newer = folder / "newer.pt"
    torch.save(
        {"format": "layer-ensembles-heads", "format_version": 99, "logits": [], "document": "{}"}, newer
    )
    files["newer"] = newer.read_bytes()
    broken = folder / "broken.pt"
    payload = torch.load(good, weights_only=True)
    torch.save({**payload, "document": payload["document"].replace('"head_range"', '"head_rang"')}, broken)
    files["no_head_range"] = broken.read_bytes()
    document = json.loads(payload["document"])
    document["network"]["reference"]["size"][0] += 1
    torch.save({**payload, "document": json.dumps(document)}, broken)
    files["other_geometry"] = broken.read_bytes()
    document["stream"]["dtype"] = "load"
    torch.save({**payload, "document": json.dumps(document)}, broken)
    files["unknown_dtype"] = broken.read_bytes()
    return files


def test_damaged_or_foreign_bundles_are_refused_in_one_line(saved_3d, tmp_path):
    _, _, good = saved_3d
    for name, data in _damaged_bundles(good, tmp_path).items():
        path = tmp_path / f"{name}_heads.pt"
        path.write_bytes(data)
        with pytest.raises(InputError) as caught:
            load_bundle(path)
        message = str(caught.value)
        assert message.startswith(str(path)) and "\n" not in message, (name, message)
    assert not (tmp_path / "sprung").exists()
    with pytest.raises(InputError, match="results bundle not found"):
        load_bundle(tmp_path / "missing_heads.pt")


def test_release_device_memory_keeps_recombination_exact(predictor_3d):
    image = oblique_volume(seed=3)
    prediction = predictor_3d.predict(image, maps=ALL_MAPS, keep_on_device=True)
    assert prediction.retained_device == "cpu"  # the compute device here
    moved = prediction.session.stream.to(torch.device("cpu"), keep_caches=True)
    assert moved._sums.keys() == prediction.session.stream._sums.keys()  # caches travel with the logits
    prediction.session.stream = moved
    prediction.release_device_memory()  # a no-op on the CPU, and must not disturb anything
    fresh = predictor_3d.predict(image, head_range=(1, 5), maps=ALL_MAPS)
    assert_identical(prediction.recombine(head_range=(1, 5)), fresh)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_finished_predictions_hold_no_gpu_memory(tiny_model_file, tmp_path):
    predictor = Predictor(tiny_model_file, device="cuda")
    image = oblique_volume(seed=4)
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    worklist = [predictor.predict(image, maps=ALL_MAPS) for _ in range(3)]
    assert all(p.retained_device == "cpu" for p in worklist)
    assert torch.cuda.memory_allocated() - baseline < 1024**2  # only the model's own buffers
    interactive = predictor.predict(image, maps=ALL_MAPS, keep_on_device=True)
    assert interactive.retained_device.startswith("cuda")
    on_gpu = interactive.recombine(head_range=(2, 6))
    interactive.release_device_memory()
    assert interactive.retained_device == "cpu"
    assert interactive.recombine(head_range=(2, 6)).aula.pair_labels == on_gpu.aula.pair_labels
    loaded = load_bundle(save_bundle(worklist[0], tmp_path / "gpu_heads.pt"), device="cuda")
    assert loaded.retained_device.startswith("cuda")
    assert_identical(
        loaded.recombine(head_range=(2, 6)),
        predictor.predict(image, head_range=(2, 6), maps=ALL_MAPS, keep_on_device=True),
    )


def test_segment_save_heads_writes_a_bundle_that_recombines(tmp_path, tiny_model_file):
    image = oblique_volume(seed=5)
    source = tmp_path / "patient03.nrrd"
    sitk.WriteImage(image, str(source))
    out = tmp_path / "out"
    arguments = ["segment", source, "--model", tiny_model_file, "--out", out, "--device", "cpu"]
    arguments += ["--window", "32,32,32"]
    result = run_cli(*arguments, "--save-heads", "--maps", "agreement,entropy", "--quiet")
    assert result.returncode == 0, result.stderr
    bundle = out / "patient03_heads.pt"
    report = json.loads((out / "patient03_report.json").read_text())
    assert report["outputs"]["heads"] == report["bundle"] == str(bundle)
    predictor = Predictor(tiny_model_file, device="cpu", window_size=(32, 32, 32))
    read_back = sitk.ReadImage(str(source))
    loaded = load_bundle(bundle)
    assert loaded.source == str(source)
    assert_identical(loaded, predictor.predict(read_back, maps=("agreement", "entropy")))
    fresh = predictor.predict(read_back, head_range=(3, 6), threshold=0.2, maps=("agreement", "entropy"))
    assert_identical(loaded.recombine(head_range=(3, 6), threshold=0.2), fresh)
    # the same command again without --overwrite: the finished case is skipped, its bundle untouched
    written = bundle.read_bytes(), bundle.stat().st_mtime_ns
    again = run_cli(*arguments, "--save-heads", "--quiet")
    assert again.returncode == 0, again.stderr
    assert (bundle.read_bytes(), bundle.stat().st_mtime_ns) == written and len(list(out.iterdir())) == 5
