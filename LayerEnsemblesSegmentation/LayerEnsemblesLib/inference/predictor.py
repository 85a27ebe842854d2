"""One-pass inference: load a model file, run it once over the image, and reduce its heads.

The :class:`Predictor` owns the model; :meth:`Predictor.predict` maps the input into network space
(``preprocessing.to_network_space``), runs a sliding window with exactly one forward pass per window
for all heads, and hands the blended native-resolution logits to the streaming reduction. Memory is
kept near a plain forward pass: the window bounds the activations, the accumulators hold each head at
its own resolution, and the reduction streams over heads.

Out of memory: a window that does not fit is halved (largest side first, always a multiple of the
size divisor) and the pass restarts; when even the smallest window fails on CUDA, the case runs on
the CPU, with one warning. Mixed precision (bf16 autocast) is available on CUDA but off by default:
it measured slower than fp32 for 3D convolutions with instance norm on an H200.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..contract import ModelMetadata, load_model
from ..devices import device_report, is_out_of_memory, release_cached_memory, resolve_device
from ..errors import InputError
from ..preprocessing import network_divisor, to_network_space
from .guards import (
    array_as_image,
    check_float32_values,
    check_geometry,
    check_network_size,
    check_window,
)
from .identity import model_sha256
from .reduction import HeadStream, reduction_bytes_per_voxel
from .results import (
    InferenceSession,
    Prediction,
    build_prediction,
    resolve_head_range,
    resolve_maps,
    resolve_threshold,
)
from .sliding_window import WindowPlan, plan_windows, round_window, run_windows, shrink_window

DEFAULT_SLICE_BATCH = 16  # 2D models: axial slices per forward pass
# Rough CPU activation cost per window voxel, in multiples of the stem's channel count (float32).
# On CUDA the cost is measured with a probe pass instead; the CPU has no allocator statistics to read.
CPU_LIVE_TENSORS_PER_CHANNEL = 12
HEAD_PRECISIONS = ("float32", "float16")  # of the retained head outputs (float16: half-size bundles)
MC_DROPOUT_SEED = 0  # MC dropout is random; a fixed seed makes a case reproducible

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]


class Predictor:
    """A loaded model ready to segment images; see the package docstring for the public API."""

    def __init__(
        self,
        model_path: str | Path,
        device: str | torch.device = "auto",
        window_size: Sequence[int] | None = None,
        overlap: float = 0.5,
        memory_budget_gb: float | None = None,
        mixed_precision: bool = False,
        head_precision: str = "float32",
        allow_large: bool = False,
        batch_windows: int = 1,
        stitch_device: str | torch.device = "auto",
        member: int | str | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.device = resolve_device(device)
        # member: one member of a deep ensemble with member heads, run as a layer ensemble (see .members)
        self.module, self._metadata = load_model(self.model_path, self.device, member)
        self.member: int | None = None if member is None else int(self.module.member)  # the index
        self.model_identity: dict[str, Any] = {"sha256": model_sha256(self.model_path)}  # names it in bundles
        if self.member is not None:
            self.model_identity["member"] = self.member
        if window_size is not None and (len(window_size) != 3 or min(int(w) for w in window_size) < 1):
            raise InputError(f"window size {tuple(window_size)}: expected three positive integers (z, y, x)")
        if window_size is not None:
            check_window(window_size, network_divisor(self._metadata), f"{self.model_path.name}")
        if not 0.0 <= overlap < 1.0:
            raise InputError(f"overlap {overlap}: must be in [0, 1)")
        if memory_budget_gb is not None and not (math.isfinite(memory_budget_gb) and memory_budget_gb > 0):
            raise InputError(f"memory budget {memory_budget_gb} GB: must be a positive number")
        if head_precision not in HEAD_PRECISIONS:
            raise InputError(f"head precision {head_precision!r}: choose from {', '.join(HEAD_PRECISIONS)}")
        self.head_precision = head_precision
        self.allow_large = bool(allow_large)
        if int(batch_windows) < 1:
            raise InputError(f"batch of windows {batch_windows}: must be at least 1")
        # MC dropout draws its masks per batch: one window per pass keeps a case's result independent of B
        self.batch_windows = 1 if self._metadata.kind == "mc_dropout" else int(batch_windows)
        self.stitch_request = stitch_device_request(stitch_device)
        self.window_size = tuple(int(w) for w in window_size) if window_size is not None else None
        self.overlap = float(overlap)
        self.memory_budget_gb = memory_budget_gb
        self.mixed_precision = bool(mixed_precision)
        self._modules: dict[str, torch.jit.ScriptModule] = {str(self.device): self.module}
        self._window_caps: dict[str, tuple[int, int, int]] = {}  # learnt from out-of-memory errors
        self._bytes_per_voxel: dict[str, float] = {}

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    @property
    def slicewise(self) -> bool:
        return self._metadata.spatial_dims == 2

    @property
    def member_names(self) -> list[str]:
        """Names of the ensemble members: heads, deep-ensemble members, or MC-dropout samples."""
        if self._metadata.kind == "mc_dropout":
            return [f"sample{i}" for i in range(self._metadata.samples)]
        return list(self._metadata.head_names)

    def device_report(self) -> dict[str, Any]:
        return device_report(self.device)

    def predict(
        self,
        image: sitk.Image | np.ndarray,
        spacing: Sequence[float] | None = None,
        skip_heads: int | None = None,
        head_range: Sequence[int] | None = None,
        threshold: float | None = None,
        maps: Sequence[str] | str | None = ("agreement",),
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
        source: str | None = None,
        keep_on_device: bool = False,
    ) -> Prediction:
        """Segment ``image`` and score it; every output comes back in the input's geometry.

        The head outputs that recombination needs are moved to the CPU once the pass is over, so a
        worklist does not accumulate GPU memory; ``keep_on_device=True`` keeps them on the compute
        device for fast recombination of one interactive case (``Prediction.release_device_memory``
        moves them later).
        """
        start = time.perf_counter()
        source = source or ("image" if isinstance(image, sitk.Image) else "array")
        metadata = self._metadata
        # argument errors first: they should not cost a forward pass
        first_stop = resolve_head_range(
            len(self.member_names), metadata.skip_heads, skip_heads, head_range, str(self.model_path)
        )
        wanted_maps = resolve_maps(maps)
        threshold_value, threshold_source = resolve_threshold(threshold, metadata, str(self.model_path))
        report = progress or (lambda fraction, message: None)
        notes: list[str] = [] if isinstance(image, sitk.Image) else [array_geometry_note(source, spacing)]
        image = as_image(image, spacing, source)
        check_fits_model(image, metadata, source, str(self.model_path))
        check_geometry(image, source)
        check_float32_values(image, source)
        if not self.allow_large:
            per_voxel = self._accumulator_bytes((1,)) + 8 * metadata.in_channels  # + input and padded copy
            check_network_size(image, metadata.target_spacing, per_voxel, self.memory_budget_gb, source)
        report(0.0, "preprocessing")
        array, geometry = to_network_space(image, metadata, source)
        timings = {"preprocess": time.perf_counter() - start}

        forward_start = time.perf_counter()
        logits, plan, device = self._forward_with_fallback(array, source, notes, report, cancel)
        stitch = logits[0].device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings["forward"] = time.perf_counter() - forward_start
        if self.head_precision == "float16":  # rounded once, here: a float16 bundle then recombines exactly
            logits = [t.to(torch.float16).to(t.dtype) for t in logits]
        crop = tuple(
            slice(before, size - after)
            for (before, after), size in zip(geometry.padding, geometry.shape, strict=False)
        )
        stream = HeadStream(logits, geometry.shape, crop, self.slicewise, metadata.num_classes)
        del logits
        window_info = {
            "size_zyx": list(plan.window),
            "count": plan.count,
            "overlap": self.overlap,
            "mixed_precision": self.mixed_precision and device.type == "cuda",
            "head_precision": self.head_precision,
            "batch_windows": self.batch_windows,
            "stitch_device": str(stitch),
        }
        session = InferenceSession(
            metadata,
            self.member_names,
            stream,
            geometry,
            image,
            source,
            str(self.model_path),
            window_info,
            device_report(device),
            timings,
            notes,
            dict(self.model_identity),
        )
        report(0.95, "combining heads")
        prediction = build_prediction(
            session, first_stop, wanted_maps, threshold_value, threshold_source, cancel, start, timings
        )
        if not keep_on_device:
            session.release_device_memory()
        report(1.0, "done")
        return prediction

    # ----------------------------------------------------------------------------------------------
    def _forward_with_fallback(
        self,
        array: np.ndarray,
        source: str,
        notes: list[str],
        report: ProgressCallback,
        cancel: CancelCallback | None,
    ) -> tuple[list[torch.Tensor], WindowPlan, torch.device]:
        device = self.device
        while True:
            try:
                run = self._forward_shrinking(array, device, source, notes, report, cancel)
                return (*run, device)
            except Exception as error:  # noqa: BLE001 - memory errors only, everything else re-raised
                if not (is_out_of_memory(error) and device.type == "cuda"):
                    if is_out_of_memory(error):
                        raise InputError(
                            f"{source}: out of memory on the {device.type.upper()} even with the "
                            "smallest window; free memory or use a smaller input"
                        ) from None
                    raise
            release_cached_memory(device)
            message = (
                f"{source}: CUDA ran out of memory even with the smallest window; running this case on "
                "the CPU (slower)"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            notes.append(message)
            device = torch.device("cpu")

    def _forward_shrinking(
        self,
        array: np.ndarray,
        device: torch.device,
        source: str,
        notes: list[str],
        report: ProgressCallback,
        cancel: CancelCallback | None,
    ) -> tuple[list[torch.Tensor], WindowPlan]:
        """Run all windows; on out-of-memory halve the window and start over."""
        module = self._module_on(device)
        volume = torch.from_numpy(array).to(device)
        shape = tuple(int(s) for s in array.shape[1:])
        divisor = network_divisor(self._metadata)
        window = self._initial_window(module, volume, shape, device)
        first_window = window
        stitch = self._stitch_device(device, shape)
        batch = self.batch_windows
        while True:
            plan = plan_windows(shape, window, divisor, self.overlap, self.slicewise)
            failed = False
            try:
                logits = self._run_plan(module, volume, plan, source, report, cancel, stitch, batch)
            except Exception as error:  # noqa: BLE001
                if not is_out_of_memory(error):
                    raise
                failed = True
            if failed and stitch.type == "cuda" and self.stitch_request == "auto":
                # keep the window (and the GPU's speed); let the blended heads grow in host memory
                release_cached_memory(device)
                stitch = torch.device("cpu")
                message = f"{source}: GPU memory is short; blending the windows on the CPU"
                warnings.warn(message, RuntimeWarning, stacklevel=4)
                notes.append(message)
                continue
            if failed and batch > 1:  # fewer windows per pass before smaller windows
                release_cached_memory(device)
                batch //= 2
                continue
            if not failed:
                if batch != self.batch_windows:
                    message = (
                        f"{source}: out of memory with {self.batch_windows} windows per pass on {device}; "
                        f"used {batch}"
                    )
                    warnings.warn(message, RuntimeWarning, stacklevel=4)
                    notes.append(message)
                if window != first_window:
                    message = (
                        f"{source}: out of memory with a {first_window} window on {device}; "
                        f"used {plan.window} instead"
                    )
                    warnings.warn(message, RuntimeWarning, stacklevel=4)
                    notes.append(message)
                return logits, plan
            release_cached_memory(device)  # outside the except block, so the failed tensors are freed
            smaller = shrink_window(plan.window, divisor, self.slicewise)
            if smaller is None:
                raise MemoryError(f"out of memory with the smallest window {plan.window}")
            self._window_caps[str(device)] = smaller
            window = smaller

    def _run_plan(
        self,
        module: torch.jit.ScriptModule,
        volume: torch.Tensor,
        plan: WindowPlan,
        source: str,
        report: ProgressCallback,
        cancel: CancelCallback | None,
        stitch: torch.device | None = None,
        batch: int = 1,
    ) -> list[torch.Tensor]:
        metadata = self._metadata
        strides = [(1, s, s) if self.slicewise else (s, s, s) for s in metadata.head_strides]
        if metadata.kind == "mc_dropout":
            strides = strides * metadata.samples

        def on_window(done: int, total: int) -> None:
            report(0.05 + 0.85 * done / total, f"window {done}/{total}")

        forward = self._forward_function(module, volume.device)
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if metadata.kind == "mc_dropout":
                stack.enter_context(_dropout_active(module))
                on_cuda = volume.device.type == "cuda"
                devices = [volume.device.index or 0] if on_cuda else []
                stack.enter_context(torch.random.fork_rng(devices=devices, device_type="cuda"))
                torch.manual_seed(MC_DROPOUT_SEED)
            return run_windows(
                forward,
                volume,
                plan,
                strides,
                metadata.num_classes,
                self.slicewise,
                source,
                on_window,
                cancel,
                batch_windows=batch,
                stitch_device=stitch,
            )

    def _forward_function(self, module: torch.jit.ScriptModule, device: torch.device):
        metadata = self._metadata
        autocast = self.mixed_precision and device.type == "cuda"

        def forward(batch: torch.Tensor) -> list[torch.Tensor]:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                if metadata.kind == "mc_dropout":
                    outputs = []
                    for _ in range(metadata.samples):
                        sample = module(batch)
                        if len(sample) != 1:
                            raise InputError(
                                f"{self.model_path}: an mc_dropout model must return one output, "
                                f"not {len(sample)}"
                            )
                        outputs.append(sample[0])
                    return outputs
                return list(module(batch))

        return forward

    def _module_on(self, device: torch.device) -> torch.jit.ScriptModule:
        key = str(device)
        if key not in self._modules:
            self._modules[key], _ = load_model(self.model_path, device, self.member)
        return self._modules[key]

    def _initial_window(
        self,
        module: torch.jit.ScriptModule,
        volume: torch.Tensor,
        shape: tuple[int, int, int],
        device: torch.device,
    ) -> tuple[int, int, int]:
        """The requested (or default) window, capped by earlier OOMs and by the memory budget."""
        metadata = self._metadata
        divisor = network_divisor(metadata)
        if self.window_size is not None:
            window = self.window_size
        elif self.slicewise:
            window = (DEFAULT_SLICE_BATCH, *metadata.patch_size)
        else:
            window = tuple(metadata.patch_size)
        window = round_window(window, divisor, shape)
        cap = self._window_caps.get(str(device))
        if cap is not None:
            window = tuple(min(w, c) for w, c in zip(window, cap, strict=False))
        if self.memory_budget_gb is None:
            return window
        budget = self.memory_budget_gb * 1024**3
        fixed = self._accumulator_bytes(shape)
        if fixed > budget:
            warnings.warn(
                f"the accumulators alone need about {fixed / 1024**3:.2f} GB, above the memory budget of "
                f"{self.memory_budget_gb} GB; continuing with the smallest window",
                RuntimeWarning,
                stacklevel=4,
            )
        per_voxel = self._forward_bytes_per_voxel(module, volume, window, device) * self.batch_windows
        while fixed + per_voxel * math.prod(window) > budget:
            smaller = shrink_window(window, divisor, self.slicewise)
            if smaller is None:
                break
            window = smaller
        return window

    def _stitch_device(self, device: torch.device, shape: Sequence[int]) -> torch.device:
        """Where this case's windows are blended: see :func:`choose_stitch_device`."""
        free = None
        if device.type == "cuda" and self.stitch_request == "auto":
            free_bytes, _ = torch.cuda.mem_get_info(device)
            # the caching allocator's reserved but unused blocks are free for this process too
            free = free_bytes + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return choose_stitch_device(self.stitch_request, device, self._accumulator_bytes(shape), free)

    def _accumulator_bytes(self, shape: Sequence[int]) -> float:
        """Blended native logits plus the reduction's few full-resolution buffers, in bytes."""
        metadata = self._metadata
        voxels = math.prod(shape)
        strides = metadata.head_strides * (metadata.samples if metadata.kind == "mc_dropout" else 1)
        power = 2 if self.slicewise else 3
        logits = sum(4 * metadata.num_classes * voxels / s**power for s in strides)
        reduction = voxels * reduction_bytes_per_voxel(metadata.num_classes, len(strides))
        return logits + reduction

    def _forward_bytes_per_voxel(
        self,
        module: torch.jit.ScriptModule,
        volume: torch.Tensor,
        window: Sequence[int],
        device: torch.device,
    ) -> float:
        key = str(device)
        if key in self._bytes_per_voxel:
            return self._bytes_per_voxel[key]
        if device.type == "cuda":  # measure one window's pass
            region = (slice(None), *(slice(0, w) for w in window))
            batch = volume[region].transpose(0, 1) if self.slicewise else volume[region][None]
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
            with torch.inference_mode():
                self._forward_function(module, device)(batch)
            torch.cuda.synchronize(device)
            value = (torch.cuda.max_memory_allocated(device) - baseline) / math.prod(window)
        else:
            stem = next((p.shape[0] for p in module.parameters() if p.dim() >= 4), 32)
            value = 4.0 * CPU_LIVE_TENSORS_PER_CHANNEL * max(int(stem), self._metadata.in_channels)
        self._bytes_per_voxel[key] = float(value)
        return float(value)


