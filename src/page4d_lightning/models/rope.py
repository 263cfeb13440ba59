"""2D rotary position embedding (RoPE) over patch grid coordinates, as in VGGT.

Half of each head's channels rotate with the patch row (y), the other half with the column (x),
each half as 1D RoPE with base frequency 100; special tokens sit at (0, 0) (no rotation) and
patches at (row + 1, col + 1). The aggregator builds one `RopeTable` per forward and every block
reuses it, so a block only pays two multiplies and an add per rotated tensor.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def patch_positions(batch: int, height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Integer (row, col) of every patch in row-major order: (batch, height * width, 2) int64."""
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    grid = torch.cartesian_prod(rows, cols)  # (height * width, 2), row-major
    return grid.view(1, height * width, 2).expand(batch, -1, -1).clone()


class PositionGetter:
    """Callable returning `patch_positions(batch, height, width, device)` (the official interface)."""

    def __call__(self, batch: int, height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
        return patch_positions(batch, height, width, device)


class RopeTable(NamedTuple):
    """Per-token rotation for a head dim D: cos (B, 1, N, D) and sign-folded sin (B, 1, N, D)."""

    cos: torch.Tensor
    sin: torch.Tensor


def _swap_quarters(x: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (..., D): exchange the two quarters inside each half ([a b | c d] -> [b a | d c])."""
    quarter = x.shape[-1] // 4
    return x.unflatten(-1, (2, 2, quarter)).flip(-2).flatten(-3)  # (..., D) -> (..., 2, 2, D/4) -> (..., D)


class RotaryPositionEmbedding2D(nn.Module):
    """2D RoPE with base `frequency` (100 in VGGT); no parameters.

    forward(tokens (B, heads, N, D), positions (B, N, 2) int64 (y, x) or a `RopeTable`) ->
    (B, heads, N, D); D must be a multiple of 4. Per half h = [h1 h2]: h * cos + [-h2 h1] * sin.
    """

    def __init__(self, frequency: float = 100.0) -> None:
        super().__init__()
        self.frequency = float(frequency)

    def extra_repr(self) -> str:
        return f"frequency={self.frequency}"

    def _cos_sin(self, dim: int, length: int, device: torch.device, dtype: torch.dtype):
        """cos / sin tables (length, dim) for positions 0..length-1; angles cast to `dtype` first."""
        exponents = torch.arange(0, dim, 2, device=device).float() / dim
        inv_freq = 1.0 / (self.frequency**exponents)
        angles = torch.outer(torch.arange(length, device=device, dtype=inv_freq.dtype), inv_freq).to(dtype)
        angles = torch.cat((angles, angles), dim=-1)  # (length, dim/2) -> (length, dim)
        return angles.cos(), angles.sin()

    def table(self, positions: torch.Tensor, head_dim: int, dtype: torch.dtype = torch.float32) -> RopeTable:
        """`RopeTable` for positions (B, N, 2) int64 and heads of `head_dim` channels."""
        if head_dim % 4:
            raise ValueError(f"head_dim: expected a multiple of 4 for 2D RoPE, got {head_dim}")
        half = head_dim // 2
        cos, sin = self._cos_sin(half, int(positions.max()) + 1, positions.device, dtype)
        y, x = positions[..., 0], positions[..., 1]
        cos_full = torch.cat([F.embedding(y, cos), F.embedding(x, cos)], dim=-1)  # (B, N, D): [y half | x half]
        sin_full = torch.cat([F.embedding(y, sin), F.embedding(x, sin)], dim=-1)
        sign = torch.ones(head_dim, device=positions.device, dtype=dtype).unflatten(0, (2, 2, -1))
        sign[:, 0] = -1  # rotate_half: the first quarter of each half takes -sin
        return RopeTable(cos_full[:, None], (sin_full.unflatten(-1, (2, 2, -1)) * sign).flatten(-3)[:, None])

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | RopeTable) -> torch.Tensor:
        if isinstance(positions, RopeTable):
            table = positions
        else:
            table = self.table(positions, tokens.shape[-1], tokens.dtype)
        cos, sin = table.cos.to(tokens.dtype), table.sin.to(tokens.dtype)
        return tokens * cos + _swap_quarters(tokens) * sin
