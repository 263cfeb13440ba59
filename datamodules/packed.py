"""HDF5 shards: the reader (the registered "packed"); the writer is `datamodules/packed_writer.py`.

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

import logging
import os
from bisect import bisect_right
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from datamodules.base import register_dataset
from datamodules.io import ClipFormatError, read_json
from datamodules.sequence import Frame, SequenceDataset, Tracks

logger = logging.getLogger(__name__)

FORMAT, VERSION, INDEX_NAME = "page4d-packed", 1, "index.json"
# inflate speed barely depends on the level; level 1 packs several times faster than the default 4
GZIP_LEVEL = 1
# SequenceDataset methods that decide the sampled clip; a reader overriding one is not reproduced by "packed"
SAMPLING_HOOKS = ("__getitem__", "load_clip", "frame_ids", "_aspect", "_index_clips", "_assemble", "_tracks")


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
