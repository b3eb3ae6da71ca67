"""The liver U-Net: a PyTorch port of the whole-liver network of pyliverlesionseg 0.3
(Apache-2.0, KU Leuven; converted weights in Resources/Models/liver/, NOTICE there).

Arrays here are torch tensors (N, C, X, Y, Z): the network was trained on RAS volumes indexed
(x, y, z) at 3 mm voxels, and its 3x3x1 kernels are in-plane (x, y). Four levels, each pooled by 3
(an input side must be a multiple of 27); "same" zero padding; no batch norm, no dropout. Before
every LeakyReLU(0.01) each channel of each sample is standardised over the whole patch
(`channel_normalise`); the first convolution sees the input itself. Decoder levels concatenate the
encoder's pre-pool output, centre-cropped, before the upsampled path; upsampling is nearest x3
followed by a 3-voxel mean (`upsample3`), so a side of n becomes 3n - 2 and the output is the
input less 13 voxels at each end of every axis (`output_size`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ModelError

EPSILON = 1e-7  # Keras' K.epsilon(), added to the standard deviation (not under the square root)
NEGATIVE_SLOPE = 0.01
POOL = 3
LEVELS = 4
MARGIN = 13  # voxels lost at each end of an axis between input and output
# (kernel size (x, y, z), input channels, output channels) of the 15 convolutions, in the
# order the original numbers them: encoder 1-8, decoder 9-14, the 1x1x1 output 15.
CONVOLUTIONS = (
    ((3, 3, 1), 1, 20), ((3, 3, 3), 20, 40),
    ((3, 3, 1), 40, 40), ((3, 3, 3), 40, 80),
    ((3, 3, 1), 80, 80), ((3, 3, 3), 80, 160),
    ((3, 3, 3), 160, 160), ((3, 3, 3), 160, 160),
    ((3, 3, 3), 320, 160), ((3, 3, 1), 160, 80),
    ((3, 3, 3), 160, 80), ((3, 3, 1), 80, 40),
    ((3, 3, 3), 80, 40), ((3, 3, 1), 40, 20),
    ((1, 1, 1), 20, 1),
)


def output_size(input_size) -> tuple[int, ...]:
    """Output side lengths (voxels) for input side lengths, each a multiple of 27."""
    sizes = tuple(int(s) for s in input_size)
    for s in sizes:
        if s < 2 * POOL ** (LEVELS - 1) or s % POOL ** (LEVELS - 1):
            raise ValueError(f"input side {s} must be a multiple of {POOL ** (LEVELS - 1)} and at least 54")
    return tuple(s - 2 * MARGIN for s in sizes)


def channel_normalise(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(x - mean) / (std + 1e-7) per sample and channel over all voxels, population std.

    This is the original's Lambda layer, not InstanceNorm (whose eps sits under the square root:
    different on a near-constant channel). `out=x` normalises in place (saves a full-size copy).
    The sums run one axis at a time: each partial sum is short, so float32 stays within ~1e-6 of
    a float64 reference (one long float32 sum over 5 million voxels drifts by ~1e-3), and the
    norm of the centred values gives the std without a squared copy.
    """
    n, c, *spatial = x.shape
    count = spatial[0] * spatial[1] * spatial[2]
    norm = torch.linalg.vector_norm
    if x.is_contiguous(memory_format=torch.channels_last_3d):
        def total(t, reduce):  # over (y, z) together, then x: channels are the contiguous axis
            return reduce(reduce(t.permute(0, 2, 3, 4, 1).reshape(n, spatial[0], -1, c), 2), 1).reshape(n, c, 1, 1, 1)
    else:
        def total(t, reduce):
            return reduce(reduce(reduce(t, 4), 3), 2).reshape(n, c, 1, 1, 1)
    mean = total(x, lambda t, d: t.sum(dim=d)) / count
    centred = out.sub_(mean) if out is not None else x - mean
    std = total(centred, lambda t, d: norm(t, dim=d)) / count ** 0.5
    return centred.div_(std + EPSILON)


