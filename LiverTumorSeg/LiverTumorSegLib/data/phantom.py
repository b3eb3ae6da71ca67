"""Abdominal CT phantoms with known truth, for tests, demos and benchmarks.

Each case is a portal-venous abdomen built in a body frame (mm; origin at the body centre, x to
the patient's left, y posterior, z superior: LPS) and sampled on a grid whose array axes are
(z, y, x). What it holds and why (METHOD.md "Phantoms"):

- body outline, subcutaneous fat, abdominal wall and back muscles, spine, ribs, lung bases;
- liver with per-case enhancement (90-130 HU) and a smooth texture, branching bright vessels
  (portal and hepatic trees, 150-250 HU), the IVC and gallbladder notched into it;
- distractors a naive HU rule confuses with tumors: gallbladder and hepatic cysts (0-20 HU, sharp;
  cysts lie INSIDE the liver and are labelled liver), kidneys, spleen, stomach and bowel with
  air and fluid, partial volume at the liver edge;
- tumors 5-80 mm, lobulated deformed ellipsoids with blurred edges: mostly hypodense (30-90 HU
  below the liver), some necrotic or rim-enhancing, some hyperdense;
- a Gaussian point-spread function and correlated noise (10-25 HU).

Labels: 0 background, 1 liver (vessels and cysts included), 2 tumor. Every tumor in `tumors` is
exactly one 26-connected component of label 2. Everything is drawn from one numpy Generator, so
a seed gives the same case bit for bit.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage, special

from ..errors import InputError
from ..core.lesions import largest_component
from ..volume import Volume

AIR_HU = -1000.0
HU_CLIP = (-1024, 3071)
TUMOR_KINDS = ("hypo", "necrotic", "rim", "hyper")


@dataclass(frozen=True)
class PhantomSettings:
    """Grid, anatomy and tumor ranges; each case draws its own values uniformly from the ranges.

    The in-plane matrix is fixed and the pixel size drawn, so the field of view (mm) follows, as on
    a scanner. `max_slices` caps thin-slice cases (a 1 mm case covers less of the abdomen).
    """

    matrix: int = 512
    inplane_mm: tuple[float, float] = (0.6, 0.9)
    slice_mm: tuple[float, float] = (1.0, 5.0)
    z_extent_mm: tuple[float, float] = (160.0, 220.0)
    max_slices: int = 128
    n_tumors: tuple[int, int] = (1, 5)
    tumor_diameter_mm: tuple[float, float] = (5.0, 80.0)
    tumor_kind_weights: tuple[float, float, float, float] = (0.5, 0.12, 0.15, 0.23)  # TUMOR_KINDS
    hypo_contrast_hu: tuple[float, float] = (30.0, 90.0)
    hyper_contrast_hu: tuple[float, float] = (20.0, 60.0)
    n_cysts: tuple[int, int] = (0, 3)
    cyst_diameter_mm: tuple[float, float] = (6.0, 30.0)
    liver_hu: tuple[float, float] = (90.0, 130.0)
    vessel_hu: tuple[float, float] = (150.0, 250.0)
    noise_hu: tuple[float, float] = (10.0, 25.0)
    psf_mm: tuple[float, float] = (0.5, 0.8)

    def __post_init__(self):
        for name in ("inplane_mm", "slice_mm", "z_extent_mm", "n_tumors", "tumor_diameter_mm", "hypo_contrast_hu",
                     "hyper_contrast_hu", "n_cysts", "cyst_diameter_mm", "liver_hu", "vessel_hu", "noise_hu", "psf_mm"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi or (name.endswith("_mm") and hi <= 0):
                raise InputError(f"phantom setting {name}={getattr(self, name)}: give (low, high) with 0 <= low <= high")
        if self.matrix < 32 or self.max_slices < 8:
            raise InputError(f"phantom grid {self.matrix} x {self.matrix} x {self.max_slices} is too small; use at least 32 x 32 x 8")
        if len(self.tumor_kind_weights) != len(TUMOR_KINDS) or min(self.tumor_kind_weights) < 0 or sum(self.tumor_kind_weights) <= 0:
            raise InputError(f"tumor_kind_weights needs {len(TUMOR_KINDS)} non-negative weights for {TUMOR_KINDS}")

    @classmethod
    def full(cls, **overrides) -> "PhantomSettings":
        """512 x 512 in-plane at 0.6-0.9 mm, 1-5 mm slices: what a clinical scanner writes."""
        return replace(cls(), **overrides)

    @classmethod
    def small(cls, **overrides) -> "PhantomSettings":
        """About 150 x 150 x 50 voxels for tests: the same anatomy (mm) on a coarse 2.2-2.8 mm grid."""
        base = cls(matrix=150, inplane_mm=(2.2, 2.8), slice_mm=(3.0, 5.0), max_slices=50, n_tumors=(1, 4),
                   tumor_diameter_mm=(8.0, 60.0))
        return replace(base, **overrides)

    @classmethod
    def medium(cls, **overrides) -> "PhantomSettings":
        """256 x 256 in-plane at 1.2-1.8 mm, 2-5 mm slices: benchmarks that need many cases."""
        base = cls(matrix=256, inplane_mm=(1.2, 1.8), slice_mm=(2.0, 5.0), max_slices=90)
        return replace(base, **overrides)


@dataclass
class PhantomCase:
    image: Volume  # int16 HU
    labels: Volume  # uint8: 0 background, 1 liver, 2 tumor
    tumors: list[dict] = field(default_factory=list)
    seed: int = 0


@dataclass(frozen=True)
class _Grid:
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
class _Canvas:
    """The image being painted (float32 HU), the truth labels and where the liver may not grow; full grid."""

    grid: _Grid
    img: np.ndarray
    labels: np.ndarray
    blocked: np.ndarray  # voxels the liver may not take (spine, vessels, kidneys, gallbladder)

    def paint(self, box, mask, hu, block=False) -> None:
        region = self.img[box]
        np.copyto(region, np.broadcast_to(np.asarray(hu, np.float32), region.shape), where=mask)
        if block:
            self.blocked[box] |= mask


@dataclass(frozen=True)
class _Body:
    """Body outline and the inner abdominal cavity, ellipses in (y, x), mm."""

    half_x: float
    half_y: float
    fat_mm: float
    muscle_mm: float
    cavity_x: float
    cavity_y: float
    spine_y: float
    taper: float  # relative widening per 100 mm towards the feet

    def outline(self, grid: "_Grid", box, inset_mm: float = 0.0) -> np.ndarray:
        """Inside the skin, `inset_mm` in from it: an (y, x) ellipse through the box's slices."""
        return _ellipse(grid, box, self.half_x - inset_mm, self.half_y - inset_mm, self.taper)

    def cavity(self, grid: "_Grid", box, inset_mm: float = 0.0) -> np.ndarray:
        """Inside the abdominal wall muscles (where the organs are), `inset_mm` in from them."""
        return _ellipse(grid, box, self.cavity_x - inset_mm, self.cavity_y - inset_mm, self.taper)


