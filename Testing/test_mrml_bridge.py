"""The MRML bridge against a real slicer-core scene: geometry, segments, .seg.nrrd, ROI, tables."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from LiverTumorSegLib.storage import images  # noqa: E402
from LiverTumorSegLib.slicer import mrml  # noqa: E402
from LiverTumorSegLib.errors import InputError  # noqa: E402
from LiverTumorSegLib.volume import Volume  # noqa: E402
from conftest import count_nodes  # noqa: E402


def rotation(ax_deg: float, az_deg: float) -> np.ndarray:
    a, b = np.radians(ax_deg), np.radians(az_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def oblique_ct() -> Volume:
    """Odd-sized, anisotropic, rotated CT with distinct values per voxel (catches axis swaps)."""
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, size=(7, 11, 13)).astype(np.int16)
    return Volume(array, spacing=(0.7, 0.9, 2.5), origin=(-31.0, 12.5, 80.0), direction=rotation(15, 30).ravel())


def blob_mask(shape, center, radius) -> np.ndarray:
    z, y, x = np.indices(shape)
    return (z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2 <= radius**2


def assert_same_geometry(a: Volume, b: Volume) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-5)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-4)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


# ---- volumes -------------------------------------------------------------------------------
def test_volume_round_trip_keeps_values_and_oblique_geometry(scene, oblique_ct):
    node = mrml.add_volume_node(scene, oblique_ct, "CT")
    back = mrml.volume_from_node(node)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, oblique_ct.array)
    assert_same_geometry(back, oblique_ct)
    # The node's IJKToRAS is the engine's own matrix.
    np.testing.assert_allclose(mrml.ijk_to_ras(node), oblique_ct.ijk_to_ras_matrix(), atol=1e-6)


def test_volume_written_by_slicer_storage_reads_back_in_the_same_place(scene, oblique_ct, tmp_path):
    """Slicer's own NRRD writer and SimpleITK agree with our RAS <-> LPS mapping."""
    node = mrml.add_volume_node(scene, oblique_ct, "CT")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tmp_path / "ct.nrrd"))
    assert storage.WriteData(node)
    read = Volume.from_sitk(sitk.ReadImage(str(tmp_path / "ct.nrrd")))
    np.testing.assert_array_equal(read.array, oblique_ct.array)
    assert_same_geometry(read, oblique_ct)


def test_volume_read_by_slicer_storage_matches_the_engine_reader(scene, oblique_ct, tmp_path):
    images.write_image(oblique_ct, tmp_path / "ct.nrrd")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tmp_path / "ct.nrrd"))
    assert storage.ReadData(node)
    from_node = mrml.volume_from_node(node)
    np.testing.assert_array_equal(from_node.array, oblique_ct.array)
    assert_same_geometry(from_node, images.read_image(tmp_path / "ct.nrrd"))


def test_parent_linear_transform_is_applied_to_world_geometry(scene, oblique_ct):
    node = mrml.add_volume_node(scene, oblique_ct, "CT")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = np.eye(4)
    matrix[:3, 3] = (10.0, -5.0, 2.0)  # RAS shift
    transform.SetMatrixTransformToParent(mrml._to_vtk(matrix))
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = mrml.volume_from_node(node)
    expected = np.asarray(oblique_ct.origin) + np.array([-10.0, 5.0, 2.0])  # LPS
    np.testing.assert_allclose(moved.origin, expected, atol=1e-6)


