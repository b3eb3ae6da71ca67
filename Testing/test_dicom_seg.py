"""DICOM SEG out and in (storage/dicom_seg.py, `segment --out *.dcm`, SEG masks wherever a mask is
read), on a DICOM CT series written here from the real TotalSegmentator CT (30 slices, 3 mm).

What a SEG must hold is checked with highdicom's own reader as well as ours; the real-tool checks
(dciodvfy, dcmqi) are in scripts/check_dicom_seg.py and test_dicom_seg_tools.py.
"""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from LiverTumorSegLib.cli import main
from LiverTumorSegLib.data.dicom_series import write_ct_series
from LiverTumorSegLib.storage import images
from LiverTumorSegLib.storage.dicom_seg import is_dicom_seg, read_seg_labels, write_tumor_seg


@pytest.fixture(scope="module")
def series(tmp_path_factory, totalseg_dir):
    """(DICOM series folder, the CT as read from it, its liver mask file (NIfTI))."""
    folder = tmp_path_factory.mktemp("dicom") / "ct"
    ct = images.read_image(totalseg_dir / "example_ct_sm.nii.gz", keep_integer=True)
    write_ct_series(ct, folder, name="test-series")
    return folder, images.read_image(folder, keep_integer=True), totalseg_dir / "example_ct_sm_liver.nii.gz"


def write_organ_seg(path, folder, masks: dict) -> None:
    """A SEG like TotalSegmentator's: one segment per organ {label: (type code, mask (z, y, x))}."""
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]
    descriptions, stack = [], []
    algorithm = hd.AlgorithmIdentificationSequence(name="organs", version="1", family=codes.cid7162.ArtificialIntelligence)
    for number, (label, (code, mask)) in enumerate(masks.items(), start=1):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label,
            segmented_property_category=hd.sr.CodedConcept("123037004", "SCT", "Anatomical Structure"),
            segmented_property_type=hd.sr.CodedConcept(*code),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm))
        stack.append(mask.astype(np.uint8))
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=np.stack(stack, axis=-1), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test", software_versions="1",
        device_serial_number="1")
    seg.save_as(path)


def test_segment_writes_a_seg_that_references_its_series_and_equals_the_nrrd(series, tmp_path, capsys):
    folder, ct, liver = series
    dcm, nrrd = tmp_path / "tumor.dcm", tmp_path / "tumor.seg.nrrd"
    for out in (dcm, nrrd):
        assert main(["segment", str(folder), "--liver", str(liver), "--out", str(out), "--threads", "1"]) == 0
    truth = images.read_labels_kind(nrrd, reference=ct).volume.array == 2
    assert truth.sum() > 10  # the default model finds lesions here: the comparison is not of two empty masks

    seg = hd.seg.segread(dcm)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.PatientID == sources[0].PatientID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in sources}
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "Liver tumor"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "4147007"  # SCT Mass
    assert segment.AnatomicRegionSequence[0].CodeValue == "10200004"  # SCT Liver
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "LiverTumorSeg" and "model default" in algorithm.AlgorithmVersion

    # Frame by frame as any DICOM reader sees it: each frame names its source slice, whose z it is drawn on.
    z_of = {ds.SOPInstanceUID: z for z, ds in enumerate(sources)}
    frames = pydicom.dcmread(dcm).pixel_array.reshape(-1, *ct.shape[1:])
    dicom_mask = np.zeros(ct.shape, dtype=bool)
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose(group.PlanePositionSequence[0].ImagePositionPatient, sources[z_of[source]].ImagePositionPatient)
        dicom_mask[z_of[source]] |= frame > 0
    assert np.array_equal(dicom_mask, truth)
    # ... and ours, wherever a mask is read.
    ours = images.read_labels_kind(dcm, reference=ct)
    assert ours.from_segmentation and ours.segment_names == {2: ["Liver tumor"]}
    assert np.array_equal(ours.volume.array == 2, truth)
    capsys.readouterr()
    assert main(["evaluate", str(dcm), str(nrrd)]) == 0
    assert json.loads(capsys.readouterr().out)["dice"] == 1.0


