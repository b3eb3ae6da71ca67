"""Multi-scale Hessian blob enhancement: the "H" of MHP-Net.

A tumor is roughly a ball; a vessel is a tube. At scale s the Hessian of the Gaussian-smoothed
image has three large eigenvalues of one sign inside a ball and only two inside a tube, so the
dot filter of Li, Sone and Doi (Med Phys 2003), B = |l3|^2 / |l1| with |l1| >= |l2| >= |l3|,
answers to balls and stays low on tubes and plates. Dark blobs (hypodense tumors, all
eigenvalues > 0) and bright blobs (hyperdense tumors, all < 0) come from one eigen-decomposition.

Arrays are (z, y, x) float32; `spacing_zyx` and scales are in mm. The Hessian is scale-normalised
by s^2 (s in mm), so a dark ball of radius r and contrast C answers most strongly at its centre for
s = r / sqrt(3), with B ~ 0.31 C: responses are in image units (HU in, HU out).
Large scales are computed on a block-averaged coarser grid and interpolated back, which keeps
the cost of a scale nearly independent of its size.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

POLARITIES = ("dark", "bright")
# A Gaussian of at least this many coarse voxels is sampled finely enough for finite differences.
_MIN_COARSE_SIGMA_VOX = 3.0


def blob_response(image: np.ndarray, spacing_zyx, scale_mm: float, polarity: str = "dark") -> np.ndarray:
    """Dot-filter response of one polarity at one scale, float32 (z, y, x), image units."""
    _check_polarity(polarity)
    return hessian_channels(image, spacing_zyx, (scale_mm,), (polarity,), "stack")[0]


def hessian_channels(
    image: np.ndarray,
    spacing_zyx,
    scales_mm=(3.0, 6.0, 12.0),
    polarities=("dark", "bright"),
    combine: str = "max",
    max_slab_voxels: int = 8_000_000,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Blob channels (C, z, y, x) float32.

    combine="max": one channel per polarity, the maximum over scales (valid because responses
    are scale-normalised); "stack": one channel per (polarity, scale), polarity-major.
    Volumes above max_slab_voxels are processed in z-slabs with enough overlap that the result
    is the same; the temporaries (about 12 volumes) then stay slab-sized. `out`: an existing
    float32 (C, z, y, x) array to fill (e.g. part of a features array).
    """
    if combine not in ("max", "stack"):
        raise ValueError(f"combine must be 'max' or 'stack', not {combine!r}")
    polarities = tuple(polarities)
    for p in polarities:
        _check_polarity(p)
    scales_mm = tuple(float(s) for s in scales_mm)
    spacing = np.asarray(spacing_zyx, dtype=float)
    if not scales_mm or not polarities:
        raise ValueError("need at least one scale and one polarity")
    if min(scales_mm) <= 0 or np.any(spacing <= 0) or len(spacing) != 3:
        raise ValueError("scales and the three spacings must be positive (mm)")
    image = np.asarray(image, dtype=np.float32)
    factors = [_block_factors(image.shape, spacing, s) for s in scales_mm]
    n_out = len(polarities) * (len(scales_mm) if combine == "stack" else 1)
    if out is None:
        out = np.empty((n_out,) + image.shape, dtype=np.float32)
    elif out.shape != (n_out,) + image.shape:
        raise ValueError(f"out has shape {out.shape}, expected {(n_out,) + image.shape}")
    for core, region in _slabs(image.shape, spacing, scales_mm, factors, max_slab_voxels):
        block = _channels(image[region], spacing, scales_mm, polarities, combine, factors)
        out[:, core] = block[:, core.start - region.start : core.stop - region.start]
    return out


def _channels(image, spacing, scales_mm, polarities, combine, factors) -> np.ndarray:
    per_scale = [_responses_at_scale(image, spacing, s, polarities, f) for s, f in zip(scales_mm, factors)]
    if combine == "stack":
        return np.stack([per_scale[j][i] for i in range(len(polarities)) for j in range(len(scales_mm))])
    out = np.empty((len(polarities),) + image.shape, dtype=np.float32)
    for i in range(len(polarities)):
        out[i] = per_scale[0][i]
        for responses in per_scale[1:]:
            np.maximum(out[i], responses[i], out=out[i])
    return out


def _check_polarity(polarity: str) -> None:
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, not {polarity!r}")


