"""Training patches: where to sample inside the liver, how to cut them out, how to augment them.

MTANN lineage: many patches from few cases. A handful of tumors is a tiny fraction of the liver,
so centres are drawn from four pools in fixed proportions: inside a tumor (one tumor chosen
uniformly, so small tumors count as much as big ones), on a tumor boundary (where Dice is won or
lost), anywhere in the liver, and "hard" liver voxels (the darkest-blob 10%: cysts, vessel
forks, the liver edge), which is what a dot filter alone gets wrong. Augmentation: flips, in-plane
90-degree rotations, isotropic scaling (tumors the user segments next are often bigger or smaller
than the ones trained on), intensity jitter, and optional polarity mirroring (hypodense tumors teach
hyperdense ones). Every random choice comes from one numpy Generator.

Arrays are (C, z, y, x) on the working grid; patch sizes in voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.lesions import label_lesions

POOLS = ("tumor", "boundary", "liver", "hard")


@dataclass
class PatchSettings:
    """Patch size (voxels, multiple of 8), pool proportions (tumor, boundary, liver, hard) and
    augmentation ranges. intensity_scale: +- relative gain on every channel; intensity_shift_hu:
    +- offset (HU) on the intensity channels, converted to each channel's units. polarity_flip:
    probability of mirroring a patch's intensities about the liver level (see polarity_plan); off
    by default (benchmarks/RESULTS.md, method changes)."""

    size: int = 32
    fractions: tuple = (0.3, 0.25, 0.25, 0.2)
    flip: bool = True
    rotate90: bool = True
    scale_range: tuple = (0.8, 1.25)
    intensity_scale: float = 0.1
    intensity_shift_hu: float = 8.0
    polarity_flip: float = 0.0

    def __post_init__(self):
        self.fractions = tuple(float(f) for f in self.fractions)
        self.scale_range = tuple(float(s) for s in self.scale_range)
        if len(self.fractions) != len(POOLS) or min(self.fractions) < 0 or sum(self.fractions) <= 0:
            raise ValueError(f"fractions must be {len(POOLS)} non-negative numbers for {POOLS}")


class CaseSampler:
    """Centre pools of one prepared case, and patch extraction from it.

    features (C, z, y, x) float32, tumor and liver (z, y, x) bool; `hu_per_unit` gives, per
    intensity channel, how many HU one unit is (None for Hessian channels, which get no offset).
    `allowed` (z, y, x) bool: where centres may lie and the loss counts (a validation region
    left out is False: patches may reach into it as context, but its labels never teach). The
    loss weight is 1 inside the liver and on tumors where allowed, 0 elsewhere.
    """

    def __init__(self, features, tumor, liver, hu_per_unit, allowed=None, hard_channel=None, flip_plan=None):
        region = liver if allowed is None else (liver & allowed)
        taught = tumor if allowed is None else (tumor & allowed)
        # One (C + 2) stack so a patch is one crop: features, then target, then loss weight.
        self._stack = np.concatenate([features, tumor[None].astype(np.float32), (region | taught)[None].astype(np.float32)])
        self.shape = tuple(tumor.shape)
        self.hu_per_unit = list(hu_per_unit)
        self.flip_plan = flip_plan
        components, count = label_lesions(tumor & region)
        order = np.argsort(components, axis=None, kind="stable")
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        starts = np.cumsum(sizes)
        self._tumor_voxels = [order[starts[i - 1] : starts[i]] for i in range(1, count + 1)]
        grown = ndimage.binary_dilation(tumor, iterations=2)
        shrunk = ndimage.binary_erosion(tumor, iterations=2)
        self._boundary = np.flatnonzero(grown & ~shrunk & (region | taught))
        self._liver = np.flatnonzero(region)
        score = -features[0] if hard_channel is None else features[hard_channel]
        candidates = region & ~grown
        if candidates.any():
            cut = np.percentile(score[candidates], 90.0)
            self._hard = np.flatnonzero(candidates & (score >= cut))
        else:
            self._hard = np.zeros(0, dtype=np.int64)

    @property
    def n_tumors(self) -> int:
        return len(self._tumor_voxels)

    def pool_sizes(self) -> dict:
        return {
            "tumor": int(sum(len(v) for v in self._tumor_voxels)),
            "boundary": len(self._boundary),
            "liver": len(self._liver),
            "hard": len(self._hard),
        }

    def draw_center(self, pool: str, rng: np.random.Generator) -> np.ndarray:
        """One centre (z, y, x) from a pool; empty pools fall back to the liver."""
        if pool == "tumor" and self._tumor_voxels:
            voxels = self._tumor_voxels[rng.integers(len(self._tumor_voxels))]
            flat = voxels[rng.integers(len(voxels))]
        elif pool == "boundary" and len(self._boundary):
            flat = self._boundary[rng.integers(len(self._boundary))]
        elif pool == "hard" and len(self._hard):
            flat = self._hard[rng.integers(len(self._hard))]
        elif len(self._liver):
            flat = self._liver[rng.integers(len(self._liver))]
        else:
            flat = rng.integers(int(np.prod(self.shape)))
        return np.array(np.unravel_index(flat, self.shape))

    def patch(self, center, settings: PatchSettings, rng: np.random.Generator):
        """(x (C, s, s, s), target (1, s, s, s), weight (1, s, s, s)) float32, augmented."""
        size = settings.size
        lo, hi = settings.scale_range
        scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else 1.0
        extent = max(8, int(round(size * scale)))
        block = crop_padded(self._stack, center, extent)
        if extent != size:
            block = resize_block(block, size)
        block = augment_geometry(block, settings, rng)
        x, target, weight = block[:-2], block[-2:-1], block[-1:]
        x = jitter_intensity(x, self.hu_per_unit, settings, rng)
        if self.flip_plan is not None and settings.polarity_flip > 0 and rng.random() < settings.polarity_flip:
            order, signs = self.flip_plan
            x = x[order] * signs[:, None, None, None]
        # Voxels mostly outside the liver (after resizing) weigh 0, the rest at least 1.
        weight = np.where(weight >= 0.5, np.maximum(weight, 1.0), 0.0)
        return np.ascontiguousarray(x), np.ascontiguousarray(target), np.ascontiguousarray(weight, dtype=np.float32)


def polarity_plan(channel_names) -> tuple | None:
    """How to mirror a patch's intensities about the liver level: (channel order, signs), or None
    when a channel cannot be mirrored (an absolute HU window has no liver level to mirror about).

    A handful of training tumors is mostly hypodense; hyperdense ones (HCC, hypervascular
    metastases) are then never found. Mirroring turns a darker-than-liver blob into a
    brighter-than-liver one: the liver-relative CT channel changes sign and the dark and bright
    Hessian channels swap (the blob measure of -I at bright polarity is that of I at dark)."""
    names = list(channel_names)
    order, signs = [], []
    for name in names:
        if name == "ct_liver":
            order.append(names.index(name))
            signs.append(-1.0)
        elif name.startswith("hessian_dark") or name.startswith("hessian_bright"):
            twin = name.replace("dark", "@").replace("bright", "dark").replace("@", "bright")
            if twin not in names:
                return None
            order.append(names.index(twin))
            signs.append(1.0)
        else:
            return None
    return np.asarray(order), np.asarray(signs, dtype=np.float32)


def crop_padded(array: np.ndarray, center, extent: int) -> np.ndarray:
    """A (C, e, e, e) block centred on `center` (z, y, x); outside the array the edge is repeated."""
    start = np.asarray(center, dtype=int) - extent // 2
    index = [np.clip(np.arange(s, s + extent), 0, n - 1) for s, n in zip(start, array.shape[1:])]
    inside = all(idx[0] == s and idx[-1] == s + extent - 1 for idx, s in zip(index, start))
    if inside:
        return array[:, start[0] : start[0] + extent, start[1] : start[1] + extent, start[2] : start[2] + extent].copy()
    return array[:, index[0]][:, :, index[1]][:, :, :, index[2]]


def resize_block(block: np.ndarray, size: int) -> np.ndarray:
    """Trilinear resize of a (C, e, e, e) block to (C, size, size, size): isotropic scaling."""
    import torch

    with torch.inference_mode():
        t = torch.from_numpy(np.ascontiguousarray(block))[None]
        return torch.nn.functional.interpolate(t, size=(size,) * 3, mode="trilinear", align_corners=False)[0].numpy()


def augment_geometry(block: np.ndarray, settings: PatchSettings, rng: np.random.Generator) -> np.ndarray:
    """Random flips along z, y, x and a random multiple of 90 degrees in the (y, x) plane."""
    if settings.flip:
        axes = tuple(a + 1 for a in range(3) if rng.random() < 0.5)
        if axes:
            block = np.flip(block, axis=axes)
    if settings.rotate90:
        k = int(rng.integers(4))
        if k:
            block = np.rot90(block, k=k, axes=(2, 3))
    return block


def jitter_intensity(x: np.ndarray, hu_per_unit, settings: PatchSettings, rng: np.random.Generator) -> np.ndarray:
    """Gain on all channels (Hessian responses are linear in the image), offset on intensity ones."""
    gain = np.float32(1.0 + rng.uniform(-settings.intensity_scale, settings.intensity_scale))
    shift_hu = rng.uniform(-settings.intensity_shift_hu, settings.intensity_shift_hu)
    x = x * gain
    for c, hu in enumerate(hu_per_unit):
        if hu:
            x[c] += np.float32(shift_hu / hu)
    return x


def draw_batch(samplers: list[CaseSampler], batch_size: int, settings: PatchSettings, rng: np.random.Generator):
    """A batch (x (B, C, s, s, s), target (B, 1, ...), weight (B, 1, ...)) from randomly chosen cases
    and pools; cases with tumors are chosen for tumor and boundary patches."""
    fractions = np.asarray(settings.fractions) / np.sum(settings.fractions)
    with_tumor = [s for s in samplers if s.n_tumors] or samplers
    xs, ts, ws = [], [], []
    for _ in range(batch_size):
        pool = POOLS[int(rng.choice(len(POOLS), p=fractions))]
        candidates = with_tumor if pool in ("tumor", "boundary") else samplers
        sampler = candidates[int(rng.integers(len(candidates)))]
        x, t, w = sampler.patch(sampler.draw_center(pool, rng), settings, rng)
        xs.append(x)
        ts.append(t)
        ws.append(w)
    return np.stack(xs), np.stack(ts), np.stack(ws)
