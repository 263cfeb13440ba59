"""Write a tiny MPI Sintel training set in the real on-disk layout, rendered from an analytic scene with known GT.

Scene (world axes OpenCV-like: x right, y down, z forward): a static plane z = PLANE_Z (a textured wall). Every
frame is ray-cast exactly with its own camera, so the stored depth unprojected with the stored camera lands on the
plane; the camera centres are known (`centres`). Files as the Sintel SDK (`sintel_io.py`) writes them:
`.dpt` = float32 tag 202021.25, int32 width, int32 height, H*W float32; `.cam` = float32 tag, float64 M (3x3) and
float64 N (3x4, world-to-camera); frames 1-based `frame_0001.png`. MonST3R-style `dynamic_label_perfect/<seq>/
frame_XXXX.png` masks (255 = dynamic, a moving square) are written for every frame but the last, as MonST3R's
`sintel_get_dynamics.py` does.

`render_plane` and `camera` are shared with the other evaluation fixtures (Bonn, TUM, DyCheck, KITTI).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TAG = np.float32(202021.25)
PLANE_Z = 6.0


def rotation(yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world rotation: yaw about y, pitch about x, roll about z (radians)."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    r_yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    r_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    r_roll = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return r_yaw @ r_pitch @ r_roll


def camera(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame i's camera-to-world rotation and centre (a small sideways move with a turn)."""
    return rotation(0.04 * i - 0.03, 0.02 * i, 0.01 * i), np.array([0.3 * i - 0.2, -0.1 * i, 0.15 * i])


def world_to_camera(rot_c2w: np.ndarray, centre: np.ndarray) -> np.ndarray:
    return np.concatenate([rot_c2w.T, (-rot_c2w.T @ centre)[:, None]], axis=1)


def render_plane(K: np.ndarray, w2c: np.ndarray, hw: tuple[int, int], point=(0.0, 0.0, PLANE_Z),
                 normal=(0.0, 0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Exact z-depth (h, w) float64 of the plane through `point` with `normal` seen by (K, w2c) at OpenCV pixel
    centres (inf where the ray misses it), and a checker texture (h, w, 3) uint8 of the hit points."""
    h, w = hw
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    d_cam = np.stack([(u - K[0, 2] - K[0, 1] * (v - K[1, 2]) / K[1, 1]) / K[0, 0], (v - K[1, 2]) / K[1, 1],
                      np.ones_like(u)], axis=-1)
    rot_c2w = w2c[:, :3].T
    centre = -rot_c2w @ w2c[:, 3]
    d = d_cam @ rot_c2w.T
    point, normal = np.asarray(point, np.float64), np.asarray(normal, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = ((point - centre) @ normal) / (d @ normal)
    t = np.where(np.isfinite(t) & (t > 0), t, np.inf)  # camera z of the direction is 1: t is the z-depth
    hit = centre + np.where(np.isfinite(t), t, 0.0)[..., None] * d
    checker = (np.floor(hit[..., 0] * 4) + np.floor(hit[..., 1] * 4) + np.floor(hit[..., 2] * 4)) % 2
    colour = np.stack([120 + 100 * checker, 80 + 60 * checker, 200 - 90 * checker], axis=-1)
    colour = np.where(np.isfinite(t)[..., None], colour, 30)
    return t, colour.astype(np.uint8)


def write_dpt(path: Path, depth: np.ndarray) -> None:
    h, w = depth.shape
    with open(path, "wb") as f:
        f.write(TAG.tobytes())
        f.write(np.array([w, h], "<i4").tobytes())
        f.write(depth.astype("<f4").tobytes())


def write_cam(path: Path, M: np.ndarray, N: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(TAG.tobytes())
        f.write(np.asarray(M, "<f8").tobytes())
        f.write(np.asarray(N, "<f8").tobytes())


def write_fixture(root: Path, sequences: tuple[str, ...] = ("alley_2", "market_5"), num_frames: int = 4,
                  hw: tuple[int, int] = (24, 40), masks: tuple[str, ...] = ("alley_2",)) -> dict:
    """Write `<root>/training/{final,clean,depth,camdata_left,dynamic_label_perfect}/<seq>/...` and return the GT:
    {seq: {"intrinsics" (N,3,3), "extrinsics" (N,3,4), "centres" (N,3), "depth" (N,h,w) float32, "masks"
    (N-1,h,w) bool or None, "names" [frame_0001, ...]}}. The clean pass is the final pass darkened by 40."""
    root, truth = Path(root), {}
    h, w = hw
    for s, seq in enumerate(sequences):
        folders = {k: root / "training" / k / seq for k in ("final", "clean", "depth", "camdata_left")}
        if seq in masks:
            folders["mask"] = root / "training" / "dynamic_label_perfect" / seq
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        gt = {"intrinsics": [], "extrinsics": [], "centres": [], "depth": [], "masks": [], "names": []}
        for i in range(num_frames):
            name = f"frame_{i + 1:04d}"
            f = 0.9 * w + 2.0 * s
            K = np.array([[f, 0.0, (w - 1) / 2 + 0.3], [0.0, f * 1.01, (h - 1) / 2 - 0.2], [0.0, 0.0, 1.0]])
            rot, centre = camera(i + s)
            E = world_to_camera(rot, centre)
            z, colour = render_plane(K, E, hw)
            depth = np.where(np.isfinite(z), z, 0.0).astype(np.float32)
            Image.fromarray(colour).save(folders["final"] / f"{name}.png")
            Image.fromarray((colour.astype(np.int16) - 40).clip(0, 255).astype(np.uint8)).save(
                folders["clean"] / f"{name}.png")
            write_dpt(folders["depth"] / f"{name}.dpt", depth)
            write_cam(folders["camdata_left"] / f"{name}.cam", K, E)
            mask = np.zeros(hw, bool)
            mask[2:8, 3 + 2 * i : 9 + 2 * i] = True
            if "mask" in folders and i < num_frames - 1:
                Image.fromarray(mask.astype(np.uint8) * 255).save(folders["mask"] / f"{name}.png")
                gt["masks"].append(mask)
            for key, value in (("intrinsics", K), ("extrinsics", E), ("centres", centre), ("depth", depth),
                               ("names", name)):
                gt[key].append(value)
        truth[seq] = {k: (np.stack(v) if k not in ("names", "masks") else v) for k, v in gt.items()}
        truth[seq]["masks"] = np.stack(gt["masks"]) if gt["masks"] else None
    return truth


if __name__ == "__main__":
    import sys

    write_fixture(Path(sys.argv[1] if len(sys.argv) > 1 else "sintel_fixture"))
