"""KITTI depth (Uhrig et al., 3DV 2017), annotated split: sparse LiDAR depth of the raw drives (optional eval).

Layout (datasets.md section 11: `data_depth_annotated.zip` next to the raw sync drives and their calibration)::

    <root>/data_depth_annotated/<split>/<drive>/proj_depth/groundtruth/image_02/0000000005.png   uint16, z = v / 256
    <root>/<date>/<drive>/image_02/data/0000000005.png        raw rectified colour image, same name
    <root>/<date>/calib_cam_to_cam.txt                        `P_rect_02: 12 numbers` (3x4 rectified projection)
    <root>/<date>/{calib_velo_to_cam.txt, calib_imu_to_velo.txt}   `R: 9 numbers`, `T: 3 numbers`  (poses only)
    <root>/<date>/<drive>/oxts/data/0000000005.txt            GPS/IMU packet (30 numbers), same name  (poses only)

i.e. `<root>` holds `data_depth_annotated/` and the raw date folders side by side (the raw `*_sync.zip` and
`*_calib.zip` unpacked into `<root>`, as KITTI's raw download script does).

`<drive>` is e.g. `2011_09_26_drive_0002_sync` and `<date>` its first 10 characters. `split` is the annotated split
folder: `val` by default (the 13 evaluation drives are val drives), `train` the other. A sequence is a drive,
named by its folder (as experiments/eval/frames/kitti_*.txt). Its frames are its GROUND-TRUTH files in name order
(the annotation leaves out the first and last 5 raw frames, so a drive starts at `0000000005`), named by their
10-digit stem; each image is found by that name, never by position (datasets.md pitfall). A GT frame without its
raw image is an error naming the drive and the image folder, raised when the dataset is built.

Conventions:
- depth: uint16 / 256 metres, 0 = no LiDAR return (MonST3R / CUT3R set those to -1; we keep 0). Sparse:
  `sparse_depth = True`, so resizing re-splats the returns, never interpolates them (as Waymo).
- intrinsics: K = the left 3x3 of `P_rect_<camera number>` of the drive's date (the rectified images' projection;
  OpenCV pixel centres, as KITTI's devkit projects with P directly).
- cameras (`poses="oxts"`, default): from the raw drive's OXTS packets, as KITTI's raw devkit `convertOxtsToPose.m`
  (and pykitti `utils.py`) do: Mercator scale s = cos(lat_0), t = (s er lon pi / 180, s er ln tan((90 + lat) pi /
  360), alt) with er = 6378137 m, R_imu = Rz(yaw) Ry(pitch) Rx(roll), every pose expressed relative to the drive's
  FIRST GT frame (world = that frame's IMU frame; lat_0 is that frame's latitude too). The camera is tied to the
  IMU by the raw calibration, as pykitti composes it: T_cam_imu = T_rect (shift P_rect_0X[0, 3] / P_rect_0X[0, 0]
  along x) @ R_rect_00 @ T_velo_to_cam @ T_imu_to_velo; extrinsics = T_cam_imu @ inv(T_world_imu). A missing OXTS
  or calibration file is an error naming the drive and the file. `poses="none"`: identity extrinsics for every
  frame, `has_poses = False` and every sample carries `abandon_pose = True` (left out of the camera loss):
  depth-only benchmark, pose metrics and multi-frame world points are not meaningful.
- No dynamic masks. `is_metric`: metres.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from datamodules.base import register_dataset
from datamodules.io import ClipFormatError, read_png_uint16, read_rgb, require_file
from datamodules.sequence import Frame, SequenceDataset, reader_rotation
from page4d_lightning.geometry import se3_inverse
from page4d_lightning.types import Sample

DEPTH_SCALE = 256.0  # uint16 units per metre (KITTI depth devkit)
CAMERAS = ("image_02", "image_03")
_FRAME = re.compile(r"\d{10}")
POSES = ("oxts", "none")
EARTH_RADIUS = 6378137.0  # metres, the devkit's `er`
_LAYOUT = "<root>/data_depth_annotated/<split>/<drive>/proj_depth/groundtruth/<camera>/0000000005.png"


def read_rectified_projection(path: Path, camera: str) -> np.ndarray:
    """`P_rect_0X` (X = the camera number) of a KITTI raw calib_cam_to_cam.txt -> (3, 4) float64."""
    key = f"P_rect_{camera[-2:]}"
    try:
        lines = require_file(path, "KITTI calibration").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ClipFormatError(f"{path}: unreadable calibration: {err}") from None
    for line in lines:
        name, _, values = line.partition(":")
        if name.strip() == key:
            try:
                P = np.array([float(v) for v in values.split()], np.float64)
            except ValueError:
                P = np.zeros(0)
            if P.size != 12 or not np.isfinite(P).all() or P[0] <= 0 or P[5] <= 0:
                raise ClipFormatError(f"{path}: {key} expected 12 finite numbers with fx, fy > 0, got "
                                      f"{values.strip()!r}")
            return P.reshape(3, 4)
    raise ClipFormatError(f"{path}: no {key} line (KITTI raw calib_cam_to_cam.txt)")


def read_calib_file(path: Path) -> dict[str, np.ndarray]:
    """A KITTI raw calibration text file (`key: numbers` lines) -> key -> float64 values; non-numeric lines
    (`calib_time`) are skipped."""
    try:
        lines = require_file(path, "KITTI calibration").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ClipFormatError(f"{path}: unreadable calibration: {err}") from None
    out = {}
    for line in lines:
        name, _, values = line.partition(":")
        try:
            out[name.strip()] = np.array([float(v) for v in values.split()], np.float64)
        except ValueError:
            continue
    return out


def _rigid(calib: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """`R` (9) and `T` (3) of a calibration file -> 4x4."""
    if calib.get("R", np.zeros(0)).size != 9 or calib.get("T", np.zeros(0)).size != 3:
        raise ClipFormatError(f"{path}: expected `R: 9 numbers` and `T: 3 numbers` lines (KITTI raw calibration)")
    T = np.eye(4)
    T[:3, :3] = reader_rotation(calib["R"].reshape(3, 3), f"{path}: R")
    T[:3, 3] = calib["T"]
    return T


def read_oxts(path: Path) -> np.ndarray:
    """An OXTS packet file -> its first 6 values: lat, lon (degrees), alt (m), roll, pitch, yaw (rad)."""
    try:
        values = np.array(require_file(path, "KITTI OXTS packet").read_text(encoding="utf-8").split(), np.float64)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ClipFormatError(f"{path}: unreadable OXTS packet: {err}") from None
    if values.size < 6 or not np.isfinite(values[:6]).all():
        raise ClipFormatError(f"{path}: expected an OXTS packet of 30 numbers (lat lon alt roll pitch yaw ...), got "
                              f"{values.size}")
    return values[:6]


def oxts_to_pose(packet: np.ndarray, scale: float) -> np.ndarray:
    """(lat, lon, alt, roll, pitch, yaw) -> 4x4 IMU-to-world (Mercator metres), the devkit's convertOxtsToPose."""
    lat, lon, alt, roll, pitch, yaw = packet
    t = [scale * EARTH_RADIUS * np.deg2rad(lon), scale * EARTH_RADIUS * np.log(np.tan(np.deg2rad(90.0 + lat) / 2)),
         alt]
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = rz @ ry @ rx, t
    return T


