"""`page4d ship CKPT --config EXPERIMENT --out weights/NAME`: a trained start, packed to be committed and reused.

Writes `NAME.safetensors` (the model's weights, official key names, float16 by default: half the size) and
`NAME.json`, its card: the model config, the recipe (the experiment file and the commit that last changed it),
the training step, and the val figures measured by `page4d validate` on the shipped file itself, next to the
uninformed pose baselines on the same clips (`metrics.functional.pose_baselines`) and the ratios between them.
The card's `reproduce` line is the command that gives the same figures again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from page4d_lightning.checkpointing import export_weights
from page4d_lightning.metrics.functional import POSE_KEYS, pose_baselines
from page4d_lightning.models.weights import load_torch_file
from page4d_lightning.module import PRESETS
from page4d_lightning.tools.data import load_experiment

logger = logging.getLogger(__name__)

CARD_METRICS = ("ate", "rpe_trans", "rpe_rot", "auc_30", "abs_rel", "delta_1_25",
                "ate_from_points", "rpe_rot_from_points")
"""The val figures a card keeps (all of `metrics_validate.json` is kept under `val_all`)."""

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": None}

POSE_LEARNED_RATIO = 3.0
"""A start "learned pose" when its ATE and RPE-rot are this many times better than both uninformed baselines."""


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def validate_weights(config: str, weights: Path, overrides: list[str]) -> tuple[dict[str, float], list[str]]:
    """Run `page4d validate --config config --model.weights weights` in a subprocess (as a user would) ->
    (its metrics_validate.json metrics, the command)."""
    command = ["page4d", "validate", "--config", config, "--model.weights", os.fspath(weights), *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        full = [sys.executable, "-m", "page4d_lightning.cli", *command[1:], "--trainer.default_root_dir", tmp,
                "--trainer.logger", "false"]
        result = subprocess.run(full, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        metrics = json.loads((Path(tmp) / "metrics_validate.json").read_text())["metrics"]
    return metrics, command


def trajectories(loader: Any, max_clips: int | None = None) -> torch.Tensor:
    """GT extrinsics (N, S, 3, 4) of the clips a dataloader yields (the first `max_clips`)."""
    out, count = [], 0
    for batch in loader:
        out.append(batch["extrinsics"][..., :3, :].double())
        count += len(out[-1])
        if max_clips is not None and count >= max_clips:
            break
    return torch.cat(out)[:max_clips]


def ship(checkpoint: str, config: str, out: str, dtype: str = "float16", train_clips: int = 512,
         overrides: list[str] | None = None, history: str | None = None) -> dict[str, Any]:
    """Export, validate and write the card (module docstring); returns the card."""
    overrides = overrides or []
    weights, card_path = Path(out).with_suffix(".safetensors"), Path(out).with_suffix(".json")
    weights.parent.mkdir(parents=True, exist_ok=True)
    export_weights(checkpoint, weights, DTYPES[dtype])
    metrics, command = validate_weights(config, weights, overrides)

    datamodule, model_args = load_experiment(["--config", config, *overrides])
    datamodule.setup("fit")
    val = trajectories(datamodule.val_dataloader())
    train = trajectories(datamodule.train_dataloader(), train_clips)
    baselines = pose_baselines(val, train)
    val_figures = {k: metrics[f"val/{k}"] for k in CARD_METRICS if f"val/{k}" in metrics}
    ratios = {name: {k: figures[k] / val_figures[k] for k in POSE_KEYS if k in val_figures}
              for name, figures in baselines.items()}

    model_config = PRESETS[model_args.get("preset", "tiny")]()
    for key, value in (model_args.get("model_overrides") or {}).items():
        setattr(model_config, key, value)
    trained = load_torch_file(checkpoint, "Lightning checkpoint")
    card = {
        "weights": weights.name,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "bytes": weights.stat().st_size,
        "dtype": dtype,
        "preset": model_args.get("preset", "tiny"),
        "model_config": asdict(model_config),
        "recipe": config,
        "recipe_commit": _git("log", "-1", "--format=%H", "--", config),
        "recipe_modified_since_commit": bool(_git("status", "--porcelain", "--", config)),
        "trained_steps": int(trained.get("global_step", -1)),
        "history": history,
        "val": val_figures,
        "val_clips": len(val),
        "baselines": baselines,
        "baseline_over_model": ratios,
        "pose_learned": all(r.get(k, 0.0) >= POSE_LEARNED_RATIO for r in ratios.values() for k in ("ate", "rpe_rot")),
        "pose_learned_criterion": f"ATE and RPE-rot at least {POSE_LEARNED_RATIO:g}x better than both baselines",
        "baselines_note": "constant = the mean trajectory of the first "
                          f"{len(train)} training clips; random_centres = identity rotations, Gaussian centres "
                          "with each clip's spread (16 draws); both Sim(3)-aligned like the model",
        "reproduce": " ".join(command),
        "val_all": metrics,
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    logger.info("wrote %s (%.1f MB) and %s", weights, weights.stat().st_size / 1e6, card_path)
    return card


def ship_main(args: list[str]) -> int:
    """`page4d ship`: the command line of `ship`."""
    parser = argparse.ArgumentParser(
        prog="page4d ship",
        description="Pack a trained start to be committed: weights (.safetensors) and a card (.json) with its "
        "config, recipe commit, val figures measured by `page4d validate` on the file, and the uninformed pose "
        "baselines on the same clips.",
    )
    parser.add_argument("checkpoint", help="Lightning checkpoint of the run (e.g. checkpoints/<run>/last.ckpt)")
    parser.add_argument("--config", required=True, help="the experiment that trained it (its val split is used)")
    parser.add_argument("--out", required=True, help="output stem: writes STEM.safetensors and STEM.json")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="storage dtype of the weights")
    parser.add_argument("--train-clips", type=int, default=512,
                        help="training clips whose mean trajectory is the constant baseline")
    parser.add_argument("--history", default=None,
                        help="how the checkpoint was trained when it was not one run of --config (kept in the card)")
    ns, overrides = parser.parse_known_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        card = ship(ns.checkpoint, ns.config, ns.out, ns.dtype, ns.train_clips, overrides, ns.history)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        parser.exit(2, f"page4d ship: error: {err}\n")
    shown = {k: card[k] for k in ("val", "baselines", "baseline_over_model", "pose_learned")}
    sys.stdout.write(json.dumps(shown, indent=2) + "\n")
    return 0
