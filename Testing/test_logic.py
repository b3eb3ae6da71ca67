"""The module Logic end to end in a real slicer-core scene with a real (small) model.

Segment -> segmentation + lesion table; re-threshold; never overwrite the user's segments;
add/list/remove cases; list models, set active, roll back; the background training job driven
through a real `python -m LiverTumorSegLib train` run to completion, one cancelled, one failing;
the background Segment (`segment --progress-json`) the same way, with its progress reports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from LiverTumorSegLib.storage import images  # noqa: E402
from LiverTumorSegLib.slicer import mrml  # noqa: E402
from LiverTumorSegLib.errors import Cancelled, InputError  # noqa: E402
from LiverTumorSegLib.slicer.jobs import BackgroundJob, SegmentThreadJob  # noqa: E402
from LiverTumorSegLib.slicer.logic import LiverTumorSegLogic  # noqa: E402
from LiverTumorSegLib.slicer.rules import SEGMENT_STAGE_SPAN, describeProgress, stageText  # noqa: E402
from LiverTumorSegLib.data.phantom import PhantomSettings, make_phantom  # noqa: E402
from LiverTumorSegLib.volume import Volume  # noqa: E402
from conftest import count_nodes  # noqa: E402

JOB_TIMEOUT_S = 420


@pytest.fixture(scope="session")
def phantom():
    return make_phantom(11, PhantomSettings.small(z_extent_mm=(120.0, 130.0), n_tumors=(2, 3)))


@pytest.fixture(scope="session")
def tiny_model(phantom):
    """The shipped default model when it exists, else a tiny one trained here (a few steps)."""
    from LiverTumorSegLib.storage.modelstore import default_model_path, load_model

    if (default_model_path() / "model.pt").is_file():
        return load_model(default_model_path())
    from LiverTumorSegLib.training.train import TrainSettings, train_model

    settings = TrainSettings(seed=0, minutes=1.0, max_steps=4, patch_size=24, batch_size=2)
    return train_model([("phantom", phantom.image, phantom.labels)], settings)


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def ct(scene, phantom):
    return mrml.add_volume_node(scene, phantom.image, "Phantom CT")


@pytest.fixture
def liver(scene, ct, phantom):
    """(segmentation node, segment id) of the phantom's liver, as a user's liver segmentation."""
    node = mrml.new_segmentation_node(scene, ct, "Liver")
    return node, mrml.write_segment(node, phantom.labels.array > 0, ct, name="Liver", color=images.LIVER_SEGMENT.color)


@pytest.fixture
def logic(scene, tmp_path):
    return LiverTumorSegLogic(libraryPath=tmp_path / "library", scene=scene)


@pytest.fixture
def library_with_model(logic, tiny_model):
    """A library whose active model is v001 (the tiny model)."""
    from LiverTumorSegLib.storage.modelstore import save_model

    save_model(tiny_model, logic.library.new_version_path())
    logic.setActiveModel("v001")
    return logic


def user_edit(segmentation, segment_id, mask, ct):
    """Change a segment the way the Segment Editor does (Slicer's API, no checksum update)."""
    image = mrml._oriented_image(mask, ct)
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, segmentation, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)


def top_quantile_threshold(probability: np.ndarray, region: np.ndarray, q: float = 0.99) -> float:
    """A threshold that keeps roughly the top 1% of the region: guarantees lesions with any model."""
    values = probability[region]
    return float(np.clip(np.quantile(values, q), 0.02, 0.98))


# ---- segment -------------------------------------------------------------------------------
def test_segment_writes_new_segmentation_table_and_probability(logic, scene, ct, liver, phantom, tiny_model):
    from LiverTumorSegLib.core.inference import segment as engine_segment

    segmentation, table = logic.segment(ct, *liver, model=tiny_model, showProbability=True)
    assert segmentation.IsA("vtkMRMLSegmentationNode") and segmentation is not liver[0]
    tumor_id = logic.tumorSegmentId(segmentation)
    segment = segmentation.GetSegmentation().GetSegment(tumor_id)
    assert segment.GetName() == "Liver tumor"
    assert mrml.terminology(segment) == images.TUMOR_SEGMENT.terminology
    np.testing.assert_allclose(segment.GetColor(), images.TUMOR_SEGMENT.color, atol=1e-6)
    assert segmentation.GetDisplayNode().GetVisibility3D()

    # Same mask and lesions as the engine run directly on the same arrays.
    expected = engine_segment(phantom.image, phantom.labels.array > 0, tiny_model)
    np.testing.assert_array_equal(mrml.segment_to_mask(segmentation, tumor_id, ct), expected.tumor.array > 0)
    header, rows = mrml.table_rows(table)
    assert header[:5] == ["Lesion", "Volume", "Longest axial diameter", "Mean HU", "Mean probability"]
    assert len(rows) == len(expected.lesions)
    for row, lesion in zip(rows, expected.lesions):
        assert row[1] == pytest.approx(lesion.volume_ml)
    assert logic.lesionTableNode(segmentation) is table

    probability = logic.probabilityNode(segmentation)
    values = mrml.volume_from_node(probability).array
    assert values.dtype == np.float32 and values.shape == phantom.image.shape
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert not values[phantom.labels.array == 0].any()  # kept map is restricted to the liver
    assert float(segmentation.GetAttribute("LiverTumorSeg.Threshold")) == pytest.approx(tiny_model.threshold)
    assert segmentation.GetNodeReference(mrml.CT_ROLE) is ct


def test_rethreshold_uses_the_kept_map_and_updates_table(logic, ct, liver, phantom, tiny_model):
    from LiverTumorSegLib.core.inference import mask_from_probability
    from LiverTumorSegLib.core.lesions import lesion_table

    segmentation, table = logic.segment(ct, *liver, model=tiny_model)
    tumor_id = logic.tumorSegmentId(segmentation)
    original = mrml.segment_to_mask(segmentation, tumor_id, ct)
    probability = mrml.volume_from_node(logic.probabilityNode(segmentation)).array
    liver_mask = phantom.labels.array > 0
    threshold = top_quantile_threshold(probability, liver_mask)

    table = logic.rethreshold(segmentation, threshold)
    expected = mask_from_probability(probability, liver_mask, threshold, phantom.image.spacing_zyx, tiny_model.min_lesion_mm3)
    assert expected.any()
    np.testing.assert_array_equal(mrml.segment_to_mask(segmentation, tumor_id, ct), expected)
    rows = mrml.table_rows(table)[1]
    lesions = lesion_table(expected, phantom.image, probability)
    assert len(rows) == len(lesions) >= 1
    assert [r[1] for r in rows] == pytest.approx([les.volume_ml for les in lesions])
    assert float(segmentation.GetAttribute("LiverTumorSeg.Threshold")) == pytest.approx(threshold)

    # Back at the model's threshold: the original result again.
    logic.rethreshold(segmentation, tiny_model.threshold)
    np.testing.assert_array_equal(mrml.segment_to_mask(segmentation, tumor_id, ct), original)
    with pytest.raises(InputError, match="outside"):
        logic.rethreshold(segmentation, 1.5)


