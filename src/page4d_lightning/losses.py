"""Multitask loss of VGGT / PAGE-4D: camera, depth, point map and (optional) tracking and mask terms.

Each term is a small tensor function returning named terms with the official names; `MultitaskLoss`
only holds the per-task configuration dicts (the official layout) and sums the `objective`:

    objective = w_cam * loss_camera
              + w_depth * (loss_conf_depth + loss_reg_depth + loss_grad_depth)
              + w_point * (loss_conf_point + loss_reg_point + loss_grad_point)
              + w_track * loss_track
              + w_mask * loss_mask          (ours: GT supervision of the dynamic mask; the official code has none)

Inputs: the predictions dict of `PAGE4D` and a normalised batch (see `page4d_lightning.types.Batch`).
Ground truth that is NaN/inf is set to 0 and clamped to +-100, as in the official code.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from page4d_lightning.geometry import extri_intri_to_pose_encoding, patch_fraction

logger = logging.getLogger(__name__)

__all__ = [
    "MultitaskLoss",
    "camera_loss",
    "depth_loss",
    "point_loss",
    "track_loss",
    "mask_loss",
    "regression_loss",
    "gradient_loss",
    "normal_loss",
    "fix_non_finite",
    "filter_by_quantile",
]


def fix_non_finite(x: Tensor, name: str = "tensor", hard_max: float | None = 100.0) -> Tensor:
    """Replace NaN/inf by 0 (with a warning naming `name`), then clamp to [-hard_max, hard_max]."""
    if not torch.isfinite(x).all():
        logger.warning("%s contains NaN or inf values; replacing them with 0", name)
        x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    if hard_max is not None:
        x = x.clamp(min=-hard_max, max=hard_max)
    return x


def _zero_like_graph(t: Tensor) -> Tensor:
    """A scalar 0 that keeps `t` in the autograd graph (so DDP sees every parameter used)."""
    return (t * 0.0).mean()


# --------------------------------------------------------------------------------------------- camera
def camera_loss(
    predictions: dict[str, Any],
    batch: dict[str, Any],
    loss_type: str = "l1",
    gamma: float = 0.6,
    weight_trans: float = 1.0,
    weight_rot: float = 1.0,
    weight_focal: float = 0.5,
    min_valid_pixels: int = 100,
) -> dict[str, Tensor]:
    """Pose-encoding loss over the iterations of `pose_enc_list` (each (B, S, 9)).

    Iteration i of n gets weight gamma^(n-1-i); the sum is divided by n. A clip counts only when its
    first frame has more than `min_valid_pixels` valid pixels and `abandon_pose` is False.
    """
    pred_list: list[Tensor] = predictions["pose_enc_list"]
    point_masks: Tensor = batch["point_masks"]
    valid_clip = point_masks[:, 0].sum(dim=(-1, -2)) > min_valid_pixels  # (B,)
    if "abandon_pose" in batch:
        valid_clip = valid_clip & ~batch["abandon_pose"].to(torch.bool)
    image_hw = tuple(batch["images"].shape[-2:])
    gt_enc = extri_intri_to_pose_encoding(batch["extrinsics"], batch["intrinsics"], image_hw)

    n = len(pred_list)
    total_t = total_r = total_fl = pred_list[0].new_zeros(())
    for i, pred in enumerate(pred_list):
        stage_weight = gamma ** (n - i - 1)
        if valid_clip.any():
            lt, lr, lfl = _camera_terms(pred[valid_clip], gt_enc[valid_clip], loss_type)
        else:
            lt = lr = lfl = _zero_like_graph(pred)
        total_t = total_t + lt * stage_weight
        total_r = total_r + lr * stage_weight
        total_fl = total_fl + lfl * stage_weight
    loss_t, loss_r, loss_fl = total_t / n, total_r / n, total_fl / n
    return {
        "loss_camera": loss_t * weight_trans + loss_r * weight_rot + loss_fl * weight_focal,
        "loss_T": loss_t,
        "loss_R": loss_r,
        "loss_FL": loss_fl,
    }


def _camera_terms(pred: Tensor, gt: Tensor, loss_type: str) -> tuple[Tensor, Tensor, Tensor]:
    """(..., 9) pose encodings -> mean translation, rotation and FoV errors (L_T clamped at 100)."""
    diff = pred - gt.to(pred.dtype)
    if loss_type == "l1":
        lt, lr, lfl = diff[..., :3].abs(), diff[..., 3:7].abs(), diff[..., 7:].abs()
    elif loss_type == "l2":
        lt = diff[..., :3].norm(dim=-1, keepdim=True)
        lr, lfl = diff[..., 3:7].norm(dim=-1), diff[..., 7:].norm(dim=-1)
    else:
        raise ValueError(f"camera loss_type: expected 'l1' or 'l2', got {loss_type!r}")
    lt = fix_non_finite(lt, "loss_T").clamp(max=100).mean()
    lr = fix_non_finite(lr, "loss_R").mean()
    lfl = fix_non_finite(lfl, "loss_FL").mean()
    return lt, lr, lfl


# ------------------------------------------------------------------------------------ depth / points
def depth_loss(
    predictions: dict[str, Any],
    batch: dict[str, Any],
    gamma: float = 1.0,
    alpha: float = 0.2,
    gradient_loss_fn: str | None = None,
    valid_range: float = -1.0,
) -> dict[str, Tensor]:
    """Confidence-weighted depth loss: predictions `depth (B,S,H,W,1)`, `depth_conf (B,S,H,W)`."""
    gt = fix_non_finite(batch["depths"], "gt_depth")[..., None]
    terms = _geometry_loss(
        predictions["depth"], predictions["depth_conf"], gt, batch, gamma, alpha, gradient_loss_fn, valid_range
    )
    return {f"loss_{k}_depth": v for k, v in terms.items()}


def point_loss(
    predictions: dict[str, Any],
    batch: dict[str, Any],
    gamma: float = 1.0,
    alpha: float = 0.2,
    gradient_loss_fn: str | None = None,
    valid_range: float = -1.0,
) -> dict[str, Tensor]:
    """Confidence-weighted point-map loss: `world_points (B,S,H,W,3)`, `world_points_conf (B,S,H,W)`."""
    gt = fix_non_finite(batch["world_points"], "gt_points")
    terms = _geometry_loss(
        predictions["world_points"],
        predictions["world_points_conf"],
        gt,
        batch,
        gamma,
        alpha,
        gradient_loss_fn,
        valid_range,
    )
    return {f"loss_{k}_point": v for k, v in terms.items()}


def _geometry_loss(
    pred: Tensor,
    conf: Tensor,
    gt: Tensor,
    batch: dict[str, Any],
    gamma: float,
    alpha: float,
    gradient_loss_fn: str | None,
    valid_range: float,
) -> dict[str, Tensor]:
    mask: Tensor = batch["point_masks"].to(torch.bool)
    abandon = batch.get("abandon_geometry")
    if mask.sum() < 100 or (abandon is not None and bool(abandon.any())):
        zero = _zero_like_graph(pred)
        return {"conf": zero, "reg": zero, "grad": zero}
    loss_conf, loss_grad, loss_reg = regression_loss(
        pred, gt, mask, conf, gradient_loss_fn, gamma=gamma, alpha=alpha, valid_range=valid_range
    )
    return {"conf": loss_conf, "reg": loss_reg, "grad": loss_grad}


def regression_loss(
    pred: Tensor,
    gt: Tensor,
    mask: Tensor,
    conf: Tensor,
    gradient_loss_fn: str | None = None,
    gamma: float = 1.0,
    alpha: float = 0.2,
    valid_range: float = -1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """pred, gt (B,S,H,W,C), mask (B,S,H,W) bool, conf (B,S,H,W) -> (loss_conf, loss_grad, loss_reg).

    loss_reg = ||gt - pred|| over valid pixels; loss_conf = gamma * loss_reg * conf - alpha * log(conf);
    both quantile-filtered at `valid_range` when > 0. loss_grad: multi-scale `grad` (4 scales) or
    `normal` (3 scales) term; with "conf" in its name it is confidence-weighted too.
    """
    b, s, h, w, c = pred.shape
    reg = fix_non_finite(torch.norm(gt[mask] - pred[mask], dim=-1), "loss_reg")
    safe_conf = conf[mask].clamp(min=1e-6)
    conf_term = fix_non_finite(gamma * reg * safe_conf - alpha * torch.log(safe_conf), "loss_conf")

    loss_grad = _zero_like_graph(pred)
    if gradient_loss_fn:
        flat_conf = conf.reshape(b * s, h, w) if "conf" in gradient_loss_fn else None
        # (B, S, H, W, C) -> (B*S, H, W, C): gradient terms are per image
        args = (pred.reshape(b * s, h, w, c), gt.reshape(b * s, h, w, c), mask.reshape(b * s, h, w))
        if "normal" in gradient_loss_fn:
            loss_grad = _multi_scale(normal_loss, *args, scales=3, conf=flat_conf)
        elif "grad" in gradient_loss_fn:
            loss_grad = _multi_scale(gradient_loss, *args, scales=4, conf=flat_conf)
        else:
            raise ValueError(
                f"gradient_loss_fn: expected a name containing 'grad' or 'normal', got {gradient_loss_fn!r}"
            )

    def reduce(t: Tensor, name: str) -> Tensor:
        if t.numel() == 0:
            return _zero_like_graph(pred)
        if valid_range > 0:
            t = filter_by_quantile(t, valid_range)
        return fix_non_finite(t, name).mean()

    return reduce(conf_term, "loss_conf"), loss_grad, reduce(reg, "loss_reg")


def _multi_scale(fn: Any, pred: Tensor, gt: Tensor, mask: Tensor, scales: int, conf: Tensor | None) -> Tensor:
    """Average of `fn` over images subsampled by 1, 2, 4, ... (2^(scales-1)) pixels."""
    total = _zero_like_graph(pred)
    for scale in range(scales):
        step = 2**scale
        total = total + fn(
            pred[:, ::step, ::step],
            gt[:, ::step, ::step],
            mask[:, ::step, ::step],
            conf=None if conf is None else conf[:, ::step, ::step],
        )
    return total / scales


def gradient_loss(
    pred: Tensor, gt: Tensor, mask: Tensor, conf: Tensor | None = None, gamma: float = 1.0, alpha: float = 0.2
) -> Tensor:
    """L1 of horizontal/vertical differences of the masked residual; (N,H,W,C), mask (N,H,W)."""
    mask_c = mask[..., None].expand_as(pred).to(pred.dtype)
    diff = (pred - gt) * mask_c
    grad_x = (diff[:, :, 1:] - diff[:, :, :-1]).abs() * (mask_c[:, :, 1:] * mask_c[:, :, :-1])
    grad_y = (diff[:, 1:] - diff[:, :-1]).abs() * (mask_c[:, 1:] * mask_c[:, :-1])
    grad_x, grad_y = grad_x.clamp(max=100), grad_y.clamp(max=100)
    if conf is not None:
        conf_c = conf[..., None].expand_as(pred)
        cx, cy = conf_c[:, :, 1:].clamp(min=1e-6), conf_c[:, 1:].clamp(min=1e-6)
        grad_x = gamma * grad_x * cx - alpha * torch.log(cx)
        grad_y = gamma * grad_y * cy - alpha * torch.log(cy)
    divisor = mask_c.sum()
    if divisor == 0:
        return _zero_like_graph(pred)
    return fix_non_finite((grad_x.sum() + grad_y.sum()) / divisor, "grad_loss")


def point_map_to_normal(points: Tensor, mask: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """(N,H,W,3) points, (N,H,W) mask -> normals (4,N,H,W,3) from 4 neighbour cross products, valid (4,N,H,W)."""
    padded_mask = F.pad(mask, (1, 1, 1, 1), value=False)
    # (N,H,W,3) -> (N,H+2,W+2,3), zero-padded
    pts = F.pad(points.permute(0, 3, 1, 2), (1, 1, 1, 1)).permute(0, 2, 3, 1)
    center = pts[:, 1:-1, 1:-1]
    up, left = pts[:, :-2, 1:-1] - center, pts[:, 1:-1, :-2] - center
    down, right = pts[:, 2:, 1:-1] - center, pts[:, 1:-1, 2:] - center
    normals = torch.stack(
        [
            torch.cross(up, left, dim=-1),
            torch.cross(left, down, dim=-1),
            torch.cross(down, right, dim=-1),
            torch.cross(right, up, dim=-1),
        ]
    )
    m_c, m_u, m_l = padded_mask[:, 1:-1, 1:-1], padded_mask[:, :-2, 1:-1], padded_mask[:, 1:-1, :-2]
    m_d, m_r = padded_mask[:, 2:, 1:-1], padded_mask[:, 1:-1, 2:]
    valids = torch.stack([m_u & m_c & m_l, m_l & m_c & m_d, m_d & m_c & m_r, m_r & m_c & m_u])
    return F.normalize(normals, p=2, dim=-1, eps=eps), valids


def normal_loss(
    pred: Tensor,
    gt: Tensor,
    mask: Tensor,
    conf: Tensor | None = None,
    cos_eps: float = 1e-8,
    gamma: float = 1.0,
    alpha: float = 0.2,
) -> Tensor:
    """Mean (1 - cos) between predicted and GT surface normals of (N,H,W,3) point maps."""
    with torch.autocast(device_type=pred.device.type, enabled=False):
        pred_n, pred_v = point_map_to_normal(pred.float(), mask, eps=cos_eps)
        gt_n, gt_v = point_map_to_normal(gt.float(), mask, eps=cos_eps)
    valid = pred_v & gt_v
    if valid.sum() < 10:
        return _zero_like_graph(pred)
    dot = (pred_n[valid] * gt_n[valid]).sum(dim=-1).clamp(-1 + cos_eps, 1 - cos_eps)
    loss = fix_non_finite(1 - dot, "normal_loss")
    if conf is not None:
        c = conf[None].expand(4, -1, -1, -1)[valid].clamp(min=1e-6)
        loss = gamma * loss * c - alpha * torch.log(c)
    return loss.mean()


def filter_by_quantile(t: Tensor, valid_range: float, min_elements: int = 1000, hard_max: float = 100.0) -> Tensor:
    """Keep the values below the `valid_range` quantile ("nearest" kth value) after clamping at hard_max.

    Tensors with <= min_elements values are returned unchanged; if the filter would keep
    <= min_elements values, the clamped tensor is returned (official behaviour).
    """
    if t.numel() <= min_elements:
        return t
    if t.numel() > 100_000_000:
        t = t.reshape(-1)[torch.randperm(t.numel(), device=t.device)[:1_000_000]]
    t = t.clamp(max=hard_max)
    flat = t.detach().reshape(-1)
    k = round(valid_range * (flat.numel() - 1)) + 1
    thresh = min(float(torch.kthvalue(flat, k).values), hard_max)
    keep = t < thresh
    return t[keep] if keep.sum() > min_elements else t


# --------------------------------------------------------------------------------------------- tracks
def track_loss(
    predictions: dict[str, Any],
    batch: dict[str, Any],
    gamma: float = 0.8,
    weight_coord: float = 1.0,
    weight_vis: float = 0.2,
    weight_conf: float = 0.1,
    vis_aware: bool = False,
    vis_aware_w: float = 0.1,
    conf_threshold: float = 3.0,
) -> dict[str, Tensor]:
    """Tracking loss (official `compute_track_loss`): coordinate L1 over iterations, visibility and confidence BCE.

    predictions: `track_list` (iterations of (B,S,N,2) pixels; falls back to `[track]`), `vis`, `conf`
    (B,S,N), sigmoid outputs. batch: `tracks` (B,S,N',2) pixels, `track_vis_mask` (B,S,N') bool, sliced to
    the N predicted queries. Only tracks visible in frame 0 count (`track_positive_mask` is not used, as
    officially). `loss_coord_track` = sum_i gamma^(n-1-i) * mean over visible points of the x/y-mean L1,
    divided by n (an iteration with <= 2 such points adds 0 unless `vis_aware`). `loss_vis_track` /
    `loss_conf_track` use BCE-with-logits on `vis` / `conf` as the official code, which treats the sigmoid
    outputs as logits; the confidence target is "final-iteration error < conf_threshold pixels".
    `vis_aware` only changes the mask weight, which cancels in the masked mean (official behaviour).
    """
    coord_preds = predictions.get("track_list")
    if coord_preds is None:
        coord_preds = [predictions["track"]]
    n_query = coord_preds[-1].shape[2]
    gt_tracks = fix_non_finite(batch["tracks"][:, :, :n_query], "gt_tracks", hard_max=None)
    gt_vis = batch["track_vis_mask"][:, :, :n_query].to(torch.bool)
    valid = gt_vis[:, 0:1].expand_as(gt_vis)  # tracks visible at their query frame, for every frame
    if not valid.any():
        logger.warning("track_loss: no track is visible in the first frame; the track terms are 0")
        zero = _zero_like_graph(coord_preds[-1])
        return {"loss_track": zero, "loss_coord_track": zero, "loss_vis_track": zero, "loss_conf_track": zero}
    coord = _sequence_l1(coord_preds, gt_tracks, valid & gt_vis, gamma, vis_aware)
    vis_loss = _bce_on_sigmoid_outputs(predictions.get("vis"), gt_vis.float(), valid, coord)
    gt_conf = ((gt_tracks - coord_preds[-1]).norm(dim=-1) < conf_threshold).float()
    conf_loss = _bce_on_sigmoid_outputs(predictions.get("conf"), gt_conf, valid, coord)
    total = coord * weight_coord + vis_loss * weight_vis + conf_loss * weight_conf
    return {"loss_track": total, "loss_coord_track": coord, "loss_vis_track": vis_loss, "loss_conf_track": conf_loss}


def _sequence_l1(preds: list[Tensor], gt: Tensor, mask: Tensor, gamma: float, vis_aware: bool) -> Tensor:
    """Official `sequence_loss`: preds n x (B,S,N,2), gt (B,S,N,2), mask (B,S,N) bool -> scalar."""
    n = len(preds)
    enough = vis_aware or int(mask.sum()) > 2
    loss = preds[-1].new_zeros(())
    for i, pred in enumerate(preds):
        err = fix_non_finite((pred - gt).abs(), "track_l1", hard_max=None).mean(dim=-1)  # (B,S,N) pixels
        loss = loss + gamma ** (n - i - 1) * (err[mask].mean() if enough else _zero_like_graph(err))
    return fix_non_finite(loss / n, "coord_loss", hard_max=None)


def _bce_on_sigmoid_outputs(scores: Tensor | None, target: Tensor, valid: Tensor, like: Tensor) -> Tensor:
    """BCE-with-logits of `scores[valid]` (sigmoid outputs used as logits, as officially); 0 if None."""
    if scores is None:
        return like * 0.0
    bce = F.binary_cross_entropy_with_logits(scores[valid], target[valid])
    return fix_non_finite(bce, "track_bce", hard_max=None)


# ---------------------------------------------------------------------------------------- dynamic mask
def mask_loss(predictions: dict[str, Any], batch: dict[str, Any], eps: float = 1e-4) -> dict[str, Tensor]:
    """Supervision of the dynamic mask by the GT (an option the official code lacks: its mask learns only through
    the camera loss). predictions: `dynamic_mask` (B,S,h,w) in (0, 1), 1 = dynamic; batch: `dynamic_masks`
    (B,S,H,W) bool. `loss_mask` = BCE against each patch's dynamic share (`geometry.patch_fraction`, a soft target
    at object boundaries), the probability clamped to [eps, 1 - eps]."""
    pred = predictions["dynamic_mask"].float()
    gt = batch["dynamic_masks"]
    patch = gt.shape[-1] // pred.shape[-1]
    if patch < 1 or gt.shape[:-2] != pred.shape[:-2] or tuple(gt.shape[-2:]) != (patch * pred.shape[-2],
                                                                                  patch * pred.shape[-1]):
        raise ValueError(f"mask_loss: dynamic_mask {tuple(pred.shape)} is not a patch grid of the GT "
                         f"dynamic_masks {tuple(gt.shape)}")
    target = patch_fraction(gt, patch)
    return {"loss_mask": F.binary_cross_entropy(pred.clamp(eps, 1 - eps), target)}


# ------------------------------------------------------------------------------------------- compose
LOSS_FUNCTIONS: dict[str, Callable[..., dict[str, Tensor]]] = {
    "camera": camera_loss, "depth": depth_loss, "point": point_loss, "track": track_loss, "mask": mask_loss,
}


def check_loss_keys(task: str, cfg: dict[str, Any] | None) -> None:
    """Raise ValueError naming the keys of the `task` loss block that are not `weight` or a loss argument."""
    if cfg is None:
        return
    known = ["weight", *list(inspect.signature(LOSS_FUNCTIONS[task]).parameters)[2:]]
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ValueError(f"loss.{task}: unknown key(s) {unknown}; expected some of {known}")


def _arguments(cfg: dict[str, Any]) -> dict[str, Any]:
    """A loss block without its `weight` (which `MultitaskLoss` applies): the loss function's arguments."""
    return {k: v for k, v in cfg.items() if k != "weight"}


