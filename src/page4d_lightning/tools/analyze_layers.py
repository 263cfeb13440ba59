"""`page4d analyze-layers`: which aggregator blocks react to dynamic content.

The measure (`layer_sensitivity`, the "mask-swap" measure): fill a clip's dynamic patches with the frame's mean
colour and see how much each block's camera-token output moves, against the same number of static patches.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from page4d_lightning.losses import camera_loss
from page4d_lightning.models import PAGE4D, PAGE4DConfig, load_weights


def _control_patches(dynamic: torch.Tensor, static: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(N, h, w) bool masks -> per frame, as many random `static` patches as `dynamic` ones (or all)."""
    out = torch.zeros_like(dynamic.flatten(1))
    for i, (dyn, stat) in enumerate(zip(dynamic.flatten(1), static.flatten(1))):
        candidates = stat.nonzero().squeeze(1)
        pick = torch.randperm(candidates.numel(), generator=generator)[: int(dyn.sum())]
        out[i, candidates[pick]] = True
    return out.view_as(dynamic)


def _blank(images: torch.Tensor, patches: torch.Tensor, patch_size: int) -> torch.Tensor:
    """images (N, 3, H, W), patches (N, h, w) bool -> those patches filled with the frame's mean colour."""
    pixels = patches.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)[:, None]  # (N,h,w)->(N,1,H,W)
    return torch.where(pixels, images.mean(dim=(2, 3), keepdim=True), images)


def _camera_tokens(model: PAGE4D, images: torch.Tensor) -> torch.Tensor:
    """(B, S, 3, H, W) -> (depth, 2, B, S, C): camera token after frame block i ([i, 0]) and global block i."""
    tokens, _, _ = model.aggregator(images)
    c = model.config.embed_dim
    return torch.stack([torch.stack([t[:, :, 0, :c], t[:, :, 0, c:]]) for t in tokens])  # (B,S,P,2C) halves


def layer_sensitivity(model: PAGE4D, batches: Iterable[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Rank the aggregator blocks (frame i, global i) by how much dynamic content drives them.

    Per block, over the clips of `batches` (normalised batches with `dynamic_masks`):
      dynamic_shift: mean relative change |t' - t| / |t| of the block's camera-token output t when the
        dynamic patches (> 50 % dynamic pixels) are filled with the frame's mean colour;
      static_shift: the same when as many random fully static patches are filled instead;
      ratio = dynamic_shift / static_shift (> 1: the block reacts to moving content more than to the
        same amount of static content: a candidate to fine-tune);
      grad_rms: RMS over the block's parameters of the camera-loss gradient (`camera_loss`).
    Frames without dynamic patches do not count. Rows sorted by `ratio`, best first, with `rank`.
    """
    cfg, generator = model.config, torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    shifts, grad_sq, frames, clips = torch.zeros(2, cfg.depth, 2), torch.zeros(cfg.depth, 2), 0.0, 0
    blocks = [[model.aggregator.frame_blocks[i], model.aggregator.global_blocks[i]] for i in range(cfg.depth)]
    for batch in batches:
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
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
        for k, kind in enumerate(("frame", "global")):
            dyn, stat = float(shifts[0, i, k]) / frames, float(shifts[1, i, k]) / frames
            rows.append({"block": f"aggregator.{kind}_blocks.{i}", "kind": kind, "index": i,
                         "dynamic_shift": dyn, "static_shift": stat, "ratio": dyn / max(stat, 1e-12),
                         "grad_rms": math.sqrt(float(grad_sq[i, k]) / clips)})
    rows.sort(key=lambda r: -r["ratio"])
    return [{"rank": n + 1, **r} for n, r in enumerate(rows)]


def analyze_layers_main(args: list[str]) -> int:
    """`page4d analyze-layers`: rank the aggregator blocks by sensitivity to dynamics (see
    `layer_sensitivity`); prints a table and writes JSON to `--out`."""
    parser = argparse.ArgumentParser(prog="page4d analyze-layers", description=analyze_layers_main.__doc__)
    parser.add_argument("--preset", choices=("tiny", "vggt_1b"), default="tiny")
    parser.add_argument("--weights", default=None, help="checkpoint to load (VGGT-1B, PAGE-4D, own export)")
    parser.add_argument("--dataset", default="synthetic", help="a name in datamodules.DATASETS")
    parser.add_argument("--root", default=None, help="dataset root (None for procedural datasets)")
    parser.add_argument("--num-clips", type=int, default=4, help="clips with dynamic content to use")
    parser.add_argument("--num-frames", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=None, help="input width (default 112 tiny, 518 vggt_1b)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="layer_sensitivity.json")
    opts = parser.parse_args(args)
    if opts.num_clips < 1:
        parser.error(f"--num-clips: expected >= 1, got {opts.num_clips}")
    from datamodules import collate_clips, get_dataset_class

    torch.manual_seed(opts.seed)
    config = PAGE4DConfig.tiny() if opts.preset == "tiny" else PAGE4DConfig.vggt_1b(enable_track=False)
    model = PAGE4D(config.replace(enable_track=False))
    if opts.weights:
        load_weights(model, opts.weights)
    model.to(opts.device).eval()
    size = opts.image_size or (112 if opts.preset == "tiny" else 518)
    dataset = get_dataset_class(opts.dataset)(root=opts.root, num_frames=opts.num_frames, image_size=size)
    batches = []
    for i in range(len(dataset)):
        sample = dataset[i]
        if "dynamic_masks" not in sample:
            raise ValueError(f"--dataset {opts.dataset!r}: its clips have no dynamic_masks; pick one that has")
        if sample["dynamic_masks"].any():
            batches.append(collate_clips([sample]))
        if len(batches) == opts.num_clips:
            break
    rows = layer_sensitivity(model, batches, seed=opts.seed)
    lines = [f"{'rank':>4}  {'block':<28} {'ratio':>8} {'dyn_shift':>10} {'static_shift':>12} {'grad_rms':>10}"]
    lines += [f"{r['rank']:>4}  {r['block']:<28} {r['ratio']:>8.3f} {r['dynamic_shift']:>10.4g}"
              f" {r['static_shift']:>12.4g} {r['grad_rms']:>10.4g}" for r in rows]
    sys.stdout.write("\n".join(lines) + "\n")
    report = {"preset": opts.preset, "weights": opts.weights, "dataset": opts.dataset, "num_clips": len(batches),
              "num_frames": opts.num_frames, "image_size": size, "measure": layer_sensitivity.__doc__, "blocks": rows}
    with open(opts.out, "w") as f:
        json.dump(report, f, indent=2)
    sys.stdout.write(f"wrote {opts.out}\n")
    return 0
