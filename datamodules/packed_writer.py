"""HDF5 shards: the writer. `pack_dataset` reads every frame of a `SequenceDataset` through the reader's own
`load_frame` / `load_tracks` hooks and writes `<out>/<split>/shard_%05d.h5` plus `index.json`, in the layout that
`datamodules/packed.py` documents and reads. `page4d pack` is its command line (`page4d_lightning/tools/pack.py`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from torch.utils.data import DataLoader, Dataset

from datamodules.io import ClipFormatError
from datamodules.packed import FORMAT, GZIP_LEVEL, INDEX_NAME, SAMPLING_HOOKS, VERSION
from datamodules.sequence import Frame, SequenceDataset, Tracks, check_frame

logger = logging.getLogger(__name__)


def _identity(item: Any) -> Any:
    return item


class _FrameSource(Dataset):
    """(sequence, frame) pairs of a dataset -> (position, Frame or the ClipFormatError message): lets packing
    decode frames in DataLoader workers, in order."""

    def __init__(self, dataset: SequenceDataset, items: list[tuple[str, int]]) -> None:
        self.dataset, self.items = dataset, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[int, Frame | str]:
        seq, i = self.items[k]
        try:
            frame = self.dataset.load_frame(seq, i)
            check_frame(frame, f"{self.dataset.name}/{seq}")
        except ClipFormatError as err:
            return k, str(err)
        return k, frame


class _ShardWriter:
    """Appends runs of frames to shards of at most `frames_per_shard` frames (a run may end at a shard edge)."""

    def __init__(self, out: Path, frames_per_shard: int, compression: str | None) -> None:
        self.out, self.frames_per_shard = out, frames_per_shard
        self.filters: dict[str, Any] = {"compression": compression} if compression else {}
        if compression == "gzip":
            self.filters["compression_opts"] = GZIP_LEVEL
        self.shards: list[str] = []
        self.file: h5py.File | None = None
        self.frames = 0

    def current(self, new_frame: bool) -> h5py.File:
        if self.file is None or (new_frame and self.frames >= self.frames_per_shard):
            self.close()
            name = f"shard_{len(self.shards):05d}.h5"
            self.shards.append(name)
            self.file, self.frames = h5py.File(self.out / name, "w"), 0
        return self.file

    def dataset(self, group: h5py.Group, key: str, first: np.ndarray) -> h5py.Dataset:
        """Resizable dataset `key` shaped like `first` with one chunk per leading index (one frame)."""
        shuffle = self.filters.get("compression") == "gzip" and first.dtype.kind == "f"
        return group.create_dataset(key, shape=(0, *first.shape), maxshape=(None, *first.shape),
                                    dtype=first.dtype, chunks=(1, *first.shape), shuffle=shuffle, **self.filters)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _frame_arrays(frame: Frame) -> dict[str, np.ndarray]:
    arrays = {"image": np.asarray(frame.image, np.uint8), "extrinsics": np.asarray(frame.extrinsics, np.float64),
              "intrinsics": np.asarray(frame.intrinsics, np.float64)}
    if frame.depth is not None:
        arrays["depth"] = np.asarray(frame.depth, np.float32)
    if frame.dynamic_mask is not None:
        arrays["dynamic_mask"] = np.asarray(frame.dynamic_mask, bool)
    return arrays


def _write_frames(writer: _ShardWriter, seq_no: int, frames: Any) -> list[dict[str, Any]]:
    """Write (position, Frame) pairs of one sequence; a new run starts at a shard edge or a new frame layout."""
    runs: list[dict[str, Any]] = []
    handles: dict[str, h5py.Dataset] = {}
    layout = None
    for i, frame in frames:
        arrays = _frame_arrays(frame)
        frame_layout = {k: v.shape for k, v in arrays.items()}
        if not runs or frame_layout != layout or writer.frames >= writer.frames_per_shard:
            name = f"s{seq_no:06d}/p{len(runs):04d}"
            group, layout = writer.current(new_frame=True).create_group(name), frame_layout
            handles = {key: writer.dataset(group, key, value) for key, value in arrays.items()}
            runs.append({"shard": writer.shards[-1], "group": name, "start": i, "count": 0})
        n = runs[-1]["count"]
        for key, value in arrays.items():
            handles[key].resize(n + 1, axis=0)
            handles[key][n] = value
        runs[-1]["count"], writer.frames = n + 1, writer.frames + 1
    return runs


def _write_tracks(writer: _ShardWriter, seq_no: int, tracks: Tracks, count: int, where: str) -> dict[str, str]:
    points, visible = np.asarray(tracks.points), np.asarray(tracks.visible, bool)
    if points.ndim != 3 or points.shape[0] != count or points.shape[2] != 2 or visible.shape != points.shape[:2]:
        raise ClipFormatError(f"{where}: tracks of all {count} frames expected points (S, N, 2), visible (S, N); "
                              f"got {points.shape}, {visible.shape}")
    arrays = {"points": points if points.dtype.kind == "f" else points.astype(np.float64), "visible": visible}
    if tracks.valid is not None:
        arrays["valid"] = np.asarray(tracks.valid, bool)
    name = f"s{seq_no:06d}/tracks"
    group = writer.current(new_frame=False).require_group(name)
    for key, value in arrays.items():
        group.create_dataset(key, data=value, chunks=(1, *value.shape[1:]), **writer.filters)
    return {"shard": writer.shards[-1], "group": name}


def _good_frames(stream: Any, count: int, items: list[tuple[str, int]], failed: list[str], skip: bool) -> Any:
    """The next `count` (position, Frame) pairs of `stream`; a bad one raises, or with `skip` is appended to
    `failed` and ends the yielding (the rest of the sequence is still consumed)."""
    for _ in range(count):
        k, frame = next(stream)
        if isinstance(frame, str):
            if not skip:
                raise ClipFormatError(frame)
            failed.append(frame)
        elif not failed:
            yield items[k][1], frame


def pack_dataset(
    dataset: SequenceDataset,
    out: str | Path,
    frames_per_shard: int = 256,
    compression: str | None = "gzip",
    workers: int = 0,
    skip_bad_sequences: bool = False,
    overwrite: bool = False,
    registry_name: str | None = None,
) -> Path:
    """Write every frame (and the tracks) of `dataset` as shards under `<out>/<dataset.split>/`; returns the
    index path. A bad frame raises ClipFormatError naming it, or drops its sequence with `skip_bad_sequences`."""
    if frames_per_shard < 1:
        raise ValueError(f"frames_per_shard: expected >= 1, got {frames_per_shard}")
    if compression not in (None, "gzip", "lzf"):
        raise ValueError(f"compression: expected 'gzip', 'lzf' or None, got {compression!r}")
    folder = Path(out).expanduser() / dataset.split
    if (folder / INDEX_NAME).exists() and not overwrite:
        raise FileExistsError(f"{folder / INDEX_NAME}: already packed; pass overwrite (--overwrite) to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("shard_*.h5"), folder / INDEX_NAME]:
        old.unlink(missing_ok=True)
    overridden = [h for h in SAMPLING_HOOKS if getattr(type(dataset), h) is not getattr(SequenceDataset, h)]
    if overridden:
        logger.warning("%s overrides %s: the packed copy samples clips with the base SequenceDataset rules",
                       type(dataset).__name__, overridden)
    items = [(seq, i) for seq, count in dataset.sequences.items() for i in range(count)]
    loader = DataLoader(_FrameSource(dataset, items), batch_size=None, num_workers=workers, collate_fn=_identity)
    stream = iter(loader)
    writer = _ShardWriter(folder, frames_per_shard, compression)
    sequences: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    try:
        for seq_no, (seq, count) in enumerate(dataset.sequences.items()):
            failed: list[str] = []
            runs = _write_frames(writer, seq_no, _good_frames(stream, count, items, failed, skip_bad_sequences))
            if failed:
                skipped[seq] = failed[0]
                logger.warning("%s: skipping sequence %s (%d bad frames): %s", dataset.name, seq, len(failed),
                               failed[0])
                continue
            try:
                tracks = dataset.load_tracks(seq, list(range(count)))
                entry = None if tracks is None else _write_tracks(writer, seq_no, tracks, count,
                                                                  f"{dataset.name}/{seq}")
            except ClipFormatError as err:
                if not skip_bad_sequences:
                    raise
                skipped[seq] = str(err)
                logger.warning("%s: skipping sequence %s (bad tracks): %s", dataset.name, seq, err)
                continue
            sequences[seq] = {"frames": count, "runs": runs, "tracks": entry}
    finally:
        writer.close()
    index = {
        "format": FORMAT, "version": VERSION, "dataset": dataset.name, "registry_name": registry_name,
        "class": f"{type(dataset).__module__}.{type(dataset).__qualname__}", "split": dataset.split,
        "source_root": str(dataset.root), "is_metric": bool(dataset.is_metric),
        "sparse_depth": bool(dataset.sparse_depth), "compression": compression, "frames_per_shard": frames_per_shard,
        "sampling_hooks_overridden": overridden, "shards": writer.shards, "sequences": sequences, "skipped": skipped,
    }
    tmp = folder / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(folder / INDEX_NAME)  # the index appears last: its presence means the shards are complete
    logger.info("packed %d sequences (%d frames, %d skipped) of %s into %s", len(sequences),
                sum(s["frames"] for s in sequences.values()), len(skipped), dataset.name, folder)
    return folder / INDEX_NAME
