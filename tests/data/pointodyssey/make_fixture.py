"""Write a tiny PointOdyssey root in the real on-disk layout, from the analytic scene of `scene.py`.

`<root>/train/<scene>/rgbs/rgb_%05d.jpg`, `depths/depth_%05d.png` (uint16 = trunc(z / 1000 * 65535), sky = 65535),
`masks/mask_%05d.png` (palette PNG of instance ids, as Kubric's `write_palette_png`), `anno.npz` (v1.2 keys,
float16 cameras and tracks as `gen_tracking.py` saves them) or the older `annotations.npz` (`visibilities`
0/1/2), plus `info.npz` and `scene_info.json`. K and `trajs_2d` are written in Blender's pixel-area convention
(principal point at W/2, i.e. OpenCV + 0.5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.data.pointodyssey import scene as sc

SEQUENCES = {"ani_walk": ("anno.npz", 0.0), "cnb_old": ("annotations.npz", 0.6)}  # name -> (annotation file, shift)
FOCAL = 80.0
NAN_TRACK = (3, 0)  # (frame, track) whose trajs_2d is written as NaN (non-finite -> invalid)


def _palette() -> list[int]:
    rng = np.random.default_rng(7)
    colours = rng.integers(0, 256, (256, 3))
    colours[0] = 0
    return colours.astype(np.uint8).reshape(-1).tolist()


def write_sequence(
    folder: Path, anno_name: str, shift: float, num_frames: int, hw: tuple[int, int], rng: np.random.Generator
) -> dict:
    """One scene folder; returns its GT (OpenCV cameras, exact depth / labels / world points, tracks)."""
    h, w = hw
    K = np.array([[FOCAL, 0.0, (w - 1) / 2], [0.0, FOCAL, (h - 1) / 2], [0.0, 0.0, 1.0]])
    centers, rotations = sc.camera_path(num_frames, shift)
    E = np.stack([sc.extrinsics(c, R) for c, R in zip(centers, rotations)])
    points0, point_labels = sc.surface_points(rng)
    for sub in ("rgbs", "depths", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    gt: dict = {
        "K": K,
        "E": E,
        "hw": hw,
        "depth": [],
        "world": [],
        "labels": [],
        "trajs_3d": [],
        "uv": [],
        "visible": [],
        "valid": [],
    }
    for t in range(num_frames):
        maps = sc.render(K, centers[t], rotations[t], t, hw)
        Image.fromarray(maps["rgb"]).save(folder / "rgbs" / f"rgb_{t:05d}.jpg", quality=95)
        z = np.nan_to_num(maps["depth"], posinf=1000.0).clip(0.0, 1000.0)
        Image.fromarray((z * 65535 / 1000).astype(np.uint16)).save(folder / "depths" / f"depth_{t:05d}.png")
        mask = Image.fromarray(maps["labels"].astype(np.uint8))
        mask.putpalette(_palette())  # "L" + palette -> mode "P": the PNG stores the ids as palette indices
        mask.save(folder / "masks" / f"mask_{t:05d}.png")
        pts = sc.points_at(points0, point_labels, t)
        uv, depth = sc.project(pts, K, E[t])
        gt["visible"].append(sc.visible_points(pts, centers[t], t, uv, depth, hw))
        gt["valid"].append(depth > 0.1)
        for key, value in (
            ("depth", maps["depth"]),
            ("world", maps["world"]),
            ("labels", maps["labels"]),
            ("trajs_3d", pts),
            ("uv", uv),
        ):
            gt[key].append(value)
    gt = {k: np.stack(v) if isinstance(v, list) else v for k, v in gt.items()}
    gt["uv"][NAN_TRACK] = np.nan
    gt["valid"][NAN_TRACK] = gt["visible"][NAN_TRACK] = False
    gt["dynamic"] = gt["labels"] == sc.MOVING_BOX

    K_blender = K.copy()
    K_blender[:2, 2] += 0.5  # Blender: principal point at W/2, pixel i spans [i, i+1]
    E4 = np.concatenate([E, np.broadcast_to([[[0.0, 0.0, 0.0, 1.0]]], (num_frames, 1, 4))], axis=1)
    arrays = {
        "trajs_2d": (gt["uv"] + 0.5).astype(np.float16),
        "trajs_3d": gt["trajs_3d"].astype(np.float16),
        "intrinsics": np.broadcast_to(K_blender, (num_frames, 3, 3)).astype(np.float16),
        "extrinsics": E4.astype(np.float16),
    }
    if anno_name == "anno.npz":
        arrays.update(visibs=gt["visible"].copy(), valids=gt["valid"].copy())
        arrays["valids"][NAN_TRACK] = True  # the file says valid; the NaN position must still make it invalid
    else:
        arrays["visibilities"] = np.where(gt["valid"], gt["visible"].astype(np.float16), 2).astype(np.float16)
    np.savez(folder / anno_name, **arrays)
    np.savez(folder / "info.npz", trajs_3d=np.zeros(arrays["trajs_3d"].shape[:2], np.float16))
    (folder / "scene_info.json").write_text(json.dumps({"assets": ["background", "static_box", "moving_box"]}))
    return gt


def write_fixture(root: Path, num_frames: int = 8, hw: tuple[int, int] = (54, 96), seed: int = 0) -> dict:
    """`<root>/train/{ani_walk (anno.npz), cnb_old (annotations.npz)}`; returns {"root", "sequences": name -> GT}."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    sequences = {
        name: write_sequence(root / "train" / name, anno_name, shift, num_frames, hw, rng)
        for name, (anno_name, shift) in SEQUENCES.items()
    }
    return {"root": root, "sequences": sequences}
