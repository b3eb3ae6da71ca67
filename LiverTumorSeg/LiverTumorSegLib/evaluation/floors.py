"""The classical floor every result is compared with.

Light Gaussian smoothing, then one HU threshold inside the liver ("darker than T is tumor")
fitted on the training cases, then speck removal and the same removal of thin slivers along the
liver surface as the network's post-processing (a fair floor). On single-phase data it can be hard to beat;
the network has to beat it clearly where scanners, phases and patients differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.lesions import drop_small_lesions, drop_surface_slivers
from ..volume import Volume

HU_RANGE = (-200, 400)


@dataclass
class ThresholdBaseline:
    threshold_hu: float
    sigma_mm: float = 1.0
    min_lesion_mm3: float = 50.0

    def segment(self, image: Volume, liver: np.ndarray) -> np.ndarray:
        """Boolean tumor mask on the image grid."""
        smooth = smoothed_hu(image, liver, self.sigma_mm)
        mask = liver & (smooth < self.threshold_hu)
        drop_small_lesions(mask, image.voxel_volume_mm3, self.min_lesion_mm3)
        return drop_surface_slivers(mask, liver, image.spacing_zyx)


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
    bins = np.arange(HU_RANGE[0], HU_RANGE[1] + 1)
    tumor_hist = np.zeros(len(bins) - 1)
    other_hist = np.zeros(len(bins) - 1)
    for image, liver, tumor in cases:
        smooth = smoothed_hu(image, liver, sigma_mm)
        tumor_hist += np.histogram(smooth[liver & tumor], bins)[0]
        other_hist += np.histogram(smooth[liver & ~tumor], bins)[0]
    tp = np.cumsum(tumor_hist)
    predicted = tp + np.cumsum(other_hist)
    dice = 2 * tp / np.maximum(predicted + tumor_hist.sum(), 1)
    best = int(np.argmax(dice))
    return ThresholdBaseline(threshold_hu=float(bins[best + 1]), sigma_mm=sigma_mm)
