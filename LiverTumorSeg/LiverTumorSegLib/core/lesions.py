"""Lesions: 26-connected components of a tumor mask, with the numbers a radiologist reads.

A lesion's longest axial diameter is measured like a RECIST reading on screen: the largest
in-plane distance across the painted voxels (voxel edges included) on any one axial slice
(array axis z), in mm, through the image's spacing and direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from ..volume import Volume
from .geometry import depth_below_surface_mm

# Pixel corner offsets (y, x) around a pixel centre, in voxels.
_CORNERS = ((-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5))

# (CSV key, table title) per column, in order.
COLUMNS = (
    ("id", "Lesion"),
    ("voxels", "Voxels"),
    ("volume_ml", "Volume (mL)"),
    ("longest_axial_diameter_mm", "Longest axial diameter (mm)"),
    ("mean_hu", "Mean HU"),
    ("mean_probability", "Mean probability"),
    ("centroid_r_mm", "R (mm)"),
    ("centroid_a_mm", "A (mm)"),
    ("centroid_s_mm", "S (mm)"),
)


@dataclass
class Lesion:
    """One lesion. volume in mL, diameter in mm, centroid in Slicer RAS mm; probability None without a map."""

    id: int
    voxels: int
    volume_ml: float
    longest_axial_diameter_mm: float
    mean_hu: float
    mean_probability: float | None
    centroid_ras: tuple[float, float, float]


def equivalent_diameter_mm(volume_mm3: float) -> float:
    """Diameter of the sphere with this volume: d = (6 V / pi)^(1/3)."""
    return float((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0))


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a (z, y, x) mask: int32 labels 1..n (0 background) and n."""
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3, 3), dtype=bool))
    return labels.astype(np.int32, copy=False), int(count)


def count_lesions(mask: np.ndarray) -> int:
    """Number of 26-connected lesions in a (z, y, x) mask."""
    return label_lesions(mask)[1]


def mask_box(mask: np.ndarray) -> tuple | None:
    """Index box (z0, z1, y0, y1, x0, x1) of a (z, y, x) bool mask's voxels, ends exclusive; None
    when the mask is empty."""
    box = []
    for axis in range(3):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        if hits.size == 0:
            return None
        box += [int(hits[0]), int(hits[-1]) + 1]
    return tuple(box)


def label_in_bounding_box(mask: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray, int]:
    """(the bounding box of a non-empty mask, label_lesions of the mask inside it, count): labelling
    a 512 x 512 x 600 grid costs seconds, the box around the predicted voxels far less."""
    box = ndimage.find_objects(mask.astype(np.uint8, copy=False))[0]
    return (box, *label_lesions(mask[box]))


def drop_small_lesions(mask: np.ndarray, voxel_mm3: float, min_mm3: float) -> np.ndarray:
    """`mask` with 26-connected components below min_mm3 removed (in place, and returned).

    Labelling runs only over the bounding box of the mask, so it is cheap for a threshold slider."""
    min_voxels = int(np.ceil(min_mm3 / voxel_mm3)) if min_mm3 > 0 else 0
    if min_voxels <= 1 or not mask.any():
        return mask
    box, components, count = label_in_bounding_box(mask)
    keep = np.bincount(components.ravel(), minlength=count + 1) >= min_voxels
    keep[0] = False
    mask[box] = keep[components]
    return mask


# Surface slivers (drop_surface_slivers): at most this half-thickness (mm, the largest distance
# from a voxel inside the component to its outside) ...
SLIVER_HALF_THICKNESS_MM = 2.0
# ... with at least this fraction of the voxels within SLIVER_SURFACE_MM of the region's boundary.
SLIVER_SURFACE_MM = 3.0
SLIVER_SURFACE_FRACTION = 0.5