# ---- small geometric helpers ----------------------------------------------------------------

def _ellipsoid_level(axes, center, radii, rotation=None) -> np.ndarray:
    """Sum of squared normalised coordinates: < 1 inside the ellipsoid (radii in mm, z, y, x)."""
    d = [a - np.float32(c) for a, c in zip(axes, center)]
    if rotation is not None:
        d = [sum(np.float32(rotation[j, i]) * d[i] for i in range(3)) for j in range(3)]
    return sum((di / np.float32(r)) ** 2 for di, r in zip(d, radii))


def _random_rotation(rng: np.random.Generator, max_deg: float = 180.0) -> np.ndarray:
    """A rotation about a random axis by up to max_deg degrees (Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


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


def _capsule(grid: _Grid, p0, p1, radius):
    """Voxels within `radius` mm of the segment p0-p1 (mm): (box, mask) or None."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    center, half = (p0 + p1) / 2, np.abs(p1 - p0) / 2 + radius + 1.0
    box = grid.box(center, half)
    if box is None:
        return None
    axes = grid.axes(box)
    d = (p1 - p0).astype(np.float32)
    length2 = max(float(d @ d), 1e-6)
    rel = [a - np.float32(c) for a, c in zip(axes, p0)]
    t = np.clip(sum(r * di for r, di in zip(rel, d)) / np.float32(length2), 0.0, 1.0)
    dist2 = sum((r - t * di) ** 2 for r, di in zip(rel, d))
    return box, dist2 <= np.float32(radius * radius)


