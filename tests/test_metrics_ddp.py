"""Two CPU processes (spawn, gloo): each rank updates the four Metric classes with half of the clips, and the
synced `compute()` equals the single-process value (sum states, dist_reduce_fx="sum")."""

import math
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from page4d_lightning.geometry import quat_to_rotmat
from page4d_lightning.metrics import DepthMetrics, PointMetrics, PoseMetrics, TrackingMetrics

CLIPS = 4  # rank r updates clips [2 r, 2 r + 2)


def _data() -> dict[str, tuple[torch.Tensor, ...]]:
    """Deterministic inputs for CLIPS clips per metric; pose clip 1 is static (skipped), depth has masks."""
    g = torch.Generator().manual_seed(0)
    R = quat_to_rotmat(torch.randn(2, CLIPS, 5, 4, generator=g, dtype=torch.float64))
    t = torch.randn(2, CLIPS, 5, 3, 1, generator=g, dtype=torch.float64)
    t[0, 1] = -R[0, 1] @ torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)  # all centres equal
    extrinsics = torch.cat([R, t], -1)
    gt_depth = (0.5 + 80 * torch.rand(CLIPS, 3, 6, 7, generator=g)) * (torch.rand(CLIPS, 3, 6, 7, generator=g) > 0.2)
    depth = (gt_depth * 1.5 + torch.rand(CLIPS, 3, 6, 7, generator=g), gt_depth,
             torch.rand(CLIPS, 3, 6, 7, generator=g) > 0.5)
    gt_points = torch.randn(CLIPS, 2, 5, 6, 3, generator=g, dtype=torch.float64)
    points = (2 * gt_points + 0.05 * torch.randn(gt_points.shape, generator=g, dtype=torch.float64), gt_points,
              torch.rand(CLIPS, 2, 5, 6, generator=g) > 0.2)
    gt_tracks = 100 * torch.rand(CLIPS, 4, 5, 2, generator=g, dtype=torch.float64)
    tracks = (gt_tracks + 3 * torch.randn(gt_tracks.shape, generator=g, dtype=torch.float64),
              torch.rand(CLIPS, 4, 5, generator=g) > 0.3, gt_tracks, torch.rand(CLIPS, 4, 5, generator=g) > 0.2)
    return {"pose": (extrinsics[0], extrinsics[1]), "depth": depth, "points": points, "tracking": tracks}


def _metrics() -> dict:
    return {"pose": PoseMetrics(), "depth": DepthMetrics.video("sintel"), "points": PointMetrics(),
            "tracking": TrackingMetrics()}


def _update(metrics: dict, data: dict, clips: slice) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the static pose clip
        metrics["pose"].update(*(x[clips] for x in data["pose"]))
        pred, gt, dynamic = (x[clips] for x in data["depth"])
        metrics["depth"].update(pred, gt, dynamic_masks=dynamic)
        metrics["points"].update(*(x[clips] for x in data["points"]))
        metrics["tracking"].update(*(x[clips] for x in data["tracking"]), image_hw=(100, 100))


def _worker(rank: int, world_size: int, init_file: str, expected: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        metrics = _metrics()
        _update(metrics, _data(), slice(2 * rank, 2 * rank + 2))
        for name, metric in metrics.items():
            synced = metric.compute()
            assert set(synced) == set(expected[name]), name
            for key, value in expected[name].items():
                torch.testing.assert_close(synced[key], value, rtol=1e-12, atol=1e-12, msg=f"{name}/{key}")
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_equal_single_process(tmp_path):
    metrics = _metrics()
    _update(metrics, _data(), slice(0, CLIPS))
    expected = {name: metric.compute() for name, metric in metrics.items()}
    assert metrics["pose"].skipped.item() == 1 and not math.isnan(expected["pose"]["ate"].item())
    assert "abs_rel_dynamic" in expected["depth"]
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), expected), nprocs=2, join=True)
