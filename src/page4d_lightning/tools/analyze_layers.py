"""`page4d analyze-layers`: how each aggregator block (frame k, global k) relates to dynamic content, and a freeze
policy that trains the top blocks.

    page4d analyze-layers --config experiments/synthetic.yaml --out analysis/ [--ckpt last.ckpt]
        [--measures noise,attention,mask-swap] [--layers 4,11,17,23 | all] [--num-clips 4] [--top-k 20]
        [--rank-by noise] [--split val] [--device cuda] [--seed 0] [overrides, e.g. --data.init_args.root R]

The clips come from the experiment's DataModule (`--split`), parsed as `page4d fit` parses it; the model is the
experiment's preset with the weights of `--ckpt` (a Lightning checkpoint or any weights file `load_weights` reads),
else the experiment's `model.weights`, else random; it runs at the experiment's evaluation mask strength. The
measures are in `layer_measures` and `attention_mass`. Outputs in `--out`: `layers.csv` (one row per block),
`layers.png` (heatmap: one line per measure, frame and global blocks apart), `layers.json` (everything) and
`finetune_policy.yaml`, the top-k blocks by `--rank-by` plus the mask head with the LR / weight decay / warm-up of
the "page4d" preset, which `page4d fit --model.finetune <file>` accepts.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from PIL import Image

from page4d_lightning.finetune import FINETUNE_PRESETS, FinetuneConfig
from page4d_lightning.models import PAGE4D, load_weights
from page4d_lightning.module import Page4DModule
from page4d_lightning.tools.attention_mass import attention_mass, summarize_attention
from page4d_lightning.tools.data import load_experiment
from page4d_lightning.tools.layer_measures import KINDS, layer_sensitivity, noise_sensitivity, patch_labels
from page4d_lightning.visuals import colorize

MEASURES = ("noise", "attention", "mask-swap")
COLUMNS = {
    "noise": ["noise_abs_rel_static", "noise_abs_rel_increase", "noise_track_epe", "noise_track_epe_increase"],
    "attention": ["attn_camera_dynamic", "attn_camera_ratio", "attn_register_ratio",
                  "attn_camera_dynamic_bias", "attn_camera_ratio_bias", "attn_register_ratio_bias"],
    "mask-swap": ["swap_dynamic_shift", "swap_static_shift", "swap_ratio", "swap_grad_rms"],
}
RANK_COLUMN = {"noise": "noise_abs_rel_increase", "attention": "attn_camera_ratio", "mask-swap": "swap_ratio"}
"""The column each `--rank-by` sorts by, largest first."""
HEATMAP_ROWS = {
    "noise_abs_rel_increase": "noise: static AbsRel increase",
    "attn_camera_ratio": "attn: camera dyn/static",
    "attn_camera_ratio_bias": "attn+bias: camera dyn/static",
    "swap_ratio": "mask-swap: ratio",
}
"""The heatmap's lines (the columns among these that were measured) and their labels."""


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")


def build_model(model_args: dict[str, Any], ckpt: str | None) -> tuple[PAGE4D, str]:
    """(the experiment's PAGE4D with `ckpt`, else `model.weights`, else random weights; at its evaluation mask
    strength, in eval mode, every parameter trainable), a sentence saying which weights."""
    preset = model_args.get("preset", "tiny")
    model = Page4DModule(preset=preset, model_overrides=model_args.get("model_overrides")).model
    weights = ckpt or model_args.get("weights")
    if weights:
        load_weights(model, weights, track_head_from=model_args.get("track_head_weights"))
        source = f"weights {weights}" + ("" if ckpt else " (the experiment's model.weights; no --ckpt)")
    else:
        source = f"RANDOM weights of preset {preset!r} (no --ckpt, no model.weights)"
    schedule = model_args.get("mask_schedule")
    model.set_mask_strength(schedule.get("eval_strength", 0.0) if schedule else model_args.get("mask_strength", 0.0))
    return model.eval(), source


def pick_clips(dataset: Any, count: int, patch_size: int, need_dynamic: bool) -> list[dict[str, Any]]:
    """The first `count` clips of `dataset` as batches of one (with a dynamic patch when `need_dynamic`); scans at
    most 10 count + 10 clips."""
    from datamodules import collate_clips

    batches = []
    for index in range(min(len(dataset), 10 * count + 10)):
        sample = dataset[index]
        if need_dynamic:
            if "dynamic_masks" not in sample:
                raise ValueError(f"{type(dataset).__name__}: clips without dynamic_masks; the attention and "
                                 "mask-swap measures need them (use --measures noise)")
            if not patch_labels(sample["dynamic_masks"][None], patch_size)[0].any():
                continue
        batches.append(collate_clips([sample]))
        if len(batches) == count:
            break
    if not batches:
        raise ValueError(f"{type(dataset).__name__}: no clip with a dynamic patch (> 50 % dynamic pixels) found")
    return batches


