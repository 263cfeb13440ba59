"""Clip throughput of every registered file reader vs its packed HDF5 shards (`datamodules.packed`).

For each reader: its test fixture writer (`tests/data/<name>/make_fixture.py`) writes a scene at a
realistic native resolution (`NATIVE_HW`; passed as `hw=` or `height=, width=` where the writer takes a
size, else the writer's fixed size is used and noted); the scene is packed with `pack_dataset` (gzip, the
default; lzf and no compression too in the full run). Two measures, raw vs packed:
- clips/s through `DataLoader(num_workers=2, batch_size=None)`, 1 thread per worker: S = 8 frames at
  W = 518, aspect 294/518 (518 x 294 px), augmentation on, 64 tracks where the reader has them, GT
  normalised; workers started and warmed up first, then a fixed number of clips timed with
  `time.perf_counter` over a few repeats (median, min, max);
- frames/s of `load_frame` alone in this process (1 thread): the decoding that packing replaces.
Both read files the OS has cached (decoding, not the disk). Speed-up = packed / raw median (target >= 2).
Readers that are not there yet are skipped with a note.

Caveats: fixture images are smooth analytic renders, which PNG/JPEG compress (and decode) faster than real
photographs, so the raw decode cost here is a lower bound; the clip rate also pays the shared pipeline
(resize, augmentation, points, normalisation), which packing does not change. `--quick` halves the native
resolutions and times gzip only.

Run: `python benchmarks/bench_datasets.py [--quick]` (prints JSON), or `make bench ARGS="--only datasets"`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import stream_rates

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `datamodules` and `tests.data.<name>.make_fixture`

# registry name -> native (H, W) of the real release (datasets.md): PointOdyssey 960x540, Kubric raw worker
# output 512x512, Dynamic Replica 1280x720, Spring 1920x1080 (disparity at 2x), CO3D about 800 on the long
# side (varies), Waymo after the DUSt3R/CUT3R crops (long side 512), custom: a 640x480 RGB-D camera
NATIVE_HW = {
    "pointodyssey": (540, 960),
    "kubric": (512, 512),
    "dynamic_replica": (720, 1280),
    "spring": (1080, 1920),
    "co3d": (800, 600),
    "waymo": (341, 512),
    "custom": (480, 640),
}
CLIP = {"num_frames": 8, "image_size": 518, "aspect_ratio": 294 / 518, "normalize": True, "augment": True,
        "num_tracks": 64}
TARGET_SPEEDUP = 2.0


def _size_kwargs(writer: Any, hw: tuple[int, int]) -> dict[str, Any] | None:
    """The writer's size arguments for `hw`, or None when it has no size argument."""
    params = inspect.signature(writer).parameters
    if "hw" in params:
        return {"hw": hw}
    if "height" in params and "width" in params:
        return {"height": hw[0], "width": hw[1]}
    return None


