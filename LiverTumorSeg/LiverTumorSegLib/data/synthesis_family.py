"""A parameterised family of synthetic liver tumors, matched to each case's own liver.

`SynthesisFamily` holds the knobs the segmenter's search (synthesis_search.py) turns: size mix
(equivalent diameter 5-60 mm, log-uniform, skewed small or large), count, contrast relative to
the case's own liver median (hypodense and hyperdense), rim enhancement, necrotic core,
lobulation, edge blur, texture scaled to the case's liver noise, and copy-paste of the case's own
corrected tumors to other liver sites (synthesis.paste_tumors: feathered context blending).

How one tumor is made (`synthesize_family`): a deformed ellipsoid with 0-3 lobes is a level field
over a box; its threshold is chosen so the tumor's volume matches the drawn diameter exactly
(before the liver clips it; a site that loses more than 10% is refused). The tumor replaces the
local anatomy (vessels inside it disappear, as a real mass displaces them) but keeps the case's
own fine noise: out = (1 - w) * CT + w * (liver median + contrast + texture + CT high-pass), with
w = 1 on the tumor falling off over the edge blur outside it, and w = 0 outside the healthy
liver, so real tumors and everything outside the liver are never changed. Tumors never overlap
or touch (2 voxels) real or earlier tumors.

Tolerances the tests hold it to: equivalent diameter within 15% of the requested one (voxel
discreteness at 5 mm on thick slices), mean HU over a plain tumor (no rim, no necrosis) within
max(5 HU, 15%) of the requested contrast from the healthy-liver median.

Arrays are (z, y, x), spacing in mm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage

from ..core.lesions import largest_component
from ..errors import InputError
from ..volume import Volume
from .placement import box_around, count_range, depth_map, liver_and_tumors, mm_axes, pick_site, random_rotation
from .smooth_field import smooth_field
from .synthesis import paste_tumors

SIZE_SKEWS = {"small": 2.5, "uniform": 1.0, "large": 0.4}  # exponent on the uniform draw of log(diameter)
DIAMETER_LIMITS_MM = (3.0, 80.0)
SIZE_TOLERANCE = 0.15
CONTRAST_TOLERANCE = (5.0, 0.15)  # HU, fraction: |measured - requested| <= max of the two


@dataclass
class SynthesisFamily:
    """One member of the family; every range is (low, high), drawn uniformly per tumor unless said.

    diameter_mm: equivalent-sphere diameter, log-uniform, skewed by size_skew ("small" | "uniform" |
    "large"); count: synthesised tumors per copy; hypo_contrast_hu / hyper_contrast_hu: how far the
    tumor body's mean HU lies below / above the case's healthy-liver median; hyper_fraction: share of
    hyperdense tumors; rim_fraction: share of hypodense tumors with an enhancing rim (rim_hu above the
    liver, rim_mm thick); necrosis_fraction: share of hypodense tumors with a darker core
    (necrosis_hu below the body, deeper than half the radius); lobulation: 0 smooth, 1 up to 3 lobes;
    edge_mm: Gaussian edge blur (sigma); texture: heterogeneity std as a multiple of the case's
    liver noise; paste: copies of the case's own tumors pasted elsewhere (synthesis.paste_tumors,
    paste_margin_mm of feathered liver context)."""

    diameter_mm: tuple = (5.0, 60.0)
    size_skew: str = "uniform"
    count: tuple = (1, 3)
    hypo_contrast_hu: tuple = (20.0, 80.0)
    hyper_contrast_hu: tuple = (20.0, 60.0)
    hyper_fraction: float = 0.3
    rim_fraction: float = 0.2
    rim_hu: tuple = (10.0, 40.0)
    rim_mm: tuple = (1.5, 3.0)
    necrosis_fraction: float = 0.15
    necrosis_hu: tuple = (15.0, 40.0)
    lobulation: float = 0.5
    edge_mm: tuple = (0.5, 1.5)
    texture: float = 1.0
    paste: tuple = (1, 2)
    paste_margin_mm: float = 3.0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (list, tuple)):
                value = tuple(float(v) for v in value)
                if len(value) != 2 or value[0] > value[1]:
                    raise InputError(f"synthesis {f.name} {getattr(self, f.name)}: give a range (low, high) with low <= high")
                setattr(self, f.name, value)
        lo, hi = self.diameter_mm
        if lo < DIAMETER_LIMITS_MM[0] or hi > DIAMETER_LIMITS_MM[1]:
            raise InputError(f"synthesis diameter_mm {self.diameter_mm}: keep it within {DIAMETER_LIMITS_MM} mm")
        if self.size_skew not in SIZE_SKEWS:
            raise InputError(f"synthesis size_skew {self.size_skew!r}: use one of {sorted(SIZE_SKEWS)}")
        for name in ("hyper_fraction", "rim_fraction", "necrosis_fraction", "lobulation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"synthesis {name} {getattr(self, name)} must be between 0 and 1")
        if min(self.hypo_contrast_hu[0], self.hyper_contrast_hu[0], self.edge_mm[0], self.texture) < 0:
            raise InputError("synthesis contrasts, edge blur and texture must not be negative")
        self.count = tuple(int(v) for v in count_range(self.count))
        self.paste = tuple(int(v) for v in count_range(self.paste))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SynthesisFamily":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown synthesis settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def liver_statistics(image: Volume, healthy: np.ndarray) -> tuple[float, float]:
    """(median HU, noise std HU) of the healthy liver; noise = 1.4826 MAD of the CT minus its 2 mm
    Gaussian smoothing (the fine grain a synthetic tumor must share), over the liver's box."""
    box = ndimage.find_objects(healthy.astype(np.uint8))[0]
    hu = image.array[box].astype(np.float32)
    inside = healthy[box]
    median = float(np.median(hu[inside]))
    high = hu - ndimage.gaussian_filter(hu, [2.0 / s for s in image.spacing_zyx])
    values = high[ndimage.binary_erosion(inside, iterations=1) if inside.sum() > 1000 else inside]
    noise = 1.4826 * float(np.median(np.abs(values - np.median(values)))) if values.size else 0.0
    return median, noise


