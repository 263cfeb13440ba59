"""PAGE4D inference cost on the CPU: the full preset with the dynamics bias off vs on, and the fused
rank-1 bias attention vs a dense (N, N) bias at 4,000 tokens.

python benchmarks/bench_model.py [--quick] [--threads 2]

Memory method: every configuration runs in a fresh subprocess of this script (`--worker SPEC`), so no
allocation of one configuration can hide in another's high-water mark. Inside the worker the kernel's
peak-RSS counter is reset (`/proc/self/clear_refs` <- 5, Linux >= 4.0) right after the model / inputs
exist, and the reported peak growth is VmHWM after the runs minus VmRSS at the reset: the extra resident
memory the forward needed. Where the reset is not permitted, `ru_maxrss` (process-wide, monotonic) is used
instead and the result says so. RSS includes what glibc keeps after `free` (heap it cannot return), so the
full preset is also measured with a fixed mmap threshold (`FIXED_MMAP_ENV`), where RSS follows the live
tensors. Timing: wall-clock `time.perf_counter` per run (full preset: 1 warm-up + 2 timed runs, each reported
with its process CPU time, which other jobs on a shared machine disturb less; attention: the measured call +
3 timed calls), plus `common.time_it` for attention (its `Timer` runs single-threaded).
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import time_it, write_result

REPO = Path(__file__).resolve().parent.parent
FULL_FRAMES = 4
FULL_HW = (392, 518)  # H, W: the official 518-wide training crop at aspect 0.76
ATTN_SHAPE = {"batch": 1, "heads": 16, "frames": 4, "tokens_per_frame": 1000, "head_dim": 64}  # N = 4 * 1000
# ~16 frames of 518x392 (1041 tokens each): where a dense (N, N) bias stops being small; no softmax reference
# there (its (B, heads, N, N) logits would need 16 GB) and one timed call per variant.
ATTN_SHAPE_LARGE = dict(ATTN_SHAPE, frames=16)
PATCH_START = 5  # camera + 4 register tokens per frame
# glibc raises its mmap threshold (up to 32 MiB) after freeing big blocks, so later 17-32 MiB tensors come from
# the heap and stay resident after free; a fixed threshold keeps every big tensor mmap-ed (RSS ~ live tensors).
FIXED_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
TARGET_TIME_RATIO = 1.10
TARGET_MEMORY_RATIO = 1.05


# ----------------------------------------------------------------------------- memory probes (worker side)


def _status_mb() -> dict[str, float]:
    """VmRSS and VmHWM of this process in MiB (from /proc/self/status)."""
    text = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+)", text).group(1)) / 1024 for key in ("VmRSS", "VmHWM")}


def _reset_peak() -> str:
    """Reset the peak-RSS counter; returns the method the peak will be read with."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM after clear_refs reset"
    except OSError:
        return "ru_maxrss (no reset: includes earlier peaks)"


def _peak_mb(method: str) -> float:
    if method.startswith("VmHWM"):
        return _status_mb()["VmHWM"]
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ----------------------------------------------------------------------------- workers


def _worker_full(strength: float, frames: int, hw: tuple[int, int], warmup: int, repeats: int) -> dict:
    """Full preset, random init, eval, inference_mode, fp32: timings and peak RSS growth of the forward."""
    from page4d_lightning.models import PAGE4D, PAGE4DConfig

    torch.manual_seed(0)
    model = PAGE4D(PAGE4DConfig.vggt_1b(enable_track=False)).eval()
    model.set_mask_strength(strength)
    images = torch.rand(frames, 3, *hw)
    rss_model = _status_mb()["VmRSS"]
    method = _reset_peak()
    times, cpu_times = [], []
    load_start = os.getloadavg()[0]
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            model(images)
            if i >= warmup:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
    peak = _peak_mb(method)
    return {
        "strength": strength,
        "parameters": sum(p.numel() for p in model.parameters()),
        "times_s": times,
        "median_s": statistics.median(times),
        "cpu_times_s": cpu_times,
        "median_cpu_s": statistics.median(cpu_times),
        "load_average_1min": [load_start, os.getloadavg()[0]],
        "rss_after_model_mb": rss_model,
        "peak_rss_mb": peak,
        "peak_growth_mb": peak - rss_model,
        "memory_method": method,
    }


