"""Cross-cutting training behaviour: `last.ckpt` on every exit, pre-emption on SLURM (`SlurmRequeue`), image /
point-cloud logging to TensorBoard (`VisualLogger`) and the prediction writer."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from page4d_lightning.checkpointing import remove_stale_temporaries
from page4d_lightning.visuals import clip_grid, point_cloud

logger = logging.getLogger(__name__)


@contextmanager
def worker_deaths_ignored() -> Iterator[None]:
    """Within: a dying DataLoader worker does not raise in this process.

    PyTorch's DataLoader installs a SIGCHLD handler that raises RuntimeError in the main process when a worker
    dies. A signal sent to the whole process group (`scancel`, `kill -- -PGID`, `pkill -f`) kills the workers too:
    the first death interrupts the training step (which is then saved), and a second one would abort that save
    halfway. The default SIGCHLD disposition is restored for the duration (main thread only: elsewhere signal
    handlers cannot be changed, and none run there).
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGCHLD"):
        yield
        return
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)


class LastCheckpoint(ModelCheckpoint):
    """`<dirpath>/last.ckpt`: the latest training state, whenever and however a fit ends.

    It is rewritten at every validation (or every `every_n_train_steps`), like a `ModelCheckpoint` without a
    monitor, and also:
    - when training ends: at `max_steps` / `max_epochs`, on an early stop, and with validation disabled;
    - when the run is stopped: Ctrl-C (KeyboardInterrupt), SIGTERM from a cluster (Lightning stops at the end
      of the batch; sent to the whole process group, it also kills the DataLoader workers, which interrupts the
      step: that step's state is saved), or an error raised during training.
    Nothing is written for a run that has not taken a step since the last save. Under DDP an error raised on
    one rank alone is not saved (the other ranks would wait for it forever); signals reach every rank and are.
    Checkpoints go through the trainer's `CheckpointIO`, atomic with the `page4d` CLI.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "last", every_n_train_steps: int | None = None,
                 every_n_epochs: int | None = None) -> None:
        super().__init__(dirpath=dirpath, filename=filename, monitor=None, save_top_k=1,
                         every_n_train_steps=every_n_train_steps, every_n_epochs=every_n_epochs,
                         enable_version_counter=False)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self.dirpath is not None and os.path.isdir(self.dirpath):
            remove_stale_temporaries(self.dirpath, f"*{self.FILE_EXTENSION}")  # left by a run killed while saving

    def _save_last_state(self, trainer: L.Trainer) -> None:
        if trainer.global_step == self._last_global_step_saved or trainer.sanity_checking or trainer.fast_dev_run:
            return
        self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))
        rank_zero_info(f"saved {self.best_model_path} at step {trainer.global_step}")

    def save_now(self, trainer: L.Trainer) -> None:
        """Save `last.ckpt` now (every rank calls it; a no-op when this step is saved already)."""
        self._save_last_state(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last_state(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        every_rank = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        if trainer.state.fn != "fit" or (trainer.world_size > 1 and not every_rank):
            return
        logger.warning("%s during training: saving the state of step %d", type(exception).__name__,
                       trainer.global_step)
        with worker_deaths_ignored():  # a signal to the process group also killed the DataLoader workers
            self._save_last_state(trainer)


class SlurmRequeue(Callback):
    """Pre-emption on SLURM: on the requeue signal (`#SBATCH --signal=SIGUSR1@120`), save `last.ckpt`, ask SLURM to
    requeue the job (`scontrol requeue $SLURM_JOB_ID`) and end the fit cleanly.

    The signal handler only records the signal. The work happens at the end of the next optimiser step, on every
    rank at the same step: the ranks agree with one boolean all-reduce per step (a rank that got the signal is
    enough), then save through the `LastCheckpoint` of the run (atomic with the `page4d` CLI), then rank 0 calls
    `scontrol`, then the fit stops. Lightning's own handler saves inside the signal handler, at whatever point of
    the step the signal lands (a half-done step, or a barrier in the middle of a DDP all-reduce): the `page4d` CLI
    turns it off (`SLURMEnvironment(auto_requeue=False)`) and adds this callback when it runs under SLURM.

    The requeued job resumes with `--ckpt_path last` (experiments/slurm/*.sbatch pass it when
    `SLURM_RESTART_COUNT > 0`): same global step, optimiser, LR and mask-strength schedule, and the data
    continues with the next batch of the interrupted epoch (`Page4DDataModule.state_dict`).
    """

    def __init__(self, signum: int = signal.SIGUSR1) -> None:
        self.signum = signal.Signals(signum)
        self.received = False
        self._previous: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.received = False
            self._previous = signal.signal(self.signum, self._on_signal)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received = True  # acted on at the next step boundary (see the class docstring)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        steps_here = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if not (steps_here or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            return  # in the middle of gradient accumulation: wait for the optimiser step
        if not trainer.strategy.reduce_boolean_decision(self.received, all=False):
            return
        last = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, LastCheckpoint)]
        if not last:
            raise RuntimeError("SlurmRequeue: the run has no LastCheckpoint callback to save the pre-empted state")
        rank_zero_info(f"{self.signum.name}: pre-empted at step {trainer.global_step}; saving and requeueing")
        last[0].save_now(trainer)
        if trainer.is_global_zero:
            requeue_job()
        trainer.should_stop = True


def requeue_job() -> bool:
    """`scontrol requeue` the current SLURM job (an array task included); False, with a warning, when it fails."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{array_job}_{array_task}" if array_job and array_task else os.environ.get("SLURM_JOB_ID")
    if not job_id:
        rank_zero_warn("requeue: SLURM_JOB_ID is not set; resubmit the job by hand (CKPT_PATH=last)")
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        rank_zero_warn(f"requeue of SLURM job {job_id} failed ({err}); resubmit it by hand (CKPT_PATH=last)")
        return False
    if result.returncode != 0:
        rank_zero_warn(f"`scontrol requeue {job_id}` exited {result.returncode}: {result.stderr.strip()}; "
                       "resubmit the job by hand (CKPT_PATH=last)")
        return False
    rank_zero_info(f"requeued SLURM job {job_id}")
    return True


class MetricsFile(Callback):
    """`page4d validate` / `page4d test`: the metrics also go to `<dirpath>/metrics_<stage>.json` and `.csv` (one
    `name,value` row each), with the clips a metric left out (a static camera for ATE / RPE, a non-finite batch),
    counted and named (`Page4DModule.skipped_clips`). Rank 0 writes; the files of the last run are replaced."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, key: str) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
        skipped = getattr(pl_module, "skipped_clips", {}).get(key, [])
        self.dirpath.mkdir(parents=True, exist_ok=True)
        base = self.dirpath / f"metrics_{stage}"
        payload = {"stage": stage, "checkpoint": trainer.ckpt_path, "metrics": metrics,
                   "skipped": {"count": len(skipped), "clips": skipped}}
        base.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
        with open(base.with_suffix(".csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["name", "value"])
            writer.writerows(sorted(metrics.items()))
            writer.writerow([f"{key}/skipped_clips", len(skipped)])
        rank_zero_info(f"wrote {base.with_suffix('.json')} and {base.with_suffix('.csv')}"
                       + (f" ({len(skipped)} clip(s) left out of a metric, named there)" if skipped else ""))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer, pl_module, "validate", "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "test", "test")


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


class VideoExportWriter(BasePredictionWriter):
    """`page4d predict --input VIDEO --out DIR`: writes every export of `page4d_lightning.export.export_video` for
    each predicted video into a fresh `DIR/<video name>/` and prints where everything is. The batch is a video item
    (`datamodules.video.VideoDataModule`); the timings (decode + resize, model, export) go into its report."""

    def __init__(self, out: str, conf_percentile: float = 50.0, rerun: bool = True, colmap: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.out = Path(out)
        self.options = {"conf_percentile": conf_percentile, "rerun": rerun, "colmap": colmap}
        self.manifests: list[dict[str, Any]] = []
        self._last = self._batch_start = time.perf_counter()

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = time.perf_counter()

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                               batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_start = time.perf_counter()

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
        from page4d_lightning.export import export_video

        now = time.perf_counter()
        timings = {"decode_s": self._batch_start - self._last, "model_s": now - self._batch_start}
        for i, name in enumerate(prediction["seq_name"]):
            pred = {k: v[i] for k, v in prediction.items() if isinstance(v, Tensor)}
            meta = {k: v[i] if isinstance(v, Tensor) else v for k, v in batch.items()}
            meta["seq_name"] = str(name)
            if "query_points" in batch and "tracks" not in pred:
                rank_zero_warn("query points given but the model has no track head: no tracks are written")
            manifest = export_video(self.out, pred, meta, timings=timings, **self.options)
            self.manifests.append(manifest)
        self._last = time.perf_counter()

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for manifest in self.manifests:
            folder = Path(manifest["folder"])
            t = manifest["timings"]
            lines = [f"page4d predict: {manifest['settings']['frames']} frames of {manifest['settings']['source']} "
                     f"-> {folder}/  (decode {t['decode_s']:.1f} s, model {t['model_s']:.1f} s, export "
                     f"{t['export_s']:.1f} s)"]
            groups: dict[str, int] = {}
            for name in manifest["files"]:
                top = name.split("/")[0]
                groups[top] = groups.get(top, 0) + 1
            lines += [f"  {folder / top}{'/' if count > 1 or (folder / top).is_dir() else ''}"
                      f"{f'  ({count} files)' if count > 1 else ''}" for top, count in groups.items()]
            sys.stdout.write("\n".join(lines) + "\n")  # the user-facing summary, not a log line
            sys.stdout.flush()


class VisualLogger(Callback):
    """Logs a `clip_grid` image and a `point_cloud` of one clip to TensorBoard (rank zero only).

    Every `every_n_steps` optimiser steps it runs one extra forward of `pl_module.model` (eval mode, no grad,
    the trainer's precision) on the first clip of the training batch and logs `train/visuals`,
    `train/point_cloud`; with `log_val`, the first validation batch of every validation epoch gives
    `val/visuals`, `val/point_cloud`. Column names go to `<stage>/visuals_columns` (text). Without a
    TensorBoardLogger it warns once and does nothing.
    """

    def __init__(self, every_n_steps: int = 500, max_frames: int = 4, max_points: int = 20000,
                 log_val: bool = True) -> None:
        if every_n_steps < 1 or max_frames < 1 or max_points < 1:
            raise ValueError(
                "VisualLogger: expected every_n_steps, max_frames, max_points >= 1, "
                f"got {every_n_steps}, {max_frames}, {max_points}"
            )
        self.every_n_steps, self.max_frames, self.max_points = every_n_steps, max_frames, max_points
        self.log_val = log_val
        self._last_train_step = -1
        self._warned = False

    def _writer(self, trainer: L.Trainer) -> Any | None:
        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                return lg.experiment
        if not self._warned:
            rank_zero_warn("VisualLogger needs a TensorBoardLogger; no images or point clouds will be logged")
            self._warned = True
        return None

    @torch.no_grad()
    def log_clip(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Mapping[str, Any], stage: str) -> None:
        """Forward the first clip of `batch` and write `<stage>/visuals` and `<stage>/point_cloud`."""
        writer = self._writer(trainer)
        if writer is None:
            return
        model = pl_module.model
        modes = {m: m.training for m in model.modules()}  # restore each submodule's own mode afterwards
        precision = trainer.precision_plugin
        images = precision.convert_input(batch["images"][:1].to(pl_module.device))
        model.eval()
        try:
            with precision.val_step_context():
                predictions = model(images)
        finally:
            for m, mode in modes.items():
                m.training = mode
        clip = {k: v[:1] for k, v in batch.items() if isinstance(v, Tensor) and v.ndim >= 1}
        grid, columns = clip_grid(clip, predictions, self.max_frames)
        step = trainer.global_step
        writer.add_image(f"{stage}/visuals", grid, step, dataformats="HWC")
        writer.add_text(f"{stage}/visuals_columns", " | ".join(columns), step)
        if "world_points" in predictions:
            conf = predictions.get("world_points_conf")
            vertices, colors = point_cloud(
                predictions["world_points"][0], images[0], None if conf is None else conf[0], self.max_points
            )
            writer.add_mesh(f"{stage}/point_cloud", vertices=vertices, colors=colors, global_step=step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step % self.every_n_steps or step == self._last_train_step:
            return
        self._last_train_step = step  # gradient accumulation repeats a global_step; log it once
        self.log_clip(trainer, pl_module, batch, "train")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.log_val and batch_idx == 0 and dataloader_idx == 0 and trainer.is_global_zero \
                and not trainer.sanity_checking:
            self.log_clip(trainer, pl_module, batch, "val")
