"""Reading and writing CT images, label maps and 3D Slicer segmentations (.seg.nrrd).

Every reader returns a `Volume` (array (z, y, x); spacing/origin/direction ITK order, LPS, mm)
and turns what a user can fix into one-line `InputError`s; every writer goes through
`fsutil.atomic_path`, so a reader never sees half a file.

Accepted inputs: NRRD (.nrrd/.nhdr), NIfTI (.nii/.nii.gz), MetaImage (.mha/.mhd), a folder
holding a DICOM series, and Slicer `.seg.nrrd` (shared-labelmap layers and the older
one-segment-per-volume 4D form). Written outputs are single files (.nrrd, .nii, .nii.gz, .mha),
so an atomic rename covers the whole output.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .fsutil import atomic_path
from ..volume import Volume

WRITE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")
SEG_SUFFIX = ".seg.nrrd"

TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
LIVER_CODE = ("SCT", "10200004", "Liver")
TUMOR_TYPE_CODES = ("4147007", "108369006", "86049000", "14799000")  # Mass, Neoplasm (primary, secondary)
LIVER_NAME_WORDS = ("liver",)
TUMOR_NAME_WORDS = ("tumor", "tumour", "lesion", "mass", "metasta", "neoplasm")

# A mask whose foreground box overlaps the CT's box by less than this fraction is on another scan.
MIN_BOX_OVERLAP = 0.5
# Warn when resampling onto the CT drops more than this fraction of the mask's foreground volume.
MAX_LOST_FRACTION = 0.05


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


# ---- small helpers -----------------------------------------------------------------------------
def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (SEG_SUFFIX, ".nii.gz"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _existing(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path")
    return path


def _orientation(volume: Volume) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(volume.direction)


def describe_geometry(volume: Volume) -> str:
    """One-line geometry for messages: size (x, y, z), spacing mm, origin LPS mm, axis orientation."""
    z, y, x = volume.shape[:3]
    sp = "x".join(f"{s:g}" for s in volume.spacing)
    org = ", ".join(f"{o:.1f}" for o in volume.origin)
    return f"{x}x{y}x{z} voxels of {sp} mm, origin ({org}) LPS, axes {_orientation(volume)}"


def _short_reason(exc: Exception) -> str:
    """The informative last line of a (multi-line) SimpleITK error, for one-line messages."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(exc).__name__


def _is_segmentation_image(image: sitk.Image) -> bool:
    keys = image.GetMetaDataKeys()
    return "Segment0_ID" in keys or "Segmentation_MasterRepresentation" in keys


