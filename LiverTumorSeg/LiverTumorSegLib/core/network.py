"""3D encoder-decoders: MHP-Net (lightweight, CT + Hessian channels) and a plain 3D U-Net baseline.

Both are the same fully convolutional shape: per level two 3x3x3 convolutions with batch norm
and ReLU, 2x max-pool down, 2x transposed convolution up, skip connections, a 1x1x1 head giving
one logit per voxel (the full patch is predicted, not its centre). Batch norm, not instance or
group norm: its statistics are frozen at inference, so a prediction does not depend on how big
the tile around a voxel is, which lets inference run over large tiles. Input (N, C, z, y, x)
with z, y, x multiples of `network.size_multiple` (2 ** (levels - 1)).

A saved model rebuilds its network from `spec` (a plain dict) with `build_network(spec)`.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES = ("mhpnet", "unet3d")


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class EncoderDecoder3d(nn.Module):
    """U-shaped 3D network; `widths` are the channels per level, finest first."""

    def __init__(self, in_channels: int, widths=(8, 16, 32, 64)):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2:
            raise ValueError("need at least two levels")
        self.in_channels = int(in_channels)
        self.widths = widths
        self.encoders = nn.ModuleList()
        c = self.in_channels
        for w in widths:
            self.encoders.append(_conv_block(c, w))
            c = w
        self.pool = nn.MaxPool3d(2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for deep, shallow in zip(widths[:0:-1], widths[-2::-1]):
            self.ups.append(nn.ConvTranspose3d(deep, shallow, 2, stride=2))
            self.decoders.append(_conv_block(2 * shallow, shallow))
        self.head = nn.Conv3d(widths[0], 1, 1)

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 1, z, y, x) for input (N, C, z, y, x)."""
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x)
            if i < len(self.encoders) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = decoder(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


class MHPNet(EncoderDecoder3d):
    """Lightweight network for CT + Hessian blob channels (well under 1M parameters).

    Channel-wise fusion at the input: the Hessian channels tell the first convolutions where
    ball-shaped dark or bright spots are, which a small network trained on a handful of tumors
    would otherwise have to learn from examples it does not have.
    """

    def __init__(self, in_channels: int = 3, widths=(8, 16, 32, 64)):
        super().__init__(in_channels, widths)


class UNet3D(EncoderDecoder3d):
    """Plain 3D U-Net baseline: CT channel only by default, wider (about 1.4M parameters)."""

    def __init__(self, in_channels: int = 1, widths=(16, 32, 64, 128)):
        super().__init__(in_channels, widths)


def default_spec(arch: str = "mhpnet", in_channels: int | None = None, widths=None) -> dict:
    """The plain-dict description a saved model stores to rebuild its network."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    defaults = {"mhpnet": (3, (8, 16, 32, 64)), "unet3d": (1, (16, 32, 64, 128))}[arch]
    return {
        "arch": arch,
        "in_channels": int(defaults[0] if in_channels is None else in_channels),
        "widths": [int(w) for w in (defaults[1] if widths is None else widths)],
    }


def build_network(spec: dict) -> EncoderDecoder3d:
    """Rebuild a network from its spec: {"arch": "mhpnet"|"unet3d", "in_channels": int, "widths": [...]}."""
    arch = spec.get("arch")
    cls = {"mhpnet": MHPNet, "unet3d": UNet3D}.get(arch)
    if cls is None:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    return cls(in_channels=int(spec["in_channels"]), widths=tuple(spec["widths"]))


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())
