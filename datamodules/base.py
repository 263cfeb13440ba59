"""The DataModule base, the dataset registry and the clip collate function.

A dataset class turns files (or procedures) into one clip: the sample dict of
`page4d_lightning.types.Sample`. `Page4DDataModule` only builds those datasets per split from a
registry name and keyword arguments, and wraps them in DataLoaders; subclasses such as
`SyntheticDataModule` just fix the dataset name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from datamodules.sampling import ClipBatchSampler, EpochShuffleSampler

logger = logging.getLogger(__name__)

DATASETS: dict[str, type[Dataset]] = {}
"""Registry: dataset name -> Dataset class. Filled at import by `register_dataset`, then only read."""

SPLITS = ("train", "val", "test", "predict")


def register_dataset(name: str) -> Callable[[type[Dataset]], type[Dataset]]:
    """Class decorator adding a Dataset class to `DATASETS` under `name`."""

    def wrap(cls: type[Dataset]) -> type[Dataset]:
        if name in DATASETS and DATASETS[name] is not cls:
            raise ValueError(f"dataset name {name!r} is already registered to {DATASETS[name].__name__}")
        DATASETS[name] = cls
        return cls

    return wrap


def get_dataset_class(name: str) -> type[Dataset]:
    """Registry lookup with an error that lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}") from None


def collate_clips(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack clips into a batch (B, S, ...) and add the official loss flags.

    `abandon_pose (B,)` and `abandon_geometry (B,)` default to False when the samples do not set them.
    Strings (`dataset`, `seq_name`) become lists of length B.
    """
    batch = default_collate(samples)
    b = len(samples)
    for flag in ("abandon_pose", "abandon_geometry"):
        if flag not in batch:
            batch[flag] = torch.zeros(b, dtype=torch.bool)
        else:
            batch[flag] = batch[flag].to(torch.bool).reshape(b)
    return batch


class Page4DDataModule(L.LightningDataModule):
    """Builds `DATASETS[dataset]` per split and serves (B, S, ...) batches.

    Args:
        dataset: registry name of the dataset class (see `datamodules.DATASETS`).
        root: dataset root folder (None for procedural datasets).
        num_frames: frames per clip S.
        image_size: network input width in pixels (a multiple of 14).
        normalize: apply the official GT normalisation per clip.
        batch_size: clips per batch B.
        num_workers: DataLoader worker processes.
        train, val, test, predict: extra keyword arguments for that split's dataset (e.g. `split`,
            `num_clips`, `seed`), merged over the common ones; `{"dataset": name}` switches the class.
            None disables the split (no validation loop without `val`). `predict` falls back to `test`.
        pin_memory: DataLoader pin_memory (GPU training).
        clip_shapes: training clip shapes per batch (`datamodules.sampling.ClipBatchSampler` arguments):
            `{"num_frames": [2, 16], "frames_per_batch": 32, "aspect_ratio": [0.33, 1.0]}` is the paper's
            recipe (S uniform in 2..16, floor(32 / S) clips, H/W uniform in [0.33, 1]). None: every batch
            has `batch_size` clips of the dataset's own shape. Training always draws new clip randomness
            per epoch (the epoch travels in the clip keys). `"chunks": 2` together with
            `trainer.accumulate_grad_batches: 2` is the official chunking (one shape per pair of
            micro-batches, floor(n / 2) clips each; kaichen-z/PAGE4D `training_final.yaml:10`, see
            `datamodules.sampling`).
        seed: seed of the per-batch shape draws.
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        num_frames: int = 8,
        image_size: int = 518,
        normalize: bool = True,
        batch_size: int = 1,
        num_workers: int = 0,
        train: dict[str, Any] | None = None,
        val: dict[str, Any] | None = None,
        test: dict[str, Any] | None = None,
        predict: dict[str, Any] | None = None,
        pin_memory: bool = False,
        clip_shapes: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers: expected >= 0, got {num_workers}")
        get_dataset_class(dataset)  # fail early on an unknown name
        self.save_hyperparameters()
        self.dataset_name = dataset
        self.common = {"root": root, "num_frames": num_frames, "image_size": image_size, "normalize": normalize}
        self.split_args = {
            "train": train,
            "val": val,
            "test": test,
            "predict": predict if predict is not None else test,
        }
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.clip_shapes = dict(clip_shapes or {})
        unknown = set(self.clip_shapes) - {"num_frames", "frames_per_batch", "aspect_ratio", "chunks"}
        if unknown:
            raise ValueError(f"clip_shapes: unknown keys {sorted(unknown)}; expected num_frames, frames_per_batch, "
                             "aspect_ratio, chunks")
        chunks = self.clip_shapes.get("chunks", 1)
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            raise ValueError(f"clip_shapes: chunks expected an integer >= 1 (micro-batches per drawn batch), "
                             f"got {chunks!r}")
        self.seed = seed
        self.datasets: dict[str, Dataset] = {}
        self._resume_position: dict[str, Any] | None = None  # from a checkpoint (`load_state_dict`)

    def build_dataset(self, split: str) -> Dataset | None:
        """Instantiate the dataset of `split`, or None when the split is disabled."""
        args = self.split_args[split]
        if args is None:
            return None
        args = dict(args)
        cls = get_dataset_class(args.pop("dataset", self.dataset_name))
        return cls(**{**self.common, **args})

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for split in wanted.get(stage, SPLITS) if stage else SPLITS:
            if split not in self.datasets:
                ds = self.build_dataset(split)
                if ds is not None:
                    self.datasets[split] = ds

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(f"the {split!r} split is not configured: set `data.init_args.{split}` in the experiment")
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_clips,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        if "train" not in self.datasets:
            return self._loader("train", shuffle=True)  # raises the "not configured" error
        dataset = self.datasets["train"]
        # Lightning calls set_epoch on the inner sampler every epoch, and swaps it for a DistributedSampler under DDP
        # a dataset class that sets `accepts_clip_keys` gets (index, S, aspect, epoch) keys, any other plain ints
        batches = ClipBatchSampler(
            EpochShuffleSampler(len(dataset), seed=self.seed), batch_size=self.batch_size, drop_last=True,
            seed=self.seed, clip_keys=bool(getattr(dataset, "accepts_clip_keys", False)), **self.clip_shapes,
            resume_batches=self._batches_to_skip(),
        )
        return DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=collate_clips,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def state_dict(self) -> dict[str, Any]:
        """Where training is in its epoch (saved in every checkpoint): the epoch and the batches it has trained
        on (on this rank). A run resumed from the checkpoint continues with the next batch, not from the first
        batch of the epoch again (`ClipBatchSampler(resume_batches=...)`)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        return {"epoch": trainer.current_epoch,
                "train_batches": trainer.fit_loop.epoch_loop.batch_progress.current.ready}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_position = dict(state_dict)

    def _batches_to_skip(self) -> int:
        """Training batches of the current epoch already trained on by the checkpoint being resumed (else 0)."""
        position, self._resume_position = self._resume_position, None
        trainer = self.trainer
        if not position or trainer is None or position.get("epoch") != trainer.current_epoch:
            return 0
        return int(position.get("train_batches", 0))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
