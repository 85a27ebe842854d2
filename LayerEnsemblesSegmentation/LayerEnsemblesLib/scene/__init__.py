"""Scene logic: LayerEnsembles results as MRML nodes, for the Slicer module and the web review app.

MRML only (slicer-core works), no Qt, and every function takes an explicit :class:`SceneContext`, so the
same code runs inside Slicer, in the tests on a bare scene, and in a trame web app. Writing to the scene
must happen on the thread that owns it; the predictor, file reading and region finding may run anywhere.
"""

from .bootstrap import SceneContext, add_slice_views, create_scene
from .colors import heatmap_color_table
from .decision import read_decision, segment_status, segment_tag, store_decision
from .geometry import (
    add_volume_from_image,
    crop_to_box,
    geometry_only,
    grid_from_volume,
    image_from_volume,
    lps_to_ras,
    ras_to_lps,
    roi_corners_ras,
    uncrop,
    update_volume_from_image,
)
from .heatmaps import (
    DEFAULT_OPACITY,
    DEFAULT_VISIBLE_FROM,
    HEATMAP_KINDS,
    HEATMAP_LABELS,
    set_heatmap_opacity,
    show_in_slice_views,
    write_heatmap,
)
from .plots import write_agreement_plot
from .regions import UncertainRegion, find_uncertain_regions, jump_to_region
from .results import (
    CaseResult,
    apply_prediction,
    next_region,
    recombine_result,
    remove_nodes,
    remove_result,
    show_result,
)
from .segmentation import content_hash, create_segmentation_node, is_user_edited, segment_array, segment_id
from .session import ReviewSession
from .worklist import (
    Batch,
    CaseInput,
    Worklist,
    case_input_from_volume,
    case_inputs_from_folder,
    load_case_image,
    segment_cases,
    show_table_row,
)

__all__ = [
    "Batch", "CaseInput", "CaseResult", "DEFAULT_OPACITY", "DEFAULT_VISIBLE_FROM", "HEATMAP_KINDS",
    "HEATMAP_LABELS", "ReviewSession", "SceneContext", "UncertainRegion", "Worklist", "add_slice_views",
    "add_volume_from_image", "apply_prediction", "case_input_from_volume", "case_inputs_from_folder",
    "content_hash", "create_scene", "create_segmentation_node", "crop_to_box", "find_uncertain_regions",
    "geometry_only", "grid_from_volume",
    "heatmap_color_table", "image_from_volume", "is_user_edited", "jump_to_region", "load_case_image",
    "lps_to_ras", "next_region", "ras_to_lps", "read_decision", "recombine_result", "remove_nodes",
    "remove_result", "roi_corners_ras", "segment_array", "segment_cases", "segment_id", "segment_status",
    "segment_tag", "set_heatmap_opacity", "show_in_slice_views", "show_result", "show_table_row",
    "store_decision", "uncrop", "update_volume_from_image", "write_agreement_plot", "write_heatmap",
]
