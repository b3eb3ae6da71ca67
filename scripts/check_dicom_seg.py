"""Check the DICOM SEGs `livertumorseg segment --out *.dcm` writes with the field's own tools, not
only with our reader:

- dciodvfy (Debian's dicom3tools): the SEG must have no errors; its warnings are listed;
- segimage2itkimage (dcmqi, what Slicer's DICOM plugin uses to load a SEG): converted back to an
  image, it must lie on the CT's voxel lattice (dcmqi writes the slices the SEG holds: empty
  slices are omitted, as dcmqi's own writer does) and equal the .seg.nrrd output voxel for voxel
  once placed on the CT's grid; the same for a fixed mask with a voxel in a corner.

Two CT series: one written here from the TotalSegmentator NIfTI CT (30 slices, 3 mm,
data/dicom_series.py), and the real scanner series Testing/Data ships (20 JPEG 2000 slices,
512 x 512), whose anonymisation emptied its SOP UIDs: they are restored from each file's own
meta header in a copy (a SEG must reference them), and its emptied study, series and frame of
reference UIDs replaced by fixed made-up ones. Results: benchmarks/results/check_dicom_seg.json.

    python scripts/check_dicom_seg.py [--cases synthetic real] [--out benchmarks/results/check_dicom_seg.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LiverTumorSeg"))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from LiverTumorSegLib.cli import main as cli_main  # noqa: E402
from LiverTumorSegLib.data.dicom_series import write_ct_series  # noqa: E402
from LiverTumorSegLib.storage import images  # noqa: E402
from LiverTumorSegLib.storage.labelmaps import labels_on_grid  # noqa: E402
from LiverTumorSegLib.volume import Volume  # noqa: E402

DATA = REPO / "Testing" / "Data" / "totalsegmentator"
SEGIMAGE2ITKIMAGE = "segimage2itkimage"


def tool(name: str) -> str | None:
    """The tool's path: on PATH, or beside this Python (dcmqi's wheel installs its scripts there)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    return found


def dciodvfy(path: Path) -> dict:
    """dciodvfy's verdict on one file: its error and warning lines (it exits 0 either way)."""
    proc = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    iod = next((line for line in lines if not line.startswith(("Error", "Warning"))), "")
    return {"iod": iod, "errors": [l for l in lines if l.startswith("Error")],
            "warnings": [l for l in lines if l.startswith("Warning")]}


def dcmqi_mask(path: Path, work: Path) -> Volume:
    """The SEG converted back by dcmqi's segimage2itkimage (one NRRD per segment; ours has one)."""
    out = work / "dcmqi"
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([tool(SEGIMAGE2ITKIMAGE), "--inputDICOM", str(path), "--outputDirectory", str(out), "-t", "nrrd"],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"segimage2itkimage failed ({proc.returncode}): {proc.stderr[-500:] or proc.stdout[-500:]}")
    files = sorted(out.glob("*.nrrd"))
    if len(files) != 1:
        raise RuntimeError(f"segimage2itkimage wrote {len(files)} images, expected one segment")
    return Volume.from_sitk(sitk.ReadImage(str(files[0])))


def real_series_with_uids(folder: Path) -> Path:
    """A copy of the shipped scanner series with SOP Class / Instance UIDs restored from each file's
    meta header (Media Storage SOP Class / Instance UID), as the scanner wrote them, and fixed
    made-up study, series and frame of reference UIDs where the anonymisation emptied them."""
    import pydicom
    from pydicom.uid import generate_uid

    for path in sorted((DATA / "example_ct_dicom").iterdir()):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):  # emptied too: made up, fixed
            if not str(getattr(ds, key, "")):
                setattr(ds, key, generate_uid(entropy_srcs=["example_ct_dicom", key]))
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / path.name)
    return folder


def on_ct_lattice(image: Volume, ct: Volume) -> bool:
    """True when `image` lies on the CT's voxel lattice: same spacing and axes, its first voxel at a
    whole CT index (a crop of the CT grid, as dcmqi writes the frames a SEG holds): placing it on
    the CT grid then moves voxels, it interpolates nothing."""
    if not (np.allclose(image.spacing, ct.spacing, atol=1e-4) and np.allclose(image.direction, ct.direction, atol=1e-4)):
        return False
    d = np.asarray(ct.direction).reshape(3, 3) * np.asarray(ct.spacing)
    index = np.linalg.solve(d, np.asarray(image.origin) - np.asarray(ct.origin))
    return bool(np.allclose(index, np.rint(index), atol=1e-3))


