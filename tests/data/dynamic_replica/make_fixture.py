"""Write a tiny Dynamic Replica split in the real on-disk layout (see README.md next to this file).

`<root>/<split>/frame_annotations_<split>.jgz` lists both cameras of every frame (per sequence: all left
frames, then all right frames, as in the release); paths in it are relative to `<root>/<split>`. Images are
RGBA PNGs named `<seq>_source_<cam>-0000.png`, depths float16-bits PNGs `<seq>_source_<cam>_0000.geometric.png`
(metres, z), binary fg/bg masks `masks/<seq>_source_<cam>_0000.png` (the sphere is the moving "animal"),
left-view trajectories `trajectories/000000.pth` (`torch.save` of a dict of tensors, as read by co-tracker).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.data.dynamic_replica.scene import (
    NOTHING,
    SPHERE,
    P3DCamera,
    look_at_camera,
    project_screen,
    render,
    surface_points,
    visible,
    write_float16_png,
)

HW = (56, 84)  # (H, W): image_size=84 reads it without resampling
BASELINE = 0.06  # metres, right camera along the left camera's +x (OpenCV)
RADIUS = 0.45
SEQUENCES = {  # name -> (intrinsics_format, principal point offset from the centre, screen px)
    "e0ff8f-3_obj": ("ndc_isotropic", (2.0, -1.5)),
    "ff80e8-3_obj": ("ndc_norm_image_bounds", (-3.0, 2.0)),
}
FOCAL_PX = (70.0, 72.0)


def sphere_centre(seq_index: int, t: int) -> np.ndarray:
    return np.array([-0.5 + 0.12 * t - 0.1 * seq_index, 0.55, 2.2])


def left_camera(seq_index: int, t: int) -> P3DCamera:
    fmt, offset = SEQUENCES[list(SEQUENCES)[seq_index]]
    eye = np.array([-0.3 + 0.08 * t + 0.1 * seq_index, 1.0 + 0.02 * t, -0.8])
    return look_at_camera(eye, np.array([0.0, 0.5, 2.2]), HW, FOCAL_PX, offset, fmt)


def right_camera(left: P3DCamera) -> P3DCamera:
    """Same rotation, centre moved by BASELINE to the right (PyTorch3D view +x is left)."""
    centre = left.centre - BASELINE * left.R[:, 0]
    return P3DCamera(left.R, -left.R.T @ centre, left.focal, left.principal, left.fmt, left.hw)


def _frame(cam: P3DCamera, centre: np.ndarray, folder: Path, prefix: str, t: int, seq_index: int) -> dict:
    """Render and write one view; return the GT (stored depth as the reader must return it, mask, image)."""
    image, depth, label = render(cam, centre, RADIUS)
    nothing = label == NOTHING
    depth = depth.copy()
    depth[nothing] = 5e-6 if seq_index == 0 else 0.0  # below Dynamic Replica's 1e-5 validity threshold
    if seq_index == 1:
        depth[np.argwhere(nothing)[0][0], np.argwhere(nothing)[0][1]] = np.inf  # float16 can hold inf
    rgba = np.concatenate([image, np.full(HW + (1,), 255, np.uint8)], axis=-1)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(folder / "images" / f"{prefix}-{t:04d}.png")
    stored = write_float16_png(folder / "depths" / f"{prefix}_{t:04d}.geometric.png", depth)
    Image.fromarray(np.where(label == SPHERE, 255, 0).astype(np.uint8), "L").save(
        folder / "masks" / f"{prefix}_{t:04d}.png"
    )
    stored[~np.isfinite(stored) | (stored < 1e-5)] = 0.0
    return {"image": image, "depth": stored, "dynamic": label == SPHERE}


def write_fixture(root: Path, split: str = "train", num_frames: int = 6, num_points: int = 12, seed: int = 0) -> dict:
    """Two sequences x `num_frames` frames x {left, right} under `root/split`; returns the ground truth:
    {"root", "split", "annotations" (path), "sequences": {seq: {"left"/"right": {"cameras", "image", "depth",
    "dynamic"}, "points" (S, N, 3) world, "screen" (S, N, 3) PyTorch3D screen x, y + depth, "visible" (S, N)}}}."""
    rng = np.random.default_rng(seed)
    split_dir = Path(root) / split
    annotations, truth = [], {}
    for k, seq in enumerate(SEQUENCES):
        offsets = surface_points(rng, np.zeros(3), RADIUS, num_points)  # sphere points relative to its centre
        n = num_points
        gt: dict = {"points": [], "screen": [], "visible": []}
        for cam_name in ("left", "right"):
            prefix = f"{seq}_source_{cam_name}"
            folder = split_dir / prefix
            views = {"cameras": [], "image": [], "depth": [], "dynamic": []}
            for t in range(num_frames):
                left = left_camera(k, t)
                cam = left if cam_name == "left" else right_camera(left)
                centre = sphere_centre(k, t)
                view = _frame(cam, centre, folder, prefix, t, k)
                views["cameras"].append(cam)
                for key in ("image", "depth", "dynamic"):
                    views[key].append(view[key])
                entry = {
                    "sequence_name": seq,
                    "frame_number": t,
                    "frame_timestamp": t / 30.0,
                    "image": {"path": f"{prefix}/images/{prefix}-{t:04d}.png", "size": list(HW)},
                    "depth": {
                        "path": f"{prefix}/depths/{prefix}_{t:04d}.geometric.png",
                        "scale_adjustment": 1.0,
                        "mask_path": None,
                    },
                    "mask": {"path": f"{prefix}/masks/{prefix}_{t:04d}.png", "mass": float(view["dynamic"].sum())},
                    "viewpoint": cam.viewpoint(),
                    "meta": None,
                    "camera_name": cam_name,
                    "instance_id_map_path": None,
                    "flow_forward": None,
                    "flow_forward_mask": None,
                    "flow_backward": None,
                    "flow_backward_mask": None,
                    "trajectories": None,
                }
                if cam_name == "left":
                    points = np.concatenate([offsets[:n] + centre, offsets[n:]])  # sphere points move with it
                    screen = project_screen(cam, points)
                    vis = visible(cam, points, centre, RADIUS)
                    (folder / "trajectories").mkdir(parents=True, exist_ok=True)
                    torch.save(
                        {
                            "traj_2d": torch.from_numpy(screen.astype(np.float32)),
                            "traj_3d_world": torch.from_numpy(points.astype(np.float32)),
                            "verts_inds_vis": torch.from_numpy(vis),
                            "instances": torch.from_numpy((np.arange(len(points)) < n).astype(np.int64)),
                            "img": torch.from_numpy(view["image"]),
                        },
                        folder / "trajectories" / f"{t:06d}.pth",
                    )
                    entry["trajectories"] = {"path": f"{prefix}/trajectories/{t:06d}.pth"}
                    for key, value in (("points", points), ("screen", screen), ("visible", vis)):
                        gt[key].append(value)
                annotations.append(entry)
            gt[cam_name] = {key: (np.stack(v) if key != "cameras" else v) for key, v in views.items()}
        truth[seq] = {key: (np.stack(v) if isinstance(v, list) else v) for key, v in gt.items()}
    path = split_dir / f"frame_annotations_{split}.jgz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(annotations, f)
    return {"root": Path(root), "split": split, "annotations": path, "sequences": truth}
