"""The review controller: the state and actions of a review, for the Slicer panel and the web app alike.

A GUI binds its widgets to ``controller.state``, calls the actions, subscribes to the events, and calls
``poll()`` from a timer on its main thread. Inference runs in a child process (``EngineProcess``): a
Python thread inside Slicer only advances while the main thread runs Python, and a crash in torch or
CUDA would take the application with it. ``poll()`` moves what the child finished into the scene, on the
calling thread, so MRML is only ever touched there.

Actions never raise into the GUI: a problem becomes one line in an "error" event and in
``state.last_error`` (the GUI shows it), and the action returns None or False.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import slicer

from ..errors import InputError, first_line
from ..scene import Batch, SceneContext, Worklist, apply_prediction, remove_result, runtime
from ..scene.geometry import geometry_only
from ..scene.results import CaseResult
from ..scene.session import ReviewSession
from . import cases as scene_cases
from .models import read_model_info, same_model, stored_model_path
from .review_actions import ReviewActions, action
from .runs import EngineFactory, Run, default_engine_factory, prepare_inputs
from .state import DONE, FAILED, RUNNING, CaseState, ReviewState

EVENTS = ("progress", "result_shown", "error", "state_changed")
log = logging.getLogger(__name__)


class ReviewController(ReviewActions):
    """State, actions and events of one review, on one scene."""

    def __init__(
        self,
        context: SceneContext,
        *,
        bundle_folder: str | os.PathLike | None = None,
        python_executable: str | None = None,
        engine_factory: EngineFactory | None = None,
    ):
        self.context = context
        self.state = ReviewState()  # torch summary: refresh_devices (importing torch takes seconds)
        self.bundle_folder = Path(bundle_folder) if bundle_folder else default_bundle_folder()
        self.python_executable = python_executable or sys.executable
        self._engine_factory = engine_factory or default_engine_factory
        self._subscribers: dict[str, list[Callable]] = {name: [] for name in EVENTS}
        self._results: dict[str, CaseResult] = {}  # segmentation ID -> handle (prediction loaded lazily)
        self._references: dict = {}  # segmentation ID -> input image (the geometry results go back into)
        self._worklist: Worklist | None = None
        self._run: Run | None = None
        self._helper = ReviewSession(context)  # input snapshots (volume, ROI, folder)
        self._observers = [
            context.scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self._on_scene_close)
        ]

    # -- events ----------------------------------------------------------------------------------------

    def subscribe(self, event: str, callback: Callable) -> Callable[[], None]:
        """Call ``callback(payload)`` on ``event``; returns a function that unsubscribes."""
        if event not in self._subscribers:
            raise ValueError(f"unknown event {event!r}; expected one of {EVENTS}")
        self._subscribers[event].append(callback)
        return lambda: (
            self._subscribers[event].remove(callback) if callback in self._subscribers[event] else None
        )

    def _emit(self, event: str, payload=None) -> None:
        for callback in list(self._subscribers[event]):
            try:
                callback(payload)
            except Exception:  # noqa: BLE001 - a broken GUI callback must not break the review
                log.exception("LayerEnsembles: a %s subscriber failed", event)

    def _report_error(self, line: str, from_action: bool = False) -> None:
        self.state.last_error = self.state.status = line
        self.state.error_from_action = from_action
        self._emit("error", line)
        self._emit("state_changed", self.state)

    def _changed(self, status: str | None = None) -> None:
        if status is not None:
            self.state.status = status
        self._emit("state_changed", self.state)

    # -- model and device ------------------------------------------------------------------------------

    @action
    def load_model(self, path: str | os.PathLike) -> bool:
        """Load a model file's summary. A new file sets the run settings to its defaults; the same file keeps
        what the user set (defect 3), and the shown result keeps its own model's settings (defect 4)."""
        previous, self.state.model_path = self.state.model, stored_model_path(path)
        try:
            info = read_model_info(path)
        except Exception:
            self.state.model = None  # the GUI shows the chosen file as not loaded, and does not retry it
            raise
        self.state.model = info
        if previous is None or not same_model(previous.path, info.path):
            case = self.state.current_case
            if case is not None and same_model(case.model_path, info.path) and case.kept_heads:
                self.state.kept_heads, self.state.threshold = case.kept_heads, case.threshold
            else:
                self.state.kept_heads, self.state.threshold = info.default_heads, info.threshold
        self._changed(f"Model: {info.name} ({info.head_count} heads)")
        return True

    def refresh_devices(self) -> None:
        self.state.devices = runtime.device_choices()
        self.state.torch_summary = runtime.torch_summary()
        self._changed()

    @action
    def set_device(self, device: str) -> None:
        if device not in {spec for _, spec in self.state.devices} and not device.startswith("cuda"):
            raise InputError(f"device {device!r}: choose one of {[spec for _, spec in self.state.devices]}")
        self.state.device = device
        self._changed()

    def current_chart_id(self) -> str | None:
        """The agreement chart node of the shown case (for a plot view)."""
        case = self.state.current_case
        return self._results[case.segmentation_id].chart_id if case is not None else None

    def worklist_table_id(self) -> str | None:
        """The worklist table node (ranked by AULA, lowest first), once a batch has run."""
        worklist = self._worklist
        return worklist.table_id if worklist is not None and self.context.node(worklist.table_id) else None

    # -- running ---------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._run is not None

    @action
    def segment_volume(self, volume_node, roi_node=None) -> bool:
        return self._start([self._helper.case_from_volume(volume_node, roi_node)], batch=False)

    @action
    def segment_volumes(self, volume_nodes, roi_node=None) -> bool:
        if not volume_nodes:
            raise InputError("worklist: check at least one volume")
        return self._start([self._helper.case_from_volume(v, roi_node) for v in volume_nodes], batch=True)

    @action
    def segment_folder(self, folder, roi_node=None) -> bool:
        return self._start(self._helper.cases_from_folder(folder, roi_node), batch=True)

    def segment_worklist(self, volumes_or_folder, roi_node=None) -> bool:
        """A worklist from scene volumes (a list) or from a folder of image files (a path)."""
        if isinstance(volumes_or_folder, (list, tuple)):
            return self.segment_volumes(volumes_or_folder, roi_node)
        return self.segment_folder(volumes_or_folder, roi_node)

    def _start(self, cases, batch: bool) -> bool:
        if self._run is not None:
            raise InputError("a run is already going: wait for it or cancel it")
        model = self.state.model
        if model is None:
            raise InputError("model: load a model file first")
        work_dir, pending = prepare_inputs(cases)
        first, stop = scene_cases.head_range(self.state.kept_heads or model.default_heads)
        maps = (
            ("agreement",)
            if self.state.heatmap_kind == "agreement"
            else ("agreement", self.state.heatmap_kind)
        )
        try:
            process = self._engine_factory(
                inputs=[p.input_file for p in pending],
                model=model.path,
                device=self.state.device,
                head_range=(first, stop),
                threshold=self.state.threshold,
                maps=maps,
                save_heads=True,
                python_executable=self.python_executable,
                work_dir=str(work_dir),
            )
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        self._run = Run(
            process,
            pending,
            work_dir,
            model.path,
            (first + 1, stop),
            float(self.state.threshold),
            self.state.heatmap_kind,
            scene_id=id(self.context.scene),
        )
        if batch:
            if self._worklist is None or self.context.node(self._worklist.table_id) is None:
                self._worklist = Worklist(self.context)
            self._run.batch = Batch(self.context, self._worklist)
        self.state.run.running, self.state.run.batch = True, batch
        self.state.run.progress, self.state.run.message = 0.0, "Starting..."
        self.state.run.cases = self._run.queue()
        self._changed("Starting...")
        return True

    @action
    def add_from_bundle(self, volume_node, bundle_path: str | os.PathLike) -> bool:
        """Commit an earlier run's results bundle for ``volume_node`` like a finished case of a batch.

        No child process and no network pass: the bundle holds the head outputs, so the case gets the
        same worklist row, CaseState and scene nodes as if it had just been segmented, and it recombines
        from that bundle (which stays where it is: the segmentation refers to it). A bad bundle is one
        error line and the scene is left as it was.
        """
        from ..inference.bundle import load_bundle
        from ..scene import load_case_image

        if self._run is not None:
            raise InputError("a run is already going: wait for it or cancel it")
        bundle = Path(bundle_path).resolve()
        if not bundle.is_file():
            raise InputError(f"{bundle}: no such results bundle")
        prediction = load_bundle(bundle, device="cpu")
        self._check_bundle_model(bundle, prediction.model_identity)
        case_input = self._helper.case_from_volume(volume_node, None)
        _, reference, crop_index = load_case_image(case_input)
        _check_same_grid(bundle, prediction.session.reference, reference)
        if self._worklist is None or self.context.node(self._worklist.table_id) is None:
            self._worklist = Worklist(self.context)
        batch = Batch(self.context, self._worklist)
        try:
            result = batch.commit(case_input, prediction, prediction.metadata, reference, crop_index)
        except BaseException:
            batch.rollback()
            raise
        batch.finish()
        segmentation = self.context.node(result.segmentation_id)
        # The loaded model made it (checked above by SHA-256): name that file, so the sliders recombine it.
        loaded = self.state.model
        model_path = loaded.path if loaded is not None else prediction.model_identity.get("path") or ""
        scene_cases.store_run_references(
            segmentation, str(bundle), stored_model_path(model_path) if model_path else "", crop_index
        )
        self._results[result.segmentation_id] = result
        self._references[result.segmentation_id] = _reference_grid(reference, prediction)
        case = scene_cases.case_state_from_node(segmentation, self.context.node(result.input_id))
        self._add_case(case)
        if self.state.current is None:
            self.open_case(self.state.cases.index(case))
        runtime.release_freed_memory()
        self._changed(f"{case.name}: taken from its results bundle (no network pass)")
        return True

    def _check_bundle_model(self, bundle: Path, identity: dict) -> None:
        """With a model loaded, only its own results are taken up (a restart with another model segments
        the cases again rather than showing the old model's results as the new one's)."""
        from ..inference.identity import model_sha256

        model = self.state.model
        if model is None or not identity.get("sha256"):
            return
        if identity["sha256"] != model_sha256(model.path):
            raise InputError(
                f"{bundle}: made with another model ({identity.get('name') or 'unknown'}) than the loaded "
                f"{model.name}"
            )
        if identity.get("member") is not None:  # `segment --member K`: one member's heads, not this file's
            raise InputError(
                f"{bundle}: made with member {identity['member']} of {model.name} alone (segment --member); "
                "the review runs whole model files"
            )

    def poll(self) -> bool:
        """Apply what the child reported since the last call (main thread); True while a run goes on.

        Safe to call at any time, with no run, after a scene close, with the panel hidden: it never raises.
        """
        run = self._run
        if run is None:
            return False
        try:
            for event in run.process.poll():
                if self._run is not run:
                    return False  # cancelled or closed by a subscriber while applying
                self._apply_event(run, event)
            if self._run is run and run.process.done:
                self._finish(run)
        except Exception as error:  # noqa: BLE001 - the timer must keep running; report and stop the run
            log.exception("LayerEnsembles: applying the engine's events failed")
            self._abandon(run, rollback=True)
            self._report_error(runtime.explain_error(error))
        return self._run is not None

    def _apply_event(self, run: Run, event: dict) -> None:
        kind = event.get("event")
        pending = run.find(event)
        if kind in ("case_started", "progress") and pending is not None:
            pending.status, pending.message = RUNNING, str(event.get("message") or "")
            pending.fraction = float(event.get("fraction") or 0.0)
            self._progress(run, f"{pending.case.name}: {event.get('message', 'started')}")
        elif kind == "case_done" and pending is not None:
            pending.fraction, pending.status = 1.0, DONE
            try:
                self._commit(run, pending, event)
            except InputError as error:
                run.failures.append(f"{pending.case.name}: {first_line(error, 300)}")
            self._progress(run, f"{pending.case.name}: done")
        elif kind == "case_failed":
            name = pending.case.name if pending is not None else event.get("case", "?")
            if pending is not None:
                pending.fraction, pending.status = 1.0, FAILED
            run.failures.append(f"{name}: {event.get('error', 'failed')}")
            self.state.run.cases = run.queue()
        elif kind == "warning":
            run.warnings.append(str(event.get("message", "")))
            self._progress(run, str(event.get("message", "")))
        elif kind == "error":
            run.fatal = str(event.get("error", "the engine failed"))

    def _progress(self, run: Run, message: str) -> None:
        self.state.run.progress, self.state.run.message = run.progress, message
        self.state.run.cases = run.queue()
        self._emit("progress", {"fraction": run.progress, "message": message})

    def _commit(self, run: Run, pending, event: dict) -> None:
        from ..inference.bundle import load_bundle

        bundle = self._keep_bundle(event.get("bundle"), pending.case.name)
        prediction = load_bundle(bundle, device="cpu")
        reference, crop_index = pending.reference_and_crop()
        if run.batch is not None:
            result = run.batch.commit(pending.case, prediction, prediction.metadata, reference, crop_index)
        else:
            input_node = self.context.node(pending.case.input_id)
            if input_node is None:
                raise InputError(
                    f"{pending.case.name}: the input volume was removed from the scene during the run"
                )
            result = apply_prediction(
                self.context,
                input_node,
                prediction,
                prediction.metadata,
                reference,
                crop_index,
                heatmap_kind=run.heatmap_kind,
                show=False,
            )
        result.shown_heatmap = run.heatmap_kind if run.heatmap_kind in result.heatmap_ids else "agreement"
        segmentation = self.context.node(result.segmentation_id)
        scene_cases.store_run_references(
            segmentation, str(bundle), stored_model_path(run.model_path), crop_index
        )
        self._results[result.segmentation_id] = result
        self._references[result.segmentation_id] = _reference_grid(reference, prediction)
        run.committed.append(result.segmentation_id)
        case = scene_cases.case_state_from_node(segmentation, self.context.node(result.input_id))
        self._add_case(case)
        if run.batch is None:
            self.open_case(self.state.cases.index(case))
        runtime.release_freed_memory()  # the bundle's and the resampling's buffers

    def _keep_bundle(self, path, name: str) -> Path:
        """Move the child's bundle out of its temporary folder into the bundle folder (a unique name)."""
        if not path or not Path(path).is_file():
            raise InputError(f"{name}: the engine wrote no results bundle")
        self.bundle_folder.mkdir(parents=True, exist_ok=True)
        stem = Path(path).name.removesuffix(".pt")
        target = self.bundle_folder / f"{stem}.pt"
        counter = 1
        while target.exists():
            counter += 1
            target = self.bundle_folder / f"{stem}-{counter}.pt"
        shutil.move(str(path), target)
        return target

    def _add_case(self, case: CaseState) -> None:
        for index, existing in enumerate(self.state.cases):
            if existing.segmentation_id == case.segmentation_id:
                self.state.cases[index] = case
                return
        self.state.cases.append(case)

    def _finish(self, run: Run) -> None:
        """The child has exited and every event was applied: report the run once."""
        if run.fatal:  # the engine stopped (a crash, a bad argument): the run leaves the scene as it was
            self._abandon(run, rollback=True)
            line = f"The engine stopped: {run.fatal} (the scene is unchanged)"
            self.state.run.message = line
            self._report_error(line)
            return
        self._run = None
        run.discard_files()
        self.state.run.running, self.state.run.progress, self.state.run.cases = False, 1.0, []
        if run.batch is not None and run.committed:
            run.batch.finish()
            self._open_first_of(run)
        if run.failures:  # one report for the whole run (defect 8), not one per case
            summary = (
                f"{len(run.failures)} of {len(run.pending)} case(s) failed ({len(run.committed)} done): "
                + "; ".join(run.failures)
            )
            self.state.run.message = summary
            self._report_error(summary)
            return
        warnings = "; ".join(w for w in run.warnings if w)
        self.state.run.message = "Done." + (f" {warnings}" if warnings else "")
        self._changed(self.state.run.message)

    def _open_first_of(self, run: Run) -> None:
        ranked = sorted(
            (c for c in self.state.cases if c.segmentation_id in run.committed),
            key=lambda c: (c.score if c.score is not None else -1.0, c.name),
        )
        if ranked:
            self.open_case(self.state.cases.index(ranked[0]))

    @action
    def cancel(self) -> bool:
        """Stop the child; what this run added to the scene is removed, so the scene is as it was."""
        run = self._run
        if run is None:
            return False
        self._abandon(run, rollback=True)
        self.state.run.message = "Cancelled: the scene is unchanged."
        self._changed(self.state.run.message)
        return True

    def _abandon(self, run: Run, rollback: bool) -> None:
        self._run = None
        try:
            run.process.cancel()
        finally:
            run.discard_files()
            self.state.run.running, self.state.run.cases = False, []
            same_scene = run.scene_id == id(self.context.scene)
            if rollback and same_scene:
                if run.batch is not None:
                    run.batch.rollback()
                else:
                    for segmentation_id in run.committed:
                        remove_result(self.context, self._results[segmentation_id])
            for segmentation_id in run.committed:
                self._forget(segmentation_id)

    def _forget(self, segmentation_id: str) -> None:
        self._results.pop(segmentation_id, None)
        self._references.pop(segmentation_id, None)
        current = self.state.current_case
        self.state.cases = [c for c in self.state.cases if c.segmentation_id != segmentation_id]
        self.state.current = self.state.cases.index(current) if current in self.state.cases else None

    def _on_scene_close(self, caller=None, event=None) -> None:
        """The scene is being cleared: stop the run without touching the scene, and forget every case."""
        run, self._run = self._run, None
        if run is not None:
            try:
                run.process.cancel()
            finally:
                run.discard_files()
        self._results, self._references, self._worklist = {}, {}, None
        self.state.cases, self.state.current, self.state.run.running = [], None, False
        self.state.run.cases = []
        self.state.region_index, self.state.region_count = -1, 0
        self._changed("The scene was closed." + (" The run was cancelled." if run is not None else ""))

    def close(self) -> None:
        """Stop any run and stop observing the scene (the GUI is going away)."""
        if self._run is not None:
            self._abandon(self._run, rollback=True)
        for tag in self._observers:
            self.context.scene.RemoveObserver(tag)
        self._observers = []


