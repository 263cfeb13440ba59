"""TUM RGB-D (Sturm et al., IROS 2012), the freiburg3 dynamic sequences of the pose benchmark; Kinect, 640x480.

Layout (datasets.md section 9; the TUM "File Formats" page)::

    <root>/rgbd_dataset_freiburg3_<name>/rgb/<timestamp>.png     8-bit RGB
    <root>/rgbd_dataset_freiburg3_<name>/depth/<timestamp>.png   uint16, z = value / 5000 m, 0 = missing
    <root>/rgbd_dataset_freiburg3_<name>/{rgb.txt, depth.txt}    `timestamp filename` lines, `#` comments
    <root>/rgbd_dataset_freiburg3_<name>/groundtruth.txt          `timestamp tx ty tz qx qy qz qw` lines, ~100 Hz

A sequence is an `rgbd_dataset_*` folder (the MonST3R download holds the 8 fr3 `sitting_*` / `walking_*` ones),
named by the folder. Its frames are the rgb.txt images associated with a groundtruth pose by the standard TUM
`associate.py` (greedy nearest pairs, |t_rgb - t_gt| < 0.02 s, offset 0), in time order: exactly the frames of the
official pose protocol (kaichen-z/PAGE4D `training/data/datasets/prepare/tum_pre.py:84-101`, MonST3R
`prepare_tum.py`), which then takes `[::3][:90]` (experiments/eval/frames/tum_pose_*.txt, `@N` = this position).
An rgb image without a pose within 0.02 s is left out (logged per sequence); a sequence where none is associated is
an error naming the sequence and groundtruth.txt. Depth images are associated with the kept rgb images the same way
(0.02 s); a frame without one has no depth (all pixels invalid). Frame names are the rgb file names' timestamps.

Conventions:
- groundtruth.txt is the colour camera's optical centre and orientation in the mocap world, camera-to-world, the
  quaternion scalar-last (xyzw) (TUM "File Formats"; datasets.md section 9): extrinsics = inverse of
  [quat_to_rotmat(q) | t] (`geometry.quat_to_rotmat` normalises q, `geometry.se3_inverse`); the camera axes are
  OpenCV's, as every public reader treats them (checked here on real fr1/xyz lines in tests/test_tum.py).
- depth: uint16 / 5000 (1 unit = 0.2 mm), registered to the RGB camera (same pixels); 0 = invalid.
- intrinsics: the fr3 calibration fx 535.4, fy 539.2, cx 320.1, cy 247.6 for freiburg3 sequences (datasets.md: the
  values of public loaders, not checked against TUM's page), TUM's ROS default 525 / 525 / 319.5 / 239.5 for any
  other (one warning); distortion taken as zero; pixel-centre convention (319.5 = (640 - 1) / 2). Images must be
  640x480.
- No dynamic masks. `is_metric`: metres.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from datamodules.base import register_dataset
from datamodules.io import ClipFormatError, read_png_uint16, read_rgb, require_file
from datamodules.sequence import Frame, SequenceDataset
from page4d_lightning.geometry import quat_to_rotmat, se3_inverse

logger = logging.getLogger(__name__)

DEPTH_SCALE = 5000.0  # uint16 units per metre (TUM "File Formats")
MAX_TIME_DIFFERENCE = 0.02  # seconds, associate.py's default as the pose benchmark uses it
IMAGE_HW = (480, 640)
FR3_INTRINSICS = (535.4, 539.2, 320.1, 247.6)  # fx, fy, cx, cy
ROS_DEFAULT_INTRINSICS = (525.0, 525.0, 319.5, 239.5)
_LAYOUT = "<root>/rgbd_dataset_freiburg3_<name>/{rgb.txt, depth.txt, groundtruth.txt, rgb/, depth/}"


def _data_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the non-comment lines of a TUM text file (`#` comments; commas / tabs as spaces)."""
    path = require_file(path, "TUM text file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ClipFormatError(f"{path}: unreadable text file: {err}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].replace(",", " ").replace("\t", " ").split()
        if fields:
            rows.append((number, fields))
    return rows


def read_file_list(path: str | Path) -> list[tuple[float, str]]:
    """rgb.txt / depth.txt -> (timestamp, relative file name) per line, in file order."""
    entries = []
    for number, fields in _data_lines(Path(path)):
        try:
            entries.append((float(fields[0]), fields[1]))
        except (ValueError, IndexError):
            raise ClipFormatError(f"{path}, line {number}: expected `timestamp filename`, got {fields}") from None
    return entries


