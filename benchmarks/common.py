"""Shared benchmark helpers: timing with `torch.utils.benchmark`, peak memory, JSON results.

Method (kornia's benchmarks/README): seed everything, warm up, time with `blocked_autorange`, report the
median and the interquartile range, record the environment, write JSON under benchmarks/results/.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.benchmark import Timer

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    """Commit, torch version, device and thread count of this run."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "commit": commit or "unknown",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def time_it(fn: Callable[[], Any], min_run_time: float = 2.0, warmup: int = 1) -> dict[str, float]:
    """Median and IQR (seconds) of `fn()` with `Timer.blocked_autorange` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    measurement = Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time)
    return {"median_s": measurement.median, "iqr_s": measurement.iqr, "runs": len(measurement.times)}


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write `{environment, result}` as benchmarks/results/<name>.json and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), "result": result}, indent=2))
    return path


def one_thread_worker(_worker_id: int) -> None:
    """DataLoader `worker_init_fn`: one torch and one OpenCV thread per worker process (2 workers, 2 cores)."""
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def stream_rates(dataset: Any, clips: int, repeats: int, warmup: int) -> dict[str, Any]:
    """Clips/s that 2 one-thread DataLoader workers stream from `dataset` in steady state: `repeats` runs of
    `clips` clips after `warmup` clips (which include the workers' start-up); median, min, max and every run."""
    import statistics

    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=None, num_workers=2, worker_init_fn=one_thread_worker,
                        collate_fn=lambda clip: clip)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(clips):
            next(it)
        rates.append(clips / (time.perf_counter() - start))
    del it
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": rates}
