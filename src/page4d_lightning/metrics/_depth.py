"""Depth errors of one clip (pure torch, float64) and the official evaluation protocols in one table.

GT <= 0, non-finite or >= max_depth is invalid; the prediction is aligned on all valid pixels (see
`_align_depth` for the aligners), optionally clamped (`clip_pred`, the official post-clip), then the usual
monocular-depth errors are taken over the valid pixels. With `dynamic_masks`, the same aligned prediction
is also scored on the valid dynamic pixels and on the valid static pixels (keys `<metric>_dynamic`,
`<metric>_static`), as the official `custom_mask` does (alignment first, mask after).

No valid GT pixel: the official script returns zeros; we return NaN with a RuntimeWarning instead (an empty
dynamic or static subset is NaN without a warning: many clips have no moving content), and the Metric
classes weight by valid pixels, so such clips add nothing.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from page4d_lightning.metrics._align_depth import DEPTH_ALIGNERS

__all__ = ["DEPTH_KEYS", "DEPTH_PROTOCOLS", "depth_protocol", "depth_errors"]

DEPTH_KEYS = ("abs_rel", "sq_rel", "rmse", "log_rmse", "delta_1_25", "delta_1_25_sq", "delta_1_25_cu")

# The numbers of the official scripts, in one place (PAGE-4D eval/eval/video_depth/eval_depth.py with
# `--align scale` as run_page.sh runs it, and eval/eval/monodepth/eval_metrics.py): max_depth is the strict
# upper bound of valid GT, clip_pred the post-alignment clamp of the prediction ("post_clip_max").
_VIDEO = {"align": "scale", "per": "sequence"}  # one alignment and one metric set per sequence
_MONO = {"align": "median", "per": "frame"}  # per frame; frames averaged with valid-pixel weights
DEPTH_PROTOCOLS: dict[str, dict[str, dict]] = {
    "video": {
        "sintel": {**_VIDEO, "max_depth": 70.0, "clip_pred": 70.0},
        "bonn": {**_VIDEO, "max_depth": 70.0, "clip_pred": None},
        "dycheck": {**_VIDEO, "max_depth": 70.0, "clip_pred": None},
        "kitti": {**_VIDEO, "max_depth": None, "clip_pred": None},
    },
    "mono": {
        "sintel": {**_MONO, "max_depth": 70.0, "clip_pred": 70.0},
        "bonn": {**_MONO, "max_depth": 70.0, "clip_pred": None},
        "kitti": {**_MONO, "max_depth": None, "clip_pred": None},
        "nyu": {**_MONO, "max_depth": None, "clip_pred": None},
        "dycheck": {**_MONO, "max_depth": None, "clip_pred": None},
    },
}


def depth_protocol(kind: str, dataset: str, align: str | None = None) -> dict:
    """Keyword arguments of `depth_errors` / `DepthMetrics` for an official protocol.

    kind: "video" (per-sequence "scale" LAD alignment) or "mono" (per-frame median); dataset: a key of
    DEPTH_PROTOCOLS[kind]; align overrides the alignment (e.g. "scale_shift" or "none" = metric depth).
    """
    if kind not in DEPTH_PROTOCOLS:
        raise ValueError(f"kind: expected one of {sorted(DEPTH_PROTOCOLS)}, got {kind!r}")
    if dataset not in DEPTH_PROTOCOLS[kind]:
        raise ValueError(f"dataset: expected one of {sorted(DEPTH_PROTOCOLS[kind])} for {kind!r}, got {dataset!r}")
    if align is not None and align not in DEPTH_ALIGNERS:
        raise ValueError(f"align: expected one of {sorted(DEPTH_ALIGNERS)}, got {align!r}")
    options = dict(DEPTH_PROTOCOLS[kind][dataset])
    if align is not None:
        options["align"] = align
    return options


def _check_options(align: str, per: str) -> None:
    if align not in DEPTH_ALIGNERS:
        raise ValueError(f"align: expected one of {sorted(DEPTH_ALIGNERS)}, got {align!r}")
    if per not in ("frame", "sequence"):
        raise ValueError(f"per: expected 'frame' or 'sequence', got {per!r}")


def _metric_set(pred: Tensor, gt: Tensor, subset: Tensor, per: str) -> dict[str, Tensor]:
    """Errors over `subset` pixels of aligned pred / gt (..., S, H, W) -> DEPTH_KEYS + "valid_pixels", (...).

    Peak memory: four float64 copies of the clip (g, p and two buffers) besides the inputs.
    """
    g = torch.where(subset, gt, 1.0)  # 1 outside the subset keeps every term finite
    p = torch.where(subset, pred, g)  # p == g outside: the error terms vanish there
    dims = (-2, -1) if per == "frame" else (-3, -2, -1)
    count = subset.sum(dims).double()  # (..., S) or (...)
    d, buf = p - g, torch.empty_like(p)  # two reused buffers: each term is reduced as soon as it is formed
    sums = {"abs_rel": torch.abs(d, out=buf).div_(g).sum(dims)}
    torch.mul(d, d, out=buf)
    sums["rmse"] = buf.sum(dims)
    sums["sq_rel"] = buf.div_(g).sum(dims)
    p.clamp_(min=1e-5)  # official: clamp before log and ratios
    sums["log_rmse"] = torch.log(p, out=d).sub_(torch.log(g, out=buf)).square_().sum(dims)
    ratio = torch.maximum(torch.div(p, g, out=d), torch.div(g, p, out=buf), out=d)
    for key, threshold in (("delta_1_25", 1.25), ("delta_1_25_sq", 1.25**2), ("delta_1_25_cu", 1.25**3)):
        sums[key] = ((ratio < threshold) & subset).sum(dims).double()
    out = {}
    for key, total in sums.items():
        mean = total / count  # NaN where count == 0
        out[key] = mean.sqrt() if key in ("rmse", "log_rmse") else mean
    if per == "frame":  # valid-pixel-weighted mean over frames; empty frames drop out
        frames = count > 0
        total = count.sum(-1)
        out = {k: torch.where(frames, v * count, torch.zeros_like(v)).sum(-1) / total for k, v in out.items()}
        count = total
    out["valid_pixels"] = count
    return out


def depth_errors(
    pred: Tensor,
    gt: Tensor,
    align: str = "median",
    per: str = "frame",
    max_depth: float | None = None,
    clip_pred: float | tuple[float, float] | None = None,
    dynamic_masks: Tensor | None = None,
) -> dict[str, Tensor]:
    """Depth errors of one clip; also vectorised over leading dims.

    pred, gt: (..., S, H, W) z-depth; gt <= 0, non-finite or >= max_depth is invalid. `align` in
    DEPTH_ALIGNERS; `clip_pred` clamps the aligned prediction (a max, or (min, max)). per="frame" averages
    frame metrics weighted by valid pixels; per="sequence" pools all valid pixels of the clip.
    dynamic_masks: optional (..., S, H, W) bool, True = moving content; adds `<key>_dynamic` and
    `<key>_static` (and their `valid_pixels_*`) computed with the same alignment.
    Returns DEPTH_KEYS + "valid_pixels", each (...) float64; NaN (with a warning) if no pixel is valid.
    See `depth_protocol` for the official settings.
    """
    if not isinstance(pred, Tensor) or pred.ndim < 3:
        got = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
        raise ValueError(f"pred: expected (S, H, W), got {got}")
    if not isinstance(gt, Tensor) or gt.shape != pred.shape:
        got = tuple(gt.shape) if isinstance(gt, Tensor) else type(gt).__name__
        raise ValueError(f"gt: expected the shape of pred {tuple(pred.shape)}, got {got}")
    if dynamic_masks is not None and (not isinstance(dynamic_masks, Tensor) or dynamic_masks.shape != pred.shape):
        got = tuple(dynamic_masks.shape) if isinstance(dynamic_masks, Tensor) else type(dynamic_masks).__name__
        raise ValueError(f"dynamic_masks: expected the shape of pred {tuple(pred.shape)}, got {got}")
    _check_options(align, per)
    pred, gt = pred.double(), gt.double()
    valid = (gt > 0) & torch.isfinite(gt)
    if max_depth is not None:
        valid &= gt < max_depth  # official: strict upper bound

    pred = DEPTH_ALIGNERS[align](pred, gt, valid)
    if clip_pred is not None:
        lo, hi = clip_pred if isinstance(clip_pred, tuple) else (None, clip_pred)
        pred = pred.clamp(min=lo, max=hi)

    out = _metric_set(pred, gt, valid, per)
    if bool((out["valid_pixels"] == 0).any()):
        warnings.warn(
            "depth_errors: no valid GT pixel (gt <= 0, non-finite or >= max_depth), metrics are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    if dynamic_masks is not None:
        dynamic = dynamic_masks.bool()
        for name, subset in (("dynamic", valid & dynamic), ("static", valid & ~dynamic)):
            out.update({f"{k}_{name}": v for k, v in _metric_set(pred, gt, subset, per).items()})
    return out
