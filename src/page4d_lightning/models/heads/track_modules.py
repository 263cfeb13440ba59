"""Feature sampling and the correlation pyramid of the tracker (official VGGT / CoTracker semantics).

Coordinates are (x, y) pixels of the sampled map with align_corners=True: (0, 0) is the centre of
the top-left cell and (W-1, H-1) the centre of the bottom-right one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bilinear_sampler(
    input: torch.Tensor, coords: torch.Tensor, align_corners: bool = True, padding_mode: str = "border"
) -> torch.Tensor:
    """Sample (B, C, H, W) at (B, Ho, Wo, 2) pixel xy -> (B, C, Ho, Wo), bilinear.

    Like `F.grid_sample` but in pixels. As in the official tracker, no gradient flows into
    `coords` (they are detached); gradients reach `input` only.
    """
    if input.dim() != 4:
        raise ValueError(f"input: expected (B, C, H, W), got {tuple(input.shape)}")
    if coords.dim() != 4 or coords.shape[-1] != 2 or coords.shape[0] != input.shape[0]:
        raise ValueError(f"coords: expected (B={input.shape[0]}, Ho, Wo, 2), got {tuple(coords.shape)}")
    coords = coords.detach().to(device=input.device, dtype=input.dtype)
    H, W = input.shape[-2:]
    if align_corners:
        scale = [2.0 / max(W - 1, 1), 2.0 / max(H - 1, 1)]
    else:
        scale = [2.0 / W, 2.0 / H]
    grid = coords * torch.tensor(scale, device=coords.device, dtype=coords.dtype) - 1  # pixels -> [-1, 1]
    return F.grid_sample(input, grid, align_corners=align_corners, padding_mode=padding_mode)


def sample_features4d(input: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Features (B, C, H, W) at points (B, N, 2) pixel xy -> (B, N, C), bilinear, border padding."""
    if coords.dim() != 3 or coords.shape[-1] != 2:
        raise ValueError(f"coords: expected (B, N, 2), got {tuple(coords.shape)}")
    feats = bilinear_sampler(input, coords.unsqueeze(2))  # (B, N, 2) -> (B, N, 1, 2); out (B, C, N, 1)
    return feats.squeeze(3).permute(0, 2, 1)  # (B, C, N, 1) -> (B, N, C)


class CorrBlock:
    """Correlation pyramid between track features and per-frame feature maps (not an nn.Module).

    Level l holds the feature maps average-pooled l times by 2. `corr_sample` correlates each
    track's feature with every pixel of its frame (dot product / sqrt(C)) and samples the
    (2r+1) x (2r+1) window around the track's position at that level.
    """

    def __init__(self, fmaps: torch.Tensor, num_levels: int = 4, radius: int = 4, padding_mode: str = "zeros") -> None:
        """fmaps: (B, S, C, H, W) feature maps; each of the `num_levels` levels halves H and W."""
        if fmaps.dim() != 5:
            raise ValueError(f"fmaps: expected (B, S, C, H, W), got {tuple(fmaps.shape)}")
        B, S, C, H, W = fmaps.shape
        if min(H, W) < 2 ** (num_levels - 1):
            raise ValueError(
                f"fmaps: a {H}x{W} feature map is too small for num_levels={num_levels} "
                f"(needs H, W >= {2 ** (num_levels - 1)})"
            )
        self.num_levels = num_levels
        self.radius = radius
        self.padding_mode = padding_mode
        self.fmaps_pyramid = [fmaps]
        current = fmaps
        for _ in range(num_levels - 1):
            pooled = F.avg_pool2d(current.reshape(B * S, C, *current.shape[-2:]), kernel_size=2, stride=2)
            current = pooled.reshape(B, S, C, *pooled.shape[-2:])  # (B*S, C, h, w) -> (B, S, C, h, w)
            self.fmaps_pyramid.append(current)
        d = torch.linspace(-radius, radius, 2 * radius + 1, device=fmaps.device, dtype=fmaps.dtype)
        # (2r+1, 2r+1, 2): delta[i, j] = (d_i, d_j) is added to (x, y), so window index i*(2r+1) + j
        # offsets x by d_i and y by d_j (the official layout, which the corr MLP weights expect).
        self.delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1)

    def corr_sample(self, targets: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """targets (B, S, N, C) and coords (B, S, N, 2) level-0 pixel xy -> (B, S, N, L (2r+1)^2)."""
        B, S, N, C = targets.shape
        if coords.shape != (B, S, N, 2):
            raise ValueError(f"coords: expected (B={B}, S={S}, N={N}, 2), got {tuple(coords.shape)}")
        side = 2 * self.radius + 1
        delta = self.delta.to(device=coords.device, dtype=coords.dtype).view(1, side, side, 2)
        out = []
        for level, fmaps in enumerate(self.fmaps_pyramid):
            _, _, Cf, h, w = fmaps.shape
            corrs = torch.matmul(targets, fmaps.reshape(B, S, Cf, h * w)) / math.sqrt(Cf)  # (B, S, N, h*w)
            centroid = coords.reshape(B * S * N, 1, 1, 2) / (2**level)
            sampled = bilinear_sampler(
                corrs.reshape(B * S * N, 1, h, w), centroid + delta, padding_mode=self.padding_mode
            )  # (B*S*N, 1, 2r+1, 2r+1)
            out.append(sampled.reshape(B, S, N, side * side))  # (B*S*N, 1, 2r+1, 2r+1) -> (B, S, N, (2r+1)^2)
        return torch.cat(out, dim=-1).contiguous()
