"""From a path to one SimpleITK image and back: file suffixes, a file or a DICOM series folder
(the series with most slices, refused when its slices are not evenly spaced: a volume has one
spacing), one-line reasons for what SimpleITK refuses, atomic writes, and a fast path for raw
NRRD voxels. Shared by the CT, label-map and segmentation readers and writers.

Arrays are (z, y, x); SimpleITK's sizes, spacing and origin are (x, y, z), LPS, mm.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..volume import Volume
from .fsutil import atomic_path

READ_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
WRITE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")
SEG_SUFFIX = ".seg.nrrd"


def file_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (SEG_SUFFIX, ".nii.gz"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def existing_path(path) -> Path:
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


def short_reason(exc: Exception) -> str:
    """The informative last line of a (multi-line) SimpleITK error, for one-line messages."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(exc).__name__


def is_segmentation_image(image: sitk.Image) -> bool:
    keys = image.GetMetaDataKeys()
    return "Segment0_ID" in keys or "Segmentation_MasterRepresentation" in keys


def _read_file(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = short_reason(exc)
        if "spacing" in reason.lower():
            raise InputError(
                f"{path} has an invalid voxel spacing ({reason}); every spacing must be a positive number of mm: "
                "fix the spacing in the file's header, or export the image again"
            ) from exc
        if file_suffix(path) in READ_SUFFIXES:
            raise InputError(
                f"cannot read {path} ({reason}): the file is damaged or is not a {file_suffix(path)} image; "
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


def dicom_series_files(folder, warn: bool = True) -> tuple[str, ...]:
    """The slice files of the series a DICOM folder is read as (the one with most slices; a
    warning names it when the folder holds several), in the reader's order: file k is slice z = k
    of the volume. A DICOM SEG written for that volume references these files."""
    folder = Path(folder)
    series = _dicom_series(folder)
    if not series:
        raise InputError(
            f"no DICOM series in folder {folder}; give a folder of DICOM slices or an image file (.nrrd, .nii.gz, .mha)"
        )
    uid, files = max(series, key=lambda s: len(s[1]))
    if len(series) > 1 and warn:
        warnings.warn(
            f"{folder} holds {len(series)} DICOM series; using {uid or 'the unnamed series'} with {len(files)} slices "
            "(the most); put the series you want alone in a folder to choose another"
        )
    return files


def _read_dicom_folder(folder: Path) -> sitk.Image:
    """The series with most slices (dicom_series_files)."""
    files = dicom_series_files(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's multi-line "missing slices" text: ours is below
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read the DICOM series in {folder} ({short_reason(exc)}); re-export the series") from exc
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


def read_any(path: Path) -> sitk.Image:
    return _read_dicom_folder(path) if path.is_dir() else _read_file(path)


def scalar_3d(image: sitk.Image, path: Path, min_slices: int) -> sitk.Image:
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


def check_finite(array: np.ndarray, path: Path) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise InputError(
                f"{path} has {bad} NaN or infinite voxels; re-export the image with those voxels set to a number"
            )


def header_reader(path) -> sitk.ImageFileReader:
    """A reader holding the file's header (size, spacing, geometry, metadata), voxels unread;
    RuntimeError when the header cannot be read."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def check_write_suffix(path: Path) -> None:
    suffix = file_suffix(path)
    if suffix == SEG_SUFFIX or suffix not in WRITE_SUFFIXES:
        raise InputError(f"cannot write {path.name}: use one of {', '.join(WRITE_SUFFIXES)}")


def write_atomic(image: sitk.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=file_suffix(path) != ".nii")


def all_integral(array: np.ndarray, tolerance: float = 1e-3, slab: int = 16) -> bool:
    """True when every value is within `tolerance` of an integer; a few slices at a time with an
    early stop, so a big float volume (a probability map) costs no full-size temporaries."""
    flat = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
    for start in range(0, flat.shape[0], slab):
        block = flat[start : start + slab]
        if not np.all(np.abs(block - np.rint(block)) < tolerance):
            return False
    return True


def as_uint8_labels(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == bool:
        return array.view(np.uint8)
    integral = np.issubdtype(array.dtype, np.integer) or all_integral(array, tolerance=1e-12)
    if array.size and (array.min() < 0 or array.max() > 255 or not integral):
        raise InputError(f"{what} must hold integer labels 0..255, got {float(array.min()):g}..{float(array.max()):g}")
    return array.astype(np.uint8, copy=False)


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
