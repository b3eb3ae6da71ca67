"""core.median3 against scipy.ndimage.median_filter(size=3): every 0/1 window (by the 0-1
principle, a network of min and max that gives the median of every 0/1 input gives it for every
input), and random volumes with ties, edges and chunk boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from LiverTumorSegLib.core import median3 as median3_module
from LiverTumorSegLib.core.median3 import median3


def test_every_zero_one_window_gives_its_median():
    # One window per case: the 27 neighbours as 27 blocks of the flat array (axis strides 9, 3, 1 blocks).
    batch = 1 << 20
    plan = median3_module._plan()
    for first in range(0, 1 << 27, batch):
        case = np.arange(first, first + batch, dtype=np.uint32)
        bits = [((case >> k) & 1).astype(np.uint8) for k in range(27)]
        flat = np.concatenate(bits)
        got = median3_module._median_chunk(flat, 0, batch, (9 * batch, 3 * batch, batch), plan)
        np.testing.assert_array_equal(got, (np.sum(bits, axis=0) >= 14).astype(np.uint8))


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 1, 1), (1, 4, 3), (2, 2, 2), (5, 6, 7), (9, 10, 11), (20, 33, 17)])
@pytest.mark.parametrize("chunk", [1, 7, 1000, median3_module.CHUNK_BYTES // 4])
def test_equals_scipy_with_ties_and_edges(shape, chunk, monkeypatch):
    if chunk < 10 and np.prod(shape) > 1000:
        pytest.skip("tiny chunks on a big volume: slow, and covered by the smaller shapes")
    monkeypatch.setattr(median3_module, "CHUNK_BYTES", 4 * chunk)  # float32 voxels
    rng = np.random.default_rng(sum(shape) + chunk)
    for values in (rng.normal(0, 100, shape), rng.integers(-2, 3, shape), np.full(shape, 7.0)):
        a = values.astype(np.float32)
        expected = ndimage.median_filter(a, size=3)
        for workers in (1, 2, 3):
            got = median3(a, workers)
            assert got.dtype == a.dtype and got.flags["C_CONTIGUOUS"]
            np.testing.assert_array_equal(got, expected)


def test_equals_scipy_on_a_ct_like_volume():
    rng = np.random.default_rng(5)
    a = np.round(rng.normal(40, 300, (30, 140, 150))).astype(np.float32) / 4  # ties: quarter-HU steps
    a[:, :20] = -1000.0  # a flat region of air
    for workers in (1, 2):
        np.testing.assert_array_equal(median3(a, workers), ndimage.median_filter(a, size=3))
