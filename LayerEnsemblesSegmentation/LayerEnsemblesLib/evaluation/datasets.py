"""Which labelled cases to evaluate: a dataset.json or two folders, optionally restricted to a split.

The reading of datasets is the training code's (:mod:`LayerEnsemblesLib.data`), so ``evaluate`` and
``train`` agree on case ids. ``--cases split.json:validation`` takes the ``validation`` list of a
training run's ``split.json``; a list may hold case ids, image paths or ``{"image": ...}`` entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fileio import read_json
from .runner import Case


def read_source(dataset: str | None, images: str | None, labels: str | None):
    from ..data import read_dataset_json, read_folders

    if dataset and (images or labels):
        raise InputError("give either --dataset or --images with --labels, not both")
    if dataset:
        return read_dataset_json(dataset)
    if images and labels:
        return read_folders(images, labels)
    raise InputError("give the labelled data: --dataset dataset.json, or --images DIR with --labels DIR")


def _case_key(entry: Any) -> str:
    if isinstance(entry, dict) and "image" in entry:
        entry = entry["image"]
    if not isinstance(entry, str):
        raise ValueError(entry)
    return entry


def selected_ids(spec: str) -> list[str]:
    """Case ids from ``FILE.json:KEY`` (a list under KEY) or ``FILE.json`` (a list)."""
    path, key = Path(spec), None
    if not path.is_file() and ":" in spec:
        file_part, key = spec.rsplit(":", 1)
        path = Path(file_part)
    document = read_json(path, "case list not found (expected FILE.json or FILE.json:KEY)")
    if key is not None:
        if not isinstance(document, dict) or key not in document:
            keys = sorted(document) if isinstance(document, dict) else []
            raise InputError(f"{path}: no list {key!r} (keys: {', '.join(map(str, keys)) or 'none'})")
        document = document[key]
    if not isinstance(document, list):
        raise InputError(f"{path}: expected a list of case ids{f' under {key!r}' if key else ''}")
    try:
        return [_case_key(entry) for entry in document]
    except ValueError as error:
        raise InputError(f"{path}: entry {error.args[0]!r} is not a case id or image path") from None


def select_cases(
    dataset: str | None,
    images: str | None,
    labels: str | None,
    cases: str | None = None,
    max_cases: int | None = None,
) -> tuple[list[Case], str]:
    """The cases to evaluate and a description of where they come from."""
    source = read_source(dataset, images, labels)
    available = {c.case_id: Case(c.case_id, Path(c.image), Path(c.label)) for c in source.cases}
    if cases:
        from ..data import case_id_from_path

        ids = [i if i in available else case_id_from_path(Path(i)) for i in selected_ids(cases)]
        missing = [i for i in ids if i not in available]
        if missing:
            raise InputError(f"{cases}: case(s) {missing[:3]} are not in {source.origin}")
        chosen = [available[i] for i in ids]
    else:
        chosen = sorted(available.values(), key=lambda c: c.case_id)
    if max_cases is not None:
        if max_cases < 1:
            raise InputError(f"--max-cases {max_cases}: must be at least 1")
        chosen = chosen[:max_cases]
    description = source.origin + (f" ({cases})" if cases else "")
    return chosen, description
