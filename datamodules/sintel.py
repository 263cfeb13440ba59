"""MPI Sintel (Butler et al., ECCV 2012), the evaluation benchmark: 1024x436 renders with GT depth and cameras.

Layout (datasets.md section 7; `MPI-Sintel-training_images.zip` + `MPI-Sintel-depth-training-20150305.zip`)::

    <root>/training/<pass>/<seq>/frame_0001.png                   1-based, 4 digits; pass = final (default) | clean
    <root>/training/depth/<seq>/frame_0001.dpt                    z-depth
    <root>/training/camdata_left/<seq>/frame_0001.cam             intrinsics + world-to-camera extrinsics
    <root>/training/dynamic_label_perfect/<seq>/frame_0001.png    optional: MonST3R's derived dynamic masks

Only `training/` has ground truth, so every `split` reads it (pick sequences with `sequences` or `frame_list`).
A sequence is a folder of `training/<pass>`; its frames are its `frame_XXXX.png` files in name order, named
`frame_XXXX` (`frame_names`); `depth/<seq>` and `camdata_left/<seq>` must hold one file per frame (checked when
the dataset is built: a missing folder or a different file list is an error naming the sequence and the folder).

Conventions (converted once, in `load_frame`), as the official Sintel SDK readers do them (`depth_read`,
`cam_read` of `sintel_io.py`, copied by Junyi42/monst3r `dust3r/datasets/sintel.py` and
`datasets_preprocess/sintel_get_dynamics.py`):
- `.dpt`: little-endian float32 tag 202021.25, int32 width, int32 height, then H*W float32 row-major z-depth in
  scene units (treated as metres). Non-finite / <= 0 -> 0 (there is no other invalid marker; the far background
  keeps its large values: the evaluation caps depth at 70 itself).
- `.cam`: float32 tag 202021.25, then float64 3x3 M (pixel intrinsics) and float64 3x4 N (world-to-camera, OpenCV
  axes) with x = M N X: N is our camera-from-world extrinsics as stored (its rotation re-orthonormalised by
  `reader_rotation`). Confirmed by `sintel_get_dynamics.py`, which projects with M N and back-projects integer
  pixel indices with (i - cx) / fx, i.e. M is in the OpenCV pixel-centre convention: used as stored.
- Dynamic masks: MonST3R's `dynamic_label_perfect` (`sintel_get_dynamics.py --save_dir dynamic_label_perfect`, 255 =
  dynamic, read as value > 127 like MonST3R's `> 0.5`), used when `training/<dynamic_mask_dir>/<seq>` exists. They
  are derived from GT flow, not GT, and exist for every frame but the LAST of a sequence (flow to the next frame):
  that frame takes the previous frame's mask (documented approximation; MonST3R's reader marks it all-dynamic,
  which would count its whole image as dynamic in the evaluation's dynamic / static columns). A sequence without
  the folder has no masks; a missing file inside the folder (other than the last) is an error.
- `is_metric`: Sintel's scene units are treated as metres (datasets.md section 12).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from datamodules.base import register_dataset
from datamodules.io import ClipFormatError, read_mask_png, read_rgb, require_file
from datamodules.sequence import Frame, SequenceDataset, reader_rotation

TAG_FLOAT = 202021.25  # "PIEH" read as a little-endian float32
PASSES = ("final", "clean")
_FRAME = re.compile(r"frame_(\d{4})\.png")
_LAYOUT = "<root>/training/{pass_name}/<seq>/frame_0001.png (+ training/depth, training/camdata_left)"


def _check_tag(path: Path, data: bytes) -> None:
    tag = np.frombuffer(data[:4], dtype="<f4")[0] if len(data) >= 4 else None
    if tag != np.float32(TAG_FLOAT):
        raise ClipFormatError(f"{path}: wrong tag {tag}, expected float32 {TAG_FLOAT} (Sintel .dpt/.cam header)")


def read_dpt(path: str | Path) -> np.ndarray:
    """A Sintel `.dpt` -> (H, W) float32 z-depth as stored (tag, int32 width, int32 height, H*W float32)."""
    path = require_file(path, "Sintel depth (.dpt)")
    data = path.read_bytes()
    _check_tag(path, data)
    if len(data) < 12:
        raise ClipFormatError(f"{path}: truncated .dpt header ({len(data)} bytes, expected 12)")
    width, height = (int(v) for v in np.frombuffer(data[4:12], dtype="<i4"))
    if width <= 0 or height <= 0 or len(data) != 12 + 4 * width * height:
        raise ClipFormatError(f"{path}: .dpt of {width}x{height} needs {12 + 4 * max(width * height, 0)} bytes, "
                              f"the file has {len(data)} (truncated or not a depth file)")
    return np.frombuffer(data[12:], dtype="<f4").reshape(height, width).astype(np.float32)


def read_cam(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A Sintel `.cam` -> (M (3, 3) pixel intrinsics, N (3, 4) world-to-camera), float64 as stored."""
    path = require_file(path, "Sintel camera (.cam)")
    data = path.read_bytes()
    _check_tag(path, data)
    if len(data) != 4 + 8 * 21:
        raise ClipFormatError(f"{path}: .cam needs {4 + 8 * 21} bytes (tag + float64 3x3 M + 3x4 N), the file has "
                              f"{len(data)} (truncated, or written as float32?)")
    values = np.frombuffer(data[4:], dtype="<f8")
    return values[:9].reshape(3, 3).copy(), values[9:].reshape(3, 4).copy()