# ---- reading ---------------------------------------------------------------------------------
READ_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def _read_file(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = _short_reason(exc)
        if "spacing" in reason.lower():
            raise InputError(
                f"{path} has an invalid voxel spacing ({reason}); every spacing must be a positive number of mm: "
                "fix the spacing in the file's header, or export the image again"
            ) from exc
        if _suffix(path) in READ_SUFFIXES:
            raise InputError(
                f"cannot read {path} ({reason}): the file is damaged or is not a {_suffix(path)} image; "
                "export it again (or restore it from a backup)"
            ) from exc
        raise InputError(
            f"cannot read {path} as an image ({reason}); give NRRD, NIfTI, MetaImage or a DICOM folder"
        ) from exc


def _series_in(folder: Path) -> list[tuple[str, tuple[str, ...]]]:
    reader = sitk.ImageSeriesReader
    uids = reader.GetGDCMSeriesIDs(str(folder))
    return [(uid, tuple(reader.GetGDCMSeriesFileNames(str(folder), uid))) for uid in uids]


def _dicom_series(folder: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(series UID, slice files) of every DICOM series in `folder`, or in its sub-folders if it has none."""
    found = _series_in(folder)
    if not found:
        for sub in sorted(p for p in folder.rglob("*") if p.is_dir()):
            found += _series_in(sub)
    return found


def _read_dicom_folder(folder: Path) -> sitk.Image:
    """The series with most slices; a warning names it when the folder holds several."""
    series = _dicom_series(folder)
    if not series:
        raise InputError(
            f"no DICOM series in folder {folder}; give a folder of DICOM slices or an image file (.nrrd, .nii.gz, .mha)"
        )
    uid, files = max(series, key=lambda s: len(s[1]))
    if len(series) > 1:
        warnings.warn(
            f"{folder} holds {len(series)} DICOM series; using {uid or 'the unnamed series'} with {len(files)} slices "
            "(the most); put the series you want alone in a folder to choose another"
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's multi-line "missing slices" text: ours is below
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read the DICOM series in {folder} ({_short_reason(exc)}); re-export the series") from exc
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    problem = slice_spacing_problem(_slice_positions(reader, len(files)))
    if problem:
        raise InputError(
            f"the DICOM series in {folder} {problem}; the volume would be misplaced between its slices: "
            "export the complete series again from the PACS or scanner"
        )
    return image


def _slice_positions(reader: sitk.ImageSeriesReader, count: int) -> list[float] | None:
    """Each slice's position (mm) along the slice normal, from Image Position / Orientation
    (Patient); None when a slice lacks them (then ITK's own spacing is all there is)."""
    try:
        orientation = [float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")]
        normal = np.cross(orientation[:3], orientation[3:6])
        return [float(np.dot([float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")], normal))
                for i in range(count)]
    except (RuntimeError, ValueError, IndexError):
        return None


def slice_spacing_problem(positions, tolerance: float = 0.1) -> str | None:
    """What is wrong with a series' slice positions (mm along the normal), None when they are
    evenly spaced within `tolerance` (a fraction of the typical spacing): a gap (missing slices),
    two slices at one position, or uneven spacing. A volume needs one spacing for all slices."""
    if positions is None or len(positions) < 3:
        return None
    steps = np.diff(np.sort(np.asarray(positions, dtype=float)))
    typical = float(np.median(steps))
    if typical <= 1e-6:
        return "has several slices at the same positions (two acquisitions mixed in one series?)"
    if steps.min() < 1e-3:
        return "has two slices at the same position (a duplicated slice or a second acquisition)"
    worst = int(np.argmax(np.abs(steps - typical)))
    if abs(steps[worst] - typical) <= tolerance * typical + 1e-3:
        return None
    gap = float(steps[worst])
    missing = int(round(gap / typical)) - 1
    if missing >= 1 and abs(gap - (missing + 1) * typical) <= tolerance * typical + 1e-3:
        return (f"has a gap: slices {worst + 1} and {worst + 2} of {len(positions)} are {gap:.2f} mm apart where the "
                f"others are {typical:.2f} mm, so {missing} slice(s) are missing")
    return f"has unevenly spaced slices ({steps.min():.2f} to {steps.max():.2f} mm apart, mostly {typical:.2f} mm)"


def _read_any(path: Path) -> sitk.Image:
    return _read_dicom_folder(path) if path.is_dir() else _read_file(path)


def _scalar_3d(image: sitk.Image, path: Path, min_slices: int) -> sitk.Image:
    """The image as one scalar 3D volume (a 4D image with one time point is accepted)."""
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} values per voxel (colour or vector image); "
            "give a single-channel 3D image"
        )
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, 0])
    size = image.GetSize()
    if image.GetDimension() != 3 or min(size) < min_slices:
        shape = "x".join(str(s) for s in size)
        raise InputError(
            f"{path} is not a 3D volume (size {shape}); give one 3D volume (for DICOM, the folder with the whole series)"
        )
    return image


def _check_finite(array: np.ndarray, path: Path) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise InputError(
                f"{path} has {bad} NaN or infinite voxels; re-export the image with those voxels set to a number"
            )


def _sample(array: np.ndarray, max_voxels: int = 4_000_000) -> np.ndarray:
    """A regular subsample of a big array (every k-th voxel per axis) for statistics: percentiles
    of a 500-million-voxel CT would copy and sort all of it."""
    step = max(1, int(np.ceil((array.size / max_voxels) ** (1.0 / 3.0))))
    return array[::step, ::step, ::step] if array.ndim == 3 else array


def _warn_if_not_hu(array: np.ndarray, path: Path, eight_bit: bool) -> None:
    """CT in Hounsfield units cannot be stored in 8 bits, and its soft tissue sits near 0-100 HU;
    raw scanner values put soft tissue near 1000 (HU = value - 1024 is typical). A CT cropped to
    the liver has no air and no negative values, and is fine: only these two cases warn (soft
    tissue fills well over a tenth of any CT, air or not)."""
    array = _sample(array)
    low, high = float(array.min()), float(array.max())
    if eight_bit:
        warnings.warn(
            f"{path.name}: 8-bit values ({low:g}..{high:g}) like a picture, not CT Hounsfield units "
            "(air -1000, liver ~100); results will be wrong unless the image is in HU"
        )
    elif low >= 0 and float(np.percentile(array, 90)) > 900:
        warnings.warn(
            f"{path.name}: no negative values and a tenth of the voxels above 900, so these look like raw "
            "scanner values, not Hounsfield units (HU = value * slope + intercept, often value - 1024)"
        )


def _header_reader(path) -> sitk.ImageFileReader:
    """A reader holding the file's header (size, spacing, geometry, metadata), voxels unread;
    RuntimeError when the header cannot be read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def image_header(path) -> tuple[tuple, tuple] | None:
    """(shape z, y, x; spacing z, y, x mm) of an image file from its header alone, without
    reading the voxels; None for a folder or a header that cannot be read (read_image says why)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        reader = _header_reader(path)
    except RuntimeError:
        return None
    size, spacing = reader.GetSize(), reader.GetSpacing()
    if len(size) < 3:
        return None
    return tuple(int(n) for n in size[:3][::-1]), tuple(float(s) for s in spacing[:3][::-1])


def read_image(path, keep_integer: bool = False) -> Volume:
    """A CT volume in HU as float32 (z, y, x) from an image file or a DICOM series folder.
    keep_integer: integer voxels stay in their (smaller) integer type, e.g. int16: half the
    memory of float32 for a big CT (segmentation converts it slab by slab)."""
    path = _existing(path)
    seg_message = f"{path} is a Slicer segmentation, not a CT; give the CT image here and the segmentation as the mask"
    if _suffix(path) == SEG_SUFFIX:
        raise InputError(seg_message)
    image = _read_any(path)
    if _is_segmentation_image(image):
        raise InputError(seg_message)
    eight_bit = image.GetPixelID() in (sitk.sitkUInt8, sitk.sitkInt8)
    volume = Volume.from_sitk(_scalar_3d(image, path, min_slices=2))
    del image
    if not (keep_integer and np.issubdtype(volume.array.dtype, np.integer) and volume.array.dtype.itemsize <= 2):
        volume.array = volume.array.astype(np.float32, copy=False)
    _check_finite(volume.array, path)
    _warn_if_not_hu(volume.array, path, eight_bit)
    return volume


# Slices further apart than this (mm) hide tumors of that size; CT for liver lesions is 0.5-5 mm.
MAX_SLICE_MM = 8.0
# A liver mask filling more of the CT than this (or more than LIVER_MAX_ML) is not a liver outline.
LIVER_MAX_FRACTION = 0.9
LIVER_MAX_ML = 8000.0  # (the largest livers are 4-6 L; an ROI box around a liver stays below this)
# Liver parenchyma in CT is 40-200 HU (unenhanced to portal venous), down to about -50 HU in
# severe steatosis; far outside this range the values are not HU.
LIVER_HU_RANGE = (-100.0, 300.0)


def warn_if_implausible_ct(image: Volume, liver: np.ndarray | None, name: str) -> None:
    """Warnings for a CT that is likely not what the model expects: slices thicker than
    MAX_SLICE_MM, or intensities that are not CT Hounsfield units (an MR, say), judged by the
    liver's median when a liver mask is given (a liver-cropped CT in HU has no negative values),
    else by a whole image without air whose median is far above soft tissue."""
    thick = max(image.spacing)
    if thick > MAX_SLICE_MM:
        warnings.warn(
            f"{name}: voxels {thick:g} mm apart along one axis; tumors smaller than that are missed or merged "
            f"(the model expects CT slices of 0.5-5 mm): use a thinner reconstruction if there is one"
        )
    if liver is not None and liver.any():
        z = np.flatnonzero(liver.any(axis=(1, 2)))
        sub = slice(z[0], z[-1] + 1)
        level = float(np.median(_sample(image.array[sub][liver[sub]].reshape(1, 1, -1))))
        if not LIVER_HU_RANGE[0] <= level <= LIVER_HU_RANGE[1]:
            warnings.warn(
                f"{name}: the liver's median value is {level:g}, where a CT liver is -50 (fatty) to 200 HU; this image is not "
                "CT in Hounsfield units (an MR, or rescaled values?), so the result will be wrong"
            )
        return
    sample = _sample(image.array).astype(np.float32)
    if float(sample.min()) < 0 or float(np.percentile(sample, 90)) > 900:  # HU, or raw values (read_image warned)
        return
    body = sample[sample > 0.1 * float(np.percentile(sample, 99))]
    level = float(np.median(body)) if body.size else 0.0
    if level > LIVER_HU_RANGE[1]:
        warnings.warn(
            f"{name}: no negative values and the body's median at {level:g}, unlike a CT in Hounsfield units "
            "(air -1000, soft tissue 0-100); an MR or rescaled values give wrong results"
        )


# ---- segmentations (.seg.nrrd) -------------------------------------------------------------
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


def _segment_masks(image: sitk.Image, path: Path) -> tuple[Volume, list[tuple[SegmentInfo, np.ndarray]]]:
    layers, grid = _layers_and_grid(image)
    legacy = image.GetDimension() == 4 or image.HasMetaDataKey("Segmentation_Extent")
    out = []
    for info, layer in _segment_infos(image):
        if not 0 <= layer < layers.shape[0]:
            raise InputError(f"{path}: segment '{info.name}' refers to missing layer {layer}; re-save it from Slicer")
        mask = layers[layer] != 0 if legacy else layers[layer] == info.value
        out.append((info, mask))
    return grid, out


def _segment_class(info: SegmentInfo) -> int:
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


def _labels_from_segmentation(image: sitk.Image, path: Path) -> Volume:
    grid, segments = _segment_masks(image, path)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    classes = [(_segment_class(info), mask) for info, mask in segments]
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
    path = _existing(path)
    image = _read_any(path)
    if not _is_segmentation_image(image):
        raise InputError(f"{path} is not a Slicer segmentation (no Segment0_ID field); save it from Slicer as .seg.nrrd")
    grid, segments = _segment_masks(image, path)
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


# ---- label maps and geometry ---------------------------------------------------------------
def _plain_labels(image: sitk.Image, path: Path) -> Volume:
    volume = Volume.from_sitk(_scalar_3d(image, path, min_slices=1))
    array = volume.array
    _check_finite(array, path)
    # An integer file needs only its range checked: rounding a 50-million-voxel uint8 array to float
    # to compare it with itself cost 0.6 s of every command-line segment.
    fractional = np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.rint(array))
    if array.size and (array.min() < 0 or array.max() > 255 or fractional):
        raise InputError(
            f"{path} is not a label map (values {float(array.min()):g}..{float(array.max()):g}); "
            "give integer labels 0..255 (0 background, 1 liver, 2 tumor)"
        )
    volume.array = array.astype(np.uint8, copy=False)
    return volume


def _box(volume: Volume, lo=None, hi=None) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS box (mm) around voxels lo..hi (inclusive, z, y, x), voxel edges included."""
    lo = np.zeros(3) if lo is None else np.asarray(lo, float)
    hi = np.asarray(volume.shape[:3], float) - 1 if hi is None else np.asarray(hi, float)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    points = volume.index_to_lps(np.concatenate([corners - 0.5, corners + 0.5]))
    return points.min(axis=0), points.max(axis=0)


def _overlap_fraction(box_a, box_b) -> float:
    """Overlap volume over the smaller box's volume (0 = disjoint, 1 = one inside the other)."""
    size_a, size_b = box_a[1] - box_a[0], box_b[1] - box_b[0]
    overlap = np.clip(np.minimum(box_a[1], box_b[1]) - np.maximum(box_a[0], box_b[0]), 0, None)
    return float(np.prod(overlap) / max(min(np.prod(size_a), np.prod(size_b)), 1e-9))


def _foreground_box(labels: Volume) -> tuple[np.ndarray, np.ndarray]:
    """LPS box (mm) around the non-zero voxels (there must be some)."""
    nonzero = np.nonzero(labels.array)
    return _box(labels, [n.min() for n in nonzero], [n.max() for n in nonzero])


def resample_labels(labels: Volume, reference: Volume) -> Volume:
    """Nearest-neighbour resampling of a label volume onto the reference grid (outside -> 0)."""
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(s) for s in reference.shape[::-1]])
    resampler.SetOutputSpacing(reference.spacing)
    resampler.SetOutputOrigin(reference.origin)
    resampler.SetOutputDirection(reference.direction)
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    resampler.SetDefaultPixelValue(0)
    out = resampler.Execute(labels.to_sitk())
    return reference.with_array(sitk.GetArrayFromImage(out).astype(labels.array.dtype, copy=False))


