"""The intensity floor: a smoothed HU threshold fitted on a radiologist's own cases.

Light Gaussian smoothing, then one HU threshold inside the liver ("darker than T is tumor")
fitted on the training cases, then speck removal and the same removal of thin slivers along the
liver surface as the network's post-processing.

It is two things. In the benchmarks it is the classical floor every result is compared with: on
one patient and scanner intensity is most of the answer (on the real case's dome it finds 24 of
25 tumors of 5-10 mm that a network trained on A misses, benchmarks/RESULTS.md). In the product
a model trained on the user's cases carries the floor fitted on those cases (model.json
"intensity_floor"), and segment adds every floor lesion the network left out, so Retrain never
finds fewer lesions than its own floor. Absolute HU belongs to one scanner and contrast phase:
the shipped default model, trained on phantoms, has none (it carries a floor set relative to each
CT's liver instead, relative_floor.py, which segment applies after this one), and a floor whose
lesions are mostly false, on the training cases or from one of them to the next, is not kept
(fit_intensity_floor).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .lesions import drop_small_lesions, drop_surface_slivers, label_lesions
from ..volume import Volume

HU_RANGE = (-200, 400)
# A floor whose lesions are less often tumor than this (fit_intensity_floor) is not kept: in the
# product it would add more false lesions than it finds.
MIN_FLOOR_PRECISION = 0.5


@dataclass
class ThresholdBaseline:
    threshold_hu: float
    sigma_mm: float = 1.0
    min_lesion_mm3: float = 50.0

    def segment(self, image: Volume, liver: np.ndarray) -> np.ndarray:
        """Boolean tumor mask on the image grid."""
        return self.mask_of(smoothed_hu(image, liver, self.sigma_mm), image, liver)

    def mask_of(self, smooth: np.ndarray, image: Volume, liver: np.ndarray) -> np.ndarray:
        """segment's mask from the smoothed HU (smoothed_hu with this sigma), computed once by a caller
        that thresholds it more than once."""
        mask = liver & (smooth < self.threshold_hu)
        drop_small_lesions(mask, image.voxel_volume_mm3, self.min_lesion_mm3)
        return drop_surface_slivers(mask, liver, image.spacing_zyx)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ThresholdBaseline":
        return cls(float(data["threshold_hu"]), float(data["sigma_mm"]), float(data["min_lesion_mm3"]))

    def add_missed_lesions(self, probability: np.ndarray, image: Volume, liver: np.ndarray, threshold: float,
                           region: tuple, found: np.ndarray) -> int:
        """Raise `probability` (CT grid, in place) to `threshold` on every floor lesion inside the
        slices `region` (which hold the whole liver) that the network's lesions `found` (bool, on
        `region`, after speck and sliver removal) do not touch; the network's own lesions keep
        their outline. Returns the lesions added."""
        inside = np.asarray(liver[region], dtype=bool)
        if not inside.any():
            return 0
        sub = Volume(np.asarray(image.array[region]), image.spacing, image.origin, image.direction)
        components, count = label_lesions(self.segment(sub, inside))
        if count == 0:
            return 0
        missed = np.setdiff1d(np.arange(1, count + 1), components[found])
        add = np.isin(components, missed)
        local = probability[region]
        local[add] = np.maximum(local[add], np.float32(threshold))
        return int(len(missed))


def floor_of(model) -> ThresholdBaseline | None:
    """The model's intensity floor fitted on the user's cases (model.json "intensity_floor"), or
    None (the default model, older models, or none was kept)."""
    data = (getattr(model, "meta", None) or {}).get("intensity_floor")
    if not data or data.get("threshold_hu") is None:
        return None
    try:
        return ThresholdBaseline.from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        raise unreadable("intensity floor", error) from error


def unreadable(what: str, error: Exception) -> Exception:
    """The error for a floor entry of model.json that cannot be read."""
    from ..errors import ModelError

    return ModelError(f"the model's {what} in model.json is unreadable ({error}); retrain the model")


def smoothed_hu(image: Volume, liver: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Gaussian-smoothed HU inside the liver's bounding box (zeros elsewhere: never read there)."""
    box = ndimage.find_objects(liver.astype(np.uint8))[0]
    sigma = [sigma_mm / s for s in image.spacing_zyx]
    out = np.zeros(image.shape, dtype=np.float32)
    out[box] = ndimage.gaussian_filter(image.array[box].astype(np.float32), sigma)
    return out


def fit_threshold_baseline(cases: list[tuple[Volume, np.ndarray, np.ndarray]], sigma_mm: float = 1.0) -> ThresholdBaseline:
    """Choose the HU threshold that maximises global Dice over (image, liver, tumor) training cases.

    Histograms of smoothed HU inside the liver, for tumor and non-tumor voxels, give Dice for every
    threshold at once: TP(T) and P(T) are cumulative sums.
    """
    histograms = [_histograms(image, liver, tumor, sigma_mm) for image, liver, tumor in cases]
    return ThresholdBaseline(threshold_hu=_best_threshold(histograms), sigma_mm=sigma_mm)