def _attention_inputs(shape: dict, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q, k, v (B, heads, N, D) and the rank-1 bias factors (B, N) of the aggregator's global attention."""
    from page4d_lightning.models.dynamics import bias_inputs

    g = torch.Generator().manual_seed(seed)
    b, h, s, p, d = (shape[k] for k in ("batch", "heads", "frames", "tokens_per_frame", "head_dim"))
    q, k, v = (torch.randn(b, h, s * p, d, generator=g) for _ in range(3))
    m = torch.rand(b, s, p - PATCH_START, generator=g) - 0.5  # mask values in (-0.5, 0.5)
    query_weight, key_value = bias_inputs(m, PATCH_START, 64.0)  # strength 1
    return q, k, v, query_weight, key_value


def _attention_fns(q, k, v, w, c) -> dict[str, Callable[[], torch.Tensor]]:
    """The attention variants; the dense ones build their (B, 1, N, N) bias inside the call, as they must."""
    from page4d_lightning.models.layers import biased_sdpa

    def dense_bias() -> torch.Tensor:
        return (w[:, :, None] * c[:, None, :])[:, None]  # (B, N) x (B, N) -> (B, 1, N, N)

    def softmax_reference() -> torch.Tensor:
        logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + dense_bias()  # (B, heads, N, N)
        return logits.softmax(dim=-1) @ v

    return {
        "sdpa_no_bias": lambda: F.scaled_dot_product_attention(q, k, v),
        "fused_rank1": lambda: biased_sdpa(q, k, v, w, c),
        "dense_bias_sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense_bias()),
        "softmax_reference": softmax_reference,
    }


def _worker_attention(variant: str, shape: dict, min_run_time: float) -> dict:
    """One attention variant at `shape`: peak RSS growth and time of the first call, then (when
    `min_run_time` > 0) 3 timed calls at this process's thread count and `time_it` statistics."""
    small = dict(shape, tokens_per_frame=PATCH_START + 11, frames=2)
    _attention_fns(*_attention_inputs(small))[variant]()  # load kernels / thread pool before measuring
    fn = _attention_fns(*_attention_inputs(shape))[variant]
    with torch.inference_mode():
        rss_inputs = _status_mb()["VmRSS"]
        method = _reset_peak()
        start = time.perf_counter()
        fn()
        first_call_s = time.perf_counter() - start
        peak = _peak_mb(method)
        result = {"variant": variant, "peak_growth_mb": peak - rss_inputs, "memory_method": method}
        result["first_call_s"] = first_call_s
        if min_run_time > 0:
            times = []
            for _ in range(3):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            result.update(times_s=times, median_s=statistics.median(times), threads=torch.get_num_threads())
            # torch.utils.benchmark.Timer runs with num_threads=1 unless told otherwise: single-thread figures.
            result["time_it_single_thread"] = time_it(fn, min_run_time=min_run_time, warmup=0)
    return result


def _spawn(spec: dict, threads: int, extra_env: dict[str, str] | None = None) -> dict:
    """Run one worker in a fresh interpreter (with `extra_env` set) and return its JSON result."""
    path = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, **(extra_env or {}))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--threads", str(threads), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver


def _agreement(shape: dict) -> dict[str, float]:
    """Max |difference| of each variant to the explicit softmax at a small N (values, not just cost)."""
    small = dict(shape, tokens_per_frame=128)
    with torch.inference_mode():
        outs = {name: fn() for name, fn in _attention_fns(*_attention_inputs(small)).items()}
    ref = outs["softmax_reference"]
    return {name: float((out - ref).abs().max()) for name, out in outs.items() if name not in ("softmax_reference",)}


