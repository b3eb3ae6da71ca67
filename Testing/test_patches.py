"""Patch sampling pools, extraction at the edges, augmentation, reproducibility."""

import numpy as np
from scipy import ndimage

from LiverTumorSegLib.training.patches import CaseSampler, PatchSettings, crop_padded, draw_batch, polarity_plan


def toy_case():
    """A 40^3 'liver' (all but a border) with one big and one small tumor; channel 0 is intensity."""
    shape = (40, 40, 40)
    z, y, x = np.indices(shape)
    liver = np.zeros(shape, bool)
    liver[4:36, 4:36, 4:36] = True
    big = (z - 20) ** 2 + (y - 14) ** 2 + (x - 14) ** 2 <= 7**2
    small = (z - 20) ** 2 + (y - 28) ** 2 + (x - 28) ** 2 <= 2**2
    tumor = big | small
    features = np.stack([np.where(tumor, -3.0, 0.0), np.zeros(shape)]).astype(np.float32)
    features[0, ~liver] = -6.0
    return features, tumor, liver, big, small


def test_pools_hold_what_they_promise():
    features, tumor, liver, big, small = toy_case()
    sampler = CaseSampler(features, tumor, liver, [20.0, None])
    rng = np.random.default_rng(0)
    picks = [tuple(sampler.draw_center("tumor", rng)) for _ in range(400)]
    assert all(tumor[p] for p in picks)
    in_small = sum(small[p] for p in picks)
    assert 140 < in_small < 260  # a tumor is chosen uniformly, not a voxel: small ones count as much
    near_edge = ndimage.binary_dilation(tumor, iterations=2) & ~ndimage.binary_erosion(tumor, iterations=2)
    assert all(near_edge[tuple(sampler.draw_center("boundary", rng))] for _ in range(100))
    assert all(liver[tuple(sampler.draw_center("liver", rng))] for _ in range(100))
    grown = ndimage.binary_dilation(tumor, iterations=2)
    assert all(liver[c] and not grown[c] for c in (tuple(sampler.draw_center("hard", rng)) for _ in range(100)))


def test_allowed_region_is_respected_and_empty_pools_fall_back_to_the_liver():
    features, tumor, liver, big, small = toy_case()
    allowed = np.zeros(liver.shape, bool)
    allowed[:, :, 22:] = True  # only the small tumor's half
    sampler = CaseSampler(features, tumor, liver, [20.0, None], allowed=allowed)
    rng = np.random.default_rng(1)
    assert sampler.n_tumors == 1
    assert all(small[tuple(sampler.draw_center("tumor", rng))] for _ in range(50))
    assert all(allowed[tuple(sampler.draw_center("liver", rng))] for _ in range(50))
    no_tumor = CaseSampler(features, np.zeros_like(tumor), liver, [20.0, None])
    assert all(liver[tuple(no_tumor.draw_center("tumor", rng))] for _ in range(20))


def test_crop_repeats_the_edge_outside_the_array():
    a = np.arange(5 * 6 * 7, dtype=np.float32).reshape(1, 5, 6, 7)
    block = crop_padded(a, (0, 0, 0), 4)
    assert block.shape == (1, 4, 4, 4)
    np.testing.assert_array_equal(block[0, 2:, 2:, 2:], a[0, :2, :2, :2])
    np.testing.assert_array_equal(block[0, 0, 0, :2], [a[0, 0, 0, 0]] * 2)
    np.testing.assert_array_equal(crop_padded(a, (2, 3, 3), 2), a[:, 1:3, 2:4, 2:4])


