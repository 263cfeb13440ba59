"""Writes a tiny root in the `custom` layout (datamodules/custom.py) from an analytic scene with known GT.

Scene: a closed room x in [-4, 4], y in [-3, 1] (y down: the floor is y = 1), z in [-6, 8], with a
checker texture, and a 1 m box sliding on the floor; a moving camera. Depth and the dynamic mask are
ray-cast exactly (z-depth of the first hit of each pixel-centre ray). Two sequences:
"walk" (6 PNG frames, named 000000.png.., cameras matched by "file", one shared 3x3 K) and
"orbit" (7 JPEG frames named f0, f2, .., f12 so that natural and plain sorting differ; cameras matched
by position; per-frame {fx, fy, cx, cy}).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

H, W = 70, 98
ROOM_LO, ROOM_HI = np.array([-4.0, -3.0, -6.0]), np.array([4.0, 1.0, 8.0])
BOX_HALF = 0.5
POINTS = np.array([[0.5, -0.5, 8.0], [-1.2, 0.3, 8.0], [1.0, 1.0, 6.0]])  # static: back wall, back wall, floor
HOLE = (slice(0, 3), slice(0, 4))  # pixels stored as invalid depth (0 / NaN / inf / negative)
_FLIP = np.diag([1.0, -1.0, -1.0])


def _rot(yaw: float, pitch: float) -> np.ndarray:
    """Camera-to-world rotation: yaw about the world y axis, then pitch about the camera x axis."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    return ry @ rx


def _sequence(name: str) -> dict[str, Any]:
    """Per-frame camera-to-world rotations (S, 3, 3), centres (S, 3), box centres (S, 3) and K (3, 3)."""
    if name == "walk":
        s = np.arange(6.0)
        rots = [_rot(-0.1 + 0.05 * k, -0.08) for k in s]
        centres = np.stack([-0.3 + 0.15 * s, -0.2 - 0.03 * s, 0.1 * s], 1)
        K = np.array([[60.0, 0.0, 49.3], [0.0, 62.0, 34.2], [0.0, 0.0, 1.0]])
    else:
        s = np.arange(7.0)
        rots = [_rot(0.12 - 0.06 * k, -0.05 - 0.01 * k) for k in s]
        centres = np.stack([0.5 - 0.1 * s, -0.4 + 0.02 * s, -0.5 + 0.05 * s], 1)
        K = np.array([[55.0, 0.0, 48.5], [0.0, 55.0, 34.5], [0.0, 0.0, 1.0]])
    boxes = np.stack([-1.0 + 0.4 * s, np.full_like(s, 1.0 - BOX_HALF), np.full_like(s, 4.5)], 1)
    return {"rot_c2w": np.stack(rots), "centres": centres, "boxes": boxes, "K": K}


