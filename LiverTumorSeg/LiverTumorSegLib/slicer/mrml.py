"""MRML bridge: Slicer nodes <-> engine arrays and `Volume`s.

Only MRML classes and `vtkSlicerSegmentationsModuleLogic` are used, so the same code runs inside
3D Slicer and under `slicer-core` (the headless MRML wheel the tests use). `slicer` and `vtk` are
imported inside the functions: importing this module never needs them.

Conventions: arrays are (z, y, x); a node's IJKToRAS matrix maps (i, j, k) = (x, y, z) indices to
RAS mm. The engine `Volume` built here carries the *world* geometry (the node's linear parent
transforms applied), so lesion centroids come out in the RAS the slice views use. Outputs are
written on the CT node's own grid and placed under the CT's parent transform, which keeps them
aligned with the CT whatever that transform is.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import InputError
from ..volume import Volume

# Node reference roles and attributes the Logic puts on its output segmentation node.
PROBABILITY_ROLE = "LiverTumorSeg.Probability"
TABLE_ROLE = "LiverTumorSeg.LesionTable"
CT_ROLE = "LiverTumorSeg.CT"
# Segment tag holding the checksum of the mask the Logic last wrote into that segment: a
# segment whose content no longer matches it was edited by the user.
CHECKSUM_TAG = "LiverTumorSeg.Checksum"

# Columns of the lesion table node: (name, unit, description).
LESION_COLUMNS = (
    ("Lesion", "", "lesion number, largest first"),
    ("Volume", "mL", "lesion volume"),
    ("Longest axial diameter", "mm", "largest in-plane diameter over the lesion's axial slices"),
    ("Mean HU", "HU", "mean CT value inside the lesion"),
    ("Mean probability", "", "mean network tumor probability inside the lesion"),
    ("Centroid R", "mm", "lesion centre, RAS"),
    ("Centroid A", "mm", "lesion centre, RAS"),
    ("Centroid S", "mm", "lesion centre, RAS"),
)

_VTK_TYPES = {
    np.dtype(np.uint8): "VTK_UNSIGNED_CHAR",
    np.dtype(np.int8): "VTK_SIGNED_CHAR",
    np.dtype(np.int16): "VTK_SHORT",
    np.dtype(np.uint16): "VTK_UNSIGNED_SHORT",
    np.dtype(np.int32): "VTK_INT",
    np.dtype(np.uint32): "VTK_UNSIGNED_INT",
    np.dtype(np.float32): "VTK_FLOAT",
    np.dtype(np.float64): "VTK_DOUBLE",
}


# ---- matrices ------------------------------------------------------------------------------
def _to_numpy(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _to_vtk(matrix: np.ndarray):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(matrix[r, c]))
    return m


def node_to_world(node) -> np.ndarray:
    """4x4 node -> world (RAS) matrix of the node's parent transforms; identity when none.

    Non-linear transforms cannot be expressed on a voxel grid: the user must harden them first.
    """
    transform = node.GetParentTransformNode()
    if transform is None:
        return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        raise InputError(
            f"'{node.GetName()}' is under a non-linear transform; harden the transform "
            "(Data module, right-click > Harden transform) and try again"
        )
    import vtk

    m = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(m)
    return _to_numpy(m)


def ijk_to_ras(volume_node) -> np.ndarray:
    """The node's own 4x4 IJK -> RAS matrix (parent transforms not applied)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return _to_numpy(m)


def ijk_to_world(volume_node) -> np.ndarray:
    """4x4 IJK -> world RAS, parent transforms applied; accounts for a non-zero image extent start."""
    m = node_to_world(volume_node) @ ijk_to_ras(volume_node)
    image = volume_node.GetImageData()
    if image is not None:
        e = image.GetExtent()
        shift = np.eye(4)
        shift[:3, 3] = (e[0], e[2], e[4])
        m = m @ shift
    return m


# ---- volumes -------------------------------------------------------------------------------
def _image_array(image) -> np.ndarray:
    """vtkImageData scalars as a (z, y, x) numpy array (a copy)."""
    from vtk.util import numpy_support

    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        raise InputError("the volume has no voxel values; load the image again")
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(
            f"the volume has {scalars.GetNumberOfComponents()} components per voxel; "
            "a CT has one (convert colour or vector volumes to scalar first)"
        )
    nx, ny, nz = image.GetDimensions()
    return numpy_support.vtk_to_numpy(scalars).reshape(nz, ny, nx).copy()


