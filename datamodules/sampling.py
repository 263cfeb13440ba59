"""Training batches of clip keys: variable clip length and aspect ratio per batch, new draws every epoch.

`ClipBatchSampler` turns the indices of any sampler into batches of keys `(index, num_frames, aspect_ratio,
epoch)`, which every dataset of this project accepts in place of an int index. One batch shares one clip
shape, so it stacks. With `num_frames=[2, 16]` and `frames_per_batch=32` a batch draws S uniformly in 2..16
and holds floor(32 / S) clips (the paper's recipe); `aspect_ratio=[0.33, 1.0]` draws H/W per batch.

The draws of batch k are a function of (seed, epoch, k) only, so all DDP ranks use the same shapes at the
same step (similar work per rank) and a resumed run repeats them. Lightning calls `set_epoch` on the sampler
inside the batch sampler at every epoch (`EpochShuffleSampler` here; under DDP Lightning re-creates the batch
sampler around a `DistributedSampler`, so each rank batches its own shard), and the batch sampler reads the
epoch from it.

Official chunking (`chunks: 2` with `trainer.accumulate_grad_batches: 2`): the official trainer splits each
drawn batch of n = floor(32 / S) clips into 2 chunks of floor(n / 2) clips (an odd clip is dropped), each its
own forward / backward with its own loss filters, gradients accumulated (kaichen-z/PAGE4D
`training/config/training_final.yaml:10` `accum_steps: 2`, `training/trainer_gra.py:796-806,941-969`). Here
each chunk is one micro-batch: the shape is drawn once per group of `chunks` consecutive micro-batches, and an
epoch holds a whole number of groups, so an accumulation group never spans two shapes or two epochs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler


def _range(value: int | float | list | tuple | None, name: str, integer: bool) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        value = (value, value)
    if len(value) != 2 or not value[0] <= value[1] or value[0] <= 0:
        raise ValueError(f"{name}: expected a positive number or [min, max] with 0 < min <= max, got {value}")
    return (int(value[0]), int(value[1])) if integer else (float(value[0]), float(value[1]))


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of range(`size`) per epoch, a function of (seed, epoch) only (resumable)."""

    def __init__(self, size: int | Sized, seed: int = 0) -> None:
        self.size = size if isinstance(size, int) else len(size)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())


