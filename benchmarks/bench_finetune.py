"""Targeted fine-tuning (the PAGE-4D policy): tiny-preset training steps/s on the CPU, and for the full
VGGT-1B preset the trainable / frozen parameter counts per group and the AdamW state memory.

The AdamW figure is measured: the bytes of the optimiser's state tensors after one step with zero
gradients, against what a full fine-tune keeps (exp_avg + exp_avg_sq per parameter + a step scalar).
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import time_it, write_result

from page4d_lightning.finetune import FinetunePolicy
from page4d_lightning.losses import MultitaskLoss
from page4d_lightning.models import PAGE4D, PAGE4DConfig
from page4d_lightning.module import DEFAULT_LOSS


def _batch(b: int, s: int, size: int) -> dict[str, torch.Tensor]:
    from datamodules import SyntheticDynamicDataset, collate_clips

    ds = SyntheticDynamicDataset(num_frames=s, image_size=size, num_clips=b)
    return collate_clips([ds[i] for i in range(b)])


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))


def _adam_bytes(params: list[torch.nn.Parameter]) -> int:
    """exp_avg + exp_avg_sq in the parameter dtype, plus the float32 step scalar, per parameter tensor."""
    return sum(2 * p.numel() * p.element_size() + 4 for p in params)


def tiny_steps(policy: FinetunePolicy | None, quick: bool, b: int = 2, s: int = 4, size: int = 112) -> dict:
    """Forward + loss + backward + global-norm clip + AdamW step of the tiny preset under `policy`
    (None: full training, one group)."""
    torch.manual_seed(0)
    model = PAGE4D(PAGE4DConfig.tiny()).train()
    model.set_mask_strength(1.0)
    policy = policy or FinetunePolicy.full(lr=1e-4, weight_decay=0.05, warmup_fraction=0.0, min_lr=1e-8)
    policy.freeze(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(policy.param_groups(model))
    loss_fn, batch = MultitaskLoss(**DEFAULT_LOSS), _batch(b, s, size)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(batch["images"]), batch)["objective"].backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()

    timing = time_it(step, min_run_time=1.0 if quick else 5.0)
    return {"trainable_parameters": sum(p.numel() for p in trainable), **timing, "steps_per_s": 1 / timing["median_s"]}


def full_preset_memory() -> dict:
    """Parameter counts per group and AdamW state bytes of VGGT-1B (no track head) under the PAGE-4D policy."""
    torch.manual_seed(0)
    model = PAGE4D(PAGE4DConfig.vggt_1b(enable_track=False))
    policy = FinetunePolicy.page4d()
    policy.freeze(model)
    rows = policy.table(model)
    optimizer = torch.optim.AdamW(policy.param_groups(model))
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    measured = _state_bytes(optimizer)
    result = {
        "groups": [{k: r[k] for k in ("group", "tensors", "parameters", "share")} for r in rows],
        "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "adamw_state_bytes": measured,
        "adamw_state_bytes_expected": _adam_bytes(trainable),
        "adamw_state_bytes_full_finetune": _adam_bytes(list(model.parameters())),
        "gradient_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "gradient_bytes_full_finetune": sum(p.numel() * p.element_size() for p in model.parameters()),
    }
    result["adamw_state_saving"] = 1 - measured / result["adamw_state_bytes_full_finetune"]
    del model, optimizer, trainable
    gc.collect()
    return result


def run(quick: bool = False) -> dict:
    result = {
        "what": "tiny preset train step (fwd + loss + bwd + clip + AdamW), B=2, S=4, 112x112 synthetic",
        "tiny_page4d_policy": tiny_steps(FinetunePolicy.page4d(), quick),
        "tiny_full_training": tiny_steps(None, quick),
    }
    if not quick:
        result["vggt_1b_page4d_policy"] = full_preset_memory()
    return result


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    write_result("finetune", result)
    print(json.dumps(result, indent=2))
