"""The Predictor on real exported models: outputs, sliding windows, recombination, model kinds, memory."""

from __future__ import annotations

import json
import math
import pickle
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from engine_models import export_intensity_model, sphere_image
from LayerEnsemblesLib.contract import load_model
from LayerEnsemblesLib.devices import device_report, resolve_device
from LayerEnsemblesLib.errors import Cancelled, InputError
from LayerEnsemblesLib.inference import DEFAULT_AULA_THRESHOLD, AulaResult, Prediction, Predictor
from LayerEnsemblesLib.networks import upsample_logits
from LayerEnsemblesLib.preprocessing import to_network_space
from LayerEnsemblesLib.uncertainty import aula_from_labels

ALL_MAPS = ("agreement", "entropy", "mutual_information", "variance")


def noise_volume(size=(28, 24, 20), spacing=(1.0, 1.0, 1.0), seed=0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    array = rng.normal(size=size[::-1]).astype(np.float32)
    array[4:-4, 5:-5, 6:-6] += 2.0  # some structure, so heads do not all agree on noise alone
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -5.0, 3.0))
    return image


def array_of(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


@pytest.fixture(scope="module")
def intensity_model(tmp_path_factory):
    return export_intensity_model(tmp_path_factory.mktemp("models") / "intensity.pt")


@pytest.fixture(scope="module")
def tiny_predictor(tiny_model_file):
    return Predictor(tiny_model_file, device="cpu", window_size=(32, 32, 32))


def test_outputs_have_the_input_geometry_and_sane_values(tiny_predictor):
    image = noise_volume(spacing=(0.9, 1.1, 1.3))
    prediction = tiny_predictor.predict(image, maps=ALL_MAPS)
    assert isinstance(prediction, Prediction) and isinstance(prediction.aula, AulaResult)
    outputs = [prediction.segmentation, *prediction.maps.values(), prediction.probabilities]
    for output in outputs:
        assert output.GetSize() == image.GetSize()
        assert output.GetSpacing() == pytest.approx(image.GetSpacing())
        assert output.GetOrigin() == pytest.approx(image.GetOrigin())
        assert output.GetDirection() == pytest.approx(image.GetDirection())
    assert prediction.segmentation.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(array_of(prediction.segmentation))) <= {0, 1, 2}
    assert all(m.GetPixelID() == sitk.sitkFloat32 for m in prediction.maps.values())
    agreement = array_of(prediction.maps["agreement"])
    assert agreement.min() >= 0 and agreement.max() <= 1 + 1e-6 and agreement.min() < 1
    entropy, information = (
        array_of(prediction.maps["entropy"]),
        array_of(prediction.maps["mutual_information"]),
    )
    assert (entropy >= information - 1e-5).all() and information.min() >= 0
    probabilities = array_of(prediction.probabilities)
    assert probabilities.shape == (*agreement.shape, 3)
    assert np.allclose(probabilities[2:-2, 2:-2, 2:-2].sum(-1), 1.0, atol=1e-4)
    assert prediction.head_range == (0, 6) and len(prediction.head_names) == 6
    assert 0 <= prediction.score <= 1
    assert prediction.decision == ("accepted" if prediction.score >= DEFAULT_AULA_THRESHOLD else "flagged")
    assert prediction.threshold_source == "default" and prediction.device == "cpu"
    assert {"preprocess", "forward", "reduce", "postprocess", "total"} <= set(prediction.timings)
    json.dumps(prediction.to_report(), allow_nan=False)


