"""Test-only callbacks that a test names on a `page4d` command line (`--trainer.callbacks+=...`): `StepMarker`
writes the global step to a file after every training batch (so a test knows the run is training before it
signals it) and can slow each step down; `MetricsDump` writes the logged metrics to a JSON file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class StepMarker(Callback):
    """Writes `trainer.global_step` to `path` after every training batch, then sleeps `seconds_per_step`."""

    def __init__(self, path: str, seconds_per_step: float = 0.0) -> None:
        self.path, self.seconds_per_step = Path(path), seconds_per_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.path.write_text(str(trainer.global_step))
        time.sleep(self.seconds_per_step)


class MetricsDump(Callback):
    """Writes `trainer.callback_metrics` (floats) to a JSON file after validation and test."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def _dump(self, trainer: L.Trainer) -> None:
        self.path.write_text(json.dumps({k: float(v) for k, v in trainer.callback_metrics.items()}))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._dump(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._dump(trainer)
