"""The web review app: trame-slicer's views and Segment Editor bound to the review controller.

The app holds no review state. The controller (``LayerEnsemblesLib.review``) owns the cases, settings and
decisions; the page shows ``bindings.page_state(controller.state)``; every control calls one controller
action; a timer calls ``controller.poll()`` so that what the child process finished reaches the scene on
the server's main thread. The review file in the output folder is rewritten after every change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from trame.app import TrameApp
from trame_slicer.segmentation import (
    SegmentationEffectErase,
    SegmentationEffectPaint,
    SegmentationEffectScissors,
)
from undo_stack import UndoStack

from ..errors import InputError, first_line
from ..fileio import read_image
from ..review.controller import ReviewController
from ..review.inputs import review_inputs
from ..review.paths import AllowedRoots
from ..review.recorder import ReviewRecorder
from ..scene import runtime
from ..scene.geometry import add_volume_from_image
from .bindings import page_state, worklist_rows
from .curve import curve_from_scene, curve_svg
from .host import SlicerHost
from .ui import build_ui

log = logging.getLogger(__name__)
POLL_SECONDS = 0.15
# Once the page has been quiet this long after a change (no action, no frame pushed), the heap's freed
# pages go back to the system. The recombination, the resampling and the frames free tens of megabytes
# that glibc would otherwise keep (35 MiB on a 256 x 256 x 160 case), and the moment is one nobody waits.
IDLE_BEFORE_TRIM_S = 1.0
# A kept-heads change is shown in two parts: the slice views' frames first, then the uncertain regions and
# the 3D view, once the slice views have drawn and their frames have gone out (no push for this long):
# the second part holds the GIL and the event loop, and would hold the frames back. At most
# SECOND_PART_WAIT_S after the first part, the second part runs anyway.
FRAMES_QUIET_S = 0.05
SECOND_PART_WAIT_S = 1.0
TOOLS = {
    "paint": SegmentationEffectPaint,
    "erase": SegmentationEffectErase,
    "scissors": SegmentationEffectScissors,
}
KEY_ACTIONS = {
    "n": "next_case",
    "ArrowDown": "next_case",
    "p": "previous_case",
    "ArrowUp": "previous_case",
    "a": "accept",
    "f": "flag",
    "r": "next_region",
    "h": "toggle_heatmap",
}


class ReviewWebApp(TrameApp):
    """One review: one scene, one controller, one output folder, served to the browsers that connect."""

    def __init__(self, inputs: list[Path], model: str, out: Path, device: str = "auto", server=None):
        super().__init__(server)
        self.out = Path(out)
        self.model = model
        self.inputs = inputs
        self.roots = AllowedRoots([*inputs, self.out])
        self.host = SlicerHost(self.server)
        self.controller = ReviewController(self.host.context, bundle_folder=self.out / "bundles")
        self.controller.redraw_in_two_parts = True  # see FRAMES_QUIET_S
        self.recorder = ReviewRecorder.open(self.out)
        self.load_errors: list[str] = []
        self._shown_opacity = 0.5
        self._started = False
        self._drawn = None
        self._dirty = False  # the controller's state changed since the page was last updated
        self._trim_due = 0.0  # time.monotonic() of the last publish whose freed memory is still kept
        self.controller.subscribe("state_changed", self._mark_dirty)
        self.controller.set_device(device)
        self.recorder.restore_settings(self.controller)  # the heatmap kind of an earlier server
        self.host.editor.set_undo_stack(UndoStack())
        self.state.trame__title = "LayerEnsembles review"
        self.state.update(
            {
                "le_editing": False,
                "le_tool": "",
                "le_saved_text": "",
                "le_slice_offset": None,
                "le_curve_svg": "",
                "le_started": False,
            }
        )
        self.state.update(page_state(self.controller.state))
        self.ui = build_ui(self.server, self.host.layout_manager, "LayerEnsembles review")
        self._bind()
        self.ctrl.on_server_ready.add(self._on_ready)

    # -- wiring ----------------------------------------------------------------------------------------

    def _bind(self) -> None:
        ctrl = self.ctrl
        ctrl.le_next_case = lambda: self.step_case(+1)
        ctrl.le_previous_case = lambda: self.step_case(-1)
        ctrl.le_next_region = lambda: self._act("next_region")
        ctrl.le_accept = lambda: self._act("accept")
        ctrl.le_flag = lambda: self._act("flag")
        ctrl.le_correct = self.start_correction
        ctrl.le_undo = self.undo
        ctrl.le_save = self.save_correction
        ctrl.le_toggle_heatmap = self.toggle_heatmap
        self.server.trigger("le_open_case")(lambda index: self._act("open_case", int(index)))
        self.server.trigger("le_tool")(self.select_tool)
        self.server.trigger("le_key")(self.on_key)
        self.state.change("le_threshold")(self._on_threshold)
        self.state.change("le_heads")(self._on_heads)
        self.state.change("le_heatmap")(self._on_heatmap)
        self.state.change("le_opacity")(self._on_opacity)

    def _on_ready(self, **_kwargs) -> None:
        asyncio.ensure_future(self._poll_forever())

    async def _poll_forever(self) -> None:
        if not self._started:
            self._started = True
            self.start_review()
        while True:
            try:
                if self.controller.poll() or self._dirty:
                    self.publish()
                elif self.recorder.pending_resume(self.controller.state):
                    self.recorder.resume(self.controller, self.host.context)
                    self.publish()
                elif self._trim_due and self._quiet_since(self._trim_due):
                    self._trim_due = 0.0
                    runtime.release_freed_memory()
            except Exception:  # noqa: BLE001 - the timer must survive anything; the error is logged
                log.exception("LayerEnsembles review: poll failed")
            await asyncio.sleep(POLL_SECONDS)

    def _quiet_since(self, changed: float) -> bool:
        """No run, no redraw half done, and no frame for ``IDLE_BEFORE_TRIM_S`` after the change at
        ``changed``."""
        now = time.monotonic()
        return (
            now - changed >= IDLE_BEFORE_TRIM_S
            and now - self.host.last_frame_pushed() >= IDLE_BEFORE_TRIM_S
            and not self.controller.running
            and not self.controller.redraw_pending
            and not self.host.slice_render_pending()
        )

    # -- start-up --------------------------------------------------------------------------------------

    def start_review(self) -> None:
        """Load the model and the cases; take up earlier results from their bundles (an earlier `segment`
        output folder, or this review folder before a restart) and segment the rest in the child process."""
        model_ok = bool(self.controller.load_model(self.model))
        to_segment, to_reuse = [], []
        try:
            cases = review_inputs(self.inputs)
        except InputError as error:
            self.load_errors.append(first_line(error, 300))
            cases = []
        # The images an earlier run's reports name were chosen on the command line too (not by a browser).
        self.roots = AllowedRoots([*self.inputs, self.out, *(case.image for case in cases)])
        for case in cases:
            try:
                image = read_image(self.roots.resolve(case.image))
            except InputError as error:
                self.load_errors.append(first_line(error, 300))
                continue
            volume = add_volume_from_image(self.host.context.scene, image, case.name)
            self.recorder.inputs[case.name] = str(case.image)
            bundle = case.bundle or self._recorded_bundle(case.name, case.image)
            (to_reuse if bundle else to_segment).append((volume, bundle))
        if to_reuse or to_segment:
            first = (to_reuse or to_segment)[0][0]
            self.host.show_input(first)
        if model_ok:
            reused = [volume for volume, bundle in to_reuse if self._reuse(volume, bundle)]
            to_segment += [(volume, None) for volume, _ in to_reuse if volume not in reused]
            self._open_most_doubtful()
            print(
                f"LayerEnsembles review: {len(reused)} case(s) taken from their results bundles "
                f"(no network pass), {len(to_segment)} to segment",
                flush=True,
            )
            if to_segment:
                self.controller.segment_volumes([volume for volume, _ in to_segment])
        self.state.le_started = True
        self.publish()

    def _recorded_bundle(self, name: str, image: Path) -> str:
        """The bundle this review folder's file recorded for the case before a restart ("" if none)."""
        record = self.recorder.get(name)
        if record is None or not record.bundle or record.input != str(image):
            return ""
        return record.bundle

    def _reuse(self, volume, bundle) -> bool:
        """The case from its bundle; a bundle that is gone, damaged or from another model: segment again."""
        try:
            path = self.roots.resolve(bundle, base=self.out)
        except InputError as error:
            self.load_errors.append(first_line(error, 300))
            return False
        if not path.is_file():
            return False  # e.g. the bundles folder was cleared: silently segment again
        return bool(self.controller.add_from_bundle(volume, path))

    def _open_most_doubtful(self) -> None:
        cases = self.controller.state.cases
        scored = [(case.score, index) for index, case in enumerate(cases) if case.score is not None]
        if scored:
            self.controller.open_case(min(scored)[1])

    # -- publishing ------------------------------------------------------------------------------------

    def _mark_dirty(self, _state=None) -> None:
        self._dirty = True

    def publish(self) -> None:
        """Push the controller's state (and what the scene shows) to every connected page.

        Each action publishes once when it is done; changes the controller makes on its own (a run's
        progress and results) are published by the poll timer."""
        self._dirty = False
        self._trim_due = time.monotonic()
        state = self.controller.state
        values = page_state(state)
        errors = [line for line in (*self.load_errors, *self.recorder.errors, state.last_error) if line]
        values["le_error"] = errors[-1] if errors else ""
        values["le_errors"] = errors
        case = state.current_case
        title, curves = curve_from_scene(self.host.context, case.segmentation_id if case else None)
        values["le_curve_svg"] = curve_svg(title, curves)
        values["le_curve_title"] = title
        values["le_slice_offset"] = self.host.red_slice_offset()
        values["le_redraw_pending"] = self.controller.redraw_pending  # regions and 3D view still to come
        record = self.recorder.get(case.name) if case is not None else None
        values["le_saved_text"] = (
            f"corrected file: {record.corrected_file}" if record and record.corrected_file else ""
        )
        self.recorder.sync(state)
        signature = _view_signature(state)
        if signature != self._drawn:  # a new frame only when what the views show changed
            self._drawn = signature
            self.host.schedule_render()
        with self.state:
            self.state.update(values)

    # -- actions ---------------------------------------------------------------------------------------

    def _act(self, name: str, *args):
        if self.controller.state.correcting:
            self.stop_editing()
        result = getattr(self.controller, name)(*args)
        self.publish()
        return result

    def step_case(self, step: int) -> None:
        """Next or previous case in the worklist's order (most doubtful first), wrapping round."""
        rows = worklist_rows(self.controller.state)
        if not rows:
            self._act("next_case")  # the controller says there is none, in one line
            return
        position = next((i for i, row in enumerate(rows) if row["current"]), -1 if step > 0 else 0)
        self._act("open_case", rows[(position + step) % len(rows)]["index"])

    def on_key(self, key: str) -> None:
        action = KEY_ACTIONS.get(key)
        if action == "toggle_heatmap":
            self.toggle_heatmap()
        elif action in ("next_case", "previous_case"):
            self.step_case(+1 if action == "next_case" else -1)
        elif action is not None:
            self._act(action)

    def toggle_heatmap(self) -> None:
        opacity = self.controller.state.heatmap_opacity
        if opacity > 0:
            self._shown_opacity = opacity
        self.controller.set_heatmap(opacity=0.0 if opacity > 0 else self._shown_opacity)
        self.publish()

    def _on_threshold(self, le_threshold, **_kwargs) -> None:
        current = self.controller.state.threshold
        if le_threshold is None or (current is not None and abs(float(le_threshold) - current) < 5e-4):
            return
        with self.host.views_unchanged():  # the voxels stay: no view needs a new frame
            self.controller.set_threshold(round(float(le_threshold), 3))
        self.publish()

    def _on_heads(self, le_heads, **_kwargs) -> None:
        if not le_heads or len(le_heads) != 2:
            return
        first, last = (int(round(float(v))) for v in le_heads)
        if self.controller.state.kept_heads == (first, last):
            return
        self.host.hold_3d_views(True)
        try:
            self.controller.set_kept_heads(first, last)
        finally:
            if not self.controller.redraw_pending:
                self.host.hold_3d_views(False)
        self.publish()
        if self.controller.redraw_pending:
            asyncio.ensure_future(self._finish_redraw_after_the_frames())

    async def _finish_redraw_after_the_frames(self) -> None:
        started = time.monotonic()
        while time.monotonic() - started < SECOND_PART_WAIT_S:
            await asyncio.sleep(0.02)
            if self.host.slice_render_pending():
                continue
            pushed = self.host.last_frame_pushed()
            if pushed > started and time.monotonic() - pushed >= FRAMES_QUIET_S:
                break
        self._finish_redraw()

    def _finish_redraw(self) -> None:
        """The second part of a kept-heads change, on the server's event loop after the slice frames."""
        try:
            finished = self.controller.finish_redraw()
        finally:
            self.host.hold_3d_views(False)
        if finished:
            self.publish()

    def _on_heatmap(self, le_heatmap, **_kwargs) -> None:
        if le_heatmap and le_heatmap != self.controller.state.heatmap_kind:
            self.controller.set_heatmap(kind=le_heatmap)
            self.publish()

    def _on_opacity(self, le_opacity, **_kwargs) -> None:
        if le_opacity is not None and abs(float(le_opacity) - self.controller.state.heatmap_opacity) > 1e-3:
            self.controller.set_heatmap(opacity=float(le_opacity))
            self.publish()

    # -- correction ------------------------------------------------------------------------------------

    def start_correction(self) -> None:
        nodes = self.controller.begin_correction()
        self.publish()
        if not nodes:
            return
        segmentation, volume = nodes
        self.host.editor.set_active_segmentation(segmentation, volume)
        self.select_tool("paint")

    def select_tool(self, name: str) -> None:
        if not self.controller.state.correcting or name not in TOOLS:
            return
        self.host.editor.set_active_effect_type(TOOLS[name])
        self.state.le_tool = name

    def undo(self) -> None:
        stack = self.host.editor.undo_stack
        if stack is not None and stack.can_undo():
            stack.undo()

    def _edited_nodes(self):
        """(segmentation, volume) the Segment Editor is editing, None when not editing: a save writes what
        the reviewer painted, whatever the controller did with the case since."""
        editor = self.host.editor
        if not self.controller.state.correcting or editor.active_segmentation_node is None:
            return None
        return editor.active_segmentation_node, editor.active_volume_node

    def stop_editing(self) -> None:
        self.host.editor.deactivate_effect()
        self.state.le_tool = ""
        self.controller.end_correction()

    def save_correction(self) -> None:
        state = self.controller.state
        case = state.current_case
        nodes = self.controller.hand_off_for_correction()
        if case is None or not nodes:
            self.publish()
            return
        segmentation, volume = self._edited_nodes() or nodes
        path = self.controller.save_correction(segmentation, volume, self.roots.resolve(self.out))
        if path:
            self.stop_editing()
            self.recorder.note_correction(case.name, path)
        self.publish()


