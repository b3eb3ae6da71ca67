"""Label maps and liver masks: plain label files or Slicer segmentations as 0/1/2 labels, put on
the CT's grid when both lie in the same physical space, refused when they do not.

Labels: 0 background, 1 liver, 2 tumor (LiTS). Arrays are (z, y, x); boxes in LPS mm.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..volume import Volume
from .image_files import (as_uint8_labels, check_finite, check_write_suffix, describe_geometry, existing_path,
                          header_reader, is_segmentation_image, read_any, scalar_3d, write_atomic)
from .dicom_seg import is_dicom_seg, read_seg_labels
from .segmentations import labels_from_segmentation, segment_class, segment_masks

# A mask whose foreground box overlaps the CT's box by less than this fraction is on another scan.
MIN_BOX_OVERLAP = 0.5
# Warn when resampling onto the CT drops more than this fraction of the mask's foreground volume.
MAX_LOST_FRACTION = 0.05
# A liver mask filling more of the CT than this (or more than LIVER_MAX_ML) is not a liver outline.
LIVER_MAX_FRACTION = 0.9
LIVER_MAX_ML = 8000.0  # (the largest livers are 4-6 L; an ROI box around a liver stays below this)


def _plain_labels(image: sitk.Image, path: Path) -> Volume:
    volume = Volume.from_sitk(scalar_3d(image, path, min_slices=1))
    array = volume.array
    check_finite(array, path)
    # An integer file needs only its range checked: rounding a big integer array to float to
    # compare it with itself would cost more than the rest of reading it.
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
    """What `read_labels_kind` found: the labels, whether they came from a segmentation (Slicer or DICOM SEG)
    (then 1 = a liver segment, 2 = a tumor segment, by name or terminology) and, for one, its
    segment names per class."""

    volume: Volume
    from_segmentation: bool
    segment_names: dict


def read_labels_kind(path, reference: Volume | None = None) -> Labels:
    """`read_labels`, saying also whether the file was a segmentation (Slicer .seg.nrrd or DICOM SEG)
    and what it held."""
    path = existing_path(path)
    if is_dicom_seg(path):  # a DICOM SEG: its liver and tumor segments, by code or name
        labels, names = read_seg_labels(path)
        if reference is not None:
            labels = labels_on_grid(labels, reference, source=str(path))
        return Labels(labels, True, names)
    image = read_any(path)
    names: dict = {}
    if is_segmentation_image(image):
        labels = labels_from_segmentation(image, path)
        for info, _ in segment_masks(image, path)[1]:
            names.setdefault(segment_class(info), []).append(info.name)
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
    reader = header_reader(labels_path)
    size = list(reader.GetSize())[:3]
    grid = Volume(np.ones(size[::-1], dtype=np.uint8), reader.GetSpacing()[:3], reader.GetOrigin()[:3],
                  np.asarray(reader.GetDirection()).reshape(reader.GetDimension(), -1)[:3, :3].ravel())
    if grid.same_grid(reference):
        return np.ones(reference.shape, dtype=bool)
    return resample_labels(grid, reference).array > 0


def write_labelmap(volume: Volume, path) -> None:
    """Write labels as compressed uint8 (0 background, 1 liver, 2 tumor by our convention)."""
    path = Path(path)
    check_write_suffix(path)
    array = as_uint8_labels(volume.array, "a label map")
    write_atomic(volume.with_array(array).to_sitk(), path)