def _disk_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _decode_rate(dataset: Any, frames: list[tuple[str, int]], repeats: int) -> dict[str, Any]:
    """Frames/s of `load_frame` alone (the part packing replaces), in this process, one thread."""
    dataset.load_frame(*frames[0])  # opens files / fills per-sequence caches
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for seq, i in frames:
            dataset.load_frame(seq, i)
        rates.append(len(frames) / (time.perf_counter() - start))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def bench_reader(name: str, hw: tuple[int, int], work: Path, quick: bool) -> dict[str, Any]:
    """Write the fixture, pack it, time raw and packed clips of reader `name`."""
    from datamodules import DATASETS
    from datamodules.packed import PackedDataset
    from datamodules.packed_writer import pack_dataset

    try:
        importlib.import_module(f"datamodules.{name}")
        writer = importlib.import_module(f"tests.data.{name}.make_fixture").write_fixture
    except ImportError as err:
        return {"skipped": f"reader or fixture writer not there yet: {err}"}
    if name not in DATASETS:
        return {"skipped": f"datamodules.{name} registers no dataset {name!r}"}
    clips, repeats, warmup = (6, 2, 4) if quick else (16, 3, 4)
    kwargs = _size_kwargs(writer, hw)
    note = None if kwargs is not None else "the fixture writer has no size argument: its fixed size is used"
    kwargs = dict(kwargs or {})
    if "num_frames" in inspect.signature(writer).parameters:
        kwargs["num_frames"] = CLIP["num_frames"]
    raw_root, result = work / name / "raw", {}
    raw_root.mkdir(parents=True)
    start = time.perf_counter()
    writer(raw_root, **kwargs)
    result["fixture_write_s"] = time.perf_counter() - start
    cls = DATASETS[name]
    probe = cls(raw_root, num_frames=1, normalize=False)
    seq = next(iter(probe.sequences))
    result["native_hw"] = list(probe.load_frame(seq, 0).image.shape[:2])
    result["sequences"], result["frames"] = len(probe.sequences), sum(probe.sequences.values())
    per_seq = -(-(warmup + clips * repeats + 4) // len(probe.sequences))  # ceil: enough clips for the run
    args = {**CLIP, "clips_per_sequence": per_seq}
    frames = [(s, i) for s, n in probe.sequences.items() for i in range(n)][:16]
    result["raw_mib"] = _disk_mib(raw_root)
    result["raw_frames_per_s"] = _decode_rate(probe, frames, repeats)
    result["raw_clips_per_s"] = stream_rates(cls(raw_root, **args), clips, repeats, warmup)
    for compression in ("gzip",) if quick else ("gzip", "lzf", None):
        out = work / name / f"packed_{compression}"
        start = time.perf_counter()
        pack_dataset(probe, out, compression=compression)
        pack_s = time.perf_counter() - start
        decode = _decode_rate(PackedDataset(out, num_frames=1, split=probe.split), frames, repeats)
        rate = stream_rates(PackedDataset(out, split=probe.split, **args), clips, repeats, warmup)
        result[f"packed_{compression or 'none'}"] = {
            "pack_frames_per_s": result["frames"] / pack_s, "mib": _disk_mib(out), "frames_per_s": decode,
            "decode_speedup": decode["median"] / result["raw_frames_per_s"]["median"], "clips_per_s": rate,
            "speedup": rate["median"] / result["raw_clips_per_s"]["median"],
        }
    if note:
        result["note"] = note
    return result


def run(quick: bool = False) -> dict[str, Any]:
    """Every reader of `NATIVE_HW`; returns a JSON-able dict with the results and the environment."""
    import cv2

    torch.manual_seed(0)
    threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)  # the decode-only timing runs in this process, like one worker
    cv2.setNumThreads(1)
    load_before = os.getloadavg()[0]
    readers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_datasets_") as tmp:
        for name, hw in NATIVE_HW.items():
            hw = (hw[0] // 2, hw[1] // 2) if quick else hw
            try:
                readers[name] = bench_reader(name, hw, Path(tmp), quick)
            except Exception as err:  # one broken reader must not hide the others' numbers
                readers[name] = {"error": f"{type(err).__name__}: {err}"}
    torch.set_num_threads(threads[0])
    cv2.setNumThreads(threads[1])
    speedups = {n: r["packed_gzip"]["speedup"] for n, r in readers.items() if "packed_gzip" in r}
    decode = {n: r["packed_gzip"]["decode_speedup"] for n, r in readers.items() if "packed_gzip" in r}
    fastest = {n: max(v["speedup"] for k, v in r.items() if k.startswith("packed_")) for n, r in readers.items()
               if "packed_gzip" in r}
    return {
        "benchmark": "dataset_readers_raw_vs_packed",
        "config": {**CLIP, "output_hw": [294, 518], "dataloader_workers": 2, "threads_per_worker": 1,
                   "native_resolution_scale": 0.5 if quick else 1.0},
        "readers": readers,
        "speedup_gzip": speedups,
        "decode_speedup_gzip": decode,
        "speedup_best_compression": fastest,
        "target_speedup": TARGET_SPEEDUP,
        "meets_target": {n: s >= TARGET_SPEEDUP for n, s in speedups.items()},
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "torch": torch.__version__,
        "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)",
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
