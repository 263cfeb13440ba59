"""Write a tiny Kubric raw-worker root (one folder per scene) from the analytic scene in `tests/data/pointodyssey`.

Per scene, as Kubric's `write_image_dict` + `write_json` produce them: `rgba_%05d.png` (RGBA uint8),
`depth_%05d.tiff` (float32 RAY distance), `segmentation_%05d.png` (palette PNG: 0 = background, k =
instances[k - 1]), `metadata.json` (`flags`, `metadata`, `camera` with WXYZ camera-to-world quaternions in
Blender camera axes, `instances` with per-frame positions / quaternions) and `data_ranges.json`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from tests.data.pointodyssey import scene as sc

SCENES = {"scene_00000": 0.0, "scene_00001": 0.6}  # name -> camera path shift
FOCAL_MM, SENSOR_MM = 35.0, 32.0
DOME = 20.0
FLIP_YZ = np.diag([1.0, -1.0, -1.0])
SEGMENT = {sc.MOVING_BOX: 1, sc.STATIC_BOX: 2}  # scene label -> Kubric segment id (others: 0 = background)


def matrix_to_quat_wxyz(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> unit quaternion (w, x, y, z) (largest-component method)."""
    m = R
    trace = np.trace(m)
    if trace > 0:
        s = 2 * math.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0] * 4
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    return np.asarray(q)


def _palette(count: int) -> list[int]:
    colours = [[0, 0, 0]] + [[(70 * k) % 256, (150 * k) % 256, 200] for k in range(1, count)]
    return [c for colour in colours for c in colour]


def _instance(name: str, positions: np.ndarray, dynamic: bool, half: float) -> dict:
    T = len(positions)
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * half
    return {
        "asset_id": name,
        "is_dynamic": dynamic,
        "positions": positions.tolist(),
        "quaternions": [[1.0, 0.0, 0.0, 0.0]] * T,
        "velocities": np.gradient(positions, axis=0).tolist(),
        "angular_velocities": [[0.0, 0.0, 0.0]] * T,
        "mass": 1.0,
        "friction": 0.5,
        "restitution": 0.5,
        "bboxes_3d": (positions[:, None] + corners[None]).tolist(),
    }


def write_scene(folder: Path, shift: float, num_frames: int, hw: tuple[int, int]) -> dict:
    """One scene folder; returns its GT (OpenCV K and extrinsics, exact z-depth, world points, dynamic masks)."""
    h, w = hw
    fx = FOCAL_MM / SENSOR_MM * w
    K = np.array([[fx, 0.0, w / 2 - 0.5], [0.0, fx, h / 2 - 0.5], [0.0, 0.0, 1.0]])  # OpenCV pixel centres
    centers, rotations = sc.camera_path(num_frames, shift)
    folder.mkdir(parents=True, exist_ok=True)
    gt: dict = {
        "K": K,
        "E": np.stack([sc.extrinsics(c, R) for c, R in zip(centers, rotations)]),
        "hw": hw,
        "depth": [],
        "world": [],
        "dynamic": [],
    }
    for t in range(num_frames):
        maps = sc.render(K, centers[t], rotations[t], t, hw, dome=DOME)
        rgba = np.concatenate([maps["rgb"], np.full((h, w, 1), 255, np.uint8)], axis=-1)
        Image.fromarray(rgba).save(folder / f"rgba_{t:05d}.png")
        Image.fromarray((maps["depth"] * maps["ray_norm"]).astype(np.float32)).save(folder / f"depth_{t:05d}.tiff")
        segments = np.zeros((h, w), np.uint8)
        for label, segment in SEGMENT.items():
            segments[maps["labels"] == label] = segment
        seg = Image.fromarray(segments)
        seg.putpalette(_palette(len(SEGMENT) + 1))  # "L" + palette -> mode "P"
        seg.save(folder / f"segmentation_{t:05d}.png")
        gt["depth"].append(maps["depth"])
        gt["world"].append(maps["world"])
        gt["dynamic"].append(maps["labels"] == sc.MOVING_BOX)
    gt = {k: np.stack(v) if isinstance(v, list) else v for k, v in gt.items()}

    quats = np.stack([matrix_to_quat_wxyz(R @ FLIP_YZ) for R in rotations])  # camera-to-world, Blender axes
    quats[1::2] *= -1  # q and -q are the same rotation; the reader must not care
    matrix_world = np.eye(4)
    matrix_world[:3, :3], matrix_world[:3, 3] = rotations[0] @ FLIP_YZ, centers[0]
    moving = np.stack([sc.moving_center(t) for t in range(num_frames)])
    metadata = {
        "flags": {"camera": "linear_movement", "frame_end": num_frames, "frame_rate": 12, "resolution": w},
        "metadata": {
            "resolution": [w, h],
            "frame_rate": 12,
            "step_rate": 240,
            "gravity": [0.0, 0.0, -10.0],
            "num_frames": num_frames,
            "background": "fixture_hdri",
            "num_instances": 2,
        },
        "camera": {
            "focal_length": FOCAL_MM,
            "sensor_width": SENSOR_MM,
            "field_of_view": 2 * math.atan2(SENSOR_MM / 2, FOCAL_MM),
            "positions": centers.tolist(),
            "quaternions": quats.tolist(),
            "K": [[FOCAL_MM / SENSOR_MM, 0, -0.5], [0, -FOCAL_MM / SENSOR_MM * w / h, -0.5], [0, 0, -1]],
            "R": matrix_world.tolist(),
        },
        "instances": [
            _instance("moving_box", moving, True, sc.MOVING_HALF),
            _instance("static_box", np.tile(sc.STATIC_CENTER, (num_frames, 1)), False, sc.STATIC_HALF),
        ],
    }
    (folder / "metadata.json").write_text(json.dumps(metadata, sort_keys=True, indent=4))
    ranges = {"forward_flow": {"min": -3.0, "max": 3.0}, "backward_flow": {"min": -3.0, "max": 3.0}}
    (folder / "data_ranges.json").write_text(json.dumps(ranges, sort_keys=True, indent=4))
    return gt


def write_fixture(root: Path, num_frames: int = 8, hw: tuple[int, int] = (64, 64), split: str | None = "train") -> dict:
    """Scenes `scene_00000`, `scene_00001` under `<root>/<split>/` (or the flat `<root>/` when split is None).

    Returns {"root", "sequences": name -> GT}."""
    root = Path(root)
    base = root / split if split else root
    sequences = {name: write_scene(base / name, shift, num_frames, hw) for name, shift in SCENES.items()}
    return {"root": root, "sequences": sequences}