def upsample3(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour x3, then the mean over 3 voxels (stride 1) along each axis: a side of n
    becomes 3n - 2, and between neighbours a and b the values are a, (2a + b) / 3, (a + 2b) / 3, b,
    which is trilinear interpolation with the corner voxels aligned (computed so: no 27-fold
    intermediate; equal to within ~1e-5 of the values, float32 positions)."""
    size = tuple(POOL * s - (POOL - 1) for s in x.shape[2:])
    return F.interpolate(x, size=size, mode="trilinear", align_corners=True)


def centre_crop(x: torch.Tensor, size) -> torch.Tensor:
    """The central `size` (x, y, z) voxels of x; the difference must be even on every axis."""
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], size):
        extra = have - want
        if extra < 0 or extra % 2:
            raise ValueError(f"cannot centre-crop {tuple(x.shape[2:])} to {tuple(size)}")
        slices.append(slice(extra // 2, extra // 2 + want))
    return x[tuple(slices)]


class LiverUNet(nn.Module):
    """The network; `forward` gives the liver probability (sigmoid), 13 voxels smaller per side."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv3d(cin, cout, kernel, padding=tuple(k // 2 for k in kernel)) for kernel, cin, cout in CONVOLUTIONS
        )

    def _norm_act_conv(self, x: torch.Tensor, index: int, inplace: bool) -> torch.Tensor:
        x = channel_normalise(x, out=x if inplace else None)
        x = F.leaky_relu(x, NEGATIVE_SLOPE, inplace=True)
        return self.convs[index](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output_size(x.shape[2:])  # checks the input size
        # Channels-last: oneDNN's 3D convolutions run ~1.7x faster so (benchmarks/RESULTS.md).
        x = x.contiguous(memory_format=torch.channels_last_3d)
        c = self.convs
        skips = []
        # Encoder: level 1 starts from the raw input; each later one from the pooled level above.
        path = c[0](x)
        path = self._norm_act_conv(path, 1, inplace=True)
        for level in range(1, LEVELS):
            skips.append(path)
            path = F.max_pool3d(path, POOL)
            path = self._norm_act_conv(path, 2 * level, inplace=True)
            path = self._norm_act_conv(path, 2 * level + 1, inplace=True)
        # Decoder: the skip tensors are read again (cropped), so they are normalised out of place.
        for level, skip in zip(range(LEVELS - 2, -1, -1), reversed(skips)):
            path = upsample3(path)
            path = torch.cat([centre_crop(skip, path.shape[2:]), path], dim=1)
            skips[level] = None
            del skip
            path = self._norm_act_conv(path, 8 + 2 * (LEVELS - 2 - level), inplace=True)
            path = self._norm_act_conv(path, 9 + 2 * (LEVELS - 2 - level), inplace=True)
        return torch.sigmoid(self._norm_act_conv(path, 14, inplace=True))


def liver_network_from_arrays(weights: dict) -> LiverUNet:
    """A float32 network from {'conv1.weight': (Cout, Cin, kx, ky, kz), 'conv1.bias': (Cout,), ...}
    (numbered 1-15 as in `CONVOLUTIONS`); any float dtype (the shipped file is float16)."""
    network = LiverUNet()
    state = {}
    for i, (kernel, cin, cout) in enumerate(CONVOLUTIONS):
        w = np.asarray(weights[f"conv{i + 1}.weight"], dtype=np.float32)
        b = np.asarray(weights[f"conv{i + 1}.bias"], dtype=np.float32)
        if w.shape != (cout, cin, *kernel) or b.shape != (cout,):
            raise ValueError(f"conv{i + 1}: weight {w.shape} / bias {b.shape}, expected {(cout, cin, *kernel)} / {(cout,)}")
        state[f"convs.{i}.weight"] = torch.from_numpy(w)
        state[f"convs.{i}.bias"] = torch.from_numpy(b)
    network.load_state_dict(state)
    return network.eval().to(memory_format=torch.channels_last_3d)


def load_liver_network(path) -> LiverUNet:
    """The network from a .npz of the converted weights (scripts/convert_liver_model.py)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"the liver model {path} is missing; reinstall LiverTumorSeg, or give a liver mask (--liver)")
    try:
        with np.load(path) as data:
            return liver_network_from_arrays({name: data[name] for name in data.files})
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"the liver model {path} cannot be read ({exc}); reinstall LiverTumorSeg, or give a liver "
                         "mask (--liver)") from exc
