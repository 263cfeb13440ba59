"""TAP-Vid point-tracking metrics of one clip (pure torch), after deepmind/tapnet `compute_tapvid_metrics`.

Tracks are given in input pixels (x, y) of an (H, W) image and rescaled to the 256x256 raster of the
TAP-Vid paper (x * 256 / W, y * 256 / H) before thresholding. Only evaluation points count: with
query_mode="first" the frames after each track's query frame, with "strided" every frame but the query
frame (the query frame itself is never scored; DESIGN's `tracks[:, 0]` queries mean query_frame=0, where
both modes agree). Per clip (TAP-Vid's per-video numbers; a benchmark averages clips):
- occlusion_accuracy: fraction of evaluation points whose predicted visibility equals GT's;
- pts_within_{1,2,4,8,16}: among GT-visible evaluation points, the fraction predicted within the threshold
  (strictly, in 256-scale pixels), visibility prediction ignored; delta_avg is their mean;
- jaccard_{thr}: TP / (GT-visible + FP), TP = visible, within and predicted visible, FP = predicted visible
  but GT-occluded or not within; average_jaccard is their mean.
A clip with no GT-visible evaluation point has undefined pts_within: every key is NaN and a RuntimeWarning
is raised (TAP-Vid's numpy would silently divide 0 by 0).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from page4d_lightning.geometry import check_image_hw, check_shape

__all__ = ["TRACKING_THRESHOLDS", "TRACKING_KEYS", "tracking_errors"]

TRACKING_THRESHOLDS = (1, 2, 4, 8, 16)
TRACKING_KEYS = (
    "delta_avg", "average_jaccard", "occlusion_accuracy",
    *(f"pts_within_{t}" for t in TRACKING_THRESHOLDS), *(f"jaccard_{t}" for t in TRACKING_THRESHOLDS),
)
_RASTER = 256.0


def _shape(x: object) -> tuple[int, ...] | str:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def _check_inputs(
    pred_tracks: Tensor,
    pred_vis: Tensor,
    gt_tracks: Tensor,
    gt_vis: Tensor,
    image_hw: tuple[int, int],
    track_mask: Tensor | None,
) -> tuple[int, int]:
    """Shapes as `tracking_errors` documents; errors name the argument. Returns (H, W)."""
    check_shape(pred_tracks, "pred_tracks", ((2,),))
    if pred_tracks.ndim < 3:
        raise ValueError(f"pred_tracks: expected (..., S, N, 2), got {_shape(pred_tracks)}")
    if not isinstance(gt_tracks, Tensor) or gt_tracks.shape != pred_tracks.shape:
        raise ValueError(f"gt_tracks: expected the shape of pred_tracks {tuple(pred_tracks.shape)}, "
                         f"got {_shape(gt_tracks)}")
    for x, name in ((pred_vis, "pred_vis"), (gt_vis, "gt_vis")):
        if not isinstance(x, Tensor) or x.shape != pred_tracks.shape[:-1]:
            raise ValueError(f"{name}: expected {tuple(pred_tracks.shape[:-1])}, got {_shape(x)}")
    per_track = tuple(pred_tracks.shape[:-3] + pred_tracks.shape[-2:-1])  # (..., N)
    if track_mask is not None and (not isinstance(track_mask, Tensor) or tuple(track_mask.shape) != per_track):
        raise ValueError(f"track_mask: expected {per_track}, got {_shape(track_mask)}")
    return check_image_hw(image_hw)


def _visible(x: Tensor, threshold: float) -> Tensor:
    """bool as is; probabilities: visible where > threshold."""
    return x if x.dtype == torch.bool else x > threshold


def tracking_errors(
    pred_tracks: Tensor,
    pred_vis: Tensor,
    gt_tracks: Tensor,
    gt_vis: Tensor,
    image_hw: tuple[int, int],
    query_frame: int | Tensor = 0,
    query_mode: str = "first",
    vis_threshold: float = 0.5,
    track_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """TAP-Vid metrics of one clip; also vectorised over leading dims.

    pred_tracks, gt_tracks: (..., S, N, 2) pixel (x, y) in an image of size image_hw = (H, W);
    pred_vis, gt_vis: (..., S, N) bool (True = visible) or probabilities (visible if > vis_threshold);
    query_frame: int or (..., N) integer tensor, each track's query frame; query_mode: "first" | "strided";
    track_mask: optional (..., N) bool, tracks to evaluate (e.g. `track_positive_mask`).
    Returns TRACKING_KEYS, each (...) float64 in [0, 1].
    """
    H, W = _check_inputs(pred_tracks, pred_vis, gt_tracks, gt_vis, image_hw, track_mask)
    if query_mode not in ("first", "strided"):
        raise ValueError(f"query_mode: expected 'first' or 'strided', got {query_mode!r}")
    S, N = pred_tracks.shape[-3], pred_tracks.shape[-2]
    q = torch.as_tensor(query_frame, device=pred_tracks.device)
    if q.dtype.is_floating_point:
        q = q.round()
    q = q.long()
    if q.ndim > 0 and q.shape != pred_tracks.shape[:-3] + (N,):
        expected = tuple(pred_tracks.shape[:-3] + (N,))
        raise ValueError(f"query_frame: expected an int or {expected}, got {tuple(q.shape)}")
    if bool(((q < 0) | (q >= S)).any()):
        raise ValueError(f"query_frame: expected values in [0, {S - 1}], got {q.min().item()}..{q.max().item()}")

    frames = torch.arange(S, device=pred_tracks.device)[:, None]  # (S, 1) against q (..., 1, N)
    q = q[..., None, :] if q.ndim > 0 else q
    evaluate = frames > q if query_mode == "first" else frames != q  # (..., S, N)
    evaluate = evaluate.expand(pred_vis.shape)
    if track_mask is not None:
        evaluate = evaluate & track_mask.bool()[..., None, :]
    visible, pred_visible = _visible(gt_vis, 0.5), _visible(pred_vis, vis_threshold)

    raster = torch.tensor([_RASTER / W, _RASTER / H], dtype=torch.float64, device=pred_tracks.device)
    sq_dist = ((pred_tracks.double() - gt_tracks.double()) * raster).square().sum(-1)  # (..., S, N) at 256x256

    def count(x: Tensor) -> Tensor:
        return (x & evaluate).sum((-2, -1)).double()

    out = {"occlusion_accuracy": count(pred_visible == visible) / count(torch.ones_like(visible))}
    gt_positives = count(visible)
    for thr in TRACKING_THRESHOLDS:
        within = sq_dist < thr * thr
        correct = within & visible
        out[f"pts_within_{thr}"] = count(correct) / gt_positives
        false_positives = count(pred_visible & (~visible | ~within))
        out[f"jaccard_{thr}"] = count(correct & pred_visible) / (gt_positives + false_positives)
    out["delta_avg"] = torch.stack([out[f"pts_within_{t}"] for t in TRACKING_THRESHOLDS]).mean(0)
    out["average_jaccard"] = torch.stack([out[f"jaccard_{t}"] for t in TRACKING_THRESHOLDS]).mean(0)
    undefined = gt_positives == 0
    if bool(undefined.any()):
        warnings.warn(
            f"tracking_errors: {int(undefined.sum())} clip(s) without a GT-visible evaluation point: metrics are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    return {k: torch.where(undefined, torch.full_like(out[k], math.nan), out[k]) for k in TRACKING_KEYS}