def _make_image(array: np.ndarray, image_class=None):
    """A vtkImageData (or `image_class` instance) holding a deep copy of a (z, y, x) array."""
    import vtk
    from vtk.util import numpy_support

    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype not in _VTK_TYPES:
        array = array.astype(np.float32)
    if array.ndim != 3:
        raise InputError(f"expected a 3D (z, y, x) array, got shape {array.shape}")
    image = (image_class or vtk.vtkImageData)()
    nz, ny, nx = array.shape
    image.SetDimensions(nx, ny, nz)
    vtk_type = getattr(vtk, _VTK_TYPES[array.dtype])
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=1, array_type=vtk_type)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


def volume_from_node(volume_node) -> Volume:
    """A volume node as an engine `Volume` in world (RAS -> LPS) geometry; values as stored (HU for CT)."""
    if volume_node is None:
        raise InputError("no volume selected; choose the CT volume")
    image = volume_node.GetImageData()
    if image is None:
        raise InputError(f"volume '{volume_node.GetName()}' has no image data; load the CT again")
    array = _image_array(image)
    if array.ndim != 3 or min(array.shape) < 1:
        raise InputError(f"volume '{volume_node.GetName()}' is empty")
    return Volume.from_ijk_to_ras(array, ijk_to_world(volume_node))


def update_volume_node(volume_node, volume: Volume) -> None:
    """Write a `Volume` (array and geometry) into an existing volume node."""
    image = _make_image(volume.array)
    volume_node.SetIJKToRASMatrix(_to_vtk(volume.ijk_to_ras_matrix()))
    volume_node.SetAndObserveImageData(image)


def add_volume_node(scene, volume: Volume, name: str, class_name: str = "vtkMRMLScalarVolumeNode"):
    """New volume node holding `volume` (its own geometry), with default display nodes."""
    node = scene.AddNewNodeByClass(class_name, name)
    update_volume_node(node, volume)
    node.CreateDefaultDisplayNodes()
    return node


def set_array_like(volume_node, array: np.ndarray, reference_node) -> None:
    """Fill `volume_node` with a (z, y, x) array on `reference_node`'s grid and transform."""
    ref = reference_node.GetImageData()
    if ref is None or tuple(reversed(ref.GetDimensions())) != tuple(array.shape):
        raise InputError("array and reference volume have different sizes")
    image = _make_image(array)
    e = ref.GetExtent()
    image.SetExtent(e)
    volume_node.SetIJKToRASMatrix(_to_vtk(ijk_to_ras(reference_node)))
    volume_node.SetAndObserveImageData(image)
    volume_node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())


# ---- segments ------------------------------------------------------------------------------
def segment_ids(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def segment_to_mask(segmentation_node, segment_id: str, reference_node) -> np.ndarray:
    """A segment as a boolean (z, y, x) mask on `reference_node`'s voxel grid.

    Uses Slicer's own export (any source representation, shared labelmap layers, transforms
    between the segmentation and the volume), through a temporary labelmap node.
    """
    import slicer

    if segmentation_node is None or not segment_id:
        raise InputError("no segment selected; choose a segmentation and a segment")
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise InputError(f"segment '{segment_id}' is not in '{segmentation_node.GetName()}'; choose another segment")
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "LiverTumorSegExport")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, [segment_id], labelmap, reference_node
        )
        if not ok or labelmap.GetImageData() is None:
            raise InputError(
                f"could not export segment '{segment_id}' of '{segmentation_node.GetName()}' "
                f"onto '{reference_node.GetName()}'; check that they overlap"
            )
        array = _image_array(labelmap.GetImageData())
        ref_shape = tuple(reversed(reference_node.GetImageData().GetDimensions()))
        if array.shape != ref_shape:
            raise InputError(f"exported segment has shape {array.shape}, the CT {ref_shape}")
        return array > 0
    finally:
        # The export also adds a "..._ColorTable" node to the scene (Segmentations
        # logic, ExportSegmentsToLabelmapNode); remove it with the labelmap, as
        # slicer.util.arrayFromSegmentBinaryLabelmap does, so no export leaves a node behind.
        display = labelmap.GetDisplayNode()
        if display is not None:
            color = display.GetColorNode()
            if color is not None and color.GetScene() is scene and not color.GetSingletonTag():
                scene.RemoveNode(color)
            scene.RemoveNode(display)
        scene.RemoveNode(labelmap)


