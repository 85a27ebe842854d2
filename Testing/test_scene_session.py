"""The in-process review session (scripts, tests, screenshot): process, recombine, GUI helpers."""

from __future__ import annotations

import pytest
from LayerEnsemblesLib.contract import read_metadata
from LayerEnsemblesLib.errors import InputError
from LayerEnsemblesLib.scene import (
    ReviewSession,
    add_volume_from_image,
    create_scene,
    remove_result,
    runtime,
)
from scene_support import blob_image


def node_ids(context) -> list[str]:
    return [context.scene.GetNthNode(i).GetID() for i in range(context.scene.GetNumberOfNodes())]


@pytest.fixture
def session_case():
    context = create_scene()
    volumes = [add_volume_from_image(context.scene, blob_image(shape=(16, 20, 24), seed=s), f"case {s}")
               for s in range(2)]
    return context, ReviewSession(context), volumes


def test_a_failing_case_reports_an_actionable_error(session_case, tmp_path):
    context, session, volumes = session_case
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"\x80\x04not a model")
    with pytest.raises(InputError, match="pickle"):
        session.process(volumes[0], broken)
    with pytest.raises(InputError, match="select the volume"):
        session.case_from_volume(None)
    with pytest.raises(InputError, match="existing folder"):
        session.cases_from_folder(tmp_path / "missing")


def test_session_recombine_next_region_and_remove(session_case, tiny_model_file):
    context, session, volumes = session_case
    before = node_ids(context)
    result = session.process(volumes[0], tiny_model_file, device="cpu")
    first_id = result.segmentation_id
    session.recombine(result, head_range=(3, 6), opacity=0.8)
    assert result.segmentation_id == first_id
    assert context.nodes_by_class("vtkMRMLSliceCompositeNode")[0].GetForegroundOpacity() == pytest.approx(0.8)
    session.set_heatmap_opacity(0.3)
    assert all(c.GetForegroundOpacity() == pytest.approx(0.3) for c in context.nodes_by_class(
        "vtkMRMLSliceCompositeNode"))
    assert result.regions  # an untrained model disagrees somewhere: there is a region to jump to
    assert session.next_region() == result.regions[0]
    remove_result(context, result)
    color_table = [n.GetID() for n in context.nodes_by_class("vtkMRMLColorTableNode")
                   if n.GetAttribute("LayerEnsembles.ColorTable")]
    assert set(node_ids(context)) == set(before) | set(color_table)  # the shared colour table stays


def test_predict_options_follow_the_model(tiny_model_file):
    metadata = read_metadata(tiny_model_file)
    assert runtime.predict_options(metadata, (1, 6), 0.9, "agreement") == {
        "maps": ("agreement",), "head_range": (1, 6), "threshold": 0.9}
    # a range from another model (too many heads) falls back to this model's default
    assert "head_range" not in runtime.predict_options(metadata, (0, 9), None, "entropy")
    assert runtime.predict_options(metadata, None, None, "entropy")["maps"] == ("agreement", "entropy")
    calibrated = type(metadata)(**{**metadata.__dict__, "aula_threshold": 0.8})
    # the calibrated value is not passed, so the result says the model's threshold was used
    assert "threshold" not in runtime.predict_options(calibrated, None, 0.8)


def test_model_summary_for_the_gui(tiny_model_file, tmp_path):
    summary = runtime.model_summary(tiny_model_file)
    assert summary["headCount"] == 6 and summary["skipHeads"] == 0
    assert summary["threshold"] == pytest.approx(0.9)  # not calibrated: the documented default
    assert "tiny-test-model" in summary["text"] and "heads:" in summary["text"]
    assert "not found" in runtime.model_summary(tmp_path / "nothing.pt")["text"]
    assert "headCount" not in runtime.model_summary("")


def test_devices_and_torch_summary():
    import torch

    choices = runtime.device_choices()
    assert choices[:2] == [("Auto (GPU if available)", "auto"), ("CPU", "cpu")]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert len(choices) == 2 + gpus
    assert all(spec == f"cuda:{i}" for i, (_, spec) in enumerate(choices[2:]))
    assert torch.__version__ in runtime.torch_summary()


@pytest.mark.parametrize("error, expected", [
    (InputError("case.nrrd: expected 1 channel"), "case.nrrd: expected 1 channel"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "choose CPU"),
    (RuntimeError("CUDA error: no kernel image is available for execution on the device"),
     "install a PyTorch build"),
    (ValueError("something odd"), "ValueError: something odd (details in the Python console)"),
])
def test_errors_are_explained_in_one_actionable_line(error, expected):
    message = runtime.explain_error(error)
    assert expected in message and "\n" not in message


def test_predictor_cache_reuses_a_loaded_model(tiny_model_file):
    cache = runtime.PredictorCache()
    first = cache.get(tiny_model_file, "cpu")
    assert cache.get(tiny_model_file, "cpu") is first
    assert cache.get(tiny_model_file, "auto") is not first  # another device is another predictor


def test_heatmaps_are_module_volumes_and_the_plot_view_is_one_node(session_case, tiny_model_file):
    """What the panel needs: heatmaps hidden from its input selectors, one plot view however many runs."""
    from LayerEnsemblesLib.scene.heatmaps import module_volume_ids
    from LayerEnsemblesLib.scene.plots import agreement_plot_view

    context, session, volumes = session_case
    assert module_volume_ids(context) == []
    result = session.process(volumes[0], tiny_model_file, device="cpu")
    assert module_volume_ids(context) == list(result.heatmap_ids.values())
    views = [agreement_plot_view(context, result.chart_id) for _ in range(3)]
    assert len({view.GetID() for view in views}) == 1
    assert context.scene.GetNumberOfNodesByClass("vtkMRMLPlotViewNode") == 1
    assert views[0].GetPlotChartNodeID() == result.chart_id


def test_an_old_torch_is_refused_in_one_line():
    import torch

    assert runtime.torch_version_problem(">=2.1") == ""
    major = int(torch.__version__.split(".")[0])
    problem = runtime.torch_version_problem(f">={major + 1}.0")
    assert problem.startswith(f"PyTorch {torch.__version__} is older than the required >={major + 1}.0")
    assert "\n" not in problem
    assert runtime._version_tuple("2.10.0+cu128") > runtime._version_tuple("2.9.1")  # numeric, not text
