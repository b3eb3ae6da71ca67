"""storage/images.py against real files: DICOM and NIfTI fixtures, Slicer's own reader and writer (slicer-core)."""

from __future__ import annotations

import gzip
import shutil
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from LiverTumorSegLib.storage import images
from LiverTumorSegLib.errors import InputError
from LiverTumorSegLib.volume import Volume


def oblique_volume(array: np.ndarray) -> Volume:
    """A volume with a rotated (oblique) direction matrix and anisotropic spacing."""
    rotation = Rotation.from_euler("xyz", [12.0, -25.0, 33.0], degrees=True).as_matrix()
    return Volume(array, (0.7, 0.8, 2.5), (-123.456, 78.9, -300.125), tuple(rotation.ravel()))


def two_segment_labels() -> Volume:
    """0 background, 1 liver block, 2 tumor block inside it, on an oblique grid (z, y, x) = (6, 8, 10)."""
    labels = np.zeros((6, 8, 10), np.uint8)
    labels[1:5, 1:7, 1:9] = 1
    labels[2:4, 3:5, 4:7] = 2
    return oblique_volume(labels)


def assert_same_geometry(a: Volume, b: Volume, tol: float = 1e-12) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=0, atol=tol)
    np.testing.assert_allclose(a.origin, b.origin, rtol=0, atol=tol)
    np.testing.assert_allclose(a.direction, b.direction, rtol=0, atol=tol)


@pytest.fixture(scope="module")
def dicom_ct(totalseg_dir) -> Volume:
    return images.read_image(totalseg_dir / "example_ct_dicom")


# ---- reading real CT --------------------------------------------------------------------------
def test_dicom_series_is_read_in_hu(dicom_ct):
    assert dicom_ct.shape == (20, 512, 512)
    assert dicom_ct.array.dtype == np.float32
    np.testing.assert_allclose(dicom_ct.spacing, (0.9765625, 0.9765625, 2.0))
    assert dicom_ct.array.min() == -1024  # air outside the field of view, in HU after rescale


def test_flipped_liver_mask_is_resampled_into_place(dicom_ct, totalseg_dir):
    path = totalseg_dir / "example_ct_dicom_liver.nii.gz"
    liver = images.read_liver_mask(path, dicom_ct)
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(bool)
    # The file's y axis points the other way (direction[4] = -1) over the same voxel centres, so the
    # mask on the CT grid is the stored array flipped along y, voxel for voxel.
    np.testing.assert_array_equal(liver, stored[:, ::-1, :])
    assert 40 < dicom_ct.array[liver].mean() < 200  # liver parenchyma HU
    assert dicom_ct.array[stored].mean() < 0  # the unflipped array would sit on fat and air


def test_same_grid_mask_is_returned_as_is(totalseg_dir):
    ct = images.read_image(totalseg_dir / "example_ct_sm.nii.gz")
    labels = images.read_labels(totalseg_dir / "example_ct_sm_liver.nii.gz", reference=ct)
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(totalseg_dir / "example_ct_sm_liver.nii.gz")))
    assert labels.same_grid(ct) and labels.array.dtype == np.uint8
    np.testing.assert_array_equal(labels.array, stored)
    assert 40 < ct.array[labels.array > 0].mean() < 200


def test_mask_on_coarser_grid_is_resampled_onto_the_ct():
    ct = Volume(np.zeros((20, 40, 40), np.float32), (1.0, 1.0, 2.0), (-20.0, -20.0, 0.0))
    coarse = np.zeros((10, 20, 20), np.uint8)
    coarse[4:6, 8:12, 8:12] = 2  # 2x2 mm in-plane voxels, 4 mm slices
    # Voxel (i) of the coarse grid covers CT voxels 2i, 2i+1: origin shifted by half a fine voxel.
    mask = Volume(coarse, (2.0, 2.0, 4.0), (-19.5, -19.5, 1.0))
    out = images.labels_on_grid(mask, ct)
    expected = np.zeros(ct.shape, np.uint8)
    expected[8:12, 16:24, 16:24] = 2
    np.testing.assert_array_equal(out.array, expected)