class ClipBatchSampler(BatchSampler):
    """Batches of `(index, num_frames, aspect_ratio, epoch)` keys over the indices of `sampler`.

    Args:
        sampler: index sampler (shuffled for training; Lightning swaps in a DistributedSampler under DDP).
        batch_size: clips per batch when the clip length is fixed.
        drop_last: drop a last incomplete batch.
        num_frames: S, fixed, [min, max] (uniform integer per batch) or None (each dataset's own setting).
        frames_per_batch: with a range of S, the batch holds max(1, frames_per_batch // S) clips.
        aspect_ratio: output H/W per batch, fixed, [min, max] (uniform) or None (each dataset's own setting).
        seed: base seed of the shape draws.
        clip_keys: yield keys; False yields plain int indices (for a dataset that only takes ints: then the
            clip shape must be the dataset's own, i.e. `num_frames` and `aspect_ratio` None).
        chunks: micro-batches per drawn batch (c): the shape (S, aspect) is drawn once per group of c
            consecutive micro-batches, each holding max(1, n // c) clips of the n the batch would hold; the
            epoch length is a multiple of c. Pair it with `trainer.accumulate_grad_batches: c`; c = 2 is the
            official recipe (clips per optimiser step 2 floor(floor(32 / S) / 2)). Needs `drop_last`.
        resume_batches: the first epoch iterated starts after its first `resume_batches` batches (the same
            batches, shapes and clips as before: a run resumed mid-epoch continues with the next batch).
    """

    def __init__(
        self,
        sampler: Sampler[int] | Sized,
        batch_size: int = 1,
        drop_last: bool = True,
        num_frames: int | list[int] | None = None,
        frames_per_batch: int | None = None,
        aspect_ratio: float | list[float] | None = None,
        seed: int = 0,
        clip_keys: bool = True,
        chunks: int = 1,
        resume_batches: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            raise ValueError(f"chunks: expected an integer >= 1 (micro-batches per drawn batch), got {chunks!r}")
        if chunks > 1 and not drop_last:
            raise ValueError("chunks: > 1 needs drop_last=True (an accumulation group must not be cut short)")
        self.chunks = chunks
        if resume_batches < 0:
            raise ValueError(f"resume_batches: expected >= 0, got {resume_batches}")
        self.resume_batches = resume_batches
        if not clip_keys and (num_frames is not None or aspect_ratio is not None):
            raise ValueError("num_frames / aspect_ratio per batch need a dataset that takes clip keys "
                             "(`accepts_clip_keys = True`, as every dataset of this project)")
        self.clip_keys = clip_keys
        self.frames_range = _range(num_frames, "num_frames", integer=True)
        varying = self.frames_range is not None and self.frames_range[0] != self.frames_range[1]
        if varying and not frames_per_batch:
            raise ValueError("frames_per_batch: required when num_frames is a range (clips = frames_per_batch // S)")
        if frames_per_batch is not None and frames_per_batch < (self.frames_range or (1,))[0]:
            raise ValueError(f"frames_per_batch: expected >= the shortest clip length, got {frames_per_batch}")
        self.frames_per_batch = frames_per_batch
        self.aspect_range = _range(aspect_ratio, "aspect_ratio", integer=False)
        self.seed = seed
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """The epoch of the inner sampler (where Lightning sets it), else the one given to `set_epoch`."""
        return int(getattr(self.sampler, "epoch", self._epoch))

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def batch_shape(self, k: int) -> tuple[int, int | None, float | None]:
        """(clips B, frames S or None, aspect H/W or None) of micro-batch `k` in the current epoch; micro-batches
        k of one group (k // chunks) share the draw."""
        rng = np.random.default_rng([self.seed, self.epoch, k // self.chunks])
        frames = None
        if self.frames_range is not None:
            lo, hi = self.frames_range
            frames = int(rng.integers(lo, hi + 1)) if hi > lo else lo
        clips = max(1, self.frames_per_batch // frames) if self.frames_per_batch and frames else self.batch_size
        clips = max(1, clips // self.chunks)
        aspect = None
        if self.aspect_range is not None:
            a_lo, a_hi = self.aspect_range
            aspect = float(rng.uniform(a_lo, a_hi)) if a_hi > a_lo else a_lo
        return clips, frames, aspect

    def _batch_sizes(self) -> list[int]:
        """Clips of each micro-batch of the epoch: whole groups of `chunks` only (a group that does not fit
        the remaining indices is dropped with `drop_last`)."""
        sizes, left, k = [], len(self.sampler), 0
        while left > 0:
            clips = self.batch_shape(k)[0]  # the same for the `chunks` micro-batches of group k // chunks
            if clips * self.chunks > left and self.drop_last:
                break
            for _ in range(self.chunks):
                sizes.append(min(clips, left))
                left -= clips
            k += self.chunks
        return sizes

    def __len__(self) -> int:
        return len(self._batch_sizes())

    def __iter__(self) -> Iterator[list[tuple[int, int | None, float | None, int]] | list[int]]:
        skip, self.resume_batches = self.resume_batches, 0  # only the epoch that was interrupted
        if skip >= len(self):
            skip = 0  # the checkpoint ended its epoch: this one starts from its first batch
        indices = iter(self.sampler)
        for k, size in enumerate(self._batch_sizes()):
            batch = [int(next(indices)) for _ in range(size)]  # drawn even when skipped: the later batches stay
            if k < skip:
                continue
            if not self.clip_keys:
                yield batch
                continue
            _, frames, aspect = self.batch_shape(k)
            yield [(index, frames, aspect, self.epoch) for index in batch]
