"""CT volumes: reading them in Hounsfield units (with warnings for what is likely not HU or too
coarse for liver tumors), their header alone, and writing them (int16 when the values allow).

Every reader returns a `Volume` (array (z, y, x); spacing/origin/direction ITK order, LPS, mm).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..volume import Volume
from .image_files import (SEG_SUFFIX, all_integral, check_finite, check_write_suffix, existing_path, file_suffix,
                          header_reader, is_segmentation_image, read_any, scalar_3d, write_atomic)

# Slices further apart than this (mm) hide tumors of that size; CT for liver lesions is 0.5-5 mm.
MAX_SLICE_MM = 8.0
# Liver parenchyma in CT is 40-200 HU (unenhanced to portal venous), down to about -50 HU in
# severe steatosis; far outside this range the values are not HU.
LIVER_HU_RANGE = (-100.0, 300.0)


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


def image_header(path) -> tuple[tuple, tuple] | None:
    """(shape z, y, x; spacing z, y, x mm) of an image file from its header alone, without
    reading the voxels; None for a folder or a header that cannot be read (read_image says why)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        reader = header_reader(path)
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
    path = existing_path(path)
    seg_message = f"{path} is a Slicer segmentation, not a CT; give the CT image here and the segmentation as the mask"
    if file_suffix(path) == SEG_SUFFIX:
        raise InputError(seg_message)
    from .dicom_seg import is_dicom_seg

    if is_dicom_seg(path):
        raise InputError(f"{path} is a DICOM segmentation (SEG), not a CT; give the CT's DICOM series folder here "
                         "and the SEG as the mask")
    image = read_any(path)
    if is_segmentation_image(image):
        raise InputError(seg_message)
    eight_bit = image.GetPixelID() in (sitk.sitkUInt8, sitk.sitkInt8)
    volume = Volume.from_sitk(scalar_3d(image, path, min_slices=2))
    del image
    if not (keep_integer and np.issubdtype(volume.array.dtype, np.integer) and volume.array.dtype.itemsize <= 2):
        volume.array = volume.array.astype(np.float32, copy=False)
    check_finite(volume.array, path)
    _warn_if_not_hu(volume.array, path, eight_bit)
    return volume


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


def _ct_storage_array(array: np.ndarray) -> np.ndarray:
    """int16 when every value is an integer (within 1e-3) in int16 range, else float32: HU fit int16."""
    in_range = not array.size or (array.min() >= -32768 and array.max() <= 32767)
    if np.issubdtype(array.dtype, np.integer) and in_range:
        return array.astype(np.int16, copy=False)
    if in_range and np.issubdtype(array.dtype, np.floating) and all_integral(array):
        return np.rint(array).astype(np.int16)
    return array.astype(np.float32, copy=False)


def write_image(volume: Volume, path) -> None:
    """Write a CT (HU): int16 when all values are integral, else float32; format from the suffix."""
    path = Path(path)
    check_write_suffix(path)
    write_atomic(volume.with_array(_ct_storage_array(volume.array)).to_sitk(), path)