def labels_on_grid(labels: Volume, reference: Volume, source: str = "the mask") -> Volume:
    """`labels` on the reference (CT) grid: as is when the grids match, resampled when both lie in
    the same physical space (flipped axes, other spacing or extent), InputError when they do not."""
    if labels.same_grid(reference):
        return reference.with_array(labels.array)
    if not labels.array.any():  # nothing to misplace (Slicer saves empty segmentations as one voxel)
        return reference.with_array(np.zeros(reference.shape, dtype=labels.array.dtype))
    overlap = _overlap_fraction(_foreground_box(labels), _box(reference))
    if overlap < MIN_BOX_OVERLAP:
        raise InputError(
            f"{source} is not on this CT's physical space (CT: {describe_geometry(reference)}; mask: "
            f"{describe_geometry(labels)}; {100 * overlap:.0f}% overlap); export the mask from the same CT "
            "(in Slicer: export the segmentation to a label map with the CT as reference)"
        )
    out = resample_labels(labels, reference)
    before = np.count_nonzero(labels.array) * labels.voxel_volume_mm3
    after = np.count_nonzero(out.array) * reference.voxel_volume_mm3
    if before > 0 and after < (1 - MAX_LOST_FRACTION) * before:
        lost = 100 * (1 - after / before)
        warnings.warn(f"{source}: {lost:.0f}% of the labelled volume lies outside the CT and was dropped")
    return out


