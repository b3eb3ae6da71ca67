"""Hessian blob enhancement: balls answer at the right scale, tubes hardly, spacing is physical."""

import numpy as np
import pytest

from LiverTumorSegLib.core.hessian import blob_response, hessian_channels, symmetric_eigenvalues_extremes


def _distance_mm(shape, spacing, offset_vox=(0.0, 0.0, 0.0)):
    """Distance (mm) of every voxel centre from the grid centre (shifted by offset_vox voxels)."""
    centre = (np.asarray(shape) - 1) / 2.0 + np.asarray(offset_vox)
    axes = [(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return np.sqrt(z**2 + y**2 + x**2), tuple(int(round(c)) for c in centre)


def dark_ball(shape, spacing, radius_mm, contrast=100.0):
    """A ball `contrast` darker than its surroundings (HU-like float32)."""
    d, centre = _distance_mm(shape, spacing)
    return np.where(d <= radius_mm, 0.0, contrast).astype(np.float32), centre


def test_eigenvalues_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 3, 3)).astype(np.float32)
    a = a + a.transpose(0, 2, 1)
    a[:10] = np.diag([2.0, 2.0, 2.0])  # repeated eigenvalues: the degenerate case of the closed form
    hi, lo = symmetric_eigenvalues_extremes(a[:, 0, 0], a[:, 1, 1], a[:, 2, 2], a[:, 0, 1], a[:, 0, 2], a[:, 1, 2])
    expected = np.linalg.eigvalsh(a.astype(np.float64))
    np.testing.assert_allclose(hi, expected[:, 2], atol=1e-4)
    np.testing.assert_allclose(lo, expected[:, 0], atol=1e-4)


def test_dark_ball_peaks_near_r_over_sqrt3_at_its_centre():
    radius = 9.0
    image, c = dark_ball((61, 61, 61), (1.0, 1.0, 1.0), radius)
    scales = [2.0, 3.5, radius / np.sqrt(3), 7.5, 10.0]
    responses = [float(blob_response(image, (1.0, 1.0, 1.0), s, "dark")[c]) for s in scales]
    assert int(np.argmax(responses)) == 2, responses
    # Theory for a scale-normalised ball: B = C * (4 pi / 3) (2 pi)^-1.5 (r/s)^3 exp(-r^2 / 2 s^2) ~ 0.31 C.
    assert 0.25 * 100 < responses[2] < 0.36 * 100
    # The peak is at the centre, and a dark ball gives no bright response.
    response = blob_response(image, (1.0, 1.0, 1.0), radius / np.sqrt(3), "dark")
    assert np.unravel_index(np.argmax(response), response.shape) == pytest.approx(c, abs=1)
    assert blob_response(image, (1.0, 1.0, 1.0), radius / np.sqrt(3), "bright").max() < 0.02 * responses[2]


def test_bright_ball_is_the_negated_dark_ball():
    image, c = dark_ball((41, 41, 41), (1.0, 1.0, 1.0), 6.0)
    dark = blob_response(image, (1.0, 1.0, 1.0), 3.5, "dark")
    bright = blob_response(-image, (1.0, 1.0, 1.0), 3.5, "bright")
    np.testing.assert_allclose(dark, bright, atol=1e-3)


def test_tube_answers_much_less_than_a_ball_of_the_same_radius():
    radius, spacing, shape = 5.0, (1.0, 1.0, 1.0), (41, 41, 41)
    ball, c = dark_ball(shape, spacing, radius)
    y, x = np.meshgrid(np.arange(41) - 20.0, np.arange(41) - 20.0, indexing="ij")
    tube = np.broadcast_to(np.where(np.hypot(y, x) <= radius, 0.0, 100.0), shape).astype(np.float32)
    channels_ball = hessian_channels(ball, spacing, (2.0, 3.0, 5.0), ("dark",), "max")[0]
    channels_tube = hessian_channels(tube, spacing, (2.0, 3.0, 5.0), ("dark",), "max")[0]
    assert channels_tube.max() < 0.1 * channels_ball[c]


def test_same_physical_ball_at_isotropic_and_anisotropic_spacing():
    radius = 8.0
    fine, c_fine = dark_ball((49, 49, 49), (1.0, 1.0, 1.0), radius)
    coarse, c_coarse = dark_ball((17, 49, 49), (3.0, 1.0, 1.0), radius)
    for scale in (3.0, radius / np.sqrt(3), 8.0):
        a = blob_response(fine, (1.0, 1.0, 1.0), scale, "dark")[c_fine]
        b = blob_response(coarse, (3.0, 1.0, 1.0), scale, "dark")[c_coarse]
        assert b == pytest.approx(a, rel=0.2), scale
    # Treating the 3 mm slices as 1 mm would see a flat disc, not a ball: much weaker.
    wrong = blob_response(coarse, (1.0, 1.0, 1.0), radius / np.sqrt(3), "dark")[c_coarse]
    assert wrong < 0.5 * blob_response(fine, (1.0, 1.0, 1.0), radius / np.sqrt(3), "dark")[c_fine]


def test_large_scales_on_a_coarser_grid_stay_accurate():
    """Big scales are computed on a block-averaged grid; the centre response must stay close to
    the analytic value (0.31 C at s = r / sqrt(3))."""
    radius = 20.0
    image, c = dark_ball((81, 81, 81), (1.0, 1.0, 1.0), radius)
    value = blob_response(image, (1.0, 1.0, 1.0), radius / np.sqrt(3), "dark")[c]
    assert 0.26 * 100 < value < 0.34 * 100


def test_channel_layouts_and_argument_checks():
    image, _ = dark_ball((24, 32, 28), (2.0, 1.5, 1.5), 5.0)
    maxed = hessian_channels(image, (2.0, 1.5, 1.5), (2.0, 4.0), ("dark", "bright"), "max")
    stacked = hessian_channels(image, (2.0, 1.5, 1.5), (2.0, 4.0), ("dark", "bright"), "stack")
    assert maxed.shape == (2, 24, 32, 28) and maxed.dtype == np.float32
    assert stacked.shape == (4, 24, 32, 28)
    np.testing.assert_allclose(maxed[0], np.maximum(stacked[0], stacked[1]))
    np.testing.assert_allclose(maxed[1], np.maximum(stacked[2], stacked[3]))
    assert (maxed >= 0).all()
    with pytest.raises(ValueError):
        hessian_channels(image, (1, 1, 1), (2.0,), ("grey",))
    with pytest.raises(ValueError):
        hessian_channels(image, (1, 1, 1), (2.0,), combine="mean")
    with pytest.raises(ValueError):
        blob_response(image, (1, 1, 1), -1.0)


def test_slab_processing_gives_the_whole_volume_result():
    rng = np.random.default_rng(1)
    image = rng.normal(0, 20, size=(70, 30, 30)).astype(np.float32)
    spacing = (1.5, 1.0, 1.0)
    whole = hessian_channels(image, spacing, (2.0, 6.0, 12.0), ("dark", "bright"), "max")
    slabs = hessian_channels(image, spacing, (2.0, 6.0, 12.0), ("dark", "bright"), "max", max_slab_voxels=20 * 900)
    np.testing.assert_allclose(slabs, whole, atol=1e-4)
