"""`Page4DModule`: the LightningModule that trains, validates, tests and runs PAGE-4D.

It holds the pure `PAGE4D` network as `self.model` and adds the loss, the optimiser, the metrics and
logging. One `_shared_step(batch, stage)` serves train / val / test: a batch with NaN/inf, or a step
whose loss is not finite, is skipped (on every DDP rank together) with a warning and counted;
`max_bad_steps` consecutive skipped training steps stop the run (the last good checkpoint stays on disk).

Fine-tuning is declarative (`finetune.py`): the `finetune` argument names a policy (preset "page4d" or
trainable globs + parameter groups); it sets `requires_grad` once in `configure_models`, and
`configure_optimizers` builds one AdamW over its groups with per-group warm-up + cosine schedules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from page4d_lightning.evaluation import (
    EvalProtocol,
    aggregate,
    predict_for_protocol,
    score_sequence,
    table_columns,
    write_results,
)
from page4d_lightning.finetune import (
    FINETUNE_PRESETS,
    FinetuneConfig,
    FinetunePolicy,
    FinetunePreset,
    MaskSchedule,
    MaskScheduleConfig,
    build_scheduler,
    format_table,
    read_finetune_file,
)
from page4d_lightning.geometry import depth_to_cam_points, pose_encoding_to_extri_intri, pose_from_point_maps
from page4d_lightning.inference import predict_sequence
from page4d_lightning.losses import MultitaskLoss
from page4d_lightning.metrics import DepthMetrics, DynamicMaskMetrics, PointMetrics, PoseMetrics, TrackingMetrics
from page4d_lightning.metrics.functional import static_camera_clips
from page4d_lightning.models import PAGE4D, PAGE4DConfig, load_weights

logger = logging.getLogger(__name__)

DEFAULT_LOSS: dict[str, dict[str, Any]] = {
    "camera": {"weight": 5.0, "loss_type": "l1"},
    "depth": {"weight": 1.0, "gamma": 0.3, "alpha": 0.06, "gradient_loss_fn": "grad", "valid_range": 0.98},
    "point": {"weight": 1.0, "gradient_loss_fn": "normal", "valid_range": 0.98},
    "track": {"weight": 0.0},
}
"""The official training loss configuration (VGGT / PAGE-4D `training_final.yaml`)."""

PRESETS = {"tiny": PAGE4DConfig.tiny, "mini": PAGE4DConfig.mini, "vggt_1b": PAGE4DConfig.vggt_1b}

METRIC_SUFFIX = {"pose_from_points": "_from_points"}
"""Metrics whose keys would collide with another's get a suffix in the logs: val/ate_from_points, ..."""


