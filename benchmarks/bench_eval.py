"""Evaluation speed and memory: benchmark sequences per minute, and what the full preset needs for 120 frames.

python benchmarks/bench_eval.py [--quick]

- CPU: the tiny preset (random weights) through the protocol path of `page4d test` (`evaluation.predict_for_protocol`
  then `score_sequence`) on synthetic sequences of S frames at 224x224 (quick: 8 frames at 112x112): sequences per
  minute for video depth (one forward per sequence, world-z scoring) and for pose.
- Full preset, 120 frames at 518x518 in bf16: estimated from the CPU activation line of `bench_memory` (the
  vggt_1b model at 224x224, 2 and 4 frames, scaled to 518 tokens and bf16; `bench_memory.project`).
- On a GPU (when one is present): the full preset in bf16 at 50 and 120 frames of 518x518, time per forward and
  `torch.cuda.max_memory_allocated`, beside VGGT's published 3.12 s and 21.15 GB at 100 frames on an H100.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import VGGT_PUBLISHED
from bench_memory import run as memory_run
from common import write_result


def _sequences_per_minute(task: str, frames: int, size: int, repeats: int) -> dict:
    from datamodules import SyntheticDynamicDataset
    from page4d_lightning.evaluation import EvalProtocol, predict_for_protocol, score_sequence
    from page4d_lightning.models import PAGE4D, PAGE4DConfig

    torch.manual_seed(0)
    model = PAGE4D(PAGE4DConfig.tiny(enable_track=False)).eval()
    dataset = SyntheticDynamicDataset(num_frames=frames, image_size=size, normalize=False, num_clips=repeats + 1)
    protocol = EvalProtocol(benchmark="sintel", task=task, protocol="official",
                            depth_source="world_z" if task == "video_depth" else "depth_map")
    samples = [dataset[i] for i in range(repeats + 1)]
    score_sequence(predict_for_protocol(model, samples[0]["images"], protocol), samples[0], protocol)  # warm-up
    start = time.perf_counter()
    for sample in samples[1:]:
        score_sequence(predict_for_protocol(model, sample["images"], protocol), sample, protocol)
    seconds = (time.perf_counter() - start) / repeats
    return {"task": task, "frames": frames, "hw": [size, size], "seconds_per_sequence": round(seconds, 3),
            "sequences_per_minute": round(60.0 / seconds, 1)}


def _gpu_full_preset(frames: int) -> dict:
    from page4d_lightning.inference import predict_clip
    from page4d_lightning.models import PAGE4D, PAGE4DConfig

    model = PAGE4D(PAGE4DConfig.vggt_1b(enable_track=False)).cuda().eval()
    images = torch.rand(frames, 3, 518, 518, device="cuda")
    predict_clip(model, images[:2], autocast_dtype=torch.bfloat16)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    predict_clip(model, images, autocast_dtype=torch.bfloat16)
    torch.cuda.synchronize()
    return {"frames": frames, "seconds": round(time.perf_counter() - start, 2),
            "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2), "device": torch.cuda.get_device_name()}


def run(quick: bool = False) -> dict:
    frames, size, repeats = (8, 112, 2) if quick else (24, 224, 3)
    result: dict = {"cpu_tiny": [_sequences_per_minute(task, frames, size, repeats)
                                 for task in ("video_depth", "pose")]}
    if not quick:
        line = memory_run(frames=(2, 4), preset="vggt_1b")["projection_518_bf16"]["ours"]
        result["full_preset_518_bf16_estimate"] = {
            "frames": 120, "gib": round((line["fixed_mb"] + 120 * line["mb_per_frame"]) / 1024, 1),
            "method": "bench_memory projection (CPU fp32 activations at 224, 2 and 4 frames, scaled)", **line}
    if torch.cuda.is_available():
        result["gpu_full_preset_bf16"] = [_gpu_full_preset(s) for s in (50, 120)]
        result["vggt_published"] = VGGT_PUBLISHED
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    result = run(quick=parser.parse_args().quick)
    write_result("eval", result)
    print(json.dumps(result, indent=2))