def draw_diameter(rng: np.random.Generator, family: SynthesisFamily) -> float:
    lo, hi = family.diameter_mm
    u = rng.uniform() ** SIZE_SKEWS[family.size_skew]
    return float(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo))))


def _level_field(rng, box, spacing, center, radius, lobulation) -> np.ndarray:
    """A smooth, deformed (and lobulated) blob over the box: a field whose sublevel sets grow with
    the level; the tumor is {field < t}, t chosen for the wanted volume."""
    axes = mm_axes(box, spacing, center)
    shape = tuple(sl.stop - sl.start for sl in box)
    sigma = radius * rng.uniform(0.08, 0.2)
    cell = [max(n / 2.0, 1.0) for n in shape]
    moved = [a + np.float32(sigma) * smooth_field(rng, shape, cell) for a in axes]
    radii = radius * rng.uniform(0.8, 1.25, 3)
    radii *= radius / np.cbrt(np.prod(radii))
    rot = random_rotation(rng)

    def form(offset, r):
        return sum((sum(np.float32(rot[j, i]) * (moved[i] - np.float32(offset[i])) for i in range(3)) / np.float32(r[j])) ** 2
                   for j in range(3))

    level = form(np.zeros(3), radii)
    for _ in range(int(rng.binomial(3, lobulation))):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        offset = rot.T @ (direction * radii * rng.uniform(0.6, 0.9))
        level = np.minimum(level, form(offset, radii * rng.uniform(0.35, 0.6)))
    return level


def synthesize_family(image: Volume, labels, family: SynthesisFamily, seed: int,
                      n_tumors: int | tuple | None = None) -> tuple[Volume, Volume, list[dict]]:
    """Add `family.count` (or n_tumors) tumors to a case. labels: 0/1/2 array (or Volume) on the CT
    grid, or a boolean liver mask; its tumors are kept and avoided. Returns (CT, labels 0/1/2,
    tumor dicts: center (voxel z, y, x), diameter_mm (requested), measured_diameter_mm, kind
    "hypo" | "hyper", rim, necrosis, requested_contrast_hu (signed, body vs liver median),
    contrast_hu (measured mean over the tumor minus the liver median), edge_mm, voxels, seconds)."""
    import time

    given = labels.array if isinstance(labels, Volume) else labels
    whole, tumors = liver_and_tumors(given, image.shape, "liver mask", "CT's")
    healthy = whole & ~tumors
    if not healthy.any():
        raise InputError("the liver mask is empty; tumors can only be synthesised inside a liver")
    rng = np.random.default_rng(seed)
    spacing = np.asarray(image.spacing_zyx, dtype=float)
    median, noise = liver_statistics(image, healthy)
    out = image.array.astype(np.float32, copy=True)
    out_labels = whole.astype(np.uint8)
    out_labels[tumors] = 2
    depth, step, liver_box = depth_map(healthy, spacing)
    lo, hi = count_range(family.count if n_tumors is None else n_tumors)
    made = []
    for _ in range(int(rng.integers(lo, hi + 1))):
        for _attempt in range(20):
            t = time.perf_counter()
            tumor = _one(rng, out, out_labels, healthy, spacing, depth, step, liver_box, family, median, noise)
            if tumor is not None:
                tumor["seconds"] = round(time.perf_counter() - t, 3)
                made.append(tumor)
                break
    return image.with_array(out), image.with_array(out_labels), made


