"""Slicer segmentations (.seg.nrrd): segments with names, colours and standard terminology,
read from shared-labelmap layers or the older one-segment-per-volume 4D form, and written as one
shared labelmap layer that Slicer opens as a segmentation.

Arrays are (z, y, x); the file's grid is kept (no crop, offset 0 when written).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..volume import Volume
from .image_files import (SEG_SUFFIX, as_uint8_labels, existing_path, file_suffix, header_reader, is_segmentation_image,
                          read_any, write_atomic)

TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
LIVER_CODE = ("SCT", "10200004", "Liver")
TUMOR_TYPE_CODES = ("4147007", "108369006", "86049000", "14799000")  # Mass, Neoplasm (primary, secondary)
LIVER_NAME_WORDS = ("liver",)
TUMOR_NAME_WORDS = ("tumor", "tumour", "lesion", "mass", "metasta", "neoplasm")


def terminology_entry(category, type_, region=("", "", "")) -> str:
    """Slicer's TerminologyEntry value: 7 `~`-separated parts, codes as scheme^value^meaning."""
    code = "^".join
    return "~".join(
        [TERMINOLOGY_CONTEXT, code(category), code(type_), "^^", ANATOMIC_CONTEXT, code(region), "^^"]
    )


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a segmentation: label value in the labelmap, display name, RGB colour 0..1,
    Slicer terminology entry (see `terminology_entry`) and a Slicer segment ID ("" -> Segment_<value>)."""

    value: int
    name: str
    color: tuple = (0.5, 0.5, 0.5)
    terminology: str = ""
    segment_id: str = ""

    @property
    def id(self) -> str:
        return self.segment_id or f"Segment_{self.value}"


# Slicer General Anatomy list: Anatomical Structure / Liver, and Morphologically Altered Structure /
# Mass in the anatomic region Liver, with the colours that list recommends.
LIVER_TERMINOLOGY = terminology_entry(("SCT", "123037004", "Anatomical Structure"), LIVER_CODE)
TUMOR_TERMINOLOGY = terminology_entry(
    ("SCT", "49755003", "Morphologically Altered Structure"), ("SCT", "4147007", "Mass"), LIVER_CODE
)
LIVER_SEGMENT = SegmentInfo(1, "Liver", (221 / 255, 130 / 255, 101 / 255), LIVER_TERMINOLOGY, "liver")
TUMOR_SEGMENT = SegmentInfo(1, "Liver tumor", (144 / 255, 238 / 255, 144 / 255), TUMOR_TERMINOLOGY, "liver_tumor")
# Segments of a LiTS-style label map (0 background, 1 liver, 2 tumor).
CASE_SEGMENTS = (LIVER_SEGMENT, replace(TUMOR_SEGMENT, value=2))


def _meta(image: sitk.Image, key: str, default: str = "") -> str:
    return image.GetMetaData(key) if image.HasMetaDataKey(key) else default


def _terminology_from_tags(tags: str) -> str:
    for tag in tags.split("|"):
        key, _, value = tag.partition(":")
        if key == "TerminologyEntry":
            return value
    return ""


def _parse_color(text: str) -> tuple:
    try:
        rgb = tuple(float(v) for v in text.split()[:3])
    except ValueError:
        rgb = ()
    return rgb if len(rgb) == 3 else (0.5, 0.5, 0.5)


def _segment_infos(image: sitk.Image) -> list[tuple[SegmentInfo, int]]:
    """(SegmentInfo, layer index) for Segment0.., with Slicer's defaults: layer = index, value 1."""
    infos = []
    i = 0
    while image.HasMetaDataKey(f"Segment{i}_ID"):
        field = {key: _meta(image, f"Segment{i}_{key}") for key in ("ID", "Name", "Color", "DefaultColor", "Tags")}
        info = SegmentInfo(
            value=int(_meta(image, f"Segment{i}_LabelValue", "1")),
            name=field["Name"] or field["ID"],
            color=_parse_color(field["Color"] or field["DefaultColor"]),
            terminology=_terminology_from_tags(field["Tags"]),
            segment_id=field["ID"],
        )
        infos.append((info, int(_meta(image, f"Segment{i}_Layer", str(i)))))
        i += 1
    return infos


def _layers_and_grid(image: sitk.Image) -> tuple[np.ndarray, Volume]:
    """Layer stack (L, z, y, x) and the 3D grid: shared layers are vector components, legacy 4D is axis 4."""
    array = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 4:
        grid_image = sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, 0])
        layers = array
    elif image.GetNumberOfComponentsPerPixel() > 1:
        grid_image = sitk.VectorIndexSelectionCast(image, 0)
        layers = np.moveaxis(array, -1, 0)
    else:
        grid_image = image
        layers = array[None]
    grid = Volume.from_sitk(grid_image)
    return layers, grid


def segment_masks(image: sitk.Image, path: Path) -> tuple[Volume, list[tuple[SegmentInfo, np.ndarray]]]:
    layers, grid = _layers_and_grid(image)
    legacy = image.GetDimension() == 4 or image.HasMetaDataKey("Segmentation_Extent")
    out = []
    for info, layer in _segment_infos(image):
        if not 0 <= layer < layers.shape[0]:
            raise InputError(f"{path}: segment '{info.name}' refers to missing layer {layer}; re-save it from Slicer")
        mask = layers[layer] != 0 if legacy else layers[layer] == info.value
        out.append((info, mask))
    return grid, out


def segment_class(info: SegmentInfo) -> int:
    """1 liver, 2 tumor, 0 other: by name (tumor words win), else by terminology type code."""
    name = info.name.lower()
    if any(word in name for word in TUMOR_NAME_WORDS):
        return 2
    if any(word in name for word in LIVER_NAME_WORDS):
        return 1
    parts = info.terminology.split("~")
    type_code = parts[2].split("^")[1] if len(parts) > 2 and parts[2].count("^") == 2 else ""
    if type_code in TUMOR_TYPE_CODES:
        return 2
    return 1 if type_code == LIVER_CODE[1] else 0


