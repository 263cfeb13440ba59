"""Checkpoints: atomic saves survive a crash mid-write, `page4d fit --ckpt_path last` resumes the step,
optimiser, LR and mask schedules exactly, a run stopped by non-finite batches leaves a loadable `last.ckpt`,
and `page4d export-weights` writes the official PAGE4D key names that `load_weights` loads strictly."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import datamodules.synthetic.dataset as synthetic
import page4d_lightning.checkpointing as checkpointing
from page4d_lightning.checkpointing import AtomicCheckpointIO, atomic_torch_save, model_state_dict
from page4d_lightning.cli import main
from page4d_lightning.models import PAGE4D, PAGE4DConfig, load_weights
from page4d_lightning.module import Page4DModule
from tests.page4d_process import experiment_copy

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "reference" / "page4d_state_dict_keys.json.gz"
TINY = ["--trainer.accelerator", "cpu", "--data.init_args.image_size", "28", "--data.init_args.num_frames", "2"]
TINY += ["--data.init_args.batch_size", "1", "--data.init_args.num_workers", "0"]
FOUR_STEPS = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "2"]
OUT = Path("checkpoints") / "synthetic_scratch"  # the experiment's ModelCheckpoint dirpath, relative to the run folder


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_experiment(folder: Path) -> str:
    """experiments/synthetic_scratch.yaml with 2 training clips (an epoch = 2 steps), 2 val/test clips and a mask
    schedule that moves within 4 steps (hold 1, end 5)."""
    replacements = {"num_clips: 16": "num_clips: 2", "num_clips: 2000": "num_clips: 2", "hold: 100": "hold: 1",
                    "end: 160": "end: 5"}
    return str(experiment_copy("synthetic_scratch", folder, replacements))


def _fit(folder: Path, *extra: str) -> None:
    """`page4d fit` of the tiny experiment with `folder` as the working directory."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["fit", "--config", _tiny_experiment(folder), *TINY, *FOUR_STEPS, *extra]) == 0
    finally:
        os.chdir(cwd)


# ------------------------------------------------------------------------------------------ atomic IO
def _crashing_save(real_save):
    """A `torch.save` that writes the first half of the real bytes to its target, then dies."""

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, str(f) + ".full")
        data = Path(str(f) + ".full").read_bytes()
        os.remove(str(f) + ".full")
        with open(f, "wb") as out:
            out.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device (simulated)")

    return save


@pytest.mark.parametrize("crash", [OSError, KeyboardInterrupt])
def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, crash):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    old = {"global_step": 1, "state_dict": {"w": torch.arange(1000.0)}}
    io.save_checkpoint(old, path)

    # the fault injection really corrupts a file written in place
    naive = tmp_path / "naive.ckpt"
    with pytest.raises(OSError):
        _crashing_save(torch.save)(old, naive)
    with pytest.raises(Exception):  # noqa: B017 - torch raises RuntimeError or UnpicklingError
        torch.load(naive, weights_only=True)

    crashing = _crashing_save(torch.save)

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if crash is KeyboardInterrupt:
            with pytest.raises(OSError):
                crashing(obj, f)
            raise KeyboardInterrupt
        crashing(obj, f)

    monkeypatch.setattr(checkpointing.torch, "save", save)
    with pytest.raises(crash):
        io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.zeros(1000)}}, path)
    monkeypatch.undo()
    loaded = io.load_checkpoint(path, weights_only=True)
    assert loaded["global_step"] == 1
    assert torch.equal(loaded["state_dict"]["w"], old["state_dict"]["w"])
    assert sorted(os.listdir(path.parent)) == ["last.ckpt"], "no temporary file is left behind"


def test_atomic_save_replaces_and_rejects_storage_options(tmp_path):
    path = tmp_path / "a" / "b" / "x.pt"
    atomic_torch_save({"v": 1}, path)
    atomic_torch_save({"v": 2}, path)
    assert torch.load(path, weights_only=True) == {"v": 2}
    assert os.listdir(path.parent) == ["x.pt"]
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777, "same permissions as a plain open()"
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint({}, path, storage_options={"x": 1})


