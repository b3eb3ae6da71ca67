"""The phantom's anatomy, painted onto a Canvas: body wall, lungs, bowel and stomach, spleen,
pancreas, kidneys, spine, ribs, aorta and IVC, and the liver with its texture, gallbladder notch
and portal and hepatic vessel trees.

Each organ draws its pose, size and HU from the case's Generator in a fixed order, so a seed gives
the same anatomy bit for bit. mm in the body frame, tuples in array order (z, y, x).
"""

from __future__ import annotations

import numpy as np

from ..core.lesions import largest_component
from .phantom_canvas import Body, Canvas, Grid, ellipsoid_level
from .phantom_settings import AIR_HU, PhantomSettings
from .placement import random_rotation
from .smooth_field import smooth_field


def paint_anatomy(rng: np.random.Generator, c: Canvas, b: Body, liver_hu: float, vessel_hu: float):
    """Every organ, in the order whose draws make the case; returns the liver's box (slices)."""
    _paint_body(rng, c, b)
    _paint_lungs(rng, c, b)
    _paint_bowel_and_stomach(rng, c, b)
    _paint_spleen_kidneys(rng, c, b, liver_hu)
    _paint_spine_ribs_aorta(rng, c, b, vessel_hu)
    return _paint_liver(rng, c, b, liver_hu, vessel_hu)


def draw_grid_and_body(rng: np.random.Generator, s: PhantomSettings) -> tuple[Grid, Body]:
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
    body = Body(half_x, half_y, fat, muscle, cavity_x, cavity_y, spine_y, taper=rng.uniform(0.0, 0.05))

    n_slices = int(min(round(rng.uniform(*s.z_extent_mm) / dz), s.max_slices))
    n_slices = max(n_slices, 8)
    z_center = rng.uniform(-20.0, 20.0)
    y_center = rng.uniform(-10.0, 25.0)  # the table pushes the body a little anterior of centre
    start = (z_center - dz * (n_slices - 1) / 2, -fov / 2 + y_center, -fov / 2 + rng.uniform(-10, 10))
    return Grid((n_slices, s.matrix, s.matrix), (dz, pixel, pixel), start), body


def _capsule(grid: Grid, p0, p1, radius):
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


def _paint_body(rng: np.random.Generator, c: Canvas, b: Body) -> None:
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
                mask = ellipsoid_level(c.grid.axes(box), center, radii) < 1
                c.paint(box, mask & b.outline(c.grid, box, b.fat_mm), muscle_hu)


def _paint_lungs(rng: np.random.Generator, c: Canvas, b: Body) -> None:
    """Lung bases above and behind the liver dome (the liver is painted over them later)."""
    lung_hu = rng.uniform(-880, -800)
    for side in (-1, 1):
        center = (rng.uniform(110, 125), 0.1 * b.cavity_y, side * 0.5 * b.cavity_x)
        radii = (70.0, 0.95 * b.cavity_y, 0.5 * b.cavity_x)
        box = c.grid.box(center, radii)
        if box is not None:
            mask = ellipsoid_level(c.grid.axes(box), center, radii) < 1
            c.paint(box, mask & b.cavity(c.grid, box), lung_hu)


def _paint_tube_chain(rng, c: Canvas, b: Body, points, radius, wall_hu, content_hu, air_level=None):
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


def _paint_bowel_and_stomach(rng: np.random.Generator, c: Canvas, b: Body) -> None:
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


def _paint_spleen_kidneys(rng: np.random.Generator, c: Canvas, b: Body, liver_hu: float) -> None:
    """Spleen (left, upper) and kidneys with cortex, medulla and sinus fat."""
    center = (rng.uniform(10, 40), 0.4 * b.cavity_y, 0.68 * b.cavity_x)
    radii = (rng.uniform(45, 60), rng.uniform(45, 60), rng.uniform(16, 24))
    a = np.deg2rad(rng.uniform(25, 45))  # long axis runs from back-medial to front-lateral
    about_z = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    box = c.grid.box(center, (max(radii),) * 3)
    if box is not None:
        mask = ellipsoid_level(c.grid.axes(box), center, radii, about_z @ random_rotation(rng, 10)) < 1
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
        rot = random_rotation(rng, 15)
        box = c.grid.box(center, (radii.max(),) * 3)
        if box is None:
            continue
        axes = c.grid.axes(box)
        c.paint(box, ellipsoid_level(axes, center, radii, rot) < 1, cortex_hu, block=True)
        c.paint(box, ellipsoid_level(axes, center, radii - 6, rot) < 1, cortex_hu - rng.uniform(10, 40))
        sinus = center + rot.T @ np.array([0, -5, -side * 0.45 * radii[2]])  # medial, in the kidney's frame
        c.paint(box, ellipsoid_level(axes, sinus, radii * [0.45, 0.4, 0.35], rot) < 1, rng.uniform(-90, -40))
        c.paint(box, ellipsoid_level(axes, sinus, radii * [0.2, 0.2, 0.15], rot) < 1, rng.uniform(0, 20))


def _paint_spine_ribs_aorta(rng: np.random.Generator, c: Canvas, b: Body, vessel_hu: float) -> None:
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


def _paint_aorta_ivc(rng: np.random.Generator, c: Canvas, b: Body, vessel_hu: float, spine_ry: float, z_lo: float, z_hi: float) -> None:
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


def _paint_ribs(rng: np.random.Generator, c: Canvas, b: Body) -> None:
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


def _liver_level(rng: np.random.Generator, c: Canvas, b: Body):
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
    rot = random_rotation(rng, 10)
    a = np.deg2rad(rng.uniform(15, 35))  # right lobe's front swings towards the midline: a wedge, not an egg
    about_z = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    level = np.minimum(ellipsoid_level(axes, right, right_r, about_z @ rot), ellipsoid_level(axes, left, left_r, rot))
    shape = level.shape
    field = smooth_field(rng, shape, [40.0 / d for d in c.grid.spacing])
    level *= 1 + np.float32(rng.uniform(0.08, 0.15)) * field
    inside = (level < 1) & b.cavity(c.grid, box, inset_mm=2.0) & ~c.blocked[box]
    return box, inside


def _paint_liver(rng: np.random.Generator, c: Canvas, b: Body, liver_hu: float, vessel_hu: float):
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


def _paint_gallbladder(rng: np.random.Generator, c: Canvas, b: Body) -> None:
    """Bile-filled pear under the liver (0-20 HU, thin wall); the liver is cut around it."""
    if rng.uniform() > 0.85:
        return
    center = np.array([rng.uniform(-55, -35), -0.55 * b.cavity_y + rng.uniform(0, 15), -0.15 * b.cavity_x + rng.uniform(-10, 10)])
    radii = np.array([rng.uniform(30, 45), rng.uniform(13, 20), rng.uniform(13, 20)])
    rot = random_rotation(rng, 30)
    box = c.grid.box(center, (radii.max() + 3,) * 3)
    if box is None:
        return
    axes = c.grid.axes(box)
    c.paint(box, ellipsoid_level(axes, center, radii + 2.5, rot) < 1, rng.uniform(35, 60), block=True)
    c.paint(box, ellipsoid_level(axes, center, radii, rot) < 1, rng.uniform(0, 20))


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


def _paint_vessels(rng: np.random.Generator, c: Canvas, box, vessel_hu: float) -> None:
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
