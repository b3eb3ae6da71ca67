"""Spot pass beside the network: the 10-25 mm tumors the network misses.

The network misses many visible 10-20 mm tumors that a smoothed HU threshold finds (with many
false spots). This pass keeps the threshold's sensitivity and buys back precision with a small
lesion-level classifier:

1. contrast map: the CT smoothed inside the liver only, minus the local parenchyma level (an
   8 mm liver-only average of voxels within 2 robust sigmas of the liver median, so tumors,
   vessels and the fat beyond the edge do not bias it), over the noise of that difference;
   averaged in blocks of up to `grid_mm` first (a 0.6-0.9 mm CT becomes 1.2-1.8 mm in-plane, a
   1 mm one stays: spots of 10 mm and more lose nothing, and the pass takes a quarter of the time);
2. candidates: 26-connected spots darker or brighter than `z_cut` noise units, 10-25 mm across;
3. per candidate: size, peak and mean contrast, contrast to noise in a 2-6 mm liver
   ring, elongation (vessels are tubes) and depth below the liver surface; a logistic regression
   fitted on the training cases' candidates (one is a tumor when most of it lies in a labelled
   tumor) and the cut chosen on leave-one-case-out scores.

inference.segment folds the scores into the probability map through a monotone map that sends
the cut to the model's threshold, so the threshold slider, the lesion table and saved files see
one map. Spots under 10 mm are left out: real livers hold dozens of vessel cross-sections that
look like them (benchmarks/RESULTS.md, "A spot pass beside the network").
Pure numpy / scipy: a few dozen numbers in model.json, no weights file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from .geometry import depth_below_surface_mm
from .hessian import block_mean
from .lesions import drop_surface_slivers, equivalent_diameter_mm, label_lesions

FEATURES = ("log_diameter", "peak_z", "mean_z", "local_cnr", "log_elongation", "depth", "bright", "bright_local_cnr",
            "bright_log_elongation")
RING_MM = (2.0, 6.0)  # the liver ring around a spot where its local contrast and noise are read
DEPTH_CAP_MM = 15.0
TUMOR_OVERLAP = 0.5  # a candidate is a tumor when at least this fraction of it is labelled tumor


@dataclass
class SpotSettings:
    """How candidates are found (fixed, not fitted): contrast map scales and the size window."""

    smooth_mm: float = 1.0
    background_mm: float = 8.0
    background_sigmas: float = 2.0
    z_cut: float = 3.0
    min_diameter_mm: float = 10.0
    max_diameter_mm: float = 25.0
    grid_mm: float = 1.8


@dataclass
class SpotDetector:
    """A fitted spot classifier: standardisation, logistic weights and the decision cut."""

    settings: SpotSettings
    mean: list
    scale: list
    weights: list
    bias: float
    cut: float
    fit_summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"settings": asdict(self.settings), "features": list(FEATURES), "mean": self.mean, "scale": self.scale,
                "weights": self.weights, "bias": self.bias, "cut": self.cut, "fit_summary": self.fit_summary}

    @classmethod
    def from_dict(cls, data: dict) -> "SpotDetector":
        if list(data.get("features", [])) != list(FEATURES):
            raise ValueError(f"spot detector features {data.get('features')} differ from this version's {list(FEATURES)}")
        return cls(SpotSettings(**data["settings"]), list(data["mean"]), list(data["scale"]), list(data["weights"]),
                   float(data["bias"]), float(data["cut"]), dict(data.get("fit_summary", {})))

    def score(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.zeros(0)
        x = (features - np.asarray(self.mean)) / np.asarray(self.scale)
        return sigmoid(x @ np.asarray(self.weights) + self.bias)

    def add_to(self, probability: np.ndarray, image, liver: np.ndarray, threshold: float, within: tuple | None = None) -> int:
        """Raise `probability` (CT grid, in place) to each candidate's score, mapped so that
        the cut lands on `threshold`; returns the number of candidates at or above it. `within`:
        slices known to hold the whole liver (segment's liver box), so it is not searched for
        in the whole CT again."""
        candidates = find_candidates(image, liver, self.settings, within=within)
        if candidates is None:
            return 0
        box, factors, labels, features, _ = candidates
        mapped = map_to_threshold(self.score(features), self.cut, threshold).astype(np.float32)
        for fine, member, index in on_ct_grid(box, factors, labels, np.asarray(liver, dtype=bool)):
            region = probability[fine]
            region[member] = np.maximum(region[member], mapped[index - 1])
        return int((mapped >= threshold).sum())


def detector_of(model) -> SpotDetector | None:
    """The model's fitted spot pass (model.json "spot_detector"), or None (older models, or
    none could be fitted)."""
    data = (getattr(model, "meta", None) or {}).get("spot_detector")
    if not data:
        return None
    try:
        return SpotDetector.from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        from ..errors import ModelError

        raise ModelError(f"the model's spot pass in model.json is unreadable ({error}); retrain the model") from error


def map_to_threshold(score: np.ndarray, cut: float, threshold: float) -> np.ndarray:
    """Piecewise-linear, monotone: [0, cut] -> [0, threshold], [cut, 1] -> [threshold, 1]."""
    score = np.asarray(score, dtype=float)
    low = score / max(cut, 1e-6) * threshold
    high = threshold + (score - cut) / max(1.0 - cut, 1e-6) * (1.0 - threshold)
    return np.where(score < cut, low, high)


def contrast_map(hu: np.ndarray, inside: np.ndarray, spacing: np.ndarray, settings: SpotSettings) -> tuple[np.ndarray, np.ndarray]:
    """(z, difference): the HU difference from the local parenchyma level and the same in noise
    units, 0 outside the liver. Smoothing is at least half a voxel (a 3 mm grid gets 1.5 mm)."""
    weight = inside.astype(np.float32)
    smooth = _normalised_blur(hu * weight, weight, np.maximum(settings.smooth_mm / spacing, 0.5))
    values = smooth[inside]
    median = float(np.median(values))
    spread = max(1.4826 * float(np.median(np.abs(values - median))), 1.0)
    parenchyma = (inside & (np.abs(smooth - median) < settings.background_sigmas * spread)).astype(np.float32)
    level = _normalised_blur(smooth * parenchyma, parenchyma, settings.background_mm / spacing)
    difference = smooth - level
    residual = difference[parenchyma > 0]
    noise = max(1.4826 * float(np.median(np.abs(residual - np.median(residual)))), 0.5) if residual.size else spread
    z = np.where(inside, difference / noise, 0.0).astype(np.float32)
    return z, difference


def _normalised_blur(values: np.ndarray, weight: np.ndarray, sigma) -> np.ndarray:
    return ndimage.gaussian_filter(values, sigma) / np.maximum(ndimage.gaussian_filter(weight, sigma), 1e-3)


def _working_grid(image, liver: np.ndarray, tumor: np.ndarray | None, grid_mm: float, within: tuple | None = None):
    """The liver's box grown by one block (so the liver's surface is inside it: depth, slivers
    and the blurs see it on every side), averaged in blocks of up to grid_mm: (box, factors,
    spacing, HU, liver, tumor fraction or None); HU and tumor are liver-weighted averages."""
    spacing = np.asarray(image.spacing_zyx, dtype=float)
    factors = np.maximum(1, np.floor(grid_mm / spacing + 1e-6)).astype(int)
    within = within or tuple(slice(0, n) for n in liver.shape)
    local = ndimage.find_objects(liver[within].astype(np.uint8))[0]
    tight = tuple(slice(w.indices(n)[0] + t.start, w.indices(n)[0] + t.stop) for w, t, n in zip(within, local, liver.shape))
    box = tuple(slice(max(s.start - k, 0), min(s.stop + k, n)) for s, k, n in zip(tight, factors, liver.shape))
    weight = liver[box].astype(np.float32)
    hu = image.array[box].astype(np.float32) * weight
    fraction = None if tumor is None else (tumor[box] & liver[box]).astype(np.float32)
    if np.all(factors == 1):
        return box, factors, spacing, hu, liver[box], fraction
    mean_weight = np.maximum(block_mean(weight, factors), 1e-6)
    coarse_hu = block_mean(hu, factors) / mean_weight
    if fraction is not None:
        fraction = block_mean(fraction, factors) / mean_weight
    return box, factors, spacing * factors, coarse_hu, mean_weight >= 0.5, fraction


def find_candidates(image, liver: np.ndarray, settings: SpotSettings, tumor: np.ndarray | None = None,
                    within: tuple | None = None):
    """(liver box, block factors, candidate labels 1..n on the box's working grid, features
    [n, len(FEATURES)], targets [n] or None) of the dark and bright spots, or None when the liver
    holds none. With `tumor` (bool, CT grid) a candidate's target is 1 when at least
    TUMOR_OVERLAP of it is tumor. `on_ct_grid` puts the labels back onto the CT's voxels. `within`:
    slices that hold the whole liver (only there is it looked for)."""
    if liver is None:
        return None
    liver = np.asarray(liver, dtype=bool)
    if not (liver[within] if within else liver).any():
        return None
    box, factors, spacing, hu, inside, fraction = _working_grid(image, liver, tumor, settings.grid_mm, within)
    z, difference = contrast_map(hu, inside, spacing, settings)
    labels = np.zeros(z.shape, dtype=np.int32)
    rows, targets = [], []
    voxel_mm3 = float(spacing.prod())
    smallest, largest = (np.pi / 6 * d ** 3 / voxel_mm3 for d in (settings.min_diameter_mm, settings.max_diameter_mm))
    for bright, spots in ((0.0, z < -settings.z_cut), (1.0, z > settings.z_cut)):
        spots &= inside
        components, count = label_lesions(spots)
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        sizes[0] = 0
        spots = ((sizes >= smallest) & (sizes <= largest))[components]  # the size window first: thousands of specks
        drop_surface_slivers(spots, inside, spacing)
        components, count = label_lesions(spots)
        for index, sub in enumerate(ndimage.find_objects(components), start=1):
            member = components[sub] == index
            diameter = equivalent_diameter_mm(float(member.sum() * voxel_mm3))
            values = np.abs(z[sub][member])
            elongation = _elongation(np.argwhere(member) * spacing)
            depth = _spot_depth_mm(inside, sub, member, spacing)
            cnr = _local_cnr(difference, inside, sub, member, spacing)
            log_elongation = float(np.log(elongation))
            rows.append([np.log(diameter), float(values.max()), float(values.mean()), cnr, log_elongation,
                         depth / DEPTH_CAP_MM, bright, bright * cnr, bright * log_elongation])
            if fraction is not None:
                targets.append(float(fraction[sub][member].mean() >= TUMOR_OVERLAP))
            labels[sub][member] = len(rows)
    if not rows:
        return None
    return box, factors, labels, np.asarray(rows, dtype=float), (np.asarray(targets) if fraction is not None else None)


def on_ct_grid(box: tuple, factors, labels: np.ndarray, liver: np.ndarray):
    """Yield (CT-grid slices, boolean member mask, label) per candidate: the working-grid labels
    repeated back onto the CT's voxels, inside the liver, one candidate's box at a time."""
    for index, sub in enumerate(ndimage.find_objects(labels), start=1):
        if sub is None:
            continue
        fine = tuple(slice(b.start + s.start * k, min(b.start + s.stop * k, b.stop)) for b, s, k in zip(box, sub, factors))
        shape = tuple(f.stop - f.start for f in fine)
        yield fine, _repeat(labels[sub] == index, factors, shape) & liver[fine], index


def _repeat(coarse: np.ndarray, factors, shape) -> np.ndarray:
    """Nearest-neighbour inverse of the block average: each block's label on its voxels."""
    for axis, k in enumerate(factors):
        if k > 1:
            coarse = np.repeat(coarse, k, axis=axis)
    return coarse[: shape[0], : shape[1], : shape[2]]


