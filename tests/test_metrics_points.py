"""Point-map metrics against SciPy's KD-tree, evo's Umeyama and NumPy grid normals; chunked search bounds."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from evo.core.geometry import umeyama_alignment
from scipy.spatial import cKDTree

from page4d_lightning.geometry import quat_to_rotmat
from page4d_lightning.metrics import PointMetrics
from page4d_lightning.metrics.functional import POINT_KEYS, nearest_neighbors, point_errors

F64 = torch.float64


def _scene(seed: int, S: int = 2, H: int = 7, W: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A wavy surface seen by S frames (GT), a noisy similarity-transformed copy (pred), a random mask."""
    g = torch.Generator().manual_seed(seed)
    v, u = torch.meshgrid(torch.linspace(-1, 1, H, dtype=F64), torch.linspace(-1, 1, W, dtype=F64), indexing="ij")
    frames = [torch.stack([u + 0.3 * s, v, 2 + 0.3 * torch.sin(3 * u + s) * torch.cos(2 * v)], -1) for s in range(S)]
    gt = torch.stack(frames)
    R = quat_to_rotmat(torch.tensor([0.2, -0.1, 0.4, 0.9], dtype=F64))
    pred = 0.5 * gt @ R.T + torch.tensor([1.0, 0.0, -2.0], dtype=F64)
    pred = pred + 0.02 * torch.randn(pred.shape, generator=g, dtype=F64)
    mask = torch.rand(S, H, W, generator=g) > 0.15
    return pred, gt, mask


