"""What a phantom case may hold: grid, anatomy and tumor ranges, each case drawing its own values.

Units: mm and HU; the grid's array axes are (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InputError

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