def _view_signature(state) -> tuple:
    """What the slice views draw. The threshold and the score are not in it: a threshold change moves
    no voxel, and redrawing the views for it would only delay the page (seconds on a large volume)."""
    case = state.current_case
    return (
        state.current,
        case.segmentation_id if case else None,
        case.kept_heads if case else None,
        state.heatmap_kind,
        state.heatmap_opacity,
        state.kept_heads,
        state.region_index,
        len(state.cases),
    )


def serve(
    inputs: list[Path],
    model: str,
    out: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    device: str = "auto",
    token: str | None = None,
) -> None:
    """Start the server (blocking) for one review."""
    app = ReviewWebApp(inputs, model, out, device)
    if token is not None:
        from .security import TOKEN_QUERY, token_middleware

        app.ctrl.on_server_bind.add(
            lambda wslink_server: wslink_server.app.middlewares.append(token_middleware(token))
        )
        print(f"Access token (shown once): open http://{host}:{port}/?{TOKEN_QUERY}={token}", flush=True)
    print(
        f"LayerEnsembles review of {len(inputs)} input(s) on http://{host}:{port}/ "
        "(one server serves one review; start one per reviewer)",
        flush=True,
    )
    app.server.start(host=host, port=port, open_browser=False, show_connection_info=False)