@dataclass
class Labels:
    """What `read_labels_kind` found: the labels, whether they came from a Slicer segmentation
    (then 1 = a liver segment, 2 = a tumor segment, by name or terminology) and, for one, its
    segment names per class."""

    volume: Volume
    from_segmentation: bool
    segment_names: dict


def read_labels_kind(path, reference: Volume | None = None) -> Labels:
    """`read_labels`, saying also whether the file was a Slicer segmentation and what it held."""
    path = _existing(path)
    image = _read_any(path)
    names: dict = {}
    if _is_segmentation_image(image):
        labels = _labels_from_segmentation(image, path)
        for info, _ in _segment_masks(image, path)[1]:
            names.setdefault(_segment_class(info), []).append(info.name)
    else:
        labels = _plain_labels(image, path)
    del image
    if reference is not None:
        labels = labels_on_grid(labels, reference, source=str(path))
    return Labels(labels, bool(names), names)


def read_labels(path, reference: Volume | None = None) -> Volume:
    """uint8 labels (0 background, 1 liver, 2 tumor for Slicer segmentations; plain label maps keep
    their values), on the reference grid when one is given (see `labels_on_grid`)."""
    return read_labels_kind(path, reference).volume


def read_liver_mask(path, reference: Volume) -> np.ndarray:
    """Boolean liver mask on the reference grid: any non-zero voxel is liver (LiTS labels work as is).
    A Slicer segmentation must hold a liver segment (its tumor segments count as liver too:
    tumors lie inside the liver); one with tumor segments only is refused. A mask filling
    nearly the whole image, or far more than any liver, is accepted with a warning."""
    found = read_labels_kind(path, reference)
    if found.from_segmentation and 1 not in found.segment_names:
        names = ", ".join(f"'{n}'" for names in found.segment_names.values() for n in names)
        raise InputError(
            f"{path} has no liver segment (segments: {names}); give the liver segmentation as the liver mask "
            "(a segment named e.g. 'Liver'), not a tumor result"
        )
    mask = found.volume.array > 0
    del found
    if not mask.any():
        raise InputError(f"liver mask {path} is empty on the CT grid; paint the liver (any non-zero value) and save again")
    fraction = float(np.count_nonzero(mask)) / mask.size
    volume_ml = float(np.count_nonzero(mask)) * reference.voxel_volume_mm3 / 1000.0
    if fraction > LIVER_MAX_FRACTION or volume_ml > LIVER_MAX_ML:
        warnings.warn(
            f"liver mask {path} covers {100 * fraction:.0f}% of the CT ({volume_ml:.0f} mL): that is not a liver "
            f"outline (a liver is 1000-3000 mL); give the liver segmentation, or no --liver to search the whole CT"
        )
    return mask


