"""`make bench`: run every benchmark, print a summary and write benchmarks/results/<name>.json.

python benchmarks/run_all.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

BENCHMARKS = {
    "synthetic_clips": "bench_synthetic",
    "train_step_tiny": "bench_train_step",
    "model": "bench_model",
    "memory": "bench_memory",
    "metrics": "bench_metrics",
    "datasets": "bench_datasets",
    "finetune": "bench_finetune",
    "eval": "bench_eval",
    "windowed": "bench_windowed",
    "predict_video": "bench_predict",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the CI machine has 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.only or BENCHMARKS:
        module = importlib.import_module(BENCHMARKS[name])
        result = module.run(quick=args.quick)
        path = write_result(name, result)
        print(f"== {name} -> {path}")
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