def test_cli_uses_atomic_io_and_still_accepts_other_plugins(capsys):
    args = ["fit", "--config", str(ROOT / "experiments" / "synthetic_scratch.yaml"), "--print_config"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--trainer.plugins+=lightning.pytorch.plugins.environments.LightningEnvironment"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "- class_path: page4d_lightning.checkpointing.AtomicCheckpointIO" in printed
    assert "- class_path: lightning.pytorch.plugins.environments.LightningEnvironment" in printed


# ---------------------------------------------------------------------------------- resume + export
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    """Three fits of the tiny experiment (validation every 2 steps): `straight` runs 4 steps; `first` stops
    after 2 (one epoch) and `resumed` continues it with `--ckpt_path last`. Each optimiser step records
    (global step, AdamW step count, LRs, mask strength) before stepping."""
    records: list[tuple] = []
    saves: list[str] = []

    def record(module: Page4DModule, optimizer: torch.optim.Optimizer) -> None:
        state = optimizer.state[optimizer.param_groups[0]["params"][0]]
        adam_step = int(state["step"]) if "step" in state else 0
        lrs = tuple(g["lr"] for g in optimizer.param_groups)
        records.append((module.global_step, adam_step, lrs, module.model.mask_strength))
        original(module, optimizer)

    def counting_save(io: AtomicCheckpointIO, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        saves.append(os.path.basename(path))
        original_save(io, checkpoint, path, storage_options)

    original, original_save = Page4DModule.on_before_optimizer_step, AtomicCheckpointIO.save_checkpoint
    folders = {name: tmp_path_factory.mktemp(name) for name in ("straight", "resumed")}
    out: dict[str, Any] = {"folders": folders}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Page4DModule, "on_before_optimizer_step", record)
        mp.setattr(AtomicCheckpointIO, "save_checkpoint", counting_save)
        _fit(folders["straight"])
        out["straight"], records[:] = list(records), []
        _fit(folders["resumed"], "--trainer.max_epochs", "1")
        out["first"], records[:] = list(records), []
        out["first_ckpt"] = torch.load(folders["resumed"] / OUT / "last.ckpt", weights_only=True)
        _fit(folders["resumed"], "--trainer.max_epochs", "2", "--ckpt_path", "last")
        out["resumed"] = list(records)
    out["saves"] = saves
    return out


def test_resume_from_last_continues_step_optimizer_lr_and_mask_schedule(runs):
    assert runs["first_ckpt"]["global_step"] == 2
    assert [r[0] for r in runs["straight"]] == [0, 1, 2, 3]
    assert [r[0] for r in runs["first"]] == [0, 1]
    # global step, AdamW step count (optimizer state), per-group LRs (scheduler) and the mask strength
    # (a function of the global step) of steps 2 and 3 equal those of the uninterrupted run
    # (the first run's LRs differ: it plans 2 steps, max_epochs 1, so its cosine schedule is shorter)
    assert runs["resumed"] == runs["straight"][2:]
    strengths = [r[3] for r in runs["straight"]]
    assert strengths[0] == strengths[1] == 1.0 and 1.0 > strengths[2] > strengths[3] > 0.0
    last = torch.load(runs["folders"]["resumed"] / OUT / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4


def test_checkpoints_are_written_through_atomic_io(runs):
    assert "last.ckpt" in runs["saves"] and any(s.startswith("best-step=") for s in runs["saves"])
    for folder in runs["folders"].values():
        leftovers = [p.name for p in (folder / OUT).iterdir() if p.suffix == ".tmp"]
        assert leftovers == []


def test_export_weights_round_trip(runs, tmp_path):
    ckpt = runs["folders"]["resumed"] / OUT / "last.ckpt"
    expected = {k[len("model.") :]: v for k, v in torch.load(ckpt, weights_only=True)["state_dict"].items()}
    for suffix in (".safetensors", ".pt"):
        out = tmp_path / f"page4d{suffix}"
        assert main(["export-weights", str(ckpt), str(out)]) == 0
        torch.manual_seed(123)
        model = PAGE4D(PAGE4DConfig.tiny())
        report = load_weights(model, out)  # strict: raises on any missing / unexpected / mis-shaped key
        assert report.initialised == [] and report.loaded == len(expected), suffix
        state = model.state_dict()
        assert list(state) == list(expected)
        for key, value in expected.items():
            assert torch.equal(state[key], value), (suffix, key)


def test_export_key_names_equal_the_official_full_preset():
    with gzip.open(REFERENCE, "rt") as f:
        reference = [(k, tuple(s)) for k, s in json.load(f)["keys"]]
    with torch.device("meta"):  # 1.2 B parameters without allocating them
        module = Page4DModule(preset="vggt_1b")
    exported = model_state_dict({"state_dict": module.state_dict()})
    assert [(k, tuple(v.shape)) for k, v in exported.items()] == reference


def test_export_weights_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export-weights", "--help"])
    assert exc.value.code == 0 and "export-weights" in capsys.readouterr().out
    missing = "nope.ckpt: no such file; expected a Lightning checkpoint"
    cases = {"missing": (tmp_path / "nope.ckpt", tmp_path / "w.safetensors", missing)}
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.ones(2)}, "global_step": 0}, foreign)
    cases["foreign"] = (foreign, tmp_path / "w.safetensors", "not a Page4DModule checkpoint")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    cases["garbage"] = (garbage, tmp_path / "w.safetensors", "garbage.ckpt: truncated or not a torch.save file")
    cases["suffix"] = (foreign, tmp_path / "w.bin", "expected a file name ending in .safetensors or .pt")
    for name, (ckpt, out, message) in cases.items():
        with pytest.raises(SystemExit) as exc:
            main(["export-weights", str(ckpt), str(out)])
        assert exc.value.code == 2, name
        err = capsys.readouterr().err
        assert message in err and "page4d export-weights: error" in err, (name, err)
        assert not out.exists(), name
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        model_state_dict({"model": {}}, "x.pt")


