"""Page4DModule: a training run never steps on NaN/inf batches, stops after too many, and learns."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import Dataset

from datamodules import Page4DDataModule, SyntheticDynamicDataset, collate_clips, register_dataset
from page4d_lightning.module import Page4DModule, find_non_finite


class _PoisonedSynthetic(Dataset):
    """Synthetic clips whose images are NaN at every index in `bad` (all indices when bad is None)."""

    def __init__(self, root=None, num_frames=2, image_size=56, normalize=True, bad=None, num_clips=4) -> None:
        self.inner = SyntheticDynamicDataset(
            num_frames=num_frames, image_size=image_size, normalize=normalize, num_clips=num_clips
        )
        self.bad = bad

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict:
        sample = self.inner[index]
        if self.bad is None or index in self.bad:
            sample["images"][0, 0, 0, 0] = float("nan")
        return sample


register_dataset("poisoned_synthetic")(_PoisonedSynthetic)


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        **kwargs,
    )


def test_find_non_finite_names_the_keys() -> None:
    batch = {"images": torch.ones(2), "depths": torch.tensor([1.0, float("inf")]), "ids": torch.arange(2)}
    assert find_non_finite(batch) == ["depths"]


def test_all_bad_batches_are_skipped_and_the_run_stops(tmp_path: Path) -> None:
    data = Page4DDataModule("poisoned_synthetic", num_frames=2, image_size=56, train={})
    module = Page4DModule(preset="tiny", max_bad_steps=3)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = _trainer(tmp_path, max_steps=10, limit_val_batches=0)
    with pytest.warns(UserWarning, match="NaN/inf in \\['images'\\]"):
        trainer.fit(module, datamodule=data)
    assert module.bad_steps_total == 3, "the run stops after max_bad_steps consecutive bad batches"
    # Lightning still counts the (empty) optimiser call in global_step; no parameter had a gradient,
    # so AdamW kept no state and changed nothing
    assert len(trainer.optimizers[0].state) == 0, "the optimiser never saw a gradient"
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed although every batch was garbage"


def test_a_bad_batch_among_good_ones_is_skipped(tmp_path: Path) -> None:
    data = Page4DDataModule("poisoned_synthetic", num_frames=2, image_size=56, train={"bad": {1}, "num_clips": 3})
    module = Page4DModule(preset="tiny", max_bad_steps=3)
    trainer = _trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    with pytest.warns(UserWarning, match="skipped"):
        trainer.fit(module, datamodule=data)
    assert module.bad_steps_total == 1
    assert len(trainer.optimizers[0].state) > 0


def test_collate_adds_the_official_flags() -> None:
    ds = SyntheticDynamicDataset(num_frames=2, image_size=56, num_clips=2)
    batch = collate_clips([ds[0], ds[1]])
    assert batch["abandon_pose"].dtype == torch.bool and batch["abandon_pose"].shape == (2,)
    assert not batch["abandon_geometry"].any()
    assert batch["images"].shape == (2, 2, 3, 56, 56)
    assert batch["seq_name"] == [ds[0]["seq_name"], ds[1]["seq_name"]]


def test_datamodule_rejects_unknown_dataset_and_missing_split() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nope'; available: .*synthetic"):
        Page4DDataModule("nope")
    data = Page4DDataModule("synthetic", num_frames=2, image_size=56, train={})
    data.setup("fit")
    with pytest.raises(ValueError, match="'val' split is not configured"):
        data.val_dataloader()


def test_unknown_preset_and_override_are_errors() -> None:
    with pytest.raises(ValueError, match="preset"):
        Page4DModule(preset="huge")
    with pytest.raises(ValueError, match="no field 'nope'"):
        Page4DModule(preset="tiny", model_overrides={"nope": 1})


def test_validation_logs_overall_and_per_dataset_metrics(tmp_path: Path) -> None:
    data = Page4DDataModule("synthetic", num_frames=3, image_size=56, batch_size=2, val={"num_clips": 2})
    module = Page4DModule(preset="tiny")
    metrics = _trainer(tmp_path).validate(module, datamodule=data, verbose=False)[0]
    for key in ("val/ate", "val/rpe_trans", "val/rpe_rot", "val/abs_rel", "val/delta_1_25", "val/loss"):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), key
    assert metrics["val/synthetic/ate"] == pytest.approx(metrics["val/ate"])
    assert 0.0 <= metrics["val/delta_1_25"] <= 1.0


def test_point_and_tracking_metrics_when_enabled(tmp_path: Path) -> None:
    data = Page4DDataModule("synthetic", num_frames=2, image_size=56, val={"num_clips": 1, "num_tracks": 8})
    module = Page4DModule(preset="tiny", model_overrides={"enable_track": True}, point_metrics=True)
    metrics = _trainer(tmp_path).validate(module, datamodule=data, verbose=False)[0]
    for key in ("val/accuracy", "val/completeness", "val/normal_consistency", "val/delta_avg", "val/average_jaccard"):
        assert key in metrics and metrics[key] == metrics[key], key  # present and not NaN
    assert 0.0 <= metrics["val/delta_avg"] <= 1.0
