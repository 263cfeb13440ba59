"""TrackingMetrics: TAP-Vid metrics (see `functional.tracking_errors`) averaged over clips, synced as sums.

TAP-Vid reports per-video numbers and averages them over videos; `compute` does the same over clips.
Clips with undefined metrics (no GT-visible evaluation point: NaN and a warning) are counted in `skipped`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from page4d_lightning.metrics.functional import TRACKING_KEYS, tracking_errors

__all__ = ["TrackingMetrics"]


class TrackingMetrics(Metric):
    """Mean over clips of {"delta_avg", "average_jaccard", "occlusion_accuracy", "pts_within_*", "jaccard_*"}."""

    higher_is_better = True
    full_state_update = False
    is_differentiable = False

    def __init__(self, query_mode: str = "first", vis_threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if query_mode not in ("first", "strided"):
            raise ValueError(f"query_mode: expected 'first' or 'strided', got {query_mode!r}")
        self.query_mode, self.vis_threshold = query_mode, vis_threshold
        for key in TRACKING_KEYS:
            self.add_state(f"{key}_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("skipped", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        pred_tracks: Tensor,
        pred_vis: Tensor,
        gt_tracks: Tensor,
        gt_vis: Tensor,
        image_hw: tuple[int, int],
        query_frame: int | Tensor = 0,
        track_mask: Tensor | None = None,
    ) -> None:
        """pred_tracks, gt_tracks: (B, S, N, 2) pixels (x, y); pred_vis, gt_vis: (B, S, N) bool or probability;
        image_hw: (H, W) of the image the pixels refer to; query_frame: int or (B, N); track_mask: (B, N)."""
        if pred_tracks.ndim != 4:
            raise ValueError(f"pred_tracks: expected (B, S, N, 2), got {tuple(pred_tracks.shape)}")
        errors = tracking_errors(
            pred_tracks.detach(), pred_vis.detach(), gt_tracks.detach(), gt_vis.detach(), image_hw,
            query_frame=query_frame, query_mode=self.query_mode, vis_threshold=self.vis_threshold,
            track_mask=track_mask,
        )  # each (B,)
        ok = torch.stack([errors[k] for k in TRACKING_KEYS]).isfinite().all(0)
        for key in TRACKING_KEYS:
            state = getattr(self, f"{key}_sum")
            setattr(self, f"{key}_sum", state + errors[key][ok].sum().to(state))
        self.count = self.count + ok.sum().to(self.count)
        self.skipped = self.skipped + (~ok).sum().to(self.skipped)

    def compute(self) -> dict[str, Tensor]:
        """TRACKING_KEYS -> means over the clips kept (NaN before any)."""
        return {key: getattr(self, f"{key}_sum") / self.count for key in TRACKING_KEYS}