def array_geometry_note(source: str, spacing: Sequence[float] | None) -> str:
    """The report's warning for an array input: it has no direction or origin, and maybe no spacing.

    The model reorients its input to its own orientation, so the identity direction assumed for an
    array can give another segmentation and decision than the file the array was read from.
    """
    assumed = "identity direction (LPS axes) and origin 0" + (", 1 mm spacing" if spacing is None else "")
    return (
        f"{source}: a numpy array carries no orientation; {assumed} assumed, which may give another "
        "decision than the image file: pass a SimpleITK image with the scan's geometry"
    )


STITCH_SHARE_OF_FREE_MEMORY = 0.5  # the rest is left to the windows' activations


def stitch_device_request(request: str | torch.device) -> str:
    """``auto``, ``same`` (the compute device) or a device name, checked once at construction."""
    text = str(request or "auto").strip().lower()
    if text in ("auto", "same"):
        return text
    return str(resolve_device(text))


def choose_stitch_device(
    request: str, compute: torch.device, accumulator_bytes: float, free_bytes: float | None
) -> torch.device:
    """The device that holds the blended heads while the windows run on ``compute``.

    ``same`` keeps them with the windows; a device name puts them there; ``auto`` keeps them on the
    compute device unless that is a GPU whose free memory (``free_bytes``) could not hold them with
    room to spare for the windows' activations, in which case the host takes them: the windows
    still run on the GPU, which is far faster than moving the whole case to the CPU.
    """
    if request == "same":
        return compute
    if request != "auto":
        return torch.device(request)
    if compute.type != "cuda" or free_bytes is None:
        return compute
    if accumulator_bytes > STITCH_SHARE_OF_FREE_MEMORY * free_bytes:
        return torch.device("cpu")
    return compute


