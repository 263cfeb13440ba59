"""Tiny-preset training step time on the CPU: forward + MultitaskLoss + backward + AdamW step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import time_it, write_result

from page4d_lightning.losses import MultitaskLoss
from page4d_lightning.models import PAGE4D, PAGE4DConfig
from page4d_lightning.module import DEFAULT_LOSS


def _batch(b: int, s: int, hw: tuple[int, int]) -> dict[str, torch.Tensor]:
    from datamodules import SyntheticDynamicDataset, collate_clips

    ds = SyntheticDynamicDataset(num_frames=s, image_size=hw[1], aspect_ratio=hw[0] / hw[1], num_clips=b)
    return collate_clips([ds[i] for i in range(b)])


def run(quick: bool = False, batch_size: int = 2, num_frames: int = 4, image_hw: tuple[int, int] = (140, 140)) -> dict:
    torch.manual_seed(0)
    model = PAGE4D(PAGE4DConfig.tiny()).train()
    model.set_mask_strength(1.0)
    loss_fn = MultitaskLoss(**DEFAULT_LOSS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = _batch(batch_size, num_frames, image_hw)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(batch["images"]), batch)["objective"].backward()
        optimizer.step()

    timing = time_it(step, min_run_time=1.0 if quick else 5.0)
    return {
        "what": "tiny preset train step (forward + loss + backward + AdamW)",
        "batch_size": batch_size,
        "num_frames": num_frames,
        "image_hw": list(image_hw),
        "parameters": sum(p.numel() for p in model.parameters()),
        **timing,
        "steps_per_s": 1.0 / timing["median_s"],
    }


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    write_result("train_step_tiny", result)
    print(json.dumps(result, indent=2))