def _block_factors(shape, spacing, scale_mm: float) -> np.ndarray:
    """Per-axis block size of the coarser grid a scale is computed on (1 = full resolution)."""
    sigma_vox = scale_mm / spacing
    factors = np.maximum(1, np.floor(sigma_vox / _MIN_COARSE_SIGMA_VOX)).astype(int)
    return np.minimum(factors, np.maximum(1, np.array(shape) // 4))


def _slabs(shape, spacing, scales_mm, factors, max_voxels):
    """(core, region) z-slices: cores partition z; regions add a halo wider than every filter,
    and start on every scale's block grid, so slab results equal whole-volume results."""
    nz, plane = shape[0], int(shape[1]) * int(shape[2])
    if nz * plane <= max_voxels:
        return [(slice(0, nz), slice(0, nz))]
    step = int(np.lcm.reduce([int(f[0]) for f in factors]))
    halo = max(int(np.ceil(3.0 * s / spacing[0] + 3 * f[0] + 2)) for s, f in zip(scales_mm, factors))
    halo = -(-halo // step) * step
    core = max(step, (max_voxels // plane - 2 * halo) // step * step)
    return [(slice(z, min(nz, z + core)), slice(max(0, z - halo), min(nz, z + core + halo))) for z in range(0, nz, core)]


def _responses_at_scale(image, spacing, scale_mm, polarities, factors) -> list[np.ndarray]:
    """Smooth (on a coarser grid when the scale allows), Hessian, eigenvalues, dot filter."""
    sigma_vox = scale_mm / spacing
    coarse = block_mean(image, factors)
    # Block averaging by k already blurs like a box of variance (k^2 - 1) / 12 fine voxels.
    residual = (sigma_vox / factors) ** 2 - (factors**2 - 1) / (12.0 * factors**2)
    smoothed = ndimage.gaussian_filter(coarse, np.sqrt(np.maximum(residual, 0.25)), mode="nearest", truncate=3.0)
    eig_max, eig_min = _hessian_extreme_eigenvalues(smoothed, spacing * factors, scale_mm)
    responses = []
    for polarity in polarities:
        if polarity == "dark":  # minimum of intensity: all eigenvalues > 0, |l3| = min, |l1| = max
            r = np.where(eig_min > 0, eig_min * eig_min / np.maximum(eig_max, 1e-12), 0.0)
        else:  # maximum of intensity: all eigenvalues < 0, |l3| = -max, |l1| = -min
            r = np.where(eig_max < 0, eig_max * eig_max / np.maximum(-eig_min, 1e-12), 0.0)
        responses.append(_upsample(r.astype(np.float32, copy=False), factors, image.shape))
    return responses


def block_mean(image: np.ndarray, factors) -> np.ndarray:
    """Average non-overlapping k_z x k_y x k_x blocks (edge-padded to whole blocks)."""
    if np.all(factors == 1):
        return image
    pad = [(0, (-n) % k) for n, k in zip(image.shape, factors)]
    padded = np.pad(image, pad, mode="edge") if any(p[1] for p in pad) else image
    (nz, ny, nx), (kz, ky, kx) = padded.shape, factors
    blocks = padded.reshape(nz // kz, kz, ny // ky, ky, nx // kx, kx)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32)


def _upsample(coarse: np.ndarray, factors, shape) -> np.ndarray:
    """Linear interpolation from block centres back to the fine grid (inverse of `block_mean`)."""
    if np.all(factors == 1):
        return coarse
    out = ndimage.zoom(coarse, factors, order=1, mode="nearest", grid_mode=True, prefilter=False)
    return np.ascontiguousarray(out[: shape[0], : shape[1], : shape[2]])


def _hessian_extreme_eigenvalues(smoothed: np.ndarray, spacing, scale_mm: float):
    """Largest and smallest eigenvalue of the s^2-normalised Hessian (central differences, mm)."""
    g = np.pad(smoothed, 1, mode="edge")
    c = g[1:-1, 1:-1, 1:-1]
    norm = scale_mm * scale_mm
    h = {}
    for a in range(3):
        plus = _shifted(g, {a: 1})
        minus = _shifted(g, {a: -1})
        h[a, a] = (plus + minus - 2.0 * c) * np.float32(norm / spacing[a] ** 2)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        d = _shifted(g, {a: 1, b: 1}) - _shifted(g, {a: 1, b: -1}) - _shifted(g, {a: -1, b: 1}) + _shifted(g, {a: -1, b: -1})
        h[a, b] = d * np.float32(norm / (4.0 * spacing[a] * spacing[b]))
    return symmetric_eigenvalues_extremes(h[0, 0], h[1, 1], h[2, 2], h[0, 1], h[0, 2], h[1, 2])


def _shifted(padded: np.ndarray, shifts: dict) -> np.ndarray:
    """View of the 1-voxel-padded array shifted by -1/0/+1 along the given axes."""
    index = []
    for axis in range(3):
        s = shifts.get(axis, 0)
        stop = padded.shape[axis] - 1 + s
        index.append(slice(1 + s, stop))
    return padded[tuple(index)]


def symmetric_eigenvalues_extremes(a11, a22, a33, a12, a13, a23):
    """Largest and smallest eigenvalues of symmetric 3x3 matrices given element-wise (vectorised).

    Closed form (trigonometric solution of the characteristic cubic, Smith 1961); float32 arrays.
    The middle eigenvalue is trace - max - min if a caller needs it.
    """
    q = (a11 + a22 + a33) / 3.0
    b11, b22, b33 = a11 - q, a22 - q, a33 - q
    p1 = a12 * a12 + a13 * a13 + a23 * a23
    p2 = b11 * b11 + b22 * b22 + b33 * b33 + 2.0 * p1
    p = np.sqrt(p2 / 6.0)
    safe_p = np.where(p > 0, p, 1.0)
    det = b11 * (b22 * b33 - a23 * a23) - a12 * (a12 * b33 - a23 * a13) + a13 * (a12 * a23 - b22 * a13)
    r = np.clip(det / (2.0 * safe_p * safe_p * safe_p), -1.0, 1.0)
    phi = np.arccos(r) / 3.0
    eig_max = q + 2.0 * p * np.cos(phi)
    eig_min = q + 2.0 * p * np.cos(phi + np.float32(2.0 * np.pi / 3.0))
    return eig_max.astype(np.float32, copy=False), eig_min.astype(np.float32, copy=False)