def labels_from_segmentation(image: sitk.Image, path: Path) -> Volume:
    grid, segments = segment_masks(image, path)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    classes = [(segment_class(info), mask) for info, mask in segments]
    for wanted in (1, 2):  # tumor is written last so it wins where both overlap
        for cls, mask in classes:
            if cls == wanted:
                labels[mask] = wanted
    if not any(cls for cls, _ in classes):
        names = ", ".join(f"'{info.name}'" for info, _ in segments) or "none"
        raise InputError(
            f"{path} has no segment named liver or tumor (segments: {names}); rename them, e.g. 'Liver' and 'Liver tumor'"
        )
    return grid.with_array(labels)


def read_segmentation(path) -> tuple[Volume, list[SegmentInfo]]:
    """A Slicer .seg.nrrd as one uint8 label volume (file grid) and its segments.

    Single-layer files keep their label values. When layers reuse values, segments are renumbered
    1..n in file order (returned infos carry the new values) and later segments win where they overlap.
    """
    path = existing_path(path)
    image = read_any(path)
    if not is_segmentation_image(image):
        raise InputError(f"{path} is not a Slicer segmentation (no Segment0_ID field); save it from Slicer as .seg.nrrd")
    grid, segments = segment_masks(image, path)
    values = [info.value for info, _ in segments]
    renumber = len(set(values)) != len(values) or not all(1 <= v <= 255 for v in values)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    infos = []
    for i, (info, mask) in enumerate(segments):
        if renumber:
            info = replace(info, value=i + 1)
        labels[mask] = info.value
        infos.append(info)
    return grid.with_array(labels), infos


def _extent(mask: np.ndarray) -> str:
    """Slicer segment extent 'i0 i1 j0 j1 k0 k1' (x, y, z index ranges), '0 -1 0 -1 0 -1' when empty."""
    nonzero = np.nonzero(mask)
    if not nonzero[0].size:
        return "0 -1 0 -1 0 -1"
    z, y, x = nonzero
    return f"{x.min()} {x.max()} {y.min()} {y.max()} {z.min()} {z.max()}"


def _reference_geometry(labels: Volume) -> str:
    """Slicer's serialized image geometry: IJK->RAS matrix row by row, then the extent, ';'-separated."""
    matrix = labels.ijk_to_ras_matrix()
    z, y, x = labels.shape
    numbers = [f"{v:.17g}" for v in matrix.ravel()] + [str(v) for v in (0, x - 1, 0, y - 1, 0, z - 1)]
    return "".join(n + ";" for n in numbers)


def _check_segments(segments) -> None:
    values = [s.value for s in segments]
    if len(set(values)) != len(values) or not all(1 <= v <= 255 for v in values):
        raise InputError(f"segment label values must be distinct and in 1..255, got {values}")
    ids = [s.id for s in segments]
    if len(set(ids)) != len(ids):
        raise InputError(f"segment IDs must be distinct, got {ids}")


def _segmentation_metadata(labels: np.ndarray, segments, grid: Volume) -> dict[str, str]:
    meta = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
        "Segmentation_ConversionParameters": (
            f"Reference image geometry|{_reference_geometry(grid)}|Image geometry description string determining "
            "the geometry of the labelmap that is created in course of conversion.&"
        ),
    }
    for i, seg in enumerate(segments):
        tags = f"TerminologyEntry:{seg.terminology}|" if seg.terminology else ""
        meta.update({
            f"Segment{i}_ID": seg.id,
            f"Segment{i}_Name": seg.name,
            f"Segment{i}_NameAutoGenerated": "0",
            f"Segment{i}_Color": " ".join(repr(float(c)) for c in seg.color),
            f"Segment{i}_ColorAutoGenerated": "0",
            f"Segment{i}_LabelValue": str(seg.value),
            f"Segment{i}_Layer": "0",
            f"Segment{i}_Extent": _extent(labels == seg.value),
            f"Segment{i}_Tags": tags,
        })
    return meta


def write_segmentation(path, labels: Volume, segments) -> None:
    """A Slicer .seg.nrrd: one shared labelmap layer on the labels' grid (no crop, offset 0), one
    segment per SegmentInfo (its `value` in `labels`); voxels of other values are cleared."""
    path = Path(path)
    if file_suffix(path) != SEG_SUFFIX:
        raise InputError(
            f"cannot write {path.name}: segmentation files must end in {SEG_SUFFIX} so Slicer opens them as segmentations"
        )
    segments = list(segments)
    _check_segments(segments)
    array = as_uint8_labels(labels.array, "a segmentation")
    kept = np.zeros(256, dtype=bool)
    kept[[0] + [s.value for s in segments]] = True
    if not kept[array].all():  # other values: cleared (only then a copy)
        array = np.where(kept[array], array, 0).astype(np.uint8)
    image = labels.with_array(array).to_sitk()
    for key, value in _segmentation_metadata(array, segments, labels).items():
        image.SetMetaData(key, value)
    write_atomic(image, path)


def is_segmentation_file(path) -> bool:
    """True for a Slicer .seg.nrrd (by name, or by its Segment fields for a plain .nrrd name)."""
    path = Path(path)
    if file_suffix(path) == SEG_SUFFIX:
        return True
    if path.is_file() and file_suffix(path) in (".nrrd", ".nhdr"):
        try:
            reader = header_reader(path)
        except RuntimeError:
            return False
        keys = reader.GetMetaDataKeys()
        return "Segment0_ID" in keys or "Segmentation_MasterRepresentation" in keys
    return False
