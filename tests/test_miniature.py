"""The CPU miniature as a user runs it: the shipped static start (weights/static_start.*) loads and its card's
figures come back from `page4d validate`; `page4d ship` packs a run the same way; `make train`'s experiment
fine-tunes the start and logs pose, depth, tracking and mask quality. Every run is a `page4d` process."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from page4d_lightning.models import PAGE4D, PAGE4DConfig, load_weights
from tests.page4d_process import ROOT, explain, run_page4d

START = ROOT / "weights" / "static_start.safetensors"
CARD = START.with_suffix(".json")
PRETRAIN = ROOT / "experiments" / "pretrain_static.yaml"
SMALL_VAL = ["--data.init_args.val.num_clips", "2", "--data.init_args.num_workers", "0",
             "--trainer.enable_progress_bar", "false"]


def _card() -> dict:
    return json.loads(CARD.read_text())


def _config_from_card(card: dict) -> PAGE4DConfig:
    tuples = {f.name for f in fields(PAGE4DConfig) if isinstance(getattr(PAGE4DConfig(), f.name), tuple)}
    return PAGE4DConfig(**{k: tuple(v) if k in tuples else v for k, v in card["model_config"].items()})


def test_shipped_start_is_small_and_loads_strictly() -> None:
    card = _card()
    assert START.stat().st_size == card["bytes"] <= 25 * 2**20
    import hashlib

    assert hashlib.sha256(START.read_bytes()).hexdigest() == card["sha256"]
    config = _config_from_card(card)
    assert config == PAGE4DConfig.mini()  # the card describes the preset that experiments name
    model = PAGE4D(config)
    report = load_weights(model, START)
    assert report.loaded == len(model.state_dict())
    stored = load_file(START)
    torch.testing.assert_close(model.state_dict()["aggregator.camera_token"], stored["aggregator.camera_token"].float())
    assert card["recipe"] == "experiments/pretrain_static.yaml" and len(card["recipe_commit"]) == 40


def test_shipped_start_card_figures_come_back_from_page4d_validate(tmp_path: Path) -> None:
    card = _card()
    run = run_page4d("validate", "--config", str(PRETRAIN), "--model.weights", str(START),
                     "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
                     "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    assert run.returncode == 0, explain(run)
    metrics = json.loads((tmp_path / "metrics_validate.json").read_text())["metrics"]
    for key, value in card["val"].items():
        assert metrics[f"val/{key}"] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_shipped_start_card_states_its_pose_figures_against_the_baselines() -> None:
    """The card's ratios are its own numbers divided, and its `pose_learned` verdict follows from them: ATE and
    RPE-rot at least 3x better than both uninformed baselines (the static start that ships did not get there on a
    CPU: docs/pose_search.md)."""
    card = _card()
    learned = True
    for name, figures in card["baselines"].items():
        for key in ("ate", "rpe_rot"):
            ratio = figures[key] / card["val"][key]
            assert card["baseline_over_model"][name][key] == pytest.approx(ratio)
            learned &= ratio >= 3.0
    assert card["pose_learned"] is learned


def test_ship_packs_a_run_with_a_card_that_validate_reproduces(tmp_path: Path) -> None:
    tiny = ["--data.init_args.image_size", "28", "--data.init_args.batch_size", "2", *SMALL_VAL]
    fit = run_page4d("fit", "--config", str(PRETRAIN), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                     "--trainer.default_root_dir", str(tmp_path / "run"), *tiny, cwd=tmp_path)
    assert fit.returncode == 0, explain(fit)
    ship = run_page4d("ship", str(tmp_path / "run" / "last.ckpt"), "--config", str(PRETRAIN), "--out",
                      str(tmp_path / "out" / "start"), "--train-clips", "8", *tiny, cwd=tmp_path)
    assert ship.returncode == 0, explain(ship)
    card = json.loads((tmp_path / "out" / "start.json").read_text())
    weights = tmp_path / "out" / "start.safetensors"
    assert card["trained_steps"] == 2 and card["bytes"] == weights.stat().st_size and card["val_clips"] == 2
    assert all(v.dtype == torch.float16 for v in load_file(weights).values() if v.is_floating_point())
    assert set(card["baselines"]) == {"constant", "random_centres"}
    assert card["pose_learned"] is False  # 2 steps
    run = run_page4d("validate", "--config", str(PRETRAIN), "--model.weights", str(weights), *tiny,
                     "--trainer.default_root_dir", str(tmp_path / "check"), cwd=tmp_path)
    assert run.returncode == 0, explain(run)
    metrics = json.loads((tmp_path / "check" / "metrics_validate.json").read_text())["metrics"]
    for key, value in card["val"].items():
        assert metrics[f"val/{key}"] == pytest.approx(value, rel=1e-5), key
    bad = run_page4d("ship", str(tmp_path / "missing.ckpt"), "--config", str(PRETRAIN), "--out",
                     str(tmp_path / "x"), cwd=tmp_path)
    assert bad.returncode == 2 and "missing.ckpt" in bad.stderr


def test_make_train_experiment_finetunes_the_start_and_logs_tracking_and_mask_quality(tmp_path: Path) -> None:
    run = run_page4d("fit", "--config", str(ROOT / "experiments" / "synthetic.yaml"), "--model.weights", str(START),
                     "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
                     "--trainer.default_root_dir", str(tmp_path / "run"), *SMALL_VAL, cwd=tmp_path)
    assert run.returncode == 0, explain(run)
    checkpoint = torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3
    state = checkpoint["state_dict"]
    start = load_file(START)
    # frozen: the encoder, the outer blocks and the heads keep the start's weights; the middle blocks move
    for name in ("aggregator.frame_blocks.0.attn.qkv.weight", "aggregator.global_blocks.7.mlp.fc1.weight",
                 "camera_head.trunk.0.attn.qkv.weight"):
        torch.testing.assert_close(state[f"model.{name}"], start[name].float())
    assert not torch.equal(state["model.aggregator.global_blocks.4.attn.qkv.weight"],
                           start["aggregator.global_blocks.4.attn.qkv.weight"].float())
    assert any(k.startswith("model.track_head.") for k in state)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "run" / "tb").rglob("events.out.tfevents.*"))))
    events.Reload()
    logged = set(events.Tags()["scalars"])
    for key in ("ate", "rpe_rot", "abs_rel", "delta_avg", "occlusion_accuracy", "average_jaccard", "mask_iou",
                "mask_precision", "mask_recall", "ate_from_points"):
        assert f"val/{key}" in logged, key


def test_ablation_runs_every_variant_and_writes_the_table_and_plots(tmp_path: Path) -> None:
    """`make ablation` in 2 steps: the 4 variants from the shipped start, one seed, a 2-clip validation."""
    out = tmp_path / "ablation"
    run = run_page4d("ablation", "--config", str(ROOT / "experiments" / "synthetic.yaml"), "--out", str(out),
                     "--steps", "2", "--seeds", "0", "--val-clips", "2", "--attention-clips", "1", "--",
                     "--model.weights", str(START), "--data.init_args.num_workers", "0", cwd=tmp_path, timeout=900)
    assert run.returncode == 0, explain(run)
    rows = {row["variant"]: row for row in csv.DictReader(open(out / "table.csv"))}
    assert list(rows) == ["all_blocks", "middle_no_mask", "middle_mask", "middle_mask_gt"]
    params = {v: int(r["trainable_params"]) for v, r in rows.items()}
    # all blocks train more than the middle ones; the mask head is the only difference between b and c
    assert params["all_blocks"] > params["middle_mask"] > params["middle_no_mask"]
    assert params["middle_mask"] == params["middle_mask_gt"]
    for row in rows.values():
        for key in ("ate", "rpe_trans", "rpe_rot", "abs_rel_static", "abs_rel_dynamic", "delta_1_25_static",
                    "delta_1_25_dynamic", "mask_iou"):
            assert math.isfinite(float(row[key])), (row["variant"], key)
    table = (out / "table.md").read_text()
    rows_md = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows_md) == 5 and "mask IoU" in rows_md[0]  # the header and one row per variant
    for picture in ("curves.png", "attention.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    attention = json.loads((out / "ablation.json").read_text())["attention_dynamic_share"]
    assert set(attention) == {"middle_mask", "middle_mask_gt"}
    # the no-mask run never trained its mask head: its weights are the start's (untrained) ones
    state = torch.load(out / "runs" / "middle_no_mask_seed0" / "last.ckpt", weights_only=False)["state_dict"]
    start = load_file(START)
    key = "aggregator.spatial_mask_head.head0.0.weight"
    torch.testing.assert_close(state[f"model.{key}"], start[key].float())
