"""`page4d eval`: every benchmark protocol of experiments/eval/ whose data root is configured, then the summary.

    page4d eval --ckpt checkpoints/x/last.ckpt --data-root /data            # <root>/<benchmark> per benchmark
    page4d eval --weights checkpoints/model.pt --bench sintel --protocol official --root sintel=/data/MPI-Sintel
    make eval CKPT=X [BENCH=sintel] [PROTOCOL=official|standard] [DATA_ROOT=/data]

Each protocol runs as `page4d test --config experiments/eval/<benchmark>_<task>_<protocol>.yaml` in its own
process (the checkpoint's preset is read from its hyper-parameters), writing
`results/<run>/<benchmark>_<task>_<protocol>.{md,csv,json}`. The summary (`results/<run>/summary.md`, also printed)
lays the means out like the paper's tables: video depth, monocular depth and pose, one table per protocol, with
the published rows of `experiments/eval/published.json` beside ours.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from page4d_lightning.models.weights import checkpoint_model_args

TABLES = {  # task -> (title, the columns of each benchmark)
    "video_depth": ("Video depth (AbsRel lower, delta<1.25 higher)", ("abs_rel", "delta_1_25")),
    "mono_depth": ("Monocular depth (AbsRel, delta<1.25)", ("abs_rel", "delta_1_25")),
    "pose": ("Camera pose (ATE, RPE-t, RPE-r in degrees)", ("ate", "rpe_trans", "rpe_rot")),
}


def protocol_files(folder: Path, benches: set[str] | None, protocols: set[str] | None) -> list[Path]:
    """experiments/eval/<benchmark>_<task>_<protocol>.yaml, filtered by benchmark and protocol."""
    files = []
    for path in sorted(folder.glob("*.yaml")):
        bench, protocol = path.stem.split("_")[0], path.stem.rsplit("_", 1)[-1]
        if (benches is None or bench in benches) and (protocols is None or protocol in protocols):
            files.append(path)
    return files


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _cell(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def summary_tables(results: Path, published: Path | None) -> str:
    """The markdown summary of every `<name>.json` under `results`, with the published rows."""
    runs = [json.loads(p.read_text()) for p in sorted(results.glob("*.json")) if p.name != "summary.json"]
    rows = json.loads(published.read_text())["rows"] if published and published.is_file() else []
    out = [f"# Evaluation summary: {results}", ""]
    for task, (title, columns) in TABLES.items():
        for protocol in ("official", "standard"):
            mine = [r for r in runs if r["protocol"]["task"] == task and r["protocol"]["protocol"] == protocol]
            if not mine:
                continue
            benches = sorted({r["protocol"]["benchmark"] for r in mine})
            header = "| method | " + " | ".join(f"{b} {c}" for b in benches for c in columns) + " | source |"
            out += [f"## {title}: {protocol} protocol", "", header, "|---" * (len(benches) * len(columns) + 2) + "|"]
            for row in rows:
                if row["task"] == task and row["protocol"] == protocol and row["benchmark"] in benches:
                    cells = [_cell(row.get(c)) if b == row["benchmark"] else "" for b in benches for c in columns]
                    out.append(f"| {row['method']} | " + " | ".join(cells) + f" | {row['source']} |")
            by_bench = {r["protocol"]["benchmark"]: r for r in mine}
            cells = [_cell(by_bench[b]["summary"].get(c)) for b in benches for c in columns]
            checkpoint = mine[0]["meta"].get("checkpoint")
            out += ["| **ours** | " + " | ".join(cells) + f" | {checkpoint} |", ""]
            skipped = [f"{r['protocol']['benchmark']}: {s['sequence']} ({s['why']})" for r in mine
                       for s in r["summary"]["skipped"]]
            if skipped:
                out += ["Skipped sequences: " + "; ".join(skipped), ""]
    return "\n".join(out) + "\n"


def evaluate_main(args: list[str]) -> int:
    """`page4d eval`: run the benchmark protocols (module docstring); returns 0 when every run succeeded."""
    parser = argparse.ArgumentParser(prog="page4d eval", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="a `page4d fit` checkpoint (its preset is read from it)")
    source.add_argument("--weights", help="a weights file: official VGGT-1B / PAGE-4D or an export (--preset)")
    parser.add_argument("--preset", default=None, help="model preset for --weights (default: the configs' vggt_1b)")
    parser.add_argument("--bench", default=None, help="comma-separated benchmarks (default: every one with a root)")
    parser.add_argument("--protocol", choices=("official", "standard"), default=None, help="default: both")
    parser.add_argument("--data-root", default=None, help="a folder holding <benchmark>/ for each benchmark")
    parser.add_argument("--root", action="append", default=[], metavar="BENCH=PATH", help="one benchmark's root")
    parser.add_argument("--configs", default="experiments/eval", help="the folder of the protocol configs")
    parser.add_argument("--run-name", default=None, help="results/<run-name>/ (default: from the checkpoint path)")
    parser.add_argument("--results-dir", default="results")
    opts, overrides = parser.parse_known_args(args)
    roots = {}
    for item in opts.root:
        bench, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--root {item!r}: expected BENCH=PATH")
        roots[bench] = path
    folder = Path(opts.configs)
    files = protocol_files(folder, set(opts.bench.split(",")) if opts.bench else None,
                           {opts.protocol} if opts.protocol else None)
    if not files:
        parser.error(f"no protocol config in {folder} matches --bench {opts.bench} --protocol {opts.protocol}")
    model_path = opts.ckpt or opts.weights
    if not Path(model_path).is_file():
        parser.error(f"{'--ckpt' if opts.ckpt else '--weights'} {model_path}: no such file")
    run_name = opts.run_name or "_".join(Path(model_path).with_suffix("").parts[-2:])
    model_args = checkpoint_model_args(opts.ckpt) if opts.ckpt else (["--model.preset", opts.preset]
                                                                      if opts.preset else [])
    weights = ["--ckpt_path", opts.ckpt] if opts.ckpt else ["--model.weights", opts.weights]
    failures, ran = [], 0
    for config in files:
        bench = config.stem.split("_")[0]
        root = roots.get(bench) or (str(Path(opts.data_root) / bench) if opts.data_root else None)
        if root is None or not Path(root).is_dir():
            _say(f"skip {config.stem}: no data root (looked for {root}; set DATA_ROOT or --root {bench}=PATH)")
            continue
        command = [sys.executable, "-m", "page4d_lightning.cli", "test", "--config", str(config), *weights,
                   *model_args, "--data.init_args.root", root, "--model.evaluation.run_name", run_name,
                   "--model.evaluation.results_dir", opts.results_dir, *overrides]
        _say(f"== {config.stem}: {' '.join(command[2:])}")
        ran += 1
        if subprocess.run(command).returncode != 0:
            failures.append(config.stem)
    results = Path(opts.results_dir) / run_name
    if ran and results.is_dir():
        text = summary_tables(results, folder / "published.json")
        (results / "summary.md").write_text(text)
        _say(text + f"wrote {results / 'summary.md'}")
    if not ran:
        sys.stderr.write("page4d eval: no benchmark root found: nothing evaluated\n")
        return 2
    if failures:
        sys.stderr.write(f"page4d eval: failed: {', '.join(failures)}\n")
        return 1
    return 0
