"""Training data: finding cases, splitting them, preprocessing them once, and sampling patches.

Cases come from an MSD-style ``dataset.json`` or from two folders of images and labels matched by
file name. Every case goes through :func:`preprocessing.to_network_space` and
:func:`preprocessing.label_to_network_space`, the functions inference uses with the exported
metadata, so a model never sees data prepared differently from what it was trained on. Problems a
user can fix are raised as one-line :class:`InputError` messages that name the file.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .contract import ModelMetadata
from .errors import InputError
from .fileio import IMAGE_SUFFIXES, case_id_from_path, read_image, read_json_object
from .grids import check_same_grid
from .preprocessing import label_to_network_space, to_network_space

MAX_FOREGROUND_SAMPLES = 20000  # foreground voxel coordinates kept per class for patch sampling


@dataclass(frozen=True)
class CaseFiles:
    case_id: str
    image: Path
    label: Path


@dataclass
class DatasetSource:
    """The cases and their declared classes, before any preprocessing."""

    cases: list[CaseFiles]
    class_names: list[str]
    class_values: list[int]
    name: str
    licence: str | None = None
    origin: str = ""  # the dataset.json path or the two folders, for messages and provenance


@dataclass
class PreparedCase:
    """A case in network space: ``image`` [C, z, y, x] float32, ``label`` [z, y, x] class indices."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    padding: list[tuple[int, int]]
    foreground: dict[int, np.ndarray] = field(default_factory=dict)  # class index -> [N, 3] voxel coords

    def unpadded(self, array: np.ndarray) -> np.ndarray:
        """Crop the padding added by to_network_space off the last three axes of ``array``."""
        slices = tuple(
            slice(before, size - after)
            for (before, after), size in zip(self.padding, array.shape[-3:], strict=False)
        )
        return array[(Ellipsis, *slices)]


def read_dataset_json(path: str | Path) -> DatasetSource:
    """An MSD ``dataset.json``: ``labels`` maps values to names, ``training`` lists image/label pairs."""
    path = Path(path)
    document = read_json_object(path, "dataset.json not found")
    labels, training = document.get("labels"), document.get("training")
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{path}: malformed dataset.json (no 'labels' object mapping values to names)")
    if not isinstance(training, list) or not training:
        raise InputError(f"{path}: malformed dataset.json (no 'training' list of image/label pairs)")
    try:
        pairs = sorted((int(value), str(name)) for value, name in labels.items())
    except ValueError:
        raise InputError(
            f"{path}: malformed dataset.json ('labels' keys must be integer label values)"
        ) from None
    if pairs[0][0] != 0:
        raise InputError(f"{path}: malformed dataset.json ('labels' must declare value 0, the background)")
    cases = []
    for index, entry in enumerate(training):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("image"), str)
            or not isinstance(entry.get("label"), str)
        ):
            raise InputError(
                f"{path}: malformed dataset.json (training entry {index} needs 'image' and 'label')"
            )
        image, label = path.parent / entry["image"], path.parent / entry["label"]
        for file in (image, label):
            if not file.exists():
                raise InputError(f"{file}: file not found (listed in {path})")
        cases.append(CaseFiles(case_id_from_path(image), image, label))
    _check_unique_ids(cases, str(path))
    return DatasetSource(
        cases,
        [n for _, n in pairs],
        [v for v, _ in pairs],
        str(document.get("name") or path.parent.name),
        document.get("licence") or document.get("license"),
        str(path),
    )


def read_folders(
    images: str | Path, labels: str | Path, class_names: Sequence[str] | None = None
) -> DatasetSource:
    """Pair images and labels by file name (an nnU-Net ``_0000`` channel suffix on images is ignored).

    Without ``class_names`` the classes are the label values found in the label files (0 included).
    """
    images, labels = Path(images), Path(labels)
    for folder in (images, labels):
        if not folder.is_dir():
            raise InputError(f"{folder}: folder not found")
    image_files = _image_files(images)
    if not image_files:
        raise InputError(f"{images}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    label_by_id = {case_id_from_path(f): f for f in _image_files(labels)}
    cases = []
    for image in image_files:
        case_id = case_id_from_path(image)
        key = case_id if case_id in label_by_id else case_id.removesuffix("_0000")
        if key not in label_by_id:
            raise InputError(f"{image}: no label file with the same name in {labels}")
        cases.append(CaseFiles(key, image, label_by_id[key]))
    _check_unique_ids(cases, str(images))
    if class_names:
        names = list(class_names)
        values = list(range(len(names)))
    else:
        values = sorted(set().union(*(_label_values(c.label) for c in cases)) | {0})
        if values[0] < 0:
            raise InputError(f"{labels}: negative label values {[v for v in values if v < 0]}")
        names = ["background"] + [f"label{v}" for v in values[1:]]
    return DatasetSource(cases, names, values, images.parent.name or "dataset", None, f"{images} + {labels}")


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        f
        for f in folder.iterdir()
        if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(IMAGE_SUFFIXES)
    )


