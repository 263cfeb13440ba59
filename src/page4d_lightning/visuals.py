"""Pure drawing: colourisation helpers, a per-clip image grid and point-cloud subsampling (the TensorBoard callback
that uses them is `page4d_lightning.callbacks.VisualLogger`).

The helpers are pure PyTorch and run on any device; images come out as uint8 (..., H, W, 3) for
TensorBoard's `add_image(..., dataformats="HWC")`, point clouds as `add_mesh` wants them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

# viridis at 9 evenly spaced stops (RGB 0..255); its darkest colour is purple, so black stays "invalid"
_VIRIDIS = torch.tensor(
    [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
     [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]],
    dtype=torch.float32,
)  # fmt: skip


def robust_range(values: Tensor, valid: Tensor | None = None, percentiles: tuple[float, float] = (2.0, 98.0)
                 ) -> tuple[float, float]:
    """(lo, hi) percentiles of the finite `values` where `valid`; (0, 1) when none is valid; hi > lo."""
    keep = torch.isfinite(values) if valid is None else torch.isfinite(values) & valid
    data = values[keep].float().flatten()
    if data.numel() == 0:
        return 0.0, 1.0
    if data.numel() > 1_000_000:  # torch.quantile caps its input size; an even stride keeps the estimate
        data = data[:: data.numel() // 1_000_000 + 1]
    lo, hi = torch.quantile(data, torch.tensor(percentiles, device=data.device) / 100.0).tolist()
    return lo, max(hi, lo + 1e-6)


def colorize(values: Tensor, valid: Tensor | None = None, value_range: tuple[float, float] | None = None) -> Tensor:
    """(...) scalars -> (..., 3) uint8 viridis; `value_range` defaults to `robust_range`; invalid/non-finite = black."""
    keep = torch.isfinite(values) if valid is None else torch.isfinite(values) & valid.bool()
    lo, hi = robust_range(values, keep) if value_range is None else value_range
    t = ((values.float() - lo) / max(hi - lo, 1e-12)).nan_to_num(0.0).clamp(0.0, 1.0)
    lut = _VIRIDIS.to(values.device)
    pos = t * (len(lut) - 1)
    i0 = pos.floor().long().clamp(max=len(lut) - 2)
    w = (pos - i0).unsqueeze(-1)
    rgb = lut[i0] * (1 - w) + lut[i0 + 1] * w  # linear interpolation between neighbouring stops
    return torch.where(keep.unsqueeze(-1), rgb, torch.zeros_like(rgb)).round().to(torch.uint8)


def colorize_depth(depth: Tensor, valid: Tensor | None = None, value_range: tuple[float, float] | None = None,
                   inverse: bool = True) -> Tensor:
    """(...) z-depth -> (..., 3) uint8; depth <= 0, non-finite or not `valid` = black.

    `value_range` is (near, far) in depth units (default: 2nd/98th percentiles of the valid depths), so
    GT and prediction can share one. With `inverse` the map is of 1/depth: near = bright, far = dark.
    """
    keep = torch.isfinite(depth) & (depth > 0)
    if valid is not None:
        keep = keep & valid.bool()
    near, far = robust_range(depth, keep) if value_range is None else value_range
    if not inverse:
        return colorize(depth, keep, (near, far))
    near = max(near, 1e-6)
    disparity = 1.0 / depth.float().clamp_min(1e-6)
    return colorize(disparity, keep, (1.0 / max(far, near + 1e-6), 1.0 / near))


def colorize_confidence(conf: Tensor) -> Tensor:
    """(...) confidence >= 1 (1 + exp) -> (..., 3) uint8 viridis of log(conf), robust range; bright = confident."""
    return colorize(conf.float().clamp_min(1e-6).log())


def colorize_mask(mask: Tensor) -> Tensor:
    """(...) mask, bool or in [0, 1] (1 = dynamic) -> (..., 3) uint8 grey, dynamic = white."""
    grey = (mask.float().nan_to_num(0.0).clamp(0.0, 1.0) * 255).round().to(torch.uint8)
    return grey.unsqueeze(-1).expand(*grey.shape, 3)


def overlay_mask(rgb: Tensor, mask: Tensor, color: tuple[int, int, int] = (255, 0, 0), alpha: float = 0.5) -> Tensor:
    """Blend `color` into uint8 `rgb` (..., 3) with weight alpha * mask, mask (...) in [0, 1]."""
    w = (alpha * mask.float().clamp(0.0, 1.0)).unsqueeze(-1)
    tint = torch.tensor(color, dtype=torch.float32, device=rgb.device)
    return (rgb.float() * (1 - w) + tint * w).round().to(torch.uint8)


def images_to_uint8(images: Tensor) -> Tensor:
    """(..., 3, H, W) float in [0, 1] -> (..., H, W, 3) uint8."""
    return (images.detach().float().clamp(0.0, 1.0) * 255).round().to(torch.uint8).movedim(-3, -1)


def upsample_patch_mask(mask: Tensor, height: int, width: int) -> Tensor:
    """(..., h, w) per-patch values -> (..., H, W), nearest: every pixel of a p x p patch gets its value."""
    h, w = mask.shape[-2:]
    if height % h or width % w or height // h != width // w:
        raise ValueError(
            f"mask: expected (..., H/p, W/p) for a square patch p and image {height}x{width}, got {tuple(mask.shape)}"
        )
    p = height // h
    return mask.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)


def frame_indices(num_frames: int, max_frames: int) -> Tensor:
    """At most `max_frames` frame indices, evenly spread over 0..num_frames-1 (first and last included)."""
    count = min(num_frames, max_frames)
    return torch.linspace(0, num_frames - 1, count).round().long().unique()


def clip_grid(batch: Mapping[str, Any], predictions: Mapping[str, Any], max_frames: int = 4
              ) -> tuple[Tensor, list[str]]:
    """One image of the first clip: rows = frames (at most `max_frames`), columns as named in the list.

    Columns: rgb | gt_depth | pred_depth | depth_conf | pred_dynamic | gt_dynamic (or pred_dynamic_overlay on
    the RGB when the batch has no `dynamic_masks`). Missing GT / prediction keys drop their column. Both depth
    columns share the GT's robust range (1/depth). Returns uint8 (rows*H, columns*W, 3) and the column names.
    """
    images = batch["images"][0].detach().cpu()  # (S, 3, H, W)
    S, _, H, W = images.shape
    idx = frame_indices(S, max_frames)
    rgb = images_to_uint8(images[idx])
    columns: dict[str, Tensor] = {"rgb": rgb}

    def clip(source: Mapping[str, Any], key: str) -> Tensor | None:
        value = source.get(key)
        return None if value is None else value[0].detach().float().cpu()[idx]

    gt_depth, pred_depth = clip(batch, "depths"), clip(predictions, "depth")
    gt_valid = clip(batch, "point_masks")
    gt_valid = gt_valid.bool() if gt_valid is not None else None
    if pred_depth is not None:
        pred_depth = pred_depth[..., 0]  # (s, H, W, 1) -> (s, H, W)
    if gt_depth is not None:
        keep = (gt_depth > 0) & torch.isfinite(gt_depth)
        if gt_valid is not None:
            keep &= gt_valid
        span = robust_range(gt_depth, keep) if keep.any() else None
        if span is None and pred_depth is not None:
            span = robust_range(pred_depth, pred_depth > 0)
        columns["gt_depth"] = colorize_depth(gt_depth, gt_valid, span)
    else:
        span = None
    if pred_depth is not None:
        columns["pred_depth"] = colorize_depth(pred_depth, value_range=span)
    conf = clip(predictions, "depth_conf")
    if conf is not None:
        columns["depth_conf"] = colorize_confidence(conf)
    pred_mask = clip(predictions, "dynamic_mask")
    if pred_mask is not None:
        pred_mask = upsample_patch_mask(pred_mask, H, W)
        columns["pred_dynamic"] = colorize_mask(pred_mask)
    gt_mask = clip(batch, "dynamic_masks")
    if gt_mask is not None:
        columns["gt_dynamic"] = colorize_mask(gt_mask)
    elif pred_mask is not None:
        columns["pred_dynamic_overlay"] = overlay_mask(rgb, pred_mask)
    # (s, H, W, 3) per column -> (s, H, C*W, 3) -> (s*H, C*W, 3)
    grid = torch.cat(list(columns.values()), dim=2).reshape(-1, len(columns) * W, 3)
    return grid, list(columns)


def point_cloud(world_points: Tensor, images: Tensor, conf: Tensor | None = None, max_points: int = 20000,
                keep_fraction: float = 0.5, opengl_axes: bool = True) -> tuple[Tensor, Tensor]:
    """Coloured points of one clip for TensorBoard's `add_mesh`.

    world_points (S, H, W, 3), images (S, 3, H, W) in [0, 1], conf (S, H, W) or None. Keeps the finite points
    whose confidence is in the top `keep_fraction`, then at most `max_points` of them at an even stride.
    With `opengl_axes` y and z are negated (OpenCV -> OpenGL), so the viewer shows the scene upright.
    Returns vertices (1, N, 3) float32 and colors (1, N, 3) uint8, N <= max_points.
    """
    if world_points.ndim != 4 or world_points.shape[-1] != 3:
        raise ValueError(f"world_points: expected (S, H, W, 3), got {tuple(world_points.shape)}")
    S, H, W, _ = world_points.shape
    if images.shape != (S, 3, H, W):
        raise ValueError(f"images: expected {(S, 3, H, W)}, got {tuple(images.shape)}")
    if conf is not None and conf.shape != (S, H, W):
        raise ValueError(f"conf: expected {(S, H, W)}, got {tuple(conf.shape)}")
    if max_points < 1 or not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"expected max_points >= 1 and 0 < keep_fraction <= 1, got {max_points}, {keep_fraction}")
    points = world_points.detach().float().reshape(-1, 3)  # (S, H, W, 3) -> (S*H*W, 3)
    colors = images_to_uint8(images).reshape(-1, 3)  # (S, H, W, 3) -> (S*H*W, 3)
    keep = torch.isfinite(points).all(dim=-1)
    if conf is not None:
        score = conf.detach().float().reshape(-1)
        keep &= torch.isfinite(score)
        if keep.any() and keep_fraction < 1.0:
            threshold = robust_range(score, keep, (100.0 * (1.0 - keep_fraction), 100.0))[0]
            keep &= score >= threshold
    points, colors = points[keep], colors[keep]
    if len(points) > max_points:  # even stride over the kept points: spatially uniform, deterministic
        pick = torch.linspace(0, len(points) - 1, max_points, device=points.device).round().long()
        points, colors = points[pick], colors[pick]
    if opengl_axes:
        points = points * torch.tensor([1.0, -1.0, -1.0], device=points.device)
    return points.cpu().unsqueeze(0), colors.cpu().unsqueeze(0)
