"""The page: worklist and review controls in a side panel, the real slice views and the agreement curve.

Only layout lives here. Every value shown is a trame state variable that ``bindings.publish`` fills from
the review controller's state, and every control calls back into the app, which calls the controller.
Elements carry ``id`` attributes so the browser tests can find them.
"""

from __future__ import annotations

from trame.widgets import client, html
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout
from trame_vuetify.widgets import vuetify3 as v

# Keys a reviewer presses; the page sends the key's name to the server, which maps it to an action.
KEY_SCRIPT = """
if (!window.layerEnsemblesKeys) window.layerEnsemblesKeys = window.addEventListener('keydown', (event) => {
  const target = event.target;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (target && (target.tagName === 'INPUT' || target.tagName === 'TEXTAREA' || target.isContentEditable)) {
    if (target.type !== 'range' && target.getAttribute('role') !== 'slider') return;
  }
  const keys = ['n', 'p', 'a', 'f', 'r', 'h', 'ArrowDown', 'ArrowUp'];
  if (!keys.includes(event.key) || (target && target.getAttribute('role') === 'slider'
      && (event.key === 'ArrowDown' || event.key === 'ArrowUp'))) return;
  event.preventDefault();
  window.trame.trigger('le_key', [event.key]);
}) || true;
"""

KEY_HELP = "Keys: n / ↓ next case · p / ↑ previous · a accept · f flag · r next region · h heatmap on/off"

STYLE = """
.le-row { cursor: pointer; }
.le-row td { padding: 2px 6px; font-size: 13px; }
.le-current { background: rgba(33, 150, 243, 0.25); }
.le-decision-flagged { color: #e65100; font-weight: 600; }
.le-decision-accepted { color: #2e7d32; font-weight: 600; }
.le-decision-corrected { color: #1565c0; font-weight: 600; }
.le-queued td { padding: 2px 6px; font-size: 13px; color: #666; }
#le-error { color: #c62828; font-weight: 600; white-space: nowrap; overflow: hidden;
            text-overflow: ellipsis; }
#le-badge { font-size: 15px; }
"""


def _worklist() -> None:
    with html.Table(id="le-worklist", style="width: 100%; border-collapse: collapse;"):
        with html.Thead():
            with html.Tr():
                for title in ("Case", "AULA", "Est. Dice", "Decision"):
                    html.Th(title, style="text-align: left; font-size: 12px; padding: 2px 6px;")
        with html.Tbody():
            with html.Tr(
                v_for="row in le_rows",
                key="row.index",
                classes=("row.current ? 'le-row le-current' : 'le-row'",),
                __properties=[("data_case", "data-case"), ("data_decision", "data-decision")],
                data_case=("row.name",),
                data_decision=("row.decision",),
                click="trigger('le_open_case', [row.index])",
            ):
                html.Td("{{ row.name }}")
                html.Td("{{ row.score_text }}")
                html.Td("{{ row.quality_text }}", title=("row.quality_title",), classes="le-estimate")
                html.Td("{{ row.decision_text }}", classes=("'le-decision-' + row.decision",))
            # The run's cases without a result yet: queued, or segmenting in the child with its progress.
            with html.Tr(
                v_for="row in le_queue",
                key=("'queued-' + row.name",),
                classes="le-queued",
                __properties=[("data_case", "data-case"), ("data_status", "data-status")],
                data_case=("row.name",),
                data_status=("row.status",),
                title=("row.message",),
            ):
                html.Td("{{ row.name }}")
                html.Td("—")
                html.Td("—")
                with html.Td(classes="le-queue-status"):
                    html.Span("{{ row.status_text }}")
                    v.VProgressLinear(model_value=("row.progress",), height=3, color="primary")


