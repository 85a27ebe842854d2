"""Reading images and writing outputs so that bad input is named and nothing is half-written.

Every output goes to a temporary file in the destination folder, is read back, and only then is
renamed into place, so a crash, a cancelled run or a full disk never leaves a truncated file under
the final name; the files of one case are put in place together or not at all (:func:`write_outputs`),
and an existing file is replaced only when the caller says so.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import InputError

# the image files a folder of cases is read from (SimpleITK's readers for them)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".tiff")


def case_id_from_path(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


class Output:
    """One file to write: how to write it to a temporary path, and how to prove the result complete.

    Writers do not always fail loudly: ITK's NIfTI writer reports a short write (disk full) on stderr
    and returns normally, so every file is read back before it may take its final name.
    """

    def __init__(self, write: Callable[[Path], None], verify: Callable[[Path], None]) -> None:
        self.write = write
        self.verify = verify


def bytes_output(data: bytes) -> Output:
    return Output(lambda t: t.write_bytes(data), lambda t: _verify_size(t, len(data)))


def text_output(text: str) -> Output:
    return bytes_output(text.encode("utf-8"))


def json_output(document: Any) -> Output:
    return text_output(json.dumps(document, indent=2, sort_keys=True, default=_json_default) + "\n")


def image_output(image: sitk.Image, compress: bool = True) -> Output:
    return Output(
        lambda t: sitk.WriteImage(image, str(t), useCompression=compress), lambda t: _verify_image(t, image)
    )


def _verify_size(path: Path, expected: int) -> None:
    written = path.stat().st_size
    if written != expected:
        raise OSError(f"wrote only {written} of {expected} bytes")


def _verify_image(path: Path, image: sitk.Image) -> None:
    """Read the file back: a truncated NIfTI reads as zeros unless checked, NRRD/MHA fail to read."""
    try:
        written = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise OSError(f"the written file does not read back ({_first_itk_line(error)})") from None
    _check_nifti_complete(path, written)
    if written.GetSize() != image.GetSize() or (
        written.GetNumberOfComponentsPerPixel() != image.GetNumberOfComponentsPerPixel()
    ):
        raise OSError("the written file does not read back with the size it was written with")


def write_outputs(outputs: Sequence[tuple[Path, Output]], overwrite: bool = False) -> list[Path]:
    """Write several files so that either all of them take their final names or none does.

    Every file goes to a temporary file beside its target and is verified there; only when all are
    complete are they renamed into place, in the order given (so a report listed last appears last and
    marks a complete set). Files being replaced are moved aside first and put back if a rename fails,
    so on any failure the folder holds exactly what it held before, and the error is one line with the
    OS reason ("No space left on device", ...).
    """
    targets = [Path(path) for path, _ in outputs]
    if not overwrite:
        for target in targets:
            if target.exists():
                raise InputError(f"{target}: already exists (use --overwrite to replace it)")
    staged: list[Path] = []
    try:
        for target, (_, output) in zip(targets, outputs, strict=True):
            staged.append(_stage(target, output))
        _rename_all(staged, targets)
    finally:
        for temporary in staged:
            temporary.unlink(missing_ok=True)
    return targets


def _stage(target: Path, output: Output) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(target.suffixes)  # SimpleITK picks the writer from the extension
        handle, name = tempfile.mkstemp(
            prefix=f".{target.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=target.parent
        )
    except OSError as error:
        # the output is named first; the path the OS refused (a file where a folder must go) after the reason
        culprit = f": {error.filename}" if error.filename and str(error.filename) != str(target) else ""
        raise InputError(f"{target}: cannot write ({error.strerror or error}{culprit})") from None
    os.close(handle)
    temporary = Path(name)
    try:
        output.write(temporary)
        output.verify(temporary)
        # mkstemp creates owner-only files; outputs get the permissions a plain open() would give
        os.chmod(temporary, 0o666 & ~_current_umask())
    except (OSError, RuntimeError, InputError) as error:
        reason = _write_failure_reason(target.parent, error)
        temporary.unlink(missing_ok=True)
        raise InputError(f"{target}: not written, {reason}; nothing of this set was replaced") from None
    except BaseException:  # an interrupt or SIGTERM mid-write: no temporary file is left behind
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _write_failure_reason(folder: Path, error: BaseException) -> str:
    """The OS reason of a failed write; a full disk is named as such whatever the writer said."""
    if isinstance(error, OSError) and error.errno is not None:
        reason = error.strerror or str(error)
    elif isinstance(error, RuntimeError):
        reason = _first_itk_line(error)
    else:
        reason = str(error)
    try:
        stats = os.statvfs(folder)
        if stats.f_bavail * stats.f_frsize < 64 * 1024:
            return f"disk full ({os.strerror(errno.ENOSPC)}; {reason})"
    except OSError:
        pass
    return reason


def _rename_all(staged: Sequence[Path], targets: Sequence[Path]) -> None:
    aside: list[tuple[Path, Path]] = []
    done: list[Path] = []
    try:
        for target in targets:
            if target.exists():
                backup = target.with_name(f".{target.name}.{os.getpid()}.previous")
                os.replace(target, backup)
                aside.append((backup, target))
        for temporary, target in zip(staged, targets, strict=True):
            os.replace(temporary, target)
            done.append(target)
    except OSError as error:
        for target in done:
            target.unlink(missing_ok=True)
        for backup, target in aside:
            os.replace(backup, target)
        raise InputError(f"{targets[0].parent}: cannot put the outputs in place ({error.strerror})") from None
    for backup, _ in aside:
        backup.unlink(missing_ok=True)


def _atomic_write(path: Path, output: Output, overwrite: bool) -> Path:
    return write_outputs([(Path(path), output)], overwrite)[0]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def zip_output(write: Callable[[Path], None]) -> Output:
    """A writer of one's own that makes a zip file (``torch.save``): verified by the zip's checksums."""
    return Output(write, _verify_zip)


def _verify_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise OSError(f"the written archive does not read back ({error})") from None
    if damaged is not None:
        raise OSError(f"the written archive does not read back ({damaged} fails its checksum)")


def atomic_write_with(path: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Run ``write(temporary_path)`` for a zip writer (``torch.save``), verify it, rename it into place."""
    return _atomic_write(Path(path), zip_output(write), overwrite)


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = False) -> Path:
    return _atomic_write(Path(path), bytes_output(data), overwrite)


