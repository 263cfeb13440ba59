"""PointOdyssey (datasets.md section 1): long synthetic Blender videos with metric depth, cameras and 2D/3D tracks.

Layout: `<root>/{train,val,test}/<scene>/` with `rgbs/rgb_00000.jpg` (0-based, 5 digits), `depths/depth_00000.png`
(uint16, z = png / 65535 * 1000 m), `masks/mask_00000.png` (instance ids, Kubric palette PNG), `anno.npz`
(v1.2: `intrinsics` (T, 3, 3), `extrinsics` (T, 4, 4) world-to-camera OpenCV, `trajs_2d` (T, N, 2),
`trajs_3d` (T, N, 3) world, `visibs`, `valids` (T, N)) or the older `annotations.npz` (`visibilities`: 0 occluded,
1 visible, 2 invalid). The frame index in the file names is the row of the annotation arrays. Split names
map to folders directly (`valid`/`validation` -> `val`, `predict` -> `test`).

Conversions (done once, here):
- depth: 65535 is the sky / "infinity" sentinel (Blender's 1e10 clipped to 1000 m) -> 0, as is 0.
- cameras: the generator saves them as float16, so R is re-orthonormalised (SVD) and checked finite.
- pixels: K and `trajs_2d` come from Blender, whose principal point sits at W/2 with pixel i spanning
  [i, i+1]; the OpenCV pixel-centre convention is 0.5 less, so cx, cy and the tracks are shifted by
  -`PIXEL_SHIFT` = -0.5 px (the release does not document its convention: Blender's is assumed).
- tracks: non-finite `trajs_2d` entries are invalid (and not visible).
- dynamic mask (the data has none): a track is moving in frame i when its 3D world trajectory spans more than
  `motion_threshold` metres within `motion_window` frames of i. Each visible, valid track of frame i lends
  its motion to the instance id found at its pixel in `masks/mask_i.png`; an instance is dynamic when at least
  `dynamic_fraction` of its tracks move, and its pixels form the mask. Instances without a visible track in
  frame i count as static. The default window, (num_frames - 1) * max stride, is the span of the longest clip
  through frame i, so content that moves anywhere in such a clip is dynamic in all of its frames.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.base import register_dataset
from datamodules.io import ClipFormatError, read_label_png, read_npz, read_png_uint16, read_rgb
from datamodules.sequence import Frame, SequenceDataset, Tracks, reader_rotation

logger = logging.getLogger(__name__)

DEPTH_SCALE = 1000.0 / 65535.0  # metres per depth PNG unit
SKY = 65535  # depth PNG value of sky / background at "infinity"
PIXEL_SHIFT = 0.5  # Blender pixel-area coordinates -> OpenCV pixel centres
SPLIT_FOLDERS = {"valid": "val", "validation": "val", "predict": "test"}


def _check_shape(array: np.ndarray, shape: tuple[int | None, ...], key: str, path: Path) -> None:
    ok = array.ndim == len(shape) and all(s is None or s == n for s, n in zip(shape, array.shape))
    if not ok:
        raise ClipFormatError(f"{path}: {key} expected shape {shape} (None = any), got {array.shape}")


@register_dataset("pointodyssey")
class PointOdysseyDataset(SequenceDataset):
    """PointOdyssey scenes (module docstring: layout, conventions, how dynamic masks are derived).

    Args (besides `SequenceDataset`'s):
        dynamic_masks: derive per-frame dynamic masks (needs `masks/` and `trajs_3d`).
        motion_window: half-width (frames) of the window a track must move in; None = (num_frames - 1) * max stride.
        motion_threshold: span (metres) of a 3D trajectory above which a track moves.
        dynamic_fraction: share of an instance's tracks that must move for the instance to be dynamic.
        cache_sequences: annotation files kept in memory per process (they can be hundreds of MB each).
    """

    name = "pointodyssey"
    is_metric = True
    sparse_depth = False

    def __init__(
        self,
        root: str | None = None,
        dynamic_masks: bool = True,
        motion_window: int | None = None,
        motion_threshold: float = 0.05,
        dynamic_fraction: float = 0.5,
        cache_sequences: int = 2,
        **kwargs: Any,
    ) -> None:
        if motion_window is not None and motion_window < 1:
            raise ValueError(f"motion_window: expected >= 1 frame (or None), got {motion_window}")
        if not 0.0 < dynamic_fraction <= 1.0:
            raise ValueError(f"dynamic_fraction: expected in (0, 1], got {dynamic_fraction}")
        if cache_sequences < 1:
            raise ValueError(f"cache_sequences: expected >= 1, got {cache_sequences}")
        self.dynamic_masks, self.motion_threshold = dynamic_masks, motion_threshold
        self.dynamic_fraction, self.cache_sequences = dynamic_fraction, cache_sequences
        self._anno: OrderedDict[str, dict[str, Any]] = OrderedDict()
        super().__init__(root, **kwargs)  # num_frames, image_size, normalize, split, ...: SequenceDataset's
        self.motion_window = motion_window or self.max_clip_span()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_anno"] = OrderedDict()  # large: rebuilt lazily in each worker
        return state

    # ----------------------------------------------------------------------------------------- layout
    def scene_dir(self, seq: str) -> Path:
        return self.root / SPLIT_FOLDERS.get(self.split, self.split) / seq

    def find_sequences(self) -> dict[str, int]:
        split_dir = self.root / SPLIT_FOLDERS.get(self.split, self.split)
        if not split_dir.is_dir():
            raise ClipFormatError(
                f"{split_dir}: missing PointOdyssey split folder; expected <root>/{{train,val,test}}/<scene>/"
                f"rgbs/rgb_00000.jpg (found {sorted(p.name for p in self.root.iterdir() if p.is_dir())})"
            )
        found = {}
        for scene in sorted(p for p in split_dir.iterdir() if (p / "rgbs").is_dir()):
            ids = [int(p.stem[4:]) for p in (scene / "rgbs").glob("rgb_*.jpg") if p.stem[4:].isdigit()]
            if ids:
                found[scene.name] = max(ids) + 1  # frame index in the name == anno row; gaps raise at load
        return found

    # ------------------------------------------------------------------------------------ annotations
    def annotations(self, seq: str) -> dict[str, Any]:
        """Arrays of the scene's `anno.npz` (or `annotations.npz`), checked; an LRU of `cache_sequences` scenes."""
        if seq in self._anno:
            self._anno.move_to_end(seq)
            return self._anno[seq]
        scene = self.scene_dir(seq)
        path = scene / "anno.npz"
        if not path.is_file() and (scene / "annotations.npz").is_file():
            path = scene / "annotations.npz"
        data = read_npz(path, ("intrinsics", "extrinsics", "trajs_2d") + (("trajs_3d",) if self.dynamic_masks else ()))
        if "visibs" in data:
            visible = np.asarray(data["visibs"]).astype(bool)
            valid = np.asarray(data["valids"]).astype(bool) if "valids" in data else np.ones_like(visible)
        elif "visibilities" in data:  # old format: 0 occluded, 1 visible, 2 invalid
            vis = np.asarray(data["visibilities"], dtype=np.float32)
            visible, valid = vis == 1, vis < 2
        else:
            raise ClipFormatError(f"{path}: has neither visibs/valids (v1.2) nor visibilities; found {sorted(data)}")
        T = len(data["intrinsics"])
        _check_shape(data["intrinsics"], (T, 3, 3), "intrinsics", path)
        if data["extrinsics"].shape[1:] not in ((4, 4), (3, 4)):
            raise ClipFormatError(f"{path}: extrinsics expected (T, 4, 4), got {data['extrinsics'].shape}")
        _check_shape(data["extrinsics"], (T, None, 4), "extrinsics", path)
        _check_shape(data["trajs_2d"], (T, None, 2), "trajs_2d", path)
        N = data["trajs_2d"].shape[1]
        _check_shape(visible, (T, N), "visibility", path)
        _check_shape(valid, (T, N), "valids", path)
        if "trajs_3d" in data:
            _check_shape(data["trajs_3d"], (T, N, 3), "trajs_3d", path)
        anno = {
            "path": path,
            "intrinsics": data["intrinsics"].astype(np.float64),
            "extrinsics": data["extrinsics"][:, :3, :4].astype(np.float64),
            "trajs_2d": data["trajs_2d"],  # as stored (often float16), converted per frame
            "trajs_3d": data.get("trajs_3d"),
            "visible": visible,
            "valid": valid,
        }
        self._anno[seq] = anno
        while len(self._anno) > self.cache_sequences:
            self._anno.popitem(last=False)
        return anno

    def _row(self, anno: dict[str, Any], index: int, what: str) -> None:
        if index >= len(anno["intrinsics"]):
            raise ClipFormatError(f"{anno['path']}: has {len(anno['intrinsics'])} frames, {what} needs row {index}")

    def _tracks_at(self, anno: dict[str, Any], index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame `index`: track pixels (N, 2) OpenCV, visible (N,), valid (N,) (non-finite -> invalid)."""
        uv = anno["trajs_2d"][index].astype(np.float64) - PIXEL_SHIFT
        valid = anno["valid"][index] & np.isfinite(uv).all(-1)
        return uv, anno["visible"][index] & valid, valid

    # ------------------------------------------------------------------------------------------ frames
    def load_frame(self, seq: str, index: int) -> Frame:
        scene = self.scene_dir(seq)
        rgb_path = scene / "rgbs" / f"rgb_{index:05d}.jpg"
        image = read_rgb(rgb_path)
        hw = image.shape[:2]
        depth_path = scene / "depths" / f"depth_{index:05d}.png"
        raw = read_png_uint16(depth_path)
        if raw.shape != hw:
            raise ClipFormatError(f"{depth_path}: depth has size {raw.shape}, expected {hw} like {rgb_path.name}")
        depth = raw.astype(np.float32) * np.float32(DEPTH_SCALE)
        depth[(raw == SKY) | (raw == 0)] = 0.0

        anno = self.annotations(seq)
        self._row(anno, index, rgb_path.name)
        E, K = anno["extrinsics"][index].copy(), anno["intrinsics"][index].copy()
        if not (np.isfinite(E).all() and np.isfinite(K).all()):
            raise ClipFormatError(f"{anno['path']}: camera of frame {index} holds NaN/inf")
        E[:, :3] = reader_rotation(E[:, :3], f"{anno['path']}: camera of frame {index}")  # float16 round-off
        K[:2, 2] -= PIXEL_SHIFT

        dynamic = self._dynamic_mask(scene, anno, index, hw) if self.dynamic_masks else None
        return Frame(image=image, intrinsics=K, extrinsics=E, depth=depth, dynamic_mask=dynamic, source=str(rgb_path))

    def _dynamic_mask(self, scene: Path, anno: dict[str, Any], index: int, hw: tuple[int, int]) -> np.ndarray:
        """(H, W) bool: pixels of the instances whose tracks move around frame `index` (module docstring)."""
        mask_path = scene / "masks" / f"mask_{index:05d}.png"
        labels = read_label_png(mask_path, allow_colour=True)
        if labels.shape != hw:
            raise ClipFormatError(f"{mask_path}: mask has size {labels.shape}, expected {hw} like the image")
        uv, visible, _ = self._tracks_at(anno, index)
        col, row = np.rint(uv[:, 0]), np.rint(uv[:, 1])
        on = visible & (col >= 0) & (col < hw[1]) & (row >= 0) & (row < hw[0])
        idx = np.nonzero(on)[0]
        if idx.size == 0:
            return np.zeros(hw, dtype=bool)
        T = len(anno["trajs_3d"])
        lo, hi = max(0, index - self.motion_window), min(T, index + self.motion_window + 1)
        pts = anno["trajs_3d"][lo:hi, idx].astype(np.float64)  # (window, n, 3)
        ref = pts[index - lo]
        pts = np.where(np.isfinite(pts), pts, ref[None])  # unknown positions count as no motion
        span = np.linalg.norm(pts.max(0) - pts.min(0), axis=-1)  # (n,)
        moving = np.isfinite(ref).all(-1) & (span > self.motion_threshold)
        ids, inverse = np.unique(labels[row[idx].astype(np.int64), col[idx].astype(np.int64)], return_inverse=True)
        share = np.bincount(inverse, weights=moving.astype(np.float64)) / np.bincount(inverse)
        return np.isin(labels, ids[share >= self.dynamic_fraction])

    def load_tracks(self, seq: str, ids: list[int]) -> Tracks:
        """`trajs_2d` rows `ids` in native OpenCV pixels: points (S, N, 2), visible (S, N), valid (S, N)."""
        anno = self.annotations(seq)
        for i in ids:
            self._row(anno, i, f"frame {i}")
        per_frame = [self._tracks_at(anno, i) for i in ids]
        return Tracks(
            points=np.stack([p[0] for p in per_frame]),
            visible=np.stack([p[1] for p in per_frame]),
            valid=np.stack([p[2] for p in per_frame]),
        )
