"""Write a tiny TUM RGB-D dynamic sequence in the real on-disk layout, rendered from an analytic scene with known GT.

Layout (TUM "File Formats"; datasets.md section 9)::

    <root>/rgbd_dataset_freiburg3_<name>/rgb/<timestamp>.png      640x480 RGB
    <root>/rgbd_dataset_freiburg3_<name>/depth/<timestamp>.png    uint16, metres * 5000, 0 = missing
    <root>/rgbd_dataset_freiburg3_<name>/{rgb.txt, depth.txt}     `timestamp filename` lines after 3 `#` lines
    <root>/rgbd_dataset_freiburg3_<name>/groundtruth.txt          `timestamp tx ty tz qx qy qz qw`, 100 Hz

Timing (the association test): rgb at ~30 Hz (t0 + k / 30); groundtruth every 0.01 s with a distinct camera per row
and a 0.08 s gap that leaves rgb frame GAP_FRAME without a pose within 0.02 s (dropped by the reader); depth 5 ms
after each rgb, except NO_DEPTH_FRAME whose depth frame was dropped (the nearest other one is > 0.02 s away: that
frame has no depth). Each rgb
image is rendered with the camera of the groundtruth row nearest to it (the one `associate.py` picks), the depth
image with the same camera (registered to rgb, as TUM's). The scene is the static plane of the Sintel fixture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.data.sintel.make_fixture import camera, render_plane, world_to_camera

FR3 = np.array([[535.4, 0.0, 320.1], [0.0, 539.2, 247.6], [0.0, 0.0, 1.0]])
HW = (480, 640)
T0 = 1341847980.722988
GAP_FRAME, NO_DEPTH_FRAME = 3, 1
HEADER = "# {what}\n# file: 'rgbd_dataset_freiburg3_walking_xyz.bag'\n# timestamp {fields}\n"


def rotmat_to_xyzw(R: np.ndarray) -> np.ndarray:
    """A rotation matrix -> unit quaternion (x, y, z, w), w >= 0 (Shepperd, written out here independently)."""
    w = np.sqrt(max(0.0, 1.0 + np.trace(R))) / 2.0
    x = np.copysign(np.sqrt(max(0.0, 1.0 + R[0, 0] - R[1, 1] - R[2, 2])) / 2.0, R[2, 1] - R[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1.0 - R[0, 0] + R[1, 1] - R[2, 2])) / 2.0, R[0, 2] - R[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1.0 - R[0, 0] - R[1, 1] + R[2, 2])) / 2.0, R[1, 0] - R[0, 1])
    return np.array([x, y, z, w])


def pose_row(stamp: float, rot_c2w: np.ndarray, centre: np.ndarray) -> str:
    q = rotmat_to_xyzw(rot_c2w)
    return f"{stamp:.4f} " + " ".join(f"{v:.7f}" for v in (*centre, *q)) + "\n"


def write_depth_png(path: Path, depth_m: np.ndarray, scale: float) -> np.ndarray:
    """Write uint16 round(depth * scale) (0 where invalid or out of range); return the stored metres."""
    raw = np.where(np.isfinite(depth_m) & (depth_m * scale < 65535), np.rint(depth_m * scale), 0).astype(np.uint16)
    Image.fromarray(raw).save(path)
    return (raw.astype(np.float64) / scale).astype(np.float32)


def render_frames(seq_dir: Path, num_frames: int, K: np.ndarray, gap: int | None, no_depth: int | None,
                  depth_scale: float = 5000.0, gt_lines: bool = True) -> dict:
    """Render rgb/ and depth/ of one TUM-style sequence; return timestamps, GT rows and per-frame truth."""
    (seq_dir / "rgb").mkdir(parents=True, exist_ok=True)
    (seq_dir / "depth").mkdir(parents=True, exist_ok=True)
    rgb_stamps = [T0 + k / 30.0 for k in range(num_frames)]
    # groundtruth rows every 0.01 s from t0 - 0.004, none within 0.04 s of the gap frame
    gt_stamps = [T0 - 0.004 + 0.01 * j for j in range(int((rgb_stamps[-1] - T0) / 0.01) + 3)]
    if gap is not None and gap < num_frames:
        gt_stamps = [t for t in gt_stamps if abs(t - rgb_stamps[gap]) > 0.04]
    gt_cams = [camera(0.05 * j) for j in range(len(gt_stamps))]  # a distinct camera per row
    truth = {"rgb": [], "depth_files": [], "extrinsics": [], "centres": [], "depth": [], "gt_row": []}
    for k, t in enumerate(rgb_stamps):
        rgb_name = f"{t:.6f}"
        j = int(np.argmin([abs(t - s) for s in gt_stamps]))
        rot, centre = gt_cams[j]
        E = world_to_camera(rot, centre)
        z, colour = render_plane(K, E, HW)
        Image.fromarray(colour).save(seq_dir / "rgb" / f"{rgb_name}.png")
        depth_name, stored = None, None
        if k != no_depth:  # a dropped depth frame: the nearest other depth is > 0.02 s away
            depth_name = f"{t + 0.005:.6f}"
            stored = write_depth_png(seq_dir / "depth" / f"{depth_name}.png", z, depth_scale)
        truth["rgb"].append(rgb_name)
        truth["depth_files"].append(depth_name)
        truth["extrinsics"].append(E)
        truth["centres"].append(centre)
        truth["depth"].append(stored)
        truth["gt_row"].append(j)
    truth["rgb_stamps"], truth["gt_stamps"], truth["gt_cams"] = rgb_stamps, gt_stamps, gt_cams
    if gt_lines:
        with open(seq_dir / "groundtruth.txt", "w") as f:
            f.write(HEADER.format(what="ground truth trajectory", fields="tx ty tz qx qy qz qw"))
            for t, (rot, centre) in zip(gt_stamps, gt_cams):
                f.write(pose_row(t, rot, centre))
    return truth


def write_fixture(root: Path, names: tuple[str, ...] = ("walking_xyz", "sitting_static"), num_frames: int = 5) -> dict:
    """Write `<root>/rgbd_dataset_freiburg3_<name>/...`; return {folder name: truth} (see `render_frames`)."""
    out = {}
    for name in names:
        seq = f"rgbd_dataset_freiburg3_{name}"
        seq_dir = Path(root) / seq
        truth = render_frames(seq_dir, num_frames, FR3, GAP_FRAME, NO_DEPTH_FRAME)
        for what, stamps, names_ in (("rgb", truth["rgb"], truth["rgb"]),
                                     ("depth", truth["depth_files"], truth["depth_files"])):
            with open(seq_dir / f"{what}.txt", "w") as f:
                f.write(HEADER.format(what=f"{what} maps" if what == "depth" else "color images",
                                      fields="filename"))
                for stamp, file in zip(stamps, names_):
                    if file is not None:
                        f.write(f"{stamp} {what}/{file}.png\n")
        out[seq] = truth
    return out


if __name__ == "__main__":
    import sys

    write_fixture(Path(sys.argv[1] if len(sys.argv) > 1 else "tum_fixture"))
