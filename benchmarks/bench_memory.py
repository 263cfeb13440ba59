"""Activation memory of one inference forward as a function of the frame count S, ours beside the official code.

python benchmarks/bench_memory.py [--quick] [--official DIR] [--frames 8 16 32] [--preset vggt_1b|tiny]

What is measured: a no-grad forward of a randomly initialised model without the track head, fp32 on the CPU,
S frames of 224x224, batch 1. Each (implementation, S) runs in a fresh interpreter; after the model and the
images exist and one warm-up forward has run, the kernel's peak-RSS counter is reset and the growth of the
peak during one more forward is the activation memory (the method of `bench_model.py`, with glibc's mmap
threshold fixed so that RSS follows the live tensors).

Implementations:
- `ours`: `PAGE4D`, which keeps only the aggregator outputs its heads read (4 of 24, plus the last one).
- `ours_all_layers`: the same model keeping all 24 outputs, as the official code and our earlier versions do.
- `official`: PAGE-4D's released model (kaichen-z/PAGE4D `model/page`), when `--official DIR` names the folder
  that holds its `page` package (it needs `einops` and `huggingface_hub` importable). It is never shipped here.

Projection (`project`, per implementation): the least-squares line over S is scaled to 518x518 inputs in bf16
on a GPU: x 1374/261 tokens per frame (37x37 vs 16x16 patches, + 5 special tokens), / 2 bytes per value; plus
the bf16 weights. It assumes activations stay linear in tokens (fused attention never materialises S*P x S*P).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import FIXED_MMAP_ENV, _peak_mb, _reset_peak, _status_mb
from common import write_result

REPO = Path(__file__).resolve().parent.parent
HW = (224, 224)
TOKENS_224, TOKENS_518 = 16 * 16 + 5, 37 * 37 + 5  # camera + 4 registers + patches per frame
GPU_GIB = (24, 80)
VGGT_PUBLISHED = {"frames": 100, "hw": 518, "gpu": "H100", "seconds": 3.12, "gb": 21.15}  # VGGT README


def _build(impl: str, preset: str, official: str | None) -> torch.nn.Module:
    torch.manual_seed(0)
    if impl == "official":
        sys.path.insert(0, official)
        from page.models.vggt import VGGT

        return VGGT(enable_track=False).eval()
    from page4d_lightning.models import PAGE4D, PAGE4DConfig

    config = PAGE4DConfig.vggt_1b(enable_track=False) if preset == "vggt_1b" else PAGE4DConfig.tiny(enable_track=False)
    model = PAGE4D(config).eval()
    if impl == "ours_all_layers":
        every = set(range(model.aggregator.depth))
        model.layers_read = lambda query_points=None: every  # the official behaviour: keep every output
    return model


def _worker(spec: dict) -> dict:
    model = _build(spec["impl"], spec["preset"], spec.get("official"))
    images = torch.rand(spec["frames"], 3, *HW)
    with torch.no_grad():
        model(images)  # warm-up: one-time allocations (RoPE tables, allocator pools) are not activations
        rss = _status_mb()["VmRSS"]
        method = _reset_peak()
        model(images)
    return {"activation_mb": _peak_mb(method) - rss, "memory_method": method,
            "parameters": sum(p.numel() for p in model.parameters())}


def _spawn(spec: dict, threads: int) -> dict:
    path = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, **FIXED_MMAP_ENV)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--threads", str(threads), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _slope(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares line (MiB per frame, intercept MiB) through {S: MiB}; through the origin for one point."""
    xs, ys = list(points), list(points.values())
    if len(xs) == 1:
        return ys[0] / xs[0], 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else float("nan")
    return slope, my - slope * mx


def project(activation_mb: dict[int, float], parameters: int) -> dict:
    """GPU memory at 518x518 in bf16 from CPU fp32 figures at 224x224: the line through {S: MiB} scaled by the
    tokens per frame (x 1374/261, heads' chunk buffers included) and halved for bf16, plus the bf16 weights;
    returns MiB per frame, the fixed part, and the frames that fit in 24 and 80 GiB."""
    slope, intercept = _slope(activation_mb)
    scale = TOKENS_518 / TOKENS_224 / 2
    weights = parameters * 2 / 2**20
    fixed = weights + max(intercept, 0.0) * scale
    return {
        "mb_per_frame": round(slope * scale, 1), "fixed_mb": round(fixed, 1),
        **{f"frames_in_{g}_gib": int((g * 1024 - fixed) / (slope * scale)) for g in GPU_GIB},
        "assumes": "activations linear in tokens (fused attention), no track head, batch 1",
    }


def run(quick: bool = False, frames: tuple[int, ...] | None = None, preset: str | None = None,
        official: str | None = None, threads: int = 2) -> dict:
    frames = frames or ((2, 4) if quick else (8, 16, 32))
    official = official or os.environ.get("PAGE4D_OFFICIAL")
    preset = preset or ("tiny" if quick else "vggt_1b")
    impls = ["ours", "ours_all_layers"] + (["official"] if official else [])
    table: dict[str, dict[int, float]] = {impl: {} for impl in impls}
    parameters = 0
    for impl in impls:
        for s in frames:
            out = _spawn({"impl": impl, "preset": preset, "frames": s, "official": official}, threads)
            table[impl][s] = out["activation_mb"]
            parameters = out["parameters"] if impl == "ours" else parameters
    result: dict = {"preset": preset, "hw": list(HW), "dtype": "float32", "device": "cpu", "frames": list(frames),
                    "activation_mb": {impl: {str(s): round(v, 1) for s, v in rows.items()} for impl, rows in
                                      table.items()}}
    baseline = "official" if official else "ours_all_layers"
    result["ratio_to_" + baseline] = {str(s): round(table["ours"][s] / table[baseline][s], 3) for s in frames}
    result["ours_slope_mb_per_frame"] = round(_slope(table["ours"])[0], 1)
    result["projection_518_bf16"] = {impl: project(rows, parameters) for impl, rows in table.items()}
    result["vggt_published"] = VGGT_PUBLISHED
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny preset at 2 and 4 frames")
    parser.add_argument("--frames", type=int, nargs="*", default=None)
    parser.add_argument("--preset", choices=("vggt_1b", "tiny"), default=None)
    parser.add_argument("--official", default=os.environ.get("PAGE4D_OFFICIAL"),
                        help="folder holding the official `page` package (kaichen-z/PAGE4D model/), or env "
                        "PAGE4D_OFFICIAL")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    result = run(args.quick, tuple(args.frames) if args.frames else None, args.preset, args.official, args.threads)
    write_result("memory", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:
        args = sys.argv[1:]
        torch.set_num_threads(int(args[args.index("--threads") + 1]))
        print(json.dumps(_worker(json.loads(args[args.index("--worker") + 1]))))
    else:
        raise SystemExit(main())