def test_jump_to_lesion_centres_the_slice_views(logic, scene, ct, liver, phantom, tiny_model):
    segmentation, _ = logic.segment(ct, *liver, model=tiny_model)
    probability = mrml.volume_from_node(logic.probabilityNode(segmentation)).array
    table = logic.rethreshold(segmentation, top_quantile_threshold(probability, phantom.labels.array > 0))
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    ras = logic.jumpToLesion(table, 0)
    matrix = red.GetSliceToRAS()
    np.testing.assert_allclose([matrix.GetElement(i, 3) for i in range(3)], ras, atol=1e-6)
    with pytest.raises(InputError):
        logic.jumpToLesion(table, 999)


def test_roi_as_the_liver_region(logic, scene, ct, phantom, tiny_model):
    z, y, x = np.nonzero(phantom.labels.array > 0)
    lo = phantom.image.index_to_ras(np.array([[z.min(), y.min(), x.min()]], float))[0]
    hi = phantom.image.index_to_ras(np.array([[z.max(), y.max(), x.max()]], float))[0]
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenter(*((lo + hi) / 2))
    roi.SetSize(*(np.abs(hi - lo) + 5.0))
    segmentation, _ = logic.segment(ct, roiNode=roi, model=tiny_model)
    probability = mrml.volume_from_node(logic.probabilityNode(segmentation)).array
    box = mrml.roi_to_mask(roi, ct)
    assert not probability[~box].any()
    assert logic.tumorSegmentId(segmentation)


def test_segment_too_big_for_the_free_memory_is_refused_before_any_work(logic, scene, ct, liver, tiny_model,
                                                                         monkeypatch):
    """In Slicer's own process running out of memory would end Slicer: refused up front instead."""
    monkeypatch.setenv("LIVERTUMORSEG_MAX_MEMORY_GB", "0.5")
    before = count_nodes(scene)
    with pytest.raises(InputError, match="needs about .* GB of memory and 0.5 GB are free"):
        logic.segment(ct, *liver, model=tiny_model)
    assert count_nodes(scene) == before


def test_missing_inputs_are_input_errors(logic, ct, liver, tiny_model, scene):
    with pytest.raises(InputError, match="no CT"):
        logic.segment(None, *liver, model=tiny_model)
    empty = mrml.new_segmentation_node(scene, ct, "empty")
    empty_id = mrml.write_segment(empty, np.zeros(mrml.volume_from_node(ct).shape, bool), ct, name="Liver")
    with pytest.raises(InputError, match="empty"):
        logic.segment(ct, empty, empty_id, model=tiny_model)


def test_segment_rethreshold_and_add_case_leave_no_stray_nodes(logic, scene, ct, liver, phantom, tiny_model):
    """Only the result's own nodes are added: no export colour tables, no temporary labelmaps."""
    before = count_nodes(scene)
    segmentation, table = logic.segment(ct, *liver, model=tiny_model)
    added = {k: v - before.get(k, 0) for k, v in count_nodes(scene).items() if v != before.get(k, 0)}
    # The segmentation, the kept probability map and the lesion table, with their display nodes.
    assert added == {"vtkMRMLSegmentationNode": 1, "vtkMRMLSegmentationDisplayNode": 1, "vtkMRMLScalarVolumeNode": 1,
                     "vtkMRMLScalarVolumeDisplayNode": 1, "vtkMRMLTableNode": 1}, added
    after_segment = count_nodes(scene)
    logic.rethreshold(segmentation, 0.3)
    logic.segment(ct, *liver, model=tiny_model, outputSegmentationNode=segmentation)
    logic.addCase(ct, *liver, segmentation, logic.tumorSegmentId(segmentation))
    assert count_nodes(scene) == after_segment
    names = [scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes())]
    assert not [n for n in names if n.endswith("_ColorTable") or n.startswith("LiverTumorSegExport")]


def test_default_input_volume_is_a_ct_not_a_labelmap_or_our_probability_map(logic, scene, ct, liver, tiny_model, phantom):
    assert logic.defaultInputVolume() is ct
    logic.segment(ct, *liver, model=tiny_model)  # adds the "... probability" scalar volume
    scene.RemoveNode(ct)
    assert logic.defaultInputVolume() is None
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")  # IsA scalar volume, but no CT
    assert logic.defaultInputVolume() is None
    second = mrml.add_volume_node(scene, phantom.image, "Second CT")
    assert logic.defaultInputVolume() is second


# ---- never overwrite the user's work -------------------------------------------------------
def test_chosen_output_keeps_user_segments_and_edits(logic, scene, ct, liver, phantom, tiny_model):
    shape = phantom.image.shape
    output = mrml.new_segmentation_node(scene, ct, "my work")
    mine = np.zeros(shape, bool)
    mine[10:14, 40:50, 40:50] = True
    named_like_ours = np.zeros(shape, bool)
    named_like_ours[5:8, 60:70, 60:70] = True
    mine_id = output.GetSegmentation().AddEmptySegment("mine", "My tumor")
    user_edit(output, mine_id, mine, ct)
    theirs_id = output.GetSegmentation().AddEmptySegment("hand", "Liver tumor")
    user_edit(output, theirs_id, named_like_ours, ct)

    segmentation, _ = logic.segment(ct, *liver, model=tiny_model, outputSegmentationNode=output)
    assert segmentation is output
    ai_id = logic.tumorSegmentId(output)
    assert ai_id not in (mine_id, theirs_id)
    assert output.GetSegmentation().GetSegment(ai_id).GetName() == "Liver tumor 2"
    np.testing.assert_array_equal(mrml.segment_to_mask(output, mine_id, ct), mine)
    np.testing.assert_array_equal(mrml.segment_to_mask(output, theirs_id, ct), named_like_ours)

    # Unedited AI output is replaced in place by the next run.
    logic.segment(ct, *liver, model=tiny_model, outputSegmentationNode=output)
    assert logic.tumorSegmentId(output) == ai_id and output.GetSegmentation().GetNumberOfSegments() == 3
    assert logic.editedTumorSegmentId(output) is None

    # Once the user edits it, it is theirs: kept, and the new result goes into a new segment...
    edited = mrml.segment_to_mask(output, ai_id, ct)
    edited[0, 0, :5] = ~edited[0, 0, :5]
    user_edit(output, ai_id, edited, ct)
    assert logic.editedTumorSegmentId(output) == ai_id
    with pytest.raises(InputError, match="edited"):
        logic.rethreshold(output, 0.5)
    logic.segment(ct, *liver, model=tiny_model, outputSegmentationNode=output)
    new_id = logic.tumorSegmentId(output)
    assert new_id != ai_id and output.GetSegmentation().GetNumberOfSegments() == 4
    np.testing.assert_array_equal(mrml.segment_to_mask(output, ai_id, ct), edited)
    # ...unless the user agreed to replace it.
    edited_new = mrml.segment_to_mask(output, new_id, ct)
    edited_new[1, 1, 1] = True
    user_edit(output, new_id, edited_new, ct)
    logic.segment(ct, *liver, model=tiny_model, outputSegmentationNode=output, replaceEdited=True)
    assert logic.tumorSegmentId(output) == new_id and output.GetSegmentation().GetNumberOfSegments() == 4
    assert not mrml.segment_to_mask(output, new_id, ct)[1, 1, 1]


