"""The dataset experiments run end to end through `page4d fit` on fixture roots in the real layouts, with
CPU-size overrides (tiny preset, no weights, small images) on top of the real YAML."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from datamodules.mixture import PAPER_MIXTURE
from page4d_lightning.cli import main
from tests.data.kubric.make_fixture import write_fixture as write_kubric
from tests.data.pointodyssey.make_fixture import write_fixture as write_pointodyssey

ROOT = Path(__file__).resolve().parents[1]
CPU_SMOKE = [
    "--model.preset", "tiny", "--model.weights", "null", "--model.finetune", "null",
    "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
    "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
    "--data.init_args.image_size", "56", "--data.init_args.num_workers", "0", "--data.init_args.pin_memory", "false",
    "--data.init_args.clip_shapes",
    json.dumps({"num_frames": [2, 4], "frames_per_batch": 8, "aspect_ratio": [0.33, 1]}),
]


def test_pointodyssey_experiment_trains_on_a_fixture_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "point_odyssey"
    write_pointodyssey(root, num_frames=8)
    shutil.copytree(root / "train", root / "val")  # the fixture writes the train split only
    monkeypatch.chdir(tmp_path)  # the experiment's relative checkpoints/ folder lands in tmp_path
    train = {"split": "train", "stride": [1, 2], "augment": True, "skip_bad_clips": True, "clips_per_sequence": 4}
    main([
        "fit", "--config", str(ROOT / "experiments" / "pointodyssey.yaml"), "--data.init_args.root", str(root),
        *CPU_SMOKE, "--data.init_args.train", json.dumps(train),
    ])
    out = tmp_path / "checkpoints" / "pointodyssey"
    assert (out / "last.ckpt").is_file() and list(out.glob("best-*.ckpt"))
    assert list((out / "tb").rglob("events.out.tfevents.*"))


def test_pointodyssey_experiment_without_root_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="`root` is required"):
        main(["fit", "--config", str(ROOT / "experiments" / "pointodyssey.yaml"), *CPU_SMOKE])


def test_paper_mixture_states_the_paper_shares() -> None:
    experiment = yaml.safe_load((ROOT / "experiments" / "paper_mixture.yaml").read_text())
    components = experiment["data"]["init_args"]["train"]["components"]
    assert {name: c["weight"] for name, c in components.items()} == PAPER_MIXTURE
    assert experiment["model"]["finetune"] == "page4d" and experiment["model"]["weights"] == "checkpoints/model.pt"


def test_paper_mixture_trains_on_fixture_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mixture experiment with two of its components pointed at fixture roots (train and val)."""
    write_pointodyssey(tmp_path / "po", num_frames=8)
    shutil.copytree(tmp_path / "po" / "train", tmp_path / "po" / "val")
    write_kubric(tmp_path / "kubric", num_frames=8, split=None)  # the flat layout: every split sees all scenes
    monkeypatch.chdir(tmp_path)
    components = {"pointodyssey": {"weight": 0.6, "root": str(tmp_path / "po")},
                  "kubric": {"weight": 0.4, "root": str(tmp_path / "kubric")}}
    train = {"samples_per_epoch": 8, "split": "train", "augment": True, "components": components}
    val = {"samples_per_epoch": 2, "split": "val", "components": components}
    main([
        "fit", "--config", str(ROOT / "experiments" / "paper_mixture.yaml"), *CPU_SMOKE,
        "--data.init_args.train", json.dumps(train), "--data.init_args.val", json.dumps(val),
    ])
    assert (tmp_path / "checkpoints" / "paper_mixture" / "last.ckpt").is_file()
