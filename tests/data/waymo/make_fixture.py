"""Write a tiny Waymo root in the DUSt3R/CUT3R preprocessed layout, from an analytic street with known GT.

World (Waymo's, z up): ground z = 0, a wall x = 30, and a car face sliding along x (dynamic). "LiDAR returns"
are points sampled on those surfaces, projected like `preprocess_waymo.py` does: pixel rounded, value = camera
z in metres, written as a single-channel float32 EXR (channel "Y", ZIP, as `cv2.imwrite` writes it). Points
closer than 3 px to a nearer kept point are dropped (a crude occlusion; it also keeps every return distinct
after resizing). Cameras are composed as the script does: cam2world = car2world @ cam2car @ inv(A), with A
mapping Waymo camera axes (x forward, y left, z up) to OpenCV.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import OpenEXR
from PIL import Image

SEGMENTS = {  # segment folder (named after its .tfrecord, as the script does) -> camera ids written
    "segment-1111_000_000_020_000_with_camera_labels.tfrecord": (1, 2),
    "segment-2222_000_000_020_000_with_camera_labels.tfrecord": (1,),
}
CAMERA_YAW = {1: 0.0, 2: np.pi / 4}  # FRONT, FRONT_LEFT: mount yaw about the car's z axis
A = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
MIN_SPACING = 3  # native pixels (Chebyshev) between kept returns


def _rz(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rigid(rotation: np.ndarray, translation) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rotation, translation
    return out


def _static_points() -> np.ndarray:
    gx, gy = np.meshgrid(np.arange(4.0, 28.0, 1.1), np.arange(-10.0, 10.0, 1.3))
    ground = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], axis=-1)
    wy, wz = np.meshgrid(np.arange(-12.0, 12.0, 1.1), np.arange(0.3, 6.0, 0.9))
    wall = np.stack([np.full(wy.size, 30.0), wy.ravel(), wz.ravel()], axis=-1)
    return np.concatenate([ground, wall])


def _car_points(t: int) -> np.ndarray:
    cy, cz = np.meshgrid(np.linspace(1.0, 3.0, 5), np.linspace(0.2, 1.4, 4))
    return np.stack([np.full(cy.size, 12.0 + 0.6 * t), cy.ravel(), cz.ravel()], axis=-1)


def write_exr(path: Path, depth: np.ndarray) -> None:
    """Single-channel float32 EXR as OpenCV's `imwrite` writes it (channel "Y", ZIP compression)."""
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {"Y": np.ascontiguousarray(depth, dtype=np.float32)}).write(str(path))


def write_invalid_files(root: Path, pairs: dict[str, list[str]]) -> Path:
    """CUT3R's `invalid_files.h5`: one group per segment with dataset `invalid_pairs` of b"<camera>_<frame>"."""
    path = Path(root) / "invalid_files.h5"
    with h5py.File(path, "w") as f:
        for segment, names in pairs.items():
            f.create_group(segment).create_dataset("invalid_pairs", data=np.array([n.encode() for n in names]))
    return path


def _project(points: np.ndarray, K: np.ndarray, cam2world: np.ndarray, hw: tuple[int, int]):
    """Visible, spaced returns -> (world points (P, 3), exact pixels (P, 2), camera z (P,), rounded pixels (P, 2))."""
    world2cam = np.linalg.inv(cam2world)
    cam = points @ world2cam[:3, :3].T + world2cam[:3, 3]
    in_front = cam[:, 2] > 0.5
    points, cam = points[in_front], cam[in_front]
    uv = cam[:, :2] / cam[:, 2:] @ K[:2, :2].T + K[:2, 2]
    pix = np.rint(uv).astype(np.int64)
    inside = (pix[:, 0] >= 0) & (pix[:, 0] < hw[1]) & (pix[:, 1] >= 0) & (pix[:, 1] < hw[0])
    blocked = np.zeros((hw[0] + 2 * MIN_SPACING, hw[1] + 2 * MIN_SPACING), dtype=bool)  # padded image
    keep = []
    for j in np.argsort(cam[:, 2], kind="stable"):  # nearest first
        col, row = pix[j] + MIN_SPACING
        if inside[j] and not blocked[row, col]:
            keep.append(j)
            blocked[row - MIN_SPACING + 1 : row + MIN_SPACING, col - MIN_SPACING + 1 : col + MIN_SPACING] = True
    keep = np.array(sorted(keep))
    return points[keep], uv[keep], cam[keep, 2].astype(np.float32), pix[keep]


def write_fixture(root: Path, num_frames: int = 6, height: int = 64, width: int = 96, seed: int = 0) -> dict:
    """Write every segment of `SEGMENTS` and return the GT per sequence "<segment>_cam<c>":
    {"intrinsics" (N, 3, 3), "cam2world" (N, 4, 4), "points" / "pixels" / "z": per frame (P, 3) world,
    (P, 2) exact native pixels, (P,) float32 metres, "depth" (N, h, w) float32 as written}."""
    rng = np.random.default_rng(seed)
    static = _static_points()
    rows, cols = np.mgrid[0:height, 0:width]
    gt = {}
    for s, (segment, cameras) in enumerate(SEGMENTS.items()):
        seg_dir = Path(root) / segment
        seg_dir.mkdir(parents=True, exist_ok=True)
        lateral = rng.uniform(-0.5, 0.5)
        for camera in cameras:
            K = np.array([[70.0 + camera, 0.0, 47.3], [0.0, 70.5 + camera, 31.6], [0.0, 0.0, 1.0]])
            cam2car = _rigid(_rz(CAMERA_YAW[camera]), [1.5, 0.2 * (camera - 1), 2.0])
            seq = {"intrinsics": [], "cam2world": [], "points": [], "pixels": [], "z": [], "depth": []}
            for t in range(num_frames):
                car2world = _rigid(_rz(0.01 * t + 0.02 * s), [0.9 * t, lateral + 0.05 * t, 0.0])
                cam2world = car2world @ cam2car @ np.linalg.inv(A)
                points, uv, z, pix = _project(np.concatenate([static, _car_points(t)]), K, cam2world, (height, width))
                depth = np.zeros((height, width), np.float32)
                depth[pix[:, 1], pix[:, 0]] = z
                stem = seg_dir / f"{t:05d}_{camera}"
                write_exr(Path(f"{stem}.exr"), depth)
                np.savez(f"{stem}.npz", intrinsics=K, cam2world=cam2world,
                         distortion=np.array([-0.03, 0.01, 1e-4, -2e-4, 0.0]))
                pattern = 127 + 60 * np.sin(cols / 5.0 + t)[..., None] * np.cos(rows / 7.0 + camera)[..., None]
                image = (pattern + [[[0, 40, -40]]]).clip(0, 255).astype(np.uint8)
                Image.fromarray(image).save(f"{stem}.jpg", quality=80)
                for key, value in zip(seq, (K, cam2world, points, uv, z, depth)):
                    seq[key].append(value)
            gt[f"{segment}_cam{camera}"] = {
                k: (np.stack(v) if k in ("intrinsics", "cam2world", "depth") else v) for k, v in seq.items()
            }
    return gt