def _one(rng, out, out_labels, healthy, spacing, depth, step, liver_box, family, median, noise):
    """One tumor written into `out` / `out_labels` in place; None when the site is refused."""
    diameter = draw_diameter(rng, family)
    radius = diameter / 2.0
    center = pick_site(rng, depth, step, liver_box, max(0.5 * radius, 2.0))
    if center is None:
        return None
    edge = rng.uniform(*family.edge_mm)
    half = np.ceil((1.9 * radius + 3 * edge + 2 * spacing.max()) / spacing).astype(int) + 1
    box = box_around(center, half, out.shape)
    level = _level_field(rng, box, spacing, center, radius, family.lobulation)
    wanted = max(1, int(round(np.pi / 6.0 * diameter**3 / float(np.prod(spacing)))))
    flat = np.sort(level, axis=None)
    if wanted >= flat.size:
        return None
    shape_mask = level <= flat[wanted - 1]
    free = healthy[box] & ~ndimage.binary_dilation(out_labels[box] == 2, structure=np.ones((3, 3, 3), bool), iterations=2)
    mask = largest_component(shape_mask & free)
    if mask.sum() < max(4, 0.9 * shape_mask.sum()):
        return None  # clipped by the liver edge or by another tumor
    kind = "hyper" if rng.uniform() < family.hyper_fraction else "hypo"
    contrast = rng.uniform(*(family.hyper_contrast_hu if kind == "hyper" else family.hypo_contrast_hu))
    signed = contrast if kind == "hyper" else -contrast
    rim = kind == "hypo" and rng.uniform() < family.rim_fraction
    necrosis = kind == "hypo" and rng.uniform() < family.necrosis_fraction
    body = np.full(mask.shape, np.float32(median + signed), np.float32)
    if family.texture > 0 and noise > 0:
        cell = [max(rng.uniform(1.5, 3.0) / s, 1.0) for s in spacing]
        texture = smooth_field(rng, mask.shape, cell)
        body += np.float32(family.texture * noise) * (texture - np.float32(texture[mask].mean()))  # the mean stays the contrast
    inner = ndimage.distance_transform_edt(mask, sampling=spacing) if (rim or necrosis) else None
    if rim:
        shell = mask & (inner <= rng.uniform(*family.rim_mm))
        body[shell] = np.float32(median + rng.uniform(*family.rim_hu))
    if necrosis:
        body[mask & (inner > 0.5 * radius)] -= np.float32(rng.uniform(*family.necrosis_hu))
    region = out[box]
    grain = region - ndimage.gaussian_filter(region, [2.0 / s for s in spacing])
    np.clip(grain, -3.0 * noise, 3.0 * noise, out=grain)  # the fine grain, not the edges of vessels
    blur = ndimage.gaussian_filter(mask.astype(np.float32), [max(edge, 1e-3) / s for s in spacing])
    weight = np.clip(2.0 * blur, 0.0, 1.0) * healthy[box]
    weight[mask] = 1.0
    region += weight * (body + grain - region)
    out_labels[box][mask] = 2
    voxels = int(mask.sum())
    return {
        "center": [round(float(v), 2) for v in np.argwhere(mask).mean(0) + [s.start for s in box]],
        "diameter_mm": round(diameter, 2),
        "measured_diameter_mm": round(float(np.cbrt(6.0 * voxels * float(np.prod(spacing)) / np.pi)), 2),
        "kind": kind,
        "rim": bool(rim),
        "necrosis": bool(necrosis),
        "requested_contrast_hu": round(float(signed), 1),
        "contrast_hu": round(float(region[mask].mean() - median), 1),
        "edge_mm": round(float(edge), 2),
        "voxels": voxels,
    }


def family_copy(image: Volume, labels: Volume, family: SynthesisFamily, seed: int) -> tuple[Volume, Volume, list[dict]]:
    """A training variant of a labelled case: its own tumors pasted at `family.paste` other liver
    sites (context-blended), then `family.count` family tumors. Every voxel keeps a true label.
    Returns (CT, labels 0/1/2, tumor dicts, pasted ones with kind "pasted")."""
    made = []
    if (labels.array == 2).any() and family.paste[1] > 0:
        image, labels, pasted = paste_tumors(image, labels, image, labels.array, seed, family.paste, family.paste_margin_mm)
        made += pasted
    image, labels, synthesised = synthesize_family(image, labels.array, family, seed + 1)
    return image, labels, made + synthesised
