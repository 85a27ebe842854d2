"""Training in-process on synthetic NIfTI files: loss, split, checkpoints, resume, seeding and export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from LayerEnsemblesLib.contract import load_model
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.training import export_run, read_run_config, resume, train
from training_data import tiny_config, write_blob_dataset


@pytest.fixture(scope="module")
def blob_dataset(tmp_path_factory):
    return write_blob_dataset(tmp_path_factory.mktemp("blobs"), cases=8)


@pytest.fixture(scope="module")
def trained_run(blob_dataset, tmp_path_factory):
    """One short 3D run shared by the read-only tests below."""
    out = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_config(blob_dataset, out, epochs=10, iterations_per_epoch=4, base_channels=8), progress=False)
    return out


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_on_synthetic_blobs(trained_run):
    losses = [record["train_loss"] for record in read_metrics(trained_run)]
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses


def test_run_folder_holds_every_promised_file(trained_run):
    for name in ("config.json", "split.json", "log.txt", "metrics.jsonl", "best.pt", "last.pt", "model.pt"):
        assert (trained_run / name).is_file(), name
    log = (trained_run / "log.txt").read_text().splitlines()
    assert sum(line.split("  ", 1)[1].startswith("epoch ") for line in log) == 10
    assert log[-1].split("  ", 1)[1].startswith("done: best ensemble Dice")


def test_metrics_record_per_head_and_ensemble_dice(trained_run):
    records = read_metrics(trained_run)
    assert [r["epoch"] for r in records] == list(range(1, 11))
    validation = records[-1]["val"]
    assert validation["cases"] == 2
    assert len(validation["head_dice"]) == 6 and len(validation["ensemble_dice_by_skip"]) == 6
    assert set(validation["ensemble_dice_per_class"]) == {"dim blob", "bright blob"}
    assert 0 <= validation["ensemble_dice"] <= 1
    assert validation["ensemble_dice"] == pytest.approx(validation["ensemble_dice_by_skip"][0])
    assert records[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine schedule ends at zero


def test_split_is_by_case_id_disjoint_and_recorded(trained_run):
    split = json.loads((trained_run / "split.json").read_text())
    assert len(split["train"]) == 6 and len(split["validation"]) == 2
    assert not set(split["train"]) & set(split["validation"])
    assert set(split["train"]) | set(split["validation"]) == {f"blob_{i:03d}" for i in range(8)}
    assert split["seed"] == 0 and split["validation_fraction"] == 0.25


def test_checkpoints_are_weights_only_dicts(trained_run):
    for name in ("best.pt", "last.pt"):
        state = torch.load(trained_run / name, weights_only=True)
        assert state["format"] == "layer-ensembles-checkpoint"
        assert {"model", "optimizer", "scheduler", "epoch", "rng", "metrics", "best_epoch"} <= set(state)
        assert all(isinstance(v, torch.Tensor) for v in state["model"].values())
    last = torch.load(trained_run / "last.pt", weights_only=True)
    best = torch.load(trained_run / "best.pt", weights_only=True)
    assert last["epoch"] == 10
    records = read_metrics(trained_run)
    best_record = max(records, key=lambda r: r["val"]["ensemble_dice"])
    assert best["epoch"] == best["best_epoch"] == best_record["epoch"]


def test_exported_model_carries_the_training_metadata(trained_run):
    config, data = read_run_config(trained_run)
    module, metadata = load_model(trained_run / "model.pt")
    assert [c.name for c in metadata.classes] == ["background", "dim blob", "bright blob"]
    assert [c.value for c in metadata.classes] == [0, 1, 2]
    assert metadata.head_names == ["encoder0", "encoder1", "encoder2", "decoder1", "decoder0", "final"]
    assert metadata.head_strides == [1, 2, 4, 2, 1, 1]
    assert metadata.target_spacing == [1.0, 1.0, 1.0]
    assert metadata.orientation == config.orientation == "LPS"  # SimpleITK's identity direction
    assert metadata.normalization == {"method": "percentile_zscore", "lower": 0.5, "upper": 99.5}
    assert metadata.patch_size == config.patch_size == [20, 24, 24]
    assert metadata.size_divisor == [4, 4, 4]
    provenance = metadata.provenance
    assert provenance["dataset"] == "blobs" and provenance["dataset_licence"] == "CC0"
    assert provenance["training_cases"] == 6 and provenance["validation_cases"] == 2
    assert provenance["epochs"] == provenance["best_epoch"]
    assert {"library_version", "torch_version", "date", "validation"} <= set(provenance)
    assert data["class_names"] == ["background", "dim blob", "bright blob"]


def test_export_matches_the_checkpoint_weights(trained_run, tmp_path):
    from LayerEnsemblesLib.training.export import build_network

    config, data = read_run_config(trained_run)
    network = build_network(config, 3, 1).eval()
    network.load_state_dict(torch.load(trained_run / "last.pt", weights_only=True)["model"])
    path = export_run(trained_run, tmp_path / "last.pt", checkpoint="last", skip_heads=2, name="renamed")
    module, metadata = load_model(path)
    assert metadata.skip_heads == 2 and metadata.name == "renamed" and metadata.provenance["epochs"] == 10
    x = torch.randn(1, 1, 20, 24, 24)
    with torch.no_grad():
        for actual, expected in zip(module(x), network(x), strict=True):
            assert float((actual - expected).abs().max()) < 1e-4
    with pytest.raises(InputError, match="already exists"):
        export_run(trained_run, path, checkpoint="last")


def test_same_seed_gives_the_same_run_and_another_seed_does_not(blob_dataset, tmp_path):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run = train(tiny_config(blob_dataset, tmp_path / name, seed=seed), progress=False)
        runs[name] = [r["train_loss"] for r in read_metrics(run)]
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_resume_continues_from_the_last_checkpoint(blob_dataset, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(blob_dataset, out, epochs=2), progress=False)
    first = read_metrics(out)
    resume(out, epochs=3, progress=False)
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[:2] == first  # the resumed run keeps the history it continues
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3
    assert read_run_config(out)[0].epochs == 3
    assert "resuming" in (out / "log.txt").read_text()


def test_existing_run_is_refused_unless_overwrite(blob_dataset, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(blob_dataset, out, epochs=1), progress=False)
    with pytest.raises(InputError, match="already holds a training run") as error:
        train(tiny_config(blob_dataset, out, epochs=1), progress=False)
    assert str(error.value).startswith(str(out)) and "--resume" in str(error.value)
    train(tiny_config(blob_dataset, out, epochs=2), overwrite=True, progress=False)
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]


def test_resume_without_a_run_is_refused(tmp_path):
    with pytest.raises(InputError, match="not a training run folder"):
        resume(tmp_path, progress=False)


def test_two_dimensional_model_trains_on_axial_slices(blob_dataset, tmp_path):
    run = train(tiny_config(blob_dataset, tmp_path / "run2d", spatial_dims=2, batch_size=4), progress=False)
    _, metadata = load_model(run / "model.pt")
    assert metadata.spatial_dims == 2
    assert metadata.patch_size == [24, 24] and metadata.size_divisor == [4, 4]
    assert read_metrics(run)[-1]["val"]["cases"] == 2


def test_plain_network_baseline_trains_the_last_head_only(blob_dataset, tmp_path):
    from LayerEnsemblesLib.training.export import build_network

    run = train(
        tiny_config(blob_dataset, tmp_path / "plain", head_weights="last", dropout=0.2), progress=False
    )
    head_losses = read_metrics(run)[-1]["train_head_loss"]
    assert head_losses[:-1] == [None] * 5 and head_losses[-1] > 0
    trained = torch.load(run / "last.pt", weights_only=True)["model"]
    config, _ = read_run_config(run)
    torch.manual_seed(config.seed)  # the initial weights the run started from
    initial = build_network(config, 3, 1).state_dict()

    def scale_only(name: str) -> bool:
        """AdamW's decoupled weight decay shrinks a head no loss reaches, and nothing else moves it."""
        before, after = initial[name], trained[name]
        factor = float((after * before).sum() / (before * before).sum())
        return 0.99 < factor <= 1 and torch.allclose(after, factor * before, atol=1e-7)

    assert scale_only("encoder_heads.0.weight") and scale_only("decoder_heads.1.weight")
    assert not scale_only("final_head.weight")