def coverage_of(labels_path, reference: Volume) -> np.ndarray:
    """Bool (z, y, x) on the reference grid: True where the label file's own grid covers the
    reference (False: the labels say nothing there, e.g. a label map cropped to some slices)."""
    reader = _header_reader(labels_path)
    size = list(reader.GetSize())[:3]
    grid = Volume(np.ones(size[::-1], dtype=np.uint8), reader.GetSpacing()[:3], reader.GetOrigin()[:3],
                  np.asarray(reader.GetDirection()).reshape(reader.GetDimension(), -1)[:3, :3].ravel())
    if grid.same_grid(reference):
        return np.ones(reference.shape, dtype=bool)
    return resample_labels(grid, reference).array > 0


# ---- writing -------------------------------------------------------------------------------
def _check_write_suffix(path: Path) -> None:
    suffix = _suffix(path)
    if suffix == SEG_SUFFIX or suffix not in WRITE_SUFFIXES:
        raise InputError(f"cannot write {path.name}: use one of {', '.join(WRITE_SUFFIXES)}")


def _write(image: sitk.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=_suffix(path) != ".nii")


def _all_integral(array: np.ndarray, tolerance: float = 1e-3, slab: int = 16) -> bool:
    """True when every value is within `tolerance` of an integer; a few slices at a time with an
    early stop, so a big float volume (a probability map) costs no full-size temporaries."""
    flat = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
    for start in range(0, flat.shape[0], slab):
        block = flat[start : start + slab]
        if not np.all(np.abs(block - np.rint(block)) < tolerance):
            return False
    return True