def test_whole_volume_result_equals_a_direct_forward_pass(tiny_model_file):
    image = noise_volume(size=(30, 26, 22), seed=1)  # padded to multiples of 4 in network space
    predictor = Predictor(tiny_model_file, device="cpu", window_size=(64, 64, 64))
    prediction = predictor.predict(image, head_range=(1, 6), maps=("agreement",))
    assert prediction.to_report()["window"]["count"] == 1

    module, metadata = load_model(tiny_model_file)
    array, geometry = to_network_space(image, metadata)
    with torch.no_grad():
        outputs = module(torch.from_numpy(array)[None])
    crop = tuple(slice(b, s - a) for (b, a), s in zip(geometry.padding, geometry.shape, strict=False))
    probabilities = torch.stack(
        [
            torch.softmax(upsample_logits(o, list(geometry.shape))[0], 0)[(slice(None), *crop)]
            for o in outputs[1:]
        ]
    )
    mean = probabilities.mean(0)
    expected_label = mean.argmax(0).numpy()
    top2 = mean.topk(2, 0).values
    decided = ((top2[0] - top2[1]) > 1e-5).numpy()
    assert (array_of(prediction.segmentation)[decided] == expected_label[decided]).all()
    head_labels = probabilities.argmax(1)
    expected_agreement = (head_labels == mean.argmax(0)).float().mean(0).numpy()
    assert np.allclose(array_of(prediction.maps["agreement"])[decided], expected_agreement[decided])
    expected_aula = aula_from_labels(
        [h.numpy() for h in head_labels], {c.name: c.value for c in metadata.classes}
    )
    assert prediction.aula.normalized == pytest.approx(expected_aula.normalized, abs=1e-3)


def test_small_windows_equal_the_whole_volume_for_a_local_model(intensity_model):
    image, _ = sphere_image(size=(40, 36, 32))
    whole = Predictor(intensity_model, device="cpu", window_size=(64, 64, 64)).predict(image, maps=ALL_MAPS)
    windowed = Predictor(intensity_model, device="cpu", window_size=(8, 12, 8)).predict(image, maps=ALL_MAPS)
    assert windowed.to_report()["window"]["count"] > 20
    assert (array_of(windowed.segmentation) == array_of(whole.segmentation)).all()
    for name in ALL_MAPS:
        assert np.allclose(array_of(windowed.maps[name]), array_of(whole.maps[name]), atol=1e-5), name
    assert windowed.aula.normalized == pytest.approx(whole.aula.normalized, abs=1e-9)


def test_small_windows_are_sane_for_a_convolutional_model(tiny_model_file):
    image = noise_volume(size=(32, 32, 32), seed=2)
    whole = Predictor(tiny_model_file, device="cpu", window_size=(32, 32, 32)).predict(image)
    windowed = Predictor(tiny_model_file, device="cpu", window_size=(16, 16, 16), overlap=0.5).predict(image)
    assert windowed.to_report()["window"] == {
        **windowed.to_report()["window"],
        "size_zyx": [16, 16, 16],
        "count": 27,
    }
    same = (array_of(windowed.segmentation) == array_of(whole.segmentation)).mean()
    assert same > 0.6  # context differs at window borders, but most voxels keep their label
    assert np.isfinite(array_of(windowed.maps["agreement"])).all()


@pytest.mark.parametrize("head_range", [(2, 6), (0, 3), (4, 6), (1, 5)])
def test_recombination_equals_a_fresh_prediction(tiny_predictor, head_range):
    image = noise_volume(seed=3)
    first = tiny_predictor.predict(image, maps=ALL_MAPS)
    recombined = first.recombine(head_range=head_range)
    fresh = tiny_predictor.predict(image, head_range=head_range, maps=ALL_MAPS)
    assert recombined.head_range == fresh.head_range == head_range
    assert recombined.head_names == fresh.head_names
    assert (array_of(recombined.segmentation) == array_of(fresh.segmentation)).all()
    for name in ALL_MAPS:
        assert (array_of(recombined.maps[name]) == array_of(fresh.maps[name])).all(), name
    assert recombined.aula == fresh.aula
    assert (array_of(recombined.probabilities) == array_of(fresh.probabilities)).all()
    assert recombined.decision == fresh.decision and recombined.score == fresh.score
    # the first prediction is unchanged and can still answer lazily after the session moved on
    assert (array_of(first.probabilities) == array_of(tiny_predictor.predict(image).probabilities)).all()


def test_recombination_with_skip_heads_and_new_maps(tiny_predictor):
    image = noise_volume(seed=4)
    first = tiny_predictor.predict(image, maps=("agreement",))
    recombined = first.recombine(skip_heads=3, maps=("variance", "mutual_information"))
    fresh = tiny_predictor.predict(image, skip_heads=3, maps=("variance", "mutual_information"))
    assert recombined.head_range == (3, 6)
    assert set(recombined.maps) == {"variance", "mutual_information"}
    for name in recombined.maps:
        assert (array_of(recombined.maps[name]) == array_of(fresh.maps[name])).all()
    back = recombined.recombine(head_range=(0, 6), maps=("agreement",))
    assert (array_of(back.maps["agreement"]) == array_of(first.maps["agreement"])).all()
    assert back.aula == first.aula


