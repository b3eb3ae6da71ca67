"""Tumor synthesis into the real TotalSegmentator livers, and copy-paste of labelled tumors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from LiverTumorSegLib.errors import InputError
from LiverTumorSegLib.core.lesions import label_lesions
from LiverTumorSegLib.data.synthesis import hu_texture, paste_tumors, synthesize_tumors, synthetic_copy


@pytest.fixture(scope="module")
def synthetic(references):
    """The 3 mm case with four mid-sized synthetic tumors."""
    image, liver = references["example_ct_sm"]
    return synthesize_tumors(image, liver, seed=4, n_tumors=4, radius_mm=(7.0, 14.0))


def test_same_seed_same_tumors(references):
    image, liver = references["example_ct_sm"]
    a = synthesize_tumors(image, liver, seed=9)
    b = synthesize_tumors(image, liver, seed=9)
    c = synthesize_tumors(image, liver, seed=10)
    assert np.array_equal(a[0].array, b[0].array) and np.array_equal(a[1].array, b[1].array) and a[2] == b[2]
    assert not np.array_equal(a[1].array, c[1].array)


def test_labels_are_liver_plus_separate_tumors_inside_it(references, synthetic):
    image, liver = references["example_ct_sm"]
    out, labels, tumors = synthetic
    assert out.same_grid(image) and labels.same_grid(image)
    assert len(tumors) == 4 and label_lesions(labels.array == 2)[1] == 4
    assert np.array_equal(labels.array > 0, liver)
    assert sorted(t["voxels"] for t in tumors) == sorted(np.bincount(label_lesions(labels.array == 2)[0].ravel())[1:])
    for t in tumors:
        assert 7.0 <= t["radius_mm"] <= 14.0 and all(0.7 * 7.0 <= r <= 1.3 * 14.0 for r in t["radii_mm"])
        assert 65 <= t["delta_hu"] <= 145 and t["kind"] == "hypo"


def test_only_liver_voxels_near_the_tumors_change(references, synthetic):
    image, liver = references["example_ct_sm"]
    out, labels, _ = synthetic
    changed = np.abs(out.array - image.array) > 1e-3
    assert changed.any() and not np.any(changed & ~liver)
    distance = ndimage.distance_transform_edt(labels.array != 2, sampling=image.spacing_zyx)
    assert distance[changed].max() <= 3 * 2.0 + max(image.spacing_zyx)  # 3 edge sigmas (<= 2 mm) + a voxel


def test_tumors_are_darker_than_the_liver_by_about_texture_times_delta(references, synthetic):
    image, liver = references["example_ct_sm"]
    out, labels, tumors = synthetic
    components, _ = label_lesions(labels.array == 2)
    for t in tumors:
        inside = _component_of(components, t)
        change = (out.array - image.array)[inside].mean()
        assert change == pytest.approx(t["contrast_hu"], abs=0.1)
        assert -1.0 * t["delta_hu"] <= change <= -0.25 * t["delta_hu"]  # Hu's texture averages ~0.5
        ring = ndimage.binary_dilation(inside, iterations=3) & ~ndimage.binary_dilation(inside, iterations=1) & (labels.array == 1)
        assert out.array[inside].mean() < out.array[ring].mean() - 0.2 * t["delta_hu"]


def _component_of(components: np.ndarray, tumor: dict) -> np.ndarray:
    """The labelled component with the tumor's voxel count (centres of lobulated shapes can fall outside)."""
    sizes = np.bincount(components.ravel())
    k = int(np.flatnonzero(sizes == tumor["voxels"])[0])
    return components == k


def test_hyperdense_option_brightens(references):
    image, liver = references["example_ct_sm"]
    out, labels, tumors = synthesize_tumors(image, liver, seed=2, n_tumors=2, radius_mm=(8.0, 12.0), hyper_fraction=1.0)
    assert [t["kind"] for t in tumors] == ["hyper", "hyper"]
    assert all(t["contrast_hu"] > 20 for t in tumors)
    assert out.array[labels.array == 2].mean() > image.array[labels.array == 2].mean() + 20