# ---- case library --------------------------------------------------------------------------
def test_add_case_writes_the_case_folder(logic, ct, liver, phantom, tiny_model):
    segmentation, _ = logic.segment(ct, *liver, model=tiny_model)
    tumor_id = logic.tumorSegmentId(segmentation)
    corrected = phantom.labels.array == 2
    user_edit(segmentation, tumor_id, corrected, ct)
    case_id = logic.addCase(ct, *liver, segmentation, tumor_id, notes="corrected by hand")

    folder = logic.libraryPath / "cases" / case_id
    assert {p.name for p in folder.iterdir()} == {"image.nrrd", "label.nrrd", "case.json"}
    image = images.read_image(folder / "image.nrrd")
    labels = images.read_labels(folder / "label.nrrd", reference=image)
    np.testing.assert_array_equal(image.array, phantom.image.array)
    assert image.same_grid(phantom.image)
    np.testing.assert_array_equal(labels.array, phantom.labels.array)  # liver 1, corrected tumors 2
    [info] = logic.listCases()
    assert info.case_id == case_id and info.notes == "corrected by hand"
    assert info.tumor_count == len(phantom.tumors) or info.tumor_count >= 1
    assert info.source == "3D Slicer: Phantom CT"

    second = logic.addCase(ct, *liver, segmentation, tumor_id, caseId="second")
    assert [c.case_id for c in logic.listCases()] == sorted([case_id, second])
    logic.removeCase(case_id)
    assert [c.case_id for c in logic.listCases()] == [second]
    assert not folder.exists() and any((logic.libraryPath / "trash").iterdir())
    with pytest.raises(InputError):
        logic.addCase(ct, *liver, segmentation, tumor_id, caseId="second")  # never overwrites


def test_add_case_needs_a_liver_segment(logic, ct, liver, tiny_model):
    segmentation, _ = logic.segment(ct, *liver, model=tiny_model)
    with pytest.raises(InputError, match="liver as a segment"):
        logic.addCase(ct, None, None, segmentation, logic.tumorSegmentId(segmentation))
    assert logic.listCases() == []


# ---- models --------------------------------------------------------------------------------
def test_models_listing_set_active_and_rollback(logic, tiny_model, ct, liver):
    from LiverTumorSegLib.storage.modelstore import default_model_path, save_model

    save_model(tiny_model, logic.library.new_version_path())
    save_model(tiny_model, logic.library.new_version_path())
    models = logic.listModels()
    versions = [m.version for m in models]
    assert versions[-2:] == ["v001", "v002"]
    assert ("default" in versions) == (default_model_path() / "model.pt").is_file()
    assert all("Dice" in m.label for m in models)

    logic.setActiveModel("v002")
    assert logic.activeModelVersion() == "v002"
    assert logic.modelPath() == logic.libraryPath / "models" / "v002"
    segmentation, _ = logic.segment(ct, *liver)  # the active model
    assert segmentation.GetAttribute("LiverTumorSeg.Model").endswith("v002")
    logic.setActiveModel("v001")  # rollback
    assert logic.activeModelVersion() == "v001"
    assert logic.modelPath() == logic.libraryPath / "models" / "v001"
    with pytest.raises(InputError):
        logic.setActiveModel("v999")
    assert logic.activeModelVersion() == "v001"


def write_model_json(folder, **extra):
    """A model.json as another tool (or an older/newer version of this one) might write it."""
    meta = json.loads((folder / "model.json").read_text())
    meta.update(extra)
    (folder / "model.json").write_text(json.dumps(meta))


def test_model_list_marks_versions_worse_than_their_parent(logic, tiny_model):
    from LiverTumorSegLib.storage.modelstore import save_model

    for _ in range(6):
        save_model(tiny_model, logic.library.new_version_path())
    models = logic.libraryPath / "models"
    write_model_json(models / "v002", parent="v001", parent_check={
        "parent": "v001", "parent_validation_dice": 0.62, "child_on_parent_validation_dice": 0.55, "worse_than_parent": True})
    write_model_json(models / "v003", parent="v002", parent_check={
        "parent": "v002", "parent_validation_dice": 0.55, "child_on_parent_validation_dice": 0.60, "worse_than_parent": False})
    write_model_json(models / "v004", parent_check={"worse_than_parent": "yes"})  # malformed: no warning
    write_model_json(models / "v005", parent_check={"worse_than_parent": True, "parent_validation_dice": None})
    # What training.parent_check writes: where the child lost, and the user's validation scores.
    write_model_json(models / "v006", parent="v005", parent_check={
        "parent": "v005", "parent_validation_dice": 0.60, "child_on_parent_validation_dice": 0.59, "worse_on": ["your validation"],
        "user_validation": {"parent": {"dice": 0.71}, "child": {"dice": 0.64}}, "worse_than_parent": True})
    # v001 has no parent_check at all.
    by_version = {info.version: info for info in logic.listModels()}
    assert logic.modelWarning(by_version["v006"]) == "worse than v005 on your validation: Dice 0.640 against 0.710"
    warning = logic.modelWarning(by_version["v002"])
    assert warning == "worse than v001 on v001's validation cases: Dice 0.550 against 0.620"
    assert logic.modelLabel(by_version["v002"]).endswith("\u26a0 worse than parent")
    assert logic.modelLabel(by_version["v002"]).startswith(by_version["v002"].label)
    for version in ("v001", "v003", "v004"):
        assert logic.modelWarning(by_version[version]) == ""
        assert logic.modelLabel(by_version[version]) == by_version[version].label
    assert logic.modelWarning(by_version["v005"]) == "worse than its parent on its parent's validation cases"
    (models / "v002" / "model.json").write_text("{not json")  # the lists read model.json once, when listing
    assert logic.modelWarning({info.version: info for info in logic.listModels()}["v002"]) == ""
    if "default" in by_version:
        assert logic.modelLabel(by_version["default"]).startswith(by_version["default"].label + " [shipped]")


def test_model_synthesis_says_which_synthetic_data_a_version_used(logic, tiny_model):
    from LiverTumorSegLib.storage.modelstore import save_model

    for _ in range(4):
        save_model(tiny_model, logic.library.new_version_path())
    models = logic.libraryPath / "models"
    write_model_json(models / "v001", synthesis={"requested": "fixed", "mode": "fixed", "why": "asked for"})
    meta = json.loads((models / "v004" / "model.json").read_text())
    meta.pop("synthesis", None)  # a version from before the setting existed
    (models / "v004" / "model.json").write_text(json.dumps(meta))
    # What synthesis_search writes for --synthesis auto (trimmed to the keys the line uses).
    write_model_json(models / "v002", synthesis={
        "requested": "default", "mode": "auto", "chosen": "family_small_hyper", "held_out_tumors": 3,
        "candidates": [{"name": "off", "copies": 0, "score": 0.41}, {"name": "fixed", "copies": 1, "score": 0.44},
                       {"name": "family_small_hyper", "copies": 2, "score": 0.52}]})
    write_model_json(models / "v003", synthesis="auto")  # malformed: nothing shown
    by_version = {info.version: info for info in logic.listModels()}
    assert logic.modelSynthesis(by_version["v001"]) == "synthetic data: fixed (asked for)"
    assert logic.modelSynthesis(by_version["v004"]) == ""
    assert logic.modelSynthesis(by_version["v002"]) == (
        "synthetic data chosen by the segmenter: family_small_hyper (2 per case), validation score 0.520 against "
        "off 0.410 and fixed 0.440, 3 tried on 3 held-out tumors")
    assert logic.modelSynthesis(by_version["v003"]) == ""