# --------------------------------------------------------------------------------------- early stop
def test_run_stopped_by_non_finite_batches_leaves_a_loadable_last_checkpoint(tmp_path, monkeypatch, caplog):
    """Training clips become NaN after the first two: steps 2 and 3 are skipped, `max_bad_steps=2` stops
    the run; the message says why and `last.ckpt` holds finite weights that load strictly."""
    real_getitem = synthetic.SyntheticDynamicDataset.__getitem__
    served = {"train": 0}

    def getitem(self: synthetic.SyntheticDynamicDataset, index: int) -> dict[str, Any]:
        sample = real_getitem(self, index)
        if self.split == "train":
            served["train"] += 1
            if served["train"] > 2:
                sample["images"] = torch.full_like(sample["images"], float("nan"))
        return sample

    monkeypatch.setattr(synthetic.SyntheticDynamicDataset, "__getitem__", getitem)
    with caplog.at_level(logging.ERROR, logger="page4d_lightning.module"):
        _fit(tmp_path, "--trainer.max_steps", "10", "--model.max_bad_steps", "2")
    assert "2 consecutive training steps were skipped" in caplog.text
    assert served["train"] == 4, "the run stopped after the second bad step"
    folder = tmp_path / OUT
    assert not [p for p in folder.iterdir() if p.suffix == ".tmp"]
    ckpt = torch.load(folder / "last.ckpt", weights_only=True)
    assert 2 <= ckpt["global_step"] <= 4
    module = Page4DModule(preset="tiny")
    module.load_state_dict(ckpt["state_dict"])  # strict
    assert all(torch.isfinite(v).all() for v in module.model.state_dict().values())