def render(rot_c2w: np.ndarray, centre: np.ndarray, box: np.ndarray, K: np.ndarray) -> dict[str, np.ndarray]:
    """Ray-cast one frame: image (H, W, 3) uint8, z-depth (H, W) float64, dynamic (H, W) bool."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)  # z = 1: t = z-depth
    d = d_cam @ rot_c2w.T  # (H, W, 3) world directions
    with np.errstate(divide="ignore", invalid="ignore"):
        t_room = np.where(d > 0, (ROOM_HI - centre) / d, (ROOM_LO - centre) / d)
        t_room = np.where(d == 0, np.inf, t_room).min(-1)
        t1, t2 = (box - BOX_HALF - centre) / d, (box + BOX_HALF - centre) / d
    t_near, t_far = np.nanmax(np.minimum(t1, t2), -1), np.nanmin(np.maximum(t1, t2), -1)
    dynamic = (t_near <= t_far) & (t_near > 0) & (t_near < t_room)
    depth = np.where(dynamic, t_near, t_room)
    X = centre + depth[..., None] * d
    checker = (np.floor(2 * X).astype(int).sum(-1) % 2)[..., None]
    base = np.where(dynamic[..., None], [200, 40, 40], [90, 140, 200])
    image = np.clip(base * (0.6 + 0.4 * checker) + 20 * np.sin(X), 0, 255).astype(np.uint8)
    return {"image": image, "depth": depth, "dynamic": dynamic}


def _extrinsics(rot_c2w: np.ndarray, centre: np.ndarray, convention: str, extrinsics_type: str, k: int) -> list:
    """The camera in the requested native convention; 4x4 on even frames, 3x4 on odd ones."""
    if extrinsics_type == "w2c":
        R, t = rot_c2w.T, -rot_c2w.T @ centre
        if convention == "opengl":
            R, t = _FLIP @ R, _FLIP @ t
    else:
        R, t = (rot_c2w @ _FLIP if convention == "opengl" else rot_c2w), centre
    M = np.concatenate([R, t[:, None]], 1)
    return (np.concatenate([M, [[0.0, 0.0, 0.0, 1.0]]]) if k % 2 == 0 else M).tolist()


def write_fixture(
    root: Path,
    convention: str = "opencv",
    extrinsics_type: str = "w2c",
    depth_format: str = "png",
    depth_scale: float = 5000.0,
    with_depth: bool = True,
    with_masks: bool = True,
    with_splits: bool = False,
) -> dict[str, Any]:
    """Write sequences "walk" and "orbit" under `root`; return their GT (OpenCV camera-from-world, metres).

    GT per sequence: images (paths), extrinsics (S, 3, 4), intrinsics (S, 3, 3), depth (S, H, W) with the
    HOLE zeroed, dynamic (S, H, W), uv (S, P, 2) pixels of the static `POINTS` (P, 3).
    """
    gt: dict[str, Any] = {"points": POINTS, "depth_scale": depth_scale, "sequences": {}}
    for name in ("walk", "orbit"):
        spec, seq_dir = _sequence(name), Path(root) / name
        for sub in ("images",) + (("depth",) if with_depth else ()) + (("masks",) if with_masks else ()):
            (seq_dir / sub).mkdir(parents=True, exist_ok=True)
        frames, out = [], {k: [] for k in ("images", "extrinsics", "intrinsics", "depth", "dynamic", "uv")}
        for k, (rot, centre, box) in enumerate(zip(spec["rot_c2w"], spec["centres"], spec["boxes"])):
            stem = f"{k:06d}" if name == "walk" else f"f{2 * k}"
            image_path = seq_dir / "images" / (f"{stem}.png" if name == "walk" else f"{stem}.jpg")
            frame = render(rot, centre, box, spec["K"])
            Image.fromarray(frame["image"]).save(image_path, quality=95)
            depth = frame["depth"].copy()
            depth[HOLE] = 0.0
            if with_depth and depth_format == "png":
                Image.fromarray(np.round(depth * depth_scale).astype(np.uint16)).save(seq_dir / "depth" / f"{stem}.png")
            elif with_depth:
                stored = depth.astype(np.float32)
                stored[HOLE] = [np.nan, np.inf, -1.0, 0.0][k % 4]
                np.save(seq_dir / "depth" / f"{stem}.npy", stored)
            if with_masks:
                Image.fromarray(frame["dynamic"].astype(np.uint8) * 255).save(seq_dir / "masks" / f"{stem}.png")
            E = np.concatenate([rot.T, (-rot.T @ centre)[:, None]], 1)
            cam = (POINTS @ E[:, :3].T + E[:, 3]) @ spec["K"].T
            entry = {"extrinsics": _extrinsics(rot, centre, convention, extrinsics_type, k)}
            if name == "walk":
                entry["file"] = image_path.name
            else:
                entry["intrinsics"] = dict(zip(("fx", "fy", "cx", "cy"), spec["K"][[0, 1, 0, 1], [0, 1, 2, 2]]))
            frames.append(entry)
            for key, value in (("images", image_path), ("extrinsics", E), ("intrinsics", spec["K"]), ("depth", depth),
                               ("dynamic", frame["dynamic"]), ("uv", cam[:, :2] / cam[:, 2:])):
                out[key].append(value)
        cameras = {"convention": convention, "extrinsics_type": extrinsics_type, "depth_scale": depth_scale,
                   "frames": frames}
        if name == "walk":
            cameras["intrinsics"] = spec["K"].tolist()
        (seq_dir / "cameras.json").write_text(json.dumps(cameras, indent=1))
        gt["sequences"][name] = {k: v if k == "images" else np.stack(v) for k, v in out.items()}
    if with_splits:
        (Path(root) / "splits").mkdir(exist_ok=True)
        for split, text in (("train", "walk  # the long one\n\n"), ("val", "orbit\n"), ("test", "walk\norbit\n")):
            (Path(root) / "splits" / f"{split}.txt").write_text(text)
    return gt
