"""A floor relative to each CT's own liver: round spots darker than the parenchyma around them.

A metastasis in a contrast-enhanced liver is a round spot darker than the parenchyma. The shipped
default model, trained on phantoms, finds few 5-10 mm ones (2 of 38 in the real case,
benchmarks/RESULTS.md), while a smoothed HU threshold fitted on the same patient finds most. An
absolute threshold belongs to one scanner and contrast phase, so this one is set per CT:
below_liver_hu under the median HU of the liver outside the lesions found so far. What else is that
dark inside a liver mask is told apart by shape and content: vessels are tubes (elongated
components), partial volumes of fat, air or lung at the liver's edge hold voxels far below
soft tissue, and simple cysts are water (median at most 20 HU; metastases in an enhanced liver lie
well above it). In an unenhanced liver, vessels are darker than the parenchyma everywhere, so the
floor is not used below min_liver_hu. Large lesions are the network's to find: the floor adds
only lesions up to max_diameter_mm that nothing found before touches (floors_of: after the
network, the spot pass and the floor fitted on the user's cases, which comes first).

The shipped default model carries it (model.json "relative_floor") and Retrain passes it on.
Offset and elongation cap were chosen on the real case's half A and the tumor-free contrast CT of
Testing/Data: of the settings that add no lesion in the tumor-free liver, the best lesion recall on
A at lesion precision >= 0.8, ties to the fewer false lesions (benchmarks/relative_floor.py;
RESULTS.md, "A floor relative to the liver").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .floor import floor_of, smoothed_hu, unreadable
from .lesions import drop_small_lesions, drop_surface_slivers, equivalent_diameter_mm, label_lesions
from ..volume import Volume


@dataclass
class RelativeFloor:
    """The floor's settings, as model.json "relative_floor" stores them (HU, mm, mm3)."""

    below_liver_hu: float = 35.0
    max_elongation: float = 2.0  # largest over smallest principal spread (mm) of a lesion (elongation())
    max_diameter_mm: float = 20.0  # equivalent-sphere diameter
    min_liver_hu: float = 80.0  # between an unenhanced liver (50-65 HU) and a portal-venous one (100-130 HU)
    lowest_hu: float = -100.0  # a smoothed voxel below this is fat, air or lung, not tumor
    water_hu: float = 20.0  # a median HU at or below this is a simple cyst (water density, 0-20 HU)
    sigma_mm: float = 1.0
    min_lesion_mm3: float = 50.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RelativeFloor":
        return cls(**{key: float(data[key]) for key in cls.__dataclass_fields__ if key in data})

    def lesions(self, image: Volume, liver: np.ndarray, found: np.ndarray) -> np.ndarray:
        """The floor's lesions (bool, same grid) that no lesion of `found` (bool) touches."""
        liver = np.asarray(liver, dtype=bool)
        found = np.asarray(found, dtype=bool)
        added = np.zeros(liver.shape, dtype=bool)
        parenchyma = liver & ~found
        if not parenchyma.any():
            return added
        liver_hu = float(np.median(image.array[parenchyma]))
        if liver_hu < self.min_liver_hu:
            return added
        smooth = smoothed_hu(image, liver, self.sigma_mm)
        dark = liver & (smooth < liver_hu - self.below_liver_hu)
        drop_small_lesions(dark, image.voxel_volume_mm3, self.min_lesion_mm3)
        components, _ = label_lesions(dark)
        spacing = np.asarray(image.spacing_zyx, dtype=float)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            if box is None:
                continue
            own = components[box] == index
            if not found[box][own].any() and self._looks_like_tumor(own, smooth[box], image.array[box], spacing):
                added[box] |= own
        # The surface-sliver test (a distance transform per component) runs last, on the few
        # components left: each component's fate is its own, so the order does not change the result.
        return drop_surface_slivers(added, liver, image.spacing_zyx)

    def _looks_like_tumor(self, own: np.ndarray, smooth: np.ndarray, hu: np.ndarray, spacing: np.ndarray) -> bool:
        if equivalent_diameter_mm(float(np.count_nonzero(own)) * float(np.prod(spacing))) > self.max_diameter_mm:
            return False
        # The cyst test reads the CT itself: smoothing lifts a small cyst's median above water.
        if float(smooth[own].min()) < self.lowest_hu or float(np.median(hu[own])) <= self.water_hu:
            return False
        return elongation(own, spacing) <= self.max_elongation

    def add_missed_lesions(self, probability: np.ndarray, image: Volume, liver: np.ndarray, threshold: float,
                           region: tuple, found: np.ndarray) -> int:
        """As ThresholdBaseline.add_missed_lesions: raise `probability` (CT grid, in place) to
        `threshold` on the floor's lesions inside `region` (slices holding the whole liver) that
        the network's lesions `found` (bool, on `region`) leave out. Returns the lesions added."""
        inside = np.asarray(liver[region], dtype=bool)
        if not inside.any():
            return 0
        sub = Volume(np.asarray(image.array[region]), image.spacing, image.origin, image.direction)
        add = self.lesions(sub, inside, found)
        local = probability[region]
        local[add] = np.maximum(local[add], np.float32(threshold))
        return label_lesions(add)[1]


def floors_of(model) -> list:
    """The floors whose untouched lesions segment adds, in order: the intensity floor fitted on the
    user's cases (floor.py), then this floor relative to each CT's liver (model.json
    "relative_floor": the default model's, which Retrain passes on). Each adds only
    lesions that nothing found before it touches."""
    floors = [floor_of(model)]
    data = (getattr(model, "meta", None) or {}).get("relative_floor")
    if data:
        try:
            floors.append(RelativeFloor.from_dict(data))
        except (KeyError, TypeError, ValueError) as error:
            raise unreadable("relative floor", error) from error
    return [floor for floor in floors if floor is not None]


def default_relative_floor() -> dict:
    """model.json's "relative_floor" for the shipped default model, saying what it was chosen on."""
    return {**RelativeFloor().to_dict(),
            "chosen_on": "LiTS 117 half A (real tumors) and the tumor-free contrast CT of Testing/Data; "
                         "benchmarks/RESULTS.md, 'A floor relative to the liver'",
            "held_out_evaluation": "model.json's held_out_evaluation was measured without this floor; "
                                   "benchmarks/relative_floor.py --part synthetic measures both"}


def elongation(own: np.ndarray, spacing_zyx) -> float:
    """Largest over smallest principal standard deviation (mm) of the lesion as a solid body: the
    covariance of its voxel centres plus each voxel's own extent (spacing^2 / 12 per axis). Without
    that, a spot on one 5 mm slice would count as infinitely flat and be taken for a vessel."""
    spacing = np.asarray(spacing_zyx, dtype=float)
    points = np.argwhere(own) * spacing
    covariance = np.diag(spacing**2 / 12.0)
    if len(points) > 1:
        covariance = covariance + np.cov(points.T, bias=True)
    spreads = np.sqrt(np.maximum(np.linalg.eigvalsh(covariance), 1e-12))
    return float(spreads[-1] / spreads[0])
