"""Per-sequence pose and depth errors (pure torch; the Metric classes in `pose.py`/`depth.py` sum them).

Pose (evo protocol of MonST3R/CUT3R/PAGE-4D): camera-to-world trajectories, Sim(3) Umeyama alignment of the
predicted camera centres to GT; ATE = RMSE of centre errors; RPE over consecutive frames (delta 1):
RMSE of relative translation error and of relative rotation angle in degrees.
Depth: GT <= 0 (or >= max_depth) is invalid; the prediction is aligned (median per frame, least-squares
scale or scale+shift per sequence, or none), then the usual monocular-depth errors on the valid pixels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from page4d_lightning.geometry import se3_compose, se3_inverse, umeyama_sim3

__all__ = ["POSE_KEYS", "DEPTH_KEYS", "pose_errors", "depth_errors", "DEPTH_ALIGNERS"]

POSE_KEYS = ("ate", "rpe_trans", "rpe_rot")
DEPTH_KEYS = ("abs_rel", "sq_rel", "rmse", "log_rmse", "delta_1_25", "delta_1_25_sq", "delta_1_25_cu")


# ------------------------------------------------------------------------------------------------- pose


def _check_poses(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.ndim < 3 or tuple(x.shape[-2:]) not in ((3, 4), (4, 4)):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected (S, 3, 4) or (S, 4, 4), got {got}")


def _rotation_angle_deg(R: Tensor) -> Tensor:
    """(..., 3, 3) rotation -> (...) angle in degrees, accurate for small and large angles (atan2 form)."""
    skew = R - R.transpose(-1, -2)
    sin = 0.5 * torch.stack([skew[..., 2, 1], skew[..., 0, 2], skew[..., 1, 0]], -1).norm(dim=-1)
    cos = 0.5 * (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1)
    return torch.rad2deg(torch.atan2(sin, cos))


def pose_errors(pred_extrinsics: Tensor, gt_extrinsics: Tensor) -> dict[str, Tensor]:
    """ATE and RPE (evo protocol) of one clip; also vectorised over leading dims.

    pred_extrinsics, gt_extrinsics: (..., S, 3, 4) or (..., S, 4, 4) camera-from-world, S >= 2.
    Returns {"ate", "rpe_trans", "rpe_rot"}, each (...) float64: ATE and RPE translation in GT units,
    RPE rotation in degrees, all RMSE after Sim(3) alignment of predicted camera centres to GT.
    """
    _check_poses(pred_extrinsics, "pred_extrinsics")
    _check_poses(gt_extrinsics, "gt_extrinsics")
    if pred_extrinsics.shape[:-2] != gt_extrinsics.shape[:-2]:
        raise ValueError(
            f"pred_extrinsics: expected the leading dims of gt_extrinsics {tuple(gt_extrinsics.shape[:-2])}, "
            f"got {tuple(pred_extrinsics.shape[:-2])}"
        )
    if pred_extrinsics.shape[-3] < 2:
        raise ValueError(f"pred_extrinsics: expected S >= 2 frames, got S = {pred_extrinsics.shape[-3]}")
    # camera-to-world poses [R_c2w | centre], (..., S, 3, 4), float64 as evo
    est = se3_inverse(pred_extrinsics[..., :3, :].double())
    ref = se3_inverse(gt_extrinsics[..., :3, :].double())

    scale, R_a, t_a = umeyama_sim3(est[..., 3], ref[..., 3])  # fit over the S centres
    R_a = R_a[..., None, :, :]  # (..., 1, 3, 3): same alignment for every frame
    centres = scale[..., None, None] * (R_a @ est[..., 3:])[..., 0] + t_a[..., None, :]  # (..., S, 3)
    est = torch.cat([R_a @ est[..., :3], centres[..., None]], -1)  # evo: scale positions, then transform

    ate = (centres - ref[..., 3]).square().sum(-1).mean(-1).sqrt()

    # relative motions inv(P_i) P_{i+1}, (..., S-1, 3, 4), then the error E = inv(Q_rel) P_rel
    rel_ref = se3_compose(se3_inverse(ref[..., :-1, :, :]), ref[..., 1:, :, :])
    rel_est = se3_compose(se3_inverse(est[..., :-1, :, :]), est[..., 1:, :, :])
    err = se3_compose(se3_inverse(rel_ref), rel_est)
    err_R, err_t = err[..., :3], err[..., 3]
    rpe_trans = err_t.square().sum(-1).mean(-1).sqrt()
    rpe_rot = _rotation_angle_deg(err_R).square().mean(-1).sqrt()
    return {"ate": ate, "rpe_trans": rpe_trans, "rpe_rot": rpe_rot}


# ------------------------------------------------------------------------------------------------ depth


def _align_none(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    return pred


def _align_median(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """Per frame: pred * median(gt) / median(pred) over valid pixels (torch.median: lower middle value)."""
    nan = torch.full_like(pred, math.nan)
    med_gt = torch.where(valid, gt, nan).flatten(-2).nanmedian(-1).values  # (..., S)
    med_pred = torch.where(valid, pred, nan).flatten(-2).nanmedian(-1).values
    return pred * (med_gt / med_pred)[..., None, None]


def _align_scale(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """Per sequence: least-squares s = sum(p g) / sum(p^2) over valid pixels."""
    p, g = pred * valid, gt * valid
    s = (p * g).sum((-3, -2, -1)) / p.square().sum((-3, -2, -1))
    return pred * s[..., None, None, None]


def _align_scale_shift(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """Per sequence: least-squares (s, t) minimising sum (s p + t - g)^2 over valid pixels."""
    v = valid.to(pred.dtype)
    p, g = pred * v, gt * v
    dims = (-3, -2, -1)
    n, sp, sg, spp, spg = v.sum(dims), p.sum(dims), g.sum(dims), p.square().sum(dims), (p * g).sum(dims)
    det = spp * n - sp * sp  # normal equations [[spp, sp], [sp, n]] [s, t] = [spg, sg]
    s = (n * spg - sp * sg) / det
    t = (spp * sg - sp * spg) / det
    return pred * s[..., None, None, None] + t[..., None, None, None]


DEPTH_ALIGNERS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "none": _align_none,
    "median": _align_median,
    "scale": _align_scale,
    "scale_shift": _align_scale_shift,
}


def depth_errors(
    pred: Tensor,
    gt: Tensor,
    align: str = "median",
    per: str = "frame",
    max_depth: float | None = None,
    clip_pred: float | tuple[float, float] | None = None,
) -> dict[str, Tensor]:
    """Depth errors of one clip; also vectorised over leading dims.

    pred, gt: (..., S, H, W) z-depth; gt <= 0, non-finite or >= max_depth is invalid. `align` in
    DEPTH_ALIGNERS; `clip_pred` clamps the aligned prediction (a max, or (min, max)). per="frame" averages
    frame metrics weighted by valid pixels; per="sequence" pools all valid pixels of the clip.
    Returns DEPTH_KEYS + "valid_pixels", each (...) float64; NaN (with a warning) if no pixel is valid.
    """
    if not isinstance(pred, Tensor) or pred.ndim < 3:
        got = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
        raise ValueError(f"pred: expected (S, H, W), got {got}")
    if gt.shape != pred.shape:
        raise ValueError(f"gt: expected the shape of pred {tuple(pred.shape)}, got {tuple(gt.shape)}")
    if align not in DEPTH_ALIGNERS:
        raise ValueError(f"align: expected one of {sorted(DEPTH_ALIGNERS)}, got {align!r}")
    if per not in ("frame", "sequence"):
        raise ValueError(f"per: expected 'frame' or 'sequence', got {per!r}")
    pred, gt = pred.double(), gt.double()
    valid = (gt > 0) & torch.isfinite(gt)
    if max_depth is not None:
        valid &= gt < max_depth  # official: strict upper bound

    pred = DEPTH_ALIGNERS[align](pred, gt, valid)
    if clip_pred is not None:
        lo, hi = clip_pred if isinstance(clip_pred, tuple) else (None, clip_pred)
        pred = pred.clamp(min=lo, max=hi)

    g = torch.where(valid, gt, torch.ones_like(gt))  # 1 at invalid pixels keeps every term finite
    p = torch.where(valid, pred, g)
    p_log = p.clamp(min=1e-5)  # official: clamp before log and ratios
    ratio = torch.maximum(p_log / g, g / p_log)
    terms = {
        "abs_rel": (p - g).abs() / g,
        "sq_rel": (p - g).square() / g,
        "rmse": (p - g).square(),
        "log_rmse": (p_log.log() - g.log()).square(),
        "delta_1_25": (ratio < 1.25).double(),
        "delta_1_25_sq": (ratio < 1.25**2).double(),
        "delta_1_25_cu": (ratio < 1.25**3).double(),
    }
    dims = (-2, -1) if per == "frame" else (-3, -2, -1)
    count = valid.sum(dims).double()  # (..., S) or (...)
    out = {}
    for key, term in terms.items():
        mean = torch.where(valid, term, torch.zeros_like(term)).sum(dims) / count  # NaN where count == 0
        out[key] = mean.sqrt() if key in ("rmse", "log_rmse") else mean
    if per == "frame":  # valid-pixel-weighted mean over frames; empty frames drop out
        total = count.sum(-1)
        weighted = {k: torch.where(count > 0, v * count, torch.zeros_like(v)) for k, v in out.items()}
        out = {k: v.sum(-1) / total for k, v in weighted.items()}
        count = total
    if bool((count == 0).any()):
        warnings.warn(
            "depth_errors: no valid GT pixel (gt <= 0, non-finite or >= max_depth), metrics are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    out["valid_pixels"] = count
    return out
