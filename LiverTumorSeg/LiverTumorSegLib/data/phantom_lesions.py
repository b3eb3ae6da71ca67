"""Tumors and cysts placed in a phantom's liver: sites deep enough below the liver surface,
lobulated deformed ellipsoids with blurred edges (hypodense, necrotic, rim-enhancing or
hyperdense), and water-density cysts that stay liver.

Every tumor is exactly one 26-connected component of label 2, never touching another.
mm in the body frame, tuples in array order (z, y, x).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, special

from ..core.geometry import depth_below_surface_mm, subsampling_step
from ..core.lesions import largest_component
from .phantom_canvas import Canvas, ellipsoid_level
from .phantom_settings import TUMOR_KINDS, PhantomSettings
from .placement import pick_site, random_rotation
from .smooth_field import smooth_field


def liver_depth_map(c: Canvas, box) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) from each liver voxel of `box` to the liver surface, on ~4 mm cells: (depth, step)."""
    step = subsampling_step(c.grid.spacing, 4.0)
    return depth_below_surface_mm(c.labels[box] == 1, c.grid.spacing, step), step


def _site(rng: np.random.Generator, c: Canvas, box, depth, step, min_depth):
    """A random liver point (mm) at least `min_depth` mm inside the surface, or None."""
    index = pick_site(rng, depth, step, box, min_depth, deepest_fallback=False, continuous=True)
    return None if index is None else c.grid.mm(index)


def _tumor_shape(rng: np.random.Generator, c: Canvas, center, radius):
    """Lobulated tumor: a deformed ellipsoid plus 0-2 satellite lobes. Returns (box, rho, radii)."""
    radii = rng.uniform(0.75, 1.25, 3)
    radii *= radius / np.cbrt(np.prod(radii))  # same volume as the sphere of `radius`
    rot = random_rotation(rng, 180.0)
    box = c.grid.box(center, (1.6 * radii.max() + 4,) * 3)
    axes = c.grid.axes(box)
    level = ellipsoid_level(axes, center, radii, rot)
    for _ in range(int(rng.integers(0, 3))):
        direction = rng.normal(size=3)
        lobe_c = center + direction / np.linalg.norm(direction) * radii.mean() * rng.uniform(0.5, 0.85)
        level = np.minimum(level, ellipsoid_level(axes, lobe_c, radii * rng.uniform(0.35, 0.6), rot))
    field = smooth_field(rng, level.shape, [max(radius / 1.5, 2.0) / d for d in c.grid.spacing])
    level *= 1 + np.float32(rng.uniform(0.05, 0.2)) * field
    return box, np.sqrt(level), radii


def _tumor_hu(rng: np.random.Generator, kind: str, rho: np.ndarray, radius: float, liver_hu: float, s: PhantomSettings):
    """HU inside a tumor from its normalised radius rho (0 centre, 1 edge). Returns (map, core contrast)."""
    texture = smooth_field(rng, rho.shape, 3.0) * np.float32(rng.uniform(3, 8))
    if kind == "hyper":
        contrast = rng.uniform(*s.hyper_contrast_hu)
        return np.float32(liver_hu + contrast) + texture, contrast
    contrast = -rng.uniform(*s.hypo_contrast_hu)
    core = np.float32(liver_hu + contrast) + texture
    if kind == "necrotic":
        inner = rng.uniform(0.35, 0.65)
        necrosis = rng.uniform(5, 25)
        w = special.expit((np.float32(inner) - rho) / np.float32(0.06))
        core = core + w * (np.float32(necrosis) - core)
    elif kind == "rim":
        shell = 1 - min(rng.uniform(2.0, 5.0) / radius, 0.4)
        w = special.expit((rho - np.float32(shell)) / np.float32(0.05))
        core = core + w * (np.float32(liver_hu + rng.uniform(10, 40)) - core)
    return core, contrast