def _turn(direction: np.ndarray, normal: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate a unit direction by `degrees` towards `normal` (perpendicular unit vector)."""
    a = np.deg2rad(degrees)
    out = np.cos(a) * direction + np.sin(a) * normal
    return out / np.linalg.norm(out)


def _perpendicular(rng: np.random.Generator, direction: np.ndarray) -> np.ndarray:
    v = rng.normal(size=3)
    v -= (v @ direction) * direction
    return v / np.linalg.norm(v)


# ---- the case -------------------------------------------------------------------------------

def make_phantom(seed: int, settings: PhantomSettings | None = None) -> PhantomCase:
    """One abdominal CT (int16 HU) with labels 0/1/2 and the list of tumors it holds.

    Tumor dicts: center (voxel index z, y, x), center_lps (mm), radius_mm (mean semi-axis before
    deformation), diameter_mm (equivalent sphere of the labelled voxels), kind, contrast_hu
    (tumor core minus liver, HU), voxels, volume_ml.
    """
    settings = settings or PhantomSettings()
    rng = np.random.default_rng(seed)
    grid, body = _draw_grid_and_body(rng, settings)
    canvas = _Canvas(
        grid,
        np.full(grid.shape, AIR_HU, np.float32),
        np.zeros(grid.shape, np.uint8),
        np.zeros(grid.shape, bool),
    )
    liver_hu = rng.uniform(*settings.liver_hu)
    vessel_hu = rng.uniform(*settings.vessel_hu)

    _paint_body(rng, canvas, body)
    _paint_lungs(rng, canvas, body)
    _paint_bowel_and_stomach(rng, canvas, body)
    _paint_spleen_kidneys(rng, canvas, body, liver_hu)
    _paint_spine_ribs_aorta(rng, canvas, body, vessel_hu)
    liver_box = _paint_liver(rng, canvas, body, liver_hu, vessel_hu)
    depth_map = _depth_map(canvas, liver_box)
    tumors = _place_tumors(rng, canvas, settings, liver_box, depth_map, liver_hu)
    _place_cysts(rng, canvas, settings, liver_box, depth_map)

    hu = _image_formation(rng, canvas, settings)
    origin = (grid.start[2], grid.start[1], grid.start[0])
    spacing = (grid.spacing[2], grid.spacing[1], grid.spacing[0])
    image = Volume(hu, spacing, origin)
    labels = Volume(canvas.labels, spacing, origin)
    for t in tumors:
        t["center_lps"] = [round(float(v), 2) for v in image.index_to_lps(np.asarray([t["center"]]))[0]]
    return PhantomCase(image, labels, tumors, seed)


def _draw_grid_and_body(rng: np.random.Generator, s: PhantomSettings) -> tuple[_Grid, _Body]:
    """Pixel size, slice spacing and z coverage; a body that fits the field of view."""
    half_x = rng.uniform(135.0, 175.0)
    pixel = float(np.clip(2 * half_x / (s.matrix * rng.uniform(0.75, 0.92)), *s.inplane_mm))
    dz = rng.uniform(*s.slice_mm)
    fov = pixel * s.matrix
    half_x = min(half_x, 0.46 * fov)
    half_y = half_x * rng.uniform(0.72, 0.85)
    fat = rng.uniform(8.0, 25.0)
    muscle = rng.uniform(5.0, 10.0)
    cavity_x, cavity_y = half_x - fat - muscle, half_y - fat - muscle
    spine_y = cavity_y - rng.uniform(30.0, 38.0)
    body = _Body(half_x, half_y, fat, muscle, cavity_x, cavity_y, spine_y, taper=rng.uniform(0.0, 0.05))

    n_slices = int(min(round(rng.uniform(*s.z_extent_mm) / dz), s.max_slices))
    n_slices = max(n_slices, 8)
    z_center = rng.uniform(-20.0, 20.0)
    y_center = rng.uniform(-10.0, 25.0)  # the table pushes the body a little anterior of centre
    start = (z_center - dz * (n_slices - 1) / 2, -fov / 2 + y_center, -fov / 2 + rng.uniform(-10, 10))
    return _Grid((n_slices, s.matrix, s.matrix), (dz, pixel, pixel), start), body


def _ellipse(grid: _Grid, box, hx, hy, taper) -> np.ndarray:
    """(y, x) ellipse (half axes mm) through all slices of a box, wider caudally by `taper` per 100 mm."""
    z, y, x = grid.axes(box)
    scale = 1.0 - np.float32(taper) * z / np.float32(100.0)
    return ((x / np.float32(hx)) ** 2 + (y / np.float32(hy)) ** 2) < scale**2


def _paint_body(rng: np.random.Generator, c: _Canvas, b: _Body) -> None:
    """Fat, abdominal wall muscle, visceral fat, back muscles."""
    full = tuple(slice(0, n) for n in c.grid.shape)
    fat_hu, muscle_hu, visceral_hu = rng.uniform(-120, -85), rng.uniform(40, 60), rng.uniform(-110, -80)
    c.paint(full, b.outline(c.grid, full), fat_hu)
    c.paint(full, b.outline(c.grid, full, b.fat_mm), muscle_hu)
    c.paint(full, b.cavity(c.grid, full), visceral_hu)
    z_mid = 0.5 * (c.grid.start[0] + c.grid.mm(np.array(c.grid.shape) - 1)[0])
    for side in (-1, 1):  # erector spinae all the way down; psoas growing below the kidneys
        for center, radii in (((z_mid, b.spine_y + 28, side * 38), (400.0, 22.0, 26.0)),
                              ((-160.0, b.spine_y - 4, side * 32), (100.0, 16.0, 18.0))):
            box = c.grid.box(center, radii)
            if box is not None:
                mask = _ellipsoid_level(c.grid.axes(box), center, radii) < 1
                c.paint(box, mask & b.outline(c.grid, box, b.fat_mm), muscle_hu)


def _paint_lungs(rng: np.random.Generator, c: _Canvas, b: _Body) -> None:
    """Lung bases above and behind the liver dome (the liver is painted over them later)."""
    lung_hu = rng.uniform(-880, -800)
    for side in (-1, 1):
        center = (rng.uniform(110, 125), 0.1 * b.cavity_y, side * 0.5 * b.cavity_x)
        radii = (70.0, 0.95 * b.cavity_y, 0.5 * b.cavity_x)
        box = c.grid.box(center, radii)
        if box is not None:
            mask = _ellipsoid_level(c.grid.axes(box), center, radii) < 1
            c.paint(box, mask & b.cavity(c.grid, box), lung_hu)


def _paint_tube_chain(rng, c: _Canvas, b: _Body, points, radius, wall_hu, content_hu, air_level=None):
    """A bowel-like tube inside the cavity: wall, then contents; air in front of (y <) an air level, mm."""
    wall = rng.uniform(2.0, 3.5)
    for p0, p1 in zip(points[:-1], points[1:]):
        hit = _capsule(c.grid, p0, p1, radius)
        if hit is not None:
            box, mask = hit
            c.paint(box, mask & b.cavity(c.grid, box), wall_hu)
    for p0, p1 in zip(points[:-1], points[1:]):
        hit = _capsule(c.grid, p0, p1, radius - wall)
        if hit is None:
            continue
        box, mask = hit
        mask &= b.cavity(c.grid, box, inset_mm=wall)
        c.paint(box, mask, content_hu)
        if air_level is not None:
            y = c.grid.axes(box)[1]
            c.paint(box, mask & (y < np.float32(air_level)), AIR_HU + rng.uniform(0, 40))


def _paint_bowel_and_stomach(rng: np.random.Generator, c: _Canvas, b: _Body) -> None:
    """Stomach (air-fluid level) and bowel loops (fluid, air, faeces) in the lower abdomen."""
    stomach = np.array([rng.uniform(25, 45), -0.3 * b.cavity_y, 0.35 * b.cavity_x])
    radius = rng.uniform(28, 40)
    points = [stomach + [15, 10, -20], stomach, stomach + [-30, -5, 10]]
    level = stomach[1] + rng.uniform(-0.6, 0.2) * radius
    _paint_tube_chain(rng, c, b, points, radius, rng.uniform(40, 60), rng.uniform(5, 35), air_level=level)

    n_loops = int(rng.integers(10, 18))
    for i in range(n_loops):
        if i == 0:  # hepatic flexure of the colon, right under the liver
            p = np.array([rng.uniform(-95, -70), -0.1 * b.cavity_y, -0.55 * b.cavity_x])
        else:
            p = np.array([rng.uniform(-170, 30), rng.uniform(-0.75, 0.3) * b.cavity_y, rng.uniform(-0.7, 0.7) * b.cavity_x])
        points = [p]
        for _ in range(int(rng.integers(2, 6))):
            step = rng.normal(size=3) * [0.6, 1.0, 1.0]
            p = p + 30.0 * step / np.linalg.norm(step)
            points.append(p)
        kind = rng.choice(["fluid", "air", "air-fluid", "faeces"], p=[0.35, 0.2, 0.25, 0.2])
        content = {"fluid": rng.uniform(0, 30), "air": AIR_HU + 20, "air-fluid": rng.uniform(0, 25), "faeces": rng.uniform(-150, 20)}[kind]
        level = float(np.mean([q[1] for q in points])) + rng.uniform(-5, 5) if kind == "air-fluid" else None
        _paint_tube_chain(rng, c, b, points, rng.uniform(9, 20), rng.uniform(35, 70), content, air_level=level)


def _paint_spleen_kidneys(rng: np.random.Generator, c: _Canvas, b: _Body, liver_hu: float) -> None:
    """Spleen (left, upper) and kidneys with cortex, medulla and sinus fat."""
    center = (rng.uniform(10, 40), 0.4 * b.cavity_y, 0.68 * b.cavity_x)
    radii = (rng.uniform(45, 60), rng.uniform(45, 60), rng.uniform(16, 24))
    a = np.deg2rad(rng.uniform(25, 45))  # long axis runs from back-medial to front-lateral
    about_z = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    box = c.grid.box(center, (max(radii),) * 3)
    if box is not None:
        mask = _ellipsoid_level(c.grid.axes(box), center, radii, about_z @ _random_rotation(rng, 10)) < 1
        c.paint(box, mask & b.cavity(c.grid, box), liver_hu + rng.uniform(0, 15))

    pancreas = [(rng.uniform(-30, -10), b.spine_y - 40, -45.0), (rng.uniform(-20, 0), b.spine_y - 50, 0.0),
                (rng.uniform(-15, 5), b.spine_y - 35, 50.0), (rng.uniform(-10, 10), b.spine_y - 10, 85.0)]
    pancreas_hu = liver_hu + rng.uniform(-15, 10)
    for p0, p1 in zip(pancreas[:-1], pancreas[1:]):
        hit = _capsule(c.grid, p0, p1, rng.uniform(8, 13))
        if hit is not None:
            c.paint(*hit, pancreas_hu)

    cortex_hu = rng.uniform(150, 200)
    for side, z in ((-1, rng.uniform(-75, -55)), (1, rng.uniform(-60, -40))):
        center = np.array([z, b.spine_y - rng.uniform(0, 10), side * rng.uniform(55, 70)])
        radii = np.array([rng.uniform(45, 55), rng.uniform(20, 26), rng.uniform(25, 30)])
        rot = _random_rotation(rng, 15)
        box = c.grid.box(center, (radii.max(),) * 3)
        if box is None:
            continue
        axes = c.grid.axes(box)
        c.paint(box, _ellipsoid_level(axes, center, radii, rot) < 1, cortex_hu, block=True)
        c.paint(box, _ellipsoid_level(axes, center, radii - 6, rot) < 1, cortex_hu - rng.uniform(10, 40))
        sinus = center + rot.T @ np.array([0, -5, -side * 0.45 * radii[2]])  # medial, in the kidney's frame
        c.paint(box, _ellipsoid_level(axes, sinus, radii * [0.45, 0.4, 0.35], rot) < 1, rng.uniform(-90, -40))
        c.paint(box, _ellipsoid_level(axes, sinus, radii * [0.2, 0.2, 0.15], rot) < 1, rng.uniform(0, 20))


def _paint_spine_ribs_aorta(rng: np.random.Generator, c: _Canvas, b: _Body, vessel_hu: float) -> None:
    """Vertebrae (cortex, cancellous bone, discs, canal), ribs in the wall, aorta and IVC."""
    cortex_hu, cancellous_hu = rng.uniform(500, 800), rng.uniform(170, 280)
    z_lo, z_hi = c.grid.start[0], c.grid.mm(np.array(c.grid.shape) - 1)[0]
    full_z = (0.5 * (z_lo + z_hi), 0.5 * (z_hi - z_lo) + 5)
    rx, ry = rng.uniform(19, 24), rng.uniform(15, 19)
    body_c = (full_z[0], b.spine_y, 0.0)
    box = c.grid.box(body_c, (full_z[1], ry + 45, rx + 30))
    axes = c.grid.axes(box)
    z, y, x = axes
    vb = (x / np.float32(rx)) ** 2 + ((y - np.float32(b.spine_y)) / np.float32(ry)) ** 2
    canal_y = b.spine_y + ry + 11
    arch = (x / 14.0) ** 2 + ((y - np.float32(canal_y)) / 13.0) ** 2
    spinous = (x / 5.0) ** 2 + ((y - np.float32(canal_y + 22)) / 14.0) ** 2
    period, phase = rng.uniform(30, 36), rng.uniform(0, 36)
    z_in_level = np.mod(z - np.float32(phase), np.float32(period))
    disc = z_in_level < 6.0
    transverse = (np.abs(x) < 32) & (np.abs(y - np.float32(canal_y - 4)) < 3.5) & (z_in_level > 14) & (z_in_level < 24)
    bone = (vb < 1) | (arch < 1) | (spinous < 1) | (transverse & ~disc)
    c.paint(box, bone, cortex_hu, block=True)
    c.paint(box, vb < 0.8, cancellous_hu)
    c.paint(box, (vb < 1) & disc, rng.uniform(70, 100))
    c.paint(box, arch < 0.35, rng.uniform(5, 25))

    _paint_aorta_ivc(rng, c, b, vessel_hu, ry, z_lo, z_hi)

    _paint_ribs(rng, c, b)


def _paint_aorta_ivc(rng: np.random.Generator, c: _Canvas, b: _Body, vessel_hu: float, spine_ry: float, z_lo: float, z_hi: float) -> None:
    """Aorta wrapped by the diaphragm crura, IVC to its right; the liver stays anterior and right of both."""
    muscle_hu = rng.uniform(40, 60)
    aorta = (rng.uniform(12, 22), b.spine_y - spine_ry - 14, rng.uniform(10, 13))
    ivc = (rng.uniform(-30, -22), b.spine_y - spine_ry - 16, rng.uniform(11, 14))
    crus = _capsule(c.grid, (z_lo - 5, aorta[1], aorta[0]), (z_hi + 5, aorta[1], aorta[0]), aorta[2] + rng.uniform(5, 9))
    if crus is not None:
        c.paint(*crus, muscle_hu, block=True)
    for (cx, cy, r), hu in ((aorta, max(vessel_hu - rng.uniform(0, 40), 140.0)), (ivc, vessel_hu * rng.uniform(0.6, 0.8))):
        hit = _capsule(c.grid, (z_lo - 5, cy, cx), (z_hi + 5, cy + rng.uniform(-5, 5), cx), r)
        if hit is not None:
            c.paint(*hit, hu, block=True)
    # retroperitoneum round the aorta and spine, from the IVC leftwards: never liver
    center_x, center_y = aorta[0] + 25, b.spine_y + 15
    radii = (center_x - ivc[0], center_y - (aorta[1] - aorta[2] - 6))
    full = tuple(slice(0, n) for n in c.grid.shape)
    _, y, x = c.grid.axes(full)
    c.blocked |= ((x - np.float32(center_x)) / np.float32(radii[0])) ** 2 + ((y - np.float32(center_y)) / np.float32(radii[1])) ** 2 < 1


def _paint_ribs(rng: np.random.Generator, c: _Canvas, b: _Body) -> None:
    """Ribs in the lower chest wall: arcs that run down steeply towards the front, so each slice cuts short pieces."""
    rib_hu = rng.uniform(350, 600)
    ring_x, ring_y = b.half_x - b.fat_mm - 0.5 * b.muscle_mm, b.half_y - b.fat_mm - 0.5 * b.muscle_mm
    for side in (-1, 1):
        for z0 in np.arange(rng.uniform(0, 30), 220, rng.uniform(24, 32)):
            angles = np.deg2rad(np.linspace(-70, 100, 9))  # from posterior-lateral round to the front
            drop = rng.uniform(70, 100)
            pts = [(z0 - drop * k / 8, -ring_y * np.sin(a), side * ring_x * np.cos(a)) for k, a in enumerate(angles)]
            for p0, p1 in zip(pts[:-1], pts[1:]):
                hit = _capsule(c.grid, p0, p1, rng.uniform(3.5, 5.0))
                if hit is not None:
                    c.paint(*hit, rib_hu, block=True)


def _liver_level(rng: np.random.Generator, c: _Canvas, b: _Body):
    """Liver shape: right and left lobe ellipsoids, lobulated by a smooth field. Returns (box, inside)."""
    right = np.array([rng.uniform(-5, 10), -0.05 * b.cavity_y, -0.45 * b.cavity_x])
    right_r = np.array([rng.uniform(60, 75), rng.uniform(0.75, 0.9) * b.cavity_y, rng.uniform(55, 72)])
    left = right + [rng.uniform(15, 35), -0.45 * b.cavity_y, 0.5 * b.cavity_x + 15]
    left_r = np.array([rng.uniform(35, 50), rng.uniform(28, 40), rng.uniform(55, 80)])
    margin = 0.3 * np.maximum(right_r, left_r) + 10  # room for the tilt and the lobulation
    lo = np.minimum(right - right_r, left - left_r) - margin
    hi = np.maximum(right + right_r, left + left_r) + margin
    box = c.grid.box((lo + hi) / 2, (hi - lo) / 2)
    axes = c.grid.axes(box)
    rot = _random_rotation(rng, 10)
    a = np.deg2rad(rng.uniform(15, 35))  # right lobe's front swings towards the midline: a wedge, not an egg
    about_z = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    level = np.minimum(_ellipsoid_level(axes, right, right_r, about_z @ rot), _ellipsoid_level(axes, left, left_r, rot))
    shape = level.shape
    field = smooth_field(rng, shape, [40.0 / d for d in c.grid.spacing])
    level *= 1 + np.float32(rng.uniform(0.08, 0.15)) * field
    inside = (level < 1) & b.cavity(c.grid, box, inset_mm=2.0) & ~c.blocked[box]
    return box, inside


def _paint_liver(rng: np.random.Generator, c: _Canvas, b: _Body, liver_hu: float, vessel_hu: float):
    """Gallbladder notch, parenchyma with texture, portal and hepatic vessel trees. Returns the liver box."""
    _paint_gallbladder(rng, c, b)
    box, inside = _liver_level(rng, c, b)
    inside = largest_component(inside)
    sp = c.grid.spacing
    texture = 5.0 * smooth_field(rng, inside.shape, [25.0 / d for d in sp]) + 2.5 * smooth_field(rng, inside.shape, [6.0 / d for d in sp])
    region = c.img[box]
    region[inside] = np.float32(liver_hu) + (np.float32(rng.uniform(0.6, 1.4)) * texture[inside])
    c.labels[box][inside] = 1
    _paint_vessels(rng, c, box, vessel_hu)
    return box


def _paint_gallbladder(rng: np.random.Generator, c: _Canvas, b: _Body) -> None:
    """Bile-filled pear under the liver (0-20 HU, thin wall); the liver is cut around it."""
    if rng.uniform() > 0.85:
        return
    center = np.array([rng.uniform(-55, -35), -0.55 * b.cavity_y + rng.uniform(0, 15), -0.15 * b.cavity_x + rng.uniform(-10, 10)])
    radii = np.array([rng.uniform(30, 45), rng.uniform(13, 20), rng.uniform(13, 20)])
    rot = _random_rotation(rng, 30)
    box = c.grid.box(center, (radii.max() + 3,) * 3)
    if box is None:
        return
    axes = c.grid.axes(box)
    c.paint(box, _ellipsoid_level(axes, center, radii + 2.5, rot) < 1, rng.uniform(35, 60), block=True)
    c.paint(box, _ellipsoid_level(axes, center, radii, rot) < 1, rng.uniform(0, 20))


def _segment_end(liver_at, p, d, length_mm, toward):
    """End of a segment from p (mm) that stays in the liver: bend towards `toward` until it does."""
    for bend in (0.0, 0.3, 0.6, 0.9):
        direction = (1 - bend) * d + bend * (toward - p) / max(np.linalg.norm(toward - p), 1e-6)
        direction /= max(np.linalg.norm(direction), 1e-6)
        for fraction in (1.0, 0.6):
            end = p + direction * length_mm * fraction
            if liver_at(end):
                return end, direction
    return None, d


def _vessel_segments(rng: np.random.Generator, liver_at, start, direction, radius, length, depth, toward, min_radius):
    """A bifurcating tree (mm): each segment splits in two thinner, shorter, diverging children."""
    segments = []
    stack = [(np.asarray(start, float), direction / np.linalg.norm(direction), radius, length, depth)]
    while stack:
        p, d, r, length_mm, k = stack.pop()
        if k == 0 or r < min_radius:
            continue
        d = _turn(d, _perpendicular(rng, d), rng.uniform(-12, 12))
        end, d = _segment_end(liver_at, p, d, length_mm, toward)
        if end is None:
            continue
        segments.append((p, end, r))
        normal = _perpendicular(rng, d)
        for sign, share in ((1, rng.uniform(0.7, 0.9)), (-1, rng.uniform(0.55, 0.8))):
            child = _turn(d, normal, sign * rng.uniform(20, 50))
            stack.append((end, child, r * share, length_mm * rng.uniform(0.65, 0.9), k - 1))
    return segments


def _paint_vessels(rng: np.random.Generator, c: _Canvas, box, vessel_hu: float) -> None:
    """Portal tree from the hilum and three hepatic veins towards the IVC, inside the liver only."""
    liver = c.labels == 1
    ijk = np.argwhere(liver[box][:: 4, :: 4, :: 4]) * 4 + [s.start for s in box]
    lo, hi = c.grid.mm(ijk.min(0)), c.grid.mm(ijk.max(0))
    size = hi - lo

    def liver_at(p):
        i = np.round(c.grid.index(p)).astype(int)
        return bool(np.all(i >= 0) and np.all(i < c.grid.shape) and liver[tuple(i)])

    def root_inside(p, toward):
        for t in np.linspace(0, 1, 21):
            q = (1 - t) * np.asarray(p) + t * np.asarray(toward)
            if liver_at(q):
                return q
        return np.asarray(toward)

    center = c.grid.mm(np.mean(ijk, axis=0))
    hilum = root_inside(lo + size * [0.35, 0.5, 0.7], center)
    ivc_top = root_inside(lo + size * [0.85, 0.75, 0.55], center)
    trees = [
        (hilum, [0.2, 0.1, -1.0], rng.uniform(5, 7.5), 35.0, 7, vessel_hu),
        (hilum, [0.3, -0.6, 1.0], rng.uniform(4, 6), 30.0, 6, vessel_hu),
    ]
    hepatic_hu = vessel_hu - rng.uniform(10, 40)
    for d in ([-0.8, 0.1, -1.0], [-0.8, -1.0, -0.2], [-0.4, -0.6, 1.0]):
        trees.append((ivc_top, d, rng.uniform(4, 6), 32.0, 6, hepatic_hu))
    min_radius = max(0.7, 0.5 * c.grid.spacing[1])  # thinner vessels vanish in the pixel
    for root, d, r, length_mm, depth, hu in trees:
        for p0, p1, radius in _vessel_segments(rng, liver_at, root, np.asarray(d, float), r, length_mm, depth, center, min_radius):
            hit = _capsule(c.grid, p0, p1, radius)
            if hit is not None:
                vbox, mask = hit
                c.paint(vbox, mask & liver[vbox], hu)


def _depth_map(c: _Canvas, box) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Distance (mm) from each liver voxel to the liver surface, on a ~4 mm subsampled grid."""
    step = tuple(max(1, int(round(4.0 / d))) for d in c.grid.spacing)
    liver = c.labels[box][:: step[0], :: step[1], :: step[2]] == 1
    padded = np.pad(liver, 1)
    depth = ndimage.distance_transform_edt(padded, sampling=[d * s for d, s in zip(c.grid.spacing, step)])
    return depth[1:-1, 1:-1, 1:-1], step


def _pick_site(rng: np.random.Generator, c: _Canvas, box, depth, step, min_depth):
    """A random liver point (mm) at least `min_depth` mm inside the surface, or None."""
    candidates = np.argwhere(depth >= min_depth)
    if len(candidates) == 0:
        return None
    k = candidates[rng.integers(len(candidates))]
    index = k * step + [s.start for s in box] + rng.uniform(-0.5, 0.5, 3) * step
    return c.grid.mm(index)


def _tumor_shape(rng: np.random.Generator, c: _Canvas, center, radius):
    """Lobulated tumor: a deformed ellipsoid plus 0-2 satellite lobes. Returns (box, rho, radii)."""
    radii = rng.uniform(0.75, 1.25, 3)
    radii *= radius / np.cbrt(np.prod(radii))  # same volume as the sphere of `radius`
    rot = _random_rotation(rng)
    box = c.grid.box(center, (1.6 * radii.max() + 4,) * 3)
    axes = c.grid.axes(box)
    level = _ellipsoid_level(axes, center, radii, rot)
    for _ in range(int(rng.integers(0, 3))):
        direction = rng.normal(size=3)
        lobe_c = center + direction / np.linalg.norm(direction) * radii.mean() * rng.uniform(0.5, 0.85)
        level = np.minimum(level, _ellipsoid_level(axes, lobe_c, radii * rng.uniform(0.35, 0.6), rot))
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


def _place_tumors(rng: np.random.Generator, c: _Canvas, s: PhantomSettings, liver_box, depth_map, liver_hu: float) -> list[dict]:
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


def _try_tumor(rng, c: _Canvas, s: PhantomSettings, liver_box, depth, step, radius, kind, liver_hu, spheres):
    """Draw, check and paint one tumor; None when the site clashes with a tumor already there."""
    center = _pick_site(rng, c, liver_box, depth, step, max(0.6 * radius, 3.0))
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


def _place_cysts(rng: np.random.Generator, c: _Canvas, s: PhantomSettings, liver_box, depth_map) -> None:
    """Simple cysts: water density (0-20 HU), sharp, inside the liver and labelled liver."""
    depth, step = depth_map
    for _ in range(int(rng.integers(s.n_cysts[0], s.n_cysts[1] + 1))):
        radius = rng.uniform(*s.cyst_diameter_mm) / 2
        center = _pick_site(rng, c, liver_box, depth, step, 0.8 * radius)
        if center is None:
            continue
        radii = radius * rng.uniform(0.85, 1.15, 3)
        box = c.grid.box(center, (radii.max() + 4,) * 3)
        mask = (_ellipsoid_level(c.grid.axes(box), center, radii, _random_rotation(rng)) < 1) & (c.labels[box] == 1)
        near_tumor = ndimage.binary_dilation(c.labels[box] == 2, iterations=3)
        if mask.any() and not np.any(mask & near_tumor):
            c.paint(box, mask, rng.uniform(0, 20))


def _gaussian_kernel_norm(sigma: float) -> float:
    """sqrt(sum w^2) of scipy's discrete Gaussian: how much white noise std a 1D pass keeps."""
    if sigma <= 0:
        return 1.0
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    return float(np.sqrt(np.sum(w**2)))


def _image_formation(rng: np.random.Generator, c: _Canvas, s: PhantomSettings) -> np.ndarray:
    """Scanner blur (Gaussian PSF, mm) applied to anatomy plus white noise: correlated noise, int16 HU."""
    psf = rng.uniform(*s.psf_mm)
    sigma = [0.4, psf / c.grid.spacing[1], psf / c.grid.spacing[2]]
    noise_hu = rng.uniform(*s.noise_hu)
    keep = float(np.prod([_gaussian_kernel_norm(v) for v in sigma]))
    img = c.img
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise_hu / keep)
    ndimage.gaussian_filter(img, sigma, output=img)
    np.clip(img, *HU_CLIP, out=img)
    return np.rint(img).astype(np.int16)


