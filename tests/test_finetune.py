"""Targeted fine-tuning: the freeze policy trains exactly the unfrozen parameters, each group follows its
warm-up + cosine schedule, the mask head's LR is 0 (and it does not move) while the mask strength is 0,
bad policies fail by name, and the group table is logged (`page4d analyze-layers`: test_analyze_layers.py)."""

from __future__ import annotations

import copy
import logging
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from datamodules import Page4DDataModule
from page4d_lightning.cli import main
from page4d_lightning.finetune import (
    FINETUNE_PRESETS,
    FinetunePolicy,
    GroupLRScheduler,
    WarmupCosine,
)
from page4d_lightning.models import PAGE4D, PAGE4DConfig
from page4d_lightning.module import Page4DModule

ROOT = Path(__file__).resolve().parents[1]
STEPS, HOLD, END = 6, 2, 4  # strength 1 on steps 0-2, 0.5 on 3, 0 on 4-5
MASK = "aggregator.spatial_mask_head."


def _policy() -> dict:
    """The PAGE-4D freeze set with larger LRs (so every step visibly moves the weights) and warm-ups
    that span a few of the STEPS steps."""
    config = copy.deepcopy(FINETUNE_PRESETS["page4d"])
    frame, glob, mask = config["groups"]
    frame.update(lr=1e-3, warmup_fraction=0.34)  # int(0.34 * 6) = 2 warm-up steps
    glob.update(lr=5e-4, weight_decay=0.0, warmup_fraction=0.0)
    mask.update(lr=2e-3, warmup_fraction=0.34)
    return config


