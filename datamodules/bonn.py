"""Bonn RGB-D Dynamic (Palazzolo et al., IROS 2019), the video-depth benchmark: Kinect-style RGB-D, 640x480.

Layout (datasets.md section 8; TUM-like, without rgb.txt / depth.txt)::

    <root>/rgbd_bonn_<seq>/rgb/<timestamp>.png       8-bit RGB; sorted file names = time order
    <root>/rgbd_bonn_<seq>/depth/<timestamp>.png     uint16, z = value / 5000 m, 0 = missing
    <root>/rgbd_bonn_<seq>/groundtruth.txt           `timestamp tx ty tz qx qy qz qw` (mocap marker, camera-to-world)

`<root>` may also be the folder holding `rgbd_bonn_dataset/`. A sequence is named without the prefix (`balloon2`,
as in experiments/eval/frames/bonn_*.txt). Its frames are ALL its rgb images in sorted file-name order, so position
N is the official frame N (the protocols take `[30:140]`, `@30..@139`; kaichen-z/PAGE4D `prepare/bonn_pre.py`,
MonST3R `prepare_bonn.py`); frame names are the file names' timestamps.

Pairing (`association`):
- "timestamp" (default): each rgb image takes the groundtruth row and the depth image associated with it by TUM's
  `associate.py` rule (greedy closest pairs within `max_time_difference` = 0.02 s). An rgb image without a pose is
  an error naming the sequence and groundtruth.txt (e.g. a truncated file); one without depth has no depth
  (all invalid). The Bonn RGB and depth streams run at slightly different rates and drop frames, so pairing by
  position drifts (AutoLab-SAI-SJTU/InfiniteVGGT issue #18; DepthAnything/Video-Depth-Anything issue #99).
- "row": the official pairing, the i-th sorted rgb with the i-th sorted depth and groundtruth row i (bonn_pre.py);
  the three counts must then be equal, else an error naming the sequence and the file that differs.

Cameras (kaichen-z/PAGE4D `training/data/datasets/bonn.py` `_load_camera_poses`, datasets.md section 8):
- groundtruth.txt is the mocap MARKER pose with the dataset's "ROS bug": with `pose_correction` (default)
  T_w_marker = inv(T_ROS) @ T_gt @ T_ROS, T_w_cam = T_w_marker @ T_m, extrinsics = inv(T_w_cam). T_m's 3x3 block is
  not a rotation (all singular values ~1.0593): it is replaced by its nearest rotation (`geometry.nearest_rotation`
  of the block divided by det^(1/3): the polar factor), its translation kept, so the extrinsics stay rigid.
  `pose_correction=False` reads the rows as plain TUM camera-to-world poses, as the official pose scripts do
  (`groundtruth_110.txt` read as TUM). The quaternion is xyzw, as TUM's.
- intrinsics: fx 542.822841, fy 542.576870, cx 315.593520, cy 237.756098 (PAGE4D's hard-coded values, used as
  pixel-centre coordinates). The distortion k1 0.039903, k2 -0.099343, p1 -0.000730, p2 -0.000144 is IGNORED: the
  official evaluation scores the raw frames (bonn_pre.py copies them); PAGE4D's training reader undistorts.
  Images must be 640x480.
- depth: uint16 / 5000 (PAGE4D's comment says millimetres; the formula is what counts); 0 = invalid.
- No dynamic masks. `is_metric`: metres.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.base import register_dataset
from datamodules.io import ClipFormatError, read_rgb
from datamodules.sequence import Frame, SequenceDataset
from datamodules.tum import (
    MAX_TIME_DIFFERENCE,
    associate,
    check_image_size,
    pinhole,
    read_depth_png,
    read_trajectory,
    tum_extrinsics,
)
from page4d_lightning.geometry import nearest_rotation, se3_inverse

INTRINSICS = (542.822841, 542.576870, 315.593520, 237.756098)  # fx, fy, cx, cy
DISTORTION = (0.039903, -0.099343, -0.000730, -0.000144, 0.0)  # k1 k2 p1 p2 k3 (ignored, see the docstring)
IMAGE_HW = (480, 640)
ASSOCIATIONS = ("timestamp", "row")
PREFIX = "rgbd_bonn_"
T_ROS = np.array([[-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
T_M_STORED = np.array([  # marker -> sensor, as PAGE4D stores it (3x3 block scaled by ~1.0593)
    [1.0157, 0.1828, -0.2389, 0.0113],
    [0.0009, -0.8431, -0.6413, -0.0098],
    [-0.3009, 0.6147, -0.8085, 0.0111],
    [0.0, 0.0, 0.0, 1.0],
])


def _rigid_marker_to_camera() -> np.ndarray:
    """T_m with its 3x3 block replaced by the nearest rotation (the polar factor; translation kept)."""
    block = T_M_STORED[:3, :3]
    T = T_M_STORED.copy()
    T[:3, :3] = nearest_rotation(block / np.cbrt(np.linalg.det(block)), "Bonn T_m")
    T.flags.writeable = False
    return T


T_M = _rigid_marker_to_camera()
for _constant in (T_ROS, T_M_STORED):
    _constant.flags.writeable = False


def bonn_extrinsics(pose: np.ndarray, correction: bool = True) -> np.ndarray:
    """(7,) groundtruth row `tx ty tz qx qy qz qw` -> (3, 4) camera-from-world: with `correction`
    inv(inv(T_ROS) @ T_gt @ T_ROS @ T_M), else the plain TUM inverse."""
    if not correction:
        return tum_extrinsics(pose)
    marker = np.vstack([se3_inverse(tum_extrinsics(pose)), [0.0, 0.0, 0.0, 1.0]])  # T_gt, camera-to-world 4x4
    cam_to_world = T_ROS.T @ marker @ T_ROS @ T_M  # T_ROS is a permutation: its inverse is its transpose
    return se3_inverse(cam_to_world[:3])


def _stamp(name: str, path: Path) -> float:
    try:
        return float(name)
    except ValueError:
        raise ClipFormatError(f"{path}: file name is not a timestamp (Bonn: rgb/<timestamp>.png)") from None


@register_dataset("bonn")
class BonnDataset(SequenceDataset):
    """Bonn RGB-D Dynamic clips: RGB, metric depth, corrected mocap cameras. See the module docstring.

    Args (after the `SequenceDataset` ones):
        association: "timestamp" (default) or "row" (the official by-position pairing).
        pose_correction: apply the ROS-bug and marker-to-sensor correction (default); False = plain TUM poses.
        max_time_difference: association radius in seconds (0.02).
    """

    name = "bonn"
    is_metric = True

    def __init__(
        self,
        root: str | None = None,
        association: str = "timestamp",
        pose_correction: bool = True,
        max_time_difference: float = MAX_TIME_DIFFERENCE,
        **kwargs,
    ) -> None:
        if association not in ASSOCIATIONS:
            raise ValueError(f"association: expected one of {', '.join(ASSOCIATIONS)}, got {association!r}")
        if not max_time_difference > 0:
            raise ValueError(f"max_time_difference: expected > 0 seconds, got {max_time_difference}")
        self.association, self.pose_correction = association, pose_correction
        self.max_time_difference = max_time_difference
        self._folders: dict[str, Path] = {}
        # sequence -> per frame (rgb name, depth name or None, pose (7,)), in sorted rgb order
        self._frames: dict[str, list[tuple[str, str | None, np.ndarray]]] = {}
        super().__init__(root, **kwargs)  # num_frames, image_size, normalize, split, ...: SequenceDataset's

    def find_sequences(self) -> dict[str, int]:
        base = self.root / "rgbd_bonn_dataset" if (self.root / "rgbd_bonn_dataset").is_dir() else self.root
        for seq_dir in sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith(PREFIX)):
            seq = seq_dir.name[len(PREFIX):]
            names = {}
            for kind in ("rgb", "depth"):
                folder = seq_dir / kind
                if not folder.is_dir():
                    raise ClipFormatError(f"{folder}: sequence {seq!r} has no {kind} folder")
                names[kind] = sorted(p.stem for p in folder.iterdir() if p.suffix == ".png")
            if not names["rgb"]:
                raise ClipFormatError(f"{seq_dir / 'rgb'}: sequence {seq!r} has no images")
            gt_path = seq_dir / "groundtruth.txt"
            stamps, poses = read_trajectory(gt_path)
            self._folders[seq] = seq_dir
            self._frames[seq] = self._pair(seq, seq_dir, names["rgb"], names["depth"], stamps, poses)
        if not self._frames:
            raise ClipFormatError(f"{base}: no Bonn sequences; expected {base}/{PREFIX}<seq>/{{rgb, depth, "
                                  "groundtruth.txt}")
        return {seq: len(frames) for seq, frames in self._frames.items()}

    def _pair(self, seq: str, seq_dir: Path, rgb: list[str], depth: list[str], stamps: np.ndarray,
              poses: np.ndarray) -> list[tuple[str, str | None, np.ndarray]]:
        gt_path = seq_dir / "groundtruth.txt"
        if self.association == "row":
            for count, what in ((len(depth), seq_dir / "depth"), (len(stamps), gt_path)):
                if count != len(rgb):
                    raise ClipFormatError(f"{what}: sequence {seq!r} has {count} entries for {len(rgb)} rgb images; "
                                          "association 'row' pairs them by position (use 'timestamp')")
            return [(r, d, p) for r, d, p in zip(rgb, depth, poses)]
        rgb_stamps = np.array([_stamp(n, seq_dir / "rgb" / f"{n}.png") for n in rgb])
        depth_stamps = np.array([_stamp(n, seq_dir / "depth" / f"{n}.png") for n in depth])
        posed = dict(associate(rgb_stamps, stamps, self.max_time_difference))
        missing = [n for i, n in enumerate(rgb) if i not in posed]
        if missing:
            raise ClipFormatError(f"{gt_path}: sequence {seq!r}: {len(missing)} of {len(rgb)} rgb images have no "
                                  f"pose within {self.max_time_difference} s ({len(stamps)} rows), first "
                                  f"rgb/{missing[0]}.png")
        with_depth = dict(associate(rgb_stamps, depth_stamps, self.max_time_difference))
        return [(n, depth[with_depth[i]] if i in with_depth else None, poses[posed[i]]) for i, n in enumerate(rgb)]

    def frame_names(self, seq: str) -> list[str]:
        return [rgb for rgb, _, _ in self._frames[seq]]

    def load_frame(self, seq: str, index: int) -> Frame:
        rgb, depth_name, pose = self._frames[seq][index]
        seq_dir = self._folders[seq]
        image_path = seq_dir / "rgb" / f"{rgb}.png"
        image = read_rgb(image_path)
        check_image_size(image, image_path, IMAGE_HW)
        depth = None
        if depth_name is not None:
            depth_path = seq_dir / "depth" / f"{depth_name}.png"
            depth = read_depth_png(depth_path)
            if depth.shape != image.shape[:2]:
                raise ClipFormatError(f"{depth_path}: depth is {depth.shape}, expected {image.shape[:2]}")
        extrinsics = bonn_extrinsics(pose, self.pose_correction)
        return Frame(image=image, intrinsics=pinhole(*INTRINSICS), extrinsics=extrinsics, depth=depth,
                     source=str(image_path))