# ---- background segment --------------------------------------------------------------------
def test_background_segment_gives_the_same_result_as_segment(library_with_model, scene, ct, liver, phantom):
    logic = library_with_model
    expected, expected_table = logic.segment(ct, *liver)  # in this process, active model v001
    before = count_nodes(scene)
    job = logic.startSegment(ct, *liver, showProbability=True)
    assert job.command[job.command.index("segment") - 2:job.command.index("segment")] == ["-m", "LiverTumorSegLib"]
    assert "--threshold" in job.command and "--liver" in job.command and "--progress-json" in job.command
    threads = int(job.command[job.command.index("--threads") + 1])
    assert threads == max(1, (os.cpu_count() or 2) - 1)  # one core left to Slicer, as Retrain
    folder = job.folder
    seen = drive(job)
    assert job.error is None and job.returncode == 0, job.log
    check_segment_progress(job, seen)
    segmentation, table = logic.finishSegment(job)
    assert not folder.exists()  # the scratch folder is gone
    assert segmentation is not expected and segmentation.GetSegmentation().GetNumberOfSegments() == 1
    added = {k: v - before.get(k, 0) for k, v in count_nodes(scene).items() if v != before.get(k, 0)}
    assert added == {"vtkMRMLSegmentationNode": 1, "vtkMRMLSegmentationDisplayNode": 1, "vtkMRMLScalarVolumeNode": 1,
                     "vtkMRMLScalarVolumeDisplayNode": 1, "vtkMRMLTableNode": 1}, added

    p_bg = mrml.volume_from_node(logic.probabilityNode(segmentation)).array
    p_fg = mrml.volume_from_node(logic.probabilityNode(expected)).array
    np.testing.assert_allclose(p_bg, p_fg, atol=1e-4)  # thread counts differ: last bits may too
    threshold = float(expected.GetAttribute("LiverTumorSeg.Threshold"))
    assert float(segmentation.GetAttribute("LiverTumorSeg.Threshold")) == pytest.approx(threshold)
    for name in ("LiverTumorSeg.MinLesionMm3", "LiverTumorSeg.LiverRegion", "LiverTumorSeg.Model"):
        assert segmentation.GetAttribute(name) == expected.GetAttribute(name), name
    m_bg = mrml.segment_to_mask(segmentation, logic.tumorSegmentId(segmentation), ct)
    m_fg = mrml.segment_to_mask(expected, logic.tumorSegmentId(expected), ct)
    differ = m_bg != m_fg
    assert not differ[np.abs(p_fg - threshold) > 1e-3].any()
    rows_bg, rows_fg = mrml.table_rows(table)[1], mrml.table_rows(expected_table)[1]
    if not differ.any():
        assert len(rows_bg) == len(rows_fg)
        for a, b in zip(rows_bg, rows_fg):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    # Re-thresholding works on the background result as on any other.
    logic.rethreshold(segmentation, 0.3)
    assert float(segmentation.GetAttribute("LiverTumorSeg.Threshold")) == pytest.approx(0.3)


def check_segment_progress(job, seen):
    """The reports a background Segment's poll() returned: its stages in order, ending with done."""
    stages = [info["stage"] for info in seen]
    assert stages[0] == "prepare" and stages[-1] == "done" and stages.count("done") == 1, stages
    order = list(SEGMENT_STAGE_SPAN)  # prepare, network, postprocess, done
    assert set(stages) == set(order) and stages == sorted(stages, key=order.index), stages
    for info in seen:
        assert isinstance(info["step"], int) and isinstance(info["total"], int) and 0 <= info["step"] <= info["total"], info
        assert isinstance(info["elapsed_s"], float) and info["elapsed_s"] >= 0.0, info
    network = [info for info in seen if info["stage"] == "network"]
    assert network[-1]["step"] == network[-1]["total"] >= 1  # every tile reported
    assert job.result == seen[-1] and job.latest == seen[-1]
    assert not any(line.lstrip().startswith('{"stage"') for line in job.log)  # no report left in the log
    percents = [describeProgress(info, job.stageSpans)[0] for info in seen]
    assert percents == sorted(percents) and percents[-1] == 100, percents  # the bar never goes back
    assert [stageText(info) for info in network][-1] == f"Network step {network[-1]['step']}/{network[-1]['total']}"


def test_in_process_segment_gives_the_same_result_as_segment(library_with_model, scene, ct, liver):
    """The web server's Segment: a worker thread of this process, no files; the same arrays,
    progress and scene nodes as segment()."""
    logic = library_with_model
    expected, expected_table = logic.segment(ct, *liver)
    job = logic.startSegment(ct, *liver, inProcess=True)
    assert isinstance(job, SegmentThreadJob) and job in logic._jobs  # tracked: a scene close cancels it
    seen = drive(job)
    assert job.error is None and job.output is not None
    check_segment_progress(job, seen)
    segmentation, table = logic.finishSegment(job)
    p_thread = mrml.volume_from_node(logic.probabilityNode(segmentation)).array
    p_direct = mrml.volume_from_node(logic.probabilityNode(expected)).array
    np.testing.assert_array_equal(p_thread, p_direct)  # same process, same threads: the same bits
    tumor_id = logic.tumorSegmentId(segmentation)
    np.testing.assert_array_equal(mrml.segment_to_mask(segmentation, tumor_id, ct),
                                  mrml.segment_to_mask(expected, logic.tumorSegmentId(expected), ct))
    assert mrml.table_rows(table) == mrml.table_rows(expected_table)
    for name in ("LiverTumorSeg.Threshold", "LiverTumorSeg.MinLesionMm3", "LiverTumorSeg.LiverRegion", "LiverTumorSeg.Model"):
        assert segmentation.GetAttribute(name) == expected.GetAttribute(name), name


def test_in_process_segment_cancel_and_failure(library_with_model, scene, ct, liver):
    logic = library_with_model
    output = mrml.new_segmentation_node(scene, ct, "output")
    before = count_nodes(scene)
    job = logic.startSegment(ct, *liver, outputSegmentationNode=output, inProcess=True)
    job.cancel()
    drive(job)
    assert job.cancelled and job.error is None  # also when the thread finished first: the result is dropped
    with pytest.raises(Cancelled):
        logic.finishSegment(job)
    assert count_nodes(scene) == before and output.GetSegmentation().GetNumberOfSegments() == 0
    assert job.output is None  # let go
    with pytest.raises(InputError, match=r"outside \(0, 1\)"):  # refused before any thread starts
        logic.startSegment(ct, *liver, threshold=1.5, inProcess=True)
    job = logic.startSegment(ct, *liver, inProcess=True)
    scene.RemoveNode(ct)  # the CT goes away while it is segmented: nothing is put into the scene
    drive(job)
    with pytest.raises(InputError, match="removed"):
        logic.finishSegment(job)


