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


# official 2 floor(floor(32 / S) / 2) clips per optimiser step for S = 2..11 (official_code_facts.md 3.2 item 10)
OFFICIAL_CLIPS_PER_STEP = {2: 16, 3: 10, 4: 8, 5: 6, 6: 4, 7: 4, 8: 4, 9: 2, 10: 2, 11: 2, 16: 2}


@pytest.mark.parametrize("frames", sorted(OFFICIAL_CLIPS_PER_STEP))
def test_official_chunking_matches_the_official_clips_per_step(frames: int) -> None:
    """`chunks=2`: each drawn batch of n = 32 // S clips becomes 2 micro-batches of n // 2 (odd clip dropped)."""
    sampler = ClipBatchSampler(range(200), num_frames=frames, frames_per_batch=32, chunks=2)
    first, second = list(sampler)[:2]
    assert len(first) == len(second) == max(1, (32 // frames) // 2)
    assert len(first) + len(second) == OFFICIAL_CLIPS_PER_STEP[frames]  # e.g. S=5: 3+3, S=11: 1+1, S=16: 1+1


def test_chunks_share_one_shape_per_accumulation_group() -> None:
    kwargs = {"num_frames": [2, 16], "frames_per_batch": 32, "aspect_ratio": [0.33, 1.0], "seed": 3}
    for epoch in (0, 1):
        sampler = ClipBatchSampler(range(1000), chunks=2, **kwargs)
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) and len(batches) % 2 == 0  # groups never span epochs
        shapes = [{(s, a, e) for _, s, a, e in keys} for keys in batches]
        assert all(len(shape) == 1 for shape in shapes) and all(e == epoch for (_, _, e), in shapes)
        for k in range(0, len(batches), 2):
            assert shapes[k] == shapes[k + 1]  # micro-batches 2k and 2k+1: same S and aspect
            (s, _, _), = shapes[k]
            assert len(batches[k]) == len(batches[k + 1]) == max(1, (32 // s) // 2)
        assert len({next(iter(shapes[k])) for k in range(0, len(batches), 2)}) > 8  # groups draw new shapes
        used = [i for keys in batches for i, *_ in keys]
        assert used == list(range(len(used)))  # each index once, none lost inside a group
    # 37 indices, S = 5: groups of 2 x 3 clips; 6 whole groups fit (36 indices), the 7th is dropped as a whole
    assert [len(b) for b in ClipBatchSampler(range(37), num_frames=5, frames_per_batch=32, chunks=2)] == [3] * 12
    # chunks = 1 is the unchunked sampler, draw for draw
    assert list(ClipBatchSampler(range(300), chunks=1, **kwargs)) == list(ClipBatchSampler(range(300), **kwargs))
    # fixed clip shapes: batch_size clips are split too
    assert [len(b) for b in ClipBatchSampler(range(9), batch_size=4, chunks=2)] == [2, 2, 2, 2]


def test_bad_chunks_name_the_argument() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="chunks: expected an integer >= 1"):
            ClipBatchSampler(range(8), chunks=bad)
    with pytest.raises(ValueError, match="chunks: > 1 needs drop_last"):
        ClipBatchSampler(range(8), chunks=2, drop_last=False)
    with pytest.raises(ValueError, match="clip_shapes: chunks"):
        SyntheticDataModule(clip_shapes={"chunks": 0})


def test_datamodule_serves_chunked_micro_batches() -> None:
    dm = SyntheticDataModule(
        num_frames=4, image_size=28, batch_size=2, train={"num_clips": 40, "num_tracks": 4},
        clip_shapes={"num_frames": [2, 4], "frames_per_batch": 8, "aspect_ratio": [0.5, 1.0], "chunks": 2},
    )
    dm.setup("fit")
    shapes = [tuple(batch["images"].shape) for batch in dm.train_dataloader()]
    assert len(shapes) == len(dm.train_dataloader()) and len(shapes) % 2 == 0
    for first, second in zip(shapes[::2], shapes[1::2]):
        B, S, _, H, W = first
        assert first == second and B == (8 // S) // 2 and W == 28


def test_resume_batches_continues_the_interrupted_epoch_only() -> None:
    """`resume_batches=k`: the first epoch iterated yields the same batches as an uninterrupted one from batch k
    on (same indices, shapes and epoch); the next epoch is whole again. Under DDP (Lightning re-creates the
    batch sampler from its arguments) the skip survives the re-creation."""
    dataset = KeyEcho()

    def sampler(resume: int) -> ClipBatchSampler:
        return ClipBatchSampler(SequentialSampler(dataset), num_frames=[2, 8], frames_per_batch=8, seed=0,
                                resume_batches=resume)

    full = list(sampler(0))
    resumed = sampler(3)
    assert list(resumed) == full[3:] and len(resumed) == len(full)
    assert list(resumed) == full  # only the interrupted epoch is shortened
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = DataLoader(dataset, batch_sampler=sampler(2), collate_fn=lambda keys: keys)
        uninterrupted = DataLoader(dataset, batch_sampler=sampler(0), collate_fn=lambda keys: keys)
    shard = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=False)
    whole = list(_update_dataloader(uninterrupted, shard))
    assert len(whole) > 2 and list(_update_dataloader(loader, shard)) == whole[2:]
    assert list(sampler(len(full))) == full  # a checkpoint at the end of its epoch: the next epoch is whole
    with pytest.raises(ValueError, match="resume_batches"):
        sampler(-1)
