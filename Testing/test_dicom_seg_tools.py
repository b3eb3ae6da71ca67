"""The DICOM SEG that `segment --out *.dcm` writes, checked by the field's tools (scripts/check_dicom_seg.py):
dciodvfy (Debian's dicom3tools) finds no error, and dcmqi's segimage2itkimage (what Slicer's DICOM
plugin uses) reads it back equal to the .seg.nrrd output voxel for voxel, on the CT's voxel lattice.
.ci/run installs dicom3tools; requirements.txt pins dcmqi."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_dicom_seg.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("check_dicom_seg", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [name for name in ("dciodvfy", module.SEGIMAGE2ITKIMAGE) if module.tool(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install dicom3tools; pip install dcmqi): "
                    "scripts/check_dicom_seg.py needs them")
    return module


def test_seg_passes_dciodvfy_and_dcmqi_reads_back_the_same_voxels(check, tmp_path):
    results = check.run(["synthetic"], tmp_path)["synthetic"]
    for name in ("segment_output", "fixed_mask"):
        result = results[name]
        assert result["dciodvfy"]["iod"] == "Segmentation" and result["dciodvfy"]["errors"] == [], result["dciodvfy"]
        assert result["dcmqi_on_ct_lattice"] and result["dcmqi_equal"], result
        assert result["voxels"] > 10  # not two empty masks compared