def place_tumors(rng: np.random.Generator, c: Canvas, s: PhantomSettings, liver_box, depth_map, liver_hu: float) -> list[dict]:
    """Tumors in the liver, never touching each other; each is one 26-connected component of label 2."""
    depth, step = depth_map
    n = int(rng.integers(s.n_tumors[0], s.n_tumors[1] + 1))
    kinds = rng.choice(len(TUMOR_KINDS), size=n, p=np.asarray(s.tumor_kind_weights) / sum(s.tumor_kind_weights))
    tumors, spheres = [], []  # spheres: (centre mm, radius mm) for a cheap clash test
    for kind_index in kinds:
        log_lo, log_hi = np.log(s.tumor_diameter_mm[0]), np.log(s.tumor_diameter_mm[1])
        diameter = float(np.exp(rng.uniform(log_lo, log_hi)))
        for attempt in range(40):
            if attempt and attempt % 10 == 0:
                diameter = max(diameter * 0.8, s.tumor_diameter_mm[0])
            placed = _try_tumor(rng, c, s, liver_box, depth, step, diameter / 2, TUMOR_KINDS[kind_index], liver_hu, spheres)
            if placed is not None:
                tumors.append(placed)
                spheres.append((c.grid.mm(placed["center"]), diameter / 2))
                break
    return tumors


def _try_tumor(rng, c: Canvas, s: PhantomSettings, liver_box, depth, step, radius, kind, liver_hu, spheres):
    """Draw, check and paint one tumor; None when the site clashes with a tumor already there."""
    center = _site(rng, c, liver_box, depth, step, max(0.6 * radius, 3.0))
    if center is None or any(np.linalg.norm(center - p) < 0.9 * (radius + r) + 2 for p, r in spheres):
        return None
    box, rho, radii = _tumor_shape(rng, c, center, radius)
    liver = c.labels[box] > 0
    mask = largest_component((rho < 1) & (c.labels[box] == 1))
    voxels = int(mask.sum())
    if voxels < 4 or np.any(ndimage.binary_dilation(mask, iterations=2) & (c.labels[box] == 2)):
        return None
    hu, contrast = _tumor_hu(rng, kind, rho, radius, liver_hu, s)
    edge_mm = min(rng.uniform(0.8, 2.5), 0.35 * radius)
    weight = ndimage.gaussian_filter(mask.astype(np.float32), [edge_mm / d for d in c.grid.spacing]) * liver
    region = c.img[box]
    region += weight * (hu - region)
    c.labels[box][mask] = 2
    index = np.argwhere(mask).mean(0) + [sl.start for sl in box]
    volume_mm3 = voxels * float(np.prod(c.grid.spacing))
    return {
        "center": [round(float(v), 2) for v in index],
        "radius_mm": round(float(radii.mean()), 2),
        "diameter_mm": round(float(np.cbrt(6 * volume_mm3 / np.pi)), 2),
        "kind": kind,
        "contrast_hu": round(float(contrast), 1),
        "voxels": voxels,
        "volume_ml": round(volume_mm3 / 1000.0, 3),
    }


def place_cysts(rng: np.random.Generator, c: Canvas, s: PhantomSettings, liver_box, depth_map) -> None:
    """Simple cysts: water density (0-20 HU), sharp, inside the liver and labelled liver."""
    depth, step = depth_map
    for _ in range(int(rng.integers(s.n_cysts[0], s.n_cysts[1] + 1))):
        radius = rng.uniform(*s.cyst_diameter_mm) / 2
        center = _site(rng, c, liver_box, depth, step, 0.8 * radius)
        if center is None:
            continue
        radii = radius * rng.uniform(0.85, 1.15, 3)
        box = c.grid.box(center, (radii.max() + 4,) * 3)
        mask = (ellipsoid_level(c.grid.axes(box), center, radii, random_rotation(rng, 180.0)) < 1) & (c.labels[box] == 1)
        near_tumor = ndimage.binary_dilation(c.labels[box] == 2, iterations=3)
        if mask.any() and not np.any(mask & near_tumor):
            c.paint(box, mask, rng.uniform(0, 20))