def as_image(image: sitk.Image | np.ndarray, spacing: Sequence[float] | None, source: str) -> sitk.Image:
    """A SimpleITK image from either a SimpleITK image or a numpy array (z, y, x[, channels])."""
    if isinstance(image, sitk.Image):
        if spacing is not None:
            raise InputError(f"{source}: spacing applies to numpy arrays; a SimpleITK image carries its own")
        return image
    return array_as_image(image, spacing, source)


def check_fits_model(image: sitk.Image, metadata: ModelMetadata, source: str, model: str) -> None:
    """The input's dimension and channels against the model's, named in one line."""
    if image.GetDimension() != 3:
        how = " (a 2D model runs slice by slice on them)" if metadata.spatial_dims == 2 else ""
        raise InputError(
            f"{source}: a {image.GetDimension()}D image, but the model {Path(model).name} segments 3D "
            f"volumes{how}"
        )
    channels = image.GetNumberOfComponentsPerPixel()
    if channels != metadata.in_channels:
        raise InputError(
            f"{source}: {channels} component(s) per voxel (a vector image?), but the model "
            f"{Path(model).name} expects {metadata.in_channels} channel(s)"
        )


@contextlib.contextmanager
def _dropout_active(module: torch.jit.ScriptModule):
    """Dropout on and everything else (normalisation) in eval mode, restored afterwards.

    Scripted modules keep their submodules' ``original_name``; a module without any dropout submodule
    is put in training mode as a whole, as the contract allows, with a warning.
    """
    dropouts = [m for _, m in module.named_modules() if "dropout" in getattr(m, "original_name", "").lower()]
    try:
        if dropouts:
            for submodule in dropouts:
                submodule.train()
        else:
            warnings.warn(
                "mc_dropout model without recognisable dropout modules; running it in training mode",
                RuntimeWarning,
                stacklevel=5,
            )
            module.train()
        yield
    finally:
        module.eval()
