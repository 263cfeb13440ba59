"""`page4d ablation` (`make ablation`): PAGE-4D's ablation in miniature, from the shipped static start.

Four fine-tunes of the same start on the same dynamic synthetic data with the same step budget, each a
`page4d fit --config experiments/synthetic.yaml` process with a few overrides, over several seeds:
- `all_blocks`: every frame and global block trains (and the mask head, with the mask schedule);
- `middle_no_mask`: the middle blocks only, the dynamics bias off and the mask head frozen;
- `middle_mask`: the middle blocks and the mask head, the bias on and fading out (PAGE-4D, `make train` as is);
- `middle_mask_gt`: as `middle_mask`, with the mask head also supervised by the exact synthetic mask for the whole
  run (`loss.mask`, an option the official code lacks; its LR no longer follows the mask strength).
Groups and learning rates are the experiment's in every variant.
The track head trains in every variant (it is part of the default run). Writes to `--out` (results/ablation):
`table.md` / `table.csv` (last validation, mean +- std over seeds: ATE, RPE-t, RPE-r, AbsRel and delta on static
and on dynamic pixels, mask IoU, trainable parameters), `curves.png` (the validation curves),
`attention.png` (the camera tokens' attention mass on dynamic patches per global block, with and without the
bias) and `runs/<variant>_seed<k>/` (each run's checkpoints and TensorBoard events).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from page4d_lightning.module import Page4DModule
from page4d_lightning.tools.analyze_layers import build_model, pick_clips
from page4d_lightning.tools.attention_mass import attention_mass, summarize_attention
from page4d_lightning.tools.data import load_experiment

EXPERIMENT = "experiments/synthetic.yaml"
MASK_HEAD = "aggregator.spatial_mask_head.*"
ALL_BLOCKS = ["aggregator.frame_blocks.*", "aggregator.global_blocks.*"]


def variant_overrides(experiment_model: dict[str, Any]) -> dict[str, list[str]]:
    """Variant name -> the `page4d fit` overrides that make it from the experiment (its `model` section, whose
    `finetune` policy is PAGE-4D's: middle blocks, mask head with `follows_mask_strength`, and their groups). Every
    variant keeps the experiment's groups and learning rates; only what trains, the mask and the mask loss change."""
    policy = experiment_model.get("finetune")
    if not isinstance(policy, dict) or MASK_HEAD not in policy.get("trainable", []):
        raise ValueError(f"the experiment's model.finetune must be a {{trainable, groups}} policy that trains "
                         f"{MASK_HEAD} (experiments/synthetic.yaml's), got {policy!r}")
    blocks = [g for g in policy["trainable"] if g.startswith(("aggregator.frame_blocks", "aggregator.global_blocks"))]
    others = [g for g in policy["trainable"] if g not in blocks]
    all_blocks = {**policy, "trainable": [*ALL_BLOCKS, *others]}
    no_mask = {"trainable": [g for g in policy["trainable"] if g != MASK_HEAD],
               "groups": [g for g in policy["groups"] if MASK_HEAD not in g["params"]]}
    supervised = {**policy, "groups": [{**g, "follows_mask_strength": False} if MASK_HEAD in g["params"] else g
                                       for g in policy["groups"]]}
    loss = {**(experiment_model.get("loss") or {}), "mask": {"weight": 1.0}}
    return {
        "all_blocks": ["--model.finetune", json.dumps(all_blocks)],
        "middle_no_mask": ["--model.finetune", json.dumps(no_mask), "--model.mask_schedule", "null",
                           "--model.mask_strength", "0.0"],
        "middle_mask": [],
        "middle_mask_gt": ["--model.finetune", json.dumps(supervised), "--model.loss", json.dumps(loss)],
    }


VARIANTS = ("all_blocks", "middle_no_mask", "middle_mask", "middle_mask_gt")
TABLE_KEYS = (
    ("ate", "ATE"), ("rpe_trans", "RPE-t"), ("rpe_rot", "RPE-r (deg)"),
    ("abs_rel_static", "AbsRel static"), ("abs_rel_dynamic", "AbsRel dynamic"),
    ("delta_1_25_static", "delta<1.25 static"), ("delta_1_25_dynamic", "delta<1.25 dynamic"),
    ("mask_iou", "mask IoU"),
)
CURVE_KEYS = (("ate", "val/ate"), ("rpe_rot", "val/rpe_rot (deg)"), ("abs_rel_dynamic", "val/abs_rel dynamic"),
              ("mask_iou", "val/mask_iou"))


def _fit_command(variant: str, seed: int, overrides: list[str], run_dir: Path, args: argparse.Namespace,
                 extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "page4d_lightning.cli", "fit", "--config", args.config, *overrides,
            "--seed_everything", str(seed), "--trainer.max_steps", str(args.steps),
            "--trainer.val_check_interval", str(args.val_every or max(1, args.steps // 6)),
            "--trainer.default_root_dir", os.fspath(run_dir), "--trainer.enable_progress_bar", "false",
            "--data.init_args.val.num_clips", str(args.val_clips), *extra]


def run_one(command: list[str], run_dir: Path) -> float:
    """Run one fit (one intra-op thread: the runs share the cores); returns its wall time in seconds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.time()
    with open(run_dir / "fit.log", "w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = (run_dir / "fit.log").read_text()[-3000:]
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}); {run_dir / 'fit.log'}:\n{tail}")
    return time.time() - start


def val_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """val/<metric> -> [(step, value)] from a run's TensorBoard events (the last event file)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run_dir / "tb").rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"{run_dir / 'tb'}: no TensorBoard events")
    events = EventAccumulator(os.fspath(files[-1]), size_guidance={"scalars": 0})
    events.Reload()
    return {tag[4:]: [(e.step + 1, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"] if tag.startswith("val/") and tag.count("/") == 1}


def trainable_parameters(checkpoint: Path) -> int:
    """Trainable parameters of the run's policy (the module rebuilt from the checkpoint's hyper-parameters)."""
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=False)["hyper_parameters"]
    hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}  # e.g. LightningCLI's "_instantiator"
    module = Page4DModule(**{**hparams, "weights": None})
    return sum(p.numel() for p in module.model.parameters() if p.requires_grad)


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0


def summarize(runs: dict[str, dict[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per variant: mean and std over seeds of the last validation of each TABLE_KEYS metric."""
    rows = []
    for variant, seeds in runs.items():
        row: dict[str, Any] = {"variant": variant, "seeds": len(seeds),
                               "trainable_params": next(iter(seeds.values()))["trainable"]}
        for key, _ in TABLE_KEYS:
            mean, std = _mean_std([r["curves"][key][-1][1] if r["curves"].get(key) else math.nan
                                   for r in seeds.values()])
            row[key], row[f"{key}_std"] = mean, std
        rows.append(row)
    return rows


def write_table(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = ["variant", *[label for _, label in TABLE_KEYS], "trainable params"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row[k]:.4g} ± {row[f'{k}_std']:.2g}" for k, _ in TABLE_KEYS]
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + f" | {row['trainable_params'] / 1e6:.2f} M |")
    lines += ["", f"Last validation ({meta['val_clips']} val clips) after {meta['steps']} steps, mean ± std over "
              f"seeds {meta['seeds']}. Wall time {meta['minutes']:.1f} min ({meta['workers']} runs at a time)."]
    (out / "table.md").write_text("\n".join(lines) + "\n")


def plot_curves(out: Path, runs: dict[str, dict[int, dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_KEYS), figsize=(4.2 * len(CURVE_KEYS), 3.4))
    for ax, (key, title) in zip(axes, CURVE_KEYS):
        for variant, seeds in runs.items():
            curves = [r["curves"].get(key, []) for r in seeds.values()]
            if not curves or not all(curves):
                continue
            steps = [s for s, _ in curves[0]]
            values = np.array([[v for _, v in c[: len(steps)]] for c in curves])
            mean, std = values.mean(0), values.std(0)
            ax.plot(steps, mean, marker="o", ms=3, label=variant)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def plot_attention(out: Path, args: argparse.Namespace, runs: dict[str, dict[int, dict[str, Any]]],
                   overrides: list[str]) -> dict[str, Any]:
    """Camera-token attention share on dynamic patches per global block, with and without the bias, for the
    mask variants' first seed (their last checkpoints) on val clips with a dynamic patch -> attention.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datamodule, model_args = load_experiment(["--config", args.config, *overrides])
    datamodule.setup("validate")
    shown = [v for v in ("middle_mask", "middle_mask_gt") if v in runs]
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.4), squeeze=False)
    report: dict[str, Any] = {}
    for ax, variant in zip(axes[0], shown):
        seed = min(runs[variant])
        model, _ = build_model(model_args, os.fspath(runs[variant][seed]["dir"] / "last.ckpt"))
        batches = pick_clips(datamodule.datasets["val"], args.attention_clips, model.config.patch_size, True)
        images = torch.cat([b["images"] for b in batches])
        masks = torch.cat([b["dynamic_masks"] for b in batches])
        report[variant] = {}
        for with_bias, style in ((False, "--"), (True, "-")):
            share = summarize_attention(attention_mass(model, images, masks, with_bias=with_bias))["dynamic_share"]
            camera = share[1, :, 0]  # global blocks, camera queries
            label = "with bias (strength 1)" if with_bias else "without bias"
            ax.plot(range(len(camera)), camera.numpy(), style, marker="o", ms=3, label=label)
            report[variant][label] = [round(float(v), 5) for v in camera]
        for b in model.config.bias_blocks:
            ax.axvspan(b - 0.5, b + 0.5, color="orange", alpha=0.08)
        ax.set_title(f"{variant} (seed {seed}): camera tokens")
        ax.set_xlabel("global block (shaded: bias blocks)")
        ax.set_ylabel("attention mass on dynamic patches")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "attention.png", dpi=110)
    plt.close(fig)
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="page4d ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=EXPERIMENT, help="the fine-tune experiment the variants modify")
    parser.add_argument("--out", default="results/ablation", help="output folder")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of " + ", ".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps of every run")
    parser.add_argument("--val-every", type=int, default=None, help="validation interval (default steps / 6)")
    parser.add_argument("--val-clips", type=int, default=32, help="validation clips")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one core each)")
    parser.add_argument("--attention-clips", type=int, default=4, help="val clips of the attention plot")
    return parser


def ablation_main(args: list[str]) -> int:
    """`page4d ablation [options] [-- experiment overrides]`: run, tabulate and plot the ablation."""
    parser = _parser()
    ns, extra = parser.parse_known_args(args)
    extra = [a for a in extra if a != "--"]
    variants = [v for v in ns.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; expected some of {list(VARIANTS)}")
    seeds = [int(s) for s in ns.seeds.split(",") if s]
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    _, model_args = load_experiment(["--config", ns.config, *extra])
    overrides = variant_overrides(model_args)
    jobs = [(v, s) for s in seeds for v in variants]
    runs: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in variants}
    start = time.time()
    with ThreadPoolExecutor(max_workers=max(1, ns.workers)) as pool:
        futures = {}
        for variant, seed in jobs:
            run_dir = out / "runs" / f"{variant}_seed{seed}"
            command = _fit_command(variant, seed, overrides[variant], run_dir, ns, extra)
            futures[(variant, seed)] = (pool.submit(run_one, command, run_dir), run_dir)
        for (variant, seed), (future, run_dir) in futures.items():
            wall = future.result()
            runs[variant][seed] = {"dir": run_dir, "wall_s": wall, "curves": val_curves(run_dir),
                                   "trainable": trainable_parameters(run_dir / "last.ckpt")}
            sys.stdout.write(f"{variant} seed {seed}: {wall / 60:.1f} min\n")
    minutes = (time.time() - start) / 60
    rows = summarize(runs)
    meta = {"steps": ns.steps, "seeds": seeds, "val_clips": ns.val_clips, "minutes": minutes, "workers": ns.workers,
            "config": ns.config, "overrides": extra}
    write_table(out, rows, meta)
    plot_curves(out, runs)
    attention = plot_attention(out, ns, runs, extra)
    summary = {"meta": meta, "rows": rows, "attention_dynamic_share": attention,
               "runs": {v: {s: {"wall_s": r["wall_s"], "curves": r["curves"]} for s, r in seeds_.items()}
                        for v, seeds_ in runs.items()}}
    (out / "ablation.json").write_text(json.dumps(summary, indent=1) + "\n")
    sys.stdout.write((out / "table.md").read_text() + f"wrote {out}/table.md, table.csv, curves.png, attention.png\n")
    return 0