def test_missing_image_data_is_an_input_error(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no image data"):
        mrml.volume_from_node(node)


# ---- segments ------------------------------------------------------------------------------
def test_segment_written_then_exported_on_the_ct_grid(scene, oblique_ct):
    ct = mrml.add_volume_node(scene, oblique_ct, "CT")
    seg = mrml.new_segmentation_node(scene, ct, "tumors")
    mask = blob_mask(oblique_ct.shape, (3, 5, 6), 3)
    sid = mrml.write_segment(seg, mask, ct, name=images.TUMOR_SEGMENT.name, color=images.TUMOR_SEGMENT.color,
                             terminology=images.TUMOR_SEGMENT.terminology)
    segment = seg.GetSegmentation().GetSegment(sid)
    assert segment.GetName() == "Liver tumor"
    assert mrml.terminology(segment) == images.TUMOR_SEGMENT.terminology
    np.testing.assert_allclose(segment.GetColor(), images.TUMOR_SEGMENT.color, atol=1e-6)
    np.testing.assert_array_equal(mrml.segment_to_mask(seg, sid, ct), mask)
    # The temporary export node is gone again.
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0


def test_terminology_is_written_through_the_segment_tag(scene, oblique_ct):
    """vtkSegment.SetTerminology is Slicer 5.10+; the tag it stands for exists since 4.x."""
    ct = mrml.add_volume_node(scene, oblique_ct, "CT")
    seg = mrml.new_segmentation_node(scene, ct, "s")
    sid = mrml.write_segment(seg, blob_mask(oblique_ct.shape, (3, 5, 6), 2), ct, name="Liver",
                             terminology=images.LIVER_SEGMENT.terminology)
    segment = seg.GetSegmentation().GetSegment(sid)
    value = vtk_reference()
    assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value)
    assert str(value) == images.LIVER_SEGMENT.terminology
    if hasattr(segment, "GetTerminology"):  # 5.10+: the convenience getter reads the same tag
        assert segment.GetTerminology() == images.LIVER_SEGMENT.terminology


def vtk_reference():
    import vtk

    return vtk.reference("")


def test_export_leaves_no_node_behind(scene, oblique_ct):
    """ExportSegmentsToLabelmapNode adds a "<labelmap>_ColorTable" node; segment_to_mask removes it."""
    ct = mrml.add_volume_node(scene, oblique_ct, "CT")
    seg = mrml.new_segmentation_node(scene, ct, "s")
    sid = mrml.write_segment(seg, blob_mask(oblique_ct.shape, (3, 5, 6), 2), ct, name="Liver tumor")
    before = count_nodes(scene)
    for _ in range(3):
        mrml.segment_to_mask(seg, sid, ct)
    assert mrml.segment_was_edited(seg, sid, ct) is False  # exports again
    assert count_nodes(scene) == before
    names = [scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes())]
    assert not [n for n in names if n.endswith("_ColorTable")]


def test_conversion_rules_are_registered_once(scene, oblique_ct):
    def paths() -> int:
        found = slicer.vtkSegmentationConversionPaths()
        slicer.vtkSegmentationConverter().GetPossibleConversions("Binary labelmap", "Closed surface", found)
        return found.GetNumberOfPaths()

    mrml.ensure_conversion_rules()
    first = paths()
    assert first >= 1
    mrml.ensure_conversion_rules()
    mrml.new_segmentation_node(scene, mrml.add_volume_node(scene, oblique_ct, "CT"), "s")
    assert paths() == first


def test_replacing_one_segment_keeps_the_users_segment(scene, oblique_ct):
    ct = mrml.add_volume_node(scene, oblique_ct, "CT")
    seg = mrml.new_segmentation_node(scene, ct, "mixed")
    user_mask = blob_mask(oblique_ct.shape, (2, 3, 3), 2)
    ai_mask = blob_mask(oblique_ct.shape, (4, 7, 9), 2)
    user = mrml.write_segment(seg, user_mask, ct, name="mine")
    ai = mrml.write_segment(seg, ai_mask, ct, name="Liver tumor")
    new_ai = blob_mask(oblique_ct.shape, (3, 6, 8), 3)
    assert mrml.write_segment(seg, new_ai, ct, segment_id=ai) == ai
    np.testing.assert_array_equal(mrml.segment_to_mask(seg, ai, ct), new_ai)
    np.testing.assert_array_equal(mrml.segment_to_mask(seg, user, ct), user_mask)
    assert mrml.segment_ids(seg) == [user, ai]


