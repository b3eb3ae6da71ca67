"""Reading and writing CT images, label maps and 3D Slicer segmentations (.seg.nrrd): the names
callers use (`from ..storage import images`, then `images.read_image(...)`).

Every reader returns a `Volume` (array (z, y, x); spacing/origin/direction ITK order, LPS, mm)
and turns what a user can fix into one-line `InputError`s; every writer goes through
`fsutil.atomic_path`, so a reader never sees half a file.

Accepted inputs: NRRD (.nrrd/.nhdr), NIfTI (.nii/.nii.gz), MetaImage (.mha/.mhd), a folder
holding a DICOM series, and Slicer `.seg.nrrd` (shared-labelmap layers and the older
one-segment-per-volume 4D form). Written outputs are single files (.nrrd, .nii, .nii.gz, .mha),
so an atomic rename covers the whole output.

The code: image_files (paths, DICOM series, atomic writes), ct_images (CT in HU), labelmaps
(labels and liver masks on the CT's grid), segmentations (Slicer .seg.nrrd).
"""

from __future__ import annotations

from .ct_images import image_header, read_image, warn_if_implausible_ct, write_image
from .image_files import read_raw_nrrd
from .labelmaps import coverage_of, labels_on_grid, read_labels, read_labels_kind, read_liver_mask, write_labelmap
from .segmentations import (CASE_SEGMENTS, LIVER_SEGMENT, LIVER_TERMINOLOGY, TUMOR_SEGMENT, TUMOR_TERMINOLOGY, SegmentInfo,
                            is_segmentation_file, read_segmentation, write_segmentation)

__all__ = [
    "CASE_SEGMENTS", "LIVER_SEGMENT", "LIVER_TERMINOLOGY", "TUMOR_SEGMENT", "TUMOR_TERMINOLOGY", "SegmentInfo",
    "coverage_of", "image_header", "is_segmentation_file", "labels_on_grid", "read_image", "read_labels",
    "read_labels_kind", "read_liver_mask", "read_raw_nrrd", "read_segmentation", "warn_if_implausible_ct",
    "write_image", "write_labelmap", "write_segmentation",
]