def drop_surface_slivers(
    mask: np.ndarray,
    region: np.ndarray,
    spacing_zyx,
    half_thickness_mm: float = SLIVER_HALF_THICKNESS_MM,
    surface_mm: float = SLIVER_SURFACE_MM,
) -> np.ndarray:
    """`mask` without thin components that hug the boundary of `region` (in place, and returned).

    Where the liver meets fat or gas, partial volume makes its rim darker than the parenchyma, so
    a thresholded probability (or HU) map grows thin false "lesions" along the liver surface;
    they wreck lesion-wise precision. A tumor, even a subcapsular one, is a blob: thicker than
    2 x half_thickness_mm (kept from exactly that on). Work runs per component on its padded bounding box."""
    if not mask.any():
        return mask
    spacing = np.asarray(spacing_zyx, dtype=float)
    margin = np.ceil(surface_mm / spacing).astype(int) + 1
    outer, components, _ = label_in_bounding_box(mask)
    for value, local in enumerate(ndimage.find_objects(components), start=1):
        if local is None:
            continue
        box = tuple(slice(o.start + b.start, o.start + b.stop) for o, b in zip(outer, local))
        padded = tuple(slice(max(0, b.start - m), min(n, b.stop + m)) for b, m, n in zip(box, margin, mask.shape))
        inside = np.zeros([p.stop - p.start for p in padded], dtype=bool)
        core = tuple(slice(b.start - p.start, b.stop - p.start) for b, p in zip(box, padded))
        inside[core] = components[local] == value
        half_thickness = depth_below_surface_mm(inside, spacing).max()
        if half_thickness >= half_thickness_mm:
            continue
        # Distance to the region's outside; the crop's own border is not a boundary.
        to_surface = depth_below_surface_mm(region[padded], spacing, edge_is_surface=False)
        if np.mean(to_surface[inside] <= surface_mm) >= SLIVER_SURFACE_FRACTION:
            mask[padded][inside] = False
    return mask


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a mask (the mask itself when it has at most one)."""
    labels, count = label_lesions(mask)
    if count <= 1:
        return np.asarray(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _slice_diameter(pixels_yx: np.ndarray, axis_y: np.ndarray, axis_x: np.ndarray) -> float:
    """Largest distance (mm) between corners of the given pixels; axis_* are the mm vectors of one
    voxel step along y and x (direction column times spacing)."""
    corners = (pixels_yx[:, None, :] + np.array(_CORNERS)[None]).reshape(-1, 2)
    corners = np.unique(corners, axis=0)
    hull = corners[ConvexHull(corners).vertices] if len(corners) > 4 else corners
    points = hull[:, :1] * axis_y + hull[:, 1:] * axis_x
    distances = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    return float(distances.max())


def _boundary_pixels(slice_mask: np.ndarray) -> np.ndarray:
    """(y, x) of pixels on the slice's outline: the convex hull only ever needs these."""
    edge = slice_mask & ~ndimage.binary_erosion(slice_mask, border_value=0)
    return np.argwhere(edge).astype(float)


def longest_axial_diameter_mm(mask: np.ndarray, spacing, direction) -> float:
    """Max over axial slices (array z) of the in-plane Feret diameter of `mask` (z, y, x), in mm.

    `spacing` is (x, y, z) mm and `direction` the ITK matrix, as in Volume. "Axial" means the
    array's z slices, which are axial for CT acquired the usual way."""
    d = np.asarray(direction, float).reshape(3, 3)
    axis_x, axis_y = d[:, 0] * spacing[0], d[:, 1] * spacing[1]
    best = 0.0
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        best = max(best, _slice_diameter(_boundary_pixels(mask[z]), axis_y, axis_x))
    return best


def _measure(inside: np.ndarray, box: tuple[slice, ...], ct: Volume, probability: np.ndarray | None) -> Lesion:
    """One lesion from its voxels `inside` its bounding box `box` (z, y, x slices of the CT grid)."""
    voxels = int(np.count_nonzero(inside))
    zyx = _centroid_zyx(inside, voxels) + [sl.start for sl in box]
    return Lesion(
        id=0,
        voxels=voxels,
        volume_ml=voxels * ct.voxel_volume_mm3 / 1000.0,
        longest_axial_diameter_mm=longest_axial_diameter_mm(inside, ct.spacing, ct.direction),
        mean_hu=_mean_inside(ct.array[box], inside, voxels),
        mean_probability=None if probability is None else _mean_inside(probability[box], inside, voxels),
        centroid_ras=tuple(float(c) for c in ct.index_to_ras(zyx[None])[0]),
    )


def _centroid_zyx(inside: np.ndarray, voxels: int) -> np.ndarray:
    """Mean (z, y, x) index from per-axis projections: no (N, 3) index array for a huge lesion."""
    centroid = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        counts = np.count_nonzero(inside, axis=others)
        centroid.append(float(np.dot(counts, np.arange(inside.shape[axis]))) / voxels)
    return np.array(centroid)


def _mean_inside(values: np.ndarray, inside: np.ndarray, voxels: int) -> float:
    """Mean of `values` where `inside`, summed in place (no copy of the selected voxels)."""
    return float(np.sum(values, where=inside, dtype=np.float64)) / voxels


def lesion_table(mask: np.ndarray, ct: Volume, probability: np.ndarray | None = None) -> list[Lesion]:
    """Lesions of a tumor mask (z, y, x) on the CT grid, largest first, ids 1..n in that order.
    `probability` (same grid, 0..1) gives each lesion's mean probability."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != ct.shape:
        raise ValueError(f"tumor mask shape {mask.shape} differs from the CT grid {ct.shape}")
    labels, _ = label_lesions(mask)
    lesions = [
        _measure(labels[box] == value, box, ct, probability)
        for value, box in enumerate(ndimage.find_objects(labels), start=1)
    ]
    lesions.sort(key=lambda lesion: -lesion.voxels)
    for new_id, lesion in enumerate(lesions, start=1):
        lesion.id = new_id
    return lesions


def _row(lesion: Lesion) -> list:
    prob = None if lesion.mean_probability is None else round(lesion.mean_probability, 3)
    r, a, s = (round(c, 1) for c in lesion.centroid_ras)
    return [
        lesion.id,
        lesion.voxels,
        round(lesion.volume_ml, 3),
        round(lesion.longest_axial_diameter_mm, 1),
        round(lesion.mean_hu, 1),
        prob,
        r,
        a,
        s,
    ]


def lesions_to_rows(lesions: list[Lesion]) -> tuple[list[str], list[list]]:
    """Table titles and rounded rows (numbers; None where undefined) for a lesion table view."""
    return [title for _, title in COLUMNS], [_row(lesion) for lesion in lesions]
