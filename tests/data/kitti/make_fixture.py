"""Write a tiny KITTI depth (annotated) + raw drive set in the real on-disk layout, from a known synthetic scene.

Layout (datasets.md section 11; KITTI raw devkit + depth devkit)::

    <root>/data_depth_annotated/<split>/<drive>/proj_depth/groundtruth/image_02/0000000005.png   uint16, m * 256
    <root>/<date>/<drive>/image_02/data/0000000000.png ...          raw rectified colour frames (all of them)
    <root>/<date>/<drive>/oxts/data/0000000000.txt ...              30-number GPS/IMU packets
    <root>/<date>/{calib_cam_to_cam.txt, calib_velo_to_cam.txt, calib_imu_to_velo.txt}

The annotated GT starts at frame 5 (as the release: the first and last 5 raw frames have none). Calibration values
resemble the 2011_09_26 files (velodyne / IMU / rectification rotations, P_rect_02 with its 0.06 m baseline
term; the image is 1/12 of the real size, so the intrinsics are scaled); they are synthetic. The car drives
straight along its heading YAW (OXTS yaw, 0 = east) at SPEED metres per frame; lat / lon are the inverse
Mercator of that track (devkit `convertOxtsToPose`). The scene is a wall x = WALL_X (metres ahead of the first GT
frame's IMU, in that IMU frame: x forward, y left, z up), seen by camera 2 whose pose follows pykitti's
composition T_cam2_imu = T2 @ R_rect_00 @ T_velo_cam @ T_imu_velo (T2 = x shift P[0,3] / P[0,0]). The depth is
sparse: a fixed random ~30 % of pixels (LiDAR-like) hold round(z * 256), the rest 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.data.sintel.make_fixture import render_plane

DATE, DRIVE, TRAIN_DRIVE = "2011_09_26", "2011_09_26_drive_0002_sync", "2011_09_26_drive_0001_sync"
HW = (32, 104)
ER, LAT0, LON0, ALT0, YAW, SPEED = 6378137.0, 49.011, 8.4235, 112.0, 0.6, 0.9
WALL_X = 15.0
FIRST_GT, NUM_RAW = 5, 11  # GT frames 5..(NUM_RAW - 1 - 2); raw frames 0..NUM_RAW-1
R_VELO_CAM = [7.533745e-03, -9.999714e-01, -6.166020e-04, 1.480249e-02, 7.280733e-04, -9.998902e-01,
              9.998621e-01, 7.523790e-03, 1.480755e-02]
T_VELO_CAM = [-4.069766e-03, -7.631618e-02, -2.717806e-01]
R_IMU_VELO = [9.999976e-01, 7.553071e-04, -2.035826e-03, -7.854027e-04, 9.998898e-01, -1.482298e-02,
              2.024406e-03, 1.482454e-02, 9.998881e-01]
T_IMU_VELO = [-8.086759e-01, 3.195559e-01, -7.997231e-01]
R_RECT_00 = [9.999239e-01, 9.837760e-03, -7.445048e-03, -9.869795e-03, 9.999421e-01, -4.278459e-03,
             7.402527e-03, 4.351614e-03, 9.999631e-01]
P_RECT_02 = np.array([[721.5377 / 12, 0.0, (609.5593 + 0.5) / 12 - 0.5, 44.85728 / 12],
                      [0.0, 721.5377 / 12, (172.854 + 0.5) / 12 - 0.5, 0.2163791 / 12],
                      [0.0, 0.0, 1.0, 0.002745884]])
P_RECT_02 = np.array([[float(f"{v:.6e}") for v in row] for row in P_RECT_02])  # as written to the file


def _orthonormal(values) -> np.ndarray:
    U, _, Vt = np.linalg.svd(np.asarray(values, np.float64).reshape(3, 3))
    return U @ Vt


def _rigid(R, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = _orthonormal(R), t
    return T


def _fmt(values) -> str:
    return " ".join(f"{v:.6e}" for v in np.ravel(values))


def packet(i: int, scale: float) -> list[float]:
    """OXTS packet of raw frame i: position along the heading, inverse Mercator; small roll / pitch."""
    tx0 = scale * ER * np.deg2rad(LON0)
    ty0 = scale * ER * np.log(np.tan(np.deg2rad(90.0 + LAT0) / 2))
    d = SPEED * (i - FIRST_GT)
    tx, ty = tx0 + d * np.cos(YAW), ty0 + d * np.sin(YAW)
    lon = np.rad2deg(tx / (scale * ER))
    lat = np.rad2deg(2 * np.arctan(np.exp(ty / (scale * ER)))) - 90.0
    roll, pitch, yaw = 0.01 + 0.002 * i, -0.02 + 0.001 * i, YAW + 0.003 * (i - FIRST_GT)
    return [lat, lon, ALT0 + 0.05 * i, roll, pitch, yaw] + [0.0] * 19 + [0.5, 0.05, 4, 10, 5, 5, 5]


def imu_to_world(p: list[float], scale: float) -> np.ndarray:
    """The devkit's convertOxtsToPose for one packet (Mercator metres), written out separately."""
    lat, lon, alt, roll, pitch, yaw = p[:6]
    T = np.eye(4)
    T[:3, 3] = [scale * ER * np.pi * lon / 180, scale * ER * np.log(np.tan(np.pi * (90 + lat) / 360)), alt]
    c, s = np.cos, np.sin
    Rx = np.array([[1, 0, 0], [0, c(roll), -s(roll)], [0, s(roll), c(roll)]])
    Ry = np.array([[c(pitch), 0, s(pitch)], [0, 1, 0], [-s(pitch), 0, c(pitch)]])
    Rz = np.array([[c(yaw), -s(yaw), 0], [s(yaw), c(yaw), 0], [0, 0, 1]])
    T[:3, :3] = Rz @ Ry @ Rx
    return T


