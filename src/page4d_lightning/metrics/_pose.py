"""Pose errors of one clip (pure torch): ATE / RPE (evo protocol) and pairwise AUC (VGGT / CO3D protocol).

ATE / RPE (MonST3R / CUT3R / PAGE-4D `eval/relpose`, which call evo): camera-to-world trajectories, Sim(3)
Umeyama alignment of the predicted camera centres to GT; ATE = RMSE of centre errors; RPE over consecutive
frames (delta 1): RMSE of the relative translation error and of the relative rotation angle in degrees.

Degenerate trajectories: the Sim(3) fit needs both sets of camera centres to spread out. If either is
static (a still camera, or a pure rotation about the camera centre; spread below 100 float eps of the
input dtype relative to the centres' magnitude), the scale is 0/0 or collapses the prediction onto one
point, so ATE / RPE are returned as NaN with a RuntimeWarning, never as a silent 0 (evo raises
"Degenerate covariance rank" there). `rpe_rot` does not depend on the alignment but is NaN too, so that a
clip gives all three figures or none. Two frames, or collinear centres, are fine: evo refuses them (its
cross-covariance has rank 1) but the least-squares Sim(3) is still defined up to a rotation about the
line, which ATE and RPE do not see.

AUC (VGGT `evaluation/test_co3d.py`): for every frame pair i < j, relative poses E_i E_j^-1; the rotation
error is the angle of R_gt^T R_pred, the translation error the angle between the relative translations up
to sign (a zero translation gives 90 degrees, as VGGT's eps-normalisation does); per pair the max of the
two; the histogram of these over integer-degree bins [0, 1), ..., [T-1, T] (pairs beyond T are counted in
the total only), normalised by the number of pairs; AUC@T = mean of its cumulative sum.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from page4d_lightning.geometry import check_shape, se3_compose, se3_inverse, umeyama_sim3

__all__ = ["POSE_KEYS", "pose_errors", "relative_pose_angle_errors", "pose_auc", "static_camera_clips"]

POSE_KEYS = ("ate", "rpe_trans", "rpe_rot")
_STATIC_EPS = 100.0  # x float eps of the input dtype: centre spread below this (relative) counts as static


def _check_pair(pred: Tensor, gt: Tensor) -> None:
    """Shapes (..., S, 3|4, 4), equal leading dims, S >= 2; errors name the argument."""
    for x, name in ((pred, "pred_extrinsics"), (gt, "gt_extrinsics")):
        check_shape(x, name, ((3, 4), (4, 4)))
        if x.ndim < 3:
            raise ValueError(f"{name}: expected (..., S, 3, 4) or (..., S, 4, 4), got {tuple(x.shape)}")
    if pred.shape[:-2] != gt.shape[:-2]:
        raise ValueError(
            f"pred_extrinsics: expected the leading dims of gt_extrinsics {tuple(gt.shape[:-2])}, "
            f"got {tuple(pred.shape[:-2])}"
        )
    if pred.shape[-3] < 2:
        raise ValueError(f"pred_extrinsics: expected S >= 2 frames, got S = {pred.shape[-3]}")


def _rotation_angle_deg(R: Tensor) -> Tensor:
    """(..., 3, 3) rotation -> (...) angle in degrees, accurate for small and large angles (atan2 form)."""
    skew = R - R.transpose(-1, -2)
    sin = 0.5 * torch.stack([skew[..., 2, 1], skew[..., 0, 2], skew[..., 1, 0]], -1).norm(dim=-1)
    cos = 0.5 * (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1)
    return torch.rad2deg(torch.atan2(sin, cos))


def _is_static(centres: Tensor, dtype: torch.dtype) -> Tensor:
    """(..., S, 3) float64 centres -> (...) bool: RMS spread <= 100 eps(dtype) x RMS magnitude."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float64).eps
    spread = (centres - centres.mean(-2, keepdim=True)).square().sum(-1).mean(-1).sqrt()
    magnitude = centres.square().sum(-1).mean(-1).sqrt()
    return spread <= _STATIC_EPS * eps * magnitude


