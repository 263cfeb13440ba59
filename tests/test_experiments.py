"""Every experiment under experiments/ runs end to end through `page4d fit` on fixture roots in the real layouts,
with CPU-size overrides (tiny preset, no weights, small images) on top of the real YAML. Each run is a fresh
`page4d` process, so a dataset name that `import datamodules` does not register fails here as it would for a
user."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from datamodules.mixture import PAPER_MIXTURE, PAPER_SAMPLE_COUNTS
from tests.data.custom.make_fixture import write_fixture as write_custom
from tests.data.kubric.make_fixture import write_fixture as write_kubric
from tests.data.pointodyssey.make_fixture import write_fixture as write_pointodyssey
from tests.page4d_process import ROOT, explain, run_page4d

EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
CPU_SMOKE = [
    "--model.preset", "tiny", "--model.weights", "null", "--model.finetune", "null",
    "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
    "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
    "--data.init_args.image_size", "56", "--data.init_args.num_workers", "0", "--data.init_args.pin_memory", "false",
    "--data.init_args.clip_shapes",
    json.dumps({"num_frames": [2, 4], "frames_per_batch": 8, "aspect_ratio": [0.33, 1]}),
    "--trainer.enable_progress_bar", "false",
]


def _fit(experiment: str, folder: Path, *extra: str) -> Path:
    """`page4d fit --config experiments/<experiment>.yaml` with CPU_SMOKE in `folder`; returns its output folder."""
    run = run_page4d("fit", "--config", str(ROOT / "experiments" / f"{experiment}.yaml"), *CPU_SMOKE, *extra,
                     cwd=folder)
    assert run.returncode == 0, explain(run)
    return folder / "checkpoints" / experiment


def test_every_experiment_has_a_run_test() -> None:
    tested = {"synthetic", "synthetic_scratch", "pretrain_static", "pointodyssey", "paper_mixture", "finetune_vggt"}
    assert set(EXPERIMENTS) == tested, "a new experiment needs its fixture run in this file"


def test_synthetic_experiment_trains(tmp_path: Path) -> None:
    out = _fit("synthetic", tmp_path, "--data.init_args.val.num_clips", "2")
    assert (out / "last.ckpt").is_file() and list(out.glob("best-*.ckpt"))


def test_synthetic_scratch_experiment_trains(tmp_path: Path) -> None:
    out = _fit("synthetic_scratch", tmp_path, "--data.init_args.val.num_clips", "2")
    assert (out / "last.ckpt").is_file() and list(out.glob("best-*.ckpt"))


def test_pretrain_static_experiment_trains_on_static_scenes(tmp_path: Path) -> None:
    out = _fit("pretrain_static", tmp_path, "--data.init_args.val.num_clips", "2")
    assert (out / "last.ckpt").is_file() and list(out.glob("best-*.ckpt"))
    experiment = yaml.safe_load((ROOT / "experiments" / "pretrain_static.yaml").read_text())
    splits = experiment["data"]["init_args"]
    for split in ("train", "val"):  # objects in the scene, none moving
        assert splits[split]["object_speed"] == 0.0 and splits[split]["num_objects"][0] >= 1


def test_pointodyssey_experiment_trains_on_a_fixture_root(tmp_path: Path) -> None:
    root = tmp_path / "point_odyssey"
    write_pointodyssey(root, num_frames=8)
    shutil.copytree(root / "train", root / "val")  # the fixture writes the train split only
    train = {"split": "train", "stride": [1, 2], "augment": True, "skip_bad_clips": True, "clips_per_sequence": 4}
    out = _fit("pointodyssey", tmp_path, "--data.init_args.root", str(root), "--data.init_args.train",
               json.dumps(train))
    assert (out / "last.ckpt").is_file() and list(out.glob("best-*.ckpt"))
    assert list((out / "tb").rglob("events.out.tfevents.*"))


def test_pointodyssey_experiment_without_root_names_it(tmp_path: Path) -> None:
    run = run_page4d("fit", "--config", str(ROOT / "experiments" / "pointodyssey.yaml"), *CPU_SMOKE, cwd=tmp_path)
    assert run.returncode != 0 and "`root` is required" in run.stderr, explain(run)


def test_paper_mixture_states_the_paper_shares(tmp_path: Path) -> None:
    """The components' weights (the official sample counts) give the paper's per-dataset shares."""
    run = run_page4d("fit", "--config", str(ROOT / "experiments" / "paper_mixture.yaml"), "--print_config",
                     cwd=tmp_path)
    assert run.returncode == 0, explain(run)
    experiment = yaml.safe_load(run.stdout)
    components = experiment["data"]["init_args"]["train"]["components"]
    counts: dict[str, float] = {}
    for label, component in components.items():
        dataset = component.get("dataset", label)
        counts[dataset] = counts.get(dataset, 0) + component["weight"]
    assert counts == PAPER_SAMPLE_COUNTS
    total = sum(counts.values())
    assert {name: round(count / total, 2) for name, count in counts.items()} == PAPER_MIXTURE
    assert experiment["model"]["finetune"] == "page4d" and experiment["model"]["weights"] == "checkpoints/model.pt"


def test_paper_mixture_trains_on_fixture_roots(tmp_path: Path) -> None:
    """The mixture experiment with two of its components pointed at fixture roots (train and val)."""
    write_pointodyssey(tmp_path / "po", num_frames=8)
    shutil.copytree(tmp_path / "po" / "train", tmp_path / "po" / "val")
    write_kubric(tmp_path / "kubric", num_frames=8, split=None)  # the flat layout: every split sees all scenes
    components = {"pointodyssey": {"weight": 0.6, "root": str(tmp_path / "po")},
                  "kubric": {"weight": 0.4, "root": str(tmp_path / "kubric")}}
    train = {"samples_per_epoch": 8, "split": "train", "augment": True, "components": components}
    val = {"samples_per_epoch": 2, "split": "val", "components": components}
    out = _fit("paper_mixture", tmp_path, "--data.init_args.train", json.dumps(train), "--data.init_args.val",
               json.dumps(val))
    assert (out / "last.ckpt").is_file()


def test_finetune_vggt_trains_on_a_custom_root(tmp_path: Path) -> None:
    """The own-videos experiment on a root in the documented custom layout (every split holds every sequence)."""
    write_custom(tmp_path / "videos")
    out = _fit("finetune_vggt", tmp_path, "--data.init_args.root", str(tmp_path / "videos"))
    assert (out / "last.ckpt").is_file()
