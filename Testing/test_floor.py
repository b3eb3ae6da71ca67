"""The intensity floor (core/floor.py): fitted on a user's cases, kept only when its lesions there
are mostly tumors, and at segment time adding the lesions the network left out."""

import numpy as np

from LiverTumorSegLib.core.floor import MIN_FLOOR_PRECISION, ThresholdBaseline, fit_intensity_floor, floor_of
from LiverTumorSegLib.volume import Volume

SHAPE = (40, 60, 60)
SPACING = (1.5, 1.0, 1.0)  # x, y, z (mm)


def ball(center, radius_mm):
    z, y, x = np.indices(SHAPE)
    return ((z - center[0]) * SPACING[2]) ** 2 + ((y - center[1]) * SPACING[1]) ** 2 + \
        ((x - center[2]) * SPACING[0]) ** 2 <= radius_mm**2


def liver_case(blobs, seed=0):
    """A liver of 110 HU (noise 8 HU) with dark blobs of 55 HU: (image Volume, liver bool)."""
    rng = np.random.default_rng(seed)
    liver = np.zeros(SHAPE, bool)
    liver[4:36, 6:54, 6:54] = True
    hu = np.where(liver, 110.0, -100.0) + rng.normal(0, 8, SHAPE)
    for blob in blobs:
        hu[blob] = 55.0 + rng.normal(0, 8, int(blob.sum()))
    return Volume(hu.astype(np.float32), SPACING), liver


BLOBS = [ball((20, 20, 20), 6), ball((20, 40, 40), 4), ball((12, 40, 18), 4)]


def test_the_floor_is_fitted_between_tumor_and_liver_and_kept_when_its_lesions_are_tumors():
    image, liver = liver_case(BLOBS)
    tumor = BLOBS[0] | BLOBS[1] | BLOBS[2]
    data = fit_intensity_floor([(image, liver, tumor)])
    assert 55 < data["threshold_hu"] < 110
    assert data["fit"]["lesions"] == 3 and data["fit"]["lesions_on_tumor"] == 3
    assert data["fit"]["dice"] > 0.8
    floor = floor_of(type("Model", (), {"meta": {"intensity_floor": data}})())
    assert floor == ThresholdBaseline.from_dict(data)
    assert ThresholdBaseline.from_dict(floor.to_dict()) == floor


def test_a_floor_whose_lesions_are_mostly_not_tumor_is_not_kept():
    # Three dark blobs of the same HU, only one labelled: the labelled one is a tumor, the two
    # others (cysts, say) are what a threshold would call too.
    image, liver = liver_case(BLOBS)
    data = fit_intensity_floor([(image, liver, BLOBS[0])])
    assert data["threshold_hu"] is None
    assert data["fit"]["lesion_precision"] < MIN_FLOOR_PRECISION
    assert "not kept" in data["why"] and "1 of its 3 lesions" in data["why"]
    assert floor_of(type("Model", (), {"meta": {"intensity_floor": data}})()) is None
    assert floor_of(type("Model", (), {"meta": {}})()) is None  # an older model without either floor


def test_a_floor_that_does_not_carry_from_one_case_to_the_next_is_not_kept():
    """Two cases of different contrast phases: enhanced liver (110 HU, tumors 55) and a liver at
    60 HU with tumors at 20. Each is thresholded well on its own, but the floor fitted on one calls
    the other's whole liver tumor."""
    enhanced, liver = liver_case(BLOBS)
    tumor = BLOBS[0] | BLOBS[1] | BLOBS[2]
    plain = Volume(np.where(liver, enhanced.array - 50.0, enhanced.array).astype(np.float32), SPACING)
    plain.array[tumor] -= 35.0
    for single in ([(enhanced, liver, tumor)], [(plain, liver, tumor)]):
        assert fit_intensity_floor(single)["threshold_hu"] is not None
    mixed = fit_intensity_floor([(enhanced, liver, tumor), (plain, liver, tumor)])
    assert mixed["threshold_hu"] is None and mixed["fit"]["judged_on"].startswith("each case")
    assert "of its voxels are tumor" in mixed["why"]
    same_phase = fit_intensity_floor([(enhanced, liver, tumor), (liver_case(BLOBS, seed=5)[0], liver, tumor)])
    assert same_phase["threshold_hu"] is not None and same_phase["fit"]["left_out"]["lesions_on_tumor"] == 6


def test_floor_lesions_the_network_missed_are_added_and_its_own_keep_their_outline():
    image, liver = liver_case(BLOBS, seed=1)
    floor = ThresholdBaseline(threshold_hu=85.0)
    probability = np.zeros(SHAPE, np.float32)
    network_lesion = ball((20, 20, 20), 3)  # the network found blob 0, smaller than the floor's outline
    probability[network_lesion] = 0.9
    probability[ball((20, 40, 40), 2)] = 0.6  # a speck on blob 1 that the network's clean-up dropped
    found = network_lesion.copy()
    before = probability.copy()
    everywhere = tuple(slice(0, n) for n in SHAPE)
    added = floor.add_missed_lesions(probability, image, liver, 0.4, everywhere, found)
    assert added == 2  # blobs 1 and 2: a dropped speck does not count as found
    floor_mask = floor.segment(image, liver)
    assert np.all(probability[BLOBS[1] & floor_mask] >= np.float32(0.4))
    assert np.all(probability[BLOBS[2] & floor_mask] >= np.float32(0.4))
    np.testing.assert_array_equal(probability[BLOBS[0]], before[BLOBS[0]])  # the network's lesion as it was
    assert np.all(probability[~floor_mask] == before[~floor_mask])
    found_now = found | (floor_mask & ~BLOBS[0])
    assert floor.add_missed_lesions(probability.copy(), image, liver, 0.4, everywhere, found_now) == 0