def measure(model: PAGE4D, batches: list[dict[str, Any]], measures: list[str], layers: list[int], seed: int,
            bias_strength: float, chunk: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per block (frame 0..depth-1, then global) with the `COLUMNS` of `measures` (None where a block was
    not measured), and extra results (noise baseline)."""
    depth = model.config.depth
    rows = [{"block": f"aggregator.{k}_blocks.{i}", "kind": k, "index": i} for k in KINDS for i in range(depth)]
    extra: dict[str, Any] = {}
    if "noise" in measures:
        result = noise_sensitivity(model, batches, layers, seed=seed)
        extra["noise_baseline"] = result["baseline"]
        for row in rows:
            got = result["blocks"].get((row["kind"], row["index"]), {})
            for key in ("abs_rel_static", "abs_rel_increase", "track_epe", "track_epe_increase"):
                row[f"noise_{key}"] = got.get(key)
    if "attention" in measures:
        device = next(model.parameters()).device
        for suffix, with_bias in (("", False), ("_bias", True)):
            sums = None
            for batch in batches:
                got = attention_mass(model, batch["images"].to(device), batch["dynamic_masks"], with_bias=with_bias,
                                     strength=bias_strength, chunk=chunk)
                sums = got if sums is None else {k: sums[k] + v for k, v in got.items()}
            summary = summarize_attention(sums)
            for row in rows:
                k = KINDS.index(row["kind"])
                row[f"attn_camera_dynamic{suffix}"] = float(summary["dynamic_share"][k, row["index"], 0])
                row[f"attn_camera_ratio{suffix}"] = float(summary["ratio"][k, row["index"], 0])
                row[f"attn_register_ratio{suffix}"] = float(summary["ratio"][k, row["index"], 1])
    if "mask-swap" in measures:
        by_block = {r["block"]: r for r in layer_sensitivity(model, batches, seed=seed)}
        for row in rows:
            got = by_block[row["block"]]
            row.update({f"swap_{k}": got[k] for k in ("dynamic_shift", "static_shift", "ratio", "grad_rms")})
    return rows, extra


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def rank_blocks(rows: list[dict[str, Any]], column: str, top_k: int) -> list[dict[str, Any]]:
    """Sets `rank` (1 = largest `column`; None where not measured) and `selected` (rank <= top_k) on every row;
    returns the selected rows."""
    ranked = sorted((r for r in rows if _finite(r.get(column))), key=lambda r: -r[column])
    for row in rows:
        row["rank"], row["selected"] = None, False
    for n, row in enumerate(ranked):
        row["rank"], row["selected"] = n + 1, n < top_k
    return ranked[:top_k]


def finetune_policy(blocks: list[tuple[str, int]]) -> FinetuneConfig:
    """A `FinetuneConfig` training `blocks` [(kind, index)] and the spatial mask head, with the groups, LRs, weight
    decays and warm-ups of `FINETUNE_PRESETS["page4d"]` (frame blocks, global blocks, mask head)."""
    preset = {g["name"]: g for g in FINETUNE_PRESETS["page4d"]["groups"]}
    groups = []
    for kind in KINDS:
        globs = [f"aggregator.{kind}_blocks.{i}.*" for i in sorted(i for k, i in blocks if k == kind)]
        if globs:
            groups.append({**preset[f"{kind}_blocks"], "params": globs})
    groups.append({**preset["mask_head"], "params": list(preset["mask_head"]["params"])})
    return {"trainable": [glob for group in groups for glob in group["params"]], "groups": groups}


def heatmap(rows: list[dict[str, Any]], columns: list[str], cell: int = 22, label: int = 240) -> np.ndarray:
    """(H, W, 3) uint8: one line per column of `columns` (viridis, each line scaled to its own min..max over both
    panels, printed on the right; black = not measured), one panel of blocks per kind (frame, global)."""
    depth = max(r["index"] for r in rows) + 1
    values = torch.tensor([[r.get(c) if _finite(r.get(c)) else math.nan for r in rows] for c in columns])
    colours = torch.stack([colorize(v, value_range=_range(v)) for v in values]).numpy()  # (lines, 2*depth, 3)
    panel_h = cell * (len(columns) + 1)
    right = label + depth * cell
    image = np.full((2 * panel_h + cell // 2, right + 130, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_PLAIN
    for k, kind in enumerate(KINDS):
        top = k * (panel_h + cell // 2)
        cv2.putText(image, f"{kind} blocks", (4, top + cell - 6), font, 1.0, (0, 0, 0), 1)
        for i in range(depth):
            cv2.putText(image, str(i), (label + i * cell + 2, top + cell - 6), font, 0.8, (0, 0, 0), 1)
        for line, column in enumerate(columns):
            y = top + (line + 1) * cell
            lo, hi = _range(values[line])
            cv2.putText(image, HEATMAP_ROWS.get(column, column), (4, y + cell - 8), font, 0.8, (0, 0, 0), 1)
            cv2.putText(image, f"{lo:.3g} .. {hi:.3g}", (right + 4, y + cell - 8), font, 0.8, (0, 0, 0), 1)
            strip = colours[line, k * depth : (k + 1) * depth]  # (depth, 3)
            image[y : y + cell - 2, label:right] = np.repeat(strip, cell, axis=0)[None]
    return image


def _range(values: torch.Tensor) -> tuple[float, float]:
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return lo, max(hi, lo + 1e-12)


def _json_safe(value: Any) -> Any:
    """`value` with every NaN / inf float (a measure without data) as None, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _cell(value: Any) -> Any:
    return "" if value is None else value


def write_outputs(out: Path, rows: list[dict[str, Any]], columns: list[str], policy: FinetuneConfig,
                  report: dict[str, Any]) -> dict[str, Path]:
    """layers.csv, layers.png, layers.json and finetune_policy.yaml in `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("layers.csv", "layers.png", "layers.json", "finetune_policy.yaml")}
    header = ["block", "kind", "index", *columns, "rank", "selected"]
    with open(paths["layers.csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[_cell(row.get(c)) for c in header] for row in rows])
    shown = [c for c in HEATMAP_ROWS if c in columns]
    Image.fromarray(heatmap(rows, shown)).save(paths["layers.png"])
    content = {**report, "blocks": rows, "policy": policy}
    paths["layers.json"].write_text(json.dumps(_json_safe(content), indent=2, allow_nan=False) + "\n")
    comment = (f"# page4d analyze-layers: the top {report['top_k']} blocks by {report['rank_column']} and the mask head"
               f"\n# ({report['weights']}; {report['num_clips']} clips of {report['config']}, split {report['split']})"
               "\n# use: page4d fit --config <experiment> --model.finetune <this file>\n")
    paths["finetune_policy.yaml"].write_text(comment + yaml.safe_dump(policy, sort_keys=False))
    return paths


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="page4d analyze-layers", allow_abbrev=False,
                                     description="Per-block measures of the aggregator (noise, attention, mask-swap),"
                                     " a CSV, a heatmap and a freeze policy of the top blocks. Extra arguments are"
                                     " LightningCLI overrides of the experiment, e.g. --data.init_args.root R.")
    parser.add_argument("--config", required=True, help="experiment YAML (data and model preset)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--ckpt", default=None, help="Lightning checkpoint or weights file (default: the experiment's "
                        "model.weights, else random weights)")
    parser.add_argument("--measures", default=",".join(MEASURES), help="comma-separated subset of the default")
    parser.add_argument("--layers", default=None, help="blocks for the noise measure: comma-separated indices or "
                        "'all' (default: the DPT tap layers, 4,11,17,23); the other measures cover every block")
    parser.add_argument("--num-clips", type=int, default=4, help="clips (with dynamic patches) to measure on")
    parser.add_argument("--top-k", type=int, default=20, help="blocks in the freeze policy (default 20)")
    parser.add_argument("--rank-by", choices=MEASURES, default=None,
                        help="measure that ranks the blocks (default: the first of --measures)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="val")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bias-strength", type=float, default=1.0,
                        help="mask strength s of the attention measure's with-bias columns (bias 64 s m)")
    parser.add_argument("--query-chunk", type=int, default=256, help="query rows per attention chunk")
    return parser


def _options(parser: argparse.ArgumentParser, args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    opts, overrides = parser.parse_known_args(args)
    opts.measures = [m.strip() for m in opts.measures.split(",") if m.strip()]
    if not opts.measures or set(opts.measures) - set(MEASURES):
        parser.error(f"--measures: expected a comma-separated subset of {','.join(MEASURES)}, got {opts.measures}")
    opts.rank_by = opts.rank_by or next(m for m in MEASURES if m in opts.measures)
    if opts.rank_by not in opts.measures:
        parser.error(f"--rank-by {opts.rank_by}: not among --measures {','.join(opts.measures)}")
    for name in ("num_clips", "top_k", "query_chunk"):
        if getattr(opts, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(opts, name)}")
    return opts, overrides


def _layers(parser: argparse.ArgumentParser, text: str | None, model: PAGE4D) -> list[int]:
    depth = model.config.depth
    if text is None:
        return sorted({i % depth for i in model.config.intermediate_layer_idx})
    if text == "all":
        return list(range(depth))
    try:
        layers = sorted({int(i) for i in text.split(",")})
    except ValueError:
        parser.error(f"--layers: expected comma-separated integers or 'all', got {text!r}")
    if any(not 0 <= i < depth for i in layers):
        parser.error(f"--layers: expected indices in [0, {depth}), got {text!r}")
    return layers


def analyze_layers_main(args: list[str]) -> int:
    """`page4d analyze-layers`; returns the exit code (2 on a usage or input error)."""
    parser = _parser()
    try:
        opts, overrides = _options(parser, args)
        datamodule, model_args = load_experiment(["--config", opts.config, *overrides])
    except SystemExit as exc:  # argparse / jsonargparse printed the message (or --help)
        return int(exc.code or 0)
    try:
        model, weights = build_model(model_args, opts.ckpt)
        layers = _layers(parser, opts.layers, model)
        datamodule.setup({"train": "fit", "val": "validate", "test": "test"}[opts.split])
        if opts.split not in datamodule.datasets:
            raise ValueError(f"the {opts.split!r} split is not configured: set `data.init_args.{opts.split}`")
        need_dynamic = bool({"attention", "mask-swap"} & set(opts.measures))
        batches = pick_clips(datamodule.datasets[opts.split], opts.num_clips, model.config.patch_size, need_dynamic)
    except (FileNotFoundError, ValueError) as err:
        sys.stderr.write(f"page4d analyze-layers: error: {err}\n")
        return 2
    except SystemExit as exc:  # a --layers error
        return int(exc.code or 0)
    _say(f"page4d analyze-layers: {weights}; {len(batches)} clips of split {opts.split}; measures "
         f"{','.join(opts.measures)}; noise on blocks {layers}")
    torch.manual_seed(opts.seed)
    model.to(opts.device)
    rows, extra = measure(model, batches, opts.measures, layers, opts.seed, opts.bias_strength, opts.query_chunk)
    column = RANK_COLUMN[opts.rank_by]
    chosen = rank_blocks(rows, column, opts.top_k)
    if len(chosen) < opts.top_k:
        _say(f"note: only {len(chosen)} blocks have a {column} value; the policy trains those")
    policy = finetune_policy([(r["kind"], r["index"]) for r in chosen])
    columns = [c for m in MEASURES if m in opts.measures for c in COLUMNS[m]]
    report = {"config": opts.config, "ckpt": opts.ckpt, "weights": weights, "split": opts.split,
              "num_clips": len(batches), "clips": [f"{b.get('dataset', ['?'])[0]}/{b.get('seq_name', ['?'])[0]}"
                                                   for b in batches],
              "measures": opts.measures, "noise_layers": layers, "rank_column": column, "top_k": opts.top_k,
              "mask_strength": model.mask_strength, "bias_strength": opts.bias_strength, **extra}
    paths = write_outputs(Path(opts.out), rows, columns, policy, report)
    if "noise_baseline" in extra:
        clean = extra["noise_baseline"]
        epe = "-" if clean["track_epe"] is None else f"{clean['track_epe']:.4g} px"
        _say(f"clean model: static AbsRel {clean['abs_rel_static']:.4g}, static track EPE {epe}")
    shown = [RANK_COLUMN[m] for m in MEASURES if m in opts.measures]
    _say(f"{'rank':>4}  {'block':<28}" + "".join(f" {c:>24}" for c in shown))
    for row in sorted(rows, key=lambda r: (r["rank"] is None, r["rank"] or 0)):
        values = "".join(f" {row[c]:>24.4g}" if _finite(row.get(c)) else f" {'-':>24}" for c in shown)
        _say(f"{row['rank'] or '-':>4}  {row['block']:<28}{values}")
    for path in paths.values():
        _say(f"wrote {path}")
    return 0
