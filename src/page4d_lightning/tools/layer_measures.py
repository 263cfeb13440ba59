"""The per-block measures of `page4d analyze-layers`, one function each; every aggregator block is measured on its own.

"Block k" is `aggregator.frame_blocks.k` or `aggregator.global_blocks.k` (0-based, as the state dict names them).
A patch is dynamic when more than 50 % of its pixels are (`dynamic_masks`), static when none is.

- `noise_sensitivity` (the paper's layer-perturbation analysis, PAGE-4D Table 7): block k's output patch tokens are
  replaced by Gaussian noise with the same per-frame, per-channel mean and std; scored by the static-region depth
  AbsRel and, where the model and the clips have tracks, the end-point error of the static tracks.
- `attention_mass` (in `attention_mass.py`): the softmax attention that the camera and register tokens give to
  dynamic and static patch keys, with or without the dynamics bias; only the special-token rows are computed.
- `layer_sensitivity` (the "mask-swap" measure): how far each block's camera-token output moves when the dynamic
  patches of the input are blanked, against as many static patches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from page4d_lightning.geometry import patch_fraction
from page4d_lightning.losses import camera_loss
from page4d_lightning.metrics.functional import depth_errors
from page4d_lightning.models import PAGE4D

KINDS = ("frame", "global")


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def patch_labels(dynamic_masks: Tensor, patch_size: int) -> tuple[Tensor, Tensor]:
    """dynamic_masks (B, S, H, W) bool -> (dynamic, static) (B, S, h*w) bool: > 50 % / no dynamic pixel."""
    share = patch_fraction(dynamic_masks, patch_size).flatten(-2)  # (B, S, h*w)
    return share > 0.5, share == 0


# ------------------------------------------------------------------------------------------------------- noise
def gaussian_like_patches(tokens: Tensor, patch_start_idx: int, generator: torch.Generator) -> Tensor:
    """tokens (n, P, C) -> the same with the patch tokens [patch_start_idx:] replaced, per row n and channel, by
    Gaussian noise of their mean and (population) std over the patches; camera / register tokens are kept."""
    patches = tokens[:, patch_start_idx:]
    mean = patches.mean(dim=1, keepdim=True)
    std = patches.std(dim=1, keepdim=True, correction=0)
    noise = torch.randn(patches.shape, generator=generator, device=tokens.device, dtype=tokens.dtype)
    return torch.cat([tokens[:, :patch_start_idx], mean + std * noise], dim=1)


@contextmanager
def noised_block(model: PAGE4D, kind: str, index: int, tokens_per_frame: int, seed: int) -> Iterator[None]:
    """Within the context, block `kind` `index` outputs `gaussian_like_patches` of its output (noise seeded)."""
    agg = model.aggregator
    block = (agg.frame_blocks if kind == "frame" else agg.global_blocks)[index]

    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        generator = torch.Generator(device=output.device).manual_seed(seed)
        frames = output.reshape(-1, tokens_per_frame, output.shape[-1])  # (B, S*P, C) or (B*S, P, C) -> (B*S, P, C)
        return gaussian_like_patches(frames, agg.patch_start_idx, generator).reshape(output.shape)

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _static_track_epe(pred: Tensor, batch: dict[str, Any]) -> tuple[float, float]:
    """(sum of pixel end-point errors, count) over frames 1.. of the visible GT tracks whose query point (frame 0)
    is not on a dynamic pixel (and that are positive, where `track_positive_mask` exists). pred (B, S, N, 2)."""
    gt, vis = batch["tracks"].float(), batch["track_vis_mask"].bool().clone()
    b, s, n, _ = gt.shape
    vis[:, 0] = False  # the query frame itself is given, not predicted
    keep = batch.get("track_positive_mask", torch.ones(b, n, dtype=torch.bool, device=gt.device)).bool()
    if "dynamic_masks" in batch:
        height, width = batch["dynamic_masks"].shape[-2:]
        x = gt[:, 0, :, 0].round().long().clamp(0, width - 1)
        y = gt[:, 0, :, 1].round().long().clamp(0, height - 1)
        moving = batch["dynamic_masks"][:, 0].bool().flatten(1).gather(1, y * width + x)  # (B, N)
        keep = keep & ~moving
    use = vis & keep[:, None]  # (B, S, N)
    err = (pred.float() - gt).norm(dim=-1)
    return float(err[use].sum()), float(use.sum())


def _score(model: PAGE4D, batch: dict[str, Any]) -> Tensor:
    """[static AbsRel x valid pixels, valid static pixels, static track EPE sum, count] of one batch (float64)."""
    tracked = model.track_head is not None and "tracks" in batch
    query = batch["tracks"][:, 0].to(batch["images"].dtype) if tracked else None
    pred = model(batch["images"], query_points=query)
    gt = batch["depths"] * batch["point_masks"]
    dynamic = batch.get("dynamic_masks", torch.zeros_like(gt, dtype=torch.bool)).bool()
    errors = depth_errors(pred["depth"][..., 0].float(), gt.float(), align="median", per="frame",
                          dynamic_masks=dynamic)
    pixels = errors["valid_pixels_static"]
    abs_rel = torch.where(pixels > 0, errors["abs_rel_static"], torch.zeros_like(pixels))  # NaN without pixels
    track = _static_track_epe(pred["track"], batch) if tracked else (0.0, 0.0)
    return torch.tensor([float((abs_rel * pixels).sum()), float(pixels.sum()), *track], dtype=torch.float64)


@torch.no_grad()
def noise_sensitivity(
    model: PAGE4D, batches: list[dict[str, Any]], layers: Iterable[int], seed: int = 0
) -> dict[str, Any]:
    """Replace one block's output patch tokens by matched Gaussian noise (`gaussian_like_patches`) and score the model.

    For each k in `layers` and each kind (frame, global), over the clips of `batches` (each with `images`, `depths`,
    `point_masks`, optional `dynamic_masks` and tracks): static AbsRel = sum over clips of (median-aligned per-frame
    AbsRel on valid non-dynamic pixels, `depth_errors`) x pixels / pixels; track EPE = mean pixel error of the
    static tracks (`_static_track_epe`), None without a track head or tracks. Clip c uses noise seed `seed + c` for
    every block (common random numbers). Returns {"baseline": {abs_rel_static, track_epe},
    "blocks": {(kind, k): {abs_rel_static, abs_rel_increase, track_epe, track_epe_increase}}}.
    """
    device = next(model.parameters()).device
    patch = model.config.patch_size
    batches = [_to(b, device) for b in batches]

    def summary(totals: Tensor) -> dict[str, float | None]:
        abs_rel = float(totals[0] / totals[1]) if totals[1] > 0 else math.nan
        return {"abs_rel_static": abs_rel, "track_epe": float(totals[2] / totals[3]) if totals[3] > 0 else None}

    base = summary(sum(_score(model, b) for b in batches))
    out: dict[str, Any] = {"baseline": base, "blocks": {}}
    for index in sorted({i % model.config.depth for i in layers}):
        for kind in KINDS:
            totals = torch.zeros(4, dtype=torch.float64)
            for c, batch in enumerate(batches):
                height, width = batch["images"].shape[-2:]
                tokens_per_frame = model.aggregator.patch_start_idx + (height // patch) * (width // patch)
                with noised_block(model, kind, index, tokens_per_frame, seed + c):
                    totals += _score(model, batch)
            row = summary(totals)
            row["abs_rel_increase"] = row["abs_rel_static"] - base["abs_rel_static"]
            noisy, clean = row["track_epe"], base["track_epe"]
            row["track_epe_increase"] = noisy - clean if noisy is not None and clean is not None else None
            out["blocks"][(kind, index)] = row
    return out


# --------------------------------------------------------------------------------------------------- mask-swap
def _control_patches(dynamic: Tensor, static: Tensor, generator: torch.Generator) -> Tensor:
    """(N, h, w) bool masks -> per frame, as many random `static` patches as `dynamic` ones (or all)."""
    out = torch.zeros_like(dynamic.flatten(1))
    for i, (dyn, stat) in enumerate(zip(dynamic.flatten(1), static.flatten(1))):
        candidates = stat.nonzero().squeeze(1)
        pick = torch.randperm(candidates.numel(), generator=generator)[: int(dyn.sum())]
        out[i, candidates[pick]] = True
    return out.view_as(dynamic)


def _blank(images: Tensor, patches: Tensor, patch_size: int) -> Tensor:
    """images (N, 3, H, W), patches (N, h, w) bool -> those patches filled with the frame's mean colour."""
    pixels = patches.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)[:, None]  # (N,h,w)->(N,1,H,W)
    return torch.where(pixels, images.mean(dim=(2, 3), keepdim=True), images)


