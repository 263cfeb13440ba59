"""Metric throughput on the CPU: ATE + RPE of a 1,000-frame trajectory (ours vs evo, same run) and the depth
metrics of one 120-frame 518x518 sequence (video protocol with the LAD scale fit; per-frame median)."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import time_it, write_result

from page4d_lightning.geometry import quat_to_rotmat, se3_inverse, to_homogeneous
from page4d_lightning.metrics.functional import depth_errors, depth_protocol, pose_errors


def _trajectory(frames: int, seed: int) -> torch.Tensor:
    """(S, 3, 4) float64 camera-from-world of a smooth random walk."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(4, generator=g, dtype=torch.float64) + 0.05 * torch.randn(frames, 4, generator=g,
                                                                              dtype=torch.float64).cumsum(0)
    centres = 0.1 * torch.randn(frames, 3, generator=g, dtype=torch.float64).cumsum(0)
    return se3_inverse(torch.cat([quat_to_rotmat(q), centres[..., None]], -1))


def _evo_errors(pred_c2w: list[np.ndarray], gt_c2w: list[np.ndarray]) -> dict[str, float]:
    """The official relpose computation: Sim(3)-aligned evo APE (translation) and RPE (delta 1 frame)."""
    from evo.core import metrics, trajectory

    ref, est = trajectory.PosePath3D(poses_se3=gt_c2w), trajectory.PosePath3D(poses_se3=pred_c2w)
    est.align(ref, correct_scale=True)
    out = {}
    for key, metric in (
        ("ate", metrics.APE(metrics.PoseRelation.translation_part)),
        ("rpe_trans", metrics.RPE(metrics.PoseRelation.translation_part, 1, metrics.Unit.frames, all_pairs=True)),
        ("rpe_rot", metrics.RPE(metrics.PoseRelation.rotation_angle_deg, 1, metrics.Unit.frames, all_pairs=True)),
    ):
        metric.process_data((ref, est))
        out[key] = metric.get_statistic(metrics.StatisticsType.rmse)
    return out


def _bench_pose(frames: int, min_run_time: float) -> dict:
    gt, pred = _trajectory(frames, 0), _trajectory(frames, 1)
    gt_c2w = list(to_homogeneous(se3_inverse(gt)).numpy())
    pred_c2w = list(to_homogeneous(se3_inverse(pred)).numpy())
    ours_values = pose_errors(pred, gt)
    evo_values = _evo_errors(pred_c2w, gt_c2w)
    ours = time_it(lambda: pose_errors(pred, gt), min_run_time=min_run_time)
    evo = time_it(lambda: _evo_errors(pred_c2w, gt_c2w), min_run_time=min_run_time)
    return {
        "frames": frames,
        "ours": ours,
        "evo": evo,
        "speedup": evo["median_s"] / ours["median_s"],
        "max_rel_diff_vs_evo": max(abs(ours_values[k].item() / evo_values[k] - 1) for k in evo_values),
    }


def _bench_depth(frames: int, hw: tuple[int, int], min_run_time: float) -> dict:
    g = torch.Generator().manual_seed(0)
    gt = 0.5 + 75 * torch.rand(frames, *hw, generator=g)  # some >= 70: invalid under the Sintel max_depth
    gt = gt * (torch.rand(frames, *hw, generator=g) > 0.1)
    pred = 0.3 * gt + 0.1 * torch.rand(frames, *hw, generator=g)
    out = {"frames": frames, "image_hw": list(hw)}
    for name, options in (("video_scale_lad", depth_protocol("video", "sintel")),
                          ("mono_median_per_frame", depth_protocol("mono", "sintel"))):
        out[name] = {"options": options, **time_it(lambda o=options: depth_errors(pred, gt, **o),
                                                   min_run_time=min_run_time)}
    return out


def run(quick: bool = False) -> dict:
    torch.manual_seed(0)
    min_run_time = 0.5 if quick else 3.0
    result = {
        "what": "metric throughput (CPU): ATE+RPE ours vs evo; depth metrics of one sequence",
        "pose": _bench_pose(1000, min_run_time),
        "depth": _bench_depth(120, (518, 518), min_run_time),
    }
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return result


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    write_result("metrics", result)
    print(json.dumps(result, indent=2))
