"""The parts of training on their own: dataset reading, patches, augmentation, loss, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from LayerEnsemblesLib.augment import AugmentationSettings, Augmenter, flip, gamma, random_affine
from LayerEnsemblesLib.contract import ModelMetadata, default_classes
from LayerEnsemblesLib.data import (
    PatchDataset,
    PreparedCase,
    make_split,
    prepare_case,
    read_dataset_json,
    read_folders,
    sample_patch,
)
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.losses import DeepSupervisionLoss, resolve_head_weights, soft_dice_loss
from LayerEnsemblesLib.training.validation import dice_per_class, predict_head_probabilities, validation_crop
from training_data import to_image, write_blob_dataset


def metadata(spatial_dims: int = 3, divisor: int = 4) -> ModelMetadata:
    return ModelMetadata(
        spatial_dims=spatial_dims,
        in_channels=1,
        classes=default_classes(["background", "a", "b"]),
        head_names=["h"],
        head_strides=[1],
        patch_size=[divisor] * spatial_dims,
        size_divisor=[divisor] * spatial_dims,
        target_spacing=[1.0, 1.0, 1.0],
    )


# --- reading datasets -----------------------------------------------------------------------------


def test_dataset_json_gives_cases_classes_and_licence(tmp_path):
    source = read_dataset_json(write_blob_dataset(tmp_path, cases=3))
    assert [c.case_id for c in source.cases] == ["blob_000", "blob_001", "blob_002"]
    assert source.class_names == ["background", "dim blob", "bright blob"]
    assert source.class_values == [0, 1, 2]
    assert source.name == "blobs" and source.licence == "CC0"


def test_folders_pair_by_name_and_find_the_classes(tmp_path):
    write_blob_dataset(tmp_path, cases=2, suffix=".nrrd")
    (tmp_path / "imagesTr" / "blob_000.nrrd").rename(
        tmp_path / "imagesTr" / "blob_000_0000.nrrd"
    )  # nnU-Net style
    source = read_folders(tmp_path / "imagesTr", tmp_path / "labelsTr")
    assert [(c.case_id, c.image.name, c.label.name) for c in source.cases] == [
        ("blob_000", "blob_000_0000.nrrd", "blob_000.nrrd"),
        ("blob_001", "blob_001.nrrd", "blob_001.nrrd"),
    ]
    assert source.class_values == [0, 1, 2] and source.class_names == ["background", "label1", "label2"]
    named = read_folders(tmp_path / "imagesTr", tmp_path / "labelsTr", ["bg", "x", "y"])
    assert named.class_names == ["bg", "x", "y"]


def test_split_is_fixed_by_seed_and_independent_of_order():
    ids = [f"case{i}" for i in range(10)]
    split = make_split(ids, 0.3, seed=5)
    assert split == make_split(list(reversed(ids)), 0.3, seed=5)
    assert len(split["validation"]) == 3 and sorted(split["train"] + split["validation"]) == sorted(ids)
    assert make_split(ids, 0.3, seed=6) != split
    assert make_split(ids[:2], 0.01, seed=0)["validation"] != []  # a fraction > 0 keeps at least one case
    assert make_split(ids, 0.0, seed=0)["validation"] == []


BAD_DATASETS = [
    ("missing", None, "dataset.json not found"),
    ("not json", "{labels: oops", "not valid JSON"),
    ("no labels", {"training": [{"image": "a", "label": "b"}]}, "no 'labels'"),
    ("no background", {"labels": {"1": "a"}, "training": [{"image": "a", "label": "b"}]}, "value 0"),
    ("bad entry", {"labels": {"0": "bg", "1": "a"}, "training": [{"image": "a"}]}, "training entry 0"),
    (
        "missing file",
        {"labels": {"0": "bg", "1": "a"}, "training": [{"image": "./x.nii.gz", "label": "./y.nii.gz"}]},
        "x.nii.gz: file not found",
    ),
]


@pytest.mark.parametrize("name, content, message", BAD_DATASETS, ids=[b[0] for b in BAD_DATASETS])
def test_bad_dataset_json_is_named_in_one_line(tmp_path, name, content, message):
    path = tmp_path / "dataset.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(InputError, match=message) as error:
        read_dataset_json(path)
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)


def test_folder_image_without_label_is_named(tmp_path):
    write_blob_dataset(tmp_path, cases=2)
    (tmp_path / "labelsTr" / "blob_001.nii.gz").unlink()
    with pytest.raises(InputError, match="blob_001.nii.gz: no label file with the same name"):
        read_folders(tmp_path / "imagesTr", tmp_path / "labelsTr")


# --- preprocessing a case and its checks ----------------------------------------------------------


def write_pair(tmp_path, image: sitk.Image, label: sitk.Image):
    from LayerEnsemblesLib.data import CaseFiles

    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    sitk.WriteImage(label, str(tmp_path / "label.nii.gz"))
    return CaseFiles("case", tmp_path / "image.nii.gz", tmp_path / "label.nii.gz")


def test_prepared_case_matches_the_inference_preprocessing(tmp_path):
    from LayerEnsemblesLib.preprocessing import to_network_space

    rng = np.random.default_rng(0)
    label = np.zeros((10, 13, 14), np.uint8)
    label[3:6, 4:8, 5:9] = 2
    image = rng.normal(size=label.shape).astype(np.float32) + 3 * label
    files = write_pair(tmp_path, to_image(image), to_image(label))
    case = prepare_case(files, metadata(), [0, 1, 2])
    expected, geometry = to_network_space(sitk.ReadImage(str(files.image)), metadata())
    assert np.array_equal(case.image, expected)
    assert case.label.shape == (12, 16, 16) and case.padding == geometry.padding
    assert np.array_equal(case.unpadded(case.label), label)
    assert set(case.foreground) == {2} and len(case.foreground[2]) == int((label == 2).sum())


def test_label_values_are_mapped_to_class_indices(tmp_path):
    label = np.zeros((8, 8, 8), np.uint8)
    label[2:4, 2:4, 2:4] = 7
    files = write_pair(
        tmp_path,
        to_image(np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)),
        to_image(label),
    )
    case = prepare_case(files, metadata(), [0, 7])
    assert set(np.unique(case.label)) == {0, 1}


@pytest.mark.parametrize(
    "problem, message",
    [
        ("shape", "label geometry differs"),
        ("spacing", "label geometry differs"),
        ("origin", "label geometry differs"),
        ("values", "label values [5] are outside the declared classes [0, 1, 2]"),
        ("unreadable", "image.nii.gz: unreadable"),
    ],
)
def test_bad_pairs_are_named_in_one_line(tmp_path, problem, message):
    rng = np.random.default_rng(0)
    image = to_image(rng.normal(size=(8, 10, 12)).astype(np.float32))
    label_array = np.zeros((8, 10, 12), np.uint8)
    label_array[2:4, 2:4, 2:4] = 5 if problem == "values" else 1
    label = to_image(label_array)
    if problem == "shape":
        label = to_image(label_array[:, :, :10])
    if problem == "spacing":
        label.SetSpacing((1.0, 1.0, 2.0))
    if problem == "origin":
        label.SetOrigin((0.0, 5.0, 0.0))
    files = write_pair(tmp_path, image, label)
    if problem == "unreadable":
        files.image.write_bytes(b"\x1f\x8b not really a gzip nifti")
    with pytest.raises(InputError) as error:
        prepare_case(files, metadata(), [0, 1, 2])
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(tmp_path) in str(error.value)


# --- patch sampling -------------------------------------------------------------------------------


def small_object_case() -> PreparedCase:
    label = np.zeros((32, 32, 32), np.uint8)
    label[28:30, 28:30, 28:30] = 1
    label[2:3, 2:3, 2:3] = 2
    image = np.random.default_rng(0).normal(size=(1, 32, 32, 32)).astype(np.float32)
    return PreparedCase(
        "c",
        image,
        label,
        [(0, 0)] * 3,
        {1: np.argwhere(label == 1).astype(np.int32), 2: np.argwhere(label == 2).astype(np.int32)},
    )


def test_foreground_sampling_puts_each_class_in_view():
    case = small_object_case()
    rng = np.random.default_rng(0)
    patches = [sample_patch(case, [8, 8, 8], 3, rng, 1.0)[1] for _ in range(40)]
    assert all(p.max() > 0 for p in patches)
    seen = [set(np.unique(p)) - {0} for p in patches]
    assert sum(1 in s for s in seen) > 10 and sum(2 in s for s in seen) > 10  # classes drawn uniformly
    random_patches = [sample_patch(case, [8, 8, 8], 3, rng, 0.0)[1] for _ in range(40)]
    assert sum(p.max() > 0 for p in random_patches) < 10


def test_patches_have_the_patch_shape_in_2d_and_3d_and_pad_small_volumes():
    case = small_object_case()
    rng = np.random.default_rng(1)
    image, label = sample_patch(case, [8, 16, 4], 3, rng, 0.5)
    assert image.shape == (1, 8, 16, 4) and label.shape == (8, 16, 4)
    image, label = sample_patch(case, [16, 8], 2, rng, 0.5)
    assert image.shape == (1, 16, 8) and label.shape == (16, 8)
    image, label = sample_patch(case, [48, 32, 32], 3, rng, 1.0)  # taller than the volume
    assert image.shape == (1, 48, 32, 32)
    assert np.all(image[0, :8] == case.image.min()) and np.all(label[:8] == 0)


def test_patch_dataset_is_reproducible_per_epoch_and_index():
    dataset = PatchDataset([small_object_case()], [8, 8, 8], 3, 6, 0.5, seed=3)
    first = [dataset[i][0] for i in range(6)]
    assert all(torch.equal(a, dataset[i][0]) for i, a in enumerate(first))
    dataset.set_epoch(1)
    assert not all(torch.equal(a, dataset[i][0]) for i, a in enumerate(first))


# --- augmentation ---------------------------------------------------------------------------------


def block_batch(spatial: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    label = torch.zeros(3, *spatial, dtype=torch.long)
    region = tuple(slice(s // 4, s // 2) for s in spatial)
    label[(slice(None), *region)] = 1
    label[(slice(None), *(slice(1, 3) for _ in spatial))] = 2
    return label[:, None].float() * 10, label


@pytest.mark.parametrize("spatial", [(12, 16, 20), (16, 24)])
def test_spatial_augmentations_move_image_and_label_together(spatial):
    image, label = block_batch(spatial)
    generator = torch.Generator().manual_seed(0)
    flipped_image, flipped_label = flip(image, label, 1.0, None, generator)
    assert torch.equal(flipped_image[:, 0], flipped_label.float() * 10)
    assert torch.equal(flipped_label[0], label[0].flip(list(range(len(spatial)))))
    warped_image, warped_label = random_affine(image, label, 1.0, 15.0, (0.85, 1.15), generator)
    assert set(warped_label.unique().tolist()) <= {0, 1, 2}
    assert not torch.equal(warped_label, label)
    disagreement = ((warped_image[:, 0] / 10 - warped_label.float()).abs() > 0.5).float().mean()
    assert disagreement < 0.01  # only along edges, where bilinear and nearest differ


def test_flips_respect_the_allowed_axes():
    image, label = block_batch((12, 16, 20))
    _, flipped = flip(image, label, 1.0, [2], torch.Generator().manual_seed(0))
    assert torch.equal(flipped, label.flip(3))


def test_intensity_augmentations_leave_labels_alone_and_are_seeded():
    image, label = torch.randn(4, 1, 8, 8, 8), torch.randint(0, 3, (4, 8, 8, 8))
    settings = AugmentationSettings(
        flip_probability=0,
        affine_probability=0,
        intensity_probability=1,
        gamma_probability=1,
        noise_probability=1,
    )
    first = Augmenter(settings)(image, label, torch.Generator().manual_seed(7))
    second = Augmenter(settings)(image, label, torch.Generator().manual_seed(7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], label)
    assert not torch.allclose(first[0], image)


def test_gamma_keeps_the_intensity_range():
    image = torch.linspace(-2, 3, 64).reshape(1, 1, 4, 4, 4)
    result = gamma(image, 1.0, (0.5, 2.0), torch.Generator().manual_seed(0))
    assert float(result.min()) == pytest.approx(-2) and float(result.max()) == pytest.approx(3)
    assert not torch.allclose(result, image)


# --- loss -----------------------------------------------------------------------------------------


def test_head_weight_schemes():
    assert resolve_head_weights("uniform", 4) == [0.25] * 4
    assert resolve_head_weights("linear", 4) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert resolve_head_weights("last", 3) == [0.0, 0.0, 1.0]
    assert resolve_head_weights("1,1,2", 3) == [0.25, 0.25, 0.5]
    assert resolve_head_weights([0, 3], 2) == [0.0, 1.0]
    for bad, message in (
        ("1,2", "2 values for a network with 3 heads"),
        ("-1,1,1", "non-negative"),
        ("steep", "expected uniform"),
    ):
        with pytest.raises(InputError, match=message):
            resolve_head_weights(bad, 3)


def test_soft_dice_by_hand():
    # equal logits: p = 0.5 everywhere; all 8 voxels are class 1 -> Dice(1) = 2*4 / (4 + 8) = 2/3
    logits = torch.zeros(1, 2, 2, 2, 2)
    target = torch.ones(1, 2, 2, 2, dtype=torch.long)
    assert float(soft_dice_loss(logits, target)) == pytest.approx(1 / 3, abs=1e-5)


def test_deep_supervision_loss_upsamples_and_weights_each_head():
    target = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    target[:, :2] = 1
    perfect = F.one_hot(target, 2).movedim(-1, 1).float() * 40 - 20  # confident and right
    coarse = torch.zeros(1, 2, 2, 2, 2)  # stride 2, undecided: CE = log 2, Dice loss = 1 - 2*16/(32+32)
    loss = DeepSupervisionLoss([0.25, 0.75])
    total, per_head = loss([coarse, perfect], target)
    assert per_head[0] == pytest.approx(np.log(2) + 0.5, abs=1e-4)
    assert per_head[1] == pytest.approx(0.0, abs=1e-4)
    assert float(total) == pytest.approx(0.25 * (np.log(2) + 0.5), abs=1e-4)


def test_zero_weight_heads_stay_in_the_graph_without_gradient():
    logits = [torch.randn(1, 2, 4, 4, 4, requires_grad=True) for _ in range(2)]
    total, per_head = DeepSupervisionLoss([0.0, 1.0])(logits, torch.randint(0, 2, (1, 4, 4, 4)))
    total.backward()
    assert logits[0].grad is not None and float(logits[0].grad.abs().sum()) == 0
    assert float(logits[1].grad.abs().sum()) > 0 and torch.isnan(per_head[0])


# --- validation -----------------------------------------------------------------------------------


class PointwiseHeads(torch.nn.Module):
    """Two heads from per-voxel functions of the input (one at stride 2): tiles cannot change them."""

    head_strides = [2, 1]
    size_divisor = 2
    num_classes = 2

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        fine = torch.cat([-x, x], dim=1)
        pooled = F.avg_pool3d(x, 2) if x.dim() == 5 else F.avg_pool2d(x, 2)
        return [torch.cat([-pooled, pooled], dim=1), fine]


def test_tiled_prediction_equals_whole_volume_prediction_for_a_pointwise_model():
    image = np.random.default_rng(0).normal(size=(1, 16, 24, 40)).astype(np.float32)
    whole = predict_head_probabilities(PointwiseHeads(), image, 3, [16, 24, 40], torch.device("cpu"))
    tiled = predict_head_probabilities(PointwiseHeads(), image, 3, [8, 8, 8], torch.device("cpu"))
    assert whole.shape == (2, 2, 16, 24, 40)
    assert torch.allclose(whole[1], tiled[1], atol=1e-6)  # the full-resolution head is exactly tile-invariant
    assert torch.allclose(whole[1][1], torch.sigmoid(2 * torch.from_numpy(image[0])), atol=1e-6)
    slices = predict_head_probabilities(
        PointwiseHeads(), image, 2, [8, 8], torch.device("cpu"), slice_batch=5
    )
    assert slices.shape == (2, 2, 16, 24, 40)
    assert torch.allclose(slices[1], whole[1], atol=1e-6)


def test_dice_per_class_by_hand():
    reference = np.array([0, 1, 1, 2, 2, 0])
    prediction = np.array([0, 1, 0, 2, 2, 2])
    assert dice_per_class(prediction, reference, 3) == pytest.approx([2 / 3, 0.8])
    assert dice_per_class(np.zeros(4), np.zeros(4), 2) == [1.0]  # nothing to find, nothing found


def test_large_validation_volumes_are_cropped_around_the_foreground():
    label = np.zeros((48, 64, 80), np.uint8)
    label[30:34, 40:44, 60:70] = 1
    image = np.arange(label.size, dtype=np.float32).reshape(1, *label.shape)
    case = PreparedCase("big", image, label, [(2, 2), (0, 0), (5, 3)])
    assert validation_crop(case, 3, [16, 16, 16], maps=30) is case  # fits the default budget
    cropped = validation_crop(case, 3, [16, 16, 16], maps=30, budget=30 * 32 * 32 * 32)
    assert all(s % 16 == 0 for s in cropped.label.shape)
    assert 30 * cropped.image.size <= 30 * 32 * 32 * 32
    assert cropped.label.sum() == label.sum()  # the whole structure is inside the crop
    start = np.argwhere(image[0] == cropped.image[0, 0, 0, 0])[0]
    region = tuple(slice(a, a + n) for a, n in zip(start, cropped.label.shape, strict=True))
    assert np.array_equal(cropped.label, label[region])
    # the crop ends at the volume's last x voxels, so it keeps their 3 voxels of padding
    assert cropped.padding[2] == (0, 3 if start[2] + cropped.label.shape[2] == 80 else 0)


def test_mixed_precision_only_on_cuda():
    from LayerEnsemblesLib.training.loop import resolve_amp

    for setting in ("auto", "bf16", "fp16", "off"):
        assert resolve_amp(setting, torch.device("cpu")) is None
    if torch.cuda.is_available():
        assert resolve_amp("fp16", torch.device("cuda")) == torch.float16
        assert resolve_amp("off", torch.device("cuda")) is None


@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_validation_decides_voxel_by_voxel_like_the_deployed_engine(tmp_path, spatial_dims):
    """Several overlapping windows: the training tiler must blend them the way `segment` does."""
    import SimpleITK as sitk
    from conftest import make_tiny_model
    from LayerEnsemblesLib.contract import load_model
    from LayerEnsemblesLib.inference import Predictor
    from LayerEnsemblesLib.networks import LayerEnsembleUNet
    from LayerEnsemblesLib.preprocessing import to_network_space

    path = make_tiny_model(tmp_path / "model.pt", spatial_dims=spatial_dims, seed=3, skip_heads=1)
    _, metadata = load_model(path)
    torch.manual_seed(3)  # the same weights make_tiny_model exported
    network = LayerEnsembleUNet(spatial_dims, 1, 3, depth=3, base_channels=4).eval()
    rng = np.random.default_rng(5)
    array = rng.normal(size=(20, 36, 44)).astype(np.float32)
    array[6:14, 10:26, 12:30] += 2.0
    image = sitk.GetImageFromArray(array)
    deployed = sitk.GetArrayFromImage(Predictor(path, device="cpu").predict(image).segmentation)

    volume, geometry = to_network_space(image, metadata, "volume")
    probabilities = predict_head_probabilities(
        network, volume, spatial_dims, metadata.patch_size, torch.device("cpu")
    )
    crop = tuple(
        slice(before, size - after)
        for (before, after), size in zip(geometry.padding, geometry.shape, strict=True)
    )
    ensemble = probabilities[metadata.skip_heads :].mean(0).argmax(0).numpy()[crop]
    assert ensemble.shape == deployed.shape
    assert len(np.unique(deployed)) > 1  # a decision with more than one class to agree on
    assert np.array_equal(ensemble, deployed)