def test_threshold_only_recombination_recomputes_nothing_but_the_decision(tiny_predictor):
    prediction = tiny_predictor.predict(noise_volume(seed=5))
    lenient = prediction.recombine(threshold=0.0)
    strict = prediction.recombine(threshold=1.0)
    assert (
        lenient.segmentation is prediction.segmentation
        and lenient.maps["agreement"] is prediction.maps["agreement"]
    )
    assert lenient.aula is prediction.aula
    assert lenient.decision == "accepted" and lenient.threshold_source == "argument"
    assert strict.decision == "flagged" and "below the threshold" in strict.reason


def test_model_defaults_for_skipped_heads_and_calibrated_threshold(tmp_path):
    from conftest import make_tiny_model

    path = make_tiny_model(tmp_path / "calibrated.pt", skip_heads=2, aula_threshold=0.5)
    prediction = Predictor(path, device="cpu").predict(noise_volume(seed=6))
    assert prediction.head_range == (2, 6)
    assert prediction.head_names == ["encoder2", "decoder1", "decoder0", "final"]
    assert prediction.aula.pair_labels == ["decoder1/encoder2", "decoder0/decoder1", "final/decoder0"]
    assert (prediction.threshold, prediction.threshold_source) == (0.5, "model")
    overridden = Predictor(path, device="cpu").predict(noise_volume(seed=6), threshold=0.7)
    assert (overridden.threshold, overridden.threshold_source) == (0.7, "argument")


def test_one_kept_head_is_flagged_with_undefined_aula(tiny_predictor):
    prediction = tiny_predictor.predict(noise_volume(seed=7), head_range=(5, 6), maps=ALL_MAPS)
    assert math.isnan(prediction.score) and prediction.decision == "flagged"
    assert "single kept head" in prediction.reason
    assert (array_of(prediction.maps["agreement"]) == 1).all()
    assert np.abs(array_of(prediction.maps["mutual_information"])).max() < 1e-6
    report = prediction.to_report()
    assert report["score"] is None and report["aula"]["normalized"]["union"] is None
    json.dumps(report, allow_nan=False)
    two = prediction.recombine(head_range=(4, 6))
    assert two.aula.raw["union"] == 0.0 and two.score == two.aula.curves["union"][0]


def test_empty_prediction_is_flagged_even_though_heads_agree(tmp_path):
    path = export_intensity_model(tmp_path / "never.pt", thresholds=[50.0])
    image, _ = sphere_image()
    prediction = Predictor(path, device="cpu").predict(image)
    assert prediction.aula.empty_foreground and prediction.aula.empty_classes == ["class1"]
    assert prediction.aula.normalized["union"] == 1.0
    assert prediction.decision == "flagged" and "no foreground" in prediction.reason


def test_a_sphere_is_segmented_where_it_is(intensity_model):
    image, mask = sphere_image(spacing=(1.0, 1.0, 1.0))
    prediction = Predictor(intensity_model, device="cpu").predict(image)
    segmentation = array_of(prediction.segmentation) > 0
    assert (segmentation == mask).mean() > 0.99
    assert prediction.accepted


def test_numpy_input_with_spacing(intensity_model):
    image, mask = sphere_image(spacing=(1.0, 1.0, 1.0))
    array = sitk.GetArrayFromImage(image)
    prediction = Predictor(intensity_model, device="cpu").predict(array, spacing=(1.0, 1.0, 1.0))
    assert prediction.segmentation.GetSize() == image.GetSize()
    assert ((array_of(prediction.segmentation) > 0) == mask).mean() > 0.99
    with pytest.raises(InputError, match="spacing"):
        Predictor(intensity_model, device="cpu").predict(array, spacing=(1.0, 0.0, 1.0))