class _Recorder(Callback):
    """Per optimiser step: group LRs, mask strength, requires_grad; mask-head weights when it turns off."""

    def __init__(self) -> None:
        self.lrs: list[dict[str, float]] = []
        self.strength: list[float] = []
        self.requires_grad: list[dict[str, bool]] = []
        self.mask_head_at_end: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == END:
            self.mask_head_at_end = {
                n: p.detach().clone() for n, p in pl_module.model.named_parameters() if n.startswith(MASK)
            }

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        self.strength.append(pl_module.model.mask_strength)
        self.requires_grad.append({n: p.requires_grad for n, p in pl_module.model.named_parameters()})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One short fine-tuning run under the PAGE-4D freeze set, with gradient clipping spied on."""
    torch.manual_seed(0)
    module = Page4DModule(preset="tiny", finetune=_policy(), mask_schedule={"hold": HOLD, "end": END})
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    requires_grad = {n: p.requires_grad for n, p in module.model.named_parameters()}
    clipped: list[dict] = []
    real_clip = module.clip_gradients  # LightningModule's public clipping API, called on every step

    def grad_norm(params: list[torch.Tensor]) -> float:
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))

    def spy(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        before = grad_norm(params)
        real_clip(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)
        clipped.append({"params": {id(p) for p in params}, "val": gradient_clip_val, "norm_before": before,
                        "norm_after": grad_norm(params)})

    recorder = _Recorder()
    data = Page4DDataModule("synthetic", num_frames=2, image_size=56, batch_size=1, train={"num_clips": STEPS})
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        default_root_dir=tmp_path_factory.mktemp("run"), max_steps=STEPS, limit_val_batches=0,
        gradient_clip_val=1.0, callbacks=[recorder],
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "clip_gradients", spy)
        trainer.fit(module, datamodule=data)
    return {"module": module, "trainer": trainer, "before": before, "requires_grad": requires_grad,
            "clipped": clipped, "recorder": recorder}


def _unfrozen(name: str) -> bool:
    """The PAGE-4D trainable set, written independently of the globs."""
    return bool(re.match(r"aggregator\.(frame|global)_blocks\.1\d\.", name)) or name.startswith(MASK)


def test_only_the_unfrozen_parameters_train(run: dict) -> None:
    model = run["module"].model
    assert run["trainer"].global_step == STEPS
    for name, param in model.named_parameters():
        assert param.requires_grad == _unfrozen(name), name
        if _unfrozen(name):
            assert not torch.equal(param, run["before"][name]), f"trainable {name} did not move"
        else:
            assert torch.equal(param, run["before"][name]), f"frozen {name} changed"
            assert param.grad is None, f"frozen {name} got a gradient"
    assert len(run["recorder"].requires_grad) == STEPS
    assert all(rg == run["requires_grad"] for rg in run["recorder"].requires_grad), "requires_grad flipped mid-run"


def test_one_optimizer_step_per_iteration_clipping_only_trainable(run: dict) -> None:
    optimizer = run["trainer"].optimizers[0]
    trainable = {id(p) for p in run["module"].model.parameters() if p.requires_grad}
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == trainable
    clipped = run["clipped"]
    assert len(clipped) == STEPS and all(c["params"] == trainable for c in clipped)
    assert all(c["val"] == 1.0 for c in clipped), clipped
    # the effect on the values (norm clipping): the total gradient norm ends at most 1.0, scaled to 1.0 where above
    assert all(c["norm_after"] <= 1.0 + 1e-5 for c in clipped), clipped
    assert any(c["norm_before"] > 1.0 for c in clipped), "no step needed clipping: the check would be vacuous"
    for c in clipped:
        expected = min(c["norm_before"], 1.0)
        assert c["norm_after"] == pytest.approx(expected, rel=1e-4), c
    assert {float(s["step"]) for s in optimizer.state.values()} == {float(STEPS)}
    assert run["trainer"].lr_scheduler_configs[0].scheduler.last_epoch == STEPS


def _expected_lr(step: int, peak: float, warmup: int, floor: float = 1e-8, total: int = STEPS) -> float:
    """Hand formula: linear floor -> peak over `warmup` steps, then cosine peak -> floor at `total`."""
    if step < warmup:
        return floor + (peak - floor) * step / warmup
    return floor + (peak - floor) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2


def test_group_lrs_follow_warmup_cosine_and_the_mask_gate(run: dict) -> None:
    lrs, strength = run["recorder"].lrs, run["recorder"].strength
    assert strength == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.0, 0.0], abs=1e-12)
    for step in range(STEPS):
        assert lrs[step]["frame_blocks"] == pytest.approx(_expected_lr(step, 1e-3, 2), rel=1e-9, abs=0)
        assert lrs[step]["global_blocks"] == pytest.approx(_expected_lr(step, 5e-4, 0), rel=1e-9, abs=0)
        if step < END:
            assert strength[step] > 0
            assert lrs[step]["mask_head"] == pytest.approx(_expected_lr(step, 2e-3, 2), rel=1e-9, abs=0)
        else:
            assert strength[step] == 0.0 and lrs[step]["mask_head"] == 0.0, step
    # spot values: peak after warm-up; warm-up starts at 1e-8; global cosine half-way at step 3 of 6
    assert lrs[2]["frame_blocks"] == pytest.approx(1e-3, rel=1e-12)
    assert lrs[0]["mask_head"] == pytest.approx(1e-8, rel=1e-12)
    assert lrs[3]["global_blocks"] == pytest.approx(1e-8 + (5e-4 - 1e-8) * 0.5, rel=1e-9)


def test_mask_head_does_not_move_while_the_strength_is_zero(run: dict) -> None:
    at_end = run["recorder"].mask_head_at_end
    assert at_end, "the run reached the step where the strength turns 0"
    for name, param in run["module"].model.named_parameters():
        if name.startswith(MASK):
            assert not torch.equal(at_end[name], run["before"][name]), f"{name} never trained"
            assert torch.equal(param.detach(), at_end[name]), f"{name} moved at strength 0"


def test_fit_start_logs_the_group_table(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    module = Page4DModule(preset="tiny", finetune="page4d")
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = L.Trainer(accelerator="cpu", logger=tb, enable_checkpointing=False, enable_progress_bar=False,
                        limit_train_batches=0, limit_val_batches=0, max_steps=1)
    data = Page4DDataModule("synthetic", num_frames=2, image_size=56, train={"num_clips": 1})
    # no mask_schedule and strength 0: the mask head can never train, and the module says so
    with caplog.at_level(logging.INFO, logger="page4d_lightning.module"), pytest.warns(
        UserWarning, match="'mask_head' follows the mask strength, which is 0 from step 0"
    ):
        trainer.fit(module, datamodule=data)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "page4d_lightning.module")
    params = dict(module.model.named_parameters())
    counts = {
        "frame_blocks": sum(p.numel() for n, p in params.items() if re.match(r"aggregator\.frame_blocks\.1\d\.", n)),
        "global_blocks": sum(p.numel() for n, p in params.items() if re.match(r"aggregator\.global_blocks\.1\d\.", n)),
        "mask_head": sum(p.numel() for n, p in params.items() if n.startswith(MASK)),
        "frozen": sum(p.numel() for n, p in params.items() if not _unfrozen(n)),
    }
    for group, count in counts.items():
        assert re.search(rf"\| {group} \| \d+ \| {count:,} \|", text), (group, count, text)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(tb.log_dir)), size_guidance={"tensors": 0}).Reload()
    # the writer may suffix the tag (torch's writes "<tag>/text_summary"); the table it holds is the logged one
    (tag,) = [t for t in events.Tags()["tensors"] if t.startswith("finetune/parameter_groups")]
    (logged,) = events.Tensors(tag)
    table = logged.tensor_proto.string_val[0].decode()
    for group, count in counts.items():
        assert re.search(rf"\| {group} \| \d+ \| {count:,} \|", table), (group, count, table)


@pytest.fixture(scope="module")
def tiny() -> PAGE4D:
    return PAGE4D(PAGE4DConfig.tiny())


def _config(trainable: list[str], groups: list[tuple[str, list[str]]]) -> dict:
    return {"trainable": trainable, "groups": [{"name": n, "params": p, "lr": 1e-4} for n, p in groups]}


def test_bad_policies_fail_by_name(tiny: PAGE4D) -> None:
    blocks, mask = "aggregator.frame_blocks.1[0-9].*", "aggregator.spatial_mask_head.*"
    cases = [
        (_config(["aggregator.frame_block.*"], [("g", ["*"])]), "pattern 'aggregator.frame_block.\\*' matches no"),
        (_config([blocks, mask], [("a", [blocks]), ("b", ["aggregator.frame_blocks.10.*", mask])]),
         "'aggregator.frame_blocks.10.norm1.weight' is in 2 groups \\['a', 'b'\\]"),
        (_config([blocks, mask], [("a", [blocks])]), "'aggregator.spatial_mask_head.head0.0.weight' is in no group"),
        (_config([blocks], [("a", [blocks, "camera_head.*"])]), "group 'a': pattern 'camera_head.\\*' matches no"),
    ]
    for config, message in cases:
        policy = FinetunePolicy.from_config(config)
        with pytest.raises(ValueError, match=message):
            policy.freeze(tiny)
            policy.assign(tiny)
    with pytest.raises(ValueError, match="unknown preset 'page5'; available: \\['page4d'\\]"):
        FinetunePolicy.from_config("page5")
    with pytest.raises(ValueError, match=r"groups\[0\]: unknown keys \['lrr'\], missing \['lr'\]"):
        FinetunePolicy.from_config({"trainable": ["*"], "groups": [{"name": "a", "params": ["*"], "lrr": 1.0}]})
    with pytest.raises(ValueError, match="warmup_fraction"):
        FinetunePolicy.from_config({"trainable": ["*"], "groups": [{"name": "a", "params": ["*"], "lr": 1.0,
                                                                   "warmup_fraction": 1.0}]})
    with pytest.raises(ValueError, match="'aggregator.frame_blocks.10.norm1.weight' is in no group"):
        Page4DModule(preset="tiny", finetune=_config([blocks], [("a", ["aggregator.frame_blocks.11.*"])]))


def test_default_is_one_group_over_everything() -> None:
    tiny = PAGE4D(PAGE4DConfig.tiny())  # fresh: the module-scoped fixture has been frozen by other tests
    policy = FinetunePolicy.full(lr=1e-4, weight_decay=0.05, warmup_fraction=0.05, min_lr=1e-8)
    built_frozen = [n for n, p in tiny.named_parameters() if not p.requires_grad]
    assert built_frozen == ["aggregator.patch_embed.mask_token"]  # unused by the model, so it stays frozen
    trainable = len(list(tiny.parameters())) - 1
    assert policy.freeze(tiny) == trainable
    (group,) = policy.param_groups(tiny)
    assert len(group["params"]) == trainable and group["weight_decay"] == 0.05


def test_scheduler_state_is_only_the_step_and_resumes_from_config(tmp_path: Path) -> None:
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    schedules = [WarmupCosine(1e-3, 2, 10), lambda step: 0.0 if step >= 4 else 1e-4]

    def build() -> tuple[torch.optim.Optimizer, GroupLRScheduler]:
        opt = torch.optim.AdamW([{"params": [params[0]]}, {"params": [params[1]]}])
        return opt, GroupLRScheduler(opt, schedules)

    opt, sched = build()
    for _ in range(5):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    opt2, sched2 = build()
    sched2.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert sched2.last_epoch == 5 and [g["lr"] for g in opt2.param_groups] == [schedules[0](5), 0.0]
    assert "schedules" not in sched.state_dict()


def test_finetune_experiment_prints_its_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(ROOT / "experiments" / "finetune_vggt.yaml"), "--print_config"])
    assert exc.value.code == 0
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["finetune"] == "page4d" and model["preset"] == "vggt_1b"
    assert model["weights"] == "checkpoints/model.pt"


def test_the_module_owns_the_mask_strength_in_training_and_evaluation(tmp_path: Path) -> None:
    """Training steps follow `mask_schedule`, validation runs at its `eval_strength`, and the LR gating of the mask
    head reads the same schedule (no callback involved)."""
    seen: dict[str, list[float]] = {"train": [], "val": []}

    class Probe(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # the strength of that step
            seen["train"].append(pl_module.model.mask_strength)

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen["val"].append(pl_module.model.mask_strength)

    module = Page4DModule(preset="tiny", mask_schedule={"hold": 1, "end": 3, "eval_strength": 0.25})
    data = Page4DDataModule("synthetic", num_frames=2, image_size=28, train={"num_clips": 4},
                            val={"num_clips": 1, "split": "val"})
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        max_steps=4, val_check_interval=2, num_sanity_val_steps=0, callbacks=[Probe()],
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert seen["train"] == pytest.approx([1.0, 1.0, 0.5, 0.0])
    assert seen["val"] == [0.25, 0.25]
    with pytest.raises(ValueError, match="mask_schedule: expected 0 <= hold <= end"):
        Page4DModule(preset="tiny", mask_schedule={"hold": 5, "end": 1})


def test_a_mask_on_checkpoint_is_evaluated_at_strength_one_on_every_sequence(tmp_path: Path) -> None:
    """`mask_schedule.eval_strength: 1` (the official `checkpoint_mask.pt` variant): every test sequence runs with
    the full bias, also after many sequences (the official scripts switch it off after N forwards, block.py:80)."""
    seen: list[float] = []

    class Probe(Callback):
        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen.append(pl_module.model.mask_strength)

    module = Page4DModule(preset="tiny", mask_schedule={"hold": 0, "end": 0, "eval_strength": 1.0})
    data = Page4DDataModule("synthetic", num_frames=2, image_size=28, test={"num_clips": 5, "split": "test"})
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[Probe()],
                        default_root_dir=tmp_path)
    trainer.test(module, datamodule=data)
    assert seen == [1.0] * 5
