"""Synthetic tumors in real livers: training data with known truth from tumor-free CT.

`synthesize_tumors` follows Hu et al., "Label-Free Liver Tumor Segmentation" (CVPR 2023):
ellipsoids, elastically deformed, placed in the eroded liver; a texture made from twice-smoothed
noise; intensity = image - texture * blurred mask * delta (delta 65-145 HU). Their texture averages
about 0.5 inside the tumor, so the tumors end up roughly 0.5 * delta (30-75 HU) darker than the
liver, like real hypodense metastases. Radii are in mm (Hu et al.: 4-32 voxels at ~1 mm), so
anisotropic CT gets round tumors.

`paste_tumors` is the copy-paste half of our GenSeg-lite loop: the radiologist's own corrected
tumors are copied, with a margin of surrounding liver, to other liver sites of the same or another
case, their HU re-based from the source liver's median to the target liver's.

Arrays are (z, y, x); spacing handled through `Volume.spacing_zyx` (mm).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.lesions import label_lesions, largest_component
from ..errors import InputError
from ..volume import Volume
from .placement import box_around, count_range, depth_map, liver_and_tumors, mm_axes, pick_site, random_rotation, touches
from .smooth_field import smooth_field


# ---- Hu et al. synthesis -----------------------------------------------------------------------

def _deformed_ellipsoid(rng: np.random.Generator, box, spacing_zyx, center, radii_mm) -> np.ndarray:
    """Ellipsoid (radii mm) warped by a smooth random displacement (Hu et al.'s elastic deformation:
    a 3-point control grid, displacement std 12-30% of the radius). Boolean mask over the box."""
    axes = mm_axes(box, spacing_zyx, center)
    shape = tuple(sl.stop - sl.start for sl in box)
    sigma = float(np.mean(radii_mm)) * rng.uniform(0.12, 0.3)
    cell = [max(n / 2.0, 1.0) for n in shape]
    moved = [a + np.float32(sigma) * smooth_field(rng, shape, cell) for a in axes]
    rot = random_rotation(rng)
    level = sum(
        (sum(np.float32(rot[j, i]) * moved[i] for i in range(3)) / np.float32(radii_mm[j])) ** 2 for j in range(3)
    )
    return level < 1


def hu_texture(rng: np.random.Generator, shape, spacing_zyx) -> np.ndarray:
    """Hu et al.'s tumor texture in [0, 1], mean ~0.5: uniform noise smoothed (3-15 mm) into a
    probability map, sampled once (Bernoulli), smoothed again (3-8 mm), scaled and clipped."""
    sigma_a = rng.uniform(3.0, 15.0)
    a = ndimage.gaussian_filter(rng.uniform(0, 1, shape).astype(np.float32), [sigma_a / d for d in spacing_zyx], truncate=3.0)
    a = rng.uniform(0.19, 0.21) * (a - a.min()) / max(float(a.max() - a.min()), 1e-6) + rng.uniform(0.04, 0.06)
    b = (a > rng.uniform(0, 1, shape)).astype(np.float32)
    sigma_b = rng.uniform(3.0, 5.0) if rng.uniform() < 0.7 else rng.uniform(5.0, 8.0)
    b = ndimage.gaussian_filter(b, [sigma_b / d for d in spacing_zyx], truncate=3.0)
    textured = b > 0.12 if np.any(b > 0.12) else b > 0  # Hu et al.'s "mean_0.2(b)" region
    beta = rng.uniform(0.5, 0.55) / max(float(b[textured].mean()) if textured.any() else 1.0, 1e-6)
    return np.clip(beta * b, 0.0, 1.0)


def synthesize_tumors(
    image: Volume,
    liver: np.ndarray,
    seed: int,
    n_tumors: int | tuple[int, int] = (1, 4),
    radius_mm: tuple[float, float] = (3.0, 25.0),
    delta_hu: tuple[float, float] = (65.0, 145.0),
    hyper_fraction: float = 0.0,
    edge_sigma_mm: tuple[float, float] = (1.0, 2.0),
) -> tuple[Volume, Volume, list[dict]]:
    """Add synthetic tumors to a liver (Hu et al. 2023). Returns (image, labels, tumors).

    image: CT in HU; liver: boolean mask on its grid, or a 0/1/2 label array whose tumors are then
    kept, labelled and avoided. Radii are drawn log-uniformly in `radius_mm`
    (each axis x0.75-1.25); `hyper_fraction` of the tumors are brighter instead of darker. Only
    liver voxels within a few edge sigmas of a tumor change. labels: 0 / 1 liver / 2 tumor; each
    new tumor in the list is one 26-connected component. Tumor dicts: center (voxel z, y, x),
    center_lps (mm), radius_mm, radii_mm, kind ("hypo" | "hyper"), delta_hu, contrast_hu (mean
    HU change over the tumor, negative when darker), voxels, volume_ml.
    """
    whole, tumors = liver_and_tumors(liver, image.shape, "liver mask", "CT's")
    labels = whole.astype(np.uint8)
    labels[tumors] = 2
    liver = whole & ~tumors  # healthy liver: where new tumors may go and intensities may change
    if not liver.any():
        raise InputError("the liver mask is empty; tumors can only be synthesised inside a liver")
    rng = np.random.default_rng(seed)
    spacing = np.asarray(image.spacing_zyx)
    out = image.array.astype(np.float32, copy=True)
    depth, step, liver_box = depth_map(liver, spacing)
    tumors = []
    lo, hi = count_range(n_tumors)
    for _ in range(int(rng.integers(lo, hi + 1))):
        for _attempt in range(20):
            tumor = _synthesize_one(rng, out, labels, liver, spacing, depth, step, liver_box, radius_mm, delta_hu, hyper_fraction, edge_sigma_mm)
            if tumor is not None:
                tumor["center_lps"] = [round(float(v), 2) for v in image.index_to_lps(np.asarray([tumor["center"]]))[0]]
                tumors.append(tumor)
                break
    return image.with_array(out), image.with_array(labels), tumors


def _synthesize_one(rng, out, labels, liver, spacing, depth, step, liver_box, radius_mm, delta_hu, hyper_fraction, edge_sigma_mm):
    """One tumor written into `out` and `labels` in place; None when the site clashes."""
    radius = float(np.exp(rng.uniform(np.log(radius_mm[0]), np.log(radius_mm[1]))))
    radii = radius * rng.uniform(0.75, 1.25, 3)
    center = pick_site(rng, depth, step, liver_box, max(0.5 * radius, 3.0))
    if center is None:
        return None
    edge = rng.uniform(*edge_sigma_mm)
    half = np.ceil((1.6 * radii.max() + 3 * edge) / spacing).astype(int) + 1
    box = box_around(center, half, out.shape)
    mask = largest_component(_deformed_ellipsoid(rng, box, spacing, center, radii) & liver[box])
    if mask.sum() < 4 or touches(mask, labels[box] == 2):
        return None
    blur = ndimage.gaussian_filter(mask.astype(np.float32), [edge / d for d in spacing])
    texture = hu_texture(rng, mask.shape, spacing)
    delta = rng.uniform(*delta_hu)
    kind = "hyper" if rng.uniform() < hyper_fraction else "hypo"
    sign = 1.0 if kind == "hyper" else -1.0
    change = np.float32(sign * delta) * texture * blur * liver[box]
    out[box] += change
    labels[box][mask] = 2
    voxels = int(mask.sum())
    volume_mm3 = voxels * float(np.prod(spacing))
    return {
        "center": [round(float(v), 2) for v in np.argwhere(mask).mean(0) + [s.start for s in box]],
        "radius_mm": round(radius, 2),
        "radii_mm": [round(float(r), 2) for r in radii],
        "kind": kind,
        "delta_hu": round(float(delta), 1),
        "contrast_hu": round(float(change[mask].mean()), 1),
        "voxels": voxels,
        "volume_ml": round(volume_mm3 / 1000.0, 3),
    }


def synthetic_copy(
    image: Volume,
    labels: Volume,
    seed: int,
    n_paste: tuple[int, int] = (1, 2),
    n_synthesize: tuple[int, int] = (1, 2),
    hyper_fraction: float = 0.25,
    radius_mm: tuple[float, float] = (3.0, 20.0),
    delta_hu: tuple[float, float] = (65.0, 145.0),
    edge_sigma_mm: tuple[float, float] = (1.0, 2.0),
) -> tuple[Volume, Volume]:
    """A training variant of a labelled case (GenSeg-lite): its own tumors copied to other liver
    sites, then Hu-recipe tumors added, some hyperdense. A handful of real tumors gets more
    sites, sizes and both polarities, while every voxel keeps a true label. Returns (CT, labels)."""
    if (labels.array == 2).any():
        image, labels, _ = paste_tumors(image, labels, image, labels.array, seed, n_paste)
    image, labels, _ = synthesize_tumors(image, labels.array, seed + 1, n_tumors=n_synthesize, radius_mm=radius_mm,
                                         delta_hu=delta_hu, hyper_fraction=hyper_fraction, edge_sigma_mm=edge_sigma_mm)
    return image, labels


# ---- copy-paste (GenSeg-lite) ----------------------------------------------------------------

def _source_patches(image: Volume, labels: Volume, margin_mm: float) -> list[dict]:
    """Each labelled tumor with a margin: HU relative to the source liver median, and a blend
    weight that is 1 on the tumor and falls linearly to 0 at `margin_mm` (only over liver)."""
    tumor = labels.array == 2
    components, n = label_lesions(tumor)
    if n == 0:
        raise InputError("the source labels hold no tumor (label 2) to paste; label at least one tumor first")
    liver = labels.array == 1
    median = float(np.median(image.array[liver])) if liver.any() else float(np.median(image.array[tumor]))
    spacing = np.asarray(image.spacing_zyx)
    pad = np.ceil(margin_mm / spacing).astype(int) + 1
    patches = []
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        box = tuple(slice(max(s.start - p, 0), min(s.stop + p, n_)) for s, p, n_ in zip(box, pad, image.shape))
        mask = components[box] == index
        distance = ndimage.distance_transform_edt(~mask, sampling=spacing)
        weight = np.clip(1.0 - distance / max(margin_mm, 1e-3), 0.0, 1.0) * (labels.array[box] > 0)
        weight[mask] = 1.0
        hu = image.array[box].astype(np.float32) - np.float32(median)
        patches.append({"index": index, "mask": mask, "weight": weight.astype(np.float32), "hu": hu, "voxels": int(mask.sum())})
    return patches


def _resampled(patch: dict, factors) -> dict:
    """Patch on the target spacing (factors = source / target spacing per axis)."""
    if np.allclose(factors, 1.0, atol=1e-3):
        return patch
    hu = ndimage.zoom(patch["hu"], factors, order=1)
    weight = ndimage.zoom(patch["weight"], factors, order=1)
    mask = ndimage.zoom(patch["mask"].astype(np.float32), factors, order=1) >= 0.5
    return {**patch, "hu": hu, "weight": weight, "mask": mask, "voxels": int(mask.sum())}


def _flipped(rng: np.random.Generator, patch: dict) -> dict:
    axes = tuple(a for a in range(3) if rng.uniform() < 0.5)
    if not axes:
        return patch
    return {**patch, **{k: np.flip(patch[k], axes) for k in ("hu", "weight", "mask")}}


def paste_tumors(
    image: Volume,
    labels: Volume,
    target_image: Volume,
    target_liver: np.ndarray,
    seed: int,
    n_paste: int | tuple[int, int] = (1, 3),
    margin_mm: float = 3.0,
) -> tuple[Volume, Volume, list[dict]]:
    """Copy a case's labelled tumors (with a feathered margin) into random eroded-liver sites of a
    target case. Returns (target image, target labels 0/1/2, pasted tumor dicts).

    target_liver: boolean liver mask on the target grid, or its 0/1/2 label array (its tumors are
    then kept and avoided). Pasting into the source case itself (target_image is image) keeps the
    case's own tumors. Pasted HU = source HU - source liver median + target liver median; patches
    are resampled to the target spacing and randomly flipped; each pasted tumor is a separate
    26-connected component that lies in the target liver.
    """
    if labels.shape != image.shape:
        raise InputError("the source labels are not on the source CT's grid; resample them first")
    liver, tumors = liver_and_tumors(target_liver, target_image.shape, "target liver mask", "target CT's")
    if target_image is image:
        tumors |= labels.array == 2
    healthy = liver & ~tumors
    if not healthy.any():
        raise InputError("the target liver mask is empty; tumors can only be pasted into a liver")

    rng = np.random.default_rng(seed)
    spacing = np.asarray(target_image.spacing_zyx)
    factors = np.asarray(image.spacing_zyx) / spacing
    patches = [_resampled(p, factors) for p in _source_patches(image, labels, margin_mm)]
    out = target_image.array.astype(np.float32, copy=True)
    out_labels = liver.astype(np.uint8)
    out_labels[tumors] = 2
    target_median = np.float32(np.median(target_image.array[healthy]))
    depth, step, liver_box = depth_map(healthy, spacing)
    pasted = []
    lo, hi = count_range(n_paste)
    for _ in range(int(rng.integers(lo, hi + 1))):
        patch = _flipped(rng, patches[rng.integers(len(patches))])
        for _attempt in range(20):
            placed = _paste_one(rng, patch, out, out_labels, liver, spacing, depth, step, liver_box, target_median)
            if placed is not None:
                placed["center_lps"] = [round(float(v), 2) for v in target_image.index_to_lps(np.asarray([placed["center"]]))[0]]
                pasted.append(placed)
                break
    return target_image.with_array(out), target_image.with_array(out_labels), pasted


def _paste_one(rng, patch, out, out_labels, liver, spacing, depth, step, liver_box, target_median):
    """Place one patch (its tumor centroid on a random deep liver site); None if it clashes, splits
    or loses more than a quarter of the tumor outside the liver."""
    radius = np.cbrt(3 * patch["voxels"] * float(np.prod(spacing)) / (4 * np.pi))
    site = pick_site(rng, depth, step, liver_box, 0.5 * radius)
    if site is None:
        return None
    centroid = np.round(np.argwhere(patch["mask"]).mean(0)).astype(int)
    start = np.asarray(site) - centroid
    shape = np.asarray(patch["mask"].shape)
    lo, hi = np.maximum(start, 0), np.minimum(start + shape, out.shape)
    if np.any(hi <= lo):
        return None
    target = tuple(slice(a, b) for a, b in zip(lo, hi))
    source = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
    in_liver = liver[target]
    mask = patch["mask"][source] & in_liver
    if mask.sum() < 0.75 * patch["voxels"] or mask.sum() < 4:
        return None
    kept = largest_component(mask)
    if kept.sum() < mask.sum() or touches(kept, out_labels[target] == 2):
        return None  # split by the liver edge, or next to another tumor
    weight = patch["weight"][source] * in_liver
    region = out[target]
    region += weight * (patch["hu"][source] + target_median - region)
    out_labels[target][kept] = 2
    voxels = int(kept.sum())
    return {
        "center": [round(float(v), 2) for v in np.argwhere(kept).mean(0) + lo],
        "source_tumor": int(patch["index"]),
        "radius_mm": round(float(radius), 2),
        "kind": "pasted",
        "voxels": voxels,
        "volume_ml": round(voxels * float(np.prod(spacing)) / 1000.0, 3),
    }
