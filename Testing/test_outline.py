"""Lesion outlines at each lesion's own edge (core/outline.py) on hand-made volumes with known edges."""

import numpy as np
import pytest

from LiverTumorSegLib.core import outline
from LiverTumorSegLib.core.lesions import count_lesions
from LiverTumorSegLib.volume import Volume

SPACING = 1.5  # mm, isotropic
LIVER_HU = 100.0


def _ball_volume(core_hu: float, rim_hu: float, core_mm: float = 9.0, rim_mm: float = 3.0, noise: float = 0.0, seed: int = 0):
    """A liver block at LIVER_HU holding a ball: a core of radius core_mm at core_hu inside a rim
    rim_mm thick at rim_hu. Returns (CT Volume, liver, core mask, ball mask) on a 40^3 grid."""
    shape = (40, 40, 40)
    zz, yy, xx = np.indices(shape)
    r = SPACING * np.sqrt((zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2)
    hu = np.full(shape, LIVER_HU, dtype=np.float32)
    hu[r <= core_mm + rim_mm] = rim_hu
    hu[r <= core_mm] = core_hu
    if noise:
        hu += np.random.default_rng(seed).normal(0, noise, shape).astype(np.float32)
    liver = np.zeros(shape, dtype=bool)
    liver[2:-2, 2:-2, 2:-2] = True
    return Volume(hu, (SPACING,) * 3), liver, r <= core_mm, r <= core_mm + rim_mm


def test_a_dark_core_grows_over_its_paler_rim_and_no_further():
    # The rim is 15 HU paler than the core, 80 HU darker than the liver: on the lesion's side of the edge level.
    image, liver, core, ball = _ball_volume(core_hu=20.0, rim_hu=35.0)
    added = outline.grow_to_edges(core, image, liver)
    assert added.any() and not (added & core).any()
    assert (added <= ball).all(), "grown beyond the lesion's edge into plain liver"
    # The rim is 3 mm thick and the reach 2.5 mm: the rim within reach is taken, but for its outer
    # voxels, which the 1 mm smoothing brightens towards the liver.
    from scipy import ndimage

    within_reach = (ndimage.distance_transform_edt(~core, sampling=(SPACING,) * 3) <= outline.REACH_MM) & ball & ~core
    assert added.sum() >= 0.75 * within_reach.sum()


def test_noise_does_not_make_a_lesion_spread_through_the_liver():
    image, liver, core, ball = _ball_volume(core_hu=20.0, rim_hu=35.0, noise=15.0)
    added = outline.grow_to_edges(core, image, liver)
    from scipy import ndimage

    reach = ndimage.distance_transform_edt(~core, sampling=(SPACING,) * 3) <= outline.REACH_MM
    assert (added <= reach).all()
    assert (added & ~ball).sum() <= 0.1 * added.sum()


@pytest.mark.parametrize("rim_hu", [60.0, LIVER_HU - 5])
def test_a_rim_nearer_the_liver_than_the_core_is_not_taken(rim_hu):
    image, liver, core, _ = _ball_volume(core_hu=20.0, rim_hu=rim_hu)
    added = outline.grow_to_edges(core, image, liver)
    # Only the partial-volume shell of the smoothing at the core's own edge may be added.
    assert added.sum() < 0.25 * core.sum()


def test_a_lesion_with_no_contrast_is_left_alone():
    image, liver, core, _ = _ball_volume(core_hu=LIVER_HU - 4, rim_hu=LIVER_HU - 4)
    assert not outline.grow_to_edges(core, image, liver).any()


def test_a_hyperdense_lesion_grows_with_the_signs_turned():
    image, liver, core, ball = _ball_volume(core_hu=200.0, rim_hu=180.0)
    added = outline.grow_to_edges(core, image, liver)
    assert added.any() and (added <= ball).all()


def test_never_outside_the_liver_never_a_new_lesion():
    image, liver, core, _ = _ball_volume(core_hu=20.0, rim_hu=35.0)
    liver[:, :, 21:] = False  # the liver ends through the lesion
    lesions = core & liver
    added = outline.grow_to_edges(lesions, image, liver)
    assert added.any() and not (added & ~liver).any()
    assert count_lesions(lesions | added) == count_lesions(lesions) == 1


def test_no_lesions_or_no_parenchyma_adds_nothing():
    image, liver, core, _ = _ball_volume(core_hu=20.0, rim_hu=35.0)
    assert not outline.grow_to_edges(np.zeros_like(core), image, liver).any()
    assert not outline.grow_to_edges(core, image, core.copy()).any()


@pytest.mark.parametrize("edges", [False, True])
def test_segment_grows_only_its_own_lesions(phantom_case_dirs, edges):
    """segment with and without edges: the same lesions, the grown outline contains the plain one,
    nothing outside the liver, and the probability map agrees with the mask at the model's threshold."""
    from LiverTumorSegLib.core.inference import segment
    from LiverTumorSegLib.storage.library import read_case_folder
    from LiverTumorSegLib.storage.modelstore import default_model_path, load_model

    model = load_model(default_model_path())
    image, labels = read_case_folder(phantom_case_dirs[0])
    liver = labels.array > 0
    plain = segment(image, liver, model, threshold=model.threshold, edges=False)
    result = segment(image, liver, model, threshold=model.threshold, edges=edges)
    mask, before = result.tumor.array > 0, plain.tumor.array > 0
    assert plain.lesions, "the default model finds no lesion on the phantom: nothing to grow"
    assert (before <= mask).all() and not (mask & ~liver).any()
    assert len(result.lesions) <= len(plain.lesions)  # grown lesions may join, none appears
    assert (mask == ((result.probability.array >= model.threshold) & mask)).all()
    if not edges:
        assert (mask == before).all() and "edges_s" not in result.timings
    else:
        assert "edges_s" in result.timings
