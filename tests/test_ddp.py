"""Multi-process training: 2-rank CPU DDP without `find_unused_parameters` keeps the ranks identical and
syncs validation metrics to the single-process values; the SLURM scripts are valid bash whose
`page4d fit` arguments parse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from page4d_lightning.cli import main
from page4d_lightning.module import Page4DModule

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp_worker.py"
SLURM = sorted((ROOT / "experiments" / "slurm").glob("*.sbatch"))
MASK_HEAD = "aggregator.spatial_mask_head."


pytestmark = pytest.mark.usefixtures("one_thread")


def _worker_module():
    sys.path.insert(0, str(WORKER.parent))
    try:
        import ddp_worker
    finally:
        sys.path.remove(str(WORKER.parent))
    return ddp_worker


def test_every_trainable_parameter_gets_a_gradient():
    """DDP with find_unused_parameters=False requires a gradient (zero is fine) for every trainable
    parameter in every step; at mask strength 0 the mask head's is zero, not missing."""
    torch.manual_seed(0)
    module = Page4DModule(preset="tiny", mask_strength=0.0)
    data = _worker_module().data_module()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module._shared_step(batch, "train").backward()
    missing = [n for n, p in module.model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [], f"trainable parameters outside the graph (DDP would fail): {missing}"
    mask_head = [p.grad for n, p in module.model.named_parameters() if n.startswith(MASK_HEAD)]
    assert mask_head and all(g is not None and not g.any() for g in mask_head)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    # a plain 2-process run even when pytest itself runs inside a SLURM allocation
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, str(WORKER), str(out)], capture_output=True, text=True, timeout=600, env=env, cwd=out
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_ddp_ranks_train_identically_without_unused_parameter_search(ddp_run):
    rank0, rank1 = ddp_run
    assert [r["rank"] for r in ddp_run] == [0, 1] and rank0["world_size"] == 2
    assert rank0["find_unused_parameters"] is False
    assert rank0["global_step"] == _worker_module().STEPS
    assert rank0["checkpoint_io"] == "AtomicCheckpointIO"
    for key, value in rank0["final"].items():
        assert torch.equal(value, rank1["final"][key]), f"ranks differ in {key}"
    trainable = {n for n, p in Page4DModule(preset="tiny").model.named_parameters() if p.requires_grad}
    unchanged = [k for k in trainable if torch.equal(rank0["initial"][k], rank0["final"][k])]
    assert unchanged == [], f"training left these parameters unchanged: {unchanged[:5]}"
    for rank in ddp_run:  # every step, every mask-head tensor: a zero gradient (strength 0), not None
        assert len(rank["mask_head_grads"]) == rank0["global_step"]
        for step in rank["mask_head_grads"]:
            assert step and all(g == 0.0 for g in step.values()), step


def test_ddp_validation_metrics_equal_single_process(ddp_run):
    """Each rank validates half of the clips; the synced figures equal one process over all clips."""
    rank0, rank1 = ddp_run
    assert "val/ate" in rank0["val"] and rank0["val"] == rank1["val"]
    module = Page4DModule(preset="tiny", mask_strength=0.0)
    module.model.load_state_dict(rank0["final"])
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    (single,) = trainer.validate(module, datamodule=_worker_module().data_module(), verbose=False)
    keys = [k for k in ("val/ate", "val/rpe_trans", "val/rpe_rot", "val/abs_rel", "val/delta_1_25") if k in single]
    assert "val/ate" in keys and "val/abs_rel" in keys
    for key in keys:
        assert rank0["val"][key] == pytest.approx(single[key], rel=1e-5, abs=1e-7), key


# -------------------------------------------------------------------------------------------- SLURM
@pytest.mark.parametrize("script", SLURM, ids=[p.name for p in SLURM])
def test_slurm_script_is_valid_bash(script):
    assert script.read_text().startswith("#!/bin/bash\n")
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH --ntasks-per-node=8" in text and "#SBATCH --gpus-per-node=8" in text


def _fake_job(tmp_path: Path, script: Path, restart_count: int, nodes: int, ckpt_path: str = "last") -> list[str]:
    """Run `script` with stand-ins for `srun`, `page4d` and the venv; returns the `page4d` arguments."""
    bin_dir, venv = tmp_path / "bin", tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("# stand-in venv\n")
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == -* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "page4d").write_text('#!/bin/bash\nprintf "%s\\0" "$@" > "$ARGS_OUT"\n')
    for tool in ("srun", "page4d"):
        (bin_dir / tool).chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "ARGS_OUT": str(tmp_path / "args"),
        "VENV": str(venv),
        "EXPERIMENT": str(ROOT / "experiments" / "synthetic_scratch.yaml"),
        "CKPT_PATH": ckpt_path,
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NTASKS_PER_NODE": "8",
        "SLURM_CPUS_PER_TASK": "8",
        "SLURM_RESTART_COUNT": str(restart_count),
    }
    subprocess.run(["bash", str(script), "--trainer.max_steps", "7"], check=True, env=env)
    return (tmp_path / "args").read_text().split("\0")[:-1]


@pytest.mark.parametrize("script", SLURM, ids=[p.name for p in SLURM])
def test_slurm_fit_arguments_parse(script, tmp_path, capsys):
    nodes = 4 if "multi" in script.name else 1
    args = _fake_job(tmp_path / "first", script, restart_count=0, nodes=nodes)
    assert args[0] == "fit" and args[args.index("--ckpt_path") + 1] == "last"
    requeued = _fake_job(tmp_path / "requeued", script, restart_count=1, nodes=nodes, ckpt_path="first-start.ckpt")
    assert requeued[requeued.index("--ckpt_path") + 1] == "last", "a requeued job resumes from last.ckpt"
    with pytest.raises(SystemExit) as exc:
        main([*args, "--print_config"])
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    trainer = cfg["trainer"]
    # the CLI may keep `devices` as the string "8" (Lightning's `devices` accepts int | str | list)
    assert str(trainer["devices"]) == "8"
    assert trainer["num_nodes"] == nodes
    assert trainer["strategy"] == "ddp"
    assert trainer["accelerator"] == "gpu"
    assert trainer["max_steps"] == 7
    assert cfg["ckpt_path"] == "last"