# ---- writing cases -----------------------------------------------------------------------------

def case_seeds(seed: int, n_cases: int) -> list[int]:
    """Independent per-case seeds: runs with different `seed` never share a case."""
    return [int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(n_cases)]


def write_phantom_cases(out_dir: str | os.PathLike, n_cases: int, seed: int, settings: PhantomSettings | None = None) -> list[Path]:
    """Write `n_cases` phantom case folders (image.nrrd, label.nrrd, case.json) under `out_dir`.

    Folders are named phantom-000, phantom-001, ...; an existing folder is never replaced.
    """
    from ..storage.library import case_summary, now_iso, write_case_folder

    settings = settings or PhantomSettings()
    out_dir = Path(out_dir)
    folders = []
    for i, case_seed in enumerate(case_seeds(seed, n_cases)):
        case = make_phantom(case_seed, settings)
        case_id = f"phantom-{i:03d}"
        meta = {
            "id": case_id,
            "source": f"phantom (seed {seed}, case {i}, case seed {case_seed})",
            "created": now_iso(),
            **case_summary(case.labels),
            "notes": "synthetic abdominal CT with known truth",
            "spacing_mm": list(case.image.spacing),
            "shape_zyx": list(case.image.shape),
            "seed": case_seed,
            "tumors": case.tumors,
            "settings": asdict(settings),
        }
        write_case_folder(out_dir / case_id, case.image, case.labels, meta)
        folders.append(out_dir / case_id)
    return folders