def test_edit_detection(scene, oblique_ct):
    ct = mrml.add_volume_node(scene, oblique_ct, "CT")
    seg = mrml.new_segmentation_node(scene, ct, "s")
    mask = blob_mask(oblique_ct.shape, (3, 5, 6), 2)
    sid = mrml.write_segment(seg, mask, ct, name="Liver tumor")
    assert not mrml.segment_was_edited(seg, sid, ct)
    # The user paints one more voxel with Slicer's own API.
    edited = mask.copy()
    edited[0, 0, 0] = True
    image = mrml._oriented_image(edited, ct)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, seg, sid, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    assert mrml.segment_was_edited(seg, sid, ct)
    # A segment the user made (no checksum tag) is always the user's.
    seg.GetSegmentation().AddEmptySegment("hand", "hand made")
    assert mrml.segment_was_edited(seg, "hand", ct)


def test_segment_exported_onto_another_grid_is_resampled(scene, oblique_ct):
    """A liver drawn on a coarser copy of the CT still lands on the CT's voxels."""
    ct = mrml.add_volume_node(scene, oblique_ct, "CT")
    seg = mrml.new_segmentation_node(scene, ct, "liver")
    mask = np.zeros(oblique_ct.shape, bool)
    mask[2:6, 3:9, 4:11] = True
    sid = mrml.write_segment(seg, mask, ct, name="Liver")
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT copy")
    mrml.set_array_like(other, oblique_ct.array, ct)
    np.testing.assert_array_equal(mrml.segment_to_mask(seg, sid, other), mask)


def test_unknown_segment_is_an_input_error(scene, oblique_ct):
    ct = mrml.add_volume_node(scene, oblique_ct, "CT")
    seg = mrml.new_segmentation_node(scene, ct, "s")
    with pytest.raises(InputError, match="not in"):
        mrml.segment_to_mask(seg, "nope", ct)


def test_seg_nrrd_written_by_storage_node_reads_back(scene, oblique_ct, tmp_path):
    ct = mrml.add_volume_node(scene, oblique_ct, "CT")
    seg = mrml.new_segmentation_node(scene, ct, "tumors")
    mask = blob_mask(oblique_ct.shape, (3, 5, 6), 3)
    mask2 = blob_mask(oblique_ct.shape, (5, 2, 2), 1)
    sid = mrml.write_segment(seg, mask, ct, name="Liver tumor", color=images.TUMOR_SEGMENT.color,
                             terminology=images.TUMOR_SEGMENT.terminology)
    sid2 = mrml.write_segment(seg, mask2, ct, name="Liver", color=images.LIVER_SEGMENT.color,
                              terminology=images.LIVER_SEGMENT.terminology)
    path = tmp_path / "tumors.seg.nrrd"
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.WriteData(seg)

    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "loaded")
    reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(str(path))
    assert reader.ReadData(loaded)
    segment = loaded.GetSegmentation().GetSegment(sid)
    assert segment.GetName() == "Liver tumor"
    assert mrml.terminology(segment) == images.TUMOR_SEGMENT.terminology
    assert mrml.segment_tag(segment, mrml.CHECKSUM_TAG) == mrml.mask_checksum(mask)  # edit detection survives saving
    np.testing.assert_array_equal(mrml.segment_to_mask(loaded, sid, ct), mask)
    np.testing.assert_array_equal(mrml.segment_to_mask(loaded, sid2, ct), mask2)
    assert not mrml.segment_was_edited(loaded, sid, ct)

    # The engine's reader maps the same file by segment name onto the CT grid.
    labels, infos = images.read_segmentation(path)
    on_ct = images.read_labels(path, reference=oblique_ct)
    np.testing.assert_array_equal(on_ct.array == 2, mask)
    assert {info.name for info in infos} == {"Liver tumor", "Liver"}
    assert labels.array.any()


# ---- ROI -----------------------------------------------------------------------------------
def test_axis_aligned_roi_selects_the_voxel_box(scene):
    ct_volume = Volume(np.zeros((10, 20, 30), np.int16), spacing=(1.0, 1.0, 2.0))
    ct = mrml.add_volume_node(scene, ct_volume, "CT")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    # Voxel (i, j, k) sits at RAS (-i, -j, 2k). Box over i 5..14, j 2..7, k 3..6.
    roi.SetCenter(-9.5, -4.5, 9.0)
    roi.SetSize(10.0, 6.0, 8.0)
    mask = mrml.roi_to_mask(roi, ct)
    expected = np.zeros(ct_volume.shape, bool)
    expected[3:7, 2:8, 5:15] = True
    np.testing.assert_array_equal(mask, expected)


