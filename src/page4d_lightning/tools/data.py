"""`page4d data validate | inspect`: check a dataset root file by file, and look at clips as the model gets them.

    page4d data validate --dataset custom --root /data/mine [--split train] [--option key=value ...]
    page4d data inspect --config experiments/synthetic.yaml [--split val] [--num-clips 4] [--out DIR] [overrides]

`validate` builds `DATASETS[name]` and runs its `validate()` (every frame of every sequence), prints each
problem once (with the number of frames it hit) and a summary; exit 0 clean, 1 problems, 2 usage error.
`inspect` builds the experiment's DataModule through the same LightningCLI parser as `page4d fit` (same YAML,
defaults, command-line overrides and seed) but instantiates only the data, never the model or the trainer,
and writes one PNG per clip (layout in `clip_sheet`). Drawing uses numpy / cv2 / PIL only.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from PIL import Image

logger = logging.getLogger(__name__)

MAX_ROWS = 8  # frames per sheet
TOP_MIN = 192  # smallest side of the top view (px)
LABEL_H = 16  # height of the column-title strip (px)
TRAIL = 3  # frames of track history drawn behind each point


def _say(line: str, stream: Any = None) -> None:
    """User-facing output of the tool (stdout unless `stream`)."""
    (stream or sys.stdout).write(line + "\n")


# ------------------------------------------------------------------------------------------------ validate
def _options(pairs: list[str]) -> dict[str, Any]:
    """["key=value", ...] -> {key: YAML-parsed value}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option: expected key=value, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def validate_main(ns: argparse.Namespace) -> int:
    import datamodules  # registers every reader

    try:
        cls = datamodules.get_dataset_class(ns.dataset)
        kwargs = {"root": ns.root, "split": ns.split, "normalize": False, **_options(ns.option)}
    except ValueError as err:
        _say(f"page4d data validate: {err}", sys.stderr)
        return 2
    from datamodules.io import ClipFormatError

    where = f"{ns.dataset} (split {ns.split}, root {ns.root})"
    try:
        dataset = cls(**kwargs)
    except ClipFormatError as err:
        _say(f"PROBLEM {err}")
        _say(f"{where}: the layout is wrong, nothing else checked (1 problem)")
        return 1
    except (TypeError, ValueError) as err:
        _say(f"page4d data validate: cannot build {ns.dataset} with {kwargs}: {err}", sys.stderr)
        return 2
    if not callable(getattr(dataset, "validate", None)):
        _say(f"{where}: {type(dataset).__name__} has no files to validate (procedural or no validate())")
        return 0
    frames = sum(getattr(dataset, "sequences", {}).values())
    _say(f"{where}: checking {len(getattr(dataset, 'sequences', {}))} sequences, {frames} frames")
    problems = Counter(dataset.validate())  # keeps first-seen order; one file error can hit many frames
    for message, count in problems.items():
        _say(f"PROBLEM {message}" + (f"  (x{count} frames)" if count > 1 else ""))
    total = sum(problems.values())
    _say(f"{where}: {len(problems)} distinct problems in {total} of {frames} frames" if problems
         else f"{where}: OK, {frames} frames, no problem")
    return 1 if problems else 0


# ------------------------------------------------------------------------------------------------- inspect
def load_experiment(cli_args: list[str]) -> tuple[Any, dict[str, Any]]:
    """(the experiment's LightningDataModule, its `model` init arguments), parsed exactly as `page4d fit` parses
    them (the same parser, `base:` configs, overrides, interpolation and seed); only the DataModule is built."""
    from jsonargparse import ArgumentParser

    from datamodules import Page4DDataModule
    from page4d_lightning.cli import Page4DCLI, build_cli, expand_config_bases

    class ExperimentCLI(Page4DCLI):
        """`build_cli`'s parser (and seed), instantiating only the `data` group."""

        def instantiate_classes(self) -> None:
            parser = ArgumentParser(exit_on_error=False)
            parser.add_argument("--data", type=Page4DDataModule, required=True)
            config = parser.parse_object({"data": self.config["data"].as_dict()})
            instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # jsonargparse < 4.49
            self.datamodule = instantiate(config)["data"]
            self.model_args = self.config["model"].as_dict()

    with warnings.catch_warnings():  # the tool's own argv is in sys.argv, the experiment's arguments in `args`
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = build_cli(expand_config_bases(cli_args), run=False, cli_class=ExperimentCLI)
    return cli.datamodule, cli.model_args


def build_datamodule(cli_args: list[str]) -> Any:
    """The experiment's LightningDataModule (see `load_experiment`)."""
    return load_experiment(cli_args)[0]