def test_2d_model_runs_slice_by_slice(tiny_model_file_2d):
    image = noise_volume(size=(24, 20, 6), seed=8)
    predictor = Predictor(tiny_model_file_2d, device="cpu", window_size=(4, 32, 32))
    prediction = predictor.predict(image, maps=ALL_MAPS)
    assert prediction.segmentation.GetSize() == image.GetSize()
    assert prediction.to_report()["window"]["count"] == 2  # 6 slices in batches of 4: starts 0 and 2

    module, metadata = load_model(tiny_model_file_2d)
    array, geometry = to_network_space(image, metadata)
    with torch.no_grad():
        outputs = module(torch.from_numpy(array).transpose(0, 1))  # slices as the batch
    size = list(geometry.shape[1:])
    crop = tuple(slice(b, s - a) for (b, a), s in zip(geometry.padding[1:], geometry.shape[1:], strict=False))
    mean = torch.stack([torch.softmax(upsample_logits(o, size), 1) for o in outputs]).mean(0)
    mean = mean[(slice(None), slice(None), *crop)]
    top2 = mean.topk(2, 1).values
    decided = ((top2[:, 0] - top2[:, 1]) > 1e-5).numpy()
    assert (array_of(prediction.segmentation)[decided] == mean.argmax(1).numpy()[decided]).all()


def test_deep_ensemble_members_form_the_ensemble(tmp_path):
    path = export_intensity_model(
        tmp_path / "de.pt", strides=[1, 1, 1], offsets=[0.0, 0.3, -0.3], kind="deep_ensemble"
    )
    image, _ = sphere_image(noise=0.3, seed=2)
    prediction = Predictor(path, device="cpu").predict(image)
    assert prediction.head_names == ["head0", "head1", "head2"]
    assert prediction.aula.pair_labels == ["head1/head0", "head2/head1"]
    assert 0 < prediction.score < 1  # members disagree on the noisy voxels


def test_mc_dropout_samples_differ_and_are_reproducible(tmp_path):
    path = export_intensity_model(tmp_path / "mc.pt", strides=[1], kind="mc_dropout", samples=5, dropout=0.3)
    image, _ = sphere_image()
    predictor = Predictor(path, device="cpu")
    prediction = predictor.predict(image, maps=ALL_MAPS)
    assert prediction.head_names == [f"sample{i}" for i in range(5)]
    assert len(prediction.aula.curves["union"]) == 4
    assert prediction.score < 1  # dropout was active: the samples disagree
    assert array_of(prediction.maps["mutual_information"]).max() > 0
    assert not any(m.training for m in predictor.module.modules())  # back in eval mode
    again = Predictor(path, device="cpu").predict(image, maps=ALL_MAPS)
    assert again.aula == prediction.aula