def write_calibration(date_dir: Path) -> np.ndarray:
    """The three calibration files; return T_cam2_imu (4x4)."""
    date_dir.mkdir(parents=True, exist_ok=True)
    P0 = P_RECT_02.copy()
    P0[:, 3] = 0.0
    (date_dir / "calib_cam_to_cam.txt").write_text(
        "calib_time: 09-Jan-2012 13:57:47\ncorner_dist: 9.950000e-02\n"
        + "".join(f"S_0{c}: 1.392000e+03 5.120000e+02\nR_rect_0{c}: {_fmt(R_RECT_00 if c == 0 else np.eye(3))}\n"
                  f"P_rect_0{c}: {_fmt(P_RECT_02 if c == 2 else P0)}\n" for c in range(4)))
    (date_dir / "calib_velo_to_cam.txt").write_text(
        f"calib_time: 15-Mar-2012 11:37:16\nR: {_fmt(R_VELO_CAM)}\nT: {_fmt(T_VELO_CAM)}\n"
        "delta_f: 0.000000e+00 0.000000e+00\ndelta_c: 0.000000e+00 0.000000e+00\n")
    (date_dir / "calib_imu_to_velo.txt").write_text(
        f"calib_time: 25-May-2012 16:47:16\nR: {_fmt(R_IMU_VELO)}\nT: {_fmt(T_IMU_VELO)}\n")
    T2 = np.eye(4)
    T2[0, 3] = P_RECT_02[0, 3] / P_RECT_02[0, 0]
    R_rect = np.eye(4)
    R_rect[:3, :3] = _orthonormal(R_RECT_00)
    return T2 @ R_rect @ _rigid(R_VELO_CAM, T_VELO_CAM) @ _rigid(R_IMU_VELO, T_IMU_VELO)


def write_drive(root: Path, split: str, drive: str, cam_imu: np.ndarray, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    raw = root / DATE / drive
    (raw / "image_02" / "data").mkdir(parents=True, exist_ok=True)
    (raw / "oxts" / "data").mkdir(parents=True, exist_ok=True)
    gt_dir = root / "data_depth_annotated" / split / drive / "proj_depth" / "groundtruth" / "image_02"
    gt_dir.mkdir(parents=True, exist_ok=True)
    scale = np.cos(np.deg2rad(LAT0))
    packets = [packet(i, scale) for i in range(NUM_RAW)]
    origin = np.linalg.inv(imu_to_world(packets[FIRST_GT], scale))
    K = P_RECT_02[:, :3]
    truth: dict[str, list] = {"names": [], "extrinsics": [], "depth": [], "dense": []}
    for i in range(NUM_RAW):
        name = f"{i:010d}"
        (raw / "oxts" / "data" / f"{name}.txt").write_text(" ".join(repr(float(v)) for v in packets[i]) + "\n")
        world_imu = origin @ imu_to_world(packets[i], scale)
        E = (cam_imu @ np.linalg.inv(world_imu))[:3]
        z, colour = render_plane(K, E, HW, point=(WALL_X, 0.0, 0.0), normal=(1.0, 0.0, 0.0))
        Image.fromarray(colour).save(raw / "image_02" / "data" / f"{name}.png")
        if FIRST_GT <= i < NUM_RAW - 2:
            raw_depth = np.where(np.isfinite(z) & (rng.random(HW) < 0.3), np.rint(z * 256), 0).astype(np.uint16)
            Image.fromarray(raw_depth).save(gt_dir / f"{name}.png")
            for key, value in (("names", name), ("extrinsics", E), ("depth", raw_depth / 256.0), ("dense", z)):
                truth[key].append(value)
    return {k: (v if k == "names" else np.stack(v)) for k, v in truth.items()}


def write_fixture(root: Path) -> dict:
    """Val drive DRIVE (GT frames 5..8) and train drive TRAIN_DRIVE; return {"K", drive: truth}."""
    root = Path(root)
    cam_imu = write_calibration(root / DATE)
    return {"K": P_RECT_02[:, :3].copy(), DRIVE: write_drive(root, "val", DRIVE, cam_imu),
            TRAIN_DRIVE: write_drive(root, "train", TRAIN_DRIVE, cam_imu, seed=1)}


if __name__ == "__main__":
    import sys

    write_fixture(Path(sys.argv[1] if len(sys.argv) > 1 else "kitti_fixture"))