def test_background_segment_into_a_chosen_output_keeps_user_segments(library_with_model, scene, ct, liver, phantom):
    logic = library_with_model
    output = mrml.new_segmentation_node(scene, ct, "my work")
    mine = np.zeros(phantom.image.shape, bool)
    mine[10:14, 40:50, 40:50] = True
    mine_id = output.GetSegmentation().AddEmptySegment("mine", "My tumor")
    user_edit(output, mine_id, mine, ct)
    job = logic.startSegment(ct, *liver, outputSegmentationNode=output)
    drive(job)
    segmentation, _ = logic.finishSegment(job)
    assert segmentation is output and output.GetSegmentation().GetNumberOfSegments() == 2
    np.testing.assert_array_equal(mrml.segment_to_mask(output, mine_id, ct), mine)
    assert logic.tumorSegmentId(output) not in (None, mine_id)


def test_background_segment_cancel_changes_nothing(library_with_model, scene, ct, liver):
    logic = library_with_model
    output = mrml.new_segmentation_node(scene, ct, "output")
    before = count_nodes(scene)
    job = logic.startSegment(ct, *liver, outputSegmentationNode=output)
    job.cancel()
    drive(job, timeout=120)
    assert job.cancelled and job.error is None
    with pytest.raises(Cancelled):
        logic.finishSegment(job)
    assert not job.folder.exists()
    assert count_nodes(scene) == before and output.GetSegmentation().GetNumberOfSegments() == 0
    if os.name != "nt":
        with pytest.raises(ProcessLookupError):
            os.killpg(job.pid, 0)


def test_background_segment_cancel_while_it_reports_progress(library_with_model, scene, ct, liver):
    """Cancel as the Widget's button does, once the bar shows the first stage: nothing is written."""
    logic = library_with_model
    before = count_nodes(scene)
    job = logic.startSegment(ct, *liver)
    seen = drive(job, timeout=120, stop_after_first=True)
    assert seen[0]["stage"] == "prepare" and job.cancelled and job.error is None, (seen, job.log)
    with pytest.raises(Cancelled):
        logic.finishSegment(job)
    assert not job.folder.exists() and count_nodes(scene) == before
    if os.name != "nt":
        with pytest.raises(ProcessLookupError):
            os.killpg(job.pid, 0)


def test_closing_the_scene_cancels_a_background_segment(library_with_model, scene, ct, liver):
    """File > Close Scene while Segment runs: the job is cancelled, nothing is put anywhere, the
    scratch folder and the process are gone, and finishing it says why."""
    logic = library_with_model
    job = logic.startSegment(ct, *liver)
    assert job in logic.runningJobs()
    scene.Clear(0)  # what closing the scene does (StartCloseEvent, nodes removed)
    drive(job, timeout=120)
    assert job.cancelled and job.error is None
    with pytest.raises(Cancelled, match="scene was closed"):
        logic.finishSegment(job)
    assert not job.folder.exists() and scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    if os.name != "nt":
        with pytest.raises(ProcessLookupError):
            os.killpg(job.pid, 0)


def test_closing_slicer_stops_every_job_and_leaves_nothing(library_with_model, ct, liver, phantom):
    """The widget's cleanup (Slicer quitting) calls stopJobs: both jobs end before it returns,
    with no process, no scratch folder and no new model version left."""
    logic = library_with_model
    add_phantom_case(logic, ct, liver, phantom)
    segment_job = logic.startSegment(ct, *liver)
    training_job = logic.startTraining(minutes=30.0, maxSteps=100000)
    time.sleep(1.0)
    logic.stopJobs(timeout=10.0)
    for job in (segment_job, training_job):
        assert job.finished and job.cancelled and job.error is None, job.log
        if os.name != "nt":
            with pytest.raises(ProcessLookupError):
                os.killpg(job.pid, 0)
    assert not segment_job.folder.exists()
    assert not training_job.outPath.exists() and logic.runningJobs() == []


