"""DepthMetrics: valid-pixel-weighted depth errors over clips (see `functional.depth_errors`), synced as sums.

Each clip is aligned on its own (`align`), its metrics are weighted by its valid GT pixels, and `compute`
divides by the total pixel count: the official average (np.average weighted by valid_pixels). The official
protocols come as presets: `DepthMetrics.video("sintel")` (per-sequence "scale" LAD alignment, max_depth 70,
post-clip 70) and `DepthMetrics.mono("sintel")` (per-frame median); the numbers live in
`functional.DEPTH_PROTOCOLS`. With `dynamic_masks` in `update`, `compute` adds `<key>_dynamic` and
`<key>_static` over the clips that came with masks (NaN where no such pixel was seen).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from page4d_lightning.metrics.functional import DEPTH_ALIGNERS, DEPTH_KEYS, depth_errors, depth_protocol

__all__ = ["DepthMetrics"]

_SUBSETS = ("", "_dynamic", "_static")  # all valid pixels, then the dynamic / static split


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
        f64 = torch.float64
        for subset in _SUBSETS:
            for key in DEPTH_KEYS:
                self.add_state(f"{key}{subset}_sum", torch.tensor(0.0, dtype=f64), dist_reduce_fx="sum")
            self.add_state(f"valid_pixels{subset}", torch.tensor(0.0, dtype=f64), dist_reduce_fx="sum")
        self.add_state("masked_clips", torch.tensor(0.0, dtype=f64), dist_reduce_fx="sum")

    @classmethod
    def video(cls, dataset: str = "sintel", align: str | None = None, **kwargs) -> DepthMetrics:
        """Official video-depth protocol of `dataset` (one alignment and metric set per sequence)."""
        return cls(**depth_protocol("video", dataset, align), **kwargs)

    @classmethod
    def mono(cls, dataset: str = "sintel", align: str | None = None, **kwargs) -> DepthMetrics:
        """Official monocular-depth protocol of `dataset` (per-frame median alignment and metrics)."""
        return cls(**depth_protocol("mono", dataset, align), **kwargs)

    def update(self, pred: Tensor, gt: Tensor, dynamic_masks: Tensor | None = None) -> None:
        """pred, gt: (B, S, H, W) z-depth, gt <= 0 invalid; dynamic_masks: optional (B, S, H, W) bool.

        Clips without a valid pixel add nothing.
        """
        if pred.ndim != 4:
            raise ValueError(f"pred: expected (B, S, H, W), got {tuple(pred.shape)}")
        errors = depth_errors(
            pred.detach(), gt.detach(), align=self.align, per=self.per, max_depth=self.max_depth,
            clip_pred=self.clip_pred, dynamic_masks=None if dynamic_masks is None else dynamic_masks.detach(),
        )  # each (B,)
        for subset in _SUBSETS if dynamic_masks is not None else _SUBSETS[:1]:
            weight = errors[f"valid_pixels{subset}"]
            for key in DEPTH_KEYS:
                weighted = torch.where(weight > 0, errors[f"{key}{subset}"] * weight, torch.zeros_like(weight))
                state = getattr(self, f"{key}{subset}_sum")
                setattr(self, f"{key}{subset}_sum", state + weighted.sum().to(state))
            total = getattr(self, f"valid_pixels{subset}")
            setattr(self, f"valid_pixels{subset}", total + weight.sum().to(total))
        if dynamic_masks is not None:
            self.masked_clips = self.masked_clips + pred.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """DEPTH_KEYS -> pixel-weighted means (NaN if no valid pixel was seen); `_dynamic` / `_static` too
        once a clip came with dynamic masks."""
        subsets = _SUBSETS if self.masked_clips > 0 else _SUBSETS[:1]
        return {
            f"{key}{subset}": getattr(self, f"{key}{subset}_sum") / getattr(self, f"valid_pixels{subset}")
            for subset in subsets
            for key in DEPTH_KEYS
        }