def mask_checksum(mask: np.ndarray) -> str:
    """Short content fingerprint of a boolean mask (shape included)."""
    digest = hashlib.sha1(repr(tuple(mask.shape)).encode())
    digest.update(np.packbits(np.asarray(mask, dtype=bool)).tobytes())
    return digest.hexdigest()[:16]


def _oriented_image(mask: np.ndarray, reference_node):
    """uint8 vtkOrientedImageData of `mask` on the reference node's grid (node coordinates)."""
    import slicer

    image = _make_image(np.asarray(mask, dtype=np.uint8), slicer.vtkOrientedImageData)
    ref = reference_node.GetImageData()
    if ref is None or tuple(reversed(ref.GetDimensions())) != tuple(mask.shape):
        raise InputError("mask and reference volume have different sizes")
    image.SetExtent(ref.GetExtent())
    image.SetImageToWorldMatrix(_to_vtk(ijk_to_ras(reference_node)))
    return image


def write_segment(
    segmentation_node,
    mask: np.ndarray,
    reference_node,
    segment_id: str | None = None,
    name: str = "Segment",
    color: tuple[float, float, float] = (1.0, 1.0, 0.0),
    terminology: str = "",
) -> str:
    """Put a boolean (z, y, x) mask on the reference grid into a segment; returns the segment id.

    With `segment_id` of an existing segment its content is replaced (name, colour and tags kept);
    otherwise a new segment is added with `name`, `color` (0..1) and `terminology` (Slicer's
    serialized terminology entry). Other segments are never touched. The segment is tagged with
    the mask's checksum so later edits can be detected (`segment_was_edited`).
    """
    import slicer

    ensure_conversion_rules()
    segmentation = segmentation_node.GetSegmentation()
    image = _oriented_image(mask, reference_node)
    if segment_id and segmentation.GetSegment(segment_id) is not None:
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
        )
    else:
        segment_id = segmentation_node.AddSegmentFromBinaryLabelmapRepresentation(image, name, list(color))
        segment = segmentation.GetSegment(segment_id)
        if terminology:
            set_terminology(segment, terminology)
    segmentation.GetSegment(segment_id).SetTag(CHECKSUM_TAG, mask_checksum(mask))
    return segment_id


def set_terminology(segment, terminology: str) -> None:
    """Set a segment's terminology entry through its tag.

    vtkSegment.SetTerminology() exists only from Slicer 5.10 on; it stores exactly this tag, so
    writing the tag works on 5.8 and on every later version.
    """
    import slicer

    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), terminology)


def terminology(segment) -> str:
    """A segment's serialized terminology entry, "" when it has none (any Slicer version)."""
    import slicer

    return segment_tag(segment, slicer.vtkSegment.GetTerminologyEntryTagName())


def segment_tag(segment, name: str) -> str:
    """A segment tag's value, "" when absent."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def segment_was_edited(segmentation_node, segment_id: str, reference_node) -> bool:
    """True when a segment's content differs from what was last written by `write_segment`.

    A segment without the checksum tag (made by the user) counts as edited: it is the user's.
    """
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        return False
    written = segment_tag(segment, CHECKSUM_TAG)
    if not written:
        return True
    return mask_checksum(segment_to_mask(segmentation_node, segment_id, reference_node)) != written


def ensure_conversion_rules() -> None:
    """Register labelmap <-> closed surface conversions if nobody has.

    3D Slicer registers them at start-up (the Segmentations module logic), so inside the
    application this does nothing. Bare slicer-core does not, and without them empty segments
    cannot be made and 3D views get no surface. Whether a rule is there is asked through
    vtkSegmentationConverter.GetPossibleConversions (VTK objects only), not through
    GetConverterRules(), whose std::vector<vtkSmartPointer> return value older VTK wrappings
    may not expose.
    """
    import slicer

    if hasattr(slicer, "app"):
        return
    paths = slicer.vtkSegmentationConversionPaths()
    slicer.vtkSegmentationConverter().GetPossibleConversions(
        slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(),
        slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName(), paths)
    if paths.GetNumberOfPaths() > 0:
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule, slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
        factory.RegisterConverterRule(rule())


def new_segmentation_node(scene, reference_node, name: str):
    """Empty segmentation node on the reference volume's geometry, shown in slice views and 3D."""
    ensure_conversion_rules()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    node.GetSegmentation().SetSourceRepresentationName("Binary labelmap")
    node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
    return node