def atomic_write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    return _atomic_write(Path(path), text_output(text), overwrite)


def atomic_write_json(path: str | Path, document: Any, overwrite: bool = False) -> Path:
    return _atomic_write(Path(path), json_output(document), overwrite)


def atomic_write_image(
    path: str | Path, image: sitk.Image, overwrite: bool = False, compress: bool = True
) -> Path:
    """``compress=False`` for a file read once right away (a child's input): gzip is most of the cost."""
    return _atomic_write(Path(path), image_output(image, compress), overwrite)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in chunks (model files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | Path, missing: str) -> Any:
    """The JSON document in ``path``; ``missing`` says what the file was expected to be when it is absent."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None


def read_json_object(path: str | Path, missing: str) -> dict[str, Any]:
    """A JSON object from ``path``; ``missing`` says what the file was expected to be when it is absent."""
    path = Path(path)
    document = read_json(path, missing)
    if not isinstance(document, dict):
        raise InputError(f"{path}: not a JSON object")
    return document


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
    names = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    _check_dicom_slices(folder, names)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{folder}: unreadable DICOM series ({_first_itk_line(error)})") from None


DICOM_GAP_TOLERANCE = 0.01  # of the slice spacing: positions are written with a few decimals


def _check_dicom_slices(folder: Path, names: list[str]) -> None:
    """Refuse a series that would be stacked with a slice missing, unreadable, repeated or out of step.

    GDCM leaves out files it cannot parse and the reader stacks the rest with one spacing, so a damaged
    or missing slice would silently shift every slice after it. Every DICOM file of the folder must be
    in the series, and the slice positions along the slice normal must be evenly spaced.
    """
    in_series = {Path(name).resolve() for name in names}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.resolve() not in in_series and _looks_like_dicom(path):
            raise InputError(
                f"{folder}: slice {path.name} is unreadable or not part of the series; remove it or "
                "repair it (a series with a slice left out would be stacked with the wrong spacing)"
            )
    if len(names) < 2:
        return
    positions = []
    for name in names:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
            origin = [float(v) for v in reader.GetMetaData("0020|0032").split("\\")]
            cosines = [float(v) for v in reader.GetMetaData("0020|0037").split("\\")]
        except (RuntimeError, ValueError):
            raise InputError(f"{name}: DICOM slice without a readable position or orientation") from None
        normal = np.cross(cosines[:3], cosines[3:6])
        positions.append(float(np.dot(normal, origin)))
    gaps = np.diff(np.sort(positions))
    step = float(np.median(gaps))
    if step <= 0 or np.any(gaps <= DICOM_GAP_TOLERANCE * step):
        raise InputError(f"{folder}: two slices of the series share one position (a repeated slice?)")
    if np.any(np.abs(gaps - step) > DICOM_GAP_TOLERANCE * step):
        worst = float(gaps[np.argmax(np.abs(gaps - step))])
        raise InputError(
            f"{folder}: slices are not evenly spaced (a gap of {worst:.3g} mm where the spacing is "
            f"{step:.3g} mm: a missing slice?); refusing to stack them with one spacing"
        )


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return True


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
