"""HDF5 shards: pack any `SequenceDataset` once (`page4d pack`), stream it fast (the registered "packed").

    page4d pack --dataset pointodyssey --root /data/pointodyssey --out /data/packed/po --split train

reads every frame through the reader's own `load_frame` / `load_tracks` hooks (native resolution, already
in project conventions) and writes `<out>/<split>/shard_%05d.h5` plus `<out>/<split>/index.json`.
`DATASETS["packed"](root=<out>, split=<split>, ...)` then runs the SAME `SequenceDataset` pipeline on
them, so for the same arguments and seed its clips equal the raw reader's, tensor for tensor.

Shard layout: one group per run of frames of a sequence with one image size (`s%06d/p%04d`, the
sequence's number in the index, the run's number), each frame one HDF5 chunk: `image (n, h, w, 3) uint8`,
`depth (n, h, w) float32` (absent when the reader gives none), `dynamic_mask (n, h, w) bool` (absent when
none), `extrinsics (n, 3, 4) float64`, `intrinsics (n, 3, 3) float64`; tracks of the whole sequence in
`s%06d/tracks`: `points (T, N, 2)` (the reader's float dtype), `visible (T, N) bool`, optional `valid`.
The index (JSON) names the source dataset, `is_metric`, `sparse_depth`, the sequences with their frame
counts, runs (shard, group, first frame, count) and tracks. h5py files are opened lazily, once per
process (never pickled to DataLoader workers).

Compression (`--compression`): gzip (level 1, byte-shuffled floats; the default), lzf, or none. Measured by
`benchmarks/bench_datasets.py`: gzip reads large frames about as fast as lzf or faster and is smaller; none is
several times faster to read (no inflate) and several times larger on disk.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from bisect import bisect_right
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from torch.utils.data import DataLoader, Dataset

from datamodules.base import get_dataset_class, register_dataset
from datamodules.io import ClipFormatError, read_json
from datamodules.sequence import Frame, SequenceDataset, Tracks, check_frame

logger = logging.getLogger(__name__)

FORMAT, VERSION, INDEX_NAME = "page4d-packed", 1, "index.json"
# inflate speed barely depends on the level; level 1 packs several times faster than the default 4
GZIP_LEVEL = 1
# SequenceDataset methods that decide the sampled clip; a reader overriding one is not reproduced by "packed"
SAMPLING_HOOKS = ("__getitem__", "load_clip", "frame_ids", "_aspect", "_index_clips", "_assemble", "_tracks")


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


def pack_main(args: list[str]) -> int:
    """`page4d pack`: pack a registered SequenceDataset into HDF5 shards; returns the exit code."""
    parser = argparse.ArgumentParser(prog="page4d pack", description=pack_main.__doc__)
    parser.add_argument("--dataset", required=True, help="registry name of the reader (e.g. pointodyssey)")
    parser.add_argument("--root", required=True, help="root folder of the downloaded dataset")
    parser.add_argument("--out", required=True, help="output folder; shards go to <out>/<split>/")
    parser.add_argument("--split", default="train")
    parser.add_argument("--frames-per-shard", type=int, default=256)
    parser.add_argument("--compression", choices=("gzip", "lzf", "none"), default="gzip",
                        help="per-frame chunk filter: gzip (default), lzf, or none (fastest to read, largest)")
    parser.add_argument("--dataset-args", default="{}", help="JSON of extra reader arguments, e.g. '{\"a\": 1}'")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding the source frames")
    parser.add_argument("--skip-bad-sequences", action="store_true", help="drop sequences with a bad frame (logged)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing pack of this split")
    opts = parser.parse_args(args)
    import datamodules  # noqa: F401  (registers every reader)

    cls = get_dataset_class(opts.dataset)
    if not issubclass(cls, SequenceDataset):
        raise ValueError(f"--dataset: {opts.dataset!r} ({cls.__name__}) is not a file-backed SequenceDataset")
    extra = json.loads(opts.dataset_args)
    dataset = cls(root=opts.root, num_frames=1, normalize=False, split=opts.split, **extra)
    pack_dataset(dataset, opts.out, opts.frames_per_shard, None if opts.compression == "none" else opts.compression,
                 opts.workers, opts.skip_bad_sequences, opts.overwrite, registry_name=opts.dataset)
    return 0


@register_dataset("packed")
class PackedDataset(SequenceDataset):
    """Clips from `page4d pack` shards: `root` = the pack's output folder, `split` picks `<root>/<split>/`.

    Same arguments as every `SequenceDataset`; `name`, `is_metric` and `sparse_depth` come from the index, so
    samples carry the source dataset's name. Identical to the raw reader's clips for the same arguments.
    """

    name = "packed"

    def find_sequences(self) -> dict[str, int]:
        self.folder = self.root / self.split
        path = self.folder / INDEX_NAME
        if not path.is_file():
            found = sorted(p.parent.name for p in self.root.glob(f"*/{INDEX_NAME}"))
            raise ClipFormatError(f"{path}: no packed index for split {self.split!r} (packed splits here: {found}); "
                                  f"write it with `page4d pack --out {self.root} --split {self.split} ...`")
        index = read_json(path)
        if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
            raise ClipFormatError(f"{path}: not a {FORMAT} v{VERSION} index")
        for shard in index["shards"]:
            if not (self.folder / shard).is_file():
                raise ClipFormatError(f"{self.folder / shard}: missing packed shard (listed in {path})")
        if index["sampling_hooks_overridden"]:
            logger.warning("%s: the source reader overrides %s; packed clips follow the base sampling rules",
                           path, index["sampling_hooks_overridden"])
        self.name, self.is_metric, self.sparse_depth = index["dataset"], index["is_metric"], index["sparse_depth"]
        self.index = index["sequences"]
        self._starts = {seq: [r["start"] for r in s["runs"]] for seq, s in self.index.items()}
        self._files: dict[str, h5py.File] = {}  # per process: shard -> open file
        self._runs: dict[tuple[str, str], tuple] = {}  # per process: run -> (path, datasets, extrinsics, intrinsics)
        self._pid = os.getpid()
        return {seq: s["frames"] for seq, s in self.index.items()}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"], state["_runs"] = {}, {}  # h5py handles are per process: reopened lazily in each worker
        return state

    def _group(self, entry: dict[str, Any]) -> tuple[Path, h5py.Group]:
        if self._pid != os.getpid():  # forked worker: never reuse the parent's handles
            self._files, self._runs, self._pid = {}, {}, os.getpid()
        path = self.folder / entry["shard"]
        try:
            if entry["shard"] not in self._files:
                self._files[entry["shard"]] = h5py.File(path, "r")
            return path, self._files[entry["shard"]][entry["group"]]
        except (OSError, KeyError, ValueError) as err:
            raise ClipFormatError(f"{path}: unreadable packed shard (truncated or corrupt): {err}") from None

    def _run(self, run: dict[str, Any]) -> tuple:
        """(path, {name: h5py.Dataset}, extrinsics (n, 3, 4), intrinsics (n, 3, 3)) of a run, cached per process
        (an HDF5 name lookup costs about as much as reading a small frame)."""
        key = (run["shard"], run["group"])
        cached = self._runs.get(key) if self._pid == os.getpid() else None
        if cached is None:
            path, group = self._group(run)
            try:
                handles = {k: group[k] for k in ("image", "depth", "dynamic_mask") if k in group}
                cached = (path, handles, group["extrinsics"][()], group["intrinsics"][()])
            except (OSError, KeyError, ValueError) as err:
                raise ClipFormatError(f"{path}: unreadable run {run['group']} (truncated or corrupt): {err}") \
                    from None
            self._runs[key] = cached
        return cached

    def load_frame(self, seq: str, index: int) -> Frame:
        runs = self.index[seq]["runs"]
        run = runs[bisect_right(self._starts[seq], index) - 1]
        path, handles, extrinsics, intrinsics = self._run(run)
        j = index - run["start"]
        try:
            arrays = {k: h[j] for k, h in handles.items()}
        except (OSError, ValueError) as err:
            raise ClipFormatError(f"{path}: unreadable frame {j} of {run['group']} (truncated or corrupt): {err}") \
                from None
        return Frame(image=arrays["image"], intrinsics=intrinsics[j].copy(), extrinsics=extrinsics[j].copy(),
                     depth=arrays.get("depth"), dynamic_mask=arrays.get("dynamic_mask"),
                     source=f"{path}:{run['group']}[{j}]")

    def load_tracks(self, seq: str, ids: list[int]) -> Tracks | None:
        entry = self.index[seq]["tracks"]
        if entry is None:
            return None
        path, group = self._group(entry)
        unique, inverse = np.unique(np.asarray(ids), return_inverse=True)  # h5py wants increasing indices
        try:
            arrays = {k: group[k][unique.tolist()][inverse] for k in ("points", "visible", "valid") if k in group}
        except (OSError, KeyError, ValueError) as err:
            raise ClipFormatError(f"{path}: unreadable tracks {entry['group']} (truncated or corrupt): {err}") \
                from None
        return Tracks(points=arrays["points"], visible=arrays["visible"], valid=arrays.get("valid"))
