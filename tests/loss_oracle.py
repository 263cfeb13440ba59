"""Test oracle: the official PAGE-4D training loss, transcribed step by step in plain torch.

Follows kaichen-z/PAGE4D (commit f47ad46) `training/loss.py`: `MultitaskLoss.forward`, `compute_camera_loss`,
`camera_loss_single`, `compute_depth_loss`, `compute_point_loss`, `regression_loss`,
`gradient_loss_multi_scale_wrapper`, `gradient_loss`, `normal_loss`, `point_map_to_normal`,
`filter_by_quantile`, `torch_quantile` (interpolation "nearest"); `training/train_utils/general.py`
`check_and_fix_inf_nan`; and facebookresearch/vggt `vggt/utils/pose_enc.py` `extri_intri_to_pose_encoding`
("absT_quaR_FoV") with `vggt/utils/rotation.py` `mat_to_quat` / `standardize_quaternion`.
`compute_track_loss`, `sequence_loss` and `reduce_masked_mean` (the tracking loss; the PAGE-4D recipe
`training_final.yaml` has track weight 0, but the loss exists and is compared too).
Same order of operations, masking, clamps, means and loops as the official code.
It is an independent reference for tests, not project code: it never imports `page4d_lightning`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def check_and_fix_inf_nan(x: Tensor, hard_max: float | None = 100.0) -> Tensor:
    """NaN/inf -> 0, then clamp to [-hard_max, hard_max] (general.py)."""
    if torch.isnan(x).any() or torch.isinf(x).any():
        x = torch.where(torch.isnan(x) | torch.isinf(x), torch.zeros_like(x), x)
    if hard_max is not None:
        x = torch.clamp(x, min=-hard_max, max=hard_max)
    return x


# ------------------------------------------------------------------------------------ pose encoding
def _sqrt_positive_part(x: Tensor) -> Tensor:
    ret = torch.zeros_like(x)
    positive = x > 0
    ret[positive] = torch.sqrt(x[positive])
    return ret


def mat_to_quat(matrix: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 4) XYZW, real part made non-negative (rotation.py, from PyTorch3D)."""
    batch_dim = matrix.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(matrix.reshape(batch_dim + (9,)), dim=-1)
    q_abs = _sqrt_positive_part(
        torch.stack(
            [1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22, 1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], dim=-1
        )
    )
    quat_by_rijk = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    flr = torch.tensor(0.1).to(dtype=q_abs.dtype)
    candidates = quat_by_rijk / (2.0 * q_abs[..., None].max(flr))
    out = candidates[F.one_hot(q_abs.argmax(dim=-1), num_classes=4) > 0.5, :].reshape(batch_dim + (4,))
    out = out[..., [1, 2, 3, 0]]
    return torch.where(out[..., 3:4] < 0, -out, out)