def test_texture_is_in_unit_range_with_mean_about_half():
    texture = hu_texture(np.random.default_rng(0), (30, 40, 40), (1.0, 1.0, 1.0))
    assert texture.min() >= 0 and texture.max() <= 1
    assert 0.3 < texture.mean() < 0.7


def test_bad_inputs_are_refused(references):
    image, liver = references["example_ct_sm"]
    with pytest.raises(InputError, match="empty"):
        synthesize_tumors(image, np.zeros_like(liver), seed=0)
    with pytest.raises(InputError, match="shape"):
        synthesize_tumors(image, liver[:-1], seed=0)
    with pytest.raises(InputError, match="no tumor"):
        paste_tumors(image, image.with_array(liver.astype(np.uint8)), image, liver, seed=0)


def test_paste_into_another_case_rebases_hu_and_resamples(references, synthetic):
    source_image, source_labels, _ = synthetic  # 3 mm voxels
    target_image, target_liver = references["example_ct_dicom"]  # 0.98 x 0.98 x 2 mm
    out, labels, pasted = paste_tumors(source_image, source_labels, target_image, target_liver, seed=3, n_paste=3)
    again = paste_tumors(source_image, source_labels, target_image, target_liver, seed=3, n_paste=3)
    assert np.array_equal(out.array, again[0].array) and pasted == again[2]
    assert len(pasted) == 3 and label_lesions(labels.array == 2)[1] == 3
    assert np.array_equal(labels.array > 0, target_liver)
    changed = np.abs(out.array - target_image.array) > 1e-3
    assert not np.any(changed & ~target_liver)
    source_liver = np.median(source_image.array[source_labels.array == 1])
    target_median = np.median(target_image.array[target_liver])
    source_contrast = source_image.array[source_labels.array == 2].mean() - source_liver
    pasted_contrast = out.array[labels.array == 2].mean() - target_median
    assert pasted_contrast == pytest.approx(source_contrast, abs=15)
    volumes = sorted(t["volume_ml"] for t in pasted)  # resampled, not copied voxel for voxel
    assert all(0.05 < v < 20 for v in volumes)


def test_paste_into_the_same_case_keeps_its_own_tumors(synthetic):
    image, labels, tumors = synthetic
    out, new_labels, pasted = paste_tumors(image, labels, image, labels.array > 0, seed=1, n_paste=2)
    assert np.all(new_labels.array[labels.array == 2] == 2)
    assert label_lesions(new_labels.array == 2)[1] == len(tumors) + len(pasted) and len(pasted) >= 1


def test_synthesis_into_a_labelled_case_keeps_and_avoids_its_tumors(synthetic):
    image, labels, tumors = synthetic
    out, new_labels, added = synthesize_tumors(image, labels.array, seed=3, n_tumors=2, radius_mm=(4.0, 8.0))
    old = labels.array == 2
    assert len(added) >= 1
    assert np.all(new_labels.array[old] == 2)  # the real tumors stay labelled ...
    np.testing.assert_array_equal(out.array[old], image.array[old])  # ... and untouched
    assert label_lesions(new_labels.array == 2)[1] == len(tumors) + len(added)  # new ones are separate


def test_synthetic_copy_adds_pasted_and_synthesised_tumors(synthetic):
    image, labels, tumors = synthetic
    out, new_labels = synthetic_copy(image, labels, seed=5)
    assert new_labels.same_grid(image) and np.all(new_labels.array[labels.array == 2] == 2)
    assert np.array_equal(new_labels.array > 0, labels.array > 0)  # the liver is the same
    assert label_lesions(new_labels.array == 2)[1] >= len(tumors) + 2  # at least one pasted, one synthesised
    again = synthetic_copy(image, labels, seed=5)
    np.testing.assert_array_equal(again[0].array, out.array)