def test_rotated_roi(scene):
    ct = mrml.add_volume_node(scene, Volume(np.zeros((5, 40, 40), np.int16)), "CT")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenter(-20.0, -20.0, 2.0)
    roi.SetSize(30.0, 4.0, 10.0)
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = rotation(0, 45)
    object_to_node[:3, 3] = (-20.0, -20.0, 2.0)
    roi.SetAndObserveObjectToNodeMatrix(mrml._to_vtk(object_to_node))
    center = np.asarray(roi.GetObjectToWorldMatrix().MultiplyPoint((0, 0, 0, 1))[:3])
    mask = mrml.roi_to_mask(roi, ct)
    # A thin bar along the RAS diagonal: both ends of the diagonal in, the off-diagonal corners out.
    assert mask[2, 20, 20] and mask[2, 28, 28] and mask[2, 12, 12]
    assert not mask[2, 12, 28] and not mask[2, 28, 12]
    np.testing.assert_allclose(center, (-20.0, -20.0, 2.0), atol=1e-6)


def test_roi_outside_the_ct_is_an_input_error(scene):
    ct = mrml.add_volume_node(scene, Volume(np.zeros((5, 10, 10), np.int16)), "CT")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenter(500.0, 500.0, 500.0)
    roi.SetSize(10.0, 10.0, 10.0)
    with pytest.raises(InputError, match="does not overlap"):
        mrml.roi_to_mask(roi, ct)


# ---- tables and views ----------------------------------------------------------------------
def test_lesion_table_contents(scene):
    from LiverTumorSegLib.core.lesions import lesion_table

    ct_volume = Volume(np.full((20, 40, 40), 40, np.int16), spacing=(1.0, 1.0, 2.0), origin=(5.0, -3.0, 10.0))
    mask = blob_mask(ct_volume.shape, (10, 10, 10), 4) | blob_mask(ct_volume.shape, (10, 30, 30), 2)
    ct_volume.array[mask] = 90
    probability = np.where(mask, 0.8, 0.0).astype(np.float32)
    lesions = lesion_table(mask, ct_volume, probability)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "lesions")
    mrml.update_lesion_table(table, lesions)
    header, rows = mrml.table_rows(table)
    assert header == [name for name, _, _ in mrml.LESION_COLUMNS]
    assert len(rows) == 2
    assert [row[0] for row in rows] == [1, 2]
    assert rows[0][1] > rows[1][1]  # largest first
    assert rows[0][1] == pytest.approx(lesions[0].volume_ml)
    assert rows[0][3] == pytest.approx(90.0)
    assert rows[0][4] == pytest.approx(0.8, abs=1e-6)
    np.testing.assert_allclose(rows[0][5:8], lesions[0].centroid_ras, atol=1e-6)
    assert table.GetColumnUnitLabel("Volume") == "mL"
    # Updating with no lesions empties the table rather than leaving stale rows.
    mrml.update_lesion_table(table, [])
    assert mrml.table_rows(table)[1] == []


def test_jump_slices_centres_slice_views(scene):
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    mrml.jump_slices_to(scene, (12.0, -7.0, 33.0))
    slice_to_ras = red.GetSliceToRAS()
    np.testing.assert_allclose([slice_to_ras.GetElement(i, 3) for i in range(3)], (12.0, -7.0, 33.0), atol=1e-6)


def test_foreground_is_set_in_every_slice_view(scene, oblique_ct):
    node = mrml.add_volume_node(scene, oblique_ct, "prob")
    composites = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    mrml.show_as_foreground(scene, node, opacity=0.3)
    assert all(c.GetForegroundVolumeID() == node.GetID() for c in composites)
    assert all(c.GetForegroundOpacity() == pytest.approx(0.3) for c in composites)
