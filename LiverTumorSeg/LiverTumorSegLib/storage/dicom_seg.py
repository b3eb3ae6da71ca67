"""DICOM Segmentation objects (SEG): what a PACS stores and Slicer's DICOM module loads.

Written: a binary SEG of the tumor mask that references the CT series it was computed on (its
study, series, frame of reference and every source slice), with one segment "Liver tumor" and the
algorithm that made it (name, product version, model version). Read: the liver and tumor segments
of any SEG (ours, TotalSegmentator's `--output_type dicom`, a PACS's), as 0/1/2 labels on the
SEG's own grid, which labelmaps.py then puts on the CT's grid like any other mask.

Segment code (the same triple as our .seg.nrrd, TUMOR_TERMINOLOGY, so Slicer shows the same entry
whichever file it opens): category SCT 49755003 "Morphologically Abnormal Structure" (DICOM CID
7150's meaning; Slicer's General Anatomy list calls the same code "Morphologically Altered
Structure"), type SCT 4147007 "Mass" (CID 7159, lesion segmentation types), anatomic region SCT
10200004 "Liver". Mass, not "Neoplasm of liver": the model finds hypodense masses and cannot tell
a neoplasm from a cyst or an abscess, and Slicer's list offers "Mass" with a liver region.

Arrays are (z, y, x); frame k of a SEG we write is slice z = k of the CT, whose file is the k-th
of `image_files.dicom_series_files`. highdicom and pydicom are imported only here, inside
functions: other formats never pay for them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .fsutil import atomic_path
from .image_files import dicom_series_files
from .segmentations import LIVER_CODE, TUMOR_SEGMENT, SegmentInfo, segment_class, terminology_entry

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
ALGORITHM_NAME = "LiverTumorSeg"
SEG_SERIES_NUMBER = 9001  # after the scanner's own series numbers, which rarely pass a few hundred
TUMOR_LABEL = "Liver tumor"
CATEGORY = ("49755003", "SCT", "Morphologically Abnormal Structure")
TUMOR_TYPE = ("4147007", "SCT", "Mass")
LIVER_REGION = (LIVER_CODE[1], LIVER_CODE[0], LIVER_CODE[2])
# Geometry tolerance (mm) between the CT volume as read and the slices' own positions.
POSITION_TOLERANCE_MM = 0.01


def is_dicom_seg(path) -> bool:
    """True for a single DICOM file holding a Segmentation (by its SOP Class, header only)."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        head = handle.read(132)
    if head[128:132] != b"DICM":
        return False
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # pydicom raises many types for a damaged header: then it is not a SEG we can read
        return False
    return str(getattr(ds, "SOPClassUID", "")) == SEG_SOP_CLASS


def source_datasets(folder) -> list:
    """The headers (pydicom datasets, no pixels) of the CT series that `read_image(folder)` reads,
    in slice order (z = 0 first). InputError when they cannot be referenced by a SEG."""
    import pydicom

    files = dicom_series_files(folder, warn=False)
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    missing = [Path(f).name for f, ds in zip(files, datasets)
               if not str(getattr(ds, "SOPInstanceUID", "")) or not str(getattr(ds, "SOPClassUID", ""))]
    if missing:
        raise InputError(
            f"{len(missing)} slice(s) of the DICOM series in {folder} (first {missing[0]}) have no SOP Instance or "
            "SOP Class UID (anonymised too far?), and a DICOM SEG must reference each source slice: export the "
            "series again with its UIDs, or write --out as .seg.nrrd"
        )
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if not str(getattr(datasets[0], key, "")):
            raise InputError(f"the DICOM series in {folder} has no {key}; a DICOM SEG must reference it: export the "
                             "series again from the PACS or scanner, or write --out as .seg.nrrd")
    return datasets


def _check_slices_match(volume: Volume, datasets: list, folder) -> None:
    """The volume's slice z must lie where dataset z says it does (first and last slice), so that
    frame z of the SEG is drawn on the right source slice."""
    for z in (0, len(datasets) - 1):
        expected = np.asarray([float(v) for v in datasets[z].ImagePositionPatient])
        found = volume.index_to_lps(np.array([[z, 0, 0]], dtype=float))[0]
        if volume.shape[0] != len(datasets) or np.abs(expected - found).max() > POSITION_TOLERANCE_MM:
            raise InputError(
                f"the CT volume does not line up with the slices of the DICOM series in {folder} (slice {z}); "
                "segment the DICOM folder itself (not a converted copy) to write a DICOM SEG"
            )


def _quiet_highdicom() -> None:
    """highdicom logs each module it copies at INFO and how it encodes an empty mask at WARNING; the
    command line shows both: only its errors are kept (ours say what went wrong)."""
    import logging

    logging.getLogger("highdicom").setLevel(logging.ERROR)


def _coded(code: tuple):
    import highdicom as hd

    value, scheme, meaning = code
    return hd.sr.CodedConcept(value, scheme, meaning)


