"""trame-slicer's Slicer core (scene, logics, views) and the scene context the review layers take.

trame-slicer's ``SlicerApp`` registers a plain MRML colour logic; the scene logic needs Slicer's colour
logic (colour legends), registered here like Slicer's application does at start-up: application logic
first, then the scene.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # no display: straight to EGL

import slicer  # noqa: E402
from trame_slicer.core import LayoutManager, SlicerApp  # noqa: E402
from trame_slicer.rca_view import register_rca_factories  # noqa: E402

from ..scene.bootstrap import SceneContext, _application_home  # noqa: E402

LAYOUT = "Axial Primary"
# Frames are sent once, at this JPEG quality. trame-rca's default sends a quality-50 frame and renders the
# view again for a quality-90 one a few frames later; on a CPU renderer (Mesa llvmpipe) that second render
# of each view is what a reviewer waits for (about 40 ms per view), and it doubles the frames sent.
FRAME_QUALITY = 90


_LAST_PUSH = [0.0]  # monotonic time of the last frame any view pushed to the pages


def _record_frame_pushes() -> None:
    """Note when a view's frame goes out to the pages (trame-rca's adapter), so that work holding the
    event loop can wait until the frames it must not hold back have gone."""
    from trame_rca.utils import RcaViewAdapter

    if getattr(RcaViewAdapter.push, "layer_ensembles_recorded", False):
        return
    original = RcaViewAdapter.push

    def push(self, content, meta):
        original(self, content, meta)
        _LAST_PUSH[0] = time.monotonic()

    push.layer_ensembles_recorded = True
    RcaViewAdapter.push = push


class SlicerHost:
    """The Slicer core of one server: one scene, its views streamed to the browser, its segment editor."""

    def __init__(self, server):
        _record_frame_pushes()
        self.app = SlicerApp()
        home = _application_home()
        self.app.app_logic.SetHomeDirectory(home)
        self.app.app_logic.SetShareDirectory("share")
        self.app.app_logic.SetTemporaryPath(home)
        colors = slicer.vtkSlicerColorLogic()
        colors.SetMRMLApplicationLogic(self.app.app_logic)
        colors.SetMRMLScene(self.app.scene)
        self.app.app_logic.SetModuleLogic("Colors", colors)
        self.context = SceneContext(
            self.app.scene,
            self.app.app_logic,
            colors,
            self.app.volumes_logic,
            self.app.segmentations_logic,
            self.app.subject_hierarchy_logic,
        )
        register_rca_factories(self.app.view_manager, server, interactive_quality=FRAME_QUALITY)
        self.layout_manager = LayoutManager(self.app.scene, self.app.view_manager, server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(LAYOUT)
        # A slice view shows images: multisampling smooths only the segment outlines, and on a CPU
        # renderer it doubles each frame's cost (80 ms against 37 ms per render, hippocampus case).
        for view in self.app.view_manager.get_slice_views():
            view.render_window().SetMultiSamples(0)
        # The editor keeps the closed surfaces of the segmentation it edits (by default it removes them on
        # activation and after every stroke): the 3D view goes on showing the case while it is corrected.
        self.app.segmentation_editor.set_surface_representation_enabled(True)

    @property
    def editor(self):
        return self.app.segmentation_editor

    def reset_views(self) -> None:
        self.app.display_manager.reset_views()

    def show_input(self, volume) -> None:
        """The input in the slice views, no volume rendering: the 3D view shows the case's surfaces (the
        controller puts them there), which an MRI's volume rendering would hide, at a far higher cost."""
        self.app.display_manager.show_volume_in_slice_background(volume)
        self.app.display_manager.reset_views()

    def schedule_render(self) -> None:
        """Ask the slice views for a new frame: slice-layer changes (foreground opacity, volumes) made on
        MRML nodes directly do not reach trame-slicer's render scheduler on their own. The 3D view redraws
        on its own when what it shows (the surfaces) changes."""
        for view in self.app.view_manager.get_slice_views():
            view.schedule_render()

    def red_slice_offset(self) -> float | None:
        for index in range(self.app.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            node = self.app.scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
            if node.GetOrientation() == "Axial" or node.GetLayoutName() == "Red":
                return float(node.GetSliceOffset())
        return None

    @contextmanager
    def views_unchanged(self) -> Iterator[None]:
        """Run a change that draws nothing new (a threshold: only the decision, the segments' status tags
        and the plot title change) without the frames its MRML events would ask of every view. On a large
        volume those redraws hold the server for most of a second, and the page's next change waits behind
        them. Nothing is scheduled when the block ends (trame-slicer's ``render_blocked`` would)."""
        views = list(self.app.view_manager.get_views())
        previous = [view.set_render_blocked(True) for view in views]
        try:
            yield
        finally:
            for view, blocked in zip(views, previous, strict=True):
                view._is_render_blocked = blocked  # restored as it was, with no render scheduled

    def hold_3d_views(self, held: bool) -> None:
        """Hold the 3D views' frames (True) while a change shown in two parts is half done: its first part
        hides the segment surfaces that its second part makes again, and a frame in between would flash
        them away. Released (False), each 3D view draws once."""
        for view in self.app.view_manager.get_threed_views():
            view.set_render_blocked(held)  # unblocking schedules one frame

    def slice_render_pending(self) -> bool:
        """Whether a slice view still has a frame to draw (trame-slicer's asyncio render task)."""
        for view in self.app.view_manager.get_slice_views():
            scheduled = getattr(view, "_scheduled_render", None)
            if getattr(scheduled, "request_render_task", None) is not None:
                return True
        return False

    @staticmethod
    def last_frame_pushed() -> float:
        """``time.monotonic()`` of the last frame a view pushed to the pages (0 before any)."""
        return _LAST_PUSH[0]