def _camera_tokens(model: PAGE4D, images: Tensor) -> Tensor:
    """(B, S, 3, H, W) -> (depth, 2, B, S, C): camera token after frame block i ([i, 0]) and global block i."""
    tokens, _, _ = model.aggregator(images)
    c = model.config.embed_dim
    return torch.stack([torch.stack([t[:, :, 0, :c], t[:, :, 0, c:]]) for t in tokens])  # (B,S,P,2C) halves


def layer_sensitivity(model: PAGE4D, batches: Iterable[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """The "mask-swap" measure: rank the aggregator blocks (frame i, global i) by how much dynamic content moves them.

    Per block, over the clips of `batches` (normalised batches with `dynamic_masks`):
      dynamic_shift: mean relative change |t' - t| / |t| of the block's camera-token output t when the
        dynamic patches (> 50 % dynamic pixels) are filled with the frame's mean colour;
      static_shift: the same when as many random fully static patches are filled instead;
      ratio = dynamic_shift / static_shift (> 1: the block's camera token reacts to moving content more than to
        the same amount of static content);
      grad_rms: RMS over the block's parameters of the camera-loss gradient (`camera_loss`).
    t is the cumulative state after block i, so block i's shift includes the upstream blocks' reaction.
    Frames without dynamic patches do not count. Rows sorted by `ratio`, best first, with `rank`.
    """
    cfg, generator = model.config, torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    shifts, grad_sq, frames, clips = torch.zeros(2, cfg.depth, 2), torch.zeros(cfg.depth, 2), 0.0, 0
    blocks = [[model.aggregator.frame_blocks[i], model.aggregator.global_blocks[i]] for i in range(cfg.depth)]
    for batch in batches:
        batch = _to(batch, device)
        images = batch["images"]
        b, s, _, height, width = images.shape
        flat = images.flatten(0, 1)  # (B, S, 3, H, W) -> (B*S, 3, H, W)
        share = F.avg_pool2d(batch["dynamic_masks"].flatten(0, 1)[:, None].float(), cfg.patch_size)[:, 0]
        dynamic = share > 0.5  # (B*S, h, w)
        control = _control_patches(dynamic.cpu(), (share == 0).cpu(), generator).to(device)
        weight = dynamic.flatten(1).any(dim=1).view(b, s).float()  # frames with dynamic patches count
        with torch.no_grad():
            ref = _camera_tokens(model, images)
            for j, patches in enumerate((dynamic, control)):
                moved = _camera_tokens(model, _blank(flat, patches, cfg.patch_size).view(b, s, 3, height, width))
                rel = (moved - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12)  # (depth, 2, B, S)
                shifts[j] += (rel * weight).sum(dim=(2, 3)).cpu()
        frames += float(weight.sum())
        model.zero_grad(set_to_none=True)
        camera_loss(model(images), batch)["loss_camera"].backward()
        for i, pair in enumerate(blocks):
            for k, block in enumerate(pair):
                params = list(block.parameters())
                sq = sum(float(p.grad.float().pow(2).sum()) for p in params if p.grad is not None)
                grad_sq[i, k] += sq / sum(p.numel() for p in params)
        clips += b
    if frames == 0:
        raise ValueError("layer_sensitivity: no frame with dynamic patches in the given clips")
    model.zero_grad(set_to_none=True)
    rows = []
    for i in range(cfg.depth):
        for k, kind in enumerate(KINDS):
            dyn, stat = float(shifts[0, i, k]) / frames, float(shifts[1, i, k]) / frames
            rows.append({"block": f"aggregator.{kind}_blocks.{i}", "kind": kind, "index": i,
                         "dynamic_shift": dyn, "static_shift": stat, "ratio": dyn / max(stat, 1e-12),
                         "grad_rms": math.sqrt(float(grad_sq[i, k]) / clips)})
    rows.sort(key=lambda r: -r["ratio"])
    return [{"rank": n + 1, **r} for n, r in enumerate(rows)]