def test_a_failed_job_gives_one_line_never_a_traceback(tmp_path):
    """A child that crashes with a traceback, or is killed (out of memory), is reported in one line;
    the whole output stays in the job's log for the details."""
    crash = BackgroundJob([sys.executable, "-c", "import json\nraise RuntimeError('the disk went away')"])
    drive(crash, timeout=60)
    assert crash.error == "the background job failed (RuntimeError: the disk went away); nothing was written (the details are in the log)"
    assert any("Traceback" in line for line in crash.log)
    if os.name != "nt":
        killed = BackgroundJob([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
        drive(killed, timeout=60)
        assert "\n" not in killed.error and "stopped by SIGKILL" in killed.error and "memory" in killed.error


def test_training_settings_are_checked_before_a_job_starts(logic, ct, liver, phantom):
    add_phantom_case(logic, ct, liver, phantom)
    for minutes in (float("nan"), 0, -1, "abc"):
        with pytest.raises(InputError, match="positive number of minutes"):
            logic.startTraining(minutes=minutes)
    with pytest.raises(InputError, match="at least 1"):
        logic.startTraining(maxSteps=0)
    assert logic.runningJobs() == []


def test_background_segment_reports_the_cli_error(logic, scene, ct, liver):
    broken = logic.libraryPath / "models" / "v001"
    broken.mkdir(parents=True)
    (broken / "model.pt").write_bytes(b"not a model")
    (broken / "model.json").write_text(json.dumps({"threshold": 0.5, "min_lesion_mm3": 30.0}))
    logic.setActiveModel("v001")
    job = logic.startSegment(ct, *liver)
    drive(job, timeout=120)
    assert job.returncode == 2 and "not a readable model file" in job.error
    with pytest.raises(InputError, match="not a readable model file"):
        logic.finishSegment(job)
    assert not job.folder.exists()
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1  # only the liver's


def test_background_segment_input_errors(library_with_model, ct, liver, scene, tiny_model):
    logic = library_with_model
    with pytest.raises(InputError, match="no CT"):
        logic.startSegment(None, *liver)
    with pytest.raises(InputError, match="model in memory"):
        logic.startSegment(ct, *liver, model=tiny_model)
    job = logic.startSegment(ct, *liver)
    with pytest.raises(InputError, match="still running"):
        logic.finishSegment(job)
    scene.RemoveNode(ct)
    drive(job)
    with pytest.raises(InputError, match="removed"):
        logic.finishSegment(job)


# ---- background training -------------------------------------------------------------------
def add_phantom_case(logic, ct, liver, phantom):
    segmentation = mrml.new_segmentation_node(logic.scene, ct, "truth")
    tumor_id = mrml.write_segment(segmentation, phantom.labels.array == 2, ct, name="Liver tumor")
    return logic.addCase(ct, *liver, segmentation, tumor_id)


def drive(job, timeout=JOB_TIMEOUT_S, stop_after_first=False):
    """Poll as the Widget's QTimer does; returns all progress dicts."""
    seen, deadline = [], time.monotonic() + timeout
    while not job.finished:
        seen += job.poll()
        if stop_after_first and seen and not job.cancelled:
            job.cancel()
        assert time.monotonic() < deadline, f"job did not finish in {timeout} s: {job.log[-5:]}"
        time.sleep(0.2)
    return seen


def test_training_job_runs_to_completion(library_with_model, scene, ct, liver, phantom):
    """Also: a broken case in the library is skipped and named in the job's warnings (which the
    panel shows)."""
    logic = library_with_model
    add_phantom_case(logic, ct, liver, phantom)
    broken = logic.libraryPath / "cases" / "case-broken"
    shutil.copytree(logic.libraryPath / "cases" / "case-001", broken)
    (broken / "image.nrrd").write_bytes(b"NRRD0004\ntruncated")
    job = logic.startTraining(minutes=2.0, maxSteps=2, seed=1)
    assert "--init" in job.command and str(logic.libraryPath / "models" / "v001") in job.command
    assert job.outPath == logic.libraryPath / "models" / "v002"
    seen = drive(job)
    assert job.error is None and not job.cancelled and job.returncode == 0, job.log
    assert any("skipping case case-broken" in w and "repair or remove" in w for w in job.warnings), job.log
    stages = [info["stage"] for info in seen]
    assert "train" in stages and stages[-1] == "done"
    assert job.result["model"] == str(job.outPath)
    assert (job.outPath / "model.pt").is_file()
    # One core is left to Slicer.
    threads = int(job.command[job.command.index("--threads") + 1])
    assert threads == max(1, (os.cpu_count() or 2) - 1)
    assert json.loads((job.outPath / "model.json").read_text())["torch_threads"] == threads
    percents = [describeProgress(info)[0] for info in seen]
    assert percents[-1] == 100 and max(percents[:-1]) <= 100
    assert "v002" in [m.version for m in logic.listModels()]
    assert logic.activeModelVersion() == "v001"  # a new version does not activate itself
    logic.setActiveModel("v002")
    assert logic.activeModelVersion() == "v002"


def test_training_job_cancel_stops_the_process_tree(library_with_model, ct, liver, phantom):
    logic = library_with_model
    add_phantom_case(logic, ct, liver, phantom)
    job = logic.startTraining(minutes=30.0, maxSteps=100000)
    seen = drive(job, stop_after_first=True)
    assert seen and job.cancelled and job.error is None
    assert not job.outPath.exists()
    assert [m.version for m in logic.listModels()][-1] == "v001"
    if os.name != "nt":
        with pytest.raises(ProcessLookupError):
            os.killpg(job.pid, 0)  # no process of the group is left


def test_closing_the_scene_cancels_retrain_cleanly(library_with_model, scene, ct, liver, phantom):
    logic = library_with_model
    add_phantom_case(logic, ct, liver, phantom)
    job = logic.startTraining(minutes=30.0, maxSteps=100000)
    seen = []
    while not seen and not job.finished:  # once it reports progress (the Widget's bar shows a stage)
        seen += job.poll()
        time.sleep(0.2)
    scene.Clear(0)
    drive(job, timeout=120)
    assert job.cancelled and job.sceneClosed and job.error is None, job.log
    assert not job.outPath.exists() and not any(p.name.startswith(".") for p in job.outPath.parent.iterdir())
    assert [m.version for m in logic.listModels()][-1] == "v001"
    if os.name != "nt":
        with pytest.raises(ProcessLookupError):
            os.killpg(job.pid, 0)


def test_failed_training_reports_the_cli_error(logic, ct, liver, phantom):
    add_phantom_case(logic, ct, liver, phantom)
    broken = logic.libraryPath / "models" / "v001"
    broken.mkdir(parents=True)
    (broken / "model.pt").write_bytes(b"not a model")
    logic.setActiveModel("v001")
    job = logic.startTraining(minutes=1.0, maxSteps=1)
    drive(job, timeout=120)
    assert job.returncode == 2 and not job.cancelled
    assert "not a readable model file" in job.error
    with pytest.raises(InputError, match="not a readable model file"):
        job.wait()


def test_training_needs_cases(logic):
    with pytest.raises(InputError, match="no cases"):
        logic.train(minutes=1.0)


def test_the_model_list_needs_no_engine_imports_and_preloading_brings_them(tmp_path):
    """A front end's start (the Logic, its model list) imports neither scipy nor torch, which
    cost seconds; preloadEngine() then imports what the first Segment's result needs, in the
    background. Checked in a fresh interpreter, where nothing is imported yet."""
    import subprocess

    script = (
        "import json, sys; from LiverTumorSegLib.slicer.logic import LiverTumorSegLogic, preloadEngine\n"
        "import slicer\n"
        f"logic = LiverTumorSegLogic(libraryPath={str(tmp_path / 'library')!r}, scene=slicer.vtkMRMLScene())\n"
        "labels = [logic.modelLabel(info) for info in logic.listModels()]\n"
        "before = sorted(m for m in ('scipy', 'torch') if m in sys.modules)\n"
        "preloadEngine().join(120)\n"
        "print(json.dumps([labels, before, 'scipy.ndimage' in sys.modules, 'LiverTumorSegLib.core.inference' in sys.modules]))\n"
    )
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(images.__file__)))  # storage/ -> the package's parent
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=package_parent,
                         env={**os.environ, "PYTHONPATH": package_parent})
    assert run.returncode == 0, run.stderr
    labels, before, scipy_loaded, inference_loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert any("shipped" in label for label in labels)
    assert before == [] and scipy_loaded and inference_loaded


# ---- no liver segment or ROI: the liver is found automatically (issue 24) -------------------------
@pytest.fixture
def real_ct(logic, totalseg_dir):
    """The small real CT (TotalSegmentator test data) and its true liver on its grid."""
    node = logic.loadVolume(totalseg_dir / "example_ct_sm.nii.gz")
    image = mrml.volume_from_node(node)
    truth = images.read_liver_mask(totalseg_dir / "example_ct_sm_liver.nii.gz", reference=image)
    return node, truth


def found_liver_and_tumor(logic, segmentation, ct):
    names = {segmentation.GetSegmentation().GetSegment(s).GetName(): s for s in mrml.segment_ids(segmentation)}
    assert set(names) == {"Liver tumor", "Liver"}, names
    assert logic.foundLiverSegmentId(segmentation) == names["Liver"]
    liver = mrml.segment_to_mask(segmentation, names["Liver"], ct)
    tumor = mrml.segment_to_mask(segmentation, logic.tumorSegmentId(segmentation), ct)
    return liver, tumor


