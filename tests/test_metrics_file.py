"""`page4d validate` and `page4d test` write their metrics to json and csv beside the run, and a clip that a
metric cannot score (a static camera for ATE / RPE) is counted and named there, not silently left out."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from datamodules import SyntheticDynamicDataset, collate_clips
from page4d_lightning.callbacks import MetricsFile
from page4d_lightning.module import Page4DModule
from tests.page4d_process import ROOT, explain, run_page4d

SMALL = ["--config", str(ROOT / "experiments" / "synthetic_scratch.yaml"), "--data.init_args.image_size", "28",
         "--data.init_args.num_frames", "2", "--data.init_args.num_workers", "0", "--data.init_args.val.num_clips", "2",
         "--data.init_args.test.num_clips", "3", "--trainer.enable_progress_bar", "false"]
OUT = Path("checkpoints") / "synthetic_scratch"


def test_validate_and_test_write_their_metrics(tmp_path: Path) -> None:
    fit = run_page4d("fit", *SMALL, "--trainer.max_steps=1", cwd=tmp_path)
    assert fit.returncode == 0, explain(fit)
    for stage in ("validate", "test"):
        run = run_page4d(stage, *SMALL, "--ckpt_path", str(OUT / "last.ckpt"), cwd=tmp_path)
        assert run.returncode == 0, explain(run)
        key = "val" if stage == "validate" else "test"
        payload = json.loads((tmp_path / OUT / f"metrics_{stage}.json").read_text())
        assert payload["checkpoint"].endswith("last.ckpt") and payload["skipped"] == {"count": 0, "clips": []}
        for name in ("ate", "rpe_rot", "abs_rel", "delta_1_25"):
            assert math.isfinite(payload["metrics"][f"{key}/{name}"])
        rows = dict(csv.reader((tmp_path / OUT / f"metrics_{stage}.csv").open()))
        assert float(rows[f"{key}/abs_rel"]) == pytest.approx(payload["metrics"][f"{key}/abs_rel"])
        assert rows[f"{key}/skipped_clips"] == "0"


def test_a_static_camera_clip_is_named_in_the_file(tmp_path: Path) -> None:
    module = Page4DModule(preset="tiny")
    clips = [SyntheticDynamicDataset(num_frames=3, image_size=28, num_clips=2, seed=0, split="val")[i] for i in (0, 1)]
    clips[1]["extrinsics"] = clips[1]["extrinsics"][:1].expand(3, 3, 4).clone()  # a camera on a tripod
    batch = collate_clips(clips)
    with torch.no_grad():
        predictions = module.model(batch["images"])
    module.on_validation_epoch_start()
    with pytest.warns(RuntimeWarning, match="static camera"):
        module._update_metrics(predictions, batch, "val")
    assert module.skipped_clips["val"] == [{"clip": clips[1]["seq_name"],
                                            "why": "pose metrics: static camera centres, the Sim(3) alignment is "
                                                   "undefined"}]

    class FakeTrainer:
        is_global_zero, ckpt_path, callback_metrics = True, "x.ckpt", {"val/ate": torch.tensor(0.5)}

    MetricsFile(str(tmp_path))._write(FakeTrainer(), module, "validate", "val")
    payload = json.loads((tmp_path / "metrics_validate.json").read_text())
    assert payload["skipped"]["count"] == 1 and payload["skipped"]["clips"][0]["clip"] == clips[1]["seq_name"]
    assert payload["metrics"] == {"val/ate": 0.5}
