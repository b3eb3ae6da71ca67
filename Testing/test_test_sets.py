"""The fixed held-out test sets (evaluation/test_sets.py) and the real reference CTs they build on."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.errors import InputError
from LiverTumorSegLib.evaluation.test_sets import FULL_TEST_SETS, held_out_test_sets, load_reference_cases


def test_reference_cases_load_with_their_livers_on_the_ct_grid(references, totalseg_dir):
    assert set(references) == {"example_ct_sm", "example_ct_dicom"}
    for image, liver in references.values():
        assert liver.shape == image.shape and liver.dtype == bool and liver.any()
        assert 30 < np.median(image.array[liver]) < 200  # soft tissue, not fat or air: the mask sits on the liver
    image, liver = references["example_ct_dicom"]
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(totalseg_dir / "example_ct_dicom_liver.nii.gz"))) > 0
    assert np.array_equal(liver, stored[:, ::-1, :])  # the stored mask's y axis is flipped

    def not_soft_tissue(mask):
        hu = image.array[mask]
        return np.mean((hu < 0) | (hu > 200))

    assert not_soft_tissue(liver) < 0.02 < 0.1 < not_soft_tissue(stored)  # read naively it misses the liver


def test_load_reference_cases_says_what_is_missing(tmp_path):
    with pytest.raises(InputError, match="missing"):
        load_reference_cases(tmp_path)


def test_held_out_sets_come_from_fixed_seeds(data_dir):
    """The smallest config gives the same cases every time (their ids carry the seeds), each with tumors."""
    config = {**FULL_TEST_SETS, "phantom": "small", "test_cases": 1, "test_min_tumors": 1, "test_tumors": [1, 2],
              "ref_variants": 1, "ref_tumors": [1, 2], "ref_names": ["example_ct_sm"], "small_phantoms": 0, "small_ref_variants": 1}
    sets = held_out_test_sets(config, data_dir)
    assert {name: [c[0] for c in cases] for name, cases in sets.items()} == {
        "phantom": ["test_phantom5000000"], "reference_synth": ["example_ct_sm_synth0"], "small_tumor": ["example_ct_sm_small0"]}
    for cases in sets.values():
        for _, image, labels in cases:
            assert labels.same_grid(image) and (labels.array == 2).any()
