"""DepthMetrics: valid-pixel-weighted depth errors over clips (see `functional.depth_errors`), synced as sums.

Each clip is aligned on its own (`align`), its metrics are weighted by its valid GT pixels, and `compute`
divides by the total pixel count: the official video-depth average (np.average weighted by valid_pixels).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from page4d_lightning.metrics.functional import DEPTH_ALIGNERS, DEPTH_KEYS, depth_errors

__all__ = ["DepthMetrics"]


class DepthMetrics(Metric):
    """Pixel-weighted means of {"abs_rel", "sq_rel", "rmse", "log_rmse", "delta_1_25", ...} over clips.

    Mixed directions (deltas: higher is better; errors: lower), so `higher_is_better` is None.
    """

    higher_is_better = None
    full_state_update = False
    is_differentiable = False

    def __init__(
        self,
        align: str = "median",
        per: str = "frame",
        max_depth: float | None = None,
        clip_pred: float | tuple[float, float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if align not in DEPTH_ALIGNERS:
            raise ValueError(f"align: expected one of {sorted(DEPTH_ALIGNERS)}, got {align!r}")
        if per not in ("frame", "sequence"):
            raise ValueError(f"per: expected 'frame' or 'sequence', got {per!r}")
        self.align, self.per, self.max_depth, self.clip_pred = align, per, max_depth, clip_pred
        for key in DEPTH_KEYS:
            self.add_state(f"{key}_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("valid_pixels", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, gt: Tensor) -> None:
        """pred, gt: (B, S, H, W) z-depth; gt <= 0 is invalid; clips without a valid pixel add nothing."""
        if pred.ndim != 4:
            raise ValueError(f"pred: expected (B, S, H, W), got {tuple(pred.shape)}")
        errors = depth_errors(
            pred.detach(), gt.detach(), align=self.align, per=self.per,
            max_depth=self.max_depth, clip_pred=self.clip_pred,
        )  # each (B,)
        weight = errors["valid_pixels"]
        for key in DEPTH_KEYS:
            weighted = torch.where(weight > 0, errors[key] * weight, torch.zeros_like(weight))
            state = getattr(self, f"{key}_sum")
            setattr(self, f"{key}_sum", state + weighted.sum().to(state))
        self.valid_pixels = self.valid_pixels + weight.sum().to(self.valid_pixels)

    def compute(self) -> dict[str, Tensor]:
        """DEPTH_KEYS -> pixel-weighted means (NaN if no valid pixel was seen)."""
        return {key: getattr(self, f"{key}_sum") / self.valid_pixels for key in DEPTH_KEYS}
