"""A cluster job on one machine: the real `experiments/slurm/multi_node.sbatch`, run as SLURM runs it, for 2 nodes x
1 task on CPU (gloo), with stand-ins for `srun` and `scontrol` (tests/slurm_stub/) and the SLURM variables of a
real allocation. Checks that the two tasks form one DDP process group from the SLURM variables alone, that
SIGUSR1 (`--signal=SIGUSR1@120`) saves `last.ckpt` atomically, requests the requeue and ends the run cleanly,
that the requeued job (SLURM_RESTART_COUNT=1) resumes at the same step and ends with the weights of an
uninterrupted run, and that a task count that does not match the trainer fails before training starts."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.page4d_process import PAGE4D, ROOT, experiment_copy, page4d_env

SCRIPT = ROOT / "experiments" / "slurm" / "multi_node.sbatch"
STUBS = ROOT / "tests" / "slurm_stub"
MAX_STEPS = 8  # 5 batches per rank and epoch (10 clips, 2 ranks): the resumed run crosses an epoch boundary
OVERRIDES = ["--data.init_args.image_size", "28", "--data.init_args.num_frames", "2", "--data.init_args.batch_size",
             "1", "--data.init_args.num_workers", "0", "--data.init_args.train.num_clips", "10",
             "--trainer.limit_val_batches", "0", "--trainer.max_steps", str(MAX_STEPS),
             "--trainer.enable_progress_bar", "false"]
OUT = Path("checkpoints") / "synthetic_scratch"  # the experiment's default_root_dir, under the submit folder


def _job_id() -> str:
    """A SLURM job id whose port (Lightning: 15000 + its last 4 digits) is free on this machine."""
    for _ in range(100):
        port = random.randint(15000, 24999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return f"7{port - 15000:04d}"
    raise RuntimeError("no free port in 15000-24999")


def submit(folder: Path, *extra: str, restart_count: int = 0, marker: Path | None = None,
           background: bool = False, nodes: int = 2, tasks_per_node: int = 1,
           ntasks: int | None = None) -> subprocess.Popen | subprocess.CompletedProcess:
    """`bash multi_node.sbatch` in `folder` (the submit folder) with the environment of a SLURM allocation."""
    folder.mkdir(parents=True, exist_ok=True)
    experiment = experiment_copy("synthetic_scratch", folder)
    args = list(OVERRIDES)
    if marker is not None:
        step_marker = {"class_path": "tests.step_marker.StepMarker",
                       "init_args": {"path": str(marker), "seconds_per_step": 0.2}}
        args.append(f"--trainer.callbacks+={json.dumps(step_marker)}")
    job_id = _job_id()
    (folder / "job_id").write_text(job_id)
    env = {k: v for k, v in page4d_env().items() if not k.startswith("SLURM_")}
    env.update({
        "PATH": f"{STUBS}{os.pathsep}{Path(PAGE4D).parent}{os.pathsep}{env['PATH']}",
        "VENV": str(Path(PAGE4D).parents[1]),
        "EXPERIMENT": str(experiment),
        "ACCELERATOR": "cpu",
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": "page4d-multi",
        "SLURM_SUBMIT_DIR": str(folder),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NODELIST": "localhost",  # both simulated nodes are this machine
        "SLURM_NODELIST": "localhost",
        "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
        "SLURM_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})",
        "SLURM_NTASKS": str(ntasks if ntasks is not None else nodes * tasks_per_node),
        "SLURM_CPUS_PER_TASK": "1",
        "SLURM_RESTART_COUNT": str(restart_count),
        "SRUN_STUB_PIDS": str(folder / "pids"),
        "SCONTROL_STUB_LOG": str(folder / "scontrol.log"),
        "PYTHONWARNINGS": "ignore",
    })
    command = ["bash", str(SCRIPT), *args, *extra]
    if background:
        return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, stdin=subprocess.DEVNULL)
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def _checkpoint(folder: Path) -> dict:
    return torch.load(folder / OUT / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The reference: the same job, never pre-empted."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    run = submit(folder)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return {"checkpoint": _checkpoint(folder), "output": run.stdout + run.stderr}


def test_two_nodes_form_one_process_group(uninterrupted):
    output = uninterrupted["output"]
    assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in output
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert "distributed_backend=gloo" in output
    assert uninterrupted["checkpoint"]["global_step"] == MAX_STEPS


def test_preemption_saves_requeues_and_the_requeued_job_resumes(tmp_path, uninterrupted):
    folder, marker = tmp_path / "job", tmp_path / "step.txt"
    job = submit(folder, marker=marker, background=True)
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and marker.read_text().strip() and int(marker.read_text()) >= 2):
            assert job.poll() is None, job.communicate()[0][-6000:]
            assert time.monotonic() < deadline, "the job did not reach step 2 in 120 s"
            time.sleep(0.05)
        for pid in (folder / "pids").read_text().split():  # SLURM signals every task of the job
            os.kill(int(pid), signal.SIGUSR1)
        output, _ = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 0, output[-6000:]  # a clean exit: SLURM requeues the job
    requeues = (folder / "scontrol.log").read_text().splitlines()
    assert requeues == [f"requeue {(folder / 'job_id').read_text()}"]
    saved = _checkpoint(folder)
    preempted_at = saved["global_step"]
    assert 2 <= preempted_at < MAX_STEPS, preempted_at
    assert sorted(p.name for p in (folder / OUT).iterdir() if p.is_file()) == ["last.ckpt"]  # no temporary, no hpc
    assert "pre-empted at step" in output

    requeued = submit(folder, restart_count=1)
    assert requeued.returncode == 0, requeued.stdout[-3000:] + requeued.stderr[-6000:]
    log = requeued.stdout + requeued.stderr
    assert "Restoring states from the checkpoint path" in log and "last.ckpt" in log
    final = _checkpoint(folder)
    assert final["global_step"] == MAX_STEPS
    reference = uninterrupted["checkpoint"]["state_dict"]
    differences = {k: float((v.float() - reference[k].float()).abs().max()) for k, v in final["state_dict"].items()}
    assert max(differences.values()) == 0.0, sorted(differences.items(), key=lambda kv: -kv[1])[:5]
    for key in ("optimizer_states", "lr_schedulers"):
        assert str(final[key]) == str(uninterrupted["checkpoint"][key]), key


@pytest.mark.parametrize(("extra", "variables", "expected"), [
    (["--trainer.devices", "2"], {}, "#SBATCH --ntasks-per-node"),
    (["--trainer.num_nodes", "3"], {}, "#SBATCH --nodes"),
    ([], {"ntasks": 3}, "--ntasks-per-node"),
], ids=["devices", "num_nodes", "ntasks"])
def test_a_mismatched_allocation_fails_before_training(tmp_path, extra, variables, expected):
    run = submit(tmp_path, *extra, **variables)
    assert run.returncode != 0
    assert expected in run.stderr, run.stderr[-3000:]
    assert not (tmp_path / OUT).exists(), "nothing may be written before the check"