def known_mask(shape) -> np.ndarray:
    """A fixed test mask (z, y, x): two balls in different slices and one voxel in a corner of the
    last slice (an axis flip or a slice-order error moves it)."""
    z, y, x = np.indices(shape)
    nz, ny, nx = shape
    mask = ((z - nz // 3) ** 2 + ((y - ny // 3) / 4) ** 2 + ((x - nx // 2) / 5) ** 2 < 4) | (
        ((z - 2 * nz // 3) ** 2 + ((y - ny // 2) / 6) ** 2 + ((x - nx // 3) / 3) ** 2) < 3)
    mask[-1, 0, -1] = True
    return mask


def compare_with_dcmqi(seg: Path, expected: np.ndarray, ct: Volume, work: Path) -> dict:
    theirs = dcmqi_mask(seg, work)
    on_ct = labels_on_grid(theirs, ct, source="dcmqi's image").array > 0
    return {"dcmqi_grid_is_ct_grid": bool(theirs.same_grid(ct)), "dcmqi_on_ct_lattice": on_ct_lattice(theirs, ct),
            "dcmqi_equal": bool(np.array_equal(on_ct, expected)), "differing_voxels": int(np.count_nonzero(on_ct != expected)),
            "voxels": int(expected.sum())}


def check_case(name: str, ct_folder: Path, liver: Path, work: Path) -> dict:
    """Segment the series into a SEG and a .seg.nrrd; validate the SEG; compare dcmqi's image with
    the .seg.nrrd on the CT grid. The same for a fixed mask written as a SEG (write_tumor_seg), as
    a tumor-free CT gives an empty result."""
    from LiverTumorSegLib.storage.dicom_seg import write_tumor_seg

    seg, nrrd = work / f"{name}.dcm", work / f"{name}.seg.nrrd"
    for out in (seg, nrrd):
        code = cli_main(["segment", str(ct_folder), "--liver", str(liver), "--out", str(out), "--threads", "1",
                         "--overwrite"])
        if code != 0:
            raise RuntimeError(f"segment --out {out.name} exited {code}")
    ct = images.read_image(ct_folder, keep_integer=True)
    ours = images.read_labels_kind(nrrd, reference=ct).volume.array == 2
    known = work / f"{name}-known.dcm"
    mask = known_mask(ct.shape)
    write_tumor_seg(known, ct.with_array(mask.astype(np.uint8)), ct_folder, "check", 0.5)
    return {
        "ct": f"{ct.shape[2]}x{ct.shape[1]}x{ct.shape[0]} voxels of " + "x".join(f"{s:g}" for s in ct.spacing) + " mm",
        "segment_output": {"dciodvfy": dciodvfy(seg), **compare_with_dcmqi(seg, ours, ct, work / f"{name}-dcmqi")},
        "fixed_mask": {"dciodvfy": dciodvfy(known), **compare_with_dcmqi(known, mask, ct, work / f"{name}-known-dcmqi")},
    }


def run(cases: list[str], work: Path) -> dict:
    missing = [name for name in ("dciodvfy", SEGIMAGE2ITKIMAGE) if tool(name) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install dicom3tools; pip install dcmqi (requirements.txt)")
    results = {}
    if "synthetic" in cases:
        folder = work / "synthetic_ct"
        write_ct_series(images.read_image(DATA / "example_ct_sm.nii.gz", keep_integer=True), folder, name="check")
        results["synthetic"] = check_case("synthetic", folder, DATA / "example_ct_sm_liver.nii.gz", work)
        results["synthetic"]["ct_slice_dciodvfy"] = dciodvfy(folder / "slice-0000.dcm")
    if "real" in cases:
        folder = real_series_with_uids(work / "real_ct")
        results["real"] = check_case("real", folder, DATA / "example_ct_dicom_liver.nii.gz", work)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=("synthetic", "real"), default=["synthetic", "real"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "check_dicom_seg.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.cases, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    checks = [c for r in results.values() for c in (r["segment_output"], r["fixed_mask"])]
    ok = all(not c["dciodvfy"]["errors"] and c["dcmqi_equal"] and c["dcmqi_on_ct_lattice"] for c in checks)
    print("OK: no dciodvfy errors; dcmqi equals the NRRD voxel for voxel" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
