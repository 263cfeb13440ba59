"""The resolved `experiments/paper_mixture.yaml` (as `page4d fit --print_config` prints it) against the official
run's values, read from kaichen-z/PAGE4D @9f4ef74 (training/config/training_final.yaml = tf.yaml, file:line
beside each value). A change to the experiment, a base config or a default that moves a value fails here.
The deliberate differences are listed in README.md ("The official recipe") and are not in these tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from page4d_lightning.finetune import FINETUNE_PRESETS
from page4d_lightning.module import DEFAULT_LOSS
from tests.page4d_process import ROOT, explain, run_page4d

OFFICIAL: dict[str, tuple[Any, str]] = {
    "seed_everything": (42, "tf.yaml:7 seed_value"),
    "trainer.max_steps": (33600, "tf.yaml:14,320 + trainer_gra.py:781-785: 1600 epochs x 21 iterations"),
    "trainer.accumulate_grad_batches": (2, "tf.yaml:10 accum_steps"),
    "trainer.precision": ("bf16-mixed", "tf.yaml:235-237 amp bfloat16"),
    "model.preset": ("vggt_1b", "VGGT-1B architecture"),
    "model.model_overrides.enable_track": (False, "tf.yaml:327"),
    "model.finetune": ("page4d", "tf.yaml:200-233 frozen modules, 257-318 LR / WD groups"),
    "model.loss": (None, "module.DEFAULT_LOSS = tf.yaml:175-191 (checked below)"),
    "model.mask_schedule.hold": (3000, "tf.yaml:328: 6000 mask-head forwards, 2 per iteration (block.py:80)"),
    "model.mask_schedule.end": (5000, "tf.yaml:329: 10000 forwards"),
    "data.init_args.image_size": (518, "tf.yaml:5 img_size"),
    "data.init_args.clip_shapes.num_frames": ([2, 16], "dynamic_dataloader.py:118-126"),
    "data.init_args.clip_shapes.frames_per_batch": (32, "tf.yaml:11 max_img_per_gpu"),
    "data.init_args.clip_shapes.aspect_ratio": ([0.33, 1.0], "dynamic_dataloader.py:157-169"),
    "data.init_args.clip_shapes.chunks": (2, "trainer_gra.py:796-806: 2 chunks of floor(n / 2) clips"),
    "data.init_args.train.samples_per_epoch": (48000, "tf.yaml:35-88: the len_train total"),
    "data.init_args.train.augment": ("official", "base_dataset.py:238-281, default_dataset_fin.yaml:22-45"),
}

# (dataset, split, eye) -> (len_train = our weight, frame sampling), tf.yaml:31-88 and each reader's class defaults
OFFICIAL_COMPONENTS: dict[tuple[str, str, str | None], tuple[int, Any]] = {
    ("pointodyssey", "train", None): (5000, [1, 8]),      # tf.yaml:31-35, odyssey.py:96-97
    ("pointodyssey", "val", None): (1000, [1, 8]),        # tf.yaml:36-40
    ("pointodyssey", "test", None): (1000, [1, 8]),       # tf.yaml:41-45
    ("dynamic_replica", "train", None): (10000, [1, 4]),  # tf.yaml:47-51, dynamicreplica.py:85
    ("dynamic_replica", "val", None): (1000, [1, 4]),     # tf.yaml:52-56
    ("kubric", "train", None): (5000, 1),                 # tf.yaml:58-62, kubric.py:103
    ("spring", "train", "left"): (2500, [1, 3]),          # tf.yaml:70-75, spring.py:89
    ("spring", "train", "right"): (2500, [1, 3]),         # tf.yaml:64-69
    ("co3d", "train", None): (10000, "random_with_replacement"),  # tf.yaml:77-82, co3d.py:282-293
    ("waymo", "train", None): (10000, [1, 4]),            # tf.yaml:84-88, waymo.py:171
}

# tf.yaml:257-318: per group (peak LR, weight decay, warm-up share, start / end LR)
OFFICIAL_GROUPS = {
    "frame_blocks": (1e-5, 0.01, 0.05, 1e-8),
    "global_blocks": (1e-5, 0.01, 0.05, 1e-8),
    "mask_head": (2e-5, 0.02, 0.15, 1e-8),
}
OFFICIAL_TRAINABLE = {"aggregator.frame_blocks.1[0-9].*", "aggregator.global_blocks.1[0-9].*",
                      "aggregator.spatial_mask_head.*"}  # tf.yaml:200-233 + trainer_gra.py:455-458


def _get(config: dict, dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        assert isinstance(node, dict) and key in node, f"{dotted}: missing in the resolved config"
        node = node[key]
    return node


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict:
    run = run_page4d("fit", "--config", str(ROOT / "experiments" / "paper_mixture.yaml"), "--print_config",
                     cwd=Path(tmp_path_factory.mktemp("print_config")))
    assert run.returncode == 0, explain(run)
    return yaml.safe_load(run.stdout)


@pytest.mark.parametrize("key", sorted(OFFICIAL))
def test_resolved_value_is_the_official_one(resolved: dict, key: str) -> None:
    value, source = OFFICIAL[key]
    assert _get(resolved, key) == value, f"{key}: the official run used {value!r} ({source})"


def test_training_components_are_the_official_datasets_splits_and_strides(resolved: dict) -> None:
    train = resolved["data"]["init_args"]["train"]
    assert resolved["data"]["init_args"]["dataset"] == "mixture"
    found = {}
    for label, component in train["components"].items():
        dataset = component.get("dataset", label)
        split = component.get("split", train.get("split", "train"))
        eyes = component.get("eyes")
        eye = None if eyes is None else (eyes if isinstance(eyes, str) else "+".join(eyes))
        sampling = component.get("frame_sampling", "contiguous")
        frames = sampling if sampling != "contiguous" else component.get("stride", train.get("stride", 1))
        assert (dataset, split, eye) not in found, f"{label}: a second component for {dataset}/{split}/{eye}"
        found[(dataset, split, eye)] = (component["weight"], frames)
    assert found == OFFICIAL_COMPONENTS


def test_validation_never_uses_a_split_the_official_run_trained_on(resolved: dict) -> None:
    trained = {(dataset, split) for dataset, split, _ in OFFICIAL_COMPONENTS}
    val = resolved["data"]["init_args"]["val"]
    for label, component in val["components"].items():
        pair = (component.get("dataset", label), component.get("split", val.get("split", "train")))
        assert pair not in trained, f"val component {label}: {pair} is trained on"


def test_the_page4d_policy_is_the_official_groups() -> None:
    policy = FINETUNE_PRESETS["page4d"]
    assert set(policy["trainable"]) == OFFICIAL_TRAINABLE
    groups = {g["name"]: (g["lr"], g.get("weight_decay", 0.0), g.get("warmup_fraction", 0.0), g.get("min_lr", 1e-8))
              for g in policy["groups"]}
    assert groups == OFFICIAL_GROUPS
    assert [g["name"] for g in policy["groups"] if g.get("follows_mask_strength")] == ["mask_head"]


def test_the_default_loss_is_the_official_one() -> None:
    assert DEFAULT_LOSS["camera"] == {"weight": 5.0, "loss_type": "l1"}  # tf.yaml:177-179
    assert DEFAULT_LOSS["depth"] == {"weight": 1.0, "gamma": 0.3, "alpha": 0.06, "gradient_loss_fn": "grad",
                                     "valid_range": 0.98}  # tf.yaml:180-185
    assert DEFAULT_LOSS["point"] == {"weight": 1.0, "gradient_loss_fn": "normal", "valid_range": 0.98}  # :186-189
    assert DEFAULT_LOSS.get("track", {"weight": 0.0})["weight"] == 0.0  # tf.yaml:190-191