def test_out_of_memory_shrinks_the_window_with_one_warning(tmp_path):
    path = export_intensity_model(tmp_path / "oom.pt", oom_above_voxels=5000)
    image, _ = sphere_image()
    reference = Predictor(export_intensity_model(tmp_path / "ok.pt"), device="cpu").predict(image)
    predictor = Predictor(path, device="cpu", window_size=(32, 32, 32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prediction = predictor.predict(image)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "out of memory" in messages[0]
    assert prediction.to_report()["window"]["size_zyx"] == [16, 16, 16]
    assert prediction.warnings == messages
    assert (array_of(prediction.segmentation) == array_of(reference.segmentation)).all()


def test_out_of_memory_with_the_smallest_window_on_the_cpu_is_a_clear_error(tmp_path):
    path = export_intensity_model(tmp_path / "hopeless.pt", oom_above_value=100.0)
    image, _ = sphere_image()
    image[5, 5, 5] = 1000.0  # every window that holds this voxel "runs out of memory"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match="out of memory"):
            Predictor(path, device="cpu").predict(image, source="case.nii.gz")


def test_memory_budget_shrinks_the_window(intensity_model):
    image, _ = sphere_image(size=(32, 32, 32))
    free = Predictor(intensity_model, device="cpu").predict(image)
    tight = Predictor(intensity_model, device="cpu", memory_budget_gb=0.005).predict(image)
    assert free.to_report()["window"]["size_zyx"] == [16, 16, 16]  # the model's patch size
    assert 8**3 <= np.prod(tight.to_report()["window"]["size_zyx"]) < 16**3
    assert (array_of(tight.segmentation) == array_of(free.segmentation)).all()


def test_progress_reports_and_cancel_stops(tiny_predictor):
    seen = []
    tiny_predictor.predict(noise_volume(seed=10), progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(m.startswith("window") for _, m in seen)
    with pytest.raises(Cancelled):
        tiny_predictor.predict(noise_volume(seed=10), cancel=lambda: True)


def test_argument_errors_are_reported_before_any_work(tiny_predictor):
    image = noise_volume()
    with pytest.raises(InputError, match="either skip_heads or head_range"):
        tiny_predictor.predict(image, skip_heads=1, head_range=(0, 3))
    with pytest.raises(InputError, match="head range 4:9"):
        tiny_predictor.predict(image, head_range=(4, 9))
    with pytest.raises(InputError, match="threshold"):
        tiny_predictor.predict(image, threshold=1.5)
    with pytest.raises(InputError, match="unknown map"):
        tiny_predictor.predict(image, maps=("confidence",))


def test_input_that_does_not_fit_the_model(tmp_path):
    two_channel = Predictor(export_intensity_model(tmp_path / "two.pt", in_channels=2), device="cpu")
    with pytest.raises(InputError, match="case.nrrd: 1 component.*expects 2 channel"):
        two_channel.predict(noise_volume(), source="case.nrrd")
    flat = sitk.Image(16, 16, sitk.sitkFloat32)
    with pytest.raises(InputError, match="a 2D image"):
        two_channel.predict(flat, source="slice.png")


def test_pickled_checkpoint_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(pickle.dumps({"state_dict": {}}))
    with pytest.raises(InputError, match="pickle file"):
        Predictor(path, device="cpu")


def test_device_choice_and_report():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="expected one of"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda:0")
    report = device_report(torch.device("cpu"))
    assert {"device", "device_name", "total_memory_gb", "torch", "cuda"} <= set(report)
    assert report["torch"] == torch.__version__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tiny_model_file):
    image = noise_volume(seed=11)
    on_cpu = Predictor(tiny_model_file, device="cpu").predict(image, maps=ALL_MAPS)
    on_gpu = Predictor(tiny_model_file, device="cuda").predict(image, maps=ALL_MAPS)
    assert on_gpu.device.startswith("cuda") and on_gpu.to_report()["device_report"]["device_name"]
    assert (array_of(on_gpu.segmentation) == array_of(on_cpu.segmentation)).mean() > 0.999
    assert np.allclose(array_of(on_gpu.maps["entropy"]), array_of(on_cpu.maps["entropy"]), atol=1e-4)
    assert on_gpu.score == pytest.approx(on_cpu.score, abs=1e-3)
    recombined = on_gpu.recombine(skip_heads=2)
    fresh = Predictor(tiny_model_file, device="cuda").predict(image, skip_heads=2, maps=ALL_MAPS)
    assert (array_of(recombined.segmentation) == array_of(fresh.segmentation)).all()


def test_thick_slices_are_fine_for_a_2d_model_but_not_for_a_3d_one(tmp_path, tiny_model_file):
    from conftest import make_tiny_model

    array = np.random.default_rng(12).normal(size=(5, 24, 24)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.5, 10.0))
    slicewise = Predictor(
        make_tiny_model(tmp_path / "native2d.pt", spatial_dims=2, target_spacing=None), device="cpu"
    )
    prediction = slicewise.predict(image)
    assert prediction.segmentation.GetSize() == (24, 24, 5)
    with pytest.raises(InputError, match="thick.nii.gz: extreme anisotropy"):
        Predictor(tiny_model_file, device="cpu").predict(image, source="thick.nii.gz")


def test_an_array_input_says_in_the_report_what_geometry_was_assumed(intensity_model):
    image, _ = sphere_image(spacing=(1.0, 1.0, 1.0))
    predictor = Predictor(intensity_model, device="cpu")
    array = sitk.GetArrayFromImage(image)
    with_spacing = predictor.predict(array, spacing=(1.0, 1.0, 1.0), source="scan array").to_report()
    notes = [w for w in with_spacing["warnings"] if "carries no orientation" in w]
    assert len(notes) == 1 and "identity direction" in notes[0] and "1 mm spacing" not in notes[0]
    without_spacing = predictor.predict(array).to_report()
    assert any("identity direction" in w and "1 mm spacing" in w for w in without_spacing["warnings"])
    from_image = predictor.predict(image).to_report()
    assert not any("carries no orientation" in w for w in from_image["warnings"])
