"""Waymo Open, as preprocessed by DUSt3R / MonST3R / CUT3R (`datasets_preprocess/preprocess_waymo.py`).

Layout (datasets.md section 6)::

    <root>/<segment>/00000_1.jpg   frame (5 digits, 0-based) _ camera id (1 FRONT ... 5 SIDE_RIGHT), long side 512
    <root>/<segment>/00000_1.exr   float32 sparse LiDAR camera z in metres, 0 = no return (OpenCV writes channel "Y")
    <root>/<segment>/00000_1.npz   intrinsics (3, 3) pixels of the jpg, cam2world (4, 4) OpenCV axes, distortion (5,)
    <root>/invalid_files.h5        optional (CUT3R): per segment, "invalid_pairs" = b"<camera>_<frame>" to skip

A sequence is one segment seen by one camera, named "<segment>_cam<c>" (as CUT3R groups frames); its frames
are that camera's files in frame order. `split` is not used: the preprocessed root has no split folders, so
give each split its own root or `sequences` list.

Conventions: extrinsics = inv(cam2world)[:3]; the intrinsics are stored in the OpenCV pixel-centre
convention (DUSt3R's crop code converts with the 0.5 offset), used as stored; `distortion` is ignored (the
images are not undistorted: the pinhole model is approximate at the borders). Depth is sparse
(`sparse_depth = True`: resized by re-splatting, never interpolated). No dynamic masks, no tracks.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from datamodules.base import register_dataset
from datamodules.io import ClipFormatError, read_exr, read_npz, read_rgb, require_file
from datamodules.sequence import Frame, SequenceDataset, reader_rotation
from page4d_lightning.geometry import se3_inverse

logger = logging.getLogger(__name__)

CAMERA_IDS = (1, 2, 3, 4, 5)  # Waymo CameraName: FRONT, FRONT_LEFT, FRONT_RIGHT, SIDE_LEFT, SIDE_RIGHT
_FILE = re.compile(r"(\d{5})_([1-5])\.jpg")
_LAYOUT = "<root>/<segment>/00000_1.jpg (+ .exr, .npz), as written by DUSt3R's preprocess_waymo.py"


def _read_invalid_pairs(path: Path) -> dict[str, set[tuple[str, str]]]:
    """CUT3R's invalid_files.h5 -> segment -> {(camera id, frame)} to skip."""
    import h5py  # imported here: only roots with an invalid-files list need it

    try:
        with h5py.File(require_file(path, "invalid-files list"), "r") as f:
            return {
                segment: {tuple(bytes(p).decode("utf-8").split("_")) for p in f[segment]["invalid_pairs"][()]}
                for segment in f
            }
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ClipFormatError(f"{path}: unreadable invalid-files list (<segment>/invalid_pairs): {err}") from None


@register_dataset("waymo")
class WaymoDataset(SequenceDataset):
    """Waymo clips of one camera: RGB, sparse metric LiDAR z-depth, cameras. See the module docstring.

    Args (after the `SequenceDataset` ones):
        cameras: camera ids to use (1..5); CUT3R leaves out 5 (SIDE_RIGHT) without saying why.
        skip_invalid: skip the frames listed in `<root>/invalid_files.h5` when the file exists.
    """

    name = "waymo"
    is_metric = True
    sparse_depth = True

    def __init__(
        self,
        root: str | None = None,
        cameras: list[int] | tuple[int, ...] = CAMERA_IDS,
        skip_invalid: bool = True,
        **kwargs,
    ) -> None:
        unknown = sorted(set(cameras) - set(CAMERA_IDS))
        if unknown or not cameras:
            raise ValueError(f"cameras: expected a non-empty subset of {list(CAMERA_IDS)}, got {list(cameras)}")
        self.cameras, self.skip_invalid = tuple(sorted(set(cameras))), skip_invalid
        self._frames: dict[str, tuple[str, int, list[str]]] = {}  # seq -> (segment, camera, frame numbers)
        super().__init__(root, **kwargs)  # num_frames, image_size, normalize, split, ...: SequenceDataset's

    def find_sequences(self) -> dict[str, int]:
        invalid_path = self.root / "invalid_files.h5"
        invalid = _read_invalid_pairs(invalid_path) if self.skip_invalid and invalid_path.is_file() else {}
        for segment_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            skip = invalid.get(segment_dir.name, set())
            by_camera: dict[int, list[str]] = {}
            with os.scandir(segment_dir) as entries:
                for entry in entries:
                    match = _FILE.fullmatch(entry.name)
                    if match and int(match.group(2)) in self.cameras and (match.group(2), match.group(1)) not in skip:
                        by_camera.setdefault(int(match.group(2)), []).append(match.group(1))
            for camera, frames in sorted(by_camera.items()):
                self._frames[f"{segment_dir.name}_cam{camera}"] = (segment_dir.name, camera, sorted(frames))
        if not self._frames:
            raise ClipFormatError(f"{self.root}: no Waymo frames of cameras {list(self.cameras)}; expected {_LAYOUT}")
        return {seq: len(frames) for seq, (_, _, frames) in self._frames.items()}

    def load_frame(self, seq: str, index: int) -> Frame:
        segment, camera, frames = self._frames[seq]
        stem = self.root / segment / f"{frames[index]}_{camera}"
        image_path, exr_path, npz_path = (Path(f"{stem}{ext}") for ext in (".jpg", ".exr", ".npz"))
        image = read_rgb(image_path)
        K, extrinsics = self._camera(npz_path)
        depth = read_exr(exr_path)
        if depth.shape != image.shape[:2]:
            raise ClipFormatError(f"{exr_path}: depth is {depth.shape}, expected {image.shape[:2]} like the image")
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
        return Frame(image=image, intrinsics=K, extrinsics=extrinsics, depth=depth, source=str(image_path))

    @staticmethod
    def _camera(path: Path) -> tuple[np.ndarray, np.ndarray]:
        """npz -> K (3, 3) pixels, extrinsics (3, 4) camera-from-world OpenCV (inverse of `cam2world`)."""
        data = read_npz(path, keys=("intrinsics", "cam2world"))
        K, cam2world = np.asarray(data["intrinsics"], np.float64), np.asarray(data["cam2world"], np.float64)
        if K.shape != (3, 3) or cam2world.shape != (4, 4):
            raise ClipFormatError(f"{path}: expected intrinsics (3, 3) and cam2world (4, 4), got {K.shape}, "
                                  f"{cam2world.shape}")
        if not (np.isfinite(K).all() and np.isfinite(cam2world).all()):
            raise ClipFormatError(f"{path}: intrinsics or cam2world hold NaN/inf")
        if np.abs(cam2world[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-6:
            raise ClipFormatError(f"{path}: cam2world last row is {cam2world[3]}, expected [0 0 0 1]")
        rotation = reader_rotation(cam2world[:3, :3], f"{path}: cam2world")  # camera-to-world, re-orthonormalised
        return K, se3_inverse(np.concatenate([rotation, cam2world[:3, 3:]], axis=1))
