"""Windowed (Sim(3)-chained) vs one-shot inference on a long synthetic clip: how far the trajectories drift apart.

python benchmarks/bench_windowed.py [--ckpt last.ckpt] [--frames 64] [--window 16] [--overlap 8] [--size 112]

The same model predicts a 64-frame synthetic sequence (112 px wide) once in one window and once in overlapping
windows chained by `inference.predict_sequence`. Reported: the ATE (evo protocol: Sim(3)-aligned RMSE of the camera
centres) of the windowed trajectory against the one-shot one and of both against the ground truth, each also divided
by the path length of the trajectory it is measured against (scale-free), the median depth ratio windowed / one-shot
(1 = the chaining kept the scale), and both run times. Default model: the tiny preset with random weights (seeded);
`--ckpt` takes a `page4d fit` checkpoint (its preset is read from it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import write_result


def load_model(ckpt: str | None) -> torch.nn.Module:
    from page4d_lightning.models import PAGE4D, PAGE4DConfig
    from page4d_lightning.module import Page4DModule

    if ckpt is None:
        torch.manual_seed(0)
        return PAGE4D(PAGE4DConfig.tiny()).eval()
    return Page4DModule.load_from_checkpoint(ckpt, map_location="cpu", weights=None,
                                             track_head_weights=None).model.eval()


def path_length(extrinsics: torch.Tensor) -> float:
    """Length of the camera-centre path of (S, 3, 4) camera-from-world extrinsics."""
    from page4d_lightning.geometry import camera_centers

    centres = camera_centers(extrinsics.double())
    return float((centres[1:] - centres[:-1]).norm(dim=-1).sum())


def run(quick: bool = False, ckpt: str | None = None, frames: int = 64, window: int = 16, overlap: int = 8,
        size: int = 112) -> dict:
    from datamodules import SyntheticDynamicDataset
    from page4d_lightning.inference import predict_sequence
    from page4d_lightning.metrics.functional import pose_errors

    if quick:
        frames = min(frames, 32)
    sample = SyntheticDynamicDataset(num_frames=frames, image_size=size, normalize=True, num_clips=1, seed=3)[0]
    model = load_model(ckpt)
    images = sample["images"]
    start = time.perf_counter()
    one = predict_sequence(model, images)
    one_s = time.perf_counter() - start
    start = time.perf_counter()
    win = predict_sequence(model, images, window=window, overlap=overlap)
    win_s = time.perf_counter() - start
    gt = sample["extrinsics"]
    valid = one["depth"] > 0
    ate_win_one = float(pose_errors(win["extrinsics"], one["extrinsics"])["ate"])  # in the one-shot's units
    ate_one_gt = float(pose_errors(one["extrinsics"], gt)["ate"])  # in GT units
    ate_win_gt = float(pose_errors(win["extrinsics"], gt)["ate"])
    return {
        "model": ckpt or "tiny preset, random weights (seed 0)",
        "frames": frames, "image_hw": list(images.shape[-2:]), "window": window, "overlap": overlap,
        "ate_windowed_vs_oneshot": ate_win_one,
        "ate_oneshot_vs_gt": ate_one_gt,
        "ate_windowed_vs_gt": ate_win_gt,
        "gt_path_length": path_length(gt),
        "oneshot_path_length": path_length(one["extrinsics"]),
        # scale-free: each ATE divided by the path length of the trajectory it is measured against
        "ate_windowed_vs_oneshot_relative": ate_win_one / path_length(one["extrinsics"]),
        "ate_oneshot_vs_gt_relative": ate_one_gt / path_length(gt),
        "ate_windowed_vs_gt_relative": ate_win_gt / path_length(gt),
        "depth_ratio_windowed_over_oneshot_median": float((win["depth"][valid] / one["depth"][valid]).median()),
        "oneshot_s": one_s, "windowed_s": win_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None, help="a `page4d fit` checkpoint (default: tiny preset, random weights)")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--size", type=int, default=112, help="image width (multiple of 14)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args.quick, args.ckpt, args.frames, args.window, args.overlap, args.size)
    print(json.dumps(result, indent=2))
    print(f"-> {write_result('windowed', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
