"""DynamicMaskMetrics: patch-level IoU / precision / recall of the predicted dynamic mask (`functional.mask_scores`),
pooled over every patch of every clip and synced as counts."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from page4d_lightning.metrics.functional import mask_confusion, mask_scores

__all__ = ["DynamicMaskMetrics"]


class DynamicMaskMetrics(Metric):
    """{"mask_iou", "mask_precision", "mask_recall"} of dynamic patches (a patch is dynamic when more than half its
    pixels are), pooled over all patches seen."""

    higher_is_better = True
    full_state_update = False
    is_differentiable = False

    def __init__(self, patch_size: int, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.patch_size, self.threshold = patch_size, threshold
        self.add_state("counts", torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")  # TP, FP, FN

    def update(self, pred_mask: Tensor, gt_masks: Tensor) -> None:
        """pred_mask: (B, S, H/p, W/p) dynamic probability; gt_masks: (B, S, H, W) bool, True = dynamic pixel."""
        counts = mask_confusion(pred_mask.detach(), gt_masks.detach(), self.patch_size, self.threshold)
        self.counts = self.counts + counts.to(self.counts)

    def compute(self) -> dict[str, Tensor]:
        return mask_scores(self.counts)