def _trails(rgb: np.ndarray, sample: dict[str, Any], frames: list[int], max_tracks: int) -> None:
    """Draw, in place on rgb (rows, H, W, 3), each positive track's point and its last TRAIL positions."""
    uv = sample["tracks"].float().numpy()  # (S, N, 2)
    vis = sample["track_vis_mask"].numpy().astype(bool)
    keep = np.nonzero(sample.get("track_positive_mask", torch.ones(uv.shape[1], dtype=torch.bool)).numpy())[0]
    keep = keep[:max_tracks]
    hues = (np.arange(len(keep)) * 180 // max(1, len(keep))).astype(np.uint8)
    colours = cv2.cvtColor(np.stack([hues, np.full_like(hues, 255), np.full_like(hues, 255)], -1)[None],
                           cv2.COLOR_HSV2RGB)[0].tolist()
    fixed = np.round(np.nan_to_num(uv, posinf=-1e4, neginf=-1e4) * 16).astype(np.int64).tolist()  # cv2 shift=4
    for row, s in enumerate(frames):
        canvas = np.ascontiguousarray(rgb[row])
        for colour, n in zip(colours, keep):
            for a in range(max(0, s - TRAIL), s):
                if vis[a, n] and vis[a + 1, n]:
                    cv2.line(canvas, fixed[a][n], fixed[a + 1][n], colour, 1, cv2.LINE_AA, 4)
            if vis[s, n]:
                cv2.circle(canvas, fixed[s][n], 2 * 16, colour, -1, cv2.LINE_AA, 4)
        rgb[row] = canvas


def top_view(sample: dict[str, Any], side: int, max_points: int = 8000) -> np.ndarray:
    """(side, side, 3) uint8: x right, z up (seen from -y: from above in a y-down OpenCV world).

    Valid world points in their colours; cameras as dots (yellow = first, red = last) with the horizontal
    field-of-view wedge; a camera whose wedge does not face the points has a convention problem.
    """
    canvas = np.full((side, side, 3), 30, np.uint8)
    valid = sample["point_masks"].numpy().astype(bool)
    points = sample["world_points"].double().numpy()[valid][:, [0, 2]]  # (P, 2) x-z
    colours = (sample["images"].permute(0, 2, 3, 1).numpy()[valid] * 255).astype(np.uint8)
    step = max(1, len(points) // max_points)
    points, colours = points[::step], colours[::step]
    E, K = sample["extrinsics"].double().numpy(), sample["intrinsics"].double().numpy()
    centres = -np.einsum("sji,sj->si", E[:, :, :3], E[:, :, 3])[:, [0, 2]]  # -R^T t
    lo_hi = np.percentile(points, [2, 98], axis=0) if len(points) else np.zeros((2, 2))
    lo = np.minimum(lo_hi[0], centres.min(0))
    hi = np.maximum(lo_hi[1], centres.max(0))
    extent = max(float((hi - lo).max()), 1e-3)
    mid, margin = (lo + hi) / 2, 0.08 * side

    def px(xz: np.ndarray) -> np.ndarray:  # world x-z -> pixel (col, row), z up
        t = (xz - mid) / extent * (side - 2 * margin)
        return np.stack([side / 2 + t[..., 0], side / 2 - t[..., 1]], -1)

    cols_rows = np.round(px(points)).astype(int)
    for dc, dr in ((0, 0), (1, 0), (0, 1), (1, 1)):  # 2x2 dots
        c, r = cols_rows[:, 0] + dc, cols_rows[:, 1] + dr
        inside = (c >= 0) & (c < side) & (r >= 0) & (r < side)
        canvas[r[inside], c[inside]] = colours[inside]
    W = sample["images"].shape[-1]
    length = 0.12 * extent
    for s in range(len(E)):
        colour = (255, int(230 * (1 - s / max(1, len(E) - 1))), 0)
        c = tuple(np.round(px(centres[s]) * 16).astype(int).tolist())
        for x_edge in (-(W / 2) / K[s, 0, 0], (W / 2) / K[s, 0, 0]):  # horizontal FoV edges (camera x at z = 1)
            ray = E[s, :, :3].T @ np.array([x_edge, 0.0, 1.0])  # R^T d: the ray in world axes
            end = tuple(np.round(px(centres[s] + length * ray[[0, 2]]) * 16).astype(int).tolist())
            cv2.line(canvas, c, end, colour, 1, cv2.LINE_AA, 4)
        cv2.circle(canvas, c, (4 if s == 0 else 2) * 16, colour, -1, cv2.LINE_AA, 4)
    cv2.putText(canvas, "x->  z^", (4, side - 6), cv2.FONT_HERSHEY_PLAIN, 0.8, (200, 200, 200), 1, cv2.LINE_AA)
    return canvas


def clip_sheet(sample: dict[str, Any], max_tracks: int = 64) -> np.ndarray:
    """One clip -> uint8 (LABEL_H + T, C*W + T, 3) sheet, T = max(rows*H, TOP_MIN), rows = min(S, 8) frames.

    Columns (H x W each): rgb with tracks (points + TRAIL-frame trails), depth (1/depth colours, invalid
    black), dynamic-mask overlay (red; only when the clip has `dynamic_masks`); right: `top_view` (T x T).
    """
    from page4d_lightning.visuals import colorize_depth, frame_indices, images_to_uint8, overlay_mask

    S, _, H, W = sample["images"].shape
    frames = frame_indices(S, MAX_ROWS).tolist()
    rgb = images_to_uint8(sample["images"][frames]).numpy().copy()  # (rows, H, W, 3)
    columns = {"rgb+tracks": rgb}
    if "tracks" in sample and "track_vis_mask" in sample:
        _trails(rgb, sample, frames, max_tracks)
    columns["depth"] = colorize_depth(sample["depths"][frames].float(), sample["point_masks"][frames]).numpy()
    if "dynamic_masks" in sample:
        base = images_to_uint8(sample["images"][frames])
        columns["dynamic"] = overlay_mask(base, sample["dynamic_masks"][frames].float()).numpy()
    grid = np.concatenate(list(columns.values()), axis=2).reshape(-1, len(columns) * W, 3)  # (rows*H, C*W, 3)
    side = max(grid.shape[0], TOP_MIN)
    sheet = np.zeros((LABEL_H + side, grid.shape[1] + side, 3), np.uint8)
    sheet[LABEL_H : LABEL_H + grid.shape[0], : grid.shape[1]] = grid
    sheet[LABEL_H:, grid.shape[1] :] = top_view(sample, side)
    for k, title in enumerate([*columns, "top view x-z"]):
        cv2.putText(sheet, title, (k * W + 2, LABEL_H - 4), cv2.FONT_HERSHEY_PLAIN, 0.8, (230, 230, 230), 1)
    return sheet


def inspect_main(ns: argparse.Namespace, overrides: list[str]) -> int:
    try:
        datamodule = build_datamodule(["--config", ns.config, *overrides])
    except SystemExit as exc:  # jsonargparse has printed the parse error
        return int(exc.code or 0) or 2
    stage = {"train": "fit", "val": "validate", "test": "test"}[ns.split]
    datamodule.setup(stage)
    try:
        dataset = getattr(datamodule, f"{ns.split}_dataloader")().dataset
    except ValueError as err:  # the split is not configured in the experiment
        _say(f"page4d data inspect: {err}", sys.stderr)
        return 2
    out = Path(ns.out) if ns.out else Path("inspect") / Path(ns.config).stem
    out.mkdir(parents=True, exist_ok=True)
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(ns.num_clips, len(dataset))).round().astype(int))
    for index in picks.tolist():
        sample = dataset[index]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{sample.get('dataset', 'clip')}_{sample.get('seq_name', '')}")
        path = out / f"{name}_{index}.png"
        Image.fromarray(clip_sheet(sample)).save(path)
        logger.info("wrote %s", path)
        _say(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="page4d data", description="Dataset tools: validate a root, inspect clips.")
    sub = parser.add_subparsers(dest="command")
    val = sub.add_parser("validate", help="check every frame of a dataset root; exit 1 when problems are found")
    val.add_argument("--dataset", required=True, help="registry name (datamodules.DATASETS), e.g. custom")
    val.add_argument("--root", default=None, help="dataset root folder")
    val.add_argument("--split", default="train", help="split to check (default: train)")
    val.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="extra dataset constructor argument (YAML value), repeatable")
    ins = sub.add_parser("inspect", help="write one PNG per clip as `page4d fit` would load it; extra "
                         "arguments are LightningCLI overrides, e.g. --data.init_args.root /data/x")
    ins.add_argument("--config", required=True, help="experiment YAML, e.g. experiments/synthetic.yaml")
    ins.add_argument("--split", choices=("train", "val", "test"), default="train")
    ins.add_argument("--num-clips", type=int, default=4, help="clips to draw, evenly spread over the split")
    ins.add_argument("--out", default=None, help="output folder (default: inspect/<experiment name>/)")
    return parser


def data_main(args: list[str]) -> int:
    """`page4d data ...`: returns the exit code (0 ok, 1 problems found, 2 usage error)."""
    parser = _parser()
    try:
        ns, extra = parser.parse_known_args(args)
        if ns.command != "inspect" and extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if ns.command == "inspect" and ns.num_clips < 1:
            parser.error(f"--num-clips: expected >= 1, got {ns.num_clips}")
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), message already printed
        return int(exc.code or 0)
    if ns.command is None:
        parser.print_help(sys.stderr)
        return 2
    return validate_main(ns) if ns.command == "validate" else inspect_main(ns, extra)
