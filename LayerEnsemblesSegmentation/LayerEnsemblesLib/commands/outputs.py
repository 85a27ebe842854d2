"""The output folder of ``segment``: checked before any inference, and reruns that clean up after themselves.

A run that discovers only after an hour of inference that ``--out`` is a file, or a read-only folder,
has wasted the hour: the folder is probed once, up front, by writing and removing a file in it (the
only test that tells the truth on network shares and for root). Each case's targets are checked before
its inference too: without ``--overwrite`` none may exist, and with it none may be a folder.

With ``--overwrite``, a rerun that writes fewer files than the previous one (``--maps none`` after
``--maps all``) would leave the old maps beside the new segmentation. The previous run's report lists
the files it wrote; those the new run does not write are removed after the new report is in place,
and nothing else: a file the report does not name, or one outside the folder, is never touched.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError


def check_output_folder(out: Path) -> None:
    """Create ``out`` if needed and prove that files can be written and renamed in it."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out must be a folder, but this is a file")
    probe = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".layer-ensembles-probe.", dir=out)
        os.close(handle)
        os.replace(probe, probe + ".renamed")  # outputs are renamed into place: that must work too
        probe += ".renamed"
    except OSError as error:
        raise InputError(f"{out}: cannot write outputs in this folder ({error.strerror or error})") from None
    finally:
        if probe is not None and os.path.exists(probe):
            os.unlink(probe)


def check_targets(targets: Iterable[Path], overwrite: bool) -> None:
    """Every target is new, or (with ``overwrite``) an existing file, never a folder."""
    for target in targets:
        if target.is_dir():
            raise InputError(f"{target}: a folder is in the way of this output file; move it away")
        if target.exists() and not overwrite:
            raise InputError(f"{target}: already exists (use --overwrite to replace it)")


def previous_outputs(report_path: Path, case: str) -> list[Path]:
    """The files the previous run of ``case`` wrote, as its report lists them (ours to replace)."""
    try:
        outputs = json.loads(report_path.read_text(encoding="utf-8")).get("outputs", {})
    except (OSError, ValueError, AttributeError):
        return []  # no readable report: nothing is known to be ours
    if not isinstance(outputs, dict):
        return []
    folder = report_path.parent.resolve()
    ours = []
    for value in outputs.values():
        if not isinstance(value, str):
            continue
        path = Path(value)
        path = path if path.is_absolute() else report_path.parent / path.name
        if path.parent.resolve() == folder and path.name.startswith(f"{case}_") and path != report_path:
            ours.append(report_path.parent / path.name)
    return ours


def remove_stale(previous: Iterable[Path], written: Iterable[Path]) -> list[Path]:
    """Remove the previous run's files that this run did not write again; returns what was removed."""
    keep = {p.resolve() for p in written}
    removed = []
    for path in previous:
        if path.resolve() not in keep and path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(path)
    return removed
