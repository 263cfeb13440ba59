"""Point-map errors of one clip (pure torch, float64): accuracy, completeness, normal consistency.

The multi-view reconstruction protocol of DUSt3R / Spann3R / CUT3R (7-Scenes, NRGBD): the predicted points
are Sim(3)-aligned to GT (Umeyama on the valid pixels, scale included), then
- accuracy: distance from each aligned predicted point to its nearest GT point (mean and median);
- completeness: distance from each GT point to its nearest predicted point (mean and median);
- normal consistency: |n_pred . n_gt| between a point's normal and its nearest neighbour's, averaged over
  both directions ((nc_acc + nc_comp) / 2, for the mean and for the median).
Distances are in GT units. Medians are numpy's (mean of the two middle values for an even count).

Differences from the official scripts: the official ones take normals from Open3D's `estimate_normals` on
the unordered cloud; we take them from the image grid (cross product of the right and down neighbours,
defined where the pixel and both neighbours are valid; points without a normal, or whose nearest neighbour
has none, drop out of the normal consistency only). Nearest neighbours are exact (no KD-tree): a chunked
brute-force search whose distance blocks hold at most `max_block_elems` float64 entries (2^25 = 256 MB by
default), so 8 frames at 518x392 (1.6 M points per cloud) need well under 2 GB; the work is O(N M), so
full-resolution clips belong on a GPU.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from page4d_lightning.geometry import umeyama_sim3

__all__ = ["POINT_KEYS", "point_errors", "nearest_neighbors", "point_map_normals"]

POINT_KEYS = (
    "accuracy", "accuracy_median", "completeness", "completeness_median",
    "normal_consistency", "normal_consistency_median",
)


def nearest_neighbors(query: Tensor, reference: Tensor, max_block_elems: int = 2**25) -> tuple[Tensor, Tensor]:
    """Exact Euclidean nearest neighbours, chunked: query (N, 3), reference (M, 3), M >= 1.

    Returns (distance (N,), index (N,) into reference). Queries, and the reference too when M alone exceeds
    the budget, are split so that no `torch.cdist` block holds more than max_block_elems entries. Distances
    are recomputed exactly for the chosen neighbours (the matrix form of cdist loses digits).
    """
    if query.ndim != 2 or query.shape[-1] != 3:
        raise ValueError(f"query: expected (N, 3), got {tuple(query.shape)}")
    if reference.ndim != 2 or reference.shape[-1] != 3 or reference.shape[0] == 0:
        raise ValueError(f"reference: expected (M, 3) with M >= 1, got {tuple(reference.shape)}")
    n, m = query.shape[0], reference.shape[0]
    cols = min(m, max(1, max_block_elems))
    rows = max(1, max_block_elems // cols)
    best = torch.full((n,), math.inf, dtype=query.dtype, device=query.device)
    index = torch.zeros(n, dtype=torch.long, device=query.device)
    for r0 in range(0, n, rows):
        q = query[r0 : r0 + rows]
        for c0 in range(0, m, cols):
            d, i = torch.cdist(q, reference[c0 : c0 + cols]).min(-1)  # (rows,) per block
            better = d < best[r0 : r0 + rows]
            best[r0 : r0 + rows] = torch.where(better, d, best[r0 : r0 + rows])
            index[r0 : r0 + rows] = torch.where(better, i + c0, index[r0 : r0 + rows])
    return (query - reference[index]).norm(dim=-1), index


def point_map_normals(points: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Grid normals of a point map: points (..., H, W, 3), valid (..., H, W) bool.

    Returns (normals (..., H, W, 3) unit, defined (..., H, W) bool): n = (P[y, x+1] - P) x (P[y+1, x] - P),
    defined where the pixel and both neighbours are valid and the cross product is non-zero.
    """
    dx = torch.zeros_like(points)
    dy = torch.zeros_like(points)
    dx[..., :, :-1, :] = points[..., :, 1:, :] - points[..., :, :-1, :]  # right neighbour minus pixel
    dy[..., :-1, :, :] = points[..., 1:, :, :] - points[..., :-1, :, :]  # down neighbour minus pixel
    defined = torch.zeros_like(valid)
    defined[..., :-1, :-1] = valid[..., :-1, :-1] & valid[..., :-1, 1:] & valid[..., 1:, :-1]
    normals = torch.linalg.cross(dx, dy)
    length = normals.norm(dim=-1)
    defined &= length > 0
    return normals / length.clamp(min=torch.finfo(length.dtype).tiny)[..., None], defined


