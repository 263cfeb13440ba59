"""Write a tiny Spring scene in the real on-disk layout, rendered from an analytic scene with known GT.

Scene (world axes x right, y down, z forward): ground plane y = 1.5, a back wall z = 9 up to y = -1.5, sky
above it, and a box sliding along x (dynamic). Each frame is ray-cast exactly; the disparity is rendered on
the 2x grid whose even samples fall on the image's pixel centres (the devkit's `[::2, ::2]` convention) and
stores fx * 0.065 / z in image-pixel units (not 2x units). Sky: disparity 1e-4 (a far dome) and skymap 255.
One 8x8 patch of the 2x grid is NaN (no GT). Cameras are written natively: world-to-camera OpenCV, row-major.

With `eyes=("left", "right")` the right camera is rendered too (`frame_right`, `disp1_right`, `maps/skymap_right`):
the physical stereo rig, i.e. the left camera moved by BASELINE along its own x axis (centre + R_c2w (b, 0, 0)),
same orientation and intrinsics; its disparity is fx * b / z of the right camera's own z-depth (positive, as the
devkit stores both views). extrinsics.txt holds the left camera only, as in the release.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from PIL import Image

BASELINE = 0.065
GROUND_Y, WALL_Z, WALL_TOP = 1.5, 9.0, -1.5
SKY_DISPARITY = 1e-4
NAN_PATCH = (slice(20, 24), slice(60, 64))  # rows, cols of the 1x image whose disparity is NaN
LANDMARKS = np.array([[-1.0, 0.0, WALL_Z], [1.5, -0.8, WALL_Z], [0.3, 0.6, WALL_Z], [0.5, GROUND_Y, 6.0],
                      [-1.2, GROUND_Y, 7.5]])


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    """Camera-to-world rotation: yaw about world y, then pitch about the camera x axis (radians)."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    r_yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    r_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    return r_yaw @ r_pitch


