"""Where a synthetic tumor goes: deep liver sites, boxes around them, orientations, clash tests.

Shared by the phantom, the Hu-recipe synthesis, copy-paste and the synthesis family, so that
every generator places tumors the same way. Arrays are (z, y, x); spacing and depths in mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.geometry import depth_below_surface_mm, subsampling_step
from ..errors import InputError


def count_range(n) -> tuple[int, int]:
    """(low, high) from a tumor count or a range; refuses negative or reversed ones."""
    lo, hi = (n, n) if np.isscalar(n) else n
    if lo < 0 or hi < lo:
        raise InputError(f"tumor count {n}: give a count >= 0 or a range (low, high) with low <= high")
    return int(lo), int(hi)


def liver_and_tumors(liver_or_labels, shape, what: str, whose: str) -> tuple[np.ndarray, np.ndarray]:
    """(liver incl. tumors, tumors) from a boolean liver mask (no tumors) or a 0/1/2 label array."""
    given = np.asarray(liver_or_labels)
    if given.shape != tuple(shape):
        raise InputError(f"{what} shape {given.shape} differs from the {whose} {tuple(shape)}; resample the mask to the CT")
    liver = given > 0
    return liver, (given == 2 if given.dtype != bool else np.zeros_like(liver))


def depth_map(mask: np.ndarray, spacing_zyx, cell_mm: float = 2.0) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """Distance (mm) to the mask's surface inside the mask's bounding box, on cells of about
    `cell_mm` (so that 512 x 512 masks stay fast): (depth, step in voxels per axis, box)."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    step = subsampling_step(spacing_zyx, cell_mm)
    return depth_below_surface_mm(mask[box], spacing_zyx, step), step, box


def pick_site(rng: np.random.Generator, depth: np.ndarray, step, box, min_depth_mm: float, *,
              deepest_fallback: bool = True, continuous: bool = False) -> np.ndarray | None:
    """A random position (voxel index z, y, x on the full grid) at least `min_depth_mm` deep, from
    a depth map subsampled by `step` inside `box`; None when there is none.

    deepest_fallback: when no cell is that deep, one of the deepest cells (None only for an empty
    mask). continuous: a float index within half a cell of the cell's corner voxel, else an integer
    voxel inside the cell.
    """
    threshold = min_depth_mm
    if deepest_fallback:
        top = float(depth.max())
        if top <= 0:
            return None
        threshold = min(min_depth_mm, top)
    candidates = np.argwhere(depth >= threshold)
    if len(candidates) == 0:
        return None
    k = candidates[rng.integers(len(candidates))]
    jitter = rng.uniform(-0.5, 0.5, 3) * step if continuous else rng.integers(0, step)
    return k * step + [s.start for s in box] + jitter


def box_around(center, half_vox, shape) -> tuple[slice, ...]:
    """Slices of `center` (voxel index) +- `half_vox` voxels per axis, clipped to `shape`."""
    return tuple(slice(max(int(c) - h, 0), min(int(c) + h + 1, n)) for c, h, n in zip(center, half_vox, shape))


def mm_axes(box, spacing_zyx, center) -> list[np.ndarray]:
    """Open-grid offsets (mm) of a box's voxels from `center` (voxel index)."""
    out = []
    for axis, (sl, d, c) in enumerate(zip(box, spacing_zyx, center)):
        shape = [1, 1, 1]
        shape[axis] = sl.stop - sl.start
        out.append(((np.arange(sl.start, sl.stop) - c) * d).astype(np.float32).reshape(shape))
    return out


def touches(mask: np.ndarray, others: np.ndarray) -> bool:
    """True when `mask` comes within 2 voxels of `others`: placed tumors must stay separate lesions."""
    return bool(np.any(ndimage.binary_dilation(mask, iterations=2) & others))


def random_rotation(rng: np.random.Generator, max_deg: float | None = None) -> np.ndarray:
    """A 3 x 3 rotation matrix. max_deg None: uniform over all rotations (QR of a Gaussian
    matrix); else about a random axis by at most `max_deg` degrees (Rodrigues: 180 turns any
    way, 10-30 keep a phantom organ near its anatomical pose)."""
    if max_deg is None:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        return q * np.sign(np.diag(r))
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
