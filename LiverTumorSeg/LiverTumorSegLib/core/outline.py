"""Lesion outlines drawn at each lesion's own edge, not at the training cases' idea of one.

A network outlines tumors the way the tumors it learned from looked. Retrained on a user's small
metastases, it draws the dark core of a large tumor whose edge fades into the liver through a
paler rim, and a radiologist's outline includes that rim (benchmarks/RESULTS.md, the real case).
Where the edge lies in HU differs from lesion to lesion, so it is found per lesion: each lesion
found at the model's threshold grows, by at most REACH_MM, into neighbouring liver voxels whose
smoothed HU lies on the lesion's side of the level EDGE_FRACTION of the way from its core to the
liver parenchyma. A lesion is never shrunk and no lesion appears. Hyperdense lesions grow the
same way with the signs turned; a lesion within MIN_CONTRAST_HU of the liver is left alone (no
edge to find). Arrays are (z, y, x); HU in, voxels out.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .lesions import label_in_bounding_box
from ..volume import Volume

# Chosen inside half A of the real case (benchmarks/RESULTS.md, "Lesions drawn to their own edge"):
# the best mean Dice over Retrain and the default model with no run losing more than 0.01.
EDGE_FRACTION = 0.3
REACH_MM = 2.5
SMOOTH_MM = 1.0
CORE_PERCENTILE = 25.0
MIN_CONTRAST_HU = 10.0


def grow_to_edges(lesions: np.ndarray, image: Volume, liver: np.ndarray) -> np.ndarray:
    """The voxels (bool, same grid) that move each lesion of `lesions` (bool) out to its edge.

    `image` holds the HU on the same (z, y, x) grid as `lesions` and `liver` (a crop of a CT
    is fine: spacing is what counts). Empty when there are no lesions or no parenchyma."""
    added = np.zeros(lesions.shape, dtype=bool)
    lesions = np.asarray(lesions, dtype=bool)
    liver = np.asarray(liver, dtype=bool)
    parenchyma = liver & ~lesions
    if not lesions.any() or not parenchyma.any():
        return added
    liver_hu = float(np.median(image.array[parenchyma]))
    spacing = np.asarray(image.spacing_zyx, dtype=float)
    margin = np.ceil((REACH_MM + 3.0 * SMOOTH_MM) / spacing).astype(int) + 1
    box, labels, _ = label_in_bounding_box(lesions)
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        pad = tuple(slice(max(0, b.start + s.start - m), min(n, b.start + s.stop + m))
                    for b, s, m, n in zip(box, found, margin, lesions.shape))
        own = np.zeros(tuple(p.stop - p.start for p in pad), dtype=bool)
        inner = tuple(slice(b.start + s.start - p.start, b.start + s.stop - p.start) for b, s, p in zip(box, found, pad))
        own[inner] = labels[found] == index
        added[pad] |= _grown(own, image.array[pad], liver[pad], lesions[pad], liver_hu, spacing)
    return added


def _grown(own: np.ndarray, hu: np.ndarray, liver: np.ndarray, lesions: np.ndarray, liver_hu: float,
           spacing: np.ndarray) -> np.ndarray:
    """One lesion's added voxels inside its padded box."""
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), SMOOTH_MM / spacing)
    dark = float(np.median(smooth[own])) < liver_hu
    core = float(np.percentile(smooth[own], CORE_PERCENTILE if dark else 100.0 - CORE_PERCENTILE))
    contrast = liver_hu - core  # > 0 for a hypodense lesion
    if abs(contrast) < MIN_CONTRAST_HU:
        return np.zeros(own.shape, dtype=bool)
    level = core + EDGE_FRACTION * contrast
    on_lesion_side = smooth < level if contrast > 0 else smooth > level
    near = ndimage.distance_transform_edt(~own, sampling=spacing) <= REACH_MM
    candidates = (near & liver & on_lesion_side) | own
    parts, _ = ndimage.label(candidates, structure=np.ones((3, 3, 3), dtype=bool))
    connected = np.isin(parts, np.unique(parts[own]))  # own is inside candidates: no 0 among them
    return connected & ~lesions
