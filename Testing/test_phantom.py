"""Phantoms: deterministic, truthful labels, realistic enough that a fixed HU threshold fails."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorSegLib.storage import images
from LiverTumorSegLib.core.floor import fit_threshold_baseline
from LiverTumorSegLib.errors import InputError
from LiverTumorSegLib.core.lesions import label_lesions
from LiverTumorSegLib.data.phantom import PhantomSettings, case_seeds, make_phantom, write_phantom_cases

SMALL = PhantomSettings.small()


@pytest.fixture(scope="module")
def cases():
    return [make_phantom(seed, SMALL) for seed in range(4)]


def test_same_seed_gives_the_same_case_and_another_seed_does_not():
    a, b, c = make_phantom(11, SMALL), make_phantom(11, SMALL), make_phantom(12, SMALL)
    assert np.array_equal(a.image.array, b.image.array)
    assert np.array_equal(a.labels.array, b.labels.array)
    assert a.tumors == b.tumors and a.image.spacing == b.image.spacing
    assert a.image.shape != c.image.shape or not np.array_equal(a.image.array, c.image.array)


def test_grid_types_and_spacing_follow_the_settings(cases):
    for case in cases:
        image, labels = case.image, case.labels
        assert image.array.dtype == np.int16 and labels.array.dtype == np.uint8
        assert image.same_grid(labels)
        assert set(np.unique(labels.array)) <= {0, 1, 2}
        nz, ny, nx = image.shape
        assert ny == nx == SMALL.matrix and 8 <= nz <= SMALL.max_slices
        sx, sy, sz = image.spacing
        assert sx == sy and SMALL.inplane_mm[0] <= sx <= SMALL.inplane_mm[1]
        assert SMALL.slice_mm[0] <= sz <= SMALL.slice_mm[1]


def test_full_preset_is_a_clinical_grid():
    s = PhantomSettings.full()
    assert s.matrix == 512 and s.inplane_mm == (0.6, 0.9) and s.slice_mm == (1.0, 5.0)
    assert s.tumor_diameter_mm == (5.0, 80.0)


def test_hu_values_look_like_portal_venous_ct(cases):
    for case in cases:
        hu, labels = case.image.array.astype(float), case.labels.array
        liver = labels == 1
        assert 85 <= np.median(hu[liver]) <= 135
        assert hu[0, 0, 0] < -900  # air outside the body
        assert np.percentile(hu, 99.9) > 300  # bone
        body = hu > -500
        assert np.mean(hu[body] < -50) > 0.1  # fat


def test_every_tumor_is_one_component_inside_the_liver(cases):
    for case in cases:
        tumor = case.labels.array == 2
        components, n = label_lesions(tumor)
        assert n == len(case.tumors) >= 1
        sizes = sorted(np.bincount(components.ravel())[1:].tolist())
        assert sizes == sorted(t["voxels"] for t in case.tumors)
        for k in range(1, n + 1):  # the shell round each tumor is mostly liver
            one = components == k
            shell = ndimage.binary_dilation(one, np.ones((3, 3, 3))) & ~one
            assert np.mean(case.labels.array[shell] == 1) > 0.5


def test_tumor_sizes_kinds_and_contrast(cases):
    lo, hi = SMALL.tumor_diameter_mm
    for case in cases:
        liver_hu = np.median(case.image.array[case.labels.array == 1])
        components, _ = label_lesions(case.labels.array == 2)
        for t in case.tumors:
            assert lo <= 2 * t["radius_mm"] <= hi
            assert 0.3 * lo <= t["diameter_mm"] <= 1.3 * hi
            assert t["kind"] in ("hypo", "necrotic", "rim", "hyper")
            k = components[tuple(np.round(t["center"]).astype(int))]
            if t["kind"] in ("hypo", "necrotic") and t["diameter_mm"] >= 15 and k:
                assert case.image.array[components == k].mean() < liver_hu - 15
            if t["kind"] == "hyper" and t["diameter_mm"] >= 15 and k:
                assert case.image.array[components == k].mean() > liver_hu + 5


def test_liver_holds_distractors_a_threshold_confuses_with_tumor():
    case = make_phantom(3, PhantomSettings.small(n_cysts=(3, 3)))
    hu = ndimage.gaussian_filter(case.image.array.astype(np.float32), 1.0)
    liver = case.labels.array == 1
    median = np.median(hu[liver])
    assert np.count_nonzero(liver & (hu < 30)) > 20  # cysts: water density, labelled liver
    assert np.count_nonzero(liver & (hu > median + 40)) > 20  # vessels


def test_tumor_count_option():
    for seed in range(3):
        case = make_phantom(seed, PhantomSettings.small(n_tumors=(3, 3)))
        assert len(case.tumors) == 3 and label_lesions(case.labels.array == 2)[1] == 3
    healthy = make_phantom(0, PhantomSettings.small(n_tumors=(0, 0)))
    assert healthy.tumors == [] and not np.any(healthy.labels.array == 2)
    assert np.any(healthy.labels.array == 1)


def _threshold_dice(settings: PhantomSettings, train_seeds, test_seeds) -> list[float]:
    """The classical floor (core/floor.py): smoothing, one HU threshold fitted on training phantoms, speck removal."""
    def load(seed):
        case = make_phantom(seed, settings)
        return case.image, case.labels.array > 0, case.labels.array == 2

    baseline = fit_threshold_baseline([load(s) for s in train_seeds])
    dice = []
    for seed in test_seeds:
        image, liver, truth = load(seed)
        pred = baseline.segment(image, liver)
        dice.append(2 * np.count_nonzero(pred & truth) / max(np.count_nonzero(pred) + np.count_nonzero(truth), 1))
    return dice


def test_fixed_threshold_scores_badly_on_phantoms_but_well_without_the_confounders():
    train, test = [100, 101, 102], [200, 201, 202, 203, 204]
    hard = _threshold_dice(SMALL, train, test)
    easy_settings = PhantomSettings.small(
        tumor_kind_weights=(1, 0, 0, 0), liver_hu=(110, 110), n_cysts=(0, 0), noise_hu=(12, 12),
        hypo_contrast_hu=(60, 60), tumor_diameter_mm=(15, 60),
    )
    easy = _threshold_dice(easy_settings, train, test)
    assert np.mean(hard) < 0.5 and np.median(hard) < 0.6
    assert np.mean(easy) > np.mean(hard) + 0.25  # the failure comes from the confounders, not the test


def test_small_preset_is_fast():
    make_phantom(0, SMALL)
    start = time.process_time()
    for seed in range(3):
        make_phantom(seed, SMALL)
    assert (time.process_time() - start) / 3 < 1.0


def test_case_seeds_differ_between_runs():
    assert len(set(case_seeds(0, 5)) | set(case_seeds(1, 5))) == 10
    assert case_seeds(4, 3) == case_seeds(4, 3)


def test_write_phantom_cases_writes_readable_case_folders(tmp_path):
    folders = write_phantom_cases(tmp_path / "cases", 2, seed=5, settings=SMALL)
    assert [f.name for f in folders] == ["phantom-000", "phantom-001"]
    seed = case_seeds(5, 2)[0]
    expected = make_phantom(seed, SMALL)
    meta = json.loads((folders[0] / "case.json").read_text())
    assert meta["seed"] == seed and meta["tumor_count"] == len(expected.tumors) == len(meta["tumors"])
    assert sitk.ReadImage(str(folders[0] / "image.nrrd")).GetPixelID() == sitk.sitkInt16
    image = images.read_image(folders[0] / "image.nrrd")
    labels = images.read_labels(folders[0] / "label.nrrd", reference=image)
    assert np.array_equal(image.array, expected.image.array)
    assert np.array_equal(labels.array, expected.labels.array)
    assert np.allclose(image.spacing, expected.image.spacing)
    with pytest.raises(InputError):
        write_phantom_cases(tmp_path / "cases", 1, seed=5, settings=SMALL)  # never replaces a case