_BINS = np.arange(HU_RANGE[0], HU_RANGE[1] + 1)


def _histograms(image: Volume, liver: np.ndarray, tumor: np.ndarray, sigma_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed HU inside the liver, binned per HU: (tumor voxels, other voxels)."""
    smooth = smoothed_hu(image, liver, sigma_mm)
    return np.histogram(smooth[liver & tumor], _BINS)[0], np.histogram(smooth[liver & ~tumor], _BINS)[0]


def _best_threshold(histograms: list) -> float:
    tumor_hist = np.sum([t for t, _ in histograms], axis=0)
    other_hist = np.sum([o for _, o in histograms], axis=0)
    tp = np.cumsum(tumor_hist)
    predicted = tp + np.cumsum(other_hist)
    dice = 2 * tp / np.maximum(predicted + tumor_hist.sum(), 1)
    return float(_BINS[int(np.argmax(dice)) + 1])


def fit_intensity_floor(cases: list[tuple[Volume, np.ndarray, np.ndarray]], sigma_mm: float = 1.0) -> dict:
    """model.json's "intensity_floor" for (image, liver, tumor) training cases: the floor fitted on
    all of them and how it did there (pooled Dice, its lesions and how many touch a tumor).

    It is kept (else threshold_hu is None, with the reason) when at least MIN_FLOOR_PRECISION of its
    lesions touch a tumor and of its voxels are tumor: with two or more cases holding tumors, on
    each case by the floor fitted on the others (a library that mixes scanners or contrast phases
    shows there that one HU threshold does not carry over); with one, on the case itself."""
    histograms = [_histograms(image, liver, tumor, sigma_mm) for image, liver, tumor in cases]
    floor = ThresholdBaseline(threshold_hu=_best_threshold(histograms), sigma_mm=sigma_mm)
    left_out = sum(t.sum() > 0 for t, _ in histograms) >= 2
    totals, left_out_totals = dict.fromkeys(_COUNTS, 0), dict.fromkeys(_COUNTS, 0)
    true = 0
    for i, (image, liver, tumor) in enumerate(cases):
        smooth = smoothed_hu(image, liver, sigma_mm)  # once per case for both floors
        _add(totals, _counts(floor.mask_of(smooth, image, liver), tumor))
        true += int(np.count_nonzero(tumor & liver))
        if left_out:
            others = ThresholdBaseline(_best_threshold([h for j, h in enumerate(histograms) if j != i]), sigma_mm)
            _add(left_out_totals, _counts(others.mask_of(smooth, image, liver), tumor))
    precision = totals["lesions_on_tumor"] / totals["lesions"] if totals["lesions"] else None
    fit = {"dice": round(2.0 * totals["voxels_on_tumor"] / max(totals["voxels"] + true, 1), 4),
           "lesions": totals["lesions"], "lesions_on_tumor": totals["lesions_on_tumor"],
           "lesion_precision": None if precision is None else round(precision, 4), "voxels": totals["voxels"],
           "voxels_on_tumor": totals["voxels_on_tumor"]}
    judged_on, counts = "the training cases", totals
    if left_out:
        judged_on, counts = "each case, by the floor fitted on the others", left_out_totals
        fit["left_out"] = {k: counts[k] for k in ("lesions", "lesions_on_tumor")}
    fit["judged_on"] = judged_on
    lesion_share = counts["lesions_on_tumor"] / counts["lesions"] if counts["lesions"] else 1.0
    voxel_share = counts["voxels_on_tumor"] / counts["voxels"] if counts["voxels"] else 1.0
    if min(lesion_share, voxel_share) < MIN_FLOOR_PRECISION:
        return {**floor.to_dict(), "threshold_hu": None, "fit": fit,
                "why": f"not kept: on {judged_on}, {counts['lesions_on_tumor']} of its {counts['lesions']} lesions touch a "
                       f"tumor and {voxel_share:.0%} of its voxels are tumor (at least {MIN_FLOOR_PRECISION:.0%} of each "
                       f"is needed)"}
    return {**floor.to_dict(), "fit": fit}


_COUNTS = ("lesions", "lesions_on_tumor", "voxels", "voxels_on_tumor")


def _counts(mask: np.ndarray, tumor: np.ndarray) -> dict:
    """A floor's mask on one case: its lesions and those touching a tumor, its voxels and those
    inside one (one lesion over the whole liver touches every tumor)."""
    components, count = label_lesions(mask)
    return {"lesions": count, "lesions_on_tumor": int(len(np.setdiff1d(np.unique(components[tumor]), [0]))),
            "voxels": int(np.count_nonzero(mask)), "voxels_on_tumor": int(np.count_nonzero(mask & tumor))}


def _add(totals: dict, counts: dict) -> None:
    for key in _COUNTS:
        totals[key] += counts[key]
