"""A CT volume written as a DICOM CT series (one file per slice): the input a PACS export gives,
made from a phantom or a NIfTI fixture so that the DICOM path (reading a series, writing a SEG
that references it, a batch over series folders) can be tested and benchmarked with no patient
data.

Pixels are signed 16-bit HU (rescale slope 1, intercept 0), uncompressed (explicit VR little
endian). UIDs derive from `name`: the same call writes the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_ct_series(volume: Volume, folder, name: str = "phantom", patient_id: str = "LTS-TEST") -> list[Path]:
    """Write `volume` (HU, (z, y, x), ITK geometry) into `folder` as CT slices `slice-0000.dcm`...
    (slice z at Image Position Patient = the volume's voxel (z, 0, 0); rows along y, columns along x);
    returns the files in slice order. Values are rounded and clipped to int16."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    uid = lambda *parts: generate_uid(entropy_srcs=[name, *map(str, parts)])  # noqa: E731
    study, series, frame = uid("study"), uid("series"), uid("frame of reference")
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    orientation = [float(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
    pixels = np.clip(np.rint(volume.array), -32768, 32767).astype(np.int16)
    nz, ny, nx = pixels.shape
    files = []
    for z in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = uid("slice", z)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyDate, ds.SeriesDate, ds.ContentDate = "20260101", "20260101", "20260101"
        ds.StudyTime, ds.SeriesTime, ds.ContentTime = "120000", "120000", "120000"
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "LiverTumorSeg synthetic"
        ds.ReferringPhysicianName = ""
        ds.PatientName = f"Synthetic^{name}"[:64]
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.Laterality = ""
        ds.PatientPosition = "FFS"
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = z + 1
        ds.PositionReferenceIndicator = ""
        ds.KVP = "120"
        ds.SliceThickness = f"{volume.spacing[2]:.6g}"
        ds.ImagePositionPatient = [f"{v:.6f}" for v in volume.index_to_lps(np.array([[z, 0.0, 0.0]]))[0]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [f"{volume.spacing[1]:.6g}", f"{volume.spacing[0]:.6g}"]  # row spacing (y), column (x)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.PixelData = np.ascontiguousarray(pixels[z]).tobytes()
        path = folder / f"slice-{z:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files
