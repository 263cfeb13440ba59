"""Two-process CPU DDP run of the tiny preset, launched by `tests/test_ddp.py` in a subprocess.

    python tests/ddp_worker.py OUT_DIR

Lightning's `ddp` strategy re-runs this script for rank 1 (gloo backend). Each rank fits a few steps on
synthetic clips (28x28, S=3) at mask strength 0 with `find_unused_parameters=False`, then validates, and
writes `OUT_DIR/rank<r>.pt`: initial and final model weights, whether each mask-head parameter had a
gradient (and its largest magnitude), the validation metrics, and the checkpoint IO in use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # run as a script, outside pytest's pythonpath

from datamodules import SyntheticDataModule  # noqa: E402
from page4d_lightning.checkpointing import AtomicCheckpointIO  # noqa: E402
from page4d_lightning.module import Page4DModule  # noqa: E402

MASK_HEAD = "aggregator.spatial_mask_head."
STEPS = 3


def data_module() -> SyntheticDataModule:
    """Tiny synthetic clips: 4 training clips per rank, 4 validation clips (2 per rank under DDP)."""
    return SyntheticDataModule(
        num_frames=3,
        image_size=28,
        batch_size=1,
        num_workers=0,
        train={"num_clips": 8, "seed": 0, "frame_interval": 0.3},
        val={"num_clips": 4, "seed": 1, "split": "val", "frame_interval": 0.3},
    )


class MaskHeadGrads(L.Callback):
    """Records, before every optimiser step, whether each mask-head parameter has a gradient."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float | None]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.steps.append(
            {
                name: None if p.grad is None else float(p.grad.abs().max())
                for name, p in pl_module.model.named_parameters()
                if name.startswith(MASK_HEAD)
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    out = parser.parse_args().out
    torch.set_num_threads(1)
    L.seed_everything(0, workers=True)
    module = Page4DModule(preset="tiny", lr=1e-3, warmup_fraction=0.0, mask_strength=0.0)
    initial = {k: v.clone() for k, v in module.model.state_dict().items()}
    grads = MaskHeadGrads()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",  # find_unused_parameters=False: every parameter must take part in every backward
        max_steps=STEPS,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[grads],
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, datamodule=data_module())
    trainer.limit_val_batches = 1.0
    (val,) = trainer.validate(module, datamodule=data_module(), verbose=False)
    result = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "find_unused_parameters": trainer.strategy._ddp_kwargs.get("find_unused_parameters", False),
        "checkpoint_io": type(trainer.strategy.checkpoint_io).__name__,
        "initial": initial,
        "final": {k: v.detach().clone() for k, v in module.model.state_dict().items()},
        "mask_head_grads": grads.steps,
        "val": {k: float(v) for k, v in val.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