def _elongation(points_mm: np.ndarray) -> float:
    """sqrt of the largest over the smallest principal variance (1 = ball; vessels are long)."""
    if len(points_mm) < 4:
        return 1.0
    eigen = np.linalg.eigvalsh(np.cov(points_mm.T) + 0.25 * np.eye(3))  # + a quarter mm^2: voxel size floor
    return float(np.sqrt(eigen[-1] / eigen[0]))


def _spot_depth_mm(inside: np.ndarray, sub: tuple, member: np.ndarray, spacing: np.ndarray) -> float:
    """Deepest point of the spot below the liver surface, capped at DEPTH_CAP_MM (computed in a
    box grown by the cap, which holds every surface point nearer than the cap; the box's edge is
    not surface)."""
    region, local = _grown(sub, inside.shape, spacing, DEPTH_CAP_MM)
    distance = depth_below_surface_mm(inside[region], spacing, edge_is_surface=False)
    return float(min(distance[local][member].max(), DEPTH_CAP_MM))


def _local_cnr(difference: np.ndarray, inside: np.ndarray, sub: tuple, member: np.ndarray, spacing: np.ndarray) -> float:
    """|spot mean - ring median| / ring noise (robust), the ring being liver 2-6 mm around the
    spot: a spot in a busy region (vessels, texture) counts for less than one in calm liver."""
    region, local = _grown(sub, inside.shape, spacing, RING_MM[1])
    spot = np.zeros(tuple(r.stop - r.start for r in region), dtype=bool)
    spot[local] = member
    distance = ndimage.distance_transform_edt(~spot, sampling=spacing)
    ring = (distance > RING_MM[0]) & (distance <= RING_MM[1]) & inside[region]
    if ring.sum() < 8:
        return 0.0
    values = difference[region][ring]
    level = float(np.median(values))
    noise = max(1.4826 * float(np.median(np.abs(values - level))), 0.5)
    return float(min(abs(float(difference[sub][member].mean()) - level) / noise, 20.0))


def _grown(sub: tuple, shape, spacing: np.ndarray, mm: float) -> tuple[tuple, tuple]:
    """(sub grown by mm on every side, clipped to shape; sub's position inside it)."""
    grow = np.ceil(mm / spacing).astype(int) + 1
    region = tuple(slice(max(s.start - g, 0), min(s.stop + g, n)) for s, g, n in zip(sub, grow, shape))
    return region, tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(sub, region))


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(v, -30, 30)))

