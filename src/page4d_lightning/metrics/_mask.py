"""Dynamic-mask quality at the model's patch level: the predicted mask against the exact synthetic one.

A patch is dynamic in the GT when more than half of its pixels are (`geometry.patch_fraction` > 0.5, as
`page4d analyze-layers` labels patches) and
predicted dynamic when the model's `dynamic_mask` (0.5 - m, 1 = suppressed) is above 0.5. The counts are pooled
over all patches of all frames of all clips, then IoU = TP / (TP + FP + FN), precision = TP / (TP + FP),
recall = TP / (TP + FN); a ratio with a zero denominator is NaN (nothing to measure), never 0 or 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from page4d_lightning.geometry import patch_fraction

__all__ = ["MASK_KEYS", "mask_confusion", "mask_scores"]

MASK_KEYS = ("mask_iou", "mask_precision", "mask_recall")


def mask_confusion(pred_mask: Tensor, gt_masks: Tensor, patch_size: int, threshold: float = 0.5) -> Tensor:
    """pred_mask (..., h, w) dynamic probability per patch, gt_masks (..., h p, w p) bool per pixel -> (3,) int64
    counts (TP, FP, FN) of dynamic patches."""
    gt = patch_fraction(gt_masks, patch_size) > 0.5
    if gt.shape != pred_mask.shape:
        raise ValueError(f"pred_mask: expected the patch grid of gt_masks {tuple(gt.shape)}, "
                         f"got {tuple(pred_mask.shape)}")
    pred = pred_mask > threshold
    return torch.stack([(pred & gt).sum(), (pred & ~gt).sum(), (~pred & gt).sum()])


def mask_scores(counts: Tensor) -> dict[str, Tensor]:
    """(TP, FP, FN) counts -> {"mask_iou", "mask_precision", "mask_recall"} (NaN where a denominator is 0)."""
    tp, fp, fn = counts.double().unbind(-1)

    def ratio(num: Tensor, den: Tensor) -> Tensor:
        return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, float("nan")))

    return {"mask_iou": ratio(tp, tp + fp + fn), "mask_precision": ratio(tp, tp + fp),
            "mask_recall": ratio(tp, tp + fn)}