class MultitaskLoss(torch.nn.Module):
    """Weighted sum of the task losses; each argument is the official per-task config dict.

    A task whose dict is None, or whose weight is 0, is skipped. `forward` returns every term plus
    `objective` (the scalar to minimise). A key that is not `weight` or an argument of the task's loss function
    raises ValueError naming it: a misspelled key in a YAML loss block must not silently change nothing.
    """

    def __init__(
        self,
        camera: dict[str, Any] | None = None,
        depth: dict[str, Any] | None = None,
        point: dict[str, Any] | None = None,
        track: dict[str, Any] | None = None,
        mask: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, cfg in (("camera", camera), ("depth", depth), ("point", point), ("track", track), ("mask", mask)):
            check_loss_keys(name, cfg)
        self.camera, self.depth, self.point, self.track, self.mask = camera, depth, point, track, mask

    @staticmethod
    def _active(cfg: dict[str, Any] | None) -> bool:
        return cfg is not None and float(cfg.get("weight", 1.0)) != 0.0

    def forward(self, predictions: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        total: Tensor | None = None

        def add(value: Tensor, weight: float) -> None:
            nonlocal total
            total = value * weight if total is None else total + value * weight

        if self._active(self.camera) and "pose_enc_list" in predictions:
            t = camera_loss(predictions, batch, **_arguments(self.camera))
            terms.update(t)
            add(t["loss_camera"], self.camera.get("weight", 1.0))
        if self._active(self.depth) and "depth" in predictions:
            t = depth_loss(predictions, batch, **_arguments(self.depth))
            terms.update(t)
            add(t["loss_conf_depth"] + t["loss_reg_depth"] + t["loss_grad_depth"], self.depth.get("weight", 1.0))
        if self._active(self.point) and "world_points" in predictions:
            t = point_loss(predictions, batch, **_arguments(self.point))
            terms.update(t)
            add(t["loss_conf_point"] + t["loss_reg_point"] + t["loss_grad_point"], self.point.get("weight", 1.0))
        if self._active(self.track) and "track_list" in predictions and "tracks" in batch:
            t = track_loss(predictions, batch, **_arguments(self.track))
            terms.update(t)
            add(t["loss_track"], self.track.get("weight", 1.0))
        if self._active(self.mask) and "dynamic_mask" in predictions and "dynamic_masks" in batch:
            t = mask_loss(predictions, batch, **_arguments(self.mask))
            terms.update(t)
            add(t["loss_mask"], self.mask.get("weight", 1.0))
        if total is None:
            raise ValueError("MultitaskLoss: no active loss term matches the predictions (check the weights)")
        terms["objective"] = total
        return terms