def _median(x: Tensor) -> Tensor:
    """numpy-style median of a 1-D tensor (mean of the two middle values for an even count); NaN if empty."""
    n = x.numel()
    if n == 0:
        return torch.tensor(math.nan, dtype=x.dtype, device=x.device)
    lo = x.kthvalue((n + 1) // 2).values
    return lo if n % 2 else 0.5 * (lo + x.kthvalue(n // 2 + 1).values)


def _nan_result(dtype: torch.dtype, device: torch.device, count: int) -> dict[str, Tensor]:
    out = {k: torch.tensor(math.nan, dtype=dtype, device=device) for k in POINT_KEYS}
    out["valid_points"] = torch.tensor(float(count), dtype=dtype, device=device)
    return out


def point_errors(pred: Tensor, gt: Tensor, mask: Tensor, max_block_elems: int = 2**25) -> dict[str, Tensor]:
    """Accuracy / completeness / normal consistency of one clip after Sim(3) alignment of pred to gt.

    pred, gt: (S, H, W, 3) world points; mask: (S, H, W) bool, the valid GT pixels (non-finite points are
    dropped too). Returns POINT_KEYS + "valid_points", 0-dim float64; NaN with a RuntimeWarning when fewer
    than 3 valid points remain or the alignment is undefined (all predicted or all GT points equal).
    """
    if not isinstance(pred, Tensor) or pred.ndim != 4 or pred.shape[-1] != 3:
        got = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
        raise ValueError(f"pred: expected (S, H, W, 3), got {got}")
    if not isinstance(gt, Tensor) or gt.shape != pred.shape:
        got = tuple(gt.shape) if isinstance(gt, Tensor) else type(gt).__name__
        raise ValueError(f"gt: expected the shape of pred {tuple(pred.shape)}, got {got}")
    if not isinstance(mask, Tensor) or mask.shape != pred.shape[:-1]:
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected {tuple(pred.shape[:-1])}, got {got}")
    pred, gt = pred.double(), gt.double()
    valid = mask.bool() & torch.isfinite(pred).all(-1) & torch.isfinite(gt).all(-1)
    count = int(valid.sum())
    if count < 3:
        warnings.warn(f"point_errors: {count} valid point(s), need >= 3: metrics are NaN", RuntimeWarning, stacklevel=2)
        return _nan_result(torch.float64, pred.device, count)

    scale, R, t = umeyama_sim3(pred[valid], gt[valid])
    if not bool(torch.isfinite(scale)) or float(scale) <= 0:
        warnings.warn("point_errors: all predicted (or all GT) points coincide, the Sim(3) alignment is "
                      "undefined: metrics are NaN", RuntimeWarning, stacklevel=2)
        return _nan_result(torch.float64, pred.device, count)
    centre = gt[valid].mean(0)  # shift both clouds: the matrix form of cdist is exact near the origin
    aligned = scale * pred @ R.T + (t - centre)  # (S, H, W, 3), applied to the whole map for its normals
    gt = gt - centre
    n_pred, has_pred = point_map_normals(aligned, valid)
    n_gt, has_gt = point_map_normals(gt, valid)

    q, r = aligned[valid], gt[valid]  # (count, 3): same pixels, different points
    n_q, n_r, h_q, h_r = n_pred[valid], n_gt[valid], has_pred[valid], has_gt[valid]
    acc, acc_idx = nearest_neighbors(q, r, max_block_elems)  # predicted -> nearest GT
    comp, comp_idx = nearest_neighbors(r, q, max_block_elems)  # GT -> nearest predicted
    use_1 = h_q & h_r[acc_idx]
    nc_1 = (n_q[use_1] * n_r[acc_idx[use_1]]).sum(-1).abs()
    use_2 = h_r & h_q[comp_idx]
    nc_2 = (n_r[use_2] * n_q[comp_idx[use_2]]).sum(-1).abs()
    return {
        "accuracy": acc.mean(),
        "accuracy_median": _median(acc),
        "completeness": comp.mean(),
        "completeness_median": _median(comp),
        "normal_consistency": 0.5 * (nc_1.mean() + nc_2.mean()),
        "normal_consistency_median": 0.5 * (_median(nc_1) + _median(nc_2)),
        "valid_points": torch.tensor(float(count), dtype=torch.float64, device=pred.device),
    }
