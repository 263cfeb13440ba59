"""Targeted fine-tuning: the freeze policy, per-group AdamW parameter groups, their LR schedules and the schedule
of the dynamics-mask strength.

A policy is plain values (readable from YAML, stored in checkpoints as hyper-parameters):

    trainable: fnmatch globs over `PAGE4D.named_parameters()` names; everything else is frozen.
    groups:    [{name, params: [globs], lr, weight_decay, warmup_fraction, min_lr, follows_mask_strength}]

Every trainable parameter must fall in exactly one group; a glob that matches nothing is an error.
`requires_grad` is set once, when the module is built, and never flipped during a run (the official
trainer flips it and needs DDP's `find_unused_parameters`; we do not). Each group's LR warms up
linearly from `min_lr` to `lr` over `warmup_fraction` of the run, then follows a cosine to `min_lr`
at the last optimiser step. A group with `follows_mask_strength` (the mask head) has LR exactly 0 on
every optimiser step whose mask strength is 0: see `build_scheduler`.

A policy can also be a YAML file holding that dict (`--model.finetune policy.yaml`; `page4d analyze-layers` writes
one from its per-block measures: `page4d_lightning.tools.analyze_layers`).
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

import torch
import yaml
from torch import nn
from torch.optim.lr_scheduler import LRScheduler


class GroupConfig(TypedDict):
    """One optimiser parameter group (YAML / hparams form)."""

    name: str
    params: list[str]  # fnmatch globs over parameter names
    lr: float  # peak learning rate
    weight_decay: NotRequired[float]  # AdamW decoupled weight decay, default 0
    warmup_fraction: NotRequired[float]  # share of the run spent in linear warm-up, default 0
    min_lr: NotRequired[float]  # LR at the start of warm-up and at the end of the run, default 1e-8
    follows_mask_strength: NotRequired[bool]  # LR 0 on steps whose mask strength is 0, default False


class FinetuneConfig(TypedDict):
    """A freeze policy (YAML / hparams form): trainable globs and the parameter groups."""

    trainable: list[str]
    groups: list[GroupConfig]


FinetunePreset = Literal["page4d"]

_BLOCKS_10_19 = ("aggregator.frame_blocks.1[0-9].*", "aggregator.global_blocks.1[0-9].*")
_MASK_HEAD = "aggregator.spatial_mask_head.*"

FINETUNE_PRESETS: dict[str, FinetuneConfig] = {
    "page4d": {
        "trainable": [*_BLOCKS_10_19, _MASK_HEAD],
        "groups": [
            {"name": "frame_blocks", "params": [_BLOCKS_10_19[0]], "lr": 1e-5, "weight_decay": 0.01,
             "warmup_fraction": 0.05},
            {"name": "global_blocks", "params": [_BLOCKS_10_19[1]], "lr": 1e-5, "weight_decay": 0.01,
             "warmup_fraction": 0.05},
            {"name": "mask_head", "params": [_MASK_HEAD], "lr": 2e-5, "weight_decay": 0.02,
             "warmup_fraction": 0.15, "follows_mask_strength": True},
        ],
    },
}
"""Named policies. "page4d" is the official recipe (`training_final.yaml`): frame and global blocks 10-19
(peak 1e-5, wd 0.01, 5 % warm-up) and the spatial mask head (peak 2e-5, wd 0.02, 15 % warm-up) train."""



def preset_for_blocks(name: str, middle_blocks: Sequence[int] | None) -> FinetuneConfig:
    """`FINETUNE_PRESETS[name]` with its block globs (blocks 10-19) renamed to `middle_blocks` (unchanged if None or
    10-19): the same policy names and roles for a model of another depth."""
    config = copy.deepcopy(FINETUNE_PRESETS[name])
    if middle_blocks is None or tuple(middle_blocks) == tuple(range(10, 20)):
        return config
    renamed = {glob: [f"aggregator.{kind}.{i}.*" for i in middle_blocks]
               for glob, kind in zip(_BLOCKS_10_19, ("frame_blocks", "global_blocks"))}

    def rename(globs: list[str]) -> list[str]:
        return [new for glob in globs for new in renamed.get(glob, [glob])]

    config["trainable"] = rename(config["trainable"])
    for group in config["groups"]:
        group["params"] = rename(group["params"])
    return config


_GROUP_KEYS = {"name", "params", "lr", "weight_decay", "warmup_fraction", "min_lr", "follows_mask_strength"}
POLICY_SUFFIXES = (".yaml", ".yml")


def read_finetune_file(path: str) -> FinetuneConfig:
    """The `FinetuneConfig` dict held by the YAML file `path`, checked (`FinetunePolicy.from_config`).

    Raises ValueError naming the file when it is not a `.yaml`/`.yml` file, cannot be read, or is not a valid policy.
    """
    if not path.endswith(POLICY_SUFFIXES):
        raise ValueError(f"finetune: unknown preset {path!r}; available: {sorted(FINETUNE_PRESETS)}"
                         " (or a .yaml/.yml file holding a {trainable, groups} policy)")
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"finetune: cannot read the policy file {path}: {err}") from None
    try:
        if not isinstance(config, dict):
            raise ValueError(f"expected a mapping, got {type(config).__name__}")
        FinetunePolicy.from_config(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"finetune: {path} is not a valid policy ({{trainable, groups}}): {err}") from None
    return config


@dataclass(frozen=True)
class ParamGroupSpec:
    """A validated parameter group: globs, peak LR, weight decay and schedule shape."""

    name: str
    params: tuple[str, ...]
    lr: float
    weight_decay: float = 0.0
    warmup_fraction: float = 0.0
    min_lr: float = 1e-8
    follows_mask_strength: bool = False

    def __post_init__(self) -> None:
        where = f"finetune group {self.name!r}"
        if not self.params:
            raise ValueError(f"{where}: params: expected at least one glob, got none")
        if not self.lr > 0:
            raise ValueError(f"{where}: lr: expected > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"{where}: min_lr: expected in [0, lr={self.lr}], got {self.min_lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"{where}: weight_decay: expected >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"{where}: warmup_fraction: expected in [0, 1), got {self.warmup_fraction}")


@dataclass(frozen=True)
class FinetunePolicy:
    """Which parameters train (`trainable` globs) and in which optimiser group (`groups`)."""

    trainable: tuple[str, ...]
    groups: tuple[ParamGroupSpec, ...]

    def __post_init__(self) -> None:
        names = [g.name for g in self.groups]
        if not self.groups or len(set(names)) != len(names):
            raise ValueError(f"finetune groups: expected at least one group and unique names, got {names}")

    @classmethod
    def from_config(cls, config: FinetuneConfig | str, middle_blocks: Sequence[int] | None = None) -> FinetunePolicy:
        """Build from a preset name (see `FINETUNE_PRESETS`), a `.yaml`/`.yml` file or a `FinetuneConfig` dict.

        `middle_blocks`: the model's bias blocks (`PAGE4DConfig.bias_blocks`); a preset's block globs then name
        those blocks, so "page4d" trains the middle blocks of a shallower model too (10-19 for the official one)."""
        if isinstance(config, str):
            if config not in FINETUNE_PRESETS:
                return cls.from_config(read_finetune_file(config))
            config = preset_for_blocks(config, middle_blocks)
        if not isinstance(config, dict) or set(config) != {"trainable", "groups"}:
            seen = sorted(config) if isinstance(config, dict) else type(config).__name__
            raise ValueError(f"finetune: expected a preset name or keys ['groups', 'trainable'], got {seen}")
        groups = []
        for i, group in enumerate(config["groups"]):
            unknown, missing = set(group) - _GROUP_KEYS, {"name", "params", "lr"} - set(group)
            if unknown or missing:
                raise ValueError(f"finetune groups[{i}]: unknown keys {sorted(unknown)}, missing {sorted(missing)}")
            groups.append(ParamGroupSpec(**{**group, "params": tuple(group["params"])}))
        return cls(trainable=tuple(config["trainable"]), groups=tuple(groups))

    @classmethod
    def page4d(cls) -> FinetunePolicy:
        """The official PAGE-4D recipe (`FINETUNE_PRESETS["page4d"]`)."""
        return cls.from_config("page4d")

    @classmethod
    def full(cls, lr: float, weight_decay: float, warmup_fraction: float, min_lr: float) -> FinetunePolicy:
        """Everything trainable, one group "all" (training from scratch, `experiments/synthetic.yaml`)."""
        return cls(("*",), (ParamGroupSpec("all", ("*",), lr, weight_decay, warmup_fraction, min_lr),))

    # --------------------------------------------------------------------------------- applying it
    def freeze(self, model: nn.Module) -> int:
        """Set `requires_grad` of every parameter of `model` from `trainable` (once); returns the
        number of trainable tensors. A parameter the model builds frozen (the encoder's unused `mask_token`)
        stays frozen: training it would leave DDP with a parameter that never gets a gradient.
        Raises ValueError naming a glob that matches no parameter."""
        names = [n for n, _ in model.named_parameters()]
        for pattern in self.trainable:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ValueError(f"finetune trainable: pattern {pattern!r} matches no parameter of the model")
        count = 0
        for name, param in model.named_parameters():
            param.requires_grad_(param.requires_grad and any(fnmatch.fnmatchcase(name, p) for p in self.trainable))
            count += int(param.requires_grad)
        return count

    def assign(self, model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Group name -> its trainable (name, parameter) pairs. Raises ValueError naming a trainable
        parameter in no group or in two, or a group glob that matches no trainable parameter."""
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        out: dict[str, list[tuple[str, nn.Parameter]]] = {g.name: [] for g in self.groups}
        for group in self.groups:
            for pattern in group.params:
                if not any(fnmatch.fnmatchcase(n, pattern) for n, _ in trainable):
                    raise ValueError(
                        f"finetune group {group.name!r}: pattern {pattern!r} matches no trainable parameter"
                    )
        for name, param in trainable:
            owners = [g.name for g in self.groups if any(fnmatch.fnmatchcase(name, p) for p in g.params)]
            if len(owners) != 1:
                problem = "is in no group" if not owners else f"is in {len(owners)} groups {owners}"
                raise ValueError(f"finetune: trainable parameter {name!r} {problem}; it must be in exactly one")
            out[owners[0]].append((name, param))
        return out

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """AdamW parameter groups, in `groups` order: params, name, lr (peak), weight_decay and
        follows_mask_strength (extra keys are kept by torch optimisers and read by LearningRateMonitor)."""
        assigned = self.assign(model)
        return [
            {
                "params": [p for _, p in assigned[g.name]],
                "name": g.name,
                "lr": g.lr,
                "weight_decay": g.weight_decay,
                "follows_mask_strength": g.follows_mask_strength,
            }
            for g in self.groups
        ]

    def table(self, model: nn.Module) -> list[dict[str, Any]]:
        """One row per group plus "frozen" and "total": tensors, parameters, share, lr, wd, warm-up."""
        assigned = self.assign(model)
        total = sum(p.numel() for p in model.parameters())
        frozen = [p for p in model.parameters() if not p.requires_grad]
        rows = []
        for g in self.groups:
            numel = sum(p.numel() for _, p in assigned[g.name])
            rows.append({"group": g.name, "tensors": len(assigned[g.name]), "parameters": numel, "lr": g.lr,
                         "weight_decay": g.weight_decay, "warmup_fraction": g.warmup_fraction,
                         "follows_mask_strength": g.follows_mask_strength})
        rows.append({"group": "frozen", "tensors": len(frozen), "parameters": sum(p.numel() for p in frozen)})
        rows.append({"group": "total", "tensors": len(list(model.parameters())), "parameters": total})
        for row in rows:
            row["share"] = row["parameters"] / max(1, total)
        return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of `FinetunePolicy.table` rows (renders in TensorBoard's text tab)."""
    lines = ["| group | tensors | parameters | share | peak lr | weight decay | warm-up | follows mask |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        opt = (f"{r['lr']:.3g} | {r['weight_decay']:.3g} | {r['warmup_fraction']:.0%} | "
               f"{'yes' if r['follows_mask_strength'] else 'no'}") if "lr" in r else " | | | "
        lines.append(f"| {r['group']} | {r['tensors']} | {r['parameters']:,} | {r['share']:.2%} | {opt} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ schedules
@dataclass(frozen=True)
class WarmupCosine:
    """LR at optimiser step `step` (0-based): linear `start -> peak` over `warmup_steps`, then cosine
    `peak -> end`, reaching `end` at `total_steps` (and staying there)."""

    peak: float
    warmup_steps: int
    total_steps: int
    start: float = 1e-8
    end: float = 1e-8

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start + (self.peak - self.start) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.end + (self.peak - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))


class GroupLRScheduler(LRScheduler):
    """Sets param group i's LR to `schedules[i](step)` (absolute values, not factors of a base LR).

    The schedules are configuration: `state_dict` keeps only the step counter, and `load_state_dict`
    re-applies the schedules at the restored step, so a resumed run follows the current config.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedules: Sequence[Callable[[int], float]]) -> None:
        if len(schedules) != len(optimizer.param_groups):
            raise ValueError(
                f"schedules: expected one per param group ({len(optimizer.param_groups)}), got {len(schedules)}"
            )
        self.schedules = list(schedules)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [float(schedule(self.last_epoch)) for schedule in self.schedules]

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "schedules")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr


class MaskScheduleConfig(TypedDict):
    """`Page4DModule(mask_schedule=...)`: the dynamics-bias strength over optimiser steps."""

    hold: int  # strength 1 before this optimiser step
    end: int  # strength 0 from this step on; a half cosine in between
    eval_strength: NotRequired[float]  # validation / test strength, default 0 (the official evaluation: bias off)


def mask_strength_at(step: int, hold: int, end: int) -> float:
    """1 before `hold`, 0 from `end`, 0.5 (1 + cos(pi (step - hold) / (end - hold))) in between."""
    if step < hold:
        return 1.0
    if step >= end:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - hold) / (end - hold)))


@dataclass(frozen=True)
class MaskSchedule:
    """The mask strength as a function of the optimiser step (`trainer.global_step`): the one owner of that value.

    `Page4DModule` sets the model's strength from it before every training batch, uses `eval_strength` for
    validation and test, and gates the LR of the groups marked `follows_mask_strength` with the same function
    (`build_scheduler`). The official code counts forward passes and does not checkpoint its counter; the
    optimiser step is restored on resume, so a resumed run continues the same schedule.
    """

    hold: int
    end: int
    eval_strength: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.hold <= self.end:
            raise ValueError(f"mask_schedule: expected 0 <= hold <= end, got hold={self.hold}, end={self.end}")
        if not 0.0 <= self.eval_strength:
            raise ValueError(f"mask_schedule: eval_strength expected >= 0, got {self.eval_strength}")

    def strength_at(self, step: int) -> float:
        """Training strength at optimiser step `step`."""
        return mask_strength_at(step, self.hold, self.end)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    policy: FinetunePolicy,
    total_steps: int,
    mask_strength_at: Callable[[int], float],
) -> GroupLRScheduler:
    """Per-group warm-up + cosine over `total_steps` optimiser steps (`optimizer` built from
    `policy.param_groups`, same order).

    Mask gating: a group with `follows_mask_strength` gets LR exactly 0 at every step s with
    `mask_strength_at(s) == 0`, so neither its gradient (zero then: the bias is multiplied by 0) nor
    AdamW's momentum or weight decay moves it. `mask_strength_at` must be the same function of the
    optimiser step that sets the model's strength (`MaskSchedule.strength_at`, keyed by
    `trainer.global_step`, which equals this scheduler's step count), so the two agree by construction.
    """
    total_steps = max(1, int(total_steps))

    def make(group: ParamGroupSpec) -> Callable[[int], float]:
        base = WarmupCosine(group.lr, int(group.warmup_fraction * total_steps), total_steps, group.min_lr, group.min_lr)
        if not group.follows_mask_strength:
            return base
        return lambda step: 0.0 if mask_strength_at(step) == 0 else base(step)

    return GroupLRScheduler(optimizer, [make(g) for g in policy.groups])