def find_non_finite(batch: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of `batch` that hold NaN or inf."""
    return [
        k for k, v in batch.items() if isinstance(v, Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
    ]


def _clip_names(batch: dict[str, Any]) -> str:
    datasets, seqs = batch.get("dataset", []), batch.get("seq_name", [])
    return ", ".join(f"{d}/{s}" for d, s in zip(datasets, seqs)) or "<unnamed clips>"


class Page4DModule(L.LightningModule):
    """PAGE-4D training / evaluation wrapper.

    Args:
        preset: model preset name: "tiny" (24 + 24 blocks at width 64), "mini" (8 + 8 at width 128, the CPU
            miniature's) or "vggt_1b" (the official model).
        model_overrides: PAGE4DConfig fields to override (e.g. `{"enable_track": false}`).
        weights: optional checkpoint to load into the model (VGGT-1B, PAGE-4D, safetensors or own export).
        track_head_weights: VGGT-1B file that fills the track head when `weights` lacks it, or "init" to train the
            track head from its initialisation on top of `weights`.
        loss: per-task loss configs in the official layout (see `DEFAULT_LOSS`).
        finetune: freeze policy and parameter groups: a preset name ("page4d": frame + global blocks
            10-19, or the model's `bias_blocks` when they differ, and the mask head train),
            `{trainable: [globs], groups: [{name, params, lr, ...}]}` (see `page4d_lightning.finetune`) or a
            .yaml/.yml file holding that dict (the hyper-parameters keep its content, so a checkpoint does not
            need the file). None: everything trains in one group from
            `lr`, `weight_decay`, `warmup_fraction` and `min_lr` (which are ignored otherwise).
        lr: peak learning rate of AdamW (without `finetune`).
        weight_decay: AdamW weight decay (without `finetune`).
        warmup_fraction: linear warm-up share of the run, then cosine decay to `min_lr` (without `finetune`).
        min_lr: learning rate at the start of warm-up and at the end of the run (without `finetune`).
        mask_schedule: the dynamics-bias strength over optimiser steps, `{hold, end, eval_strength}`
            (`page4d_lightning.finetune.MaskSchedule`): 1 before `hold`, a half cosine to 0 at `end`, and
            `eval_strength` (default 0) in validation and test. The module sets it before every batch and gates
            the LR of the `follows_mask_strength` groups with the same function.
        mask_strength: the constant strength in training and evaluation when there is no `mask_schedule`.
        max_bad_steps: consecutive skipped (non-finite) training steps before the run stops.
        point_metrics: also compute point-map accuracy / completeness in val/test (exact nearest-neighbour
            search: cheap on a GPU, slow on a CPU at full resolution). Tracking metrics are computed
            whenever the model predicts tracks and the batch has them.
        evaluation: a benchmark protocol for `test` (`page4d_lightning.evaluation.EvalProtocol` fields, e.g.
            `{benchmark: sintel, task: video_depth, protocol: official, depth_source: world_z}`): every test
            clip is one whole sequence, predicted and scored as the protocol says, and the tables are written
            to `<results_dir>/<run_name>/<benchmark>_<task>_<protocol>.{md,csv,json}` (experiments/eval/).
    """

    def __init__(
        self,
        preset: str = "tiny",
        model_overrides: dict[str, Any] | None = None,
        weights: str | None = None,
        track_head_weights: str | None = None,
        loss: dict[str, dict[str, Any]] | None = None,
        finetune: FinetuneConfig | FinetunePreset | str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.05,
        min_lr: float = 1e-8,
        mask_schedule: MaskScheduleConfig | None = None,
        mask_strength: float = 0.0,
        max_bad_steps: int = 20,
        point_metrics: bool = False,
        evaluation: EvalProtocol | None = None,
    ) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction: expected in [0, 1), got {warmup_fraction}")
        self.save_hyperparameters()
        if isinstance(finetune, str) and finetune not in FINETUNE_PRESETS:
            self.hparams.finetune = read_finetune_file(finetune)  # the policy itself: checkpoints need no file
        self.mask_schedule = MaskSchedule(**mask_schedule) if mask_schedule is not None else None
        if isinstance(evaluation, dict):
            evaluation = EvalProtocol(**evaluation)
        self.evaluation = evaluation
        if evaluation is not None:
            self.hparams.evaluation = asdict(evaluation)  # plain values in checkpoints and logs
        self.skipped_clips: dict[str, list[dict[str, str]]] = {}  # stage -> clips a metric left out, and why
        self._eval_rows: list[dict[str, Any]] = []
        self.bad_steps_total = 0
        self.bad_steps_in_a_row = 0
        self._skip_optimizer_step = False
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    # ------------------------------------------------------------------------------------ configure
    def configure_models(self) -> None:
        config = PRESETS[self.hparams.preset]()
        for key, value in (self.hparams.model_overrides or {}).items():
            if not hasattr(config, key):
                raise ValueError(f"model_overrides: PAGE4DConfig has no field {key!r}")
            setattr(config, key, value)
        self.model = PAGE4D(config)
        if self.hparams.weights:
            load_weights(self.model, self.hparams.weights, track_head_from=self.hparams.track_head_weights)
        self.model.set_mask_strength(self.hparams.mask_strength)
        hp = self.hparams
        self.finetune_policy = (
            FinetunePolicy.from_config(hp.finetune, middle_blocks=config.bias_blocks)
            if hp.finetune is not None
            else FinetunePolicy.full(hp.lr, hp.weight_decay, hp.warmup_fraction, hp.min_lr)
        )
        self.finetune_policy.freeze(self.model)  # the only place requires_grad is set
        self.finetune_policy.assign(self.model)  # fail at construction on a parameter in no / two groups

    def configure_losses(self) -> None:
        self.loss = MultitaskLoss(**(self.hparams.loss if self.hparams.loss is not None else DEFAULT_LOSS))

    def configure_metrics(self) -> None:
        # "<stage>" holds the figures over all clips, "<stage>/<dataset>" those of one dataset; every entry is
        # created at its first update (and on every rank before syncing), after the precision plugin has cast the
        # module: `module.to(bfloat16)` would also cast the float64 metric states of existing entries
        self.eval_metrics = torch.nn.ModuleDict()

    def _new_metrics(self) -> torch.nn.ModuleDict:
        metrics = {
            "pose": PoseMetrics(),
            "depth": DepthMetrics(align="median", per="frame"),
            # diagnostic: the camera motion that the depth and point heads imply (Procrustes per frame)
            "pose_from_points": PoseMetrics(),
            "mask": DynamicMaskMetrics(self.model.config.patch_size),
        }
        if self.hparams.point_metrics:
            metrics["points"] = PointMetrics()
        if self.model.config.enable_track:
            metrics["tracks"] = TrackingMetrics()
        return torch.nn.ModuleDict(metrics)

    def _metrics(self, key: str) -> torch.nn.ModuleDict:
        if key not in self.eval_metrics:
            self.eval_metrics[key] = self._new_metrics().to(self.device)
        return self.eval_metrics[key]

    # ----------------------------------------------------------------------------------------- steps
    def forward(self, images: Tensor, query_points: Tensor | None = None) -> dict[str, Any]:
        return self.model(images, query_points=query_points)

    def _shared_step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        reason = None
        bad = find_non_finite(batch)
        if bad:
            reason = f"batch has NaN/inf in {bad} (clips: {_clip_names(batch)})"
        else:
            tracked = self.model.config.enable_track and "tracks" in batch
            query = batch["tracks"][:, 0].to(batch["images"].dtype) if tracked else None
            predictions = self.model(batch["images"], query_points=query)
            terms = self.loss(predictions, batch)
            objective = terms["objective"]
            if not torch.isfinite(objective):
                names = [k for k, v in terms.items() if not torch.isfinite(v)]
                reason = f"non-finite loss terms {names} (clips: {_clip_names(batch)})"
        if stage == "train" and self._on_any_rank(reason is not None):
            # every rank skips together: DDP needs the same backward on all ranks, so the step returns a zero
            # objective over the trainable parameters and `on_before_optimizer_step` drops its (zero) gradients
            self._skip(stage, reason or "another rank had a non-finite batch or loss")
            self._skip_optimizer_step = True
            return sum((p * 0.0).sum() for p in self.model.parameters() if p.requires_grad)
        if reason is not None:
            self._skip(stage, reason)
            self._record_skipped(stage, list(batch.get("seq_name", ["?"])), reason)
            return None
        if stage == "train":
            self.bad_steps_in_a_row = 0
        bsz = batch["images"].shape[0]
        self.log(f"{stage}/loss", objective, prog_bar=True, batch_size=bsz, sync_dist=stage != "train")
        self.log_dict(
            {f"{stage}/{k}": v.detach() for k, v in terms.items() if k != "objective"},
            batch_size=bsz,
            sync_dist=stage != "train",
        )
        if stage in ("val", "test"):
            self._update_metrics(predictions, batch, stage)
        return objective

    def _record_skipped(self, stage: str, clips: list[str], why: str) -> None:
        """Name the clips a val / test metric left out (`skipped_clips[stage]`, written by `MetricsFile`)."""
        self.skipped_clips.setdefault(stage, []).extend({"clip": str(c), "why": why} for c in clips)

    def _on_any_rank(self, flag: bool) -> bool:
        """True when `flag` is True on any process (one all-reduce under DDP; just `flag` otherwise)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return flag
        total = self.trainer.strategy.reduce(torch.tensor(float(flag), device=self.device), reduce_op="sum")
        return bool(total > 0)

    def _skip(self, stage: str, reason: str) -> None:
        rank_zero_warn(f"{stage} step {self.global_step} skipped: {reason}")
        if stage != "train":
            return
        self.bad_steps_total += 1
        self.bad_steps_in_a_row += 1
        self.log("train/skipped_steps", float(self.bad_steps_total), batch_size=1)
        if self.bad_steps_in_a_row >= self.hparams.max_bad_steps:
            logger.error(
                "stopping: %d consecutive training steps were skipped for non-finite values; "
                "check the data (`page4d data inspect`) and the learning rate",
                self.bad_steps_in_a_row,
            )
            self.trainer.should_stop = True

    def _update_metrics(self, predictions: dict[str, Any], batch: dict[str, Any], stage: str) -> None:
        hw = tuple(batch["images"].shape[-2:])
        pred_extrinsics, _ = pose_encoding_to_extri_intri(predictions["pose_enc"].float(), hw)
        pred_depth = predictions["depth"][..., 0].float()
        gt_depth = batch["depths"] * batch["point_masks"]
        names = list(batch.get("dataset", ["unknown"] * pred_depth.shape[0]))
        groups = {stage: slice(None)} | {
            f"{stage}/{name}": torch.tensor([i for i, n in enumerate(names) if n == name], device=pred_depth.device)
            for name in set(names)
        }
        static = static_camera_clips(pred_extrinsics, batch["extrinsics"]).tolist()  # no ATE / RPE for those
        if any(static):
            self._record_skipped(stage, [n for n, s in zip(batch.get("seq_name", ["?"] * len(static)), static) if s],
                                 "pose metrics: static camera centres, the Sim(3) alignment is undefined")
        if "world_points" in predictions:
            # GT intrinsics: the diagnostic asks whether the trunk knows the motion, not whether the FoV is right
            cam_points = depth_to_cam_points(pred_depth, batch["intrinsics"].float())
            points_pose = pose_from_point_maps(cam_points, predictions["world_points"].float(),
                                               batch["point_masks"].float())
        for key, index in groups.items():
            metrics = self._metrics(key)
            metrics["pose"].update(pred_extrinsics[index], batch["extrinsics"][index])
            dynamic = batch.get("dynamic_masks")  # also AbsRel / deltas on static and on dynamic pixels
            metrics["depth"].update(pred_depth[index], gt_depth[index], None if dynamic is None else dynamic[index])
            if "world_points" in predictions:
                metrics["pose_from_points"].update(points_pose[index], batch["extrinsics"][index])
            if "dynamic_mask" in predictions and "dynamic_masks" in batch:
                metrics["mask"].update(predictions["dynamic_mask"].float()[index], batch["dynamic_masks"][index])
            if "points" in metrics:
                pred_points = predictions["world_points"].float()[index]
                metrics["points"].update(pred_points, batch["world_points"][index], batch["point_masks"][index])
            if "tracks" in metrics and "track" in predictions and "tracks" in batch:
                metrics["tracks"].update(
                    predictions["track"].float()[index],
                    predictions["vis"].float()[index],
                    batch["tracks"][index],
                    batch["track_vis_mask"][index],
                    hw,
                )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.evaluation is not None:
            self._evaluate_sequences(batch)
            return
        self._shared_step(batch, "test")

    def _evaluate_sequences(self, batch: dict[str, Any]) -> None:
        """Each clip of the batch is one benchmark sequence: predict and score it (`evaluation.score_sequence`)."""
        for b in range(batch["images"].shape[0]):
            sample = {k: (v[b].detach().cpu() if isinstance(v, Tensor) else v[b]) for k, v in batch.items()
                      if isinstance(v, (Tensor, list)) and len(v) == batch["images"].shape[0]}
            predictions = predict_for_protocol(self.model, batch["images"][b], self.evaluation)
            predictions = {k: v.detach().float().cpu() for k, v in predictions.items()}
            self._eval_rows.append(score_sequence(predictions, sample, self.evaluation))

    def _write_evaluation(self) -> None:
        """Gather the rows of every rank; rank 0 aggregates, writes the tables and logs the means."""
        rows = self._eval_rows
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[list[dict[str, Any]]] = [[] for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for rank_rows in gathered for r in rank_rows]
        self._eval_rows = []
        protocol = self.evaluation
        summary = aggregate(rows, protocol.task)
        if self.trainer.is_global_zero:
            meta = {"checkpoint": self.trainer.ckpt_path or self.hparams.weights, "settings": asdict(protocol)}
            paths = write_results(protocol, rows, summary, meta)
            rank_zero_info(paths[-1].read_text() + f"wrote {', '.join(map(str, paths))}")
        columns = table_columns(protocol.task, rows)  # the paper's columns; every metric is in the tables
        means = {f"test/{protocol.name}/{k}": float(summary.get(k, float("nan"))) for k in columns}
        means[f"test/{protocol.name}/skipped"] = float(len(summary["skipped"]))
        self.log_dict(means, rank_zero_only=True)

    def _log_epoch_metrics(self, stage: str) -> None:
        keys = sorted(k for k in self.eval_metrics if k == stage or k.startswith(f"{stage}/"))
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:  # every rank gets every rank's skipped clips (MetricsFile writes them on rank 0)
            skipped: list[list[dict[str, str]]] = [[] for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather_object(skipped, self.skipped_clips.get(stage, []))
            self.skipped_clips[stage] = [clip for rank_clips in skipped for clip in rank_clips]
        if distributed:
            # every rank must hold (and sync) the same metrics, even for a dataset it never saw
            gathered: list[list[str]] = [[] for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather_object(gathered, keys)
            keys = sorted({k for rank_keys in gathered for k in rank_keys})
        for key in keys:
            metrics = self._metrics(key)
            if metrics["pose"].update_count == 0 and not distributed:
                continue
            values: dict[str, Tensor] = {}
            for name, metric in metrics.items():
                if metric.update_count > 0 or distributed:
                    suffix = METRIC_SUFFIX.get(name, "")
                    values.update({f"{k}{suffix}": v for k, v in metric.compute().items()})
                metric.reset()
            self.log_dict({f"{key}/{k}": v for k, v in values.items() if v.numel() == 1})

    def on_validation_epoch_start(self) -> None:
        self.skipped_clips["val"] = []

    def on_test_epoch_start(self) -> None:
        self.skipped_clips["test"] = []

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        if self.evaluation is not None:
            self._write_evaluation()
            return
        self._log_epoch_metrics("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Predictions decoded by `inference.predict_sequence`, on the CPU, per clip of the batch: extrinsics
        (B,S,3,4), intrinsics, depth, confidences, world points, dynamic mask (and tracks with `query_points`
        (B,N,2) in the batch). A batch with a `window` (frames) runs each clip in overlapping windows of that many
        frames (`overlap`, default 8) chained by Sim(3); it then also holds `window_of_frame` (B,S)."""
        images = batch["images"]
        window, overlap = batch.get("window"), batch.get("overlap")
        query = batch.get("query_points")
        clips = [
            predict_sequence(
                self.model, images[b],
                window=None if window is None else int(window),
                overlap=8 if overlap is None else int(overlap),
                query_points=None if query is None else query[b],
            )
            for b in range(images.shape[0])
        ]
        out: dict[str, Any] = {k: torch.stack([c[k] for c in clips]).cpu() for k in clips[0]}
        out["seq_name"] = batch.get("seq_name", [str(batch_idx)] * images.shape[0])
        return out

    # ------------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        """One AdamW over the policy's parameter groups, one step per iteration; per-group LR schedule
        stepped every optimiser step (see `finetune.build_scheduler` for the mask-head gating)."""
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError("no trainable parameters: the freeze policy froze the whole model")
        optimizer = torch.optim.AdamW(self.finetune_policy.param_groups(self.model))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        strength_at = self._mask_strength_fn()
        for group in self.finetune_policy.groups:
            if group.follows_mask_strength and strength_at(0) == 0:
                rank_zero_warn(
                    f"finetune group {group.name!r} follows the mask strength, which is 0 from step 0"
                    " (no mask_schedule and mask_strength=0?): its LR stays 0 and it will not train"
                )
        scheduler = build_scheduler(optimizer, self.finetune_policy, total, strength_at)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _mask_strength_fn(self) -> Callable[[int], float]:
        """Training mask strength as a function of the optimiser step: the `mask_schedule`, or the constant
        `mask_strength`."""
        if self.mask_schedule is not None:
            return self.mask_schedule.strength_at
        constant = float(self.hparams.mask_strength)
        return lambda step: constant

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        strength = self._mask_strength_fn()(self.global_step)
        self.model.set_mask_strength(strength)
        if self.mask_schedule is not None:
            self.log("train/mask_strength", strength, batch_size=1)

    def _set_eval_strength(self) -> None:
        schedule = self.mask_schedule
        self.model.set_mask_strength(schedule.eval_strength if schedule else float(self.hparams.mask_strength))

    def on_validation_start(self) -> None:
        self._set_eval_strength()

    def on_test_start(self) -> None:
        self._set_eval_strength()

    def on_predict_start(self) -> None:
        self._set_eval_strength()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._skip_optimizer_step:
            # a skipped step: AdamW ignores parameters without a gradient (no moment or weight-decay update)
            self._skip_optimizer_step = False
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
            return
        # the gating is exact by construction (see `finetune.build_scheduler`); fail loudly if the LR
        # schedule and the strength schedule ever disagree instead of silently moving the mask head
        if self.model.mask_strength == 0.0:
            for group in optimizer.param_groups:
                if group.get("follows_mask_strength") and group["lr"] != 0.0:
                    raise RuntimeError(
                        f"step {self.global_step}: group {group.get('name')!r} has lr {group['lr']:.3g} while the"
                        " mask strength is 0 (its LR schedule and the mask schedule are out of step)"
                    )

    def on_fit_start(self) -> None:
        """Log the trainable / frozen parameter counts per group (rank zero; text in TensorBoard)."""
        if not self.trainer.is_global_zero:
            return
        table = format_table(self.finetune_policy.table(self.model))
        logger.info("parameter groups (trainable per group, and frozen):\n%s", table)
        for lg in self.loggers:
            if isinstance(lg, TensorBoardLogger):
                lg.experiment.add_text("finetune/parameter_groups", table, global_step=self.global_step)