def _full_preset_block(threads: int) -> dict:
    """Bias off vs on: timing + RSS growth with the default allocator, then RSS growth of one forward with a
    fixed mmap threshold (allocator retention removed, so RSS follows the live tensors)."""
    spec = {"kind": "full", "frames": FULL_FRAMES, "hw": list(FULL_HW), "warmup": 1, "repeats": 2}
    off = _spawn(dict(spec, strength=0.0), threads)
    on = _spawn(dict(spec, strength=1.0), threads)
    once = dict(spec, warmup=0, repeats=1)
    off_fixed = _spawn(dict(once, strength=0.0), threads, FIXED_MMAP_ENV)
    on_fixed = _spawn(dict(once, strength=1.0), threads, FIXED_MMAP_ENV)
    full = {
        "what": "PAGE4DConfig.vggt_1b(enable_track=False), random init, eval, inference_mode, fp32",
        "frames": FULL_FRAMES,
        "image_hw": list(FULL_HW),
        "bias_off": off,
        "bias_on": on,
        "time_ratio_on_off": on["median_s"] / off["median_s"],
        "cpu_time_ratio_on_off": on["median_cpu_s"] / off["median_cpu_s"],
        "memory_ratio_on_off": on["peak_growth_mb"] / off["peak_growth_mb"],
        "fixed_mmap_threshold": {
            "env": FIXED_MMAP_ENV,
            "bias_off_peak_growth_mb": off_fixed["peak_growth_mb"],
            "bias_on_peak_growth_mb": on_fixed["peak_growth_mb"],
            "memory_ratio_on_off": on_fixed["peak_growth_mb"] / off_fixed["peak_growth_mb"],
        },
        "target": {"time_ratio_max": TARGET_TIME_RATIO, "memory_ratio_max": TARGET_MEMORY_RATIO},
    }
    # CPU time is the fairer ratio on a shared machine (wall time also counts other jobs' load).
    full["meets_time_target"] = bool(full["cpu_time_ratio_on_off"] <= TARGET_TIME_RATIO)
    full["meets_memory_target"] = {
        "default_allocator": bool(full["memory_ratio_on_off"] <= TARGET_MEMORY_RATIO),
        "fixed_mmap_threshold": bool(full["fixed_mmap_threshold"]["memory_ratio_on_off"] <= TARGET_MEMORY_RATIO),
    }
    return full


def run(quick: bool = False) -> dict:
    threads = torch.get_num_threads()
    result: dict = {"threads": threads, "load_average_at_start": list(os.getloadavg())}
    if quick:
        result["full_preset"] = "skipped (quick=True): run without --quick for the 1.2 B-parameter forward"
    else:
        result["full_preset"] = _full_preset_block(threads)
    variants = ("sdpa_no_bias", "fused_rank1", "dense_bias_sdpa", "softmax_reference")
    result["attention"] = _attention_block(ATTN_SHAPE, variants, 0.5 if quick else 2.0, threads)
    result["attention"]["max_abs_diff_vs_softmax_at_512_tokens"] = _agreement(ATTN_SHAPE)
    if quick:
        result["attention_large"] = "skipped (quick=True)"
    else:
        result["attention_large"] = _attention_block(ATTN_SHAPE_LARGE, variants[:3], 0.0, threads)
    result["load_average_at_end"] = list(os.getloadavg())
    return result


def _attention_block(shape: dict, variants: tuple[str, ...], min_run_time: float, threads: int) -> dict:
    """Each variant at `shape` in its own worker, plus the size of the dense bias it avoids."""
    spec = {"kind": "attention", "shape": shape, "min_run_time": min_run_time}
    n = shape["frames"] * shape["tokens_per_frame"]
    return {
        "shape": {**shape, "tokens": n},
        "variants": {v: _spawn(dict(spec, variant=v), threads) for v in variants},
        "dense_bias_tensor_mb": shape["batch"] * n * n * 4 / 2**20,
    }


def _worker_main(spec: dict) -> dict:
    if spec["kind"] == "full":
        return _worker_full(spec["strength"], spec["frames"], tuple(spec["hw"]), spec["warmup"], spec["repeats"])
    return _worker_attention(spec["variant"], spec["shape"], spec["min_run_time"])


if __name__ == "__main__":
    args = sys.argv[1:]
    torch.set_num_threads(int(args[args.index("--threads") + 1]) if "--threads" in args else 2)
    if "--worker" in args:
        print(json.dumps(_worker_main(json.loads(args[args.index("--worker") + 1]))))
    else:
        result = run(quick="--quick" in args)
        write_result("model", result)
        print(json.dumps(result, indent=2))