# ---- ROI -----------------------------------------------------------------------------------
def roi_to_mask(roi_node, reference_node) -> np.ndarray:
    """Voxels of the reference grid whose centres lie inside a (possibly rotated) markups ROI."""
    if roi_node is None:
        raise InputError("no ROI selected")
    size = np.asarray(roi_node.GetSize(), dtype=float)
    if np.any(size <= 0):
        raise InputError(f"ROI '{roi_node.GetName()}' has zero size; place and resize it around the liver")
    world_to_object = np.linalg.inv(_to_numpy(roi_node.GetObjectToWorldMatrix()))
    ijk_to_object = world_to_object @ ijk_to_world(reference_node)
    nx, ny, nz = reference_node.GetImageData().GetDimensions()
    half = size / 2.0
    jj, ii = np.meshgrid(np.arange(ny, dtype=float), np.arange(nx, dtype=float), indexing="ij")
    mask = np.zeros((nz, ny, nx), dtype=bool)
    for k in range(nz):  # slice by slice keeps memory at one slice of coordinates
        inside = np.ones((ny, nx), dtype=bool)
        for axis in range(3):
            row = ijk_to_object[axis]
            coord = row[0] * ii + row[1] * jj + (row[2] * k + row[3])
            inside &= np.abs(coord) <= half[axis]
        mask[k] = inside
    if not mask.any():
        raise InputError(f"ROI '{roi_node.GetName()}' does not overlap the CT; move it onto the liver")
    return mask


# ---- tables --------------------------------------------------------------------------------
def update_lesion_table(table_node, lesions) -> None:
    """Fill a table node with one row per lesion (`lesions.Lesion` objects), columns LESION_COLUMNS."""
    import vtk

    table_node.RemoveAllColumns()
    values = [
        [float(les.id) for les in lesions],
        [float(les.volume_ml) for les in lesions],
        [float(les.longest_axial_diameter_mm) for les in lesions],
        [float(les.mean_hu) for les in lesions],
        [np.nan if les.mean_probability is None else float(les.mean_probability) for les in lesions],
        [float(les.centroid_ras[0]) for les in lesions],
        [float(les.centroid_ras[1]) for les in lesions],
        [float(les.centroid_ras[2]) for les in lesions],
    ]
    for (name, unit, description), column in zip(LESION_COLUMNS, values):
        array = vtk.vtkIntArray() if name == "Lesion" else vtk.vtkDoubleArray()
        array.SetName(name)
        for value in column:
            array.InsertNextValue(int(value) if name == "Lesion" else value)
        table_node.AddColumn(array)
        if unit:
            table_node.SetColumnUnitLabel(name, unit)
        table_node.SetColumnTitle(name, f"{name} ({unit})" if unit else name)
        table_node.SetColumnDescription(name, description)
    table_node.SetUseColumnTitleAsColumnHeader(True)  # titles as the view's header, not as a first row
    table_node.SetLocked(True)  # computed values: not for editing in the table view
    table_node.Modified()


def table_rows(table_node) -> tuple[list[str], list[list]]:
    """(header, rows) of a table node, values as Python numbers/strings (for tests and export)."""
    table = table_node.GetTable()
    header = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = []
        for c in range(table.GetNumberOfColumns()):
            value = table.GetValue(r, c)
            row.append(value.ToDouble() if value.IsNumeric() else value.ToString())
        rows.append(row)
    return header, rows


# ---- display -------------------------------------------------------------------------------
def show_as_foreground(scene, volume_node, opacity: float = 0.4) -> None:
    """Show a volume over the background in every slice view (slice composite nodes)."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        composite.SetForegroundVolumeID(volume_node.GetID() if volume_node else None)
        composite.SetForegroundOpacity(opacity)


def jump_slices_to(scene, ras) -> None:
    """Centre every slice view on a RAS point (mm)."""
    import slicer

    r, a, s = (float(v) for v in ras)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