def static_camera_clips(pred_extrinsics: Tensor, gt_extrinsics: Tensor) -> Tensor:
    """(..., S, 3|4, 4) camera-from-world pairs -> (...) bool: clips whose predicted or GT camera centres do not
    move (a still camera or a pure rotation), for which `pose_errors` is NaN (the Sim(3) alignment is undefined)."""
    _check_pair(pred_extrinsics, gt_extrinsics)
    est = se3_inverse(pred_extrinsics[..., :3, :].double())[..., 3]
    ref = se3_inverse(gt_extrinsics[..., :3, :].double())[..., 3]
    return _is_static(est, pred_extrinsics.dtype) | _is_static(ref, gt_extrinsics.dtype)


def pose_errors(pred_extrinsics: Tensor, gt_extrinsics: Tensor) -> dict[str, Tensor]:
    """ATE and RPE (evo protocol) of one clip; also vectorised over leading dims.

    pred_extrinsics, gt_extrinsics: (..., S, 3, 4) or (..., S, 4, 4) camera-from-world, S >= 2.
    Returns {"ate", "rpe_trans", "rpe_rot"}, each (...) float64: ATE and RPE translation in GT units,
    RPE rotation in degrees, all RMSE after Sim(3) alignment of predicted camera centres to GT.
    A clip whose predicted or GT centres are static gets NaN for all three (module docstring) and a warning.
    """
    _check_pair(pred_extrinsics, gt_extrinsics)
    # camera-to-world poses [R_c2w | centre], (..., S, 3, 4), float64 as evo
    est = se3_inverse(pred_extrinsics[..., :3, :].double())
    ref = se3_inverse(gt_extrinsics[..., :3, :].double())
    degenerate = static_camera_clips(pred_extrinsics, gt_extrinsics)

    scale, R_a, t_a = umeyama_sim3(est[..., 3], ref[..., 3])  # fit over the S centres
    R_a = R_a[..., None, :, :]  # (..., 1, 3, 3): same alignment for every frame
    centres = scale[..., None, None] * (R_a @ est[..., 3:])[..., 0] + t_a[..., None, :]  # (..., S, 3)
    est = torch.cat([R_a @ est[..., :3], centres[..., None]], -1)  # evo: scale positions, then transform

    ate = (centres - ref[..., 3]).square().sum(-1).mean(-1).sqrt()

    # relative motions inv(P_i) P_{i+1}, (..., S-1, 3, 4), then the error E = inv(Q_rel) P_rel
    rel_ref = se3_compose(se3_inverse(ref[..., :-1, :, :]), ref[..., 1:, :, :])
    rel_est = se3_compose(se3_inverse(est[..., :-1, :, :]), est[..., 1:, :, :])
    err = se3_compose(se3_inverse(rel_ref), rel_est)
    rpe_trans = err[..., 3].square().sum(-1).mean(-1).sqrt()
    rpe_rot = _rotation_angle_deg(err[..., :3]).square().mean(-1).sqrt()
    out = {"ate": ate, "rpe_trans": rpe_trans, "rpe_rot": rpe_rot}
    if bool(degenerate.any()):
        warnings.warn(
            f"pose_errors: {int(degenerate.sum())} clip(s) with static camera centres (still camera or pure "
            "rotation): the Sim(3) alignment is undefined, ATE / RPE are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        out = {k: torch.where(degenerate, torch.full_like(v, math.nan), v) for k, v in out.items()}
    return out


def relative_pose_angle_errors(pred_extrinsics: Tensor, gt_extrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise relative-pose angle errors (VGGT / CO3D protocol), degrees.

    pred_extrinsics, gt_extrinsics: (..., S, 3, 4) or (..., S, 4, 4) camera-from-world, S >= 2.
    Returns (rotation_error, translation_error), each (..., P) float64 with P = S (S - 1) / 2 pairs in
    `torch.combinations` order (i < j); the translation error is sign-agnostic, in [0, 90].
    """
    _check_pair(pred_extrinsics, gt_extrinsics)
    pred, gt = pred_extrinsics[..., :3, :].double(), gt_extrinsics[..., :3, :].double()
    i, j = torch.combinations(torch.arange(pred.shape[-3], device=pred.device), 2).unbind(-1)
    rel_pred = se3_compose(pred[..., i, :, :], se3_inverse(pred[..., j, :, :]))  # (..., P, 3, 4): E_i E_j^-1
    rel_gt = se3_compose(gt[..., i, :, :], se3_inverse(gt[..., j, :, :]))
    rot_err = _rotation_angle_deg(rel_gt[..., :3].transpose(-1, -2) @ rel_pred[..., :3])
    # VGGT: t / (|t| + 1e-15), so a zero translation becomes the zero vector and its error 90 degrees
    t_pred = rel_pred[..., 3] / (rel_pred[..., 3].norm(dim=-1, keepdim=True) + 1e-15)
    t_gt = rel_gt[..., 3] / (rel_gt[..., 3].norm(dim=-1, keepdim=True) + 1e-15)
    cos = (t_pred * t_gt).sum(-1).abs().clamp(max=1.0)
    sin = torch.linalg.cross(t_pred, t_gt).norm(dim=-1)
    trans_err = torch.rad2deg(torch.atan2(sin, cos))  # atan2 keeps small angles exact
    trans_err = torch.where(torch.isfinite(trans_err), trans_err, torch.full_like(trans_err, 1e6))
    trans_err = torch.where((sin == 0) & (cos == 0), torch.full_like(trans_err, 90.0), trans_err)
    return rot_err, trans_err


def pose_auc(pred_extrinsics: Tensor, gt_extrinsics: Tensor, max_threshold: int = 30) -> dict[str, Tensor]:
    """AUC@max_threshold of pairwise max(rotation, translation) angle errors (VGGT / CO3D protocol).

    pred_extrinsics, gt_extrinsics: (..., S, 3, 4) or (..., S, 4, 4) camera-from-world, S >= 2.
    Returns {f"auc_{max_threshold}": (...) in [0, 1], "histogram": (..., max_threshold) pair counts per
    1-degree bin, "pairs": (...) number of pairs}, float64; pooling clips = summing histogram and pairs.
    """
    if isinstance(max_threshold, bool) or not isinstance(max_threshold, int) or max_threshold < 1:
        raise ValueError(f"max_threshold: expected a positive int (degrees), got {max_threshold!r}")
    rot_err, trans_err = relative_pose_angle_errors(pred_extrinsics, gt_extrinsics)
    err = torch.maximum(rot_err, trans_err).nan_to_num(nan=1e6)  # (..., P)
    histogram = auc_histogram(err, max_threshold)
    pairs = torch.full(err.shape[:-1], float(err.shape[-1]), dtype=torch.float64, device=err.device)
    return {f"auc_{max_threshold}": auc_from_histogram(histogram, pairs), "histogram": histogram, "pairs": pairs}


def auc_histogram(errors: Tensor, max_threshold: int) -> Tensor:
    """(..., P) errors in degrees -> (..., max_threshold) float64 counts in [k, k+1) (the last bin closed)."""
    # np.histogram's integer bins: floor, with err == max_threshold in the last bin, beyond dropped
    index = errors.floor().clamp(max=max_threshold - 1).long()
    inside = (errors >= 0) & (errors <= max_threshold)
    index = torch.where(inside, index, torch.full_like(index, max_threshold))  # spill bin, cut below
    counts = torch.zeros(*errors.shape[:-1], max_threshold + 1, dtype=torch.float64, device=errors.device)
    counts.scatter_add_(-1, index, torch.ones_like(index, dtype=torch.float64))
    return counts[..., :max_threshold]


def auc_from_histogram(histogram: Tensor, pairs: Tensor) -> Tensor:
    """(..., T) pair counts and (...) total pairs -> (...) AUC = mean of the cumulative normalised histogram."""
    return (histogram / pairs[..., None]).cumsum(-1).mean(-1)
