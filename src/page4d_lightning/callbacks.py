"""Cross-cutting training behaviour: the mask-strength schedule and the prediction writer."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter, Callback

logger = logging.getLogger(__name__)


def mask_strength_at(step: int, hold: int, end: int) -> float:
    """1 before `hold`, 0 from `end`, 0.5 (1 + cos(pi (step - hold) / (end - hold))) in between."""
    if step < hold:
        return 1.0
    if step >= end:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - hold) / (end - hold)))


class MaskStrengthSchedule(Callback):
    """Sets `model.set_mask_strength` from `trainer.global_step` (optimiser steps) before every batch.

    The official code counts forward passes (so with gradient accumulation its hold / end are in
    micro-batches) and does not checkpoint its counter; we use the optimiser step,
    which Lightning restores on resume, so a resumed run continues the same schedule.
    Validation and test run at strength `eval_strength` (0 = bias off, as the official evaluation).

    `Page4DModule.configure_optimizers` reads `strength_at` to gate the parameter groups marked
    `follows_mask_strength` (the mask head): their LR is exactly 0 on every optimiser step whose
    strength is 0 (from `end` on), so AdamW's momentum and weight decay do not move them either.
    """

    def __init__(self, hold: int = 6000, end: int = 10000, eval_strength: float = 0.0) -> None:
        if not 0 <= hold <= end:
            raise ValueError(f"MaskStrengthSchedule: expected 0 <= hold <= end, got hold={hold}, end={end}")
        self.hold, self.end, self.eval_strength = hold, end, eval_strength

    def strength_at(self, step: int) -> float:
        """Training strength at optimiser step `step` (`trainer.global_step`)."""
        return mask_strength_at(step, self.hold, self.end)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        strength = self.strength_at(trainer.global_step)
        pl_module.model.set_mask_strength(strength)
        pl_module.log("train/mask_strength", strength, batch_size=1)

    def _eval_start(self, pl_module: L.LightningModule) -> None:
        pl_module.model.set_mask_strength(self.eval_strength)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start(pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start(pl_module)


class NpzPredictionWriter(BasePredictionWriter):
    """Writes one `<output_dir>/<seq_name>.npz` per predicted clip (cameras, depth, points, masks)."""

    def __init__(self, output_dir: str) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        arrays = {k: v.numpy() for k, v in prediction.items() if k != "seq_name"}
        for i, name in enumerate(prediction["seq_name"]):
            path = self.output_dir / f"{Path(str(name)).name}.npz"
            np.savez_compressed(path, **{k: v[i] for k, v in arrays.items()})
        logger.info("wrote %d clip(s) to %s", len(prediction["seq_name"]), self.output_dir)
