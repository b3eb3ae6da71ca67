"""The phantom's drawing surface: the voxel grid in body-frame mm, the image being painted with
its truth labels, the body outline, and ellipsoids.

The body frame is mm with its origin at the body centre, x to the patient's left, y posterior,
z superior (LPS); every tuple here is in array order (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Voxel <-> body-frame mm mapping; all tuples in array order (z, y, x)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    start: tuple[float, float, float]  # body-frame mm of voxel (0, 0, 0)

    def box(self, center, half) -> tuple[slice, ...] | None:
        """Voxel slices covering center +- half (mm), clipped to the grid; None if outside."""
        out = []
        for c, h, s0, d, n in zip(center, half, self.start, self.spacing, self.shape):
            lo = max(int(np.floor((c - h - s0) / d)), 0)
            hi = min(int(np.ceil((c + h - s0) / d)) + 1, n)
            if hi <= lo:
                return None
            out.append(slice(lo, hi))
        return tuple(out)

    def axes(self, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open-grid body-frame coordinates (mm) of a box, broadcastable to its shape."""
        out = []
        for axis, (sl, s0, d) in enumerate(zip(box, self.start, self.spacing)):
            shape = [1, 1, 1]
            shape[axis] = sl.stop - sl.start
            out.append((s0 + d * np.arange(sl.start, sl.stop, dtype=np.float32)).reshape(shape))
        return tuple(out)

    def index(self, p_mm) -> np.ndarray:
        return (np.asarray(p_mm, float) - np.asarray(self.start)) / np.asarray(self.spacing)

    def mm(self, index) -> np.ndarray:
        return np.asarray(self.start) + np.asarray(index, float) * np.asarray(self.spacing)


@dataclass
class Canvas:
    """The image being painted (float32 HU), the truth labels and where the liver may not grow; full grid."""

    grid: Grid
    img: np.ndarray
    labels: np.ndarray
    blocked: np.ndarray  # voxels the liver may not take (spine, vessels, kidneys, gallbladder)

    def paint(self, box, mask, hu, block=False) -> None:
        region = self.img[box]
        np.copyto(region, np.broadcast_to(np.asarray(hu, np.float32), region.shape), where=mask)
        if block:
            self.blocked[box] |= mask


@dataclass(frozen=True)
class Body:
    """Body outline and the inner abdominal cavity, ellipses in (y, x), mm."""

    half_x: float
    half_y: float
    fat_mm: float
    muscle_mm: float
    cavity_x: float
    cavity_y: float
    spine_y: float
    taper: float  # relative widening per 100 mm towards the feet

    def outline(self, grid: "Grid", box, inset_mm: float = 0.0) -> np.ndarray:
        """Inside the skin, `inset_mm` in from it: an (y, x) ellipse through the box's slices."""
        return ellipse(grid, box, self.half_x - inset_mm, self.half_y - inset_mm, self.taper)

    def cavity(self, grid: "Grid", box, inset_mm: float = 0.0) -> np.ndarray:
        """Inside the abdominal wall muscles (where the organs are), `inset_mm` in from them."""
        return ellipse(grid, box, self.cavity_x - inset_mm, self.cavity_y - inset_mm, self.taper)


def ellipse(grid: Grid, box, hx, hy, taper) -> np.ndarray:
    """(y, x) ellipse (half axes mm) through all slices of a box, wider caudally by `taper` per 100 mm."""
    z, y, x = grid.axes(box)
    scale = 1.0 - np.float32(taper) * z / np.float32(100.0)
    return ((x / np.float32(hx)) ** 2 + (y / np.float32(hy)) ** 2) < scale**2


def ellipsoid_level(axes, center, radii, rotation=None) -> np.ndarray:
    """Sum of squared normalised coordinates: < 1 inside the ellipsoid (radii in mm, z, y, x)."""
    d = [a - np.float32(c) for a, c in zip(axes, center)]
    if rotation is not None:
        d = [sum(np.float32(rotation[j, i]) * d[i] for i in range(3)) for j in range(3)]
    return sum((di / np.float32(r)) ** 2 for di, r in zip(d, radii))
