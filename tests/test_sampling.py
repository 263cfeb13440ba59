"""Variable clip shapes per batch (the paper's S in 2..16, floor(32 / S) clips, aspect 0.33-1) and epochs."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, SequentialSampler

from datamodules import SyntheticDataModule
from datamodules.sampling import ClipBatchSampler


def test_paper_recipe_shapes_are_drawn_per_batch() -> None:
    sampler = ClipBatchSampler(range(500), num_frames=[2, 16], frames_per_batch=32, aspect_ratio=[0.33, 1.0], seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    frames = set()
    for keys in batches:
        shapes = {(s, a, e) for _, s, a, e in keys}
        assert len(shapes) == 1  # one shape per batch, so it stacks
        (s, a, e), = shapes
        assert 2 <= s <= 16 and len(keys) == 32 // s and 0.33 <= a <= 1.0 and e == 0
        frames.add(s)
    assert len(frames) > 8  # the draw covers the range
    used = [i for keys in batches for i, *_ in keys]
    assert used == list(range(len(used)))  # the sampler's indices, in order, each once
    again = ClipBatchSampler(range(500), num_frames=[2, 16], frames_per_batch=32, aspect_ratio=[0.33, 1.0], seed=1)
    assert list(again) == batches  # deterministic in (seed, epoch, batch)
    again.set_epoch(1)
    assert [k[0][1:] for k in again] != [k[0][1:] for k in batches]  # a new epoch draws new shapes


def test_fixed_shapes_and_bad_arguments() -> None:
    sampler = ClipBatchSampler(range(7), batch_size=3, drop_last=True)
    assert [[k[0] for k in b] for b in sampler] == [[0, 1, 2], [3, 4, 5]]
    assert all(k[1] is None and k[2] is None for b in sampler for k in b)  # the dataset's own shape
    assert len(ClipBatchSampler(range(7), batch_size=3, drop_last=False)) == 3
    with pytest.raises(ValueError, match="frames_per_batch"):
        ClipBatchSampler(range(7), num_frames=[2, 16])
    with pytest.raises(ValueError, match="num_frames"):
        ClipBatchSampler(range(7), num_frames=[8, 2], frames_per_batch=32)


def test_datamodule_serves_variable_shapes_and_epochs() -> None:
    dm = SyntheticDataModule(
        num_frames=4, image_size=28, batch_size=2, train={"num_clips": 24, "num_tracks": 4},
        clip_shapes={"num_frames": [2, 4], "frames_per_batch": 8, "aspect_ratio": [0.5, 1.0]},
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    shapes = set()
    for batch in loader:
        B, S, _, H, W = batch["images"].shape
        assert B == 8 // S and W == 28 and H in (14, 28) and batch["tracks"].shape[:2] == (B, S)
        shapes.add((B, S))
    assert len(shapes) > 1
    first = [b["seq_name"] for b in loader]
    _set_sampler_epoch(loader, 1)  # what Lightning's fit loop calls at every epoch
    assert [b["seq_name"] for b in loader] != first  # new order and shapes
    with pytest.raises(ValueError, match="clip_shapes"):
        SyntheticDataModule(clip_shapes={"frames": 3})


class KeyEcho(Dataset):
    """40 items; item `key` is the clip key itself."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, key: tuple) -> tuple:
        return key


def test_lightning_injects_a_distributed_sampler() -> None:
    """Under DDP Lightning re-creates the batch sampler around a DistributedSampler: each rank batches its own
    shard with the SAME shapes (same work per step on every rank)."""
    dataset = KeyEcho()
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        batches = ClipBatchSampler(SequentialSampler(dataset), num_frames=[2, 8], frames_per_batch=8, seed=0)
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=lambda keys: keys)
    per_rank = []
    for rank in range(2):
        shard = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        ddp_loader = _update_dataloader(loader, shard)
        _set_sampler_epoch(ddp_loader, 3)
        per_rank.append(list(ddp_loader))
    assert [len(b) for b in per_rank[0]] == [len(b) for b in per_rank[1]]
    assert [b[0][1] for b in per_rank[0]] == [b[0][1] for b in per_rank[1]]
    assert all(k[3] == 3 for b in per_rank[0] for k in b)  # set_epoch reached the batch sampler
    seen = [k[0] for r in per_rank for b in r for k in b]
    assert len(seen) == len(set(seen))  # the shards do not overlap
    assert torch.tensor(seen).max() < 40