def _ct_storage_array(array: np.ndarray) -> np.ndarray:
    """int16 when every value is an integer (within 1e-3) in int16 range, else float32: HU fit int16."""
    in_range = not array.size or (array.min() >= -32768 and array.max() <= 32767)
    if np.issubdtype(array.dtype, np.integer) and in_range:
        return array.astype(np.int16, copy=False)
    if in_range and np.issubdtype(array.dtype, np.floating) and _all_integral(array):
        return np.rint(array).astype(np.int16)
    return array.astype(np.float32, copy=False)


def write_image(volume: Volume, path) -> None:
    """Write a CT (HU): int16 when all values are integral, else float32; format from the suffix."""
    path = Path(path)
    _check_write_suffix(path)
    _write(volume.with_array(_ct_storage_array(volume.array)).to_sitk(), path)


def _as_uint8_labels(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == bool:
        return array.view(np.uint8)
    integral = np.issubdtype(array.dtype, np.integer) or _all_integral(array, tolerance=1e-12)
    if array.size and (array.min() < 0 or array.max() > 255 or not integral):
        raise InputError(f"{what} must hold integer labels 0..255, got {float(array.min()):g}..{float(array.max()):g}")
    return array.astype(np.uint8, copy=False)


def write_labelmap(volume: Volume, path) -> None:
    """Write labels as compressed uint8 (0 background, 1 liver, 2 tumor by our convention)."""
    path = Path(path)
    _check_write_suffix(path)
    array = _as_uint8_labels(volume.array, "a label map")
    _write(volume.with_array(array).to_sitk(), path)


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
    if _suffix(path) != SEG_SUFFIX:
        raise InputError(
            f"cannot write {path.name}: segmentation files must end in {SEG_SUFFIX} so Slicer opens them as segmentations"
        )
    segments = list(segments)
    _check_segments(segments)
    array = _as_uint8_labels(labels.array, "a segmentation")
    kept = np.zeros(256, dtype=bool)
    kept[[0] + [s.value for s in segments]] = True
    if not kept[array].all():  # other values: cleared (only then a copy)
        array = np.where(kept[array], array, 0).astype(np.uint8)
    image = labels.with_array(array).to_sitk()
    for key, value in _segmentation_metadata(array, segments, labels).items():
        image.SetMetaData(key, value)
    _write(image, path)


def is_segmentation_file(path) -> bool:
    """True for a Slicer .seg.nrrd (by name, or by its Segment fields for a plain .nrrd name)."""
    path = Path(path)
    if _suffix(path) == SEG_SUFFIX:
        return True
    if path.is_file() and _suffix(path) in (".nrrd", ".nhdr"):
        try:
            reader = _header_reader(path)
        except RuntimeError:
            return False
        keys = reader.GetMetaDataKeys()
        return "Segment0_ID" in keys or "Segmentation_MasterRepresentation" in keys
    return False


__all__ = [
    "CASE_SEGMENTS", "LIVER_SEGMENT", "TUMOR_SEGMENT", "Labels", "SegmentInfo", "coverage_of", "describe_geometry",
    "image_header",
    "is_segmentation_file", "labels_on_grid", "read_image", "read_labels", "read_labels_kind", "read_liver_mask",
    "slice_spacing_problem", "warn_if_implausible_ct",
    "read_raw_nrrd", "read_segmentation", "resample_labels", "terminology_entry", "write_image", "write_labelmap",
    "write_segmentation",
]


_NRRD_TYPES = {"float": "f4", "double": "f8", "unsigned char": "u1", "uchar": "u1", "uint8": "u1", "signed char": "i1",
               "int8": "i1", "short": "i2", "int16": "i2", "unsigned short": "u2", "uint16": "u2", "int": "i4",
               "int32": "i4", "unsigned int": "u4", "uint32": "u4"}


def read_raw_nrrd(path: str | os.PathLike) -> np.ndarray | None:
    """The (z, y, x) voxels of a 3D, uncompressed, single-file NRRD (what SimpleITK writes without
    compression) read straight into one array; None for anything else (compressed, detached data,
    vector voxels, an unknown type, a size that does not add up), which callers read with
    SimpleITK. Only the voxels: the geometry is the caller's, who knows the grid it wrote."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(4096)
        end = head.find(b"\n\n")
        if not head.startswith(b"NRRD") or end < 0:
            return None
        fields = {}
        for line in head[:end].decode("latin-1").splitlines()[1:]:
            if line.startswith("#") or ":" not in line or ":=" in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        code = _NRRD_TYPES.get(fields.get("type", ""))
        sizes = fields.get("sizes", "").split()
        endian = fields.get("endian", "little")
        if (code is None or fields.get("dimension") != "3" or len(sizes) != 3 or fields.get("encoding") != "raw"
                or "data file" in fields or "datafile" in fields or endian not in ("little", "big")):
            return None
        shape = tuple(int(n) for n in reversed(sizes))
        dtype = np.dtype(code).newbyteorder("<" if endian == "little" else ">")
        offset = end + 2
        if os.fstat(handle.fileno()).st_size != offset + int(np.prod(shape)) * dtype.itemsize:
            return None
        handle.seek(offset)
        array = np.fromfile(handle, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))