@register_dataset("kitti")
class KittiDataset(SequenceDataset):
    """KITTI annotated-depth clips: RGB, sparse metric depth, intrinsics, OXTS camera poses. See the module docstring.

    Args (after the `SequenceDataset` ones; `split` defaults to "val"):
        camera: "image_02" (left colour, the evaluation's) or "image_03" (right colour).
        poses: "oxts" (default; the raw drive's GPS/IMU, see the module docstring) or "none" (identity extrinsics,
            `has_poses` False, `abandon_pose` True: a depth-only benchmark).
    """

    name = "kitti"
    is_metric = True
    sparse_depth = True
    has_poses = True  # False with poses="none": extrinsics are identity, pose metrics are not meaningful

    def __init__(self, root: str | None = None, camera: str = "image_02", poses: str = "oxts", **kwargs) -> None:
        if camera not in CAMERAS:
            raise ValueError(f"camera: expected one of {', '.join(CAMERAS)}, got {camera!r}")
        if poses not in POSES:
            raise ValueError(f"poses: expected one of {', '.join(POSES)}, got {poses!r}")
        kwargs.setdefault("split", "val")
        self.camera, self.has_poses = camera, poses == "oxts"
        self._extrinsics: dict[str, np.ndarray] = {}  # drive -> (N, 3, 4) camera-from-world (poses="oxts")
        self._cam_imu: dict[str, np.ndarray] = {}  # date -> T_cam_imu 4x4
        self._frames: dict[str, list[str]] = {}  # drive -> GT frame names
        self._intrinsics: dict[str, np.ndarray] = {}  # date -> K (3, 3)
        super().__init__(root, **kwargs)  # num_frames, image_size, normalize, split, ...: SequenceDataset's

    def _gt_dir(self, drive: str) -> Path:
        return self.root / "data_depth_annotated" / self.split / drive / "proj_depth" / "groundtruth" / self.camera

    def _image_dir(self, drive: str) -> Path:
        return self.root / drive[:10] / drive / self.camera / "data"

    def find_sequences(self) -> dict[str, int]:
        split_dir = self.root / "data_depth_annotated" / self.split
        if not split_dir.is_dir():
            raise ClipFormatError(f"{split_dir}: missing annotated split folder; expected {_LAYOUT}")
        for drive_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            drive = drive_dir.name
            gt_dir = self._gt_dir(drive)
            if not gt_dir.is_dir():
                raise ClipFormatError(f"{gt_dir}: drive {drive!r} has no {self.camera} ground truth")
            names = sorted(p.stem for p in gt_dir.iterdir() if p.suffix == ".png" and _FRAME.fullmatch(p.stem))
            if not names:
                raise ClipFormatError(f"{gt_dir}: drive {drive!r} has no ground-truth PNGs")
            image_dir = self._image_dir(drive)
            stored = {p.stem for p in image_dir.iterdir() if p.suffix == ".png"} if image_dir.is_dir() else set()
            missing = [n for n in names if n not in stored]
            if missing:
                raise ClipFormatError(f"{image_dir}: drive {drive!r} has {len(names)} ground-truth frames but no raw "
                                      f"image {missing[0]}.png ({len(missing)} missing; the raw sync drive is needed)")
            date = drive[:10]
            if date not in self._intrinsics:
                P = read_rectified_projection(self.root / date / "calib_cam_to_cam.txt", self.camera)
                self._intrinsics[date] = P[:, :3].copy()
                if self.has_poses:
                    self._cam_imu[date] = self._camera_from_imu(date, P)
            self._frames[drive] = names
            if self.has_poses:
                self._extrinsics[drive] = self._drive_extrinsics(drive, names)
        if not self._frames:
            raise ClipFormatError(f"{split_dir}: no drives; expected {_LAYOUT}")
        return {drive: len(names) for drive, names in self._frames.items()}

    def frame_names(self, seq: str) -> list[str]:
        return list(self._frames[seq])

    def _camera_from_imu(self, date: str, P: np.ndarray) -> np.ndarray:
        """T_cam_imu = T_rect @ R_rect_00 @ T_velo_to_cam @ T_imu_to_velo (pykitti's composition)."""
        cam_path = self.root / date / "calib_cam_to_cam.txt"
        r_rect = read_calib_file(cam_path).get("R_rect_00", np.zeros(0))
        if r_rect.size != 9:
            raise ClipFormatError(f"{cam_path}: no `R_rect_00: 9 numbers` line (needed for OXTS poses)")
        R_rect = np.eye(4)
        R_rect[:3, :3] = reader_rotation(r_rect.reshape(3, 3), f"{cam_path}: R_rect_00")
        T_rect = np.eye(4)
        T_rect[0, 3] = P[0, 3] / P[0, 0]
        velo_path, imu_path = self.root / date / "calib_velo_to_cam.txt", self.root / date / "calib_imu_to_velo.txt"
        return T_rect @ R_rect @ _rigid(read_calib_file(velo_path), velo_path) @ _rigid(
            read_calib_file(imu_path), imu_path)

    def _drive_extrinsics(self, drive: str, names: list[str]) -> np.ndarray:
        """(N, 3, 4) camera-from-world of the GT frames; world = the IMU frame of the first GT frame."""
        oxts_dir = self.root / drive[:10] / drive / "oxts" / "data"
        if not oxts_dir.is_dir():
            raise ClipFormatError(f"{oxts_dir}: drive {drive!r} has no OXTS packets (poses='oxts' needs the raw sync "
                                  "drive's oxts/; poses='none' reads depth only)")
        packets = []
        for name in names:
            path = oxts_dir / f"{name}.txt"
            if not path.is_file():
                raise ClipFormatError(f"{path}: drive {drive!r} has a ground-truth frame {name} but no OXTS packet")
            packets.append(read_oxts(path))
        scale = np.cos(np.deg2rad(packets[0][0]))
        world_imu = [oxts_to_pose(p, scale) for p in packets]
        origin = np.linalg.inv(world_imu[0])
        cam_imu = self._cam_imu[drive[:10]]
        extrinsics = []
        for T_world_imu in world_imu:
            imu_from_world = np.vstack([se3_inverse((origin @ T_world_imu)[:3]), [0.0, 0.0, 0.0, 1.0]])
            extrinsics.append((cam_imu @ imu_from_world)[:3])
        return np.stack(extrinsics)

    def load_frame(self, seq: str, index: int) -> Frame:
        name = self._frames[seq][index]
        image_path = self._image_dir(seq) / f"{name}.png"
        image = read_rgb(image_path)
        depth_path = self._gt_dir(seq) / f"{name}.png"
        depth = (read_png_uint16(depth_path).astype(np.float64) / DEPTH_SCALE).astype(np.float32)
        if depth.shape != image.shape[:2]:
            raise ClipFormatError(f"{depth_path}: depth is {depth.shape}, expected {image.shape[:2]} like the image")
        extrinsics = self._extrinsics[seq][index] if self.has_poses else np.eye(3, 4)
        return Frame(image=image, intrinsics=self._intrinsics[seq[:10]].copy(), extrinsics=extrinsics,
                     depth=depth, source=str(image_path))

    def load_clip(self, index: int, num_frames: int, aspect_ratio: float | None = None,
                  epoch: int | None = None) -> Sample:
        """`SequenceDataset.load_clip`; with poses="none" plus `abandon_pose = True` (no camera poses)."""
        sample = super().load_clip(index, num_frames, aspect_ratio, epoch)
        if not self.has_poses:
            sample["abandon_pose"] = torch.tensor(True)
        return sample