def extri_intri_to_pose_encoding(extrinsics: Tensor, intrinsics: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """(B,S,3,4), (B,S,3,3) -> (B,S,9) [t, quat XYZW, fov_h, fov_w] (pose_enc.py, absT_quaR_FoV)."""
    R = extrinsics[:, :, :3, :3]
    T = extrinsics[:, :, :3, 3]
    quat = mat_to_quat(R)
    H, W = image_hw
    fov_h = 2 * torch.atan((H / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2) / intrinsics[..., 0, 0])
    return torch.cat([T, quat, fov_h[..., None], fov_w[..., None]], dim=-1).float()


# ------------------------------------------------------------------------------------------- camera
def camera_loss_single(pred: Tensor, gt: Tensor, loss_type: str = "l1") -> tuple[Tensor, Tensor, Tensor]:
    if loss_type == "l1":
        loss_T = (pred[..., :3] - gt[..., :3]).abs()
        loss_R = (pred[..., 3:7] - gt[..., 3:7]).abs()
        loss_FL = (pred[..., 7:] - gt[..., 7:]).abs()
    else:
        loss_T = (pred[..., :3] - gt[..., :3]).norm(dim=-1, keepdim=True)
        loss_R = (pred[..., 3:7] - gt[..., 3:7]).norm(dim=-1)
        loss_FL = (pred[..., 7:] - gt[..., 7:]).norm(dim=-1)
    loss_T = check_and_fix_inf_nan(loss_T)
    loss_R = check_and_fix_inf_nan(loss_R)
    loss_FL = check_and_fix_inf_nan(loss_FL)
    return loss_T.clamp(max=100).mean(), loss_R.mean(), loss_FL.mean()


def compute_camera_loss(
    pred_dict: dict[str, Any],
    batch: dict[str, Any],
    loss_type: str = "l1",
    gamma: float = 0.6,
    weight_trans: float = 1.0,
    weight_rot: float = 1.0,
    weight_focal: float = 0.5,
    **_: Any,
) -> dict[str, Tensor]:
    preds = pred_dict["pose_enc_list"]
    point_masks = batch["point_masks"]
    valid = point_masks[:, 0].sum(dim=[-1, -2]) > 100
    valid = valid * (~batch["abandon_pose"])
    n = len(preds)
    gt = extri_intri_to_pose_encoding(batch["extrinsics"], batch["intrinsics"], batch["images"].shape[-2:])
    total_T = total_R = total_FL = 0
    for i in range(n):
        w = gamma ** (n - i - 1)
        p = preds[i]
        if valid.sum() == 0:
            lT = lR = lFL = (p * 0).mean()
        else:
            lT, lR, lFL = camera_loss_single(p[valid].clone(), gt[valid].clone(), loss_type=loss_type)
        total_T += lT * w
        total_R += lR * w
        total_FL += lFL * w
    T, R, FL = total_T / n, total_R / n, total_FL / n
    return {
        "loss_camera": T * weight_trans + R * weight_rot + FL * weight_focal,
        "loss_T": T,
        "loss_R": R,
        "loss_FL": FL,
    }


# ------------------------------------------------------------------------------------ depth / points
def torch_quantile_nearest(x: Tensor, q: float) -> Tensor:
    flat = x.reshape((-1,) + (1,) * (x.ndim - 1))
    k = round(q * (flat.shape[0] - 1)) + 1
    return torch.kthvalue(flat, k, 0, keepdim=True)[0].squeeze()


def filter_by_quantile(t: Tensor, valid_range: float, min_elements: int = 1000, hard_max: float = 100) -> Tensor:
    if t.numel() <= min_elements:
        return t
    t = t.clamp(max=hard_max)
    thresh = min(torch_quantile_nearest(t.detach(), valid_range), hard_max)
    keep = t < thresh
    if keep.sum() > min_elements:
        return t[keep]
    return t


def point_map_to_normal(point_map: Tensor, mask: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    padded_mask = F.pad(mask, (1, 1, 1, 1), mode="constant", value=0)
    pts = F.pad(point_map.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="constant", value=0).permute(0, 2, 3, 1)
    center = pts[:, 1:-1, 1:-1, :]
    up_dir = pts[:, :-2, 1:-1, :] - center
    left_dir = pts[:, 1:-1, :-2, :] - center
    down_dir = pts[:, 2:, 1:-1, :] - center
    right_dir = pts[:, 1:-1, 2:, :] - center
    n1 = torch.cross(up_dir, left_dir, dim=-1)
    n2 = torch.cross(left_dir, down_dir, dim=-1)
    n3 = torch.cross(down_dir, right_dir, dim=-1)
    n4 = torch.cross(right_dir, up_dir, dim=-1)
    pm = padded_mask
    v1 = pm[:, :-2, 1:-1] & pm[:, 1:-1, 1:-1] & pm[:, 1:-1, :-2]
    v2 = pm[:, 1:-1, :-2] & pm[:, 1:-1, 1:-1] & pm[:, 2:, 1:-1]
    v3 = pm[:, 2:, 1:-1] & pm[:, 1:-1, 1:-1] & pm[:, 1:-1, 2:]
    v4 = pm[:, 1:-1, 2:] & pm[:, 1:-1, 1:-1] & pm[:, :-2, 1:-1]
    normals = F.normalize(torch.stack([n1, n2, n3, n4], dim=0), p=2, dim=-1, eps=eps)
    return normals, torch.stack([v1, v2, v3, v4], dim=0)


def normal_loss(
    prediction: Tensor,
    target: Tensor,
    mask: Tensor,
    cos_eps: float = 1e-8,
    conf: Tensor | None = None,
    gamma: float = 1.0,
    alpha: float = 0.2,
) -> Tensor | int:
    pred_n, pred_v = point_map_to_normal(prediction, mask, eps=cos_eps)
    gt_n, gt_v = point_map_to_normal(target, mask, eps=cos_eps)
    all_valid = pred_v & gt_v
    if torch.sum(all_valid) < 10:
        return 0
    dot = torch.sum(pred_n[all_valid].clone() * gt_n[all_valid].clone(), dim=-1)
    loss = 1 - torch.clamp(dot, -1 + cos_eps, 1 - cos_eps)
    if loss.numel() < 10:
        return 0
    loss = check_and_fix_inf_nan(loss)
    if conf is not None:
        c = torch.clamp(conf[None, ...].expand(4, -1, -1, -1)[all_valid].clone(), min=1e-6)
        loss = gamma * loss * c - alpha * torch.log(c)
    return loss.mean()


def gradient_loss(
    prediction: Tensor, target: Tensor, mask: Tensor, conf: Tensor | None = None, gamma: float = 1.0, alpha: float = 0.2
) -> Tensor | int:
    mask = mask[..., None].expand(-1, -1, -1, prediction.shape[-1])
    M = torch.sum(mask, (1, 2, 3))
    diff = torch.mul(mask, prediction - target)
    grad_x = torch.mul(torch.mul(mask[:, :, 1:], mask[:, :, :-1]), torch.abs(diff[:, :, 1:] - diff[:, :, :-1]))
    grad_y = torch.mul(torch.mul(mask[:, 1:, :], mask[:, :-1, :]), torch.abs(diff[:, 1:, :] - diff[:, :-1, :]))
    grad_x = grad_x.clamp(max=100)
    grad_y = grad_y.clamp(max=100)
    if conf is not None:
        conf = conf[..., None].expand(-1, -1, -1, prediction.shape[-1])
        cx = torch.clamp(conf[:, :, 1:], min=1e-6)
        cy = torch.clamp(conf[:, 1:, :], min=1e-6)
        grad_x = gamma * grad_x * cx - alpha * torch.log(cx)
        grad_y = gamma * grad_y * cy - alpha * torch.log(cy)
    grad = torch.sum(grad_x, (1, 2, 3)) + torch.sum(grad_y, (1, 2, 3))
    divisor = torch.sum(M)
    if divisor == 0:
        return 0
    return check_and_fix_inf_nan(torch.sum(grad) / divisor)


def gradient_loss_multi_scale_wrapper(
    prediction: Tensor,
    target: Tensor,
    mask: Tensor,
    scales: int = 4,
    gradient_loss_fn: Any = None,
    conf: Tensor | None = None,
) -> Tensor:
    total = 0
    for scale in range(scales):
        step = pow(2, scale)
        total += gradient_loss_fn(
            prediction[:, ::step, ::step],
            target[:, ::step, ::step],
            mask[:, ::step, ::step],
            conf=conf[:, ::step, ::step] if conf is not None else None,
        )
    return total / scales


def regression_loss(
    pred: Tensor,
    gt: Tensor,
    mask: Tensor,
    conf: Tensor,
    gradient_loss_fn: str,
    gamma: float,
    alpha: float,
    valid_range: float,
) -> tuple[Tensor, Any, Tensor]:
    bb, ss, hh, ww, nc = pred.shape
    loss_reg = check_and_fix_inf_nan(torch.norm(gt[mask] - pred[mask], dim=-1))
    safe_conf = torch.clamp(conf[mask], min=1e-6)
    loss_conf = check_and_fix_inf_nan(gamma * loss_reg * safe_conf - alpha * torch.log(safe_conf))
    loss_grad: Any = 0
    to_feed_conf = conf.reshape(bb * ss, hh, ww) if "conf" in gradient_loss_fn else None
    args = (pred.reshape(bb * ss, hh, ww, nc), gt.reshape(bb * ss, hh, ww, nc), mask.reshape(bb * ss, hh, ww))
    if "normal" in gradient_loss_fn:
        loss_grad = gradient_loss_multi_scale_wrapper(*args, gradient_loss_fn=normal_loss, scales=3, conf=to_feed_conf)
    elif "grad" in gradient_loss_fn:
        loss_grad = gradient_loss_multi_scale_wrapper(*args, gradient_loss_fn=gradient_loss, conf=to_feed_conf)
    if loss_conf.numel() > 0:
        if valid_range > 0:
            loss_conf = filter_by_quantile(loss_conf, valid_range)
        loss_conf = check_and_fix_inf_nan(loss_conf).mean()
    else:
        loss_conf = (0.0 * pred).mean()
    if loss_reg.numel() > 0:
        if valid_range > 0:
            loss_reg = filter_by_quantile(loss_reg, valid_range)
        loss_reg = check_and_fix_inf_nan(loss_reg).mean()
    else:
        loss_reg = (0.0 * pred).mean()
    return loss_conf, loss_grad, loss_reg


def _geometry(
    pred: Tensor,
    conf: Tensor,
    gt: Tensor,
    batch: dict[str, Any],
    suffix: str,
    gamma: float = 1.0,
    alpha: float = 0.2,
    gradient_loss_fn: str | None = None,
    valid_range: float = -1,
    **_: Any,
) -> dict[str, Any]:
    """compute_depth_loss / compute_point_loss after their GT preparation."""
    mask = batch["point_masks"].clone()
    if mask.sum() < 100 or batch["abandon_geometry"].sum() > 0:
        dummy = (0.0 * pred).mean()
        return {f"loss_conf_{suffix}": dummy, f"loss_reg_{suffix}": dummy, f"loss_grad_{suffix}": dummy}
    lc, lg, lr = regression_loss(pred, gt, mask, conf, gradient_loss_fn, gamma, alpha, valid_range)
    return {f"loss_conf_{suffix}": lc, f"loss_reg_{suffix}": lr, f"loss_grad_{suffix}": lg}


# ------------------------------------------------------------------------------------------- tracks
def reduce_masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    prod = x * mask
    numer, denom = torch.sum(prod), torch.sum(mask)
    mean = numer / denom.clamp(min=1)
    return torch.where(denom > 0, mean, torch.zeros_like(mean))


def sequence_loss(
    flow_preds: list[Tensor],
    flow_gt: Tensor,
    vis: Tensor,
    valids: Tensor,
    gamma: float = 0.8,
    vis_aware: bool = False,
    vis_aware_w: float = 0.1,
    **_: Any,
) -> Tensor | float:
    """Gamma-weighted mean over iterations of the per-point L1 (mean over x, y) on valid & visible points."""
    n_predictions = len(flow_preds)
    flow_loss: Any = 0.0
    for i in range(n_predictions):
        i_weight = gamma ** (n_predictions - i - 1)
        i_loss = check_and_fix_inf_nan((flow_preds[i] - flow_gt).abs(), hard_max=None)
        i_loss = torch.mean(i_loss, dim=3)
        combined_mask = torch.logical_and(valids, vis)
        num_valid_points = combined_mask.sum()
        if vis_aware:
            combined_mask = combined_mask.float() * (1.0 + vis_aware_w)
            flow_loss += i_weight * reduce_masked_mean(i_loss, combined_mask)
        elif num_valid_points > 2:
            flow_loss += i_weight * i_loss[combined_mask].mean()
        else:
            flow_loss += 0 * check_and_fix_inf_nan(i_loss, hard_max=None).mean()
    if n_predictions > 0:
        flow_loss = flow_loss / n_predictions
    return flow_loss


def compute_track_loss(
    predictions: dict[str, Any],
    batch: dict[str, Any],
    gamma: float = 0.8,
    weight_coord: float = 1.0,
    weight_vis: float = 0.2,
    weight_conf: float = 0.1,
    vis_aware: bool = False,
    vis_aware_w: float = 0.1,
    conf_threshold: float = 3.0,
    **kwargs: Any,
) -> dict[str, Any]:
    """Official track loss: BCE-with-logits applied to `vis` / `conf` exactly as given (sigmoid outputs)."""
    if "track_list" in predictions:
        coord_preds = predictions["track_list"]
    else:
        coord_preds = predictions["track"]
        if not isinstance(coord_preds, list):
            coord_preds = [coord_preds]
    vis_scores = predictions.get("vis", None)
    conf_scores = predictions.get("conf", None)
    n_query = coord_preds[-1].shape[2]
    gt_tracks = check_and_fix_inf_nan(batch["tracks"][:, :, :n_query], hard_max=None)
    gt_track_vis_mask = batch["track_vis_mask"][:, :, :n_query]
    valids = torch.ones_like(gt_track_vis_mask)
    mask = gt_track_vis_mask[:, 0, :] == True  # noqa: E712 (official comparison)
    valids = valids * mask.unsqueeze(1)
    if not valids.any():
        dummy_coord = coord_preds[0].mean() * 0
        dummy_vis = vis_scores.mean() * 0 if vis_scores is not None else dummy_coord
        dummy_conf = conf_scores.mean() * 0 if conf_scores is not None else dummy_coord
        return {
            "loss_track": dummy_coord * weight_coord + dummy_vis * weight_vis + dummy_conf * weight_conf,
            "loss_coord_track": dummy_coord,
            "loss_vis_track": dummy_vis,
            "loss_conf_track": dummy_conf,
        }
    coord_loss = sequence_loss(
        coord_preds,
        gt_tracks,
        gt_track_vis_mask,
        valids,
        gamma=gamma,
        vis_aware=vis_aware,
        vis_aware_w=vis_aware_w,
        **kwargs,
    )
    coord_loss = check_and_fix_inf_nan(coord_loss, hard_max=None)
    if vis_scores is not None:
        vis_loss = F.binary_cross_entropy_with_logits(vis_scores[valids], gt_track_vis_mask[valids].float())
        vis_loss = check_and_fix_inf_nan(vis_loss, hard_max=None)
    else:
        vis_loss = coord_loss * 0
    if conf_scores is not None:
        gt_conf_mask = (gt_tracks - coord_preds[-1]).norm(dim=-1) < conf_threshold
        conf_loss = F.binary_cross_entropy_with_logits(conf_scores[valids], gt_conf_mask[valids].float())
        conf_loss = check_and_fix_inf_nan(conf_loss, hard_max=None)
    else:
        conf_loss = coord_loss * 0
    return {
        "loss_track": coord_loss * weight_coord + vis_loss * weight_vis + conf_loss * weight_conf,
        "loss_coord_track": coord_loss,
        "loss_vis_track": vis_loss,
        "loss_conf_track": conf_loss,
    }


def official_multitask_loss(
    predictions: dict[str, Any],
    batch: dict[str, Any],
    camera: dict[str, Any],
    depth: dict[str, Any],
    point: dict[str, Any],
    track: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """MultitaskLoss.forward (camera, depth, point, and track when `track` is in predictions) -> loss dict."""
    total: Any = 0
    out: dict[str, Any] = {}
    cam = compute_camera_loss(predictions, batch, **camera)
    total = total + cam["loss_camera"] * camera["weight"]
    out.update(cam)
    gt_depth = check_and_fix_inf_nan(batch["depths"])[..., None]
    d = _geometry(predictions["depth"], predictions["depth_conf"], gt_depth, batch, "depth", **depth)
    total = total + (d["loss_conf_depth"] + d["loss_reg_depth"] + d["loss_grad_depth"]) * depth["weight"]
    out.update(d)
    gt_points = check_and_fix_inf_nan(batch["world_points"])
    p = _geometry(predictions["world_points"], predictions["world_points_conf"], gt_points, batch, "point", **point)
    total = total + (p["loss_conf_point"] + p["loss_reg_point"] + p["loss_grad_point"]) * point["weight"]
    out.update(p)
    if "track" in predictions:
        t = compute_track_loss(predictions, batch, **(track or {}))
        total = total + t["loss_track"] * (track or {})["weight"]
        out.update(t)
    out["objective"] = total
    return out
