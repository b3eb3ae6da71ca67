"""Depth below an organ's surface: the one distance map the spot pass and the synthetic-data
generators read (a tumor site must lie deep enough; a spot near the surface is suspect).

Arrays are (z, y, x); spacing and distances in mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def subsampling_step(spacing_zyx, cell_mm: float) -> np.ndarray:
    """Voxels per axis (z, y, x, at least 1) that make cells of about `cell_mm`: a depth map of a
    512 x 512 liver on ~2-4 mm cells costs a fraction of the full grid's."""
    return np.array([max(1, int(round(cell_mm / s))) for s in np.asarray(spacing_zyx, dtype=float)])


def depth_below_surface_mm(mask: np.ndarray, spacing_zyx, step=(1, 1, 1), edge_is_surface: bool = True) -> np.ndarray:
    """Distance (mm) from each voxel of `mask` to the nearest voxel outside it (0 outside), on the
    grid subsampled by `step` (voxels per axis, z, y, x).

    edge_is_surface: the array's edge counts as outside (a mask cut out of its bounding box). False
    where the array is a window into a bigger grid and only its own background is surface.
    """
    step = np.asarray(step)
    sub = np.asarray(mask)[:: step[0], :: step[1], :: step[2]]
    sampling = np.asarray(spacing_zyx, dtype=float) * step
    if not edge_is_surface:
        return ndimage.distance_transform_edt(sub, sampling=sampling)
    return ndimage.distance_transform_edt(np.pad(sub, 1), sampling=sampling)[1:-1, 1:-1, 1:-1]
