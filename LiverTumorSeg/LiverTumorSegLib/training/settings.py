"""What a training run does, as one dataclass stored in model.json ("settings").

Light on purpose (no numpy, scipy or torch at import): the command line reads its defaults
while it builds the parser. Feature and patch settings are imported when a TrainSettings is made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from ..core.features import FeatureSettings
    from .patches import PatchSettings

# synthesis: "off" | "fixed" | "auto" | "default" (= fixed; synthesis_search.resolve_mode).
SYNTHESIS_MODES = ("off", "fixed", "auto", "default")
VALIDATION_MODES = ("auto", "cases", "region", "in-sample")


def _default_features() -> "FeatureSettings":
    from ..core.features import FeatureSettings

    return FeatureSettings()


@dataclass
class TrainSettings:
    """One training run; the same settings, cases and seed give the same weights.

    seed: initialisation, validation split, patch sampling and synthetic copies.
    minutes, max_steps: the budget; max_steps is the plan (600 steps: about 3.5 min on one core),
    minutes only caps it on a slow or busy machine (meta "stopped_by" says which ended the run).
    patch_size (voxels, multiple of 8), batch_size: patches per optimisation step.
    lr: Adam's learning rate, x fine_tune_lr_factor when fine-tuning a model; warmup_steps: linear
    ramp of the rate at the start. ema_decay: the model is the exponential moving average of the
    weights, so where a time cap stops the run matters less.
    arch: "mhpnet" | "unet3d"; widths: channels per level (None: the architecture's).
    use_hessian: Hessian blob channels (None: yes for MHP-Net, no for the U-Net).
    features: how a case becomes network input (stored in the model, repeated at inference).
    patches: sampling pools and augmentation (None: PatchSettings of patch_size).
    validation: "auto" | "cases" | "region" | "in-sample" (train.py's module docstring);
    val_fraction: share of the cases, or of the liver's height, held out.
    min_lesion_mm3: smallest lesion inference keeps (mm^3), also when validating.
    synthetic_copies: synthetic variants per training case (synthesis.synthetic_copy: its own tumors
    pasted elsewhere plus synthesised ones; never used for validation). synthetic_tumors: how many
    tumors each copy gets; synthetic_radius_mm: their radius range (log-uniform, mm);
    synthetic_delta_hu: their intensity change (HU); synthetic_edge_mm: edge blur (Gaussian sigma, mm).
    rehearsal_cases: phantoms of the default model's recipe replayed when fine-tuning (rehearsal.py),
    so the parent's knowledge is not forgotten; check_cases: held-out phantoms on which parent and
    child are both scored (parent_check.py).
    synthesis: "off" | "fixed" (synthetic_copies above) | "auto" (the segmenter chooses the mix,
    synthesis_search.py) | "default" (fixed); synthesis_search_share: share of max_steps the auto
    search spends on candidates that lose.
    spot_pass: fit the spot pass (core/spots.py: 10-25 mm spots the network misses) on the training
    cases; fine-tuning keeps the parent's.
    intensity_floor: fit the smoothed-HU floor on the training cases and let segment add its lesions
    that the network leaves out (core/floor.py); off only for models trained on phantoms, whose
    HU say nothing about a user's scanner (the shipped default model).
    Measurements behind these defaults: benchmarks/RESULTS.md.
    """

    seed: int = 0
    minutes: float = 5.0
    max_steps: int = 600
    patch_size: int = 32
    batch_size: int = 4
    lr: float = 2e-3
    fine_tune_lr_factor: float = 0.5
    warmup_steps: int = 20
    ema_decay: float = 0.99
    arch: str = "mhpnet"
    widths: tuple | None = None
    use_hessian: bool | None = None
    features: FeatureSettings = field(default_factory=_default_features)
    patches: PatchSettings | None = None
    validation: str = "auto"
    val_fraction: float = 0.25
    min_lesion_mm3: float = 30.0
    synthetic_copies: int = 1
    synthetic_tumors: tuple = (1, 2)
    synthetic_radius_mm: tuple = (3.0, 20.0)
    synthetic_delta_hu: tuple = (65.0, 145.0)
    synthetic_edge_mm: tuple = (1.0, 2.0)
    rehearsal_cases: int = 6
    check_cases: int = 3
    synthesis: str = "fixed"
    synthesis_search_share: float = 0.16
    spot_pass: bool = True
    intensity_floor: bool = True

    def __post_init__(self):
        if self.synthesis not in SYNTHESIS_MODES:
            raise InputError(f"synthesis {self.synthesis!r}: use one of {SYNTHESIS_MODES}")
        if not 0.05 <= self.synthesis_search_share <= 0.25:  # the trunk takes 60 %; plan_steps caps the forks to fit
            raise InputError(f"synthesis_search_share {self.synthesis_search_share} must be between 0.05 and 0.25 of the steps")
        if self.minutes <= 0 or self.max_steps < 1:
            raise InputError("the training budget needs minutes > 0 and max_steps >= 1")
        if self.patch_size % 8 or self.patch_size < 16:
            raise InputError(f"patch_size {self.patch_size} must be a multiple of 8, at least 16")
        if self.rehearsal_cases < 0 or self.check_cases < 0:
            raise InputError("rehearsal_cases and check_cases must be 0 or more")
        if self.synthetic_copies < 0:
            raise InputError(f"synthetic_copies {self.synthetic_copies} must be 0 or more")
        self.synthetic_tumors = tuple(int(v) for v in self.synthetic_tumors)
        self.synthetic_radius_mm = tuple(float(v) for v in self.synthetic_radius_mm)
        self.synthetic_delta_hu = tuple(float(v) for v in self.synthetic_delta_hu)
        self.synthetic_edge_mm = tuple(float(v) for v in self.synthetic_edge_mm)
        if self.validation not in VALIDATION_MODES:
            raise InputError(f"validation {self.validation!r}: use auto, cases, region or in-sample")
        if self.patches is None:
            from .patches import PatchSettings

            self.patches = PatchSettings(size=self.patch_size)
        self.patches.size = self.patch_size

    def feature_settings(self) -> FeatureSettings:
        """The features the network gets: `features`, with use_hessian resolved for the architecture."""
        from ..core.features import FeatureSettings

        use = self.use_hessian if self.use_hessian is not None else self.arch == "mhpnet"
        return FeatureSettings.from_dict({**self.features.to_dict(), "use_hessian": bool(use)})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = self.features.to_dict()
        return d