def write_tumor_seg(path, tumor: Volume, source, model_version: str, threshold: float) -> None:
    """A binary DICOM SEG of `tumor` (uint8/bool (z, y, x) on the CT grid) with one segment "Liver
    tumor", referencing every source slice. `source`: the DICOM series folder the CT was read from,
    or its slices' headers in slice order (`source_datasets`, kept by a front end whose upload
    folder is gone). Its UIDs derive from the source series, the model version and the mask's
    content: the same run gives the same UIDs, a different result new ones. Written atomically
    (temp file + rename)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from .. import __version__

    _quiet_highdicom()
    datasets = list(source) if isinstance(source, (list, tuple)) else source_datasets(source)
    _check_slices_match(tumor, datasets, source if not isinstance(source, (list, tuple)) else "the CT's series")
    mask = np.ascontiguousarray(tumor.array != 0).astype(np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        version=f"{__version__} model {model_version}"[:64],
        family=codes.cid7162.ArtificialIntelligence,
        parameters={"model_version": str(model_version)[:64], "threshold": f"{threshold:.4g}"},
    )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=TUMOR_LABEL,
        segmented_property_category=_coded(CATEGORY),
        segmented_property_type=_coded(TUMOR_TYPE),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[_coded(LIVER_REGION)],
        display_color=hd.color.CIELabColor.from_rgb(*(255 * c for c in TUMOR_SEGMENT.color)),  # the .seg.nrrd colour
    )
    digest = hashlib.sha256(np.packbits(mask).tobytes()).hexdigest()
    entropy = [str(datasets[0].SeriesInstanceUID), str(model_version), f"{threshold:.6g}", digest]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(entropy_srcs=entropy + ["series"]),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(entropy_srcs=entropy + ["instance"]),
        instance_number=1,
        manufacturer=ALGORITHM_NAME,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=__version__,
        device_serial_number="none",
        series_description=f"{TUMOR_LABEL} ({ALGORITHM_NAME})",
        content_label="LIVER_TUMOR",
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)


def _concept(item, key: str) -> tuple[str, str, str]:
    seq = getattr(item, key, None)
    if not seq:
        return ("", "", "")
    code = seq[0]
    return (str(getattr(code, "CodingSchemeDesignator", "")), str(getattr(code, "CodeValue", "")),
            str(getattr(code, "CodeMeaning", "")))


def segment_infos(seg) -> list[SegmentInfo]:
    """Each segment of a SEG as a SegmentInfo (number, label, Slicer-style terminology entry), so
    segment_class finds liver and tumor the same way for a SEG as for a .seg.nrrd."""
    infos = []
    for item in seg.SegmentSequence:
        region = _concept(item, "AnatomicRegionSequence")
        entry = terminology_entry(_concept(item, "SegmentedPropertyCategoryCodeSequence"),
                                  _concept(item, "SegmentedPropertyTypeCodeSequence"), region)
        infos.append(SegmentInfo(int(item.SegmentNumber), str(getattr(item, "SegmentLabel", "")), terminology=entry))
    return infos


def grid_of(affine: np.ndarray, shape_zyx) -> Volume:
    """An empty (uint8) Volume on the grid of a highdicom affine (4x4, (slice, row, column) index ->
    LPS mm) and spatial shape: x = columns, y = rows, z = slices, in ITK spacing/origin/direction."""
    affine = np.asarray(affine, dtype=float)
    steps = affine[:3, [2, 1, 0]]  # one voxel along x, y, z, in LPS mm
    spacing = np.linalg.norm(steps, axis=0)
    return Volume(np.zeros(tuple(int(n) for n in shape_zyx), dtype=np.uint8), tuple(spacing), tuple(affine[:3, 3]),
                  tuple((steps / spacing).ravel()))


def read_seg_labels(path) -> tuple[Volume, dict]:
    """(uint8 labels on the SEG's grid: 1 liver, 2 tumor, 0 the rest; {class: [segment labels]})
    of a DICOM SEG. Liver and tumor segments are found by name or code (segment_class); a SEG with
    neither is refused with the segments it holds. Where they overlap, tumor wins (tumors lie in
    the liver)."""
    import highdicom as hd

    _quiet_highdicom()
    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # highdicom/pydicom raise many types for a damaged or unsupported SEG
        raise InputError(f"cannot read the DICOM SEG {path} ({type(exc).__name__}: {str(exc)[:150]}); "
                         "export it again") from exc
    infos = segment_infos(seg)
    classes = {info.value: segment_class(info) for info in infos}
    names: dict = {}
    for info in infos:
        if classes[info.value]:
            names.setdefault(classes[info.value], []).append(info.name)
    if not names:
        listed = ", ".join(f"'{info.name}'" for info in infos) or "none"
        raise InputError(
            f"{path} has no liver or tumor segment (segments: {listed}); give a SEG with a segment coded as Liver "
            f"(SCT {LIVER_CODE[1]}) or named e.g. 'Liver' / 'Liver tumor'"
        )
    wanted = [number for number, cls in classes.items() if cls]
    try:
        volume = seg.get_volume(segment_numbers=wanted, combine_segments=False, skip_overlap_checks=True)
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"the frames of the DICOM SEG {path} do not form one regular volume ({str(exc)[:150]}); "
                         "export it again as a 3D segmentation of one series") from exc
    labels = grid_of(volume.affine, volume.spatial_shape)
    stack = np.asarray(volume.array)  # (slices, rows, columns, segments), in `wanted` order
    for wanted_class in (1, 2):
        for i, number in enumerate(wanted):
            if classes[number] == wanted_class:
                labels.array[stack[..., i] != 0] = wanted_class
    return labels, names
