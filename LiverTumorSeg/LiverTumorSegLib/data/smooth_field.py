"""Smooth random fields: the texture and deformation of every synthetic organ and tumor.

Arrays are (z, y, x); correlation lengths in voxels per axis.
"""

from __future__ import annotations

import numpy as np


def _interpolation_matrix(n: int, cell: float) -> np.ndarray:
    """(n, m) Gaussian weights from m coarse nodes `cell` voxels apart to n voxels; rows sum to 1."""
    cell = max(float(cell), 1.0)
    m = int(np.ceil(n / cell)) + 3
    centers = (np.arange(m) - 1.5) * cell
    w = np.exp(-0.5 * ((np.arange(n)[:, None] - centers[None, :]) / (0.6 * cell)) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape, cell_vox) -> np.ndarray:
    """Unit-variance smooth random field (correlation length ~`cell_vox` voxels per axis z, y, x).

    Coarse Gaussian noise interpolated separably, one axis at a time, each step a single large
    matrix product (many small ones are very slow with threaded BLAS on a busy machine).
    """
    cells = np.broadcast_to(np.asarray(cell_vox, float), (3,))
    wz, wy, wx = (_interpolation_matrix(n, c) for n, c in zip(shape, cells))
    (nz, ny, nx), (cz, cy, cx) = shape, (wz.shape[1], wy.shape[1], wx.shape[1])
    std = np.prod([np.sqrt(np.mean(np.sum(w.astype(np.float64) ** 2, axis=1))) for w in (wz, wy, wx)])
    coarse = rng.standard_normal((cz, cy, cx)).astype(np.float32) / np.float32(std)
    out = (wz @ coarse.reshape(cz, cy * cx)).reshape(nz, cy, cx)
    out = np.ascontiguousarray(out.transpose(0, 2, 1)).reshape(nz * cx, cy) @ wy.T
    out = np.ascontiguousarray(out.reshape(nz, cx, ny).transpose(0, 2, 1))
    return (out.reshape(nz * ny, cx) @ wx.T).reshape(nz, ny, nx)
