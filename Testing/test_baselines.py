"""Baseline exporters: real TorchScript archives whose outputs match the networks they wrap."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_model
from LayerEnsemblesLib.contract import export_model, load_model, read_metadata
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.evaluation import baselines
from LayerEnsemblesLib.networks import LayerEnsembleUNet


def _input(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def member_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("members")
    return [make_tiny_model(folder / f"member{seed}.pt", seed=seed) for seed in range(3)]


def test_deep_ensemble_from_model_files(member_files, tmp_path):
    path = baselines.export_deep_ensemble(member_files, tmp_path / "de.pt")
    module, metadata = load_model(path)
    assert metadata.kind == "deep_ensemble" and metadata.members == 3
    assert metadata.head_names == ["member0", "member1", "member2"] and metadata.head_strides == [1, 1, 1]
    assert metadata.aula_threshold is None and metadata.skip_heads == 0
    x = _input()
    with torch.no_grad():
        outputs = module(x)
        for output, member_file in zip(outputs, member_files, strict=True):
            member, _ = load_model(member_file)
            torch.testing.assert_close(output, member(x)[-1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(outputs[0], outputs[1])  # independently initialised members differ


def test_deep_ensemble_from_eager_networks(tiny_model_file, tmp_path):
    template = read_metadata(tiny_model_file)
    networks = []
    for seed in (5, 6):
        torch.manual_seed(seed)
        networks.append(LayerEnsembleUNet(3, 1, 3, depth=3, base_channels=4).eval())
    path = baselines.export_deep_ensemble(networks, tmp_path / "de.pt", metadata=template)
    module, metadata = load_model(path)
    x = _input(1)
    with torch.no_grad():
        for output, network in zip(module(x), networks, strict=True):
            torch.testing.assert_close(output, network(x)[-1], atol=1e-5, rtol=1e-5)
    assert metadata.members == 2


def test_deep_ensemble_refuses_mismatched_members(member_files, tmp_path):
    other = make_tiny_model(tmp_path / "two_classes.pt", num_classes=2)
    with pytest.raises(InputError, match="classes differs"):
        baselines.export_deep_ensemble([member_files[0], other], tmp_path / "de.pt")
    with pytest.raises(InputError, match="at least two members"):
        baselines.export_deep_ensemble(member_files[:1], tmp_path / "de.pt")
    with pytest.raises(InputError, match="already exists"):
        baselines.export_deep_ensemble(member_files[:2], member_files[2])


def _dropout_network() -> LayerEnsembleUNet:
    torch.manual_seed(0)
    return LayerEnsembleUNet(3, 1, 3, depth=3, base_channels=4, dropout=0.3).eval()


def test_mc_dropout_keeps_dropout_in_the_archive(tiny_model_file, tmp_path):
    network = _dropout_network()
    path = baselines.export_mc_dropout(
        network, tmp_path / "mcd.pt", samples=10, metadata=read_metadata(tiny_model_file)
    )
    module, metadata = load_model(path)
    assert metadata.kind == "mc_dropout" and metadata.samples == 10 and metadata.head_names == ["final"]
    x = _input(2)
    with torch.no_grad():
        (deterministic,) = module(x)
        torch.testing.assert_close(deterministic, network.eval()(x)[-1], atol=1e-5, rtol=1e-5)
        for submodule in module.modules():  # what the engine does: dropout on, everything else as in eval
            if "Dropout" in getattr(submodule, "original_name", ""):
                submodule.train()
        first, second = module(x)[0], module(x)[0]
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, deterministic)


def test_mc_dropout_from_a_model_file(tiny_model_file, tmp_path):
    template = read_metadata(tiny_model_file)
    dropout_file = export_model(_dropout_network(), copy.deepcopy(template), tmp_path / "dropout.pt")
    path = baselines.export_mc_dropout(dropout_file, tmp_path / "mcd.pt", samples=4)
    assert read_metadata(path).samples == 4
    module, _ = load_model(path)
    assert baselines.has_dropout(module)


def test_mc_dropout_refuses_a_network_without_dropout(tiny_model_file, tmp_path):
    with pytest.raises(InputError, match="no dropout layer"):
        baselines.export_mc_dropout(tiny_model_file, tmp_path / "mcd.pt")


def test_plain_is_the_deepest_head_of_the_same_archive(tiny_model_file, tmp_path):
    path = baselines.export_plain(tiny_model_file, tmp_path / "plain.pt")
    metadata = read_metadata(path)
    original = read_metadata(tiny_model_file)
    assert metadata.skip_heads == original.num_heads - 1
    assert metadata.kind == "layer_ensemble" and metadata.name == "tiny-test-model-plain"
    module, _ = load_model(path)
    original_module, _ = load_model(tiny_model_file)
    x = _input(3)
    with torch.no_grad():
        torch.testing.assert_close(module(x)[-1], original_module(x)[-1])


def test_the_engine_runs_every_baseline(member_files, tiny_model_file, tmp_path):
    import numpy as np
    import SimpleITK as sitk
    from LayerEnsemblesLib.inference import Predictor

    files = {
        "deep_ensemble": baselines.export_deep_ensemble(member_files[:2], tmp_path / "de.pt"),
        "mc_dropout": baselines.export_mc_dropout(
            _dropout_network(), tmp_path / "mcd.pt", samples=3, metadata=read_metadata(tiny_model_file)
        ),
        "plain": baselines.export_plain(tiny_model_file, tmp_path / "plain.pt"),
    }
    image = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    for kind, path in files.items():
        prediction = Predictor(path, device="cpu").predict(image, spacing=(1.0, 1.0, 1.0), maps="all")
        information = sitk.GetArrayFromImage(prediction.maps["mutual_information"])
        if kind == "plain":
            assert len(prediction.head_names) == 1 and prediction.head_names == ["final"]
            assert information.max() < 1e-4  # one network: no disagreement
        else:
            assert len(prediction.head_names) == (2 if kind == "deep_ensemble" else 3)
            assert information.max() > 1e-3  # members (or dropout samples) disagree
