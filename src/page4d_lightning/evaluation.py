"""Benchmark evaluation: one protocol (`EvalProtocol`) scores each sequence, then the sequences are aggregated and
written as tables (`results/<run>/<benchmark>_<task>_<protocol>.{md,csv,json}`).

Tasks and what is scored per sequence (the prediction comes from `inference.run_protocol`):
- `video_depth`: one depth alignment for the whole sequence (`align`, default "scale": the official IRLS scale),
  one metric set per sequence. `depth_source: world_z` scores the z of the predicted world points (camera 0's
  frame), as the official video-depth script does; `depth_map` scores each frame's own depth map.
- `mono_depth`: every frame predicted alone (S = 1) and aligned alone (median).
- `pose`: evo ATE (Sim(3), camera centres), RPE translation and rotation at 1 frame.
Aggregation: depth metrics are means weighted by valid GT pixels (the official `np.average(..., weights=valid)`),
and the dynamic / static columns by their own pixel counts; pose metrics are unweighted means over sequences (the
official relpose average). A sequence that cannot be scored (no valid GT pixel, a static camera where Sim(3) is
undefined) is counted and named in `skipped`, never silently averaged in.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from page4d_lightning.geometry import depth_to_world_points, relative_to_first
from page4d_lightning.inference import predict_clip, predict_sequence
from page4d_lightning.metrics.functional import DEPTH_PROTOCOLS, depth_errors, pose_errors

TASKS = ("video_depth", "mono_depth", "pose")
DEPTH_COLUMNS = ("abs_rel", "delta_1_25")  # the paper's columns; every DEPTH_KEYS value is in the CSV / JSON
POSE_COLUMNS = ("ate", "rpe_trans", "rpe_rot")


@dataclass(frozen=True)
class EvalProtocol:
    """How one benchmark task is evaluated (YAML: `model.evaluation`).

    benchmark: sintel | bonn | tum | dycheck | kitti (the depth presets of `metrics.DEPTH_PROTOCOLS`).
    task: video_depth | mono_depth | pose.  protocol: "official" or "standard" (a label in the tables).
    depth_source: world_z (official video depth) or depth_map.  align: None = the task's preset ("scale" for
    video, "median" for mono), or any `metrics.DEPTH_ALIGNERS` name.  max_depth / clip_pred: None = the preset.
    autocast: "bfloat16" runs the aggregator in bf16 (the official evaluation), None in the model's dtype.
    window / overlap: windowed inference for long sequences (None: one forward per sequence, as officially).
    results_dir: where the tables go; run_name: the folder under it.
    """

    benchmark: str
    task: str
    protocol: str = "standard"
    depth_source: str = "depth_map"
    align: str | None = None
    max_depth: float | None = None
    clip_pred: float | None = None
    autocast: str | None = None
    window: int | None = None
    overlap: int = 8
    results_dir: str = "results"
    run_name: str = "eval"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"evaluation.task: expected one of {TASKS}, got {self.task!r}")
        if self.depth_source not in ("world_z", "depth_map"):
            raise ValueError(f"evaluation.depth_source: expected world_z or depth_map, got {self.depth_source!r}")
        if self.task != "pose":
            kind = "video" if self.task == "video_depth" else "mono"
            if self.benchmark not in DEPTH_PROTOCOLS[kind]:
                raise ValueError(f"evaluation.benchmark: no {self.task} preset for {self.benchmark!r}; expected one "
                                 f"of {sorted(DEPTH_PROTOCOLS[kind])}")
        if self.autocast not in (None, "bfloat16", "float16"):
            raise ValueError(f"evaluation.autocast: expected null, bfloat16 or float16, got {self.autocast!r}")
        if self.window is not None and self.window < 2:
            raise ValueError(f"evaluation.window: expected >= 2 frames or null, got {self.window}")

    @property
    def name(self) -> str:
        """`<benchmark>_<task>_<protocol>`: the file name of the tables and of the committed frame list."""
        return f"{self.benchmark}_{self.task}_{self.protocol}"

    def depth_options(self) -> dict[str, Any]:
        """Keyword arguments of `metrics.depth_errors` for this protocol."""
        kind = "video" if self.task == "video_depth" else "mono"
        options = dict(DEPTH_PROTOCOLS[kind][self.benchmark])
        for key in ("align", "max_depth", "clip_pred"):
            if getattr(self, key) is not None:
                options[key] = getattr(self, key)
        return options


def predicted_depth(predictions: Mapping[str, Tensor], source: str) -> Tensor:
    """(S, H, W) depth to score: the depth maps, or the z of the world points unprojected with the predicted
    cameras (camera 0's frame; official video depth: negative depth set to 0 first)."""
    depth = predictions["depth"].float()
    if source == "depth_map":
        return depth
    depth = depth.clamp_min(0.0)
    extrinsics = relative_to_first(predictions["extrinsics"].float())  # the model's own gauge: camera 0 = [I | 0]
    world, _ = depth_to_world_points(depth, extrinsics, predictions["intrinsics"].float())
    return world[..., 2]


def predict_for_protocol(model: torch.nn.Module, images: Tensor, protocol: EvalProtocol) -> dict[str, Tensor]:
    """images (S, 3, H, W) -> the decoded predictions the protocol scores: one forward for the whole sequence (or
    windows, `protocol.window`), or one forward per frame for `mono_depth`."""
    dtype = getattr(torch, protocol.autocast) if protocol.autocast else None
    if protocol.task == "mono_depth":
        parts = [predict_clip(model, images[i : i + 1], autocast_dtype=dtype) for i in range(images.shape[0])]
        return {k: torch.cat([p[k] for p in parts]) for k in ("extrinsics", "intrinsics", "depth")}
    return predict_sequence(model, images, window=protocol.window, overlap=protocol.overlap, autocast_dtype=dtype)


def score_sequence(predictions: Mapping[str, Tensor], sample: Mapping[str, Any], protocol: EvalProtocol) -> dict:
    """One table row: the metrics of one sequence (floats), its name and frame count, or `skipped` with why.

    predictions: `extrinsics` (S, 3, 4), `intrinsics` (S, 3, 3), `depth` (S, H, W); sample: one clip of the
    benchmark reader (`depths`, `extrinsics`, optional `dynamic_masks`, `point_masks`, `seq_name`).
    """
    name = str(sample.get("seq_name", "?"))
    frames = int(predictions["extrinsics"].shape[0])
    row: dict[str, Any] = {"sequence": name, "frames": frames}
    if protocol.task == "pose":
        if frames < 2:
            return {**row, "skipped": "fewer than 2 frames: no relative pose"}
        errors = pose_errors(predictions["extrinsics"].double()[None], sample["extrinsics"].double()[None])
        values = {k: float(v[0]) for k, v in errors.items()}
        if not all(math.isfinite(v) for v in values.values()):
            return {**row, "skipped": "static camera (still or pure rotation): the Sim(3) alignment is undefined"}
        return {**row, **values}
    gt = sample["depths"].float()
    if "point_masks" in sample:
        gt = gt * sample["point_masks"].float()
    masks = sample.get("dynamic_masks")
    options = protocol.depth_options()
    options["per"] = "sequence" if protocol.task == "video_depth" else "frame"
    with torch.no_grad():
        errors = depth_errors(predicted_depth(predictions, protocol.depth_source)[None], gt[None],
                              dynamic_masks=None if masks is None else masks.bool()[None], **options)
    values = {k: float(v[0]) for k, v in errors.items()}
    if values["valid_pixels"] == 0:
        return {**row, "skipped": "no valid ground-truth depth pixel"}
    return {**row, **values}


def aggregate(rows: Sequence[Mapping[str, Any]], task: str) -> dict[str, Any]:
    """The summary of the scored rows: weighted means (depth) or means (pose), and the skipped sequences."""
    scored = [r for r in rows if "skipped" not in r]
    summary: dict[str, Any] = {"sequences": len(scored), "frames": sum(r["frames"] for r in scored),
                               "skipped": [{"sequence": r["sequence"], "why": r["skipped"]} for r in rows
                                           if "skipped" in r]}
    if task == "pose":
        for key in POSE_COLUMNS:
            summary[key] = sum(r[key] for r in scored) / len(scored) if scored else math.nan
        return summary
    keys = [k for k in (scored[0] if scored else {}) if k not in ("sequence", "frames") and
            not k.startswith("valid_pixels")]
    for key in keys:
        subset = "_dynamic" if key.endswith("_dynamic") else "_static" if key.endswith("_static") else ""
        weights = [(r[key], r[f"valid_pixels{subset}"]) for r in scored
                   if r.get(f"valid_pixels{subset}", 0) > 0 and math.isfinite(r[key])]
        total = sum(w for _, w in weights)
        summary[key] = sum(v * w for v, w in weights) / total if total else math.nan
    summary["valid_pixels"] = sum(r["valid_pixels"] for r in scored)
    return summary


def table_columns(task: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns of the markdown table: the paper's, plus the dynamic / static split where masks exist."""
    if task == "pose":
        return list(POSE_COLUMNS)
    columns = list(DEPTH_COLUMNS)
    if any("abs_rel_dynamic" in r for r in rows):
        columns += [f"{c}_{s}" for s in ("static", "dynamic") for c in DEPTH_COLUMNS]
    return columns


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def write_results(protocol: EvalProtocol, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any],
                  meta: Mapping[str, Any]) -> list[Path]:
    """`<results_dir>/<run_name>/<name>.{json,csv,md}`: every per-sequence row, the aggregate and the settings."""
    folder = Path(protocol.results_dir) / protocol.run_name
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / protocol.name
    payload = {"protocol": asdict(protocol), "meta": dict(meta), "summary": dict(summary), "sequences": list(rows)}
    base.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    fields = ["sequence", "frames"] + sorted({k for r in rows for k in r} - {"sequence", "frames"})
    with open(base.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        writer.writerow({"sequence": "MEAN", **{k: v for k, v in summary.items() if k in fields}})
    columns = table_columns(protocol.task, rows)
    weighting = "unweighted mean over sequences" if protocol.task == "pose" else "mean weighted by valid pixels"
    lines = [f"# {protocol.name}", "", f"checkpoint: {meta.get('checkpoint')}  ", f"settings: {meta.get('settings')}",
             "", "| sequence | frames | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for r in rows:
        cells = ["skipped: " + r["skipped"]] + [""] * (len(columns) - 1) if "skipped" in r else \
            [_fmt(r.get(c, "")) for c in columns]
        lines.append(f"| {r['sequence']} | {r['frames']} | " + " | ".join(cells) + " |")
    lines.append(f"| **mean** ({weighting}) | {summary['frames']} | "
                 + " | ".join(_fmt(summary.get(c, math.nan)) for c in columns) + " |")
    if summary["skipped"]:
        lines += ["", f"Skipped ({len(summary['skipped'])}): "
                  + "; ".join(f"{s['sequence']} ({s['why']})" for s in summary["skipped"])]
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return [base.with_suffix(s) for s in (".json", ".csv", ".md")]
