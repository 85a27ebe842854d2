"""Reading images and writing outputs so that bad input is named and nothing is half-written.

Every output goes to a temporary file in the destination folder and is renamed into place, so a
crash or a cancelled run never leaves a truncated file under the final name, and an existing file
is replaced only when the caller says so.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import InputError


def _atomic_write(path: Path, write: Callable[[Path], None], overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists (use --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)  # SimpleITK picks the writer from the extension
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(handle)
    temporary = Path(temporary)
    try:
        write(temporary)
        # mkstemp creates owner-only files; outputs get the permissions a plain open() would give
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_with(path: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Run ``write(temporary_path)`` for a writer of one's own (``torch.save``), then rename into place."""
    return _atomic_write(Path(path), write, overwrite)


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = False) -> Path:
    return _atomic_write(Path(path), lambda t: t.write_bytes(data), overwrite)


def atomic_write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    return _atomic_write(Path(path), lambda t: t.write_text(text, encoding="utf-8"), overwrite)


def atomic_write_json(path: str | Path, document: Any, overwrite: bool = False) -> Path:
    return atomic_write_text(
        path, json.dumps(document, indent=2, sort_keys=True, default=_json_default) + "\n", overwrite
    )


def atomic_write_image(path: str | Path, image: sitk.Image, overwrite: bool = False) -> Path:
    return _atomic_write(Path(path), lambda t: sitk.WriteImage(image, str(t), useCompression=True), overwrite)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def read_image(path: str | Path) -> sitk.Image:
    """Read any file SimpleITK reads, or a DICOM folder holding exactly one series."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        return _read_dicom_folder(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{path}: unreadable or truncated image ({_first_itk_line(error)})") from None
    _check_nifti_complete(path, image)
    return image


def _check_nifti_complete(path: Path, image: sitk.Image) -> None:
    """ITK reads a truncated NIfTI file without complaint (the missing voxels become zeros): check it.

    NRRD and MetaImage readers already fail on truncated data.
    """
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    components = image.GetNumberOfComponentsPerPixel()
    data_bytes = image.GetNumberOfPixels() * components * image.GetSizeOfPixelComponent()
    needed = data_bytes + 348  # the smallest NIfTI header
    if name.endswith(".nii"):
        available = path.stat().st_size
    else:
        available = 0
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing
        with open(path, "rb") as handle:
            try:
                while chunk := handle.read(1 << 20):
                    available += len(decompressor.decompress(chunk))
                    while decompressor.unconsumed_tail:
                        available += len(decompressor.decompress(decompressor.unconsumed_tail))
            except zlib.error as error:
                raise InputError(f"{path}: corrupt compressed data ({error})") from None
        if not decompressor.eof:
            raise InputError(f"{path}: truncated file (the compressed data ends early)")
    if available < needed:
        raise InputError(f"{path}: truncated file ({available} bytes of header and data, {needed} expected)")


def _read_dicom_folder(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series")
    if len(series) > 1:
        raise InputError(
            f"{folder}: folder holds {len(series)} DICOM series ({', '.join(series[:3])}...); "
            "pass the folder of one series"
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{folder}: unreadable DICOM series ({_first_itk_line(error)})") from None


def _first_itk_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK messages start with file/line noise; the description is the most useful line
    for line in lines:
        if line.lower().startswith("description:"):
            return line.split(":", 1)[1].strip()[:160]
    for line in lines:  # "ITK ERROR: MetaImageIO(0x...): File cannot be read: ..." (a stale errno follows)
        if "ITK ERROR:" in line and "): " in line:
            return line.split("): ", 1)[1].strip()[:160]
    return (lines[-1] if lines else type(error).__name__)[:160]