@register_dataset("sintel")
class SintelDataset(SequenceDataset):
    """MPI Sintel clips: RGB of one pass, metric z-depth, cameras, MonST3R dynamic masks where present.

    Args (after the `SequenceDataset` ones):
        pass_name: the render pass folder, "final" (the evaluation's; default) or "clean".
        dynamic_mask_dir: folder under `training/` holding MonST3R's dynamic masks (used per sequence where it
            exists); None = no dynamic masks.
    """

    name = "sintel"
    is_metric = True

    def __init__(
        self,
        root: str | None = None,
        pass_name: str = "final",
        dynamic_mask_dir: str | None = "dynamic_label_perfect",
        **kwargs,
    ) -> None:
        if pass_name not in PASSES:
            raise ValueError(f"pass_name: expected one of {', '.join(PASSES)}, got {pass_name!r}")
        self.pass_name, self.dynamic_mask_dir = pass_name, dynamic_mask_dir
        self._frames: dict[str, list[str]] = {}  # sequence -> frame names (frame_0001, ...)
        self._has_masks: dict[str, bool] = {}
        super().__init__(root, **kwargs)  # num_frames, image_size, normalize, split, ...: SequenceDataset's

    @property
    def training(self) -> Path:
        return self.root / "training"

    def find_sequences(self) -> dict[str, int]:
        pass_dir = self.training / self.pass_name
        if not pass_dir.is_dir():
            layout = _LAYOUT.format(pass_name=self.pass_name)
            raise ClipFormatError(f"{pass_dir}: missing pass folder; expected {layout}")
        for seq_dir in sorted(p for p in pass_dir.iterdir() if p.is_dir()):
            seq = seq_dir.name
            names = sorted(p.name[:-4] for p in seq_dir.iterdir() if _FRAME.fullmatch(p.name))
            if not names:
                continue
            for folder, ext in (("depth", ".dpt"), ("camdata_left", ".cam")):
                gt_dir = self.training / folder / seq
                if not gt_dir.is_dir():
                    raise ClipFormatError(f"{gt_dir}: sequence {seq!r} has no {folder} folder (Sintel ground truth)")
                stored = {p.name[: -len(ext)] for p in gt_dir.iterdir() if p.name.endswith(ext)}
                missing = [n for n in names if n not in stored]
                if missing:
                    raise ClipFormatError(f"{gt_dir}: sequence {seq!r} has {len(names)} frames in {seq_dir} but "
                                          f"{len(stored)} {ext} files; first missing: {missing[0]}{ext}")
            self._frames[seq] = names
            self._has_masks[seq] = self.dynamic_mask_dir is not None and self._mask_dir(seq).is_dir()
        if not self._frames:
            raise ClipFormatError(f"{pass_dir}: no sequences; expected {_LAYOUT.format(pass_name=self.pass_name)}")
        return {seq: len(names) for seq, names in self._frames.items()}

    def frame_names(self, seq: str) -> list[str]:
        return list(self._frames[seq])

    def _mask_dir(self, seq: str) -> Path:
        return self.training / str(self.dynamic_mask_dir) / seq

    def _dynamic_mask(self, seq: str, index: int) -> np.ndarray | None:
        """MonST3R's mask of frame `index`; the last frame (which has none) takes the previous frame's."""
        if not self._has_masks[seq]:
            return None
        names = self._frames[seq]
        path = self._mask_dir(seq) / f"{names[index]}.png"
        if not path.is_file() and index == len(names) - 1 and index > 0:
            path = self._mask_dir(seq) / f"{names[index - 1]}.png"
        return read_mask_png(path, threshold=127)

    def load_frame(self, seq: str, index: int) -> Frame:
        name = self._frames[seq][index]
        image_path = self.training / self.pass_name / seq / f"{name}.png"
        image = read_rgb(image_path)
        depth_path = self.training / "depth" / seq / f"{name}.dpt"
        depth = read_dpt(depth_path)
        if depth.shape != image.shape[:2]:
            raise ClipFormatError(f"{depth_path}: depth is {depth.shape}, expected {image.shape[:2]} like the image")
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
        cam_path = self.training / "camdata_left" / seq / f"{name}.cam"
        K, world_to_cam = read_cam(cam_path)
        if not (np.isfinite(K).all() and np.isfinite(world_to_cam).all()):
            raise ClipFormatError(f"{cam_path}: camera holds NaN/inf")
        rotation = reader_rotation(world_to_cam[:, :3], f"{cam_path}: N")
        extrinsics = np.concatenate([rotation, world_to_cam[:, 3:]], axis=1)
        mask = self._dynamic_mask(seq, index)
        return Frame(image=image, intrinsics=K, extrinsics=extrinsics, depth=depth, dynamic_mask=mask,
                     source=str(image_path))
