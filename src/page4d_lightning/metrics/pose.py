"""PoseMetrics: mean ATE / RPE over clips (evo protocol) and pooled pairwise AUC (VGGT), DDP-synced as sums.

Each clip is Sim(3)-aligned on its own (camera centres, Umeyama with scale); the per-clip RMSEs are summed
and `compute` returns their mean over clips, as the official evaluation averages per-sequence results.
Clips whose alignment is undefined (static centres: `functional.pose_errors` gives NaN and warns) are left
out of these means and counted in the `skipped` state. The AUC needs no alignment: the error histograms
of all frame pairs of all clips (skipped ones included) are pooled, as VGGT pools the pairs of a category.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from page4d_lightning.metrics.functional import POSE_KEYS, auc_from_histogram, pose_auc, pose_errors

__all__ = ["PoseMetrics"]


class PoseMetrics(Metric):
    """Mean over clips of {"ate", "rpe_trans" (GT units), "rpe_rot" (degrees)}, plus f"auc_{auc_threshold}".

    Errors are lower-is-better, the AUC higher-is-better, so `higher_is_better` is None.
    """

    higher_is_better = None
    full_state_update = False
    is_differentiable = False

    def __init__(self, auc_threshold: int = 30, **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(auc_threshold, bool) or not isinstance(auc_threshold, int) or auc_threshold < 1:
            raise ValueError(f"auc_threshold: expected a positive int (degrees), got {auc_threshold!r}")
        self.auc_threshold = auc_threshold
        f64 = torch.float64
        for key in POSE_KEYS:
            self.add_state(f"{key}_sum", torch.tensor(0.0, dtype=f64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=f64), dist_reduce_fx="sum")  # clips in the means
        self.add_state("skipped", torch.tensor(0.0, dtype=f64), dist_reduce_fx="sum")  # undefined alignment
        self.add_state("auc_histogram", torch.zeros(auc_threshold, dtype=f64), dist_reduce_fx="sum")
        self.add_state("auc_pairs", torch.tensor(0.0, dtype=f64), dist_reduce_fx="sum")

    def update(self, pred_extrinsics: Tensor, gt_extrinsics: Tensor) -> None:
        """pred_extrinsics, gt_extrinsics: (B, S, 3, 4) or (B, S, 4, 4) camera-from-world, S >= 2."""
        if pred_extrinsics.ndim != 4:
            raise ValueError(f"pred_extrinsics: expected (B, S, 3, 4), got {tuple(pred_extrinsics.shape)}")
        pred, gt = pred_extrinsics.detach(), gt_extrinsics.detach()
        errors = pose_errors(pred, gt)  # each (B,): one per clip
        ok = torch.stack([errors[k] for k in POSE_KEYS]).isfinite().all(0)  # (B,)
        for key in POSE_KEYS:
            state = getattr(self, f"{key}_sum")
            setattr(self, f"{key}_sum", state + errors[key][ok].sum().to(state))
        self.count = self.count + ok.sum().to(self.count)
        self.skipped = self.skipped + (~ok).sum().to(self.skipped)
        auc = pose_auc(pred, gt, self.auc_threshold)
        self.auc_histogram = self.auc_histogram + auc["histogram"].sum(0).to(self.auc_histogram)
        self.auc_pairs = self.auc_pairs + auc["pairs"].sum().to(self.auc_pairs)

    def compute(self) -> dict[str, Tensor]:
        """{"ate", "rpe_trans", "rpe_rot"}: means over the clips kept (NaN if none); f"auc_{T}": pooled AUC."""
        out = {key: getattr(self, f"{key}_sum") / self.count for key in POSE_KEYS}
        out[f"auc_{self.auc_threshold}"] = auc_from_histogram(self.auc_histogram, self.auc_pairs)
        return out