# ---- writing and reading back -----------------------------------------------------------------
@pytest.mark.parametrize("suffix, tol", [(".nrrd", 1e-12), (".mha", 0.0), (".nii.gz", 1e-5)])
def test_oblique_ct_round_trip_keeps_geometry(tmp_path, suffix, tol):
    hu = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) * 7 - 1000
    volume = oblique_volume(hu)
    path = tmp_path / f"ct{suffix}"
    images.write_image(volume, path)
    back = images.read_image(path)
    assert_same_geometry(back, volume, tol)
    np.testing.assert_array_equal(back.array, hu)
    assert sitk.ReadImage(str(path)).GetPixelID() == sitk.sitkInt16  # integral HU stored as int16
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_fractional_values_are_stored_as_float(tmp_path):
    hu = np.linspace(-1000.25, 500.5, 60, dtype=np.float32).reshape(3, 4, 5)
    images.write_image(oblique_volume(hu), tmp_path / "ct.nrrd")
    assert sitk.ReadImage(str(tmp_path / "ct.nrrd")).GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(images.read_image(tmp_path / "ct.nrrd").array, hu)


def test_labelmap_is_compressed_uint8(tmp_path):
    labels = two_segment_labels()
    images.write_labelmap(labels, tmp_path / "label.nrrd")
    header = (tmp_path / "label.nrrd").read_bytes().split(b"\n\n")[0].decode("latin-1")
    assert "type: unsigned char" in header and "encoding: gzip" in header
    back = images.read_labels(tmp_path / "label.nrrd", reference=labels)
    np.testing.assert_array_equal(back.array, labels.array)


def test_segmentation_round_trip(tmp_path):
    labels = two_segment_labels()
    path = tmp_path / "out.seg.nrrd"
    images.write_segmentation(path, labels, images.CASE_SEGMENTS)
    back, segments = images.read_segmentation(path)
    assert_same_geometry(back, labels, 1e-12)
    np.testing.assert_array_equal(back.array, labels.array)
    assert segments == list(images.CASE_SEGMENTS)
    np.testing.assert_array_equal(images.read_labels(path).array, labels.array)