def test_all_train_cases_no_validation_still_exports(blob_dataset, tmp_path):
    run = train(
        tiny_config(blob_dataset, tmp_path / "noval", validation_fraction=0.0, epochs=1), progress=False
    )
    assert read_metrics(run)[0]["val"] is None
    assert "no validation cases" in (run / "log.txt").read_text()
    assert load_model(run / "model.pt")[1].provenance["validation_cases"] == 0


def test_invalid_configuration_is_refused_in_one_line(blob_dataset, tmp_path):
    with pytest.raises(InputError) as error:
        train(tiny_config(blob_dataset, tmp_path / "bad", patch_size=[10, 24, 24], normalization="ct"))
    message = str(error.value)
    assert "patch_size must hold 3 multiples of 4" in message and "ct_window" in message
    assert "\n" not in message
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_short_real_run_on_hippocampus_reaches_useful_dice(hippocampus_dir, tmp_path):
    """40 real cases, 40 steps of 2 patches (about 4 CPU-minutes): the ensemble already finds both
    structures (measured: validation ensemble Dice 0.73 after 40 steps)."""
    from LayerEnsemblesLib.training import TrainConfig

    config = TrainConfig(
        dataset=str(hippocampus_dir / "dataset.json"),
        out=str(tmp_path / "hippocampus"),
        max_cases=40,
        depth=4,
        base_channels=16,
        epochs=2,
        iterations_per_epoch=20,
        batch_size=2,
        head_weights="linear",
        flip_axes=[2],
        validation_fraction=0.2,
        threads=2,
        seed=0,
    )
    run = train(config, progress=False)
    records = read_metrics(run)
    assert records[-1]["val"]["cases"] == 8
    best = max(r["val"]["ensemble_dice"] for r in records)
    assert best >= 0.6, [round(r["val"]["ensemble_dice"], 3) for r in records]
    _, metadata = load_model(run / "model.pt")
    assert [c.name for c in metadata.classes] == ["background", "Anterior", "Posterior"]
    assert metadata.provenance["dataset_licence"] == "CC-BY-SA 4.0"
    assert metadata.orientation == "RAS" and metadata.target_spacing == [1.0, 1.0, 1.0]