def _grid_normals_np(P: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.zeros_like(P)
    ok = np.zeros(valid.shape, bool)
    S, H, W = valid.shape
    for s in range(S):
        for y in range(H - 1):
            for x in range(W - 1):
                if valid[s, y, x] and valid[s, y, x + 1] and valid[s, y + 1, x]:
                    c = np.cross(P[s, y, x + 1] - P[s, y, x], P[s, y + 1, x] - P[s, y, x])
                    n[s, y, x], ok[s, y, x] = c / np.linalg.norm(c), True
    return n, ok


def _reference(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """evo's Umeyama (pred -> gt), then the Spann3R/CUT3R accuracy / completeness with a KD-tree."""
    P, G, m = pred.numpy(), gt.numpy(), mask.numpy()
    R, t, c = umeyama_alignment(P[m].T, G[m].T, with_scale=True)
    A = c * P @ R.T + t
    n_a, ok_a = _grid_normals_np(A, m)
    n_g, ok_g = _grid_normals_np(G, m)
    acc, acc_i = cKDTree(G[m]).query(A[m])
    comp, comp_i = cKDTree(A[m]).query(G[m])
    use1 = ok_a[m] & ok_g[m][acc_i]
    nc1 = np.abs(np.sum(n_a[m][use1] * n_g[m][acc_i[use1]], -1))
    use2 = ok_g[m] & ok_a[m][comp_i]
    nc2 = np.abs(np.sum(n_g[m][use2] * n_a[m][comp_i[use2]], -1))
    return {
        "accuracy": acc.mean(), "accuracy_median": np.median(acc),
        "completeness": comp.mean(), "completeness_median": np.median(comp),
        "normal_consistency": (nc1.mean() + nc2.mean()) / 2,
        "normal_consistency_median": (np.median(nc1) + np.median(nc2)) / 2,
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_point_errors_match_kdtree_reference(seed):
    pred, gt, mask = _scene(seed)
    ours = point_errors(pred, gt, mask, max_block_elems=100)  # tiny blocks: the chunked path
    expected = _reference(pred, gt, mask)
    for key in POINT_KEYS:
        assert ours[key].item() == pytest.approx(expected[key], rel=1e-9), key
    assert ours["valid_points"].item() == mask.sum().item()
    assert 0 < ours["accuracy"].item() < 0.1 and 0.5 < ours["normal_consistency"].item() < 1.0


def test_similarity_is_exact():
    _, gt, mask = _scene(2)
    R = quat_to_rotmat(torch.tensor([-0.3, 0.5, 0.1, 0.8], dtype=F64))
    pred = 3.0 * gt @ R.T - 1.0
    out = point_errors(pred.float(), gt.float(), mask)
    for key in ("accuracy", "accuracy_median", "completeness", "completeness_median"):
        assert out[key].item() == pytest.approx(0.0, abs=1e-6), key
    for key in ("normal_consistency", "normal_consistency_median"):
        assert out[key].item() == pytest.approx(1.0, abs=1e-9), key


@pytest.mark.parametrize(("n", "m", "budget"), [(50, 40, 64), (30, 100, 30), (20, 25, 10**6)])
def test_nearest_neighbors_blocks_stay_in_budget(monkeypatch, n, m, budget):
    g = torch.Generator().manual_seed(n)
    query, reference = torch.randn(n, 3, generator=g, dtype=F64), torch.randn(m, 3, generator=g, dtype=F64)
    blocks = []
    cdist = torch.cdist

    def recording_cdist(a, b, *args, **kwargs):
        blocks.append(a.shape[0] * b.shape[0])
        return cdist(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "cdist", recording_cdist)
    dist, index = nearest_neighbors(query, reference, max_block_elems=budget)
    assert max(blocks) <= budget and sum(blocks) == n * m
    ref_dist, ref_index = cKDTree(reference.numpy()).query(query.numpy())
    np.testing.assert_allclose(dist.numpy(), ref_dist, rtol=1e-12)
    np.testing.assert_array_equal(index.numpy(), ref_index)


_FULL_CLIP = """
import importlib.util, pathlib, resource, torch
import page4d_lightning
path = pathlib.Path(page4d_lightning.__file__).parent / "metrics" / "_points.py"
spec = importlib.util.spec_from_file_location("page4d_lightning.metrics._points", path)
_points = importlib.util.module_from_spec(spec)  # the module alone: no torchmetrics import, a faster test
spec.loader.exec_module(_points)
torch.set_num_threads(1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def one_block(q, r, max_block_elems):  # one real block of the default budget instead of the O(N M) search
    rows = max(1, max_block_elems // r.shape[0])
    torch.cdist(q[:rows], r[: max_block_elems // rows]).min(-1)
    index = torch.arange(q.shape[0]) % r.shape[0]
    return (q - r[index]).norm(dim=-1), index
_points.nearest_neighbors = one_block
g = torch.Generator().manual_seed(0)
gt = torch.randn(8, 392, 518, 3, generator=g)
pred = 2 * gt + 0.01 * torch.randn(gt.shape, generator=g)
out = _points.point_errors(pred, gt, torch.ones(8, 392, 518, dtype=torch.bool))
assert out["valid_points"].item() == 8 * 392 * 518
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20)
"""


def test_full_resolution_clip_stays_under_2_gb():
    """8 frames at 518x392 (1.6 M points): everything but the O(N M) search time, peak RSS in a fresh process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # the same imports as this process
    result = subprocess.run([sys.executable, "-c", _FULL_CLIP], capture_output=True, text=True, check=True, env=env)
    peak_gb = float(result.stdout.strip().splitlines()[-1])
    assert peak_gb < 2.0, peak_gb


def test_too_few_points_nan_and_point_metrics_skip():
    pred, gt, mask = _scene(3)
    empty = torch.zeros_like(mask)
    empty[0, 0, :2] = True
    with pytest.warns(RuntimeWarning, match="2 valid point"):
        out = point_errors(pred, gt, empty)
    assert all(math.isnan(out[k].item()) for k in POINT_KEYS)
    metric = PointMetrics()
    with pytest.warns(RuntimeWarning, match="point_errors: 2 valid point"):
        metric.update(torch.stack([pred, pred]), torch.stack([gt, gt]), torch.stack([mask, empty]))
    assert metric.count.item() == 1 and metric.skipped.item() == 1
    single = point_errors(pred, gt, mask)
    for key in POINT_KEYS:
        torch.testing.assert_close(metric.compute()[key], single[key])


def test_point_errors_bad_input():
    pred, gt, mask = _scene(4)
    with pytest.raises(ValueError, match=r"pred: expected \(S, H, W, 3\), got \(2, 7, 9\)"):
        point_errors(pred[..., 0], gt, mask)
    with pytest.raises(ValueError, match=r"gt: expected the shape of pred \(2, 7, 9, 3\), got \(1, 7, 9, 3\)"):
        point_errors(pred, gt[:1], mask)
    with pytest.raises(ValueError, match=r"mask: expected \(2, 7, 9\), got \(2, 7\)"):
        point_errors(pred, gt, mask[..., 0])
    with pytest.raises(ValueError, match="reference: expected"):
        nearest_neighbors(pred[0, 0], gt[0, 0, :0])
    with pytest.raises(ValueError, match=r"pred: expected \(B, S, H, W, 3\)"):
        PointMetrics().update(pred, gt, mask)
