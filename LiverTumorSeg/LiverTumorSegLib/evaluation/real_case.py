"""The development case: a real contrast CT with 70 real tumors, split into what a radiologist
has annotated (half A) and what they segment next (half B).

LiTS case 117 ships as a 128^3 crop in the PyPI package `liver-ct-segmentation-package==1.6.0`
(`img_117.mrc`: HU as float32; `lab_117.mrc`: 0 background, 1 liver, 2 tumor). LiTS is CC BY-NC-SA
4.0: the benchmarks fetch the package into a cache and nothing of it is committed, nor is the
shipped default model trained on it.

The crop carries no geometry. Its raw axes run to the patient's left, to posterior and to the
head, so (z, y, x) = raw axes (2, 1, 0) is an LPS volume with the identity direction. The spacing
is not stored: 1.5 mm isotropic is a working assumption, and every mm figure measured on the case
(lesion sizes included) depends on it.

Half A is the inferior half (raw axis 2 below 64: 28 tumors), half B the superior half, the
liver dome (51 tumors, 25 of them 5-10 mm). Settings are chosen on A; B and the whole case only
report.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..storage.mrc import read_mrc
from ..volume import Volume

PACKAGE = "liver-ct-segmentation-package==1.6.0"
IMAGE_MEMBER = "liver_ct_segmentation_package/data/img_117.mrc"
LABELS_MEMBER = "liver_ct_segmentation_package/data/lab_117.mrc"
ASSUMED_SPACING_MM = 1.5
HALVES = ("A", "B")
WHEEL_PATTERN = "liver_ct_segmentation_package-1.6.0-*.whl"


def read_real_case(image_path: str | os.PathLike, labels_path: str | os.PathLike,
                   spacing_mm: float = ASSUMED_SPACING_MM) -> tuple[Volume, Volume]:
    """(CT in HU as int16, labels 0/1/2 as uint8) on one LPS grid from the MRC pair, origin 0.

    HU are rounded to whole numbers, as the case library stores a CT."""
    raw_image, raw_labels = read_mrc(image_path), read_mrc(labels_path)
    if raw_image.shape != raw_labels.shape:
        raise InputError(f"{image_path} is {raw_image.shape} but {labels_path} is {raw_labels.shape}: not one case")
    if not np.isin(raw_labels, (0, 1, 2)).all():
        raise InputError(f"{labels_path} holds labels other than 0 (background), 1 (liver) and 2 (tumor)")
    hu = np.rint(np.clip(raw_image.transpose(2, 1, 0), -32768, 32767)).astype(np.int16)
    labels = np.ascontiguousarray(raw_labels.transpose(2, 1, 0)).astype(np.uint8)
    spacing = (float(spacing_mm),) * 3
    return Volume(np.ascontiguousarray(hu), spacing), Volume(labels, spacing)


def split_halves(image: Volume, labels: Volume) -> dict[str, tuple[Volume, Volume]]:
    """{"A": inferior half, "B": superior half}, each (CT, labels) on its own part of the grid
    (origin moved along z, so a point keeps its LPS position)."""
    if image.shape != labels.shape:
        raise InputError(f"CT {image.shape} and labels {labels.shape} are not on one grid")
    middle = image.shape[0] // 2
    halves = {}
    for name, rows in (("A", slice(0, middle)), ("B", slice(middle, image.shape[0]))):
        origin = image.index_to_lps(np.array([[rows.start, 0, 0]]))[0]
        halves[name] = tuple(Volume(np.ascontiguousarray(v.array[rows]), v.spacing, tuple(origin), v.direction)
                             for v in (image, labels))
    return halves


def find_real_case(folder: str | os.PathLike) -> tuple[Path, Path]:
    """The MRC pair inside `folder` (an unpacked package or a folder holding the two files); the
    package's wheel in `folder` (as `pip download` leaves it) is unpacked there first."""
    folder = Path(folder)
    for base in (folder, folder / Path(IMAGE_MEMBER).parent):
        image, labels = base / Path(IMAGE_MEMBER).name, base / Path(LABELS_MEMBER).name
        if image.is_file() and labels.is_file():
            return image, labels
    wheels = sorted(folder.glob(WHEEL_PATTERN)) if folder.is_dir() else []
    if wheels:
        return _unpack(wheels[-1], folder)
    raise InputError(f"no {Path(IMAGE_MEMBER).name} and {Path(LABELS_MEMBER).name} in {folder}; "
                     f"fetch them with `pip download --no-deps {PACKAGE} -d {folder}`")


def _unpack(wheel_path: Path, folder: Path) -> tuple[Path, Path]:
    """The MRC pair written next to the wheel (each file complete or absent)."""
    import zipfile

    from ..storage.fsutil import atomic_path

    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            out = []
            for member in (IMAGE_MEMBER, LABELS_MEMBER):
                target = folder / Path(member).name
                with atomic_path(target) as tmp:
                    Path(tmp).write_bytes(wheel.read(member))
                out.append(target)
    except (zipfile.BadZipFile, KeyError) as error:
        raise InputError(f"{wheel_path} is not the {PACKAGE} wheel ({error}); delete it and download it again") from error
    return out[0], out[1]
