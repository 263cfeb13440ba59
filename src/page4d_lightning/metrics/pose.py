"""PoseMetrics: mean ATE / RPE over clips (evo protocol, see `functional.pose_errors`), DDP-synced as sums.

Each clip is Sim(3)-aligned on its own (camera centres, Umeyama with scale); the per-clip RMSEs are summed
and `compute` returns their mean over clips, as the official evaluation averages per-sequence results.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from page4d_lightning.metrics.functional import POSE_KEYS, pose_errors

__all__ = ["PoseMetrics"]


class PoseMetrics(Metric):
    """Mean over clips of {"ate", "rpe_trans" (GT units), "rpe_rot" (degrees)}; lower is better."""

    higher_is_better = False
    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for key in POSE_KEYS:
            self.add_state(f"{key}_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred_extrinsics: Tensor, gt_extrinsics: Tensor) -> None:
        """pred_extrinsics, gt_extrinsics: (B, S, 3, 4) or (B, S, 4, 4) camera-from-world, S >= 2."""
        if pred_extrinsics.ndim != 4:
            raise ValueError(f"pred_extrinsics: expected (B, S, 3, 4), got {tuple(pred_extrinsics.shape)}")
        errors = pose_errors(pred_extrinsics.detach(), gt_extrinsics.detach())  # each (B,): one per clip
        for key in POSE_KEYS:
            state = getattr(self, f"{key}_sum")
            setattr(self, f"{key}_sum", state + errors[key].sum().to(state))
        self.count = self.count + pred_extrinsics.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """{"ate", "rpe_trans", "rpe_rot"}: means over all clips seen (NaN before any update)."""
        return {key: getattr(self, f"{key}_sum") / self.count for key in POSE_KEYS}
