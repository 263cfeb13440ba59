"""Building blocks of the DPT head: residual conv units, feature fusion and the "scratch" convs.

Module and attribute names follow the official VGGT/Depth-Anything code (`resConfUnit1`,
`out_conv`, `layer1_rn`, ...) so that official state dicts load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Largest output element count handed to one `F.interpolate` call (the official guard against
# 32-bit index overflow in the CUDA kernels); bigger inputs are split along the batch.
_INTERP_MAX_ELEMENTS = 1610612736


def chunked_interpolate(
    x: torch.Tensor,
    size: tuple[int, int] | None = None,
    scale_factor: float | None = None,
    align_corners: bool = True,
) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to `size` (or int(H * s), int(W * s)), chunked over B when huge."""
    if size is None:
        if scale_factor is None:
            raise ValueError("chunked_interpolate: give either size or scale_factor, got neither")
        size = (int(x.shape[-2] * scale_factor), int(x.shape[-1] * scale_factor))
    size = (int(size[0]), int(size[1]))
    n_out = size[0] * size[1] * x.shape[0] * x.shape[1]
    if n_out <= _INTERP_MAX_ELEMENTS:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
    chunks = torch.chunk(x, chunks=n_out // _INTERP_MAX_ELEMENTS + 1, dim=0)
    out = [F.interpolate(c, size=size, mode="bilinear", align_corners=align_corners) for c in chunks]
    return torch.cat(out, dim=0).contiguous()


class ResidualConvUnit(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): conv2(relu(conv1(relu(x)))) + relu(x), 3x3 convs with bias.

    The skip adds relu(x), not x: the official unit applies an in-place ReLU to its input before
    the skip connection, and the released weights were trained that way. Here it is written
    out-of-place, which gives the same values and gradients without mutating the caller's tensor.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        out = self.conv2(F.relu(self.conv1(x)))
        return out + x


class FeatureFusionBlock(nn.Module):
    """Fuse a coarse map with an optional skip map, upsample, project: (B, C, h, w) -> (B, C, h', w').

    forward(x) or forward(x, skip): out = rcu2(x + rcu1(skip)) (rcu1 only with a skip), then a
    bilinear resize (align_corners=True) to `size` or, without one, by 2, then a 1x1 `out_conv`.
    """

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, stride=1, padding=0, bias=True)
        self.has_residual = has_residual
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        out = x
        if self.has_residual:
            if skip is None:
                raise ValueError("FeatureFusionBlock: this block fuses a skip map, got skip=None")
            out = out + self.resConfUnit1(skip)
        out = self.resConfUnit2(out)
        if size is None:
            out = chunked_interpolate(out, scale_factor=2, align_corners=True)
        else:
            out = chunked_interpolate(out, size=(int(size[0]), int(size[1])), align_corners=True)
        return self.out_conv(out)


def make_scratch(in_channels: Sequence[int], features: int) -> nn.Module:
    """Container of the four 3x3 bias-free convs `layer{1..4}_rn`: in_channels[i] -> `features`."""
    scratch = nn.Module()
    for i, c in enumerate(in_channels):
        conv = nn.Conv2d(c, features, kernel_size=3, stride=1, padding=1, bias=False)
        scratch.add_module(f"layer{i + 1}_rn", conv)
    return scratch


def make_resize_layers(out_channels: Sequence[int]) -> nn.ModuleList:
    """Per-level resampling of the projected token maps: x4 and x2 transposed convs, identity, /2 conv."""
    c0, c1, _, c3 = out_channels
    return nn.ModuleList(
        [
            nn.ConvTranspose2d(c0, c0, kernel_size=4, stride=4, padding=0),
            nn.ConvTranspose2d(c1, c1, kernel_size=2, stride=2, padding=0),
            nn.Identity(),
            nn.Conv2d(c3, c3, kernel_size=3, stride=2, padding=1),
        ]
    )
