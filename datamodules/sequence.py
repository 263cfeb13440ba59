"""`SequenceDataset`: the base of every file-backed dataset (one subclass per dataset format).

A subclass only says what is on disk: `find_sequences()` (names and frame counts) and
`load_frame(seq, i)` (one frame in native resolution: RGB, metric z-depth, camera-from-world OpenCV
extrinsics, pixel intrinsics, optional dynamic mask), optionally `load_tracks(seq, ids)`. This class
does the rest, the same way for every dataset:

frame sampling (contiguous at a stride in a range, optional shuffled order; or random frames with replacement)
-> checks (sizes, finite cameras) -> intrinsics-aware resize + crop to W = `image_size`, H a multiple of 14
(fixed / per-clip aspect; per clip or per frame, see `augment`) -> photometric augmentation -> camera / world
points from depth -> `normalize_sample` -> the DESIGN.md sample dict.

A clip index may be an int or a key `(index, num_frames, aspect_ratio, epoch)` (variable clip shapes and
per-epoch draws, see `datamodules.sampling`).

Evaluation options: `frame_list` (a committed `<sequence> <frame id>` file: one clip per listed sequence holding
exactly the listed frames; `frame_names(seq)` gives the ids as the dataset names them) and `resize: stretch` (the
official evaluation's stretch to (aspect_ratio * image_size, image_size), `transforms.OfficialStretch`).

Any file problem raises `ClipFormatError` naming the file; with
`skip_bad_clips=True` the clip is logged, counted (`bad_clips`) and replaced by the next one instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.io import ClipFormatError
from datamodules.transforms import (
    OfficialStretch,
    Photometric,
    ResizeCrop,
    augment_mode,
    output_size,
    plan_clip_geometry,
)
from page4d_lightning.geometry import depth_to_world_points, nearest_rotation, normalize_sample, relative_to_first
from page4d_lightning.types import Sample

logger = logging.getLogger(__name__)

MAX_SKIPS = 32  # consecutive bad clips tolerated before giving up (a wrong root, not a bad file)
FRAME_SAMPLING = ("contiguous", "random_with_replacement")
RESIZE_MODES = ("crop", "stretch")


@dataclass
class Frame:
    """One frame as stored, converted to the project's conventions (native resolution).

    image (h, w, 3) uint8 RGB; intrinsics (3, 3) pixels of `image`, OpenCV pixel centres; extrinsics (3, 4)
    camera-from-world, OpenCV axes; depth (h, w) float32 z-depth in metres (scene units), 0 = invalid, or
    None when the dataset has none; dynamic_mask (h, w) bool, True = moving; source names the file(s).
    """

    image: np.ndarray
    intrinsics: np.ndarray
    extrinsics: np.ndarray
    depth: np.ndarray | None = None
    dynamic_mask: np.ndarray | None = None
    source: str = ""


@dataclass
class Tracks:
    """2D tracks over the clip's frames, in native pixels: points (S, N, 2) (x = column, y = row), visible
    (S, N) bool, valid (S, N) bool (False = position unknown; None = all known)."""

    points: np.ndarray
    visible: np.ndarray
    valid: np.ndarray | None = None


def _as_range(value: int | float | tuple | list | None, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value), float(value)
    if len(value) != 2 or not value[0] <= value[1]:
        raise ValueError(f"{name}: expected a number or [min, max] with min <= max, got {value}")
    return float(value[0]), float(value[1])


class SequenceDataset(Dataset):
    """Clips of S frames from a root of sequences (subclass per format; see the module docstring).

    Args:
        root: dataset root folder (the layout each subclass documents).
        num_frames: S, frames per clip (a tuple index may override it per clip).
        image_size: output width W (multiple of 14).
        normalize: apply the official GT normalisation (`normalize_sample`); False keeps metric units.
        split: dataset split name (subclasses map it to folders).
        aspect_ratio: H/W of the output; a number, [min, max] (uniform per clip, training) or None (keep
            the source aspect, at most square: the official `crop` preprocessing).
        stride: frame step inside a clip; a number or [min, max] (uniform integer per clip).
        shuffle_frames: randomly permute the frames of a clip (first frame stays the reference).
        frame_sampling: "contiguous" (default): S frames at a constant stride inside the clip's window;
            "random_with_replacement": S frames drawn uniformly from the whole sequence, unordered, repeats
            allowed, the first drawn one being the reference frame 0 (`stride`, `shuffle_frames` unused) -
            the official CO3D sampling (kaichen-z/PAGE4D `training/data/datasets/co3d.py:282-293`,
            `allow_duplicate_img: True` in `training/config/default_dataset_fin.yaml:30`).
        augment: training augmentation (`datamodules.transforms`): false / "none" (default); "clip" (true is
            the same): one random zoom in [1, `max_zoom`] and crop plus one colour jitter for the whole clip;
            "official": the official PAGE-4D recipe, a per-frame crop at the principal point to U(0.8, 1.2)
            of H and of W (capped at 1) then an anisotropic resize to the output shape (fx != fy), colour
            jitter 0.5/0.5/0.5/0.1 p 0.9 and grey p 0.05, per clip 70 % / per frame 30 % of the time
            (`base_dataset.py:238-281`, `dataset_util.py:84-142,175-221`, `augmentation.py:27-63`,
            `composed_dataset.py:125-133`, `default_dataset_fin.yaml:22-24,33-45`). Any value but "none"
            also draws the clip's start inside its window.
        max_zoom: largest extra zoom of the "clip" geometric augmentation.
        num_tracks: tracks per clip when the dataset has them (0 = none).
        clips_per_sequence: clips per sequence and epoch; None = enough windows to cover each sequence once.
        sequences: only these sequence names (None = all found).
        seed: base seed; clip randomness is a function of (seed, epoch, index), so workers and ranks agree.
        skip_bad_clips: log, count and skip a clip whose files are bad instead of raising.
        frame_list: path of a text file with one `<sequence> <frame id>` per line (`#` comments and blank lines
            allowed; `read_frame_list`). A frame id is the frame's name as the dataset names it (`frame_names`:
            Sintel `frame_0001`, TUM / Bonn the rgb timestamp of the file name, DyCheck `0_00000`, KITTI
            `0000000005`), `@N` (position N in the reader's frame order) or `*` (every frame). The dataset then
            has exactly one clip per listed sequence, in file order, holding exactly the listed frames in the listed
            order, and only those sequences (`sequences` may narrow them further); `num_frames`, `stride`,
            `frame_sampling`, `clips_per_sequence` and clip-key shapes are ignored. Samples also carry
            `frame_names` (S strings; `collate_clips` makes S tuples of B). An unknown sequence or frame id raises
            ClipFormatError naming the file, the line number and the sequence. None: the sampling above.
        resize: "crop" (default): cover resize + crop to (H, W) as described by `aspect_ratio` / `augment`;
            "stretch": every frame brought to exactly (H, W) = (floor(aspect_ratio * image_size / 14) * 14,
            image_size) (`aspect_ratio: 1.0` with image_size 518: the official evaluation's 518x518; None: the
            crop rule's H) by the official two-step composition (`transforms.OfficialStretch`): the width-`image_size`
            preprocessing (which centre-crops portrait frames to at most square), then an anisotropic bilinear
            stretch without cropping. Intrinsics, depth (exact nearest) and masks follow. Evaluation only: it
            takes `augment` none.
    """

    accepts_clip_keys: ClassVar[bool] = True  # takes (index, num_frames, aspect_ratio, epoch) keys

    name: ClassVar[str] = "sequence"
    is_metric: ClassVar[bool] = True
    sparse_depth: ClassVar[bool] = False

    def __init__(
        self,
        root: str | None = None,
        num_frames: int = 8,
        image_size: int = 518,
        normalize: bool = True,
        split: str = "train",
        aspect_ratio: float | list[float] | None = None,
        stride: int | list[int] = 1,
        shuffle_frames: bool = False,
        augment: bool | str | None = False,
        max_zoom: float = 1.2,
        num_tracks: int = 0,
        clips_per_sequence: int | None = None,
        sequences: list[str] | None = None,
        seed: int = 0,
        skip_bad_clips: bool = False,
        frame_sampling: str = "contiguous",
        frame_list: str | None = None,
        resize: str = "crop",
    ) -> None:
        if root is None:
            raise ValueError(f"{type(self).__name__}: `root` is required (the folder of the downloaded dataset)")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ClipFormatError(f"{self.root}: dataset root is not a directory")
        if num_frames < 1:
            raise ValueError(f"num_frames: expected >= 1, got {num_frames}")
        output_size((1, 1), image_size, 1.0)  # validates image_size
        self.num_frames, self.image_size, self.normalize, self.split = num_frames, image_size, normalize, split
        self.aspect_range = _as_range(aspect_ratio, "aspect_ratio")
        stride_range = _as_range(stride, "stride")
        if stride_range[0] < 1:
            raise ValueError(f"stride: expected >= 1, got {stride}")
        self.stride_range = (int(stride_range[0]), int(stride_range[1]))
        if frame_sampling not in FRAME_SAMPLING:
            raise ValueError(f"frame_sampling: expected one of {', '.join(FRAME_SAMPLING)}, got {frame_sampling!r}")
        self.frame_sampling = frame_sampling
        self.augment = augment_mode(augment)  # "none" | "clip" | "official"
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize: expected one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        if resize == "stretch" and self.augment != "none":
            raise ValueError(f"resize: stretch is the evaluation geometry and takes augment none, got {augment!r}")
        self.resize = resize
        self.shuffle_frames, self.max_zoom = shuffle_frames, max_zoom
        self.num_tracks, self.seed, self.skip_bad_clips = num_tracks, seed, skip_bad_clips
        self.epoch = 0
        self.bad_clips = 0
        found = self.find_sequences()
        self.frame_selection: dict[str, list[int]] | None = None  # frame_list: sequence -> listed positions
        if frame_list is not None:
            self.sequences = found  # the default `frame_names` reads the counts
            self.frame_selection = self._select_frames(frame_list, found)
            found = {seq: found[seq] for seq in self.frame_selection}
        if sequences is not None:
            unknown = sorted(set(sequences) - set(found))
            if unknown:
                where = f"in {frame_list}" if frame_list is not None else f"under {self.root}"
                raise ValueError(f"sequences: {unknown} not found {where}; found {sorted(found)[:20]}")
            order = sequences if frame_list is None else [seq for seq in found if seq in sequences]  # list: file order
            found = {k: found[k] for k in order}
        if not found:
            raise ClipFormatError(f"{self.root}: no {self.name} sequences found for split {split!r}")
        self.sequences = dict(sorted(found.items())) if frame_list is None else found  # frame_list: file order
        self.clips = self._index_clips(clips_per_sequence)
        self._photometric = Photometric(self.augment) if self.augment != "none" else None

    # ----------------------------------------------------------------------------- subclass hooks
    def find_sequences(self) -> dict[str, int]:
        """Sequence name -> number of frames, for `self.split`. Raise ClipFormatError for a wrong layout."""
        raise NotImplementedError

    def load_frame(self, seq: str, index: int) -> Frame:
        """Frame `index` (0-based position in the sequence) in native resolution and project conventions."""
        raise NotImplementedError

    def load_tracks(self, seq: str, ids: list[int]) -> Tracks | None:
        """Tracks over frames `ids` (native pixels), or None when the dataset has none."""
        return None

    def frame_names(self, seq: str) -> list[str]:
        """Each frame's id as the dataset names it, in position order (frame lists, `frame_names` of samples);
        default: the positions as strings."""
        return [str(i) for i in range(self.sequences[seq])]

    # ------------------------------------------------------------------------------- frame lists
    def _select_frames(self, path: str | Path, found: dict[str, int]) -> dict[str, list[int]]:
        """`frame_list` -> sequence -> positions, sequences in file order, frames in listed order."""
        selection: dict[str, list[int]] = {}
        lookup: dict[str, dict[str, int]] = {}
        for line, seq, frame in read_frame_list(path):
            where = f"{path}, line {line}"
            if seq not in found:
                raise ClipFormatError(f"{where}: sequence {seq!r} not found under {self.root} ({self.name}); "
                                      f"found {sorted(found)[:20]}")
            count = found[seq]
            if frame == "*":
                positions = list(range(count))
            elif frame.startswith("@"):
                position = int(frame[1:]) if frame[1:].isdigit() else -1
                if not 0 <= position < count:
                    raise ClipFormatError(f"{where}: sequence {seq!r} has no frame {frame} "
                                          f"(positions @0..@{count - 1})")
                positions = [position]
            else:
                if seq not in lookup:
                    names = self.frame_names(seq)
                    lookup[seq] = {name: i for i, name in enumerate(names)}
                if frame not in lookup[seq]:
                    names = list(lookup[seq])
                    raise ClipFormatError(f"{where}: sequence {seq!r} has no frame {frame!r} ({count} frames, "
                                          f"{names[0]!r} ... {names[-1]!r})")
                positions = [lookup[seq][frame]]
            selection.setdefault(seq, []).extend(positions)
        if not selection:
            raise ClipFormatError(f"{path}: frame list names no frame (expected `<sequence> <frame id>` lines)")
        self._selected_names = {seq: [self.frame_names(seq)[i] for i in ids] for seq, ids in selection.items()}
        return selection

    # ------------------------------------------------------------------------------------- index
    def _index_clips(self, clips_per_sequence: int | None) -> list[tuple[str, int]]:
        """(sequence, window) pairs: `clips_per_sequence` windows per sequence, or one per S frames (one per
        sequence with a frame list)."""
        clips = []
        self.windows: dict[str, int] = {}
        if self.frame_selection is not None:
            self.windows = {seq: 1 for seq in self.sequences}
            return [(seq, 0) for seq in self.sequences]
        for seq, count in self.sequences.items():
            n = clips_per_sequence if clips_per_sequence is not None else max(1, count // self.num_frames)
            self.windows[seq] = n
            clips += [(seq, k) for k in range(n)]
        return clips

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        """Default epoch of the random draws (stride, start, crop, jitter) of int keys; training keys from
        `ClipBatchSampler` carry their epoch themselves (workers keep their own dataset copy)."""
        self.epoch = epoch

    def max_clip_span(self) -> int:
        """Frames between the first and last frame of the longest clip: (S - 1) * largest stride, at least 1."""
        return max(1, (self.num_frames - 1) * self.stride_range[1])

    def _rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch if epoch is None else epoch, index])

    def frame_ids(self, seq: str, window: int, num_frames: int, rng: np.random.Generator) -> list[int]:
        """S frame positions: contiguous at a stride drawn from `stride`, starting in window `window`
        (windows evenly spaced over the sequence, a random start inside it when training); or, with
        `frame_sampling="random_with_replacement"`, S uniform draws over the sequence (the window unused); with a
        frame list, exactly the listed frames (`num_frames` unused)."""
        if self.frame_selection is not None:
            return list(self.frame_selection[seq])
        count = self.sequences[seq]
        if self.frame_sampling == "random_with_replacement":
            return [int(i) for i in rng.integers(0, count, size=num_frames)]
        lo, hi = self.stride_range
        stride = int(rng.integers(lo, hi + 1)) if hi > lo else lo
        stride = max(1, min(stride, (count - 1) // max(1, num_frames - 1))) if num_frames > 1 else 1
        span = (num_frames - 1) * stride + 1
        last_start = max(0, count - span)
        windows = self.windows[seq]
        start = round(window * last_start / max(1, windows - 1)) if windows > 1 else last_start // 2
        if self.augment != "none" and last_start:
            start = int(rng.integers(0, last_start + 1))
        ids = [min(count - 1, start + k * stride) for k in range(num_frames)]
        if self.shuffle_frames and num_frames > 2:
            ids = [ids[0]] + [ids[1:][k] for k in rng.permutation(num_frames - 1)]
        return ids

    # ------------------------------------------------------------------------------------ loading
    def __getitem__(self, key: int | tuple) -> Sample:
        index, num_frames, aspect, epoch = parse_clip_key(key)
        for attempt in range(MAX_SKIPS):
            i = (index + attempt) % len(self)
            try:
                return self.load_clip(i, num_frames or self.num_frames, aspect, epoch)
            except ClipFormatError as err:
                if not self.skip_bad_clips:
                    raise
                self.bad_clips += 1
                seq = self.clips[i][0]
                logger.warning("%s: skipping clip %d of sequence %s (%d skipped so far): %s", self.name, i, seq,
                               self.bad_clips, err)
        raise ClipFormatError(f"{self.root}: {MAX_SKIPS} consecutive clips failed to load; is the root right?")

    def _aspect(self, rng: np.random.Generator, source_hw: tuple[int, int]) -> float | None:
        if self.aspect_range is None:
            return None
        lo, hi = self.aspect_range
        return float(rng.uniform(lo, hi)) if hi > lo else lo

    def load_clip(
        self, index: int, num_frames: int, aspect_ratio: float | None = None, epoch: int | None = None
    ) -> Sample:
        """Clip `index` with S = `num_frames` and output aspect `aspect_ratio` (None: the dataset's setting);
        its random draws are a function of (seed, epoch, index), `epoch` None meaning `self.epoch`."""
        seq, window = self.clips[index]
        rng = self._rng(index, epoch)
        ids = self.frame_ids(seq, window, num_frames, rng)
        frames = [self.load_frame(seq, i) for i in ids]
        for frame in frames:
            check_frame(frame, f"{self.name}/{seq}")
        source_hw = frames[0].image.shape[:2]
        for frame in frames[1:]:
            if frame.image.shape[:2] != source_hw:
                raise ClipFormatError(
                    f"{frame.source or seq}: image size {frame.image.shape[:2]} differs from the clip's first frame "
                    f"{source_hw} ({frames[0].source})"
                )
        aspect = aspect_ratio if aspect_ratio is not None else self._aspect(rng, source_hw)
        out_hw = output_size(source_hw, self.image_size, aspect)
        intrinsics = [np.asarray(f.intrinsics, dtype=np.float64) for f in frames]
        if self.resize == "stretch":
            geometry = [OfficialStretch.plan(source_hw, out_hw, self.image_size)] * len(frames)
        else:
            geometry = plan_clip_geometry(self.augment, source_hw, out_hw, intrinsics, rng, self.max_zoom)  # per frame
        sample = self._assemble(frames, geometry, rng)
        if self.num_tracks > 0:
            tracks = self.load_tracks(seq, ids)
            if tracks is not None:
                sample.update(self._tracks(tracks, geometry, rng, f"{self.name}/{seq}"))
        sample.update(dataset=self.name, seq_name=seq, ids=torch.tensor(ids))
        if self.frame_selection is not None:
            sample["frame_names"] = list(self._selected_names[seq])
        return normalize_sample(sample) if self.normalize else sample

    def _assemble(
        self, frames: list[Frame], geometry: list[ResizeCrop | OfficialStretch], rng: np.random.Generator
    ) -> dict[str, Any]:
        """Frames + one `ResizeCrop` per frame -> the sample dict (before normalisation)."""
        images = np.stack([g.image(f.image) for f, g in zip(frames, geometry)])  # (S, H, W, 3) uint8
        if self._photometric is not None:
            images = self._photometric(images, rng)
        out_hw = geometry[0].out_hw
        depths = np.stack([
            np.zeros(out_hw, np.float32) if f.depth is None
            else g.sparse_depth(f.depth) if self.sparse_depth else g.nearest(f.depth)
            for f, g in zip(frames, geometry)
        ])
        extrinsics = np.stack([f.extrinsics for f in frames])  # (S, 3, 4) float64
        if self.normalize:
            # express the clip in camera 0's frame here (float64, exact identity for frame 0): the world points
            # then need one transform instead of two, and normalize_sample skips its own
            extrinsics = relative_to_first(extrinsics)
        extrinsics = torch.from_numpy(extrinsics).float()
        intrinsics = torch.from_numpy(np.stack([g.intrinsics(f.intrinsics) for f, g in zip(frames, geometry)])).float()
        depth_t = torch.from_numpy(depths).float()
        world, cam = depth_to_world_points(depth_t, extrinsics, intrinsics)
        sample: dict[str, Any] = {
            "images": torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0,  # (S, H, W, 3) -> (S, 3, H, W)
            "depths": depth_t,
            "extrinsics": extrinsics,
            "intrinsics": intrinsics,
            "world_points": world,
            "cam_points": cam,
            "point_masks": depth_t > 0,
        }
        if all(f.dynamic_mask is not None for f in frames):
            masks = np.stack([g.nearest(f.dynamic_mask, "dynamic_mask") for f, g in zip(frames, geometry)])
            sample["dynamic_masks"] = torch.from_numpy(masks)
        return sample

    def _tracks(
        self, tracks: Tracks, geometry: list[ResizeCrop | OfficialStretch], rng: np.random.Generator, where: str
    ) -> dict[str, Any]:
        """Pick `num_tracks` tracks visible in the first frame, in output pixels (fewer -> repeated, positive False);
        frame s is mapped by `geometry[s]`."""
        points, visible = np.asarray(tracks.points, np.float64), np.asarray(tracks.visible, bool)
        valid = np.ones_like(visible) if tracks.valid is None else np.asarray(tracks.valid, bool)
        shapes_ok = points.ndim == 3 and points.shape[-1] == 2 and visible.shape == points.shape[:2]
        if not shapes_ok or valid.shape != visible.shape:
            raise ClipFormatError(
                f"{where}: tracks expected points (S, N, 2) and visible/valid (S, N), got {points.shape}, "
                f"{visible.shape}, {valid.shape}"
            )
        if len(geometry) != points.shape[0]:
            raise ClipFormatError(f"{where}: tracks cover {points.shape[0]} frames, the clip has {len(geometry)}")
        finite = np.isfinite(points).all(-1)
        uv = np.stack([g.points(p) for g, p in zip(geometry, np.where(finite[..., None], points, 0.0))])  # (S, N, 2)
        inside = np.stack([g.inside(p) for g, p in zip(geometry, uv)])
        visible = visible & valid & finite & inside
        candidates = np.nonzero(visible[0])[0]
        n = self.num_tracks
        positive = np.zeros(n, dtype=bool)
        if candidates.size == 0:
            chosen = np.zeros(n, dtype=np.int64)
        else:
            take = rng.permutation(candidates)[:n]
            positive[: take.size] = True
            chosen = np.concatenate([take, rng.choice(candidates, n - take.size)]) if take.size < n else take
        return {
            "tracks": torch.from_numpy(uv[:, chosen]).float(),
            "track_vis_mask": torch.from_numpy(visible[:, chosen]),
            "track_positive_mask": torch.from_numpy(positive),
        }

    # ---------------------------------------------------------------------------------- validation
    def validate(self) -> list[str]:
        """Every problem of the root, one message each (missing / truncated files, wrong sizes, bad cameras)."""
        problems = []
        for seq, count in self.sequences.items():
            for i in range(count):
                try:
                    check_frame(self.load_frame(seq, i), f"{self.name}/{seq}")
                except ClipFormatError as err:
                    problems.append(str(err))
        return problems


def reader_rotation(matrix: np.ndarray, where: str) -> np.ndarray:
    """`geometry.nearest_rotation` for readers: the closest rotation to a stored (3, 3) block, or a
    ClipFormatError naming `where` (file, line or frame) when it is not one."""
    try:
        return nearest_rotation(np.asarray(matrix, dtype=np.float64), "rotation")
    except ValueError as err:
        raise ClipFormatError(f"{where}: {err}") from None


def read_frame_list(path: str | Path) -> list[tuple[int, str, str]]:
    """A frame list file -> (line number, sequence, frame id) per entry; `#` starts a comment, blank lines are
    skipped. ClipFormatError naming the file and line for a missing file or a line that is not two fields."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ClipFormatError(f"{path}: missing frame list (expected `<sequence> <frame id>` lines)")
    entries = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = text.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ClipFormatError(f"{path}, line {number}: expected `<sequence> <frame id>`, got {text.strip()!r}")
        entries.append((number, fields[0], fields[1]))
    return entries


def parse_clip_key(key: int | tuple | list) -> tuple[int, int | None, float | None, int | None]:
    """A dataset index: an int, or `(index[, num_frames[, aspect_ratio[, epoch]]])` (see `datamodules.sampling`)
    -> (index, num_frames or None, aspect_ratio or None, epoch or None)."""
    if isinstance(key, (int, np.integer)):
        return int(key), None, None, None
    if not isinstance(key, (tuple, list)) or not 1 <= len(key) <= 4:
        raise TypeError(f"clip key: expected an int or (index, num_frames, aspect_ratio, epoch), got {key!r}")
    index, num_frames, aspect, epoch = (tuple(key) + (None,) * 3)[:4]
    return (
        int(index),
        None if num_frames is None else int(num_frames),
        None if aspect is None else float(aspect),
        None if epoch is None else int(epoch),
    )


def check_frame(frame: Frame, where: str) -> None:
    """Raise ClipFormatError (naming the frame's source) when sizes, dtypes or cameras are wrong."""
    src = frame.source or where
    image = frame.image
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ClipFormatError(f"{src}: image expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    hw = image.shape[:2]
    if frame.depth is not None:
        if frame.depth.shape != hw:
            raise ClipFormatError(f"{src}: depth has size {frame.depth.shape}, expected {hw} like the image")
        if not np.isfinite(frame.depth).all() or (frame.depth < 0).any():
            raise ClipFormatError(f"{src}: depth holds NaN/inf or negative values (the reader must zero them)")
    if frame.dynamic_mask is not None and frame.dynamic_mask.shape != hw:
        raise ClipFormatError(f"{src}: dynamic mask has size {frame.dynamic_mask.shape}, expected {hw}")
    E, K = np.asarray(frame.extrinsics), np.asarray(frame.intrinsics)
    if E.shape != (3, 4) or K.shape != (3, 3):
        raise ClipFormatError(f"{src}: expected extrinsics (3, 4) and intrinsics (3, 3), got {E.shape}, {K.shape}")
    if not (np.isfinite(E).all() and np.isfinite(K).all()):
        raise ClipFormatError(f"{src}: camera holds NaN/inf (extrinsics or intrinsics)")
    reader_rotation(E[:, :3], f"{src}: extrinsics")
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ClipFormatError(f"{src}: intrinsics focal lengths must be > 0, got fx={K[0, 0]}, fy={K[1, 1]}")
