"""The Logic's file verbs (what a front end without Slicer's Add Data and Save uses: the web app):
loadVolume / loadLiverSegmentation / loadCase read through the engine's readers, so bad files fail
with the command line's own message; exportResult writes what `livertumorseg segment` writes, from
the tumor segment as it is now (corrections included). Real slicer-core scene, real files."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from LiverTumorSegLib.storage import images  # noqa: E402
from LiverTumorSegLib.slicer import mrml  # noqa: E402
from LiverTumorSegLib.errors import InputError  # noqa: E402
from LiverTumorSegLib.slicer.logic import LiverTumorSegLogic  # noqa: E402


@pytest.fixture
def logic(tmp_path):
    return LiverTumorSegLogic(libraryPath=tmp_path / "library", scene=slicer.vtkMRMLScene())


def cli_error(path, cwd) -> str:
    """The one line `livertumorseg segment` prints for a bad CT, without its 'error: ' prefix."""
    run = subprocess.run([sys.executable, "-m", "LiverTumorSegLib", "segment", str(path), "--out", "out.seg.nrrd"],
                         capture_output=True, text=True, cwd=cwd)
    assert run.returncode == 2, run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line[len("error: "):]


def test_load_ct_and_liver_on_its_grid(logic, totalseg_dir):
    ct = logic.loadVolume(totalseg_dir / "example_ct_sm.nii.gz")
    assert ct.GetName() == "example_ct_sm"
    image = mrml.volume_from_node(ct)
    reference = images.read_image(totalseg_dir / "example_ct_sm.nii.gz", keep_integer=True)
    assert image.shape == reference.shape and np.array_equal(image.array, reference.array)
    node, segmentId = logic.loadLiverSegmentation(totalseg_dir / "example_ct_sm_liver.nii.gz", ct)
    liver = mrml.segment_to_mask(node, segmentId, ct)
    expected = images.read_liver_mask(totalseg_dir / "example_ct_sm_liver.nii.gz", reference)
    assert np.array_equal(liver, expected) and liver.any()
    assert node.GetSegmentation().GetSegment(segmentId).GetName() == "Liver"


@pytest.mark.parametrize("kind", ["png", "2d"])
def test_bad_ct_fails_with_the_command_line_message(logic, tmp_path, kind):
    if kind == "png":
        path = tmp_path / "photo.png"
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16, 3), np.uint8), isVector=True), str(path))
    else:
        path = tmp_path / "slice.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.int16)), str(path))
    expected = cli_error(path.name, tmp_path)
    with pytest.raises(InputError) as raised:
        logic.loadVolume(path)
    assert str(raised.value).replace(str(path), path.name) == expected
    assert logic.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


def test_export_writes_the_corrected_segment(logic, totalseg_dir, tmp_path):
    ct = logic.loadVolume(totalseg_dir / "example_ct_sm.nii.gz")
    liverNode, liverId = logic.loadLiverSegmentation(totalseg_dir / "example_ct_sm_liver.nii.gz", ct)
    segmentation, _ = logic.segment(ct, liverNode, liverId)
    tumorId = logic.tumorSegmentId(segmentation)
    mask = mrml.segment_to_mask(segmentation, tumorId, ct)
    liver = mrml.segment_to_mask(liverNode, liverId, ct)
    z, y, x = (int(v[len(v) // 2]) for v in np.nonzero(liver & ~mask))
    mask[z, y, x] = True  # a correction: one voxel painted
    mrml.write_segment(segmentation, mask, ct, segment_id=tumorId)
    paths = logic.exportResult(segmentation, tmp_path / "out", "case")
    labelmap = images.read_labels(paths["labelmap"], mrml.volume_from_node(ct)).array
    assert np.array_equal(labelmap > 0, mask)
    volume, segments = images.read_segmentation(paths["segmentation"])
    assert [s.name for s in segments] == ["Liver tumor"] and np.array_equal(volume.array > 0, mask)
    with open(paths["lesions"], newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][0] == "id" and "volume_ml" in rows[0] and len(rows) >= 2  # the painted voxel is a lesion at least
    empty = mrml.new_segmentation_node(logic.scene, ct, "nothing")
    with pytest.raises(InputError, match="run Segment first"):
        logic.exportResult(empty, tmp_path / "none")
    assert "dicom_seg" not in paths  # a NIfTI CT: no DICOM SEG


def test_export_of_a_ct_loaded_from_dicom_adds_a_dicom_seg(logic, totalseg_dir, tmp_path):
    """The series' headers are kept when it is loaded, so the SEG can still be written after the
    upload folder is gone (as the web app removes it)."""
    import shutil

    import pydicom

    from LiverTumorSegLib.data.dicom_series import write_ct_series

    series = tmp_path / "upload" / "ct"
    write_ct_series(images.read_image(totalseg_dir / "example_ct_sm.nii.gz", keep_integer=True), series, name="logic")
    ct = logic.loadVolume(series)
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in series.iterdir()}
    shutil.rmtree(tmp_path / "upload")
    liverNode, liverId = logic.loadLiverSegmentation(totalseg_dir / "example_ct_sm_liver.nii.gz", ct)
    segmentation, _ = logic.segment(ct, liverNode, liverId)
    mask = mrml.segment_to_mask(segmentation, logic.tumorSegmentId(segmentation), ct)
    paths = logic.exportResult(segmentation, tmp_path / "out", "case")
    seg = pydicom.dcmread(paths["dicom_seg"])
    assert {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == uids
    read_back = images.read_labels_kind(paths["dicom_seg"], reference=mrml.volume_from_node(ct)).volume.array == 2
    assert mask.any() and np.array_equal(read_back, mask)
    assert logic.dicomSource(logic.loadVolume(totalseg_dir / "example_ct_dicom")) is None  # UIDs stripped: no SEG


def test_load_case_from_the_library(logic, totalseg_dir):
    ct = logic.loadVolume(totalseg_dir / "example_ct_sm.nii.gz")
    liverNode, liverId = logic.loadLiverSegmentation(totalseg_dir / "example_ct_sm_liver.nii.gz", ct)
    segmentation, _ = logic.segment(ct, liverNode, liverId)
    caseId = logic.addCase(ct, liverNode, liverId, segmentation, logic.tumorSegmentId(segmentation))
    ct2, liver2, liver2Id = logic.loadCase(caseId)
    assert np.array_equal(mrml.volume_from_node(ct2).array, mrml.volume_from_node(ct).array)
    assert np.array_equal(mrml.segment_to_mask(liver2, liver2Id, ct2), mrml.segment_to_mask(liverNode, liverId, ct))


def test_lesion_rows_for_a_front_end_table(logic, totalseg_dir):
    assert logic.lesionRows(None) == ([], [])
    ct = logic.loadVolume(totalseg_dir / "example_ct_sm.nii.gz")
    liverNode, liverId = logic.loadLiverSegmentation(totalseg_dir / "example_ct_sm_liver.nii.gz", ct)
    segmentation, table = logic.segment(ct, liverNode, liverId)
    header, rows = logic.lesionRows(table)
    assert header[:2] == ["Lesion", "Volume"] and "Centroid R" in header
    assert len(rows) == table.GetNumberOfRows()


def test_remove_nodes_takes_a_result_with_its_map_and_table(logic, totalseg_dir):
    ct = logic.loadVolume(totalseg_dir / "example_ct_sm.nii.gz")
    liverNode, liverId = logic.loadLiverSegmentation(totalseg_dir / "example_ct_sm_liver.nii.gz", ct)
    segmentation, table = logic.segment(ct, liverNode, liverId)
    probability = logic.probabilityNode(segmentation)
    logic.removeNodes(segmentation, None, liverNode)
    for node in (segmentation, table, probability, liverNode):
        assert node.GetScene() is None
    assert ct.GetScene() is logic.scene
    logic.removeNodes(segmentation, ct)  # already removed: skipped
    assert logic.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


def test_background_segment_takes_the_threads_it_is_given(logic, totalseg_dir):
    import os

    ct = logic.loadVolume(totalseg_dir / "example_ct_sm.nii.gz")
    liverNode, liverId = logic.loadLiverSegmentation(totalseg_dir / "example_ct_sm_liver.nii.gz", ct)
    for given, expected in ((None, max(1, (os.cpu_count() or 2) - 1)), (2, 2), (0, 1)):
        job = logic.startSegment(ct, liverNode, liverId, threads=given)
        try:
            assert int(job.command[job.command.index("--threads") + 1]) == expected
        finally:
            job.stop()
    assert not logic.runningJobs()
