"""Engine throughput options: several windows per forward pass, and blending on another device."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from engine_models import export_intensity_model, sphere_image
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.inference import Predictor
from LayerEnsemblesLib.inference.predictor import choose_stitch_device, stitch_device_request

MAPS = ("agreement", "entropy", "mutual_information", "variance")


def _volume(size=(28, 24, 20), seed=3) -> sitk.Image:
    rng = np.random.default_rng(seed)
    array = rng.normal(size=size[::-1]).astype(np.float32)
    array[4:16, 6:18, 5:22] += 2.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    return image


def _same(a, b) -> None:
    assert (sitk.GetArrayFromImage(a.segmentation) == sitk.GetArrayFromImage(b.segmentation)).all()
    for name in MAPS:
        np.testing.assert_allclose(
            sitk.GetArrayFromImage(a.maps[name]), sitk.GetArrayFromImage(b.maps[name]), atol=1e-5
        )
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(a.probabilities), sitk.GetArrayFromImage(b.probabilities), atol=1e-5
    )
    assert a.aula.normalized == pytest.approx(b.aula.normalized, abs=1e-6)


@pytest.mark.parametrize("batch", [5, 64])
def test_batches_of_windows_equal_one_window_per_pass(tiny_model_file, batch):
    image = _volume()
    one = Predictor(tiny_model_file, device="cpu", window_size=(16, 16, 16)).predict(image, maps=MAPS)
    assert one.to_report()["window"]["count"] == 12  # B = 5: two full batches and a partial one
    many = Predictor(tiny_model_file, device="cpu", window_size=(16, 16, 16), batch_windows=batch)
    prediction = many.predict(image, maps=MAPS)
    _same(prediction, one)
    assert prediction.to_report()["window"]["batch_windows"] == batch


def test_batches_of_windows_for_a_2d_model(tiny_model_file_2d):
    image = _volume(size=(24, 24, 10))
    kwargs = dict(device="cpu", window_size=(4, 16, 16))
    one = Predictor(tiny_model_file_2d, **kwargs).predict(image, maps=MAPS)
    assert one.to_report()["window"]["count"] > 3
    _same(Predictor(tiny_model_file_2d, batch_windows=3, **kwargs).predict(image, maps=MAPS), one)


def test_out_of_memory_halves_the_batch_before_the_window(tmp_path):
    path = export_intensity_model(tmp_path / "oom.pt", oom_above_voxels=5000)  # one 16^3 window fits
    image, _ = sphere_image(size=(32, 32, 32))
    reference = Predictor(export_intensity_model(tmp_path / "ok.pt"), device="cpu").predict(image)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prediction = Predictor(path, device="cpu", batch_windows=4).predict(image)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "4 windows per pass" in messages[0] and "used 1" in messages[0]
    assert prediction.to_report()["window"]["size_zyx"] == [16, 16, 16]  # the window was kept
    assert (
        sitk.GetArrayFromImage(prediction.segmentation) == sitk.GetArrayFromImage(reference.segmentation)
    ).all()


def test_stitch_device_choice():
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    gib = 1024**3
    assert choose_stitch_device("auto", cpu, 10 * gib, None) == cpu
    assert choose_stitch_device("auto", gpu, 1 * gib, None) == gpu  # nothing known: stay on the GPU
    assert choose_stitch_device("auto", gpu, 1 * gib, 8 * gib) == gpu
    assert choose_stitch_device("auto", gpu, 5 * gib, 8 * gib) == cpu  # would leave too little for windows
    assert choose_stitch_device("same", gpu, 50 * gib, 8 * gib) == gpu
    assert choose_stitch_device("cpu", gpu, 0, 8 * gib) == cpu
    assert stitch_device_request("AUTO") == "auto" and stitch_device_request("cpu") == "cpu"
    with pytest.raises(InputError, match="expected one of"):
        stitch_device_request("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            stitch_device_request("cuda:0")


def test_stitching_on_the_cpu_is_reported_and_equal(tiny_model_file):
    image = _volume()
    kwargs = dict(device="cpu", window_size=(16, 16, 16))
    same = Predictor(tiny_model_file, stitch_device="same", **kwargs).predict(image, maps=MAPS)
    host = Predictor(tiny_model_file, stitch_device="cpu", **kwargs).predict(image, maps=MAPS)
    assert host.to_report()["window"]["stitch_device"] == "cpu"
    _same(host, same)


def test_batch_of_windows_must_be_positive(tiny_model_file):
    with pytest.raises(InputError, match="must be at least 1"):
        Predictor(tiny_model_file, device="cpu", batch_windows=0)
