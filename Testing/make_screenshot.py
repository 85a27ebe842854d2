"""Regenerate the extension's screenshot (Resources/Screenshots/review.png) from real Slicer code.

The picture must show what a reviewer sees, so nothing in it is drawn by hand: the scene logic
(``ReviewSession.process``) segments the MNI152 hippocampus crop of ``layer-ensembles demo`` on a
slicer-core scene, and each slice view is rendered offscreen the way Slicer draws it: a
``vtkMRMLSliceLogic`` blends background (input) and foreground (heatmap), and the slice view's displayable
managers draw the segment outlines and fill (segmentations) and the heatmap's colour legend. The setup
follows trame-slicer's SliceView (Kitware's Slicer views without Qt). Only the view title bars and the
layer-agreement plot (matplotlib, from the scene's own table node) are composed around it with PIL.

    python Testing/make_screenshot.py [--model FILE] [--input FILE] [--out PNG]

Needs slicer-core (trame-slicer), an offscreen-capable VTK (EGL or OSMesa), nilearn (for the template
when --input is not given), matplotlib and pillow. Not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "LayerEnsemblesSegmentation"))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from LayerEnsemblesLib.scene import ReviewSession, add_volume_from_image, create_scene  # noqa: E402
from LayerEnsemblesLib.scene.plots import PAIR_INDEX_COLUMN, PAIR_LABEL_COLUMN  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

SHIPPED_MODEL = REPOSITORY / "LayerEnsemblesSegmentation" / "Resources" / "Models" / "hippocampus_le3d.pt"
SNAPSHOT_MODEL = Path("/tmp/demo_snapshot.pt")
DEFAULT_OUT = REPOSITORY / "Resources" / "Screenshots" / "review.png"
# Slicer's conventional layout: name, orientation, title-bar colour, the letter Slicer shows in it.
VIEWS = (("Red", "Axial", (243, 74, 51), "R"), ("Yellow", "Sagittal", (237, 213, 76), "Y"),
         ("Green", "Coronal", (110, 176, 75), "G"))
VIEW_SIZE = (420, 420)
BAR_HEIGHT = 22
PLOT_HEIGHT = 300


def default_model() -> Path:
    return SHIPPED_MODEL if SHIPPED_MODEL.is_file() else SNAPSHOT_MODEL


def demo_input(side: str = "left_hippocampus") -> sitk.Image:
    """The same MNI152 crop ``layer-ensembles demo`` writes to inputs/mni152_left_hippocampus.nii.gz."""
    from LayerEnsemblesLib.commands.demo import CROP_SIZE, HIPPOCAMPUS_CENTRES_RAS, crop_around, template_path

    return crop_around(sitk.ReadImage(str(template_path())), HIPPOCAMPUS_CENTRES_RAS[side], CROP_SIZE)


class OffscreenSliceView:
    """One slice view: slice logic (layer blending) plus Slicer's 2D displayable managers, offscreen."""

    MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLColorLegendDisplayableManager")

    def __init__(self, context, name: str, orientation: str, size=VIEW_SIZE):
        self.size = size
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(context.app_logic)
        self.logic.SetMRMLScene(context.scene)
        context.app_logic.GetSliceLogics().AddItem(self.logic)
        self.slice_node = self.logic.AddSliceNode(name)
        self.slice_node.SetOrientation(orientation)

        self.renderer = vtk.vtkRenderer()
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(*size)
        self.window.AddRenderer(self.renderer)
        # Overlays such as the colour legend draw in a renderer on the layer above (as in Slicer's views).
        self.window.SetNumberOfLayers(2)
        self.window.SetAlphaBitPlanes(1)
        # The displayable managers reach the window through its interactor, as in a real view.
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()
        # The blended slice is RGBA 0-255 already windowed by the display nodes: show it 1:1.
        mapper = vtk.vtkImageMapper()
        mapper.SetColorWindow(255)
        mapper.SetColorLevel(127.5)
        self.image_actor = vtk.vtkActor2D()
        self.image_actor.SetMapper(mapper)
        self.image_actor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.image_actor)

        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(context.app_logic)
        for manager in self.MANAGERS:
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.SetRenderer(self.renderer)
        self.managers.Initialize(factory, self.renderer)
        self.managers.SetMRMLDisplayableNode(self.slice_node)

    def fit(self, zoom: float = 1.0) -> None:
        self.logic.ResizeSliceNode(*self.size)
        self.logic.FitSliceToBackground()
        fov = self.slice_node.GetFieldOfView()
        self.slice_node.SetFieldOfView(fov[0] / zoom, fov[1] / zoom, fov[2])

    def capture(self) -> Image.Image:
        self.image_actor.GetMapper().SetInputConnection(self.logic.GetImageDataConnection())
        self.managers.GetNthDisplayableManager(0)  # make sure the group is built before rendering
        self.window.Render()
        self.window.Render()  # the displayable managers update their actors on the first render
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.ReadFrontBufferOff()
        grab.Update()
        output = grab.GetOutput()
        width, height, _ = output.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(output.GetPointData().GetScalars())
        pixels = pixels.reshape(height, width, -1)[::-1, :, :3]  # VTK rows run bottom-up
        return Image.fromarray(np.ascontiguousarray(pixels))