def test_segment_without_a_liver_finds_it_and_shows_it_as_a_segment(library_with_model, scene, real_ct):
    logic = library_with_model
    ct, truth = real_ct
    seen = []
    segmentation, _ = logic.segment(ct, progress=seen.append)
    assert seen[0]["stage"] == "liver"
    liver, tumor = found_liver_and_tumor(logic, segmentation, ct)
    assert 2 * (liver & truth).sum() / (liver.sum() + truth.sum()) > 0.95
    assert not (tumor & ~liver).any()  # tumors only inside the liver used
    assert segmentation.GetAttribute("LiverTumorSeg.LiverRegion") == "1"


def test_background_segment_without_a_liver_brings_the_found_liver_back(library_with_model, scene, real_ct):
    logic = library_with_model
    ct, truth = real_ct
    job = logic.startSegment(ct)
    assert "--liver-out" in job.command and "--liver" not in job.command
    seen = drive(job)
    assert job.error is None and job.returncode == 0, job.log
    percents = [describeProgress(info, job.stageSpans)[0] for info in seen]
    assert seen[0]["stage"] == "liver" and percents == sorted(percents), percents  # the bar never goes back
    segmentation, _ = logic.finishSegment(job)
    liver, tumor = found_liver_and_tumor(logic, segmentation, ct)
    assert 2 * (liver & truth).sum() / (liver.sum() + truth.sum()) > 0.95
    assert not (tumor & ~liver).any()


def test_segment_refuses_a_ct_without_a_plausible_liver(library_with_model, scene, logic):
    node = mrml.add_volume_node(scene, Volume(np.full((20, 200, 200), 100, np.int16), (1.0, 1.0, 2.0)), "not a CT")
    with pytest.raises(InputError, match="choose a liver segment"):
        library_with_model.segment(node)


# ---- the liver source: TotalSegmentator's liver as the editable "Liver" segment (issue 24) ------
def ts_terminology(category, type_, region=("", "", "")) -> str:
    """A terminology entry as SlicerTotalSegmentator's loadTotalSegmentatorLabelTerminology writes it."""
    return ("Segmentation category and type - DICOM master list~" + "^".join(category) + "~" + "^".join(type_)
            + "~^^~Anatomic codes - DICOM master list~" + "^".join(region) + "~^^|")


ANATOMY = ("SCT", "123037004", "Anatomical Structure")
LIVER = ("SCT", "10200004", "Liver")


def totalsegmentator_output(scene, ct, liver_mask, class_ids=True):
    """A segmentation node shaped like TotalSegmentator's (TotalSegmentatorLogic.readSegmentation
    and setTerminology): segment IDs are its class names, names the standard labels, terminology
    tagged; the liver comes after its vessels and among other organs. `class_ids=False`: IDs as a
    reloaded or exported file may have them (Segment_1...), so only terminology and names tell."""
    node = mrml.new_segmentation_node(scene, ct, "CT TotalSegmentator")
    fill_like_totalsegmentator(node, ct, totalsegmentator_structures(liver_mask), class_ids)
    return node