def _controls(ctrl) -> None:
    html.Div("{{ le_badge_text }}", id="le-badge", classes=("'my-2 le-decision-' + le_badge_decision",))
    with html.Div(id="le-threshold"):
        v.VSlider(
            label="Threshold",
            v_model=("le_threshold", 0.9),
            min=0.0,
            max=1.0,
            step=0.001,
            thumb_label=True,
            density="compact",
            hide_details=True,
            disabled=("!le_has_result",),
        )
    html.Div("threshold {{ le_threshold_text }}", id="le-threshold-text", classes="text-caption mb-2")
    with html.Div(id="le-heads"):
        v.VRangeSlider(
            label="Kept heads",
            v_model=("le_heads", [1, 1]),
            min=1,
            max=("le_head_count", 1),
            step=1,
            thumb_label=True,
            density="compact",
            hide_details=True,
            disabled=("!le_has_result || le_editing",),  # other heads would write over a correction
        )
    html.Div(
        "heads {{ le_heads[0] }}–{{ le_heads[1] }} of {{ le_head_count }}",
        id="le-heads-text",
        classes="text-caption mb-2",
    )
    v.VSelect(
        label="Heatmap",
        v_model=("le_heatmap", "agreement"),
        items=("le_heatmap_kinds", []),
        item_title="title",
        item_value="value",
        density="compact",
        hide_details=True,
        classes="mb-2",
    )
    v.VSlider(
        label="Opacity",
        v_model=("le_opacity", 0.5),
        min=0.0,
        max=1.0,
        step=0.05,
        density="compact",
        hide_details=True,
    )
    with html.Div(classes="d-flex flex-wrap ga-1 my-2"):
        v.VBtn("Prev", id="le-prev-case", size="small", click=ctrl.le_previous_case)
        v.VBtn("Next", id="le-next-case", size="small", click=ctrl.le_next_case)
        v.VBtn("Next region", id="le-next-region", size="small", click=ctrl.le_next_region)
        v.VBtn("Heatmap", id="le-toggle-heatmap", size="small", click=ctrl.le_toggle_heatmap)
    with html.Div(classes="d-flex flex-wrap ga-1 my-2"):
        v.VBtn("Accept", id="le-accept", size="small", color="success", click=ctrl.le_accept)
        v.VBtn("Flag", id="le-flag", size="small", color="warning", click=ctrl.le_flag)
        v.VBtn("Correct", id="le-correct", size="small", color="primary", click=ctrl.le_correct)
    with html.Div(classes="d-flex flex-wrap ga-1 my-2", v_if="le_editing"):
        for name, label in (("paint", "Paint"), ("erase", "Erase"), ("scissors", "Scissors")):
            v.VBtn(
                label,
                id=f"le-{name}",
                size="small",
                variant=(f"le_tool === '{name}' ? 'flat' : 'outlined'",),
                click=f"trigger('le_tool', ['{name}'])",
            )
        v.VBtn("Undo", id="le-undo", size="small", click=ctrl.le_undo)
        v.VBtn("Save correction", id="le-save", size="small", color="primary", click=ctrl.le_save)
    html.Div("{{ le_region_text }}", id="le-region", classes="text-caption")
    html.Div("{{ le_saved_text }}", id="le-saved", classes="text-caption")
    html.Div(KEY_HELP, classes="text-caption text-medium-emphasis mt-2")


def build_ui(server, layout_manager, title: str):
    """The single page; ``layout_manager`` fills the views' placeholder."""
    ctrl = server.controller
    with SinglePageWithDrawerLayout(server, width=380) as layout:
        layout.title.set_text(title)
        client.Style(STYLE)
        client.Script(KEY_SCRIPT)
        with layout.toolbar:
            v.VSpacer()
            html.Div("{{ le_error }}", id="le-error", classes="mx-4", style="max-width: 55%;")
            html.Div("{{ le_status }}", id="le-status", classes="text-caption mx-2")
            v.VProgressLinear(
                id="le-progress",
                model_value=("le_progress", 0),
                v_show="le_running",
                absolute=True,
                location="bottom",
                color="primary",
            )
        with layout.drawer:
            with html.Div(classes="pa-2"):
                _controls(ctrl)
                html.Div("Worklist (most doubtful first)", classes="text-subtitle-2 mt-2")
                _worklist()
        with layout.content:
            with html.Div(style="display: flex; flex-direction: column; height: 100%;"):
                with html.Div(style="flex: 1 1 auto; min-height: 0; position: relative;"):
                    layout_manager.initialize_layout_grid(layout)
                html.Div(
                    v_html=("le_curve_svg", ""),
                    id="le-curve",
                    style="flex: 0 0 170px; height: 170px; overflow: hidden; background: #fff; "
                    "border-top: 1px solid #ccc;",
                )
    return layout