def test_unaugmented_patch_is_the_crop_and_batches_are_reproducible():
    features, tumor, liver, big, small = toy_case()
    sampler = CaseSampler(features, tumor, liver, [20.0, None])
    plain = PatchSettings(size=16, flip=False, rotate90=False, scale_range=(1.0, 1.0), intensity_scale=0.0,
                          intensity_shift_hu=0.0)
    x, target, weight = sampler.patch((20, 14, 14), plain, np.random.default_rng(0))
    np.testing.assert_array_equal(x, features[:, 12:28, 6:22, 6:22])
    np.testing.assert_array_equal(target[0], tumor[12:28, 6:22, 6:22])
    np.testing.assert_array_equal(weight[0], liver[12:28, 6:22, 6:22])

    settings = PatchSettings(size=16)
    a = draw_batch([sampler], 3, settings, np.random.default_rng(5))
    b = draw_batch([sampler], 3, settings, np.random.default_rng(5))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    x, target, weight = a
    assert x.shape == (3, 2, 16, 16, 16) and target.shape == weight.shape == (3, 1, 16, 16, 16)
    assert set(np.unique(weight)) <= {0.0, 1.0} and 0 <= target.min() and target.max() <= 1


def test_augmentation_keeps_image_and_target_aligned():
    """Whatever flips, rotations and scaling happen, tumor voxels keep their dark intensity."""
    features, tumor, liver, big, small = toy_case()
    sampler = CaseSampler(features, tumor, liver, [20.0, None])
    settings = PatchSettings(size=16, intensity_scale=0.0, intensity_shift_hu=0.0)
    rng = np.random.default_rng(3)
    for _ in range(10):
        x, target, weight = sampler.patch(sampler.draw_center("boundary", rng), settings, rng)
        core = target[0] > 0.9
        outside = (target[0] < 0.1) & (weight[0] > 0)
        assert x[0][core].mean() < -2.7 and x[0][outside].mean() > -1.0


def test_polarity_mirroring_negates_the_liver_channel_and_swaps_the_blob_channels():
    assert polarity_plan(["ct_window", "hessian_dark", "hessian_bright"]) is None  # no liver level
    assert polarity_plan(["ct_liver", "hessian_dark"]) is None  # no twin to swap with
    order, signs = polarity_plan(["ct_liver", "hessian_dark_3mm", "hessian_bright_3mm"])
    assert order.tolist() == [0, 2, 1] and signs.tolist() == [-1.0, 1.0, 1.0]

    features, tumor, liver, _, _ = toy_case()
    features[1] = np.where(tumor, 5.0, 0.0)  # a "dark blob" response on the tumors
    features = np.concatenate([features[:2], np.zeros_like(features[:1])])
    names = ["ct_liver", "hessian_dark", "hessian_bright"]
    plain = PatchSettings(size=16, flip=False, rotate90=False, scale_range=(1, 1), intensity_scale=0.0,
                          intensity_shift_hu=0.0, polarity_flip=1.0)
    sampler = CaseSampler(features, tumor, liver, [None, None, None], flip_plan=polarity_plan(names))
    x, target, _ = sampler.patch((20, 14, 14), plain, np.random.default_rng(0))
    inside = target[0] > 0
    assert inside.any()
    assert np.all(x[0][inside] == 3.0)  # the dark tumor is now bright
    assert np.all(x[2][inside] == 5.0) and not x[1].any()  # its dark-blob response moved to bright


def test_a_withheld_region_is_context_only_its_labels_never_weigh():
    features, tumor, liver, big, small = toy_case()
    allowed = np.ones(liver.shape, bool)
    allowed[14:27] = False  # a validation slab through both tumors' middles
    sampler = CaseSampler(features, tumor, liver, [20.0, None], allowed=allowed)
    rng = np.random.default_rng(2)
    assert all(allowed[tuple(sampler.draw_center(pool, rng))] for pool in ("tumor", "boundary", "liver", "hard")
               for _ in range(60))
    still = PatchSettings(size=16, flip=False, rotate90=False, scale_range=(1.0, 1.0), intensity_scale=0.0,
                          intensity_shift_hu=0.0)
    x, target, weight = sampler.patch((12, 14, 14), still, rng)  # slices 4-19: 6 of them in the slab
    assert target[0, 10:].any()  # the slab's tumor is in the crop...
    assert weight[0, 10:].max() == 0 and weight[0, :10].min() == 1  # ...but weighs nothing
    np.testing.assert_array_equal(x[0], features[0, 4:20, 6:22, 6:22])  # the image is there as context