def cast(K: np.ndarray, w2c: np.ndarray, us: np.ndarray, vs: np.ndarray, box: tuple[np.ndarray, np.ndarray]):
    """Rays through pixel coordinates (us, vs) -> (z-depth, surface id, world hit points); z = inf, id -1 for sky.

    Surface ids: 0 ground, 1 wall, 2 box. The ray direction has camera z = 1, so the ray parameter is z-depth.
    """
    rot_c2w, center = w2c[:, :3].T, -w2c[:, :3].T @ w2c[:, 3]
    d_cam = np.stack([(us - K[0, 2]) / K[0, 0], (vs - K[1, 2]) / K[1, 1], np.ones_like(us)], axis=-1)
    d = d_cam @ rot_c2w.T  # (..., 3) world directions
    t = np.full(us.shape, np.inf)
    surface = np.full(us.shape, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(d[..., 1] > 0, (GROUND_Y - center[1]) / d[..., 1], np.inf)
        t_wall = np.where(d[..., 2] > 0, (WALL_Z - center[2]) / d[..., 2], np.inf)
        t_wall = np.where(center[1] + t_wall * d[..., 1] >= WALL_TOP, t_wall, np.inf)
        box_center, box_half = box
        lo = (box_center - box_half - center) / d
        hi = (box_center + box_half - center) / d
        near = np.minimum(lo, hi).max(-1)
        far = np.maximum(lo, hi).min(-1)
        t_box = np.where((near <= far) & (near > 0), near, np.inf)
    for sid, t_s in enumerate((t_ground, t_wall, t_box)):
        closer = t_s < t
        t = np.where(closer, t_s, t)
        surface = np.where(closer, sid, surface)
    points = center + np.where(np.isfinite(t), t, 0.0)[..., None] * d
    return t, surface, points


def _shade(surface: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Checker-textured colours (h, w, 3) uint8 of the hits; sky is light blue."""
    base = np.array([[90, 140, 60], [180, 120, 90], [200, 60, 60], [150, 200, 250]], dtype=np.float64)
    checker = (np.floor(points[..., 0] * 2) + np.floor(points[..., 1] * 2) + np.floor(points[..., 2] * 2)) % 2
    colour = base[surface] * np.where(surface[..., None] >= 0, 0.6 + 0.4 * checker[..., None], 1.0)
    return colour.clip(0, 255).astype(np.uint8)


def _render_eye(seq_dir: Path, eye: str, number: int, K: np.ndarray, w2c: np.ndarray, box, grid) -> dict:
    """Write frame `number` of camera `eye` (image, 2x disparity, 2x sky map); return its GT at 1x."""
    rows, cols = grid
    z, surface, points = cast(K, w2c, cols, rows, box)
    disparity = np.where(np.isfinite(z), K[0, 0] * BASELINE / z, SKY_DISPARITY).astype(np.float32)
    (r0, r1), (c0, c1) = [(2 * part.start, 2 * part.stop) for part in NAN_PATCH]
    disparity[r0:r1, c0:c1] = np.nan
    sky = ~np.isfinite(z)
    with h5py.File(seq_dir / f"disp1_{eye}" / f"disp1_{eye}_{number:04d}.dsp5", "w") as f:
        f.create_dataset("disparity", data=disparity, compression="gzip", compression_opts=5)
    Image.fromarray((sky * 255).astype(np.uint8)).save(
        seq_dir / "maps" / f"skymap_{eye}" / f"skymap_{eye}_{number:04d}.png")
    Image.fromarray(_shade(surface[::2, ::2], points[::2, ::2])).save(
        seq_dir / f"frame_{eye}" / f"frame_{eye}_{number:04d}.png")
    depth = np.where(sky[::2, ::2], 0.0, z[::2, ::2]).astype(np.float32)
    depth[NAN_PATCH] = 0.0
    cam = LANDMARKS @ w2c[:, :3].T + w2c[:, 3]
    pixels = cam[:, :2] / cam[:, 2:] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    return {"extrinsics": w2c, "depth": depth, "sky": sky[::2, ::2], "landmark_px": pixels}


def write_fixture(root: Path, num_sequences: int = 2, num_frames: int = 6, height: int = 54, width: int = 96,
                  seed: int = 0, eyes: tuple[str, ...] = ("left",)) -> dict:
    """Write `<root>/train/<seq>/...` for `num_sequences` sequences ("0001", ...) and return the GT.

    Returns {"split", "size" (h, w), "landmarks" (M, 3), "sequences": {seq: {"intrinsics" (N, 3, 3),
    "extrinsics" (N, 3, 4) w2c OpenCV, "depth" (N, h, w) float32 metres with 0 invalid, "sky" (N, h, w) bool,
    "landmark_px" (N, M, 2) native pixels, "boxes" (N, 2, 3) box centre and half size}}} for the left camera,
    and with "right" in `eyes` also "right": {seq: the same keys for the right camera}.
    """
    rng = np.random.default_rng(seed)
    truth: dict[str, dict] = {eye: {} for eye in eyes}
    grid = np.mgrid[0 : 2 * height, 0 : 2 * width] / 2.0  # 2x grid; even samples = image pixel centres
    for s in range(num_sequences):
        seq = f"{s + 1:04d}"
        seq_dir = Path(root) / "train" / seq
        (seq_dir / "cam_data").mkdir(parents=True, exist_ok=True)
        for eye in eyes:
            for sub in (f"frame_{eye}", f"disp1_{eye}", f"maps/skymap_{eye}"):
                (seq_dir / sub).mkdir(parents=True, exist_ok=True)
        offset = rng.uniform(-0.3, 0.3, size=3)
        intr_lines, extr_lines, Ks, boxes = [], [], [], []
        frames: dict[str, list[dict]] = {eye: [] for eye in eyes}
        for i in range(num_frames):
            K = np.array([[80.0 + 0.5 * i, 0.0, 47.3], [0.0, 80.5 + 0.5 * i, 26.8], [0.0, 0.0, 1.0]])
            rot_c2w = _rotation(np.deg2rad(-4.0 + 2.0 * i + 5 * offset[0]), np.deg2rad(-3.0 + 3 * offset[1]))
            center = np.array([0.15 * i - 0.4 + offset[2], -0.3, 0.1 * i])
            box = (np.array([-1.5 + 0.4 * i + offset[0], 0.9, 5.0]), np.array([0.5, 0.6, 0.5]))
            centers = {"left": center, "right": center + rot_c2w @ np.array([BASELINE, 0.0, 0.0])}  # the rig
            for eye in eyes:
                w2c = np.concatenate([rot_c2w.T, (-rot_c2w.T @ centers[eye])[:, None]], axis=1)
                frames[eye].append(_render_eye(seq_dir, eye, i + 1, K, w2c, box, grid))
            left_w2c = np.concatenate([rot_c2w.T, (-rot_c2w.T @ center)[:, None]], axis=1)
            intr_lines.append([K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
            extr_lines.append(np.vstack([left_w2c, [0.0, 0.0, 0.0, 1.0]]).reshape(16))
            Ks.append(K), boxes.append(np.stack(box))
        np.savetxt(seq_dir / "cam_data" / "intrinsics.txt", np.array(intr_lines))
        np.savetxt(seq_dir / "cam_data" / "extrinsics.txt", np.array(extr_lines))
        for eye in eyes:
            truth[eye][seq] = {"intrinsics": np.stack(Ks), "boxes": np.stack(boxes),
                               **{key: np.stack([f[key] for f in frames[eye]]) for key in frames[eye][0]}}
    info = {"split": "train", "size": (height, width), "landmarks": LANDMARKS, "sequences": truth.get("left", {})}
    if "right" in truth:
        info["right"] = truth["right"]
    return info
