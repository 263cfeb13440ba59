"""`page4d predict` end to end on the CPU: frames per second of decode + model + export, and the export's share.

python benchmarks/bench_predict.py [--quick] [--frames 32] [--image-size 224] [--window 16] [--threads 2]

A synthetic dynamic clip (322 x 238) is written as an H.264 mp4 (PyAV) in a temporary folder; then the same three
stages as `page4d predict --input clip.mp4 --out DIR` run in this process, each timed once with
`time.perf_counter` (a whole run is the unit; there is no meaningful warm-up for a file pipeline, so the model is
warmed with one window first): decode + resize/crop (`datamodules.video.VideoDataset`), the tiny preset with
random weights in chained windows (`inference.predict_sequence`), and every export (`export.export_video`:
PNG/npy maps, PLY, COLMAP, TUM, tracks-free, Rerun, HTML report).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import write_result


def write_clip(path: Path, frames: int, hw: tuple[int, int] = (238, 322)) -> Path:
    """A synthetic dynamic clip (procedural scene) as an mp4."""
    from datamodules import SyntheticDynamicDataset
    from page4d_lightning.export import write_video

    sample = SyntheticDynamicDataset(num_frames=frames, image_size=hw[1], aspect_ratio=hw[0] / hw[1],
                                     normalize=False, num_clips=1, seed=5)[0]
    rgb = (sample["images"].permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return write_video(path, np.ascontiguousarray(rgb), fps=10)


def run(quick: bool = False, frames: int = 32, image_size: int = 224, window: int | None = 16,
        overlap: int = 8) -> dict:
    from datamodules.video import VideoDataset
    from page4d_lightning.export import export_video
    from page4d_lightning.inference import predict_sequence
    from page4d_lightning.models import PAGE4D, PAGE4DConfig

    if quick:
        frames = min(frames, 16)
    torch.manual_seed(0)
    model = PAGE4D(PAGE4DConfig.tiny()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        video = write_clip(Path(tmp) / "clip.mp4", frames)
        t0 = time.perf_counter()
        item = VideoDataset(str(video), image_size=image_size, window=window, overlap=overlap)[0]
        t1 = time.perf_counter()
        predict_sequence(model, item["images"][: window or frames])  # warm-up
        t2 = time.perf_counter()
        prediction = predict_sequence(model, item["images"], window=window, overlap=overlap)
        t3 = time.perf_counter()
        manifest = export_video(Path(tmp) / "out", prediction, item, timings={})
        t4 = time.perf_counter()
        files = len(manifest["files"])
    decode, model_s, export = t1 - t0, t3 - t2, t4 - t3
    total = decode + model_s + export
    return {
        "model": "tiny preset, random weights", "frames": frames, "video_hw": [238, 322],
        "network_hw": list(item["images"].shape[-2:]), "window": window, "overlap": overlap,
        "decode_s": decode, "model_s": model_s, "export_s": export, "total_s": total,
        "fps_end_to_end": frames / total, "export_share": export / total, "files_written": files,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args.quick, args.frames, args.image_size, args.window, args.overlap)
    print(json.dumps(result, indent=2))
    print(f"-> {write_result('predict_video', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