def _check_same_grid(bundle: Path, saved, image) -> None:
    """A bundle holds outputs on its input's grid: refuse one made for another image (one line)."""
    same = (
        saved.GetSize() == image.GetSize()
        and all(abs(a - b) < 1e-4 for a, b in zip(saved.GetSpacing(), image.GetSpacing(), strict=True))
        and all(abs(a - b) < 1e-3 for a, b in zip(saved.GetOrigin(), image.GetOrigin(), strict=True))
    )
    if not same:
        raise InputError(
            f"{bundle}: this results bundle was made for another image grid (size {saved.GetSize()}, "
            f"spacing {tuple(round(v, 4) for v in saved.GetSpacing())}) than the volume's "
            f"(size {image.GetSize()}, spacing {tuple(round(v, 4) for v in image.GetSpacing())})"
        )


def _reference_grid(reference, prediction):
    """The input's grid, kept per case for recombination (which reads only its geometry): the prediction's
    own input grid when it is the same (no ROI crop), else a one-byte-per-voxel copy of the geometry."""
    from ..preprocessing import same_grid

    own = prediction.session.reference
    return own if same_grid(own, reference) else geometry_only(reference)


def default_bundle_folder() -> Path:
    """Where results bundles are kept between sessions (a scene refers to them by path)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "layer-ensembles" / "bundles"