def _check_unique_ids(cases: list[CaseFiles], origin: str) -> None:
    counts = Counter(c.case_id for c in cases)
    duplicates = [i for i, n in counts.items() if n > 1]
    if duplicates:
        raise InputError(f"{origin}: case id(s) {duplicates[:3]} appear more than once")


def _label_values(path: Path) -> set[int]:
    image = read_image(path)  # keep the image alive: an array view does not own its memory
    return {int(v) for v in np.unique(sitk.GetArrayViewFromImage(image))}


def read_header(path: Path) -> sitk.ImageFileReader:
    """The image's geometry without reading its voxels (for spacing and orientation statistics)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"{path}: unreadable image header") from None
    return reader


def majority_orientation(cases: Sequence[CaseFiles]) -> str:
    """The most common orientation code of the images (e.g. 'RAS'), which training normalises to."""
    codes = Counter(
        sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(read_header(c.image).GetDirection())
        for c in cases
    )
    return codes.most_common(1)[0][0]


def median_spacing(cases: Sequence[CaseFiles]) -> list[float]:
    spacings = np.array([read_header(c.image).GetSpacing() for c in cases], float)
    return [round(float(s), 4) for s in np.median(spacings, axis=0)]


def image_channels(case: CaseFiles) -> int:
    return int(read_header(case.image).GetNumberOfComponents())


def make_split(case_ids: Sequence[str], validation_fraction: float, seed: int) -> dict:
    """A fixed train/validation split by case id: the same ids, fraction and seed give the same split."""
    ids = sorted(case_ids)
    if not 0 <= validation_fraction < 1:
        raise InputError(f"validation fraction {validation_fraction}: must be in [0, 1)")
    random.Random(seed).shuffle(ids)
    count = int(round(validation_fraction * len(ids)))
    if validation_fraction > 0 and len(ids) > 1:
        count = min(max(count, 1), len(ids) - 1)
    return {
        "seed": seed,
        "validation_fraction": validation_fraction,
        "train": sorted(ids[count:]),
        "validation": sorted(ids[:count]),
    }


def check_pair(image: sitk.Image, label: sitk.Image, files: CaseFiles) -> None:
    """Image and label must share one voxel grid; anything else would train on misaligned labels."""
    if label.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{files.label}: a label must have one component per voxel")
    check_same_grid(image, label, str(files.label), image_name=files.image.name)


def prepare_case(files: CaseFiles, metadata: ModelMetadata, class_values: Sequence[int]) -> PreparedCase:
    """Read, check and preprocess one case exactly as inference will preprocess its image."""
    image, label = read_image(files.image), read_image(files.label)
    check_pair(image, label, files)
    raw = sitk.GetArrayViewFromImage(label)
    values = np.unique(raw)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise InputError(f"{files.label}: label values must be integers (found {values[:5].tolist()})")
    unexpected = sorted(set(values.astype(np.int64).tolist()) - set(class_values))
    if unexpected:
        raise InputError(
            f"{files.label}: label values {unexpected} are outside the declared classes {list(class_values)}"
        )
    array, geometry = to_network_space(image, metadata, str(files.image))
    values_in_network = label_to_network_space(label, geometry, metadata)
    lookup = np.zeros(max(class_values) + 1, np.uint8)
    lookup[list(class_values)] = np.arange(len(class_values), dtype=np.uint8)
    indices = lookup[values_in_network]
    return PreparedCase(
        files.case_id, array, indices, geometry.padding, _foreground_coordinates(indices, files)
    )


def _foreground_coordinates(label: np.ndarray, files: CaseFiles) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(files.case_id.encode()))
    coordinates = {}
    for index in np.unique(label):
        if index == 0:
            continue
        points = np.argwhere(label == index).astype(np.int32)
        if len(points) > MAX_FOREGROUND_SAMPLES:
            points = points[rng.choice(len(points), MAX_FOREGROUND_SAMPLES, replace=False)]
        coordinates[int(index)] = points
    return coordinates


class CaseCache:
    """Preprocessed cases kept in memory: each file is read and resampled once per run."""

    def __init__(self, metadata: ModelMetadata, class_values: Sequence[int]) -> None:
        self.metadata = metadata
        self.class_values = list(class_values)
        self._cases: dict[str, PreparedCase] = {}

    def get(self, files: CaseFiles) -> PreparedCase:
        if files.case_id not in self._cases:
            self._cases[files.case_id] = prepare_case(files, self.metadata, self.class_values)
        return self._cases[files.case_id]

    def get_all(
        self, cases: Sequence[CaseFiles], progress: bool = False, description: str = "preprocessing"
    ) -> list[PreparedCase]:
        iterator = cases
        if progress:
            from tqdm import tqdm

            iterator = tqdm(cases, desc=description, leave=False, disable=None)
        return [self.get(c) for c in iterator]


def sample_patch(
    case: PreparedCase,
    patch_size: Sequence[int],
    spatial_dims: int,
    rng: np.random.Generator,
    foreground_probability: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One patch, centred on a random foreground voxel with ``foreground_probability``.

    The foreground class is drawn uniformly among the classes present, so small structures are seen
    as often as large ones. A 2D model gets an axial slice (the z axis is dropped). Volumes smaller
    than the patch are padded with each channel's minimum (as to_network_space pads) and background.
    """
    window = list(patch_size) if spatial_dims == 3 else [1, *patch_size]
    image, label = _pad_to(case.image, case.label, window)
    shape = label.shape
    centre = None
    if case.foreground and rng.random() < foreground_probability:
        classes = sorted(case.foreground)
        points = case.foreground[classes[rng.integers(len(classes))]]
        offset = [
            (s - o) // 2 for s, o in zip(shape, case.label.shape, strict=False)
        ]  # padding added by _pad_to
        centre = points[rng.integers(len(points))] + np.asarray(offset)
    starts = []
    for axis in range(3):
        limit = shape[axis] - window[axis]
        if centre is None:
            start = int(rng.integers(limit + 1))
        else:
            start = int(np.clip(centre[axis] - window[axis] // 2, 0, limit))
        starts.append(start)
    region = tuple(slice(s, s + w) for s, w in zip(starts, window, strict=False))
    image_patch, label_patch = image[(slice(None), *region)], label[region]
    if spatial_dims == 2:
        image_patch, label_patch = image_patch[:, 0], label_patch[0]
    return np.ascontiguousarray(image_patch), np.ascontiguousarray(label_patch)


def _pad_to(image: np.ndarray, label: np.ndarray, window: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    pads = []
    for size, want in zip(label.shape, window, strict=False):
        missing = max(0, want - size)
        pads.append((missing // 2, missing - missing // 2))
    if not any(before or after for before, after in pads):
        return image, label
    image = np.stack([np.pad(c, pads, constant_values=float(c.min())) for c in image])
    return image, np.pad(label, pads)


class PatchDataset(torch.utils.data.Dataset):
    """``length`` random patches per epoch; item ``i`` comes from case ``i % n``.

    Every item is drawn from its own generator seeded by (seed, epoch, index), so a run, a resumed
    run and each DDP rank's share of an epoch see the same patches whatever the process layout.
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        patch_size: Sequence[int],
        spatial_dims: int,
        length: int,
        foreground_probability: float,
        seed: int,
    ) -> None:
        if not cases:
            raise InputError("no training cases")
        self.cases = list(cases)
        self.patch_size = list(patch_size)
        self.spatial_dims = spatial_dims
        self.length = length
        self.foreground_probability = foreground_probability
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        case = self.cases[index % len(self.cases)]
        image, label = sample_patch(
            case, self.patch_size, self.spatial_dims, rng, self.foreground_probability
        )
        return torch.from_numpy(image), torch.from_numpy(label.astype(np.int64))
