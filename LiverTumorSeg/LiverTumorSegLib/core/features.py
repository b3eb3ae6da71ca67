"""From a CT in HU to the network's input: liver box, working grid, normalisation, Hessian channels.

Steps, in this order so that nothing big is ever converted to float: crop the CT to the liver's
bounding box plus a margin (mm), convert it to float32 a few slices at a time while anti-aliasing
and resampling it to a near-isotropic working spacing, normalise intensities, add Hessian blob
channels computed on the box only. `Prepared.to_input_grid` maps any working-grid array back onto
the input grid.

Resampling works in index space: the working grid has the input's axes (and direction), only
finer or coarser, and covers exactly the same box (pixel-area alignment, as
`torch.nn.functional.interpolate(align_corners=False)` and `ndimage.zoom(grid_mode=True)` do).
Arrays are (z, y, x); spacings in mm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np
from scipy import ndimage

from ..errors import InputError, ModelError
from .hessian import hessian_channels
from .lesions import mask_box
from ..volume import Volume

NORMALIZATIONS = ("liver", "window", "both")
# Options that older models may carry, at the only value this version implements; any other
# value cannot be reproduced here (benchmarks/RESULTS.md, method changes).
RETIRED = {"liver_reference": "median", "hessian_outside": "image", "fine_hessian_mm": None}
_ROBUST_SIGMA = 1.4826  # median absolute deviation -> standard deviation for a normal distribution
_SLAB = 32  # slices resampled at a time (bounds the temporary memory)


@dataclass
class FeatureSettings:
    """How a case becomes network input; stored in every model so inference repeats it exactly.

    normalization: "liver" = (HU - liver median) / liver spread, "darker than this liver", which
    transfers across scanners and contrast phases; "window" = HU window mapped to [0, 1];
    "both" = the two as separate channels. spread_hu None = the case's robust spread (1.4826 MAD
    of liver HU) clipped to spread_limits_hu; a number = that fixed spread in HU.
    The liver level is the median HU of the liver voxels.
    Hessian channels are computed on the liver-relative image (or HU / 50 for "window"), in mm.
    """

    spacing_mm: float = 2.0
    margin_mm: float = 12.0
    normalization: str = "liver"
    hu_window: tuple = (-100.0, 250.0)
    spread_hu: float | None = None
    spread_limits_hu: tuple = (12.0, 60.0)
    clip: float = 6.0
    fallback_liver_hu: float = 110.0
    use_hessian: bool = True
    hessian_scales_mm: tuple = (3.0, 6.0, 12.0)
    hessian_polarities: tuple = ("dark", "bright")
    hessian_combine: str = "max"

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise InputError(f"normalization must be one of {NORMALIZATIONS}, not {self.normalization!r}")
        if not self.spacing_mm > 0:
            raise InputError("the working spacing must be a positive number of mm")
        if not self.margin_mm >= 0:  # a negative margin would cut the liver out of its own box
            raise InputError(f"margin_mm {self.margin_mm} must be 0 or more (mm of context around the liver)")
        self.hu_window = tuple(float(v) for v in self.hu_window)
        self.spread_limits_hu = tuple(float(v) for v in self.spread_limits_hu)
        self.hessian_scales_mm = tuple(float(v) for v in self.hessian_scales_mm)
        self.hessian_polarities = tuple(self.hessian_polarities)

    @property
    def channel_names(self) -> list[str]:
        names = {"liver": ["ct_liver"], "window": ["ct_window"], "both": ["ct_liver", "ct_window"]}[self.normalization]
        if self.use_hessian:
            if self.hessian_combine == "max":
                names += [f"hessian_{p}" for p in self.hessian_polarities]
            else:
                names += [f"hessian_{p}_{s:g}mm" for p in self.hessian_polarities for s in self.hessian_scales_mm]
        return names

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSettings":
        """From to_dict's output (a model file's "feature_settings"); unknown keys are ignored.
        A retired option (RETIRED) is accepted at its only value and refused at any other."""
        for key, value in RETIRED.items():
            if key in data and data[key] != value:
                raise ModelError(f"the model's feature setting {key}={data[key]!r} is no longer supported (only "
                                 f"{value!r} is); retrain the model with this version, or run it with an older "
                                 "LiverTumorSeg version")
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known})


@dataclass
class Prepared:
    """One case on the working grid, inside its padded liver box.

    features (C, z, y, x) float32; liver and tumor (z, y, x) bool (tumor only when labels were
    given). box = (z0, z1, y0, y1, x0, x1), the input-grid index ranges the working grid covers.
    """

    features: np.ndarray
    liver: np.ndarray
    tumor: np.ndarray | None
    channel_names: list
    work_spacing_zyx: tuple
    box: tuple
    input_shape: tuple
    liver_median_hu: float
    spread_hu: float
    timings: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple:
        return tuple(self.liver.shape)

    def to_input_grid(self, work_array: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """A working-grid array (z, y, x) on the input grid: linear interpolation inside the box,
        `fill` outside. Bool arrays come back as bool (interpolated, >= 0.5). Done along z first,
        then in-plane a few slices at a time, so no full-size temporary is made."""
        z0, z1, y0, y1, x0, x1 = self.box
        is_bool = work_array.dtype == bool
        dtype = bool if is_bool else np.float32
        out = np.zeros(self.input_shape, dtype) if fill == 0 else np.full(self.input_shape, fill, dtype)
        along_z = resample(work_array.astype(np.float32, copy=False), (z1 - z0,) + tuple(work_array.shape[1:]))
        for z in range(0, z1 - z0, _SLAB):
            block = resample(along_z[z : z + _SLAB], (min(_SLAB, z1 - z0 - z), y1 - y0, x1 - x0))
            out[z0 + z : z0 + z + block.shape[0], y0:y1, x0:x1] = block >= 0.5 if is_bool else block
        return out


def prepare_case(
    image: Volume,
    liver: np.ndarray | None,
    settings: FeatureSettings | None = None,
    labels: np.ndarray | None = None,
) -> Prepared:
    """Crop, resample, normalise and enhance one CT (HU). `liver` is a bool mask on the CT grid
    (None: the whole image is the box and the liver HU falls back to settings.fallback_liver_hu).
    `labels` (0/1/2 on the CT grid, optional) gives the tumor mask on the working grid for training."""
    import time

    settings = settings or FeatureSettings()
    t0 = time.perf_counter()
    if liver is not None:
        liver = np.asarray(liver, dtype=bool)
        if liver.shape != image.shape:
            raise InputError(f"the liver mask {liver.shape} is not on the CT grid {image.shape}; resample it to the CT")
        if not liver.any():
            raise InputError("the liver mask is empty; draw or load a liver segmentation first")
    if liver is not None:
        box = liver_box(liver, image.shape, image.spacing_zyx, settings.margin_mm)
    else:  # no liver: the body (everything denser than air), not the air around it
        box = liver_box(body_mask(image.array), image.shape, image.spacing_zyx, settings.margin_mm)
    z0, z1, y0, y1, x0, x1 = box
    crop_spacing = np.asarray(image.spacing_zyx, dtype=float)
    crop_shape = (z1 - z0, y1 - y0, x1 - x0)
    work_shape = tuple(int(max(1, round(n * s / settings.spacing_mm))) for n, s in zip(crop_shape, crop_spacing))
    work_spacing = tuple(float(n * s / m) for n, s, m in zip(crop_shape, crop_spacing, work_shape))
    box_slices = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
    hu = to_working_grid(image.array[box_slices], crop_spacing, work_shape, antialias_to_mm=settings.spacing_mm)
    if liver is not None:
        liver_work = to_working_grid(liver[box_slices], crop_spacing, work_shape) >= 0.5
        if not liver_work.any():  # a sliver thinner than one working voxel
            liver_work = to_working_grid(liver[box_slices], crop_spacing, work_shape) > 0
    else:
        liver_work = np.ones(work_shape, dtype=bool)
    tumor_work = None
    if labels is not None:
        tumor_work = to_working_grid(np.asarray(labels)[box_slices] == 2, crop_spacing, work_shape) >= 0.5
    t1 = time.perf_counter()
    median, spread = liver_statistics(hu, liver_work if liver is not None else None, settings)
    # One features array filled in place: no stacking copy of a possibly large volume.
    features = np.empty((settings.n_channels,) + work_shape, dtype=np.float32)
    n_intensity = normalize(hu, median, spread, settings, out=features)
    t2 = time.perf_counter()
    if settings.use_hessian:  # on the liver-relative image; for "window" on HU / 50 (O(1) responses)
        source = features[0] if settings.normalization != "window" else np.clip(hu, *settings.hu_window) / np.float32(50.0)
        hessian_channels(
            source, work_spacing, settings.hessian_scales_mm, settings.hessian_polarities,
            settings.hessian_combine, out=features[n_intensity:],
        )
    del hu
    t3 = time.perf_counter()
    timings = {"crop_resample_s": t1 - t0, "normalize_s": t2 - t1, "hessian_s": t3 - t2}
    return Prepared(
        features, liver_work, tumor_work, settings.channel_names, work_spacing, box, image.shape, median, spread, timings
    )


def liver_box(liver: np.ndarray | None, shape, spacing_zyx, margin_mm: float) -> tuple:
    """Input-grid index box (z0, z1, y0, y1, x0, x1) of the liver plus margin_mm, clipped to the image."""
    if liver is None:
        return (0, shape[0], 0, shape[1], 0, shape[2])
    box = mask_box(liver)
    if box is None:
        raise InputError("the mask is empty; nothing to crop to")
    padded = []
    for axis in range(3):
        pad = int(np.ceil(margin_mm / spacing_zyx[axis]))
        padded += [max(0, box[2 * axis] - pad), min(shape[axis], box[2 * axis + 1] + pad)]
    return tuple(padded)


def body_mask(hu: np.ndarray, air_hu: float = -500.0) -> np.ndarray:
    """Voxels denser than air (HU > air_hu), the search region when no liver mask is given; the
    whole image when nothing is (e.g. values that are not HU)."""
    mask = np.zeros(hu.shape, dtype=bool)
    for z in range(0, hu.shape[0], _SLAB):
        np.greater(hu[z : z + _SLAB], air_hu, out=mask[z : z + _SLAB])
    return mask if mask.any() else np.ones(hu.shape, dtype=bool)


def to_working_grid(source: np.ndarray, spacing_zyx, work_shape, antialias_to_mm: float | None = None) -> np.ndarray:
    """Linear resampling of a (z, y, x) array (any dtype) to `work_shape` over the same box, float32.

    In-plane a few slices at a time, then along z (trilinear interpolation is separable, so this
    is the same as one trilinear pass), so memory stays near the size of the result even for a
    whole 512 x 512 x 600 CT. With antialias_to_mm, axes that get coarser are Gaussian-filtered
    first so noise does not alias.
    """
    nz = source.shape[0]
    sigma = _antialias_sigma(spacing_zyx, antialias_to_mm)
    inplane = np.empty((nz,) + tuple(work_shape[1:]), dtype=np.float32)
    for z in range(0, nz, _SLAB):
        block = np.asarray(source[z : z + _SLAB], dtype=np.float32)
        if sigma[1] > 0 or sigma[2] > 0:
            block = ndimage.gaussian_filter(block, (0.0, sigma[1], sigma[2]), mode="nearest", truncate=3.0)
        inplane[z : z + block.shape[0]] = resample(block, (block.shape[0],) + tuple(work_shape[1:]))
    if sigma[0] > 0:
        inplane = ndimage.gaussian_filter1d(inplane, sigma[0], axis=0, mode="nearest", truncate=3.0)
    return resample(inplane, work_shape)


def _antialias_sigma(spacing_zyx, target_mm: float | None) -> np.ndarray:
    """Gaussian sigma (input voxels) per axis for going from spacing_zyx to target_mm; 0 = none."""
    if target_mm is None:
        return np.zeros(3)
    factor = target_mm / np.asarray(spacing_zyx, dtype=float)
    sigma = np.where(factor > 1.0, 0.4 * np.sqrt(np.maximum(factor**2 - 1.0, 0.0)), 0.0)
    return np.where(sigma > 0.1, sigma, 0.0)


def resample(array: np.ndarray, shape) -> np.ndarray:
    """Linear resampling of a (z, y, x) float32 array to `shape` over the same box (pixel areas aligned)."""
    shape = tuple(int(s) for s in shape)
    if tuple(array.shape) == shape:
        return np.asarray(array, dtype=np.float32)
    import torch

    with torch.inference_mode():
        src = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
        out = torch.nn.functional.interpolate(src, size=shape, mode="trilinear", align_corners=False)
        return out[0, 0].numpy()


def liver_statistics(hu: np.ndarray, liver: np.ndarray | None, settings: FeatureSettings) -> tuple[float, float]:
    """Median and robust spread (HU) of the liver, the reference of "darker than this liver"."""
    lo_limit, hi_limit = settings.spread_limits_hu
    if liver is None or not liver.any():
        median = settings.fallback_liver_hu
        spread = settings.spread_hu if settings.spread_hu is not None else hi_limit
        return float(median), float(spread)
    values = hu[liver]
    if values.size > 200_000:  # a strided subsample gives the same median to < 1 HU, much faster
        values = values[:: values.size // 200_000]
    median = float(np.median(values))
    if settings.spread_hu is not None:
        return median, float(settings.spread_hu)
    mad = float(np.median(np.abs(values - median))) * _ROBUST_SIGMA
    return median, float(np.clip(mad, lo_limit, hi_limit))


def normalize(hu: np.ndarray, median: float, spread: float, settings: FeatureSettings, out: np.ndarray) -> int:
    """Write the intensity channels into out[0], out[1], ...; returns how many. "liver": (HU -
    median) / spread clipped to +-clip; "window": the HU window mapped to [0, 1]."""
    lo, hi = settings.hu_window
    n = 0
    if settings.normalization in ("liver", "both"):
        np.subtract(hu, np.float32(median), out=out[n])
        out[n] /= np.float32(spread)
        np.clip(out[n], -settings.clip, settings.clip, out=out[n])
        n += 1
    if settings.normalization in ("window", "both"):
        np.clip(hu, lo, hi, out=out[n])
        out[n] -= np.float32(lo)
        out[n] /= np.float32(hi - lo)
        n += 1
    return n