def _font(size: int, bold: bool = False):
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        try:
            import matplotlib

            path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
            return ImageFont.truetype(str(path), size)
        except (ImportError, OSError):
            return ImageFont.load_default()


def with_title_bar(view: Image.Image, colour, letter: str, text: str) -> Image.Image:
    """A slice view under a bar in the view's colour, as Slicer's slice controller draws it."""
    framed = Image.new("RGB", (view.width, view.height + BAR_HEIGHT), colour)
    framed.paste(view, (0, BAR_HEIGHT))
    draw = ImageDraw.Draw(framed)
    draw.text((8, 3), letter, fill=(0, 0, 0), font=_font(14, bold=True))
    draw.text((30, 4), text, fill=(0, 0, 0), font=_font(12))
    return framed


def table_columns(table_node) -> dict[str, list]:
    table = table_node.GetTable()
    columns = {}
    for index in range(table.GetNumberOfColumns()):
        column = table.GetColumn(index)
        values = [column.GetValue(row) for row in range(table.GetNumberOfRows())]
        columns[column.GetName()] = values
    return columns


def agreement_plot(context, result, width: int, height: int) -> Image.Image:
    """The scene's agreement chart (table, series colours, titles) drawn with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chart = context.node(result.chart_id)
    columns = table_columns(context.node(result.table_id))
    figure, axes = plt.subplots(figsize=(width / 100, height / 100), dpi=100)
    for index in range(chart.GetNumberOfPlotSeriesNodes()):
        series = chart.GetNthPlotSeriesNode(index)
        name = series.GetYColumnName()
        axes.plot(columns[series.GetXColumnName()], columns[name], marker="o", color=series.GetColor(),
                  linewidth=series.GetLineWidth() * 0.7, label=name)
    axes.set_xticks(columns[PAIR_INDEX_COLUMN], [str(label) for label in columns[PAIR_LABEL_COLUMN]],
                    fontsize=7, rotation=30)
    axes.set_ylim(*chart.GetYAxisRange())
    axes.set_xlabel(chart.GetXAxisTitle(), fontsize=9)
    axes.set_ylabel(chart.GetYAxisTitle(), fontsize=9)
    axes.set_title(chart.GetTitle(), fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def segment_statuses(segmentation) -> str:
    from LayerEnsemblesLib.scene import segment_status

    segments = segmentation.GetSegmentation()
    return ", ".join(f"{segments.GetSegment(sid).GetName()} {segment_status(segmentation, sid)}"
                     for sid in segments.GetSegmentIDs())


def summary_panel(context, session, result, width: int, height: int) -> Image.Image:
    """The decision, as the module's Results section reports it, read back from the scene's nodes."""
    from LayerEnsemblesLib.scene import read_decision

    panel = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(panel)
    segmentation = context.node(result.segmentation_id)
    decision = read_decision(segmentation)
    prediction = result.prediction
    stored_decision = decision.get("Decision", str(prediction.decision))
    flagged = stored_decision != "accepted"
    lines = [
        ("LayerEnsembles review", _font(18, bold=True), (20, 20, 20)),
        (f"Model: {result.model_name}", _font(13), (40, 40, 40)),
        (f"Input: {context.node(result.input_id).GetName()}", _font(13), (40, 40, 40)),
        (f"Heads kept: {len(prediction.aula.pair_labels) + 1}", _font(13), (40, 40, 40)),
        (f"AULA (union): {prediction.aula.raw.get('union', float('nan')):.2f} raw, "
         f"{prediction.score:.3f} normalised", _font(13), (40, 40, 40)),
        (f"Threshold: {prediction.threshold:.3f}", _font(13), (40, 40, 40)),
        (f"Decision: {stored_decision.upper()}", _font(16, bold=True),
         (200, 40, 30) if flagged else (30, 130, 60)),
        (f"Segment status: {segment_statuses(segmentation)}", _font(13), (40, 40, 40)),
        (f"Uncertain regions: {len(result.regions)}", _font(13), (40, 40, 40)),
    ]
    if result.regions:
        region = result.regions[0]
        lines.append((f"  #1: {region.volume_mm3:.0f} mm³, mean disagreement {region.mean_disagreement:.2f}",
                      _font(12), (60, 60, 60)))
    lines.append(("Views: input, layer-disagreement heatmap (hidden below 0.2,", _font(12), (60, 60, 60)))
    lines.append(("  opacity 0.5), segment outlines; centred on region #1", _font(12), (60, 60, 60)))
    y = 14
    for text, font, colour in lines:
        draw.text((16, y), text, fill=colour, font=font)
        y += font.size + 9
    return panel


def style_for_screenshot(context, result) -> None:
    """What a reviewer sets to read the heatmap under the segments: outlines only, a compact legend.

    Slicer's default 2D fill (opacity 0.5) would hide the heatmap inside the segments, so the segments
    are drawn as thicker outlines. The legend nodes are touched last: the legend displayable manager
    re-checks which volume each view shows when its node changes, after the views exist.
    """
    display = context.node(result.segmentation_id).GetDisplayNode()
    display.SetVisibility2DFill(False)
    display.SetVisibility2DOutline(True)
    display.SetSliceIntersectionThickness(3)
    for index in range(context.scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode")):
        legend = context.scene.GetNthNodeByClass(index, "vtkMRMLColorLegendDisplayNode")
        legend.SetSize(0.1, 0.4)
        legend.Modified()


def slice_position(slice_node) -> str:
    """The slice's position along its normal in RAS, as Slicer's offset slider labels it ("S -15.2 mm")."""
    matrix = slice_node.GetSliceToRAS()
    normal = [matrix.GetElement(row, 2) for row in range(3)]
    axis = int(np.argmax(np.abs(normal)))
    value = matrix.GetElement(axis, 3)
    return f"{'RAS'[axis]} {value:.1f} mm"


def render(model: Path, input_image: sitk.Image, out: Path, device: str, zoom: float) -> dict:
    context = create_scene(slice_views=False)
    context.app_logic.SetSliceLogics(vtk.vtkCollection())
    views = [(OffscreenSliceView(context, name, orientation), colour, letter, orientation)
             for name, orientation, colour, letter in VIEWS]
    volume = add_volume_from_image(context.scene, input_image, "MNI152 left hippocampus")
    session = ReviewSession(context)
    result = session.process(volume, str(model), device=device)
    for view, *_ in views:
        view.fit(zoom)
    style_for_screenshot(context, result)
    region = session.next_region()  # centre every view on the largest uncertain region, as "Next region"

    tiles = []
    for view, colour, letter, orientation in views:
        tiles.append(with_title_bar(view.capture(), colour, letter,
                                    f"{orientation}   {slice_position(view.slice_node)}"))
    width = sum(tile.width for tile in tiles) + 2 * (len(tiles) - 1)
    plot_width = width * 3 // 5
    canvas = Image.new("RGB", (width, tiles[0].height + 2 + PLOT_HEIGHT), (255, 255, 255))
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, 0))
        x += tile.width + 2
    canvas.paste(agreement_plot(context, result, plot_width, PLOT_HEIGHT), (0, tiles[0].height + 2))
    canvas.paste(summary_panel(context, session, result, width - plot_width, PLOT_HEIGHT),
                 (plot_width, tiles[0].height + 2))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".png", delete=False) as handle:
        canvas.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(handle, format="PNG", optimize=True)
    Path(handle.name).replace(out)
    return {"decision": result.prediction.decision, "score": result.prediction.score,
            "regions": len(result.regions), "region": region}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model(),
                        help="model file (default: the shipped hippocampus model, else the snapshot)")
    parser.add_argument("--input", type=Path, default=None,
                        help="input image (default: the demo's MNI152 left-hippocampus crop)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output PNG (default: {DEFAULT_OUT})")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--zoom", type=float, default=1.0, help="zoom over the fitted views")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"{args.model}: model file not found")
    image = sitk.ReadImage(str(args.input)) if args.input else demo_input()
    facts = render(args.model, image, args.out, args.device, args.zoom)
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KB; {facts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
