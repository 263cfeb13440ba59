"""The `page4d` commands as a new user types them, each in a fresh process: the help lists every command, a run
without a config leaves the current folder clean, evaluating a checkpoint needs no initial weights file, a
truncated checkpoint is named, and true bf16 keeps the metrics defined."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tests.page4d_process import ROOT, explain, run_page4d

SMALL = ["--data.init_args.image_size", "28", "--data.init_args.num_frames", "4", "--data.init_args.num_workers", "0",
         "--data.init_args.val.num_clips", "2", "--trainer.enable_progress_bar", "false"]
SYNTHETIC = ["--config", str(ROOT / "experiments" / "synthetic_scratch.yaml"), *SMALL]
LAST = Path("checkpoints") / "synthetic_scratch" / "last.ckpt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a 2-step synthetic run's `checkpoints/synthetic/last.ckpt`."""
    folder = tmp_path_factory.mktemp("trained")
    run = run_page4d("fit", *SYNTHETIC, "--trainer.max_steps=2", cwd=folder)
    assert run.returncode == 0, explain(run)
    return folder


def _metrics(folder: Path, *args: str) -> dict[str, float]:
    dump = folder / "metrics.json"
    callback = {"class_path": "tests.step_marker.MetricsDump", "init_args": {"path": str(dump)}}
    run = run_page4d(*args, f"--trainer.callbacks+={json.dumps(callback)}", cwd=folder)
    assert run.returncode == 0, explain(run)
    return json.loads(dump.read_text())


def test_help_lists_every_command_and_tool(tmp_path: Path) -> None:
    run = run_page4d("--help", cwd=tmp_path)
    assert run.returncode == 0, explain(run)
    listed = [line.split()[0] for line in run.stdout.splitlines() if line.startswith("  ")]
    tools = ["data", "pack", "export-weights", "eval", "analyze-layers", "ablation", "ship"]
    assert listed == ["fit", "validate", "test", "predict", *tools]
    bare = run_page4d(cwd=tmp_path)
    assert bare.returncode == 2 and bare.stdout == run.stdout
    for tool in tools:
        tool_help = run_page4d(tool, "--help", cwd=tmp_path)
        assert tool_help.returncode == 0 and f"page4d {tool}" in tool_help.stdout, explain(tool_help)
    assert not list(tmp_path.iterdir())


def test_a_run_without_config_writes_under_checkpoints_default(tmp_path: Path) -> None:
    args = ["--data.class_path", "datamodules.SyntheticDataModule", "--data.init_args.image_size", "28",
            "--data.init_args.num_frames", "2", "--data.init_args.train", '{"num_clips": 2}',
            "--data.init_args.val", '{"num_clips": 2, "split": "val"}',
            "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false"]
    run = run_page4d("fit", *args, cwd=tmp_path)
    assert run.returncode == 0, explain(run)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoints"]
    assert (tmp_path / "checkpoints" / "default" / "last.ckpt").is_file()
    failed = tmp_path / "failed"
    failed.mkdir()
    run = run_page4d("fit", "--data.class_path", "datamodules.Page4DDataModule", "--data.init_args.dataset",
                     "pointodyssey", "--data.init_args.train", "{}", cwd=failed)
    assert run.returncode != 0 and "`root` is required" in run.stderr, explain(run)
    assert not (failed / "config.yaml").exists() and not (failed / "lightning_logs").exists()


def test_evaluating_a_checkpoint_needs_no_initial_weights_file(trained: Path, tmp_path: Path) -> None:
    """`make validate DATASET=pointodyssey CKPT=...` used to fail on the missing `checkpoints/model.pt` it was
    initialised from: here the run was initialised from a file that is deleted before evaluating."""
    export = run_page4d("export-weights", str(trained / LAST), str(tmp_path / "init.safetensors"), cwd=tmp_path)
    assert export.returncode == 0, explain(export)
    run = run_page4d("fit", *SYNTHETIC, "--trainer.max_steps=1", "--model.weights", "init.safetensors", cwd=tmp_path)
    assert run.returncode == 0, explain(run)
    (tmp_path / "init.safetensors").unlink()
    metrics = _metrics(tmp_path, "validate", *SYNTHETIC, "--ckpt_path", str(LAST))
    assert math.isfinite(metrics["val/abs_rel"])
    metrics = _metrics(tmp_path, "test", *SYNTHETIC, "--ckpt_path", str(LAST), "--model.weights",
                       "checkpoints/model.pt", "--data.init_args.test.num_clips", "2")
    assert math.isfinite(metrics["test/abs_rel"])


def test_a_truncated_checkpoint_is_named(trained: Path, tmp_path: Path) -> None:
    data = (trained / LAST).read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    run = run_page4d("validate", *SYNTHETIC, "--ckpt_path", str(cut), cwd=tmp_path)
    assert run.returncode == 2, explain(run)
    assert f"{cut}: truncated or not a torch.save file" in run.stderr
    run = run_page4d("fit", *SYNTHETIC, "--trainer.max_steps=1", "--model.weights", str(cut), cwd=tmp_path)
    assert run.returncode != 0 and f"{cut}: truncated or not a torch.save file" in run.stderr, explain(run)
    assert not (tmp_path / LAST).exists()


def test_true_bf16_keeps_the_metrics_defined(trained: Path) -> None:
    """Ground truth stays float32 under `bf16-true`: the pose metrics are defined and near the float32 ones."""
    evaluate = ["validate", *SYNTHETIC, "--ckpt_path", str(LAST)]
    full = _metrics(trained, *evaluate)
    single_plugin = ["--trainer.plugins", "page4d_lightning.checkpointing.AtomicCheckpointIO"]  # not a list
    half = _metrics(trained, *evaluate, "--trainer.precision", "bf16-true", *single_plugin)
    for key in ("val/ate", "val/rpe_trans", "val/rpe_rot", "val/abs_rel"):
        assert math.isfinite(half[key]), key
        assert half[key] == pytest.approx(full[key], rel=0.1), key


def test_the_config_saved_beside_a_run_parses_again(trained: Path) -> None:
    """The experiment's `base:` configs are merged into the saved config.yaml, which names none of them again."""
    saved = sorted((trained / "checkpoints" / "synthetic_scratch").rglob("config.yaml"))
    assert saved, "fit writes its resolved config beside the TensorBoard events"
    run = run_page4d("fit", "--config", str(saved[0]), "--print_config", cwd=trained)
    assert run.returncode == 0, explain(run)
    config = yaml.safe_load(run.stdout)
    assert config["base"] is None and config["trainer"]["default_root_dir"] == "checkpoints/synthetic_scratch"
    assert [c["class_path"].rsplit(".", 1)[1] for c in config["trainer"]["callbacks"]] == [
        "ModelCheckpoint", "LastCheckpoint", "LearningRateMonitor", "VisualLogger"]
