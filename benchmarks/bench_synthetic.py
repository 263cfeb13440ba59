"""Clip generation throughput of the synthetic dataset (S = 8 frames, 224 x 224, 64 tracks, GT normalised).

(a) in one process with `torch.set_num_threads(2)` (and, as a reference, 1 thread); (b) through a
`DataLoader(num_workers=2, batch_size=None)` with 1 thread per worker. Each warms up first, then times a fixed
number of clips with `time.perf_counter` over a few repeats and reports the median and the spread (min, max)
in clips/s. Target: >= 20 clips/s. On a machine shared with other jobs, intra-op threading stalls (OpenMP
barriers wait for a busy core): compare (a) with its 1-thread reference and check the load.

Run: `python benchmarks/bench_synthetic.py [--quick]` (prints JSON).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from common import stream_rates

from datamodules.synthetic import SyntheticDynamicDataset

CONFIG = {"num_frames": 8, "image_size": 224, "num_tracks": 64, "normalize": True, "seed": 0}
TARGET_CLIPS_PER_S = 20.0


def _summary(rates: list[float]) -> dict:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": rates}


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def bench_in_process(clips: int, repeats: int, warmup: int, threads: int) -> dict:
    """Clips/s of `dataset[i]` called in this process with `threads` intra-op threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ds = SyntheticDynamicDataset(**CONFIG, num_clips=warmup + clips * repeats)
        for i in range(warmup):
            ds[i]
        rates, cpu_ms = [], []
        for r in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            for i in range(warmup + r * clips, warmup + (r + 1) * clips):
                ds[i]
            rates.append(clips / (time.perf_counter() - start))
            cpu_ms.append((time.process_time() - cpu_start) / clips * 1e3)
    finally:
        torch.set_num_threads(previous)
    # CPU time per clip (all threads of this process) barely depends on other jobs sharing the machine
    return {**_summary(rates), "cpu_ms_per_clip": statistics.median(cpu_ms)}


def bench_dataloader(clips: int, repeats: int, warmup: int) -> dict:
    """Clips/s streamed by a DataLoader with 2 worker processes of 1 thread each (steady state)."""
    return stream_rates(SyntheticDynamicDataset(**CONFIG, num_clips=warmup + clips * repeats), clips, repeats, warmup)


def run(quick: bool = False) -> dict:
    """Measure both settings; returns a JSON-able dict with the results and the environment."""
    clips, repeats, warmup = (6, 2, 2) if quick else (20, 5, 4)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    in_process = bench_in_process(clips, repeats, warmup, threads=2)
    single_thread = bench_in_process(clips, repeats, warmup, threads=1)
    dataloader = bench_dataloader(clips, repeats, warmup)
    return {
        "benchmark": "synthetic_clip_generation",
        "config": CONFIG,
        "clips_per_repeat": clips,
        "repeats": repeats,
        "in_process_2_threads_clips_per_s": in_process,
        "in_process_1_thread_clips_per_s": single_thread,
        "dataloader_2_workers_clips_per_s": dataloader,
        "target_clips_per_s": TARGET_CLIPS_PER_S,
        "meets_target": dataloader["median"] >= TARGET_CLIPS_PER_S,
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__,
        "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)",
        "commit": _commit(),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
