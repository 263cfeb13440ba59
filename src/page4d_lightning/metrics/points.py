"""PointMetrics: point-map accuracy / completeness / normal consistency averaged over clips, synced as sums.

Each clip is Sim(3)-aligned to GT on its own and scored by `functional.point_errors`; `compute` returns the
mean over clips (the official reconstruction tables average per-scene values; medians cannot be pooled).
Clips with undefined values (fewer than 3 valid points, degenerate alignment) are counted in `skipped`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from page4d_lightning.metrics.functional import POINT_KEYS, point_errors

__all__ = ["PointMetrics"]


class PointMetrics(Metric):
    """Mean over clips of POINT_KEYS (distances in GT units; normal consistency in [0, 1]).

    Distances are lower-is-better and normal consistency higher-is-better, so `higher_is_better` is None.
    """

    higher_is_better = None
    full_state_update = False
    is_differentiable = False

    def __init__(self, max_block_elems: int = 2**25, **kwargs) -> None:
        super().__init__(**kwargs)
        if max_block_elems < 1:
            raise ValueError(f"max_block_elems: expected >= 1, got {max_block_elems}")
        self.max_block_elems = max_block_elems
        for key in POINT_KEYS:
            self.add_state(f"{key}_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("skipped", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, gt: Tensor, mask: Tensor) -> None:
        """pred, gt: (B, S, H, W, 3) world points; mask: (B, S, H, W) bool valid GT pixels."""
        if pred.ndim != 5:
            raise ValueError(f"pred: expected (B, S, H, W, 3), got {tuple(pred.shape)}")
        if gt.shape[:1] != pred.shape[:1] or mask.shape[:1] != pred.shape[:1]:
            raise ValueError(
                f"gt, mask: expected batch size {pred.shape[0]}, got {tuple(gt.shape)} and {tuple(mask.shape)}"
            )
        for b in range(pred.shape[0]):  # clips differ in valid points: one nearest-neighbour search each
            errors = point_errors(pred[b].detach(), gt[b].detach(), mask[b], self.max_block_elems)
            if not all(bool(torch.isfinite(errors[k])) for k in POINT_KEYS):
                self.skipped = self.skipped + 1
                continue
            for key in POINT_KEYS:
                state = getattr(self, f"{key}_sum")
                setattr(self, f"{key}_sum", state + errors[key].to(state))
            self.count = self.count + 1

    def compute(self) -> dict[str, Tensor]:
        """POINT_KEYS -> means over the clips kept (NaN before any)."""
        return {key: getattr(self, f"{key}_sum") / self.count for key in POINT_KEYS}
