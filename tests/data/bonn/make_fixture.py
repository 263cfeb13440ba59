"""Write a tiny Bonn RGB-D Dynamic sequence in the real on-disk layout, rendered from an analytic scene with known GT.

Layout (datasets.md section 8)::

    <root>/rgbd_bonn_dataset/rgbd_bonn_<seq>/rgb/<timestamp>.png     640x480 RGB
    <root>/rgbd_bonn_dataset/rgbd_bonn_<seq>/depth/<timestamp>.png   uint16, metres * 5000, 0 = missing
    <root>/rgbd_bonn_dataset/rgbd_bonn_<seq>/groundtruth.txt         `timestamp tx ty tz qx qy qz qw` (marker, c2w)

No rgb.txt / depth.txt (Bonn has none). The images are rendered (static plane of the Sintel fixture) with the TRUE
camera-to-world poses T_w_cam; groundtruth.txt stores what the Bonn release stores, the mocap marker pose in the
"ROS bug" frame: T_gt = T_ROS @ T_w_cam @ inv(T_m) @ inv(T_ROS), so that the PAGE-4D correction
T_w_cam = inv(T_ROS) @ T_gt @ T_ROS @ T_m recovers the rendering camera. T_m is the PAGE-4D matrix with its 3x3 block
projected to SO(3) by SVD (U V^T), computed here independently of the reader. Timing as the TUM fixture (rows
every 0.01 s, depth 5 ms after rgb), without the pose gap: every rgb frame has a pose within 0.02 s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.data.tum.make_fixture import HEADER, pose_row, render_frames

K_BONN = np.array([[542.822841, 0.0, 315.593520], [0.0, 542.576870, 237.756098], [0.0, 0.0, 1.0]])
T_ROS = np.array([[-1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]])
T_M_PAGE4D = np.array([[1.0157, 0.1828, -0.2389, 0.0113], [0.0009, -0.8431, -0.6413, -0.0098],
                       [-0.3009, 0.6147, -0.8085, 0.0111], [0.0, 0.0, 0.0, 1.0]])


def rigid_t_m() -> np.ndarray:
    U, _, Vt = np.linalg.svd(T_M_PAGE4D[:3, :3])
    T = T_M_PAGE4D.copy()
    T[:3, :3] = U @ Vt
    assert np.linalg.det(T[:3, :3]) > 0
    return T


def homogeneous(rot: np.ndarray, centre: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = rot, centre
    return T


def write_fixture(root: Path, names: tuple[str, ...] = ("balloon2", "crowd2"), num_frames: int = 3) -> dict:
    """Write `<root>/rgbd_bonn_dataset/rgbd_bonn_<name>/...`; return {name: truth} (TUM fixture's `render_frames`
    keys; "extrinsics" / "centres" are the TRUE cameras, "gt_rows" the (N, 8) rows written to groundtruth.txt)."""
    out = {}
    T_m_inv = np.linalg.inv(rigid_t_m())
    for name in names:
        seq_dir = Path(root) / "rgbd_bonn_dataset" / f"rgbd_bonn_{name}"
        truth = render_frames(seq_dir, num_frames, K_BONN, gap=None, no_depth=None, gt_lines=False)
        rows = []
        with open(seq_dir / "groundtruth.txt", "w") as f:
            f.write(HEADER.format(what="ground truth trajectory", fields="tx ty tz qx qy qz qw"))
            for t, (rot, centre) in zip(truth["gt_stamps"], truth["gt_cams"]):
                T_gt = T_ROS @ homogeneous(rot, centre) @ T_m_inv @ np.linalg.inv(T_ROS)
                line = pose_row(t, T_gt[:3, :3], T_gt[:3, 3])
                f.write(line)
                rows.append([float(v) for v in line.split()])
        truth["gt_rows"] = np.array(rows)
        out[name] = truth
    return out


if __name__ == "__main__":
    import sys

    write_fixture(Path(sys.argv[1] if len(sys.argv) > 1 else "bonn_fixture"))