def read_trajectory(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """groundtruth.txt -> timestamps (N,) and poses (N, 7) `tx ty tz qx qy qz qw` (camera-to-world), float64."""
    stamps, poses = [], []
    for number, fields in _data_lines(Path(path)):
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if len(values) != 8 or not np.isfinite(values).all() or np.linalg.norm(values[4:]) < 1e-6:
            raise ClipFormatError(f"{path}, line {number}: expected `timestamp tx ty tz qx qy qz qw` (8 finite "
                                  f"numbers, a non-zero quaternion), got {fields}")
        stamps.append(values[0])
        poses.append(values[1:])
    return np.asarray(stamps, np.float64).reshape(-1), np.asarray(poses, np.float64).reshape(-1, 7)


def associate(first: np.ndarray, second: np.ndarray, max_difference: float = MAX_TIME_DIFFERENCE) -> list[tuple]:
    """TUM `associate.py` (offset 0): every pair with |a - b| < max_difference, taken greedily closest first, each
    stamp at most once -> (index in first, index in second) pairs sorted by (a, b)."""
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    order = np.argsort(second, kind="stable")
    ordered = second[order]
    candidates = []
    for i, a in enumerate(first):
        lo, hi = np.searchsorted(ordered, [a - max_difference, a + max_difference], side="left")
        for k in range(lo, min(hi + 1, len(ordered))):
            if abs(a - ordered[k]) < max_difference:
                candidates.append((abs(a - ordered[k]), a, ordered[k], i, int(order[k])))
    candidates.sort()  # as associate.py: (difference, a, b); the indices only break exact ties
    used_first, used_second, matches = set(), set(), []
    for _, a, b, i, j in candidates:
        if i not in used_first and j not in used_second:
            used_first.add(i), used_second.add(j)
            matches.append((a, b, i, j))
    return [(i, j) for _, _, i, j in sorted(matches)]


def tum_extrinsics(pose: np.ndarray) -> np.ndarray:
    """(..., 7) `tx ty tz qx qy qz qw` camera-to-world (xyzw quaternion) -> (..., 3, 4) camera-from-world."""
    pose = np.asarray(pose, np.float64)
    cam_to_world = np.concatenate([quat_to_rotmat(pose[..., 3:7]), pose[..., :3, None]], axis=-1)
    return se3_inverse(cam_to_world)


def read_depth_png(path: str | Path, scale: float = DEPTH_SCALE) -> np.ndarray:
    """A uint16 depth PNG -> (H, W) float32 metres (value / `scale`), 0 = invalid."""
    return (read_png_uint16(path).astype(np.float64) / scale).astype(np.float32)


def pinhole(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def check_image_size(image: np.ndarray, path: Path, expected_hw: tuple[int, int]) -> None:
    if image.shape[:2] != expected_hw:
        raise ClipFormatError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, expected "
                              f"{expected_hw[1]}x{expected_hw[0]} (the fixed intrinsics are for that size)")


@register_dataset("tum")
class TUMDataset(SequenceDataset):
    """TUM RGB-D dynamic clips: RGB, metric depth, associated mocap cameras. See the module docstring.

    Args (after the `SequenceDataset` ones):
        max_time_difference: association radius in seconds (0.02, the benchmark's).
    """

    name = "tum"
    is_metric = True

    def __init__(self, root: str | None = None, max_time_difference: float = MAX_TIME_DIFFERENCE, **kwargs) -> None:
        if not max_time_difference > 0:
            raise ValueError(f"max_time_difference: expected > 0 seconds, got {max_time_difference}")
        self.max_time_difference = max_time_difference
        # sequence -> per frame (rgb file, depth file or None, pose (7,)), in association order
        self._frames: dict[str, list[tuple[str, str | None, np.ndarray]]] = {}
        self._warned_intrinsics = False
        super().__init__(root, **kwargs)  # num_frames, image_size, normalize, split, ...: SequenceDataset's

    def find_sequences(self) -> dict[str, int]:
        for seq_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("rgbd_dataset")):
            seq = seq_dir.name
            rgb = read_file_list(seq_dir / "rgb.txt")
            depth = read_file_list(seq_dir / "depth.txt")
            gt_path = seq_dir / "groundtruth.txt"
            stamps, poses = read_trajectory(gt_path)
            rgb_stamps = np.array([t for t, _ in rgb])
            posed = associate(rgb_stamps, stamps, self.max_time_difference)
            if not posed:
                raise ClipFormatError(f"{gt_path}: sequence {seq!r}: no rgb.txt image has a pose within "
                                      f"{self.max_time_difference} s ({len(rgb)} images, {len(stamps)} poses)")
            kept = np.array([i for i, _ in posed])
            with_depth = dict(associate(rgb_stamps[kept], [t for t, _ in depth], self.max_time_difference))
            self._frames[seq] = [
                (rgb[i][1], depth[with_depth[k]][1] if k in with_depth else None, poses[j])
                for k, (i, j) in enumerate(posed)
            ]
            if len(posed) < len(rgb):
                logger.info("tum: %s: %d of %d rgb images have no pose within %s s and are left out", seq,
                            len(rgb) - len(posed), len(rgb), self.max_time_difference)
        if not self._frames:
            raise ClipFormatError(f"{self.root}: no TUM sequences; expected {_LAYOUT}")
        return {seq: len(frames) for seq, frames in self._frames.items()}

    def frame_names(self, seq: str) -> list[str]:
        return [Path(rgb).stem for rgb, _, _ in self._frames[seq]]

    def intrinsics(self, seq: str) -> np.ndarray:
        if "freiburg3" in seq:
            return pinhole(*FR3_INTRINSICS)
        if not self._warned_intrinsics:
            self._warned_intrinsics = True
            logger.warning("tum: %s is not a freiburg3 sequence; using TUM's ROS default intrinsics %s",
                           seq, ROS_DEFAULT_INTRINSICS)
        return pinhole(*ROS_DEFAULT_INTRINSICS)

    def load_frame(self, seq: str, index: int) -> Frame:
        rgb, depth_file, pose = self._frames[seq][index]
        seq_dir = self.root / seq
        image_path = seq_dir / rgb
        image = read_rgb(image_path)
        check_image_size(image, image_path, IMAGE_HW)
        depth = None
        if depth_file is not None:
            depth = read_depth_png(seq_dir / depth_file)
            if depth.shape != image.shape[:2]:
                raise ClipFormatError(f"{seq_dir / depth_file}: depth is {depth.shape}, expected {image.shape[:2]}")
        return Frame(image=image, intrinsics=self.intrinsics(seq), extrinsics=tum_extrinsics(pose), depth=depth,
                     source=str(image_path))
