"""Every `page4d fit` ends with a loadable `last.ckpt`: at max_steps before the first validation, with validation
disabled, at the end of an epoch, on Ctrl-C (SIGINT) and on SIGTERM from a cluster; a temporary file left by a
run killed while saving is removed. Each run is a `page4d` process started as a user starts it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from page4d_lightning.models import PAGE4D, PAGE4DConfig, load_weights
from tests.page4d_process import PAGE4D as PAGE4D_SCRIPT
from tests.page4d_process import ROOT, explain, page4d_env, run_page4d, start_page4d

SMALL = ["--config", str(ROOT / "experiments" / "synthetic_scratch.yaml"), "--data.init_args.image_size", "28",
         "--data.init_args.num_frames", "2", "--data.init_args.num_workers", "0", "--data.init_args.val.num_clips", "2",
         "--trainer.enable_progress_bar", "false"]
OUT = Path("checkpoints") / "synthetic_scratch"  # the experiment's folder, relative to the run's working folder


def _assert_loadable_last(folder: Path, step: int | None = None) -> int:
    """`last.ckpt` in `folder` loads (weights_only) with the model weights; returns its global step."""
    path = folder / OUT / "last.ckpt"
    assert path.is_file(), sorted(p.name for p in (folder / OUT).iterdir()) if (folder / OUT).is_dir() else folder
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    load_weights(PAGE4D(PAGE4DConfig.tiny()), path)  # strict: every weight is there
    if step is not None:
        assert checkpoint["global_step"] == step
    assert not list((folder / OUT).glob(".*.tmp"))
    return int(checkpoint["global_step"])


def test_max_steps_before_the_first_validation(tmp_path: Path) -> None:
    """3 steps with validation every 40: the run used to end without any checkpoint."""
    run = run_page4d("fit", *SMALL, "--trainer.max_steps=3", cwd=tmp_path)
    assert run.returncode == 0, explain(run)
    _assert_loadable_last(tmp_path, step=3)


def test_validation_disabled_and_end_of_epoch(tmp_path: Path) -> None:
    """`limit_val_batches=0` and an epoch of 2 steps (4 clips, batch 2) run to `max_epochs`."""
    run = run_page4d("fit", *SMALL, "--trainer.limit_val_batches=0", "--trainer.max_steps=-1",
                     "--trainer.max_epochs=2", "--data.init_args.train.num_clips=4", cwd=tmp_path)
    assert run.returncode == 0, explain(run)
    _assert_loadable_last(tmp_path, step=4)


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / OUT
    folder.mkdir(parents=True)
    stale = [folder / ".last.ckpt.0123456789ab.tmp", folder / ".best-step=40.ckpt.ba9876543210.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
        os.utime(path, (time.time() - 3600, time.time() - 3600))  # left an hour ago by a killed run
    live = folder / ".last.ckpt.0000live0000.tmp"  # another process is writing this one right now
    live.write_bytes(b"being written")
    keep = folder / "notes.txt"
    keep.write_text("not ours")
    run = run_page4d("fit", *SMALL, "--trainer.max_steps=1", cwd=tmp_path)
    assert run.returncode == 0, explain(run)
    assert not any(path.exists() for path in stale) and keep.exists() and live.exists()
    live.unlink()
    _assert_loadable_last(tmp_path, step=1)


def _wait_for_step(process: subprocess.Popen, marker: Path, step: int, timeout: float = 120) -> None:
    """Wait until the run's `StepMarker` file says it finished `step` (failing if the process ends first)."""
    deadline = time.monotonic() + timeout
    while not (marker.exists() and marker.read_text() and int(marker.read_text()) >= step):
        assert process.poll() is None, process.communicate()[0][-4000:]
        assert time.monotonic() < deadline, f"the run did not reach step {step} in {timeout} s"
        time.sleep(0.1)


@pytest.mark.parametrize(("sig", "exit_code"), [(signal.SIGINT, 1), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_a_stopped_run_saves_its_last_step(tmp_path: Path, sig: signal.Signals, exit_code: int) -> None:
    """Ctrl-C and a cluster's SIGTERM mid-run: the process exits with a failure code (so a job script sees it was
    stopped) and `last.ckpt` holds the state of a step the run reached."""
    marker = tmp_path / "step.txt"
    slow = {"class_path": "tests.step_marker.StepMarker", "init_args": {"path": str(marker), "seconds_per_step": 0.3}}
    process = start_page4d("fit", *SMALL, "--trainer.max_steps=1000", f"--trainer.callbacks+={json.dumps(slow)}",
                           cwd=tmp_path)
    try:
        _wait_for_step(process, marker, 2)
        process.send_signal(sig)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == exit_code, output[-4000:]
    step = _assert_loadable_last(tmp_path)
    assert 2 <= step < 1000 and step >= int(marker.read_text()) - 1, (step, marker.read_text())


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    """SIGTERM mid-epoch, then `--ckpt_path last`: the run continues with the next batch of the interrupted epoch
    (not the epoch's first batch again) and crosses into the next epoch, so its final weights are exactly those
    of the same run never stopped (5 batches per epoch, 8 steps)."""
    run = ["fit", *SMALL, "--trainer.max_steps=8", "--trainer.limit_val_batches=0",
           "--data.init_args.train.num_clips=10"]
    reference = run_page4d(*run, "--trainer.default_root_dir=reference", cwd=tmp_path)
    assert reference.returncode == 0, explain(reference)
    marker = tmp_path / "step.txt"
    slow = {"class_path": "tests.step_marker.StepMarker", "init_args": {"path": str(marker), "seconds_per_step": 0.3}}
    process = start_page4d(*run, f"--trainer.callbacks+={json.dumps(slow)}", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and marker.read_text() and int(marker.read_text()) >= 2):
            assert process.poll() is None and time.monotonic() < deadline, "the run did not reach step 2"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    stopped_at = _assert_loadable_last(tmp_path)
    assert 2 <= stopped_at < 5, (stopped_at, output[-2000:])  # inside the first epoch
    resumed = run_page4d(*run, "--ckpt_path", "last", cwd=tmp_path)
    assert resumed.returncode == 0, explain(resumed)
    final = torch.load(tmp_path / OUT / "last.ckpt", map_location="cpu", weights_only=True)
    expected = torch.load(tmp_path / "reference" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == expected["global_step"] == 8
    worst = max(float((v - expected["state_dict"][k]).abs().max()) for k, v in final["state_dict"].items())
    assert worst == 0.0


def test_sigterm_to_the_process_group_with_dataloader_workers_saves_the_step_reached(tmp_path: Path) -> None:
    """`scancel` (or `kill -- -PGID`) signals every process of the job: the DataLoader workers die too, and PyTorch
    raises in the main process on each death. The save of the step reached must still complete (it used to be
    aborted by the second worker's death, leaving the previous validation's last.ckpt)."""
    marker = tmp_path / "step.txt"
    slow = {"class_path": "tests.step_marker.StepMarker", "init_args": {"path": str(marker), "seconds_per_step": 0.3}}
    # one worker per loader, kept alive between epochs / validations: two children die with the signal
    args = [*SMALL, "--data.init_args.num_workers", "1", "--trainer.max_steps=1000", "--trainer.val_check_interval=2",
            f"--trainer.callbacks+={json.dumps(slow)}"]
    process = subprocess.Popen([str(PAGE4D_SCRIPT), "fit", *args], cwd=tmp_path, env=page4d_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        _wait_for_step(process, marker, 3)
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode != 0, output[-4000:]
    step = _assert_loadable_last(tmp_path)
    assert step >= 3, output[-4000:]