def test_segmentation_header_is_what_slicer_writes(tmp_path):
    path = tmp_path / "out.seg.nrrd"
    images.write_segmentation(path, two_segment_labels(), images.CASE_SEGMENTS)
    header = sitk.ImageFileReader()
    header.SetFileName(str(path))
    header.ReadImageInformation()
    meta = {key: header.GetMetaData(key) for key in header.GetMetaDataKeys()}
    assert meta["NRRD_space"] == "left-posterior-superior"
    assert meta["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert meta["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    assert meta["Segment1_Name"] == "Liver tumor" and meta["Segment1_LabelValue"] == "2"
    assert meta["Segment1_Layer"] == "0"
    assert meta["Segment1_Extent"] == "4 6 3 4 2 3"  # x 4..6, y 3..4, z 2..3
    assert meta["Segment0_Tags"] == f"TerminologyEntry:{images.LIVER_TERMINOLOGY}|"
    assert "~SCT^4147007^Mass~" in meta["Segment1_Tags"] and "SCT^10200004^Liver" in meta["Segment1_Tags"]


def _slicer_read(path):
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node.GetSegmentation()


def _oriented_image_array(image) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(array z, y, x, 4x4 IJK->RAS, extent) of a vtkOrientedImageData."""
    import vtk
    from vtk.util import numpy_support

    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(image.GetDimensions()[::-1])
    return array, ijk_to_ras, tuple(image.GetExtent())


def test_slicer_opens_our_segmentation_with_right_geometry(tmp_path):
    labels = two_segment_labels()
    path = tmp_path / "out.seg.nrrd"
    images.write_segmentation(path, labels, images.CASE_SEGMENTS)
    segmentation = _slicer_read(path)
    assert segmentation.GetNumberOfSegments() == 2
    for expected in images.CASE_SEGMENTS:
        segment = segmentation.GetSegment(expected.id)
        assert segment.GetName() == expected.name and segment.GetLabelValue() == expected.value
        np.testing.assert_allclose(segment.GetColor(), expected.color, atol=1e-5)
        assert segment.GetTerminology() == expected.terminology
        array, ijk_to_ras, extent = _oriented_image_array(segment.GetRepresentation("Binary labelmap"))
        np.testing.assert_allclose(ijk_to_ras, labels.ijk_to_ras_matrix(), atol=1e-9)
        x0, x1, y0, y1, z0, z1 = extent  # Slicer crops the shared layer to the segments' extent
        np.testing.assert_array_equal(array, labels.array[z0 : z1 + 1, y0 : y1 + 1, x0 : x1 + 1])
    geometry = segmentation.GetConversionParameter("Reference image geometry")
    numbers = [float(v) for v in geometry.strip(";").split(";")]
    np.testing.assert_allclose(np.reshape(numbers[:16], (4, 4)), labels.ijk_to_ras_matrix(), atol=1e-12)
    assert numbers[16:] == [0, 9, 0, 7, 0, 5]


def _slicer_write(path, reference: Volume, masks: dict[str, np.ndarray]) -> None:
    """Write masks (z, y, x) on `reference`'s grid as a .seg.nrrd with Slicer's own storage node."""
    slicer = pytest.importorskip("slicer")
    import vtk
    from vtk.util import numpy_support

    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, reference.ijk_to_ras_matrix()[r, c])
    for name, mask in masks.items():
        image = slicer.vtkOrientedImageData()
        image.SetDimensions(*reference.shape[::-1])
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        image.SetImageToWorldMatrix(matrix)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.astype(np.uint8).ravel()
        image.Modified()
        segment = slicer.vtkSegment()
        segment.SetName(name)
        segment.AddRepresentation("Binary labelmap", image)
        node.GetSegmentation().AddSegment(segment, name.replace(" ", "_"))
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    assert storage.WriteData(node) == 1


def test_reads_overlapping_layers_slicer_writes(tmp_path):
    reference = two_segment_labels()
    liver = reference.array >= 1
    tumor = reference.array == 2
    path = tmp_path / "slicer.seg.nrrd"
    _slicer_write(path, reference.with_array(np.zeros(reference.shape, np.float32)), {"Liver": liver, "Tumor 1": tumor})
    assert sitk.ReadImage(str(path)).GetNumberOfComponentsPerPixel() == 2  # overlapping -> two layers
    ct = reference.with_array(np.zeros(reference.shape, np.float32))
    labels = images.read_labels(path, reference=ct)  # Slicer crops to the segments' extent: placed back here
    np.testing.assert_array_equal(labels.array, reference.array)
    _, segments = images.read_segmentation(path)
    assert [s.name for s in segments] == ["Liver", "Tumor 1"] and [s.value for s in segments] == [1, 2]


def test_segment_names_map_to_liver_and_tumor(tmp_path):
    array = np.zeros((4, 6, 6), np.uint8)
    array[0] = 3
    array[1] = 5
    array[2, :3] = 7
    array[2, 3:] = 9
    grid = Volume(array, (1.0, 1.0, 2.0))
    segments = [
        images.SegmentInfo(3, "Vessels"),
        images.SegmentInfo(5, "liver parenchyma"),
        images.SegmentInfo(7, "Tumour A"),
        images.SegmentInfo(9, "Segment_9", terminology=images.TUMOR_TERMINOLOGY),  # found by terminology type
    ]
    images.write_segmentation(tmp_path / "named.seg.nrrd", grid, segments)
    labels = images.read_labels(tmp_path / "named.seg.nrrd").array
    np.testing.assert_array_equal(labels[:, 0, 0], [0, 1, 2, 0])
    np.testing.assert_array_equal(labels[2, 5, 0], 2)


def test_legacy_one_volume_per_segment_4d_form(tmp_path):
    liver = np.zeros((3, 4, 5), np.uint8)
    liver[:, 1:3, 1:4] = 1
    tumor = np.zeros_like(liver)
    tumor[1, 2, 2] = 1
    image = sitk.JoinSeries([sitk.GetImageFromArray(liver), sitk.GetImageFromArray(tumor)])
    for key, value in {"Segmentation_Extent": "0 4 0 3 0 2", "Segment0_ID": "a", "Segment0_Name": "Liver",
                       "Segment1_ID": "b", "Segment1_Name": "Liver lesion"}.items():
        image.SetMetaData(key, value)
    sitk.WriteImage(image, str(tmp_path / "old.seg.nrrd"))
    labels = images.read_labels(tmp_path / "old.seg.nrrd").array
    assert labels.shape == (3, 4, 5)
    np.testing.assert_array_equal(labels, liver + tumor)


def test_dicom_folder_with_two_series_uses_the_longest(tmp_path, totalseg_dir):
    folder = tmp_path / "patient" / "study"
    shutil.copytree(totalseg_dir / "example_ct_dicom", folder)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1.999"
    for k in range(3):  # a 3-slice scout series beside the 20-slice CT
        image = sitk.GetImageFromArray(np.full((16, 16), -1000, np.int16))
        for tag, value in {"0020|000e": uid, "0020|000d": uid + ".0", "0008|0018": f"{uid}.{k + 1}",
                           "0008|0060": "CT", "0020|0032": f"0\\0\\{3.0 * k}", "0020|0037": "1\\0\\0\\0\\1\\0",
                           "0020|0013": str(k + 1)}.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"scout{k}.dcm"))
        writer.Execute(image)
    with pytest.warns(UserWarning, match="2 DICOM series"):
        ct = images.read_image(tmp_path / "patient")  # series found in a sub-folder
    assert ct.shape == (20, 512, 512)


# ---- bad input -------------------------------------------------------------------------------
def _message(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message  # one line for the command line and message boxes
    return message


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist") as excinfo:
        images.read_image(tmp_path / "nothing.nrrd")
    _message(excinfo)


def test_unreadable_file(tmp_path):
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not an image at all"))
    with pytest.raises(InputError, match="cannot read") as excinfo:
        images.read_image(tmp_path / "junk.nii.gz")
    _message(excinfo)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM series"):
        images.read_image(tmp_path)


def test_2d_and_4d_images_are_refused(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.int16)), str(tmp_path / "slice.nrrd"))
    with pytest.raises(InputError, match="not a 3D volume"):
        images.read_image(tmp_path / "slice.nrrd")
    phase = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))
    sitk.WriteImage(sitk.JoinSeries([phase, phase]), str(tmp_path / "phases.nii.gz"))
    with pytest.raises(InputError, match="not a 3D volume"):
        images.read_image(tmp_path / "phases.nii.gz")


def test_nan_voxels_are_refused(tmp_path):
    array = np.full((3, 4, 5), -100.0, np.float32)
    array[1, 2, 3] = np.nan
    array[0, 0, 0] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "nan.nrrd"))
    with pytest.raises(InputError, match="2 NaN or infinite voxels"):
        images.read_image(tmp_path / "nan.nrrd")


def test_label_maps_are_refused_for_fractions_and_range_whatever_their_type(tmp_path):
    """Integer files skip the rounding check (slow on a big array) but not the range check;
    float files holding whole numbers are label maps, ones holding fractions are not."""
    def saved(array, name):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / name))
        return tmp_path / name

    base = np.zeros((3, 4, 5))
    base[1, 1:3, 1:4] = 2
    for dtype in (np.uint8, np.int16, np.float32):
        np.testing.assert_array_equal(images.read_labels(saved(base.astype(dtype), "ok.nrrd")).array, base)
    fraction = base.astype(np.float32)
    fraction[1, 1, 1] = 1.5
    negative = base.astype(np.int16)
    negative[0, 0, 0] = -1
    wide = base.astype(np.int32)
    wide[0, 0, 0] = 300
    for array, values in ((fraction, "0..2"), (negative, "-1..2"), (wide, "0..300")):
        with pytest.raises(InputError, match=f"not a label map \\(values {values}\\)"):
            images.read_labels(saved(array, "bad.nrrd"))


def test_segmentation_given_as_ct_is_refused(tmp_path):
    images.write_segmentation(tmp_path / "a.seg.nrrd", two_segment_labels(), images.CASE_SEGMENTS)
    shutil.copy(tmp_path / "a.seg.nrrd", tmp_path / "renamed.nrrd")
    for name in ("a.seg.nrrd", "renamed.nrrd"):
        with pytest.raises(InputError, match="segmentation, not a CT"):
            images.read_image(tmp_path / name)
    assert images.is_segmentation_file(tmp_path / "renamed.nrrd")


def test_empty_liver_mask_is_refused(tmp_path, totalseg_dir):
    ct = images.read_image(totalseg_dir / "example_ct_sm.nii.gz")
    images.write_labelmap(ct.with_array(np.zeros(ct.shape, np.uint8)), tmp_path / "empty.nii.gz")
    with pytest.raises(InputError, match="empty"):
        images.read_liver_mask(tmp_path / "empty.nii.gz", ct)


def test_empty_segmentation_saved_by_slicer_is_an_empty_mask(tmp_path):
    ct = two_segment_labels()
    _slicer_write(tmp_path / "empty.seg.nrrd", ct, {"Liver": np.zeros(ct.shape, bool)})  # Slicer stores 1 voxel
    with pytest.raises(InputError, match="is empty on the CT grid"):
        images.read_liver_mask(tmp_path / "empty.seg.nrrd", ct.with_array(np.zeros(ct.shape, np.float32)))


def test_mask_from_another_scan_is_refused(tmp_path, totalseg_dir):
    ct = images.read_image(totalseg_dir / "example_ct_sm.nii.gz")
    stored = sitk.ReadImage(str(totalseg_dir / "example_ct_sm_liver.nii.gz"))
    stored.SetOrigin((0.0, 0.0, 0.0))  # geometry lost, as when a mask is saved from a bare array
    sitk.WriteImage(stored, str(tmp_path / "liver.nii.gz"))
    with pytest.raises(InputError, match="not on this CT's physical space") as excinfo:
        images.read_liver_mask(tmp_path / "liver.nii.gz", ct)
    message = _message(excinfo)
    assert "122x101x30" in message and "export the mask from the same CT" in message


def test_eight_bit_image_warns(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 4, 5), 200, np.uint8)), str(tmp_path / "png_like.nrrd"))
    with pytest.warns(UserWarning, match="8-bit"):
        images.read_image(tmp_path / "png_like.nrrd")


def test_real_ct_and_a_liver_crop_do_not_warn_but_raw_scanner_values_do(totalseg_dir, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ct = images.read_image(totalseg_dir / "example_ct_sm.nii.gz")
        # Cropped to soft tissue: no air, no negative values, still HU.
        crop = np.clip(ct.array, 40, 160).astype(np.int16)
        sitk.WriteImage(sitk.GetImageFromArray(crop), str(tmp_path / "liver_crop.nrrd"))
        images.read_image(tmp_path / "liver_crop.nrrd")
    raw = (np.clip(ct.array, -1024, 3000) + 1024).astype(np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(raw), str(tmp_path / "raw.nrrd"))
    with pytest.warns(UserWarning, match="raw scanner values"):
        images.read_image(tmp_path / "raw.nrrd")


def test_bad_output_names_and_values(tmp_path):
    labels = two_segment_labels()
    with pytest.raises(InputError, match="use one of"):
        images.write_image(labels, tmp_path / "ct.png")
    with pytest.raises(InputError, match=".seg.nrrd"):
        images.write_segmentation(tmp_path / "seg.nrrd", labels, images.CASE_SEGMENTS)
    with pytest.raises(InputError, match="distinct"):
        images.write_segmentation(tmp_path / "x.seg.nrrd", labels, [images.LIVER_SEGMENT, images.TUMOR_SEGMENT])
    with pytest.raises(InputError, match="0..255"):
        images.write_labelmap(labels.with_array(labels.array.astype(np.float32) + 0.5), tmp_path / "l.nrrd")


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16, np.float64])
def test_raw_nrrd_is_read_voxel_for_voxel_as_simpleitk_reads_it(tmp_path, dtype):
    """The fast reader the Logic uses for its background job's result files gives exactly
    SimpleITK's array, whatever the axes' spacing and direction."""
    rng = np.random.default_rng(1)
    array = (rng.random((7, 5, 6)) * 200 - 50).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetDirection(Rotation.from_euler("z", 30, degrees=True).as_matrix().ravel().tolist())
    path = tmp_path / "map.nrrd"
    sitk.WriteImage(image, str(path), False)
    got = images.read_raw_nrrd(path)
    assert got is not None and got.dtype == sitk.GetArrayFromImage(sitk.ReadImage(str(path))).dtype
    np.testing.assert_array_equal(got, sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


def test_raw_nrrd_reader_declines_what_it_cannot_read_exactly(tmp_path):
    """Compressed, truncated, 2D or non-NRRD files give None (the caller then uses SimpleITK)."""
    array = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    compressed, truncated, flat, nifti = (tmp_path / n for n in ("c.nrrd", "t.nrrd", "f.nrrd", "n.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(array), str(compressed), True)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(truncated), False)
    truncated.write_bytes(truncated.read_bytes()[:-4])
    sitk.WriteImage(sitk.GetImageFromArray(array[0]), str(flat), False)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(nifti))
    assert [images.read_raw_nrrd(p) for p in (compressed, truncated, flat, nifti)] == [None] * 4


def test_a_cropped_volume_stays_where_it_was_in_space():
    """Volume.cropped: every voxel of the part keeps its physical (LPS) position, on an oblique grid,
    whatever the slices' starts (none, positive, negative)."""
    from LiverTumorSegLib.volume import Volume

    direction = Rotation.from_euler("xyz", [10, -20, 30], degrees=True).as_matrix().ravel()
    whole = Volume(np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8), (0.7, 0.8, 2.5), (-100.0, 20.0, 5.0), direction)
    part = whole.cropped(np.s_[1:5, :, -5:-1])
    np.testing.assert_array_equal(part.array, whole.array[1:5, :, 3:7])
    assert part.spacing == whole.spacing and part.direction == whole.direction
    corners = np.array([[0, 0, 0], [3, 6, 3], [2, 1, 0]])
    np.testing.assert_allclose(part.index_to_lps(corners), whole.index_to_lps(corners + [1, 0, 3]), atol=1e-9)
