"""PAGE-4D's dynamics mask: a per-patch mask head and the rank-1 attention bias it drives.

The head reads the (detached) tokens after an early frame block and predicts, per patch, the
official mask value m = sigmoid(logit) - 0.5 in (-0.5, 0.5). In the middle global blocks every
special (camera / register) QUERY token gets the logit bias `scale * strength * m_j` on patch KEY j;
special-token keys get no bias and patch queries are not biased. Low m (near -0.5) therefore
suppresses a patch for camera estimation: `dynamic_mask = 0.5 - m` (1 = suppressed, dynamic).
"""

from __future__ import annotations

import torch
from torch import nn


class SpatialMaskHead(nn.Module):
    """Depthwise 3x3 conv -> GELU -> 1x1 conv (hidden) -> GELU -> 1x1 conv to one logit per patch.

    forward(tokens (B, S, P, C), patch_start_idx, h, w) -> m (B, S, h*w) in (-0.5, 0.5).
    The patch features are standardised per channel over the h x w grid (unbiased std, clamped at
    1e-6; a 1-patch grid standardises to 0) before the convs, and their channel mean (detached) is
    added to the logit, as officially.
    """

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.head0 = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.GELU(),
            nn.Conv2d(dim, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, tokens: torch.Tensor, patch_start_idx: int, h: int, w: int) -> torch.Tensor:
        batch, frames, _, dim = tokens.shape
        patches = tokens[:, :, patch_start_idx:].reshape(batch * frames, h * w, dim)  # (B*S, h*w, C)
        fmap = patches.transpose(1, 2).reshape(batch * frames, dim, h, w)  # (B*S, C, h, w)
        mean = fmap.mean(dim=(2, 3), keepdim=True)
        # A single-patch grid has no unbiased std (NaN officially): it standardises to 0 here.
        std = fmap.std(dim=(2, 3), keepdim=True) if h * w > 1 else torch.zeros_like(mean)
        std = std.clamp(min=1e-6)
        fmap = (fmap - mean) / std
        logit = self.head0(fmap) + fmap.mean(dim=1, keepdim=True).detach()  # (B*S, 1, h, w)
        m = torch.sigmoid(logit) - 0.5
        return m.reshape(batch, frames, h * w)  # (B*S, 1, h, w) -> (B, S, h*w)


def bias_inputs(
    m: torch.Tensor, patch_start_idx: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-1 bias factors for global attention over S frames of P = patch_start_idx + h*w tokens.

    m: (B, S, h*w) mask values -> (query_weight (B, S*P), key_value (B, S*P)): query_weight is
    `scale` on every special token (camera, registers) and 0 on patches; key_value is 0 on special
    tokens and m on patches. logit[i, j] += query_weight[i] * key_value[j].
    """
    batch, frames, _ = m.shape
    special = m.new_zeros(batch, frames, patch_start_idx)
    key_value = torch.cat([special, m], dim=2).reshape(batch, -1)  # (B, S, P) -> (B, S*P)
    query_weight = torch.cat([special + scale, torch.zeros_like(m)], dim=2).reshape(batch, -1)
    return query_weight, key_value
