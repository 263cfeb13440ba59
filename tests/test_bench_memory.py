"""`benchmarks/bench_memory.py --quick` (tiny preset) runs as `make bench` runs it, and keeping only the aggregator
outputs the heads read takes less activation memory than keeping all of them (a memory figure, not a timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_memory_benchmark_measures_the_saving(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_memory.py"), "--quick", "--frames", "3",
                          "--threads", "1"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout[run.stdout.index("{"):])
    ours, every = result["activation_mb"]["ours"]["3"], result["activation_mb"]["ours_all_layers"]["3"]
    assert 0 < ours < every
    assert abs(result["ratio_to_ours_all_layers"]["3"] - ours / every) < 5e-3
    projection = result["projection_518_bf16"]
    assert projection["ours"]["frames_in_80_gib"] > projection["ours"]["frames_in_24_gib"] > 0
    assert projection["ours"]["mb_per_frame"] < projection["ours_all_layers"]["mb_per_frame"]