def totalsegmentator_structures(liver_mask) -> list:
    """(class name, name, terminology, mask) of the structures totalsegmentator_output holds."""
    shape = liver_mask.shape
    spleen = np.zeros(shape, bool)
    spleen[:, :10, :10] = True
    vessels = liver_mask & (np.arange(shape[2]) % 7 == 0)[None, None, :]
    tumor = np.zeros(shape, bool)
    tumor[shape[0] // 2, shape[1] // 2, shape[2] // 2] = True
    structures = [
        ("liver_vessels", "Liver vessels", ts_terminology(ANATOMY, ("SCT", "59820001", "Blood vessel"), LIVER), vessels),
        ("liver_tumor", "Liver tumor",
         ts_terminology(("SCT", "49755003", "Morphologically Altered Structure"), ("SCT", "108369006", "Neoplasm"), LIVER),
         tumor),
        ("spleen", "Spleen", ts_terminology(ANATOMY, ("SCT", "78961009", "Spleen")), spleen),
        ("liver", "Liver", ts_terminology(ANATOMY, LIVER), liver_mask),
        ("kidney_left", "Left kidney", ts_terminology(ANATOMY, ("SCT", "64033007", "Kidney")), spleen[::-1]),
    ]
    return structures


def fill_like_totalsegmentator(node, ct, structures, class_ids=True) -> None:
    for n, (class_name, name, terminology, mask) in enumerate(structures, start=1):
        segment_id = class_name if class_ids else f"Segment_{n}"
        node.GetSegmentation().AddEmptySegment(segment_id, name, [0.5, 0.5, 0.5])
        mrml.write_segment(node, mask, ct, segment_id=segment_id)
        mrml.set_terminology(node.GetSegmentation().GetSegment(segment_id), terminology)


def test_liver_sources_here_are_automatic_and_a_segment_and_totalsegmentator_is_refused(logic, scene, ct):
    from LiverTumorSegLib.slicer.liver_sources import totalSegmentatorInstalled

    assert not totalSegmentatorInstalled()  # slicer-core: no Slicer application, no extensions
    assert logic.liverSources() == ["Automatic", "Liver segment"]
    before = count_nodes(scene)
    with pytest.raises(InputError, match="TotalSegmentator extension is not installed.*Extensions Manager"):
        logic.liverFromTotalSegmentator(ct)
    assert count_nodes(scene) == before


def test_totalsegmentators_liver_becomes_the_editable_liver_segment_segment_searches_and_add_case_stores(
        logic, scene, ct, liver, phantom, tiny_model):
    truth = phantom.labels.array > 0
    source = totalsegmentator_output(scene, ct, truth)
    node, liver_id = logic.takeLiver(source, ct)

    assert mrml.segment_ids(node) == [liver_id]  # its liver only, not the other organs
    segment = node.GetSegmentation().GetSegment(liver_id)
    assert segment.GetName() == "Liver" and mrml.terminology(segment) == images.LIVER_SEGMENT.terminology
    assert logic.foundLiverSegmentId(node) == liver_id  # the automatic liver's segment: replaced only while unedited
    np.testing.assert_array_equal(mrml.segment_to_mask(node, liver_id, ct), truth)
    assert source.GetSegmentation().GetSegment("liver") is not None  # the source is left as it was

    # Used as the liver input: the tumors are searched inside it, exactly as inside the user's liver.
    segmentation, _ = logic.segment(ct, node, liver_id, model=tiny_model, outputSegmentationNode=node)
    by_hand, _ = logic.segment(ct, *liver, model=tiny_model)
    assert segmentation is node and segmentation.GetAttribute("LiverTumorSeg.LiverRegion") == "1"
    tumor_id = logic.tumorSegmentId(node)
    np.testing.assert_array_equal(mrml.segment_to_mask(node, tumor_id, ct),
                                  mrml.segment_to_mask(by_hand, logic.tumorSegmentId(by_hand), ct))
    np.testing.assert_array_equal(mrml.segment_to_mask(node, liver_id, ct), truth)  # Segment left the liver alone

    # Corrected, Add case stores the corrected liver; taking the liver again keeps the edit.
    corrected = truth.copy()
    corrected[: truth.shape[0] // 3] = False
    user_edit(node, liver_id, corrected, ct)
    case_id = logic.addCase(ct, node, liver_id, node, tumor_id)
    labels = images.read_labels(logic.libraryPath / "cases" / case_id / "label.nrrd", reference=phantom.image)
    np.testing.assert_array_equal(labels.array > 0, corrected | mrml.segment_to_mask(node, tumor_id, ct))
    assert not (labels.array[: truth.shape[0] // 3] == 1).any()
    again, again_id = logic.takeLiver(source, ct, node)
    assert again is node and again_id != liver_id
    np.testing.assert_array_equal(mrml.segment_to_mask(node, liver_id, ct), corrected)


def test_the_liver_is_found_by_terminology_or_name_never_its_vessels_or_tumors(logic, scene, ct, phantom):
    from LiverTumorSegLib.slicer.liver_sources import liverSegmentIdOf

    truth = phantom.labels.array > 0
    reloaded = totalsegmentator_output(scene, ct, truth, class_ids=False)
    assert liverSegmentIdOf(reloaded) == "Segment_4"  # by terminology: after "Liver vessels" and "Liver tumor"
    mrml.set_terminology(reloaded.GetSegmentation().GetSegment("Segment_4"), "")
    assert liverSegmentIdOf(reloaded) == "Segment_4"  # by its name alone
    node, liver_id = logic.takeLiver(reloaded, ct)
    np.testing.assert_array_equal(mrml.segment_to_mask(node, liver_id, ct), truth)


def test_a_segmentation_without_a_liver_is_refused_with_the_fix(logic, scene, ct, phantom):
    truth = phantom.labels.array > 0
    source = totalsegmentator_output(scene, ct, truth)
    source.GetSegmentation().RemoveSegment("liver")
    before = count_nodes(scene)
    with pytest.raises(InputError, match="has no liver segment.*choose Automatic"):
        logic.takeLiver(source, ct)
    assert count_nodes(scene) == before  # no output node made for nothing

    empty = totalsegmentator_output(scene, ct, np.zeros_like(truth))
    with pytest.raises(InputError, match="liver segment of 'CT TotalSegmentator' is empty"):
        logic.takeLiver(empty, ct)


class StandInTotalSegmentator:
    """A stand-in for the TotalSegmentator extension's module file (not installable here), with
    the surface runTotalSegmentator uses, as SlicerTotalSegmentator's TotalSegmentator.py (6a82370)
    defines it: TotalSegmentatorLogic with logCallback, setupPythonRequirements() (raises
    InstallError, with restartRequired) and process(inputVolume, outputSegmentation, quality=None,
    cpu=False, task=None, subset=None, interactive=False, sequenceBrowserNode=None), which fills the
    output node in the real scene, or raises CalledProcessError as when TotalSegmentator fails."""

    def __init__(self, ct, liver_mask, install_error=None, fail=False):
        stand_in = self
        self.calls = []

        class InstallError(Exception):
            def __init__(self, message, restartRequired=False):
                super().__init__(message)
                self.restartRequired = restartRequired

        class TotalSegmentatorLogic:
            def __init__(self):
                self.logCallback = None

            def setupPythonRequirements(self, upgrade=False):
                stand_in.calls.append("setup")
                if install_error is not None:
                    raise InstallError(install_error, restartRequired="restart" in install_error)

            def process(self, inputVolume, outputSegmentation, quality=None, cpu=False, task=None, subset=None,
                        interactive=False, sequenceBrowserNode=None):
                stand_in.calls.append(("process", inputVolume.GetID(), quality, cpu, task, subset, interactive))
                self.logCallback("Predicting...")
                if fail:
                    import subprocess

                    raise subprocess.CalledProcessError(1, ["TotalSegmentator"])
                fill_like_totalsegmentator(outputSegmentation, ct, totalsegmentator_structures(liver_mask))

        self.module = type(sys)("TotalSegmentator")
        self.module.TotalSegmentatorLogic = TotalSegmentatorLogic
        self.module.InstallError = InstallError


@pytest.fixture
def installed_totalsegmentator(monkeypatch, ct, phantom):
    """slicer.modules with a totalsegmentator module, and the stand-in importable as TotalSegmentator."""
    import types

    import slicer

    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(totalsegmentator=object()), raising=False)

    def install(**kwargs):
        stand_in = StandInTotalSegmentator(ct, phantom.labels.array > 0, **kwargs)
        monkeypatch.setitem(sys.modules, "TotalSegmentator", stand_in.module)
        return stand_in

    return install


def test_totalsegmentator_runs_fast_total_and_its_node_goes_once_the_liver_is_taken(logic, scene, ct, phantom,
                                                                                   installed_totalsegmentator):
    from LiverTumorSegLib.slicer.liver_sources import totalSegmentatorPackagesInstalled

    stand_in = installed_totalsegmentator()
    assert logic.liverSources() == ["Automatic", "Liver segment", "TotalSegmentator"]
    lines, asked = [], []
    before = count_nodes(scene)
    node, liver_id = logic.liverFromTotalSegmentator(ct, log=lines.append, confirmInstall=lambda: asked.append(1) or True)
    assert stand_in.calls == ["setup", ("process", ct.GetID(), True, False, "total", None, False)]  # fast, whole task
    assert lines == ["Predicting..."]
    assert asked == ([] if totalSegmentatorPackagesInstalled() else [1])  # asked only while its packages are missing
    np.testing.assert_array_equal(mrml.segment_to_mask(node, liver_id, ct), phantom.labels.array > 0)
    after = count_nodes(scene)  # the output (and its display node) with its Liver segment; TotalSegmentator's node removed
    assert after["vtkMRMLSegmentationNode"] == before.get("vtkMRMLSegmentationNode", 0) + 1, (before, after)
    assert mrml.segment_ids(node) == [liver_id]


def test_totalsegmentator_refusals_name_the_fix_and_leave_the_scene_as_it_was(logic, scene, ct, installed_totalsegmentator):
    from LiverTumorSegLib.slicer.liver_sources import totalSegmentatorPackagesInstalled

    before = count_nodes(scene)
    if not totalSegmentatorPackagesInstalled():
        stand_in = installed_totalsegmentator()
        with pytest.raises(InputError, match="packages are not installed.*choose Automatic"):
            logic.liverFromTotalSegmentator(ct, confirmInstall=lambda: False)
        assert stand_in.calls == []  # nothing installed, nothing run
    installed_totalsegmentator(install_error="installed; restart required")
    with pytest.raises(InputError, match="restart Slicer, then segment again"):
        logic.liverFromTotalSegmentator(ct)
    installed_totalsegmentator(install_error="pip failed")
    with pytest.raises(InputError, match="could not install its Python packages \\(pip failed\\)"):
        logic.liverFromTotalSegmentator(ct)
    stand_in = installed_totalsegmentator(fail=True)
    with pytest.raises(InputError, match="TotalSegmentator failed.*choose Automatic"):
        logic.liverFromTotalSegmentator(ct)
    assert stand_in.calls[-1][0] == "process"
    assert count_nodes(scene) == before  # its half-made node removed, no output made
