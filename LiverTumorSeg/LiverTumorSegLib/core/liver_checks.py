"""Is a found liver plausible? Volume, intensity, position and shape of a liver mask in a
contrast CT, checked before anything is segmented inside it; a mass joined to the liver by a
narrow neck is cut off.

A liver found automatically can be wrong in ways that would silently ruin the tumor result: a
CT without a liver (a head, a chest) gives a small blob anywhere; a neighbouring organ or mass
can be taken in. Each check names the problem; `require_plausible_liver` turns a failed one
into one InputError line whose fix is a liver mask (--liver). Arrays are (z, y, x); mm, mL, HU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..volume import Volume

WHOLE_LIVER_ML = (600.0, 5000.0)  # a liver the scan covers from dome to tip (adults; large with tumors)
CUT_LIVER_MIN_ML = 100.0  # a liver the scan cuts (it touches the first or last slice)
MEAN_HU = (20.0, 250.0)  # liver parenchyma in contrast CT is ~60-150 HU; tumors pull the mean down
MIN_BOX_FILL = 0.12  # liver volume / its bounding box: a liver fills 0.25-0.5; a few scattered sheets do not
NECK_MM = 15.0  # a part joined to the rest only through a neck thinner than 2 x this is a separate mass
GLUED_MIN_FRACTION = 0.08  # ... and counts when it holds this much of the mask
GLUED_HU_DIFFERENCE = 25.0  # ... and its median HU differs this much from the liver's (a left lobe does not)
BODY_HU = -300.0
# Around a liver (a ring of RING_MM outside it) lie fat, bowel and a few ribs: on the real CTs
# 22-38 % of the ring is fat (-300..-30 HU) and 0.5-3.4 % bone (> 300 HU); a skull encloses the brain.
RING_MM = 8.0
MAX_RING_BONE = 0.15
MIN_RING_FAT = 0.03
MIN_EXTENT_MM = (150.0, 100.0, 10.0)  # left-right, front-back, head-feet: less cannot hold a liver's section


@dataclass
class LiverCheck:
    """What the checks found. `mask` is the (possibly cleaned) uint8 liver on the CT's grid;
    `problems` are reasons to refuse it, `notes` what was cleaned."""

    mask: Volume
    volume_ml: float
    mean_hu: float
    cut_by_scan: bool
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def plausible(self) -> bool:
        return not self.problems


def head_feet_axis(volume: Volume) -> int:
    """The array axis (0 = z, 1 = y, 2 = x) that runs most nearly head-feet."""
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    index_axis = int(np.argmax(np.abs(direction[2])))  # 0 = x, 1 = y, 2 = z index
    return 2 - index_axis


def split_glued_mass(mask: np.ndarray, spacing_zyx, hu: np.ndarray) -> tuple[np.ndarray, float]:
    """The mask less the parts joined to the largest part only through a neck thinner than
    2 x NECK_MM whose median HU differs from the largest part's by GLUED_HU_DIFFERENCE, when they
    hold at least GLUED_MIN_FRACTION of the mask; and the fraction removed (0 when nothing was).
    Parts are the cores left after an opening by a NECK_MM ball, each voxel going to its nearest
    core. (A left lobe behind a thin bridge has the liver's intensity and stays.)"""
    step = np.maximum(1, np.round(3.0 / np.asarray(spacing_zyx, dtype=float)).astype(int))  # ~3 mm cells
    coarse = mask[:: step[0], :: step[1], :: step[2]]
    sampling = np.asarray(spacing_zyx, dtype=float) * step
    if not coarse.any():
        return mask, 0.0
    depth = ndimage.distance_transform_edt(np.pad(coarse, 1), sampling=sampling)[1:-1, 1:-1, 1:-1]
    cores, count = ndimage.label(depth > NECK_MM)
    if count < 2:
        return mask, 0.0
    # Every mask voxel goes to its nearest core (on the coarse grid).
    _, nearest = ndimage.distance_transform_edt(cores == 0, sampling=sampling, return_indices=True)
    nearest_core = cores[tuple(nearest)]  # every cell, inside the mask or not
    owner = nearest_core * coarse
    sizes = np.bincount(owner.ravel(), minlength=count + 1)
    sizes[0] = 0
    keep = int(np.argmax(sizes))
    values = np.asarray(hu)[:: step[0], :: step[1], :: step[2]]
    level = float(np.median(values[owner == keep]))
    foreign = [k for k in range(1, count + 1)
               if k != keep and sizes[k] and abs(float(np.median(values[owner == k])) - level) > GLUED_HU_DIFFERENCE]
    fraction = float(sizes[foreign].sum() / max(sizes.sum(), 1))
    if fraction < GLUED_MIN_FRACTION:
        return mask, 0.0
    # Back on the full grid each voxel follows its cell's nearest core (a voxel whose cell sample
    # lies just outside the mask still belongs to the part it touches).
    drop = np.isin(nearest_core, foreign)
    drop = np.repeat(np.repeat(np.repeat(drop, step[0], 0), step[1], 1), step[2], 2)
    return mask & ~drop[: mask.shape[0], : mask.shape[1], : mask.shape[2]], fraction


def check_liver(ct: Volume, liver: Volume) -> LiverCheck:
    """The checks on a liver mask (uint8, the CT's grid) of a CT in HU."""
    mask = np.asarray(liver.array) > 0
    notes, problems = [], []
    if mask.any():
        cleaned, fraction = split_glued_mass(mask, ct.spacing_zyx, ct.array)
        if fraction:
            removed = (mask.sum() - cleaned.sum()) * ct.voxel_volume_mm3 / 1000.0
            notes.append(f"cut off {removed:.0f} mL joined to the liver by a narrow neck, of another intensity "
                         "(another organ or a mass)")
            mask = cleaned
    volume_ml = float(mask.sum()) * ct.voxel_volume_mm3 / 1000.0
    if not mask.any():
        return LiverCheck(liver.with_array(mask.astype(np.uint8)), 0.0, float("nan"), False,
                          ["no liver was found (is this an abdominal CT?)"], notes)
    axis = head_feet_axis(ct)
    present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
    cut = bool(present[0] == 0 or present[-1] == mask.shape[axis] - 1)
    mean_hu = float(np.asarray(ct.array)[mask].mean())

    low = CUT_LIVER_MIN_ML if cut else WHOLE_LIVER_ML[0]
    if volume_ml < low:
        problems.append(f"the liver found holds only {volume_ml:.0f} mL (at least {low:.0f} expected"
                        + (" where the scan cuts it" if cut else "") + ")")
    elif volume_ml > WHOLE_LIVER_ML[1]:
        problems.append(f"the liver found holds {volume_ml:.0f} mL, more than any liver ({WHOLE_LIVER_ML[1]:.0f})")
    if not MEAN_HU[0] <= mean_hu <= MEAN_HU[1]:
        problems.append(f"its mean intensity is {mean_hu:.0f} HU, not liver in a contrast CT "
                        f"({MEAN_HU[0]:.0f}-{MEAN_HU[1]:.0f} HU)")
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    fill = mask.sum() / np.prod([s.stop - s.start for s in box])
    if fill < MIN_BOX_FILL:
        problems.append(f"it is scattered (it fills {fill:.0%} of its bounding box; a liver fills 25-50%)")
    bone, fat = surroundings(ct, mask)
    if bone > MAX_RING_BONE:
        problems.append(f"bone encloses it ({bone:.0%} of its surroundings; a skull?)")
    if fat < MIN_RING_FAT:
        problems.append(f"no fat surrounds it ({fat:.1%} of its surroundings), unlike a liver in the abdomen")
    side = liver_side_mm(ct, mask)
    if side is not None and side < 0:
        problems.append(f"it lies {-side:.0f} mm left of the body's middle (a liver lies to the right)")
    return LiverCheck(liver.with_array(mask.astype(np.uint8)), volume_ml, mean_hu, cut, problems, notes)


def surroundings(ct: Volume, mask: np.ndarray) -> tuple[float, float]:
    """Fractions of bone (> 300 HU) and fat (-300..-30 HU) in the ring of RING_MM outside the mask
    (on ~3 mm cells)."""
    step = np.maximum(1, np.round(3.0 / np.asarray(ct.spacing_zyx, dtype=float)).astype(int))
    sub = tuple(slice(None, None, s) for s in step)
    inside = mask[sub]
    distance = ndimage.distance_transform_edt(~inside, sampling=np.asarray(ct.spacing_zyx, dtype=float) * step)
    values = np.asarray(ct.array)[sub][(distance > 0) & (distance <= RING_MM)]
    if not values.size:
        return 0.0, 0.0
    return float(np.mean(values > 300)), float(np.mean((values > -300) & (values < -30)))


def liver_side_mm(ct: Volume, mask: np.ndarray) -> float | None:
    """How far (mm) the liver's centre lies to the patient's right of the body's centre (LPS x:
    right is smaller x); None when no body is found. Computed on ~6 mm cells."""
    step = np.maximum(1, np.round(6.0 / np.asarray(ct.spacing_zyx, dtype=float)).astype(int))
    sub = tuple(slice(None, None, s) for s in step)
    body = np.asarray(ct.array)[sub] > BODY_HU
    liver = mask[sub]
    if not body.any() or not liver.any():
        return None
    centre = lambda m: ct.index_to_lps((np.argwhere(m) * step).mean(axis=0)[None])[0]  # noqa: E731
    return float(centre(body)[0] - centre(liver)[0])


def require_plausible_liver(check: LiverCheck, source: str = "found automatically") -> None:
    """InputError naming the first problem and the fix, when there is one."""
    if check.problems:
        raise InputError(f"no plausible liver {source}: {'; '.join(check.problems)}; give a liver mask with --liver "
                         "(e.g. TotalSegmentator's liver segment)")


def input_problem(ct: Volume) -> str | None:
    """Why the liver network cannot be run on this image at all, or None: an image too small to
    hold a liver, or values that are not CT Hounsfield units (the network reads HU / 1000)."""
    direction = np.abs(np.asarray(ct.direction, dtype=float).reshape(3, 3))
    extent_xyz = np.asarray(ct.shape[::-1], dtype=float) * np.asarray(ct.spacing)  # along index axes x, y, z
    world = [float(extent_xyz[int(np.argmax(direction[w]))]) for w in range(3)]  # along L-R, A-P, S-I
    if any(e < m for e, m in zip(world, MIN_EXTENT_MM)):
        return (f"the image covers {world[0]:.0f} x {world[1]:.0f} x {world[2]:.0f} mm (left-right, front-back, "
                f"head-feet), too little of the body to hold a liver (at least "
                f"{' x '.join(f'{m:.0f}' for m in MIN_EXTENT_MM)} mm)")
    step = max(1, int(round((np.prod(ct.shape) / 2e6) ** (1 / 3))))
    if float(np.asarray(ct.array)[::step, ::step, ::step].min()) >= 0:
        return "the image has no negative values, unlike a CT in Hounsfield units (fat and air are below 0)"
    return None


def find_plausible_liver(ct: Volume, network, progress=None) -> LiverCheck:
    """The liver found by the network in a CT (HU), checked and cleaned; InputError (with the fix:
    --liver) when the image cannot hold one or what was found is not a plausible liver."""
    from .liver import find_liver

    problem = input_problem(ct)
    if problem:
        raise InputError(f"no liver can be found automatically: {problem}; give a liver mask with --liver")
    found = find_liver(ct, network, progress=progress)
    check = check_liver(ct, found.mask)
    require_plausible_liver(check)
    return check