def test_a_seg_round_trips_any_mask_exactly_and_deterministically(series, tmp_path):
    folder, ct, _ = series
    rng = np.random.default_rng(0)
    mask = np.zeros(ct.shape, dtype=np.uint8)
    mask[3:6] = rng.random((3,) + ct.shape[1:]) < 0.2  # frames 6.. are empty (omitted from the SEG)
    mask[-1, 0, -1] = 1  # a corner voxel of the last slice: orientation and order errors show here
    write_tumor_seg(tmp_path / "a.dcm", ct.with_array(mask), folder, "v007", 0.5)
    write_tumor_seg(tmp_path / "b.dcm", ct.with_array(mask), folder, "v007", 0.5)
    labels, names = read_seg_labels(tmp_path / "a.dcm")
    assert names == {2: ["Liver tumor"]}
    on_ct = images.labels_on_grid(labels, ct)
    assert np.array_equal(on_ct.array == 2, mask == 1)
    a, b = pydicom.dcmread(tmp_path / "a.dcm"), pydicom.dcmread(tmp_path / "b.dcm")
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion.endswith("v007")
    write_tumor_seg(tmp_path / "c.dcm", ct.with_array(np.zeros_like(mask)), folder, "v007", 0.5)  # no lesion
    empty, _ = read_seg_labels(tmp_path / "c.dcm")
    assert not images.labels_on_grid(empty, ct).array.any()
    assert pydicom.dcmread(tmp_path / "c.dcm").SOPInstanceUID != a.SOPInstanceUID
    assert is_dicom_seg(tmp_path / "a.dcm") and not is_dicom_seg(next(folder.iterdir()))
    assert not list(tmp_path.glob(".*"))  # no temp left beside the outputs


def test_a_seg_with_a_liver_segment_is_a_liver_mask(series, tmp_path):
    """TotalSegmentator-style SEG (liver among other organs, coded, no 'liver' needed in the name)."""
    folder, ct, liver_file = series
    liver = images.read_liver_mask(liver_file, reference=ct)
    spleen = np.zeros(ct.shape, dtype=bool)
    spleen[10:20, 10:30, 10:30] = True
    write_organ_seg(tmp_path / "organs.dcm", folder, {
        "spleen": (("78961009", "SCT", "Spleen"), spleen), "organ 5": (("10200004", "SCT", "Liver"), liver)})
    assert np.array_equal(images.read_liver_mask(tmp_path / "organs.dcm", reference=ct), liver)
    assert main(["segment", str(folder), "--liver", str(tmp_path / "organs.dcm"), "--out", str(tmp_path / "a.nrrd"),
                 "--threads", "1"]) == 0
    assert main(["segment", str(folder), "--liver", str(liver_file), "--out", str(tmp_path / "b.nrrd"),
                 "--threads", "1"]) == 0
    a, b = images.read_labels(tmp_path / "a.nrrd").array, images.read_labels(tmp_path / "b.nrrd").array
    assert a.any() and np.array_equal(a, b)


def test_seg_inputs_and_outputs_that_cannot_work_are_refused_with_the_fix(series, tmp_path, totalseg_dir, capsys):
    folder, ct, liver_file = series
    spleen = np.zeros(ct.shape, dtype=bool)
    spleen[10:20, 10:30, 10:30] = True
    write_organ_seg(tmp_path / "spleen.dcm", folder, {"spleen": (("78961009", "SCT", "Spleen"), spleen)})
    capsys.readouterr()
    assert main(["segment", str(folder), "--liver", str(tmp_path / "spleen.dcm"), "--out", str(tmp_path / "o.nrrd")]) == 2
    assert "no liver or tumor segment (segments: 'spleen')" in capsys.readouterr().err
    tumor = tmp_path / "tumor.dcm"
    write_tumor_seg(tumor, ct.with_array(spleen.astype(np.uint8)), folder, "v1", 0.5)
    assert main(["segment", str(folder), "--liver", str(tumor), "--out", str(tmp_path / "o.nrrd")]) == 2
    assert "has no liver segment" in capsys.readouterr().err
    assert main(["segment", str(tumor), "--out", str(tmp_path / "o.nrrd")]) == 2
    assert "is a DICOM segmentation (SEG), not a CT" in capsys.readouterr().err
    # A SEG needs the CT's DICOM slices: refused for a NIfTI CT, and for a series stripped of its UIDs.
    assert main(["segment", str(totalseg_dir / "example_ct_sm.nii.gz"), "--out", str(tmp_path / "o.dcm")]) == 2
    assert "is not a DICOM series folder" in capsys.readouterr().err
    assert main(["segment", str(totalseg_dir / "example_ct_dicom"), "--out", str(tmp_path / "o.dcm")]) == 2
    assert "no SOP Instance or SOP Class UID" in capsys.readouterr().err
    assert main(["segment", str(totalseg_dir / "example_ct_sm.nii.gz"), "--out-format", "dicom-seg", "--out",
                 str(tmp_path / "result")]) == 2
    assert not (tmp_path / "o.nrrd").exists() and not (tmp_path / "o.dcm").exists() and not (tmp_path / "result").exists()
