"""Depth alignments (pure torch, float64): each maps (pred, gt, valid) of shape (..., S, H, W) to aligned pred.

Official sources: PAGE-4D `eval/eval/video_depth/tools.py` (`depth_evaluation`) and the monodepth script.
- "median": per frame, pred * median(gt) / median(pred) over valid pixels (monodepth default).
- "scale": per sequence, the official `align_with_scale` least-absolute-deviation fit of s in s * pred ~ gt:
  start from s = mean(gt) / mean(pred), then 10 iteratively reweighted least-squares (Weiszfeld) steps with
  weights 1 / (|s pred - gt| + 1e-8), then s = max(s, 1e-3). The video-depth protocol of `run_page.sh`.
  The fit is ill-conditioned: the weights of the few near-exact pixels reach 1e8 and dominate each step, so
  last-bit changes of the sums (pixel order, thread count) grow over the 10 steps. The official runs it in
  float32 on the GPU, where pixel order moves its metrics by up to ~1e-2 (~1e-3 relative in abs_rel on a
  synthetic 30-frame 518x518 clip). We run it in float64: deterministic for a given input layout and thread
  count, and reordering the pixels moves the metrics ~30x less (~3e-5 relative on that clip; ~1e-12 on
  small clips), so figures differ from the official float32 ones at that ~1e-3..1e-2 level.
- "scale_shift": per sequence, the official `align_with_lad2` ("scale&shift" in `eval_depth.py`): predictions
  below 1e-5 are set to 0, (s, t) start at (median(gt) / median(pred), 0) and take up to 1000 Adam steps
  (lr 1e-4, torch defaults) on sum |s pred + t - gt|, stopping when the loss changes by < 1e-6; with fewer
  than 10 valid pixels the start values are kept. With lr 1e-4 s and t move by at most ~0.1 each: this
  is a small refinement of median scaling, not the LAD optimum, and it is replicated as such. It costs
  ~1000 passes over the valid pixels (about a minute per 10^7 pixels on a 2-core CPU).
- "scale_lstsq" / "scale_shift_lstsq": closed-form least-squares scale (s = sum pg / sum p^2) and scale+shift
  (the official `align_with_lstsq`), per sequence.
- "none": metric depth (official `metric_scale`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["DEPTH_ALIGNERS"]

_SEQ = (-3, -2, -1)  # the pixels of one sequence: (S, H, W)
_Fit = Callable[[Tensor, Tensor], tuple[float, float]]  # 1-D valid pred, gt of a sequence -> (s, t)


def _expand(x: Tensor) -> Tensor:
    """(...) per-sequence value -> (..., 1, 1, 1) to broadcast over (S, H, W)."""
    return x[..., None, None, None]


def _masked_median(x: Tensor, valid: Tensor, dims: int) -> Tensor:
    """Lower median (torch.median) of x over valid entries of the last `dims` dims; NaN if none."""
    return torch.where(valid, x, torch.full_like(x, math.nan)).flatten(-dims).nanmedian(-1).values


def _align_none(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    return pred


def _align_median(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """Per frame: pred * median(gt) / median(pred) over valid pixels (torch.median: lower middle value)."""
    ratio = _masked_median(gt, valid, 2) / _masked_median(pred, valid, 2)  # (..., S)
    return pred * ratio[..., None, None]


def _per_sequence(fit: _Fit, pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """Apply a 1-D fit (p, g) -> (s, t) to the valid pixels of each sequence: pred * s + t, NaN if none valid.

    The iterative fits run per sequence on the compacted valid pixels (one clip at a time, like the official
    script), which is cheaper than masking full tensors at every step.
    """
    rows = pred.reshape(-1, *pred.shape[-3:])  # (R, S, H, W): one row per sequence of the leading dims
    rows_gt, rows_valid = gt.reshape(rows.shape), valid.reshape(rows.shape)
    s = torch.full(rows.shape[:1], math.nan, dtype=pred.dtype, device=pred.device)
    t = torch.zeros_like(s)
    for r in range(rows.shape[0]):
        if bool(rows_valid[r].any()):
            s[r], t[r] = fit(rows[r][rows_valid[r]], rows_gt[r][rows_valid[r]])
    return pred * _expand(s.reshape(pred.shape[:-3])) + _expand(t.reshape(pred.shape[:-3]))


def _fit_scale_lad(p: Tensor, g: Tensor, steps: int = 10) -> tuple[float, float]:
    """Official IRLS scale on 1-D valid pixels (module docstring); the same operation order, in float64."""
    s = (g.mean() / p.mean()).item()
    pg, pp = p * g, p * p
    w = torch.empty_like(p)  # reused: no allocation per step
    for _ in range(steps):
        torch.mul(p, s, out=w).sub_(g).abs_().add_(1e-8).reciprocal_()  # 1 / (|s p - g| + 1e-8)
        s = (torch.dot(w, pg) / torch.dot(w, pp)).item()
    return max(s, 1e-3), 0.0


def _fit_scale_shift_adam(
    p: Tensor, g: Tensor, lr: float = 1e-4, max_iters: int = 1000, tol: float = 1e-6
) -> tuple[float, float]:
    """Official Adam LAD fit of (s, t) on 1-D valid pixels (`absolute_value_scaling2`), torch.optim.Adam math."""
    s, t = (torch.median(g) / torch.median(p)).item(), 0.0
    finite = torch.isfinite(p) & torch.isfinite(g) & (g > 0)
    if int(finite.sum()) < 10:
        return s, t
    p, g = p[finite], g[finite]
    b1, b2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam defaults
    m, v = [0.0, 0.0], [0.0, 0.0]  # moments of (s, t)
    r, sign = torch.empty_like(p), torch.empty_like(p)
    prev_loss = None
    for step in range(1, max_iters + 1):
        torch.mul(p, s, out=r).add_(t).sub_(g)  # s p + t - g
        torch.sign(r, out=sign)  # d|r|/dr as torch's abs backward (0 at 0)
        loss = torch.dot(sign, r).item()  # sum |r|
        grad = (torch.dot(sign, p).item(), sign.sum().item())
        params = [s, t]
        for i in range(2):  # Adam: lerp / addcmul moments, bias-corrected step, as torch does it
            m[i] += (1 - b1) * (grad[i] - m[i])
            v[i] = v[i] * b2 + (1 - b2) * grad[i] * grad[i]
            denom = math.sqrt(v[i]) / math.sqrt(1 - b2**step) + eps
            params[i] -= (lr / (1 - b1**step)) * m[i] / denom
        s, t = params
        if prev_loss is not None and abs(prev_loss - loss) < tol:  # official: stop after the step
            break
        prev_loss = loss
    return s, t


def _align_scale(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """Per sequence: the official IRLS least-absolute-deviation scale (module docstring)."""
    return _per_sequence(_fit_scale_lad, pred, gt, valid)


def _align_scale_shift(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """Per sequence: the official Adam LAD fit of (s, t) (`align_with_lad2`, module docstring)."""
    pred = torch.where(pred < 1e-5, torch.zeros_like(pred), pred)  # official: tiny predictions -> 0
    return _per_sequence(_fit_scale_shift_adam, pred, gt, valid)


def _align_scale_lstsq(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """Per sequence: least-squares s = sum(p g) / sum(p^2) over valid pixels."""
    p, g = pred * valid, gt * valid
    s = (p * g).sum(_SEQ) / p.square().sum(_SEQ)
    return pred * _expand(s)


def _align_scale_shift_lstsq(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """Per sequence: least-squares (s, t) minimising sum (s p + t - g)^2 over valid pixels."""
    w = valid.to(pred.dtype)
    p, g = pred * w, gt * w
    n, sp, sg, spp, spg = w.sum(_SEQ), p.sum(_SEQ), g.sum(_SEQ), p.square().sum(_SEQ), (p * g).sum(_SEQ)
    det = spp * n - sp * sp  # normal equations [[spp, sp], [sp, n]] [s, t] = [spg, sg]
    s = (n * spg - sp * sg) / det
    t = (spp * sg - sp * spg) / det
    return pred * _expand(s) + _expand(t)


DEPTH_ALIGNERS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "none": _align_none,
    "median": _align_median,
    "scale": _align_scale,
    "scale_shift": _align_scale_shift,
    "scale_lstsq": _align_scale_lstsq,
    "scale_shift_lstsq": _align_scale_shift_lstsq,
}
